/* in_query — see in_query.h. */
#include "in_query.h"
#include "in_cohort.h"
#include "in_block.h"
#include "in_compress.h"
#include "mh_curve.h"
#include "mh_envelope.h"
#include "mh_ids.h"
#include "mh_log.h"
#include "mh_rpc_server.h"
#include "mh_pg.h"
#include "mh_time.h"
#include "telemetry.pb-c.h"

#include <inttypes.h>
#include <jansson.h>

#define S_HOUR 3600000LL

const char *in_query_auto_bucket(int64_t from_ms, int64_t to_ms)
{
    int64_t span = to_ms - from_ms;
    return span <= S_HOUR ? "raw" : span <= 48 * S_HOUR ? "1m" : "1h";
}

/* The tiers' statements; the table is chosen from this fixed set, never
 * built from input. $1 device, $2 metrics text[] or NULL, $3 from, $4 to,
 * $5 cursor metric or NULL, $6 cursor ms, $7 limit. */
/* The raw tier is sorted anyway (its rows are messages, unnested), so it
 * sorts metric names by their bytes — the order sealed blocks are merged
 * in (strcmp) and cheaper than a locale's collation. The rollup tiers
 * keep their primary key's order. */
#define S_BYTES " COLLATE \"C\""
#define S_RANGE(col, coll)                                                                         \
    " WHERE device_id = $1 AND ($2::text[] IS NULL OR metric = ANY($2::text[]))"                   \
    " AND " col " >= timestamptz 'epoch' + $3::bigint * interval '1 millisecond'"                  \
    " AND " col " < timestamptz 'epoch' + $4::bigint * interval '1 millisecond'"                   \
    " AND ($5::text IS NULL OR (metric" coll ", " col ") > ($5::text" coll                         \
    ", timestamptz 'epoch' + $6::bigint * interval '1 millisecond'))"                              \
    " ORDER BY metric" coll ", " col
/* Raw points of one millisecond in value order: the order sealed blocks
 * keep (in_compress.c), so an answer is the same before and after. */
static const char *s_sql_raw =
    "SELECT metric, (extract(epoch FROM ts) * 1000)::bigint, value"
    " FROM ingest.telemetry_raw" S_RANGE("ts", S_BYTES) ", value LIMIT $7::int";
static const char *s_sql_1m =
    "SELECT metric, (extract(epoch FROM bucket) * 1000)::bigint, min, max, sum / count, count"
    " FROM ingest.rollup_1m" S_RANGE("bucket", "") " LIMIT $7::int";
static const char *s_sql_1h =
    "SELECT metric, (extract(epoch FROM bucket) * 1000)::bigint, min, max, sum / count, count"
    " FROM ingest.rollup_1h" S_RANGE("bucket", "") " LIMIT $7::int";
static const char *s_sql_latest =
    "SELECT DISTINCT ON (metric) metric, (extract(epoch FROM ts) * 1000)::bigint, value"
    " FROM ingest.telemetry_raw WHERE device_id = $1"
    " AND ($2::text[] IS NULL OR metric = ANY($2::text[])) ORDER BY metric, ts DESC, value DESC";

/* Sealed blocks (in_compress.h) that may hold points of the range: a
 * block starts at most a day before `from` and ends after it. Binary
 * results: the blocks' bytes as they are. */
static const char *s_sql_blocks =
    "SELECT metric, data FROM ingest.telemetry_blocks WHERE device_id = $1"
    " AND ($2::text[] IS NULL OR metric = ANY($2::text[]))"
    " AND period_start > timestamptz 'epoch' + ($3::bigint - 86400000) * interval '1 millisecond'"
    " AND period_start + hours * interval '1 hour' >"
    "     timestamptz 'epoch' + $3::bigint * interval '1 millisecond'"
    " AND period_start < timestamptz 'epoch' + $4::bigint * interval '1 millisecond'"
    " AND ($5::text IS NULL OR metric COLLATE \"C\" >= $5::text) ORDER BY metric, period_start";
static const char *s_sql_latest_blocks =
    "SELECT DISTINCT ON (metric) metric, data FROM ingest.telemetry_blocks WHERE device_id = $1"
    " AND ($2::text[] IS NULL OR metric = ANY($2::text[])) ORDER BY metric, period_start DESC";

/* A raw point of the answer, from a row or a block. */
typedef struct {
    const char *metric;
    int64_t t;
    double v;
    size_t order; /* ties keep their order */
} s_point_t;

typedef struct {
    s_point_t *v;
    size_t n, cap;
} s_points_t;

static bool s_add(s_points_t *p, const char *metric, int64_t t, double v)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 1024;
        s_point_t *b = realloc(p->v, cap * sizeof *b);
        if (!b)
            return false;
        p->v = b;
        p->cap = cap;
    }
    p->v[p->n] = (s_point_t){metric, t, v, p->n};
    p->n++;
    return true;
}

static int s_cmp_point(const void *a, const void *b)
{
    const s_point_t *x = a, *y = b;
    int c = strcmp(x->metric, y->metric);
    if (c)
        return c;
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    if (x->v != y->v)
        return x->v < y->v ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* The points of the blocks in `res` (metric, data; binary) within
 * [from, to) and after the cursor; false when a block is corrupt. */
static bool s_block_points(PGresult *res, int64_t from, int64_t to, const char *cur_metric,
                           int64_t cur_ms, s_points_t *out)
{
    for (int i = 0; i < PQntuples(res); i++) {
        const char *metric = PQgetvalue(res, i, 0);
        int64_t *ts;
        double *v;
        long n = in_block_decode((const uint8_t *)PQgetvalue(res, i, 1),
                                 (size_t)PQgetlength(res, i, 1), &ts, &v);
        if (n < 0)
            return false;
        int c = cur_metric ? strcmp(metric, cur_metric) : 1;
        for (long k = 0; k < n; k++)
            if (ts[k] >= from && ts[k] < to && (c > 0 || (c == 0 && ts[k] > cur_ms)))
                s_add(out, metric, ts[k], v[k]);
        free(ts);
        free(v);
    }
    return true;
}

/* A reply in the making (mh_rpc_server.h): the common fields first, then
 * the query's reply message. */
typedef struct {
    mh_rpc_reply_t base;
    Mh__TelemetryReply rep;
} s_reply_t;

static void s_fail(s_reply_t *r, uint32_t status, const char *code, const char *msg)
{
    mh_rpc_fail(&r->base, status, code, "%s", msg);
}

/* Values as the shortest text that reads back as the same double. */
static void s_ok(s_reply_t *r, json_t *body)
{
    r->base.body = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(body);
    r->base.status = r->base.body ? 200 : 500;
}

static void s_answer(mh_pg_t *pg, const Mh__TelemetryQuery *q, int64_t max_limit, s_reply_t *r)
{
    char err[512];
    if (*q->cohort_json)
        return in_cohort_answer(pg, q->cohort_json, &r->base);
    if (!mh_device_id_valid(q->device_id, strlen(q->device_id)))
        return s_fail(r, 404, "not_found", "no such device");
    for (size_t i = 0; i < q->n_metrics; i++)
        if (!mh_metric_name_valid(q->metrics[i]))
            return s_fail(r, 400, "bad_request",
                          "\"metric\" is 1-64 letters, digits, '_', '-' or '.'");
    if (mh_pg_connect(pg, err, sizeof err) < 0)
        return s_fail(r, 503, "unavailable", "the telemetry database is unavailable; try again");
    char *metrics =
        q->n_metrics ? mh_pg_text_array((const char *const *)q->metrics, q->n_metrics) : NULL;
    if (q->latest) {
        const char *p[] = {q->device_id, metrics};
        PGresult *res = mh_pg_exec(pg, PGRES_TUPLES_OK, s_sql_latest, 2, p, err, sizeof err);
        PGresult *blk = res ? mh_pg_exec_bin(pg, PGRES_TUPLES_OK, s_sql_latest_blocks, 2, p, NULL,
                                             NULL, 1, err, sizeof err)
                            : NULL;
        free(metrics);
        if (!blk) {
            PQclear(res);
            return s_fail(r, 503, "unavailable", "the telemetry query failed; try again");
        }
        /* a metric's newest sample, from its raw rows or, once they are
         * sealed, its newest block */
        s_points_t pts = {0};
        bool ok = s_block_points(blk, INT64_MIN, INT64_MAX, NULL, 0, &pts);
        json_t *m = json_object();
        for (size_t i = 0; ok && i < pts.n; i++) {
            json_t *have = json_object_get(m, pts.v[i].metric);
            if (!have || json_integer_value(json_object_get(have, "t")) < pts.v[i].t ||
                (json_integer_value(json_object_get(have, "t")) == pts.v[i].t &&
                 json_real_value(json_object_get(have, "value")) <= pts.v[i].v))
                json_object_set_new(
                    m, pts.v[i].metric,
                    json_pack("{s:I,s:f}", "t", (json_int_t)pts.v[i].t, "value", pts.v[i].v));
        }
        for (int i = 0; ok && i < PQntuples(res); i++) {
            json_int_t t = strtoll(PQgetvalue(res, i, 1), NULL, 10);
            json_t *have = json_object_get(m, PQgetvalue(res, i, 0));
            double v = strtod(PQgetvalue(res, i, 2), NULL);
            if (!have || json_integer_value(json_object_get(have, "t")) < t ||
                (json_integer_value(json_object_get(have, "t")) == t &&
                 json_real_value(json_object_get(have, "value")) <= v))
                json_object_set_new(
                    m, PQgetvalue(res, i, 0),
                    json_pack("{s:I,s:f}", "t", t, "value", strtod(PQgetvalue(res, i, 2), NULL)));
        }
        free(pts.v);
        PQclear(res);
        PQclear(blk);
        if (!ok) {
            json_decref(m);
            return s_fail(r, 500, "internal", "a stored block is corrupt");
        }
        return s_ok(r, json_pack("{s:o}", "metrics", m));
    }
    int64_t to = q->to_ms ? q->to_ms : mh_now_ms() + 1;
    int64_t from = q->from_ms ? q->from_ms : to - 24 * S_HOUR;
    if (from >= to) {
        free(metrics);
        return s_fail(r, 400, "bad_request", "\"from\" must be before \"to\"");
    }
    const char *bucket = *q->bucket ? q->bucket : "auto";
    if (strcmp(bucket, "auto") == 0)
        bucket = in_query_auto_bucket(from, to);
    const char *sql = strcmp(bucket, "raw") == 0  ? s_sql_raw
                      : strcmp(bucket, "1m") == 0 ? s_sql_1m
                      : strcmp(bucket, "1h") == 0 ? s_sql_1h
                                                  : NULL;
    if (!sql) {
        free(metrics);
        return s_fail(r, 400, "bad_request", "\"bucket\" is raw, 1m, 1h or auto");
    }
    int64_t limit = q->limit ? q->limit : 10000;
    if (limit > max_limit)
        limit = max_limit;
    /* cursor: "<ms>:<metric>" */
    char cur_metric[80] = "", cur_ms[24] = "0";
    if (*q->cursor) {
        const char *colon = strchr(q->cursor, ':');
        char *end;
        long long ms = strtoll(q->cursor, &end, 10);
        if (!colon || end != colon || !mh_metric_name_valid(colon + 1)) {
            free(metrics);
            return s_fail(r, 400, "bad_request", "\"cursor\" is not one this API returned");
        }
        snprintf(cur_metric, sizeof cur_metric, "%s", colon + 1);
        snprintf(cur_ms, sizeof cur_ms, "%lld", ms);
    }
    char from_s[24], to_s[24], lim_s[24];
    snprintf(from_s, sizeof from_s, "%" PRId64, from);
    snprintf(to_s, sizeof to_s, "%" PRId64, to);
    snprintf(lim_s, sizeof lim_s, "%" PRId64, limit + 1);
    const char *p[] = {q->device_id, metrics, from_s, to_s, *cur_metric ? cur_metric : NULL,
                       cur_ms,       lim_s};
    PGresult *res = mh_pg_exec(pg, PGRES_TUPLES_OK, sql, 7, p, err, sizeof err);
    bool raw = sql == s_sql_raw;
    /* the raw tier: sealed blocks and raw rows together */
    PGresult *blk = res && raw ? mh_pg_exec_bin(pg, PGRES_TUPLES_OK, s_sql_blocks, 5, p, NULL, NULL,
                                                1, err, sizeof err)
                               : NULL;
    free(metrics);
    if (!res || (raw && !blk)) {
        PQclear(res);
        return s_fail(r, 503, "unavailable", "the telemetry query failed; try again");
    }
    s_points_t pts = {0};
    if (raw) {
        if (!s_block_points(blk, from, to, *cur_metric ? cur_metric : NULL,
                            strtoll(cur_ms, NULL, 10), &pts)) {
            free(pts.v);
            PQclear(res);
            PQclear(blk);
            return s_fail(r, 500, "internal", "a stored block is corrupt");
        }
        for (int i = 0; i < PQntuples(res); i++)
            s_add(&pts, PQgetvalue(res, i, 0), strtoll(PQgetvalue(res, i, 1), NULL, 10),
                  strtod(PQgetvalue(res, i, 2), NULL));
        qsort(pts.v, pts.n, sizeof *pts.v, s_cmp_point);
    }
    int rows = raw ? (int)(pts.n < (size_t)INT32_MAX ? pts.n : INT32_MAX) : PQntuples(res);
    bool more = rows > limit;
    if (more)
        rows = (int)limit;
    json_t *series = json_array(), *points = NULL;
    const char *metric = NULL;
    for (int i = 0; i < rows; i++) {
        const char *m = raw ? pts.v[i].metric : PQgetvalue(res, i, 0);
        if (!metric || strcmp(metric, m) != 0) {
            metric = m;
            points = json_array();
            json_array_append_new(series, json_pack("{s:s,s:s,s:o}", "metric", m, "bucket", bucket,
                                                    "points", points));
        }
        if (raw) {
            json_array_append_new(points, json_pack("[I,f]", (json_int_t)pts.v[i].t, pts.v[i].v));
            continue;
        }
        json_int_t t = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        json_array_append_new(points,
                              json_pack("{s:I,s:f,s:f,s:f,s:I}", "t", t, "min",
                                        strtod(PQgetvalue(res, i, 2), NULL), "max",
                                        strtod(PQgetvalue(res, i, 3), NULL), "avg",
                                        strtod(PQgetvalue(res, i, 4), NULL), "count",
                                        (json_int_t)strtoll(PQgetvalue(res, i, 5), NULL, 10)));
    }
    json_t *next = json_null();
    if (more) {
        char c[128];
        if (raw)
            snprintf(c, sizeof c, "%" PRId64 ":%s", pts.v[rows - 1].t, pts.v[rows - 1].metric);
        else
            snprintf(c, sizeof c, "%s:%s", PQgetvalue(res, rows - 1, 1),
                     PQgetvalue(res, rows - 1, 0));
        next = json_string(c);
    }
    free(pts.v);
    PQclear(res);
    PQclear(blk);
    s_ok(r, json_pack("{s:o,s:o,s:s,s:I,s:I}", "series", series, "next", next, "bucket", bucket,
                      "from", (json_int_t)from, "to", (json_int_t)to));
}

zsock_t *in_query_bind(const char *endpoint)
{
    zsock_t *router = zsock_new(ZMQ_ROUTER);
    if (!router || mh_curve_bind(router, endpoint) < 0) {
        mh_error("cannot bind the query socket %s: %s", endpoint, zmq_strerror(zmq_errno()));
        zsock_destroy(&router);
        return NULL;
    }
    zsock_set_router_mandatory(router, 0);
    return router;
}

typedef struct {
    mh_pg_t *pg;
    int64_t max_limit;
} s_query_t;

static void s_handle(void *ud, const void *req, void *reply)
{
    s_query_t *self = ud;
    s_answer(self->pg, req, self->max_limit > 0 ? self->max_limit : 100000, reply);
}

/* One method; the query reports a lost database itself (503). */
static const mh_rpc_method_t s_methods[] = {{"query", s_handle, false}};

static const mh_rpc_service_t s_rpc_def = {
    .request_type = "telemetry.query",
    .reply_type = "telemetry.reply",
    .request = &mh__telemetry_query__descriptor,
    .reply = &mh__telemetry_reply__descriptor,
    .reply_size = sizeof(s_reply_t),
    .reply_msg_offset = offsetof(s_reply_t, rep),
    .methods = s_methods,
    .n_methods = 1,
    .metric_prefix = "mh_ingest_query",
};

void in_query_actor(zsock_t *pipe, void *args)
{
    in_query_opts_t o = *(in_query_opts_t *)args;
    zsock_t *router = o.router;
    s_query_t q = {mh_pg_new(o.pg_url, NULL, 0), o.max_limit};
    mh_rpc_server_t *server = mh_rpc_server_new(&s_rpc_def, &q, NULL, o.metrics);
    zsock_signal(pipe, 0);
    /* connected now, not on the first query: that one would wait for the
     * connection (and a slow DNS) inside its caller's deadline */
    if (q.pg)
        mh_pg_connect(q.pg, NULL, 0);
    zpoller_t *poller = zpoller_new(pipe, router, NULL);
    for (;;) {
        void *which = zpoller_wait(poller, -1);
        if (which == pipe || !which)
            break; /* $TERM, or interrupted */
        if (server)
            mh_rpc_server_handle(server, router);
    }
    zpoller_destroy(&poller);
    mh_rpc_server_destroy(&server);
    mh_pg_destroy(&q.pg);
    zsock_destroy(&router);
}
