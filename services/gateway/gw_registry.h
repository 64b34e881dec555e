/* gw_registry — the gateway's cache of registered device ids, so messages
 * from unknown devices are dropped before they cost anything downstream.
 *
 * Loaded page by page from twin's RPC (LIST_IDS) at start and again every
 * refresh interval, and kept current in between from twin's
 * device.registered / device.deleted events (a SUB connected to every twin
 * replica). Events that arrive during a reload are applied to both the live
 * set and the one being built, so nothing registered meanwhile is missed.
 * Used from the gateway actor's thread only. */
#pragma once
#include "mh_metrics.h"
#include <czmq.h>
#include <stdbool.h>

typedef struct gw_registry_t gw_registry_t;

/* NULL on a bad endpoint spec. */
gw_registry_t *gw_registry_new(const char *rpc_endpoint, const char *events_endpoint,
                               int64_t refresh_ms, mh_metrics_t *metrics);
void gw_registry_destroy(gw_registry_t **self_p);

/* Sockets the actor polls; call the matching handler when readable. */
zsock_t *gw_registry_rpc(gw_registry_t *self);
zsock_t *gw_registry_events(gw_registry_t *self);
void gw_registry_on_rpc(gw_registry_t *self);
void gw_registry_on_event(gw_registry_t *self);
/* Starts loads, re-sends lost requests, re-resolves names. Call often. */
void gw_registry_tick(gw_registry_t *self);

/* True once a first complete load finished. */
bool gw_registry_loaded(gw_registry_t *self);
bool gw_registry_has(gw_registry_t *self, const char *device_id);
size_t gw_registry_size(gw_registry_t *self);
