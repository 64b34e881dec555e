/* gw_service — the gateway actor: MQTT (Paho async, MQTT 5, shared
 * subscriptions) in, validated telemetry batches out to ingest with
 * acknowledgement, re-sending and a bounded window; status, twin and
 * command-ack messages forwarded to twin; downlink publishes from twin and
 * ota out to devices at QoS1; messages from unregistered devices dropped. */
#pragma once
#include "mh_service.h"

typedef struct {
    mh_common_cfg_t common; /* first: see mh_service.h */
    char *mqtt_url;
    char *mqtt_ca, *mqtt_cert, *mqtt_key; /* mutual TLS (ssl:// URLs) */
    char *client_id;
    char *share_group;
    int64_t mqtt_version;
    char *ingest_endpoint;
    char *events_bind;
    int64_t batch_max_points;
    int64_t batch_linger_ms;
    int64_t window;
    int64_t ack_timeout_ms;
    int64_t drain_timeout_ms;
    int64_t resolve_interval_ms;
    char *twin_endpoint;
    char *twin_rpc_endpoint;
    char *twin_events_endpoint;
    char *downlink_bind;
    char *ota_endpoint;
    bool check_registered;
    int64_t registry_refresh_ms;
    int64_t seen_interval_ms;
    int64_t receive_linger_ms;
} gw_config_t;

extern const mh_cfg_opt_t gw_config_options[];
extern const mh_service_def_t gw_service_def;

/* The actor: args is an mh_service_ctx_t* whose cfg is a gw_config_t*. */
void gw_actor(zsock_t *pipe, void *args);
