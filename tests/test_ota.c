/* OTA end to end: real mosquitto and PostgreSQL, the real gateway, twin and
 * ota, and motesim's devices (the reference agent: download, verify size,
 * SHA-256 and the Ed25519 signature, install, report). Operators act
 * through ota's RPC. Each test checks what a firmware team would: which
 * devices got which job when, what they run afterwards, and what the
 * rollout says. */
#include "mh_test.h"

#include "mh_envelope.h"
#include "ota.pb-c.h"
#include "ota_image.h"
#include "ota_plan.h"

#include <curl/curl.h>
#include <czmq.h>
#include <jansson.h>
#include <time.h>

static mht_broker_t s_broker;
static mht_db_t s_db;
static mht_service_t s_twin, s_gw, s_ingest, s_ota;
static zsock_t *s_rpc;
static char s_downlink[64], s_key[512], s_pub[512];
static char s_ingest_ep[128];
static const char *const s_ota_extra[] = {"--resend-after=3s", "--health-interval=1s", s_ingest_ep,
                                          NULL};

/* ---- operator side ---- */

static Mh__OtaReply *s_call(Mh__OtaRequest *q)
{
    static int seq;
    char rid[32];
    snprintf(rid, sizeof rid, "t-%d", ++seq);
    q->request_id = rid;
    assert_int_equal(mh_envelope_send(s_rpc, NULL, "ota.request", NULL, &q->base, false), 0);
    for (;;) {
        zsock_set_rcvtimeo(s_rpc, 15000);
        zframe_t *f = zframe_recv(s_rpc);
        if (!f)
            fail_msg("ota did not answer the RPC in 15 s");
        Mh__Envelope *env = mh_envelope_unpack(f);
        zframe_destroy(&f);
        assert_non_null(env);
        Mh__OtaReply *r = mh__ota_reply__unpack(NULL, env->body.len, env->body.data);
        mh_envelope_free(&env);
        assert_non_null(r);
        if (strcmp(r->request_id, rid) == 0)
            return r;
        mh__ota_reply__free_unpacked(r, NULL);
    }
}

static uint32_t s_upload(const char *version, const uint8_t *image, size_t len)
{
    Mh__OtaRequest q = MH__OTA_REQUEST__INIT;
    q.method = MH__OTA_REQUEST__METHOD__UPLOAD_FIRMWARE;
    q.version = (char *)version;
    q.hardware = "sim-1";
    q.image.data = (uint8_t *)image;
    q.image.len = len;
    Mh__OtaReply *r = s_call(&q);
    uint32_t st = r->status;
    mh__ota_reply__free_unpacked(r, NULL);
    return st;
}

/* An image of `len` bytes whose content depends on the version. */
static void s_upload_version(const char *version, size_t len)
{
    uint8_t *img = malloc(len);
    for (size_t i = 0; i < len; i++)
        img[i] = (uint8_t)(i * 31 + (unsigned char)version[i % strlen(version)]);
    assert_int_equal(s_upload(version, img, len), 201);
    free(img);
}

/* Creates a rollout; returns its id (static buffer) or fails. */
static const char *s_create(const char *spec)
{
    static char id[64];
    Mh__OtaRequest q = MH__OTA_REQUEST__INIT;
    q.method = MH__OTA_REQUEST__METHOD__CREATE_ROLLOUT;
    q.body_json = (char *)spec;
    Mh__OtaReply *r = s_call(&q);
    if (r->status != 201)
        fail_msg("rollout refused: %u %s", r->status, r->message);
    json_t *v = json_loads(r->body_json, 0, NULL);
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(v, "id")));
    assert_string_equal(json_string_value(json_object_get(v, "state")), "scheduled");
    json_decref(v);
    mh__ota_reply__free_unpacked(r, NULL);
    return id;
}

static Mh__OtaReply *s_control(Mh__OtaRequest__Method m, const char *id)
{
    Mh__OtaRequest q = MH__OTA_REQUEST__INIT;
    q.method = m;
    q.rollout_id = (char *)id;
    return s_call(&q);
}

static json_t *s_rollout(const char *id)
{
    Mh__OtaReply *r = s_control(MH__OTA_REQUEST__METHOD__GET_ROLLOUT, id);
    assert_int_equal(r->status, 200);
    json_t *v = json_loads(r->body_json, 0, NULL);
    mh__ota_reply__free_unpacked(r, NULL);
    assert_non_null(v);
    return v;
}

/* Waits for the rollout to reach `state`; returns its JSON. */
static json_t *s_wait_state(const char *id, const char *state, int timeout_ms)
{
    int64_t deadline = mht_now_ms() + timeout_ms;
    for (;;) {
        json_t *v = s_rollout(id);
        const char *st = json_string_value(json_object_get(v, "state"));
        if (strcmp(st, state) == 0)
            return v;
        if (mht_now_ms() > deadline) {
            char *text = json_dumps(v, JSON_COMPACT);
            fail_msg("rollout %s is %s, not %s, after %d ms: %.2000s", id, st, state, timeout_ms,
                     text);
        }
        json_decref(v);
        mht_sleep_ms(200);
    }
}

static int64_t s_wave_num(json_t *rollout, int k, const char *key)
{
    return json_integer_value(
        json_object_get(json_array_get(json_object_get(rollout, "waves"), (size_t)k), key));
}

/* ---- devices: motesim ---- */

/* `more`: motesim options beside these, NULL-terminated (or NULL); the
 * later of two settings of one option wins */
static pid_t s_fleet_with(const char *name, const char *prefix, int n, const char *firmware,
                          const char *fail, const char *install_time, const char *const *more)
{
    char a_fw[64], a_key[600], a_fail[96], a_it[64];
    snprintf(a_fw, sizeof a_fw, "--firmware=%s", firmware);
    snprintf(a_key, sizeof a_key, "--ota-key=%s", s_pub);
    snprintf(a_fail, sizeof a_fail, "--ota-fail=%s", fail ? fail : "");
    snprintf(a_it, sizeof a_it, "--ota-install-time=%s", install_time);
    const char *args[16] = {a_fw, a_key, a_fail, a_it, "--interval=60s", "--report=5s"};
    for (size_t i = 0, k = 6; more && more[i] && k < 15; i++, k++)
        args[k] = more[i];
    pid_t pid = mht_motesim_start(name, s_broker.url, s_twin.rpc_endpoint, prefix, n, args);
    /* Registered, connected and reporting their firmware to the twin. */
    mht_fleet_wait_online(&s_db, prefix, n, firmware);
    return pid;
}

static pid_t s_fleet(const char *name, const char *prefix, int n, const char *firmware,
                     const char *fail, const char *install_time)
{
    return s_fleet_with(name, prefix, n, firmware, fail, install_time, NULL);
}

/* Stops motesim and returns the OTA repeats it saw (-1 if it said nothing);
 * *installed (when given) gets how many installs its devices ran. */
static long s_fleet_stop(const char *name, pid_t pid, long *installed)
{
    mht_stop(pid, SIGINT, 20000);
    char path[700], line[512];
    snprintf(path, sizeof path, "%s/%s.log", mht_artifacts(), name);
    FILE *f = fopen(path, "r");
    long repeats = -1;
    while (f && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "motesim: ota jobs=");
        if (p && installed && strstr(p, "installed="))
            *installed = strtol(strstr(p, "installed=") + 10, NULL, 10);
        if (p && (p = strstr(p, "repeats=")))
            repeats = strtol(p + 8, NULL, 10);
    }
    if (f)
        fclose(f);
    return repeats;
}

static int s_setup(void **state)
{
    (void)state;
    mht_signing_key(s_key, sizeof s_key, s_pub, sizeof s_pub);
    mht_broker_start(&s_broker);
    mht_db_create(&s_db);
    snprintf(s_downlink, sizeof s_downlink, "tcp://127.0.0.1:%d", mht_free_port());
    mht_twin_start(&s_twin, "twin", &s_db, s_downlink, NULL);
    s_ota.port = mht_free_port();
    mht_ingest_start(&s_ingest, "ingest", &s_db, 0, NULL);
    mht_gateway_for_twin(&s_gw, "gateway", &s_broker, &s_ingest, &s_twin, s_downlink, s_ota.port);
    snprintf(s_ingest_ep, sizeof s_ingest_ep, "--ingest-rpc-endpoint=%s", s_ingest.rpc_endpoint);
    mht_ota_start(&s_ota, "ota", &s_db, s_downlink, &s_twin, s_key, s_ota_extra);
    s_rpc = zsock_new_dealer(s_ota.rpc_endpoint);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    zsock_destroy(&s_rpc);
    int so = mht_stop(s_ota.pid, SIGTERM, 20000);
    int sg = mht_stop(s_gw.pid, SIGTERM, 20000);
    int st = mht_stop(s_twin.pid, SIGTERM, 20000);
    mht_stop(s_ingest.pid, SIGTERM, 20000);
    mht_broker_stop(&s_broker);
    mht_db_drop(&s_db);
    if (!WIFEXITED(so) || WEXITSTATUS(so) || !WIFEXITED(sg) || WEXITSTATUS(sg) || !WIFEXITED(st) ||
        WEXITSTATUS(st)) {
        fprintf(stderr, "a daemon did not exit cleanly (ota %d, gateway %d, twin %d)\n", so, sg,
                st);
        return -1;
    }
    return 0;
}

/* ---- tests ---- */

/* 200 devices, no failures: three waves of 2, 18 and 180 in hash order,
 * each started only once the one before reached its success threshold,
 * every device on the new version, the rollout completed. */
static void test_rollout_completes(void **state)
{
    (void)state;
    s_upload_version("a-1.0", 3000);
    s_upload_version("a-2.0", 200 * 1024);
    pid_t sim = s_fleet("sim-a", "a", 200, "a-1.0", NULL, "100ms");
    const char *id = s_create("{\"firmware\":\"a-2.0\",\"target\":{\"firmware\":\"a-1.0\"},"
                              "\"waves\":[{\"percent\":1},{\"percent\":10},{\"percent\":100}],"
                              "\"soakSeconds\":1,\"jobTimeoutSeconds\":60,\"maxPerMinute\":6000}");
    json_t *r = s_wait_state(id, "completed", 120000);
    int64_t want[3] = {2, 18, 180};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(s_wave_num(r, k, "targeted"), want[k]);
        assert_int_equal(s_wave_num(r, k, "sent"), want[k]);
        assert_int_equal(s_wave_num(r, k, "succeeded"), want[k]);
        assert_int_equal(s_wave_num(r, k, "failed") + s_wave_num(r, k, "timedOut"), 0);
    }
    json_decref(r);
    /* In order: wave k+1 started after 95 % of wave k had succeeded and
     * had soaked a second, and no job of wave k+1 left before. */
    for (int k = 0; k < 2; k++) {
        double ok_at =
            mht_db_num(&s_db,
                       "SELECT finished_ms FROM ota.jobs WHERE rollout_id = '%s' AND wave = %d"
                       " ORDER BY finished_ms OFFSET ceil(0.95 * %" PRId64 ") - 1 LIMIT 1",
                       id, k, want[k]);
        double next_start = mht_db_num(
            &s_db, "SELECT started_ms FROM ota.waves WHERE rollout_id = '%s' AND idx = %d", id,
            k + 1);
        double first_sent = mht_db_num(&s_db,
                                       "SELECT min(sent_ms) FROM ota.jobs WHERE rollout_id = '%s'"
                                       " AND wave = %d",
                                       id, k + 1);
        assert_true(next_start >= ok_at + 1000);
        assert_true(first_sent >= next_start);
    }
    /* The canary is the first devices by the stable hash of their ids. */
    char *ids[200];
    for (int i = 0; i < 200; i++)
        assert_true(asprintf(&ids[i], "a-%04d", i) > 0);
    ota_order_devices(ids, NULL, 200);
    for (int i = 0; i < 2; i++)
        assert_int_equal(mht_db_num(&s_db,
                                    "SELECT wave FROM ota.jobs WHERE rollout_id = '%s'"
                                    " AND device_id = '%s'",
                                    id, ids[i]),
                         0);
    for (int i = 0; i < 200; i++)
        free(ids[i]);
    /* Every device runs the new version, by its own report in the twin. */
    assert_int_equal(mht_db_wait_num(&s_db,
                                     "SELECT count(*) FROM twin.devices WHERE id LIKE 'a-%'"
                                     " AND firmware = 'a-2.0'",
                                     200, 10000),
                     200);
    assert_int_equal(s_fleet_stop("sim-a", sim, NULL), 0);
}

/* The new version fails on half the devices: the rollout stops in the
 * canary, every device that took it goes back to its previous version,
 * and no device outside the canary ever got a job. */
static void test_failure_rolls_back(void **state)
{
    (void)state;
    s_upload_version("b-1.0", 4000);
    s_upload_version("b-2.0", 4000);
    pid_t sim = s_fleet("sim-b", "b", 200, "b-1.0", "b-2.0:0.5", "300ms");
    const char *id = s_create("{\"firmware\":\"b-2.0\",\"target\":{\"firmware\":\"b-1.0\"},"
                              "\"waves\":[{\"percent\":10},{\"percent\":50},{\"percent\":100}],"
                              "\"soakSeconds\":0,\"failureThreshold\":0.05,"
                              "\"onFailure\":\"rollback\",\"maxPerMinute\":60000}");
    json_t *r = s_wait_state(id, "rolled_back", 60000);
    assert_non_null(strstr(json_string_value(json_object_get(r, "reason")), "wave 1"));
    assert_true(s_wave_num(r, 0, "failed") > 0);
    assert_int_equal(s_wave_num(r, 1, "sent"), 0);
    assert_int_equal(s_wave_num(r, 2, "sent"), 0);
    json_decref(r);
    assert_int_equal(mht_db_num(&s_db,
                                "SELECT count(*) FROM ota.jobs WHERE rollout_id = '%s' AND wave > 0"
                                " AND (sent_ms IS NOT NULL OR status <> 'cancelled')",
                                id),
                     0);
    /* Every device that took b-2.0 got a rollback job to b-1.0 and ran it. */
    double took = mht_db_num(&s_db,
                             "SELECT count(*) FROM ota.jobs WHERE rollout_id = '%s'"
                             " AND action = 'install' AND status = 'succeeded'",
                             id);
    assert_true(took >= 0);
    assert_int_equal(mht_db_wait_num(&s_db,
                                     "SELECT count(*) FROM ota.jobs WHERE action = 'rollback'"
                                     " AND status = 'succeeded' AND to_version = 'b-1.0'",
                                     took, 20000),
                     took);
    assert_int_equal(mht_db_num(&s_db,
                                "SELECT count(*) FROM ota.jobs i WHERE i.rollout_id = '%s'"
                                " AND i.action = 'install' AND i.status = 'succeeded'"
                                " AND NOT EXISTS (SELECT 1 FROM ota.jobs b WHERE"
                                " b.rollout_id = i.rollout_id AND b.device_id = i.device_id"
                                " AND b.action = 'rollback')",
                                id),
                     0);
    /* And they all run b-1.0 again. */
    assert_int_equal(mht_db_wait_num(&s_db,
                                     "SELECT count(*) FROM twin.devices WHERE id LIKE 'b-%'"
                                     " AND firmware = 'b-1.0'",
                                     200, 10000),
                     200);
    s_fleet_stop("sim-b", sim, NULL);
}

/* One byte of the stored image changed: every device refuses it (SHA-256
 * and signature no longer match) and the jobs count as failed. */
static void test_tampered_image(void **state)
{
    (void)state;
    s_upload_version("c-1.0", 1000);
    s_upload_version("c-2.0", 50000);
    assert_int_equal(mht_db_num(&s_db, "WITH u AS (UPDATE ota.firmware SET image = set_byte(image,"
                                       " 1234, get_byte(image, 1234) # 1) WHERE version = 'c-2.0'"
                                       " RETURNING 1) SELECT count(*) FROM u"),
                     1);
    pid_t sim = s_fleet("sim-c", "c", 20, "c-1.0", NULL, "0");
    const char *id = s_create("{\"firmware\":\"c-2.0\",\"target\":{\"firmware\":\"c-1.0\"},"
                              "\"waves\":[{\"percent\":100}],\"failureThreshold\":1,"
                              "\"onFailure\":\"pause\",\"maxPerMinute\":60000}");
    json_t *r = s_wait_state(id, "completed", 60000);
    assert_int_equal(s_wave_num(r, 0, "targeted"), 20);
    assert_int_equal(s_wave_num(r, 0, "failed"), 20);
    assert_int_equal(s_wave_num(r, 0, "succeeded"), 0);
    json_decref(r);
    assert_int_equal(mht_db_num(&s_db,
                                "SELECT count(*) FROM ota.jobs WHERE rollout_id = '%s'"
                                " AND error LIKE 'SHA-256%%does not match%%'",
                                id),
                     20);
    assert_int_equal(mht_db_num(&s_db, "SELECT count(*) FROM twin.devices WHERE id LIKE 'c-%%'"
                                       " AND firmware = 'c-1.0'"),
                     20);
    s_fleet_stop("sim-c", sim, NULL);
}

/* ota SIGKILLed in the middle of a rollout and started again: the rollout
 * completes, and no device got a job again after it had answered it. */
static void test_kill_and_resume(void **state)
{
    (void)state;
    s_upload_version("d-1.0", 1000);
    s_upload_version("d-2.0", 20000);
    pid_t sim = s_fleet("sim-d", "d", 200, "d-1.0", NULL, "1s");
    const char *id = s_create("{\"firmware\":\"d-2.0\",\"target\":{\"firmware\":\"d-1.0\"},"
                              "\"waves\":[{\"percent\":1},{\"percent\":10},{\"percent\":100}],"
                              "\"soakSeconds\":0,\"maxPerMinute\":1200}");
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT least(count(*), 60) FROM ota.jobs WHERE rollout_id = '%s'"
             " AND status = 'succeeded'",
             id);
    assert_int_equal(mht_db_wait_num(&s_db, sql, 60, 60000), 60);
    int st = mht_stop(s_ota.pid, SIGKILL, 5000);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    mht_sleep_ms(1500);
    mht_ota_start(&s_ota, "ota", &s_db, s_downlink, &s_twin, s_key, s_ota_extra);
    json_t *r = s_wait_state(id, "completed", 120000);
    for (int k = 0; k < 3; k++)
        assert_int_equal(s_wave_num(r, k, "succeeded"), s_wave_num(r, k, "targeted"));
    json_decref(r);
    /* Sent again only while unfinished: never after ota had the device's
     * final answer. */
    assert_int_equal(mht_db_num(&s_db,
                                "SELECT count(*) FROM ota.jobs WHERE rollout_id = '%s'"
                                " AND sends > 1 AND last_sent_ms > finished_ms",
                                id),
                     0);
    double resent = mht_db_num(&s_db,
                               "SELECT coalesce(sum(sends - 1), 0) FROM ota.jobs"
                               " WHERE rollout_id = '%s'",
                               id);
    long installed = -1, repeats = s_fleet_stop("sim-d", sim, &installed);
    /* a device may see a job twice — ota's re-sends, or a downlink batch
     * the relay sent again when its acknowledgement was late — and ignores
     * it: every device installed once */
    print_message("# ota killed mid-rollout: %.0f jobs sent again, %ld repeats the devices saw"
                  " and ignored, %ld installs\n",
                  resent, repeats, installed);
    assert_true(repeats >= 0);
    assert_int_equal(installed, 200);
}

/* Five devices PREFIX-* on PREFIX-1.0, the gateway stopped, and a rollout
 * to PREFIX-2.0 (its spec with `more`) whose five jobs ota has handed over
 * and nobody can publish. Returns the rollout's id; *sim gets motesim. */
static const char *s_handed_without_gateway(const char *prefix, const char *more, pid_t *sim)
{
    char v1[32], v2[32], name[32], spec[512], sql[256];
    snprintf(v1, sizeof v1, "%s-1.0", prefix);
    snprintf(v2, sizeof v2, "%s-2.0", prefix);
    snprintf(name, sizeof name, "sim-%s", prefix);
    s_upload_version(v1, 1000);
    s_upload_version(v2, 2000);
    *sim = s_fleet(name, prefix, 5, v1, NULL, "0");
    assert_int_equal(mht_stop(s_gw.pid, SIGTERM, 30000), 0);
    snprintf(spec, sizeof spec,
             "{\"firmware\":\"%s\",\"target\":{\"firmware\":\"%s\"},"
             "\"waves\":[{\"percent\":100}],\"soakSeconds\":0%s}",
             v2, v1, more);
    const char *id = s_create(spec);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM ota.jobs WHERE rollout_id = '%s' AND last_sent_ms IS NOT NULL",
             id);
    assert_int_equal(mht_db_wait_num(&s_db, sql, 5, 10000), 5);
    return id;
}

/* A job counts as sent only once a gateway has published it: with no
 * gateway running, jobs are handed over and stay queued; a gateway back,
 * they are published, sent, and the rollout completes. */
static void test_sent_once_published(void **state)
{
    (void)state;
    pid_t sim;
    const char *id = s_handed_without_gateway("g", "", &sim);
    mht_sleep_ms(1000);
    assert_int_equal(mht_db_num(&s_db,
                                "SELECT count(*) FROM ota.jobs WHERE rollout_id = '%s'"
                                " AND (status <> 'queued' OR sent_ms IS NOT NULL)",
                                id),
                     0);
    json_t *r = s_rollout(id);
    assert_int_equal(s_wave_num(r, 0, "sent"), 0);
    json_decref(r);
    mht_gateway_for_twin(&s_gw, "gateway-back", &s_broker, &s_ingest, &s_twin, s_downlink,
                         s_ota.port);
    r = s_wait_state(id, "completed", 60000);
    assert_int_equal(s_wave_num(r, 0, "sent"), 5);
    assert_int_equal(s_wave_num(r, 0, "succeeded"), 5);
    json_decref(r);
    s_fleet_stop("sim-g", sim, NULL);
}

/* Jobs handed over while no gateway ran, their rollout aborted (which
 * leaves a job that may be on its way in progress) and the ota holding them
 * killed: nothing will ever hand them again, and they time out instead of
 * staying in progress forever. */
static void test_handed_jobs_time_out(void **state)
{
    (void)state;
    pid_t sim;
    const char *id = s_handed_without_gateway("h", ",\"jobTimeoutSeconds\":3", &sim);
    Mh__OtaReply *r = s_control(MH__OTA_REQUEST__METHOD__ABORT_ROLLOUT, id);
    assert_int_equal(r->status, 200);
    mh__ota_reply__free_unpacked(r, NULL);
    int st = mht_stop(s_ota.pid, SIGKILL, 5000);
    assert_true(WIFSIGNALED(st));
    char sql[256];
    mht_ota_start(&s_ota, "ota", &s_db, s_downlink, &s_twin, s_key, s_ota_extra);
    mht_gateway_for_twin(&s_gw, "gateway-after-abort", &s_broker, &s_ingest, &s_twin, s_downlink,
                         s_ota.port);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM ota.jobs WHERE rollout_id = '%s' AND status = 'timed_out'", id);
    double timed_out = mht_db_wait_num(&s_db, sql, 5, 20000);
    print_message("# 5 jobs handed by an ota killed after their rollout was aborted: %.0f timed"
                  " out, %.0f still in progress\n",
                  timed_out,
                  mht_db_num(&s_db,
                             "SELECT count(*) FROM ota.jobs WHERE rollout_id = '%s' AND status"
                             " IN ('queued', 'sent', 'downloading', 'installing')",
                             id));
    assert_int_equal(timed_out, 5);
    json_t *v = s_rollout(id);
    assert_int_equal(s_wave_num(v, 0, "timedOut"), 5);
    json_decref(v);
    s_fleet_stop("sim-h", sim, NULL);
}

/* Bad rollouts and uploads get a clear error and create nothing. */
static void test_bad_requests(void **state)
{
    (void)state;
    s_upload_version("e-1.0", 100);
    double before = mht_db_num(&s_db, "SELECT count(*) FROM ota.rollouts");
    static const struct {
        const char *spec;
        uint32_t status;
        const char *says;
    } cases[] = {
        {"{\"firmware\":\"no-such\"}", 404, "no firmware"},
        {"{\"firmware\":\"e-1.0\",\"waves\":[{\"percent\":10},{\"percent\":50}]}", 400,
         "last must be 100"},
        {"{\"firmware\":\"e-1.0\",\"waves\":[{\"percent\":50},{\"percent\":10},"
         "{\"percent\":100}]}",
         400, "rise"},
        {"{\"firmware\":\"e-1.0\",\"waves\":[]}", 400, "waves"},
        {"{\"firmware\":\"e-1.0\",\"successThreshold\":1.5}", 400, "successThreshold"},
        {"{\"firmware\":\"e-1.0\",\"failureThreshold\":-0.1}", 400, "failureThreshold"},
        {"{\"firmware\":\"e-1.0\",\"soakSeconds\":-1}", 400, "soakSeconds"},
        {"{\"firmware\":\"e-1.0\",\"jobTimeoutSeconds\":0}", 400, "jobTimeoutSeconds"},
        {"{\"firmware\":\"e-1.0\",\"onFailure\":\"explode\"}", 400, "onFailure"},
        {"{\"firmware\":\"e-1.0\",\"colour\":\"red\"}", 400, "unknown field"},
        {"{\"firmware\":\"e-1.0\",\"target\":{\"tags\":{\"model\":1}}}", 400, "target.tags"},
        {"{\"firmware\":", 400, "invalid JSON"},
        /* health gates */
        {"{\"firmware\":\"e-1.0\",\"health\":{\"windowSeconds\":60,\"signals\":["
         "{\"signal\":\"vibes\"}]}}",
         400, "unknown signal \"vibes\""},
        {"{\"firmware\":\"e-1.0\",\"health\":{\"windowSeconds\":0,\"signals\":["
         "{\"signal\":\"disconnects\"}]}}",
         400, "windowSeconds"},
        {"{\"firmware\":\"e-1.0\",\"health\":{\"windowSeconds\":60,\"tolerance\":42,"
         "\"signals\":[{\"signal\":\"disconnects\"}]}}",
         400, "tolerance"},
        {"{\"firmware\":\"e-1.0\",\"health\":{\"windowSeconds\":120,\"signals\":["
         "{\"signal\":\"metric\",\"metric\":\"no_such_metric\"}]}}",
         400, "no device has reported metric \"no_such_metric\""},
        {"{\"firmware\":\"e-1.0\",\"stratifyBy\":[\"no-such-tag\"]}", 400, "\"no-such-tag\""},
        {"[]", 400, "object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Mh__OtaRequest q = MH__OTA_REQUEST__INIT;
        q.method = MH__OTA_REQUEST__METHOD__CREATE_ROLLOUT;
        q.body_json = (char *)cases[i].spec;
        Mh__OtaReply *r = s_call(&q);
        if (r->status != cases[i].status || !strstr(r->message, cases[i].says))
            fail_msg("%s: got %u \"%s\", wanted %u mentioning \"%s\"", cases[i].spec, r->status,
                     r->message, cases[i].status, cases[i].says);
        mh__ota_reply__free_unpacked(r, NULL);
    }
    assert_int_equal(mht_db_num(&s_db, "SELECT count(*) FROM ota.rollouts"), before);
    /* Uploads: a version once, names checked, no empty image. */
    uint8_t img[16] = {1, 2, 3};
    assert_int_equal(s_upload("e-1.0", img, sizeof img), 409);
    assert_int_equal(s_upload("bad version", img, sizeof img), 400);
    assert_int_equal(s_upload("e-9.0", img, 0), 400);
    /* Unknown rollouts and controls that do not apply. */
    Mh__OtaReply *r = s_control(MH__OTA_REQUEST__METHOD__GET_ROLLOUT, "0000-nope");
    assert_int_equal(r->status, 404);
    mh__ota_reply__free_unpacked(r, NULL);
    const char *id = s_create("{\"firmware\":\"e-1.0\",\"target\":{\"firmware\":\"none\"}}");
    json_decref(s_wait_state(id, "completed", 20000)); /* nothing matches */
    r = s_control(MH__OTA_REQUEST__METHOD__PAUSE_ROLLOUT, id);
    assert_int_equal(r->status, 409);
    assert_string_equal(r->error_code, "conflict");
    mh__ota_reply__free_unpacked(r, NULL);
}

/* A stratified canary: 160 devices, two firmware versions, models and
 * regions some of which only one or two devices have. Wave 1 at 1 % would
 * be 2 devices; with stratifyBy it holds every model, region and firmware
 * present, and nothing else is added. A tag no targeted device has is a 400
 * and makes nothing. */
static void test_stratified_canary(void **state)
{
    (void)state;
    s_upload_version("st-2.0", 100);
    const char *const tags[] = {"--tags=fleet=strat;model=m1:96,m2:3,m3:1;region=eu:50,us:49,ap:1",
                                NULL};
    pid_t a = s_fleet_with("sim-strat-a", "sta", 150, "st-1.0", NULL, "100ms", tags);
    pid_t b = s_fleet_with("sim-strat-b", "stb", 10, "st-0.9", NULL, "100ms", tags);
    double before = mht_db_num(&s_db, "SELECT count(*) FROM ota.rollouts");
    Mh__OtaRequest q = MH__OTA_REQUEST__INIT;
    q.method = MH__OTA_REQUEST__METHOD__CREATE_ROLLOUT;
    q.body_json = "{\"firmware\":\"st-2.0\",\"target\":{\"tags\":{\"fleet\":\"strat\"}},"
                  "\"stratifyBy\":[\"model\",\"colour\"]}";
    Mh__OtaReply *r = s_call(&q);
    assert_int_equal(r->status, 400);
    assert_non_null(strstr(r->message, "\"colour\""));
    mh__ota_reply__free_unpacked(r, NULL);
    assert_int_equal(mht_db_num(&s_db, "SELECT count(*) FROM ota.rollouts"), before);

    const char *id =
        s_create("{\"firmware\":\"st-2.0\",\"target\":{\"tags\":{\"fleet\":\"strat\"}},"
                 "\"waves\":[{\"percent\":1},{\"percent\":100}],\"soakSeconds\":3600,"
                 "\"stratifyBy\":[\"model\",\"region\"]}");
    json_t *v = s_wait_state(id, "running", 20000);
    json_t *spec_by = json_object_get(v, "stratifyBy");
    assert_int_equal(json_array_size(spec_by), 2);
    int64_t wave1 = s_wave_num(v, 0, "targeted");
    json_decref(v);
    assert_int_equal(mht_db_num(&s_db, "SELECT count(*) FROM ota.jobs WHERE rollout_id = '%s'", id),
                     160);
    static const char *const of[] = {"d.doc->'tags'->>'model'", "d.doc->'tags'->>'region'",
                                     "j.from_version"};
    double missing = 0;
    for (int k = 0; k < 3; k++) {
        double all = mht_db_num(&s_db,
                                "SELECT count(DISTINCT %s) FROM ota.jobs j JOIN twin.devices d"
                                " ON d.id = j.device_id WHERE j.rollout_id = '%s'",
                                of[k], id);
        double first = mht_db_num(&s_db,
                                  "SELECT count(DISTINCT %s) FROM ota.jobs j JOIN twin.devices d"
                                  " ON d.id = j.device_id WHERE j.rollout_id = '%s' AND j.wave = 0",
                                  of[k], id);
        print_message("# %s: %.0f values, wave 1 has %.0f\n", of[k], all, first);
        assert_true(all >= 2);
        assert_true(first == all);
        missing += all - 1;
    }
    /* 1 % of 160 is 2 devices; at most one device more for each value
     * those two lacked */
    print_message("# wave 1: %lld devices\n", (long long)wave1);
    assert_true(wave1 >= 2 && wave1 <= 2 + (int64_t)missing);
    assert_int_equal(mht_db_num(&s_db,
                                "SELECT count(*) FROM ota.jobs WHERE rollout_id = '%s'"
                                " AND wave = 0",
                                id),
                     wave1);
    r = s_control(MH__OTA_REQUEST__METHOD__ABORT_ROLLOUT, id);
    mh__ota_reply__free_unpacked(r, NULL);
    s_fleet_stop("sim-strat-a", a, NULL);
    s_fleet_stop("sim-strat-b", b, NULL);
}

/* ---- health gates ---- */

/* The health gate's last evaluation, as the API shows it. */
static void s_print_health(const char *what, json_t *rollout)
{
    char *h = json_dumps(json_object_get(rollout, "healthNow"), JSON_COMPACT);
    print_message("# %s: %s: %.1500s\n", what,
                  json_string_value(json_object_get(rollout, "reason")), h ? h : "null");
    free(h);
}

/* A version that installs fine and then crash-loops (drops its connection
 * every few seconds): no install fails, the health gate sees the updated
 * devices disconnect far more than the control group and rolls back, with
 * a reason naming the signal and both sides. ota is SIGKILLed while wave
 * 1 is under observation and the verdict after its restart is the same. */
static void test_health_crash_loop(void **state)
{
    (void)state;
    s_upload_version("hc-1.0", 100);
    s_upload_version("hc-2.0", 100);
    const char *const more[] = {"--misbehave=hc-2.0:1:reconnect", NULL};
    pid_t sim = s_fleet_with("sim-hc", "hc", 40, "hc-1.0", NULL, "200ms", more);
    const char *id =
        s_create("{\"firmware\":\"hc-2.0\",\"target\":{\"firmware\":\"hc-1.0\"},"
                 "\"waves\":[{\"percent\":10},{\"percent\":100}],\"soakSeconds\":0,"
                 "\"health\":{\"windowSeconds\":300,\"signals\":[{\"signal\":\"disconnects\"},"
                 "{\"signal\":\"offline\"}]}}");
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT least(count(*), 1) FROM ota.jobs WHERE rollout_id = '%s'"
             " AND status = 'succeeded'",
             id);
    assert_int_equal(mht_db_wait_num(&s_db, sql, 1, 30000), 1);
    int64_t first_ok = mht_now_ms();
    /* under observation (the new version runs 5 s before its first crash):
     * not promoted, not succeeded yet */
    json_t *v = s_rollout(id);
    s_print_health("crash loop, observing", v);
    assert_string_equal(json_string_value(json_object_get(v, "state")), "running");
    assert_int_equal(json_integer_value(json_object_get(v, "currentWave")), 0);
    assert_int_equal(s_wave_num(v, 0, "succeeded"), 0);
    assert_true(s_wave_num(v, 0, "observing") >= 1);
    json_decref(v);
    int st = mht_stop(s_ota.pid, SIGKILL, 5000);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    mht_ota_start(&s_ota, "ota", &s_db, s_downlink, &s_twin, s_key, s_ota_extra);
    v = s_wait_state(id, "rolled_back", 60000);
    print_message("# crash loop: rollback decided %.1f s after the first install succeeded\n",
                  (double)(mht_now_ms() - first_ok) / 1000.0);
    s_print_health("crash loop", v);
    const char *reason = json_string_value(json_object_get(v, "reason"));
    assert_non_null(strstr(reason, "wave 1 health: disconnects"));
    assert_non_null(strstr(reason, "control group"));
    json_t *totals = json_object_get(v, "totals");
    assert_int_equal(json_integer_value(json_object_get(totals, "failed")), 0);
    assert_int_equal(json_integer_value(json_object_get(totals, "timedOut")), 0);
    /* wave 2 never started; every updated device goes back to hc-1.0 */
    assert_int_equal(s_wave_num(v, 1, "sent"), 0);
    json_decref(v);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FILTER (WHERE action = 'install' AND status = 'succeeded')"
             " - count(*) FILTER (WHERE action = 'rollback' AND status = 'succeeded')"
             " FROM ota.jobs WHERE rollout_id = '%s'",
             id);
    assert_int_equal(mht_db_wait_num(&s_db, sql, 0, 30000), 0);
    s_fleet_stop("sim-hc", sim, NULL);
}

/* Temperature against control, two rollouts at once: in a heat wave every
 * device runs 15 degrees hotter, updated or not, and wave 1 passes its gate
 * (wave 2 starts); a version that runs hotter than its control group is
 * rolled back. Metrics are judged on whole minutes after each install,
 * so the windows are 120 s. */
static void test_health_hot_vs_control(void **state)
{
    (void)state;
    static const char *health =
        "\"health\":{\"windowSeconds\":120,\"signals\":[{\"signal\":\"metric\","
        "\"metric\":\"temperature\",\"stat\":\"p95\"},{\"signal\":\"disconnects\"}]}";
    const char *v1[] = {"hw-1.0", "hh-1.0"}, *v2[] = {"hw-2.0", "hh-2.0"};
    const char *const heat[] = {"--misbehave=hw-1.0:1:hot,hw-2.0:1:hot", "--interval=1s", NULL};
    const char *const hot[] = {"--misbehave=hh-2.0:1:hot", "--interval=1s", NULL};
    pid_t sim[2];
    char ids[2][64], spec[800];
    for (int k = 0; k < 2; k++) {
        s_upload_version(v1[k], 100);
        s_upload_version(v2[k], 100);
        sim[k] = s_fleet_with(k ? "sim-hh" : "sim-hw", k ? "hh" : "hw", 20, v1[k], NULL, "200ms",
                              k ? hot : heat);
    }
    for (int k = 0; k < 2; k++) {
        snprintf(spec, sizeof spec,
                 "{\"firmware\":\"%s\",\"target\":{\"firmware\":\"%s\"},"
                 "\"waves\":[{\"percent\":20},{\"percent\":100}],\"soakSeconds\":0,%s}",
                 v2[k], v1[k], health);
        snprintf(ids[k], sizeof ids[k], "%s", s_create(spec));
    }
    /* both followed at once: the heat wave's evaluations while its wave 1
     * is observed (the last that compared it with control is kept) until
     * wave 2 starts; the hotter one until it is rolled back */
    int64_t deadline = mht_now_ms() + 240000;
    json_t *last = NULL, *v;
    bool heat_passed = false, hot_back = false;
    while (!heat_passed || !hot_back) {
        assert_true(mht_now_ms() < deadline);
        v = s_rollout(ids[0]);
        const char *st = json_string_value(json_object_get(v, "state"));
        assert_true(strcmp(st, "scheduled") == 0 || strcmp(st, "running") == 0 ||
                    strcmp(st, "completed") == 0);
        heat_passed = json_integer_value(json_object_get(v, "currentWave")) >= 1;
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(json_object_get(v, "healthNow"), "signals"), i, e)
        {
            if (!heat_passed && json_integer_value(json_object_get(e, "wave")) == 1 &&
                json_string_value(json_object_get(e, "metric")) &&
                json_integer_value(json_object_get(e, "controlDevices")) > 0 &&
                json_integer_value(json_object_get(e, "updatedDevices")) > 0) {
                json_decref(last);
                last = json_incref(e);
            }
        }
        json_decref(v);
        if (!hot_back) {
            v = s_rollout(ids[1]);
            st = json_string_value(json_object_get(v, "state"));
            assert_true(strcmp(st, "completed") != 0);
            if (strcmp(st, "rolled_back") == 0) {
                /* rolled back, naming the metric and both sides */
                hot_back = true;
                s_print_health("hotter", v);
                const char *reason = json_string_value(json_object_get(v, "reason"));
                assert_non_null(strstr(reason, "wave 1 health: temperature p95"));
                assert_non_null(strstr(reason, "control group"));
                assert_int_equal(
                    json_integer_value(json_object_get(json_object_get(v, "totals"), "failed")), 0);
            }
            json_decref(v);
        }
        mht_sleep_ms(300);
    }
    /* the heat wave: wave 1 passed its window against a control group as
     * hot, and wave 2 started */
    assert_non_null(last);
    char *text = json_dumps(last, JSON_COMPACT);
    print_message("# heat wave, wave 1 passed: %s\n", text);
    free(text);
    assert_true(json_real_value(json_object_get(last, "control")) > 25); /* both hot */
    assert_false(json_is_true(json_object_get(last, "worse")));
    json_decref(last);
    Mh__OtaReply *r = s_control(MH__OTA_REQUEST__METHOD__ABORT_ROLLOUT, ids[0]);
    mh__ota_reply__free_unpacked(r, NULL);
    s_fleet_stop("sim-hw", sim[0], NULL);
    s_fleet_stop("sim-hh", sim[1], NULL);
}

/* Devices download from pre-signed links: the whole image, a range to
 * resume, and nothing without a valid signature or after expiry. */
static size_t s_collect(char *p, size_t sz, size_t n, void *ud)
{
    zchunk_t *c = ud;
    zchunk_extend(c, p, sz * n);
    return sz * n;
}

static long s_fetch(const char *path, const char *range, zchunk_t *into)
{
    char url[1024];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", s_ota.http_port, path);
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, into);
    if (range)
        curl_easy_setopt(c, CURLOPT_RANGE, range);
    long code = 0;
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    return code;
}

static void test_download_links(void **state)
{
    (void)state;
    s_upload_version("f-1.0", 100000);
    char secret[128], link[512];
    PGresult *res = PQexec(s_db.conn, "SELECT value FROM ota.settings WHERE key = 'url_secret'");
    assert_int_equal(PQntuples(res), 1);
    snprintf(secret, sizeof secret, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    res = PQexecParams(s_db.conn, "SELECT image FROM ota.firmware WHERE version = 'f-1.0'", 0, NULL,
                       NULL, NULL, NULL, 1);
    assert_int_equal(PQgetlength(res, 0, 0), 100000);
    const uint8_t *img = (const uint8_t *)PQgetvalue(res, 0, 0);
    int64_t exp = (int64_t)time(NULL) + 600;
    ota_link(secret, "f-1.0", exp, link, sizeof link);
    zchunk_t *c = zchunk_new(NULL, 0);
    assert_int_equal(s_fetch(link, NULL, c), 200);
    assert_int_equal(zchunk_size(c), 100000);
    assert_memory_equal(zchunk_data(c), img, 100000);
    zchunk_destroy(&c);
    c = zchunk_new(NULL, 0);
    assert_int_equal(s_fetch(link, "60000-", c), 206);
    assert_int_equal(zchunk_size(c), 40000);
    assert_memory_equal(zchunk_data(c), img + 60000, 40000);
    zchunk_destroy(&c);
    c = zchunk_new(NULL, 0);
    assert_int_equal(s_fetch(link, "200000-", c), 416);
    zchunk_destroy(&c);
    PQclear(res);
    /* tampered signature, another version, expired */
    char bad[600];
    snprintf(bad, sizeof bad, "%s", link);
    bad[strlen(bad) - 1] = bad[strlen(bad) - 1] == '0' ? '1' : '0';
    c = zchunk_new(NULL, 0);
    assert_int_equal(s_fetch(bad, NULL, c), 403);
    zchunk_destroy(&c);
    ota_link(secret, "f-1.0", (int64_t)time(NULL) - 5, link, sizeof link);
    c = zchunk_new(NULL, 0);
    assert_int_equal(s_fetch(link, NULL, c), 403);
    zchunk_destroy(&c);
    c = zchunk_new(NULL, 0);
    assert_int_equal(s_fetch("/firmware/f-1.0/image", NULL, c), 403);
    zchunk_destroy(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_requests),          cmocka_unit_test(test_download_links),
        cmocka_unit_test(test_rollout_completes),     cmocka_unit_test(test_failure_rolls_back),
        cmocka_unit_test(test_tampered_image),        cmocka_unit_test(test_kill_and_resume),
        cmocka_unit_test(test_sent_once_published),   cmocka_unit_test(test_handed_jobs_time_out),
        cmocka_unit_test(test_stratified_canary),     cmocka_unit_test(test_health_crash_loop),
        cmocka_unit_test(test_health_hot_vs_control),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
