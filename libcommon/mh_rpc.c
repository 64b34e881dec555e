#include "mh_rpc.h"
#include "mh_json.h"
#include "mh_resolver.h"
#include "mh_time.h"

#include <errno.h>
#include <pthread.h>

typedef struct s_conn_t {
    zsock_t *sock;
    mh_resolver_t *resolver;
    int64_t resolved_ms;
    struct s_conn_t *next;
} s_conn_t;

struct mh_rpc_t {
    char *endpoint;
    pthread_mutex_t lock;
    s_conn_t *idle;
};

mh_rpc_t *mh_rpc_new(const char *endpoint)
{
    mh_rpc_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->endpoint = strdup(endpoint);
    pthread_mutex_init(&self->lock, NULL);
    return self;
}

static void s_conn_free(s_conn_t *c)
{
    mh_resolver_destroy(&c->resolver);
    zsock_destroy(&c->sock);
    free(c);
}

void mh_rpc_destroy(mh_rpc_t **self_p)
{
    mh_rpc_t *self = *self_p;
    if (!self)
        return;
    while (self->idle) {
        s_conn_t *c = self->idle;
        self->idle = c->next;
        s_conn_free(c);
    }
    pthread_mutex_destroy(&self->lock);
    free(self->endpoint);
    free(self);
    *self_p = NULL;
}

static s_conn_t *s_take(mh_rpc_t *self)
{
    pthread_mutex_lock(&self->lock);
    s_conn_t *c = self->idle;
    if (c)
        self->idle = c->next;
    pthread_mutex_unlock(&self->lock);
    if (c) {
        if (mh_mono_ms() - c->resolved_ms > 10000) {
            mh_resolver_refresh(c->resolver);
            c->resolved_ms = mh_mono_ms();
        }
        return c;
    }
    c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->sock = mh_dealer_new(self->endpoint, 0, &c->resolver);
    if (!c->sock || !c->resolver) {
        s_conn_free(c);
        return NULL;
    }
    mh_resolver_refresh(c->resolver);
    c->resolved_ms = mh_mono_ms();
    return c;
}

static void s_give(mh_rpc_t *self, s_conn_t *c)
{
    pthread_mutex_lock(&self->lock);
    c->next = self->idle;
    self->idle = c;
    pthread_mutex_unlock(&self->lock);
}

/* `again`: a request that only reads is sent once more when half the
 * deadline passed without its answer (see mh_rpc_call_read). */
static Mh__Envelope *s_call(mh_rpc_t *self, const char *type, const ProtobufCMessage *body,
                            const char *request_id, mh_rpc_match_fn *match, int timeout_ms,
                            bool again)
{
    s_conn_t *c = s_take(self);
    if (!c) {
        errno = EINVAL;
        return NULL;
    }
    if (timeout_ms < 0)
        timeout_ms = 0;
    int64_t start = mh_mono_ms(), deadline = start + timeout_ms;
    int64_t resend_at = again ? start + timeout_ms / 2 : deadline;
    Mh__Envelope *env = NULL;
    /* with no replica connected yet, the send waits for one, within the deadline */
    zsock_set_sndtimeo(c->sock, timeout_ms);
    if (mh_envelope_send(c->sock, NULL, type, NULL, body, false) == 0) {
        for (;;) {
            int64_t now = mh_mono_ms(), until = now < resend_at ? resend_at : deadline;
            if (now >= deadline)
                break;
            zsock_set_rcvtimeo(c->sock, (int)(until - now));
            zframe_t *f = zframe_recv(c->sock);
            if (!f) {
                if (errno != EAGAIN || resend_at >= deadline)
                    break;
                /* the replica it went to is slow or stuck: the DEALER deals
                 * the copy to the next one connected (or the same one, if it
                 * is alone); the first answer wins */
                resend_at = deadline;
                /* the wait can overrun its timeout on a loaded machine: a
                 * deadline already passed ends the call (a negative send
                 * timeout other than -1 is refused by ZeroMQ) */
                int64_t left = deadline - mh_mono_ms();
                if (left <= 0)
                    break;
                zsock_set_sndtimeo(c->sock, (int)left);
                if (mh_envelope_send(c->sock, NULL, type, NULL, body, false) != 0)
                    break;
                continue;
            }
            env = mh_envelope_unpack(f);
            zframe_destroy(&f);
            if (env && match(env, request_id))
                break;
            mh_envelope_free(&env);
        }
    }
    if (env) {
        s_give(self, c); /* a second answer, if any, is dropped by the next call's match */
    } else {
        /* A late reply could still arrive on this socket: do not reuse it. */
        s_conn_free(c);
        errno = ETIMEDOUT;
    }
    return env;
}

Mh__Envelope *mh_rpc_call(mh_rpc_t *self, const char *type, const ProtobufCMessage *body,
                          const char *request_id, mh_rpc_match_fn *match, int timeout_ms)
{
    return s_call(self, type, body, request_id, match, timeout_ms, false);
}

Mh__Envelope *mh_rpc_call_read(mh_rpc_t *self, const char *type, const ProtobufCMessage *body,
                               const char *request_id, mh_rpc_match_fn *match, int timeout_ms)
{
    return s_call(self, type, body, request_id, match, timeout_ms, true);
}

bool mh_rpc_reply_match(const Mh__Envelope *env, const char *rid)
{
    size_t n = strlen(env->type);
    if (n < 6 || strcmp(env->type + n - 6, ".reply") != 0)
        return false;
    Mh__RpcReply *r = mh__rpc_reply__unpack(NULL, env->body.len, env->body.data);
    bool ok = r && strcmp(r->request_id, rid) == 0;
    if (r)
        mh__rpc_reply__free_unpacked(r, NULL);
    return ok;
}

void *mh_rpc_field(const ProtobufCMessage *m, unsigned number, ProtobufCType type)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(m->descriptor, number);
    if (!f || f->type != type || f->label == PROTOBUF_C_LABEL_REPEATED)
        return NULL;
    return (char *)m + f->offset;
}

bool mh_rpc_reply_fields(ProtobufCMessage *reply, mh_rpc_reply_fields_t *out)
{
    *out = (mh_rpc_reply_fields_t){mh_rpc_field(reply, 1, PROTOBUF_C_TYPE_STRING),
                                   mh_rpc_field(reply, 2, PROTOBUF_C_TYPE_UINT32),
                                   mh_rpc_field(reply, 3, PROTOBUF_C_TYPE_STRING),
                                   mh_rpc_field(reply, 4, PROTOBUF_C_TYPE_STRING),
                                   mh_rpc_field(reply, 5, PROTOBUF_C_TYPE_STRING)};
    return out->request_id && out->status && out->error_code && out->message && out->body_json;
}

bool mh_rpc_reply_common(const ProtobufCMessage *reply, mh_rpc_common_t *out)
{
    mh_rpc_reply_fields_t f;
    if (!mh_rpc_reply_fields((ProtobufCMessage *)reply, &f))
        return false;
    *out = (mh_rpc_common_t){*f.request_id, *f.status, *f.error_code, *f.message, *f.body_json};
    return true;
}

ProtobufCMessage *mh_rpc_recv_reply(zsock_t *dealer, const char *type,
                                    const ProtobufCMessageDescriptor *reply, const char *request_id)
{
    zframe_t *f = zframe_recv(dealer);
    if (!f)
        return NULL;
    Mh__Envelope *env = mh_envelope_unpack(f);
    zframe_destroy(&f);
    ProtobufCMessage *r = NULL;
    if (env && strcmp(env->type, type) == 0)
        r = protobuf_c_message_unpack(reply, NULL, env->body.len, env->body.data);
    mh_envelope_free(&env);
    const char **id = r ? (const char **)mh_rpc_field(r, 1, PROTOBUF_C_TYPE_STRING) : NULL;
    if (r && (!request_id || !id || strcmp(*id, request_id) != 0)) {
        protobuf_c_message_free_unpacked(r, NULL);
        r = NULL;
    }
    return r;
}

bool mh_rpc_request_stamp(ProtobufCMessage *request, const char *request_id, int64_t deadline_ms)
{
    char **id = mh_rpc_field(request, 1, PROTOBUF_C_TYPE_STRING);
    int64_t *deadline = mh_rpc_field(request, 2, PROTOBUF_C_TYPE_INT64);
    if (!id || !deadline)
        return false;
    *id = (char *)request_id;
    *deadline = deadline_ms;
    return true;
}

json_t *mh_rpc_call_json(mh_rpc_t *self, const char *type, ProtobufCMessage *request,
                         const char *request_id, int timeout_ms, char *err, size_t errlen)
{
    if (!mh_rpc_request_stamp(request, request_id, mh_now_ms() + timeout_ms)) {
        snprintf(err, errlen, "%s is not a request", type);
        return NULL;
    }
    Mh__Envelope *env =
        mh_rpc_call_read(self, type, request, request_id, mh_rpc_reply_match, timeout_ms);
    if (!env) {
        snprintf(err, errlen, "no answer to %s", type);
        return NULL;
    }
    Mh__RpcReply *r = mh__rpc_reply__unpack(NULL, env->body.len, env->body.data);
    mh_envelope_free(&env);
    json_t *body = NULL;
    if (!r || r->status != 200)
        snprintf(err, errlen, "%s answered %u: %s", type, r ? r->status : 0,
                 r ? r->message : "not a reply");
    else if (!(body = mh_json_loads(r->body_json, 0, MH_JSON_MAX_DEPTH, NULL)))
        snprintf(err, errlen, "the answer to %s did not parse", type);
    if (r)
        mh__rpc_reply__free_unpacked(r, NULL);
    return body;
}
