#include "mh_envelope.h"
#include "mh_curve.h"
#include "mh_log.h"
#include "mh_time.h"

#include <stdio.h>
#include <sys/random.h>

void mh_trace_id_new(char out[33])
{
    /* The kernel's generator: no per-thread library state to clean up. */
    unsigned char raw[16];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
        for (size_t i = 0; i < sizeof raw; i++)
            raw[i] = (unsigned char)random();
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

zframe_t *mh_envelope_pack(const char *type, const char *trace_id, const ProtobufCMessage *body)
{
    char tid[33];
    if (!trace_id) {
        mh_trace_id_new(tid);
        trace_id = tid;
    }
    size_t blen = body ? protobuf_c_message_get_packed_size(body) : 0;
    uint8_t *bbuf = blen ? malloc(blen) : NULL;
    if (blen && !bbuf)
        return NULL;
    if (blen)
        protobuf_c_message_pack(body, bbuf);
    Mh__Envelope env = MH__ENVELOPE__INIT;
    env.schema_version = MH_SCHEMA_VERSION;
    env.type = (char *)type;
    env.trace_id = (char *)trace_id;
    env.ts_ms = mh_now_ms();
    env.body.data = bbuf;
    env.body.len = blen;
    size_t elen = mh__envelope__get_packed_size(&env);
    zframe_t *frame = zframe_new(NULL, elen);
    if (frame)
        mh__envelope__pack(&env, zframe_data(frame));
    free(bbuf);
    return frame;
}

Mh__Envelope *mh_envelope_unpack(const zframe_t *frame)
{
    Mh__Envelope *env =
        mh__envelope__unpack(NULL, zframe_size((zframe_t *)frame), zframe_data((zframe_t *)frame));
    if (env && (env->schema_version == 0 || env->schema_version > MH_SCHEMA_VERSION)) {
        mh__envelope__free_unpacked(env, NULL);
        return NULL;
    }
    return env;
}

void mh_envelope_free(Mh__Envelope **env_p)
{
    if (*env_p) {
        mh__envelope__free_unpacked(*env_p, NULL);
        *env_p = NULL;
    }
}

int mh_envelope_send(zsock_t *sock, const zframe_t *routing_id, const char *type,
                     const char *trace_id, const ProtobufCMessage *body, bool dontwait)
{
    zframe_t *frame = mh_envelope_pack(type, trace_id, body);
    if (!frame) {
        errno = ENOMEM;
        return -1;
    }
    int flags = dontwait ? ZMQ_DONTWAIT : 0;
    void *raw = zsock_resolve(sock);
    if (routing_id && zmq_send(raw, zframe_data((zframe_t *)routing_id),
                               zframe_size((zframe_t *)routing_id), flags | ZMQ_SNDMORE) < 0) {
        zframe_destroy(&frame);
        return -1;
    }
    int rc = zmq_send(raw, zframe_data(frame), zframe_size(frame), flags);
    zframe_destroy(&frame);
    return rc < 0 ? -1 : 0;
}

int mh_events_bind(zsock_t **pub_out, const char *endpoint, int sndhwm)
{
    *pub_out = NULL;
    if (!*endpoint)
        return 0;
    zsock_t *pub = zsock_new(ZMQ_PUB);
    if (!pub)
        return -1;
    zsock_set_sndhwm(pub, sndhwm);
    if (mh_curve_bind(pub, endpoint) < 0) {
        mh_error("cannot bind events on %s: %s", endpoint, zmq_strerror(zmq_errno()));
        zsock_destroy(&pub);
        return -1;
    }
    *pub_out = pub;
    return 0;
}

int mh_event_publish(zsock_t *pub, const char *type, const ProtobufCMessage *body)
{
    zframe_t *frame = mh_envelope_pack(type, NULL, body);
    if (!frame)
        return -1;
    void *raw = zsock_resolve(pub);
    int rc = zmq_send(raw, type, strlen(type), ZMQ_DONTWAIT | ZMQ_SNDMORE);
    if (rc >= 0)
        rc = zmq_send(raw, zframe_data(frame), zframe_size(frame), ZMQ_DONTWAIT);
    zframe_destroy(&frame);
    return rc < 0 ? -1 : 0;
}

Mh__Envelope *mh_event_recv(zsock_t *sub)
{
    zmsg_t *m = zmsg_recv(sub);
    if (!m)
        return NULL;
    zframe_t *f = zmsg_size(m) == 2 ? zmsg_last(m) : NULL;
    Mh__Envelope *env = f ? mh_envelope_unpack(f) : NULL;
    zmsg_destroy(&m);
    return env;
}
