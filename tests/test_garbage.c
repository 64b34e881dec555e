/* A peer sending garbage on every internal socket (issue 14): the whole
 * platform runs — gateway, ingest, twin, ota, fleet-stats — and each socket
 * a service binds to receive on gets, from a stranger's socket of the right
 * type, frames that are not envelopes, envelopes of a type it does not
 * take, envelopes of its own types whose bodies are garbage or another
 * message, envelopes from a newer schema, and many-frame messages. Then:
 * every daemon is still up, and the platform still does its work end to end
 * (a device registered, its telemetry stored, the operator API answering
 * from twin, ota and ingest). What each service counts of the garbage is
 * not asserted here; the RPC sockets' malformed counter is unit-tested with
 * mh_rpc_server (test_libcommon). */
#include "mh_test.h"
#include "mh_agent.h"
#include "mh_envelope.h"
#include "ota.pb-c.h"
#include "telemetry.pb-c.h"
#include "twin.pb-c.h"

#include <czmq.h>

static mht_platform_t s_p;

static int s_setup(void **state)
{
    (void)state;
    mht_platform_start(&s_p);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    return mht_platform_stop(&s_p) ? 0 : -1;
}

/* Sends one message of `n` frames; a frame is `len` bytes of `data`. */
static void s_send_frames(zsock_t *s, const void *data, size_t len, int n)
{
    zmsg_t *m = zmsg_new();
    for (int i = 0; i < n; i++)
        zmsg_addmem(m, data, len);
    zmsg_send(&m, s);
}

/* An envelope of `type` whose body is `body` (len bytes), packed by hand
 * so the body can be anything. */
static zframe_t *s_envelope(const char *type, uint32_t schema, const void *body, size_t len)
{
    Mh__Envelope e = MH__ENVELOPE__INIT;
    e.schema_version = schema;
    e.type = (char *)type;
    e.trace_id = "00000000000000000000000000000000";
    e.ts_ms = mht_now_ms();
    e.body.data = (uint8_t *)body;
    e.body.len = len;
    zframe_t *f = zframe_new(NULL, mh__envelope__get_packed_size(&e));
    mh__envelope__pack(&e, zframe_data(f));
    return f;
}

static void s_send_envelope(zsock_t *s, const char *type, uint32_t schema, const void *body,
                            size_t len)
{
    zframe_t *f = s_envelope(type, schema, body, len);
    zframe_send(&f, s, 0);
}

/* Fills `junk` with up to `cap` random bytes; returns how many. */
static size_t s_junk(unsigned *seed, uint8_t *junk, size_t cap)
{
    size_t len = (size_t)(rand_r(seed) % cap);
    for (size_t j = 0; j < len; j++)
        junk[j] = (uint8_t)rand_r(seed);
    return len;
}

/* Every kind of garbage, sent to `endpoint` from a `type` socket, whose
 * service takes the message types `own` (NULL-terminated). */
static void s_garbage(const char *endpoint, int type, const char *const *own)
{
    zsock_t *s = zsock_new(type);
    zsock_set_linger(s, 2000);
    zsock_set_sndtimeo(s, 2000);
    assert_int_equal(zsock_connect(s, "%s", endpoint), 0);
    mht_sleep_ms(200); /* connected before the first send */
    unsigned seed = 14;
    uint8_t junk[512];
    int sent = 0;
    /* frames that are not envelopes: empty, random, truncated protobuf */
    s_send_frames(s, "", 0, 1);
    for (int i = 0; i < 200; i++, sent++)
        s_send_frames(s, junk, s_junk(&seed, junk, sizeof junk), 1 + i % 3);
    /* envelopes: unknown type, a newer schema, and each of the service's
     * own types with a garbage body, an empty one, and another message */
    s_send_envelope(s, "no.such.type", 1, "x", 1);
    Mh__TwinReply other = MH__TWIN_REPLY__INIT;
    other.request_id = "not-a-request";
    other.status = 200;
    uint8_t other_buf[64];
    size_t other_len = mh__twin_reply__pack(&other, other_buf);
    for (const char *const *t = own; *t; t++) {
        s_send_envelope(s, *t, 99, "", 0);
        s_send_envelope(s, *t, 1, "", 0);
        s_send_envelope(s, *t, 1, other_buf, other_len);
        for (int i = 0; i < 50; i++, sent++)
            s_send_envelope(s, *t, 1, junk, s_junk(&seed, junk, sizeof junk));
    }
    print_message("# %-26s %d garbage messages sent\n", endpoint, sent);
    zsock_destroy(&s);
}

static void test_garbage_on_every_socket(void **state)
{
    (void)state;
    const char *const ingest_batch[] = {"telemetry.batch", NULL};
    const char *const ingest_query[] = {"telemetry.query", NULL};
    const char *const twin_in[] = {"device.message", "device.seen", NULL};
    const char *const twin_rpc[] = {"twin.request", NULL};
    const char *const ota_in[] = {"device.message", NULL};
    const char *const ota_rpc[] = {"ota.request", NULL};
    const char *const gw_down[] = {"downlink", NULL};
    s_garbage(s_p.ingest.endpoint, ZMQ_DEALER, ingest_batch);
    s_garbage(s_p.ingest.rpc_endpoint, ZMQ_DEALER, ingest_query);
    s_garbage(s_p.twin.endpoint, ZMQ_PUSH, twin_in);
    s_garbage(s_p.twin.rpc_endpoint, ZMQ_DEALER, twin_rpc);
    s_garbage(s_p.ota.endpoint, ZMQ_PUSH, ota_in);
    s_garbage(s_p.ota.rpc_endpoint, ZMQ_DEALER, ota_rpc);
    s_garbage(s_p.downlink, ZMQ_PUSH, gw_down);
    mht_sleep_ms(1000); /* what was queued is read */

    mht_service_t *all[] = {&s_p.ingest, &s_p.twin, &s_p.ota, &s_p.gateway, &s_p.fleet};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (!mht_alive(all[i]->pid))
            fail_msg("%s died on garbage (see %s/%s.log)", all[i]->name, mht_artifacts(),
                     all[i]->name);

    /* and the platform still works, end to end */
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "curl -sf -o /dev/null -H 'Authorization: Bearer %s' -H 'Content-Type: "
             "application/json' -d '{\"id\":\"gb-1\"}' http://127.0.0.1:%d/api/v1/devices",
             s_p.token, s_p.fleet.port);
    assert_int_equal(mht_shell("%s", cmd), 0);
    mh_agent_opts_t o = {.url = s_p.broker.url, .device_id = "gb-1"};
    mh_agent_t *a = mh_agent_new(&o);
    mh_agent_connect(a);
    assert_true(mh_agent_wait_connected(a, 10000));
    /* re-sent until stored: the gateways learn a new id from twin's event */
    mh_sample_t smp = {.n = 1, .seq = -1};
    smp.m[0].name = "temp";
    smp.m[0].value = 21.5;
    int64_t deadline = mht_now_ms() + 20000;
    double rows = 0;
    while (rows < 1 && mht_now_ms() < deadline) {
        assert_int_equal(mh_agent_publish_samples(a, &smp, 1, 1), 0);
        rows = mht_db_wait_num(
            &s_p.db, "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'gb-1'", 1, 1000);
    }
    assert_true(rows >= 1);
    mh_agent_destroy(&a);
    const char *paths[] = {"/api/v1/devices/gb-1/twin", "/api/v1/firmware",
                           "/api/v1/devices/gb-1/telemetry?metric=temp"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        snprintf(cmd, sizeof cmd,
                 "curl -sf -o /dev/null -H 'Authorization: Bearer %s' http://127.0.0.1:%d%s",
                 s_p.token, s_p.fleet.port, paths[i]);
        if (mht_shell("%s", cmd) != 0)
            fail_msg("%s did not answer 200 after the garbage", paths[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_garbage_on_every_socket),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
