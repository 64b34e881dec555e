/* ota_bench — drives one rollout through ota's RPC and prints what it took,
 * from ota's own tables: per wave the devices, the time from the wave's
 * start to its last job finished, and the jobs sent per second; for a
 * rollout stopped by its failure gate, the time from the gate tripping to
 * the last rollback job sent. tools/bench/ota.py runs the whole stack
 * around it.
 *
 *   ota_bench --rpc=tcp://127.0.0.1:5583 --pg-url=... --upload=2.0.0:262144 \
 *             --rollout='{"firmware":"2.0.0",...}' --until=completed */
#include "mh_config.h"
#include "mh_envelope.h"
#include "mh_log.h"
#include "mh_time.h"
#include "ota.pb-c.h"

#include <czmq.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>

typedef struct {
    char *rpc;
    char *pg_url;
    char *upload;
    char *rollout;
    char *until;
    int64_t timeout_ms;
} cfg_t;

#define S_CFG(f) offsetof(cfg_t, f)
static const mh_cfg_opt_t s_options[] = {
    {"rpc", "OTA_BENCH_RPC", MH_CFG_STR, "tcp://127.0.0.1:5583", S_CFG(rpc), "ota's RPC"},
    {"pg-url", "OTA_BENCH_PG", MH_CFG_STR, "", S_CFG(pg_url), "ota's database, for timings"},
    {"upload", "OTA_BENCH_UPLOAD", MH_CFG_STR, "", S_CFG(upload),
     "VERSION:BYTES[,...] images to upload first"},
    {"rollout", "OTA_BENCH_ROLLOUT", MH_CFG_STR, "", S_CFG(rollout), "the rollout (JSON)"},
    {"until", "OTA_BENCH_UNTIL", MH_CFG_STR, "completed", S_CFG(until),
     "the state to wait for (completed, rolled_back, ...)"},
    {"timeout", "OTA_BENCH_TIMEOUT", MH_CFG_DURATION, "30m", S_CFG(timeout_ms),
     "give up after this long"},
    MH_CFG_END,
};

static zsock_t *s_sock;

static Mh__OtaReply *s_call(Mh__OtaRequest *q)
{
    static int seq;
    char rid[32];
    snprintf(rid, sizeof rid, "b-%d", ++seq);
    q->request_id = rid;
    if (mh_envelope_send(s_sock, NULL, "ota.request", NULL, &q->base, false) != 0)
        return NULL;
    for (;;) {
        zframe_t *f = zframe_recv(s_sock);
        if (!f)
            return NULL;
        Mh__Envelope *env = mh_envelope_unpack(f);
        zframe_destroy(&f);
        Mh__OtaReply *r = env ? mh__ota_reply__unpack(NULL, env->body.len, env->body.data) : NULL;
        mh_envelope_free(&env);
        if (r && strcmp(r->request_id, rid) == 0)
            return r;
        if (r)
            mh__ota_reply__free_unpacked(r, NULL);
    }
}

/* One number from `sql` with $1 = id and, when given, $2 = wave. */
static double s_num_w(PGconn *pg, const char *sql, const char *id, const char *wave)
{
    const char *p[] = {id, wave};
    PGresult *res = PQexecParams(pg, sql, wave ? 2 : 1, NULL, p, NULL, NULL, 0);
    double v = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) && !PQgetisnull(res, 0, 0)
                   ? strtod(PQgetvalue(res, 0, 0), NULL)
                   : -1;
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fprintf(stderr, "query failed: %s", PQerrorMessage(pg));
    PQclear(res);
    return v;
}

static double s_num(PGconn *pg, const char *sql, const char *id)
{
    return s_num_w(pg, sql, id, NULL);
}

int main(int argc, char **argv)
{
    cfg_t cfg = {0};
    int rc = mh_config_load(s_options, &cfg, argc, argv, "ota_bench",
                            "Drives one rollout through ota's RPC and prints its timings.");
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    s_sock = zsock_new_dealer(cfg.rpc);
    zsock_set_rcvtimeo(s_sock, 30000);
    PGconn *pg = PQconnectdb(cfg.pg_url);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "ota_bench: %s", PQerrorMessage(pg));
        return 1;
    }
    /* images */
    for (char *save = NULL, *item = strtok_r(cfg.upload, ",", &save); item;
         item = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(item, ':');
        size_t len = colon ? strtoull(colon + 1, NULL, 10) : 65536;
        if (colon)
            *colon = 0;
        uint8_t *img = malloc(len);
        for (size_t i = 0; i < len; i++)
            img[i] = (uint8_t)(i * 131 + (unsigned char)item[i % strlen(item)]);
        Mh__OtaRequest q = MH__OTA_REQUEST__INIT;
        q.method = MH__OTA_REQUEST__METHOD__UPLOAD_FIRMWARE;
        q.version = item;
        q.hardware = "sim-1";
        q.image.data = img;
        q.image.len = len;
        Mh__OtaReply *r = s_call(&q);
        free(img);
        if (!r || (r->status != 201 && r->status != 409)) {
            fprintf(stderr, "ota_bench: upload of %s failed: %s\n", item,
                    r ? r->message : "no answer");
            return 1;
        }
        mh__ota_reply__free_unpacked(r, NULL);
    }
    Mh__OtaRequest q = MH__OTA_REQUEST__INIT;
    q.method = MH__OTA_REQUEST__METHOD__CREATE_ROLLOUT;
    q.body_json = cfg.rollout;
    Mh__OtaReply *r = s_call(&q);
    if (!r || r->status != 201) {
        fprintf(stderr, "ota_bench: rollout refused: %s\n", r ? r->message : "no answer");
        return 1;
    }
    json_t *v = json_loads(r->body_json, 0, NULL);
    char id[64];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(v, "id")));
    json_decref(v);
    mh__ota_reply__free_unpacked(r, NULL);
    int64_t t0 = mh_mono_ms();
    char state[32] = "";
    while (strcmp(state, cfg.until) != 0) {
        if (zsys_interrupted) {
            fprintf(stderr, "ota_bench: interrupted; rollout %s is %s\n", id, state);
            return 1;
        }
        if (mh_mono_ms() - t0 > cfg.timeout_ms) {
            fprintf(stderr, "ota_bench: rollout %s still %s after the timeout\n", id, state);
            return 1;
        }
        zclock_sleep(250);
        const char *p[] = {id};
        PGresult *res = PQexecParams(pg, "SELECT state FROM ota.rollouts WHERE id = $1", 1, NULL, p,
                                     NULL, NULL, 0);
        if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res))
            snprintf(state, sizeof state, "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
        bool settled = strcmp(state, "completed") == 0 || strcmp(state, "paused") == 0 ||
                       strcmp(state, "aborted") == 0 || strcmp(state, "rolled_back") == 0;
        if (settled && strcmp(state, cfg.until) != 0) {
            fprintf(stderr, "ota_bench: rollout %s is %s, not %s\n", id, state, cfg.until);
            return 1;
        }
    }
    printf("rollout %s: %s after %.1f s, %.0f devices targeted\n", id, state,
           (double)(mh_mono_ms() - t0) / 1000.0,
           s_num(pg, "SELECT targeted FROM ota.rollouts WHERE id = $1", id));
    int nwaves = (int)s_num(pg, "SELECT count(*) FROM ota.waves WHERE rollout_id = $1", id);
    for (int k = 0; k < nwaves; k++) {
        char wave[16];
        snprintf(wave, sizeof wave, "%d", k);
        double n = s_num_w(pg,
                           "SELECT count(*) FROM ota.jobs WHERE rollout_id = $1 AND wave = $2::int"
                           " AND action = 'install'",
                           id, wave);
        double sent = s_num_w(pg,
                              "SELECT count(*) FROM ota.jobs WHERE rollout_id = $1"
                              " AND wave = $2::int AND action = 'install' AND sent_ms IS NOT NULL",
                              id, wave);
        if (sent <= 0) {
            printf("wave %d: %.0f devices, never started\n", k + 1, n);
            continue;
        }
        /* Times after the wave started: the device's first answer (the job
         * reached it), and the job finished; p50 and the last. */
        const char *sql =
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY j.answered_ms - w.started_ms),"
            " max(j.answered_ms - w.started_ms),"
            " percentile_disc(0.5) WITHIN GROUP (ORDER BY j.finished_ms - w.started_ms),"
            " max(j.finished_ms - w.started_ms), max(j.sent_ms - w.started_ms),"
            " count(*) FILTER (WHERE j.status = 'succeeded'),"
            " count(*) FILTER (WHERE j.status IN ('failed', 'timed_out'))"
            " FROM ota.jobs j JOIN ota.waves w ON w.rollout_id = j.rollout_id"
            " AND w.idx = j.wave WHERE j.rollout_id = $1 AND j.wave = $2::int"
            " AND j.action = 'install' AND j.sent_ms IS NOT NULL";
        const char *p[] = {id, wave};
        PGresult *res = PQexecParams(pg, sql, 2, NULL, p, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
            fprintf(stderr, "query failed: %s", PQerrorMessage(pg));
            return 1;
        }
        double reach50 = strtod(PQgetvalue(res, 0, 0), NULL),
               reach = strtod(PQgetvalue(res, 0, 1), NULL),
               done50 = strtod(PQgetvalue(res, 0, 2), NULL),
               done = strtod(PQgetvalue(res, 0, 3), NULL),
               sent_by = strtod(PQgetvalue(res, 0, 4), NULL);
        printf("wave %d: %.0f devices, %.0f jobs sent (all within %.0f ms of the wave's start), "
               "%s succeeded, %s failed; jobs reached the devices p50 %.2f s, all by %.2f s "
               "(%.0f jobs/s); finished p50 %.1f s, all by %.1f s\n",
               k + 1, n, sent, sent_by, PQgetvalue(res, 0, 5), PQgetvalue(res, 0, 6),
               reach50 / 1000.0, reach / 1000.0, sent * 1000.0 / (reach > 1 ? reach : 1),
               done50 / 1000.0, done / 1000.0);
        PQclear(res);
    }
    double rb = s_num(
        pg, "SELECT count(*) FROM ota.jobs WHERE rollout_id = $1 AND action = 'rollback'", id);
    if (rb > 0) {
        double stop_to_last = s_num(pg,
                                    "SELECT max(j.sent_ms) - r.stopped_ms FROM ota.jobs j JOIN"
                                    " ota.rollouts r ON r.id = j.rollout_id WHERE r.id = $1"
                                    " AND j.action = 'rollback' GROUP BY r.stopped_ms",
                                    id);
        double ok = s_num(pg,
                          "SELECT count(*) FROM ota.jobs WHERE rollout_id = $1"
                          " AND action = 'rollback' AND status = 'succeeded'",
                          id);
        printf("rollback: %.0f rollback jobs; the last sent %.0f ms after the failure gate "
               "tripped; %.0f done so far\n",
               rb, stop_to_last, ok);
    }
    PQfinish(pg);
    zsock_destroy(&s_sock);
    mh_config_free(s_options, &cfg);
    return 0;
}
