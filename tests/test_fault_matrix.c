/* The fault matrix (issue 16; docs/reliability.md): the whole platform
 * with two gateways under load — motesim publishing telemetry, reporting
 * twin updates and flapping, over 200 devices — while each part is stopped
 * in turn and started again. After every fault a few check devices (this
 * test's own agents) prove the platform whole again:
 *  - telemetry: their samples, published with QoS 1, stored exactly once;
 *  - twin: an update answered "accepted" is in the document;
 *  - commands: one sent to each ends "succeeded", exactly once;
 *  - connectivity: each is online in twin.
 * Phase 1 stops each service with SIGTERM, then a gateway; phase 2 kills
 * ingest, twin, ota, fleet-stats and one of the two gateways with SIGKILL,
 * then restarts PostgreSQL and mosquitto, while a firmware rollout runs to
 * 100 more simulated devices: it completes, every job succeeded, and no
 * job is sent again once its device finished it. motesim's load is
 * counted — the telemetry the broker acknowledged to it against what was
 * stored: phase 1 loses none; phase 2's loss (the killed gateway's window,
 * what the broker held when it restarted without persistence) is printed;
 * nothing may be stored twice. */
#include "mh_test.h"
#include "mh_agent.h"
#include "mh_http_client.h"

#include <jansson.h>
#include <signal.h>
#include <time.h>

#define S_CHECKS  4
#define S_SAMPLES 10

static mht_broker_t s_broker;
static mht_db_t s_db;
static mht_service_t s_ingest, s_twin, s_ota, s_gw[2], s_fleet;
static char s_downlinks[160], s_dl[2][64], s_key[700], s_pub[700], s_token[128];
static pid_t s_load;
static mh_agent_t *s_agents[S_CHECKS];
static int s_round;

static const char *const s_twin_x[] = {"--presence-timeout=5s", NULL};

static void s_start_twin(const char *name)
{
    mht_twin_start(&s_twin, name, &s_db, s_downlinks, s_twin_x);
}

static void s_start_ota(const char *name)
{
    mht_ota_start(&s_ota, name, &s_db, s_downlinks, &s_twin, s_key, NULL);
}

static void s_start_gateway(int i, const char *name)
{
    mht_gateway_for_twin(&s_gw[i], name, &s_broker, &s_ingest, &s_twin, s_dl[i], s_ota.port);
}

static void s_start_fleet(const char *name)
{
    mht_fleet_start(&s_fleet, name, &s_db, &s_twin, &s_ota, &s_ingest, &s_gw[0], NULL, NULL);
}

static mh_cmd_outcome_t s_on_ping(mh_agent_t *a, const char *id, json_t *params, json_t **result,
                                  void *ud)
{
    (void)a, (void)id, (void)params, (void)result, (void)ud;
    return MH_CMD_SUCCEEDED;
}

static int s_setup(void **state)
{
    (void)state;
    mht_pg_private(); /* this test restarts PostgreSQL */
    mht_broker_start(&s_broker);
    mht_db_create(&s_db);
    mht_ingest_start(&s_ingest, "ingest", &s_db, 0, NULL);
    for (int i = 0; i < 2; i++)
        snprintf(s_dl[i], sizeof s_dl[i], "tcp://127.0.0.1:%d", mht_free_port());
    snprintf(s_downlinks, sizeof s_downlinks, "%s,%s", s_dl[0], s_dl[1]);
    s_start_twin("twin");
    mht_signing_key(s_key, sizeof s_key, s_pub, sizeof s_pub);
    s_start_ota("ota");
    s_start_gateway(0, "gateway-1");
    s_start_gateway(1, "gateway-2");
    mht_fleet_start(&s_fleet, "fleet-stats", &s_db, &s_twin, &s_ota, &s_ingest, &s_gw[0], NULL,
                    s_token);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < S_CHECKS; i++)
        mh_agent_destroy(&s_agents[i]);
    mht_service_t *all[] = {&s_fleet, &s_gw[1], &s_gw[0], &s_ota, &s_twin, &s_ingest};
    bool clean = true;
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        int st = mht_stop(all[i]->pid, SIGTERM, 20000);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "%s did not exit cleanly (%d)\n", all[i]->name, st);
            clean = false;
        }
    }
    mht_broker_stop(&s_broker);
    mht_db_drop(&s_db);
    return clean ? 0 : -1;
}

/* motesim: `prefix` devices registered, telemetry at `rate` msg/s (QoS 1,
 * 3 metrics), twin updates at 200/s, 5 % of the devices flapping. */
static pid_t s_load_start(const char *prefix, int rate)
{
    char a_rate[32], name[64];
    snprintf(a_rate, sizeof a_rate, "--rate=%d", rate);
    snprintf(name, sizeof name, "motesim-%s", prefix);
    const char *args[] = {a_rate,
                          "--metrics=3",
                          "--twin-rate=200",
                          "--flap-fraction=0.05",
                          "--flap-interval=15s",
                          "--flap-down=2s",
                          "--report=0",
                          NULL};
    return mht_motesim_start(name, s_broker.url, s_twin.rpc_endpoint, prefix, 200, args);
}

/* Stops motesim and reads what the broker acknowledged to it. */
static double s_load_stop(pid_t pid, const char *prefix)
{
    mht_stop(pid, SIGINT, 30000);
    char path[700], line[512];
    snprintf(path, sizeof path, "%s/motesim-%s.log", mht_artifacts(), prefix);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    double acked = -1;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, " acked=");
        if (p)
            acked = strtod(p + 7, NULL);
    }
    fclose(f);
    return acked;
}

/* The rows of `prefix`'s telemetry, and how many distinct samples. */
static void s_stored(const char *prefix, double *rows, double *distinct)
{
    /* wait for the pipeline to settle: the count stops moving */
    double last = -1;
    for (int i = 0; i < 60; i++) {
        *rows = mht_db_num(&s_db,
                           "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id LIKE"
                           " '%s-%%'",
                           prefix);
        if (*rows == last)
            break;
        last = *rows;
        mht_sleep_ms(1000);
    }
    *distinct = mht_db_num(&s_db,
                           "SELECT count(*) FROM (SELECT DISTINCT device_id, metric, ts FROM"
                           " ingest.telemetry_raw WHERE device_id LIKE '%s-%%') d",
                           prefix);
}

/* Stops motesim `prefix`, prints what the broker acknowledged to it against
 * what was stored, and asserts nothing was stored twice and, when
 * `lossless`, nothing acknowledged lost. (Stored may exceed acknowledged:
 * a flapping device drops its connection with PUBACKs still on the way.) */
static void s_load_report(pid_t pid, const char *prefix, const char *what, bool lossless)
{
    double acked = s_load_stop(pid, prefix) * 3, rows, distinct;
    s_stored(prefix, &rows, &distinct);
    print_message("# %s: motesim's broker-acknowledged samples %.0f, stored %.0f (distinct %.0f):"
                  " lost %.0f, stored twice %.0f\n",
                  what, acked, rows, distinct, acked > distinct ? acked - distinct : 0,
                  rows - distinct);
    assert_true(acked > 0);
    assert_true(rows == distinct);
    if (lossless)
        assert_true(distinct >= acked);
}

static void s_connect_checks(void)
{
    for (int i = 0; i < S_CHECKS; i++) {
        char id[32];
        snprintf(id, sizeof id, "chk-%04d", i);
        assert_int_equal(mht_shell("curl -sf -o /dev/null -X POST -H 'Authorization: Bearer %s'"
                                   " -H 'Content-Type: application/json' -d '{\"id\":\"%s\"}'"
                                   " http://127.0.0.1:%d/api/v1/devices",
                                   s_token, id, s_fleet.port),
                         0);
        s_agents[i] = mh_agent_new(&(mh_agent_opts_t){.url = s_broker.url, .device_id = id});
        mh_agent_on_command(s_agents[i], "ping", s_on_ping, NULL);
        mh_agent_connect(s_agents[i]);
        assert_true(mh_agent_wait_connected(s_agents[i], 15000));
    }
}

/* What a user checks after a fault: each check device's telemetry, twin
 * update, command and connectivity. `what` names the fault. */
static void s_check_round(const char *what)
{
    int r = ++s_round;
    int64_t t0 = mht_now_ms();
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    int64_t base = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
    for (int i = 0; i < S_CHECKS; i++) {
        assert_true(mh_agent_wait_connected(s_agents[i], 60000));
        mh_sample_t smp[S_SAMPLES];
        memset(smp, 0, sizeof smp);
        for (int k = 0; k < S_SAMPLES; k++) {
            smp[k].n = 1;
            smp[k].seq = -1;
            smp[k].ts = base + k;
            smp[k].m[0].name = "chk";
            smp[k].m[0].value = r * 100 + k;
            while (mh_agent_publish_samples(s_agents[i], &smp[k], 1, 1) == -EAGAIN)
                mht_sleep_ms(10);
        }
        assert_true(mh_agent_wait_delivered(s_agents[i], 60000));
        json_t *rep = json_pack("{s:i}", "round", r);
        mh_agent_report(s_agents[i], rep, NULL);
        json_decref(rep);
        char id[32];
        snprintf(id, sizeof id, "chk-%04d", i);
        /* as an operator would: a 503 while a part restarts is tried again */
        int rc = -1;
        for (int tries = 0; rc != 0 && tries < 60; tries++) {
            if (tries)
                mht_sleep_ms(500);
            rc = mht_shell("curl -sf -o /dev/null -X POST -H 'Authorization: Bearer %s'"
                           " -H 'Content-Type: application/json' -d '{\"name\":\"ping\"}'"
                           " http://127.0.0.1:%d/api/v1/devices/%s/commands",
                           s_token, s_fleet.port, id);
        }
        assert_int_equal(rc, 0);
    }
    /* a device whose update answer was lost reports again: the agent does
     * not, so the check re-reports until the document has it */
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM twin.devices WHERE id LIKE 'chk-%%'"
             " AND (doc->'state'->'reported'->>'round')::int = %d",
             r);
    double twin_ok = 0;
    for (int tries = 0; tries < 6 && twin_ok < S_CHECKS; tries++) {
        twin_ok = mht_db_wait_num(&s_db, sql, S_CHECKS, 10000);
        for (int i = 0; twin_ok < S_CHECKS && i < S_CHECKS; i++) {
            json_t *rep = json_pack("{s:i}", "round", r);
            mh_agent_report(s_agents[i], rep, NULL);
            json_decref(rep);
        }
    }
    double stored = mht_db_wait_num(&s_db,
                                    "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id"
                                    " LIKE 'chk-%' AND metric = 'chk'",
                                    (double)r * S_CHECKS * S_SAMPLES, 60000);
    double done = mht_db_wait_num(&s_db,
                                  "SELECT count(*) FROM twin.commands WHERE device_id LIKE 'chk-%'"
                                  " AND status = 'succeeded'",
                                  (double)r * S_CHECKS, 90000);
    double online =
        mht_db_wait_num(&s_db, "SELECT count(*) FROM twin.devices WHERE id LIKE 'chk-%' AND online",
                        S_CHECKS, 30000);
    double cmds = mht_db_num(&s_db, "SELECT count(*) FROM twin.commands WHERE device_id LIKE"
                                    " 'chk-%%'");
    print_message("# %-22s samples %4.0f/%d  twin %.0f/%d  commands succeeded %.0f/%.0f"
                  "  online %.0f/%d  (%.1f s)\n",
                  what, stored, r * S_CHECKS * S_SAMPLES, twin_ok, S_CHECKS, done, cmds, online,
                  S_CHECKS, (double)(mht_now_ms() - t0) / 1000.0);
    if (done != (double)r * S_CHECKS)
        print_message("# commands: %.0f queued, %.0f sent; gateway-1 published %.0f, gateway-2"
                      " %.0f\n",
                      mht_db_num(&s_db, "SELECT count(*) FROM twin.commands WHERE status ="
                                        " 'queued'"),
                      mht_db_num(&s_db, "SELECT count(*) FROM twin.commands WHERE status = 'sent'"),
                      mht_metric(s_gw[0].http_port, "mh_gateway_downlink_published_total", NULL),
                      mht_metric(s_gw[1].http_port, "mh_gateway_downlink_published_total", NULL));
    assert_true(stored == (double)r * S_CHECKS * S_SAMPLES); /* exactly once */
    assert_true(twin_ok == S_CHECKS);
    assert_true(done == (double)r * S_CHECKS && cmds == done);
    assert_true(online == S_CHECKS);
}

typedef enum { S_INGEST, S_TWIN, S_OTA, S_FLEET, S_GATEWAY } s_part_t;

static const char *s_part_name[] = {"ingest", "twin", "ota", "fleet-stats", "gateway-1"};

static void s_restart(s_part_t part, int sig)
{
    mht_service_t *svc[] = {&s_ingest, &s_twin, &s_ota, &s_fleet, &s_gw[0]};
    char name[64];
    snprintf(name, sizeof name, "%s-%s", s_part_name[part], sig == SIGKILL ? "killed" : "termed");
    mht_stop(svc[part]->pid, sig, 20000);
    mht_sleep_ms(1500); /* down for longer than the relays' re-send timeout */
    switch (part) {
    case S_INGEST:
        mht_ingest_start(&s_ingest, name, &s_db, s_ingest.port, NULL);
        break;
    case S_TWIN:
        s_start_twin(name);
        break;
    case S_OTA:
        s_start_ota(name);
        break;
    case S_FLEET:
        s_start_fleet(name);
        break;
    case S_GATEWAY:
        s_start_gateway(0, name);
        break;
    }
}

/* Stops each part from `first` to `last` with `sig`, starts it again and
 * checks the platform. */
static void s_restart_each(s_part_t first, s_part_t last, int sig)
{
    for (s_part_t p = first; p <= last; p++) {
        s_restart(p, sig);
        char what[64];
        snprintf(what, sizeof what, "%s %s", sig == SIGKILL ? "SIGKILL" : "SIGTERM",
                 s_part_name[p]);
        s_check_round(what);
    }
}

/* ---- a rollout through the faults ---- */

#define S_OTA_DEVICES 100

/* An operator's API call with the token; its status. */
static long s_api(const char *method, const char *path, const char *ctype, const void *body,
                  size_t len, char **answer)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", s_fleet.port, path);
    mh_http_resp_t resp;
    long st = mh_http_request(&(mh_http_req_t){.method = method,
                                               .url = url,
                                               .bearer = s_token,
                                               .content_type = ctype,
                                               .body = body,
                                               .body_len = len},
                              &resp);
    if (answer)
        *answer = resp.body;
    else
        mh_http_resp_free(&resp);
    return st;
}

/* 100 devices on m-1.0 (motesim, OTA on) and a rollout to m-2.0 at 60 a
 * minute: it runs through the SIGKILL phase. Returns motesim and the
 * rollout's id in `id`. */
static pid_t s_rollout_start(char id[64])
{
    static uint8_t image[4096];
    const char *versions[] = {"m-1.0", "m-2.0"};
    for (int v = 0; v < 2; v++) {
        char path[128];
        memset(image, 'a' + v, sizeof image);
        snprintf(path, sizeof path, "/api/v1/firmware?version=%s&hardware=sim-1", versions[v]);
        assert_int_equal(s_api("POST", path, "application/octet-stream", image, sizeof image, NULL),
                         201);
    }
    char a_key[760];
    snprintf(a_key, sizeof a_key, "--ota-key=%s", s_pub);
    const char *args[] = {"--firmware=m-1.0", a_key,          "--ota-install-time=2s",
                          "--interval=60s",   "--report=30s", NULL};
    pid_t pid = mht_motesim_start("motesim-fw", s_broker.url, s_twin.rpc_endpoint, "fw",
                                  S_OTA_DEVICES, args);
    mht_fleet_wait_online(&s_db, "fw", S_OTA_DEVICES, "m-1.0");
    const char *spec = "{\"firmware\":\"m-2.0\",\"target\":{\"firmware\":\"m-1.0\"},"
                       "\"waves\":[{\"percent\":100}],\"soakSeconds\":0,\"maxPerMinute\":60}";
    char *answer = NULL;
    assert_int_equal(s_api("POST", "/api/v1/rollouts", NULL, spec, strlen(spec), &answer), 201);
    json_t *r = json_loads(answer, 0, NULL);
    free(answer);
    assert_non_null(r);
    snprintf(id, 64, "%s", json_string_value(json_object_get(r, "id")));
    json_decref(r);
    return pid;
}

/* The rollout completes with every job succeeded, and no job was sent
 * again after its device had finished it. */
static void s_rollout_check(pid_t pid, const char *id)
{
    int64_t t0 = mht_now_ms();
    double done = mht_db_wait_num(&s_db,
                                  "SELECT count(*) FROM ota.rollouts WHERE state = 'completed'"
                                  " AND firmware = 'm-2.0'",
                                  1, 300000);
    double ok = mht_db_num(&s_db,
                           "SELECT count(*) FROM ota.jobs WHERE rollout_id = '%s'"
                           " AND action = 'install' AND status = 'succeeded'",
                           id);
    double after = mht_db_num(&s_db,
                              "SELECT count(*) FROM ota.jobs WHERE rollout_id = '%s'"
                              " AND sends > 1 AND last_sent_ms > finished_ms",
                              id);
    double resent = mht_db_num(&s_db,
                               "SELECT coalesce(sum(sends - 1), 0) FROM ota.jobs"
                               " WHERE rollout_id = '%s'",
                               id);
    /* twin's firmware field is the device's own report, printed, not
     * asserted: one made while gateway-1 held it when killed is lost with
     * its window (as telemetry is), until the device's next connect */
    double on_new = mht_db_wait_num(&s_db,
                                    "SELECT count(*) FROM twin.devices WHERE id LIKE 'fw-%'"
                                    " AND firmware = 'm-2.0'",
                                    S_OTA_DEVICES, 10000);
    print_message("# rollout through the faults: completed %.0f, %.0f/%d jobs succeeded, %.0f"
                  " devices report m-2.0, %.0f jobs handed again, %.0f sent once finished"
                  " (%.1f s after the last fault)\n",
                  done, ok, S_OTA_DEVICES, on_new, resent, after,
                  (double)(mht_now_ms() - t0) / 1000.0);
    if (done != 1 || ok != S_OTA_DEVICES)
        mht_shell("psql '%s' -Atc \"SELECT status, sent_ms IS NULL, last_sent_ms IS NULL,"
                  " answered_ms IS NULL, sends, count(*) FROM ota.jobs WHERE rollout_id = '%s'"
                  " GROUP BY 1, 2, 3, 4, 5\" >&2",
                  s_db.url, id);
    assert_true(done == 1);
    assert_true(ok == S_OTA_DEVICES);
    assert_true(after == 0);
    int st = mht_stop(pid, SIGTERM, 20000);
    assert_true(WIFEXITED(st));
}

static void test_fault_matrix(void **state)
{
    (void)state;
    s_connect_checks();
    s_check_round("(no fault)");

    /* phase 1: SIGTERM of anything loses nothing */
    s_load = s_load_start("calm", 2000);
    mht_sleep_ms(5000);
    s_restart_each(S_INGEST, S_FLEET, SIGTERM);
    s_load_report(s_load, "calm", "SIGTERM of ingest, twin, ota, fleet-stats", true);

    /* SIGTERM of a gateway under load: its share moves to the other one
     * (15 s in, when motesim's flapping devices drop off too) */
    s_load = s_load_start("handoff", 2000);
    mht_sleep_ms(15000);
    s_restart_each(S_GATEWAY, S_GATEWAY, SIGTERM);
    s_load_report(s_load, "handoff", "SIGTERM of gateway-1", true);

    /* phase 2: SIGKILL, then PostgreSQL and mosquitto restarted, with a
     * rollout running */
    char rollout[64];
    pid_t fw = s_rollout_start(rollout);
    s_load = s_load_start("storm", 2000);
    mht_sleep_ms(5000);
    s_restart_each(S_INGEST, S_GATEWAY, SIGKILL);
    mht_pg_restart();
    s_check_round("PostgreSQL restarted");
    double connects[2];
    for (int i = 0; i < 2; i++)
        connects[i] = mht_metric(s_gw[i].http_port, "mh_gateway_mqtt_connects_total", NULL);
    mht_broker_restart(&s_broker);
    /* a restarted broker without persistence has no subscriptions: what a
     * device publishes before the gateways subscribe again has no receiver
     * (docs/reliability.md); the check starts once they have connected
     * again (a gateway still ready from before it noticed the restart is
     * not) and are ready */
    for (int i = 0; i < 2; i++) {
        mht_wait_metric(s_gw[i].http_port, "mh_gateway_mqtt_connects_total", NULL, connects[i] + 1,
                        60000);
        assert_true(mht_wait_ready(s_gw[i].http_port, 30000));
    }
    s_check_round("mosquitto restarted");
    s_load_report(s_load, "storm",
                  "SIGKILL phase (lost: the killed gateway's window and the restarted broker's"
                  " queue)",
                  false);
    s_rollout_check(fw, rollout);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fault_matrix),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
