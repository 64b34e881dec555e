/* in_compress — see in_compress.h. */
#include "in_compress.h"

#include "in_block.h"
#include "in_store.h"
#include "mh_log.h"
#include "mh_pg.h"
#include "mh_time.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    in_compress_opts_t o;
    mh_pg_t *pg;
    mh_counter_t *m_samples, *m_blocks, *m_bytes, *m_late, *m_errors;
    mh_histogram_t *m_pass;
    mh_ratelimit_t rl;
} s_t;

/* One series of a chunk: its old block's samples and its new raw rows. */
typedef struct {
    char *device, *metric;
    int64_t *ts;
    double *v;
    size_t n, cap;
    size_t n_old;       /* the first n_old came from an existing block */
    int64_t start, end; /* the span its block will cover (ms) */
} s_series_t;

static s_series_t *s_series(zhashx_t *all, const char *device, const char *metric)
{
    char key[160];
    snprintf(key, sizeof key, "%s\t%s", device, metric);
    s_series_t *s = zhashx_lookup(all, key);
    if (!s) {
        s = calloc(1, sizeof *s);
        s->device = strdup(device);
        s->metric = strdup(metric);
        zhashx_insert(all, key, s);
    }
    return s;
}

static bool s_push(s_series_t *s, int64_t ts, double v)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 128;
        int64_t *t = realloc(s->ts, cap * sizeof *t);
        if (t)
            s->ts = t;
        double *d = t ? realloc(s->v, cap * sizeof *d) : NULL;
        if (!d)
            return false;
        s->v = d;
        s->cap = cap;
    }
    s->ts[s->n] = ts;
    s->v[s->n++] = v;
    return true;
}

static void s_series_free(void **item)
{
    s_series_t *s = *item;
    if (s) {
        free(s->device);
        free(s->metric);
        free(s->ts);
        free(s->v);
        free(s);
    }
    *item = NULL;
}

/* A sample while its series is sorted. */
typedef struct {
    int64_t t;
    double v;
    size_t order;
} s_sample_t;

/* Time, then value (NaN after every number, as PostgreSQL orders them),
 * then the order it came in: the order queries answer in (in_query.c). */
static int s_cmp_sample(const void *a, const void *b)
{
    const s_sample_t *x = a, *y = b;
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    bool xn = isnan(x->v), yn = isnan(y->v);
    if (xn != yn)
        return xn ? 1 : -1;
    if (!xn && x->v != y->v)
        return x->v < y->v ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Sorts a series (its old blocks and new rows come in any order). */
static bool s_sort(s_series_t *s)
{
    s_sample_t *all = malloc(s->n * sizeof *all);
    if (!all)
        return false;
    for (size_t i = 0; i < s->n; i++)
        all[i] = (s_sample_t){s->ts[i], s->v[i], i};
    qsort(all, s->n, sizeof *all, s_cmp_sample);
    for (size_t i = 0; i < s->n; i++) {
        s->ts[i] = all[i].t;
        s->v[i] = all[i].v;
    }
    free(all);
    return true;
}

static char *s_hex(const uint8_t *b, size_t n)
{
    char *h = malloc(2 * n + 1);
    for (size_t i = 0; h && i < n; i++)
        snprintf(h + 2 * i, 3, "%02x", b[i]);
    return h;
}

/* A growing text[] (or bigint[], float8[]) literal. */
typedef struct {
    char *buf;
    size_t len, cap;
} s_arr_t;

static void s_arr_add(s_arr_t *a, const char *item)
{
    size_t need = strlen(item) + 4;
    if (a->len + need + 2 > a->cap) {
        size_t cap = (a->cap + need) * 2 + 64;
        char *b = realloc(a->buf, cap);
        if (!b)
            return;
        a->buf = b;
        a->cap = cap;
    }
    a->len +=
        (size_t)snprintf(a->buf + a->len, a->cap - a->len, "%s\"%s\"", a->len ? "," : "{", item);
}

static const char *s_arr_end(s_arr_t *a)
{
    if (!a->buf || !a->len)
        return "{}";
    if (a->len + 2 <= a->cap) {
        a->buf[a->len] = '}';
        a->buf[a->len + 1] = 0;
    }
    return a->buf;
}

/* The 1-minute rollups of the minutes of `s` that late rows touched,
 * from the merged series, into the arrays of an INSERT. */
static void s_rollups(const s_series_t *s, const int64_t *late_minutes, size_t nlate, s_arr_t *a)
{
    for (size_t k = 0; k < nlate; k++) {
        int64_t b = late_minutes[k];
        double mn = 0, mx = 0, sum = 0;
        int64_t count = 0;
        for (size_t i = 0; i < s->n; i++) {
            if (s->ts[i] < b || s->ts[i] >= b + 60000)
                continue;
            mn = count ? (s->v[i] < mn ? s->v[i] : mn) : s->v[i];
            mx = count ? (s->v[i] > mx ? s->v[i] : mx) : s->v[i];
            sum += s->v[i];
            count++;
        }
        if (!count)
            continue;
        char num[48];
        s_arr_add(&a[0], s->device);
        s_arr_add(&a[1], s->metric);
        snprintf(num, sizeof num, "%" PRId64, b);
        s_arr_add(&a[2], num);
        snprintf(num, sizeof num, "%.17g", mn);
        s_arr_add(&a[3], num);
        snprintf(num, sizeof num, "%.17g", mx);
        s_arr_add(&a[4], num);
        snprintf(num, sizeof num, "%.17g", sum);
        s_arr_add(&a[5], num);
        snprintf(num, sizeof num, "%" PRId64, count);
        s_arr_add(&a[6], num);
    }
}

static int s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int64_t s_floor(int64_t t, int64_t unit)
{
    return t - ((t % unit) + unit) % unit;
}

/* One chunk of devices of one span [period, period + width) — an hour, or
 * a day whose hourly blocks become one — in one transaction: the span's
 * raw rows and every block that overlaps it (a block never leaves its UTC
 * day) merged into one block per series. Returns the samples that were
 * raw, 0 when another replica holds the lock or there was nothing, -1 on
 * an error (rolled back; nothing changed). */
static long s_chunk(s_t *self, int64_t period, int64_t width, const char *devices, bool first,
                    char *err, size_t errlen)
{
    char p_s[32], e_s[32], d_s[32], lock[32], rlock[32];
    snprintf(p_s, sizeof p_s, "%" PRId64, period);
    snprintf(e_s, sizeof e_s, "%" PRId64, period + width);
    snprintf(d_s, sizeof d_s, "%" PRId64, s_floor(period, IN_DAY_MS));
    snprintf(lock, sizeof lock, "%d", IN_LOCK_COMPRESS);
    snprintf(rlock, sizeof rlock, "%d", IN_LOCK_ROLLUP);
    if (!mh_pg_begin(self->pg, err, errlen))
        return -1;
    PGresult *res =
        mh_pg_exec(self->pg, PGRES_TUPLES_OK, "SELECT pg_try_advisory_xact_lock($1::bigint)", 1,
                   (const char *[]){lock}, err, errlen);
    if (!res)
        goto fail;
    bool mine = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!mine) {
        mh_pg_rollback(self->pg);
        return 0;
    }
    /* the rollup job's lock: it and this never write rollups at once */
    if (!mh_pg_ok(self->pg, "SELECT pg_advisory_xact_lock($1::bigint)", 1, (const char *[]){rlock},
                  err, errlen))
        goto fail;
    const char *range[] = {p_s, e_s};
    if (!mh_pg_ok(self->pg,
                  "SELECT ingest.ensure_partitions('telemetry_blocks_day', 1,"
                  " to_timestamp($1::bigint / 1000.0), to_timestamp($2::bigint / 1000.0))"
                  " + ingest.ensure_partitions('telemetry_blocks_hour', 1,"
                  " to_timestamp($1::bigint / 1000.0), to_timestamp($2::bigint / 1000.0))",
                  2, range, err, errlen))
        goto fail;
    if (first) {
        /* Minutes of this hour still waiting for their rollup get it from
         * the raw rows now, before those rows become a block. */
        res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                         "SELECT DISTINCT (extract(epoch FROM bucket) * 1000)::bigint"
                         " FROM ingest.rollup_dirty WHERE tier = '1m'"
                         " AND bucket >= to_timestamp($1::bigint / 1000.0)"
                         " AND bucket < to_timestamp($2::bigint / 1000.0)",
                         2, range, err, errlen);
        if (!res)
            goto fail;
        for (int i = 0; i < PQntuples(res); i++) {
            const char *b[] = {PQgetvalue(res, i, 0)};
            if (!mh_pg_ok(self->pg, in_sql_rollup_1m_clear, 1, b, err, errlen) ||
                !mh_pg_ok(self->pg, in_sql_rollup_1m_recompute, 1, b, err, errlen) ||
                !mh_pg_ok(self->pg, in_sql_rollup_mark_1h, 1, b, err, errlen) ||
                !mh_pg_ok(self->pg,
                          "DELETE FROM ingest.rollup_dirty WHERE tier = '1m'"
                          " AND bucket = to_timestamp($1::bigint / 1000.0)",
                          1, b, err, errlen)) {
                PQclear(res);
                goto fail;
            }
        }
        PQclear(res);
    }
    zhashx_t *all = zhashx_new();
    zhashx_set_destructor(all, s_series_free);
    const char *q[] = {p_s, e_s, devices, d_s};
    /* the blocks of these devices that overlap the span, taken out to be
     * written again (integers as text, the data as it is) */
    res = mh_pg_exec_bin(self->pg, PGRES_TUPLES_OK,
                         "DELETE FROM ingest.telemetry_blocks WHERE device_id = ANY($3::text[])"
                         " AND period_start >= to_timestamp($4::bigint / 1000.0)"
                         " AND period_start < to_timestamp($2::bigint / 1000.0)"
                         " AND period_start + hours * interval '1 hour' >"
                         "     to_timestamp($1::bigint / 1000.0)"
                         " RETURNING device_id, metric, data,"
                         " (extract(epoch FROM period_start) * 1000)::bigint::text, hours::text",
                         4, q, NULL, NULL, 1, err, errlen);
    if (!res) {
        zhashx_destroy(&all);
        goto fail;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        int64_t *ts;
        double *v;
        long n = in_block_decode((const uint8_t *)PQgetvalue(res, i, 2),
                                 (size_t)PQgetlength(res, i, 2), &ts, &v);
        if (n < 0) {
            snprintf(err, errlen, "a corrupt block of %s %s at %s: left as it was",
                     PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), p_s);
            PQclear(res);
            zhashx_destroy(&all);
            goto fail;
        }
        s_series_t *s = s_series(all, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
        for (long k = 0; k < n; k++)
            s_push(s, ts[k], v[k]);
        s->n_old = s->n;
        int64_t start = strtoll(PQgetvalue(res, i, 3), NULL, 10);
        int64_t end = start + strtoll(PQgetvalue(res, i, 4), NULL, 10) * IN_PERIOD_MS;
        s->start = !s->start || start < s->start ? start : s->start;
        s->end = end > s->end ? end : s->end;
        free(ts);
        free(v);
    }
    PQclear(res);
    /* exactly the raw rows deleted are the rows encoded */
    res =
        mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                   "WITH d AS (DELETE FROM ingest.samples"
                   " WHERE ts >= to_timestamp($1::bigint / 1000.0)"
                   " AND ts < to_timestamp($2::bigint / 1000.0) AND device IN (SELECT id FROM"
                   " ingest.device_ids WHERE device_id = ANY($3::text[]))"
                   " RETURNING device, ts, metric_set, value)"
                   " SELECT k.device_id, m.metrics[u.i], (extract(epoch FROM d.ts) * 1000)::bigint,"
                   " u.v FROM d JOIN ingest.device_ids k ON k.id = d.device"
                   " JOIN ingest.metric_sets m ON m.id = d.metric_set"
                   " CROSS JOIN LATERAL unnest(d.value) WITH ORDINALITY AS u(v, i)"
                   " ORDER BY 1, 2, 3, 4",
                   3, q, err, errlen);
    if (!res) {
        zhashx_destroy(&all);
        goto fail;
    }
    long samples = PQntuples(res);
    if (!samples && width == IN_PERIOD_MS) {
        PQclear(res); /* nothing new: the blocks stay as they were */
        zhashx_destroy(&all);
        mh_pg_rollback(self->pg);
        return 0;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        s_series_t *s = s_series(all, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
        if (!s_push(s, strtoll(PQgetvalue(res, i, 2), NULL, 10),
                    strtod(PQgetvalue(res, i, 3), NULL))) {
            snprintf(err, errlen, "out of memory");
            PQclear(res);
            zhashx_destroy(&all);
            goto fail;
        }
    }
    PQclear(res);
    s_arr_t b[6] = {{0}}, r[7] = {{0}};
    uint64_t bytes = 0, blocks = 0, late = 0;
    bool ok = true;
    for (s_series_t *s = zhashx_first(all); s && ok; s = zhashx_next(all)) {
        /* late rows of a series already compressed: their minutes rolled
         * up again from the merged series */
        size_t nlate = s->n_old ? s->n - s->n_old : 0;
        int64_t *minutes = nlate ? malloc(nlate * sizeof *minutes) : NULL;
        for (size_t i = 0; i < nlate; i++)
            minutes[i] = s_floor(s->ts[s->n_old + i], 60000);
        size_t nm = 0;
        if (nlate) {
            qsort(minutes, nlate, sizeof *minutes, s_cmp_i64);
            for (size_t i = 0; i < nlate; i++)
                if (!nm || minutes[nm - 1] != minutes[i])
                    minutes[nm++] = minutes[i];
        }
        uint8_t *block = NULL;
        size_t len = s_sort(s) ? in_block_encode(s->ts, s->v, s->n, &block) : 0;
        /* the block's span: the span compressed, and the blocks merged in */
        if (!s->n_old || period < s->start)
            s->start = period;
        if (!s->n_old || period + width > s->end)
            s->end = period + width;
        char *hex = len ? s_hex(block, len) : NULL;
        free(block);
        if (!hex) {
            snprintf(err, errlen, "could not encode %s %s", s->device, s->metric);
            ok = false;
        } else {
            char num[24];
            s_arr_add(&b[0], s->device);
            s_arr_add(&b[1], s->metric);
            snprintf(num, sizeof num, "%zu", s->n);
            s_arr_add(&b[2], num);
            s_arr_add(&b[3], hex);
            snprintf(num, sizeof num, "%" PRId64, s->start);
            s_arr_add(&b[4], num);
            snprintf(num, sizeof num, "%" PRId64, (s->end - s->start) / IN_PERIOD_MS);
            s_arr_add(&b[5], num);
            bytes += len;
            blocks++;
            late += nlate;
            s_rollups(s, minutes, nm, r);
        }
        free(hex);
        free(minutes);
    }
    zhashx_destroy(&all);
    const char *bp[] = {s_arr_end(&b[0]), s_arr_end(&b[1]), s_arr_end(&b[4]),
                        s_arr_end(&b[2]), s_arr_end(&b[3]), s_arr_end(&b[5])};
    const char *rp[] = {s_arr_end(&r[0]), s_arr_end(&r[1]), s_arr_end(&r[2]), s_arr_end(&r[3]),
                        s_arr_end(&r[4]), s_arr_end(&r[5]), s_arr_end(&r[6])};
    ok = ok &&
         mh_pg_ok(self->pg,
                  "INSERT INTO ingest.telemetry_blocks (device_id, metric, period_start, hours,"
                  " n, data) SELECT d, m, to_timestamp(p / 1000.0), h, n, decode(x, 'hex')"
                  " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[], $5::text[],"
                  " $6::smallint[]) AS u(d, m, p, n, x, h)",
                  6, bp, err, errlen) &&
         (!late ||
          (mh_pg_ok(self->pg,
                    "DELETE FROM ingest.rollup_1m r USING unnest($1::text[], $2::text[],"
                    " $3::bigint[]) AS u(d, m, b) WHERE r.device_id = u.d AND"
                    " r.metric = u.m AND r.bucket = to_timestamp(u.b / 1000.0)",
                    3, rp, err, errlen) &&
           mh_pg_ok(self->pg,
                    "INSERT INTO ingest.rollup_1m (device_id, metric, bucket, min, max,"
                    " sum, count) SELECT d, m, to_timestamp(b / 1000.0), mn, mx, sm, c"
                    " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::float8[],"
                    " $5::float8[], $6::float8[], $7::bigint[]) AS u(d, m, b, mn, mx, sm, c)",
                    7, rp, err, errlen) &&
           mh_pg_ok(self->pg,
                    "INSERT INTO ingest.rollup_dirty (tier, bucket) SELECT DISTINCT '1h',"
                    " to_timestamp(floor(b / 3600000.0) * 3600) FROM unnest($1::bigint[]) b",
                    1, (const char *[]){rp[2]}, err, errlen))) &&
         mh_pg_commit(self->pg, err, errlen);
    for (int i = 0; i < 6; i++)
        free(b[i].buf);
    for (int i = 0; i < 7; i++)
        free(r[i].buf);
    if (!ok)
        goto fail;
    mh_counter_add(self->m_samples, (uint64_t)samples);
    mh_counter_add(self->m_blocks, blocks);
    mh_counter_add(self->m_bytes, bytes);
    mh_counter_add(self->m_late, late);
    return samples;
fail:
    mh_pg_rollback(self->pg);
    return -1;
}

/* The devices with raw rows in an hour. */
static const char *s_sql_hour_devices =
    "SELECT k.device_id FROM (SELECT DISTINCT device FROM ingest.samples"
    " WHERE ts >= to_timestamp($1::bigint / 1000.0)"
    " AND ts < to_timestamp($2::bigint / 1000.0)) s JOIN ingest.device_ids k ON k.id = s.device"
    " ORDER BY k.device_id";
/* The devices with more than one block in a day: those with an hour's. */
static const char *s_sql_day_devices =
    "SELECT DISTINCT device_id FROM ingest.telemetry_blocks WHERE hours < 24"
    " AND period_start >= to_timestamp($1::bigint / 1000.0)"
    " AND period_start < to_timestamp($2::bigint / 1000.0) ORDER BY device_id";

/* Compresses one sealed span (an hour; or a day, its hours' blocks into
 * one): the devices `devices_sql` names, a chunk at a time. Returns the
 * raw samples compressed, -1 on an error. */
static long s_span(s_t *self, int64_t period, int64_t width, const char *devices_sql, char *err,
                   size_t errlen)
{
    char p_s[32], e_s[32];
    snprintf(p_s, sizeof p_s, "%" PRId64, period);
    snprintf(e_s, sizeof e_s, "%" PRId64, period + width);
    const char *range[] = {p_s, e_s};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK, devices_sql, 2, range, err, errlen);
    if (!res)
        return -1;
    long total = 0;
    int n = PQntuples(res), chunk = self->o.chunk_devices > 0 ? self->o.chunk_devices : 500;
    for (int i = 0; i < n; i += chunk) {
        s_arr_t a = {0};
        for (int k = i; k < n && k < i + chunk; k++)
            s_arr_add(&a, PQgetvalue(res, k, 0));
        long got = s_chunk(self, period, width, s_arr_end(&a), i == 0, err, errlen);
        free(a.buf);
        if (got < 0) {
            PQclear(res);
            return -1;
        }
        total += got;
    }
    PQclear(res);
    return total;
}

/* The spans of a pass: every sealed hour within retention that still has
 * raw rows, then every sealed day with hours' blocks. */
static const char *s_sql_hours =
    "SELECT (extract(epoch FROM h) * 1000)::bigint FROM generate_series("
    " to_timestamp($1::bigint / 1000.0), to_timestamp($2::bigint / 1000.0) - interval '1 hour',"
    " interval '1 hour') AS h WHERE EXISTS (SELECT 1 FROM ingest.samples"
    " WHERE ts >= h AND ts < h + interval '1 hour')";
static const char *s_sql_days =
    "SELECT (extract(epoch FROM d) * 1000)::bigint FROM generate_series("
    " to_timestamp($1::bigint / 1000.0), to_timestamp($2::bigint / 1000.0) - interval '1 day',"
    " interval '1 day') AS d WHERE EXISTS (SELECT 1 FROM ingest.telemetry_blocks"
    " WHERE hours < 24 AND period_start >= d AND period_start < d + interval '1 day')";

/* Compresses every span `spans_sql` lists in [lo, hi); false on an error
 * (logged). */
static bool s_spans(s_t *self, const char *spans_sql, int64_t lo, int64_t hi, int64_t width,
                    const char *devices_sql)
{
    char err[512], lo_s[32], hi_s[32];
    snprintf(lo_s, sizeof lo_s, "%" PRId64, lo);
    snprintf(hi_s, sizeof hi_s, "%" PRId64, hi);
    if (hi <= lo)
        return true;
    const char *range[] = {lo_s, hi_s};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK, spans_sql, 2, range, err, sizeof err);
    bool ok = res != NULL;
    for (int i = 0; ok && i < PQntuples(res); i++) {
        int64_t period = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        long n = s_span(self, period, width, devices_sql, err, sizeof err);
        if (n < 0) {
            mh_log_limited(&self->rl, MH_LOG_WARN, "compression of the %s at %" PRId64 ": %s",
                           width == IN_PERIOD_MS ? "hour" : "day", period, err);
            mh_counter_inc(self->m_errors);
            PQclear(res);
            return false;
        }
        if (n > 0)
            mh_info("compressed %ld samples of the %s at %" PRId64, n,
                    width == IN_PERIOD_MS ? "hour" : "day", period);
    }
    if (!res) {
        mh_counter_inc(self->m_errors);
        mh_log_limited(&self->rl, MH_LOG_WARN, "compression: %s", err);
    }
    PQclear(res);
    return ok;
}

/* The raw and hour-block partitions of sealed days that compression
 * emptied, truncated (their disk back, indexes included). The lock waits
 * at most 1.5 s — past deadlock_timeout (1 s), when an autovacuum of the
 * partition gives way — so a query of those days waits no longer than
 * that, once; a lock not had in time is left to the next pass. */
static void s_truncate(s_t *self, int64_t sealed_day)
{
    char err[512], day[32];
    snprintf(day, sizeof day, "%" PRId64, sealed_day);
    const char *p[] = {day};
    bool ok =
        mh_pg_begin(self->pg, err, sizeof err) &&
        mh_pg_ok(self->pg, "SET LOCAL lock_timeout = '1500ms'", 0, NULL, err, sizeof err) &&
        mh_pg_ok(self->pg,
                 "SELECT ingest.truncate_emptied('samples', to_timestamp($1::bigint / 1000.0))"
                 " + ingest.truncate_emptied('telemetry_blocks_hour',"
                 " to_timestamp($1::bigint / 1000.0))",
                 1, p, err, sizeof err) &&
        mh_pg_commit(self->pg, err, sizeof err);
    if (!ok) {
        mh_pg_rollback(self->pg);
        mh_debug("truncating emptied partitions: %s", err);
    }
}

/* One pass: sealed hours into blocks, then sealed days' hourly blocks into
 * one block a day (a row's overhead, ~140 bytes, spread over 24 times the
 * samples). */
static void s_pass(s_t *self)
{
    char err[512];
    if (mh_pg_connect(self->pg, err, sizeof err) < 0)
        return;
    int64_t t0 = mh_mono_ms(), now = mh_now_ms();
    int64_t sealed = s_floor(now - self->o.seal_lag_ms, IN_PERIOD_MS); /* hours ending by then */
    int64_t oldest = s_floor(now - self->o.retention_ms, IN_PERIOD_MS);
    if (s_spans(self, s_sql_hours, oldest, sealed, IN_PERIOD_MS, s_sql_hour_devices) &&
        s_spans(self, s_sql_days, s_floor(oldest, IN_DAY_MS), s_floor(sealed, IN_DAY_MS), IN_DAY_MS,
                s_sql_day_devices))
        s_truncate(self, s_floor(sealed, IN_DAY_MS));
    mh_histogram_observe_ms(self->m_pass, mh_mono_ms() - t0);
}

void in_compress_actor(zsock_t *pipe, void *args)
{
    s_t self = {.o = *(in_compress_opts_t *)args};
    self.pg = mh_pg_new(self.o.pg_url, NULL, 0);
    self.rl = (mh_ratelimit_t)MH_RATELIMIT_INIT(10000, 3);
    mh_metrics_t *m = self.o.metrics;
    self.m_samples = mh_metrics_counter(m, "mh_ingest_compressed_samples_total",
                                        "Raw samples turned into sealed blocks", NULL);
    self.m_blocks =
        mh_metrics_counter(m, "mh_ingest_compressed_blocks_total",
                           "Sealed blocks written (a late merge writes one again)", NULL);
    self.m_bytes = mh_metrics_counter(m, "mh_ingest_compressed_bytes_total",
                                      "Bytes of sealed blocks written", NULL);
    self.m_late = mh_metrics_counter(m, "mh_ingest_compressed_late_samples_total",
                                     "Late samples merged into an existing block", NULL);
    self.m_errors = mh_metrics_counter(m, "mh_ingest_compress_errors_total",
                                       "Compression passes that failed (nothing changed)", NULL);
    static const double bounds[] = {0.01, 0.1, 1, 10, 60, 600};
    self.m_pass =
        mh_metrics_histogram(m, "mh_ingest_compress_pass_seconds", "Time one compression pass took",
                             NULL, bounds, sizeof bounds / sizeof *bounds);
    zsock_signal(pipe, 0);
    zpoller_t *poller = zpoller_new(pipe, NULL);
    for (;;) {
        void *which = zpoller_wait(poller, (int)self.o.interval_ms);
        if (which == pipe || zpoller_terminated(poller))
            break;
        s_pass(&self);
    }
    zpoller_destroy(&poller);
    mh_pg_destroy(&self.pg);
}
