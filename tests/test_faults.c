/* What a crash costs on the paths other than telemetry (issue 16), on the
 * whole platform:
 *  - twin stopped (SIGSTOP) while devices report offline, then SIGKILLed
 *    and started again: every status the gateway took is applied
 *    (acknowledged delivery, mh_relay.h), none twice;
 *  - a gateway SIGKILLed with devices' last wills in its queue: the broker
 *    plugin's presence list takes those devices offline all the same;
 *  - a device registered while twin restarts (its event published before
 *    the gateway's subscription reconnected) is taken at its first message;
 *  - a command queued while no gateway runs stays "queued" until one has
 *    published it, then reaches the device.
 * docs/reliability.md has the whole matrix and what each check means. */
#include "mh_test.h"
#include "mh_agent.h"
#include "mh_http_client.h"

#include <signal.h>

#define S_DEVICES 100

/* the suite's platform (mht_platform_setup) */
static mht_platform_t *const s_p = &mht_platform;

/* Registers PREFIX-0000.. through twin's RPC, as motesim does. */
static void s_register(const char *prefix, int n)
{
    mht_register_devices(s_p->twin.rpc_endpoint, prefix, n);
}

/* Every device PREFIX-i says `state` on its status topic (QoS 1). */
static void s_say(const char *prefix, int n, const char *state)
{
    char topic[128], payload[64];
    snprintf(payload, sizeof payload, "{\"state\":\"%s\"}", state);
    for (int i = 0; i < n; i++) {
        snprintf(topic, sizeof topic, "devices/%s-%04d/status", prefix, i);
        assert_int_equal(mht_mosquitto_pub(&s_p->broker, "mqttv5", topic, payload, 1), 0);
    }
}

static double s_online(const char *prefix)
{
    return mht_db_num(&s_p->db,
                      "SELECT count(*) FROM twin.devices WHERE id LIKE '%s-%%' AND online", prefix);
}

static void test_statuses_survive_twin_stopped_then_killed(void **state)
{
    (void)state;
    s_register("probe", S_DEVICES);
    s_say("probe", S_DEVICES, "online");
    assert_true(
        mht_db_wait_num(&s_p->db,
                        "SELECT count(*) FROM twin.devices WHERE id LIKE 'probe-%' AND online",
                        S_DEVICES, 20000) == S_DEVICES);
    double before = mht_metric(s_p->gateway.http_port, "mh_gateway_twin_forwarded_total", NULL);

    /* twin falls behind (stopped), the devices go offline, the gateway takes
     * every status, then twin dies without a chance to finish anything */
    assert_int_equal(kill(s_p->twin.pid, SIGSTOP), 0);
    s_say("probe", S_DEVICES, "offline");
    double fwd = before;
    for (int i = 0; i < 100 && fwd < before + S_DEVICES; i++) {
        mht_sleep_ms(100);
        fwd = mht_metric(s_p->gateway.http_port, "mh_gateway_twin_forwarded_total", NULL);
    }
    assert_true(fwd >= before + S_DEVICES);
    mht_sleep_ms(500);
    mht_stop(s_p->twin.pid, SIGKILL, 1000);
    assert_true(s_online("probe") == S_DEVICES); /* nothing applied yet */
    mht_twin_start(&s_p->twin, "twin-restarted", &s_p->db, s_p->downlink, NULL);

    /* the gateway sends again what twin never acknowledged */
    double online = mht_db_wait_num(
        &s_p->db, "SELECT count(*) FROM twin.devices WHERE id LIKE 'probe-%' AND online", 0, 30000);
    print_message(
        "# %d statuses taken while twin was stopped; %.0f devices still online after its"
        " restart; %.0f batches re-sent\n",
        S_DEVICES, online,
        mht_metric(s_p->gateway.http_port, "mh_gateway_twin_relay_batches_resent_total", NULL));
    assert_true(online == 0);
    assert_true(
        mht_metric(s_p->gateway.http_port, "mh_gateway_twin_relay_batches_resent_total", NULL) > 0);
    /* nothing left unacknowledged */
    assert_true(mht_metric(s_p->gateway.http_port, "mh_gateway_twin_relay_window_batches", NULL) ==
                0);
}

static void test_lost_last_wills_converge(void **state)
{
    (void)state;
    enum { N = 10 };
    /* registered before twin restarts (test_registered_while_twin_restarts
     * covers the other order) */
    s_register("lw", N);
    /* twin with a short presence timeout (the broker lists every second) */
    mht_stop(s_p->twin.pid, SIGTERM, 10000);
    const char *tx[] = {"--presence-timeout=3s", NULL};
    mht_twin_start(&s_p->twin, "twin-presence", &s_p->db, s_p->downlink, tx);
    mh_agent_t *agents[N];
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof id, "lw-%04d", i);
        agents[i] = mh_agent_new(&(mh_agent_opts_t){.url = s_p->broker.url, .device_id = id});
        mh_agent_connect(agents[i]);
        assert_true(mh_agent_wait_connected(agents[i], 10000));
    }
    assert_true(mht_db_wait_num(&s_p->db,
                                "SELECT count(*) FROM twin.devices WHERE id LIKE 'lw-%' AND online",
                                N, 20000) == N);
    /* the gateway stops; the devices drop off (the broker sends their last
     * wills towards it); the gateway dies with them unread */
    assert_int_equal(kill(s_p->gateway.pid, SIGSTOP), 0);
    for (int i = 0; i < N; i++)
        mh_agent_kill_connection(agents[i]);
    mht_sleep_ms(1000);
    mht_stop(s_p->gateway.pid, SIGKILL, 1000);
    mht_gateway_for_twin(&s_p->gateway, "gateway-restarted", &s_p->broker, &s_p->ingest, &s_p->twin,
                         s_p->downlink, s_p->ota.port);
    int64_t t0 = mht_now_ms();
    double online = mht_db_wait_num(
        &s_p->db, "SELECT count(*) FROM twin.devices WHERE id LIKE 'lw-%' AND online", 0, 30000);
    print_message("# %d devices dropped off while their gateway died: %.0f still online after %.1f"
                  " s (presence timeout 3 s)\n",
                  N, online, (double)(mht_now_ms() - t0) / 1000.0);
    assert_true(online == 0);
    for (int i = 0; i < N; i++)
        mh_agent_destroy(&agents[i]);
}

static void test_registered_while_twin_restarts(void **state)
{
    (void)state;
    enum { N = 5 };
    double refused = mht_metric(s_p->gateway.http_port, "mh_gateway_messages_rejected_total",
                                "reason=\"unregistered\"");
    /* the gateway cannot reconnect its event subscription (stopped) while
     * twin restarts and the devices are registered: their events have no
     * subscriber and are gone */
    assert_int_equal(kill(s_p->gateway.pid, SIGSTOP), 0);
    mht_stop(s_p->twin.pid, SIGTERM, 10000);
    mht_twin_start(&s_p->twin, "twin-registering", &s_p->db, s_p->downlink, NULL);
    s_register("late", N);
    assert_int_equal(kill(s_p->gateway.pid, SIGCONT), 0);
    /* the gateway reloads its registry when the subscription is back */
    mht_sleep_ms(2000);
    s_say("late", N, "online");
    double online = mht_db_wait_num(&s_p->db,
                                    "SELECT count(*) FROM twin.devices WHERE id LIKE 'late-%' AND"
                                    " online",
                                    N, 10000);
    double now_refused = mht_metric(s_p->gateway.http_port, "mh_gateway_messages_rejected_total",
                                    "reason=\"unregistered\"");
    print_message("# %d devices registered while twin restarted: %.0f online from their first"
                  " status, %.0f messages refused as unregistered\n",
                  N, online, now_refused - refused);
    assert_true(online == N);
    assert_true(now_refused == refused);
}

static void test_command_sent_only_once_published(void **state)
{
    (void)state;
    s_register("cw", 1);
    mh_agent_t *a =
        mh_agent_new(&(mh_agent_opts_t){.url = s_p->broker.url, .device_id = "cw-0000"});
    mh_agent_connect(a);
    assert_true(mh_agent_wait_connected(a, 10000));
    assert_true(mht_db_wait_num(&s_p->db,
                                "SELECT count(*) FROM twin.devices WHERE id = 'cw-0000'"
                                " AND online",
                                1, 20000) == 1);
    /* no gateway: nothing can publish the command */
    assert_int_equal(mht_stop(s_p->gateway.pid, SIGTERM, 30000), 0);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/api/v1/devices/cw-0000/commands",
             s_p->fleet.port);
    const char *body = "{\"name\":\"reboot\"}";
    mh_http_resp_t resp;
    assert_int_equal(mh_http_request(&(mh_http_req_t){.method = "POST",
                                                      .url = url,
                                                      .bearer = s_p->token,
                                                      .body = body,
                                                      .body_len = strlen(body)},
                                     &resp),
                     202);
    assert_non_null(strstr(resp.body, "\"queued\""));
    mh_http_resp_free(&resp);
    mht_sleep_ms(3000);
    assert_true(mht_db_num(&s_p->db, "SELECT count(*) FROM twin.commands WHERE device_id ="
                                     " 'cw-0000' AND status = 'queued' AND sent_ms IS NULL") == 1);
    /* a gateway again: twin's relay hands it over, the gateway publishes,
     * its acknowledgement marks it sent, and the device answers (the
     * agent has no "reboot" handler: rejected) */
    mht_gateway_for_twin(&s_p->gateway, "gateway-back", &s_p->broker, &s_p->ingest, &s_p->twin,
                         s_p->downlink, s_p->ota.port);
    assert_true(mht_db_wait_num(&s_p->db,
                                "SELECT count(*) FROM twin.commands WHERE device_id = 'cw-0000'"
                                " AND status = 'rejected' AND sent_ms IS NOT NULL",
                                1, 20000) == 1);
    mh_agent_destroy(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_statuses_survive_twin_stopped_then_killed),
        cmocka_unit_test(test_lost_last_wills_converge),
        cmocka_unit_test(test_registered_while_twin_restarts),
        cmocka_unit_test(test_command_sent_only_once_published),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, mht_platform_setup, mht_platform_teardown);
}
