/* fs_live — the fleet's live aggregates, kept from events and rebuilt from a
 * snapshot: devices total/online/offline, firmware versions, health buckets
 * (battery, rssi, last seen), geographic cells, messages per second in and
 * out, active rollouts with wave progress, and online/offline over the last
 * hour.
 *
 * State: one small record per device (id → online, firmware, battery and
 * rssi buckets, cell, last seen) and counters kept incrementally, so an
 * event costs O(1) whatever the fleet size. At start and every
 * `resync_ms` the whole map is rebuilt from twin's SNAPSHOT pages and
 * swapped in; events queued meanwhile are applied after, in order, so the
 * result is the same on every replica that saw the same events.
 *
 * Threads: the owner (fleet-stats' actor) calls fs_live_on_event and
 * fs_live_tick; HTTP threads read with fs_live_summary / fs_live_geo and
 * serve WebSockets with fs_live_serve. The owner builds at most one frame
 * every `min_frame_ms`; each client's thread writes it out. */
#pragma once
#include "mh_metrics.h"
#include "mh_rpc.h"

#include <czmq.h>
#include <stdbool.h>

typedef struct fs_live_t fs_live_t;

typedef struct {
    const char *twin_events;    /* twin's PUB(s) */
    const char *ota_events;     /* ota's PUB(s) */
    const char *gateway_events; /* every gateway's PUB */
    mh_rpc_t *twin, *ota;       /* borrowed */
    int64_t rpc_timeout_ms;
    double cell_degrees;  /* geographic cell size */
    int64_t resync_ms;    /* full snapshot this often (0: at start only) */
    int64_t min_frame_ms; /* at most one WebSocket frame per this */
} fs_live_opts_t;

fs_live_t *fs_live_new(const fs_live_opts_t *opts, mh_metrics_t *metrics);
void fs_live_destroy(fs_live_t **self_p);

/* The SUB socket to poll; fs_live_on_event when readable. */
zsock_t *fs_live_events(fs_live_t *self);
void fs_live_on_event(fs_live_t *self);
/* Snapshot when due, rates, rollouts, history, and the coalesced frame. */
void fs_live_tick(fs_live_t *self);
/* True once the first snapshot is in. */
bool fs_live_ready(fs_live_t *self);

/* The current summary / geo document (JSON text, caller frees); NULL before
 * the first snapshot. */
char *fs_live_summary(fs_live_t *self);
char *fs_live_geo(fs_live_t *self);

/* WebSocket clients. A connection first reserves a place (false when
 * `max` are held or the feed is stopping; fs_live_release when it ends,
 * served or not). Then fs_live_serve writes its frames on the calling
 * thread until the connection is gone or fs_live_stop: the full summary
 * first, then each change frame — or the full summary again when the
 * client missed one, so a slow reader skips ahead instead of falling
 * behind, and never holds up the others. With no frame for `ping_ms` it
 * sends a ping, to find a reader that is gone. `send` writes one text frame
 * (a ping when `text` is NULL) and returns <= 0 when the connection is
 * gone. */
typedef int(fs_live_send_fn)(void *conn, const char *text, size_t len);
bool fs_live_reserve(fs_live_t *self, size_t max);
void fs_live_release(fs_live_t *self);
void fs_live_serve(fs_live_t *self, void *conn, fs_live_send_fn *send, int64_t ping_ms);
/* Ends every fs_live_serve and refuses new places: before the HTTP server
 * stops, which waits for its workers. */
void fs_live_stop(fs_live_t *self);
