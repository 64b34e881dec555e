/* mh_relay — acknowledged delivery of small messages from one service to
 * the replicas of another (the gateway to twin and to ota).
 *
 * The sender packs messages (Envelope frames) into batches ("relay.batch":
 * a batch id and the messages, proto/envelope.proto), sends each on a
 * DEALER connected to every replica, and keeps it in a bounded window until
 * a replica answers "relay.ack" with its id. A batch not acknowledged
 * within ack_timeout is sent again — the DEALER hands it to the next
 * replica — so a receiver that crashes with a batch unapplied costs a
 * delay, never the messages. The receiver applies a batch id at most once
 * (it records the id in the transaction that applies the batch) and acks
 * only after COMMIT; a repeated batch is acknowledged again and not
 * applied (RelayAck.duplicate).
 *
 * The receiving half is mh_relay_in_*: it reads batches from a ROUTER and
 * answers them; the receiver keeps its own record of applied ids. */
#pragma once
#include "mh_metrics.h"
#include "mh_resolver.h"

#include <czmq.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct mh_relay_t mh_relay_t;

typedef struct {
    const char *endpoint; /* the receivers, as mh_resolver takes them */
    const char *name;     /* in logs: "twin" */
    const char *instance; /* unique per process: batch ids start with it */
    size_t batch_max;     /* messages per batch at most (default 500) */
    int64_t linger_ms;    /* a partial batch waits this long (default 5) */
    size_t window;        /* batches in flight at most (default 64) */
    /* messages held at most (in flight, waiting and being built; default
     * 100,000): past it mh_relay_full says take no more */
    size_t max_held;
    int64_t ack_timeout_ms; /* re-send after this long (default 5000) */
    /* metrics P_batches_sent_total, P_batches_resent_total,
     * P_acks_unknown_total, P_window_batches, P_messages_total */
    const char *metric_prefix;
    /* called with each tag of a batch's messages once a receiver has
     * acknowledged the batch (NULL: none) */
    void (*delivered)(void *ud, const char *tag);
    void *ud;
} mh_relay_opts_t;

/* NULL when the endpoint does not resolve or out of memory. */
mh_relay_t *mh_relay_new(const mh_relay_opts_t *opts, mh_metrics_t *metrics);
void mh_relay_destroy(mh_relay_t **self_p);

/* Adds one message (packed as an Envelope of `type`) to the batch being
 * built, sending the batch when it is full and the window has room. 0, or
 * -1 when out of memory. Never blocks and never drops: while the window is
 * full batches wait in the sender, so a receiver down for a while costs
 * memory, not messages (mh_relay_full tells the caller when to stop taking
 * input). */
int mh_relay_add(mh_relay_t *self, const char *type, const ProtobufCMessage *body);
/* The same with a tag (copied; NULL for none) that opts.delivered is given
 * once the message's batch is acknowledged: how a sender learns that what
 * it handed over has taken effect. */
int mh_relay_add_tagged(mh_relay_t *self, const char *type, const ProtobufCMessage *body,
                        const char *tag);
/* The same for a message already packed as an Envelope (taken, even on
 * failure), with its tag or NULL. */
int mh_relay_add_packed(mh_relay_t *self, zframe_t **frame_p, const char *tag);
/* True while max_held messages are held: take no more input. */
bool mh_relay_full(const mh_relay_t *self);
/* Batches sent and not yet acknowledged, plus messages not yet sent. */
size_t mh_relay_unacked(const mh_relay_t *self);

/* The DEALER acknowledgements arrive on (poll it for input). */
zsock_t *mh_relay_socket(mh_relay_t *self);
/* Reads every acknowledgement waiting on the socket. */
void mh_relay_on_acks(mh_relay_t *self);
/* Sends a partial batch that lingered long enough, and re-sends batches
 * not acknowledged in time. Call it every few milliseconds; `force` sends
 * a partial batch now (draining). */
void mh_relay_tick(mh_relay_t *self, bool force);
/* On the way out: sends what is held and waits up to timeout_ms for the
 * acknowledgements. Returns the messages still not acknowledged. */
size_t mh_relay_drain(mh_relay_t *self, int64_t timeout_ms);
/* Looks the receivers up again (names → every replica). */
void mh_relay_refresh(mh_relay_t *self);

/* ---- the receiving half ---- */

/* One batch read from a ROUTER: its sender's routing frame, id and
 * messages (each a packed Envelope). */
typedef struct {
    zframe_t *routing;
    char *batch_id;
    zframe_t **messages;
    size_t n;
} mh_relay_batch_t;

/* Reads one frame set from `router`: a batch, or NULL for anything else
 * (counted by the caller as malformed). */
mh_relay_batch_t *mh_relay_in_recv(zsock_t *router);
/* Answers a batch once its effect is committed (or found already applied:
 * `duplicate`). Never blocks. */
void mh_relay_in_ack(zsock_t *router, const mh_relay_batch_t *b, bool duplicate);
void mh_relay_batch_destroy(mh_relay_batch_t **b_p);
