/* fleet-stats: answers, request bodies and query strings, and calling
 * twin, ota and ingest (fs_internal.h). */
#include "fs_internal.h"

/* ---- responses ---- */

static const char *s_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Payload Too Large";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status < 500 ? "Error" : "Server Error";
    }
}

int fs_send(fs_t *self, struct mg_connection *c, int status, const char *body,
            const char *extra_headers)
{
    size_t len = body ? strlen(body) : 0;
    /* CivetWeb runs without keep-alive (a connection holds a worker) and
     * closes after each answer; a client must hear it, or it reuses the
     * socket and its next request dies with it (Node's fetch did). */
    mg_printf(c,
              "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
              "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
              status, s_reason(status), len, extra_headers ? extra_headers : "");
    if (len)
        mg_write(c, body, len);
    int k = status == 401 ? 4 : status / 100 - 2;
    if (k >= 0 && k < 5)
        mh_counter_inc(self->m_requests[k]);
    return status;
}

int fs_error(fs_t *self, struct mg_connection *c, int status, const char *code, const char *message)
{
    json_t *e = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", message);
    char *text = json_dumps(e, JSON_COMPACT);
    json_decref(e);
    const char *hdr = status == 401 ? "WWW-Authenticate: Bearer realm=\"motehub\"\r\n" : NULL;
    fs_send(self, c, status, text, hdr);
    free(text);
    return status;
}

/* Reads a JSON object body. NULL after answering 400/413 itself. */
json_t *fs_body_object(fs_t *self, struct mg_connection *c, bool required)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    if (ri->content_length > FS_MAX_BODY) {
        fs_error(self, c, 413, "too_large", "the request body is over 1 MiB");
        return NULL;
    }
    size_t cap = ri->content_length > 0 ? (size_t)ri->content_length : 4096, n = 0;
    char *buf = malloc(cap + 1);
    int r;
    while (buf && (r = mg_read(c, buf + n, cap - n)) > 0) {
        n += (size_t)r;
        if (n == cap) {
            if (cap >= FS_MAX_BODY) {
                free(buf);
                fs_error(self, c, 413, "too_large", "the request body is over 1 MiB");
                return NULL;
            }
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
    }
    if (!buf) {
        fs_error(self, c, 503, "unavailable", "out of memory");
        return NULL;
    }
    buf[n] = 0;
    if (n == 0 && !required) {
        free(buf);
        return json_object();
    }
    json_error_t err;
    json_t *v = mh_json_loadb(buf, n, JSON_REJECT_DUPLICATES, MH_JSON_MAX_DEPTH, &err);
    free(buf);
    if (!v || !json_is_object(v)) {
        char msg[300];
        if (!v && mh_json_too_deep(&err))
            snprintf(msg, sizeof msg, "the body is %s (the API's limit for any body)", err.text);
        else
            snprintf(msg, sizeof msg, "the body must be a JSON object%s%s", v ? "" : ": ",
                     v ? "" : err.text);
        json_decref(v);
        fs_error(self, c, 400, "bad_request", msg);
        return NULL;
    }
    return v;
}

/* ---- calling twin, ota and ingest ---- */

/* Calls a service (`who` names it in errors) with `q`, stamped with a fresh
 * request id and the API's deadline, and waits for its reply. On no answer
 * (504), an answer that does not decode (502) or an error answer (the
 * service's own status and code), it answers the HTTP request itself and
 * returns NULL with *status set. Otherwise it returns the reply decoded as
 * `reply` — the caller answers from it and frees it — with its common
 * fields in *rc. */
ProtobufCMessage *fs_call(fs_t *self, struct mg_connection *c, mh_rpc_t *rpc, const char *who,
                          const char *type, ProtobufCMessage *q,
                          const ProtobufCMessageDescriptor *reply, mh_rpc_common_t *rc, int *status)
{
    char rid[48], msg[96];
    snprintf(rid, sizeof rid, "fs-%" PRIu64, __atomic_add_fetch(&self->seq, 1, __ATOMIC_RELAXED));
    mh_rpc_request_stamp(q, rid, mh_now_ms() + self->cfg->rpc_timeout_ms);
    /* a GET only reads: asked again of another replica if the first is slow */
    bool read = strcmp(mg_get_request_info(c)->request_method, "GET") == 0;
    Mh__Envelope *env = (read ? mh_rpc_call_read : mh_rpc_call)(
        rpc, type, q, rid, mh_rpc_reply_match, (int)self->cfg->rpc_timeout_ms);
    if (!env) {
        snprintf(msg, sizeof msg, "%s did not answer in time", who);
        *status = fs_error(self, c, 504, "deadline_exceeded", msg);
        return NULL;
    }
    ProtobufCMessage *r = protobuf_c_message_unpack(reply, NULL, env->body.len, env->body.data);
    mh_envelope_free(&env);
    if (!r || !mh_rpc_reply_common(r, rc)) {
        if (r)
            protobuf_c_message_free_unpacked(r, NULL);
        snprintf(msg, sizeof msg, "%s's answer did not decode", who);
        *status = fs_error(self, c, 502, "internal", msg);
        return NULL;
    }
    if (rc->status >= 400) {
        *status = fs_error(self, c, (int)rc->status, *rc->error_code ? rc->error_code : "internal",
                           rc->message);
        protobuf_c_message_free_unpacked(r, NULL);
        return NULL;
    }
    return r;
}

/* Calls twin and answers the HTTP request from its reply. `etag`: send
 * the twin's version as ETag. */
int fs_twin(fs_t *self, struct mg_connection *c, Mh__TwinRequest *q, bool etag)
{
    mh_rpc_common_t rc;
    int status;
    Mh__TwinReply *r =
        (Mh__TwinReply *)fs_call(self, c, self->twin, "twin", "twin.request", &q->base,
                                 &mh__twin_reply__descriptor, &rc, &status);
    if (!r)
        return status;
    char hdr[64] = "";
    if (etag)
        snprintf(hdr, sizeof hdr, "ETag: \"%" PRId64 "\"\r\n", r->version);
    status = fs_send(self, c, (int)rc.status, *rc.body_json ? rc.body_json : NULL, hdr);
    mh__twin_reply__free_unpacked(r, NULL);
    return status;
}

uint32_t fs_query_u32(const char *qs, const char *name, bool *bad)
{
    char v[32];
    if (!qs || mg_get_var(qs, strlen(qs), name, v, sizeof v) < 0)
        return 0;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < 1 || n > 1000000)
        *bad = true;
    return (uint32_t)n;
}

void fs_query_str(const char *qs, const char *name, char *out, size_t len)
{
    out[0] = 0;
    if (qs && mg_get_var(qs, strlen(qs), name, out, len) < 0)
        out[0] = 0;
}
