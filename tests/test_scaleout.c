/* Scale-out (issue 7): two replicas each of gateway, ingest and twin on
 * one broker and one PostgreSQL, under a motesim load of telemetry, status
 * and twin reports. The work splits across the replicas; then one replica
 * of each goes away mid-stream — ingest and twin SIGKILLed, the gateway
 * SIGTERMed as in a rolling update — and the survivors take its work:
 * every acknowledged message stored exactly once, every device's last
 * status applied, and the operator API answering from the surviving twin
 * straight away. */
#include "mh_test.h"

#include <inttypes.h>
#include <signal.h>

#define S_DEVICES 100

static double s_m(const mht_service_t *s, const char *name, const char *labels)
{
    double v = mht_metric(s->http_port, name, labels);
    return v != v ? 0 : v; /* NAN: not yet counted */
}

/* Stops `pid` (SIGSTOP) at a moment it is inside a transaction holding
 * device rows (its session idle in transaction with a lock on
 * twin.devices). Daemons name their
 * sessions by instance ("twin-host-PID"). */
static void s_stuck_in_transaction(mht_db_t *db, pid_t pid)
{
    char q[400];
    snprintf(q, sizeof q,
             "SELECT count(*) FROM pg_stat_activity a JOIN pg_locks l USING (pid) "
             "WHERE a.datname = current_database() AND a.application_name LIKE '%%-%d' "
             "AND a.state = 'idle in transaction' AND l.relation = 'twin.devices'::regclass",
             (int)pid);
    for (int i = 0; i < 400; i++) {
        kill(pid, SIGSTOP);
        mht_sleep_ms(40);
        if (mht_db_num(db, "%s", q) > 0) {
            print_message("# twin-1 stopped inside its transaction (try %d)\n", i + 1);
            return;
        }
        kill(pid, SIGCONT);
        mht_sleep_ms(1 + i % 13);
    }
    fail_msg("twin-1 never seen inside a transaction");
}

static void test_two_of_each_split_and_take_over(void **state)
{
    (void)state;
    mht_broker_t b = {0};
    mht_broker_start(&b);
    mht_db_t db;
    mht_db_create(&db);

    /* ports first: every replica lists both of its peers */
    int dl[2] = {mht_free_port(), mht_free_port()};
    char downlinks[160];
    snprintf(downlinks, sizeof downlinks, "tcp://127.0.0.1:%d,tcp://127.0.0.1:%d", dl[0], dl[1]);
    mht_service_t ing[2] = {{0}}, tw[2] = {{0}}, gw[2] = {{0}};
    mht_ingest_start(&ing[0], "ingest-1", &db, 0, NULL);
    mht_ingest_start(&ing[1], "ingest-2", &db, 0, NULL);
    mht_twin_start(&tw[0], "twin-1", &db, downlinks, NULL);
    mht_twin_start(&tw[1], "twin-2", &db, downlinks, NULL);
    char a_ing[200], a_tw[200], a_trpc[200], a_tev[200], a_dl[96];
    snprintf(a_ing, sizeof a_ing, "--ingest-endpoint=%s,%s", ing[0].endpoint, ing[1].endpoint);
    snprintf(a_tw, sizeof a_tw, "--twin-endpoint=%s,%s", tw[0].endpoint, tw[1].endpoint);
    snprintf(a_trpc, sizeof a_trpc, "--twin-rpc-endpoint=%s,%s", tw[0].rpc_endpoint,
             tw[1].rpc_endpoint);
    snprintf(a_tev, sizeof a_tev, "--twin-events-endpoint=%s,%s", tw[0].events_endpoint,
             tw[1].events_endpoint);
    for (int i = 0; i < 2; i++) {
        char name[32];
        snprintf(name, sizeof name, "gateway-%d", i + 1);
        snprintf(a_dl, sizeof a_dl, "--downlink-bind=tcp://127.0.0.1:%d", dl[i]);
        const char *extra[] = {
            a_ing, a_tw, a_trpc, a_tev, a_dl, "--check-registered=true", "--ack-timeout=1s", NULL};
        mht_gateway_start(&gw[i], name, &b, ing[0].endpoint, extra);
    }

    /* the fleet: registered through twin, then 1,000 messages a second of
     * telemetry plus twin reports for 24 s */
    char sim[512], a_url[96], a_reg[96];
    mht_build_path("tools/motesim/motesim", sim, sizeof sim);
    snprintf(a_url, sizeof a_url, "--mqtt-url=%s", b.url);
    snprintf(a_reg, sizeof a_reg, "--register=%s", tw[0].rpc_endpoint);
    char *argv[] = {sim,
                    a_url,
                    a_reg,
                    "--prefix=so",
                    "--devices=100",
                    "--interval=100ms",
                    "--duration=24s",
                    "--twin-rate=50",
                    "--report=2s",
                    NULL};
    pid_t load = mht_spawn("motesim-scaleout", argv);

    /* the operator API on both twins */
    mht_service_t fleet = {0};
    char token[128];
    const char *fleet_extra[] = {a_trpc, "--rpc-timeout=2s", NULL};
    mht_fleet_start(&fleet, "fleet-stats-scaleout", &db, &tw[0], NULL, &ing[0], NULL, fleet_extra,
                    token);

    /* the split, before anything goes away */
    mht_sleep_ms(6000);
    double g1 = s_m(&gw[0], "mh_gateway_messages_received_total", "kind=\"telemetry\"");
    double g2 = s_m(&gw[1], "mh_gateway_messages_received_total", "kind=\"telemetry\"");
    double i1 = s_m(&ing[0], "mh_ingest_batches_total", "outcome=\"stored\"");
    double i2 = s_m(&ing[1], "mh_ingest_batches_total", "outcome=\"stored\"");
    double t1 = s_m(&tw[0], "mh_twin_device_messages_total", "kind=\"twin_update\"");
    double t2 = s_m(&tw[1], "mh_twin_device_messages_total", "kind=\"twin_update\"");
    print_message("# split after 6 s: gateways %.0f / %.0f telemetry messages, ingests %.0f / %.0f "
                  "batches, twins %.0f / %.0f twin updates\n",
                  g1, g2, i1, i2, t1, t2);
    assert_true(g1 > 0 && g2 > 0);
    assert_true(i1 > 0 && i2 > 0);
    assert_true(t1 > 0 && t2 > 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(mht_shell("curl -sf -o /dev/null --max-time 10 -H 'Authorization: Bearer"
                                   " %s' 'http://127.0.0.1:%d/api/v1/devices?limit=1'",
                                   token, fleet.port),
                         0);

    /* a twin stuck (stopped: its connections stand, it answers nothing)
     * inside its transaction, holding device rows the other one wants:
     * reads are asked again of the other after half the 2 s deadline, and
     * the other waits at most lock_timeout for those rows before serving
     * them, so each still answers within it */
    s_stuck_in_transaction(&db, tw[0].pid);
    for (int i = 0; i < 4; i++)
        assert_int_equal(mht_shell("curl -sf -o /dev/null --max-time 3 -w '# %%{http_code} "
                                   "%%{time_total}s\\n' -H 'Authorization: Bearer"
                                   " %s' 'http://127.0.0.1:%d/api/v1/devices?limit=1'",
                                   token, fleet.port),
                         0);
    /* and its session ends after idle_in_transaction_session_timeout (5 s):
     * the rows come free and the other applies device messages again */
    assert_true(mht_db_wait_num(&db,
                                "SELECT least(count(*), 1) FROM pg_stat_activity WHERE "
                                "datname = current_database() AND state = 'idle in transaction'",
                                0, 15000) == 0);
    double c2_before = s_m(&tw[1], "mh_twin_commits_total", NULL);
    int64_t until = mht_now_ms() + 15000;
    while (s_m(&tw[1], "mh_twin_commits_total", NULL) <= c2_before && mht_now_ms() < until)
        mht_sleep_ms(200);
    print_message("# the other twin committed %.0f batches before, %.0f after\n", c2_before,
                  s_m(&tw[1], "mh_twin_commits_total", NULL));
    assert_true(s_m(&tw[1], "mh_twin_commits_total", NULL) > c2_before);

    /* one of each goes away */
    mht_stop(ing[0].pid, SIGKILL, 1000);
    mht_stop(tw[0].pid, SIGKILL, 1000);
    assert_int_equal(mht_stop(gw[0].pid, SIGTERM, 30000), 0);
    double i2_at_kill = s_m(&ing[1], "mh_ingest_batches_total", "outcome=\"stored\"");
    double t2_at_kill = s_m(&tw[1], "mh_twin_device_messages_total", "kind=\"twin_update\"");
    double g2_at_kill = s_m(&gw[1], "mh_gateway_messages_received_total", "kind=\"telemetry\"");

    /* and the API answers from the surviving twin at once: no call waits
     * on the dead one (each within 3 s; the RPC deadline is 2 s) */
    for (int i = 0; i < 20; i++)
        assert_int_equal(
            mht_shell("curl -sf -o /dev/null --max-time 3 -H 'Authorization: Bearer %s'"
                      " 'http://127.0.0.1:%d/api/v1/devices?limit=1'",
                      token, fleet.port),
            0);

    int st = mht_stop(load, 0, 60000); /* waits for motesim to finish its 24 s */
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char path[700], line[512];
    snprintf(path, sizeof path, "%s/motesim-scaleout.log", mht_artifacts());
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    uint64_t published = 0, acked = 0, failed = 1;
    while (fgets(line, sizeof line, f))
        sscanf(line, "motesim: devices=%*d published=%" SCNu64 " acked=%" SCNu64 " failed=%" SCNu64,
               &published, &acked, &failed);
    fclose(f);
    assert_true(acked > 5000 && failed == 0);

    /* the survivors took the work over */
    assert_true(s_m(&ing[1], "mh_ingest_batches_total", "outcome=\"stored\"") > i2_at_kill);
    assert_true(s_m(&tw[1], "mh_twin_device_messages_total", "kind=\"twin_update\"") > t2_at_kill);
    assert_true(s_m(&gw[1], "mh_gateway_messages_received_total", "kind=\"telemetry\"") >
                g2_at_kill);

    /* every acknowledged telemetry message stored, once (5 metrics each) */
    double want = (double)acked * 5;
    double rows = mht_db_wait_num(&db, "SELECT count(*) FROM ingest.telemetry_raw", want, 60000);
    double distinct = mht_db_num(&db, "SELECT count(*) FROM (SELECT DISTINCT device_id, metric, "
                                      "ts FROM ingest.telemetry_raw) d");
    print_message("# %" PRIu64
                  " telemetry messages acknowledged by the broker: %.0f rows, %.0f distinct "
                  "(want %.0f)\n",
                  acked, rows, distinct, want);
    assert_true(rows == want);
    assert_true(distinct == want);
    /* every device's last word (offline, on motesim's clean exit) applied by the surviving twin */
    assert_true(mht_db_wait_num(&db, "SELECT count(*) FROM twin.devices WHERE NOT online",
                                S_DEVICES, 30000) == S_DEVICES);

    assert_int_equal(mht_stop(fleet.pid, SIGTERM, 20000), 0);
    assert_int_equal(mht_stop(gw[1].pid, SIGTERM, 30000), 0);
    assert_int_equal(mht_stop(tw[1].pid, SIGTERM, 20000), 0);
    assert_int_equal(mht_stop(ing[1].pid, SIGTERM, 20000), 0);
    mht_broker_stop(&b);
    mht_db_drop(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_of_each_split_and_take_over),
    };
    return MHT_RUN(tests);
}
