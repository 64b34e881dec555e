/* The twin actor. See tw_service.h for the shape; docs/twin.md for the
 * behaviour operators and firmware writers see. */
#include "tw_internal.h"

#define S_CFG(field) offsetof(tw_config_t, field)

const mh_cfg_opt_t tw_config_options[] = {
    MH_CFG_COMMON(tw_config_t, "127.0.0.1:9103"),
    {"pg-url", "MH_PG_URL", MH_CFG_STR, "postgresql://postgres@127.0.0.1:5433/motehub",
     S_CFG(pg_url), "PostgreSQL connection string"},
    {"bind", "MH_TWIN_BIND", MH_CFG_STR, "tcp://127.0.0.1:5580", S_CFG(bind),
     "where the ROUTER for device messages from the gateways binds"},
    {"rpc-bind", "MH_TWIN_RPC_BIND", MH_CFG_STR, "tcp://127.0.0.1:5581", S_CFG(rpc_bind),
     "where the ROUTER for the operator RPC binds"},
    {"events-bind", "MH_TWIN_EVENTS_BIND", MH_CFG_STR, "tcp://127.0.0.1:5573", S_CFG(events_bind),
     "where the event PUB socket binds (empty: none)"},
    {"downlink-endpoint", "MH_DOWNLINK_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5590",
     S_CFG(downlink_endpoint), "the gateways' downlink ROUTER endpoint(s); names resolve to all"},
    {"batch-max", "MH_TWIN_BATCH_MAX", MH_CFG_INT, "1000", S_CFG(batch_max),
     "device messages handled in one transaction at most"},
    {"keepalive", "MH_DEVICE_KEEPALIVE", MH_CFG_DURATION, "60s", S_CFG(keepalive_ms),
     "device keep-alive: a device online only by its messages goes offline after"
     " keep-alive plus grace in silence"},
    {"presence-timeout", "MH_PRESENCE_TIMEOUT", MH_CFG_DURATION, "2m", S_CFG(presence_timeout_ms),
     "a device online by its status goes offline when the broker has not listed it as connected"
     " for this long (its last will was lost; motehub_acl's presence list, every 30 s)"},
    {"conn-log-retention", "MH_TWIN_CONN_LOG_RETENTION", MH_CFG_DURATION, "7d",
     S_CFG(conn_log_retention_ms),
     "how long each device's connects and disconnects are kept (rollout health looks back over"
     " its observation windows)"},
    {"grace", "MH_DEVICE_GRACE", MH_CFG_DURATION, "30s", S_CFG(grace_ms),
     "grace added to the keep-alive before a silent device counts as offline"},
    {"command-ttl", "MH_COMMAND_TTL", MH_CFG_DURATION, "1h", S_CFG(command_ttl_ms),
     "time to live of a command sent without \"ttl\""},
    {"command-timeout", "MH_COMMAND_TIMEOUT", MH_CFG_DURATION, "30s", S_CFG(command_timeout_ms),
     "how long after sending a command without \"timeout\" waits for its ack"},
    {"sweep-interval", "MH_TWIN_SWEEP_INTERVAL", MH_CFG_DURATION, "1s", S_CFG(sweep_interval_ms),
     "how often expired commands, timed-out commands and silent devices are found"},
    {"resolve-interval", "MH_RESOLVE_INTERVAL", MH_CFG_DURATION, "10s", S_CFG(resolve_interval_ms),
     "how often service names are resolved again"},
    {"ca-dir", "MH_CA_DIR", MH_CFG_STR, "", S_CFG(ca_dir),
     "the fleet CA's directory (motectl ca): with it, devices holding a claim certificate get"
     " their own through fleet provisioning (empty: refused)"},
    MH_CFG_END,
};

const mh_service_def_t tw_service_def = {
    .name = "twin",
    .summary = "Motehub twin: device registry, twin documents and the offline command queue.",
    .options = tw_config_options,
    .config_size = sizeof(tw_config_t),
    .actor = tw_actor,
};

#define S_LOCK_MIGRATE 7203101

static const char *s_schema_sql =
    "CREATE SCHEMA IF NOT EXISTS twin;"
    "CREATE TABLE IF NOT EXISTS twin.devices ("
    "  id text COLLATE \"C\" PRIMARY KEY,"
    "  doc jsonb NOT NULL,"
    "  version bigint NOT NULL,"
    "  firmware text,"
    "  online boolean NOT NULL DEFAULT false,"
    "  online_source text NOT NULL DEFAULT '',"
    "  conn_ms bigint NOT NULL DEFAULT 0,"
    "  last_seen_ms bigint,"
    "  created_ms bigint NOT NULL);"
    "CREATE INDEX IF NOT EXISTS devices_silent ON twin.devices (last_seen_ms)"
    "  WHERE online AND online_source = 'message';"
    "CREATE INDEX IF NOT EXISTS devices_firmware ON twin.devices (firmware, id);"
    /* every connectivity change, for rollout health (tw_health_rpc.c);
     * kept --conn-log-retention */
    "CREATE TABLE IF NOT EXISTS twin.conn_log ("
    "  device_id text COLLATE \"C\" NOT NULL, ts_ms bigint NOT NULL, online boolean NOT NULL,"
    "  reason text NOT NULL);"
    "CREATE INDEX IF NOT EXISTS conn_log_device ON twin.conn_log (device_id, ts_ms);"
    "CREATE INDEX IF NOT EXISTS conn_log_ts ON twin.conn_log USING brin (ts_ms);"
    "CREATE TABLE IF NOT EXISTS twin.commands ("
    "  seq bigserial PRIMARY KEY,"
    "  id text NOT NULL UNIQUE,"
    "  device_id text COLLATE \"C\" NOT NULL REFERENCES twin.devices (id) ON DELETE CASCADE,"
    "  name text NOT NULL,"
    "  params jsonb NOT NULL,"
    "  status text NOT NULL,"
    "  created_ms bigint NOT NULL,"
    "  expires_ms bigint NOT NULL,"
    "  timeout_ms bigint NOT NULL,"
    "  sent_ms bigint,"
    "  completed_ms bigint,"
    "  result jsonb);"
    "CREATE INDEX IF NOT EXISTS commands_device ON twin.commands (device_id, seq);"
    "CREATE INDEX IF NOT EXISTS commands_queued ON twin.commands (expires_ms)"
    "  WHERE status = 'queued';"
    "CREATE INDEX IF NOT EXISTS commands_sent ON twin.commands ((sent_ms + timeout_ms))"
    "  WHERE status = 'sent';"
    /* the gateways' relay batches applied (mh_relay.h), kept an hour */
    "CREATE TABLE IF NOT EXISTS twin.relay_batches ("
    "  batch_id text PRIMARY KEY, at_ms bigint NOT NULL);"
    "CREATE INDEX IF NOT EXISTS relay_batches_at ON twin.relay_batches (at_ms);"
    /* when the broker last listed the device as connected (motehub_presence.h) */
    "ALTER TABLE twin.devices ADD COLUMN IF NOT EXISTS present_ms bigint;"
    /* when a queued command was last handed to a gateway; it is sent once
     * a gateway says it has published it */
    "ALTER TABLE twin.commands ADD COLUMN IF NOT EXISTS handed_ms bigint;"
    "CREATE INDEX IF NOT EXISTS commands_handed ON twin.commands (handed_ms)"
    "  WHERE status = 'queued';"
    "CREATE TABLE IF NOT EXISTS twin.shadows ("
    "  device_id text COLLATE \"C\" NOT NULL REFERENCES twin.devices (id) ON DELETE CASCADE,"
    "  name text COLLATE \"C\" NOT NULL,"
    "  doc jsonb," /* NULL once deleted: the row keeps the version */
    "  version bigint NOT NULL,"
    "  deleted boolean NOT NULL DEFAULT false,"
    "  PRIMARY KEY (device_id, name));"
    /* when the broker last sent a presence list: while it does, a device it
     * never listed is not connected either */
    "CREATE TABLE IF NOT EXISTS twin.presence (k int PRIMARY KEY, at_ms bigint NOT NULL);"
    "CREATE INDEX IF NOT EXISTS devices_absent ON twin.devices (present_ms)"
    "  WHERE online AND online_source = 'status';"
    /* fleet provisioning (tw_provision.c) */
    "CREATE TABLE IF NOT EXISTS twin.provisioning_templates ("
    "  name text COLLATE \"C\" PRIMARY KEY,"
    "  body jsonb NOT NULL,"
    "  created_ms bigint NOT NULL,"
    "  updated_ms bigint NOT NULL);"
    "CREATE TABLE IF NOT EXISTS twin.certificates ("
    "  id text PRIMARY KEY,"                   /* certificateId: the certificate's SHA-256 */
    "  cn text COLLATE \"C\" NOT NULL UNIQUE," /* cert:<random>: the broker's username */
    "  serial text NOT NULL,"
    "  claim text NOT NULL," /* the claim certificate's client that asked */
    "  token text UNIQUE,"   /* certificateOwnershipToken; NULL once used */
    "  token_expires_ms bigint NOT NULL,"
    "  device_id text COLLATE \"C\" REFERENCES twin.devices (id) ON DELETE CASCADE,"
    "  template text,"
    "  created_ms bigint NOT NULL,"
    "  registered_ms bigint);"
    "CREATE INDEX IF NOT EXISTS certificates_device ON twin.certificates (device_id);";

static const char *s_reason_names[TW_R_COUNT] = {
    "bad_json", "bad_request",     "version_conflict", "too_large",         "unregistered",
    "bad_ack",  "unknown_command", "stale_status",     "malformed_internal"};

/* by DeviceMessage kind; 4 (ota/status, never sent here) counts "seen" */
static const char *s_kind_names[TW_NKINDS] = {"status",        "twin_get",     "twin_update",
                                              "command_ack",   "seen",         "shadow_get",
                                              "shadow_update", "shadow_delete"};

/* ---- set-up and the loop ---- */

static void s_register_metrics(tw_t *self)
{
    mh_metrics_t *m = self->ctx->metrics;
    char labels[64];
    for (int i = 0; i < TW_NKINDS; i++) {
        snprintf(labels, sizeof labels, "kind=\"%s\"", s_kind_names[i]);
        self->m_messages[i] =
            mh_metrics_counter(m, "mh_twin_device_messages_total",
                               "Device messages from the gateways, by kind", labels);
    }
    for (int i = 0; i < TW_R_COUNT; i++) {
        snprintf(labels, sizeof labels, "reason=\"%s\"", s_reason_names[i]);
        self->m_rejected[i] =
            mh_metrics_counter(m, "mh_twin_messages_refused_total",
                               "Device messages refused or ignored, by reason", labels);
    }
    static const char *cmd_status[] = {"queued",   "sent",    "succeeded", "failed",
                                       "rejected", "expired", "timed_out"};
    for (int i = 0; i < 7; i++) {
        snprintf(labels, sizeof labels, "status=\"%s\"", cmd_status[i]);
        self->m_commands[i] = mh_metrics_counter(
            m, "mh_twin_commands_total", "Command life-cycle transitions, by new status", labels);
    }
    self->m_updates_accepted = mh_metrics_counter(m, "mh_twin_updates_accepted_total",
                                                  "Reported-state updates accepted", NULL);
    self->m_updates_changed = mh_metrics_counter(m, "mh_twin_updates_changed_total",
                                                 "Accepted updates that changed the twin", NULL);
    self->m_commits =
        mh_metrics_counter(m, "mh_twin_commits_total", "Device-message batches committed", NULL);
    self->m_db_errors =
        mh_metrics_counter(m, "mh_twin_db_errors_total", "Failed database transactions", NULL);
    self->m_retries = mh_metrics_counter(m, "mh_twin_retries_total",
                                         "Transactions retried after a deadlock or conflict", NULL);
    self->m_relay_duplicates = mh_metrics_counter(
        m, "mh_twin_relay_duplicates_total",
        "Relay batches received again after they were applied (acknowledged, not applied)", NULL);
    self->m_downlink_dropped = mh_metrics_counter(m, "mh_twin_downlink_dropped_total",
                                                  "Downlink publishes no gateway could take", NULL);
    self->m_published = mh_metrics_counter(m, "mh_twin_downlink_sent_total",
                                           "Downlink publishes handed to the gateways", NULL);
    self->m_online =
        mh_metrics_counter(m, "mh_twin_devices_online_total", "Devices that came online", NULL);
    self->m_offline = mh_metrics_counter(m, "mh_twin_devices_offline_total",
                                         "Devices that went offline by silence", NULL);
    self->m_batch_time = mh_metrics_histogram(m, "mh_twin_batch_seconds",
                                              "Time to apply and commit a batch, in seconds", NULL,
                                              mh_seconds_bounds, MH_SECONDS_NBOUNDS);
    self->m_db = mh_metrics_gauge(m, "mh_twin_db_connected",
                                  "1 while connected to PostgreSQL with the schema ready", NULL);
}

static void s_destroy(tw_t **self_p)
{
    tw_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->npending; i++)
        mh_relay_batch_destroy(&self->pending[i]);
    free(self->pending);
    mh_pg_destroy(&self->pg);
    zsock_destroy(&self->pull);
    mh_rpc_server_destroy(&self->rpc);
    zsock_destroy(&self->router);
    zsock_destroy(&self->pub);
    mh_relay_destroy(&self->downlink);
    zlist_destroy(&self->published);
    mh_ca_unload(&self->ca);
    free(self);
    *self_p = NULL;
}

static tw_t *s_new(mh_service_ctx_t *ctx)
{
    tw_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->ctx = ctx;
    self->cfg = ctx->cfg;
    if (self->cfg->batch_max < 1)
        self->cfg->batch_max = 1;
    self->rl_warn = (mh_ratelimit_t)MH_RATELIMIT_INIT(1000, 10);
    self->rl_db = (mh_ratelimit_t)MH_RATELIMIT_INIT(1000, 5);
    s_register_metrics(self);
    self->pending = calloc((size_t)self->cfg->batch_max, sizeof *self->pending);
    self->pg = mh_pg_new(self->cfg->pg_url, s_schema_sql, S_LOCK_MIGRATE);
    /* A replica stuck inside its transaction (stopped, paused, swapped out)
     * holds device rows: the others' device batches wait for them at most
     * 250 ms a try (SET LOCAL in tw_batch.c), serving the API and other
     * devices in between; an operator's write waits up to 2 s, then 503;
     * and the stuck session ends after 5 s idle, freeing the rows (it
     * reconnects and retries, its batches unacknowledged until then). */
    if (self->pg)
        mh_pg_set_session(self->pg, "SET lock_timeout = '2s';"
                                    " SET idle_in_transaction_session_timeout = '5s'");
    self->db = (mh_rpc_db_t){self->pg, self->m_db_errors, &self->rl_db};
    self->pull = zsock_new(ZMQ_ROUTER);
    zsock_set_router_mandatory(self->pull, 0);
    self->router = zsock_new(ZMQ_ROUTER);
    zsock_set_router_mandatory(self->router, 0);
    self->downlink = mh_relay_new(&(mh_relay_opts_t){.endpoint = self->cfg->downlink_endpoint,
                                                     .name = "the gateways",
                                                     .instance = ctx->instance,
                                                     .metric_prefix = "mh_twin_downlink_relay",
                                                     .delivered = tw_commands_published,
                                                     .ud = self},
                                  ctx->metrics);
    self->rpc = mh_rpc_server_new(&tw_rpc_def, self, self->pg, ctx->metrics);
    self->published = zlist_new();
    if (self->published)
        zlist_autofree(self->published);
    if (!self->pending || !self->pg || !self->downlink || !self->rpc || !self->published) {
        mh_error("bad settings (downlink endpoint \"%s\")", self->cfg->downlink_endpoint);
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
    if (*self->cfg->ca_dir) {
        mh_ca_paths(&self->ca, self->cfg->ca_dir);
        if (mh_ca_load(&self->ca) < 0) {
            mh_error("fleet provisioning: %s", self->ca.err);
            s_destroy(&self);
            return NULL;
        }
        mh_info("fleet provisioning on: certificates signed by the CA in %s", self->cfg->ca_dir);
    }
    return self;
}

static void s_connect_db(tw_t *self)
{
    char err[512];
    int rc = mh_pg_connect(self->pg, err, sizeof err);
    if (rc == 1)
        mh_info("connected to PostgreSQL, schema ready");
    else if (rc == -EIO)
        mh_log_limited(&self->rl_db, MH_LOG_WARN, "%s; retrying", err);
}

/* Reads up to batch_max waiting device messages into `pending`. */
static void s_read_batch(tw_t *self)
{
    while ((int64_t)self->npending_msgs < self->cfg->batch_max &&
           (int64_t)self->npending < self->cfg->batch_max &&
           (zsock_events(self->pull) & ZMQ_POLLIN)) {
        mh_relay_batch_t *b = mh_relay_in_recv(self->pull);
        if (!b) {
            mh_counter_inc(self->m_rejected[TW_R_MALFORMED]);
            mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                           "malformed frame on the device socket, ignoring");
            continue;
        }
        self->pending[self->npending++] = b;
        self->npending_msgs += b->n;
    }
}

static void s_run_pending(tw_t *self)
{
    if (!self->npending || !mh_pg_ready(self->pg))
        return;
    int rc = tw_batch(self, self->pending, self->npending);
    if (rc == -EIO)
        mh_log_limited(&self->rl_db, MH_LOG_WARN,
                       "database lost; holding %zu device messages until it is back",
                       self->npending_msgs);
    if (rc == -EIO || rc == -EBUSY)
        return;
    for (size_t i = 0; i < self->npending; i++)
        mh_relay_batch_destroy(&self->pending[i]);
    self->npending = self->npending_msgs = 0;
}

void tw_actor(zsock_t *pipe, void *args)
{
    mh_service_ctx_t *ctx = args;
    tw_t *self = s_new(ctx);
    if (!self) {
        mh_actor_failed(pipe);
        return;
    }
    mh_relay_refresh(self->downlink);
    s_connect_db(self);
    mh_actor_ready(pipe);
    int64_t next_sweep = 0, next_cron = 0;
    int64_t next_resolve = mh_mono_ms() + self->cfg->resolve_interval_ms;
    bool stopping = false;
    while (!stopping) {
        zmq_pollitem_t items[] = {
            {zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(self->router), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(mh_relay_socket(self->downlink)), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(self->pull), 0, ZMQ_POLLIN, 0},
        };
        /* While a batch waits for the database, take no more. */
        int nitems = self->npending ? 3 : 4;
        if (zmq_poll(items, nitems, 100) < 0 && errno != EINTR)
            break;
        if (items[0].revents & ZMQ_POLLIN)
            stopping = mh_actor_term(pipe);
        s_connect_db(self);
        /* Handle a few RPCs between batches, so neither starves the other. */
        for (int i = 0; i < 16 && (zsock_events(self->router) & ZMQ_POLLIN); i++)
            mh_rpc_server_handle(self->rpc, self->router);
        if (!self->npending)
            s_read_batch(self);
        s_run_pending(self);
        mh_relay_on_acks(self->downlink);
        tw_commands_sent(self);
        mh_relay_tick(self->downlink, false);

        int64_t now = mh_mono_ms();
        if (now >= next_sweep && mh_pg_ready(self->pg)) {
            next_sweep = now + self->cfg->sweep_interval_ms;
            tw_sweep(self);
        }
        if (now >= next_cron) {
            next_cron = now + 500;
            mh_service_health(ctx, mh_pg_ready(self->pg), self->m_db);
        }
        if (now >= next_resolve) {
            next_resolve = now + self->cfg->resolve_interval_ms;
            mh_relay_refresh(self->downlink);
        }
    }
    /* Drain: what is already read is applied before exit, if the database
     * allows within a few seconds. */
    int64_t deadline = mh_mono_ms() + 5000;
    s_read_batch(self);
    while (self->npending && mh_mono_ms() < deadline) {
        s_connect_db(self);
        s_run_pending(self);
        if (!self->npending)
            s_read_batch(self);
        if (self->npending)
            zclock_sleep(20);
    }
    if (self->npending)
        mh_error("stopping with %zu device messages not applied (database away); their gateways"
                 " send them again",
                 self->npending_msgs);
    /* and what was published is acknowledged by a gateway before exit */
    size_t left = mh_relay_drain(self->downlink, 5000);
    if (left)
        mh_error("stopping with %zu downlink messages no gateway acknowledged", left);
    s_destroy(&self);
}
