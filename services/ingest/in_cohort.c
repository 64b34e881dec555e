/* in_cohort: cohort statistics for health gates (in_cohort.h).
 *
 * A rollup minute counts for a device when it lies wholly inside the
 * device's window (a minute that began before the install would mix in the
 * old version's readings), so a window needs two minutes to hold one.
 * Statistics, over the cohort's devices with data:
 *   mean   the mean of every sample (sum of sums over sum of counts);
 *   p95    the 95th percentile of the per-minute means;
 *   max    the largest sample;
 *   slope  per device the least-squares slope of its minute means per
 *          hour, averaged over the devices (a battery draining: negative);
 *   rate   the sum of the values per device-hour of those minutes (a
 *          metric that reports how many errors since the last report). */
#include "in_cohort.h"
#include "mh_cohort.h"
#include "mh_ids.h"
#include "mh_json.h"

#include <string.h>

/* the minutes of each device's window: x(c, id, f, t, hours, min, max, sum, count) */
#define S_WITH                                                                                     \
    "WITH w AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS w(c text, id text, f bigint,"       \
    "   t bigint)),"                                                                               \
    " x AS (SELECT w.c, w.id, w.f, w.t,"                                                           \
    "   extract(epoch FROM r.bucket) / 3600.0 AS hours, r.min, r.max, r.sum, r.count"              \
    "   FROM w JOIN ingest.rollup_1m r ON r.device_id = w.id AND r.metric = $2"                    \
    "   AND r.bucket >= to_timestamp(w.f / 1000.0)"                                                \
    "   AND r.bucket + interval '1 minute' <= to_timestamp(w.t / 1000.0) AND r.count > 0)"

/* each statistic's whole statement: per cohort (name, value, devices) */
static const char *const s_stat_sql[][2] = {
    {"mean", S_WITH " SELECT x.c, sum(x.sum) / NULLIF(sum(x.count), 0), count(DISTINCT x.id)"
                    " FROM x GROUP BY x.c"},
    {"p95", S_WITH " SELECT x.c, percentile_cont(0.95) WITHIN GROUP (ORDER BY x.sum / x.count),"
                   " count(DISTINCT x.id) FROM x GROUP BY x.c"},
    {"max", S_WITH " SELECT x.c, max(x.max), count(DISTINCT x.id) FROM x GROUP BY x.c"},
    {"slope", S_WITH ", d AS (SELECT c, id, regr_slope(x.sum / x.count, x.hours) AS s FROM x"
                     "   GROUP BY c, id HAVING count(*) >= 2)"
                     " SELECT c, avg(s), count(*) FROM d WHERE s IS NOT NULL GROUP BY c"},
    {"rate", S_WITH ", d AS (SELECT c, id, sum(x.sum) AS n, count(*) / 60.0 AS h FROM x"
                    "   GROUP BY c, id)"
                    " SELECT c, sum(n) / NULLIF(sum(h), 0), count(*) FROM d GROUP BY c"},
};

void in_cohort_answer(mh_pg_t *pg, const char *text, mh_rpc_reply_t *r)
{
    json_error_t jerr;
    json_t *params = mh_json_loads(text, 0, MH_JSON_MAX_DEPTH, &jerr);
    const char *metric = json_string_value(json_object_get(params, "metric"));
    const char *stat = json_string_value(json_object_get(params, "stat"));
    json_t *cohorts = json_object_get(params, "cohorts");
    char err[512];
    if (!mh_metric_name_valid(metric)) {
        json_decref(params);
        return mh_rpc_fail(r, 400, "bad_request", "cohort_json needs \"metric\"");
    }
    if (mh_pg_connect(pg, err, sizeof err) < 0) {
        json_decref(params);
        return mh_rpc_fail(r, 503, "unavailable", "the telemetry database is unavailable");
    }
    if (json_is_true(json_object_get(params, "exists"))) {
        const char *p[] = {metric};
        PGresult *res =
            mh_pg_exec(pg, PGRES_TUPLES_OK,
                       "SELECT EXISTS (SELECT 1 FROM ingest.metric_sets WHERE $1 = ANY (metrics))",
                       1, p, err, sizeof err);
        json_decref(params);
        if (!res)
            return mh_rpc_fail(r, 503, "unavailable", "%s", err);
        mh_rpc_ok_json(r, 200, json_pack("{s:b}", "exists", *PQgetvalue(res, 0, 0) == 't'));
        PQclear(res);
        return;
    }
    const char *sql = NULL;
    for (size_t i = 0; stat && i < sizeof s_stat_sql / sizeof s_stat_sql[0]; i++)
        if (strcmp(stat, s_stat_sql[i][0]) == 0)
            sql = s_stat_sql[i][1];
    if (!sql) {
        json_decref(params);
        return mh_rpc_fail(r, 400, "bad_request",
                           "cohort_json needs \"stat\" (mean, p95, max, slope, rate) and"
                           " \"cohorts\"");
    }
    json_t *out = json_object(), *empty = json_pack("{s:f,s:i}", "value", 0.0, "devices", 0);
    json_t *rows = mh_cohort_rows(cohorts, out, empty);
    json_decref(empty);
    if (!rows) {
        json_decref(out);
        json_decref(params);
        return mh_rpc_fail(r, 400, "bad_request", "cohort_json: %s", MH_COHORT_BAD);
    }
    char *rows_text = json_dumps(rows, JSON_COMPACT);
    const char *p[] = {rows_text, metric};
    PGresult *res = rows_text ? mh_pg_exec(pg, PGRES_TUPLES_OK, sql, 2, p, err, sizeof err) : NULL;
    free(rows_text);
    json_decref(rows);
    json_decref(params);
    if (!res) {
        json_decref(out);
        return mh_rpc_fail(r, 503, "unavailable", "%s", err);
    }
    for (int i = 0; i < PQntuples(res); i++)
        if (!PQgetisnull(res, i, 1))
            json_object_set_new(out, PQgetvalue(res, i, 0),
                                json_pack("{s:f,s:I}", "value", strtod(PQgetvalue(res, i, 1), NULL),
                                          "devices",
                                          (json_int_t)strtoll(PQgetvalue(res, i, 2), NULL, 10)));
    PQclear(res);
    mh_rpc_ok_json(r, 200, out);
}
