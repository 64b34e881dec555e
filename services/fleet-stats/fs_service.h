/* fs_service — fleet-stats: the operator HTTP API (shared/spec/operator-api.md)
 * on one port, with bearer tokens stored hashed in PostgreSQL (schema
 * `fleet`). Requests become RPCs to twin (and, as they are added, ota and
 * ingest); the HTTP server is CivetWeb (its own worker threads), the RPC
 * client libcommon's mh_rpc.
 *
 * Where it stands (issue 5): devices, twins, commands, firmware and
 * rollouts are served; the telemetry paths, the live aggregates, the WebSocket
 * feed, the dashboard and motectl are to come. docs/fleet-stats.md. */
#pragma once
#include "mh_service.h"

typedef struct {
    mh_common_cfg_t common; /* first: see mh_service.h */
    char *pg_url;
    char *api_listen;
    char *twin_rpc_endpoint;
    char *ota_rpc_endpoint;
    int64_t max_image;
    int64_t rpc_timeout_ms;
    int64_t api_threads, live_max;
    char *twin_events_endpoint;
    char *ota_events_endpoint;
    char *gateway_events_endpoint;
    char *ingest_rpc_endpoint;
    double geo_cell;
    int64_t live_resync_ms;
    int64_t live_frame_ms;
    char *dashboard_dir;
} fs_config_t;

extern const mh_cfg_opt_t fs_config_options[];
extern const mh_service_def_t fs_service_def;

void fs_actor(zsock_t *pipe, void *args);

/* Makes a token named `name`, stores its SHA-256 and prints the token once.
 * Returns the process exit code. */
int fs_create_token(const char *pg_url, const char *name);

/* Lists the tokens (name, the first 12 characters, created, revoked) and
 * revokes every live token with that name (or prefix); exit codes. */
int fs_list_tokens(const char *pg_url);
int fs_revoke_token(const char *pg_url, const char *name);
