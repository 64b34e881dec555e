/* CURVE on the internal ZeroMQ sockets (DESIGN.md, "Security"): the whole
 * platform — gateway, ingest, twin, ota, fleet-stats — started with
 * --curve-dir (keys from `motectl curve keygen`):
 *  - it works as without CURVE: a device registered through twin's RPC
 *    sends telemetry that is stored and reports state that the operator
 *    API shows;
 *  - a peer without CURVE, or with a key not in the allow-list, completes
 *    no handshake on any service's socket, so it delivers nothing: an RPC
 *    gets no answer and changes nothing, a subscriber hears nothing. */
#include "mh_test.h"

#include "mh_test_device.h"
#include "mh_envelope.h"
#include "twin.pb-c.h"

#include <czmq.h>
#include <jansson.h>

static char s_keys[700];

typedef enum { S_PLAIN, S_INTRUDER, S_GOOD } s_who_t;

static const char *s_who_name[] = {"no CURVE", "a key not in the allow-list", "the tools key"};

/* CURVE as `who`: the tools key from the key directory, or a fresh key
 * nobody allowed; the services' public key either way. */
static void s_apply_key(zsock_t *s, s_who_t who)
{
    if (who == S_PLAIN)
        return;
    char path[800];
    snprintf(path, sizeof path, "%s/server.key", s_keys);
    zcert_t *server = zcert_load(path);
    assert_non_null(server);
    snprintf(path, sizeof path, "%s/tools.key_secret", s_keys);
    zcert_t *me = who == S_GOOD ? zcert_load(path) : zcert_new();
    assert_non_null(me);
    zcert_apply(me, s);
    zsock_set_curve_serverkey(s, zcert_public_txt(server));
    zcert_destroy(&me);
    zcert_destroy(&server);
}

/* A client socket of `type` connected to `endpoint` as `who`. */
static zsock_t *s_client(int type, const char *endpoint, s_who_t who)
{
    zsock_t *s = zsock_new(type);
    assert_non_null(s);
    zsock_set_linger(s, 0);
    s_apply_key(s, who);
    if (type == ZMQ_SUB)
        zsock_set_subscribe(s, "");
    assert_int_equal(zsock_connect(s, "%s", endpoint), 0);
    return s;
}

/* Connects as `who` and watches the handshake for up to 3 s: true when it
 * succeeded. */
static bool s_handshake(const char *endpoint, int type, s_who_t who)
{
    /* the monitor starts before the connect, so it sees the handshake */
    zsock_t *s = zsock_new(type);
    zsock_set_linger(s, 0);
    zactor_t *mon = zactor_new(zmonitor, s);
    zstr_sendx(mon, "LISTEN", "HANDSHAKE_SUCCEEDED", "HANDSHAKE_FAILED_AUTH",
               "HANDSHAKE_FAILED_PROTOCOL", "HANDSHAKE_FAILED_NO_DETAIL", NULL);
    zstr_sendx(mon, "START", NULL);
    zsock_wait(mon);
    s_apply_key(s, who);
    zsock_connect(s, "%s", endpoint);
    bool ok = false;
    char last[64] = "nothing";
    zpoller_t *p = zpoller_new(mon, NULL);
    int64_t deadline = mht_now_ms() + 3000;
    while (!ok && mht_now_ms() < deadline) {
        if (!zpoller_wait(p, 100))
            continue;
        zmsg_t *m = zmsg_recv(mon);
        char *ev = zmsg_popstr(m);
        snprintf(last, sizeof last, "%s", ev ? ev : "?");
        ok = ev && strcmp(ev, "HANDSHAKE_SUCCEEDED") == 0;
        free(ev);
        zmsg_destroy(&m);
        if (!ok && strncmp(last, "HANDSHAKE_FAILED", 16) == 0)
            break; /* it retries; one failure is the answer */
    }
    zpoller_destroy(&p);
    zactor_destroy(&mon);
    zsock_destroy(&s);
    print_message("# %-28s %-36s -> %s\n", endpoint, s_who_name[who], last);
    return ok;
}

/* twin's RPC as `who`: registers `id`; true when an answer came in 2 s. */
static bool s_twin_register(const mht_service_t *twin, s_who_t who, const char *id)
{
    zsock_t *s = s_client(ZMQ_DEALER, twin->rpc_endpoint, who);
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.request_id = "r1";
    q.method = MH__TWIN_REQUEST__METHOD__REGISTER;
    q.device_id = (char *)id;
    q.tags_json = "";
    mh_envelope_send(s, NULL, "twin.request", NULL, &q.base, true);
    zsock_set_rcvtimeo(s, 2000);
    zframe_t *f = zframe_recv(s);
    bool answered = f != NULL;
    zframe_destroy(&f);
    zsock_destroy(&s);
    return answered;
}

static mht_platform_t s_p;

static void test_platform_works_with_curve(void **state)
{
    (void)state;
    snprintf(s_keys, sizeof s_keys, "%s/curve", mht_artifacts());
    mht_shell("rm -rf '%s'", s_keys);
    assert_int_equal(mht_motectl("curve keygen --out '%s'", s_keys), 0);
    /* every service started below takes its keys from the environment */
    setenv("MH_CURVE_DIR", s_keys, 1);

    mht_platform_start(&s_p);

    /* the platform works: a device registered over CURVE, its telemetry
     * stored (gateway -> ingest), its report visible through the API
     * (gateway -> twin -> fleet-stats) */
    assert_true(s_twin_register(&s_p.twin, S_GOOD, "cv-1"));
    mh_agent_t *a = mht_device(s_p.broker.url, "cv-1");
    assert_int_equal(mht_device_sample(a, "temp", 21.5), 0);
    json_t *rep = json_pack("{s:s}", "mode", "curve");
    assert_int_equal(mh_agent_report(a, rep, NULL), 0);
    json_decref(rep);
    assert_true(mht_db_wait_num(&s_p.db,
                                "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = "
                                "'cv-1'",
                                1, 20000) == 1);
    int64_t deadline = mht_now_ms() + 15000;
    bool seen = false;
    while (!seen && mht_now_ms() < deadline) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd,
                 "curl -sf -H 'Authorization: Bearer %s' "
                 "http://127.0.0.1:%d/api/v1/devices/cv-1/twin | grep -q '\"curve\"'",
                 s_p.token, s_p.fleet.port);
        seen = mht_shell("%s", cmd) == 0;
        if (!seen)
            mht_sleep_ms(200);
    }
    assert_true(seen);
    mh_agent_destroy(&a);
}

static void test_no_handshake_without_the_right_key(void **state)
{
    (void)state;
    /* every socket a service binds: the tools key completes the handshake;
     * no CURVE, or a key not in the allow-list, does not */
    char gw_events[64];
    snprintf(gw_events, sizeof gw_events, "tcp://127.0.0.1:%d", s_p.gateway.events_port);
    struct {
        const char *endpoint;
        int type;
    } socks[] = {
        {s_p.ingest.endpoint, ZMQ_DEALER},   {s_p.ingest.rpc_endpoint, ZMQ_DEALER},
        {s_p.twin.endpoint, ZMQ_DEALER},     {s_p.twin.rpc_endpoint, ZMQ_DEALER},
        {s_p.twin.events_endpoint, ZMQ_SUB}, {s_p.ota.endpoint, ZMQ_DEALER},
        {s_p.ota.rpc_endpoint, ZMQ_DEALER},  {s_p.ota.events_endpoint, ZMQ_SUB},
        {s_p.downlink, ZMQ_DEALER},          {gw_events, ZMQ_SUB},
    };
    for (size_t i = 0; i < sizeof socks / sizeof *socks; i++) {
        assert_true(s_handshake(socks[i].endpoint, socks[i].type, S_GOOD));
        assert_false(s_handshake(socks[i].endpoint, socks[i].type, S_PLAIN));
        assert_false(s_handshake(socks[i].endpoint, socks[i].type, S_INTRUDER));
    }
}

static void test_an_intruder_delivers_nothing(void **state)
{
    (void)state;
    /* an intruder's request has no effect: no answer, no device */
    assert_false(s_twin_register(&s_p.twin, S_PLAIN, "intruder-1"));
    assert_false(s_twin_register(&s_p.twin, S_INTRUDER, "intruder-2"));
    mht_sleep_ms(500);
    assert_true(mht_db_num(&s_p.db, "SELECT count(*) FROM twin.devices WHERE id LIKE "
                                    "'intruder%%'") == 0);
    /* a subscriber with a wrong key hears no event while a right one does */
    zsock_t *good = s_client(ZMQ_SUB, s_p.twin.events_endpoint, S_GOOD);
    zsock_t *bad = s_client(ZMQ_SUB, s_p.twin.events_endpoint, S_INTRUDER);
    mht_sleep_ms(500);
    assert_true(s_twin_register(&s_p.twin, S_GOOD, "cv-2"));
    zsock_set_rcvtimeo(good, 5000);
    zsock_set_rcvtimeo(bad, 1000);
    zmsg_t *ev = zmsg_recv(good);
    assert_non_null(ev);
    zmsg_destroy(&ev);
    ev = zmsg_recv(bad);
    assert_null(ev);
    zsock_destroy(&good);
    zsock_destroy(&bad);

    assert_true(mht_platform_stop(&s_p));
    unsetenv("MH_CURVE_DIR");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_platform_works_with_curve),
        cmocka_unit_test(test_no_handshake_without_the_right_key),
        cmocka_unit_test(test_an_intruder_delivers_nothing),
    };
    return MHT_RUN(tests);
}
