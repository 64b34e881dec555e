/* Twin, registry and commands end to end: real mosquitto and PostgreSQL,
 * the real gateway and two twin replicas, devices speaking MQTT through the
 * reference agent, operators through twin's RPC. Each test checks what a
 * firmware writer or an operator would see. */
#include "mh_test.h"
#include "mh_time.h"

#include "mh_agent.h"
#include "mh_envelope.h"
#include "twin.pb-c.h"

#include <czmq.h>
#include <jansson.h>
#include <pthread.h>

static mht_broker_t s_broker;
static mht_db_t s_db;
static mht_service_t s_twin_a, s_twin_b, s_gw, s_ingest;
static zsock_t *s_rpc_sock;
static char s_downlink[64];

/* ---- operator side: the RPC ---- */

static Mh__TwinReply *s_call(Mh__TwinRequest *q)
{
    static int seq;
    char rid[32];
    snprintf(rid, sizeof rid, "t-%d", ++seq);
    q->request_id = rid;
    assert_int_equal(mh_envelope_send(s_rpc_sock, NULL, "twin.request", NULL, &q->base, false), 0);
    for (;;) {
        zsock_set_rcvtimeo(s_rpc_sock, 10000);
        zframe_t *f = zframe_recv(s_rpc_sock);
        if (!f)
            fail_msg("twin did not answer the RPC in 10 s");
        Mh__Envelope *env = mh_envelope_unpack(f);
        zframe_destroy(&f);
        assert_non_null(env);
        Mh__TwinReply *r = mh__twin_reply__unpack(NULL, env->body.len, env->body.data);
        mh_envelope_free(&env);
        assert_non_null(r);
        if (strcmp(r->request_id, rid) == 0)
            return r;
        mh__twin_reply__free_unpacked(r, NULL);
    }
}

static uint32_t s_status_of(Mh__TwinReply *r)
{
    uint32_t st = r->status;
    mh__twin_reply__free_unpacked(r, NULL);
    return st;
}

static json_t *s_body(Mh__TwinReply *r)
{
    json_t *v = json_loads(r->body_json, JSON_DECODE_ANY, NULL);
    mh__twin_reply__free_unpacked(r, NULL);
    return v;
}

static uint32_t s_register(const char *id, const char *tags)
{
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.method = MH__TWIN_REQUEST__METHOD__REGISTER;
    q.device_id = (char *)id;
    q.tags_json = (char *)(tags ? tags : "");
    return s_status_of(s_call(&q));
}

static Mh__TwinReply *s_simple(Mh__TwinRequest__Method m, const char *id)
{
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.method = m;
    q.device_id = (char *)id;
    return s_call(&q);
}

static Mh__TwinReply *s_patch(const char *id, const char *desired, const char *tags,
                              int64_t if_match)
{
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.method = MH__TWIN_REQUEST__METHOD__PATCH_TWIN;
    q.device_id = (char *)id;
    q.desired_json = (char *)(desired ? desired : "");
    q.tags_json = (char *)(tags ? tags : "");
    q.if_match = if_match;
    return s_call(&q);
}

static Mh__TwinReply *s_command(const char *id, const char *name, const char *params, int64_t ttl,
                                int64_t timeout)
{
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.method = MH__TWIN_REQUEST__METHOD__SEND_COMMAND;
    q.device_id = (char *)id;
    q.command_name = (char *)name;
    q.params_json = (char *)(params ? params : "");
    q.ttl_s = ttl;
    q.timeout_s = timeout;
    return s_call(&q);
}

static json_t *s_get(Mh__TwinRequest__Method m, const char *id)
{
    Mh__TwinReply *r = s_simple(m, id);
    assert_int_equal(r->status, 200);
    return s_body(r);
}

static int64_t s_twin_version(const char *id)
{
    json_t *doc = s_get(MH__TWIN_REQUEST__METHOD__GET_TWIN, id);
    int64_t v = json_integer_value(json_object_get(doc, "version"));
    json_decref(doc);
    return v;
}

static const char *s_device_status(const char *id, char *buf, size_t len)
{
    json_t *d = s_get(MH__TWIN_REQUEST__METHOD__GET_DEVICE, id);
    snprintf(buf, len, "%s", json_string_value(json_object_get(d, "status")));
    json_decref(d);
    return buf;
}

static bool s_wait_status(const char *id, const char *want, int timeout_ms)
{
    char buf[16];
    int64_t deadline = mht_now_ms() + timeout_ms;
    while (strcmp(s_device_status(id, buf, sizeof buf), want) != 0) {
        if (mht_now_ms() > deadline)
            return false;
        mht_sleep_ms(50);
    }
    return true;
}

/* Waits until the gateway's cache knows `n` devices. */
static void s_wait_registered(double n)
{
    if (!(mht_wait_metric(s_gw.http_port, "mh_gateway_registry_devices", NULL, n, 10000) >= n))
        fail_msg("the gateway's registry did not reach %.0f devices", n);
}

static double s_registered_now(void)
{
    return mht_metric(s_gw.http_port, "mh_gateway_registry_devices", NULL);
}

static void s_register_known(const char *id, const char *tags)
{
    double before = s_registered_now();
    assert_int_equal(s_register(id, tags), 201);
    s_wait_registered(before + 1);
}

/* ---- device side: the agent, with every downlink message kept ---- */

typedef struct {
    mh_agent_t *agent;
    pthread_mutex_t lock;
    char *sub[4096];
    char *payload[4096];
    size_t n;
} s_dev_t;

static void s_on_message(mh_agent_t *a, const char *sub, const char *payload, size_t len, void *ud)
{
    (void)a;
    s_dev_t *d = ud;
    pthread_mutex_lock(&d->lock);
    if (d->n < 4096) {
        d->sub[d->n] = strdup(sub);
        d->payload[d->n] = strndup(payload, len);
        d->n++;
    }
    pthread_mutex_unlock(&d->lock);
}

static s_dev_t *s_dev_new(const char *id)
{
    s_dev_t *d = calloc(1, sizeof *d);
    pthread_mutex_init(&d->lock, NULL);
    mh_agent_opts_t o = {.url = s_broker.url, .device_id = id, .firmware = "1.0.0"};
    d->agent = mh_agent_new(&o);
    assert_non_null(d->agent);
    mh_agent_on_message(d->agent, s_on_message, d);
    return d;
}

static void s_dev_connect(s_dev_t *d)
{
    assert_int_equal(mh_agent_connect(d->agent), 0);
    assert_true(mh_agent_wait_connected(d->agent, 10000));
}

static void s_dev_destroy(s_dev_t **dp)
{
    s_dev_t *d = *dp;
    mh_agent_destroy(&d->agent);
    for (size_t i = 0; i < d->n; i++) {
        free(d->sub[i]);
        free(d->payload[i]);
    }
    pthread_mutex_destroy(&d->lock);
    free(d);
    *dp = NULL;
}

/* Messages on `sub` so far. */
static size_t s_count(s_dev_t *d, const char *sub)
{
    size_t n = 0;
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < d->n; i++)
        n += d->sub[i] && strcmp(d->sub[i], sub) == 0;
    pthread_mutex_unlock(&d->lock);
    return n;
}

/* Takes the text of the first message on `sub`, waiting up to timeout_ms;
 * NULL if none (the caller frees). */
static char *s_expect_text(s_dev_t *d, const char *sub, int timeout_ms)
{
    int64_t deadline = mht_now_ms() + timeout_ms;
    for (;;) {
        pthread_mutex_lock(&d->lock);
        for (size_t i = 0; i < d->n; i++) {
            if (d->sub[i] && strcmp(d->sub[i], sub) == 0) {
                char *text = strdup(d->payload[i]);
                free(d->sub[i]);
                d->sub[i] = NULL;
                pthread_mutex_unlock(&d->lock);
                return text;
            }
        }
        pthread_mutex_unlock(&d->lock);
        if (mht_now_ms() > deadline)
            return NULL;
        mht_sleep_ms(10);
    }
}

/* The same, parsed. */
static json_t *s_expect(s_dev_t *d, const char *sub, int timeout_ms)
{
    char *text = s_expect_text(d, sub, timeout_ms);
    json_t *v = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    return v;
}

static void s_pub(s_dev_t *d, const char *sub, const char *payload)
{
    for (int i = 0; i < 500; i++) {
        int rc = mh_agent_publish(d->agent, sub, payload, strlen(payload), 1);
        if (rc == 0)
            return;
        assert_int_equal(rc, -EAGAIN);
        mht_sleep_ms(10);
    }
    fail_msg("could not publish to %s", sub);
}

static json_t *s_update(s_dev_t *d, const char *payload, const char *want_sub)
{
    s_pub(d, "twin/update", payload);
    json_t *v = s_expect(d, want_sub, 10000);
    if (!v)
        fail_msg("no %s for %s", want_sub, payload);
    return v;
}

static int64_t s_ji(json_t *v, const char *key)
{
    return json_integer_value(json_object_get(v, key));
}

/* ---- set-up ---- */

static int s_setup(void **state)
{
    (void)state;
    mht_broker_start(&s_broker);
    mht_db_create(&s_db);
    int dl_port = mht_free_port();
    snprintf(s_downlink, sizeof s_downlink, "tcp://127.0.0.1:%d", dl_port);
    /* Two replicas on one database: the gateway spreads device messages
     * over both, and both publish through the gateway. */
    const char *twin_extra[] = {"--keepalive=2s", "--grace=1s", NULL};
    mht_twin_start(&s_twin_a, "twin-a", &s_db, s_downlink, twin_extra);
    mht_twin_start(&s_twin_b, "twin-b", &s_db, s_downlink, twin_extra);
    char a_twin[200], a_rpc[100], a_ev[200], a_dl[100];
    snprintf(a_twin, sizeof a_twin, "--twin-endpoint=%s,%s", s_twin_a.endpoint, s_twin_b.endpoint);
    snprintf(a_rpc, sizeof a_rpc, "--twin-rpc-endpoint=%s", s_twin_a.rpc_endpoint);
    snprintf(a_ev, sizeof a_ev, "--twin-events-endpoint=%s,%s", s_twin_a.events_endpoint,
             s_twin_b.events_endpoint);
    snprintf(a_dl, sizeof a_dl, "--downlink-bind=%s", s_downlink);
    const char *gw_extra[] = {"--check-registered=true", a_twin, a_rpc, a_ev, a_dl,
                              "--seen-interval=200ms",   NULL};
    mht_ingest_start(&s_ingest, "ingest", &s_db, 0, NULL);
    mht_gateway_start(&s_gw, "gateway", &s_broker, s_ingest.endpoint, gw_extra);
    s_rpc_sock = zsock_new_dealer(s_twin_a.rpc_endpoint);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    zsock_destroy(&s_rpc_sock);
    /* A clean stop is part of the contract (and of the sanitizer's leak check). */
    int st = mht_stop(s_gw.pid, SIGTERM, 20000);
    int sa = mht_stop(s_twin_a.pid, SIGTERM, 20000);
    int sb = mht_stop(s_twin_b.pid, SIGTERM, 20000);
    mht_stop(s_ingest.pid, SIGTERM, 20000);
    mht_broker_stop(&s_broker);
    mht_db_drop(&s_db);
    if (!WIFEXITED(st) || WEXITSTATUS(st) || !WIFEXITED(sa) || WEXITSTATUS(sa) || !WIFEXITED(sb) ||
        WEXITSTATUS(sb)) {
        fprintf(stderr, "a daemon did not exit cleanly (gateway %d, twin-a %d, twin-b %d)\n", st,
                sa, sb);
        return -1;
    }
    return 0;
}

/* ---- registry ---- */

static void test_registry(void **state)
{
    (void)state;
    assert_int_equal(s_register("reg-1", "{\"model\":\"x1\",\"floor\":3}"), 201);
    assert_int_equal(s_register("reg-2", "{\"model\":\"x2\"}"), 201);
    assert_int_equal(s_register("reg-3", "{\"model\":\"x1\",\"site\":\"b\"}"), 201);
    assert_int_equal(s_register("other-1", NULL), 201);
    assert_int_equal(s_register("reg-1", NULL), 409);
    assert_int_equal(s_register("bad id!", NULL), 400);
    assert_int_equal(s_register("", NULL), 400);
    assert_int_equal(s_register("reg-x", "[1,2]"), 400);
    assert_int_equal(s_register("reg-x", "{\"a\":"), 400);
    Mh__TwinReply *r = s_simple(MH__TWIN_REQUEST__METHOD__GET_DEVICE, "reg-x");
    assert_int_equal(r->status, 404);
    assert_string_equal(r->error_code, "not_found");
    mh__twin_reply__free_unpacked(r, NULL);

    json_t *d = s_get(MH__TWIN_REQUEST__METHOD__GET_DEVICE, "reg-1");
    assert_string_equal(json_string_value(json_object_get(d, "status")), "offline");
    assert_int_equal(s_ji(json_object_get(d, "tags"), "floor"), 3);
    assert_true(json_is_null(json_object_get(d, "lastSeen")));
    json_decref(d);

    /* A registered device has a twin at once: empty state, its tags, version 1. */
    json_t *doc = s_get(MH__TWIN_REQUEST__METHOD__GET_TWIN, "reg-3");
    assert_int_equal(s_ji(doc, "version"), 1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "tags"), "site")),
                        "b");
    assert_int_equal(json_object_size(json_object_get(json_object_get(doc, "state"), "desired")),
                     0);
    json_decref(doc);

    /* Filters: tag (all must match, numbers match their text), prefix, and
     * cursor pagination that visits every match once. */
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.method = MH__TWIN_REQUEST__METHOD__LIST_DEVICES;
    char *tags[] = {"model:x1", "floor:3"};
    q.tags = tags;
    q.n_tags = 2;
    json_t *list = s_body(s_call(&q));
    assert_int_equal(json_array_size(json_object_get(list, "items")), 1);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(list, "items"), 0), "id")),
        "reg-1");
    json_decref(list);
    /* a key alone: the devices that have the tag, whatever its value */
    char *has[] = {"floor"}, *has2[] = {"site", "model:x1"}, *bad[] = {":x1"};
    q.tags = has;
    q.n_tags = 1;
    list = s_body(s_call(&q));
    assert_int_equal(json_array_size(json_object_get(list, "items")), 1);
    json_decref(list);
    q.tags = has2;
    q.n_tags = 2;
    list = s_body(s_call(&q));
    assert_int_equal(json_array_size(json_object_get(list, "items")), 1);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(list, "items"), 0), "id")),
        "reg-3");
    json_decref(list);
    q.tags = bad;
    q.n_tags = 1;
    assert_int_equal(s_status_of(s_call(&q)), 400);

    q.n_tags = 0;
    q.prefix = "reg-";
    q.limit = 2;
    list = s_body(s_call(&q));
    assert_int_equal(json_array_size(json_object_get(list, "items")), 2);
    const char *next = json_string_value(json_object_get(list, "next"));
    assert_non_null(next);
    q.cursor = (char *)next;
    json_t *list2 = s_body(s_call(&q));
    assert_int_equal(json_array_size(json_object_get(list2, "items")), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(list2, "items"), 0), "id")),
                        "reg-3");
    assert_true(json_is_null(json_object_get(list2, "next")));
    json_decref(list2);
    json_decref(list);

    q.cursor = "zz";
    assert_int_equal(s_status_of(s_call(&q)), 400);
    q.cursor = "";
    q.limit = 1001;
    assert_int_equal(s_status_of(s_call(&q)), 400);
    q.limit = 0;
    q.prefix = "";
    q.status = "sleeping";
    assert_int_equal(s_status_of(s_call(&q)), 400);

    /* Delete removes the device, its twin and its queue. */
    Mh__TwinReply *c = s_command("reg-2", "reboot", NULL, 60, 10);
    assert_int_equal(c->status, 202);
    mh__twin_reply__free_unpacked(c, NULL);
    assert_int_equal(s_status_of(s_simple(MH__TWIN_REQUEST__METHOD__DELETE_DEVICE, "reg-2")), 204);
    assert_int_equal(s_status_of(s_simple(MH__TWIN_REQUEST__METHOD__DELETE_DEVICE, "reg-2")), 404);
    assert_int_equal(s_status_of(s_simple(MH__TWIN_REQUEST__METHOD__GET_TWIN, "reg-2")), 404);
    assert_int_equal(
        mht_db_num(&s_db, "SELECT count(*) FROM twin.commands WHERE device_id = 'reg-2'"), 0);
}

/* ---- twin rules through MQTT ---- */

static void test_twin_get_update(void **state)
{
    (void)state;
    s_register_known("tw-1", "{\"model\":\"x1\"}");
    s_dev_t *d = s_dev_new("tw-1");
    s_dev_connect(d);

    s_pub(d, "twin/get", "{\"clientToken\":\"g1\"}");
    json_t *doc = s_expect(d, "twin/get/accepted", 10000);
    assert_non_null(doc);
    assert_int_equal(s_ji(doc, "version"), 1);
    assert_string_equal(json_string_value(json_object_get(doc, "clientToken")), "g1");
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "tags"), "model")),
                        "x1");
    json_decref(doc);

    json_t *acc = s_update(d,
                           "{\"state\":{\"reported\":{\"temp\":21.5,\"cfg\":{\"a\":1,\"b\":2}}},"
                           "\"clientToken\":\"u1\"}",
                           "twin/update/accepted");
    assert_int_equal(s_ji(acc, "version"), 2);
    assert_string_equal(json_string_value(json_object_get(acc, "clientToken")), "u1");
    assert_true(s_ji(acc, "timestamp") > 0);
    json_decref(acc);

    /* Nested objects merge; null deletes. */
    acc = s_update(d, "{\"state\":{\"reported\":{\"cfg\":{\"b\":null,\"c\":3}}},\"version\":2}",
                   "twin/update/accepted");
    assert_int_equal(s_ji(acc, "version"), 3);
    json_decref(acc);
    doc = s_get(MH__TWIN_REQUEST__METHOD__GET_TWIN, "tw-1");
    json_t *rep = json_object_get(json_object_get(doc, "state"), "reported");
    json_t *cfg = json_object_get(rep, "cfg");
    assert_int_equal(s_ji(cfg, "a"), 1);
    assert_null(json_object_get(cfg, "b"));
    assert_int_equal(s_ji(cfg, "c"), 3);
    assert_non_null(
        json_object_get(json_object_get(json_object_get(doc, "metadata"), "reported"), "temp"));
    json_decref(doc);

    /* A stale version is refused with 409 and changes nothing. */
    json_t *rej =
        s_update(d, "{\"state\":{\"reported\":{\"temp\":1}},\"version\":2,\"clientToken\":\"u3\"}",
                 "twin/update/rejected");
    assert_int_equal(s_ji(rej, "code"), 409);
    assert_string_equal(json_string_value(json_object_get(rej, "clientToken")), "u3");
    json_decref(rej);
    assert_int_equal(s_twin_version("tw-1"), 3);

    /* An update that changes nothing is accepted without a new version. */
    acc = s_update(d, "{\"state\":{\"reported\":{\"temp\":21.5}}}", "twin/update/accepted");
    assert_int_equal(s_ji(acc, "version"), 3);
    json_decref(acc);

    /* An older ts than what is stored for a key does not overwrite it. */
    acc =
        s_update(d, "{\"state\":{\"reported\":{\"temp\":5}},\"ts\":1000}", "twin/update/accepted");
    json_decref(acc);
    doc = s_get(MH__TWIN_REQUEST__METHOD__GET_TWIN, "tw-1");
    assert_true(json_number_value(json_object_get(
                    json_object_get(json_object_get(doc, "state"), "reported"), "temp")) == 21.5);
    json_decref(doc);

    /* Firmware reported shows in the registry. */
    acc =
        s_update(d, "{\"state\":{\"reported\":{\"firmware\":\"2.0.1\"}}}", "twin/update/accepted");
    json_decref(acc);
    json_t *dev = s_get(MH__TWIN_REQUEST__METHOD__GET_DEVICE, "tw-1");
    assert_string_equal(json_string_value(json_object_get(dev, "firmware")), "2.0.1");
    assert_string_equal(json_string_value(json_object_get(dev, "status")), "online");
    assert_true(s_ji(dev, "lastSeen") > 0);
    json_decref(dev);
    s_dev_destroy(&d);
}

static void test_delta(void **state)
{
    (void)state;
    s_register_known("dl-1", NULL);
    s_dev_t *d = s_dev_new("dl-1");
    s_dev_connect(d);
    assert_true(s_wait_status("dl-1", "online", 5000));

    /* If-Match: a wrong version is 412 and changes nothing. */
    Mh__TwinReply *r = s_patch("dl-1", "{\"interval\":30}", NULL, 7);
    assert_int_equal(r->status, 412);
    assert_string_equal(r->error_code, "precondition_failed");
    mh__twin_reply__free_unpacked(r, NULL);
    assert_int_equal(s_twin_version("dl-1"), 1);

    r = s_patch("dl-1", "{\"interval\":30,\"cfg\":{\"a\":1,\"b\":2}}", "{\"site\":\"north\"}", 1);
    assert_int_equal(r->status, 200);
    assert_int_equal(r->version, 2);
    mh__twin_reply__free_unpacked(r, NULL);
    json_t *delta = s_expect(d, "twin/delta", 10000);
    assert_non_null(delta);
    assert_int_equal(s_ji(delta, "version"), 2);
    json_t *st = json_object_get(delta, "state");
    assert_int_equal(s_ji(st, "interval"), 30);
    assert_int_equal(s_ji(json_object_get(st, "cfg"), "b"), 2);
    json_decref(delta);

    /* Reporting part of it: delta shrinks (recursively) and is published. */
    json_decref(s_update(d, "{\"state\":{\"reported\":{\"cfg\":{\"a\":1,\"b\":2}}}}",
                         "twin/update/accepted"));
    delta = s_expect(d, "twin/delta", 10000);
    assert_non_null(delta);
    st = json_object_get(delta, "state");
    assert_int_equal(json_object_size(st), 1);
    assert_int_equal(s_ji(st, "interval"), 30);
    assert_int_equal(s_ji(delta, "version"), 3);
    json_decref(delta);

    /* Reporting the rest empties delta: no delta message. */
    json_decref(
        s_update(d, "{\"state\":{\"reported\":{\"interval\":30}}}", "twin/update/accepted"));
    json_t *doc = s_get(MH__TWIN_REQUEST__METHOD__GET_TWIN, "dl-1");
    assert_int_equal(json_object_size(json_object_get(json_object_get(doc, "state"), "delta")), 0);
    json_decref(doc);
    mht_sleep_ms(300);
    assert_int_equal(s_count(d, "twin/delta"), 0);

    /* Offline, desired changes; on coming online the device gets the delta. */
    s_dev_destroy(&d);
    assert_true(s_wait_status("dl-1", "offline", 5000));
    r = s_patch("dl-1", "{\"interval\":60}", NULL, 0);
    assert_int_equal(r->status, 200);
    mh__twin_reply__free_unpacked(r, NULL);
    d = s_dev_new("dl-1");
    s_dev_connect(d);
    delta = s_expect(d, "twin/delta", 10000);
    assert_non_null(delta);
    assert_int_equal(s_ji(json_object_get(delta, "state"), "interval"), 60);
    json_decref(delta);
    s_dev_destroy(&d);
}

static void test_bad_input(void **state)
{
    (void)state;
    s_register_known("bad-1", NULL);
    s_dev_t *d = s_dev_new("bad-1");
    s_dev_connect(d);
    int64_t v0 = s_twin_version("bad-1");
    static const struct {
        const char *payload;
        int code;
    } cases[] = {
        {"{\"state\":{\"reported\":{\"a\":1}", 400},  /* invalid JSON */
        {"[1,2,3]", 400},                             /* not an object */
        {"{\"state\":{\"desired\":{\"a\":1}}}", 400}, /* desired is not a device's */
        {"{\"state\":{\"reported\":{\"a\":1}},\"colour\":\"red\"}", 400}, /* unknown field */
        {"{\"state\":{\"reported\":{\"a\":1},\"extra\":{}}}", 400},       /* unknown in state */
        {"{\"state\":{\"reported\":[1]}}", 400},                          /* wrong type */
        {"{\"state\":{\"reported\":{\"battery\":\"full\"}}}", 400}, /* wrong type, known key */
        {"{\"state\":{\"reported\":{\"location\":{\"lat\":91,\"lon\":0}}}}", 400},
        {"{\"state\":{\"reported\":{\"a\":1}},\"version\":\"2\"}", 400},
        {"{\"state\":{\"reported\":{\"a\":1}},\"clientToken\":7}", 400},
        {"{\"state\":{\"reported\":{\"a\":1}},\"ts\":99999999999999}", 400}, /* far future */
        {"{\"state\":{\"reported\":{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":{\"h\":{\"i\":"
         "1}"
         "}}}}}}}}}}",
         413}, /* depth 9 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *rej = s_update(d, cases[i].payload, "twin/update/rejected");
        if (s_ji(rej, "code") != cases[i].code)
            fail_msg("case %zu: code %lld, want %d", i, (long long)s_ji(rej, "code"),
                     cases[i].code);
        assert_true(json_string_length(json_object_get(rej, "message")) > 0);
        json_decref(rej);
    }
    /* Over 32 KiB of reported state. */
    size_t big = 33 * 1024;
    char *p = malloc(big + 64);
    int off = snprintf(p, big + 64, "{\"state\":{\"reported\":{\"blob\":\"");
    memset(p + off, 'x', big);
    strcpy(p + off + big, "\"}}}");
    json_t *rej = s_update(d, p, "twin/update/rejected");
    assert_int_equal(s_ji(rej, "code"), 413);
    json_decref(rej);
    free(p);
    /* Operator side: over the limits, not objects. */
    Mh__TwinReply *r = s_patch("bad-1",
                               "{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":{\"h\":{"
                               "\"i\":1}}}}}}}}}",
                               NULL, 0);
    assert_int_equal(r->status, 413);
    mh__twin_reply__free_unpacked(r, NULL);
    r = s_patch("bad-1", "5", NULL, 0);
    assert_int_equal(r->status, 400);
    mh__twin_reply__free_unpacked(r, NULL);
    r = s_patch("bad-1", NULL, NULL, 0);
    assert_int_equal(r->status, 400);
    mh__twin_reply__free_unpacked(r, NULL);
    r = s_command("bad-1", "no spaces allowed", NULL, 0, 0);
    assert_int_equal(r->status, 400);
    mh__twin_reply__free_unpacked(r, NULL);
    r = s_command("bad-1", "reboot", "[1]", 0, 0);
    assert_int_equal(r->status, 400);
    mh__twin_reply__free_unpacked(r, NULL);
    r = s_command("bad-1", "reboot", NULL, -5, 0);
    assert_int_equal(r->status, 400);
    mh__twin_reply__free_unpacked(r, NULL);
    /* Garbage acks and gets are refused without harm. */
    s_pub(d, "commands/ack", "{\"id\":\"nope\",\"status\":\"maybe\"}");
    s_pub(d, "commands/ack", "not json");
    s_pub(d, "twin/get", "[]");
    json_t *grej = s_expect(d, "twin/get/rejected", 10000);
    assert_non_null(grej);
    assert_int_equal(s_ji(grej, "code"), 400);
    json_decref(grej);

    /* Nothing changed, and everything is alive and answering. */
    assert_int_equal(s_twin_version("bad-1"), v0);
    assert_true(mht_alive(s_gw.pid) && mht_alive(s_twin_a.pid) && mht_alive(s_twin_b.pid));
    double refused =
        mht_metric(s_twin_a.http_port, "mh_twin_messages_refused_total", "reason=\"bad_request\"") +
        mht_metric(s_twin_b.http_port, "mh_twin_messages_refused_total", "reason=\"bad_request\"");
    assert_true(refused >= 10);
    s_dev_destroy(&d);
}

/* ---- connectivity ---- */

static void test_connectivity(void **state)
{
    (void)state;
    int64_t start = mh_now_ms(); /* wall clock, as the log keeps it */
    s_register_known("cn-1", NULL);
    s_register_known("cn-2", NULL);
    s_dev_t *d = s_dev_new("cn-1");
    s_dev_connect(d);
    assert_true(s_wait_status("cn-1", "online", 5000));
    json_t *dev = s_get(MH__TWIN_REQUEST__METHOD__GET_DEVICE, "cn-1");
    assert_string_equal(json_string_value(json_object_get(dev, "firmware")), "1.0.0");
    json_decref(dev);
    /* what a device reports at boot */
    json_decref(
        s_update(d, "{\"state\":{\"reported\":{\"rebootCount\":3}}}", "twin/update/accepted"));
    /* Power loss: the broker sends the last will. */
    mh_agent_kill_connection(d->agent);
    assert_true(s_wait_status("cn-1", "offline", 10000));
    s_dev_destroy(&d);

    /* A device that never says "online" is online from its first message
     * until keep-alive (2 s here) plus grace (1 s) passes in silence. */
    assert_int_equal(
        mht_mosquitto_pub(&s_broker, "mqttv5", "devices/cn-2/telemetry", "{\"temp\":20}", 1), 0);
    assert_true(s_wait_status("cn-2", "online", 5000));
    int64_t t0 = mht_now_ms();
    assert_true(s_wait_status("cn-2", "offline", 10000));
    assert_true(mht_now_ms() - t0 >= 1500);
    dev = s_get(MH__TWIN_REQUEST__METHOD__GET_DEVICE, "cn-2");
    assert_true(s_ji(dev, "lastSeen") > 0);
    json_decref(dev);

    /* Each change is in the connectivity log, and HEALTH_STATS sums it per
     * cohort over each device's window: cn-1 and cn-2 went offline once
     * each (last will; silence) and have been offline since; reg-3 never
     * connected in its window and counts as online. */
    int64_t now = mh_now_ms();
    char params[512];
    snprintf(
        params, sizeof params,
        "{\"firmware\":\"1.0.0\",\"key\":\"rebootCount\",\"cohorts\":{\"a\":[[\"cn-1\",%lld,%lld],"
        "[\"cn-2\",%lld,%lld]],\"b\":[[\"reg-3\",%lld,%lld]],\"c\":[]}}",
        (long long)start, (long long)now, (long long)start, (long long)now, (long long)start,
        (long long)now);
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.method = MH__TWIN_REQUEST__METHOD__HEALTH_STATS;
    q.params_json = params;
    json_t *st = s_body(s_call(&q));
    json_t *a = json_object_get(st, "a"), *b = json_object_get(st, "b");
    assert_int_equal(s_ji(a, "devices"), 2);
    assert_int_equal(s_ji(a, "disconnects"), 2);
    double hours = json_real_value(json_object_get(a, "deviceHours"));
    double off = json_real_value(json_object_get(a, "offlineHours"));
    assert_true(hours > 0 && off > 0 && off < hours);
    assert_int_equal(s_ji(a, "notOnVersion"), 0); /* both report 1.0.0 */
    /* the key asked for: cn-1 reported rebootCount in its window, cn-2
     * only sent telemetry */
    assert_int_equal(s_ji(a, "reported"), 1);
    assert_int_equal(s_ji(b, "devices"), 1);
    assert_int_equal(s_ji(b, "disconnects"), 0);
    assert_true(json_real_value(json_object_get(b, "offlineHours")) == 0);
    assert_int_equal(s_ji(json_object_get(st, "c"), "devices"), 0);
    json_decref(st);
    q.params_json = "{\"cohorts\":{\"a\":[[\"cn-1\",5,1]]}}";
    assert_int_equal(s_status_of(s_call(&q)), 400);
    q.params_json = "[]";
    assert_int_equal(s_status_of(s_call(&q)), 400);
}

/* ---- commands ---- */

static mh_cmd_outcome_t s_ok_handler(mh_agent_t *a, const char *id, json_t *params, json_t **result,
                                     void *ud)
{
    (void)a;
    (void)id;
    (void)ud;
    *result = json_pack("{s:O}", "echo", params ? params : json_null());
    return MH_CMD_SUCCEEDED;
}

static mh_cmd_outcome_t s_silent_handler(mh_agent_t *a, const char *id, json_t *params,
                                         json_t **result, void *ud)
{
    (void)a;
    (void)id;
    (void)params;
    (void)result;
    (void)ud;
    return MH_CMD_PENDING; /* never acks: a hung device */
}

static json_t *s_cmd_body(Mh__TwinReply *r)
{
    assert_int_equal(r->status, 202);
    return s_body(r);
}

static const char *s_cmd_status(const char *dev, const char *cid, char *buf, size_t len)
{
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.method = MH__TWIN_REQUEST__METHOD__GET_COMMAND;
    q.device_id = (char *)dev;
    q.command_id = (char *)cid;
    Mh__TwinReply *r = s_call(&q);
    assert_int_equal(r->status, 200);
    json_t *c = s_body(r);
    snprintf(buf, len, "%s", json_string_value(json_object_get(c, "status")));
    json_decref(c);
    return buf;
}

static bool s_wait_cmd(const char *dev, const char *cid, const char *want, int timeout_ms)
{
    char buf[32];
    int64_t deadline = mht_now_ms() + timeout_ms;
    while (strcmp(s_cmd_status(dev, cid, buf, sizeof buf), want) != 0) {
        if (mht_now_ms() > deadline) {
            fprintf(stderr, "# command %s is %s, wanted %s\n", cid, buf, want);
            return false;
        }
        mht_sleep_ms(50);
    }
    return true;
}

static void test_offline_queue(void **state)
{
    (void)state;
    s_register_known("cq-1", NULL);
    char ids[4][64];
    const char *params[] = {"{\"n\":1}", "{\"n\":2}", "{\"n\":3}"};
    /* One with a 1-second TTL, sent first: it must never be delivered. */
    json_t *c = s_cmd_body(s_command("cq-1", "blink", "{\"n\":0}", 1, 30));
    assert_string_equal(json_string_value(json_object_get(c, "status")), "queued");
    snprintf(ids[3], sizeof ids[3], "%s", json_string_value(json_object_get(c, "id")));
    json_decref(c);
    for (int i = 0; i < 3; i++) {
        c = s_cmd_body(s_command("cq-1", "blink", params[i], 600, 30));
        assert_string_equal(json_string_value(json_object_get(c, "status")), "queued");
        snprintf(ids[i], sizeof ids[i], "%s", json_string_value(json_object_get(c, "id")));
        json_decref(c);
    }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < i; j++)
            assert_string_not_equal(ids[i], ids[j]);
    assert_true(s_wait_cmd("cq-1", ids[3], "expired", 5000));

    s_dev_t *d = s_dev_new("cq-1");
    mh_agent_on_command(d->agent, "blink", s_ok_handler, NULL);
    s_dev_connect(d);
    for (int i = 0; i < 3; i++)
        assert_true(s_wait_cmd("cq-1", ids[i], "succeeded", 10000));
    mht_sleep_ms(300);
    /* All three, in the order sent, once; never the expired one. */
    assert_int_equal(s_count(d, "commands"), 3);
    for (int i = 0; i < 3; i++) {
        json_t *m = s_expect(d, "commands", 100);
        assert_non_null(m);
        assert_string_equal(json_string_value(json_object_get(m, "id")), ids[i]);
        assert_int_equal(s_ji(json_object_get(m, "params"), "n"), i + 1);
        assert_true(s_ji(m, "expiresAt") > mht_now_ms());
        json_decref(m);
    }
    char buf[32];
    assert_string_equal(s_cmd_status("cq-1", ids[3], buf, sizeof buf), "expired");

    /* The list is newest first, with results. */
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.method = MH__TWIN_REQUEST__METHOD__LIST_COMMANDS;
    q.device_id = "cq-1";
    json_t *list = s_body(s_call(&q));
    json_t *items = json_object_get(list, "items");
    assert_int_equal(json_array_size(items), 4);
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "id")), ids[2]);
    assert_int_equal(
        s_ji(json_object_get(json_object_get(json_array_get(items, 0), "result"), "echo"), "n"), 3);
    json_decref(list);

    /* Online: handed to a gateway at once, "queued" in the answer; "sent"
     * once the gateway has published it (the broker's PUBACK), and the
     * device's answer after. */
    c = s_cmd_body(s_command("cq-1", "blink", "{\"n\":9}", 0, 0));
    assert_string_equal(json_string_value(json_object_get(c, "status")), "queued");
    char now_id[64];
    snprintf(now_id, sizeof now_id, "%s", json_string_value(json_object_get(c, "id")));
    json_decref(c);
    assert_true(s_wait_cmd("cq-1", now_id, "succeeded", 10000));

    /* A command the device has no handler for is rejected by the agent. */
    c = s_cmd_body(s_command("cq-1", "selfdestruct", NULL, 0, 0));
    snprintf(now_id, sizeof now_id, "%s", json_string_value(json_object_get(c, "id")));
    json_decref(c);
    assert_true(s_wait_cmd("cq-1", now_id, "rejected", 10000));
    s_dev_destroy(&d);
}

static void test_command_timeout(void **state)
{
    (void)state;
    s_register_known("ct-1", NULL);
    s_dev_t *d = s_dev_new("ct-1");
    mh_agent_on_command(d->agent, "update", s_silent_handler, NULL);
    s_dev_connect(d);
    assert_true(s_wait_status("ct-1", "online", 5000));
    json_t *c = s_cmd_body(s_command("ct-1", "update", NULL, 600, 1));
    char id[64];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(c, "id")));
    json_decref(c);
    json_t *m = s_expect(d, "commands", 10000);
    assert_non_null(m);
    json_decref(m);
    /* published: sent, and the 1 s timeout runs from there */
    assert_true(s_wait_cmd("ct-1", id, "sent", 5000));
    assert_true(s_wait_cmd("ct-1", id, "timed_out", 5000));
    /* A late ack does not revive it. */
    assert_int_equal(mh_agent_ack(d->agent, id, MH_CMD_SUCCEEDED, NULL), 0);
    mht_sleep_ms(500);
    char buf[32];
    assert_string_equal(s_cmd_status("ct-1", id, buf, sizeof buf), "timed_out");
    s_dev_destroy(&d);
}

/* ---- registration gate ---- */

static void test_unregistered(void **state)
{
    (void)state;
    double before =
        mht_metric(s_gw.http_port, "mh_gateway_messages_rejected_total", "reason=\"unregistered\"");
    assert_int_equal(mht_mosquitto_pub(&s_broker, "mqttv5", "devices/ghost-1/twin/update",
                                       "{\"state\":{\"reported\":{\"a\":1}}}", 1),
                     0);
    assert_int_equal(mht_mosquitto_pub(&s_broker, "mqttv311", "devices/ghost-1/status",
                                       "{\"state\":\"online\"}", 1),
                     0);
    assert_int_equal(
        mht_mosquitto_pub(&s_broker, "mqttv5", "devices/ghost-1/telemetry", "{\"t\":1}", 1), 0);
    int64_t deadline = mht_now_ms() + 5000;
    while (mht_metric(s_gw.http_port, "mh_gateway_messages_rejected_total",
                      "reason=\"unregistered\"") < before + 3 &&
           mht_now_ms() < deadline)
        mht_sleep_ms(20);
    assert_true(mht_metric(s_gw.http_port, "mh_gateway_messages_rejected_total",
                           "reason=\"unregistered\"") >= before + 3);
    assert_int_equal(mht_db_num(&s_db, "SELECT count(*) FROM twin.devices WHERE id = 'ghost-1'"),
                     0);
    /* Once registered, the gateway learns it from twin's event. */
    s_register_known("ghost-1", NULL);
    s_dev_t *d = s_dev_new("ghost-1");
    s_dev_connect(d);
    json_decref(s_update(d, "{\"state\":{\"reported\":{\"a\":1}}}", "twin/update/accepted"));
    s_dev_destroy(&d);
    /* Deleted: dropped again. */
    double size = s_registered_now();
    assert_int_equal(s_status_of(s_simple(MH__TWIN_REQUEST__METHOD__DELETE_DEVICE, "ghost-1")),
                     204);
    deadline = mht_now_ms() + 5000;
    while (s_registered_now() > size - 1 && mht_now_ms() < deadline)
        mht_sleep_ms(20);
    assert_true(s_registered_now() <= size - 1);
}

/* ---- two replicas, one device ---- */

/* Numbers come back as the device wrote them (21.37, not jansson's
 * 21.370000000000001), in the answer and the document. */
static void test_numbers_as_written(void **state)
{
    (void)state;
    s_register_known("tw-num", NULL);
    s_dev_t *d = s_dev_new("tw-num");
    s_dev_connect(d);
    s_pub(d, "twin/update", "{\"state\":{\"reported\":{\"t2\":21.37,\"b2\":0.1}}}");
    char *text = s_expect_text(d, "twin/update/accepted", 10000);
    assert_non_null(text);
    assert_non_null(strstr(text, "21.37"));
    assert_null(strstr(text, "21.370000"));
    assert_null(strstr(text, "0.10000"));
    free(text);
    s_pub(d, "twin/get", "{}");
    text = s_expect_text(d, "twin/get/accepted", 10000);
    assert_non_null(text);
    assert_non_null(strstr(text, "21.37"));
    assert_null(strstr(text, "21.370000"));
    free(text);
    json_t *doc = s_get(MH__TWIN_REQUEST__METHOD__GET_TWIN, "tw-num");
    json_t *rep = json_object_get(json_object_get(doc, "state"), "reported");
    assert_true(json_real_value(json_object_get(rep, "t2")) == 21.37);
    json_decref(doc);
    s_dev_destroy(&d);
}

static void test_concurrent_updates(void **state)
{
    (void)state;
    s_register_known("cc-1", NULL);
    s_dev_t *d = s_dev_new("cc-1");
    s_dev_connect(d);
    json_decref(s_update(d, "{\"state\":{\"reported\":{\"start\":1}}}", "twin/update/accepted"));
    int64_t v0 = s_twin_version("cc-1");
    enum { N = 1000, OPS = 50 };
    /* 1,000 updates, each a new key, spread by the gateway over both
     * replicas, while an operator patches desired through replica B. */
    zsock_t *rpc_b = zsock_new_dealer(s_twin_b.rpc_endpoint);
    for (int i = 0; i < N; i++) {
        char p[96];
        snprintf(p, sizeof p, "{\"state\":{\"reported\":{\"k%d\":%d}},\"clientToken\":\"c%d\"}", i,
                 i, i);
        s_pub(d, "twin/update", p);
        if (i % (N / OPS) == 0) {
            char desired[64];
            snprintf(desired, sizeof desired, "{\"op%d\":%d}", i, i);
            Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
            q.request_id = "b";
            q.method = MH__TWIN_REQUEST__METHOD__PATCH_TWIN;
            q.device_id = "cc-1";
            q.desired_json = desired;
            mh_envelope_send(rpc_b, NULL, "twin.request", NULL, &q.base, false);
        }
    }
    int64_t deadline = mht_now_ms() + 60000;
    while (s_count(d, "twin/update/accepted") + s_count(d, "twin/update/rejected") < N &&
           mht_now_ms() < deadline)
        mht_sleep_ms(20);
    assert_int_equal(s_count(d, "twin/update/rejected"), 0);
    assert_int_equal(s_count(d, "twin/update/accepted"), N);
    int ops_ok = 0;
    zsock_set_rcvtimeo(rpc_b, 10000);
    for (int i = 0; i < OPS; i++) {
        zframe_t *f = zframe_recv(rpc_b);
        assert_non_null(f);
        Mh__Envelope *env = mh_envelope_unpack(f);
        Mh__TwinReply *r = mh__twin_reply__unpack(NULL, env->body.len, env->body.data);
        ops_ok += r->status == 200;
        mh__twin_reply__free_unpacked(r, NULL);
        mh_envelope_free(&env);
        zframe_destroy(&f);
    }
    zsock_destroy(&rpc_b);
    assert_int_equal(ops_ok, OPS);
    /* Both replicas did part of the work... */
    assert_true(mht_metric(s_twin_a.http_port, "mh_twin_updates_changed_total", NULL) > 0);
    assert_true(mht_metric(s_twin_b.http_port, "mh_twin_updates_changed_total", NULL) > 0);
    /* ...and none was lost: version = before + every accepted change. */
    json_t *doc = s_get(MH__TWIN_REQUEST__METHOD__GET_TWIN, "cc-1");
    assert_int_equal(s_ji(doc, "version"), v0 + N + OPS);
    json_t *rep = json_object_get(json_object_get(doc, "state"), "reported");
    assert_int_equal(json_object_size(rep), N + 1);
    assert_int_equal(json_object_size(json_object_get(json_object_get(doc, "state"), "desired")),
                     OPS);
    json_decref(doc);
    s_dev_destroy(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_twin_get_update),
        cmocka_unit_test(test_delta),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_connectivity),
        cmocka_unit_test(test_offline_queue),
        cmocka_unit_test(test_command_timeout),
        cmocka_unit_test(test_unregistered),
        cmocka_unit_test(test_concurrent_updates),
        cmocka_unit_test(test_numbers_as_written),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
