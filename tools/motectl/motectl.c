/* motectl — the operator CLI over the HTTP API (shared/spec/operator-api.md).
 *
 *   motectl [--url URL] [--token TOKEN] [--json] COMMAND ...
 *
 * URL and token also come from MOTEHUB_URL and MOTEHUB_TOKEN. Output is a
 * readable table, or the API's JSON as is with --json (for scripts). Exit
 * status: 0 on success, 1 when the API answered an error (its message on
 * stderr), 2 on a usage error, 3 when the API could not be reached. */
#include "mc_ca.h"
#include "mh_json.h"
#include "mh_curve.h"
#include "mh_http_client.h"

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *s_url = "http://127.0.0.1:8080", *s_token;
static bool s_json;

static const char *s_usage =
    "usage: motectl [--url URL] [--token TOKEN] [--json] COMMAND ...\n"
    "\n"
    "devices:\n"
    "  devices list [--status online|offline] [--firmware V] [--tag K:V]... [--q PREFIX]\n"
    "               [--limit N] [--all]\n"
    "  devices get ID | register ID [K=V ...] | delete ID\n"
    "twins and commands:\n"
    "  twin get ID\n"
    "  twin set ID KEY=JSON ... [--if-match VERSION]   (desired; JSON null deletes)\n"
    "  twin tag ID KEY=VALUE ...\n"
    "  command send ID NAME [PARAMS-JSON] [--ttl S] [--timeout S]\n"
    "  command list ID | command get ID CID\n"
    "telemetry:\n"
    "  telemetry ID [--metric M]... [--from T] [--to T] [--bucket raw|1m|1h|auto] [--limit N]\n"
    "  telemetry latest ID\n"
    "firmware and rollouts:\n"
    "  firmware upload FILE --version V [--hardware H] | list | get V | signing-key\n"
    "  rollout create --firmware V [--waves 1,10,100] [--tag K:V]... [--from-firmware V]\n"
    "                 [--success 0.95] [--failure 0.05] [--soak S] [--max-per-minute N]\n"
    "                 [--on-failure rollback|pause] [--json-spec JSON]\n"
    "  rollout list | get ID | pause ID | resume ID | abort ID | rollback ID | jobs ID\n"
    "jobs (a rollout of a JSON document; AWS IoT devices run them, docs/aws-migration.md):\n"
    "  job create --document JSON [the rollout options but --firmware, --on-failure]\n"
    "  job list | get ID | pause ID | resume ID | abort ID | executions ID\n"
    "named shadows (AWS IoT Device Shadow; the classic shadow is the twin):\n"
    "  shadow list ID | get ID NAME | delete ID NAME\n"
    "  shadow set ID NAME KEY=JSON ... [--version N]   (desired; JSON null deletes)\n"
    "fleet and tokens:\n"
    "  fleet summary | fleet geo\n"
    "  token create NAME | token list | token revoke NAME|PREFIX   [--pg-url URL]\n"
    "        (run motehub-fleet-stats where the database is; a revoked token stops\n"
    "         working on every replica within 5 s)\n"
    "certificates (the fleet CA, kept outside the repository; motectl ca --help):\n"
    "  ca init | ca issue ID... | ca issue --prefix P --count N | ca sign CSR\n"
    "  ca revoke ID|SERIAL | ca crl | ca list     [--ca-dir DIR]\n"
    "CURVE keys for the internal ZeroMQ sockets (services take --curve-dir DIR):\n"
    "  curve keygen --out DIR [NAME...]   (default names: gateway ingest twin ota\n"
    "        fleet-stats tools; existing keys are kept)\n"
    "\n"
    "URL and TOKEN default to $MOTEHUB_URL and $MOTEHUB_TOKEN.\n";

/* ---- HTTP ---- */

/* Performs a request; returns the HTTP status (0 when unreachable) and the
 * body in *out (caller frees). */
static long s_http(const char *method, const char *path, const char *ctype, const char *body,
                   size_t blen, const char *if_match, mh_http_resp_t *out)
{
    char url[4096], im[100];
    snprintf(url, sizeof url, "%s%s", s_url, path);
    if (if_match)
        snprintf(im, sizeof im, "\"%s\"", if_match);
    mh_http_req_t req = {.method = method,
                         .url = url,
                         .bearer = s_token,
                         .if_match = if_match ? im : NULL,
                         .content_type = ctype,
                         .body = body,
                         .body_len = blen};
    long status = mh_http_request(&req, out);
    if (!status)
        fprintf(stderr, "motectl: cannot reach %s: %s\n", s_url, out->error);
    return status;
}

/* A JSON call: prints the API's error and returns NULL on failure (*rc
 * set to the exit status). */
static json_t *s_call(const char *method, const char *path, json_t *body, const char *if_match,
                      int *rc)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    mh_http_resp_t out;
    long st =
        s_http(method, path, "application/json", text, text ? strlen(text) : 0, if_match, &out);
    free(text);
    json_t *v = out.len ? mh_json_loadb(out.body, out.len, 0, MH_JSON_MAX_DEPTH, NULL) : NULL;
    if (st == 0 || st >= 400) {
        if (st) {
            json_t *e = json_object_get(v, "error");
            fprintf(stderr, "motectl: %ld %s: %s\n", st,
                    json_string_value(json_object_get(e, "code")) ?: "error",
                    json_string_value(json_object_get(e, "message")) ?: (out.body ?: ""));
        }
        free(out.body);
        json_decref(v);
        *rc = st ? 1 : 3;
        return NULL;
    }
    free(out.body);
    *rc = 0;
    return v ? v : json_object();
}

static void s_path_escape(char *out, size_t len, const char *fmt, const char *a, const char *b)
{
    char *ea = a ? curl_easy_escape(NULL, a, 0) : NULL,
         *eb = b ? curl_easy_escape(NULL, b, 0) : NULL;
    snprintf(out, len, fmt, ea ? ea : "", eb ? eb : "");
    curl_free(ea);
    curl_free(eb);
}

static void s_qappend(char *q, size_t len, const char *name, const char *value)
{
    if (!value)
        return;
    char *e = curl_easy_escape(NULL, value, 0);
    size_t n = strlen(q);
    snprintf(q + n, len - n, "%s%s=%s", n ? "&" : "?", name, e ? e : "");
    curl_free(e);
}

/* ---- output ---- */

static void s_print_json(json_t *v)
{
    char *t = json_dumps(v, JSON_INDENT(2) | JSON_ENCODE_ANY);
    printf("%s\n", t ? t : "null");
    free(t);
}

static const char *s_str(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    static char buf[8][64];
    static int i;
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_null(v) || !v)
        return "-";
    char *b = buf[i++ % 8];
    if (json_is_integer(v))
        snprintf(b, 64, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_real(v))
        snprintf(b, 64, "%g", json_real_value(v));
    else
        snprintf(b, 64, "%s", json_is_true(v) ? "true" : "false");
    return b;
}

static const char *s_time(json_t *o, const char *k)
{
    static char buf[4][32];
    static int i;
    json_t *v = json_object_get(o, k);
    if (!json_is_integer(v))
        return "-";
    time_t t = (time_t)(json_integer_value(v) / 1000);
    struct tm tm;
    char *b = buf[i++ % 4];
    strftime(b, 32, "%Y-%m-%d %H:%M:%S", gmtime_r(&t, &tm));
    return b;
}

/* Prints `v` as JSON (--json) or with `table`. */
static int s_out(json_t *v, void (*table)(json_t *))
{
    if (!v)
        return 1;
    if (s_json || !table)
        s_print_json(v);
    else
        table(v);
    json_decref(v);
    return 0;
}

static void s_t_devices(json_t *v)
{
    printf("%-28s %-8s %-12s %-20s %s\n", "ID", "STATUS", "FIRMWARE", "LAST SEEN (UTC)", "TAGS");
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(v, "items"), i, d)
    {
        char *tags = json_dumps(json_object_get(d, "tags"), JSON_COMPACT);
        printf("%-28s %-8s %-12s %-20s %s\n", s_str(d, "id"), s_str(d, "status"),
               s_str(d, "firmware"), s_time(d, "lastSeen"), tags ? tags : "{}");
        free(tags);
    }
    if (json_is_string(json_object_get(v, "next")))
        printf("(more: --cursor %s, or --all)\n", s_str(v, "next"));
}

static void s_t_device(json_t *d)
{
    const char *k;
    json_t *x;
    json_object_foreach(d, k, x)
    {
        char *t = json_is_string(x) ? NULL : json_dumps(x, JSON_COMPACT | JSON_ENCODE_ANY);
        printf("%-12s %s\n", k, t ? t : json_string_value(x));
        free(t);
    }
}

static void s_t_commands(json_t *v)
{
    printf("%-36s %-12s %-10s %s\n", "ID", "NAME", "STATUS", "CREATED (UTC)");
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(v, "items"), i, c)
        printf("%-36s %-12s %-10s %s\n", s_str(c, "id"), s_str(c, "name"), s_str(c, "status"),
               s_time(c, "createdAt"));
}

static void s_t_firmware(json_t *v)
{
    printf("%-14s %-10s %10s %-64s %s\n", "VERSION", "HARDWARE", "SIZE", "SHA-256",
           "CREATED (UTC)");
    size_t i;
    json_t *f;
    json_t *items = json_incref(json_object_get(v, "items"));
    if (!items) /* one entry, not a list */
        items = json_pack("[O]", v);
    json_array_foreach(items, i, f)
        printf("%-14s %-10s %10s %-64s %s\n", s_str(f, "version"), s_str(f, "hardware"),
               s_str(f, "size"), s_str(f, "sha256"), s_time(f, "created"));
    json_decref(items);
}

static void s_t_rollout(json_t *r)
{
    printf("%-36s %-10s %-13s wave %s  targeted %s\n", s_str(r, "id"), s_str(r, "firmware"),
           s_str(r, "state"), s_str(r, "currentWave"), s_str(r, "targeted"));
    if (json_is_string(json_object_get(r, "reason")))
        printf("  reason: %s\n", s_str(r, "reason"));
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(r, "waves"), i, w)
        printf("  wave %zu %5s%% %-8s targeted %-6s sent %-6s succeeded %-6s failed %-6s timed "
               "out %s\n",
               i, s_str(w, "percent"), s_str(w, "state"), s_str(w, "targeted"), s_str(w, "sent"),
               s_str(w, "succeeded"), s_str(w, "failed"), s_str(w, "timedOut"));
}

static void s_t_rollouts(json_t *v)
{
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(v, "items"), i, r) s_t_rollout(r);
}

static void s_t_summary(json_t *v)
{
    json_t *d = json_object_get(v, "devices"), *rates = json_object_get(v, "rates");
    printf("devices   %s total, %s online, %s offline\n", s_str(d, "total"), s_str(d, "online"),
           s_str(d, "offline"));
    printf("messages  %s/s in, %s/s out\n", s_str(rates, "in"), s_str(rates, "out"));
    const char *k;
    json_t *x;
    printf("firmware ");
    json_object_foreach(json_object_get(v, "firmware"), k, x)
        printf("  %s: %" JSON_INTEGER_FORMAT, k, json_integer_value(x));
    printf("\n");
    json_object_foreach(json_object_get(v, "health"), k, x)
    {
        printf("%-9s", k);
        const char *b;
        json_t *n;
        json_object_foreach(x, b, n)
            printf("  %s: %" JSON_INTEGER_FORMAT, b, json_integer_value(n));
        printf("\n");
    }
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(v, "rollouts"), i, r) s_t_rollout(r);
}

static void s_t_telemetry(json_t *v)
{
    size_t i, j;
    json_t *s, *p;
    json_array_foreach(json_object_get(v, "series"), i, s)
    {
        printf("%s (%s)\n", s_str(s, "metric"), s_str(s, "bucket"));
        json_array_foreach(json_object_get(s, "points"), j, p)
        {
            json_t *t = json_is_array(p) ? json_array_get(p, 0) : json_object_get(p, "t");
            json_t *tmp = json_pack("{s:O}", "t", t);
            if (json_is_array(p))
                printf("  %s  %g\n", s_time(tmp, "t"), json_number_value(json_array_get(p, 1)));
            else
                printf("  %s  min %g  avg %g  max %g  n %s\n", s_time(tmp, "t"),
                       json_number_value(json_object_get(p, "min")),
                       json_number_value(json_object_get(p, "avg")),
                       json_number_value(json_object_get(p, "max")), s_str(p, "count"));
            json_decref(tmp);
        }
    }
}

static void s_t_latest(json_t *v)
{
    const char *k;
    json_t *m;
    json_object_foreach(json_object_get(v, "metrics"), k, m) printf(
        "%-16s %-12g %s\n", k, json_number_value(json_object_get(m, "value")), s_time(m, "t"));
}

/* ---- commands ---- */

#define NEED(n)                                                                                    \
    do {                                                                                           \
        if (argc < (n)) {                                                                          \
            fputs(s_usage, stderr);                                                                \
            return 2;                                                                              \
        }                                                                                          \
    } while (0)

/* Options after the command words: --name value pairs, repeatable. */
typedef struct {
    const char *name;
    const char *values[16];
    int n;
} s_opt_t;

static int s_opts(int argc, char **argv, s_opt_t *opts, int nopts, char **pos, int *npos)
{
    *npos = 0;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0 || strcmp(argv[i], "--all") == 0) {
            pos[(*npos)++] = argv[i];
            continue;
        }
        int k = 0;
        while (k < nopts && strcmp(argv[i] + 2, opts[k].name) != 0)
            k++;
        if (k == nopts || i + 1 >= argc || opts[k].n == 16) {
            fprintf(stderr, "motectl: unknown or incomplete option %s\n", argv[i]);
            return 2;
        }
        opts[k].values[opts[k].n++] = argv[++i];
    }
    return 0;
}

static const char *s_opt(s_opt_t *o, int nopts, const char *name)
{
    for (int k = 0; k < nopts; k++)
        if (strcmp(o[k].name, name) == 0 && o[k].n)
            return o[k].values[0];
    return NULL;
}

static int s_devices(int argc, char **argv)
{
    NEED(1);
    int rc;
    char path[2048];
    if (strcmp(argv[0], "list") == 0) {
        s_opt_t o[] = {{"status"}, {"firmware"}, {"tag"}, {"q"}, {"limit"}, {"cursor"}};
        char *pos[16];
        int np;
        if (s_opts(argc - 1, argv + 1, o, 6, pos, &np))
            return 2;
        bool all = np && strcmp(pos[0], "--all") == 0;
        char q[1024] = "";
        for (int k = 0; k < 6; k++)
            for (int j = 0; j < o[k].n; j++)
                s_qappend(q, sizeof q, o[k].name, o[k].values[j]);
        json_t *acc = NULL;
        for (;;) {
            snprintf(path, sizeof path, "/api/v1/devices%s", q);
            json_t *v = s_call("GET", path, NULL, NULL, &rc);
            if (!v)
                return rc;
            if (!all)
                return s_out(v, s_t_devices);
            if (!acc)
                acc = json_pack("{s:[],s:n}", "items", "next");
            json_array_extend(json_object_get(acc, "items"), json_object_get(v, "items"));
            const char *next = json_string_value(json_object_get(v, "next"));
            if (!next) {
                json_decref(v);
                return s_out(acc, s_t_devices);
            }
            char *cq = strstr(q, "cursor=");
            if (cq)
                *(cq - 1) = 0;
            s_qappend(q, sizeof q, "cursor", next);
            json_decref(v);
        }
    }
    NEED(2);
    if (strcmp(argv[0], "get") == 0) {
        s_path_escape(path, sizeof path, "/api/v1/devices/%s%s", argv[1], NULL);
        return s_out(s_call("GET", path, NULL, NULL, &rc), s_t_device) ? rc : 0;
    }
    if (strcmp(argv[0], "delete") == 0) {
        s_path_escape(path, sizeof path, "/api/v1/devices/%s%s", argv[1], NULL);
        json_t *v = s_call("DELETE", path, NULL, NULL, &rc);
        if (v && !s_json)
            printf("deleted %s\n", argv[1]);
        json_decref(v);
        return v ? 0 : rc;
    }
    if (strcmp(argv[0], "register") == 0) {
        json_t *tags = json_object();
        for (int i = 2; i < argc; i++) {
            char *eq = strchr(argv[i], '=');
            if (!eq) {
                fprintf(stderr, "motectl: tags are KEY=VALUE\n");
                json_decref(tags);
                return 2;
            }
            *eq = 0;
            json_object_set_new(tags, argv[i], json_string(eq + 1));
        }
        json_t *body = json_pack("{s:s,s:o}", "id", argv[1], "tags", tags);
        json_t *v = s_call("POST", "/api/v1/devices", body, NULL, &rc);
        json_decref(body);
        return s_out(v, s_t_device) ? rc : 0;
    }
    fputs(s_usage, stderr);
    return 2;
}

/* KEY=VALUE arguments as an object: with `json` the values are JSON (a
 * bare word is a string), else strings. NULL (said why) on a malformed one. */
static json_t *s_key_values(char **pos, int np, bool json)
{
    json_t *o = json_object();
    for (int i = 0; i < np; i++) {
        char *eq = strchr(pos[i], '=');
        if (!eq) {
            fprintf(stderr, "motectl: give KEY=VALUE\n");
            json_decref(o);
            return NULL;
        }
        *eq = 0;
        json_t *val = json ? mh_json_loads(eq + 1, JSON_DECODE_ANY, MH_JSON_MAX_DEPTH, NULL) : NULL;
        json_object_set_new(o, pos[i], val ? val : json_string(eq + 1));
    }
    return o;
}

static int s_twin(int argc, char **argv)
{
    NEED(2);
    int rc;
    char path[1024];
    s_path_escape(path, sizeof path, "/api/v1/devices/%s/twin%s", argv[1], NULL);
    if (strcmp(argv[0], "get") == 0)
        return s_out(s_call("GET", path, NULL, NULL, &rc), NULL) ? rc : 0;
    bool set = strcmp(argv[0], "set") == 0;
    if (!set && strcmp(argv[0], "tag") != 0) {
        fputs(s_usage, stderr);
        return 2;
    }
    s_opt_t o[] = {{"if-match"}};
    char *pos[64];
    int np;
    if (s_opts(argc - 2, argv + 2, o, 1, pos, &np) || np == 0) {
        fputs(s_usage, stderr);
        return 2;
    }
    json_t *patch = s_key_values(pos, np, set);
    if (!patch)
        return 2;
    json_t *body = json_pack("{s:o}", set ? "desired" : "tags", patch);
    json_t *v = s_call("PATCH", path, body, s_opt(o, 1, "if-match"), &rc);
    json_decref(body);
    return s_out(v, NULL) ? rc : 0;
}

/* "10" → 10, "0.95" → 0.95: whole numbers stay integers. */
static json_t *s_number(const char *t)
{
    char *end;
    long long n = strtoll(t, &end, 10);
    return *end ? json_real(atof(t)) : json_integer(n);
}

/* A device's named shadows: /api/v1/devices/{id}/shadows[/{name}] */
static int s_shadow(int argc, char **argv)
{
    NEED(2);
    int rc;
    char path[1024];
    if (strcmp(argv[0], "list") == 0) {
        s_path_escape(path, sizeof path, "/api/v1/devices/%s/shadows%s", argv[1], NULL);
        return s_out(s_call("GET", path, NULL, NULL, &rc), NULL) ? rc : 0;
    }
    NEED(3);
    s_path_escape(path, sizeof path, "/api/v1/devices/%s/shadows/%s", argv[1], argv[2]);
    if (strcmp(argv[0], "get") == 0 || strcmp(argv[0], "delete") == 0)
        return s_out(s_call(*argv[0] == 'g' ? "GET" : "DELETE", path, NULL, NULL, &rc), NULL) ? rc
                                                                                              : 0;
    s_opt_t o[] = {{"version"}};
    char *pos[64];
    int np;
    if (strcmp(argv[0], "set") || s_opts(argc - 3, argv + 3, o, 1, pos, &np) || np == 0) {
        fputs(s_usage, stderr);
        return 2;
    }
    json_t *desired = s_key_values(pos, np, true);
    if (!desired)
        return 2;
    json_t *body = json_pack("{s:o}", "desired", desired);
    if (s_opt(o, 1, "version"))
        json_object_set_new(body, "version", s_number(s_opt(o, 1, "version")));
    json_t *v = s_call("PATCH", path, body, NULL, &rc);
    json_decref(body);
    return s_out(v, NULL) ? rc : 0;
}

static int s_command(int argc, char **argv)
{
    NEED(2);
    int rc;
    char path[1024];
    if (strcmp(argv[0], "list") == 0) {
        s_path_escape(path, sizeof path, "/api/v1/devices/%s/commands%s", argv[1], NULL);
        return s_out(s_call("GET", path, NULL, NULL, &rc), s_t_commands) ? rc : 0;
    }
    NEED(3);
    if (strcmp(argv[0], "get") == 0) {
        s_path_escape(path, sizeof path, "/api/v1/devices/%s/commands/%s", argv[1], argv[2]);
        return s_out(s_call("GET", path, NULL, NULL, &rc), s_t_device) ? rc : 0;
    }
    if (strcmp(argv[0], "send") != 0) {
        fputs(s_usage, stderr);
        return 2;
    }
    s_opt_t o[] = {{"ttl"}, {"timeout"}};
    char *pos[8];
    int np;
    if (s_opts(argc - 3, argv + 3, o, 2, pos, &np))
        return 2;
    json_t *params = np ? mh_json_loads(pos[0], 0, MH_JSON_MAX_DEPTH, NULL) : json_object();
    if (!json_is_object(params)) {
        fprintf(stderr, "motectl: PARAMS is a JSON object, e.g. '{\"ms\":500}'\n");
        json_decref(params);
        return 2;
    }
    json_t *body = json_pack("{s:s,s:o}", "name", argv[2], "params", params);
    if (s_opt(o, 2, "ttl"))
        json_object_set_new(body, "ttl", json_integer(atoll(s_opt(o, 2, "ttl"))));
    if (s_opt(o, 2, "timeout"))
        json_object_set_new(body, "timeout", json_integer(atoll(s_opt(o, 2, "timeout"))));
    s_path_escape(path, sizeof path, "/api/v1/devices/%s/commands%s", argv[1], NULL);
    json_t *v = s_call("POST", path, body, NULL, &rc);
    json_decref(body);
    return s_out(v, s_t_device) ? rc : 0;
}

static int s_telemetry(int argc, char **argv)
{
    NEED(1);
    int rc;
    char path[2048];
    if (strcmp(argv[0], "latest") == 0) {
        NEED(2);
        s_path_escape(path, sizeof path, "/api/v1/devices/%s/telemetry/latest%s", argv[1], NULL);
        return s_out(s_call("GET", path, NULL, NULL, &rc), s_t_latest) ? rc : 0;
    }
    s_opt_t o[] = {{"metric"}, {"from"}, {"to"}, {"bucket"}, {"limit"}, {"cursor"}};
    char *pos[8];
    int np;
    if (s_opts(argc - 1, argv + 1, o, 6, pos, &np))
        return 2;
    char q[1024] = "";
    for (int k = 0; k < 6; k++)
        for (int j = 0; j < o[k].n; j++)
            s_qappend(q, sizeof q, o[k].name, o[k].values[j]);
    char base[600];
    s_path_escape(base, sizeof base, "/api/v1/devices/%s/telemetry%s", argv[0], NULL);
    snprintf(path, sizeof path, "%s%s", base, q);
    return s_out(s_call("GET", path, NULL, NULL, &rc), s_t_telemetry) ? rc : 0;
}

static int s_firmware(int argc, char **argv)
{
    NEED(1);
    int rc;
    char path[1024];
    if (strcmp(argv[0], "list") == 0)
        return s_out(s_call("GET", "/api/v1/firmware", NULL, NULL, &rc), s_t_firmware) ? rc : 0;
    if (strcmp(argv[0], "signing-key") == 0) {
        mh_http_resp_t out;
        long st = s_http("GET", "/api/v1/firmware/signing-key", NULL, NULL, 0, NULL, &out);
        if (st == 200)
            fputs(out.body ? out.body : "", stdout);
        else if (st)
            fprintf(stderr, "motectl: %ld: %s\n", st, out.body ? out.body : "");
        free(out.body);
        return st == 200 ? 0 : st ? 1 : 3;
    }
    NEED(2);
    if (strcmp(argv[0], "get") == 0) {
        s_path_escape(path, sizeof path, "/api/v1/firmware/%s%s", argv[1], NULL);
        return s_out(s_call("GET", path, NULL, NULL, &rc), s_t_firmware) ? rc : 0;
    }
    if (strcmp(argv[0], "upload") != 0) {
        fputs(s_usage, stderr);
        return 2;
    }
    s_opt_t o[] = {{"version"}, {"hardware"}};
    char *pos[4];
    int np;
    if (s_opts(argc - 2, argv + 2, o, 2, pos, &np) || !s_opt(o, 2, "version")) {
        fprintf(stderr, "motectl: firmware upload FILE --version V [--hardware H]\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    char *img = NULL;
    size_t img_len = 0;
    FILE *m = open_memstream(&img, &img_len);
    char chunk[65536];
    size_t n;
    while (m && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, n, m);
    fclose(f);
    if (!m || fclose(m)) {
        perror(argv[1]);
        return 2;
    }
    char q[512] = "";
    s_qappend(q, sizeof q, "version", s_opt(o, 2, "version"));
    s_qappend(q, sizeof q, "hardware", s_opt(o, 2, "hardware"));
    snprintf(path, sizeof path, "/api/v1/firmware%s", q);
    mh_http_resp_t out;
    long st = s_http("POST", path, "application/octet-stream", img, img_len, NULL, &out);
    free(img);
    json_t *v = out.len ? mh_json_loadb(out.body, out.len, 0, MH_JSON_MAX_DEPTH, NULL) : NULL;
    free(out.body);
    if (st != 201) {
        if (st)
            fprintf(stderr, "motectl: %ld: %s\n", st,
                    json_string_value(json_object_get(json_object_get(v, "error"), "message"))
                        ?: "upload refused");
        json_decref(v);
        return st ? 1 : 3;
    }
    return s_out(v, s_t_firmware);
}

/* rollout and job: /api/v1/rollouts and /api/v1/jobs (`jobs`) */
static int s_rollout(int argc, char **argv, bool jobs)
{
    NEED(1);
    int rc;
    char path[1024];
    const char *base = jobs ? "/api/v1/jobs" : "/api/v1/rollouts";
    if (strcmp(argv[0], "list") == 0)
        return s_out(s_call("GET", base, NULL, NULL, &rc), s_t_rollouts) ? rc : 0;
    if (strcmp(argv[0], "create") == 0) {
        s_opt_t o[] = {{"firmware"},   {"waves"},     {"tag"},         {"from-firmware"},
                       {"success"},    {"failure"},   {"soak"},        {"max-per-minute"},
                       {"on-failure"}, {"json-spec"}, {"job-timeout"}, {"document"}};
        char *pos[4];
        int np;
        if (s_opts(argc - 1, argv + 1, o, 12, pos, &np))
            return 2;
        json_t *doc = NULL;
        if (s_opt(o, 12, "document") &&
            !(doc = mh_json_loads(s_opt(o, 12, "document"), 0, MH_JSON_MAX_DEPTH, NULL))) {
            fprintf(stderr, "motectl: --document is not a JSON object\n");
            return 2;
        }
        json_t *spec;
        if (s_opt(o, 11, "json-spec")) {
            spec = mh_json_loads(s_opt(o, 11, "json-spec"), 0, MH_JSON_MAX_DEPTH, NULL);
            if (!spec) {
                fprintf(stderr, "motectl: --json-spec is not JSON\n");
                return 2;
            }
        } else {
            if (!s_opt(o, 11, "firmware") == !doc) {
                fprintf(stderr, jobs ? "motectl: job create --document JSON ...\n"
                                     : "motectl: rollout create --firmware V ...\n");
                json_decref(doc);
                return 2;
            }
            spec = doc ? json_pack("{s:o}", "document", doc)
                       : json_pack("{s:s}", "firmware", s_opt(o, 11, "firmware"));
            json_t *target = json_object(), *tags = json_object();
            for (int j = 0; j < o[2].n; j++) {
                char kv[256];
                snprintf(kv, sizeof kv, "%s", o[2].values[j]);
                char *c = strchr(kv, ':');
                if (c) {
                    *c = 0;
                    json_object_set_new(tags, kv, json_string(c + 1));
                }
            }
            if (json_object_size(tags))
                json_object_set(target, "tags", tags);
            json_decref(tags);
            if (s_opt(o, 11, "from-firmware"))
                json_object_set_new(target, "firmware", json_string(s_opt(o, 11, "from-firmware")));
            json_object_set_new(spec, "target", target);
            char waves[256];
            snprintf(waves, sizeof waves, "%s", s_opt(o, 11, "waves") ?: "1,10,100");
            json_t *wa = json_array();
            for (char *save = NULL, *t = strtok_r(waves, ",", &save); t;
                 t = strtok_r(NULL, ",", &save))
                json_array_append_new(wa, json_pack("{s:o}", "percent", s_number(t)));
            json_object_set_new(spec, "waves", wa);
            static const char *num[][2] = {{"success", "successThreshold"},
                                           {"failure", "failureThreshold"},
                                           {"soak", "soakSeconds"},
                                           {"max-per-minute", "maxPerMinute"},
                                           {"job-timeout", "jobTimeoutSeconds"}};
            for (size_t k = 0; k < sizeof num / sizeof *num; k++)
                if (s_opt(o, 11, num[k][0]))
                    json_object_set_new(spec, num[k][1], s_number(s_opt(o, 11, num[k][0])));
            if (s_opt(o, 11, "on-failure"))
                json_object_set_new(spec, "onFailure", json_string(s_opt(o, 11, "on-failure")));
        }
        json_t *v = s_call("POST", base, spec, NULL, &rc);
        json_decref(spec);
        return s_out(v, s_t_rollout) ? rc : 0;
    }
    NEED(2);
    char fmt[64];
    if (strcmp(argv[0], "get") == 0) {
        snprintf(fmt, sizeof fmt, "%s/%%s%%s", base);
        s_path_escape(path, sizeof path, fmt, argv[1], NULL);
        return s_out(s_call("GET", path, NULL, NULL, &rc), s_t_rollout) ? rc : 0;
    }
    if (strcmp(argv[0], jobs ? "executions" : "jobs") == 0) {
        snprintf(fmt, sizeof fmt, "%s/%%s/%s%%s", base, argv[0]);
        s_path_escape(path, sizeof path, fmt, argv[1], NULL);
        return s_out(s_call("GET", path, NULL, NULL, &rc), NULL) ? rc : 0;
    }
    static const char *controls[] = {"pause", "resume", "abort", "rollback"};
    for (size_t k = 0; k < (jobs ? 3 : 4); k++)
        if (strcmp(argv[0], controls[k]) == 0) {
            snprintf(fmt, sizeof fmt, "%s/%%s/%s%%s", base, controls[k]);
            s_path_escape(path, sizeof path, fmt, argv[1], NULL);
            return s_out(s_call("POST", path, NULL, NULL, &rc), s_t_rollout) ? rc : 0;
        }
    fputs(s_usage, stderr);
    return 2;
}

static int s_fleet(int argc, char **argv)
{
    NEED(1);
    int rc;
    if (strcmp(argv[0], "summary") == 0)
        return s_out(s_call("GET", "/api/v1/fleet/summary", NULL, NULL, &rc), s_t_summary) ? rc : 0;
    if (strcmp(argv[0], "geo") == 0)
        return s_out(s_call("GET", "/api/v1/fleet/geo", NULL, NULL, &rc), NULL) ? rc : 0;
    fputs(s_usage, stderr);
    return 2;
}

/* Tokens are made where the database is: by fleet-stats' own command,
 * found next to motectl in a build tree or on PATH. */
static int s_tokens(int argc, char **argv, const char *self)
{
    NEED(1);
    s_opt_t o[] = {{"pg-url"}};
    char *pos[4];
    int np;
    const char *sub = strcmp(argv[0], "create") == 0   ? "create-token"
                      : strcmp(argv[0], "revoke") == 0 ? "revoke-token"
                      : strcmp(argv[0], "list") == 0   ? "list-tokens"
                                                       : NULL;
    if (!sub || s_opts(argc - 1, argv + 1, o, 1, pos, &np) || (np != 1 && *sub != 'l')) {
        fputs(s_usage, stderr);
        return 2;
    }
    char bin[1024];
    const char *slash = strrchr(self, '/');
    snprintf(bin, sizeof bin, "%.*s/../../services/fleet-stats/motehub-fleet-stats",
             slash ? (int)(slash - self) : 1, slash ? self : ".");
    FILE *f = fopen(bin, "r");
    if (f)
        fclose(f);
    else
        snprintf(bin, sizeof bin, "motehub-fleet-stats");
    char *args[] = {bin, (char *)sub, NULL, NULL, NULL};
    int k = 2;
    if (np == 1)
        args[k++] = pos[0];
    char pg[1024];
    if (s_opt(o, 1, "pg-url")) {
        snprintf(pg, sizeof pg, "--pg-url=%s", s_opt(o, 1, "pg-url"));
        args[k++] = pg;
    }
    fflush(NULL);
    execvp(bin, args);
    perror(bin);
    return 3;
}

/* motectl curve keygen --out DIR [NAME...] */
static int s_curve(int argc, char **argv)
{
    static const char *defaults[] = {"gateway", "ingest", "twin", "ota", "fleet-stats", "tools"};
    if (argc < 3 || strcmp(argv[0], "keygen") != 0 || strcmp(argv[1], "--out") != 0) {
        fputs(s_usage, stderr);
        return 2;
    }
    const char *dir = argv[2];
    const char *const *names = argc > 3 ? (const char *const *)argv + 3 : defaults;
    size_t n = argc > 3 ? (size_t)(argc - 3) : sizeof defaults / sizeof *defaults;
    for (size_t i = 0; i < n; i++)
        if (!mc_valid_device_id(names[i]) || strcmp(names[i], "server") == 0) {
            fprintf(stderr, "motectl: bad key name \"%s\"\n", names[i]);
            return 2;
        }
    if (mh_curve_keygen(dir, names, n) != 0) {
        fprintf(stderr, "motectl: cannot write keys in %s: %s\n", dir, strerror(errno));
        return 1;
    }
    printf("CURVE keys in %s: server.key (+ secret), ", dir);
    for (size_t i = 0; i < n; i++)
        printf("%s%s.key_secret", i ? ", " : "", names[i]);
    printf("; the services accept the public keys in %s/clients/\n", dir);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"url", required_argument, NULL, 'u'},
                                             {"token", required_argument, NULL, 't'},
                                             {"json", no_argument, NULL, 'j'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *self = argv[0];
    if (getenv("MOTEHUB_URL"))
        s_url = getenv("MOTEHUB_URL");
    s_token = getenv("MOTEHUB_TOKEN");
    int c;
    /* "+": options stop at the command, whose own options come after it */
    while ((c = getopt_long(argc, argv, "+u:t:jh", longopts, NULL)) != -1) {
        switch (c) {
        case 'u':
            s_url = optarg;
            break;
        case 't':
            s_token = optarg;
            break;
        case 'j':
            s_json = true;
            break;
        case 'h':
            fputs(s_usage, stdout);
            return 0;
        default:
            fputs(s_usage, stderr);
            return 2;
        }
    }
    argc -= optind;
    argv += optind;
    /* --json may also follow the command */
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--json") == 0) {
            s_json = true;
            memmove(argv + i, argv + i + 1, (size_t)(argc - i - 1) * sizeof *argv);
            argc--, i--;
        }
    if (argc < 1) {
        fputs(s_usage, stderr);
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc;
    const char *cmd = argv[0];
    if (strcmp(cmd, "devices") == 0 || strcmp(cmd, "device") == 0)
        rc = s_devices(argc - 1, argv + 1);
    else if (strcmp(cmd, "twin") == 0)
        rc = s_twin(argc - 1, argv + 1);
    else if (strcmp(cmd, "command") == 0 || strcmp(cmd, "commands") == 0)
        rc = s_command(argc - 1, argv + 1);
    else if (strcmp(cmd, "telemetry") == 0)
        rc = s_telemetry(argc - 1, argv + 1);
    else if (strcmp(cmd, "firmware") == 0)
        rc = s_firmware(argc - 1, argv + 1);
    else if (strcmp(cmd, "rollout") == 0 || strcmp(cmd, "rollouts") == 0)
        rc = s_rollout(argc - 1, argv + 1, false);
    else if (strcmp(cmd, "job") == 0 || strcmp(cmd, "jobs") == 0)
        rc = s_rollout(argc - 1, argv + 1, true);
    else if (strcmp(cmd, "shadow") == 0 || strcmp(cmd, "shadows") == 0)
        rc = s_shadow(argc - 1, argv + 1);
    else if (strcmp(cmd, "fleet") == 0)
        rc = s_fleet(argc - 1, argv + 1);
    else if (strcmp(cmd, "token") == 0 || strcmp(cmd, "tokens") == 0)
        rc = s_tokens(argc - 1, argv + 1, self);
    else if (strcmp(cmd, "ca") == 0)
        rc = mc_ca_main(argc - 1, argv + 1);
    else if (strcmp(cmd, "curve") == 0)
        rc = s_curve(argc - 1, argv + 1);
    else {
        fputs(s_usage, stderr);
        rc = 2;
    }
    curl_global_cleanup();
    return rc;
}
