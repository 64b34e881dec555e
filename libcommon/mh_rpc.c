#include "mh_rpc.h"
#include "mh_json.h"
#include "mh_log.h"
#include "mh_resolver.h"
#include "mh_time.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>

#define S_MAX_PEERS 64

/* A call's sockets: a DEALER per replica, so the call chooses which
 * replica gets each copy of its request. One DEALER connected to all of
 * them deals round robin over the connections that are up, and a
 * connection that came up after the first copy was sent did not get the
 * second: it went to the same replica (test_rpc_read_asks_another). */
typedef struct s_conn_t {
    mh_resolver_t *resolver; /* the replicas' addresses */
    size_t n;
    char *eps[S_MAX_PEERS];
    zsock_t *socks[S_MAX_PEERS];
    int64_t resolved_ms;
    struct s_conn_t *next;
} s_conn_t;

struct mh_rpc_t {
    char *endpoint;
    pthread_mutex_t lock;
    s_conn_t *idle;
    unsigned next; /* round robin over replicas, for the first copy of a call */
    mh_ratelimit_t rl;
};

mh_rpc_t *mh_rpc_new(const char *endpoint)
{
    mh_rpc_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->endpoint = strdup(endpoint);
    self->rl = (mh_ratelimit_t)MH_RATELIMIT_INIT(10000, 3);
    pthread_mutex_init(&self->lock, NULL);
    return self;
}

static void s_conn_free(s_conn_t *c)
{
    for (size_t i = 0; i < c->n; i++) {
        zsock_destroy(&c->socks[i]);
        free(c->eps[i]);
    }
    mh_resolver_destroy(&c->resolver);
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

/* Looks the replicas up again: a DEALER for each new address (a copy goes
 * only to a connection that is up — ZMQ_IMMEDIATE — so one not up yet, or
 * down, refuses it at once), and none for an address gone. */
static void s_sync(s_conn_t *c)
{
    mh_resolver_refresh(c->resolver);
    c->resolved_ms = mh_mono_ms();
    const char *want[S_MAX_PEERS];
    size_t nw = mh_resolver_endpoints(c->resolver, want, S_MAX_PEERS);
    for (size_t i = 0; i < c->n;) {
        bool keep = false;
        for (size_t k = 0; k < nw && !keep; k++)
            keep = strcmp(want[k], c->eps[i]) == 0;
        if (keep) {
            i++;
            continue;
        }
        zsock_destroy(&c->socks[i]);
        free(c->eps[i]);
        c->n--;
        c->socks[i] = c->socks[c->n];
        c->eps[i] = c->eps[c->n];
    }
    for (size_t k = 0; k < nw && c->n < S_MAX_PEERS; k++) {
        bool have = false;
        for (size_t i = 0; i < c->n && !have; i++)
            have = strcmp(want[k], c->eps[i]) == 0;
        mh_resolver_t *r = NULL;
        zsock_t *sock = have ? NULL : mh_dealer_new(want[k], 0, &r);
        if (sock && mh_resolver_refresh(r) == 1) {
            c->socks[c->n] = sock;
            c->eps[c->n++] = strdup(want[k]);
        } else {
            zsock_destroy(&sock);
        }
        mh_resolver_destroy(&r); /* an address needs no more looking up */
    }
}

static s_conn_t *s_take(mh_rpc_t *self)
{
    pthread_mutex_lock(&self->lock);
    s_conn_t *c = self->idle;
    if (c)
        self->idle = c->next;
    pthread_mutex_unlock(&self->lock);
    if (c) {
        if (mh_mono_ms() - c->resolved_ms > 10000)
            s_sync(c);
        return c;
    }
    c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->resolver = mh_resolver_new(NULL, self->endpoint);
    if (!c->resolver) {
        s_conn_free(c);
        return NULL;
    }
    s_sync(c);
    return c;
}

static void s_give(mh_rpc_t *self, s_conn_t *c)
{
    pthread_mutex_lock(&self->lock);
    c->next = self->idle;
    self->idle = c;
    pthread_mutex_unlock(&self->lock);
}

/* Sends a copy of the request to one replica that is connected and has
 * not had one (from the next in this client's round robin); to one that
 * had one only when every replica had. False when none takes it now — a
 * replica not connected yet is waited for rather than the same one asked
 * twice. */
static bool s_send_one(mh_rpc_t *self, s_conn_t *c, const char *type, const ProtobufCMessage *body,
                       bool *tried)
{
    size_t ntried = 0;
    for (size_t i = 0; i < c->n; i++)
        ntried += tried[i];
    if (!c->n)
        return false;
    unsigned first = __atomic_fetch_add(&self->next, 1, __ATOMIC_RELAXED);
    bool again = ntried == c->n;
    for (size_t k = 0; k < c->n; k++) {
        size_t i = (first + k) % c->n;
        if (tried[i] == again && mh_envelope_send(c->socks[i], NULL, type, NULL, body, true) == 0) {
            tried[i] = true;
            return true;
        }
    }
    return false;
}

/* Waits up to `ms` for a frame on any of the call's sockets. */
static zframe_t *s_recv(s_conn_t *c, int64_t ms)
{
    zmq_pollitem_t items[S_MAX_PEERS];
    for (size_t i = 0; i < c->n; i++)
        items[i] = (zmq_pollitem_t){zsock_resolve(c->socks[i]), 0, ZMQ_POLLIN, 0};
    if (!c->n) {
        zclock_sleep((int)ms);
        errno = EAGAIN;
        return NULL;
    }
    int rc = zmq_poll(items, (int)c->n, ms);
    if (rc <= 0) {
        errno = rc == 0 ? EAGAIN : errno;
        return NULL;
    }
    for (size_t i = 0; i < c->n; i++)
        if (items[i].revents & ZMQ_POLLIN)
            return zframe_recv(c->socks[i]);
    errno = EAGAIN;
    return NULL;
}

/* `again`: a request that only reads is sent once more, to another
 * replica if there is one, when half the deadline passed without its
 * answer (see mh_rpc_call_read). */
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
    bool tried[S_MAX_PEERS] = {false};
    int sends = 0;
    bool to_send = true;
    Mh__Envelope *env = NULL;
    for (;;) {
        int64_t now = mh_mono_ms();
        if (now >= deadline)
            break;
        /* no address at all (the name server did not answer the lookup in
         * time, or the service has none yet): look the name up again
         * rather than wait out the deadline on an empty list */
        if (to_send && c->n == 0 && now - c->resolved_ms >= 250)
            s_sync(c);
        if (to_send && s_send_one(self, c, type, body, tried)) {
            sends++;
            to_send = false;
        }
        /* with no replica connected yet, look again every 10 ms */
        int64_t until = to_send ? now + 10 : sends == 1 && now < resend_at ? resend_at : deadline;
        zframe_t *f = s_recv(c, (until < deadline ? until : deadline) - now);
        if (!f) {
            if (errno != EAGAIN && errno != EINTR)
                break;
            /* the replica it went to is slow or stuck: the first answer wins */
            if (!to_send && sends == 1 && mh_mono_ms() >= resend_at && resend_at < deadline)
                to_send = true;
            continue;
        }
        env = mh_envelope_unpack(f);
        zframe_destroy(&f);
        if (env && match(env, request_id))
            break;
        mh_envelope_free(&env);
    }
    if (env) {
        s_give(self, c); /* a second answer, if any, is dropped by the next call's match */
    } else {
        /* sent 0 times: no replica was connected; 2: neither answered */
        mh_log_limited(&self->rl, MH_LOG_WARN,
                       "%s to %s (%d address%s): no answer in %" PRId64 " ms, sent %d time%s", type,
                       self->endpoint, (int)c->n, c->n == 1 ? "" : "es", mh_mono_ms() - start,
                       sends, sends == 1 ? "" : "s");
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
