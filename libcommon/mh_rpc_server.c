#include "mh_rpc_server.h"
#include "mh_envelope.h"
#include "mh_json.h"
#include "mh_rpc.h"
#include "mh_log.h"
#include "mh_time.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mh_rpc_server_t {
    const mh_rpc_service_t *def;
    void *self;
    mh_pg_t *db;
    mh_counter_t **requests, *errors, *malformed;
    mh_histogram_t *handling_time;
    mh_ratelimit_t rl;
};

void mh_rpc_fail(mh_rpc_reply_t *r, uint32_t status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
    r->status = status;
    r->code = code;
}

void mh_rpc_ok_json(mh_rpc_reply_t *r, uint32_t status, json_t *body)
{
    r->status = status;
    free(r->body);
    r->body = body ? mh_json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(body);
}

mh_rpc_server_t *mh_rpc_server_new(const mh_rpc_service_t *def, void *self, mh_pg_t *db,
                                   mh_metrics_t *metrics)
{
    mh_rpc_server_t *s = calloc(1, sizeof *s);
    if (!s || !(s->requests = calloc(def->n_methods, sizeof *s->requests))) {
        free(s);
        return NULL;
    }
    s->def = def;
    s->self = self;
    s->db = db;
    s->rl = (mh_ratelimit_t)MH_RATELIMIT_INIT(5000, 2);
    char name[96], labels[96];
    for (size_t i = 0; i < def->n_methods; i++) {
        snprintf(name, sizeof name, "%s_requests_total", def->metric_prefix);
        snprintf(labels, sizeof labels, "method=\"%s\"", def->methods[i].name);
        s->requests[i] = mh_metrics_counter(metrics, name, "RPC requests, by method", labels);
    }
    snprintf(name, sizeof name, "%s_errors_total", def->metric_prefix);
    s->errors = mh_metrics_counter(metrics, name, "RPC requests answered with an error", NULL);
    snprintf(name, sizeof name, "%s_malformed_total", def->metric_prefix);
    s->malformed =
        mh_metrics_counter(metrics, name, "RPC requests that did not decode, ignored", NULL);
    snprintf(name, sizeof name, "%s_seconds", def->metric_prefix);
    s->handling_time = mh_metrics_histogram(metrics, name, "RPC handling time, in seconds", NULL,
                                            mh_seconds_bounds, MH_SECONDS_NBOUNDS);
    return s;
}

void mh_rpc_server_destroy(mh_rpc_server_t **self_p)
{
    mh_rpc_server_t *s = *self_p;
    if (!s)
        return;
    free(s->requests);
    free(s);
    *self_p = NULL;
}

/* The common reply fields, written into the service's reply message. */
static void s_fill_reply(ProtobufCMessage *msg, const char *request_id, const mh_rpc_reply_t *r)
{
    mh_rpc_reply_fields_t f;
    /* the service's reply type keeps RpcReply's fields (proto/envelope.proto) */
    if (!mh_rpc_reply_fields(msg, &f))
        abort();
    *f.request_id = (char *)request_id;
    *f.status = r->status;
    *f.error_code = (char *)(r->code ? r->code : "");
    *f.message = r->status >= 400 ? (char *)r->message : "";
    *f.body_json = r->body ? r->body : "";
}

void mh_rpc_server_handle(mh_rpc_server_t *s, zsock_t *router)
{
    const mh_rpc_service_t *def = s->def;
    zmsg_t *m = zmsg_recv(router);
    if (!m)
        return;
    int64_t t0 = mh_mono_ms();
    zframe_t *routing = zmsg_pop(m), *frame = zmsg_pop(m);
    Mh__Envelope *env = frame ? mh_envelope_unpack(frame) : NULL;
    ProtobufCMessage *q = NULL;
    if (env && strcmp(env->type, def->request_type) == 0)
        q = protobuf_c_message_unpack(def->request, NULL, env->body.len, env->body.data);
    const char **request_id = q ? (const char **)mh_rpc_field(q, 1, PROTOBUF_C_TYPE_STRING) : NULL;
    if (!request_id || !routing) {
        mh_counter_inc(s->malformed);
        mh_counter_inc(s->errors);
        mh_log_limited(&s->rl, MH_LOG_WARN, "malformed RPC request, ignoring");
        goto done;
    }
    const int64_t *deadline = mh_rpc_field(q, 2, PROTOBUF_C_TYPE_INT64);
    const int *method = mh_rpc_field(q, 3, PROTOBUF_C_TYPE_ENUM);
    void *reply = calloc(1, def->reply_size);
    if (!reply)
        goto done;
    mh_rpc_reply_t *r = reply;
    ProtobufCMessage *msg = (ProtobufCMessage *)((char *)reply + def->reply_msg_offset);
    protobuf_c_message_init(def->reply, msg);
    size_t k = method ? (size_t)(unsigned)*method : 0;
    if (k < def->n_methods)
        mh_counter_inc(s->requests[k]);
    if (deadline && *deadline && *deadline < mh_now_ms())
        mh_rpc_fail(r, 504, "deadline_exceeded", "the request's deadline passed before it ran");
    else if (k >= def->n_methods || !def->methods[k].fn)
        mh_rpc_fail(r, 400, "bad_request", "unknown method %zu", k);
    else if (def->methods[k].needs_db && s->db && !mh_pg_ready(s->db))
        mh_rpc_fail(r, 503, "unavailable", "the database is unavailable; try again");
    else
        def->methods[k].fn(s->self, q, reply);
    if (r->status >= 400)
        mh_counter_inc(s->errors);
    s_fill_reply(msg, *request_id, r);
    mh_envelope_send(router, routing, def->reply_type, env->trace_id, msg, true);
    int64_t took = mh_mono_ms() - t0;
    mh_histogram_observe_ms(s->handling_time, took);
    /* a caller waits 2-10 s: an answer near that is one it may not see */
    if (took >= 1000)
        mh_log_limited(&s->rl, MH_LOG_WARN, "%s %s took %" PRId64 " ms (status %d)",
                       def->request_type, k < def->n_methods ? def->methods[k].name : "?", took,
                       (int)r->status);
    if (def->reply_free)
        def->reply_free(reply);
    free(r->body);
    free(reply);
done:
    if (q)
        protobuf_c_message_free_unpacked(q, NULL);
    mh_envelope_free(&env);
    zframe_destroy(&routing);
    zframe_destroy(&frame);
    zmsg_destroy(&m);
}
