/* in_compress — sealed telemetry compressed (issue 19): a thread with its
 * own PostgreSQL connection that turns the raw rows of every hour older
 * than the seal lag into one in_block per (device, metric, hour) in
 * ingest.telemetry_blocks, deleting those rows in the same transaction
 * that writes the blocks (a DELETE ... RETURNING: exactly the rows it
 * encodes); once a whole UTC day is sealed, its hourly blocks become one
 * block per (device, metric, day) the same way. A crash at any point loses
 * and duplicates nothing. Late rows of a compressed span are merged into
 * the block over them on the next pass, and
 * their minutes rolled up again from the merged series. Any number of
 * replicas run it; an advisory lock lets one work at a time, and it shares
 * the rollup job's lock, so the two never write rollups at once. The hot
 * path (another connection, the current hour's partition) never waits for
 * it. Queries read blocks and raw rows together (in_query.c). */
#pragma once
#include "mh_metrics.h"

#include <czmq.h>
#include <stdint.h>

#define IN_PERIOD_MS     ((int64_t)3600000)  /* an hour: what is sealed at a time */
#define IN_DAY_MS        ((int64_t)86400000) /* the longest a block spans */
#define IN_LOCK_COMPRESS 727274003

typedef struct {
    const char *pg_url;
    int64_t interval_ms;  /* between passes */
    int64_t seal_lag_ms;  /* an hour is sealed this long after it ends */
    int64_t retention_ms; /* the raw tier's: older hours are not looked at */
    int chunk_devices;    /* devices per transaction */
    mh_metrics_t *metrics;
} in_compress_opts_t;

/* A CZMQ actor (args: in_compress_opts_t *, copied before it signals). */
void in_compress_actor(zsock_t *pipe, void *args);
