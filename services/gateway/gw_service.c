/* The gateway actor.
 *
 * Threads: Paho's receive thread calls s_on_message, which copies the topic
 * and payload onto an inproc PUSH socket and returns; everything else happens
 * in the actor thread. When the actor cannot keep up (ingest slow, window
 * full) it stops reading that socket, the inproc queue fills, s_on_message
 * returns 0 ("not received") and Paho hands the message again later: the
 * broker keeps what we cannot take, nothing is dropped here.
 *
 * Delivery: a point is "held" from the moment Paho acknowledged its MQTT
 * message until ingest acknowledges its batch after commit. Unacknowledged
 * batches stay in the window and are re-sent after ack_timeout (to any ingest
 * replica). On $TERM the gateway unsubscribes, takes what is still in
 * flight, flushes, and waits for every ack before it exits. */
#include "gw_service.h"
#include "mh_json.h"
#include "mh_idset.h"

#include <openssl/crypto.h>
#include "gw_validate.h"
#include "mh_curve.h"
#include "mh_envelope.h"
#include "mh_resolver.h"
#include "mh_time.h"
#include "telemetry.pb-c.h"
#include "twin.pb-c.h"

#include <MQTTAsync.h>
#include <jansson.h>
#include <inttypes.h>

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
     "twin's PULL for device messages (empty: twin topics are not taken)"},
    {"twin-rpc-endpoint", "MH_TWIN_RPC_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5581",
     S_CFG(twin_rpc_endpoint), "twin's RPC ROUTER, for the registered device ids"},
    {"twin-events-endpoint", "MH_TWIN_EVENTS_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5573",
     S_CFG(twin_events_endpoint), "twin's event PUB, to keep the registered ids current"},
    {"downlink-bind", "MH_DOWNLINK_BIND", MH_CFG_STR, "tcp://127.0.0.1:5590", S_CFG(downlink_bind),
     "where the PULL for downlink publishes from twin and ota binds (empty: none)"},
    {"ota-endpoint", "MH_OTA_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5582", S_CFG(ota_endpoint),
     "ota's PULL for OTA status messages (empty: ota/status is not taken)"},
    {"check-registered", "MH_CHECK_REGISTERED", MH_CFG_BOOL, "true", S_CFG(check_registered),
     "drop messages from device ids twin does not know (the gateway subscribes only once the"
     " registered ids are loaded)"},
    {"registry-refresh", "MH_REGISTRY_REFRESH", MH_CFG_DURATION, "5m", S_CFG(registry_refresh_ms),
     "how often the registered ids are loaded again in full (events keep them current between)"},
    {"seen-interval", "MH_SEEN_INTERVAL", MH_CFG_DURATION, "10s", S_CFG(seen_interval_ms),
     "a device's telemetry tells twin it was seen at most this often"},
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
typedef struct {
    zframe_t *frame; /* the packed envelope, kept for re-sending */
    int64_t sent_ms; /* monotonic; 0 = not sent yet (queue was full) */
    uint32_t points, attempts;
} s_pending_t;

/* The batch being filled: narrow points with offsets into a string arena. */
typedef struct {
    uint32_t dev_off, met_off;
    int64_t ts_ms;
    double value;
} s_item_t;

typedef struct {
    mh_service_ctx_t *ctx;
    gw_config_t *cfg;
    zsock_t *pipe;

    MQTTAsync mqtt;
    zsock_t *in_push; /* used only by Paho's thread after start-up */
    zsock_t *in_pull;
    int mqtt_connected, mqtt_subscribed, unsubscribed; /* atomics, set by Paho callbacks */
    int may_subscribe;                                 /* atomic: registry loaded (or unchecked) */
    bool bind_failed;

    zsock_t *dealer; /* to ingest */
    mh_resolver_t *resolver;
    zsock_t *pub; /* events, may be NULL */

    /* twin */
    zsock_t *twin_push; /* device messages to twin, may be NULL */
    zsock_t *ota_push;  /* OTA status messages to ota, may be NULL */
    mh_resolver_t *ota_resolver;
    mh_resolver_t *twin_resolver;
    zsock_t *downlink;    /* PULL, may be NULL */
    zlist_t *dl_queue;    /* Mh__Publish* waiting for Paho to take them */
    mh_idset_t *registry; /* NULL when not checking */
    zhashx_t *seen;       /* device -> monotonic ms it was last reported seen */
    struct s_seen_item {
        char id[GW_MAX_ID + 1];
        int64_t ms;
    } * seen_pending; /* devices to report, with the time they were heard */
    size_t nseen;
    int64_t seen_flushed, seen_pruned;

    gw_points_t scratch; /* one message's points while validating */
    s_item_t *items;
    size_t nitems, cap_items;
    char *arena;
    size_t arena_len, arena_cap;
    uint32_t batch_messages;
    int64_t batch_started_ms; /* monotonic, of the first point */

    zhashx_t *window; /* batch id -> s_pending_t */
    uint64_t batch_seq;
    char id_prefix[48];

    /* metrics */
    mh_counter_t *m_received[GW_TOPIC_COUNT], *m_forwarded, *m_forward_dropped, *m_downlink_sent,
        *m_downlink_dropped, *m_downlink_retried, *m_rejected[GW_REASON_COUNT], *m_points,
        *m_batches_sent, *m_batches_resent, *m_batches_acked, *m_points_stored,
        *m_points_dropped_ingest, *m_points_dropped_old, *m_points_lost_shutdown, *m_deferred,
        *m_bad_internal;
    mh_gauge_t *m_window, *m_connected, *m_acl_denied[3];
    mh_ratelimit_t rl_reject, rl_warn;
} gw_t;

static const char *s_kind_names[GW_TOPIC_COUNT] = {
    "telemetry", "telemetry_pb", "status", "twin_get", "twin_update", "command_ack", "ota_status"};

/* ---- Paho callbacks (Paho's thread) ---- */

#define S_ACL_TOPIC "$SYS/motehub/acl"

static bool s_tls(const gw_config_t *cfg)
{
    return strncmp(cfg->mqtt_url, "ssl://", 6) == 0 || strncmp(cfg->mqtt_url, "mqtts://", 8) == 0;
}

/* The broker's ACL denial counts (services/broker-acl), mirrored as gauges. */
static void s_acl_stats(gw_t *self, const MQTTAsync_message *msg)
{
    json_t *j = mh_json_loadb(msg->payload, (size_t)msg->payloadlen, 0, MH_JSON_MAX_DEPTH, NULL);
    static const char *keys[3] = {"denied_publish", "denied_subscribe", "denied_receive"};
    for (int i = 0; i < 3 && j; i++)
        if (json_is_integer(json_object_get(j, keys[i])))
            mh_gauge_set(self->m_acl_denied[i],
                         (double)json_integer_value(json_object_get(j, keys[i])));
    json_decref(j);
}

static int s_on_message(void *context, char *topic, int topic_len, MQTTAsync_message *msg)
{
    gw_t *self = context;
    size_t tlen = topic_len > 0 ? (size_t)topic_len : strlen(topic);
    if (tlen == strlen(S_ACL_TOPIC) && memcmp(topic, S_ACL_TOPIC, tlen) == 0) {
        s_acl_stats(self, msg);
        MQTTAsync_freeMessage(&msg);
        MQTTAsync_free(topic);
        return 1;
    }
    zmsg_t *m = zmsg_new();
    zmsg_addmem(m, topic, tlen);
    zmsg_addmem(m, msg->payload, (size_t)msg->payloadlen);
    /* Blocks up to the socket's send timeout when the actor is behind. */
    if (zmsg_send(&m, self->in_push) != 0) {
        zmsg_destroy(&m);
        mh_counter_inc(self->m_deferred);
        return 0; /* not taken: Paho will offer it again */
    }
    MQTTAsync_freeMessage(&msg);
    MQTTAsync_free(topic);
    return 1;
}

static void s_on_subscribed(void *context, MQTTAsync_successData5 *resp)
{
    gw_t *self = context;
    int ok = 1;
    for (int i = 0; i < resp->alt.sub.reasonCodeCount; i++)
        if (resp->alt.sub.reasonCodes[i] >= 0x80)
            ok = 0;
    if (resp->alt.sub.reasonCodeCount == 0 && resp->reasonCode >= 0x80)
        ok = 0;
    __atomic_store_n(&self->mqtt_subscribed, ok, __ATOMIC_RELEASE);
    if (!ok)
        mh_error("broker refused a subscription");
}

static void s_on_subscribed3(void *context, MQTTAsync_successData *resp)
{
    (void)resp;
    gw_t *self = context;
    __atomic_store_n(&self->mqtt_subscribed, 1, __ATOMIC_RELEASE);
}

static void s_on_sub_failed(void *context, MQTTAsync_failureData5 *resp)
{
    (void)context;
    mh_error("subscribe failed: %s", resp && resp->message ? resp->message : "no reason");
}

static void s_on_sub_failed3(void *context, MQTTAsync_failureData *resp)
{
    (void)context;
    mh_error("subscribe failed: %s", resp && resp->message ? resp->message : "no reason");
}

/* The topic filters the gateway takes, shared or plain: telemetry and
 * status always, the twin topics when a twin endpoint is set, ota/status
 * when an ota endpoint is. */
#define S_NTOPICS 7
typedef struct {
    char buf[S_NTOPICS][160];
    char *ptr[S_NTOPICS];
    int qos[S_NTOPICS];
    int n;
} s_topics_t;

static void s_topics(gw_t *self, s_topics_t *t)
{
    static const char *all[S_NTOPICS] = {"telemetry",   "telemetry/pb", "status",    "twin/get",
                                         "twin/update", "commands/ack", "ota/status"};
    const char *suffixes[S_NTOPICS];
    t->n = 0;
    for (int i = 0; i < S_NTOPICS; i++)
        if (i < 3 || (i < 6 && *self->cfg->twin_endpoint) || (i == 6 && *self->cfg->ota_endpoint))
            suffixes[t->n++] = all[i];
    for (int i = 0; i < t->n; i++) {
        if (*self->cfg->share_group)
            snprintf(t->buf[i], sizeof t->buf[i], "$share/%s/devices/+/%s", self->cfg->share_group,
                     suffixes[i]);
        else
            snprintf(t->buf[i], sizeof t->buf[i], "devices/+/%s", suffixes[i]);
        t->ptr[i] = t->buf[i];
        t->qos[i] = 1;
    }
}

static void s_subscribe(gw_t *self)
{
    s_topics_t t;
    s_topics(self, &t);
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.context = self;
    if (self->cfg->mqtt_version == 5) {
        ro.onSuccess5 = s_on_subscribed;
        ro.onFailure5 = s_on_sub_failed;
    } else {
        ro.onSuccess = s_on_subscribed3;
        ro.onFailure = s_on_sub_failed3;
    }
    int rc = MQTTAsync_subscribeMany(self->mqtt, t.n, t.ptr, t.qos, &ro);
    if (rc != MQTTASYNC_SUCCESS)
        mh_error("subscribe failed to start: %s", MQTTAsync_strerror(rc));
}

/* Called on the first connect and on every automatic reconnect; the session
 * is clean, so subscriptions are made again each time. */
static void s_on_connected(void *context, char *cause)
{
    (void)cause;
    gw_t *self = context;
    __atomic_store_n(&self->mqtt_connected, 1, __ATOMIC_SEQ_CST);
    mh_info("connected to %s", self->cfg->mqtt_url);
    /* Until the registered ids are loaded, take nothing: the actor
     * subscribes once they are (see s_registry_ready). */
    if (__atomic_load_n(&self->may_subscribe, __ATOMIC_SEQ_CST))
        s_subscribe(self);
    /* The broker plugin's denial counts: a plain subscription (every replica
     * mirrors them); a broker without the plugin just never publishes. */
    if (s_tls(self->cfg)) {
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        MQTTAsync_subscribe(self->mqtt, S_ACL_TOPIC, 0, &ro);
    }
}

static void s_on_connection_lost(void *context, char *cause)
{
    gw_t *self = context;
    __atomic_store_n(&self->mqtt_connected, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&self->mqtt_subscribed, 0, __ATOMIC_RELEASE);
    mh_warn("lost the broker connection (%s), reconnecting", cause ? cause : "no reason");
}

static void s_on_unsubscribed(void *context, MQTTAsync_successData5 *resp)
{
    (void)resp;
    gw_t *self = context;
    __atomic_store_n(&self->unsubscribed, 1, __ATOMIC_RELEASE);
}

static void s_on_unsubscribed3(void *context, MQTTAsync_successData *resp)
{
    (void)resp;
    gw_t *self = context;
    __atomic_store_n(&self->unsubscribed, 1, __ATOMIC_RELEASE);
}

static void s_on_connect_failed5(void *context, MQTTAsync_failureData5 *resp)
{
    gw_t *self = context;
    mh_log_limited(&self->rl_warn, MH_LOG_WARN, "cannot connect to %s (%s), retrying",
                   self->cfg->mqtt_url, resp && resp->message ? resp->message : "no reason");
}

static void s_on_connect_failed3(void *context, MQTTAsync_failureData *resp)
{
    gw_t *self = context;
    mh_log_limited(&self->rl_warn, MH_LOG_WARN, "cannot connect to %s (%s), retrying",
                   self->cfg->mqtt_url, resp && resp->message ? resp->message : "no reason");
}

/* ---- the batch ---- */

static int s_arena_add(gw_t *self, const char *s, uint32_t *off_out)
{
    size_t len = strlen(s) + 1;
    if (self->arena_len + len > self->arena_cap) {
        size_t cap = self->arena_cap * 2 + len + 4096;
        char *a = realloc(self->arena, cap);
        if (!a)
            return -1;
        self->arena = a;
        self->arena_cap = cap;
    }
    memcpy(self->arena + self->arena_len, s, len);
    *off_out = (uint32_t)self->arena_len;
    self->arena_len += len;
    return 0;
}

/* Moves one validated message's points into the batch. */
static int s_batch_add(gw_t *self, const char *device)
{
    if (self->nitems + self->scratch.n > self->cap_items) {
        size_t cap = (self->cap_items ? self->cap_items * 2 : 1024) + self->scratch.n;
        s_item_t *v = realloc(self->items, cap * sizeof *v);
        if (!v)
            return -1;
        self->items = v;
        self->cap_items = cap;
    }
    uint32_t dev_off;
    if (s_arena_add(self, device, &dev_off) < 0)
        return -1;
    /* Consecutive points of one message usually share metric names with
     * other messages; a tiny cache would help, but the arena is cheap. */
    for (size_t i = 0; i < self->scratch.n; i++) {
        const gw_point_t *p = &self->scratch.v[i];
        uint32_t met_off;
        if (s_arena_add(self, gw_point_metric(&self->scratch, p), &met_off) < 0)
            return -1;
        self->items[self->nitems++] = (s_item_t){dev_off, met_off, p->ts_ms, p->value};
    }
    if (self->batch_messages++ == 0)
        self->batch_started_ms = mh_mono_ms();
    return 0;
}

static void s_send_pending(gw_t *self, const char *batch_id, s_pending_t *p)
{
    zframe_t *copy = zframe_dup(p->frame);
    void *raw = zsock_resolve(self->dealer);
    if (zmq_send(raw, zframe_data(copy), zframe_size(copy), ZMQ_DONTWAIT) >= 0) {
        p->sent_ms = mh_mono_ms();
        if (p->attempts++ > 0) {
            mh_counter_inc(self->m_batches_resent);
            mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                           "batch %s not acknowledged in time, sent again (attempt %u)", batch_id,
                           p->attempts);
        } else {
            mh_counter_inc(self->m_batches_sent);
        }
    } else {
        p->sent_ms = 0; /* no ingest reachable yet; the cron tries again */
    }
    zframe_destroy(&copy);
}

static void s_flush(gw_t *self)
{
    if (!self->nitems)
        return;
    size_t n = self->nitems;
    Mh__Point *pts = calloc(n, sizeof *pts);
    Mh__Point **ptrs = calloc(n, sizeof *ptrs);
    if (!pts || !ptrs) {
        free(pts);
        free(ptrs);
        return; /* try again on the next tick */
    }
    for (size_t i = 0; i < n; i++) {
        mh__point__init(&pts[i]);
        pts[i].device_id = self->arena + self->items[i].dev_off;
        pts[i].metric = self->arena + self->items[i].met_off;
        pts[i].ts_ms = self->items[i].ts_ms;
        pts[i].value = self->items[i].value;
        ptrs[i] = &pts[i];
    }
    char batch_id[80];
    snprintf(batch_id, sizeof batch_id, "%s-%" PRIu64, self->id_prefix, ++self->batch_seq);
    Mh__TelemetryBatch b = MH__TELEMETRY_BATCH__INIT;
    b.batch_id = batch_id;
    b.points = ptrs;
    b.n_points = n;
    b.messages = self->batch_messages;
    b.received_ms = mh_now_ms() - (mh_mono_ms() - self->batch_started_ms);
    zframe_t *frame = mh_envelope_pack("telemetry.batch", NULL, &b.base);
    free(pts);
    free(ptrs);
    if (!frame)
        return;
    s_pending_t *p = calloc(1, sizeof *p);
    p->frame = frame;
    p->points = (uint32_t)n;
    zhashx_insert(self->window, batch_id, p);
    p = zhashx_lookup(self->window, batch_id);
    s_send_pending(self, batch_id, p);
    self->nitems = 0;
    self->arena_len = 0;
    self->batch_messages = 0;
    mh_gauge_set(self->m_window, (double)zhashx_size(self->window));
}

static void s_pending_destroy(void **item)
{
    s_pending_t *p = *item;
    if (p) {
        zframe_destroy(&p->frame);
        free(p);
        *item = NULL;
    }
}

/* ---- handling device messages ---- */

/* Counts, logs and publishes a refusal. The topic is copied into a string
 * only here, off the path of accepted messages. */
static void s_reject(gw_t *self, const char *device, zframe_t *topic_frame, gw_reason_t r,
                     const char *detail)
{
    char topic[512];
    size_t tlen =
        zframe_size(topic_frame) < sizeof topic - 1 ? zframe_size(topic_frame) : sizeof topic - 1;
    memcpy(topic, zframe_data(topic_frame), tlen);
    topic[tlen] = 0;
    mh_counter_inc(self->m_rejected[r]);
    mh_log_limited(&self->rl_reject, MH_LOG_WARN,
                   "rejected message, ignoring (device=%s topic=%.128s reason=%s: %s)",
                   *device ? device : "-", topic, gw_reason_name(r), detail);
    if (self->pub) {
        Mh__DeviceRejected ev = MH__DEVICE_REJECTED__INIT;
        ev.device_id = (char *)device;
        ev.reason = (char *)gw_reason_name(r);
        ev.detail = (char *)detail;
        ev.topic = (char *)topic;
        mh_event_publish(self->pub, "device.rejected", &ev.base);
    }
}

/* ---- twin: forwarding, seen, downlink ---- */

static void s_forward_to(gw_t *self, zsock_t *push, const char *who, const char *type,
                         const ProtobufCMessage *body)
{
    if (mh_envelope_send(push, NULL, type, NULL, body, true) == 0) {
        mh_counter_inc(self->m_forwarded);
    } else {
        mh_counter_inc(self->m_forward_dropped);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                       "%s is not taking device messages (queue full); one dropped", who);
    }
}

static void s_forward(gw_t *self, const char *type, const ProtobufCMessage *body)
{
    s_forward_to(self, self->twin_push, "twin", type, body);
}

static void s_forward_message(gw_t *self, const char *device, Mh__DeviceMessage__Kind kind,
                              const char *payload, size_t plen, int64_t now, bool online,
                              const char *firmware)
{
    Mh__DeviceMessage dm = MH__DEVICE_MESSAGE__INIT;
    dm.device_id = (char *)device;
    dm.kind = kind;
    dm.payload.data = (uint8_t *)payload;
    dm.payload.len = plen;
    dm.received_ms = now;
    dm.online = online;
    dm.firmware = (char *)(firmware ? firmware : "");
    s_forward(self, "device.message", &dm.base);
    /* The message itself tells twin the device was seen. */
    zhashx_update(self->seen, device, (void *)(uintptr_t)mh_mono_ms());
}

#define S_SEEN_BATCH 1000

static void s_seen_flush(gw_t *self)
{
    size_t n = self->nseen;
    if (!n)
        return;
    char *ids[S_SEEN_BATCH];
    int64_t ms[S_SEEN_BATCH];
    for (size_t i = 0; i < n; i++) {
        ids[i] = self->seen_pending[i].id;
        ms[i] = self->seen_pending[i].ms;
    }
    Mh__DeviceSeen ev = MH__DEVICE_SEEN__INIT;
    ev.device_ids = ids;
    ev.n_device_ids = n;
    ev.seen_ms = ms;
    ev.n_seen_ms = n;
    ev.ts_ms = mh_now_ms();
    s_forward(self, "device.seen", &ev.base);
    self->nseen = 0;
}

/* Telemetry tells twin a device is alive, at most once per seen-interval. */
static void s_seen(gw_t *self, const char *device, int64_t received_ms)
{
    int64_t now = mh_mono_ms();
    uintptr_t last = (uintptr_t)zhashx_lookup(self->seen, device);
    if (last && now - (int64_t)last < self->cfg->seen_interval_ms)
        return;
    zhashx_update(self->seen, device, (void *)(uintptr_t)now);
    snprintf(self->seen_pending[self->nseen].id, sizeof self->seen_pending[0].id, "%s", device);
    self->seen_pending[self->nseen++].ms = received_ms;
    if (self->nseen >= S_SEEN_BATCH)
        s_seen_flush(self);
}

static void s_seen_prune(gw_t *self)
{
    int64_t now = mh_mono_ms();
    zlistx_t *old = zlistx_new();
    for (void *v = zhashx_first(self->seen); v; v = zhashx_next(self->seen))
        if (now - (int64_t)(uintptr_t)v >= self->cfg->seen_interval_ms)
            zlistx_add_end(old, (void *)zhashx_cursor(self->seen));
    for (const char *k = zlistx_first(old); k; k = zlistx_next(old))
        zhashx_delete(self->seen, k);
    zlistx_destroy(&old);
}

static void s_publish_free(Mh__Publish *p)
{
    free(p->topic);
    free(p->payload.data);
    free(p);
}

/* Hands queued downlink publishes to Paho, in order, while it takes them. */
static void s_downlink_pump(gw_t *self)
{
    Mh__Publish *p;
    while ((p = zlist_first(self->dl_queue))) {
        if (!__atomic_load_n(&self->mqtt_connected, __ATOMIC_ACQUIRE))
            return;
        MQTTAsync_message msg = MQTTAsync_message_initializer;
        msg.payload = p->payload.data;
        msg.payloadlen = (int)p->payload.len;
        msg.qos = p->qos > 1 ? 1 : (int)p->qos;
        int rc = MQTTAsync_sendMessage(self->mqtt, p->topic, &msg, NULL);
        if (rc != MQTTASYNC_SUCCESS) {
            mh_counter_inc(self->m_downlink_retried);
            return; /* Paho is full or reconnecting: try again on the next tick */
        }
        mh_counter_inc(self->m_downlink_sent);
        zlist_pop(self->dl_queue);
        s_publish_free(p);
    }
}

static void s_on_downlink(gw_t *self)
{
    zframe_t *f = zframe_recv(self->downlink);
    if (!f)
        return;
    Mh__Envelope *env = mh_envelope_unpack(f);
    zframe_destroy(&f);
    Mh__Downlink *dl = NULL;
    if (env && strcmp(env->type, "downlink") == 0)
        dl = mh__downlink__unpack(NULL, env->body.len, env->body.data);
    mh_envelope_free(&env);
    if (!dl) {
        mh_counter_inc(self->m_bad_internal);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "malformed downlink message, ignoring");
        return;
    }
    for (size_t i = 0; i < dl->n_publishes; i++) {
        Mh__Publish *in = dl->publishes[i];
        if (zlist_size(self->dl_queue) >= 100000) {
            mh_counter_inc(self->m_downlink_dropped);
            mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                           "downlink queue full (broker unreachable?); publish to %s dropped",
                           in->topic);
            continue;
        }
        Mh__Publish *p = calloc(1, sizeof *p);
        mh__publish__init(p);
        p->topic = strdup(in->topic);
        p->payload.data = malloc(in->payload.len + 1);
        memcpy(p->payload.data, in->payload.data, in->payload.len);
        p->payload.len = in->payload.len;
        p->qos = in->qos;
        zlist_append(self->dl_queue, p);
    }
    mh__downlink__free_unpacked(dl, NULL);
    s_downlink_pump(self);
}

static void s_handle(gw_t *self, zmsg_t *m)
{
    zframe_t *ft = zmsg_first(m), *fp = zmsg_next(m);
    if (!ft || !fp) {
        mh_counter_inc(self->m_bad_internal);
        return;
    }
    char device[GW_MAX_ID + 1];
    char detail[256];
    device[0] = detail[0] = 0;
    gw_topic_kind_t kind;
    gw_reason_t r = gw_topic_parse((const char *)zframe_data(ft), zframe_size(ft), device, &kind);
    if (r) {
        s_reject(self, device, ft, r, "topic is not one of the protocol's");
        return;
    }
    mh_counter_inc(self->m_received[kind]);
    if (self->registry && !mh_idset_has(self->registry, device)) {
        s_reject(self, device, ft, GW_UNREGISTERED, "the device is not registered");
        return;
    }
    const char *payload = (const char *)zframe_data(fp);
    size_t plen = zframe_size(fp);
    int64_t now = mh_now_ms();
    gw_points_reset(&self->scratch);
    switch (kind) {
    case GW_TOPIC_TELEMETRY:
        r = gw_validate_telemetry_json(payload, plen, now, &self->scratch, detail, sizeof detail);
        break;
    case GW_TOPIC_TELEMETRY_PB:
        r = gw_validate_telemetry_pb((const uint8_t *)payload, plen, now, &self->scratch, detail,
                                     sizeof detail);
        break;
    case GW_TOPIC_STATUS: {
        bool online = false;
        char firmware[GW_MAX_FIRMWARE + 1];
        r = gw_validate_status(payload, plen, &online, firmware, detail, sizeof detail);
        if (!r && self->twin_push)
            s_forward_message(self, device, MH__DEVICE_MESSAGE__KIND__STATUS, payload, plen, now,
                              online, firmware);
        break;
    }
    case GW_TOPIC_TWIN_GET:
    case GW_TOPIC_TWIN_UPDATE:
    case GW_TOPIC_COMMAND_ACK:
        /* Twin validates these and answers the device on .../rejected. */
        if (plen > GW_MAX_PAYLOAD) {
            snprintf(detail, sizeof detail, "payload of %zu bytes is over the limit", plen);
            r = GW_TOO_LARGE;
        } else if (self->twin_push) {
            Mh__DeviceMessage__Kind k =
                kind == GW_TOPIC_TWIN_GET      ? MH__DEVICE_MESSAGE__KIND__TWIN_GET
                : kind == GW_TOPIC_TWIN_UPDATE ? MH__DEVICE_MESSAGE__KIND__TWIN_UPDATE
                                               : MH__DEVICE_MESSAGE__KIND__COMMAND_ACK;
            s_forward_message(self, device, k, payload, plen, now, false, NULL);
        }
        break;
    case GW_TOPIC_OTA_STATUS:
        r = gw_validate_ota_status(payload, plen, detail, sizeof detail);
        if (!r && self->ota_push) {
            Mh__DeviceMessage dm = MH__DEVICE_MESSAGE__INIT;
            dm.device_id = device;
            dm.kind = MH__DEVICE_MESSAGE__KIND__OTA_STATUS;
            dm.payload.data = (uint8_t *)payload;
            dm.payload.len = plen;
            dm.received_ms = now;
            s_forward_to(self, self->ota_push, "ota", "device.message", &dm.base);
        }
        if (!r && self->twin_push)
            s_seen(self, device, now);
        break;
    default:
        break;
    }
    if (r) {
        s_reject(self, device, ft, r, detail);
        return;
    }
    if (self->scratch.n) {
        if (s_batch_add(self, device) < 0) {
            mh_error("out of memory adding points; message from %s lost", device);
            return;
        }
        mh_counter_add(self->m_points, self->scratch.n);
        if (self->twin_push)
            s_seen(self, device, now);
    }
}

/* ---- acknowledgements from ingest ---- */

static void s_on_ack(gw_t *self, zframe_t *frame)
{
    Mh__Envelope *env = mh_envelope_unpack(frame);
    Mh__TelemetryAck *ack = NULL;
    if (!env || strcmp(env->type, "telemetry.ack") != 0 ||
        !(ack = mh__telemetry_ack__unpack(NULL, env->body.len, env->body.data))) {
        mh_counter_inc(self->m_bad_internal);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "malformed message from ingest, ignoring");
        mh_envelope_free(&env);
        return;
    }
    s_pending_t *p = zhashx_lookup(self->window, ack->batch_id);
    if (p) {
        mh_counter_inc(self->m_batches_acked);
        if (ack->status == MH__TELEMETRY_ACK__STATUS__REJECTED) {
            mh_counter_add(self->m_points_dropped_ingest, p->points);
            mh_log_limited(&self->rl_warn, MH_LOG_ERROR, "ingest refused batch %s (%u points): %s",
                           ack->batch_id, p->points, ack->error);
        } else {
            mh_counter_add(self->m_points_stored, ack->stored);
            mh_counter_add(self->m_points_dropped_old, ack->dropped);
        }
        zhashx_delete(self->window, ack->batch_id);
        mh_gauge_set(self->m_window, (double)zhashx_size(self->window));
    }
    mh__telemetry_ack__free_unpacked(ack, NULL);
    mh_envelope_free(&env);
}

static void s_resend_expired(gw_t *self)
{
    int64_t now = mh_mono_ms();
    for (s_pending_t *p = zhashx_first(self->window); p; p = zhashx_next(self->window))
        if (p->sent_ms == 0 || now - p->sent_ms >= self->cfg->ack_timeout_ms)
            s_send_pending(self, zhashx_cursor(self->window), p);
}

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
    int rc = MQTTAsync_createWithOptions(&self->mqtt, self->cfg->mqtt_url, cid,
                                         MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc != MQTTASYNC_SUCCESS) {
        mh_error("bad MQTT settings (%s): %s", self->cfg->mqtt_url, MQTTAsync_strerror(rc));
        return -1;
    }
    MQTTAsync_setCallbacks(self->mqtt, self, s_on_connection_lost, s_on_message, NULL);
    MQTTAsync_setConnected(self->mqtt, self, s_on_connected);
    MQTTAsync_connectOptions opts;
    if (self->cfg->mqtt_version == 5) {
        opts = (MQTTAsync_connectOptions)MQTTAsync_connectOptions_initializer5;
        opts.cleanstart = 1;
        opts.onFailure5 = s_on_connect_failed5;
    } else {
        opts = (MQTTAsync_connectOptions)MQTTAsync_connectOptions_initializer;
        opts.cleansession = 1;
        opts.onFailure = s_on_connect_failed3;
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
    if (s_tls(self->cfg)) {
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
    s_topics_t t;
    s_topics(self, &t);
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.context = self;
    if (self->cfg->mqtt_version == 5)
        ro.onSuccess5 = s_on_unsubscribed;
    else
        ro.onSuccess = s_on_unsubscribed3;
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
    /* After destroy no callback runs, so in_push is ours again. A clean
     * disconnect calls no connection-lost callback: say "not connected"
     * ourselves, or the downlink pump would hand publishes to the freed
     * client (the SIGSEGV on SIGTERM while twin was sending downlinks). */
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
    self->m_batches_sent =
        mh_metrics_counter(m, "mh_gateway_batches_sent_total", "Batches sent to ingest", NULL);
    self->m_batches_resent = mh_metrics_counter(m, "mh_gateway_batches_resent_total",
                                                "Batches sent again after the ack timeout", NULL);
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
    self->m_window = mh_metrics_gauge(m, "mh_gateway_window_batches",
                                      "Batches sent and not yet acknowledged", NULL);
    self->m_connected =
        mh_metrics_gauge(m, "mh_gateway_mqtt_connected", "1 while connected to the broker", NULL);
    static const char *acl_labels[3] = {"op=\"publish\"", "op=\"subscribe\"", "op=\"receive\""};
    for (int i = 0; i < 3; i++)
        self->m_acl_denied[i] = mh_metrics_gauge(
            m, "mh_broker_acl_denied",
            "Operations the broker's ACL denied since it started (its motehub_acl plugin)",
            acl_labels[i]);
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
    self->window = zhashx_new();
    zhashx_set_destructor(self->window, s_pending_destroy);

    char ep[64];
    snprintf(ep, sizeof ep, "inproc://gw-in-%p", (void *)self);
    self->in_pull = zsock_new_pull(NULL);
    zsock_set_rcvhwm(self->in_pull, 2000);
    if (zsock_bind(self->in_pull, "%s", ep) < 0)
        return self;
    self->in_push = zsock_new_push(ep);
    zsock_set_sndhwm(self->in_push, 2000);
    zsock_set_sndtimeo(self->in_push, 200);

    self->dealer = zsock_new(ZMQ_DEALER);
    zsock_set_sndhwm(self->dealer, (int)self->cfg->window + 16);
    zsock_set_linger(self->dealer, 0);
    zsock_set_reconnect_ivl(self->dealer, 100);
    zsock_set_reconnect_ivl_max(self->dealer, 2000);
    self->resolver = mh_resolver_new(self->dealer, self->cfg->ingest_endpoint);
    self->seen = zhashx_new();
    self->seen_pending = calloc(S_SEEN_BATCH, sizeof *self->seen_pending);
    self->dl_queue = zlist_new();
    if (*self->cfg->twin_endpoint)
        self->twin_push = mh_push_new(self->cfg->twin_endpoint, &self->twin_resolver);
    if (*self->cfg->ota_endpoint)
        self->ota_push = mh_push_new(self->cfg->ota_endpoint, &self->ota_resolver);
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
        self->downlink = zsock_new(ZMQ_PULL);
        zsock_set_rcvhwm(self->downlink, 10000);
        if (mh_curve_bind(self->downlink, self->cfg->downlink_bind) < 0) {
            mh_error("cannot bind the downlink PULL on %s: %s", self->cfg->downlink_bind,
                     zmq_strerror(errno));
            zsock_destroy(&self->downlink);
            self->bind_failed = true;
        }
    }
    if (*self->cfg->events_bind) {
        self->pub = zsock_new(ZMQ_PUB);
        zsock_set_sndhwm(self->pub, 10000);
        if (mh_curve_bind(self->pub, self->cfg->events_bind) < 0) {
            mh_error("cannot bind events on %s: %s", self->cfg->events_bind, zmq_strerror(errno));
            zsock_destroy(&self->pub);
        }
    }
    return self;
}

static void s_destroy(gw_t **self_p)
{
    gw_t *self = *self_p;
    if (!self)
        return;
    s_mqtt_stop(self);
    zsock_destroy(&self->in_push);
    zsock_destroy(&self->in_pull);
    mh_resolver_destroy(&self->resolver);
    zsock_destroy(&self->dealer);
    zsock_destroy(&self->pub);
    mh_idset_destroy(&self->registry);
    mh_resolver_destroy(&self->twin_resolver);
    zsock_destroy(&self->twin_push);
    mh_resolver_destroy(&self->ota_resolver);
    zsock_destroy(&self->ota_push);
    zsock_destroy(&self->downlink);
    Mh__Publish *p;
    while (self->dl_queue && (p = zlist_pop(self->dl_queue)))
        s_publish_free(p);
    zlist_destroy(&self->dl_queue);
    zhashx_destroy(&self->seen);
    free(self->seen_pending);
    zhashx_destroy(&self->window);
    gw_points_free(&self->scratch);
    free(self->items);
    free(self->arena);
    free(self);
    *self_p = NULL;
}

/* Reads what Paho handed over; returns false when it should stop reading
 * (batch full and no room in the window). */
static bool s_take_messages(gw_t *self, int max)
{
    for (int i = 0; i < max; i++) {
        if ((int64_t)self->nitems >= self->cfg->batch_max_points) {
            if ((int64_t)zhashx_size(self->window) >= self->cfg->window)
                return false;
            s_flush(self);
        }
        zmsg_t *m = NULL;
        if (zsock_events(self->in_pull) & ZMQ_POLLIN)
            m = zmsg_recv(self->in_pull);
        if (!m)
            break;
        s_handle(self, m);
        zmsg_destroy(&m);
    }
    return true;
}

static bool s_window_full(gw_t *self)
{
    return (int64_t)zhashx_size(self->window) >= self->cfg->window &&
           (int64_t)self->nitems >= self->cfg->batch_max_points;
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
    if (!self || !self->in_push || !self->resolver || self->bind_failed ||
        (*self->cfg->twin_endpoint && !self->twin_resolver) ||
        (*self->cfg->ota_endpoint && !self->ota_resolver) ||
        (self->cfg->check_registered && !self->registry)) {
        if (self && !self->resolver)
            mh_error("bad ingest endpoint \"%s\"", ctx->cfg ? self->cfg->ingest_endpoint : "");
        s_destroy(&self);
        mh_actor_failed(pipe);
        return;
    }
    if (mh_resolver_refresh(self->resolver) < 0)
        mh_warn("cannot resolve %s yet, will keep trying", self->cfg->ingest_endpoint);
    if (self->twin_resolver && mh_resolver_refresh(self->twin_resolver) < 0)
        mh_warn("cannot resolve %s yet, will keep trying", self->cfg->twin_endpoint);
    if (self->ota_resolver && mh_resolver_refresh(self->ota_resolver) < 0)
        mh_warn("cannot resolve %s yet, will keep trying", self->cfg->ota_endpoint);
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
        zmq_pollitem_t items[6] = {
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
        int in_idx = nitems;
        if (can_take)
            items[nitems++] = (zmq_pollitem_t){zsock_resolve(self->in_pull), 0, ZMQ_POLLIN, 0};
        if (zmq_poll(items, nitems, tick) < 0 && errno != EINTR)
            break;
        for (int i = 0; self->downlink && i < 1000 && (zsock_events(self->downlink) & ZMQ_POLLIN);
             i++)
            s_on_downlink(self);
        if (self->registry) {
            while (zsock_events(mh_idset_rpc(self->registry)) & ZMQ_POLLIN)
                mh_idset_on_rpc(self->registry);
            for (int i = 0;
                 i < 10000 && (zsock_events(mh_idset_events(self->registry)) & ZMQ_POLLIN); i++)
                mh_idset_on_event(self->registry);
        }
        if (items[0].revents & ZMQ_POLLIN) {
            char *cmd = zstr_recv(pipe);
            bool term = cmd && strcmp(cmd, "$TERM") == 0;
            zstr_free(&cmd);
            if (term && phase == RUNNING) {
                mh_info("stopping: unsubscribing, then draining %zu unacknowledged batches",
                        zhashx_size(self->window));
                s_mqtt_unsubscribe(self);
                phase = UNSUBSCRIBING;
                phase_deadline = mh_mono_ms() + 5000;
                last_message = mh_mono_ms();
            }
        }
        while (zsock_events(self->dealer) & ZMQ_POLLIN) {
            zframe_t *f = zframe_recv(self->dealer);
            if (!f)
                break;
            s_on_ack(self, f);
            zframe_destroy(&f);
        }
        if (can_take && (items[in_idx].revents & ZMQ_POLLIN)) {
            s_take_messages(self, 2000);
            last_message = mh_mono_ms();
        }

        if (zlist_size(self->dl_queue))
            s_downlink_pump(self);
        int64_t now = mh_mono_ms();
        if (self->nitems && now - self->batch_started_ms >= self->cfg->batch_linger_ms &&
            (int64_t)zhashx_size(self->window) < self->cfg->window)
            s_flush(self);
        if (now >= next_stats) {
            next_stats = now + 1000;
            s_publish_stats(self);
        }
        if (now >= next_cron) {
            next_cron = now + 100;
            s_resend_expired(self);
            s_downlink_pump(self);
            s_seen_flush(self);
            if (now - self->seen_pruned > 60000) {
                self->seen_pruned = now;
                s_seen_prune(self);
            }
            if (self->registry) {
                mh_idset_tick(self->registry);
                if (mh_idset_loaded(self->registry) &&
                    !__atomic_load_n(&self->may_subscribe, __ATOMIC_SEQ_CST) && phase == RUNNING) {
                    __atomic_store_n(&self->may_subscribe, 1, __ATOMIC_SEQ_CST);
                    if (__atomic_load_n(&self->mqtt_connected, __ATOMIC_SEQ_CST))
                        s_subscribe(self);
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
            if (self->twin_resolver)
                mh_resolver_refresh(self->twin_resolver);
            if (self->ota_resolver)
                mh_resolver_refresh(self->ota_resolver);
        }
        if (phase == UNSUBSCRIBING) {
            /* In-flight messages still arrive after the UNSUBACK; wait for
             * a quiet moment before closing the session. */
            bool unsub = __atomic_load_n(&self->unsubscribed, __ATOMIC_ACQUIRE);
            if ((unsub && now - last_message > 300) || now > phase_deadline) {
                s_mqtt_stop(self);
                s_take_messages(self, INT32_MAX); /* whatever Paho handed over last */
                phase = DRAINING;
                phase_deadline = now + self->cfg->drain_timeout_ms;
            }
        }
        if (phase == DRAINING) {
            if (self->nitems && (int64_t)zhashx_size(self->window) < self->cfg->window)
                s_flush(self);
            /* Messages may still sit in the inproc queue when the batch was full. */
            if (zsock_events(self->in_pull) & ZMQ_POLLIN && !s_window_full(self))
                s_take_messages(self, 2000);
            bool empty = !self->nitems && zhashx_size(self->window) == 0 &&
                         !(zsock_events(self->in_pull) & ZMQ_POLLIN);
            if (empty) {
                s_seen_flush(self);
                if (zlist_size(self->dl_queue))
                    mh_warn("stopping with %zu downlink messages not published",
                            zlist_size(self->dl_queue));
                break;
            }
            if (now > phase_deadline) {
                uint64_t lost = self->nitems;
                for (s_pending_t *p = zhashx_first(self->window); p; p = zhashx_next(self->window))
                    lost += p->points;
                mh_counter_add(self->m_points_lost_shutdown, lost);
                mh_error("drain timed out: %" PRIu64 " points not acknowledged by ingest", lost);
                break;
            }
        }
    }
    mh_info("drained: %" PRIu64 " messages received, %" PRIu64 " points accepted, %" PRIu64
            " stored, %" PRIu64 " batches re-sent",
            s_received_total(self), mh_counter_get(self->m_points),
            mh_counter_get(self->m_points_stored), mh_counter_get(self->m_batches_resent));
    s_destroy(&self);
    /* Paho's clean-up ran OpenSSL on this thread; free its thread state now
     * (CZMQ's actor threads are detached, so the process may exit before
     * this thread's own exit handlers run, and LeakSanitizer saw that). */
    OPENSSL_thread_stop();
}
