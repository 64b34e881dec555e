/* tw_service — the twin actor: device registry, twin documents,
 * connectivity and the durable command queue, all in PostgreSQL.
 *
 * Sockets: ROUTER (bind) for relay batches of device messages from the
 * gateways (mh_relay.h: acknowledged after COMMIT, a batch id applied once),
 * ROUTER (bind) for the operator RPC, PUB (bind) for events, and an
 * mh_relay DEALER (connect, to every gateway) for downlink publishes, kept
 * until a gateway has published them. Device messages are handled in batches:
 * one transaction locks the batch's device rows in id order (so replicas
 * never deadlock on each other and never lose an update), applies every
 * message in arrival order, writes the rows back in one statement, and only
 * after COMMIT are replies, deltas, commands and events sent. */
#pragma once
#include "mh_service.h"

typedef struct {
    mh_common_cfg_t common; /* first: see mh_service.h */
    char *pg_url;
    char *bind;
    char *rpc_bind;
    char *events_bind;
    char *downlink_endpoint;
    int64_t batch_max;
    int64_t keepalive_ms;
    int64_t grace_ms;
    int64_t presence_timeout_ms;
    int64_t conn_log_retention_ms;
    int64_t command_ttl_ms;
    int64_t command_timeout_ms;
    int64_t sweep_interval_ms;
    int64_t resolve_interval_ms;
    char *ca_dir;
} tw_config_t;

extern const mh_cfg_opt_t tw_config_options[];
extern const mh_service_def_t tw_service_def;

void tw_actor(zsock_t *pipe, void *args);
