/* The ota actor. See ota_service.h for the shape; docs/ota.md for the
 * behaviour operators and firmware writers see. */
#include "ota_internal.h"

#define S_CFG(field) offsetof(ota_config_t, field)

const mh_cfg_opt_t ota_config_options[] = {
    MH_CFG_COMMON(ota_config_t, "127.0.0.1:9104"),
    {"pg-url", "MH_PG_URL", MH_CFG_STR, "postgresql://postgres@127.0.0.1:5433/motehub",
     S_CFG(pg_url), "PostgreSQL connection string"},
    {"bind", "MH_OTA_BIND", MH_CFG_STR, "tcp://127.0.0.1:5582", S_CFG(bind),
     "where the ROUTER for OTA status messages from the gateways binds"},
    {"rpc-bind", "MH_OTA_RPC_BIND", MH_CFG_STR, "tcp://127.0.0.1:5583", S_CFG(rpc_bind),
     "where the ROUTER for the operator RPC binds"},
    {"events-bind", "MH_OTA_EVENTS_BIND", MH_CFG_STR, "tcp://127.0.0.1:5574", S_CFG(events_bind),
     "where the event PUB socket binds (empty: none)"},
    {"downlink-endpoint", "MH_DOWNLINK_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5590",
     S_CFG(downlink_endpoint), "the gateways' downlink ROUTER endpoint(s); names resolve to all"},
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
    {"health-interval", "MH_OTA_HEALTH_INTERVAL", MH_CFG_DURATION, "10s", S_CFG(health_interval_ms),
     "how often a running rollout's health gate compares its updated devices with the control"
     " group (docs/ota.md)"},
    {"ingest-rpc-endpoint", "MH_INGEST_RPC_ENDPOINT", MH_CFG_STR, "", S_CFG(ingest_rpc_endpoint),
     "ingest's RPC ROUTER(s), for health gates on telemetry metrics (empty: such gates are"
     " refused)"},
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
    "  WHERE status IN ('sent', 'downloading', 'installing');"
    /* AWS IoT Jobs (ota_jobs.c): a rollout of a document has no firmware;
     * an execution's version, details, start, last update, step deadline,
     * and the terminal status a device gave when ota's differs (REJECTED) */
    "ALTER TABLE ota.rollouts ALTER COLUMN firmware DROP NOT NULL;"
    "ALTER TABLE ota.jobs ADD COLUMN IF NOT EXISTS version_number int NOT NULL DEFAULT 1,"
    "  ADD COLUMN IF NOT EXISTS status_details jsonb,"
    "  ADD COLUMN IF NOT EXISTS started_ms bigint, ADD COLUMN IF NOT EXISTS updated_ms bigint,"
    "  ADD COLUMN IF NOT EXISTS step_deadline_ms bigint,"
    "  ADD COLUMN IF NOT EXISTS outcome text;"
    "CREATE INDEX IF NOT EXISTS jobs_by_device ON ota.jobs (device_id, created_ms);"
    "CREATE INDEX IF NOT EXISTS jobs_step_deadline ON ota.jobs (step_deadline_ms)"
    "  WHERE step_deadline_ms IS NOT NULL;"
    /* the health gate's last evaluation (ota_health.c) */
    "ALTER TABLE ota.rollouts ADD COLUMN IF NOT EXISTS health jsonb,"
    "  ADD COLUMN IF NOT EXISTS health_ms bigint NOT NULL DEFAULT 0,"
    "  ADD COLUMN IF NOT EXISTS health_bad boolean NOT NULL DEFAULT false;";

/* ---- set-up and the loop ---- */

static void s_register_metrics(ota_t *self)
{
    mh_metrics_t *m = self->ctx->metrics;
    char labels[64];
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
    for (int k = 0; k < OTA_NSTATES; k++) {
        snprintf(labels, sizeof labels, "state=\"%s\"", ota_states[k]);
        self->m_rollout_states[k] =
            mh_metrics_gauge(m, "mh_ota_rollouts", "Rollouts by state (the database's)", labels);
    }
    self->m_stopped_by_gate = mh_metrics_gauge(
        m, "mh_ota_rollouts_stopped_by_gate",
        "Rollouts their failure gate stopped: paused by it, or rolling back on their own", NULL);
    self->m_db_errors =
        mh_metrics_counter(m, "mh_ota_db_errors_total", "Failed database statements", NULL);
    self->m_downlink_dropped = mh_metrics_counter(m, "mh_ota_downlink_dropped_total",
                                                  "Jobs no gateway could take (sent again)", NULL);
    self->m_tick_time = mh_metrics_histogram(
        m, "mh_ota_tick_seconds", "Time to advance every active rollout once, in seconds", NULL,
        mh_seconds_bounds, MH_SECONDS_NBOUNDS);
    self->m_health_time = mh_metrics_histogram(
        m, "mh_ota_health_evaluation_seconds",
        "Time to evaluate one rollout's health gate (cohorts, twin's and ingest's answers), in"
        " seconds",
        NULL, mh_seconds_bounds, MH_SECONDS_NBOUNDS);
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
        mh_relay_batch_destroy(&self->pending[i]);
    ota_res_clear(self);
    zlistx_destroy(&self->out);
    zlist_destroy(&self->published);
    mh_idset_destroy(&self->online);
    ota_signer_destroy(&self->signer);
    mh_pg_destroy(&self->pg);
    mh_resolver_destroy(&self->twin_resolver);
    mh_rpc_destroy(&self->twin_rpc);
    mh_rpc_destroy(&self->ingest_rpc);
    zsock_destroy(&self->pull);
    mh_rpc_server_destroy(&self->rpc);
    zsock_destroy(&self->router);
    zsock_destroy(&self->pub);
    mh_relay_destroy(&self->downlink);
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
    zlistx_set_destructor(self->out, ota_out_free);
    self->published = zlist_new();
    if (self->published)
        zlist_autofree(self->published);
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
    self->db = (mh_rpc_db_t){self->pg, self->m_db_errors, &self->rl_db};
    self->pull = zsock_new(ZMQ_ROUTER);
    zsock_set_router_mandatory(self->pull, 0);
    self->router = zsock_new(ZMQ_ROUTER);
    zsock_set_router_mandatory(self->router, 0);
    zsock_set_rcvhwm(self->router, 1000);
    self->downlink = mh_relay_new(&(mh_relay_opts_t){.endpoint = self->cfg->downlink_endpoint,
                                                     .name = "the gateways",
                                                     .instance = ctx->instance,
                                                     .metric_prefix = "mh_ota_downlink_relay",
                                                     .delivered = ota_jobs_published,
                                                     .ud = self},
                                  ctx->metrics);
    self->dealer = mh_dealer_new(self->cfg->twin_rpc_endpoint, 0, &self->twin_resolver);
    self->twin_rpc = mh_rpc_new(self->cfg->twin_rpc_endpoint);
    if (*self->cfg->ingest_rpc_endpoint)
        self->ingest_rpc = mh_rpc_new(self->cfg->ingest_rpc_endpoint);
    self->online =
        mh_idset_new(&(mh_idset_opts_t){.rpc_endpoint = self->cfg->twin_rpc_endpoint,
                                        .events_endpoint = self->cfg->twin_events_endpoint,
                                        .refresh_ms = self->cfg->online_refresh_ms,
                                        .online_only = true,
                                        .metric_prefix = "mh_ota_online",
                                        .what = "online devices"},
                     ctx->metrics);
    self->images = ota_images_new(self->cfg->pg_url, ctx->metrics);
    self->rpc = mh_rpc_server_new(&ota_rpc_def, self, self->pg, ctx->metrics);
    if (!self->rpc || !self->pg || !self->downlink || !self->twin_resolver || !self->twin_rpc ||
        (*self->cfg->ingest_rpc_endpoint && !self->ingest_rpc) || !self->online || !self->images ||
        !self->out || !self->published) {
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
    if (mh_events_bind(&self->pub, self->cfg->events_bind, 100000) < 0) {
        s_destroy(&self);
        return NULL;
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
    mh_relay_refresh(self->downlink);
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
            {zsock_resolve(mh_relay_socket(self->downlink)), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(self->pull), 0, ZMQ_POLLIN, 0},
        };
        int64_t now = mh_mono_ms();
        long wait = self->next_tick > now ? (long)(self->next_tick - now) : 0;
        if (zmq_poll(items, self->npending ? 6 : 7, wait < 100 ? wait : 100) < 0 && errno != EINTR)
            break;
        if (items[0].revents & ZMQ_POLLIN)
            stopping = mh_actor_term(pipe);
        s_connect_db(self);
        while (zsock_events(mh_idset_rpc(self->online)) & ZMQ_POLLIN)
            mh_idset_on_rpc(self->online);
        for (int i = 0; i < 10000 && (zsock_events(mh_idset_events(self->online)) & ZMQ_POLLIN);
             i++)
            mh_idset_on_event(self->online);
        mh_idset_tick(self->online);
        bool ready = mh_pg_ready(self->pg);
        for (int i = 0; ready && i < 16 && (zsock_events(self->router) & ZMQ_POLLIN); i++)
            mh_rpc_server_handle(self->rpc, self->router);
        while (ready && (zsock_events(self->dealer) & ZMQ_POLLIN))
            ota_on_twin_reply(self);
        mh_relay_on_acks(self->downlink);
        ota_jobs_sent(self);
        mh_relay_tick(self->downlink, false);
        if (!self->npending)
            ota_read_status(self);
        ota_run_status(self);
        now = mh_mono_ms();
        if (ready && now >= self->next_tick) {
            self->next_tick = now + self->cfg->tick_ms;
            ota_tick(self);
        }
        if (now >= next_cron) {
            next_cron = now + 500;
            mh_service_health(ctx, mh_pg_ready(self->pg), self->m_db);
        }
        if (now >= next_resolve) {
            next_resolve = now + self->cfg->resolve_interval_ms;
            mh_relay_refresh(self->downlink);
            mh_resolver_refresh(self->twin_resolver);
        }
    }
    /* Drain: status messages already read are applied if the database
     * allows within a few seconds. */
    int64_t deadline = mh_mono_ms() + 5000;
    ota_read_status(self);
    while (self->npending && mh_mono_ms() < deadline) {
        s_connect_db(self);
        ota_run_status(self);
        if (self->npending)
            zclock_sleep(20);
    }
    if (self->npending)
        mh_error("stopping with %zu OTA status messages not applied (database away); their"
                 " gateways send them again",
                 self->npending_msgs);
    /* and what was published is acknowledged by a gateway before exit */
    size_t left = mh_relay_drain(self->downlink, 5000);
    if (left)
        mh_error("stopping with %zu jobs no gateway acknowledged (sent again by the next ota)",
                 left);
    s_destroy(&self);
    OPENSSL_thread_stop(); /* see gw_actor: the actor thread is detached */
}
