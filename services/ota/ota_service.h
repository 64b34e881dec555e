/* ota_service — the ota actor: firmware catalogue, rollouts, waves and
 * device jobs, all in PostgreSQL (schema `ota`), so replicas are stateless
 * and a killed process continues where it stood.
 *
 * Sockets: ROUTER (bind) for relay batches of OTA status messages from the
 * gateways (mh_relay.h), ROUTER (bind) for the operator RPC, PUB (bind) for
 * events, an mh_relay DEALER (connect, to every gateway) for jobs, DEALER to
 * twin's RPC for the targeted devices,
 * and mh_idset (twin's RPC + events) for which devices are online.
 *
 * Every tick each active rollout is advanced by one replica at a time (its
 * row locked with SKIP LOCKED): jobs time out, the failure gate is checked,
 * waves start, and jobs are sent to online devices within maxPerMinute; a
 * job is marked sent in the same transaction, and published after COMMIT.
 * Images are served over HTTP from the service's own HTTP port
 * (ota_image.h). docs/ota.md has the behaviour. */
#pragma once
#include "mh_service.h"

typedef struct {
    mh_common_cfg_t common; /* first: see mh_service.h */
    char *pg_url;
    char *bind;
    char *rpc_bind;
    char *events_bind;
    char *downlink_endpoint;
    char *twin_rpc_endpoint;
    char *twin_events_endpoint;
    char *signing_key;
    char *url_secret;
    char *public_url;
    int64_t tick_ms;
    int64_t resend_ms;
    int64_t health_interval_ms;
    char *ingest_rpc_endpoint;
    int64_t max_image;
    int64_t online_refresh_ms;
    int64_t resolve_interval_ms;
} ota_config_t;

extern const mh_cfg_opt_t ota_config_options[];
extern const mh_service_def_t ota_service_def;

void ota_actor(zsock_t *pipe, void *args);
