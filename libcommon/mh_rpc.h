/* mh_rpc — a blocking RPC client for callers on many threads (fleet-stats'
 * HTTP workers): DEALER sockets to a service's ROUTER(s), one per call in
 * flight, kept in a pool. Each call carries the caller's request id and a
 * deadline; a reply that is not the caller's (a late answer to a call that
 * gave up) is dropped. */
#pragma once
#include "mh_envelope.h"
#include <stdbool.h>

typedef struct mh_rpc_t mh_rpc_t;

/* `endpoint`: the service's RPC address(es), as mh_resolver takes them. */
mh_rpc_t *mh_rpc_new(const char *endpoint);
void mh_rpc_destroy(mh_rpc_t **self_p);

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
