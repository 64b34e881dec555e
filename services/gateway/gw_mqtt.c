/* gateway: the MQTT session — Paho's callbacks, which run on Paho's
 * thread and only hand messages over, TLS, subscriptions (gw_internal.h). */
#include "gw_internal.h"
#include "gw_receive_linger.h"

int gw_receive_linger_us;
_Thread_local bool gw_paho_receiver;
void (*gw_receive_idle)(void *arg);
void *gw_receive_idle_arg;

/* Messages in the inbox that wake the actor while Paho's thread is busy
 * reading: the rest wait for it to go idle (gw_receive_linger.h). */
#define S_INBOX_SIGNAL_AT 128

/* The receive thread is about to sleep: the actor takes what it put. From
 * then on a put wakes the actor only when many messages wait. */
void gw_on_receive_idle(void *arg)
{
    gw_t *self = arg;
    gw_inbox_signal(&self->inbox, S_INBOX_SIGNAL_AT);
}

/* ---- Paho callbacks (Paho's thread) ---- */

#define S_ACL_TOPIC "$SYS/motehub/acl"

bool gw_tls(const gw_config_t *cfg)
{
    return strncmp(cfg->mqtt_url, "ssl://", 6) == 0 || strncmp(cfg->mqtt_url, "mqtts://", 8) == 0;
}

/* The broker's ACL denial counts and its CRL's nextUpdate
 * (services/broker-acl), mirrored as gauges. */
static void s_acl_stats(gw_t *self, const MQTTAsync_message *msg)
{
    json_t *j = mh_json_loadb(msg->payload, (size_t)msg->payloadlen, 0, MH_JSON_MAX_DEPTH, NULL);
    static const char *keys[3] = {"denied_publish", "denied_subscribe", "denied_receive"};
    for (int i = 0; i < 3 && j; i++)
        if (json_is_integer(json_object_get(j, keys[i])))
            mh_gauge_set(self->m_acl_denied[i],
                         (double)json_integer_value(json_object_get(j, keys[i])));
    if (j && json_is_integer(json_object_get(j, "crl_next_update")))
        mh_gauge_set(self->m_crl_next_update,
                     (double)json_integer_value(json_object_get(j, "crl_next_update")));
    json_decref(j);
}

int gw_on_message(void *context, char *topic, int topic_len, MQTTAsync_message *msg)
{
    gw_t *self = context;
    gw_paho_receiver = true;
    size_t tlen = topic_len > 0 ? (size_t)topic_len : strlen(topic);
    if (tlen == strlen(S_ACL_TOPIC) && memcmp(topic, S_ACL_TOPIC, tlen) == 0) {
        s_acl_stats(self, msg);
        MQTTAsync_freeMessage(&msg);
        MQTTAsync_free(topic);
        return 1;
    }
    /* Telemetry waits in a batch anyway: a burst of it alone does not wake
     * the actor, whose timer takes it (gw_service.c). Waits up to 200 ms
     * for room when the actor is behind. */
    char device[GW_MAX_ID + 1];
    gw_topic_kind_t kind;
    bool telemetry = gw_topic_parse(topic, tlen, device, &kind) == GW_OK &&
                     (kind == GW_TOPIC_TELEMETRY || kind == GW_TOPIC_TELEMETRY_PB);
    if (!gw_inbox_put(&self->inbox, topic, tlen, msg->payload,
                      msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0, telemetry, 200)) {
        mh_counter_inc(self->m_deferred);
        __atomic_store_n(&self->deferred_ms, mh_mono_ms(), __ATOMIC_RELEASE);
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
 * status always, the twin topics (and the AWS IoT shadow requests) when a
 * twin endpoint is set, ota/status (and the AWS IoT jobs requests) when an
 * ota endpoint is. */

void gw_topics(gw_t *self, gw_topics_t *t)
{
    static const char *all[GW_NTOPICS] = {"telemetry",   "telemetry/pb", "status",    "twin/get",
                                          "twin/update", "commands/ack", "ota/status"};
    const char *suffixes[GW_NTOPICS];
    t->n = 0;
    for (int i = 0; i < GW_NTOPICS; i++)
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
    /* The AWS IoT shadow requests, spelled out ('+' at the first level never
     * matches a topic starting with '$'), without the reply topics so that
     * the gateway does not hear its own replies. The broker plugin moves
     * them to motehub/aws/...: mosquitto 2.0 matches no shared subscription
     * against a '$' topic (motehub_acl.c). Without a share group the
     * gateway takes them where they were published too (a broker without
     * the plugin). */
    static const char *aws[] = {"things/+/shadow/get", "things/+/shadow/update",
                                "things/+/shadow/delete", "things/+/shadow/name/+/get",
                                "things/+/shadow/name/+/update", "things/+/shadow/name/+/delete",
                                /* to ota; "jobs/+/get" takes "$next/get" too */
                                "things/+/jobs/get", "things/+/jobs/start-next",
                                "things/+/jobs/+/get", "things/+/jobs/+/update",
                                /* to twin: fleet provisioning, which only the
                                 * plugin can attribute to a client */
                                "provision/+/certificates/create/json",
                                "provision/+/certificates/create-from-csr/json",
                                "provision/+/provisioning-templates/+/provision/json"};
    for (int i = 0; i < (int)(sizeof aws / sizeof *aws); i++) {
        if (!*(i < 6 || i >= 10 ? self->cfg->twin_endpoint : self->cfg->ota_endpoint))
            continue;
        if (*self->cfg->share_group) {
            snprintf(t->buf[t->n], sizeof t->buf[t->n], "$share/%s/motehub/aws/%s",
                     self->cfg->share_group, aws[i]);
        } else {
            snprintf(t->buf[t->n], sizeof t->buf[t->n], "motehub/aws/%s", aws[i]);
            if (i < 10) {
                t->ptr[t->n] = t->buf[t->n];
                t->qos[t->n++] = 1;
                snprintf(t->buf[t->n], sizeof t->buf[t->n], "$aws/%s", aws[i]);
            }
        }
        t->ptr[t->n] = t->buf[t->n];
        t->qos[t->n++] = 1;
    }
    /* the devices connected, for twin to correct a lost last will; each
     * list to one gateway */
    if (*self->cfg->twin_endpoint) {
        if (*self->cfg->share_group)
            snprintf(t->buf[t->n], sizeof t->buf[t->n], "$share/%s/%s", self->cfg->share_group,
                     GW_PRESENT_TOPIC);
        else
            snprintf(t->buf[t->n], sizeof t->buf[t->n], "%s", GW_PRESENT_TOPIC);
        t->ptr[t->n] = t->buf[t->n];
        t->qos[t->n++] = 1;
    }
}

void gw_subscribe(gw_t *self)
{
    gw_topics_t t;
    gw_topics(self, &t);
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
void gw_on_connected(void *context, char *cause)
{
    (void)cause;
    gw_t *self = context;
    __atomic_store_n(&self->mqtt_connected, 1, __ATOMIC_SEQ_CST);
    mh_info("connected to %s", self->cfg->mqtt_url);
    /* Until the registered ids are loaded, take nothing: the actor
     * subscribes once they are (see s_registry_ready). */
    if (__atomic_load_n(&self->may_subscribe, __ATOMIC_SEQ_CST))
        gw_subscribe(self);
    mh_counter_inc(self->m_connects);
    /* The broker plugin's denial counts: a plain subscription (every replica
     * mirrors them); a broker without the plugin just never publishes. */
    if (gw_tls(self->cfg)) {
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        MQTTAsync_subscribe(self->mqtt, S_ACL_TOPIC, 0, &ro);
    }
}

void gw_on_connection_lost(void *context, char *cause)
{
    gw_t *self = context;
    __atomic_store_n(&self->mqtt_connected, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&self->mqtt_subscribed, 0, __ATOMIC_RELEASE);
    mh_warn("lost the broker connection (%s), reconnecting", cause ? cause : "no reason");
}

void gw_on_unsubscribed(void *context, MQTTAsync_successData5 *resp)
{
    (void)resp;
    gw_t *self = context;
    __atomic_store_n(&self->unsubscribed, 1, __ATOMIC_RELEASE);
}

void gw_on_unsubscribed3(void *context, MQTTAsync_successData *resp)
{
    (void)resp;
    gw_t *self = context;
    __atomic_store_n(&self->unsubscribed, 1, __ATOMIC_RELEASE);
}

void gw_on_connect_failed5(void *context, MQTTAsync_failureData5 *resp)
{
    gw_t *self = context;
    mh_log_limited(&self->rl_warn, MH_LOG_WARN, "cannot connect to %s (%s), retrying",
                   self->cfg->mqtt_url, resp && resp->message ? resp->message : "no reason");
}

void gw_on_connect_failed3(void *context, MQTTAsync_failureData *resp)
{
    gw_t *self = context;
    mh_log_limited(&self->rl_warn, MH_LOG_WARN, "cannot connect to %s (%s), retrying",
                   self->cfg->mqtt_url, resp && resp->message ? resp->message : "no reason");
}
