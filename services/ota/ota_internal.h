/* ota_internal — what the ota service's files share (not a public API):
 * the service's state, what a transaction sends after COMMIT, the per-wave
 * counts, and the functions one file offers the others. The files, by
 * concern:
 *   ota_service.c  configuration, schema, metrics, set-up and the loop
 *   ota_out.c      events and jobs published after COMMIT
 *   ota_rollout.c  the rollout engine: per-wave counts, rollout JSON,
 *                  advancing a rollout (waves, gates, rate, rollback)
 *   ota_targets.c  the devices a rollout covers, from twin; the tick
 *   ota_health.c   a rollout's health gate: updated devices against control
 *   ota_status.c   jobs a gateway published (sent), and devices' OTA status
 *                  messages, applied in batches
 *   ota_jobs.c     the AWS IoT Jobs device API over the same jobs
 *   ota_rpc.c      the operator RPC methods (served by mh_rpc_server)
 *   ota_image.c    signed image downloads; ota_plan.c and ota_input.c pure
 *                  rules and parsers */
#pragma once
#include "mh_curve.h"
#include "mh_envelope.h"
#include "mh_ids.h"
#include "mh_idset.h"
#include "mh_json.h"
#include "mh_pg.h"
#include "mh_relay.h"
#include "mh_resolver.h"
#include "mh_rpc.h"
#include "mh_rpc_pg.h"
#include "mh_time.h"
#include "ota.pb-c.h"
#include "ota_image.h"
#include "ota_input.h"
#include "ota_plan.h"
#include "ota_service.h"
#include "telemetry.pb-c.h"
#include "twin.pb-c.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <openssl/crypto.h>

#define OTA_PAGE        1000
#define OTA_RPC_TIMEOUT 10000

/* a rollout's states (ota.rollouts.state), in the order of the gauges */
#define OTA_NSTATES 7
/* the reason an operator's rollback leaves (an automatic one names the
 * wave that failed); ota_rollout_gauges tells the two apart by it */
#define OTA_OPERATOR_ROLLBACK "rolled back by an operator"
extern const char *const ota_states[OTA_NSTATES];

typedef struct {
    char type[24]; /* event type, or "" for a downlink */
    zframe_t *frame;
    char job[72]; /* a downlink's job id: sent once a gateway published it */
} ota_out_t;

typedef struct {
    mh_service_ctx_t *ctx;
    ota_config_t *cfg;
    mh_pg_t *pg;
    zsock_t *pull, *router, *pub, *dealer;
    mh_relay_t *downlink; /* to the gateways, acknowledged once published */
    mh_rpc_server_t *rpc; /* on router */
    mh_resolver_t *twin_resolver;
    mh_rpc_t *twin_rpc;   /* calls that wait for their answer (a rollout's checks) */
    mh_rpc_t *ingest_rpc; /* health gates on metrics; NULL without --ingest-rpc-endpoint */
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
        json_t **tags; /* kept only when the rollout stratifies */
        size_t n, cap;
    } res;
    uint64_t seq;
    int64_t next_tick;
    zlistx_t *out;      /* ota_out_t: published after COMMIT */
    zlist_t *published; /* job ids a gateway published, not yet marked sent */
    /* relay batches of status messages waiting for the database;
     * acknowledged once applied */
    mh_relay_batch_t *pending[1000];
    size_t npending, npending_msgs;
    mh_ratelimit_t rl_warn, rl_db;
    mh_rpc_db_t db; /* pg, m_db_errors and rl_db, for the RPC methods */
    mh_counter_t *m_jobs_sent[2], *m_resent, *m_status[3], *m_job_final[4], *m_db_errors,
        *m_downlink_dropped, *m_rollouts[2];
    mh_histogram_t *m_tick_time, *m_health_time;
    mh_gauge_t *m_db, *m_online, *m_rollout_states[OTA_NSTATES], *m_stopped_by_gate;
    int64_t next_gauges;       /* mono ms */
    int64_t health_retry_mono; /* a health gate's calls failed: none before this */
} ota_t;

#define OTA_ROLLOUT_COLS                                                                           \
    "id, firmware, spec::text, state, reason, current_wave, targeted, created_ms, started_ms,"     \
    " stopped_ms, finished_ms, seq, paused_by, health::text"

/* small helpers */

static inline char *ota_dumps(json_t *v)
{
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

static inline int64_t ota_i64(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static inline json_t *ota_ms_or_null(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? json_null() : json_integer(ota_i64(res, row, col));
}

static inline json_t *ota_str_or_null(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? json_null() : json_string(PQgetvalue(res, row, col));
}

static inline void ota_fmt_i64(char *buf, size_t len, int64_t v)
{
    snprintf(buf, len, "%" PRId64, v);
}

/* ---- ota_out.c ---- */

void ota_out_free(void **item);
void ota_job_event(ota_t *self, const char *rollout, const char *job, const char *device,
                   const char *action, const char *status, const char *version, int wave,
                   const char *error);
void ota_rollout_event(ota_t *self, const char *id, const char *firmware, const char *state,
                       int wave, const char *reason);
void ota_out_flush(ota_t *self);
void ota_out_discard(ota_t *self);
void ota_out_job(ota_t *self, PGresult *res, int r, int64_t exp_s);
/* Publishes `v` (taken) on `topic` through the device's gateway; `direct`:
 * to that client alone, subscribed or not (motehub/to/, motehub_acl.c). */
void ota_out_publish(ota_t *self, const char *device, const char *topic, json_t *v, bool direct);

/* ---- ota_jobs.c ---- */

/* A device's request on $aws/things/{device}/jobs/{request}, answered on
 * its reply topics (queued in self->out), inside the caller's transaction.
 * 0, or on a database error -EIO (away), -EAGAIN (try again) or -EINVAL:
 * the caller rolls back and discards what was queued. */
int ota_jobs_request(ota_t *self, const char *device, const char *request, const uint8_t *payload,
                     size_t len);
/* Answers a request that could not be completed: InternalError. */
void ota_jobs_failed(ota_t *self, const char *device, const char *request);
/* The AWS IoT status of an ota job status (and the outcome a device gave). */
const char *ota_jobs_aws_status(const char *status, const char *outcome);
/* The AWS jobId of a rollout's install or rollback. */
void ota_jobs_id(const char *rollout, const char *action, char *out, size_t len);
/* A job's document: the rollout's own, or for firmware one Motehub builds
 * (operation, version, url, size, sha256, signature, rollout). */
json_t *ota_jobs_document(ota_t *self, const char *document, const char *action,
                          const char *version, const char *rollout, int64_t size, const char *sha,
                          const char *sig);

/* ---- ota_rollout.c ---- */

json_t *ota_rollout_json(ota_t *self, PGresult *res, int r, bool with_waves);
bool ota_cancel_unsent(ota_t *self, const char *id, int64_t now, char *err, size_t errlen);
bool ota_insert_rollbacks(ota_t *self, const char *id, int64_t now, char *err, size_t errlen);
bool ota_set_state(ota_t *self, const char *id, const char *state, const char *reason,
                   const char *paused_by, int64_t now, char *err, size_t errlen);
bool ota_advance(ota_t *self, const char *id, int64_t now);
void ota_sweep_timeouts(ota_t *self, int64_t now);
/* The rollouts by state, and those a gate stopped, into the gauges (every
 * replica reports the same database: alert on max, not sum). */
void ota_rollout_gauges(ota_t *self);

/* ---- ota_health.c ---- */

typedef struct {
    bool bad;         /* updated devices worse than control: the failure policy applies */
    bool fresh;       /* a good evaluation recent enough to promote a wave on */
    char reason[400]; /* the signal and the numbers on both sides */
} ota_health_verdict_t;

/* The health gate of a rollout whose spec has one, evaluated when due
 * (--health-interval), inside the caller's transaction. False on a
 * database error. */
bool ota_health_check(ota_t *self, const char *id, const ota_spec_t *spec, int accepted,
                      int current, int64_t now, ota_health_verdict_t *v, char *err, size_t errlen);

/* ---- ota_targets.c ---- */

void ota_res_clear(ota_t *self);
void ota_on_twin_reply(ota_t *self);
void ota_tick(ota_t *self);

/* ---- ota_status.c ---- */

void ota_read_status(ota_t *self);
void ota_run_status(ota_t *self);
/* The downlink relay's delivered callback: a job id a gateway has
 * published (the broker's PUBACK), noted for ota_jobs_sent. */
void ota_jobs_published(void *ud, const char *job);
/* Marks the noted jobs sent; kept for the next call while the database is
 * away. */
void ota_jobs_sent(ota_t *self);

/* ---- ota_rpc.c ---- */

extern const mh_rpc_service_t ota_rpc_def;
