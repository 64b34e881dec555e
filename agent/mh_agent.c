#include "mh_agent.h"

#include <MQTTAsync.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct mh_agent_t {
    MQTTAsync client;
    char *device_id, *url, *firmware;
    int mqtt_version, keepalive, max_inflight;
    int connected;
    uint64_t published, delivered, inflight;
    char status_topic[96];
};

static void s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t s_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_announce(mh_agent_t *self)
{
    char payload[160];
    if (self->firmware)
        snprintf(payload, sizeof payload, "{\"state\":\"online\",\"firmware\":\"%s\"}",
                 self->firmware);
    else
        snprintf(payload, sizeof payload, "{\"state\":\"online\"}");
    MQTTAsync_message m = MQTTAsync_message_initializer;
    m.payload = payload;
    m.payloadlen = (int)strlen(payload);
    m.qos = 1;
    MQTTAsync_sendMessage(self->client, self->status_topic, &m, NULL);
}

static void s_on_connected(void *ctx, char *cause)
{
    (void)cause;
    mh_agent_t *self = ctx;
    __atomic_store_n(&self->connected, 1, __ATOMIC_RELEASE);
    s_announce(self);
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

static int s_on_message(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
    (void)ctx;
    (void)tlen;
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
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
    self->mqtt_version = o->mqtt_version ? o->mqtt_version : 5;
    self->keepalive = o->keepalive_s ? o->keepalive_s : 30;
    self->max_inflight = o->max_inflight ? o->max_inflight : 100;
    snprintf(self->status_topic, sizeof self->status_topic, "devices/%s/status", o->device_id);
    if (s_create_client(self) < 0) {
        mh_agent_destroy(&self);
        return NULL;
    }
    return self;
}

void mh_agent_destroy(mh_agent_t **self_p)
{
    mh_agent_t *self = *self_p;
    if (!self)
        return;
    if (self->client) {
        if (MQTTAsync_isConnected(self->client)) {
            MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
            d.timeout = 1000;
            MQTTAsync_disconnect(self->client, &d);
            int64_t deadline = s_mono_ms() + 1500;
            while (MQTTAsync_isConnected(self->client) && s_mono_ms() < deadline)
                s_sleep_ms(5);
        }
        MQTTAsync_destroy(&self->client);
    }
    free(self->device_id);
    free(self->url);
    free(self->firmware);
    free(self);
    *self_p = NULL;
}

void mh_agent_disconnect_begin(mh_agent_t *self)
{
    if (self->client && MQTTAsync_isConnected(self->client)) {
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
        d.timeout = 1000;
        MQTTAsync_disconnect(self->client, &d);
    }
}

int mh_agent_connect(mh_agent_t *self)
{
    MQTTAsync_connectOptions opts;
    MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
    will.topicName = self->status_topic;
    will.message = "{\"state\":\"offline\"}";
    will.qos = 1;
    if (self->mqtt_version == 5) {
        opts = (MQTTAsync_connectOptions)MQTTAsync_connectOptions_initializer5;
        opts.cleanstart = 1;
    } else {
        opts = (MQTTAsync_connectOptions)MQTTAsync_connectOptions_initializer;
        opts.cleansession = 1;
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
    int64_t deadline = s_mono_ms() + timeout_ms;
    while (!mh_agent_connected(self)) {
        if (s_mono_ms() > deadline)
            return false;
        s_sleep_ms(5);
    }
    return true;
}

void mh_agent_kill_connection(mh_agent_t *self)
{
    /* Destroying without DISCONNECT closes the socket; the broker then
     * publishes the will. Re-create so the agent can connect again. */
    __atomic_store_n(&self->connected, 0, __ATOMIC_RELEASE);
    MQTTAsync_destroy(&self->client);
    s_create_client(self);
}

int mh_agent_publish(mh_agent_t *self, const char *subtopic, const void *payload, size_t len,
                     int qos)
{
    if (!self->client || !mh_agent_connected(self))
        return -ENOTCONN;
    if (qos > 0 &&
        __atomic_load_n(&self->inflight, __ATOMIC_RELAXED) >= (uint64_t)self->max_inflight)
        return -EAGAIN;
    char topic[160];
    snprintf(topic, sizeof topic, "devices/%s/%s", self->device_id, subtopic);
    MQTTAsync_message m = MQTTAsync_message_initializer;
    m.payload = (void *)payload;
    m.payloadlen = (int)len;
    m.qos = qos;
    if (qos > 0)
        __atomic_add_fetch(&self->inflight, 1, __ATOMIC_RELAXED);
    int rc = MQTTAsync_sendMessage(self->client, topic, &m, NULL);
    if (rc != MQTTASYNC_SUCCESS) {
        if (qos > 0)
            __atomic_sub_fetch(&self->inflight, 1, __ATOMIC_RELAXED);
        return rc == MQTTASYNC_MAX_BUFFERED_MESSAGES ? -EAGAIN : -EIO;
    }
    __atomic_add_fetch(&self->published, 1, __ATOMIC_RELAXED);
    if (qos == 0)
        __atomic_add_fetch(&self->delivered, 1, __ATOMIC_RELAXED);
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
    char *s = root ? json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
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

uint64_t mh_agent_published(mh_agent_t *self)
{
    return __atomic_load_n(&self->published, __ATOMIC_RELAXED);
}

bool mh_agent_wait_delivered(mh_agent_t *self, int timeout_ms)
{
    int64_t deadline = s_mono_ms() + timeout_ms;
    while (__atomic_load_n(&self->inflight, __ATOMIC_RELAXED) > 0) {
        if (s_mono_ms() > deadline)
            return false;
        s_sleep_ms(5);
    }
    return true;
}
