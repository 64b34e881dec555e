/* The gateway actor.
 *
 * Threads: Paho's receive thread calls gw_on_message, which copies the topic
 * and payload into the inbox (gw_inbox.h) and returns; everything else
 * happens in the actor thread. When the actor cannot keep up (ingest slow,
 * window full) it stops taking from the inbox, the inbox fills, gw_on_message
 * returns 0 ("not received") and Paho hands the message again later: the
 * broker keeps what we cannot take, nothing is dropped here.
 *
 * Delivery: a point is "held" from the moment Paho acknowledged its MQTT
 * message until ingest acknowledges its batch after commit. Unacknowledged
 * batches stay in the window and are re-sent after ack_timeout (to any ingest
 * replica). On $TERM the gateway unsubscribes, takes what is still in
 * flight, flushes, and waits for every ack before it exits. */
#include "mh_paho.h"
#include "gw_internal.h"
#include "gw_receive_linger.h"

#define S_CFG(field) offsetof(gw_config_t, field)

const mh_cfg_opt_t gw_config_options[] = {
    MH_CFG_COMMON(gw_config_t, "127.0.0.1:9101"),
    {"mqtt-url", "MH_MQTT_URL", MH_CFG_STR, "tcp://127.0.0.1:1883", S_CFG(mqtt_url),
     "MQTT broker URL"},
    {"mqtt-ca", "MH_MQTT_CA", MH_CFG_STR, "", S_CFG(mqtt_ca),
     "CA certificate the broker's certificate must chain to (ssl:// URLs)"},
    {"mqtt-cert", "MH_MQTT_CERT", MH_CFG_STR, "", S_CFG(mqtt_cert),
     "this gateway's client certificate (motectl ca issue --service gateway-1)"},
    {"mqtt-key", "MH_MQTT_KEY", MH_CFG_STR, "", S_CFG(mqtt_key), "its private key"},
    {"client-id", "MH_GATEWAY_CLIENT_ID", MH_CFG_STR, "", S_CFG(client_id),
     "MQTT client id (default: unique per process)"},
    {"share-group", "MH_SHARE_GROUP", MH_CFG_STR, "gateway", S_CFG(share_group),
     "shared-subscription group the gateways split the load in"},
    {"mqtt-version", "MH_MQTT_VERSION", MH_CFG_INT, "5", S_CFG(mqtt_version),
     "MQTT protocol version towards the broker (5, or 4 for 3.1.1)"},
    {"ingest-endpoint", "MH_INGEST_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5560",
     S_CFG(ingest_endpoint), "ingest ROUTER endpoint(s); names resolve to every replica"},
    {"events-bind", "MH_GATEWAY_EVENTS_BIND", MH_CFG_STR, "tcp://127.0.0.1:5571",
     S_CFG(events_bind), "where the gateway's event PUB socket binds (empty: none)"},
    {"batch-max-points", "MH_BATCH_MAX_POINTS", MH_CFG_INT, "5000", S_CFG(batch_max_points),
     "points per telemetry batch at most"},
    {"batch-linger", "MH_BATCH_LINGER", MH_CFG_DURATION, "5ms", S_CFG(batch_linger_ms),
     "how long a partial batch waits for more points"},
    {"window", "MH_WINDOW", MH_CFG_INT, "64", S_CFG(window),
     "unacknowledged batches held at most; beyond it the gateway stops taking MQTT messages"},
    {"ack-timeout", "MH_ACK_TIMEOUT", MH_CFG_DURATION, "5s", S_CFG(ack_timeout_ms),
     "re-send a batch not acknowledged within this time"},
    {"drain-timeout", "MH_DRAIN_TIMEOUT", MH_CFG_DURATION, "60s", S_CFG(drain_timeout_ms),
     "on SIGTERM, wait at most this long for ingest to acknowledge everything"},
    {"resolve-interval", "MH_RESOLVE_INTERVAL", MH_CFG_DURATION, "10s", S_CFG(resolve_interval_ms),
     "how often service names are resolved again"},
    {"twin-endpoint", "MH_TWIN_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5580", S_CFG(twin_endpoint),
     "twin's ROUTER for device messages (empty: twin topics are not taken)"},
    {"twin-rpc-endpoint", "MH_TWIN_RPC_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5581",
     S_CFG(twin_rpc_endpoint), "twin's RPC ROUTER, for the registered device ids"},
    {"twin-events-endpoint", "MH_TWIN_EVENTS_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5573",
     S_CFG(twin_events_endpoint), "twin's event PUB, to keep the registered ids current"},
    {"downlink-bind", "MH_DOWNLINK_BIND", MH_CFG_STR, "tcp://127.0.0.1:5590", S_CFG(downlink_bind),
     "where the ROUTER for downlink publishes from twin and ota binds (empty: none)"},
    {"ota-endpoint", "MH_OTA_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5582", S_CFG(ota_endpoint),
     "ota's ROUTER for OTA status messages (empty: ota/status is not taken)"},
    {"check-registered", "MH_CHECK_REGISTERED", MH_CFG_BOOL, "true", S_CFG(check_registered),
     "drop messages from device ids twin does not know (the gateway subscribes only once the"
     " registered ids are loaded)"},
    {"registry-refresh", "MH_REGISTRY_REFRESH", MH_CFG_DURATION, "5m", S_CFG(registry_refresh_ms),
     "how often the registered ids are loaded again in full (events keep them current between)"},
    {"seen-interval", "MH_SEEN_INTERVAL", MH_CFG_DURATION, "10s", S_CFG(seen_interval_ms),
     "a device's telemetry tells twin it was seen at most this often"},
    {"receive-linger", "MH_GATEWAY_RECEIVE_LINGER", MH_CFG_DURATION, "1ms",
     S_CFG(receive_linger_ms),
     "when no MQTT message is waiting, Paho's thread sleeps this long before it polls, so that"
     " what arrives meanwhile is read in one wake-up (0: off; gw_receive_linger.h)"},
    MH_CFG_END,
};

const mh_service_def_t gw_service_def = {
    .name = "gateway",
    .summary = "Motehub gateway: MQTT device traffic in, validated batches to ingest.",
    .options = gw_config_options,
    .config_size = sizeof(gw_config_t),
    .actor = gw_actor,
};

/* A sent, unacknowledged batch. */

static const char *s_kind_names[GW_TOPIC_COUNT] = {
    "telemetry",   "telemetry_pb",     "status",        "twin_get",          "twin_update",
    "command_ack", "ota_status",       "shadow_get",    "shadow_update",     "shadow_delete",
    "jobs",        "provision_create", "provision_csr", "provision_register"};

/* ---- set-up and tear-down ---- */

static int s_ssl_error(const char *str, size_t len, void *ud)
{
    (void)ud;
    mh_warn("TLS: %.*s", (int)len, str);
    return 0;
}

static int s_mqtt_start(gw_t *self)
{
    const char *cid = *self->cfg->client_id ? self->cfg->client_id : self->ctx->instance;
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
    co.MQTTVersion = self->cfg->mqtt_version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    mh_paho_quiet_trace();
    int rc = MQTTAsync_createWithOptions(&self->mqtt, self->cfg->mqtt_url, cid,
                                         MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc != MQTTASYNC_SUCCESS) {
        mh_error("bad MQTT settings (%s): %s", self->cfg->mqtt_url, MQTTAsync_strerror(rc));
        return -1;
    }
    gw_receive_idle_arg = self;
    __atomic_store_n(&gw_receive_idle, gw_on_receive_idle, __ATOMIC_RELEASE);
    __atomic_store_n(&gw_receive_linger_us, (int)(self->cfg->receive_linger_ms * 1000),
                     __ATOMIC_RELAXED);
    MQTTAsync_setCallbacks(self->mqtt, self, gw_on_connection_lost, gw_on_message, NULL);
    MQTTAsync_setConnected(self->mqtt, self, gw_on_connected);
    MQTTAsync_connectOptions opts;
    if (self->cfg->mqtt_version == 5) {
        opts = (MQTTAsync_connectOptions)MQTTAsync_connectOptions_initializer5;
        opts.cleanstart = 1;
        opts.onFailure5 = gw_on_connect_failed5;
    } else {
        opts = (MQTTAsync_connectOptions)MQTTAsync_connectOptions_initializer;
        opts.cleansession = 1;
        opts.onFailure = gw_on_connect_failed3;
    }
    opts.keepAliveInterval = 20;
    opts.automaticReconnect = 1;
    opts.minRetryInterval = 1;
    opts.maxRetryInterval = 10;
    opts.maxInflight = 1000;
    opts.context = self;
    /* Mutual TLS: the broker's certificate must chain to mqtt-ca and name
     * the host in the URL; ours says who we are (CN motehub:NAME). */
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    if (gw_tls(self->cfg)) {
        ssl.trustStore = *self->cfg->mqtt_ca ? self->cfg->mqtt_ca : NULL;
        ssl.keyStore = *self->cfg->mqtt_cert ? self->cfg->mqtt_cert : NULL;
        ssl.privateKey = *self->cfg->mqtt_key ? self->cfg->mqtt_key : NULL;
        ssl.enableServerCertAuth = 1;
        ssl.verify = 1;
        ssl.ssl_error_cb = s_ssl_error;
        opts.ssl = &ssl;
    }
    rc = MQTTAsync_connect(self->mqtt, &opts);
    if (rc != MQTTASYNC_SUCCESS) {
        mh_error("cannot start connecting to %s: %s", self->cfg->mqtt_url, MQTTAsync_strerror(rc));
        return -1;
    }
    return 0;
}

static void s_mqtt_unsubscribe(gw_t *self)
{
    gw_topics_t t;
    gw_topics(self, &t);
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.context = self;
    if (self->cfg->mqtt_version == 5)
        ro.onSuccess5 = gw_on_unsubscribed;
    else
        ro.onSuccess = gw_on_unsubscribed3;
    if (MQTTAsync_unsubscribeMany(self->mqtt, t.n, t.ptr, &ro) != MQTTASYNC_SUCCESS)
        __atomic_store_n(&self->unsubscribed, 1, __ATOMIC_RELEASE);
}

static void s_mqtt_stop(gw_t *self)
{
    if (!self->mqtt)
        return;
    if (MQTTAsync_isConnected(self->mqtt)) {
        MQTTAsync_disconnectOptions dopts = MQTTAsync_disconnectOptions_initializer;
        dopts.timeout = 2000;
        MQTTAsync_disconnect(self->mqtt, &dopts);
        int64_t deadline = mh_mono_ms() + 3000;
        while (MQTTAsync_isConnected(self->mqtt) && mh_mono_ms() < deadline)
            zclock_sleep(10);
    }
    /* After destroy no callback runs, so the inbox is ours alone. A clean
     * disconnect calls no connection-lost callback: say "not connected"
     * ourselves, or the downlink pump would hand publishes to the freed
     * client (the SIGSEGV on SIGTERM while twin was sending downlinks).
     * The receive thread's idle hook (gw_paho_io.c) is not a Paho
     * callback: it is cleared here. */
    __atomic_store_n(&gw_receive_idle, NULL, __ATOMIC_RELEASE);
    MQTTAsync_destroy(&self->mqtt);
    __atomic_store_n(&self->mqtt_connected, 0, __ATOMIC_RELEASE);
    /* Paho's send and receive threads are detached: destroying the last
     * client marks them stopped, but they may still be running their last
     * instructions when destroy returns. Freeing our state and exiting at
     * that moment crashed the gateway now and then after "stopped cleanly"
     * (SIGSEGV or a fault in libcrypto's exit handlers); give them a moment. */
    zclock_sleep(200);
}

static void s_register_metrics(gw_t *self)
{
    mh_metrics_t *m = self->ctx->metrics;
    char labels[64];
    for (int i = 0; i < GW_TOPIC_COUNT; i++) {
        snprintf(labels, sizeof labels, "kind=\"%s\"", s_kind_names[i]);
        self->m_received[i] = mh_metrics_counter(m, "mh_gateway_messages_received_total",
                                                 "Device messages received, by topic kind", labels);
    }
    for (int r = 1; r < GW_REASON_COUNT; r++) {
        snprintf(labels, sizeof labels, "reason=\"%s\"", gw_reason_name((gw_reason_t)r));
        self->m_rejected[r] = mh_metrics_counter(m, "mh_gateway_messages_rejected_total",
                                                 "Device messages refused, by reason", labels);
    }
    self->m_points = mh_metrics_counter(m, "mh_gateway_points_accepted_total",
                                        "Telemetry points accepted from devices", NULL);
    self->m_batches_acked = mh_metrics_counter(m, "mh_gateway_batches_acked_total",
                                               "Batches acknowledged by ingest", NULL);
    self->m_points_stored = mh_metrics_counter(m, "mh_gateway_points_stored_total",
                                               "Points ingest confirmed as committed", NULL);
    self->m_points_dropped_ingest = mh_metrics_counter(m, "mh_gateway_points_dropped_total",
                                                       "Points that will not be stored, by reason",
                                                       "reason=\"ingest_rejected\"");
    self->m_points_dropped_old =
        mh_metrics_counter(m, "mh_gateway_points_dropped_total",
                           "Points that will not be stored, by reason", "reason=\"too_old\"");
    self->m_points_lost_shutdown =
        mh_metrics_counter(m, "mh_gateway_points_dropped_total",
                           "Points that will not be stored, by reason", "reason=\"drain_timeout\"");
    self->m_deferred = mh_metrics_counter(
        m, "mh_gateway_backpressure_total",
        "MQTT messages handed back to Paho because the gateway was full (not lost)", NULL);
    self->m_bad_internal = mh_metrics_counter(m, "mh_gateway_internal_malformed_total",
                                              "Malformed internal messages ignored", NULL);
    self->m_forwarded = mh_metrics_counter(m, "mh_gateway_twin_forwarded_total",
                                           "Device messages and seen reports sent to twin", NULL);
    self->m_forward_dropped =
        mh_metrics_counter(m, "mh_gateway_twin_dropped_total",
                           "Device messages for twin dropped because its queue was full", NULL);
    self->m_downlink_sent = mh_metrics_counter(m, "mh_gateway_downlink_published_total",
                                               "Downlink messages handed to the broker", NULL);
    self->m_downlink_dropped = mh_metrics_counter(m, "mh_gateway_downlink_dropped_total",
                                                  "Downlink messages dropped (queue full)", NULL);
    self->m_downlink_retried = mh_metrics_counter(
        m, "mh_gateway_downlink_deferred_total",
        "Times the broker connection could not take a downlink message yet (retried)", NULL);
    self->m_downlink_unacked = mh_metrics_counter(
        m, "mh_gateway_downlink_unacknowledged_total",
        "Downlink batches not acknowledged: a publish failed, the sender sends them again", NULL);
    self->m_connected =
        mh_metrics_gauge(m, "mh_gateway_mqtt_connected", "1 while connected to the broker", NULL);
    self->m_connects = mh_metrics_counter(
        m, "mh_gateway_mqtt_connects_total",
        "Connections to the broker made (the first and every reconnect), subscriptions sent", NULL);
    static const char *acl_labels[3] = {"op=\"publish\"", "op=\"subscribe\"", "op=\"receive\""};
    for (int i = 0; i < 3; i++)
        self->m_acl_denied[i] = mh_metrics_gauge(
            m, "mh_broker_acl_denied",
            "Operations the broker's ACL denied since it started (its motehub_acl plugin)",
            acl_labels[i]);
    self->m_crl_next_update = mh_metrics_gauge(
        m, "mh_broker_crl_next_update_timestamp_seconds",
        "When the broker's CRL must be replaced (its nextUpdate; 0: no CRL): past it, the broker"
        " refuses every certificate",
        NULL);
}

static gw_t *s_new(zsock_t *pipe, mh_service_ctx_t *ctx)
{
    gw_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->ctx = ctx;
    self->cfg = ctx->cfg;
    self->pipe = pipe;
    self->rl_reject = (mh_ratelimit_t)MH_RATELIMIT_INIT(1000, 10);
    self->rl_warn = (mh_ratelimit_t)MH_RATELIMIT_INIT(1000, 5);
    s_register_metrics(self);
    char tid[33];
    mh_trace_id_new(tid);
    snprintf(self->id_prefix, sizeof self->id_prefix, "g%.16s", tid);

    if (gw_inbox_init(&self->inbox, 2000) != 0)
        return self;

    self->dealer = zsock_new(ZMQ_DEALER);
    zsock_set_sndhwm(self->dealer, (int)self->cfg->window + 16);
    zsock_set_linger(self->dealer, 0);
    zsock_set_reconnect_ivl(self->dealer, 100);
    zsock_set_reconnect_ivl_max(self->dealer, 2000);
    self->resolver = mh_resolver_new(self->dealer, self->cfg->ingest_endpoint);
    self->window = mh_window_new(self->dealer,
                                 &(mh_window_opts_t){.name = "ingest",
                                                     .size = (size_t)self->cfg->window,
                                                     .ack_timeout_ms = self->cfg->ack_timeout_ms,
                                                     .metric_prefix = "mh_gateway"},
                                 ctx->metrics);
    self->seen = zhashx_new();
    self->seen_pending = calloc(GW_SEEN_BATCH, sizeof *self->seen_pending);
    self->dl_queue = zlist_new();
    self->dl_batches = zlistx_new();
    zlistx_set_destructor(self->dl_batches, gw_dlbatch_free);
    mh_relay_opts_t ro = {.instance = ctx->instance,
                          .linger_ms = self->cfg->batch_linger_ms,
                          .ack_timeout_ms = self->cfg->ack_timeout_ms};
    if (*self->cfg->twin_endpoint) {
        ro.endpoint = self->cfg->twin_endpoint, ro.name = "twin";
        ro.metric_prefix = "mh_gateway_twin_relay";
        self->twin_relay = mh_relay_new(&ro, ctx->metrics);
    }
    if (*self->cfg->ota_endpoint) {
        ro.endpoint = self->cfg->ota_endpoint, ro.name = "ota";
        ro.metric_prefix = "mh_gateway_ota_relay";
        self->ota_relay = mh_relay_new(&ro, ctx->metrics);
    }
    if (self->cfg->check_registered)
        self->registry =
            mh_idset_new(&(mh_idset_opts_t){.rpc_endpoint = self->cfg->twin_rpc_endpoint,
                                            .events_endpoint = self->cfg->twin_events_endpoint,
                                            .refresh_ms = self->cfg->registry_refresh_ms,
                                            .metric_prefix = "mh_gateway_registry",
                                            .what = "registered devices"},
                         ctx->metrics);
    self->may_subscribe = !self->cfg->check_registered;
    if (*self->cfg->downlink_bind) {
        self->downlink = zsock_new(ZMQ_ROUTER);
        zsock_set_router_mandatory(self->downlink, 0);
        if (mh_curve_bind(self->downlink, self->cfg->downlink_bind) < 0) {
            mh_error("cannot bind the downlink ROUTER on %s: %s", self->cfg->downlink_bind,
                     zmq_strerror(errno));
            zsock_destroy(&self->downlink);
            self->bind_failed = true;
        }
    }
    /* an event socket that cannot bind is logged; the gateway runs without */
    mh_events_bind(&self->pub, self->cfg->events_bind, 10000);
    return self;
}

static void s_destroy(gw_t **self_p)
{
    gw_t *self = *self_p;
    if (!self)
        return;
    s_mqtt_stop(self);
    gw_inbox_fini(&self->inbox); /* nothing to do if it was never made */
    mh_resolver_destroy(&self->resolver);
    zsock_destroy(&self->dealer);
    zsock_destroy(&self->pub);
    mh_idset_destroy(&self->registry);
    mh_relay_destroy(&self->twin_relay);
    mh_relay_destroy(&self->ota_relay);
    gw_downlink_destroy(self);
    zsock_destroy(&self->downlink);
    zhashx_destroy(&self->seen);
    free(self->seen_pending);
    mh_window_destroy(&self->window);
    gw_points_free(&self->scratch);
    free(self->items);
    free(self->arena);
    free(self);
    *self_p = NULL;
}

/* Reads what Paho handed over; returns false when it should stop reading
 * (batch full and no room in the window). */
static bool s_take_some(gw_t *self, int max)
{
    gw_in_t *v[64];
    for (int i = 0; i < max;) {
        size_t k = gw_inbox_peek(&self->inbox, v, (size_t)(max - i) < 64 ? (size_t)(max - i) : 64);
        if (!k)
            break;
        size_t done = 0;
        for (; done < k; done++) {
            if ((int64_t)self->nitems >= self->cfg->batch_max_points) {
                if (mh_window_full(self->window))
                    break;
                gw_flush(self);
            }
            gw_handle(self, v[done]);
        }
        gw_inbox_drop(&self->inbox, done);
        for (size_t j = 0; j < done; j++)
            free(v[j]);
        if (done < k)
            return false;
        i += (int)k;
    }
    return true;
}

/* Takes up to `max` messages into the batch (false when it had to stop
 * for the window); the batch's age counts from the oldest's arrival. */
static bool s_take_messages(gw_t *self, int max)
{
    int64_t since = gw_inbox_since(&self->inbox);
    bool taken = s_take_some(self, max);
    if (self->nitems && since && since < self->batch_started_ms)
        self->batch_started_ms = since;
    return taken;
}

/* Milliseconds until the batch is due to leave (0 or less: due now). */
static int64_t s_batch_due_in(const gw_t *self, int64_t now)
{
    return self->batch_started_ms + self->cfg->batch_linger_ms - now;
}

/* The actor's poll: a tick, or less when the batch is due sooner. A batch
 * is as old as its oldest message's arrival in the inbox (s_take_messages),
 * since telemetry does not wake the actor (gw_inbox_put): the tick takes it
 * within a linger of its arrival, and it leaves within a linger of the
 * batch's oldest. */
static long s_poll_timeout(gw_t *self, int64_t tick)
{
    if (!self->nitems || mh_window_full(self->window))
        return (long)tick;
    int64_t due = s_batch_due_in(self, mh_mono_ms());
    return due <= 0 ? 0 : due < tick ? (long)due : (long)tick;
}

static bool s_window_full(gw_t *self)
{
    return (mh_window_full(self->window) && (int64_t)self->nitems >= self->cfg->batch_max_points) ||
           (self->twin_relay && mh_relay_full(self->twin_relay)) ||
           (self->ota_relay && mh_relay_full(self->ota_relay));
}

/* Runs `fn` on each relay configured. */
static void s_relays(gw_t *self, void (*fn)(mh_relay_t *))
{
    if (self->twin_relay)
        fn(self->twin_relay);
    if (self->ota_relay)
        fn(self->ota_relay);
}

static void s_relay_tick(mh_relay_t *r)
{
    mh_relay_tick(r, false);
}

static void s_relay_flush(mh_relay_t *r)
{
    mh_relay_tick(r, true);
}

/* Messages to twin and ota not yet acknowledged. */
static size_t s_relay_unacked(gw_t *self)
{
    return (self->twin_relay ? mh_relay_unacked(self->twin_relay) : 0) +
           (self->ota_relay ? mh_relay_unacked(self->ota_relay) : 0);
}

static uint64_t s_received_total(gw_t *self)
{
    uint64_t n = 0;
    for (int i = 0; i < GW_TOPIC_COUNT; i++)
        n += mh_counter_get(self->m_received[i]);
    return n;
}

/* "gateway.stats": the running totals, for the fleet's message rates. */
static void s_publish_stats(gw_t *self)
{
    if (!self->pub)
        return;
    Mh__GatewayStats ev = MH__GATEWAY_STATS__INIT;
    ev.gateway = (char *)self->ctx->instance;
    ev.received = s_received_total(self);
    ev.published = mh_counter_get(self->m_downlink_sent);
    ev.ts_ms = mh_now_ms();
    mh_event_publish(self->pub, "gateway.stats", &ev.base);
}

void gw_actor(zsock_t *pipe, void *args)
{
    mh_service_ctx_t *ctx = args;
    gw_t *self = s_new(pipe, ctx);
    if (!self || !self->inbox.ring || !self->resolver || !self->window || self->bind_failed ||
        (*self->cfg->twin_endpoint && !self->twin_relay) ||
        (*self->cfg->ota_endpoint && !self->ota_relay) ||
        (self->cfg->check_registered && !self->registry)) {
        if (self && !self->resolver)
            mh_error("bad ingest endpoint \"%s\"", ctx->cfg ? self->cfg->ingest_endpoint : "");
        s_destroy(&self);
        mh_actor_failed(pipe);
        return;
    }
    if (mh_resolver_refresh(self->resolver) < 0)
        mh_warn("cannot resolve %s yet, will keep trying", self->cfg->ingest_endpoint);
    s_relays(self, mh_relay_refresh);
    if (s_mqtt_start(self) < 0) {
        s_destroy(&self);
        mh_actor_failed(pipe);
        return;
    }
    mh_actor_ready(pipe);

    enum { RUNNING, UNSUBSCRIBING, DRAINING } phase = RUNNING;
    int64_t next_resolve = mh_mono_ms() + self->cfg->resolve_interval_ms;
    int64_t next_cron = 0, next_stats = 0, phase_deadline = 0, last_message = 0;
    int64_t tick = self->cfg->batch_linger_ms > 0 ? self->cfg->batch_linger_ms : 1;
    for (;;) {
        bool can_take = phase != DRAINING && !s_window_full(self);
        zmq_pollitem_t items[8] = {
            {zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(self->dealer), 0, ZMQ_POLLIN, 0},
        };
        int nitems = 2;
        if (self->downlink)
            items[nitems++] = (zmq_pollitem_t){zsock_resolve(self->downlink), 0, ZMQ_POLLIN, 0};
        if (self->registry) {
            items[nitems++] =
                (zmq_pollitem_t){zsock_resolve(mh_idset_rpc(self->registry)), 0, ZMQ_POLLIN, 0};
            items[nitems++] =
                (zmq_pollitem_t){zsock_resolve(mh_idset_events(self->registry)), 0, ZMQ_POLLIN, 0};
        }
        if (self->twin_relay)
            items[nitems++] = (zmq_pollitem_t){zsock_resolve(mh_relay_socket(self->twin_relay)), 0,
                                               ZMQ_POLLIN, 0};
        if (self->ota_relay)
            items[nitems++] =
                (zmq_pollitem_t){zsock_resolve(mh_relay_socket(self->ota_relay)), 0, ZMQ_POLLIN, 0};
        int in_idx = nitems;
        if (can_take)
            items[nitems++] = (zmq_pollitem_t){NULL, gw_inbox_fd(&self->inbox), ZMQ_POLLIN, 0};
        if (zmq_poll(items, nitems, s_poll_timeout(self, tick)) < 0 && errno != EINTR)
            break;
        for (int i = 0; self->downlink && i < 1000 && (zsock_events(self->downlink) & ZMQ_POLLIN);
             i++)
            gw_on_downlink(self);
        if (self->registry) {
            while (zsock_events(mh_idset_rpc(self->registry)) & ZMQ_POLLIN)
                mh_idset_on_rpc(self->registry);
            for (int i = 0;
                 i < 10000 && (zsock_events(mh_idset_events(self->registry)) & ZMQ_POLLIN); i++)
                mh_idset_on_event(self->registry);
        }
        if ((items[0].revents & ZMQ_POLLIN) && mh_actor_term(pipe) && phase == RUNNING) {
            mh_info("stopping: unsubscribing, then draining %zu unacknowledged batches",
                    mh_window_size(self->window));
            s_mqtt_unsubscribe(self);
            phase = UNSUBSCRIBING;
            phase_deadline = mh_mono_ms() + 5000;
            last_message = mh_mono_ms();
        }
        while (zsock_events(self->dealer) & ZMQ_POLLIN) {
            zframe_t *f = zframe_recv(self->dealer);
            if (!f)
                break;
            gw_on_ack(self, f);
            zframe_destroy(&f);
        }
        /* the inbox signals a burst, not each message (gw_inbox_signal):
         * what is held is taken on any wake-up */
        if (can_take && ((items[in_idx].revents & ZMQ_POLLIN) || gw_inbox_size(&self->inbox))) {
            s_take_messages(self, 2000);
            last_message = mh_mono_ms();
        }

        s_relays(self, mh_relay_on_acks);
        s_relays(self, s_relay_tick);
        if (zlist_size(self->dl_queue))
            gw_downlink_pump(self);
        if (zlistx_size(self->dl_batches))
            gw_downlink_settle(self);
        int64_t now = mh_mono_ms();
        if (self->nitems && s_batch_due_in(self, now) <= 0 && !mh_window_full(self->window))
            gw_flush(self);
        if (now >= next_stats) {
            next_stats = now + 1000;
            s_publish_stats(self);
        }
        if (now >= next_cron) {
            next_cron = now + 100;
            mh_window_tick(self->window);
            gw_downlink_pump(self);
            gw_seen_flush(self);
            if (now - self->seen_pruned > 60000) {
                self->seen_pruned = now;
                gw_seen_prune(self);
            }
            if (self->registry) {
                mh_idset_tick(self->registry);
                if (mh_idset_loaded(self->registry) &&
                    !__atomic_load_n(&self->may_subscribe, __ATOMIC_SEQ_CST) && phase == RUNNING) {
                    __atomic_store_n(&self->may_subscribe, 1, __ATOMIC_SEQ_CST);
                    if (__atomic_load_n(&self->mqtt_connected, __ATOMIC_SEQ_CST))
                        gw_subscribe(self);
                }
            }
            mh_http_heartbeat(ctx->http);
            int up = __atomic_load_n(&self->mqtt_subscribed, __ATOMIC_ACQUIRE);
            mh_gauge_set(self->m_connected,
                         __atomic_load_n(&self->mqtt_connected, __ATOMIC_ACQUIRE));
            mh_http_set_ready(ctx->http, up && phase == RUNNING);
        }
        if (now >= next_resolve) {
            next_resolve = now + self->cfg->resolve_interval_ms;
            mh_resolver_refresh(self->resolver);
            s_relays(self, mh_relay_refresh);
        }
        if (phase == UNSUBSCRIBING) {
            /* In-flight messages still arrive after the UNSUBACK; wait for
             * a quiet moment before closing the session. */
            bool unsub = __atomic_load_n(&self->unsubscribed, __ATOMIC_ACQUIRE);
            /* and for a message Paho holds to offer again (the actor was
             * behind): closing the session would drop it unacknowledged */
            int64_t deferred = __atomic_load_n(&self->deferred_ms, __ATOMIC_ACQUIRE);
            if ((unsub && now - last_message > 300 && now - deferred > 2000) ||
                now > phase_deadline) {
                s_mqtt_stop(self);
                s_take_messages(self, INT32_MAX); /* whatever Paho handed over last */
                phase = DRAINING;
                phase_deadline = now + self->cfg->drain_timeout_ms;
            }
        }
        if (phase == DRAINING) {
            if (self->nitems && !mh_window_full(self->window))
                gw_flush(self);
            /* Messages may still sit in the inproc queue when the batch was full. */
            if (gw_inbox_size(&self->inbox) && !s_window_full(self))
                s_take_messages(self, 2000);
            gw_seen_flush(self);
            s_relays(self, s_relay_flush);
            bool empty = !self->nitems && mh_window_size(self->window) == 0 &&
                         !s_relay_unacked(self) && !gw_inbox_size(&self->inbox);
            if (empty) {
                if (zlist_size(self->dl_queue))
                    mh_warn("stopping with %zu downlink messages not published",
                            zlist_size(self->dl_queue));
                break;
            }
            if (now > phase_deadline) {
                uint64_t lost = self->nitems + self->points_in_flight;
                mh_counter_add(self->m_points_lost_shutdown, lost);
                mh_error("drain timed out: %" PRIu64 " points not acknowledged by ingest, %zu"
                         " messages not acknowledged by twin and ota",
                         lost, s_relay_unacked(self));
                break;
            }
        }
    }
    mh_info("drained: %" PRIu64 " messages received, %" PRIu64 " points accepted, %" PRIu64
            " stored, %" PRIu64 " batches re-sent",
            s_received_total(self), mh_counter_get(self->m_points),
            mh_counter_get(self->m_points_stored), mh_window_resent(self->window));
    s_destroy(&self);
    /* Paho's clean-up ran OpenSSL on this thread; free its thread state now
     * (CZMQ's actor threads are detached, so the process may exit before
     * this thread's own exit handlers run, and LeakSanitizer saw that). */
    OPENSSL_thread_stop();
}
