/* in_service — the ingest actor: telemetry batches in on a ROUTER, written
 * exactly once to PostgreSQL (group commit), acknowledged after commit;
 * rollups, partitions and retention on a housekeeping timer. */
#pragma once
#include "mh_service.h"

typedef struct {
    mh_common_cfg_t common; /* first: see mh_service.h */
    char *pg_url;
    char *bind;
    char *events_bind;
    char *rpc_bind;
    char *kafka_brokers, *kafka_topic;
    int64_t kafka_queue_max;
    int64_t query_max;
    int64_t group_max, commit_interval_ms;
    int64_t retention_raw_ms, retention_1m_ms, retention_1h_ms;
    int64_t rollup_interval_ms, rollup_grace_ms;
    int64_t maintain_interval_ms;
    int64_t dedupe_ms;
    int64_t compress_interval_ms, seal_lag_ms, compress_chunk;
} in_config_t;

extern const mh_cfg_opt_t in_config_options[];
extern const mh_service_def_t in_service_def;

void in_actor(zsock_t *pipe, void *args);
