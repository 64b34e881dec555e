/* mh_window — the sending half of acknowledged delivery, under mh_relay
 * (the gateway to twin and ota, twin and ota to the gateways) and the
 * gateway's telemetry batches to ingest.
 *
 * Frames are kept by id until a receiver acknowledges them. Each is sent
 * on a DEALER that should have ZMQ_IMMEDIATE set (only receivers connected
 * now take it), and sent again when no acknowledgement came within
 * ack_timeout: the DEALER hands the re-send to the next replica, so a
 * receiver that crashed costs a delay, never the frame. What the frame
 * means, and how acknowledgements are read, is the caller's. */
#pragma once
#include "mh_metrics.h"

#include <czmq.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct mh_window_t mh_window_t;

typedef struct {
    const char *name;       /* the receivers, in logs: "ingest" */
    size_t size;            /* frames in flight at most */
    int64_t ack_timeout_ms; /* sent again after this long */
    /* metrics P_batches_sent_total, P_batches_resent_total,
     * P_acks_unknown_total and the gauge P_window_batches */
    const char *metric_prefix;
    void (*item_free)(void *item); /* frees items left at destroy (NULL: free) */
} mh_window_opts_t;

/* `dealer` is borrowed and outlives the window. NULL when out of memory. */
mh_window_t *mh_window_new(zsock_t *dealer, const mh_window_opts_t *opts, mh_metrics_t *metrics);
void mh_window_destroy(mh_window_t **self_p);

/* Sends `frame` (taken, even on failure) under `id` and keeps it, with the
 * caller's `item` (not NULL), until mh_window_ack(id). Call only while
 * !mh_window_full. 0, or -1 when out of memory or `id` is in flight
 * already (the item stays the caller's). */
int mh_window_send(mh_window_t *self, const char *id, zframe_t **frame_p, void *item);
bool mh_window_full(const mh_window_t *self);
size_t mh_window_size(const mh_window_t *self);
/* Re-sends so far (for a closing log line). */
uint64_t mh_window_resent(const mh_window_t *self);
/* An acknowledgement of `id`: the item it was sent with (the caller's
 * again), or NULL for an id not in flight — late, repeated or forged:
 * counted and logged, never applied. */
void *mh_window_ack(mh_window_t *self, const char *id);
/* Sends again what was not acknowledged within ack_timeout, or never
 * reached a receiver. Call it every few milliseconds. */
void mh_window_tick(mh_window_t *self);
