/* in_query — ingest's read side: telemetry queries from fleet-stats on a
 * ROUTER of their own (`--rpc-bind`), answered by a thread with its own
 * PostgreSQL connection so a slow query never holds the write path.
 *
 * Ranges go to the tier asked for: raw points, or 1-minute / 1-hour rollups
 * (min, max, avg, count); `auto` picks raw up to 1 hour, 1-minute rollups up
 * to 2 days, 1-hour rollups beyond. Results are ordered by metric then time
 * and paged by an opaque cursor (metric and time of the last point). */
#pragma once
#include "mh_metrics.h"
#include <czmq.h>

typedef struct {
    const char *pg_url;
    zsock_t *router; /* from in_query_bind; the actor takes it over */
    int64_t max_limit;
    mh_metrics_t *metrics; /* where its mh_ingest_query_* metrics go */
} in_query_opts_t;

/* The query ROUTER, bound in the caller's thread (so a taken port fails the
 * start); NULL after logging why. */
zsock_t *in_query_bind(const char *endpoint);

/* A CZMQ actor (args: in_query_opts_t *, copied before it signals). */
void in_query_actor(zsock_t *pipe, void *args);

/* Which tier `auto` picks for a range; exposed for the unit test. */
const char *in_query_auto_bucket(int64_t from_ms, int64_t to_ms);
