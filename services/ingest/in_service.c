/* The ingest actor. One PostgreSQL connection writes; throughput comes
 * from group commit (every batch waiting on the socket goes into one
 * transaction) and from running more replicas. The rollup job, the
 * compression pass and the queries have connections and threads of their
 * own, so none of them holds a write up. */
#include "in_service.h"
#include "in_compress.h"
#include "in_query.h"
#include "in_rollup.h"
#include "in_kafka.h"
#include "in_store.h"
#include "mh_curve.h"
#include "mh_envelope.h"
#include "mh_pbarena.h"
#include "mh_time.h"
#include "telemetry.pb-c.h"

#include <inttypes.h>

#define S_CFG(field) offsetof(in_config_t, field)

const mh_cfg_opt_t in_config_options[] = {
    MH_CFG_COMMON(in_config_t, "127.0.0.1:9102"),
    {"pg-url", "MH_PG_URL", MH_CFG_STR, "postgresql://postgres@127.0.0.1:5433/motehub",
     S_CFG(pg_url), "PostgreSQL connection string"},
    {"bind", "MH_INGEST_BIND", MH_CFG_STR, "tcp://127.0.0.1:5560", S_CFG(bind),
     "where the ROUTER for telemetry batches binds"},
    {"events-bind", "MH_INGEST_EVENTS_BIND", MH_CFG_STR, "tcp://127.0.0.1:5572", S_CFG(events_bind),
     "where the event PUB socket binds (empty: none)"},
    {"rpc-bind", "MH_INGEST_RPC_BIND", MH_CFG_STR, "tcp://127.0.0.1:5561", S_CFG(rpc_bind),
     "where the ROUTER for telemetry queries (fleet-stats) binds (empty: none)"},
    {"kafka-brokers", "MH_KAFKA_BROKERS", MH_CFG_STR, "", S_CFG(kafka_brokers),
     "Kafka bootstrap servers for the cold path (host:port,...); empty = no cold path"},
    {"kafka-topic", "MH_KAFKA_TOPIC", MH_CFG_STR, "motehub.telemetry", S_CFG(kafka_topic),
     "topic every stored sample is produced to (key device id, value mh.Point)"},
    {"kafka-queue-max", "MH_KAFKA_QUEUE_MAX", MH_CFG_INT, "1000000", S_CFG(kafka_queue_max),
     "samples held for Kafka at most; when full, ingest holds new batches"},
    {"query-max-points", "MH_INGEST_QUERY_MAX", MH_CFG_INT, "100000", S_CFG(query_max),
     "most points one telemetry query returns"},
    {"group-max", "MH_INGEST_GROUP_MAX", MH_CFG_INT, "64", S_CFG(group_max),
     "batches committed together in one transaction at most"},
    {"commit-interval", "MH_INGEST_COMMIT_INTERVAL", MH_CFG_DURATION, "10ms",
     S_CFG(commit_interval_ms),
     "a transaction starts at most this often: batches that arrive sooner after the last one "
     "wait and are committed together (under load, fewer and larger transactions; after a "
     "quiet spell a batch is written at once)"},
    {"retention-raw", "MH_RETENTION_RAW", MH_CFG_DURATION, "7d", S_CFG(retention_raw_ms),
     "how long raw points are kept (older samples are dropped on arrival)"},
    {"retention-1m", "MH_RETENTION_1M", MH_CFG_DURATION, "90d", S_CFG(retention_1m_ms),
     "how long 1-minute rollups are kept"},
    {"retention-1h", "MH_RETENTION_1H", MH_CFG_DURATION, "730d", S_CFG(retention_1h_ms),
     "how long 1-hour rollups are kept"},
    {"rollup-interval", "MH_ROLLUP_INTERVAL", MH_CFG_DURATION, "10s", S_CFG(rollup_interval_ms),
     "how often stale rollup buckets are recomputed"},
    {"rollup-grace", "MH_ROLLUP_GRACE", MH_CFG_DURATION, "2s", S_CFG(rollup_grace_ms),
     "a minute is rolled up this long after it ends"},
    {"maintain-interval", "MH_MAINTAIN_INTERVAL", MH_CFG_DURATION, "1h",
     S_CFG(maintain_interval_ms), "how often partitions are created ahead and retention applied"},
    {"dedupe-window", "MH_DEDUPE_WINDOW", MH_CFG_DURATION, "2d", S_CFG(dedupe_ms),
     "how long committed batch ids are remembered for exactly-once"},
    {"compress-interval", "MH_COMPRESS_INTERVAL", MH_CFG_DURATION, "1m",
     S_CFG(compress_interval_ms),
     "how often sealed hours of raw telemetry are compressed into blocks (0: never)"},
    {"seal-lag", "MH_SEAL_LAG", MH_CFG_DURATION, "2h", S_CFG(seal_lag_ms),
     "an hour of raw telemetry is sealed (compressed) this long after it ends; later samples"
     " are merged into its block on the next pass"},
    {"compress-chunk", "MH_COMPRESS_CHUNK", MH_CFG_INT, "500", S_CFG(compress_chunk),
     "devices compressed in one transaction"},
    MH_CFG_END,
};

const mh_service_def_t in_service_def = {
    .name = "ingest",
    .summary = "Motehub ingest: telemetry batches into PostgreSQL, exactly once.",
    .options = in_config_options,
    .config_size = sizeof(in_config_t),
    .actor = in_actor,
};

/* seconds: 1 ms to an hour (a sample's lag can be that old) */
static const double s_bounds[] = {0.001, 0.002, 0.003, 0.005, 0.007, 0.01, 0.015, 0.02, 0.03,
                                  0.04,  0.05,  0.075, 0.1,   0.15,  0.2,  0.3,   0.5,  0.75,
                                  1,     2,     5,     10,    30,    60,   300,   3600};
#define S_NBOUNDS (sizeof s_bounds / sizeof s_bounds[0])

typedef struct {
    zframe_t *routing;
    Mh__TelemetryBatch *batch;
    char trace_id[33];
} s_req_t;

typedef struct {
    mh_service_ctx_t *ctx;
    in_config_t *cfg;
    in_store_t *store;
    in_kafka_t *kafka; /* NULL: no cold path */
    zsock_t *pipe;
    zsock_t *router, *pub;
    s_req_t *reqs;
    in_item_t *items;
    mh_pbarena_t *arena; /* the batches of the group being written */
    mh_counter_t *m_stored, *m_duplicate, *m_rejected, *m_points, *m_dropped_old, *m_commits,
        *m_db_errors, *m_malformed;
    mh_histogram_t *m_lag, *m_commit_time;
    mh_gauge_t *m_connected;
    mh_ratelimit_t rl;
} in_t;

static void s_ack(in_t *self, s_req_t *r, Mh__TelemetryAck__Status status, uint32_t stored,
                  uint32_t dropped, const char *error)
{
    Mh__TelemetryAck ack = MH__TELEMETRY_ACK__INIT;
    ack.batch_id = r->batch ? r->batch->batch_id : "";
    ack.status = status;
    ack.stored = stored;
    ack.dropped = dropped;
    ack.error = (char *)(error ? error : "");
    /* A gateway that went away leaves nothing to route to; that is fine. */
    mh_envelope_send(self->router, r->routing, "telemetry.ack", r->trace_id, &ack.base, true);
}

/* The batch stays in the arena until the group's end (mh_pbarena_reset). */
static void s_release(s_req_t *r)
{
    zframe_destroy(&r->routing);
    r->batch = NULL;
}

/* Receives one request; returns false when nothing usable was read. */
static bool s_recv(in_t *self, s_req_t *r)
{
    zmsg_t *m = zmsg_recv(self->router);
    if (!m)
        return false;
    r->routing = zmsg_pop(m);
    zframe_t *body = zmsg_pop(m);
    zmsg_destroy(&m);
    Mh__Envelope *env = body ? mh_envelope_unpack(body) : NULL;
    zframe_destroy(&body);
    r->batch = NULL;
    if (env && strcmp(env->type, "telemetry.batch") == 0)
        r->batch = mh__telemetry_batch__unpack(mh_pbarena_allocator(self->arena), env->body.len,
                                               env->body.data);
    snprintf(r->trace_id, sizeof r->trace_id, "%s", env ? env->trace_id : "");
    mh_envelope_free(&env);
    if (!r->batch || !r->batch->batch_id || !*r->batch->batch_id) {
        mh_counter_inc(self->m_malformed);
        mh_log_limited(&self->rl, MH_LOG_WARN,
                       "malformed message on the telemetry socket, ignoring");
        if (r->routing && r->batch)
            s_ack(self, r, MH__TELEMETRY_ACK__STATUS__REJECTED, 0, 0, "malformed batch");
        s_release(r);
        return false;
    }
    return true;
}

static bool s_keeps(void *store, int64_t ts_ms)
{
    return in_store_keeps(store, ts_ms);
}

static void s_account(in_t *self, s_req_t *r, in_item_t *it, int64_t now)
{
    if (it->outcome == IN_STORED) {
        mh_counter_inc(self->m_stored);
        mh_counter_add(self->m_points, it->stored);
        mh_counter_add(self->m_dropped_old, it->dropped);
        for (size_t j = 0; j < r->batch->n_points; j++)
            mh_histogram_observe_ms(self->m_lag, now - r->batch->points[j]->ts_ms);
        s_ack(self, r, MH__TELEMETRY_ACK__STATUS__STORED, it->stored, it->dropped, NULL);
    } else if (it->outcome == IN_DUPLICATE) {
        mh_counter_inc(self->m_duplicate);
        s_ack(self, r, MH__TELEMETRY_ACK__STATUS__DUPLICATE, 0, 0, NULL);
    }
}

/* Writes a group; on a data error, writes the batches one at a time so one
 * bad batch cannot hold the others back. Unacked on a database outage: the
 * gateways re-send. */
static void s_write_group(in_t *self, size_t n)
{
    char err[512];
    for (size_t i = 0; i < n; i++)
        self->items[i] = (in_item_t){.batch = self->reqs[i].batch};
    int64_t t0 = mh_mono_ms();
    int rc = in_store_write(self->store, self->items, n, err, sizeof err);
    if (rc == 0) {
        int64_t now = mh_now_ms();
        mh_histogram_observe_ms(self->m_commit_time, mh_mono_ms() - t0);
        mh_counter_inc(self->m_commits);
        Mh__TelemetryStored ev = MH__TELEMETRY_STORED__INIT;
        for (size_t i = 0; i < n; i++) {
            /* The cold path before the acknowledgement: a batch committed
             * but not handed to Kafka (told to stop while Kafka's queue was
             * full) stays unacknowledged, so the gateway re-sends it and
             * its duplicate is produced then. */
            if (self->kafka && !in_kafka_produce(self->kafka, self->reqs[i].batch,
                                                 self->items[i].outcome == IN_DUPLICATE, s_keeps,
                                                 self->store, self->pipe))
                break;
            s_account(self, &self->reqs[i], &self->items[i], now);
            if (self->items[i].outcome == IN_STORED) {
                ev.batches++;
                ev.messages += self->reqs[i].batch->messages;
                ev.points += self->items[i].stored;
                ev.dropped += self->items[i].dropped;
            }
        }
        if (self->pub && ev.batches)
            mh_event_publish(self->pub, "telemetry.stored", &ev.base);
        return;
    }
    mh_counter_inc(self->m_db_errors);
    if (rc == -EIO) {
        mh_log_limited(&self->rl, MH_LOG_ERROR, "database unavailable, batches left to re-send: %s",
                       err);
        return;
    }
    if (n == 1) {
        mh_counter_inc(self->m_rejected);
        mh_log_limited(&self->rl, MH_LOG_ERROR, "batch %s refused by the database: %s",
                       self->reqs[0].batch->batch_id, err);
        s_ack(self, &self->reqs[0], MH__TELEMETRY_ACK__STATUS__REJECTED, 0, 0, err);
        return;
    }
    s_req_t *reqs = self->reqs;
    for (size_t i = 0; i < n; i++) {
        self->reqs = &reqs[i];
        s_write_group(self, 1);
    }
    self->reqs = reqs;
}

static void s_register_metrics(in_t *self)
{
    mh_metrics_t *m = self->ctx->metrics;
    const char *bh = "Telemetry batches handled, by outcome";
    self->m_stored = mh_metrics_counter(m, "mh_ingest_batches_total", bh, "outcome=\"stored\"");
    self->m_duplicate =
        mh_metrics_counter(m, "mh_ingest_batches_total", bh, "outcome=\"duplicate\"");
    self->m_rejected = mh_metrics_counter(m, "mh_ingest_batches_total", bh, "outcome=\"rejected\"");
    self->m_points =
        mh_metrics_counter(m, "mh_ingest_points_stored_total", "Points committed", NULL);
    self->m_dropped_old = mh_metrics_counter(m, "mh_ingest_points_dropped_total",
                                             "Points not stored, by reason", "reason=\"too_old\"");
    self->m_commits =
        mh_metrics_counter(m, "mh_ingest_commits_total", "Transactions committed", NULL);
    self->m_db_errors = mh_metrics_counter(m, "mh_ingest_db_errors_total",
                                           "Failed database writes (retried or refused)", NULL);
    self->m_malformed = mh_metrics_counter(m, "mh_ingest_malformed_total",
                                           "Malformed messages on the telemetry socket", NULL);
    self->m_lag = mh_metrics_histogram(m, "mh_ingest_point_lag_seconds",
                                       "Time from a sample's timestamp to its commit, in seconds",
                                       NULL, s_bounds, S_NBOUNDS);
    self->m_commit_time = mh_metrics_histogram(m, "mh_ingest_commit_seconds",
                                               "Time to write and commit one group, in seconds",
                                               NULL, s_bounds, S_NBOUNDS);
    self->m_connected = mh_metrics_gauge(
        m, "mh_ingest_db_connected", "1 while connected to PostgreSQL with the schema ready", NULL);
}

static void s_destroy(in_t **self_p)
{
    in_t *self = *self_p;
    if (!self)
        return;
    in_kafka_destroy(&self->kafka, 30000);
    in_store_destroy(&self->store);
    zsock_destroy(&self->router);
    zsock_destroy(&self->pub);
    free(self->reqs);
    free(self->items);
    mh_pbarena_destroy(&self->arena);
    free(self);
    *self_p = NULL;
}

static in_retention_t s_retention(const in_config_t *cfg)
{
    return (in_retention_t){cfg->retention_raw_ms, cfg->retention_1m_ms, cfg->retention_1h_ms,
                            cfg->rollup_grace_ms, cfg->dedupe_ms};
}

static in_t *s_new(mh_service_ctx_t *ctx)
{
    in_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->ctx = ctx;
    self->cfg = ctx->cfg;
    self->rl = (mh_ratelimit_t)MH_RATELIMIT_INIT(1000, 5);
    s_register_metrics(self);
    if (self->cfg->group_max < 1)
        self->cfg->group_max = 1;
    self->reqs = calloc((size_t)self->cfg->group_max, sizeof *self->reqs);
    self->items = calloc((size_t)self->cfg->group_max, sizeof *self->items);
    self->arena = mh_pbarena_new();
    in_retention_t ret = s_retention(self->cfg);
    self->store = in_store_new(self->cfg->pg_url, &ret);
    self->router = zsock_new(ZMQ_ROUTER);
    zsock_set_rcvhwm(self->router, 10000);
    zsock_set_sndhwm(self->router, 10000);
    zsock_set_router_mandatory(self->router, 0);
    if (!self->reqs || !self->items || !self->arena || !self->store ||
        mh_curve_bind(self->router, self->cfg->bind) < 0) {
        mh_error("cannot bind %s: %s", self->cfg->bind, zmq_strerror(zmq_errno()));
        s_destroy(&self);
        return NULL;
    }
    if (*self->cfg->kafka_brokers) {
        in_kafka_opts_t ko = {self->cfg->kafka_brokers, self->cfg->kafka_topic,
                              self->cfg->kafka_queue_max, ctx->metrics};
        if (!(self->kafka = in_kafka_new(&ko))) {
            s_destroy(&self);
            return NULL;
        }
    }
    if (mh_events_bind(&self->pub, self->cfg->events_bind, 1000) < 0) {
        s_destroy(&self);
        return NULL;
    }
    return self;
}

static void s_try_connect(in_t *self)
{
    char err[512];
    int rc = in_store_connect(self->store, err, sizeof err);
    if (rc == 1)
        mh_info("connected to PostgreSQL, schema ready");
    else if (rc == -EIO)
        mh_log_limited(&self->rl, MH_LOG_WARN, "%s; retrying", err);
}

/* Takes every batch waiting on the socket (up to group_max) and writes them. */
static void s_drain_socket(in_t *self)
{
    size_t n = 0;
    while ((int64_t)n < self->cfg->group_max && (zsock_events(self->router) & ZMQ_POLLIN))
        if (s_recv(self, &self->reqs[n]))
            n++;
    if (n)
        s_write_group(self, n);
    for (size_t i = 0; i < n; i++)
        s_release(&self->reqs[i]);
    mh_pbarena_reset(self->arena);
}

void in_actor(zsock_t *pipe, void *args)
{
    mh_service_ctx_t *ctx = args;
    in_t *self = s_new(ctx);
    if (!self) {
        mh_actor_failed(pipe);
        return;
    }
    self->pipe = pipe;
    zactor_t *query = NULL;
    if (*self->cfg->rpc_bind) {
        in_query_opts_t qo = {self->cfg->pg_url, in_query_bind(self->cfg->rpc_bind),
                              self->cfg->query_max, self->ctx->metrics};
        if (!qo.router || !(query = zactor_new(in_query_actor, &qo))) {
            zsock_destroy(&qo.router);
            s_destroy(&self);
            mh_actor_failed(pipe);
            return;
        }
    }
    zactor_t *compress = NULL;
    if (self->cfg->compress_interval_ms > 0) {
        in_compress_opts_t co = {
            self->cfg->pg_url,           self->cfg->compress_interval_ms, self->cfg->seal_lag_ms,
            self->cfg->retention_raw_ms, (int)self->cfg->compress_chunk,  self->ctx->metrics};
        compress = zactor_new(in_compress_actor, &co);
    }
    in_rollup_opts_t ro = {self->cfg->pg_url, s_retention(self->cfg), self->cfg->rollup_interval_ms,
                           self->ctx->metrics};
    zactor_t *rollup = zactor_new(in_rollup_actor, &ro);
    s_try_connect(self);
    mh_actor_ready(pipe);
    int64_t next_maintain = mh_mono_ms() + self->cfg->maintain_interval_ms;
    /* No transaction starts before this (commit-interval after the last):
     * what arrives meanwhile waits on the socket and goes in the next. A
     * commit's cost is mostly fixed (its WAL flush, the statements), so at
     * 10,000 messages a second 100 transactions cost less than 170. */
    int64_t next_write = 0;
    bool stopping = false;
    while (!stopping) {
        bool db = in_store_connected(self->store);
        int64_t wait = next_write - mh_mono_ms();
        zmq_pollitem_t items[] = {
            {zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(self->router), 0, ZMQ_POLLIN, 0},
        };
        /* While the database is away, leave batches queued (or with the
         * gateways, who re-send); reading them would only drop them. */
        bool take = db && wait <= 0;
        long timeout = take || wait <= 0 || wait > 100 ? 100 : (long)wait;
        if (zmq_poll(items, take ? 2 : 1, timeout) < 0 && errno != EINTR)
            break;
        if (items[0].revents & ZMQ_POLLIN)
            stopping = mh_actor_term(pipe);
        if (take && (items[1].revents & ZMQ_POLLIN)) {
            next_write = mh_mono_ms() + self->cfg->commit_interval_ms;
            s_drain_socket(self);
        }
        s_try_connect(self);
        if (self->kafka)
            in_kafka_poll(self->kafka);
        int64_t now = mh_mono_ms();
        mh_http_heartbeat(ctx->http);
        db = in_store_connected(self->store);
        mh_http_set_ready(ctx->http, db && !stopping);
        mh_gauge_set(self->m_connected, db);
        char err[512];
        if (db && now >= next_maintain) {
            if (in_store_maintain(self->store, err, sizeof err) < 0)
                mh_log_limited(&self->rl, MH_LOG_WARN, "maintenance failed, will retry: %s", err);
            next_maintain = mh_mono_ms() + self->cfg->maintain_interval_ms;
        }
    }
    /* Write what already arrived before leaving; the rest is with the
     * gateways, which re-send it to another replica or to our successor. */
    if (in_store_connected(self->store))
        for (int i = 0; i < 100 && (zsock_events(self->router) & ZMQ_POLLIN); i++)
            s_drain_socket(self);
    zactor_destroy(&rollup);
    zactor_destroy(&compress);
    zactor_destroy(&query);
    s_destroy(&self);
}
