/* mh_rpc — a blocking RPC client for callers on many threads (fleet-stats'
 * HTTP workers): sockets connected to every replica of a service, one per
 * call in flight, kept in a pool; each call picks the replica its request
 * goes to, in turn. Each call carries the caller's request id and a
 * deadline; a reply that is not the caller's (a late answer to a call that
 * gave up) is dropped. */
#pragma once
#include "mh_envelope.h"
#include <jansson.h>
#include <stdbool.h>

typedef struct mh_rpc_t mh_rpc_t;

/* `endpoint`: the service's RPC address(es), as mh_resolver takes them. */
mh_rpc_t *mh_rpc_new(const char *endpoint);
void mh_rpc_destroy(mh_rpc_t **self_p);

/* The contract every service's messages keep (proto/envelope.proto): a
 * request has request_id = 1, deadline_ms = 2 (and method = 3 where there
 * are several); a reply has RpcReply's fields 1-5. */

/* A singular field of a decoded message by number and type, NULL when the
 * message has no such field. */
void *mh_rpc_field(const ProtobufCMessage *m, unsigned number, ProtobufCType type);

/* Where RpcReply's fields lie in any service's reply message. */
typedef struct {
    char **request_id;
    uint32_t *status;
    char **error_code, **message, **body_json;
} mh_rpc_reply_fields_t;
/* false when `reply` lacks them. */
bool mh_rpc_reply_fields(ProtobufCMessage *reply, mh_rpc_reply_fields_t *out);

/* RpcReply's fields of any service's reply, borrowed from it. */
typedef struct {
    const char *request_id;
    uint32_t status;
    const char *error_code, *message, *body_json;
} mh_rpc_common_t;
/* false when `reply` lacks them. */
bool mh_rpc_reply_common(const ProtobufCMessage *reply, mh_rpc_common_t *out);

/* For callers that poll their own DEALER: receives one frame and returns
 * the reply message it holds when it is a `type` envelope of `reply`'s
 * kind answering `request_id` (free it with protobuf_c_message_free_
 * unpacked). NULL for anything else: a malformed frame, or the answer to
 * a request given up on. */
ProtobufCMessage *mh_rpc_recv_reply(zsock_t *dealer, const char *type,
                                    const ProtobufCMessageDescriptor *reply,
                                    const char *request_id);

/* Sets a request's request_id (borrowed) and deadline_ms; false when it
 * lacks them. */
bool mh_rpc_request_stamp(ProtobufCMessage *request, const char *request_id, int64_t deadline_ms);

/* Is this reply envelope the answer to the call with `request_id`? */
typedef bool(mh_rpc_match_fn)(const Mh__Envelope *reply, const char *request_id);

/* A matcher for every service's reply ("<service>.reply", whose fields 1-5
 * are RpcReply's): true when it answers `request_id`. */
bool mh_rpc_reply_match(const Mh__Envelope *reply, const char *request_id);

/* Sends `body` as `type` and waits up to timeout_ms for the reply that
 * `match` accepts. Returns the reply envelope (mh_envelope_free it), or
 * NULL on timeout (errno ETIMEDOUT) or a bad endpoint. */
Mh__Envelope *mh_rpc_call(mh_rpc_t *self, const char *type, const ProtobufCMessage *body,
                          const char *request_id, mh_rpc_match_fn *match, int timeout_ms);

/* The same for a request that only reads (any answer to it is as good as
 * another): when half of timeout_ms passed without its answer, it is sent
 * once more, to a replica it has not gone to — waiting for one that is not
 * connected yet; the same one only when the service has no other — and the
 * first answer wins: a replica that is stuck (not dead: its connection
 * stands) costs half the deadline instead of all of it. */
Mh__Envelope *mh_rpc_call_read(mh_rpc_t *self, const char *type, const ProtobufCMessage *body,
                               const char *request_id, mh_rpc_match_fn *match, int timeout_ms);

/* Calls a service for its reply's JSON body (a read: mh_rpc_call_read): `request` is stamped with
 * `request_id` and a deadline timeout_ms from now, the reply read as
 * RpcReply. Returns the body of a 200 reply, parsed with mh_json's depth
 * limit (the caller owns it), or NULL with `err` saying why: no answer, the
 * service's status and message, or a body that does not parse. */
json_t *mh_rpc_call_json(mh_rpc_t *self, const char *type, ProtobufCMessage *request,
                         const char *request_id, int timeout_ms, char *err, size_t errlen);
