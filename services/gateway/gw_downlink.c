/* gateway: the downlink — twin's and ota's publishes to devices. They
 * arrive as relay batches (mh_relay.h) on a ROUTER; each publish is handed
 * to Paho in order, and the batch is acknowledged once Paho reports every
 * one of its publishes done (for QoS 1, the broker's PUBACK). A batch with
 * a publish that failed is not acknowledged: its sender sends it again,
 * through this gateway or another (gw_internal.h). */
#include "gw_internal.h"

/* ---- the downlink: twin's and ota's publishes to devices ---- */

/* A relay batch being published. Paho's thread completes its publishes;
 * the actor acknowledges and frees it once none is outstanding. */
struct gw_dlbatch_t {
    mh_relay_batch_t *b;
    int outstanding; /* publishes not yet reported done (atomic) */
    int failed;      /* one was not published (atomic) */
};

/* A publish waiting for Paho to take it. */
typedef struct {
    Mh__Publish *p;
    gw_dlbatch_t *batch;
} s_item_t;

static void s_item_free(s_item_t *it)
{
    free(it->p->topic);
    free(it->p->payload.data);
    free(it->p);
    free(it);
}

static void s_done(gw_dlbatch_t *batch, bool ok)
{
    if (!ok)
        __atomic_store_n(&batch->failed, 1, __ATOMIC_RELEASE);
    __atomic_sub_fetch(&batch->outstanding, 1, __ATOMIC_ACQ_REL);
}

/* Paho's thread: a publish is done (QoS 1: PUBACK) or failed. */
static void s_on_sent5(void *context, MQTTAsync_successData5 *resp)
{
    (void)resp;
    s_done(context, true);
}
static void s_on_sent3(void *context, MQTTAsync_successData *resp)
{
    (void)resp;
    s_done(context, true);
}
static void s_on_failed5(void *context, MQTTAsync_failureData5 *resp)
{
    (void)resp;
    s_done(context, false);
}
static void s_on_failed3(void *context, MQTTAsync_failureData *resp)
{
    (void)resp;
    s_done(context, false);
}

/* Hands queued downlink publishes to Paho, in order, while it takes them. */
void gw_downlink_pump(gw_t *self)
{
    s_item_t *it;
    while ((it = zlist_first(self->dl_queue))) {
        if (!__atomic_load_n(&self->mqtt_connected, __ATOMIC_ACQUIRE))
            return;
        MQTTAsync_message msg = MQTTAsync_message_initializer;
        msg.payload = it->p->payload.data;
        msg.payloadlen = (int)it->p->payload.len;
        msg.qos = it->p->qos > 1 ? 1 : (int)it->p->qos;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        ro.context = it->batch;
        if (self->cfg->mqtt_version == 5) {
            ro.onSuccess5 = s_on_sent5;
            ro.onFailure5 = s_on_failed5;
        } else {
            ro.onSuccess = s_on_sent3;
            ro.onFailure = s_on_failed3;
        }
        int rc = MQTTAsync_sendMessage(self->mqtt, it->p->topic, &msg, &ro);
        if (rc != MQTTASYNC_SUCCESS) {
            mh_counter_inc(self->m_downlink_retried);
            return; /* Paho is full or reconnecting: try again on the next tick */
        }
        mh_counter_inc(self->m_downlink_sent);
        zlist_pop(self->dl_queue);
        s_item_free(it);
    }
}

static void s_queue(gw_t *self, gw_dlbatch_t *batch, const Mh__Publish *in)
{
    if (zlist_size(self->dl_queue) >= 100000) {
        mh_counter_inc(self->m_downlink_dropped);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                       "downlink queue full (broker unreachable?); a batch left to its sender");
        batch->failed = 1;
        return;
    }
    s_item_t *it = calloc(1, sizeof *it);
    Mh__Publish *p = calloc(1, sizeof *p);
    uint8_t *data = malloc(in->payload.len + 1);
    char *topic = strdup(in->topic);
    if (!it || !p || !data || !topic) {
        free(it), free(p), free(data), free(topic);
        batch->failed = 1;
        return;
    }
    mh__publish__init(p);
    p->topic = topic;
    p->payload.data = data;
    memcpy(data, in->payload.data, in->payload.len);
    p->payload.len = in->payload.len;
    p->qos = in->qos;
    *it = (s_item_t){p, batch};
    batch->outstanding++;
    zlist_append(self->dl_queue, it);
}

void gw_on_downlink(gw_t *self)
{
    mh_relay_batch_t *b = mh_relay_in_recv(self->downlink);
    gw_dlbatch_t *batch = b ? calloc(1, sizeof *batch) : NULL;
    if (!batch) {
        mh_counter_inc(self->m_bad_internal);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "malformed downlink message, ignoring");
        mh_relay_batch_destroy(&b);
        return;
    }
    batch->b = b;
    for (size_t i = 0; i < b->n; i++) {
        Mh__Envelope *env = mh_envelope_unpack(b->messages[i]);
        Mh__Downlink *dl = NULL;
        if (env && strcmp(env->type, "downlink") == 0)
            dl = mh__downlink__unpack(NULL, env->body.len, env->body.data);
        mh_envelope_free(&env);
        if (!dl) { /* nothing to publish: it is dropped, not sent again */
            mh_counter_inc(self->m_bad_internal);
            mh_log_limited(&self->rl_warn, MH_LOG_WARN, "malformed downlink in a batch, ignoring");
            continue;
        }
        for (size_t j = 0; j < dl->n_publishes; j++)
            s_queue(self, batch, dl->publishes[j]);
        mh__downlink__free_unpacked(dl, NULL);
    }
    zlistx_add_end(self->dl_batches, batch);
    gw_downlink_pump(self);
    gw_downlink_settle(self);
}

void gw_downlink_settle(gw_t *self)
{
    gw_dlbatch_t *batch = zlistx_first(self->dl_batches);
    while (batch) {
        void *handle = zlistx_cursor(self->dl_batches);
        gw_dlbatch_t *done =
            __atomic_load_n(&batch->outstanding, __ATOMIC_ACQUIRE) == 0 ? batch : NULL;
        batch = zlistx_next(self->dl_batches);
        if (!done)
            continue;
        if (__atomic_load_n(&done->failed, __ATOMIC_ACQUIRE))
            mh_counter_inc(self->m_downlink_unacked);
        else
            mh_relay_in_ack(self->downlink, done->b, false);
        zlistx_delete(self->dl_batches, handle);
    }
}

void gw_downlink_destroy(gw_t *self)
{
    s_item_t *it;
    while (self->dl_queue && (it = zlist_pop(self->dl_queue)))
        s_item_free(it);
    zlist_destroy(&self->dl_queue);
    zlistx_destroy(&self->dl_batches);
}

void gw_dlbatch_free(void **item)
{
    gw_dlbatch_t *batch = *item;
    if (batch) {
        mh_relay_batch_destroy(&batch->b);
        free(batch);
        *item = NULL;
    }
}
