/* fleet-stats. See fs_service.h; docs/fleet-stats.md for the API as served. */
#include "fs_internal.h"

#define S_CFG(field) offsetof(fs_config_t, field)

const mh_cfg_opt_t fs_config_options[] = {
    MH_CFG_COMMON(fs_config_t, "127.0.0.1:9105"),
    {"pg-url", "MH_PG_URL", MH_CFG_STR, "postgresql://postgres@127.0.0.1:5433/motehub",
     S_CFG(pg_url), "PostgreSQL connection string (API tokens)"},
    {"api-listen", "MH_API_LISTEN", MH_CFG_STR, "127.0.0.1:8080", S_CFG(api_listen),
     "where the operator API is served (HOST:PORT)"},
    {"twin-rpc-endpoint", "MH_TWIN_RPC_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5581",
     S_CFG(twin_rpc_endpoint), "twin's RPC ROUTER(s)"},
    {"ota-rpc-endpoint", "MH_OTA_RPC_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5583",
     S_CFG(ota_rpc_endpoint), "ota's RPC ROUTER(s)"},
    {"max-image-size", "MH_OTA_MAX_IMAGE", MH_CFG_INT, "67108864", S_CFG(max_image),
     "largest firmware upload taken, in bytes"},
    {"rpc-timeout", "MH_RPC_TIMEOUT", MH_CFG_DURATION, "10s", S_CFG(rpc_timeout_ms),
     "how long an API request waits for the service behind it"},
    {"api-threads", "MH_API_THREADS", MH_CFG_INT, "32", S_CFG(api_threads),
     "HTTP worker threads for API requests"},
    {"live-max", "MH_LIVE_MAX", MH_CFG_INT, "1000", S_CFG(live_max),
     "live WebSocket connections (/api/v1/live) a replica holds, each on a thread of its own"},
    {"twin-events-endpoint", "MH_TWIN_EVENTS_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5573",
     S_CFG(twin_events_endpoint), "twin's event PUB(s), for the live aggregates"},
    {"ota-events-endpoint", "MH_OTA_EVENTS_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5574",
     S_CFG(ota_events_endpoint), "ota's event PUB(s), for rollout progress"},
    {"gateway-events-endpoint", "MH_GATEWAY_EVENTS_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5571",
     S_CFG(gateway_events_endpoint), "every gateway's event PUB, for message rates"},
    {"ingest-rpc-endpoint", "MH_INGEST_RPC_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5561",
     S_CFG(ingest_rpc_endpoint), "ingest's telemetry query ROUTER(s)"},
    {"geo-cell", "MH_GEO_CELL", MH_CFG_DOUBLE, "1", S_CFG(geo_cell),
     "size of a geographic cell, in degrees"},
    {"live-resync", "MH_LIVE_RESYNC", MH_CFG_DURATION, "10m", S_CFG(live_resync_ms),
     "how often the aggregates are rebuilt from a full snapshot"},
    {"live-frame-interval", "MH_LIVE_FRAME_INTERVAL", MH_CFG_DURATION, "250ms",
     S_CFG(live_frame_ms), "at most one /api/v1/live frame per this"},
    {"dashboard-dir", "MH_DASHBOARD_DIR", MH_CFG_STR, "", S_CFG(dashboard_dir),
     "the built dashboard (dashboard/dist), served at / (empty: none)"},
    MH_CFG_END,
};

const mh_service_def_t fs_service_def = {
    .name = "fleet-stats",
    .summary = "Motehub fleet-stats: the operator HTTP API.",
    .options = fs_config_options,
    .config_size = sizeof(fs_config_t),
    .actor = fs_actor,
};

const char *fs_schema_sql = "CREATE SCHEMA IF NOT EXISTS fleet;"
                            "CREATE TABLE IF NOT EXISTS fleet.tokens (name text NOT NULL,"
                            "  hash text PRIMARY KEY, created_ms bigint NOT NULL);"
                            "ALTER TABLE fleet.tokens ADD COLUMN IF NOT EXISTS prefix text;"
                            "ALTER TABLE fleet.tokens ADD COLUMN IF NOT EXISTS revoked_ms bigint;";

/* ---- the actor ---- */

/* seconds */
static const double s_bounds[] = {0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 5};

static void s_destroy(fs_t **self_p)
{
    fs_t *self = *self_p;
    if (!self)
        return;
    if (self->live)
        fs_live_stop(self->live);
    if (self->web)
        mg_stop(self->web);
    fs_live_destroy(&self->live);
    mh_rpc_destroy(&self->twin);
    mh_rpc_destroy(&self->ota);
    mh_rpc_destroy(&self->ingest);
    mh_pg_destroy(&self->pg);
    zhashx_destroy(&self->tokens);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

void fs_actor(zsock_t *pipe, void *args)
{
    mh_service_ctx_t *ctx = args;
    fs_t *self = calloc(1, sizeof *self);
    if (!self) {
        mh_actor_failed(pipe);
        return;
    }
    self->ctx = ctx;
    self->cfg = ctx->cfg;
    pthread_mutex_init(&self->lock, NULL);
    self->tokens = zhashx_new();
    zhashx_set_destructor(self->tokens, fs_free_tok);
    self->pg = mh_pg_new(self->cfg->pg_url, fs_schema_sql, FS_LOCK_MIGRATE);
    self->twin = mh_rpc_new(self->cfg->twin_rpc_endpoint);
    self->ota = mh_rpc_new(self->cfg->ota_rpc_endpoint);
    self->ingest = mh_rpc_new(self->cfg->ingest_rpc_endpoint);
    fs_live_opts_t lo = {.twin_events = self->cfg->twin_events_endpoint,
                         .ota_events = self->cfg->ota_events_endpoint,
                         .gateway_events = self->cfg->gateway_events_endpoint,
                         .twin = self->twin,
                         .ota = self->ota,
                         .rpc_timeout_ms = self->cfg->rpc_timeout_ms,
                         .cell_degrees = self->cfg->geo_cell,
                         .resync_ms = self->cfg->live_resync_ms,
                         .min_frame_ms = self->cfg->live_frame_ms};
    if (self->twin && self->ota)
        self->live = fs_live_new(&lo, ctx->metrics);
    static const char *classes[] = {"2xx", "3xx", "4xx", "5xx", "401"};
    for (int i = 0; i < 5; i++) {
        char labels[32];
        snprintf(labels, sizeof labels, "code=\"%s\"", classes[i]);
        self->m_requests[i] = mh_metrics_counter(ctx->metrics, "mh_api_requests_total",
                                                 "Operator API requests, by answer", labels);
    }
    self->m_request_time = mh_metrics_histogram(ctx->metrics, "mh_api_request_seconds",
                                                "Operator API request time, in seconds", NULL,
                                                s_bounds, sizeof s_bounds / sizeof s_bounds[0]);
    /* a live connection holds its worker while it lasts: the requests get
     * api_threads of their own beside live_max */
    char threads[32];
    self->max_ws = self->cfg->live_max > 0 ? self->cfg->live_max : 0;
    int64_t nthreads = (self->cfg->api_threads > 4 ? self->cfg->api_threads : 4) + self->max_ws;
    snprintf(threads, sizeof threads, "%" PRId64, nthreads);
    const char *opts[] = {"listening_ports",
                          self->cfg->api_listen,
                          "num_threads",
                          threads,
                          "request_timeout_ms",
                          "30000",
                          NULL};
    mg_init_library(0);
    char err[512];
    mh_pg_connect(self->pg, err, sizeof err);
    if (self->pg && self->twin && self->ota && self->ingest && self->live)
        self->web = mg_start(NULL, NULL, opts);
    if (!self->web) {
        mh_error("cannot serve the API on %s", self->cfg->api_listen);
        s_destroy(&self);
        mg_exit_library();
        mh_actor_failed(pipe);
        return;
    }
    mg_set_request_handler(self->web, "/", fs_static, self);
    mg_set_websocket_handler(self->web, "/api/v1/live", fs_ws_connect, fs_ws_ready, fs_ws_data,
                             fs_ws_close, self);
    mh_info("operator API on http://%s/api/v1/", self->cfg->api_listen);
    mh_actor_ready(pipe);
    for (;;) {
        zmq_pollitem_t items[] = {{zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
                                  {zsock_resolve(fs_live_events(self->live)), 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, 50) < 0 && errno != EINTR)
            break;
        if (items[1].revents & ZMQ_POLLIN)
            fs_live_on_event(self->live);
        fs_live_tick(self->live);
        if ((items[0].revents & ZMQ_POLLIN) && mh_actor_term(pipe))
            break;
        mh_http_heartbeat(ctx->http);
        pthread_mutex_lock(&self->lock);
        bool ready = mh_pg_connect(self->pg, err, sizeof err) >= 0 && fs_live_ready(self->live);
        pthread_mutex_unlock(&self->lock);
        mh_http_set_ready(ctx->http, ready);
    }
    s_destroy(&self);
    mg_exit_library();
}
