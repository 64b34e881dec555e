/* in_rollup — the rollup job (in_store_rollup) on a thread and PostgreSQL
 * connection of its own. Recomputing the minutes that closed takes a while
 * on a large fleet (a minute of 10,000 messages a second is 1.8 M samples
 * to aggregate); on the writer's connection every batch waited behind it,
 * which was the telemetry path's p99. Any number of replicas run it; the
 * job's advisory lock lets one work at a time. */
#pragma once
#include "in_store.h"
#include "mh_metrics.h"

#include <czmq.h>
#include <stdint.h>

typedef struct {
    const char *pg_url;
    in_retention_t ret;
    int64_t interval_ms; /* between runs */
    mh_metrics_t *metrics;
} in_rollup_opts_t;

/* A CZMQ actor (args: in_rollup_opts_t *, copied before it signals). */
void in_rollup_actor(zsock_t *pipe, void *args);
