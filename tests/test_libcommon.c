/* Unit tests of libcommon: config table, metrics, envelope, resolver, rate limiting. */
#include "mh_test.h"

#include "mh_config.h"
#include "mh_envelope.h"
#include "mh_pbarena.h"
#include "mh_json.h"
#include "mh_rpc.h"
#include "mh_rpc_server.h"
#include "mh_time.h"
#include "twin.pb-c.h"
#include "mh_log.h"
#include "mh_metrics.h"
#include "mh_relay.h"
#include "mh_window.h"
#include "mh_resolver.h"
#include "telemetry.pb-c.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    char *name;
    int64_t count;
    int64_t wait_ms;
    bool flag;
    double ratio;
} s_cfg_t;

static const mh_cfg_opt_t s_table[] = {
    {"name", "MHT_NAME", MH_CFG_STR, "default", offsetof(s_cfg_t, name), "a name"},
    {"count", "MHT_COUNT", MH_CFG_INT, "3", offsetof(s_cfg_t, count), "a count"},
    {"wait", "MHT_WAIT", MH_CFG_DURATION, "5s", offsetof(s_cfg_t, wait_ms), "a wait"},
    {"flag", "MHT_FLAG", MH_CFG_BOOL, "false", offsetof(s_cfg_t, flag), "a flag"},
    {"ratio", "MHT_RATIO", MH_CFG_DOUBLE, "0.5", offsetof(s_cfg_t, ratio), "a ratio"},
    MH_CFG_END,
};

static void test_config_defaults_env_flags(void **state)
{
    (void)state;
    s_cfg_t c = {0};
    char *argv0[] = {"prog", NULL};
    unsetenv("MHT_NAME");
    unsetenv("MHT_COUNT");
    assert_int_equal(mh_config_load(s_table, &c, 1, argv0, "prog", ""), 0);
    assert_string_equal(c.name, "default");
    assert_int_equal(c.count, 3);
    assert_int_equal(c.wait_ms, 5000);
    assert_false(c.flag);
    assert_true(fabs(c.ratio - 0.5) < 1e-9);
    mh_config_free(s_table, &c);

    /* environment beats default, flag beats environment */
    setenv("MHT_NAME", "from-env", 1);
    setenv("MHT_COUNT", "7", 1);
    char *argv1[] = {"prog", "--count=9", "--wait", "2m", "--flag=yes", NULL};
    assert_int_equal(mh_config_load(s_table, &c, 5, argv1, "prog", ""), 0);
    assert_string_equal(c.name, "from-env");
    assert_int_equal(c.count, 9);
    assert_int_equal(c.wait_ms, 120000);
    assert_true(c.flag);
    mh_config_free(s_table, &c);
    unsetenv("MHT_NAME");
    unsetenv("MHT_COUNT");
}

static void test_config_errors(void **state)
{
    (void)state;
    s_cfg_t c = {0};
    char *unknown[] = {"prog", "--nope=1", NULL};
    assert_int_equal(mh_config_load(s_table, &c, 2, unknown, "prog", ""), -EINVAL);
    mh_config_free(s_table, &c);
    char *bad_int[] = {"prog", "--count=12x", NULL};
    assert_int_equal(mh_config_load(s_table, &c, 2, bad_int, "prog", ""), -EINVAL);
    mh_config_free(s_table, &c);
    char *stray[] = {"prog", "stray", NULL};
    assert_int_equal(mh_config_load(s_table, &c, 2, stray, "prog", ""), -EINVAL);
    mh_config_free(s_table, &c);
    setenv("MHT_WAIT", "soon", 1);
    char *argv0[] = {"prog", NULL};
    assert_int_equal(mh_config_load(s_table, &c, 1, argv0, "prog", ""), -EINVAL);
    mh_config_free(s_table, &c);
    unsetenv("MHT_WAIT");
    char *help[] = {"prog", "--help", NULL};
    /* help goes to stdout, which carries this program's TAP report */
    fflush(stdout);
    int saved = dup(1), devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    int rc = mh_config_load(s_table, &c, 2, help, "prog", "summary");
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    close(devnull);
    assert_int_equal(rc, 1);
    mh_config_free(s_table, &c);
}

static void test_config_durations(void **state)
{
    (void)state;
    int64_t ms;
    assert_int_equal(mh_config_parse_duration("250ms", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(mh_config_parse_duration("7d", &ms), 0);
    assert_int_equal(ms, 7LL * 86400 * 1000);
    assert_int_equal(mh_config_parse_duration("1.5h", &ms), 0);
    assert_int_equal(ms, 5400000);
    assert_int_equal(mh_config_parse_duration("42", &ms), 0);
    assert_int_equal(ms, 42);
    assert_int_equal(mh_config_parse_duration("-1s", &ms), -EINVAL);
    assert_int_equal(mh_config_parse_duration("5 parsecs", &ms), -EINVAL);
    assert_int_equal(mh_config_parse_duration("", &ms), -EINVAL);
    bool b;
    assert_int_equal(mh_config_parse_bool("On", &b), 0);
    assert_true(b);
    assert_int_equal(mh_config_parse_bool("maybe", &b), -EINVAL);
}

static void test_metrics_render(void **state)
{
    (void)state;
    mh_metrics_t *m = mh_metrics_new();
    mh_counter_t *a = mh_metrics_counter(m, "mh_x_total", "Things", "reason=\"a\"");
    mh_counter_t *b = mh_metrics_counter(m, "mh_x_total", "Things", "reason=\"b\"");
    assert_ptr_equal(a, mh_metrics_counter(m, "mh_x_total", "Things", "reason=\"a\""));
    mh_counter_add(a, 5);
    mh_counter_inc(b);
    mh_gauge_set(mh_metrics_gauge(m, "mh_g", "A gauge", NULL), 2.5);
    double bounds[] = {0.01, 0.02, 0.05};
    mh_histogram_t *h = mh_metrics_histogram(m, "mh_lat_seconds", "Latency", NULL, bounds, 3);
    for (int i = 0; i < 90; i++)
        mh_histogram_observe_ms(h, 5);
    for (int i = 0; i < 10; i++)
        mh_histogram_observe(h, 0.04);
    char *text = mh_metrics_render(m);
    assert_non_null(strstr(text, "# TYPE mh_x_total counter\n"));
    const struct {
        const char *name, *labels;
        double want;
    } series[] = {
        {"mh_x_total", "reason=\"a\"", 5},
        {"mh_x_total", "reason=\"b\"", 1},
        {"mh_g", NULL, 2.5},
        {"mh_lat_seconds_bucket", "le=\"0.01\"", 90},
        {"mh_lat_seconds_bucket", "le=\"+Inf\"", 100},
        {"mh_lat_seconds_count", NULL, 100},
    };
    double v;
    for (size_t i = 0; i < sizeof series / sizeof *series; i++) {
        assert_int_equal(mh_metrics_text_value(text, series[i].name, series[i].labels, &v), 0);
        if (v != series[i].want)
            fail_msg("%s{%s} is %g, not %g", series[i].name,
                     series[i].labels ? series[i].labels : "", v, series[i].want);
    }
    assert_int_equal(mh_metrics_text_value(text, "mh_missing", NULL, &v), -ENOENT);
    /* The family header appears once even with two label sets. */
    const char *first = strstr(text, "# HELP mh_x_total");
    assert_null(strstr(first + 1, "# HELP mh_x_total"));
    free(text);
    /* p50 inside the first bucket, p99 inside (20, 50] */
    assert_true(mh_histogram_quantile(h, 0.5) <= 0.01);
    double p99 = mh_histogram_quantile(h, 0.99);
    assert_true(p99 > 0.02 && p99 <= 0.05);
    mh_metrics_destroy(&m);
    assert_null(m);
    mh_counter_inc(NULL); /* NULL-safe */
}

static void test_envelope_roundtrip(void **state)
{
    (void)state;
    Mh__Point pt = MH__POINT__INIT;
    pt.device_id = "dev-1";
    pt.metric = "temp";
    pt.ts_ms = 1700000000000;
    pt.value = 21.5;
    Mh__Point *pts[] = {&pt};
    Mh__TelemetryBatch b = MH__TELEMETRY_BATCH__INIT;
    b.batch_id = "g1-1";
    b.points = pts;
    b.n_points = 1;
    zframe_t *f = mh_envelope_pack("telemetry.batch", "0123456789abcdef0123456789abcdef", &b.base);
    assert_non_null(f);
    Mh__Envelope *env = mh_envelope_unpack(f);
    assert_non_null(env);
    assert_string_equal(env->type, "telemetry.batch");
    assert_string_equal(env->trace_id, "0123456789abcdef0123456789abcdef");
    assert_int_equal(env->schema_version, MH_SCHEMA_VERSION);
    assert_true(env->ts_ms > 1700000000000);
    Mh__TelemetryBatch *back = mh__telemetry_batch__unpack(NULL, env->body.len, env->body.data);
    assert_non_null(back);
    assert_string_equal(back->points[0]->device_id, "dev-1");
    assert_true(back->points[0]->value == 21.5);
    mh__telemetry_batch__free_unpacked(back, NULL);
    mh_envelope_free(&env);
    assert_null(env);
    zframe_destroy(&f);

    /* garbage and envelopes from a newer schema are refused */
    zframe_t *junk = zframe_new("\xff\xff\xff\xff garbage", 12);
    assert_null(mh_envelope_unpack(junk));
    zframe_destroy(&junk);
    Mh__Envelope future = MH__ENVELOPE__INIT;
    future.schema_version = MH_SCHEMA_VERSION + 1;
    future.type = "telemetry.batch";
    uint8_t buf[64];
    size_t n = mh__envelope__pack(&future, buf);
    zframe_t *ff = zframe_new(buf, n);
    assert_null(mh_envelope_unpack(ff));
    zframe_destroy(&ff);
}

static void test_resolver(void **state)
{
    (void)state;
    zsock_t *pull = zsock_new(ZMQ_PULL);
    int port = zsock_bind(pull, "tcp://127.0.0.1:*");
    assert_true(port > 0);
    zsock_t *push = zsock_new(ZMQ_PUSH);
    char spec[64];
    snprintf(spec, sizeof spec, "tcp://localhost:%d", port);
    mh_resolver_t *r = mh_resolver_new(push, spec);
    assert_non_null(r);
    assert_int_equal(mh_resolver_refresh(r), 1);
    assert_int_equal(mh_resolver_refresh(r), 1); /* idempotent */
    zstr_send(push, "hello");
    zsock_set_rcvtimeo(pull, 2000);
    char *got = zstr_recv(pull);
    assert_non_null(got);
    assert_string_equal(got, "hello");
    zstr_free(&got);
    mh_resolver_destroy(&r);
    assert_null(mh_resolver_new(push, "http://nope:1"));
    assert_null(mh_resolver_new(push, ""));
    /* a name that does not resolve is not fatal */
    r = mh_resolver_new(push, "tcp://no-such-host.invalid:5560");
    assert_non_null(r);
    assert_true(mh_resolver_refresh(r) < 0);
    mh_resolver_destroy(&r);
    zsock_destroy(&push);
    zsock_destroy(&pull);
}

/* mh_json: depth counted without recursion, brackets in strings ignored,
 * refused past the limit with jansson's own error code and a position. */
static void test_json_depth(void **state)
{
    (void)state;
    assert_int_equal(mh_json_depth("1", 1, 32), 0);
    assert_int_equal(mh_json_depth("{}", 2, 32), 1);
    assert_int_equal(mh_json_depth("{\"a\":[1,{\"b\":2}]}", 17, 32), 3);
    const char *s = "{\"a\":\"[[[{{{\\\"[\"}";
    assert_int_equal(mh_json_depth(s, strlen(s), 32), 1);
    char deep[2 * 40 + 2];
    for (int d = 31; d <= 33; d++) {
        memset(deep, '[', (size_t)d);
        memset(deep + d, ']', (size_t)d);
        deep[2 * d] = 0;
        json_error_t err;
        json_t *v = mh_json_loads(deep, 0, 32, &err);
        if (d <= 32) {
            assert_non_null(v);
            json_decref(v);
        } else {
            assert_null(v);
            assert_true(mh_json_too_deep(&err));
            assert_string_equal(err.text, "nested deeper than 32 levels");
            assert_int_equal(err.line, 1);
            assert_int_equal(err.column, 33); /* the 33rd bracket */
        }
    }
    /* a syntax error is not a depth error */
    json_error_t err;
    assert_null(mh_json_loads("{\"a\":", 0, 32, &err));
    assert_false(mh_json_too_deep(&err));
    /* a megabyte of brackets: refused at once, on a 64 KiB stack or any */
    size_t n = 1 << 20;
    char *big = malloc(n);
    memset(big, '[', n);
    assert_null(mh_json_loadb(big, n, 0, MH_JSON_MAX_DEPTH, &err));
    assert_true(mh_json_too_deep(&err));
    free(big);
}

/* ---- mh_rpc_server, with twin's messages and a service made up here ---- */

typedef struct {
    mh_rpc_reply_t base;
    Mh__TwinReply rep;
} s_test_reply_t;

typedef struct {
    int ran;
} s_test_svc_t;

static void s_test_get(void *ud, const void *req, void *reply)
{
    s_test_svc_t *svc = ud;
    const Mh__TwinRequest *q = req;
    s_test_reply_t *r = reply;
    svc->ran++;
    if (!*q->device_id) {
        mh_rpc_fail(&r->base, 404, "not_found", "no device \"%s\"", q->device_id);
        return;
    }
    r->rep.version = 7; /* a field of the service's own reply */
    mh_rpc_ok_json(&r->base, 200, json_pack("{s:s}", "id", q->device_id));
}

static const mh_rpc_method_t s_test_methods[] = {
    [MH__TWIN_REQUEST__METHOD__REGISTER] = {"register", NULL, true},
    [MH__TWIN_REQUEST__METHOD__GET_DEVICE] = {"get_device", s_test_get, true},
};

static const mh_rpc_service_t s_test_def = {
    .request_type = "twin.request",
    .reply_type = "twin.reply",
    .request = &mh__twin_request__descriptor,
    .reply = &mh__twin_reply__descriptor,
    .reply_size = sizeof(s_test_reply_t),
    .reply_msg_offset = offsetof(s_test_reply_t, rep),
    .methods = s_test_methods,
    .n_methods = 2,
    .metric_prefix = "mh_test_rpc",
};

/* Sends a request and returns the reply (NULL when none came in 300 ms). */
static Mh__TwinReply *s_test_call(zsock_t *client, zsock_t *router, mh_rpc_server_t *server,
                                  int method, const char *device, int64_t deadline)
{
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    assert_true(mh_rpc_request_stamp(&q.base, "r-1", deadline));
    q.method = method;
    q.device_id = (char *)device;
    assert_int_equal(mh_envelope_send(client, NULL, "twin.request", NULL, &q.base, false), 0);
    mh_rpc_server_handle(server, router);
    zsock_set_rcvtimeo(client, 300);
    zframe_t *f = zframe_recv(client);
    Mh__Envelope *env = f ? mh_envelope_unpack(f) : NULL;
    zframe_destroy(&f);
    if (!env)
        return NULL;
    assert_string_equal(env->type, "twin.reply");
    Mh__TwinReply *r = mh__twin_reply__unpack(NULL, env->body.len, env->body.data);
    mh_envelope_free(&env);
    assert_non_null(r);
    assert_string_equal(r->request_id, "r-1");
    return r;
}

/* mh_json_dumps: reals as a device wrote them, never rounded */
static void test_json_dumps_exact(void **state)
{
    (void)state;
    json_t *v = json_loads("{\"t\":21.37,\"b\":0.1,\"r\":-71.5,\"n\":5,\"z\":-0.0,"
                           "\"a\":[1e300,2.5e-308],\"s\":\"0.1\"}",
                           0, NULL);
    assert_non_null(v);
    char *text = mh_json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(text, "{\"a\":[1e300,2.5e-308],\"b\":0.1,\"n\":5,\"r\":-71.5,"
                              "\"s\":\"0.1\",\"t\":21.37,\"z\":-0.0}");
    free(text);
    json_decref(v);
    /* values that need 16 and 17 digits: the whole text at the most any
     * needs, and every one reads back as the same double */
    double hard[] = {0.1 + 0.2, 1.0 / 3.0, 5e-324, 1.7976931348623157e308, 21.37};
    json_t *arr = json_array();
    for (size_t i = 0; i < sizeof hard / sizeof *hard; i++)
        json_array_append_new(arr, json_real(hard[i]));
    text = mh_json_dumps(arr, JSON_COMPACT);
    json_t *back = json_loads(text, 0, NULL);
    assert_non_null(back);
    for (size_t i = 0; i < sizeof hard / sizeof *hard; i++)
        assert_true(json_real_value(json_array_get(back, i)) == hard[i]);
    assert_non_null(strstr(text, "0.30000000000000004"));
    free(text);
    json_decref(back);
    json_decref(arr);
}

static void test_rpc_server(void **state)
{
    (void)state;
    mh_metrics_t *m = mh_metrics_new();
    s_test_svc_t svc = {0};
    mh_rpc_server_t *server = mh_rpc_server_new(&s_test_def, &svc, NULL, m);
    zsock_t *router = zsock_new_router("inproc://rpc-server-test");
    zsock_t *client = zsock_new_dealer(">inproc://rpc-server-test");
    int64_t later = mh_now_ms() + 60000;

    Mh__TwinReply *r = s_test_call(client, router, server, 1, "d-1", later);
    assert_int_equal(r->status, 200);
    assert_string_equal(r->body_json, "{\"id\":\"d-1\"}");
    assert_int_equal(r->version, 7);
    assert_string_equal(r->error_code, "");
    mh__twin_reply__free_unpacked(r, NULL);

    r = s_test_call(client, router, server, 1, "", later);
    assert_int_equal(r->status, 404);
    assert_string_equal(r->error_code, "not_found");
    assert_string_equal(r->message, "no device \"\"");
    mh__twin_reply__free_unpacked(r, NULL);

    r = s_test_call(client, router, server, 1, "d-1", mh_now_ms() - 1); /* deadline passed */
    assert_int_equal(r->status, 504);
    assert_string_equal(r->error_code, "deadline_exceeded");
    mh__twin_reply__free_unpacked(r, NULL);

    /* a server whose database is not connected (mh_pg_new does not
     * connect: nothing is sent anywhere) */
    mh_pg_t *down = mh_pg_new("postgresql://127.0.0.1:1/none", NULL, 0);
    mh_rpc_server_t *waiting = mh_rpc_server_new(&s_test_def, &svc, down, m);
    r = s_test_call(client, router, waiting, 1, "d-1", 0); /* no deadline */
    assert_int_equal(r->status, 503);
    assert_string_equal(r->error_code, "unavailable");
    mh__twin_reply__free_unpacked(r, NULL);
    mh_rpc_server_destroy(&waiting);
    mh_pg_destroy(&down);

    r = s_test_call(client, router, server, 0, "d-1", later); /* no handler */
    assert_int_equal(r->status, 400);
    mh__twin_reply__free_unpacked(r, NULL);
    r = s_test_call(client, router, server, 9, "d-1", later); /* past the table */
    assert_int_equal(r->status, 400);
    mh__twin_reply__free_unpacked(r, NULL);
    assert_int_equal(svc.ran, 2);

    /* malformed: not an envelope; another type; a body that is not a request */
    zstr_send(client, "garbage");
    mh_rpc_server_handle(server, router);
    Mh__TwinReply other = MH__TWIN_REPLY__INIT;
    mh_envelope_send(client, NULL, "ota.request", NULL, &other.base, false);
    mh_rpc_server_handle(server, router);
    zframe_t *junk = zframe_new("\xff\xff\xff", 3);
    Mh__Envelope e = MH__ENVELOPE__INIT;
    e.schema_version = MH_SCHEMA_VERSION;
    e.type = "twin.request";
    e.body.data = zframe_data(junk);
    e.body.len = zframe_size(junk);
    zframe_t *f = zframe_new(NULL, mh__envelope__get_packed_size(&e));
    mh__envelope__pack(&e, zframe_data(f));
    zframe_send(&f, client, 0);
    zframe_destroy(&junk);
    mh_rpc_server_handle(server, router);
    zsock_set_rcvtimeo(client, 300);
    zframe_t *none = zframe_recv(client);
    assert_null(none); /* no answer to any of them */
    assert_int_equal(svc.ran, 2);

    char *text = mh_metrics_render(m);
    double v;
    assert_int_equal(
        mh_metrics_text_value(text, "mh_test_rpc_requests_total", "method=\"get_device\"", &v), 0);
    assert_true(v == 4);
    assert_int_equal(mh_metrics_text_value(text, "mh_test_rpc_malformed_total", NULL, &v), 0);
    assert_true(v == 3);
    assert_int_equal(mh_metrics_text_value(text, "mh_test_rpc_errors_total", NULL, &v), 0);
    assert_true(v == 5 + 3); /* 404, 504, 503, 400 x2, and the malformed */
    assert_int_equal(mh_metrics_text_value(text, "mh_test_rpc_seconds_count", NULL, &v), 0);
    assert_true(v == 6);
    free(text);
    zsock_destroy(&client);
    zsock_destroy(&router);
    mh_rpc_server_destroy(&server);
    mh_metrics_destroy(&m);
}

/* A call whose wait overruns its deadline (the process was not scheduled:
 * here it is stopped for 1.6 s of a 1 s deadline, mid-wait) ends with
 * ETIMEDOUT. It used to abort: the resend after half the deadline set a
 * negative send timeout, which ZeroMQ refuses. */
static void test_rpc_call_overrun(void **state)
{
    (void)state;
    zsock_t *router = zsock_new_router("tcp://127.0.0.1:*");
    assert_non_null(router);
    mh_rpc_t *rpc = mh_rpc_new(zsock_endpoint(router));
    assert_non_null(rpc);
    pid_t me = getpid(), child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        usleep(200 * 1000);
        kill(me, SIGSTOP);
        usleep(1600 * 1000);
        kill(me, SIGCONT);
        _exit(0);
    }
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.device_id = "d-1";
    int64_t t0 = mh_mono_ms();
    errno = 0;
    Mh__Envelope *env =
        mh_rpc_call_read(rpc, "twin.request", &q.base, "r-1", mh_rpc_reply_match, 1000);
    int64_t took = mh_mono_ms() - t0;
    int err = errno;
    int st;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_null(env);
    assert_int_equal(err, ETIMEDOUT);
    assert_true(took >= 1000 && took < 3000);
    /* and the request did reach the replica */
    zmsg_t *m = zmsg_recv(router);
    assert_non_null(m);
    zmsg_destroy(&m);
    mh_rpc_destroy(&rpc);
    zsock_destroy(&router);
}

/* A replica that answers `answers` requests (request ids "r-<n>", n from
 * 2), bound after `delay_ms` — or, given `first`, once `first` (another
 * replica's socket, which it reads in the meantime) has had a request. */
typedef struct {
    int port, delay_ms, answers;
    zsock_t *first;
    bool first_had_one;
    int answered;
    bool done; /* set by the caller once it has its answers */
} s_late_t;

static void *s_late_replica(void *arg)
{
    s_late_t *l = arg;
    if (l->first) {
        zsock_set_rcvtimeo(l->first, 3000);
        zmsg_t *m = zmsg_recv(l->first);
        l->first_had_one = m != NULL;
        zmsg_destroy(&m);
    }
    usleep((useconds_t)l->delay_ms * 1000);
    zsock_t *router = zsock_new(ZMQ_ROUTER);
    if (zsock_bind(router, "tcp://127.0.0.1:%d", l->port) != l->port) {
        printf("# the late replica's bind failed: %s\n", strerror(errno));
        l->answers = 0;
    }
    zsock_set_rcvtimeo(router, 3000);
    for (int k = 0; k < l->answers; k++) {
        zmsg_t *m = zmsg_recv(router);
        if (!m)
            break;
        zframe_t *id = zmsg_pop(m);
        char rid[16];
        snprintf(rid, sizeof rid, "r-%d", 2 + k);
        Mh__RpcReply r = MH__RPC_REPLY__INIT;
        r.request_id = rid;
        r.status = 200;
        l->answered += mh_envelope_send(router, id, "twin.reply", NULL, &r.base, false) == 0;
        zframe_destroy(&id);
        zmsg_destroy(&m);
    }
    /* open until the caller has read the answers: a DEALER drops what it
     * has not read of a connection that closes */
    for (int i = 0; i < 300 && !__atomic_load_n(&l->done, __ATOMIC_ACQUIRE); i++)
        usleep(10 * 1000);
    zsock_destroy(&router);
    return NULL;
}

/* A read that the first replica leaves unanswered is asked of another one
 * at half its deadline — also when that replica's connection came up
 * after the first copy was sent: here it is bound only once the silent one
 * has the first copy. (ZeroMQ's DEALER dealt the second copy to the same
 * replica then: its round robin had moved past the one pipe there was,
 * back to the same one.) */
static void test_rpc_read_asks_another(void **state)
{
    (void)state;
    zsock_t *silent = zsock_new_router("tcp://127.0.0.1:*");
    assert_non_null(silent);
    s_late_t late = {mht_free_port(), 0, 1, silent, false, 0, false};
    char spec[128];
    snprintf(spec, sizeof spec, "%s,tcp://127.0.0.1:%d", zsock_endpoint(silent), late.port);
    mh_rpc_t *rpc = mh_rpc_new(spec);
    assert_non_null(rpc);
    pthread_t t;
    pthread_create(&t, NULL, s_late_replica, &late);
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.device_id = "d-1";
    int64_t t0 = mh_mono_ms();
    Mh__Envelope *env =
        mh_rpc_call_read(rpc, "twin.request", &q.base, "r-2", mh_rpc_reply_match, 2000);
    int64_t took = mh_mono_ms() - t0;
    __atomic_store_n(&late.done, true, __ATOMIC_RELEASE);
    pthread_join(t, NULL);
    mh_rpc_destroy(&rpc);
    zsock_destroy(&silent);
    printf("# answered by the other replica after %" PRId64 " ms: %s\n", took, env ? "yes" : "no");
    assert_true(late.first_had_one); /* the silent one had the first copy */
    assert_non_null(env);
    assert_int_equal(late.answered, 1);
    assert_true(took >= 900 && took < 2000);
    mh_envelope_free(&env);
}

/* A replica that is down (nothing listens at its address) is not sent
 * to: every call is answered by the other at once, none waits half its
 * deadline on the dead one. */
static void test_rpc_skips_dead_replica(void **state)
{
    (void)state;
    s_late_t live = {mht_free_port(), 0, 6, NULL, false, 0, false};
    pthread_t t;
    pthread_create(&t, NULL, s_late_replica, &live);
    usleep(100 * 1000);
    char spec[128];
    snprintf(spec, sizeof spec, "tcp://127.0.0.1:%d,tcp://127.0.0.1:%d", mht_free_port(),
             live.port);
    mh_rpc_t *rpc = mh_rpc_new(spec);
    int64_t worst = 0;
    for (int k = 0; k < 6; k++) {
        char rid[16];
        snprintf(rid, sizeof rid, "r-%d", 2 + k);
        Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
        q.device_id = "d-1";
        int64_t t0 = mh_mono_ms();
        Mh__Envelope *env =
            mh_rpc_call_read(rpc, "twin.request", &q.base, rid, mh_rpc_reply_match, 2000);
        int64_t took = mh_mono_ms() - t0;
        worst = took > worst ? took : worst;
        assert_non_null(env);
        mh_envelope_free(&env);
    }
    __atomic_store_n(&live.done, true, __ATOMIC_RELEASE);
    pthread_join(t, NULL);
    printf("# 6 calls with one replica down: the slowest answered in %" PRId64 " ms\n", worst);
    assert_true(worst < 500);
    mh_rpc_destroy(&rpc);
}

static void test_ratelimit(void **state)
{
    (void)state;
    mh_ratelimit_t rl = MH_RATELIMIT_INIT(60000, 3);
    uint64_t sup;
    int ok = 0;
    for (int i = 0; i < 10; i++)
        ok += mh_ratelimit_ok(&rl, &sup);
    assert_int_equal(ok, 3);
    assert_int_equal(rl.suppressed, 7);
}

/* Reads one relay batch from `router` (waits up to 500 ms); NULL if none. */
static mh_relay_batch_t *s_relay_recv(zsock_t *router)
{
    zpoller_t *p = zpoller_new(router, NULL);
    void *which = zpoller_wait(p, 500);
    zpoller_destroy(&p);
    return which ? mh_relay_in_recv(router) : NULL;
}

static double s_metric(mh_metrics_t *m, const char *name)
{
    char *text = mh_metrics_render(m);
    double v = -1;
    mh_metrics_text_value(text, name, NULL, &v);
    free(text);
    return v;
}

/* mh_window on its own: what it sends arrives, a full window says so, an
 * id already in flight is refused, an ack gives the item back once, and
 * what is not acknowledged in time is sent again. */
static void test_window(void **state)
{
    (void)state;
    mh_metrics_t *m = mh_metrics_new();
    zsock_t *router = zsock_new_router("inproc://window-test");
    zsock_t *dealer = zsock_new_dealer("inproc://window-test");
    mh_window_t *w = mh_window_new(
        dealer,
        &(mh_window_opts_t){
            .name = "test", .size = 2, .ack_timeout_ms = 100, .metric_prefix = "mh_test_window"},
        m);
    assert_non_null(w);
    int *items[3];
    for (int i = 0; i < 3; i++) {
        items[i] = malloc(sizeof *items[i]);
        *items[i] = i;
    }
    zframe_t *f = zframe_new("a", 1);
    assert_int_equal(mh_window_send(w, "id-1", &f, items[0]), 0);
    assert_null(f);
    f = zframe_new("a", 1);
    assert_int_equal(mh_window_send(w, "id-1", &f, items[2]), -1); /* in flight already */
    free(items[2]); /* refused: the item stays the caller's */
    f = zframe_new("b", 1);
    assert_int_equal(mh_window_send(w, "id-2", &f, items[1]), 0);
    assert_true(mh_window_full(w));
    for (int i = 0; i < 2; i++) {
        zmsg_t *msg = zmsg_recv(router);
        assert_non_null(msg);
        zmsg_destroy(&msg);
    }
    /* id-2 is acknowledged; id-1 is not, and goes again after the timeout */
    int *back = mh_window_ack(w, "id-2");
    assert_ptr_equal(back, items[1]);
    free(back);
    assert_null(mh_window_ack(w, "id-2"));
    assert_null(mh_window_ack(w, "forged"));
    assert_true(s_metric(m, "mh_test_window_acks_unknown_total") == 2);
    assert_int_equal(mh_window_size(w), 1);
    mht_sleep_ms(150);
    mh_window_tick(w);
    zmsg_t *again = zmsg_recv(router);
    assert_non_null(again);
    assert_memory_equal(zframe_data(zmsg_last(again)), "a", 1);
    zmsg_destroy(&again);
    assert_int_equal(mh_window_resent(w), 1);
    mh_window_destroy(&w); /* frees id-1's item */
    zsock_destroy(&dealer);
    zsock_destroy(&router);
    mh_metrics_destroy(&m);
}

/* the relay's delivered callback: the tags, each followed by '|' */
static void s_delivered(void *ud, const char *tag)
{
    strcat(ud, tag);
    strcat(ud, "|");
}

static void test_relay(void **state)
{
    (void)state;
    char delivered[256] = "";
    mh_metrics_t *m = mh_metrics_new();
    zsock_t *router = zsock_new_router("inproc://relay-test");
    mh_relay_t *r = mh_relay_new(&(mh_relay_opts_t){.endpoint = "inproc://relay-test",
                                                    .name = "test",
                                                    .instance = "gw-1",
                                                    .batch_max = 3,
                                                    .linger_ms = 1,
                                                    .window = 2,
                                                    .max_held = 7,
                                                    .ack_timeout_ms = 200,
                                                    .metric_prefix = "mh_test_relay",
                                                    .delivered = s_delivered,
                                                    .ud = delivered},
                                 m);
    assert_non_null(r);
    mh_relay_refresh(r);
    Mh__DeviceSeen seen = MH__DEVICE_SEEN__INIT;
    /* three messages make a full batch, sent at once; two carry tags */
    assert_int_equal(mh_relay_add_tagged(r, "device.seen", &seen.base, "a"), 0);
    assert_int_equal(mh_relay_add(r, "device.seen", &seen.base), 0);
    assert_int_equal(mh_relay_add_tagged(r, "device.seen", &seen.base, "b c"), 0);
    mh_relay_batch_t *b = s_relay_recv(router);
    assert_non_null(b);
    assert_string_equal(b->batch_id, "gw-1-1");
    assert_int_equal(b->n, 3);
    Mh__Envelope *env = mh_envelope_unpack(b->messages[0]);
    assert_string_equal(env->type, "device.seen");
    mh_envelope_free(&env);
    assert_int_equal(mh_relay_unacked(r), 3);
    assert_string_equal(delivered, ""); /* nothing is delivered before its ack */
    /* not acknowledged in time: sent again, with the same id */
    mh_relay_batch_t *again = NULL;
    for (int i = 0; i < 50 && !again; i++) {
        mht_sleep_ms(20);
        mh_relay_tick(r, false);
        again = zsock_events(router) & ZMQ_POLLIN ? mh_relay_in_recv(router) : NULL;
    }
    assert_non_null(again);
    assert_string_equal(again->batch_id, "gw-1-1");
    assert_true(s_metric(m, "mh_test_relay_batches_resent_total") >= 1);
    /* acknowledged (twice: the second is unknown, counted, ignored) */
    mh_relay_in_ack(router, b, false);
    mh_relay_in_ack(router, again, true);
    mht_sleep_ms(50);
    mh_relay_on_acks(r);
    assert_int_equal(mh_relay_unacked(r), 0);
    assert_true(s_metric(m, "mh_test_relay_acks_unknown_total") == 1);
    assert_string_equal(delivered, "a|b c|"); /* once, for the first ack */
    mh_relay_batch_destroy(&b);
    mh_relay_batch_destroy(&again);
    /* a partial batch goes after the linger; the window holds two batches,
     * a third waits and the sender says it is full */
    assert_int_equal(mh_relay_add(r, "device.seen", &seen.base), 0);
    mht_sleep_ms(5);
    mh_relay_tick(r, false);
    b = s_relay_recv(router);
    assert_non_null(b);
    assert_int_equal(b->n, 1);
    for (int i = 0; i < 6; i++)
        assert_int_equal(mh_relay_add(r, "device.seen", &seen.base), 0);
    assert_true(mh_relay_full(r));
    assert_int_equal(mh_relay_unacked(r), 7);
    mh_relay_in_ack(router, b, false);
    mh_relay_batch_destroy(&b);
    mht_sleep_ms(50);
    mh_relay_on_acks(r); /* room again: the waiting batch goes */
    assert_false(mh_relay_full(r));
    for (int i = 0; i < 2; i++) {
        b = s_relay_recv(router);
        assert_non_null(b);
        mh_relay_in_ack(router, b, false);
        mh_relay_batch_destroy(&b);
    }
    mht_sleep_ms(50);
    mh_relay_on_acks(r);
    assert_int_equal(mh_relay_unacked(r), 0);
    /* the receiver refuses what is not a batch, and ids a text[] would need
     * to escape */
    zsock_t *bad = zsock_new_dealer(">inproc://relay-test");
    zstr_send(bad, "garbage");
    Mh__RelayBatch forged = MH__RELAY_BATCH__INIT;
    forged.batch_id = "x\",\"y";
    mh_envelope_send(bad, NULL, "relay.batch", NULL, &forged.base, false);
    forged.batch_id = "";
    mh_envelope_send(bad, NULL, "relay.batch", NULL, &forged.base, false);
    for (int i = 0; i < 3; i++) {
        zpoller_t *p = zpoller_new(router, NULL);
        assert_non_null(zpoller_wait(p, 500));
        zpoller_destroy(&p);
        assert_null(mh_relay_in_recv(router));
    }
    zsock_destroy(&bad);
    mh_relay_destroy(&r);
    zsock_destroy(&router);
    mh_metrics_destroy(&m);
}

/* Batches unpacked into an arena read the same as with malloc; a reset
 * gives everything back (valgrind and ASan check no block is left) and the
 * arena serves the next group; a message bigger than a chunk gets one of
 * its own. */
static void test_pbarena(void **state)
{
    (void)state;
    enum { N = 10000 };
    Mh__Point *pts = calloc(N, sizeof *pts);
    Mh__Point **pp = calloc(N, sizeof *pp);
    char(*ids)[16] = calloc(N, sizeof *ids);
    assert_true(pts && pp && ids);
    for (int i = 0; i < N; i++) {
        pts[i] = (Mh__Point)MH__POINT__INIT;
        snprintf(ids[i], sizeof ids[i], "dev-%d", i);
        pts[i].device_id = ids[i];
        pts[i].metric = "temperature";
        pts[i].ts_ms = 1700000000000 + i;
        pts[i].value = i * 0.5;
        pp[i] = &pts[i];
    }
    Mh__TelemetryBatch b = MH__TELEMETRY_BATCH__INIT;
    b.batch_id = "g1-7";
    b.points = pp;
    uint8_t *buf[2];
    size_t len[2];
    size_t counts[2] = {300, N}; /* N: its 80 KB pointer array outgrows a 64 KiB chunk */
    for (int v = 0; v < 2; v++) {
        b.n_points = counts[v];
        len[v] = mh__telemetry_batch__get_packed_size(&b);
        buf[v] = malloc(len[v]);
        assert_non_null(buf[v]);
        mh__telemetry_batch__pack(&b, buf[v]);
    }
    mh_pbarena_t *a = mh_pbarena_new();
    assert_non_null(a);
    for (int round = 0; round < 4; round++) {
        /* a group: several batches (more than one chunk), the big one in
         * rounds 1 and 3 */
        for (int k = 0; k < 8; k++) {
            int v = (round % 2 == 1 && k == 3) ? 1 : 0;
            Mh__TelemetryBatch *back =
                mh__telemetry_batch__unpack(mh_pbarena_allocator(a), len[v], buf[v]);
            assert_non_null(back);
            assert_string_equal(back->batch_id, "g1-7");
            assert_int_equal(back->n_points, counts[v]);
            size_t last = counts[v] - 1;
            char want[16];
            snprintf(want, sizeof want, "dev-%zu", last);
            assert_string_equal(back->points[last]->device_id, want);
            assert_true(back->points[last]->value == last * 0.5);
            assert_int_equal(back->points[17]->ts_ms, 1700000000017);
            /* freeing one message is a no-op, harmless */
            if (k == 0)
                mh__telemetry_batch__free_unpacked(back, mh_pbarena_allocator(a));
        }
        /* a malformed body is refused as with malloc */
        assert_null(mh__telemetry_batch__unpack(mh_pbarena_allocator(a), 5,
                                                (const uint8_t *)"\x0a\xff\xff\xff\xff"));
        mh_pbarena_reset(a);
    }
    mh_pbarena_destroy(&a);
    assert_null(a);
    for (int v = 0; v < 2; v++)
        free(buf[v]);
    free(pts);
    free(pp);
    free(ids);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults_env_flags),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_config_durations),
        cmocka_unit_test(test_metrics_render),
        cmocka_unit_test(test_envelope_roundtrip),
        cmocka_unit_test(test_pbarena),
        cmocka_unit_test(test_resolver),
        cmocka_unit_test(test_ratelimit),
        cmocka_unit_test(test_json_depth),
        cmocka_unit_test(test_json_dumps_exact),
        cmocka_unit_test(test_rpc_server),
        cmocka_unit_test(test_rpc_call_overrun),
        cmocka_unit_test(test_rpc_read_asks_another),
        cmocka_unit_test(test_rpc_skips_dead_replica),
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_relay),
    };
    return MHT_RUN(tests);
}
