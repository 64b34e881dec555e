/* mh_idset — a set of device ids kept in step with twin: the gateway's
 * cache of registered devices, ota's set of online devices.
 *
 * Loaded page by page from twin's RPC (LIST_IDS, optionally online ones
 * only) at start and again every refresh interval, and kept current in
 * between from twin's events (a SUB connected to every twin replica):
 * device.registered / device.deleted, or device.online / device.offline /
 * device.deleted for the online set. Events that arrive during a reload are
 * applied to both the live set and the one being built, so nothing that
 * happens meanwhile is missed. Events published while the SUB had no
 * connection to a replica (twin restarting, a replica just started) are
 * lost, so every handshake with a replica (seen by a socket monitor in
 * mh_idset_tick) loads the set again. Used from one actor's thread only. */
#pragma once
#include "mh_metrics.h"
#include <czmq.h>
#include <stdbool.h>

typedef struct mh_idset_t mh_idset_t;

typedef struct {
    const char *rpc_endpoint;    /* twin's RPC ROUTER(s); names resolve to all */
    const char *events_endpoint; /* twin's event PUB(s) */
    int64_t refresh_ms;          /* full reload interval; default 5 min */
    bool online_only;            /* the online devices instead of the registered ones */
    const char *metric_prefix;   /* e.g. "mh_gateway_registry": _devices, _loads_total, ... */
    const char *what;            /* for logs, e.g. "registered devices" */
} mh_idset_opts_t;

/* NULL on a bad endpoint spec. */
mh_idset_t *mh_idset_new(const mh_idset_opts_t *opts, mh_metrics_t *metrics);
void mh_idset_destroy(mh_idset_t **self_p);

/* Sockets the actor polls; call the matching handler when readable. */
zsock_t *mh_idset_rpc(mh_idset_t *self);
zsock_t *mh_idset_events(mh_idset_t *self);
void mh_idset_on_rpc(mh_idset_t *self);
void mh_idset_on_event(mh_idset_t *self);
/* Starts loads, re-sends lost requests, re-resolves names. Call often. */
void mh_idset_tick(mh_idset_t *self);

/* True once a first complete load finished. */
bool mh_idset_loaded(mh_idset_t *self);
bool mh_idset_has(mh_idset_t *self, const char *device_id);
/* The caller met an id the set does not have: an event may have been lost
 * (a replica's events missed some other way), so the set is loaded again
 * soon — at most once every 10 seconds. */
void mh_idset_missed(mh_idset_t *self);
size_t mh_idset_size(mh_idset_t *self);
