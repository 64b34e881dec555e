/* The ota actor. See ota_service.h for the shape; docs/ota.md for the
 * behaviour operators and firmware writers see. */
#include "ota_service.h"
#include "ota_input.h"
#include "mh_json.h"
#include "mh_curve.h"
#include "mh_envelope.h"
#include "mh_idset.h"
#include "mh_ids.h"
#include "mh_pg.h"
#include "mh_resolver.h"
#include "mh_time.h"
#include "ota.pb-c.h"
#include "ota_image.h"
#include "ota_plan.h"
#include "twin.pb-c.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <openssl/crypto.h>

#define S_CFG(field) offsetof(ota_config_t, field)

const mh_cfg_opt_t ota_config_options[] = {
    MH_CFG_COMMON(ota_config_t, "127.0.0.1:9104"),
    {"pg-url", "MH_PG_URL", MH_CFG_STR, "postgresql://postgres@127.0.0.1:5433/motehub",
     S_CFG(pg_url), "PostgreSQL connection string"},
    {"bind", "MH_OTA_BIND", MH_CFG_STR, "tcp://127.0.0.1:5582", S_CFG(bind),
     "where the PULL for OTA status messages from the gateways binds"},
    {"rpc-bind", "MH_OTA_RPC_BIND", MH_CFG_STR, "tcp://127.0.0.1:5583", S_CFG(rpc_bind),
     "where the ROUTER for the operator RPC binds"},
    {"events-bind", "MH_OTA_EVENTS_BIND", MH_CFG_STR, "tcp://127.0.0.1:5574", S_CFG(events_bind),
     "where the event PUB socket binds (empty: none)"},
    {"downlink-endpoint", "MH_DOWNLINK_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5590",
     S_CFG(downlink_endpoint), "the gateways' downlink PULL endpoint(s); names resolve to all"},
    {"twin-rpc-endpoint", "MH_TWIN_RPC_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5581",
     S_CFG(twin_rpc_endpoint), "twin's RPC ROUTER: targeted devices and the online ones"},
    {"twin-events-endpoint", "MH_TWIN_EVENTS_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5573",
     S_CFG(twin_events_endpoint), "twin's event PUB, to follow devices coming and going"},
    {"signing-key", "MH_OTA_SIGNING_KEY", MH_CFG_STR, "", S_CFG(signing_key),
     "the fleet's Ed25519 private key (PEM; openssl genpkey -algorithm ed25519 -out FILE);"
     " without it firmware cannot be uploaded"},
    {"url-secret", "MH_OTA_URL_SECRET", MH_CFG_STR, "", S_CFG(url_secret),
     "secret that download links are signed with (empty: one generated and kept in the"
     " database, shared by every replica)"},
    {"public-url", "MH_OTA_PUBLIC_URL", MH_CFG_STR, "http://127.0.0.1:9104", S_CFG(public_url),
     "base URL devices download images from (this service's HTTP port, or a proxy to it)"},
    {"tick", "MH_OTA_TICK", MH_CFG_DURATION, "250ms", S_CFG(tick_ms),
     "how often rollouts are advanced"},
    {"resend-after", "MH_OTA_RESEND_AFTER", MH_CFG_DURATION, "30s", S_CFG(resend_ms),
     "a job a device has not answered is sent again after this long while it is online"},
    {"max-image-size", "MH_OTA_MAX_IMAGE", MH_CFG_INT, "67108864", S_CFG(max_image),
     "largest firmware image accepted, in bytes"},
    {"online-refresh", "MH_OTA_ONLINE_REFRESH", MH_CFG_DURATION, "5m", S_CFG(online_refresh_ms),
     "how often the online devices are loaded again in full (events keep them current)"},
    {"resolve-interval", "MH_RESOLVE_INTERVAL", MH_CFG_DURATION, "10s", S_CFG(resolve_interval_ms),
     "how often service names are resolved again"},
    MH_CFG_END,
};

const mh_service_def_t ota_service_def = {
    .name = "ota",
    .summary = "Motehub ota: signed firmware, staged rollouts and automatic rollback.",
    .options = ota_config_options,
    .config_size = sizeof(ota_config_t),
    .actor = ota_actor,
};

#define S_LOCK_MIGRATE 7203102
#define S_PAGE         1000
#define S_RPC_TIMEOUT  10000

static const char *s_schema_sql =
    "CREATE SCHEMA IF NOT EXISTS ota;"
    "CREATE TABLE IF NOT EXISTS ota.settings (key text PRIMARY KEY, value text NOT NULL);"
    "INSERT INTO ota.settings VALUES ('url_secret',"
    "  replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''))"
    "  ON CONFLICT DO NOTHING;"
    "CREATE TABLE IF NOT EXISTS ota.firmware ("
    "  version text COLLATE \"C\" PRIMARY KEY, hardware text NOT NULL, size bigint NOT NULL,"
    "  sha256 text NOT NULL, signature text NOT NULL, image bytea NOT NULL,"
    "  created_ms bigint NOT NULL);"
    "CREATE TABLE IF NOT EXISTS ota.rollouts ("
    "  id text PRIMARY KEY, seq bigserial UNIQUE,"
    "  firmware text NOT NULL REFERENCES ota.firmware (version),"
    "  spec jsonb NOT NULL, state text NOT NULL, reason text NOT NULL DEFAULT '',"
    "  paused_by text NOT NULL DEFAULT '', current_wave int NOT NULL DEFAULT -1,"
    "  accepted_wave int NOT NULL DEFAULT -1, targeted int NOT NULL DEFAULT 0,"
    "  tokens double precision NOT NULL DEFAULT 0, tokens_ms bigint NOT NULL DEFAULT 0,"
    "  created_ms bigint NOT NULL, updated_ms bigint NOT NULL, started_ms bigint,"
    "  stopped_ms bigint, finished_ms bigint);"
    "CREATE TABLE IF NOT EXISTS ota.waves ("
    "  rollout_id text NOT NULL REFERENCES ota.rollouts (id) ON DELETE CASCADE,"
    "  idx int NOT NULL, percent double precision NOT NULL, size int NOT NULL DEFAULT 0,"
    "  started_ms bigint, ok_ms bigint, PRIMARY KEY (rollout_id, idx));"
    "CREATE TABLE IF NOT EXISTS ota.jobs ("
    "  id text PRIMARY KEY,"
    "  rollout_id text NOT NULL REFERENCES ota.rollouts (id) ON DELETE CASCADE,"
    "  device_id text COLLATE \"C\" NOT NULL, action text NOT NULL, wave int NOT NULL,"
    "  rank int NOT NULL, from_version text, to_version text, status text NOT NULL,"
    "  progress int NOT NULL DEFAULT 0, error text, created_ms bigint NOT NULL,"
    "  sent_ms bigint, last_sent_ms bigint, sends int NOT NULL DEFAULT 0,"
    "  answered_ms bigint, finished_ms bigint,"
    "  UNIQUE (rollout_id, device_id, action));"
    "CREATE INDEX IF NOT EXISTS jobs_by_status ON ota.jobs (rollout_id, status, rank);"
    "CREATE INDEX IF NOT EXISTS jobs_in_flight ON ota.jobs (sent_ms)"
    "  WHERE status IN ('sent', 'downloading', 'installing');";

static const double s_ms_bounds[] = {0.5, 1,   2,    3,    5,    7,     10,   15,
                                     20,  30,  50,   75,   100,  150,   200,  300,
                                     500, 750, 1000, 2000, 5000, 10000, 30000};
#define S_NBOUNDS (sizeof s_ms_bounds / sizeof s_ms_bounds[0])

static const char *s_method_names[] = {"upload_firmware", "list_firmware",    "get_firmware",
                                       "signing_key",     "create_rollout",   "list_rollouts",
                                       "get_rollout",     "pause_rollout",    "resume_rollout",
                                       "abort_rollout",   "rollback_rollout", "list_jobs"};
#define S_NMETHODS 12

typedef struct {
    mh_service_ctx_t *ctx;
    ota_config_t *cfg;
    mh_pg_t *pg;
    zsock_t *pull, *router, *pub, *push, *dealer;
    mh_resolver_t *resolver, *twin_resolver;
    mh_idset_t *online;
    ota_signer_t *signer;
    ota_images_t *images;
    char secret[128];
    /* The targets of one scheduled rollout, gathered page by page. */
    struct {
        bool active;
        char rollout[48];
        char req_id[48];
        char cursor[160];
        int64_t sent_ms;
        ota_spec_t spec;
        char **ids, **fw;
        size_t n, cap;
    } res;
    uint64_t seq;
    int64_t next_tick;
    zlistx_t *out;         /* s_out_t: published after COMMIT */
    zmsg_t *pending[1000]; /* status messages waiting for the database */
    size_t npending;
    mh_ratelimit_t rl_warn, rl_db;
    mh_counter_t *m_rpc[S_NMETHODS], *m_rpc_errors, *m_jobs_sent[2], *m_resent, *m_status[3],
        *m_job_final[4], *m_db_errors, *m_downlink_dropped, *m_rollouts[2];
    mh_histogram_t *m_tick_ms, *m_rpc_ms;
    mh_gauge_t *m_db, *m_online;
} ota_t;

/* ---- small helpers ---- */

static char *s_dumps(json_t *v)
{
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

static int64_t s_i64(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static json_t *s_ms_or_null(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? json_null() : json_integer(s_i64(res, row, col));
}

static json_t *s_str_or_null(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? json_null() : json_string(PQgetvalue(res, row, col));
}

static void s_fmt_i64(char *buf, size_t len, int64_t v)
{
    snprintf(buf, len, "%" PRId64, v);
}

/* ---- what leaves after COMMIT ---- */

typedef struct {
    char type[24]; /* event type, or "" for a downlink */
    zframe_t *frame;
} s_out_t;

static void s_out_free(void **item)
{
    s_out_t *o = *item;
    if (o) {
        zframe_destroy(&o->frame);
        free(o);
        *item = NULL;
    }
}

static void s_out_add(ota_t *self, const char *type, const char *envelope_type,
                      const ProtobufCMessage *body)
{
    s_out_t *o = calloc(1, sizeof *o);
    if (!o)
        return;
    snprintf(o->type, sizeof o->type, "%s", type);
    o->frame = mh_envelope_pack(envelope_type, NULL, body);
    if (!o->frame) {
        free(o);
        return;
    }
    zlistx_add_end(self->out, o);
}

static void s_out_event(ota_t *self, const char *type, const ProtobufCMessage *body)
{
    if (self->pub)
        s_out_add(self, type, type, body);
}

static void s_job_event(ota_t *self, const char *rollout, const char *job, const char *device,
                        const char *action, const char *status, const char *version, int wave,
                        const char *error)
{
    Mh__OtaJobStatus ev = MH__OTA_JOB_STATUS__INIT;
    ev.rollout_id = (char *)rollout;
    ev.job_id = (char *)job;
    ev.device_id = (char *)device;
    ev.action = (char *)action;
    ev.status = (char *)status;
    ev.version = (char *)(version ? version : "");
    ev.wave = wave;
    ev.error = (char *)(error ? error : "");
    ev.ts_ms = mh_now_ms();
    s_out_event(self, "ota.job", &ev.base);
    int i = strcmp(status, "succeeded") == 0   ? 0
            : strcmp(status, "failed") == 0    ? 1
            : strcmp(status, "timed_out") == 0 ? 2
            : strcmp(status, "cancelled") == 0 ? 3
                                               : -1;
    if (i >= 0)
        mh_counter_inc(self->m_job_final[i]);
}

static void s_rollout_event(ota_t *self, const char *id, const char *firmware, const char *state,
                            int wave, const char *reason)
{
    Mh__RolloutChanged ev = MH__ROLLOUT_CHANGED__INIT;
    ev.rollout_id = (char *)id;
    ev.firmware = (char *)firmware;
    ev.state = (char *)state;
    ev.wave = wave;
    ev.reason = (char *)(reason ? reason : "");
    ev.ts_ms = mh_now_ms();
    s_out_event(self, "ota.rollout", &ev.base);
    mh_info("rollout %s (%s): %s%s%s", id, firmware, state, reason && *reason ? ": " : "",
            reason ? reason : "");
}

static void s_out_flush(ota_t *self)
{
    for (s_out_t *o = zlistx_first(self->out); o; o = zlistx_next(self->out)) {
        if (*o->type) {
            zsock_t *pub = self->pub;
            if (zstr_sendm(pub, o->type) == 0)
                zframe_send(&o->frame, pub, ZFRAME_DONTWAIT);
        } else if (zframe_send(&o->frame, self->push, ZFRAME_DONTWAIT) != 0) {
            mh_counter_inc(self->m_downlink_dropped);
            mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                           "no gateway is taking jobs (queue full); a job will be sent again");
        }
    }
    zlistx_purge(self->out);
}

static void s_out_discard(ota_t *self)
{
    zlistx_purge(self->out);
}

/* A job as the device sees it, queued for publishing after COMMIT. Columns:
 * id, device, action, to_version, rollout, size, sha256, signature. */
static void s_out_job(ota_t *self, PGresult *res, int r, int64_t exp_s)
{
    const char *device = PQgetvalue(res, r, 1), *version = PQgetvalue(res, r, 3);
    json_t *job =
        json_pack("{s:s,s:s,s:s,s:s}", "jobId", PQgetvalue(res, r, 0), "rollout",
                  PQgetvalue(res, r, 4), "action", PQgetvalue(res, r, 2), "version", version);
    if (!PQgetisnull(res, r, 5)) {
        char link[512], url[1024];
        ota_link(self->secret, version, exp_s, link, sizeof link);
        snprintf(url, sizeof url, "%s%s", self->cfg->public_url, link);
        json_object_set_new(job, "url", json_string(url));
        json_object_set_new(job, "size", json_integer(s_i64(res, r, 5)));
        json_object_set_new(job, "sha256", json_string(PQgetvalue(res, r, 6)));
        json_object_set_new(job, "signature", json_string(PQgetvalue(res, r, 7)));
    }
    char *payload = s_dumps(job);
    json_decref(job);
    if (!payload)
        return;
    char topic[128];
    snprintf(topic, sizeof topic, "devices/%s/ota", device);
    Mh__Publish pub = MH__PUBLISH__INIT;
    pub.topic = topic;
    pub.payload.data = (uint8_t *)payload;
    pub.payload.len = strlen(payload);
    pub.qos = 1;
    Mh__Publish *pubs[] = {&pub};
    Mh__Downlink dl = MH__DOWNLINK__INIT;
    dl.publishes = pubs;
    dl.n_publishes = 1;
    s_out_add(self, "", "downlink", &dl.base);
    free(payload);
}

/* ---- per-wave counts ---- */

typedef struct {
    ota_wave_t w[OTA_MAX_WAVES];
    double percent[OTA_MAX_WAVES];
    int64_t size[OTA_MAX_WAVES];
    int64_t sent[OTA_MAX_WAVES], rolled_back[OTA_MAX_WAVES], rb_queued, rb_in_flight, rb_succeeded,
        rb_failed, in_flight_total;
    int n;
} s_counts_t;

static bool s_load_counts(ota_t *self, const char *id, s_counts_t *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    const char *p[] = {id};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT idx, percent, size, started_ms, ok_ms FROM ota.waves"
                               " WHERE rollout_id = $1 ORDER BY idx",
                               1, p, err, errlen);
    if (!res)
        return false;
    for (int r = 0; r < PQntuples(res) && r < OTA_MAX_WAVES; r++) {
        c->percent[r] = strtod(PQgetvalue(res, r, 1), NULL);
        c->size[r] = s_i64(res, r, 2);
        c->w[r].started_ms = s_i64(res, r, 3);
        c->w[r].ok_ms = s_i64(res, r, 4);
        c->n = r + 1;
    }
    PQclear(res);
    res = mh_pg_exec(
        self->pg, PGRES_TUPLES_OK,
        "SELECT wave,"
        " count(*) FILTER (WHERE action = 'install'),"
        " count(*) FILTER (WHERE action = 'install' AND status = 'pending'),"
        " count(*) FILTER (WHERE action = 'install' AND status = 'queued'),"
        " count(*) FILTER (WHERE action = 'install'"
        "   AND status IN ('sent', 'downloading', 'installing')),"
        " count(*) FILTER (WHERE action = 'install' AND status = 'succeeded'),"
        " count(*) FILTER (WHERE action = 'install' AND status = 'failed'),"
        " count(*) FILTER (WHERE action = 'install' AND status = 'timed_out'),"
        " count(*) FILTER (WHERE action = 'install' AND status = 'cancelled'),"
        " count(*) FILTER (WHERE action = 'install' AND sent_ms IS NOT NULL),"
        " count(*) FILTER (WHERE action = 'rollback' AND sent_ms IS NOT NULL),"
        " count(*) FILTER (WHERE action = 'rollback' AND status = 'queued'),"
        " count(*) FILTER (WHERE action = 'rollback'"
        "   AND status IN ('sent', 'downloading', 'installing')),"
        " count(*) FILTER (WHERE action = 'rollback' AND status = 'succeeded'),"
        " count(*) FILTER (WHERE action = 'rollback' AND status IN ('failed', 'timed_out'))"
        " FROM ota.jobs WHERE rollout_id = $1 GROUP BY wave",
        1, p, err, errlen);
    if (!res)
        return false;
    for (int r = 0; r < PQntuples(res); r++) {
        int k = (int)s_i64(res, r, 0);
        if (k < 0 || k >= OTA_MAX_WAVES)
            continue;
        ota_wave_t *w = &c->w[k];
        w->targeted = s_i64(res, r, 1);
        w->pending = s_i64(res, r, 2);
        w->queued = s_i64(res, r, 3);
        w->in_flight = s_i64(res, r, 4);
        w->succeeded = s_i64(res, r, 5);
        w->failed = s_i64(res, r, 6);
        w->timed_out = s_i64(res, r, 7);
        w->cancelled = s_i64(res, r, 8);
        c->sent[k] = s_i64(res, r, 9);
        c->rolled_back[k] = s_i64(res, r, 10);
        c->rb_queued += s_i64(res, r, 11);
        c->rb_in_flight += s_i64(res, r, 12);
        c->rb_succeeded += s_i64(res, r, 13);
        c->rb_failed += s_i64(res, r, 14);
        c->in_flight_total += w->in_flight;
    }
    PQclear(res);
    return true;
}

/* ---- rollout JSON ---- */

#define S_ROLLOUT_COLS                                                                             \
    "id, firmware, spec::text, state, reason, current_wave, targeted, created_ms, started_ms,"     \
    " stopped_ms, finished_ms, seq, paused_by"

static json_t *s_rollout_json(ota_t *self, PGresult *res, int r, bool with_waves)
{
    json_error_t jerr;
    json_t *o = json_loads(PQgetvalue(res, r, 2), 0, &jerr);
    if (!o)
        o = json_object();
    json_object_set_new(o, "id", json_string(PQgetvalue(res, r, 0)));
    json_object_set_new(o, "state", json_string(PQgetvalue(res, r, 3)));
    json_object_set_new(o, "reason",
                        *PQgetvalue(res, r, 4) ? json_string(PQgetvalue(res, r, 4)) : json_null());
    json_object_set_new(o, "currentWave", json_integer(s_i64(res, r, 5)));
    json_object_set_new(o, "targeted", json_integer(s_i64(res, r, 6)));
    json_object_set_new(o, "createdAt", json_integer(s_i64(res, r, 7)));
    json_object_set_new(o, "startedAt", s_ms_or_null(res, r, 8));
    json_object_set_new(o, "stoppedAt", s_ms_or_null(res, r, 9));
    json_object_set_new(o, "finishedAt", s_ms_or_null(res, r, 10));
    s_counts_t c;
    char err[256];
    if (!with_waves || !s_load_counts(self, PQgetvalue(res, r, 0), &c, err, sizeof err))
        return o;
    json_t *waves = json_array();
    json_int_t t[6] = {0};
    int current = (int)s_i64(res, r, 5);
    for (int k = 0; k < c.n; k++) {
        ota_wave_t *w = &c.w[k];
        const char *ws = k > current                                      ? "pending"
                         : (w->pending || w->queued || w->in_flight) != 0 ? "running"
                                                                          : "done";
        json_array_append_new(
            waves,
            json_pack("{s:i,s:f,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:s,s:o}", "index", k, "percent",
                      c.percent[k], "targeted", (json_int_t)w->targeted, "sent",
                      (json_int_t)c.sent[k], "inProgress", (json_int_t)w->in_flight, "succeeded",
                      (json_int_t)w->succeeded, "failed", (json_int_t)w->failed, "timedOut",
                      (json_int_t)w->timed_out, "cancelled", (json_int_t)w->cancelled, "rolledBack",
                      (json_int_t)c.rolled_back[k], "state", ws, "startedAt",
                      w->started_ms ? json_integer(w->started_ms) : json_null()));
        t[0] += w->targeted;
        t[1] += c.sent[k];
        t[2] += w->succeeded;
        t[3] += w->failed;
        t[4] += w->timed_out;
        t[5] += c.rolled_back[k];
    }
    json_object_set_new(o, "waves", waves);
    json_object_set_new(o, "totals",
                        json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "targeted", t[0], "sent", t[1],
                                  "succeeded", t[2], "failed", t[3], "timedOut", t[4], "rolledBack",
                                  t[5]));
    json_object_set_new(o, "rollback",
                        json_pack("{s:I,s:I,s:I,s:I}", "queued", (json_int_t)c.rb_queued,
                                  "inProgress", (json_int_t)c.rb_in_flight, "succeeded",
                                  (json_int_t)c.rb_succeeded, "failed", (json_int_t)c.rb_failed));
    return o;
}

/* ---- advancing a rollout (one transaction, the rollout row locked) ---- */

static bool s_cancel_unsent(ota_t *self, const char *id, int64_t now, char *err, size_t errlen)
{
    char now_s[32];
    s_fmt_i64(now_s, sizeof now_s, now);
    const char *p[] = {id, now_s};
    PGresult *res = mh_pg_exec(self->pg, PGRES_COMMAND_OK,
                               "UPDATE ota.jobs SET status = 'cancelled', finished_ms = $2::bigint"
                               " WHERE rollout_id = $1 AND status IN ('pending', 'queued')"
                               " AND action = 'install'",
                               2, p, err, errlen);
    if (!res)
        return false;
    mh_counter_add(self->m_job_final[3], strtoull(PQcmdTuples(res), NULL, 10));
    PQclear(res);
    return true;
}

/* Every device that took the new image in this rollout gets a rollback job
 * to the version it had (once). */
static bool s_insert_rollbacks(ota_t *self, const char *id, int64_t now, char *err, size_t errlen)
{
    char now_s[32];
    s_fmt_i64(now_s, sizeof now_s, now);
    const char *p[] = {id, now_s};
    return mh_pg_ok(
        self->pg,
        "INSERT INTO ota.jobs (id, rollout_id, device_id, action, wave, rank, from_version,"
        "  to_version, status, error, created_ms, finished_ms)"
        " SELECT gen_random_uuid()::text, rollout_id, device_id, 'rollback', wave, rank,"
        "  to_version, from_version,"
        "  CASE WHEN from_version IS NULL THEN 'failed' ELSE 'queued' END,"
        "  CASE WHEN from_version IS NULL THEN 'the version before this rollout is not known'"
        "  END, $2::bigint, CASE WHEN from_version IS NULL THEN $2::bigint END"
        " FROM ota.jobs WHERE rollout_id = $1 AND action = 'install' AND status = 'succeeded'"
        " ON CONFLICT (rollout_id, device_id, action) DO NOTHING",
        2, p, err, errlen);
}

static bool s_set_state(ota_t *self, const char *id, const char *state, const char *reason,
                        const char *paused_by, int64_t now, char *err, size_t errlen)
{
    char now_s[32];
    s_fmt_i64(now_s, sizeof now_s, now);
    /* NULL reason / paused_by keep what is there. */
    const char *p[] = {id, state, reason, paused_by, now_s};
    return mh_pg_ok(self->pg,
                    "UPDATE ota.rollouts SET state = $2, reason = COALESCE($3, reason),"
                    " paused_by = COALESCE($4, paused_by), updated_ms = $5::bigint,"
                    " stopped_ms = CASE WHEN $2 IN ('paused', 'aborted', 'rolling_back')"
                    "   AND stopped_ms IS NULL THEN $5::bigint ELSE stopped_ms END,"
                    " finished_ms = CASE WHEN $2 IN ('completed', 'aborted', 'rolled_back')"
                    "   THEN $5::bigint ELSE finished_ms END"
                    " WHERE id = $1",
                    5, p, err, errlen);
}

/* Sends queued jobs to online devices (installs within the token budget,
 * rollbacks at once) and again the ones not answered within resend-after.
 * Returns the tokens left, or NAN on a database error. */
static double s_dispatch(ota_t *self, const char *id, bool installs, double tokens,
                         const ota_spec_t *spec, int64_t now, char *err, size_t errlen)
{
    char now_s[32], resend_s[32];
    s_fmt_i64(now_s, sizeof now_s, now);
    s_fmt_i64(resend_s, sizeof resend_s, now - self->cfg->resend_ms);
    const char *p[] = {id, installs ? "t" : "f", resend_s};
    PGresult *res = mh_pg_exec(
        self->pg, PGRES_TUPLES_OK,
        "SELECT j.id, j.device_id, j.action, j.to_version, j.rollout_id, f.size, f.sha256,"
        " f.signature, j.status, j.wave"
        " FROM ota.jobs j LEFT JOIN ota.firmware f ON f.version = j.to_version"
        " WHERE j.rollout_id = $1 AND ((j.status = 'queued' AND (j.action = 'rollback' OR $2))"
        "   OR (j.status = 'sent' AND j.last_sent_ms <= $3::bigint"
        "     AND (j.action = 'rollback' OR $2)))"
        " ORDER BY (j.action = 'rollback') DESC, j.rank LIMIT 20000",
        3, p, err, errlen);
    if (!res)
        return NAN;
    int rows = PQntuples(res);
    const char **ids = calloc((size_t)rows + 1, sizeof *ids);
    int *pick = calloc((size_t)rows + 1, sizeof *pick);
    size_t n = 0;
    for (int r = 0; r < rows && ids; r++) {
        if (!mh_idset_has(self->online, PQgetvalue(res, r, 1)))
            continue; /* sent when it comes online */
        bool fresh = strcmp(PQgetvalue(res, r, 8), "queued") == 0;
        bool install = strcmp(PQgetvalue(res, r, 2), "install") == 0;
        if (fresh && install) {
            if (tokens < 1)
                continue;
            tokens -= 1;
        }
        pick[n] = r;
        ids[n++] = PQgetvalue(res, r, 0);
    }
    if (n) {
        char *lit = mh_pg_text_array(ids, n);
        const char *up[] = {lit, now_s};
        bool ok = lit && mh_pg_ok(self->pg,
                                  "UPDATE ota.jobs SET status = 'sent',"
                                  " sent_ms = COALESCE(sent_ms, $2::bigint),"
                                  " last_sent_ms = $2::bigint, sends = sends + 1"
                                  " WHERE id = ANY($1::text[]) AND status IN ('queued', 'sent')",
                                  2, up, err, errlen);
        free(lit);
        if (!ok) {
            free(ids);
            free(pick);
            PQclear(res);
            return NAN;
        }
        int64_t exp_s = now / 1000 + spec->job_timeout_s + 3600;
        for (size_t i = 0; i < n; i++) {
            int r = pick[i];
            s_out_job(self, res, r, exp_s);
            bool fresh = strcmp(PQgetvalue(res, r, 8), "queued") == 0;
            bool install = strcmp(PQgetvalue(res, r, 2), "install") == 0;
            if (fresh) {
                mh_counter_inc(self->m_jobs_sent[install ? 0 : 1]);
                s_job_event(self, id, PQgetvalue(res, r, 0), PQgetvalue(res, r, 1),
                            PQgetvalue(res, r, 2), "sent", PQgetvalue(res, r, 3),
                            (int)s_i64(res, r, 9), NULL);
            } else {
                mh_counter_inc(self->m_resent);
            }
        }
    }
    free(ids);
    free(pick);
    PQclear(res);
    return tokens;
}

/* One rollout, one transaction. Returns false on a database error (rolled
 * back; the next tick tries again). */
static bool s_advance(ota_t *self, const char *id, int64_t now)
{
    char err[512];
    if (!mh_pg_begin(self->pg, err, sizeof err))
        goto fail;
    const char *p[] = {id};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT state, spec::text, current_wave, accepted_wave, tokens,"
                               " tokens_ms, firmware FROM ota.rollouts WHERE id = $1"
                               " AND state IN ('running', 'rolling_back') FOR UPDATE SKIP LOCKED",
                               1, p, err, sizeof err);
    if (!res)
        goto fail;
    if (PQntuples(res) != 1) { /* another replica has it, or it changed */
        PQclear(res);
        mh_pg_rollback(self->pg);
        return true;
    }
    char state[24], firmware[OTA_MAX_VERSION + 1];
    snprintf(state, sizeof state, "%s", PQgetvalue(res, 0, 0));
    snprintf(firmware, sizeof firmware, "%s", PQgetvalue(res, 0, 6));
    ota_spec_t spec;
    char why[256];
    int spec_rc = ota_spec_parse(PQgetvalue(res, 0, 1), &spec, why, sizeof why);
    int current = (int)s_i64(res, 0, 2), accepted = (int)s_i64(res, 0, 3);
    double tokens = strtod(PQgetvalue(res, 0, 4), NULL);
    int64_t tokens_ms = s_i64(res, 0, 5);
    PQclear(res);
    if (spec_rc < 0) {
        snprintf(err, sizeof err, "stored rollout spec unreadable: %s", why);
        goto fail;
    }
    bool rolling_back = strcmp(state, "rolling_back") == 0;
    if (rolling_back && !s_insert_rollbacks(self, id, now, err, sizeof err))
        goto fail_spec;
    s_counts_t c;
    if (!s_load_counts(self, id, &c, err, sizeof err))
        goto fail_spec;
    char now_s[32];
    s_fmt_i64(now_s, sizeof now_s, now);
    if (!rolling_back) {
        ota_decision_t d;
        ota_decide(&spec, c.w, current, accepted, now, &d);
        if (d.fail_wave >= 0) {
            if (spec.rollback_on_failure) {
                if (!s_cancel_unsent(self, id, now, err, sizeof err) ||
                    !s_set_state(self, id, "rolling_back", d.reason, NULL, now, err, sizeof err) ||
                    !s_insert_rollbacks(self, id, now, err, sizeof err))
                    goto fail_spec;
                s_rollout_event(self, id, firmware, "rolling_back", current, d.reason);
                rolling_back = true;
            } else {
                if (!s_set_state(self, id, "paused", d.reason, "gate", now, err, sizeof err))
                    goto fail_spec;
                s_rollout_event(self, id, firmware, "paused", current, d.reason);
                goto commit;
            }
        } else {
            if (d.ok_wave >= 0) {
                char k[16];
                snprintf(k, sizeof k, "%d", d.ok_wave);
                const char *up[] = {id, k, now_s};
                if (!mh_pg_ok(self->pg,
                              "UPDATE ota.waves SET ok_ms = $3::bigint"
                              " WHERE rollout_id = $1 AND idx = $2::int",
                              3, up, err, sizeof err))
                    goto fail_spec;
            }
            if (d.start_wave >= 0) {
                char k[16];
                snprintf(k, sizeof k, "%d", d.start_wave);
                const char *up[] = {id, k, now_s};
                if (!mh_pg_ok(self->pg,
                              "UPDATE ota.waves SET started_ms = $3::bigint"
                              " WHERE rollout_id = $1 AND idx = $2::int",
                              3, up, err, sizeof err) ||
                    !mh_pg_ok(self->pg,
                              "UPDATE ota.jobs SET status = 'queued' WHERE rollout_id = $1"
                              " AND wave = $2::int AND status = 'pending'",
                              2, up, err, sizeof err) ||
                    !mh_pg_ok(self->pg,
                              "UPDATE ota.rollouts SET current_wave = $2::int,"
                              " updated_ms = $3::bigint WHERE id = $1",
                              3, up, err, sizeof err))
                    goto fail_spec;
                current = d.start_wave;
                char reason[64];
                snprintf(reason, sizeof reason, "wave %d of %d started", current + 1, spec.nwaves);
                s_rollout_event(self, id, firmware, "running", current, reason);
            } else if (d.completed) {
                if (!s_set_state(self, id, "completed", NULL, NULL, now, err, sizeof err))
                    goto fail_spec;
                s_rollout_event(self, id, firmware, "completed", current, NULL);
                goto commit;
            } else if (d.stalled) {
                char reason[160];
                snprintf(reason, sizeof reason,
                         "wave %d finished below the success threshold (%.0f%%)", current + 1,
                         100 * spec.success_threshold);
                if (!s_set_state(self, id, "paused", reason, "gate", now, err, sizeof err))
                    goto fail_spec;
                s_rollout_event(self, id, firmware, "paused", current, reason);
                goto commit;
            }
        }
    }
    /* Refill the send budget: maxPerMinute, at most one second's worth saved. */
    double rate = (double)spec.max_per_minute / 60000.0; /* per ms */
    double cap = fmax(1.0, rate * 1000.0);
    tokens = fmin(cap, tokens + rate * (double)(now - (tokens_ms ? tokens_ms : now)));
    if (!rolling_back && tokens_ms == 0)
        tokens = cap;
    tokens = s_dispatch(self, id, !rolling_back, tokens, &spec, now, err, sizeof err);
    if (isnan(tokens))
        goto fail_spec;
    char tok_s[64];
    snprintf(tok_s, sizeof tok_s, "%.6f", tokens);
    const char *tp[] = {id, tok_s, now_s};
    if (!mh_pg_ok(self->pg,
                  "UPDATE ota.rollouts SET tokens = $2::double precision, tokens_ms = $3::bigint"
                  " WHERE id = $1",
                  3, tp, err, sizeof err))
        goto fail_spec;
    if (rolling_back) {
        /* Done once every rollback job is sent and no install is still out
         * (one that succeeds late gets its rollback job on a later tick). */
        if (!s_load_counts(self, id, &c, err, sizeof err))
            goto fail_spec;
        if (c.rb_queued == 0 && c.in_flight_total == 0) {
            if (!s_set_state(self, id, "rolled_back", NULL, NULL, now, err, sizeof err))
                goto fail_spec;
            /* keep the reason the rollback started with */
            const char *rp[] = {id};
            PGresult *rr = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                                      "SELECT COALESCE(NULLIF(reason, ''), 'rolled back')"
                                      " FROM ota.rollouts WHERE id = $1",
                                      1, rp, err, sizeof err);
            if (rr) {
                s_rollout_event(self, id, firmware, "rolled_back", current,
                                PQntuples(rr) ? PQgetvalue(rr, 0, 0) : "");
                PQclear(rr);
            }
        }
    }
commit:
    ota_spec_clear(&spec);
    if (!mh_pg_commit(self->pg, err, sizeof err))
        goto fail;
    s_out_flush(self);
    return true;
fail_spec:
    ota_spec_clear(&spec);
fail:
    mh_pg_rollback(self->pg);
    s_out_discard(self);
    if (!mh_pg_retryable(self->pg)) {
        mh_counter_inc(self->m_db_errors);
        mh_log_limited(&self->rl_db, MH_LOG_ERROR, "advancing rollout %s failed: %s", id, err);
    }
    return false;
}

static void s_sweep_timeouts(ota_t *self, int64_t now)
{
    char now_s[32], err[512];
    s_fmt_i64(now_s, sizeof now_s, now);
    const char *p[] = {now_s};
    PGresult *res =
        mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                   "UPDATE ota.jobs j SET status = 'timed_out', finished_ms = $1::bigint"
                   " FROM ota.rollouts r WHERE j.rollout_id = r.id"
                   " AND j.status IN ('sent', 'downloading', 'installing')"
                   " AND j.sent_ms <= $1::bigint - (r.spec->>'jobTimeoutSeconds')::bigint * 1000"
                   " RETURNING j.id, j.rollout_id, j.device_id, j.action, j.to_version, j.wave",
                   1, p, err, sizeof err);
    if (!res) {
        if (!mh_pg_retryable(self->pg))
            mh_log_limited(&self->rl_db, MH_LOG_ERROR, "job timeout sweep failed: %s", err);
        return;
    }
    for (int r = 0; r < PQntuples(res); r++)
        s_job_event(self, PQgetvalue(res, r, 1), PQgetvalue(res, r, 0), PQgetvalue(res, r, 2),
                    PQgetvalue(res, r, 3), "timed_out", PQgetvalue(res, r, 4),
                    (int)s_i64(res, r, 5), "no answer within the job timeout");
    PQclear(res);
    s_out_flush(self);
}

/* ---- targets: the devices a scheduled rollout covers, from twin ---- */

static void s_res_clear(ota_t *self)
{
    for (size_t i = 0; i < self->res.n; i++) {
        free(self->res.ids[i]);
        free(self->res.fw[i]);
    }
    free(self->res.ids);
    free(self->res.fw);
    ota_spec_clear(&self->res.spec);
    memset(&self->res, 0, sizeof self->res);
}

static void s_res_request(ota_t *self)
{
    snprintf(self->res.req_id, sizeof self->res.req_id, "ota-%" PRIu64, ++self->seq);
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.request_id = self->res.req_id;
    q.method = MH__TWIN_REQUEST__METHOD__LIST_DEVICES;
    q.cursor = self->res.cursor;
    q.limit = S_PAGE;
    q.firmware = self->res.spec.target_firmware;
    q.deadline_ms = mh_now_ms() + S_RPC_TIMEOUT;
    char *tags[64];
    size_t nt = 0;
    const char *key;
    json_t *v;
    json_object_foreach(self->res.spec.target_tags, key, v)
    {
        if (nt == 64)
            break;
        if (asprintf(&tags[nt], "%s:%s", key, json_string_value(v)) < 0)
            break;
        nt++;
    }
    q.tags = tags;
    q.n_tags = nt;
    mh_envelope_send(self->dealer, NULL, "twin.request", NULL, &q.base, true);
    for (size_t i = 0; i < nt; i++)
        free(tags[i]);
    self->res.sent_ms = mh_mono_ms();
}

static void s_res_start(ota_t *self)
{
    char err[512];
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT id, spec::text FROM ota.rollouts WHERE state = 'scheduled'"
                               " ORDER BY seq LIMIT 1",
                               0, NULL, err, sizeof err);
    if (!res)
        return;
    if (PQntuples(res) == 1) {
        char why[256];
        if (ota_spec_parse(PQgetvalue(res, 0, 1), &self->res.spec, why, sizeof why) == 0) {
            self->res.active = true;
            snprintf(self->res.rollout, sizeof self->res.rollout, "%s", PQgetvalue(res, 0, 0));
            s_res_request(self);
        }
    }
    PQclear(res);
}

static char *s_int_array(const int *v, size_t n)
{
    char *s = malloc(n * 12 + 3), *p = s;
    if (!s)
        return NULL;
    *p++ = '{';
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, i ? ",%d" : "%d", v[i]);
    *p++ = '}';
    *p = 0;
    return s;
}

/* All pages are in: order the devices, place them in waves, create the
 * jobs and start the rollout, if it is still scheduled. */
static void s_res_finish(ota_t *self)
{
    char err[512], now_s[32];
    int64_t now = mh_now_ms();
    s_fmt_i64(now_s, sizeof now_s, now);
    const char *id = self->res.rollout;
    size_t n = self->res.n;
    ota_order_devices(self->res.ids, self->res.fw, n);
    int *waves = calloc(n + 1, sizeof *waves), *ranks = calloc(n + 1, sizeof *ranks);
    int64_t sizes[OTA_MAX_WAVES] = {0};
    for (size_t i = 0; i < n && waves && ranks; i++) {
        waves[i] = ota_wave_of(&self->res.spec, i, n);
        ranks[i] = (int)i;
        sizes[waves[i]]++;
    }
    char *ids = mh_pg_text_array((const char *const *)self->res.ids, n);
    char *fws = mh_pg_text_array((const char *const *)self->res.fw, n); /* NULL: unknown */
    char *wv = waves ? s_int_array(waves, n) : NULL, *rk = ranks ? s_int_array(ranks, n) : NULL;
    free(waves);
    free(ranks);
    bool ok = ids && fws && wv && rk && mh_pg_begin(self->pg, err, sizeof err);
    if (!ok)
        goto done;
    const char *p[] = {id};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT firmware FROM ota.rollouts WHERE id = $1"
                               " AND state = 'scheduled' FOR UPDATE",
                               1, p, err, sizeof err);
    if (!res || PQntuples(res) != 1) {
        if (res)
            PQclear(res);
        ok = res != NULL; /* paused, aborted or taken by another replica: nothing to do */
        mh_pg_rollback(self->pg);
        goto done;
    }
    char firmware[OTA_MAX_VERSION + 1];
    snprintf(firmware, sizeof firmware, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    for (int k = 0; k < self->res.spec.nwaves && ok; k++) {
        char idx[16], pct[32], size[32];
        snprintf(idx, sizeof idx, "%d", k);
        snprintf(pct, sizeof pct, "%.17g", self->res.spec.percents[k]);
        s_fmt_i64(size, sizeof size, sizes[k]);
        const char *wp[] = {id, idx, pct, size};
        ok = mh_pg_ok(self->pg,
                      "INSERT INTO ota.waves (rollout_id, idx, percent, size)"
                      " VALUES ($1, $2::int, $3::double precision, $4::int)"
                      " ON CONFLICT (rollout_id, idx) DO UPDATE SET size = EXCLUDED.size",
                      4, wp, err, sizeof err);
    }
    char n_s[32];
    s_fmt_i64(n_s, sizeof n_s, (int64_t)n);
    const char *jp[] = {id, firmware, now_s, ids, wv, rk, fws};
    ok = ok &&
         mh_pg_ok(self->pg,
                  "INSERT INTO ota.jobs (id, rollout_id, device_id, action, wave, rank,"
                  " from_version, to_version, status, created_ms)"
                  " SELECT gen_random_uuid()::text, $1, d, 'install', w, r, f, $2, 'pending',"
                  " $3::bigint FROM unnest($4::text[], $5::int[], $6::int[], $7::text[])"
                  " AS u(d, w, r, f)",
                  7, jp, err, sizeof err) &&
         mh_pg_ok(self->pg,
                  "UPDATE ota.rollouts SET state = CASE WHEN $3::int = 0 THEN 'completed'"
                  " ELSE 'running' END, reason = CASE WHEN $3::int = 0 THEN"
                  " 'no device matches the target' ELSE '' END, targeted = $3::int,"
                  " started_ms = $2::bigint, updated_ms = $2::bigint,"
                  " finished_ms = CASE WHEN $3::int = 0 THEN $2::bigint END WHERE id = $1",
                  3, (const char *[]){id, now_s, n_s}, err, sizeof err);
    if (ok && (ok = mh_pg_commit(self->pg, err, sizeof err))) {
        mh_info("rollout %s: %zu devices targeted", id, n);
        s_rollout_event(self, id, firmware, n ? "running" : "completed", -1,
                        n ? NULL : "no device matches the target");
        s_out_flush(self);
    } else {
        mh_pg_rollback(self->pg);
        s_out_discard(self);
    }
done:
    if (!ok) {
        mh_counter_inc(self->m_db_errors);
        mh_log_limited(&self->rl_db, MH_LOG_ERROR, "starting rollout %s failed: %s", id,
                       ids && fws && wv && rk ? err : "out of memory");
    }
    free(ids);
    free(fws);
    free(wv);
    free(rk);
    s_res_clear(self);
}

static void s_on_twin_reply(ota_t *self)
{
    zframe_t *f = zframe_recv(self->dealer);
    if (!f)
        return;
    Mh__Envelope *env = mh_envelope_unpack(f);
    zframe_destroy(&f);
    Mh__TwinReply *r = NULL;
    if (env && strcmp(env->type, "twin.reply") == 0)
        r = mh__twin_reply__unpack(NULL, env->body.len, env->body.data);
    mh_envelope_free(&env);
    if (!r || !self->res.active || strcmp(r->request_id, self->res.req_id) != 0) {
        if (r)
            mh__twin_reply__free_unpacked(r, NULL);
        return;
    }
    json_error_t jerr;
    json_t *body =
        r->status == 200 ? mh_json_loads(r->body_json, 0, MH_JSON_MAX_DEPTH, &jerr) : NULL;
    json_t *items = json_object_get(body, "items");
    if (!json_is_array(items)) {
        mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                       "twin cannot list the rollout's devices yet (%u %s); asking again",
                       r->status, r->message);
        self->res.sent_ms = mh_mono_ms() - S_RPC_TIMEOUT + 1000;
        json_decref(body);
        mh__twin_reply__free_unpacked(r, NULL);
        return;
    }
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        const char *id = json_string_value(json_object_get(it, "id"));
        const char *fw = json_string_value(json_object_get(it, "firmware"));
        if (!id || (fw && strcmp(fw, self->res.spec.firmware) == 0))
            continue; /* already on the version this rollout installs */
        if (self->res.n == self->res.cap) {
            size_t cap = self->res.cap ? self->res.cap * 2 : 1024;
            char **a = realloc(self->res.ids, cap * sizeof *a);
            if (a)
                self->res.ids = a;
            char **b = a ? realloc(self->res.fw, cap * sizeof *b) : NULL;
            if (b)
                self->res.fw = b;
            if (!a || !b)
                break;
            self->res.cap = cap;
        }
        self->res.ids[self->res.n] = strdup(id);
        self->res.fw[self->res.n] = fw && ota_name_valid(fw) ? strdup(fw) : NULL;
        self->res.n++;
    }
    const char *next = json_string_value(json_object_get(body, "next"));
    if (next) {
        snprintf(self->res.cursor, sizeof self->res.cursor, "%s", next);
        s_res_request(self);
    } else {
        s_res_finish(self);
    }
    json_decref(body);
    mh__twin_reply__free_unpacked(r, NULL);
}

static void s_tick(ota_t *self)
{
    int64_t t0 = mh_mono_ms(), now = mh_now_ms();
    char err[512];
    s_sweep_timeouts(self, now);
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT id FROM ota.rollouts"
                               " WHERE state IN ('running', 'rolling_back') ORDER BY seq",
                               0, NULL, err, sizeof err);
    if (res) {
        for (int r = 0; r < PQntuples(res); r++)
            s_advance(self, PQgetvalue(res, r, 0), now);
        PQclear(res);
    }
    if (!self->res.active)
        s_res_start(self);
    else if (mh_mono_ms() - self->res.sent_ms > S_RPC_TIMEOUT)
        s_res_request(self); /* the page was lost, or twin is away: ask again */
    mh_histogram_observe(self->m_tick_ms, (double)(mh_mono_ms() - t0));
}

/* ---- status messages from devices ---- */

typedef struct {
    char job[72], device[MH_MAX_DEVICE_ID + 1], state[16], error[1025];
    int rank, progress; /* progress -1 = absent */
    int64_t ts;
} s_status_t;

static void s_free_item(void **item)
{
    free(*item);
    *item = NULL;
}

/* Applies a batch of status messages in one statement. 0, -EAGAIN (retry),
 * -EIO (database lost: keep the messages). */
static int s_status_batch(ota_t *self, zmsg_t **msgs, size_t n)
{
    zhashx_t *by_job = zhashx_new();
    zhashx_set_destructor(by_job, s_free_item);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        zframe_t *f = zmsg_first(msgs[i]);
        Mh__Envelope *env = f ? mh_envelope_unpack(f) : NULL;
        Mh__DeviceMessage *m = NULL;
        if (env && strcmp(env->type, "device.message") == 0)
            m = mh__device_message__unpack(NULL, env->body.len, env->body.data);
        ota_status_msg_t sm;
        if (!m || m->kind != MH__DEVICE_MESSAGE__KIND__OTA_STATUS ||
            !mh_device_id_valid(m->device_id, strlen(m->device_id)) ||
            ota_status_parse((const char *)m->payload.data, m->payload.len, &sm) < 0) {
            bad++;
        } else {
            s_status_t *st = zhashx_lookup(by_job, sm.job);
            if (!st || sm.rank >= st->rank) {
                s_status_t *nw = calloc(1, sizeof *nw);
                if (nw) {
                    snprintf(nw->job, sizeof nw->job, "%s", sm.job);
                    snprintf(nw->device, sizeof nw->device, "%s", m->device_id);
                    snprintf(nw->state, sizeof nw->state, "%s", sm.state);
                    snprintf(nw->error, sizeof nw->error, "%s", sm.error);
                    nw->rank = sm.rank;
                    nw->progress = sm.progress;
                    nw->ts = m->received_ms ? m->received_ms : mh_now_ms();
                    zhashx_update(by_job, sm.job, nw);
                }
            }
        }
        if (m)
            mh__device_message__free_unpacked(m, NULL);
        mh_envelope_free(&env);
    }
    if (bad) {
        mh_counter_add(self->m_status[2], bad);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "%zu malformed OTA status messages ignored",
                       bad);
    }
    json_t *arr = json_array();
    for (s_status_t *st = zhashx_first(by_job); st; st = zhashx_next(by_job))
        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:s,s:o,s:o,s:I,s:i}", "id", st->job, "device", st->device,
                           "state", st->state, "progress",
                           st->progress >= 0 ? json_integer(st->progress) : json_null(), "error",
                           *st->error ? json_string(st->error) : json_null(), "ts",
                           (json_int_t)st->ts, "rk", st->rank));
    size_t distinct = zhashx_size(by_job);
    zhashx_destroy(&by_job);
    if (!distinct) {
        json_decref(arr);
        return 0;
    }
    char *text = s_dumps(arr);
    json_decref(arr);
    char err[512];
    const char *p[] = {text};
    PGresult *res = mh_pg_exec(
        self->pg, PGRES_TUPLES_OK,
        "UPDATE ota.jobs j SET status = u.state,"
        " progress = GREATEST(j.progress, COALESCE(u.progress, j.progress)),"
        " error = COALESCE(u.error, j.error), answered_ms = COALESCE(j.answered_ms, u.ts),"
        " finished_ms = CASE WHEN u.rk = 3 THEN u.ts ELSE j.finished_ms END"
        " FROM jsonb_to_recordset($1::jsonb) AS u(id text, device text, state text,"
        "   progress int, error text, ts bigint, rk int)"
        " WHERE j.id = u.id AND j.device_id = u.device"
        " AND j.status IN ('sent', 'downloading', 'installing')"
        " AND u.rk >= CASE j.status WHEN 'sent' THEN 0 WHEN 'downloading' THEN 1 ELSE 2 END"
        " RETURNING j.id, j.rollout_id, j.device_id, j.action, j.status, j.to_version, j.wave,"
        " j.error",
        1, p, err, sizeof err);
    free(text);
    if (!res) {
        if (mh_pg_lost(self->pg))
            return -EIO;
        if (mh_pg_retryable(self->pg))
            return -EAGAIN;
        mh_counter_inc(self->m_db_errors);
        mh_log_limited(&self->rl_db, MH_LOG_ERROR, "OTA status batch refused: %s", err);
        return 0;
    }
    int rows = PQntuples(res);
    for (int r = 0; r < rows; r++)
        s_job_event(self, PQgetvalue(res, r, 1), PQgetvalue(res, r, 0), PQgetvalue(res, r, 2),
                    PQgetvalue(res, r, 3), PQgetvalue(res, r, 4), PQgetvalue(res, r, 5),
                    (int)s_i64(res, r, 6), PQgetisnull(res, r, 7) ? NULL : PQgetvalue(res, r, 7));
    mh_counter_add(self->m_status[0], (uint64_t)rows);
    if ((size_t)rows < distinct)
        mh_counter_add(self->m_status[1], distinct - (size_t)rows);
    PQclear(res);
    s_out_flush(self);
    return 0;
}

/* Reads up to 1,000 status messages, unless some are still held. */
static void s_read_status(ota_t *self)
{
    while (self->npending < 1000 && (zsock_events(self->pull) & ZMQ_POLLIN)) {
        zmsg_t *m = zmsg_recv(self->pull);
        if (!m)
            break;
        self->pending[self->npending++] = m;
    }
}

/* Applies the held messages; keeps them while the database is away. */
static void s_run_status(ota_t *self)
{
    if (!self->npending || !mh_pg_ready(self->pg))
        return;
    int rc, tries = 0;
    do
        rc = s_status_batch(self, self->pending, self->npending);
    while (rc == -EAGAIN && ++tries < 5);
    if (rc == -EIO) {
        mh_log_limited(&self->rl_db, MH_LOG_WARN,
                       "database lost; holding %zu OTA status messages until it is back",
                       self->npending);
        return;
    }
    for (size_t i = 0; i < self->npending; i++)
        zmsg_destroy(&self->pending[i]);
    self->npending = 0;
}

/* ---- RPC ---- */

typedef struct {
    Mh__OtaReply rep;
    char msg[512];
    char *body;
} s_reply_t;

static void s_fail(s_reply_t *r, uint32_t status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void s_fail(s_reply_t *r, uint32_t status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    r->rep.status = status;
    r->rep.error_code = (char *)code;
    r->rep.message = r->msg;
}

static void s_ok_json(s_reply_t *r, uint32_t status, json_t *body)
{
    r->rep.status = status;
    free(r->body);
    r->body = s_dumps(body);
    r->rep.body_json = r->body ? r->body : "";
    json_decref(body);
}

static void s_db_fail(ota_t *self, s_reply_t *r, const char *err)
{
    mh_counter_inc(self->m_db_errors);
    mh_log_limited(&self->rl_db, MH_LOG_ERROR, "database error: %s", err);
    if (mh_pg_lost(self->pg))
        s_fail(r, 503, "unavailable", "the database is unavailable; try again");
    else
        s_fail(r, 500, "internal", "database error");
}

static uint32_t s_limit(const Mh__OtaRequest *q, s_reply_t *r)
{
    if (q->limit > 1000) {
        s_fail(r, 400, "bad_request", "\"limit\" is at most 1000");
        return 0;
    }
    return q->limit ? q->limit : 100;
}

static bool s_rollout_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 40)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)id[i]) && id[i] != '-')
            return false;
    return true;
}

#define S_FIRMWARE_COLS "version, hardware, size, sha256, signature, created_ms"

static json_t *s_firmware_json(PGresult *res, int r)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:s,s:I}", "version", PQgetvalue(res, r, 0), "hardware",
                     PQgetvalue(res, r, 1), "size", (json_int_t)s_i64(res, r, 2), "sha256",
                     PQgetvalue(res, r, 3), "signature", PQgetvalue(res, r, 4), "created",
                     (json_int_t)s_i64(res, r, 5));
}

static void s_rpc_upload(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    if (!self->signer)
        return s_fail(r, 503, "unavailable",
                      "no signing key is configured (--signing-key); firmware cannot be signed");
    if (!ota_name_valid(q->version))
        return s_fail(r, 400, "bad_request",
                      "\"version\" is required: 1-64 of A-Z a-z 0-9 . _ + -");
    if (!ota_name_valid(q->hardware))
        return s_fail(r, 400, "bad_request",
                      "\"hardware\" is required: 1-64 of A-Z a-z 0-9 . _ + -");
    if (q->image.len == 0)
        return s_fail(r, 400, "bad_request", "the image is empty");
    if ((int64_t)q->image.len > self->cfg->max_image)
        return s_fail(r, 413, "too_large", "the image is over %" PRId64 " bytes",
                      self->cfg->max_image);
    char sha[65], sig[128], size[32], now_s[32], err[512];
    ota_sha256_hex(q->image.data, q->image.len, sha);
    if (ota_sign(self->signer, q->image.data, q->image.len, sig, sizeof sig) < 0)
        return s_fail(r, 500, "internal", "signing failed");
    s_fmt_i64(size, sizeof size, (int64_t)q->image.len);
    s_fmt_i64(now_s, sizeof now_s, mh_now_ms());
    const char *p[] = {q->version, q->hardware, size, sha, sig, (const char *)q->image.data, now_s};
    int lengths[] = {0, 0, 0, 0, 0, (int)q->image.len, 0};
    int formats[] = {0, 0, 0, 0, 0, 1, 0};
    PGresult *res = mh_pg_exec_bin(
        self->pg, PGRES_TUPLES_OK,
        "INSERT INTO ota.firmware (version, hardware, size, sha256, signature, image, created_ms)"
        " VALUES ($1, $2, $3::bigint, $4, $5, $6, $7::bigint) ON CONFLICT (version) DO NOTHING"
        " RETURNING " S_FIRMWARE_COLS,
        7, p, lengths, formats, 0, err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    if (PQntuples(res) != 1) {
        PQclear(res);
        return s_fail(r, 409, "conflict", "firmware %s already exists; a version is uploaded once",
                      q->version);
    }
    mh_info("firmware %s (%s) uploaded: %zu bytes, sha256 %s", q->version, q->hardware,
            q->image.len, sha);
    s_ok_json(r, 201, s_firmware_json(res, 0));
    PQclear(res);
}

static void s_rpc_list_firmware(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    uint32_t limit = s_limit(q, r);
    if (!limit)
        return;
    char lim[16], err[512];
    snprintf(lim, sizeof lim, "%u", limit + 1);
    const char *p[] = {*q->cursor ? q->cursor : NULL, lim};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT " S_FIRMWARE_COLS " FROM ota.firmware"
                               " WHERE ($1::text IS NULL OR version > $1) ORDER BY version"
                               " LIMIT $2::int",
                               2, p, err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    json_t *items = json_array();
    int rows = PQntuples(res);
    for (int i = 0; i < rows && (uint32_t)i < limit; i++)
        json_array_append_new(items, s_firmware_json(res, i));
    json_t *next =
        (uint32_t)rows > limit ? json_string(PQgetvalue(res, (int)limit - 1, 0)) : json_null();
    PQclear(res);
    s_ok_json(r, 200, json_pack("{s:o,s:o}", "items", items, "next", next));
}

static void s_rpc_get_firmware(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    if (!ota_name_valid(q->version))
        return s_fail(r, 404, "not_found", "no firmware \"%.64s\"", q->version);
    char err[512];
    const char *p[] = {q->version};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT " S_FIRMWARE_COLS " FROM ota.firmware WHERE version = $1", 1,
                               p, err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    if (PQntuples(res) == 1)
        s_ok_json(r, 200, s_firmware_json(res, 0));
    else
        s_fail(r, 404, "not_found", "no firmware %s", q->version);
    PQclear(res);
}

static void s_rpc_signing_key(ota_t *self, s_reply_t *r)
{
    if (!self->signer)
        return s_fail(r, 503, "unavailable", "no signing key is configured (--signing-key)");
    s_ok_json(r, 200,
              json_pack("{s:s,s:s}", "algorithm", "Ed25519", "publicKey",
                        ota_signer_public_pem(self->signer)));
}

static void s_reply_rollout(ota_t *self, const char *id, uint32_t status, s_reply_t *r)
{
    char err[512];
    const char *p[] = {id};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT " S_ROLLOUT_COLS " FROM ota.rollouts WHERE id = $1", 1, p,
                               err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    if (PQntuples(res) == 1)
        s_ok_json(r, status, s_rollout_json(self, res, 0, true));
    else
        s_fail(r, 404, "not_found", "no rollout %s", id);
    PQclear(res);
}

static void s_rpc_create_rollout(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    ota_spec_t spec;
    char why[256], err[512], now_s[32];
    if (ota_spec_parse(q->body_json, &spec, why, sizeof why) < 0)
        return s_fail(r, 400, "bad_request", "%s", why);
    json_t *norm = ota_spec_json(&spec);
    char *text = s_dumps(norm);
    json_decref(norm);
    s_fmt_i64(now_s, sizeof now_s, mh_now_ms());
    const char *p[] = {spec.firmware, text, now_s};
    bool ok = text && mh_pg_begin(self->pg, err, sizeof err);
    PGresult *res = NULL;
    if (ok) {
        res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                         "INSERT INTO ota.rollouts (id, firmware, spec, state, created_ms,"
                         " updated_ms) SELECT gen_random_uuid()::text, version, $2::jsonb,"
                         " 'scheduled', $3::bigint, $3::bigint FROM ota.firmware"
                         " WHERE version = $1 RETURNING id",
                         3, p, err, sizeof err);
        ok = res != NULL;
    }
    char id[48] = "";
    if (ok && PQntuples(res) == 1) {
        snprintf(id, sizeof id, "%s", PQgetvalue(res, 0, 0));
        for (int k = 0; k < spec.nwaves && ok; k++) {
            char idx[16], pct[32];
            snprintf(idx, sizeof idx, "%d", k);
            snprintf(pct, sizeof pct, "%.17g", spec.percents[k]);
            const char *wp[] = {id, idx, pct};
            ok = mh_pg_ok(self->pg,
                          "INSERT INTO ota.waves (rollout_id, idx, percent)"
                          " VALUES ($1, $2::int, $3::double precision)",
                          3, wp, err, sizeof err);
        }
    }
    if (res)
        PQclear(res);
    if (ok && !*id) {
        mh_pg_rollback(self->pg);
        s_fail(r, 404, "not_found", "no firmware %s; upload it first", spec.firmware);
    } else if (ok && mh_pg_commit(self->pg, err, sizeof err)) {
        s_rollout_event(self, id, spec.firmware, "scheduled", -1, NULL);
        mh_counter_inc(self->m_rollouts[0]);
        s_out_flush(self);
        s_reply_rollout(self, id, 201, r);
    } else {
        mh_pg_rollback(self->pg);
        s_db_fail(self, r, text ? err : "out of memory");
    }
    free(text);
    ota_spec_clear(&spec);
}

static void s_rpc_list_rollouts(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    uint32_t limit = s_limit(q, r);
    if (!limit)
        return;
    char *end = NULL;
    if (*q->cursor && (strtoll(q->cursor, &end, 10) <= 0 || *end))
        return s_fail(r, 400, "bad_request", "\"cursor\" is not one this API returned");
    char lim[16], err[512];
    snprintf(lim, sizeof lim, "%u", limit + 1);
    const char *p[] = {*q->cursor ? q->cursor : NULL, *q->state ? q->state : NULL, lim};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT " S_ROLLOUT_COLS " FROM ota.rollouts"
                               " WHERE ($1::bigint IS NULL OR seq < $1::bigint)"
                               " AND ($2::text IS NULL OR state = $2)"
                               " ORDER BY seq DESC LIMIT $3::int",
                               3, p, err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    json_t *items = json_array();
    int rows = PQntuples(res);
    for (int i = 0; i < rows && (uint32_t)i < limit; i++)
        json_array_append_new(items, s_rollout_json(self, res, i, true));
    json_t *next =
        (uint32_t)rows > limit ? json_string(PQgetvalue(res, (int)limit - 1, 11)) : json_null();
    PQclear(res);
    s_ok_json(r, 200, json_pack("{s:o,s:o}", "items", items, "next", next));
}

static void s_rpc_get_rollout(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    if (!s_rollout_id_ok(q->rollout_id))
        return s_fail(r, 404, "not_found", "no rollout \"%.40s\"", q->rollout_id);
    s_reply_rollout(self, q->rollout_id, 200, r);
}

/* pause, resume, abort, rollback */
static void s_rpc_control(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    const char *id = q->rollout_id;
    if (!s_rollout_id_ok(id))
        return s_fail(r, 404, "not_found", "no rollout \"%.40s\"", id);
    char err[512];
    int64_t now = mh_now_ms();
    if (!mh_pg_begin(self->pg, err, sizeof err))
        return s_db_fail(self, r, err);
    const char *p[] = {id};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT state, firmware, paused_by, current_wave,"
                               " EXISTS (SELECT 1 FROM ota.jobs WHERE rollout_id = $1)"
                               " FROM ota.rollouts WHERE id = $1 FOR UPDATE",
                               1, p, err, sizeof err);
    if (!res) {
        mh_pg_rollback(self->pg);
        return s_db_fail(self, r, err);
    }
    if (PQntuples(res) != 1) {
        PQclear(res);
        mh_pg_rollback(self->pg);
        return s_fail(r, 404, "not_found", "no rollout %s", id);
    }
    char state[24], firmware[OTA_MAX_VERSION + 1], paused_by[16];
    snprintf(state, sizeof state, "%s", PQgetvalue(res, 0, 0));
    snprintf(firmware, sizeof firmware, "%s", PQgetvalue(res, 0, 1));
    snprintf(paused_by, sizeof paused_by, "%s", PQgetvalue(res, 0, 2));
    int current = (int)s_i64(res, 0, 3);
    bool has_jobs = strcmp(PQgetvalue(res, 0, 4), "t") == 0;
    PQclear(res);
    const char *to = NULL, *reason = NULL, *by = NULL;
    bool ok = true, cancel = false;
    switch (q->method) {
    case MH__OTA_REQUEST__METHOD__PAUSE_ROLLOUT:
        if (strcmp(state, "running") == 0 || strcmp(state, "scheduled") == 0)
            to = "paused", reason = "paused by an operator", by = "operator";
        break;
    case MH__OTA_REQUEST__METHOD__RESUME_ROLLOUT:
        if (strcmp(state, "paused") == 0) {
            to = has_jobs ? "running" : "scheduled", reason = "", by = "";
            if (strcmp(paused_by, "gate") == 0) {
                /* The operator accepts the waves that stopped it. */
                char k[16];
                snprintf(k, sizeof k, "%d", current);
                ok = mh_pg_ok(self->pg,
                              "UPDATE ota.rollouts SET accepted_wave = $2::int WHERE id = $1", 2,
                              (const char *[]){id, k}, err, sizeof err);
            }
        }
        break;
    case MH__OTA_REQUEST__METHOD__ABORT_ROLLOUT:
        if (strcmp(state, "scheduled") == 0 || strcmp(state, "running") == 0 ||
            strcmp(state, "paused") == 0)
            to = "aborted", reason = "aborted by an operator", cancel = true;
        break;
    default: /* rollback */
        if (has_jobs && (strcmp(state, "running") == 0 || strcmp(state, "paused") == 0 ||
                         strcmp(state, "completed") == 0 || strcmp(state, "aborted") == 0))
            to = "rolling_back", reason = "rolled back by an operator", cancel = true;
        break;
    }
    if (!to) {
        mh_pg_rollback(self->pg);
        return s_fail(r, 409, "conflict", "the rollout is %s; it cannot be %s", state,
                      q->method == MH__OTA_REQUEST__METHOD__PAUSE_ROLLOUT    ? "paused"
                      : q->method == MH__OTA_REQUEST__METHOD__RESUME_ROLLOUT ? "resumed"
                      : q->method == MH__OTA_REQUEST__METHOD__ABORT_ROLLOUT  ? "aborted"
                                                                             : "rolled back");
    }
    ok = ok && (!cancel || s_cancel_unsent(self, id, now, err, sizeof err)) &&
         s_set_state(self, id, to, reason, by, now, err, sizeof err) &&
         (strcmp(to, "rolling_back") != 0 || s_insert_rollbacks(self, id, now, err, sizeof err));
    if (!ok || !mh_pg_commit(self->pg, err, sizeof err)) {
        mh_pg_rollback(self->pg);
        s_out_discard(self);
        return s_db_fail(self, r, err);
    }
    s_rollout_event(self, id, firmware, to, current, reason);
    s_out_flush(self);
    s_reply_rollout(self, id, 200, r);
}

static void s_rpc_list_jobs(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    uint32_t limit = s_limit(q, r);
    if (!limit)
        return;
    if (!s_rollout_id_ok(q->rollout_id))
        return s_fail(r, 404, "not_found", "no rollout \"%.40s\"", q->rollout_id);
    long rank = -1;
    char action[16] = "";
    if (*q->cursor && (sscanf(q->cursor, "%ld:%15[a-z]", &rank, action) != 2 || rank < 0))
        return s_fail(r, 400, "bad_request", "\"cursor\" is not one this API returned");
    char lim[16], rk[24], err[512];
    snprintf(lim, sizeof lim, "%u", limit + 1);
    snprintf(rk, sizeof rk, "%ld", rank);
    const char *p[] = {q->rollout_id,
                       *q->cursor ? rk : NULL,
                       *q->cursor ? action : NULL,
                       *q->state ? q->state : NULL,
                       *q->device_id ? q->device_id : NULL,
                       lim};
    PGresult *res = mh_pg_exec(
        self->pg, PGRES_TUPLES_OK,
        "SELECT id, device_id, action, to_version, from_version, wave, status, progress, error,"
        " sent_ms, answered_ms, finished_ms, sends, rank FROM ota.jobs WHERE rollout_id = $1"
        " AND ($2::int IS NULL OR (rank, action) > ($2::int, $3::text))"
        " AND ($4::text IS NULL OR status = $4) AND ($5::text IS NULL OR device_id = $5)"
        " ORDER BY rank, action LIMIT $6::int",
        6, p, err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    json_t *items = json_array();
    int rows = PQntuples(res);
    for (int i = 0; i < rows && (uint32_t)i < limit; i++)
        json_array_append_new(
            items,
            json_pack("{s:s,s:s,s:s,s:s,s:o,s:I,s:s,s:I,s:o,s:o,s:o,s:o,s:I}", "jobId",
                      PQgetvalue(res, i, 0), "device", PQgetvalue(res, i, 1), "action",
                      PQgetvalue(res, i, 2), "version", PQgetvalue(res, i, 3), "fromVersion",
                      s_str_or_null(res, i, 4), "wave", (json_int_t)s_i64(res, i, 5), "status",
                      PQgetvalue(res, i, 6), "progress", (json_int_t)s_i64(res, i, 7), "error",
                      s_str_or_null(res, i, 8), "sentAt", s_ms_or_null(res, i, 9), "answeredAt",
                      s_ms_or_null(res, i, 10), "finishedAt", s_ms_or_null(res, i, 11), "sends",
                      (json_int_t)s_i64(res, i, 12)));
    json_t *next = json_null();
    if ((uint32_t)rows > limit) {
        char c[64];
        snprintf(c, sizeof c, "%s:%s", PQgetvalue(res, (int)limit - 1, 13),
                 PQgetvalue(res, (int)limit - 1, 2));
        next = json_string(c);
    }
    PQclear(res);
    s_ok_json(r, 200, json_pack("{s:o,s:o}", "items", items, "next", next));
}

static void s_rpc(ota_t *self)
{
    zmsg_t *m = zmsg_recv(self->router);
    if (!m)
        return;
    int64_t t0 = mh_mono_ms();
    zframe_t *routing = zmsg_pop(m), *body = zmsg_pop(m);
    Mh__Envelope *env = body ? mh_envelope_unpack(body) : NULL;
    Mh__OtaRequest *q = NULL;
    if (env && strcmp(env->type, "ota.request") == 0)
        q = mh__ota_request__unpack(NULL, env->body.len, env->body.data);
    s_reply_t r;
    memset(&r, 0, sizeof r);
    mh__ota_reply__init(&r.rep);
    if (!q) {
        mh_counter_inc(self->m_rpc_errors);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "malformed RPC request, ignoring");
        goto done;
    }
    r.rep.request_id = q->request_id;
    if ((unsigned)q->method < S_NMETHODS)
        mh_counter_inc(self->m_rpc[q->method]);
    if (q->deadline_ms && q->deadline_ms < mh_now_ms()) {
        s_fail(&r, 504, "deadline_exceeded", "the request's deadline passed before it ran");
    } else if (!mh_pg_ready(self->pg)) {
        s_fail(&r, 503, "unavailable", "the database is unavailable; try again");
    } else {
        switch (q->method) {
        case MH__OTA_REQUEST__METHOD__UPLOAD_FIRMWARE:
            s_rpc_upload(self, q, &r);
            break;
        case MH__OTA_REQUEST__METHOD__LIST_FIRMWARE:
            s_rpc_list_firmware(self, q, &r);
            break;
        case MH__OTA_REQUEST__METHOD__GET_FIRMWARE:
            s_rpc_get_firmware(self, q, &r);
            break;
        case MH__OTA_REQUEST__METHOD__SIGNING_KEY:
            s_rpc_signing_key(self, &r);
            break;
        case MH__OTA_REQUEST__METHOD__CREATE_ROLLOUT:
            s_rpc_create_rollout(self, q, &r);
            break;
        case MH__OTA_REQUEST__METHOD__LIST_ROLLOUTS:
            s_rpc_list_rollouts(self, q, &r);
            break;
        case MH__OTA_REQUEST__METHOD__GET_ROLLOUT:
            s_rpc_get_rollout(self, q, &r);
            break;
        case MH__OTA_REQUEST__METHOD__PAUSE_ROLLOUT:
        case MH__OTA_REQUEST__METHOD__RESUME_ROLLOUT:
        case MH__OTA_REQUEST__METHOD__ABORT_ROLLOUT:
        case MH__OTA_REQUEST__METHOD__ROLLBACK_ROLLOUT:
            s_rpc_control(self, q, &r);
            break;
        case MH__OTA_REQUEST__METHOD__LIST_JOBS:
            s_rpc_list_jobs(self, q, &r);
            break;
        default:
            s_fail(&r, 400, "bad_request", "unknown method %d", (int)q->method);
            break;
        }
    }
    if (r.rep.status >= 400)
        mh_counter_inc(self->m_rpc_errors);
    mh_envelope_send(self->router, routing, "ota.reply", env->trace_id, &r.rep.base, true);
    mh_histogram_observe(self->m_rpc_ms, (double)(mh_mono_ms() - t0));
done:
    free(r.body);
    if (q)
        mh__ota_request__free_unpacked(q, NULL);
    mh_envelope_free(&env);
    zframe_destroy(&routing);
    zframe_destroy(&body);
    zmsg_destroy(&m);
}

/* ---- set-up and the loop ---- */

static void s_register_metrics(ota_t *self)
{
    mh_metrics_t *m = self->ctx->metrics;
    char labels[64];
    for (int i = 0; i < S_NMETHODS; i++) {
        snprintf(labels, sizeof labels, "method=\"%s\"", s_method_names[i]);
        self->m_rpc[i] =
            mh_metrics_counter(m, "mh_ota_rpc_requests_total", "RPC requests, by method", labels);
    }
    self->m_rpc_errors = mh_metrics_counter(m, "mh_ota_rpc_errors_total",
                                            "RPC requests answered with an error", NULL);
    static const char *actions[] = {"install", "rollback"};
    for (int i = 0; i < 2; i++) {
        snprintf(labels, sizeof labels, "action=\"%s\"", actions[i]);
        self->m_jobs_sent[i] = mh_metrics_counter(m, "mh_ota_jobs_sent_total",
                                                  "Jobs sent to devices (first time)", labels);
    }
    self->m_resent = mh_metrics_counter(
        m, "mh_ota_jobs_resent_total",
        "Jobs sent again because the device had not answered within resend-after", NULL);
    static const char *results[] = {"applied", "ignored", "malformed"};
    for (int i = 0; i < 3; i++) {
        snprintf(labels, sizeof labels, "result=\"%s\"", results[i]);
        self->m_status[i] = mh_metrics_counter(
            m, "mh_ota_status_messages_total",
            "Device OTA status messages (ignored: unknown job, or one already finished)", labels);
    }
    static const char *finals[] = {"succeeded", "failed", "timed_out", "cancelled"};
    for (int i = 0; i < 4; i++) {
        snprintf(labels, sizeof labels, "status=\"%s\"", finals[i]);
        self->m_job_final[i] = mh_metrics_counter(m, "mh_ota_jobs_finished_total",
                                                  "Jobs that reached a final status", labels);
    }
    self->m_rollouts[0] =
        mh_metrics_counter(m, "mh_ota_rollouts_created_total", "Rollouts created", NULL);
    self->m_db_errors =
        mh_metrics_counter(m, "mh_ota_db_errors_total", "Failed database statements", NULL);
    self->m_downlink_dropped = mh_metrics_counter(m, "mh_ota_downlink_dropped_total",
                                                  "Jobs no gateway could take (sent again)", NULL);
    self->m_tick_ms = mh_metrics_histogram(
        m, "mh_ota_tick_ms", "Time to advance every active rollout once, in milliseconds", NULL,
        s_ms_bounds, S_NBOUNDS);
    self->m_rpc_ms = mh_metrics_histogram(m, "mh_ota_rpc_ms", "RPC handling time, in milliseconds",
                                          NULL, s_ms_bounds, S_NBOUNDS);
    self->m_db = mh_metrics_gauge(m, "mh_ota_db_connected",
                                  "1 while connected to PostgreSQL with the schema ready", NULL);
}

static void s_destroy(ota_t **self_p)
{
    ota_t *self = *self_p;
    if (!self)
        return;
    if (self->images)
        mh_http_set_handler(self->ctx->http, NULL, NULL, NULL);
    ota_images_destroy(&self->images);
    for (size_t i = 0; i < self->npending; i++)
        zmsg_destroy(&self->pending[i]);
    s_res_clear(self);
    zlistx_destroy(&self->out);
    mh_idset_destroy(&self->online);
    ota_signer_destroy(&self->signer);
    mh_pg_destroy(&self->pg);
    mh_resolver_destroy(&self->resolver);
    mh_resolver_destroy(&self->twin_resolver);
    zsock_destroy(&self->pull);
    zsock_destroy(&self->router);
    zsock_destroy(&self->pub);
    zsock_destroy(&self->push);
    zsock_destroy(&self->dealer);
    free(self);
    *self_p = NULL;
}

static ota_t *s_new(mh_service_ctx_t *ctx)
{
    ota_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->ctx = ctx;
    self->cfg = ctx->cfg;
    if (self->cfg->tick_ms < 10)
        self->cfg->tick_ms = 10;
    self->rl_warn = (mh_ratelimit_t)MH_RATELIMIT_INIT(1000, 10);
    self->rl_db = (mh_ratelimit_t)MH_RATELIMIT_INIT(1000, 5);
    s_register_metrics(self);
    self->out = zlistx_new();
    zlistx_set_destructor(self->out, s_out_free);
    if (*self->cfg->signing_key) {
        char err[512];
        self->signer = ota_signer_load(self->cfg->signing_key, err, sizeof err);
        if (!self->signer) {
            mh_error("%s", err);
            s_destroy(&self);
            return NULL;
        }
    } else {
        mh_warn("no --signing-key: firmware uploads are refused until one is configured");
    }
    self->pg = mh_pg_new(self->cfg->pg_url, s_schema_sql, S_LOCK_MIGRATE);
    self->pull = zsock_new(ZMQ_PULL);
    zsock_set_rcvhwm(self->pull, 100000);
    self->router = zsock_new(ZMQ_ROUTER);
    zsock_set_router_mandatory(self->router, 0);
    zsock_set_rcvhwm(self->router, 1000);
    self->push = mh_push_new(self->cfg->downlink_endpoint, &self->resolver);
    self->dealer = zsock_new(ZMQ_DEALER);
    zsock_set_linger(self->dealer, 0);
    self->twin_resolver = mh_resolver_new(self->dealer, self->cfg->twin_rpc_endpoint);
    self->online =
        mh_idset_new(&(mh_idset_opts_t){.rpc_endpoint = self->cfg->twin_rpc_endpoint,
                                        .events_endpoint = self->cfg->twin_events_endpoint,
                                        .refresh_ms = self->cfg->online_refresh_ms,
                                        .online_only = true,
                                        .metric_prefix = "mh_ota_online",
                                        .what = "online devices"},
                     ctx->metrics);
    self->images = ota_images_new(self->cfg->pg_url, ctx->metrics);
    if (!self->pg || !self->push || !self->twin_resolver || !self->online || !self->images ||
        !self->out) {
        mh_error("bad settings (downlink \"%s\", twin RPC \"%s\", twin events \"%s\")",
                 self->cfg->downlink_endpoint, self->cfg->twin_rpc_endpoint,
                 self->cfg->twin_events_endpoint);
        s_destroy(&self);
        return NULL;
    }
    if (mh_curve_bind(self->pull, self->cfg->bind) < 0 ||
        mh_curve_bind(self->router, self->cfg->rpc_bind) < 0) {
        mh_error("cannot bind %s / %s: %s", self->cfg->bind, self->cfg->rpc_bind,
                 zmq_strerror(zmq_errno()));
        s_destroy(&self);
        return NULL;
    }
    if (*self->cfg->events_bind) {
        self->pub = zsock_new(ZMQ_PUB);
        zsock_set_sndhwm(self->pub, 100000);
        if (mh_curve_bind(self->pub, self->cfg->events_bind) < 0) {
            mh_error("cannot bind events on %s: %s", self->cfg->events_bind,
                     zmq_strerror(zmq_errno()));
            s_destroy(&self);
            return NULL;
        }
    }
    snprintf(self->secret, sizeof self->secret, "%s", self->cfg->url_secret);
    ota_images_set_secret(self->images, self->secret);
    mh_http_set_handler(ctx->http, "/firmware/", ota_images_handle, self->images);
    return self;
}

static void s_connect_db(ota_t *self)
{
    char err[512];
    int rc = mh_pg_connect(self->pg, err, sizeof err);
    if (rc == -EIO)
        mh_log_limited(&self->rl_db, MH_LOG_WARN, "%s; retrying", err);
    if (rc != 1)
        return;
    mh_info("connected to PostgreSQL, schema ready");
    if (*self->cfg->url_secret)
        return;
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT value FROM ota.settings WHERE key = 'url_secret'", 0, NULL,
                               err, sizeof err);
    if (res && PQntuples(res) == 1) {
        snprintf(self->secret, sizeof self->secret, "%s", PQgetvalue(res, 0, 0));
        ota_images_set_secret(self->images, self->secret);
    } else {
        mh_error("cannot read the download-link secret: %s", res ? "missing" : err);
    }
    if (res)
        PQclear(res);
}

void ota_actor(zsock_t *pipe, void *args)
{
    mh_service_ctx_t *ctx = args;
    ota_t *self = s_new(ctx);
    if (!self) {
        mh_actor_failed(pipe);
        return;
    }
    mh_resolver_refresh(self->resolver);
    mh_resolver_refresh(self->twin_resolver);
    s_connect_db(self);
    mh_actor_ready(pipe);
    int64_t next_cron = 0, next_resolve = mh_mono_ms() + self->cfg->resolve_interval_ms;
    bool stopping = false;
    while (!stopping) {
        zmq_pollitem_t items[] = {
            {zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(self->router), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(self->dealer), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(mh_idset_rpc(self->online)), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(mh_idset_events(self->online)), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(self->pull), 0, ZMQ_POLLIN, 0},
        };
        int64_t now = mh_mono_ms();
        long wait = self->next_tick > now ? (long)(self->next_tick - now) : 0;
        if (zmq_poll(items, self->npending ? 5 : 6, wait < 100 ? wait : 100) < 0 && errno != EINTR)
            break;
        if (items[0].revents & ZMQ_POLLIN) {
            char *cmd = zstr_recv(pipe);
            stopping = cmd && strcmp(cmd, "$TERM") == 0;
            zstr_free(&cmd);
        }
        s_connect_db(self);
        while (zsock_events(mh_idset_rpc(self->online)) & ZMQ_POLLIN)
            mh_idset_on_rpc(self->online);
        for (int i = 0; i < 10000 && (zsock_events(mh_idset_events(self->online)) & ZMQ_POLLIN);
             i++)
            mh_idset_on_event(self->online);
        mh_idset_tick(self->online);
        bool ready = mh_pg_ready(self->pg);
        for (int i = 0; ready && i < 16 && (zsock_events(self->router) & ZMQ_POLLIN); i++)
            s_rpc(self);
        while (ready && (zsock_events(self->dealer) & ZMQ_POLLIN))
            s_on_twin_reply(self);
        if (!self->npending)
            s_read_status(self);
        s_run_status(self);
        now = mh_mono_ms();
        if (ready && now >= self->next_tick) {
            self->next_tick = now + self->cfg->tick_ms;
            s_tick(self);
        }
        if (now >= next_cron) {
            next_cron = now + 500;
            mh_http_heartbeat(ctx->http);
            ready = mh_pg_ready(self->pg);
            mh_http_set_ready(ctx->http, ready);
            mh_gauge_set(self->m_db, ready);
        }
        if (now >= next_resolve) {
            next_resolve = now + self->cfg->resolve_interval_ms;
            mh_resolver_refresh(self->resolver);
            mh_resolver_refresh(self->twin_resolver);
        }
    }
    /* Drain: status messages already read are applied if the database
     * allows within a few seconds. */
    int64_t deadline = mh_mono_ms() + 5000;
    s_read_status(self);
    while (self->npending && mh_mono_ms() < deadline) {
        s_connect_db(self);
        s_run_status(self);
        if (self->npending)
            zclock_sleep(20);
    }
    if (self->npending)
        mh_error("stopping with %zu OTA status messages not applied (database away)",
                 self->npending);
    s_destroy(&self);
    OPENSSL_thread_stop(); /* see gw_actor: the actor thread is detached */
}
