#include "in_store.h"
#include "mh_pg.h"
#include "mh_time.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_DAY_MS        (86400LL * 1000)
#define S_PG_EPOCH_MS   946684800000LL /* 2000-01-01 in Unix ms */
#define S_LOCK_MIGRATE  727274000
#define S_LOCK_ROLLUP   IN_LOCK_ROLLUP
#define S_LOCK_MAINTAIN 727274002

struct in_store_t {
    mh_pg_t *pg; /* connection, migration, statements */
    in_retention_t ret;
    /* the time window the last in_store_write kept points in, set once per
     * write so every point of it (and the cold path after it) is judged
     * alike */
    int64_t keep_from, keep_until;
    /* the COPY buffer, reused */
    char *buf;
    size_t len, cap;
};

/* Idempotent; run under an advisory lock so replicas starting together do
 * not race. Partition DDL is built inside PostgreSQL with format(%I, %L),
 * so no SQL text is ever assembled from data in C. */
static const char *s_schema_sql =
    "CREATE SCHEMA IF NOT EXISTS ingest;"
    "CREATE TABLE IF NOT EXISTS ingest.telemetry_raw ("
    "  device_id text NOT NULL, metric text NOT NULL,"
    "  ts timestamptz NOT NULL, value double precision NOT NULL"
    ") PARTITION BY RANGE (ts);"
    "CREATE INDEX IF NOT EXISTS telemetry_raw_ts ON ingest.telemetry_raw USING brin (ts);"
    "CREATE INDEX IF NOT EXISTS telemetry_raw_device ON ingest.telemetry_raw (device_id, metric, "
    "ts);"
    "CREATE TABLE IF NOT EXISTS ingest.rollup_1m ("
    "  device_id text NOT NULL, metric text NOT NULL, bucket timestamptz NOT NULL,"
    "  min double precision NOT NULL, max double precision NOT NULL,"
    "  sum double precision NOT NULL, count bigint NOT NULL,"
    "  PRIMARY KEY (device_id, metric, bucket)"
    ") PARTITION BY RANGE (bucket);"
    "CREATE INDEX IF NOT EXISTS rollup_1m_bucket ON ingest.rollup_1m USING brin (bucket);"
    "CREATE TABLE IF NOT EXISTS ingest.rollup_1h (LIKE ingest.rollup_1m) PARTITION BY RANGE "
    "(bucket);"
    "DO $$ BEGIN"
    "  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'rollup_1h_pkey') THEN"
    "    ALTER TABLE ingest.rollup_1h ADD CONSTRAINT rollup_1h_pkey PRIMARY KEY (device_id, "
    "metric, bucket);"
    "  END IF;"
    "END $$;"
    "CREATE INDEX IF NOT EXISTS rollup_1h_bucket ON ingest.rollup_1h USING brin (bucket);"
    "CREATE TABLE IF NOT EXISTS ingest.batches ("
    "  batch_id text PRIMARY KEY, committed_at timestamptz NOT NULL DEFAULT now());"
    "CREATE INDEX IF NOT EXISTS batches_committed ON ingest.batches USING brin (committed_at);"
    /* sealed raw data, one compressed block per (device, metric, hour),
     * and once its day is sealed per (device, metric, day): a block holds
     * [period_start, period_start + hours) and never leaves its UTC day
     * (in_block.h, in_compress.c); the raw tier's retention applies. Blocks
     * do not compress further: no TOAST compression. The partial index
     * finds the days whose hourly blocks are still to be joined. */
    "CREATE TABLE IF NOT EXISTS ingest.telemetry_blocks ("
    "  device_id text NOT NULL, metric text NOT NULL, period_start timestamptz NOT NULL,"
    "  n int NOT NULL, data bytea NOT NULL,"
    "  PRIMARY KEY (device_id, metric, period_start)"
    ") PARTITION BY RANGE (period_start);"
    "ALTER TABLE ingest.telemetry_blocks ALTER COLUMN data SET STORAGE EXTERNAL;"
    "ALTER TABLE ingest.telemetry_blocks ADD COLUMN IF NOT EXISTS hours smallint NOT NULL "
    "DEFAULT 1;"
    "CREATE INDEX IF NOT EXISTS telemetry_blocks_hourly ON ingest.telemetry_blocks "
    "(period_start) WHERE hours < 24;"
    "CREATE TABLE IF NOT EXISTS ingest.rollup_dirty ("
    "  id bigserial PRIMARY KEY, tier text NOT NULL, bucket timestamptz NOT NULL);"
    "CREATE INDEX IF NOT EXISTS rollup_dirty_tier ON ingest.rollup_dirty (tier, bucket);"
    /* Creates the partitions of `parent` (each `width_days` wide, aligned to
     * the epoch) that cover [lo, hi). Returns how many it made. */
    "CREATE OR REPLACE FUNCTION ingest.ensure_partitions(parent text, width_days int,"
    "    lo timestamptz, hi timestamptz) RETURNS int LANGUAGE plpgsql SET timezone = 'UTC' AS $f$"
    "DECLARE s timestamptz; w interval := make_interval(days => width_days); n text; made int := 0;"
    "BEGIN"
    "  s := to_timestamp(floor(extract(epoch FROM lo) / 86400 / width_days) * width_days * 86400);"
    "  WHILE s < hi LOOP"
    "    n := parent || '_p' || to_char(s, 'YYYYMMDD');"
    "    IF to_regclass(format('ingest.%I', n)) IS NULL THEN"
    "      EXECUTE format('CREATE TABLE ingest.%I PARTITION OF ingest.%I FOR VALUES FROM (%L) TO "
    "(%L)',"
    "                     n, parent, s, s + w);"
    "      made := made + 1;"
    "    END IF;"
    "    s := s + w;"
    "  END LOOP;"
    "  RETURN made;"
    "END $f$;"
    /* Drops the partitions of `parent` that end at or before `cutoff`. */
    "CREATE OR REPLACE FUNCTION ingest.drop_partitions(parent text, width_days int,"
    "    cutoff timestamptz) RETURNS int LANGUAGE plpgsql SET timezone = 'UTC' AS $f$"
    "DECLARE r record; s timestamptz; dropped int := 0;"
    "BEGIN"
    "  FOR r IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    "           JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace ns ON ns.oid = "
    "p.relnamespace"
    "           WHERE ns.nspname = 'ingest' AND p.relname = parent LOOP"
    "    s := to_timestamp(substring(r.relname FROM '_p([0-9]{8})$'), 'YYYYMMDD');"
    "    IF s IS NOT NULL AND s + make_interval(days => width_days) <= cutoff THEN"
    "      EXECUTE format('DROP TABLE ingest.%I', r.relname);"
    "      dropped := dropped + 1;"
    "    END IF;"
    "  END LOOP;"
    "  RETURN dropped;"
    "END $f$;";

in_store_t *in_store_new(const char *pg_url, const in_retention_t *ret)
{
    in_store_t *self = calloc(1, sizeof *self);
    if (!self || !(self->pg = mh_pg_new(pg_url, s_schema_sql, S_LOCK_MIGRATE))) {
        free(self);
        return NULL;
    }
    self->ret = *ret;
    return self;
}

void in_store_destroy(in_store_t **self_p)
{
    in_store_t *self = *self_p;
    if (!self)
        return;
    mh_pg_destroy(&self->pg);
    free(self->buf);
    free(self);
    *self_p = NULL;
}

bool in_store_connected(in_store_t *self)
{
    return mh_pg_ready(self->pg);
}

/* Runs a statement with text parameters; returns the result when its status
 * is `want`, else NULL (error in err). */
static PGresult *s_exec(in_store_t *self, ExecStatusType want, const char *sql, int nparams,
                        const char *const *params, char *err, size_t errlen)
{
    return mh_pg_exec(self->pg, want, sql, nparams, params, err, errlen);
}

static void s_err(char *err, size_t errlen, const char *what, PGconn *conn)
{
    if (!err)
        return;
    snprintf(err, errlen, "%s: %s", what, conn ? PQerrorMessage(conn) : "");
    size_t l = strlen(err);
    while (l && (err[l - 1] == '\n' || err[l - 1] == ' '))
        err[--l] = 0;
}

static bool s_ok(in_store_t *self, ExecStatusType want, const char *sql, int nparams,
                 const char *const *params, char *err, size_t errlen)
{
    PGresult *res = s_exec(self, want, sql, nparams, params, err, errlen);
    PQclear(res);
    return res != NULL;
}

static void s_rollback(in_store_t *self)
{
    mh_pg_rollback(self->pg);
}

/* -EIO when the connection is gone, else -EINVAL (the statement failed). */
static int s_fail(in_store_t *self)
{
    if (mh_pg_lost(self->pg))
        return -EIO;
    s_rollback(self);
    return -EINVAL;
}

int in_store_connect(in_store_t *self, char *err, size_t errlen)
{
    int rc = mh_pg_connect(self->pg, err, errlen);
    if (rc <= 0)
        return rc;
    return in_store_maintain(self, err, errlen) < 0 ? -EIO : 1;
}

bool in_store_keeps(in_store_t *self, int64_t ts_ms)
{
    return ts_ms >= self->keep_from && ts_ms < self->keep_until;
}

/* ---- maintenance ---- */

/* Begins a transaction (`begin`) holding advisory lock `key`, so one replica
 * runs a job at a time: 1 when this one holds it; 0 when another does (the
 * transaction rolled back); s_fail's code on error. */
static int s_begin_locked(in_store_t *self, const char *begin, int key, char *err, size_t errlen)
{
    char lock[32];
    snprintf(lock, sizeof lock, "%d", key);
    const char *lp[] = {lock};
    if (!s_ok(self, PGRES_COMMAND_OK, begin, 0, NULL, err, errlen))
        return s_fail(self);
    PGresult *res = s_exec(self, PGRES_TUPLES_OK, "SELECT pg_try_advisory_xact_lock($1::bigint)", 1,
                           lp, err, errlen);
    if (!res)
        return s_fail(self);
    bool mine = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!mine)
        s_rollback(self);
    return mine ? 1 : 0;
}

int in_store_maintain(in_store_t *self, char *err, size_t errlen)
{
    static const struct {
        const char *table;
        int width_days;
    } tiers[] = {
        {"telemetry_raw", 1}, {"rollup_1m", 7}, {"rollup_1h", 30}, {"telemetry_blocks", 1}};
    int64_t keep[] = {self->ret.raw_ms, self->ret.m1_ms, self->ret.h1_ms, self->ret.raw_ms};
    int64_t now = mh_now_ms();
    int mine = s_begin_locked(self, "BEGIN", S_LOCK_MAINTAIN, err, errlen);
    if (mine <= 0) /* failed, or another replica is at it */
        return mine;
    for (size_t i = 0; i < sizeof tiers / sizeof *tiers; i++) {
        char width[16], lo[32], hi[32], cutoff[32];
        snprintf(width, sizeof width, "%d", tiers[i].width_days);
        /* Raw data is refused past its retention, but rollup tiers keep
         * longer, so each tier covers its own retention. */
        snprintf(lo, sizeof lo, "%" PRId64, now - keep[i]);
        snprintf(hi, sizeof hi, "%" PRId64, (int64_t)(now + 2 * tiers[i].width_days * S_DAY_MS));
        snprintf(cutoff, sizeof cutoff, "%" PRId64, now - keep[i]);
        const char *ep[] = {tiers[i].table, width, lo, hi};
        if (!s_ok(self, PGRES_TUPLES_OK,
                  "SELECT ingest.ensure_partitions($1, $2::int, to_timestamp($3::bigint / 1000.0),"
                  " to_timestamp($4::bigint / 1000.0))",
                  4, ep, err, errlen))
            return s_fail(self);
        const char *dp[] = {tiers[i].table, width, cutoff};
        if (!s_ok(self, PGRES_TUPLES_OK,
                  "SELECT ingest.drop_partitions($1, $2::int, to_timestamp($3::bigint / 1000.0))",
                  3, dp, err, errlen))
            return s_fail(self);
    }
    char dedupe[32];
    snprintf(dedupe, sizeof dedupe, "%" PRId64, self->ret.dedupe_ms);
    const char *pp[] = {dedupe};
    if (!s_ok(self, PGRES_COMMAND_OK,
              "DELETE FROM ingest.batches WHERE committed_at < now() - make_interval(secs => "
              "$1::bigint / 1000.0)",
              1, pp, err, errlen) ||
        !s_ok(self, PGRES_COMMAND_OK, "COMMIT", 0, NULL, err, errlen))
        return s_fail(self);
    return 0;
}

/* ---- the batch write ---- */

static int s_reserve(in_store_t *self, size_t more)
{
    if (self->len + more <= self->cap)
        return 0;
    size_t cap = self->cap * 2 + more + 65536;
    char *b = realloc(self->buf, cap);
    if (!b)
        return -ENOMEM;
    self->buf = b;
    self->cap = cap;
    return 0;
}

static void s_put16(in_store_t *self, int16_t v)
{
    uint16_t be = htobe16((uint16_t)v);
    memcpy(self->buf + self->len, &be, 2);
    self->len += 2;
}

static void s_put32(in_store_t *self, int32_t v)
{
    uint32_t be = htobe32((uint32_t)v);
    memcpy(self->buf + self->len, &be, 4);
    self->len += 4;
}

static void s_put64(in_store_t *self, uint64_t v)
{
    uint64_t be = htobe64(v);
    memcpy(self->buf + self->len, &be, 8);
    self->len += 8;
}

/* One row of PostgreSQL's binary COPY format: (text, text, timestamptz, float8). */
static int s_copy_row(in_store_t *self, const Mh__Point *p)
{
    size_t dl = strlen(p->device_id), ml = strlen(p->metric);
    if (s_reserve(self, 2 + 4 + dl + 4 + ml + 12 + 12) < 0)
        return -ENOMEM;
    s_put16(self, 4);
    s_put32(self, (int32_t)dl);
    memcpy(self->buf + self->len, p->device_id, dl);
    self->len += dl;
    s_put32(self, (int32_t)ml);
    memcpy(self->buf + self->len, p->metric, ml);
    self->len += ml;
    s_put32(self, 8);
    s_put64(self, (uint64_t)((p->ts_ms - S_PG_EPOCH_MS) * 1000));
    s_put32(self, 8);
    uint64_t bits;
    memcpy(&bits, &p->value, 8);
    s_put64(self, bits);
    return 0;
}

static int s_copy_flush(in_store_t *self)
{
    if (!self->len)
        return 0;
    int rc = PQputCopyData(mh_pg_conn(self->pg), self->buf, (int)self->len);
    self->len = 0;
    return rc == 1 ? 0 : -EIO;
}

/* Minute buckets touched by this transaction (usually one or two). */
typedef struct {
    int64_t v[64];
    size_t n;
    bool overflow;
} s_minutes_t;

static void s_minute_add(s_minutes_t *m, int64_t ts_ms)
{
    int64_t b = ts_ms - (((ts_ms % 60000) + 60000) % 60000);
    for (size_t i = 0; i < m->n; i++)
        if (m->v[i] == b)
            return;
    if (m->n < 64)
        m->v[m->n++] = b;
    else
        m->overflow = true;
}

int in_store_write(in_store_t *self, in_item_t *items, size_t n, char *err, size_t errlen)
{
    if (!in_store_connected(self)) {
        snprintf(err, errlen, "not connected to PostgreSQL");
        return -EIO;
    }
    if (!s_ok(self, PGRES_COMMAND_OK, "BEGIN", 0, NULL, err, errlen))
        return s_fail(self);
    int64_t now = mh_now_ms();
    self->keep_from = now - self->ret.raw_ms;
    self->keep_until = now + S_DAY_MS;
    /* Claim the batch ids first: a conflict means the batch was committed
     * before (a re-send), and its points must not be written again. */
    for (size_t i = 0; i < n; i++) {
        const char *p[] = {items[i].batch->batch_id};
        PGresult *res = s_exec(self, PGRES_COMMAND_OK,
                               "INSERT INTO ingest.batches (batch_id) VALUES ($1) "
                               "ON CONFLICT DO NOTHING",
                               1, p, err, errlen);
        if (!res)
            return s_fail(self);
        items[i].outcome = strcmp(PQcmdTuples(res), "1") == 0 ? IN_STORED : IN_DUPLICATE;
        items[i].stored = items[i].dropped = 0;
        PQclear(res);
    }
    PGresult *res =
        PQexec(mh_pg_conn(self->pg), "COPY ingest.telemetry_raw (device_id, metric, ts, value) "
                                     "FROM STDIN (FORMAT binary)");
    if (PQresultStatus(res) != PGRES_COPY_IN) {
        s_err(err, errlen, "COPY failed to start", mh_pg_conn(self->pg));
        PQclear(res);
        return s_fail(self);
    }
    PQclear(res);
    self->len = 0;
    s_reserve(self, 19);
    memcpy(self->buf, "PGCOPY\n\377\r\n\0", 11);
    self->len = 11;
    s_put32(self, 0); /* flags */
    s_put32(self, 0); /* header extension */
    s_minutes_t minutes = {0};
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (items[i].outcome != IN_STORED)
            continue;
        Mh__TelemetryBatch *b = items[i].batch;
        for (size_t j = 0; j < b->n_points && rc == 0; j++) {
            const Mh__Point *p = b->points[j];
            if (!in_store_keeps(self, p->ts_ms)) {
                items[i].dropped++;
                continue;
            }
            rc = s_copy_row(self, p);
            items[i].stored++;
            s_minute_add(&minutes, p->ts_ms);
            if (rc == 0 && self->len > (1 << 20))
                rc = s_copy_flush(self);
        }
    }
    if (rc == 0 && s_reserve(self, 2) == 0) {
        s_put16(self, -1);
        rc = s_copy_flush(self);
    }
    if (PQputCopyEnd(mh_pg_conn(self->pg), rc == 0 ? NULL : "client error") != 1) {
        s_err(err, errlen, "COPY failed", mh_pg_conn(self->pg));
        return s_fail(self);
    }
    res = PQgetResult(mh_pg_conn(self->pg));
    bool copied = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!copied)
        s_err(err, errlen, "COPY failed", mh_pg_conn(self->pg));
    PQclear(res);
    while ((res = PQgetResult(mh_pg_conn(self->pg))))
        PQclear(res);
    if (!copied)
        return s_fail(self);
    /* Mark the touched minutes stale. When a batch spans more minutes than
     * we track, mark the whole range of its points instead. */
    if (minutes.overflow) {
        int64_t lo = INT64_MAX, hi = INT64_MIN;
        for (size_t i = 0; i < n; i++)
            if (items[i].outcome == IN_STORED)
                for (size_t j = 0; j < items[i].batch->n_points; j++) {
                    int64_t t = items[i].batch->points[j]->ts_ms;
                    if (in_store_keeps(self, t)) {
                        lo = t < lo ? t : lo;
                        hi = t > hi ? t : hi;
                    }
                }
        char slo[32], shi[32];
        snprintf(slo, sizeof slo, "%" PRId64, lo);
        snprintf(shi, sizeof shi, "%" PRId64, hi);
        const char *p[] = {slo, shi};
        if (!s_ok(self, PGRES_COMMAND_OK,
                  "INSERT INTO ingest.rollup_dirty (tier, bucket) SELECT '1m', g FROM "
                  "generate_series(date_trunc('minute', to_timestamp($1::bigint / 1000.0)),"
                  " to_timestamp($2::bigint / 1000.0), interval '1 minute') g",
                  2, p, err, errlen))
            return s_fail(self);
    } else {
        for (size_t i = 0; i < minutes.n; i++) {
            char b[32];
            snprintf(b, sizeof b, "%" PRId64, minutes.v[i]);
            const char *p[] = {b};
            if (!s_ok(self, PGRES_COMMAND_OK,
                      "INSERT INTO ingest.rollup_dirty (tier, bucket) "
                      "VALUES ('1m', to_timestamp($1::bigint / 1000.0))",
                      1, p, err, errlen))
                return s_fail(self);
        }
    }
    if (!s_ok(self, PGRES_COMMAND_OK, "COMMIT", 0, NULL, err, errlen))
        return s_fail(self);
    return 0;
}

/* ---- rollups ---- */

/* The 1-minute rollup of one bucket ($1, epoch ms), shared with the
 * compression pass (in_compress.c). A series with a block over the minute
 * is the compression pass's to roll up (from its block and any late raw
 * rows); the rest from the raw rows. */
#define S_BLOCK_OVER(minute)                                                                       \
    "k.period_start <= " minute " AND k.period_start > " minute " - interval '1 day' AND "         \
    "k.period_start + k.hours * interval '1 hour' > " minute
const char *const in_sql_rollup_1m_clear =
    "DELETE FROM ingest.rollup_1m r WHERE bucket = to_timestamp($1::bigint / 1000.0) "
    "AND NOT EXISTS (SELECT 1 FROM ingest.telemetry_blocks k WHERE k.device_id = "
    "r.device_id AND k.metric = r.metric AND " S_BLOCK_OVER("r.bucket") ")";
const char *const in_sql_rollup_1m_recompute =
    "WITH b AS (SELECT to_timestamp($1::bigint / 1000.0) AS t) "
    "INSERT INTO ingest.rollup_1m (device_id, metric, bucket, min, max, sum, count) "
    "SELECT device_id, metric, (SELECT t FROM b), min(value), max(value), sum(value), "
    "count(*) FROM ingest.telemetry_raw w WHERE ts >= (SELECT t FROM b) "
    "AND ts < (SELECT t FROM b) + interval '1 minute' AND NOT EXISTS (SELECT 1 FROM "
    "ingest.telemetry_blocks k WHERE k.device_id = w.device_id AND k.metric = w.metric "
    "AND " S_BLOCK_OVER("(SELECT t FROM b)") ") GROUP BY device_id, metric";
const char *const in_sql_rollup_mark_1h =
    "INSERT INTO ingest.rollup_dirty (tier, bucket) "
    "VALUES ('1h', to_timestamp(floor($1::bigint / 3600000.0) * 3600))";

/* Recomputes up to `limit` dirty buckets of one tier from the tier below. */
static int s_rollup_tier(in_store_t *self, const char *tier, const char *select_dirty,
                         const char *clear, const char *recompute, const char *mark_next, int *done,
                         char *err, size_t errlen)
{
    char grace[32];
    snprintf(grace, sizeof grace, "%" PRId64, self->ret.rollup_grace_ms);
    const char *gp[] = {grace};
    PGresult *res = s_exec(self, PGRES_TUPLES_OK, select_dirty, 1, gp, err, errlen);
    if (!res)
        return -1;
    int rows = PQntuples(res);
    for (int r = 0; r < rows; r++) {
        const char *bp[] = {PQgetvalue(res, r, 0)};
        const char *dp[] = {tier, PQgetvalue(res, r, 0), PQgetvalue(res, r, 1)};
        if (!s_ok(self, PGRES_COMMAND_OK, clear, 1, bp, err, errlen) ||
            !s_ok(self, PGRES_COMMAND_OK, recompute, 1, bp, err, errlen) ||
            !s_ok(self, PGRES_COMMAND_OK,
                  "DELETE FROM ingest.rollup_dirty WHERE tier = $1 AND bucket = "
                  "to_timestamp($2::bigint / 1000.0) AND id <= $3::bigint",
                  3, dp, err, errlen) ||
            (mark_next && !s_ok(self, PGRES_COMMAND_OK, mark_next, 1, bp, err, errlen))) {
            PQclear(res);
            return -1;
        }
        (*done)++;
    }
    PQclear(res);
    return 0;
}

int in_store_rollup(in_store_t *self, int *done_out, char *err, size_t errlen)
{
    *done_out = 0;
    if (!in_store_connected(self))
        return -EIO;
    /* One snapshot for the whole job: the raw rows a recompute reads and the
     * dirty markers it then deletes must be the same set. Under READ
     * COMMITTED a batch committing between the two would lose its marker
     * without being counted. Only this job deletes markers or writes
     * rollups (advisory lock), so REPEATABLE READ cannot conflict. */
    int mine =
        s_begin_locked(self, "BEGIN ISOLATION LEVEL REPEATABLE READ", S_LOCK_ROLLUP, err, errlen);
    if (mine <= 0)
        return mine;
    int done = 0;
    /* Minutes once they have closed (plus grace for stragglers). */
    if (s_rollup_tier(
            self, "1m",
            "SELECT (extract(epoch FROM bucket) * 1000)::bigint, max(id) FROM ingest.rollup_dirty "
            "WHERE tier = '1m' AND bucket + interval '1 minute' + "
            "make_interval(secs => $1::bigint / 1000.0) <= now() "
            "GROUP BY bucket ORDER BY bucket LIMIT 120",
            in_sql_rollup_1m_clear, in_sql_rollup_1m_recompute, in_sql_rollup_mark_1h, &done, err,
            errlen) < 0)
        return s_fail(self);
    /* Hours as soon as a minute of theirs changed, so the open hour is at
     * most one rollup interval behind the 1-minute tier. */
    if (s_rollup_tier(
            self, "1h",
            "SELECT (extract(epoch FROM bucket) * 1000)::bigint, max(id) FROM ingest.rollup_dirty "
            "WHERE tier = '1h' AND $1::bigint >= 0 GROUP BY bucket ORDER BY bucket LIMIT 48",
            "DELETE FROM ingest.rollup_1h WHERE bucket = to_timestamp($1::bigint / 1000.0)",
            "WITH b AS (SELECT to_timestamp($1::bigint / 1000.0) AS t) "
            "INSERT INTO ingest.rollup_1h (device_id, metric, bucket, min, max, sum, count) "
            "SELECT device_id, metric, (SELECT t FROM b), min(min), max(max), sum(sum), "
            "sum(count) FROM ingest.rollup_1m WHERE bucket >= (SELECT t FROM b) "
            "AND bucket < (SELECT t FROM b) + interval '1 hour' GROUP BY device_id, metric",
            NULL, &done, err, errlen) < 0)
        return s_fail(self);
    if (!s_ok(self, PGRES_COMMAND_OK, "COMMIT", 0, NULL, err, errlen))
        return s_fail(self);
    *done_out = done;
    return 0;
}
