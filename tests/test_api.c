/* The operator HTTP API as served by fleet-stats, end to end: real
 * PostgreSQL, twin behind it, requests over HTTP with a token made by the
 * documented command. What an operator's script would check. */
#include "mh_test.h"

#include "mh_http_client.h"

#include <czmq.h>
#include <jansson.h>

static mht_backends_t s_be;
static mht_service_t s_fs;
static int s_port;
static char s_token[128];

typedef struct {
    long status;
    json_t *body;
    char etag[96];
} s_resp_t;

static s_resp_t s_req_n(const char *method, const char *path, const char *body, size_t blen,
                        const char *token, const char *if_match, char *raw, size_t rawlen);

/* token: NULL = the good one, "" = none */
static s_resp_t s_req(const char *method, const char *path, const char *body, const char *token,
                      const char *if_match)
{
    return s_req_n(method, path, body, body ? strlen(body) : 0, token, if_match, NULL, 0);
}

static s_resp_t s_req_n(const char *method, const char *path, const char *body, size_t blen,
                        const char *token, const char *if_match, char *raw, size_t rawlen)
{
    s_resp_t r = {0};
    char url[1024];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", s_port, path);
    mh_http_req_t req = {.method = method,
                         .url = url,
                         .bearer = !token   ? s_token
                                   : *token ? token
                                            : NULL,
                         .if_match = if_match,
                         .body = body,
                         .body_len = blen};
    mh_http_resp_t resp;
    r.status = mh_http_request(&req, &resp);
    if (!r.status)
        fail_msg("%s %s: %s", method, path, resp.error);
    if (resp.len)
        r.body = json_loadb(resp.body, resp.len, 0, NULL);
    if (raw)
        snprintf(raw, rawlen, "%.*s", (int)resp.len, resp.body);
    snprintf(r.etag, sizeof r.etag, "%s", resp.etag);
    mh_http_resp_free(&resp);
    return r;
}

static long s_status(const char *method, const char *path, const char *body)
{
    s_resp_t r = s_req(method, path, body, NULL, NULL);
    json_decref(r.body);
    return r.status;
}

static const char *s_err_code(json_t *body)
{
    return json_string_value(json_object_get(json_object_get(body, "error"), "code"));
}

static int s_setup(void **state)
{
    (void)state;
    mht_backends_start(&s_be);
    mht_fleet_start(&s_fs, "fleet-stats", &s_be.db, &s_be.twin, &s_be.ota, &s_be.ingest, NULL, NULL,
                    s_token);
    s_port = s_fs.port;
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    int sf = mht_stop(s_fs.pid, SIGTERM, 20000);
    bool clean = mht_backends_stop(&s_be);
    if (!WIFEXITED(sf) || WEXITSTATUS(sf)) {
        fprintf(stderr, "fleet-stats did not exit cleanly (%d)\n", sf);
        return -1;
    }
    return clean ? 0 : -1;
}

static void test_auth(void **state)
{
    (void)state;
    s_resp_t r = s_req("GET", "/api/v1/devices", NULL, "", NULL);
    assert_int_equal(r.status, 401);
    assert_string_equal(s_err_code(r.body), "unauthorized");
    json_decref(r.body);
    r = s_req("GET", "/api/v1/devices", NULL, "mht_wrong", NULL);
    assert_int_equal(r.status, 401);
    json_decref(r.body);
    assert_int_equal(s_status("GET", "/api/v1/devices", NULL), 200);
    assert_int_equal(s_status("GET", "/api/v1/nothing", NULL), 404);
}

static void test_devices_and_twins(void **state)
{
    (void)state;
    assert_int_equal(
        s_status("POST", "/api/v1/devices", "{\"id\":\"api-1\",\"tags\":{\"m\":\"x1\"}}"), 201);
    assert_int_equal(s_status("POST", "/api/v1/devices", "{\"id\":\"api-1\"}"), 409);
    assert_int_equal(s_status("POST", "/api/v1/devices", "{\"id\":"), 400);
    assert_int_equal(s_status("POST", "/api/v1/devices", "{\"id\":\"bad id\"}"), 400);
    s_resp_t r = s_req("GET", "/api/v1/devices/api-1", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.body, "status")), "offline");
    json_decref(r.body);
    assert_int_equal(s_status("GET", "/api/v1/devices/nope", NULL), 404);
    r = s_req("GET", "/api/v1/devices/api-1/twin", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_true(r.etag[0] == '"');
    char etag[96];
    snprintf(etag, sizeof etag, "%s", r.etag);
    json_decref(r.body);
    r = s_req("PATCH", "/api/v1/devices/api-1/twin", "{\"desired\":{\"led\":true}}", NULL, etag);
    assert_int_equal(r.status, 200);
    json_decref(r.body);
    r = s_req("PATCH", "/api/v1/devices/api-1/twin", "{\"desired\":{\"led\":false}}", NULL, etag);
    assert_int_equal(r.status, 412);
    json_decref(r.body);
    assert_int_equal(s_status("PATCH", "/api/v1/devices/api-1/twin", "{\"colour\":1}"), 400);
    r = s_req("POST", "/api/v1/devices/api-1/commands", "{\"name\":\"reboot\",\"ttl\":60}", NULL,
              NULL);
    assert_int_equal(r.status, 202);
    const char *cid = json_string_value(json_object_get(r.body, "id"));
    assert_non_null(cid);
    char path[256];
    snprintf(path, sizeof path, "/api/v1/devices/api-1/commands/%s", cid);
    json_decref(r.body);
    assert_int_equal(s_status("GET", path, NULL), 200);
    r = s_req("GET", "/api/v1/devices/api-1/commands", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.body, "items")), 1);
    json_decref(r.body);
    assert_int_equal(s_status("DELETE", "/api/v1/devices/api-1", NULL) / 100, 2);
    assert_int_equal(s_status("GET", "/api/v1/devices/api-1", NULL), 404);
}

/* `prefix` + `depth` x `open` + "1" + `depth` x `close` + `suffix`; the
 * caller frees it. */
static char *s_nested(const char *prefix, int depth, const char *open, char close,
                      const char *suffix)
{
    size_t ol = strlen(open), n = strlen(prefix) + (size_t)depth * (ol + 1) + strlen(suffix) + 2;
    char *b = malloc(n), *p = b;
    if (!b)
        abort();
    p += sprintf(p, "%s", prefix);
    for (int i = 0; i < depth; i++)
        p += sprintf(p, "%s", open);
    *p++ = '1';
    for (int i = 0; i < depth; i++)
        *p++ = close;
    sprintf(p, "%s", suffix);
    return b;
}

static void s_expect_too_deep(const char *method, const char *path, char *body)
{
    s_resp_t r = s_req(method, path, body, NULL, NULL);
    free(body);
    assert_int_equal(r.status, 400);
    const char *msg =
        json_string_value(json_object_get(json_object_get(r.body, "error"), "message"));
    assert_non_null(msg);
    assert_non_null(strstr(msg, "deeper than 32 levels"));
    json_decref(r.body);
    assert_true(mht_alive(s_fs.pid));
}

/* Issue 14: 2 KB bodies nested hundreds deep used to kill fleet-stats with
 * SIGSEGV (its HTTP threads have 100 KiB of stack). Now: 400 naming the
 * limit, nothing changed, the daemon up; within the limit the documents'
 * own rules still answer (twin depth 8: 413). */
static void test_deep_bodies(void **state)
{
    (void)state;
    assert_int_equal(s_status("POST", "/api/v1/devices", "{\"id\":\"deep-1\"}"), 201);
    s_resp_t r = s_req("GET", "/api/v1/devices/deep-1/twin", NULL, NULL, NULL);
    char etag[96];
    snprintf(etag, sizeof etag, "%s", r.etag);
    json_decref(r.body);

    s_expect_too_deep("PATCH", "/api/v1/devices/deep-1/twin",
                      s_nested("{\"desired\":", 900, "{\"a\":", '}', "}"));
    s_expect_too_deep("POST", "/api/v1/devices", s_nested("", 1000, "[", ']', ""));
    s_expect_too_deep("POST", "/api/v1/devices", s_nested("", 700, "[", ']', ""));
    s_expect_too_deep("POST", "/api/v1/devices",
                      s_nested("{\"id\":\"deep-2\",\"tags\":", 100, "{\"t\":", '}', "}"));
    s_expect_too_deep("POST", "/api/v1/devices/deep-1/commands",
                      s_nested("{\"name\":\"reboot\",\"params\":", 300, "{\"p\":", '}', "}"));
    s_expect_too_deep("POST", "/api/v1/rollouts",
                      s_nested("{\"version\":\"9.9.9\",\"waves\":", 50, "[", ']', "}"));
    s_expect_too_deep("PATCH", "/api/v1/devices/deep-1/twin",
                      s_nested("{\"desired\":{\"k\":1},\"tags\":{\"t\":", 32, "[", ']', "}"));
    /* nothing changed: the twin's version, no second device, no command */
    r = s_req("GET", "/api/v1/devices/deep-1/twin", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.etag, etag);
    json_decref(r.body);
    assert_int_equal(s_status("GET", "/api/v1/devices/deep-2", NULL), 404);
    r = s_req("GET", "/api/v1/devices/deep-1/commands", NULL, NULL, NULL);
    assert_int_equal(json_array_size(json_object_get(r.body, "items")), 0);
    json_decref(r.body);

    /* inside the parser's limit, the twin's own: 9 keys deep is 413, 8 is fine */
    char *b = s_nested("{\"desired\":", 9, "{\"a\":", '}', "}");
    r = s_req("PATCH", "/api/v1/devices/deep-1/twin", b, NULL, NULL);
    free(b);
    assert_int_equal(r.status, 413);
    json_decref(r.body);
    b = s_nested("{\"desired\":", 8, "{\"a\":", '}', "}");
    assert_int_equal(s_status("PATCH", "/api/v1/devices/deep-1/twin", b), 200);
    free(b);
    assert_int_equal(s_status("DELETE", "/api/v1/devices/deep-1", NULL) / 100, 2);
}

/* 2,500 devices, listed 1,000 at a time to the end: each exactly once. */
static void test_pagination(void **state)
{
    (void)state;
    for (int i = 0; i < 2500; i++) {
        char body[96];
        snprintf(body, sizeof body, "{\"id\":\"pg-%04d\",\"tags\":{\"batch\":\"p\"}}", i);
        assert_int_equal(s_status("POST", "/api/v1/devices", body), 201);
    }
    char path[512] = "/api/v1/devices?tag=batch:p&limit=1000";
    int seen = 0, pages = 0;
    for (;;) {
        s_resp_t r = s_req("GET", path, NULL, NULL, NULL);
        assert_int_equal(r.status, 200);
        json_t *items = json_object_get(r.body, "items");
        for (size_t i = 0; i < json_array_size(items); i++) {
            char want[16];
            snprintf(want, sizeof want, "pg-%04d", seen++);
            assert_string_equal(json_string_value(json_object_get(json_array_get(items, i), "id")),
                                want);
        }
        pages++;
        const char *next = json_string_value(json_object_get(r.body, "next"));
        if (!next) {
            json_decref(r.body);
            break;
        }
        snprintf(path, sizeof path, "/api/v1/devices?tag=batch:p&limit=1000&cursor=%s", next);
        json_decref(r.body);
    }
    assert_int_equal(seen, 2500);
    assert_int_equal(pages, 3);
    assert_int_equal(s_status("GET", "/api/v1/devices?limit=0", NULL), 400);
}

/* Firmware and rollouts over ota's RPC. */
static void test_firmware_and_rollouts(void **state)
{
    (void)state;
    char img[5000];
    for (size_t i = 0; i < sizeof img; i++)
        img[i] = (char)(i * 7);
    s_resp_t r = s_req_n("POST", "/api/v1/firmware?version=9.1.0&hardware=x1", img, sizeof img,
                         NULL, NULL, NULL, 0);
    assert_int_equal(r.status, 201);
    assert_int_equal(json_integer_value(json_object_get(r.body, "size")), 5000);
    assert_int_equal(strlen(json_string_value(json_object_get(r.body, "sha256"))), 64);
    json_decref(r.body);
    r = s_req_n("POST", "/api/v1/firmware?version=9.1.0&hardware=x1", img, sizeof img, NULL, NULL,
                NULL, 0);
    assert_int_equal(r.status, 409);
    json_decref(r.body);
    r = s_req_n("POST", "/api/v1/firmware?hardware=x1", img, sizeof img, NULL, NULL, NULL, 0);
    assert_int_equal(r.status, 400);
    json_decref(r.body);
    assert_int_equal(s_status("GET", "/api/v1/firmware/9.1.0", NULL), 200);
    assert_int_equal(s_status("GET", "/api/v1/firmware/0.0.0", NULL), 404);
    r = s_req("GET", "/api/v1/firmware", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.body, "items")), 1);
    json_decref(r.body);
    char pem[1024] = "";
    r = s_req_n("GET", "/api/v1/firmware/signing-key", NULL, 0, NULL, NULL, pem, sizeof pem);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(pem, "-----BEGIN PUBLIC KEY-----"));
    json_decref(r.body);
    /* rollouts */
    assert_int_equal(s_status("POST", "/api/v1/rollouts", "{\"firmware\":\"0.0.0\"}"), 404);
    r = s_req("POST", "/api/v1/rollouts", "{\"firmware\":\"9.1.0\",\"waves\":[{\"percent\":50}]}",
              NULL, NULL);
    assert_int_equal(r.status, 400);
    assert_string_equal(s_err_code(r.body), "bad_request");
    json_decref(r.body);
    r = s_req("POST", "/api/v1/rollouts",
              "{\"firmware\":\"9.1.0\",\"target\":{\"firmware\":\"none\"}}", NULL, NULL);
    assert_int_equal(r.status, 201);
    char path[200];
    snprintf(path, sizeof path, "/api/v1/rollouts/%s",
             json_string_value(json_object_get(r.body, "id")));
    json_decref(r.body);
    int64_t deadline = mht_now_ms() + 20000;
    for (;;) {
        r = s_req("GET", path, NULL, NULL, NULL);
        assert_int_equal(r.status, 200);
        bool done = strcmp(json_string_value(json_object_get(r.body, "state")), "completed") == 0;
        json_decref(r.body);
        if (done)
            break;
        assert_true(mht_now_ms() < deadline);
        mht_sleep_ms(100);
    }
    char ctl[256];
    snprintf(ctl, sizeof ctl, "%s/pause", path);
    r = s_req("POST", ctl, NULL, NULL, NULL);
    assert_int_equal(r.status, 409);
    assert_string_equal(s_err_code(r.body), "conflict");
    json_decref(r.body);
    r = s_req("GET", "/api/v1/rollouts", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.body, "items")), 1);
    json_decref(r.body);
    assert_int_equal(s_status("GET", "/api/v1/rollouts/0000-none", NULL), 404);
}

/* The OpenAPI document is served, and every operation it lists is a route
 * fleet-stats really serves (nothing answers "no such path" or 405). */
static void test_openapi(void **state)
{
    (void)state;
    s_resp_t r = s_req("GET", "/api/v1/openapi.json", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.body, "openapi")), "3.0.3");
    json_t *paths = json_object_get(r.body, "paths");
    assert_true(json_object_size(paths) >= 14);
    const char *path;
    json_t *ops;
    int checked = 0;
    json_object_foreach(paths, path, ops)
    {
        char concrete[256] = "";
        for (const char *p = path; *p;) {
            if (*p == '{') {
                strcat(concrete, "oa-x");
                p = strchr(p, '}') + 1;
            } else {
                strncat(concrete, p++, 1);
            }
        }
        const char *method;
        json_t *op;
        json_object_foreach(ops, method, op)
        {
            char m[16];
            for (size_t i = 0; i < sizeof m - 1 && method[i]; i++)
                m[i] = (char)(method[i] - 32), m[i + 1] = 0;
            s_resp_t x = s_req(m, concrete, strcmp(m, "GET") && strcmp(m, "DELETE") ? "{}" : NULL,
                               NULL, NULL);
            json_t *msg = json_object_get(json_object_get(x.body, "error"), "message");
            if (x.status == 405 ||
                (x.status == 404 && msg && strcmp(json_string_value(msg), "no such path") == 0))
                fail_msg("%s %s is documented but not served (%ld)", m, concrete, x.status);
            json_decref(x.body);
            checked++;
        }
    }
    assert_true(checked >= 20);
    json_decref(r.body);
    r = s_req("GET", "/api/v1/not-documented", NULL, NULL, NULL);
    assert_int_equal(r.status, 404);
    json_decref(r.body);
}

/* motectl runs its command against the API; returns its exit status and
 * stdout in out. */
static int s_motectl(char *out, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int s_motectl(char *out, size_t len, const char *fmt, ...)
{
    char bin[512], args[1024], cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    mht_build_path("tools/motectl/motectl", bin, sizeof bin);
    snprintf(cmd, sizeof cmd, "MOTEHUB_URL=http://127.0.0.1:%d MOTEHUB_TOKEN=%s '%s' %s 2>&1",
             s_port, s_token, bin, args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, len - 1, p);
    out[n] = 0;
    int st = pclose(p);
    fprintf(stderr, "# motectl %s -> %d: %.300s\n", args, WIFEXITED(st) ? WEXITSTATUS(st) : -1,
            out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The CLI over the same API: tables for people, --json for scripts, exit
 * codes that tell an API error (1) from a usage error (2) and an
 * unreachable API (3). */
static void test_motectl(void **state)
{
    (void)state;
    char out[65536];
    assert_int_equal(s_motectl(out, sizeof out, "devices register cli-1 model=x1 site=lab"), 0);
    assert_non_null(strstr(out, "cli-1"));
    assert_int_equal(s_motectl(out, sizeof out, "devices register cli-1"), 1);
    assert_non_null(strstr(out, "409"));
    assert_int_equal(s_motectl(out, sizeof out, "--json devices list --q cli- --tag model:x1"), 0);
    json_t *v = json_loads(out, 0, NULL);
    assert_non_null(v);
    assert_int_equal(json_array_size(json_object_get(v, "items")), 1);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(v, "items"), 0), "id")),
        "cli-1");
    json_decref(v);
    assert_int_equal(s_motectl(out, sizeof out, "devices list --q cli-"), 0);
    assert_non_null(strstr(out, "STATUS"));
    assert_non_null(strstr(out, "offline"));
    assert_int_equal(
        s_motectl(out, sizeof out, "--json twin set cli-1 interval=30 led='\"on\"' --if-match 1"),
        0);
    v = json_loads(out, 0, NULL);
    assert_int_equal(
        json_integer_value(json_object_get(
            json_object_get(json_object_get(json_object_get(v, "state"), "desired"), "interval"),
            NULL)),
        0);
    json_decref(v);
    assert_int_equal(s_motectl(out, sizeof out, "--json twin get cli-1"), 0);
    v = json_loads(out, 0, NULL);
    json_t *des = json_object_get(json_object_get(v, "state"), "desired");
    assert_int_equal(json_integer_value(json_object_get(des, "interval")), 30);
    assert_string_equal(json_string_value(json_object_get(des, "led")), "on");
    json_decref(v);
    assert_int_equal(s_motectl(out, sizeof out, "twin set cli-1 interval=5 --if-match 1"), 1);
    assert_non_null(strstr(out, "412"));
    assert_int_equal(
        s_motectl(out, sizeof out, "--json command send cli-1 reboot '{\"delay\":1}' --ttl 60"), 0);
    v = json_loads(out, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(v, "status")), "queued");
    json_decref(v);
    assert_int_equal(s_motectl(out, sizeof out, "command list cli-1"), 0);
    assert_non_null(strstr(out, "reboot"));
    char img[600];
    snprintf(img, sizeof img, "%s/cli-image.bin", mht_artifacts());
    assert_int_equal(mht_shell("head -c 5000 /dev/urandom > '%s'", img), 0);
    assert_int_equal(
        s_motectl(out, sizeof out, "firmware upload '%s' --version cli-9.0 --hardware x1", img), 0);
    assert_non_null(strstr(out, "cli-9.0"));
    assert_int_equal(s_motectl(out, sizeof out, "firmware list"), 0);
    assert_non_null(strstr(out, "cli-9.0"));
    assert_int_equal(s_motectl(out, sizeof out, "firmware signing-key"), 0);
    assert_non_null(strstr(out, "BEGIN PUBLIC KEY"));
    assert_int_equal(
        s_motectl(out, sizeof out,
                  "rollout create --firmware cli-9.0 --tag model:x1 --waves 50,100 --soak 1"),
        0);
    assert_non_null(strstr(out, "wave 1"));
    assert_int_equal(s_motectl(out, sizeof out, "rollout create --firmware nope-1"), 1);
    assert_non_null(strstr(out, "404"));
    assert_int_equal(s_motectl(out, sizeof out, "fleet summary"), 0);
    assert_non_null(strstr(out, "total"));
    assert_int_equal(s_motectl(out, sizeof out, "--json telemetry latest cli-1"), 0);
    assert_int_equal(s_motectl(out, sizeof out, "devices delete cli-1"), 0);
    assert_int_equal(s_motectl(out, sizeof out, "devices get cli-1"), 1);
    assert_int_equal(s_motectl(out, sizeof out, "devices frobnicate"), 2);
    assert_int_equal(s_motectl(out, sizeof out, "--url http://127.0.0.1:1 fleet summary"), 3);
    assert_int_equal(s_motectl(out, sizeof out, "--token mht_wrong fleet summary"), 1);
    assert_non_null(strstr(out, "401"));
    char pg[700];
    snprintf(pg, sizeof pg, "token create cli-token --pg-url '%s'", s_be.db.url);
    assert_int_equal(s_motectl(out, sizeof out, "%s", pg), 0);
    assert_true(strncmp(out, "mht_", 4) == 0);
}

/* Tokens: listed without their values, revoked (401 on every call within
 * 5 s), malformed headers refused with nothing changed, and every call
 * logged under the token's name, never its value. */
static void test_tokens(void **state)
{
    (void)state;
    char out[65536], pg[700], tok[128] = "";
    snprintf(pg, sizeof pg, "--pg-url '%s'", s_be.db.url);
    assert_int_equal(s_motectl(out, sizeof out, "token create revoke-me %s", pg), 0);
    sscanf(out, "%127s", tok);
    assert_true(strncmp(tok, "mht_", 4) == 0);
    s_resp_t r = s_req("GET", "/api/v1/devices?limit=1", NULL, tok, NULL);
    assert_int_equal(r.status, 200);
    json_decref(r.body);
    assert_int_equal(s_motectl(out, sizeof out, "token list %s", pg), 0);
    assert_non_null(strstr(out, "revoke-me"));
    char prefix[16];
    snprintf(prefix, sizeof prefix, "%.12s", tok);
    assert_non_null(strstr(out, prefix));
    assert_null(strstr(out, tok)); /* never the whole token */
    assert_int_equal(s_motectl(out, sizeof out, "token revoke revoke-me %s", pg), 0);
    assert_int_equal(s_motectl(out, sizeof out, "token revoke revoke-me %s", pg), 1);
    int64_t end = mht_now_ms() + 6000;
    long st = 200;
    while (st == 200 && mht_now_ms() < end) {
        r = s_req("GET", "/api/v1/devices?limit=1", NULL, tok, NULL);
        st = r.status;
        json_decref(r.body);
        if (st == 200)
            mht_sleep_ms(200);
    }
    assert_int_equal(st, 401);
    /* a revoked token, none, and malformed headers: 401, nothing registered */
    const char *bad_auth[] = {tok,
                              "",
                              "Bearer",
                              "Basic dXNlcjpwYXNz",
                              "bearer x y",
                              "Bearer  mht_0000",
                              "Bearer mht_not-a-token-at-all"};
    for (size_t i = 0; i < sizeof bad_auth / sizeof *bad_auth; i++) {
        char url[128], auth[200];
        snprintf(url, sizeof url, "http://127.0.0.1:%d/api/v1/devices", s_port);
        if (i == 0)
            snprintf(auth, sizeof auth, "Bearer %s", tok);
        else
            snprintf(auth, sizeof auth, "%s", bad_auth[i]);
        const char *body = "{\"id\":\"never-1\"}";
        mh_http_resp_t resp;
        long code = mh_http_request(&(mh_http_req_t){.method = "POST",
                                                     .url = url,
                                                     .authorization = i != 1 ? auth : NULL,
                                                     .body = body,
                                                     .body_len = strlen(body)},
                                    &resp);
        mh_http_resp_free(&resp);
        if (code != 401)
            fail_msg("Authorization case %zu answered %ld, not 401", i, code);
    }
    assert_int_equal(s_status("GET", "/api/v1/devices/never-1", NULL), 404);
    /* the access log names the token, never shows it */
    char log[700], line[1024];
    snprintf(log, sizeof log, "%s/fleet-stats.log", mht_artifacts());
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    int named = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "mht_") && !strstr(line, "create-token"))
            fail_msg("a token value in the log: %s", line);
        named += strstr(line, "api: GET /api/v1/devices 200") && strstr(line, "token=ci");
    }
    fclose(f);
    assert_true(named >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auth),       cmocka_unit_test(test_devices_and_twins),
        cmocka_unit_test(test_pagination), cmocka_unit_test(test_firmware_and_rollouts),
        cmocka_unit_test(test_openapi),    cmocka_unit_test(test_motectl),
        cmocka_unit_test(test_tokens),     cmocka_unit_test(test_deep_bodies),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
