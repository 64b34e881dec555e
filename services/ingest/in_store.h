/* in_store — ingest's PostgreSQL side: schema, partitions, retention, the
 * exactly-once batch write (COPY + batch ids in one transaction) and the
 * rollups.
 *
 * Tables (schema "ingest"; the SQL in in_schema.c):
 *   samples        (ts, device, metric_set, value[])   the raw tier, a row per device
 *                  message, daily partitions; device_ids and metric_sets are its
 *                  dictionaries (in_dict.h); telemetry_raw is a view of it, a row per
 *                  sample (device_id, metric, ts, value)
 *   rollup_1m      (device_id, metric, bucket, min, max, sum, count)  7-day partitions
 *   rollup_1h      (same)                              30-day partitions
 *   batches        (batch_id, committed_at)            ids of committed batches
 *   rollup_dirty   (id, tier, bucket)                  buckets whose rollup is stale
 *   telemetry_blocks (device_id, metric, period_start, hours, n, data)  sealed raw
 *                  data, one in_block per series and hour, then day (in_compress.h);
 *                  _day and _hour partitions, each by day
 *
 * Rollups are recomputed from the tier below for each dirty bucket, so they
 * are exact whatever order or lateness the data has, and any replica may run
 * the job (an advisory lock makes it one at a time). */
#pragma once
#include "telemetry.pb-c.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int64_t raw_ms, m1_ms, h1_ms; /* retention per tier */
    int64_t rollup_grace_ms;      /* a minute is rolled up this long after it ends */
    int64_t dedupe_ms;            /* how long batch ids are remembered */
} in_retention_t;

typedef struct in_store_t in_store_t;

/* The rollup job's advisory lock; the compression pass takes it too. */
#define IN_LOCK_ROLLUP 727274001
/* A 1-minute bucket's rollup ($1 = its start, epoch ms): clear, recompute
 * from the raw rows (series already compressed for that hour left to the
 * compression pass), and mark its hour for the 1-hour tier. */
extern const char *const in_sql_rollup_1m_clear, *const in_sql_rollup_1m_recompute,
                                                     *const in_sql_rollup_mark_1h;

/* One incoming batch and what became of it. */
typedef enum { IN_STORED, IN_DUPLICATE, IN_REJECTED } in_outcome_t;
typedef struct {
    Mh__TelemetryBatch *batch; /* borrowed */
    in_outcome_t outcome;      /* out */
    uint32_t stored, dropped;  /* out: points written, points outside retention */
} in_item_t;

in_store_t *in_store_new(const char *pg_url, const in_retention_t *ret);
void in_store_destroy(in_store_t **self_p);

/* Connects if not connected (with mh_pg's backoff), migrates the schema and
 * creates partitions. Returns 0 when already connected, 1 when connected
 * now, -EAGAIN while backing off, or -EIO (message in `err`). */
int in_store_connect(in_store_t *self, char *err, size_t errlen);
bool in_store_connected(in_store_t *self);

/* Writes the batches of `items` in one transaction; a batch id already
 * committed is IN_DUPLICATE and writes nothing. Returns 0 when committed;
 * -EIO when the database is unreachable (nothing committed; try again);
 * -EINVAL when the data was refused (nothing committed; the caller writes
 * the batches one by one to find the bad one). */
int in_store_write(in_store_t *self, in_item_t *items, size_t n, char *err, size_t errlen);

/* Partitions ahead, retention (drops whole partitions), old batch ids. */
int in_store_maintain(in_store_t *self, char *err, size_t errlen);

/* Recomputes dirty rollup buckets; *done_out = buckets recomputed.
 * Returns 0 or a negative errno. */
int in_store_rollup(in_store_t *self, int *done_out, char *err, size_t errlen);

/* True when the last in_store_write stored a point at ts_ms (not too old
 * for retention, not more than a day ahead, judged at that write's time). */
bool in_store_keeps(in_store_t *self, int64_t ts_ms);
