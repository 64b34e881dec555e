#include "in_store.h"
#include "in_dict.h"
#include "in_schema.h"
#include "mh_pg.h"
#include "mh_time.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdarg.h>
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
    /* the raw tier's dictionaries, and a batch's rows (reused) */
    in_dict_t *dict;
    struct s_row *rows;
    size_t nrows, rows_cap;
    char *key;
    size_t key_cap;
    /* a write's parameters (in_store_write), reused */
    char *param;
    size_t param_len, param_cap;
};

/* One row of ingest.samples: a run of a batch's points with one device
 * and timestamp (one device message), at most S_ROW_MAX of them. */
#define S_ROW_MAX 64
typedef struct s_row {
    size_t item;
    Mh__Point **points;
    uint32_t n;
    int32_t device, set; /* dictionary ids; 0 while unknown */
} s_row_t;

/* Devices (and metric sets) one ingest keeps the ids of: a million-device
 * fleet's at ~60 bytes each. */
#define S_DICT_MAX 4000000

/* The write's claim and marks in one statement, prepared on every
 * connection (mh_pg_set_session) so PostgreSQL parses and plans it once:
 * $1 the batch ids (a conflict is a batch committed before, a re-send: its
 * id is not returned), $2 the minutes (epoch ms) the batches touch. */
static const char s_prepare[] =
    "PREPARE in_write(text[], bigint[]) AS WITH c AS (INSERT INTO ingest.batches (batch_id) "
    "SELECT unnest($1) ON CONFLICT DO NOTHING RETURNING batch_id), "
    "m AS (INSERT INTO ingest.rollup_dirty (tier, bucket) "
    "SELECT '1m', to_timestamp(b / 1000.0) FROM unnest($2) b) "
    "SELECT batch_id FROM c";

in_store_t *in_store_new(const char *pg_url, const in_retention_t *ret)
{
    in_store_t *self = calloc(1, sizeof *self);
    if (!self || !(self->pg = mh_pg_new(pg_url, in_schema_sql, S_LOCK_MIGRATE)) ||
        !(self->dict = in_dict_new(S_DICT_MAX))) {
        if (self)
            mh_pg_destroy(&self->pg);
        free(self);
        return NULL;
    }
    self->ret = *ret;
    if (mh_pg_set_session(self->pg, s_prepare) < 0) {
        in_store_destroy(&self);
        return NULL;
    }
    return self;
}

void in_store_destroy(in_store_t **self_p)
{
    in_store_t *self = *self_p;
    if (!self)
        return;
    mh_pg_destroy(&self->pg);
    in_dict_destroy(&self->dict);
    free(self->buf);
    free(self->rows);
    free(self->key);
    free(self->param);
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
    } tiers[] = {{"samples", 1},
                 {"rollup_1m", 7},
                 {"rollup_1h", 30},
                 {"telemetry_blocks_day", 1},
                 {"telemetry_blocks_hour", 1}};
    int64_t keep[] = {self->ret.raw_ms, self->ret.m1_ms, self->ret.h1_ms, self->ret.raw_ms,
                      self->ret.raw_ms};
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

/* One row of PostgreSQL's binary COPY format: (timestamptz, int, int,
 * float8[]). */
static int s_copy_row(in_store_t *self, const s_row_t *r)
{
    if (s_reserve(self, 2 + 12 + 8 + 8 + 4 + 20 + (size_t)r->n * 12) < 0)
        return -ENOMEM;
    s_put16(self, 4);
    s_put32(self, 8);
    s_put64(self, (uint64_t)((r->points[0]->ts_ms - S_PG_EPOCH_MS) * 1000));
    s_put32(self, 4);
    s_put32(self, r->device);
    s_put32(self, 4);
    s_put32(self, r->set);
    s_put32(self, (int32_t)(20 + r->n * 12)); /* the array: */
    s_put32(self, 1);                         /* dimensions */
    s_put32(self, 0);                         /* no NULLs */
    s_put32(self, 701);                       /* float8 */
    s_put32(self, (int32_t)r->n);             /* length */
    s_put32(self, 1);                         /* lower bound */
    for (uint32_t i = 0; i < r->n; i++) {
        uint64_t bits;
        memcpy(&bits, &r->points[i]->value, 8);
        s_put32(self, 8);
        s_put64(self, bits);
    }
    return 0;
}

/* The ids of a row's device and metric set from the dictionary; false when
 * one is not cached (it is then wanted). */
static bool s_row_ids(in_store_t *self, s_row_t *r)
{
    if (!r->device)
        r->device = in_dict_device(self->dict, r->points[0]->device_id);
    if (!r->set) {
        if (!in_dict_set_key(r->points, r->n, &self->key, &self->key_cap))
            return false;
        r->set = in_dict_set(self->dict, self->key);
    }
    return r->device && r->set;
}

/* The batches' points as rows (a device message each) with their
 * dictionary ids, resolving those not cached. 0, or s_fail's code. */
static int s_rows(in_store_t *self, in_item_t *items, size_t n, char *err, size_t errlen)
{
    self->nrows = 0;
    bool missing = false;
    for (size_t i = 0; i < n; i++) {
        Mh__TelemetryBatch *b = items[i].batch;
        for (size_t j = 0; j < b->n_points;) {
            Mh__Point **p = b->points + j;
            size_t k = 1;
            while (j + k < b->n_points && k < S_ROW_MAX && p[k]->ts_ms == p[0]->ts_ms &&
                   strcmp(p[k]->device_id, p[0]->device_id) == 0)
                k++;
            if (self->nrows == self->rows_cap) {
                size_t cap = self->rows_cap * 2 + 256;
                s_row_t *rows = realloc(self->rows, cap * sizeof *rows);
                if (!rows) {
                    snprintf(err, errlen, "out of memory");
                    return -ENOMEM;
                }
                self->rows = rows;
                self->rows_cap = cap;
            }
            s_row_t *r = &self->rows[self->nrows++];
            *r = (s_row_t){i, p, (uint32_t)k, 0, 0};
            if (in_store_keeps(self, p[0]->ts_ms) && !s_row_ids(self, r))
                missing = true;
            j += k;
        }
    }
    if (!missing)
        return 0;
    if (in_dict_fetch(self->dict, self->pg, err, errlen) < 0)
        return s_fail(self);
    for (size_t i = 0; i < self->nrows; i++) {
        s_row_t *r = &self->rows[i];
        if (in_store_keeps(self, r->points[0]->ts_ms) && !s_row_ids(self, r)) {
            snprintf(err, errlen, "no dictionary id for device %s", r->points[0]->device_id);
            return -EIO;
        }
    }
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

/* The minute bucket (epoch ms) of a time. */
static int64_t s_minute(int64_t ts_ms)
{
    return ts_ms - (((ts_ms % 60000) + 60000) % 60000);
}

static void s_minute_add(s_minutes_t *m, int64_t ts_ms)
{
    int64_t b = s_minute(ts_ms);
    for (size_t i = 0; i < m->n; i++)
        if (m->v[i] == b)
            return;
    if (m->n < 64)
        m->v[m->n++] = b;
    else
        m->overflow = true;
}

/* Text appended to the write's parameters (self->param). */
static bool s_param(in_store_t *self, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool s_param(in_store_t *self, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = self->param_cap - self->param_len;
        int w = vsnprintf(self->param + self->param_len, room, fmt, ap);
        va_end(ap);
        if (w < 0)
            return false;
        if ((size_t)w < room) {
            self->param_len += (size_t)w;
            return true;
        }
        size_t cap = self->param_cap * 2 + (size_t)w + 4096;
        char *s = realloc(self->param, cap);
        if (!s)
            return false;
        self->param = s;
        self->param_cap = cap;
    }
}

/* in_write's $2 in self->param: the minutes the kept rows touch as a
 * bigint[] (usually one or two; when there are more than s_minutes_t
 * tracks, every minute of their range). */
static bool s_minutes_param(in_store_t *self)
{
    self->param_len = 0;
    s_minutes_t m = {0};
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    for (size_t i = 0; i < self->nrows; i++) {
        int64_t t = self->rows[i].points[0]->ts_ms;
        if (!in_store_keeps(self, t))
            continue;
        s_minute_add(&m, t);
        lo = t < lo ? t : lo;
        hi = t > hi ? t : hi;
    }
    if (!s_param(self, "{"))
        return false;
    if (m.overflow)
        for (int64_t b = s_minute(lo); b <= hi; b += 60000)
            if (!s_param(self, "%s%" PRId64, b == s_minute(lo) ? "" : ",", b))
                return false;
    for (size_t i = 0; i < m.n && !m.overflow; i++)
        if (!s_param(self, "%s%" PRId64, i ? "," : "", m.v[i]))
            return false;
    return s_param(self, "}");
}

/* The batches whose ids the claim returned are stored; the rest (and a
 * second copy of one in the same group) are duplicates. */
static void s_claimed(in_item_t *items, size_t n, PGresult *res)
{
    for (size_t i = 0; i < n; i++) {
        items[i].outcome = IN_DUPLICATE;
        items[i].stored = items[i].dropped = 0;
    }
    for (int r = 0; r < PQntuples(res); r++)
        for (size_t i = 0; i < n; i++)
            if (items[i].outcome == IN_DUPLICATE &&
                strcmp(items[i].batch->batch_id, PQgetvalue(res, r, 0)) == 0) {
                items[i].outcome = IN_STORED;
                break;
            }
}

/* The COPY's data: the stored batches' rows. 0, or -ENOMEM/-EIO. */
static int s_copy(in_store_t *self, in_item_t *items)
{
    self->len = 0;
    if (s_reserve(self, 19) < 0)
        return -ENOMEM;
    memcpy(self->buf, "PGCOPY\n\377\r\n\0", 11);
    self->len = 11;
    s_put32(self, 0); /* flags */
    s_put32(self, 0); /* header extension */
    int rc = 0;
    for (size_t i = 0; i < self->nrows && rc == 0; i++) {
        const s_row_t *r = &self->rows[i];
        in_item_t *item = &items[r->item];
        if (item->outcome != IN_STORED)
            continue;
        if (!in_store_keeps(self, r->points[0]->ts_ms)) {
            item->dropped += r->n;
            continue;
        }
        rc = s_copy_row(self, r);
        item->stored += r->n;
        if (rc == 0 && self->len > (1 << 20))
            rc = s_copy_flush(self);
    }
    if (rc == 0 && (rc = s_reserve(self, 2)) == 0) {
        s_put16(self, -1);
        rc = s_copy_flush(self);
    }
    return rc;
}

int in_store_write(in_store_t *self, in_item_t *items, size_t n, char *err, size_t errlen)
{
    if (!in_store_connected(self)) {
        snprintf(err, errlen, "not connected to PostgreSQL");
        return -EIO;
    }
    int64_t now = mh_now_ms();
    self->keep_from = now - self->ret.raw_ms;
    self->keep_until = now + S_DAY_MS;
    int rc = s_rows(self, items, n, err, errlen);
    if (rc < 0)
        return rc;
    /* in_write's $1: the batch ids as a text[] */
    const char **idv = malloc(n * sizeof *idv);
    for (size_t i = 0; idv && i < n; i++)
        idv[i] = items[i].batch->batch_id;
    char *ids = idv ? mh_pg_text_array(idv, n) : NULL;
    free(idv);
    if (!ids || !s_minutes_param(self)) {
        free(ids);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (!s_ok(self, PGRES_COMMAND_OK, "BEGIN", 0, NULL, err, errlen)) {
        free(ids);
        return s_fail(self);
    }
    PGconn *conn = mh_pg_conn(self->pg);
    const char *params[] = {ids, self->param};
    PGresult *res = PQexecPrepared(conn, "in_write", 2, params, NULL, NULL, 0);
    free(ids);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        s_err(err, errlen, "claiming the batch ids failed", conn);
        PQclear(res);
        return s_fail(self);
    }
    s_claimed(items, n, res);
    PQclear(res);
    res = PQexec(conn, "COPY ingest.samples (ts, device, metric_set, value) FROM STDIN "
                       "(FORMAT binary)");
    if (PQresultStatus(res) != PGRES_COPY_IN) {
        s_err(err, errlen, "COPY failed to start", conn);
        PQclear(res);
        return s_fail(self);
    }
    PQclear(res);
    rc = s_copy(self, items);
    if (PQputCopyEnd(conn, rc == 0 ? NULL : "client error") != 1) {
        s_err(err, errlen, "COPY failed", conn);
        return s_fail(self);
    }
    res = PQgetResult(conn);
    bool copied = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!copied)
        s_err(err, errlen, "COPY failed", conn);
    PQclear(res);
    while ((res = PQgetResult(conn)))
        PQclear(res);
    if (!copied || !s_ok(self, PGRES_COMMAND_OK, "COMMIT", 0, NULL, err, errlen))
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
    "WITH b AS (SELECT to_timestamp($1::bigint / 1000.0) AS t), "
    "g AS (SELECT s.device, m.metrics[u.i] AS metric, min(u.v) AS mn, max(u.v) AS mx, "
    "sum(u.v) AS sm, count(*) AS c FROM ingest.samples s "
    "JOIN ingest.metric_sets m ON m.id = s.metric_set "
    "CROSS JOIN LATERAL unnest(s.value) WITH ORDINALITY AS u(v, i) "
    "WHERE s.ts >= (SELECT t FROM b) AND s.ts < (SELECT t FROM b) + interval '1 minute' "
    "GROUP BY s.device, m.metrics[u.i]) "
    "INSERT INTO ingest.rollup_1m (device_id, metric, bucket, min, max, sum, count) "
    "SELECT d.device_id, g.metric, (SELECT t FROM b), g.mn, g.mx, g.sm, g.c FROM g "
    "JOIN ingest.device_ids d ON d.id = g.device WHERE NOT EXISTS (SELECT 1 FROM "
    "ingest.telemetry_blocks k WHERE k.device_id = d.device_id AND k.metric = g.metric "
    "AND " S_BLOCK_OVER("(SELECT t FROM b)") ")";
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
