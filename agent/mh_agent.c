#include "mh_paho.h"
#include "mh_agent_internal.h"
#include "mh_agent_parse.h"
#include "mh_json.h"
#include "mh_ota_verify.h"

#include <MQTTAsync.h>
#include <errno.h>
#include <pthread.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void ag_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int64_t ag_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_announce(mh_agent_t *self)
{
    char payload[160];
    pthread_mutex_lock(&self->lock);
    if (self->firmware)
        snprintf(payload, sizeof payload, "{\"state\":\"online\",\"firmware\":\"%s\"}",
                 self->firmware);
    else
        snprintf(payload, sizeof payload, "{\"state\":\"online\"}");
    pthread_mutex_unlock(&self->lock);
    MQTTAsync_message m = MQTTAsync_message_initializer;
    m.payload = payload;
    m.payloadlen = (int)strlen(payload);
    m.qos = 1;
    MQTTAsync_sendMessage(self->client, self->status_topic, &m, NULL);
}

static void s_on_subscribed5(void *ctx, MQTTAsync_successData5 *r)
{
    (void)r;
    mh_agent_t *self = ctx;
    __atomic_store_n(&self->connected, 1, __ATOMIC_RELEASE);
    s_announce(self);
}

static void s_on_subscribed3(void *ctx, MQTTAsync_successData *r)
{
    (void)r;
    mh_agent_t *self = ctx;
    __atomic_store_n(&self->connected, 1, __ATOMIC_RELEASE);
    s_announce(self);
}

static void s_on_sub_failed5(void *ctx, MQTTAsync_failureData5 *r)
{
    (void)r;
    s_on_subscribed5(ctx, NULL); /* announce anyway: telemetry still works */
}

static void s_on_sub_failed3(void *ctx, MQTTAsync_failureData *r)
{
    (void)r;
    s_on_subscribed3(ctx, NULL);
}

/* Subscribes to what the cloud sends this device, then announces online. */
static void s_on_connected(void *ctx, char *cause)
{
    (void)cause;
    mh_agent_t *self = ctx;
    static const char *subs[] = {"twin/get/+", "twin/update/+", "twin/delta", "commands", "ota"};
    char buf[7][160];
    char *topics[7];
    int qos[7] = {1, 1, 1, 1, 1, 1, 1}, n = 5;
    for (int i = 0; i < 5; i++) {
        snprintf(buf[i], sizeof buf[i], "devices/%s/%s", self->device_id, subs[i]);
        topics[i] = buf[i];
    }
    if (self->aws) { /* as an AWS SDK device subscribes */
        snprintf(buf[n], sizeof buf[n], "$aws/things/%s/shadow/update/+", self->device_id);
        topics[n] = buf[n], n++;
        snprintf(buf[n], sizeof buf[n], "$aws/things/%s/jobs/notify-next", self->device_id);
        topics[n] = buf[n], n++;
    }
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.context = self;
    if (self->mqtt_version == 5) {
        ro.onSuccess5 = s_on_subscribed5;
        ro.onFailure5 = s_on_sub_failed5;
    } else {
        ro.onSuccess = s_on_subscribed3;
        ro.onFailure = s_on_sub_failed3;
    }
    if (MQTTAsync_subscribeMany(self->client, n, topics, qos, &ro) != MQTTASYNC_SUCCESS)
        s_on_subscribed3(self, NULL);
}

static void s_set_error(mh_agent_t *self, const char *what)
{
    pthread_mutex_lock(&self->lock);
    snprintf(self->last_error, sizeof self->last_error, "%s", what);
    pthread_mutex_unlock(&self->lock);
}

static void s_on_connect_failed5(void *ctx, MQTTAsync_failureData5 *r)
{
    mh_agent_t *self = ctx;
    __atomic_add_fetch(&self->connect_failures, 1, __ATOMIC_RELAXED);
    if (r && r->message)
        s_set_error(self, r->message);
    else if (r && r->reasonCode)
        s_set_error(self, MQTTReasonCode_toString(r->reasonCode));
}

static void s_on_connect_failed3(void *ctx, MQTTAsync_failureData *r)
{
    mh_agent_t *self = ctx;
    __atomic_add_fetch(&self->connect_failures, 1, __ATOMIC_RELAXED);
    if (r && r->message)
        s_set_error(self, r->message);
}

/* OpenSSL's reason for a failed handshake (a rejected certificate...). */
static int s_ssl_error(const char *str, size_t len, void *ctx)
{
    mh_agent_t *self = ctx;
    while (len && (str[len - 1] == '\n' || str[len - 1] == '\r'))
        len--;
    /* OpenSSL's line is "<thread>:error:<code>:<lib>:<func>:<reason>:..." —
     * keep from "error:" on */
    const char *e = memmem(str, len, "error:", 6);
    if (e) {
        len -= (size_t)(e - str);
        str = e;
    }
    pthread_mutex_lock(&self->lock);
    snprintf(self->tls_error, sizeof self->tls_error, "%.*s", (int)len, str);
    pthread_mutex_unlock(&self->lock);
    return 0;
}

uint64_t mh_agent_connect_failures(mh_agent_t *self)
{
    return __atomic_load_n(&self->connect_failures, __ATOMIC_RELAXED);
}

const char *mh_agent_last_error(mh_agent_t *self, char *buf, size_t len)
{
    pthread_mutex_lock(&self->lock);
    if (*self->tls_error)
        snprintf(buf, len, "%s; TLS %s", self->last_error, self->tls_error);
    else
        snprintf(buf, len, "%s", self->last_error);
    pthread_mutex_unlock(&self->lock);
    return buf;
}

static void s_on_lost(void *ctx, char *cause)
{
    (void)cause;
    mh_agent_t *self = ctx;
    __atomic_store_n(&self->connected, 0, __ATOMIC_RELEASE);
    /* Paho forgets unacknowledged QoS1 messages of a clean session; do not
     * count them as in flight forever. */
    __atomic_store_n(&self->inflight, 0, __ATOMIC_RELEASE);
}

void ag_send(mh_agent_t *self, const char *sub, json_t *v)
{
    char *text = mh_json_dumps(v, JSON_COMPACT);
    if (text) {
        char topic[160];
        snprintf(topic, sizeof topic, "devices/%s/%s", self->device_id, sub);
        MQTTAsync_message m = MQTTAsync_message_initializer;
        m.payload = text;
        m.payloadlen = (int)strlen(text);
        m.qos = 1;
        MQTTAsync_sendMessage(self->client, topic, &m, NULL);
        free(text);
    }
}

/* True when `id` was handled before; remembers it otherwise. */
static bool s_seen_before(mh_agent_t *self, const char *id)
{
    for (size_t i = 0; i < AG_SEEN_IDS; i++)
        if (strcmp(self->seen_ids[i], id) == 0)
            return true;
    snprintf(self->seen_ids[self->seen_next], sizeof self->seen_ids[0], "%s", id);
    self->seen_next = (self->seen_next + 1) % AG_SEEN_IDS;
    return false;
}

static void s_command(mh_agent_t *self, const char *payload, size_t len)
{
    mh_agent_cmd_t c;
    json_t *cmd = mh_agent_parse_command(payload, len, &c);
    if (!cmd)
        return;
    const char *id = c.id, *name = c.name;
    pthread_mutex_lock(&self->lock);
    bool dup = s_seen_before(self, id);
    mh_agent_command_fn *fn = NULL;
    void *ud = NULL;
    for (size_t i = 0; i < self->nhandlers; i++)
        if (strcmp(self->handlers[i].name, name) == 0) {
            fn = self->handlers[i].fn;
            ud = self->handlers[i].ud;
        }
    pthread_mutex_unlock(&self->lock);
    if (dup) {
        json_decref(cmd);
        return;
    }
    json_t *result = NULL;
    mh_cmd_outcome_t outcome = MH_CMD_REJECTED;
    if (fn)
        outcome = fn(self, id, c.params, &result, ud);
    else
        result = json_pack("{s:s}", "error", "no handler for this command");
    __atomic_add_fetch(&self->commands_handled, 1, __ATOMIC_RELAXED);
    if (outcome != MH_CMD_PENDING)
        mh_agent_ack(self, id, outcome, result);
    json_decref(result);
    json_decref(cmd);
}

static int s_on_message(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
    mh_agent_t *self = ctx;
    size_t len = tlen > 0 ? (size_t)tlen : strlen(topic);
    const char *sub = len > self->prefix_len ? topic + self->prefix_len : "";
    char subtopic[64];
    size_t aws = strlen("$aws/things/") + strlen(self->device_id) + 1;
    if (len > aws && strncmp(topic, "$aws/things/", 12) == 0) /* "aws/shadow/update/accepted" */
        snprintf(subtopic, sizeof subtopic, "aws/%.*s", (int)(len - aws), topic + aws);
    else
        snprintf(subtopic, sizeof subtopic, "%.*s", (int)(len - (size_t)(sub - topic)), sub);
    pthread_mutex_lock(&self->lock);
    mh_agent_message_fn *raw = self->on_message;
    void *raw_ud = self->on_message_ud;
    mh_agent_delta_fn *delta = self->on_delta;
    void *delta_ud = self->on_delta_ud;
    pthread_mutex_unlock(&self->lock);
    if (raw)
        raw(self, subtopic, m->payload, (size_t)m->payloadlen, raw_ud);
    if (strcmp(subtopic, "commands") == 0) {
        s_command(self, m->payload, (size_t)m->payloadlen);
    } else if (strcmp(subtopic, "ota") == 0) {
        ag_ota_job(self, m->payload, (size_t)m->payloadlen);
    } else if (strcmp(subtopic, "twin/delta") == 0 && delta) {
        json_t *state;
        int64_t version;
        json_t *d = mh_agent_parse_delta(m->payload, (size_t)m->payloadlen, &state, &version);
        if (d)
            delta(self, state, version, delta_ud);
        json_decref(d);
    }
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
}

int mh_agent_ack(mh_agent_t *self, const char *id, mh_cmd_outcome_t outcome, json_t *result)
{
    static const char *names[] = {"succeeded", "failed", "rejected"};
    if (outcome > MH_CMD_REJECTED)
        return -EINVAL;
    json_t *ack = json_pack("{s:s,s:s}", "id", id, "status", names[outcome]);
    if (result)
        json_object_set(ack, "result", result);
    ag_send(self, "commands/ack", ack);
    json_decref(ack);
    return 0;
}

void mh_agent_on_message(mh_agent_t *self, mh_agent_message_fn *fn, void *ud)
{
    pthread_mutex_lock(&self->lock);
    self->on_message = fn;
    self->on_message_ud = ud;
    pthread_mutex_unlock(&self->lock);
}

void mh_agent_on_delta(mh_agent_t *self, mh_agent_delta_fn *fn, void *ud)
{
    pthread_mutex_lock(&self->lock);
    self->on_delta = fn;
    self->on_delta_ud = ud;
    pthread_mutex_unlock(&self->lock);
}

int mh_agent_on_command(mh_agent_t *self, const char *name, mh_agent_command_fn *fn, void *ud)
{
    int rc = 0;
    pthread_mutex_lock(&self->lock);
    size_t i = 0;
    while (i < self->nhandlers && strcmp(self->handlers[i].name, name) != 0)
        i++;
    if (i == self->nhandlers) {
        if (i == AG_MAX_HANDLERS || !(self->handlers[i].name = strdup(name)))
            rc = -ENOMEM;
        else
            self->nhandlers++;
    }
    if (rc == 0) {
        self->handlers[i].fn = fn;
        self->handlers[i].ud = ud;
    }
    pthread_mutex_unlock(&self->lock);
    return rc;
}

uint64_t mh_agent_commands_handled(mh_agent_t *self)
{
    return __atomic_load_n(&self->commands_handled, __ATOMIC_RELAXED);
}

const char *mh_agent_id(mh_agent_t *self)
{
    return self->device_id;
}

int mh_agent_report(mh_agent_t *self, json_t *reported, const char *client_token)
{
    json_t *msg = json_pack("{s:{s:O}}", "state", "reported", reported);
    if (client_token)
        json_object_set_new(msg, "clientToken", json_string(client_token));
    char *text = mh_json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!text)
        return -ENOMEM;
    int rc = self->aws ? mh_agent_publish_aws(self, "shadow/update", text, strlen(text), 1)
                       : mh_agent_publish(self, "twin/update", text, strlen(text), 1);
    free(text);
    return rc;
}

int mh_agent_twin_get(mh_agent_t *self, const char *client_token)
{
    char payload[128];
    if (client_token)
        snprintf(payload, sizeof payload, "{\"clientToken\":\"%.64s\"}", client_token);
    else
        snprintf(payload, sizeof payload, "{}");
    return mh_agent_publish(self, "twin/get", payload, strlen(payload), 1);
}

static void s_on_delivered(void *ctx, MQTTAsync_token token)
{
    (void)token;
    mh_agent_t *self = ctx;
    __atomic_add_fetch(&self->delivered, 1, __ATOMIC_RELAXED);
    uint64_t cur = __atomic_load_n(&self->inflight, __ATOMIC_RELAXED);
    while (cur && !__atomic_compare_exchange_n(&self->inflight, &cur, cur - 1, true,
                                               __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

/* Creates the Paho client with this agent's settings and callbacks;
 * self->client is NULL on failure. */
static int s_create_client(mh_agent_t *self)
{
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
    co.MQTTVersion = self->mqtt_version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    co.maxBufferedMessages = self->max_inflight;
    mh_paho_quiet_trace();
    if (MQTTAsync_createWithOptions(&self->client, self->url, self->device_id,
                                    MQTTCLIENT_PERSISTENCE_NONE, NULL, &co) != MQTTASYNC_SUCCESS) {
        self->client = NULL;
        return -EIO;
    }
    MQTTAsync_setCallbacks(self->client, self, s_on_lost, s_on_message, s_on_delivered);
    MQTTAsync_setConnected(self->client, self, s_on_connected);
    return 0;
}

mh_agent_t *mh_agent_new(const mh_agent_opts_t *o)
{
    mh_agent_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->device_id = strdup(o->device_id);
    self->url = strdup(o->url);
    self->firmware = o->firmware ? strdup(o->firmware) : NULL;
    self->ca_file = o->ca_file ? strdup(o->ca_file) : NULL;
    self->cert_file = o->cert_file ? strdup(o->cert_file) : NULL;
    self->key_file = o->key_file ? strdup(o->key_file) : NULL;
    self->mqtt_version = o->mqtt_version ? o->mqtt_version : 5;
    self->keepalive = o->keepalive_s ? o->keepalive_s : 30;
    self->max_inflight = o->max_inflight ? o->max_inflight : 100;
    self->aws = o->aws;
    snprintf(self->status_topic, sizeof self->status_topic, "devices/%s/status", o->device_id);
    self->prefix_len = strlen("devices/") + strlen(o->device_id) + 1;
    pthread_mutex_init(&self->lock, NULL);
    if (s_create_client(self) < 0) {
        mh_agent_destroy(&self);
        return NULL;
    }
    return self;
}

/* A clean goodbye: {"state":"offline"} (the last will is only for
 * unclean ends), then DISCONNECT, which lets in-flight messages finish. */
static void s_say_offline(mh_agent_t *self)
{
    static const char payload[] = "{\"state\":\"offline\"}";
    MQTTAsync_message m = MQTTAsync_message_initializer;
    m.payload = (void *)payload;
    m.payloadlen = (int)sizeof payload - 1;
    m.qos = 1;
    MQTTAsync_sendMessage(self->client, self->status_topic, &m, NULL);
}

void mh_agent_destroy(mh_agent_t **self_p)
{
    mh_agent_t *self = *self_p;
    if (!self)
        return;
    ag_ota_forget(self);
    if (self->client) {
        /* begun already: every agent's disconnect runs at once, so they
         * share its deadline instead of waiting 1.5 s one after another
         * (200 agents whose broker was slow to answer: 5 minutes) */
        int64_t deadline = self->disconnect_until;
        if (!deadline && MQTTAsync_isConnected(self->client)) {
            s_say_offline(self);
            MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
            d.timeout = 1000;
            MQTTAsync_disconnect(self->client, &d);
            deadline = ag_mono_ms() + 1500;
        }
        while (MQTTAsync_isConnected(self->client) && ag_mono_ms() < deadline)
            ag_sleep_ms(5);
        MQTTAsync_destroy(&self->client);
    }
    for (size_t i = 0; i < self->nhandlers; i++)
        free(self->handlers[i].name);
    for (size_t i = 0; i < 8; i++)
        free(self->ota_done[i].status);
    mh_ota_key_free(self->ota_key);
    pthread_mutex_destroy(&self->lock);
    free(self->device_id);
    free(self->url);
    free(self->firmware);
    free(self->ca_file);
    free(self->cert_file);
    free(self->key_file);
    free(self);
    *self_p = NULL;
}

void mh_agent_disconnect_begin(mh_agent_t *self)
{
    if (self->client && MQTTAsync_isConnected(self->client)) {
        s_say_offline(self);
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
        d.timeout = 1000;
        MQTTAsync_disconnect(self->client, &d);
        self->disconnect_until = ag_mono_ms() + 1500;
    }
}

int mh_agent_connect(mh_agent_t *self)
{
    self->disconnect_until = 0;
    MQTTAsync_connectOptions opts;
    MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
    will.topicName = self->status_topic;
    will.message = "{\"state\":\"offline\"}";
    will.qos = 1;
    if (self->mqtt_version == 5) {
        opts = (MQTTAsync_connectOptions)MQTTAsync_connectOptions_initializer5;
        opts.cleanstart = 1;
        opts.onFailure5 = s_on_connect_failed5;
    } else {
        opts = (MQTTAsync_connectOptions)MQTTAsync_connectOptions_initializer;
        opts.cleansession = 1;
        opts.onFailure = s_on_connect_failed3;
    }
    /* Mutual TLS: the broker must show a certificate from the fleet CA for
     * the URL's host; the device shows its own (CN = device id). */
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    if (strncmp(self->url, "ssl://", 6) == 0 || strncmp(self->url, "mqtts://", 8) == 0) {
        ssl.trustStore = self->ca_file;
        ssl.keyStore = self->cert_file;
        ssl.privateKey = self->key_file;
        ssl.enableServerCertAuth = 1;
        ssl.verify = 1;
        ssl.ssl_error_cb = s_ssl_error;
        ssl.ssl_error_context = self;
        opts.ssl = &ssl;
    }
    opts.will = &will;
    opts.keepAliveInterval = self->keepalive;
    opts.automaticReconnect = 1;
    opts.minRetryInterval = 1;
    opts.maxRetryInterval = 60;
    opts.maxInflight = self->max_inflight;
    opts.connectTimeout = 10;
    opts.context = self;
    return MQTTAsync_connect(self->client, &opts) == MQTTASYNC_SUCCESS ? 0 : -EIO;
}

bool mh_agent_connected(mh_agent_t *self)
{
    return __atomic_load_n(&self->connected, __ATOMIC_ACQUIRE);
}

bool mh_agent_wait_connected(mh_agent_t *self, int timeout_ms)
{
    int64_t deadline = ag_mono_ms() + timeout_ms;
    while (!mh_agent_connected(self)) {
        if (ag_mono_ms() > deadline)
            return false;
        ag_sleep_ms(5);
    }
    return true;
}

void mh_agent_kill_connection(mh_agent_t *self)
{
    /* Paho always says DISCONNECT when it closes, which suppresses the
     * will; MQTT 5's reason code 0x04 asks the broker to send it anyway,
     * as on a power loss. (On 3.1.1 this is a clean disconnect.) Then
     * re-create the client so the agent can connect again. */
    __atomic_store_n(&self->connected, 0, __ATOMIC_RELEASE);
    if (self->client && MQTTAsync_isConnected(self->client)) {
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;
        d.reasonCode = MQTTREASONCODE_DISCONNECT_WITH_WILL_MESSAGE;
        d.timeout = 0;
        MQTTAsync_disconnect(self->client, &d);
        int64_t deadline = ag_mono_ms() + 1000;
        while (MQTTAsync_isConnected(self->client) && ag_mono_ms() < deadline)
            ag_sleep_ms(2);
    }
    MQTTAsync_destroy(&self->client);
    s_create_client(self);
}

/* The broker's PUBACK of a telemetry message (Paho calls onFailure
 * instead for a PUBACK with an error reason code). */
static void s_on_telemetry_acked(void *ctx, MQTTAsync_successData *r)
{
    (void)r;
    mh_agent_t *self = ctx;
    __atomic_add_fetch(&self->telemetry_acked, 1, __ATOMIC_RELAXED);
}

static void s_on_telemetry_acked5(void *ctx, MQTTAsync_successData5 *r)
{
    (void)r;
    mh_agent_t *self = ctx;
    __atomic_add_fetch(&self->telemetry_acked, 1, __ATOMIC_RELAXED);
}

static int s_publish(mh_agent_t *self, const char *topic, const char *subtopic, const void *payload,
                     size_t len, int qos);

int mh_agent_publish(mh_agent_t *self, const char *subtopic, const void *payload, size_t len,
                     int qos)
{
    char topic[160];
    snprintf(topic, sizeof topic, "devices/%s/%s", self->device_id, subtopic);
    return s_publish(self, topic, subtopic, payload, len, qos);
}

int mh_agent_publish_aws(mh_agent_t *self, const char *subtopic, const void *payload, size_t len,
                         int qos)
{
    char topic[256];
    snprintf(topic, sizeof topic, "$aws/things/%s/%s", self->device_id, subtopic);
    return s_publish(self, topic, "aws", payload, len, qos);
}

static int s_publish(mh_agent_t *self, const char *topic, const char *subtopic, const void *payload,
                     size_t len, int qos)
{
    if (!self->client || !mh_agent_connected(self))
        return -ENOTCONN;
    if (qos > 0 &&
        __atomic_load_n(&self->inflight, __ATOMIC_RELAXED) >= (uint64_t)self->max_inflight)
        return -EAGAIN;
    MQTTAsync_message m = MQTTAsync_message_initializer;
    m.payload = (void *)payload;
    m.payloadlen = (int)len;
    m.qos = qos;
    /* telemetry's own count of acknowledgements: the status, twin and
     * command messages a device sends (one status per reconnect) are not
     * samples */
    bool telemetry = strncmp(subtopic, "telemetry", 9) == 0;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    if (telemetry && qos > 0) {
        ro.context = self;
        if (self->mqtt_version == 5)
            ro.onSuccess5 = s_on_telemetry_acked5;
        else
            ro.onSuccess = s_on_telemetry_acked;
    }
    if (qos > 0)
        __atomic_add_fetch(&self->inflight, 1, __ATOMIC_RELAXED);
    int rc = MQTTAsync_sendMessage(self->client, topic, &m, &ro);
    if (rc != MQTTASYNC_SUCCESS) {
        if (qos > 0)
            __atomic_sub_fetch(&self->inflight, 1, __ATOMIC_RELAXED);
        return rc == MQTTASYNC_MAX_BUFFERED_MESSAGES ? -EAGAIN : -EIO;
    }
    __atomic_add_fetch(&self->published, 1, __ATOMIC_RELAXED);
    if (qos == 0) {
        __atomic_add_fetch(&self->delivered, 1, __ATOMIC_RELAXED);
        if (telemetry)
            __atomic_add_fetch(&self->telemetry_acked, 1, __ATOMIC_RELAXED);
    }
    return 0;
}

char *mh_agent_samples_json(const mh_sample_t *samples, size_t n)
{
    json_t *arr = n > 1 ? json_array() : NULL, *one = NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_object();
        if (samples[i].ts)
            json_object_set_new(o, "ts", json_integer(samples[i].ts));
        if (samples[i].seq >= 0)
            json_object_set_new(o, "seq", json_integer(samples[i].seq));
        for (size_t j = 0; j < samples[i].n && j < 16; j++)
            json_object_set_new(o, samples[i].m[j].name,
                                samples[i].m[j].is_bool ? json_boolean(samples[i].m[j].value != 0)
                                                        : json_real(samples[i].m[j].value));
        if (arr)
            json_array_append_new(arr, o);
        else
            one = o;
    }
    json_t *root = arr ? arr : one;
    char *s = root ? mh_json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

int mh_agent_publish_samples(mh_agent_t *self, const mh_sample_t *samples, size_t n, int qos)
{
    char *s = mh_agent_samples_json(samples, n);
    if (!s)
        return -ENOMEM;
    int rc = mh_agent_publish(self, "telemetry", s, strlen(s), qos);
    free(s);
    return rc;
}

uint64_t mh_agent_delivered(mh_agent_t *self)
{
    return __atomic_load_n(&self->delivered, __ATOMIC_RELAXED);
}

uint64_t mh_agent_telemetry_acked(mh_agent_t *self)
{
    return __atomic_load_n(&self->telemetry_acked, __ATOMIC_RELAXED);
}

uint64_t mh_agent_published(mh_agent_t *self)
{
    return __atomic_load_n(&self->published, __ATOMIC_RELAXED);
}

bool mh_agent_wait_delivered(mh_agent_t *self, int timeout_ms)
{
    int64_t deadline = ag_mono_ms() + timeout_ms;
    while (__atomic_load_n(&self->inflight, __ATOMIC_RELAXED) > 0) {
        if (ag_mono_ms() > deadline)
            return false;
        ag_sleep_ms(5);
    }
    return true;
}
