/* gateway: the downlink — twin's and ota's publishes to devices, handed
 * to Paho in order while it takes them (gw_internal.h). */
#include "gw_internal.h"

/* ---- the downlink: twin's and ota's publishes to devices ---- */

void gw_publish_free(Mh__Publish *p)
{
    free(p->topic);
    free(p->payload.data);
    free(p);
}

/* Hands queued downlink publishes to Paho, in order, while it takes them. */
void gw_downlink_pump(gw_t *self)
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
        gw_publish_free(p);
    }
}

void gw_on_downlink(gw_t *self)
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
    gw_downlink_pump(self);
}
