/* fs_live_internal — what fs_live.c (the aggregates: snapshot, events,
 * rollouts, the tick) and fs_live_doc.c (the summary and geo documents,
 * WebSocket frames and their clients) share. Not for the rest of
 * fleet-stats: fs_live.h is the interface. */
#pragma once
#include "fs_live.h"
#include "mh_resolver.h"

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

enum { FS_BAT_N = 5, FS_RSSI_N = 5, FS_SEEN_N = 5, FS_HISTORY = 360 };

/* One device as the aggregates need it. */
typedef struct {
    int64_t last_seen; /* ms; 0 never */
    int64_t conn_ts;   /* time of the connectivity change last applied */
    int64_t cell;      /* -1: no location */
    int8_t bat, rssi;  /* bucket indexes */
    bool online;
    char fw[48]; /* "" unknown */
} fs_live_dev_t;

typedef struct {
    zhashx_t *devs;  /* id -> fs_live_dev_t */
    zhashx_t *fw;    /* version -> count */
    zhashx_t *cells; /* cell key -> count */
    int64_t total, online, bat[FS_BAT_N], rssi[FS_RSSI_N];
} fs_live_agg_t;

typedef struct {
    uint64_t received, published;
    int64_t at; /* monotonic ms of the last stats */
    double in, out;
} fs_live_gw_t;

/* A frame as every client may be sent it: `full` to one that is new or
 * missed a frame, `changes` (NULL: nothing changed) to one that has the
 * frame before. Shared by reference: a client writing slowly holds its
 * own. */
typedef struct {
    int refs;   /* under ws_lock */
    uint64_t n; /* 1, 2, … */
    char *full, *changes;
} fs_live_frame_t;

struct fs_live_t {
    fs_live_opts_t o;
    zsock_t *sub;
    mh_resolver_t *res[3];
    pthread_mutex_t lock; /* agg, rollouts, rates, history */
    fs_live_agg_t agg;
    bool ready;
    int64_t next_snapshot, next_resolve, next_history, next_rollouts, last_frame;
    bool rollouts_dirty;
    uint64_t gen, framed_gen; /* bumped on every change; what the last frame showed */
    char *summary;            /* cached summary text */
    uint64_t summary_gen;
    int64_t summary_at;
    json_t *rollouts;   /* active rollouts */
    zhashx_t *gateways; /* instance -> fs_live_gw_t */
    int64_t seen[FS_SEEN_N];
    int64_t hist[FS_HISTORY][3];
    int nhist, hist_start, hist_sent; /* ring; hist_sent: points already in frames */
    /* frames, and the clients that write them out (fs_live_ws.c) */
    pthread_mutex_t ws_lock;
    pthread_cond_t ws_cond; /* a new frame, or stopping */
    fs_live_frame_t *frame; /* the newest */
    char *last[6];          /* the sections as last framed */
    size_t nclients, reserved;
    bool stopping;
    uint64_t seq;
    mh_counter_t *m_events, *m_snapshots, *m_frames, *m_snapshot_errors;
    mh_gauge_t *m_clients, *m_devices;
};

/* fs_live.c: the south-west corner of geographic cell `cell`. */
void fs_live_cell_corner(const fs_live_t *self, int64_t cell, double *lat, double *lon);
/* fs_live_doc.c: the sections in frame order (devices, firmware, health,
 * rates, rollouts, geo), under self->lock; and the history from point
 * `from` on. */
void fs_live_sections(fs_live_t *self, json_t *out[6]);
json_t *fs_live_history_json(fs_live_t *self, int from);
/* fs_live_ws.c: builds the sections into the newest frame and wakes every
 * client's writer; takes the locks itself and never waits on a client. */
void fs_live_frame(fs_live_t *self);
void fs_live_ws_init(fs_live_t *self);
void fs_live_ws_free(fs_live_t *self);
