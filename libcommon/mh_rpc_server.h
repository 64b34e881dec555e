/* mh_rpc_server — the server half of every service's RPC (twin, ota,
 * ingest's telemetry queries): one request in on a ROUTER, one reply out.
 *
 * The contract every service's messages keep (proto/envelope.proto): a
 * request has request_id = 1 and deadline_ms = 2, and method = 3 where the
 * service has several; a reply has RpcReply's fields 1-5 (request_id,
 * status, error_code, message, body_json). The server reads and writes
 * those through protobuf-c's descriptors, so one loop serves them all:
 *  - a frame that is not an envelope of the request type, or whose body
 *    does not decode, is counted as malformed and ignored (no reply: there
 *    is nobody sure to answer);
 *  - past its deadline: 504 deadline_exceeded, without running;
 *  - a method that needs the database while it is down: 503 unavailable;
 *  - an unknown method: 400 bad_request;
 *  - otherwise the method's handler fills the reply.
 * Metrics, named by the service's prefix P: P_requests_total{method},
 * P_errors_total (answers of 400 and up, and malformed requests),
 * P_malformed_total, and the P_ms latency histogram. */
#pragma once
#include "mh_metrics.h"
#include "mh_pg.h"

#include <czmq.h>
#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>

/* The reply in the making. A service's own reply struct starts with this,
 * and holds its reply message (Mh__TwinReply, …) for the fields past 5. */
typedef struct {
    uint32_t status;
    const char *code; /* a static string; "" on success */
    char message[512];
    char *body; /* JSON text, owned: freed after the reply is sent */
} mh_rpc_reply_t;

/* An error answer: `status`, `code` (static) and a printf-style message. */
void mh_rpc_fail(mh_rpc_reply_t *r, uint32_t status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A success answer with `body` as its JSON (the reference is taken; NULL
 * for none). */
void mh_rpc_ok_json(mh_rpc_reply_t *r, uint32_t status, json_t *body);

/* Runs one method: `self` is the service, `request` its decoded request
 * message, `reply` its reply struct (starting with mh_rpc_reply_t). */
typedef void(mh_rpc_handler_fn)(void *self, const void *request, void *reply);

typedef struct {
    const char *name; /* the metric label */
    mh_rpc_handler_fn *fn;
    bool needs_db;
} mh_rpc_method_t;

typedef struct {
    const char *request_type, *reply_type; /* envelope types: "twin.request", "twin.reply" */
    const ProtobufCMessageDescriptor *request, *reply;
    size_t reply_size;       /* the service's reply struct */
    size_t reply_msg_offset; /* where its reply message lies in it */
    /* indexed by the request's method (field 3); a request without that
     * field runs methods[0] */
    const mh_rpc_method_t *methods;
    size_t n_methods;
    /* frees what handlers own in the service's reply struct (NULL: none) */
    void (*reply_free)(void *reply);
    const char *metric_prefix; /* "mh_twin_rpc" */
} mh_rpc_service_t;

typedef struct mh_rpc_server_t mh_rpc_server_t;

/* `def`, `self` and `db` are borrowed and must outlive the server; `db`
 * is the database methods with needs_db wait for (NULL: none). Its metrics
 * are registered in `metrics`. NULL when out of memory. */
mh_rpc_server_t *mh_rpc_server_new(const mh_rpc_service_t *def, void *self, mh_pg_t *db,
                                   mh_metrics_t *metrics);
void mh_rpc_server_destroy(mh_rpc_server_t **self_p);

/* Receives one message from `router` and answers it, or counts and
 * ignores it. Never blocks on sending (a peer gone is a reply dropped). */
void mh_rpc_server_handle(mh_rpc_server_t *self, zsock_t *router);
