/* motectl's shared plumbing: see mc_cli.h. */
#include "mc_cli.h"

#include "mh_json.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *mc_url = "http://127.0.0.1:8080", *mc_token;
bool mc_json;

/* Performs a request; returns the HTTP status (0 when unreachable) and the
 * body in *out (caller frees). */
long mc_http(const char *method, const char *path, const char *ctype, const char *body, size_t blen,
             const char *if_match, mh_http_resp_t *out)
{
    char url[4096], im[100];
    snprintf(url, sizeof url, "%s%s", mc_url, path);
    if (if_match)
        snprintf(im, sizeof im, "\"%s\"", if_match);
    mh_http_req_t req = {.method = method,
                         .url = url,
                         .bearer = mc_token,
                         .if_match = if_match ? im : NULL,
                         .content_type = ctype,
                         .body = body,
                         .body_len = blen};
    long status = mh_http_request(&req, out);
    if (!status)
        fprintf(stderr, "motectl: cannot reach %s: %s\n", mc_url, out->error);
    return status;
}

/* A JSON call: prints the API's error and returns NULL on failure (*rc
 * set to the exit status). */
json_t *mc_call(const char *method, const char *path, json_t *body, const char *if_match, int *rc)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    mh_http_resp_t out;
    long st =
        mc_http(method, path, "application/json", text, text ? strlen(text) : 0, if_match, &out);
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

void mc_path_escape(char *out, size_t len, const char *fmt, const char *a, const char *b)
{
    char *ea = a ? curl_easy_escape(NULL, a, 0) : NULL,
         *eb = b ? curl_easy_escape(NULL, b, 0) : NULL;
    snprintf(out, len, fmt, ea ? ea : "", eb ? eb : "");
    curl_free(ea);
    curl_free(eb);
}

void mc_qappend(char *q, size_t len, const char *name, const char *value)
{
    if (!value)
        return;
    char *e = curl_easy_escape(NULL, value, 0);
    size_t n = strlen(q);
    snprintf(q + n, len - n, "%s%s=%s", n ? "&" : "?", name, e ? e : "");
    curl_free(e);
}

void mc_print_json(json_t *v)
{
    char *t = json_dumps(v, JSON_INDENT(2) | JSON_ENCODE_ANY);
    printf("%s\n", t ? t : "null");
    free(t);
}

const char *mc_str(json_t *o, const char *k)
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

const char *mc_time(json_t *o, const char *k)
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
int mc_out(json_t *v, void (*table)(json_t *))
{
    if (!v)
        return 1;
    if (mc_json || !table)
        mc_print_json(v);
    else
        table(v);
    json_decref(v);
    return 0;
}

int mc_opts(int argc, char **argv, mc_opt_t *opts, int nopts, char **pos, int *npos)
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

const char *mc_opt(mc_opt_t *o, int nopts, const char *name)
{
    for (int k = 0; k < nopts; k++)
        if (strcmp(o[k].name, name) == 0 && o[k].n)
            return o[k].values[0];
    return NULL;
}

/* KEY=VALUE arguments as an object: with `json` the values are JSON (a
 * bare word is a string), else strings. NULL (said why) on a malformed one. */
json_t *mc_key_values(char **pos, int np, bool json)
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

/* "10" → 10, "0.95" → 0.95: whole numbers stay integers. */
json_t *mc_number(const char *t)
{
    char *end;
    long long n = strtoll(t, &end, 10);
    return *end ? json_real(atof(t)) : json_integer(n);
}
