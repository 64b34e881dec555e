/* Sealed telemetry compressed (in_compress.h) against the whole platform:
 * the operator API answers the same, value for value, before and after an
 * hour becomes blocks (raw pages with their cursor, latest, 1-minute and
 * 1-hour rollups); a late sample of a compressed hour is merged and rolled
 * up; SIGKILL at any moment of compression, with two replicas compressing
 * at once, loses and duplicates nothing. */
#include "mh_test.h"

#include "mh_http_client.h"

#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_HOUR 3600000LL

static mht_platform_t s_p;
static int64_t s_from, s_to; /* the range every query asks */

static int s_setup(void **state)
{
    (void)state;
    setenv("MH_COMPRESS_INTERVAL", "0", 1); /* the platform's ingest answers, never compresses */
    setenv("MH_ROLLUP_INTERVAL", "200ms", 1);
    mht_platform_start(&s_p);
    mht_register_devices(s_p.twin.rpc_endpoint, "cp", 300);
    int64_t now = (int64_t)time(NULL) * 1000; /* wall clock */
    s_to = now - now % S_HOUR - S_HOUR;       /* the end of the last whole hour but one */
    s_from = s_to - 3 * S_HOUR;
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    return mht_platform_stop(&s_p) ? 0 : -1;
}

static json_t *s_get(const char *path)
{
    char url[1024];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", s_p.fleet.port, path);
    mh_http_resp_t resp;
    long st = mh_http_request(&(mh_http_req_t){.url = url, .bearer = s_p.token}, &resp);
    if (st != 200)
        fail_msg("GET %s answered %ld: %.*s", path, st, (int)resp.len, resp.body ? resp.body : "");
    json_t *v = json_loadb(resp.body, resp.len, 0, NULL);
    mh_http_resp_free(&resp);
    assert_non_null(v);
    return v;
}

/* What an operator reads of a device: every raw page (500 points each,
 * following the cursor), latest, 1-minute and 1-hour rollups, as one
 * canonical text. */
static char *s_answers(const char *device)
{
    json_t *all = json_array();
    char path[512], cursor[160] = "";
    for (;;) {
        snprintf(path, sizeof path,
                 "/api/v1/devices/%s/telemetry?bucket=raw&limit=500&from=%" PRId64 "&to=%" PRId64
                 "%s%s",
                 device, s_from, s_to, *cursor ? "&cursor=" : "", cursor);
        json_t *page = s_get(path);
        json_array_append(all, json_object_get(page, "series"));
        const char *next = json_string_value(json_object_get(page, "next"));
        if (!next) {
            json_decref(page);
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", next);
        json_decref(page);
    }
    snprintf(path, sizeof path, "/api/v1/devices/%s/telemetry/latest", device);
    json_array_append_new(all, s_get(path));
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path,
                 "/api/v1/devices/%s/telemetry?bucket=%s&limit=100000&from=%" PRId64 "&to=%" PRId64,
                 device, i ? "1h" : "1m", s_from, s_to);
        json_array_append_new(all, s_get(path));
    }
    char *text = json_dumps(all, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(all);
    return text;
}

/* Samples of `devices` devices cp-NNNN (from `first`), two metrics: a
 * sensor's decimals and a noisy double, every 30 s with jitter, a repeated
 * timestamp, negative zero and huge values; as the hot path would leave
 * them, with their minutes marked for the rollup job. */
static void s_load_at(int64_t from, int64_t to, int first, int devices)
{
    mht_db_num(&s_p.db,
               "WITH i AS (INSERT INTO ingest.device_ids (device_id) SELECT format('cp-%%s',"
               " lpad(d::text, 4, '0')) FROM generate_series(%d, %d) d ON CONFLICT DO NOTHING"
               " RETURNING 1) SELECT count(*) FROM i",
               first, first + devices - 1);
    mht_db_num(&s_p.db, "WITH i AS (INSERT INTO ingest.metric_sets (metrics) VALUES"
                        " ('{temperature,noise}'), ('{temperature}') ON CONFLICT DO NOTHING"
                        " RETURNING 1) SELECT count(*) FROM i");
    /* the rows the hot path writes: a message a row (ingest.samples) */
    mht_db_num(
        &s_p.db,
        "WITH s AS (SELECT k.id AS dev, n, to_timestamp((%" PRId64 " + n * 30000 +"
        " (d * 7 + n * 13) %% 1000) / 1000.0) AS ts"
        " FROM generate_series(%d, %d) d JOIN ingest.device_ids k ON k.device_id ="
        " format('cp-%%s', lpad(d::text, 4, '0')), generate_series(0, 359) n),"
        " i AS (INSERT INTO ingest.samples (ts, device, metric_set, value)"
        " SELECT ts, dev, (SELECT id FROM ingest.metric_sets WHERE metrics ="
        "   '{temperature,noise}'), ARRAY[round((20 + sin(n / 30.0) * 3)::numeric, 2)::float8,"
        "   CASE WHEN n = 5 THEN '-0'::float8 WHEN n = 6 THEN 1e300 ELSE random() * 1e-3 + n"
        "   END] FROM s"
        " UNION ALL SELECT ts, dev, (SELECT id FROM ingest.metric_sets WHERE metrics ="
        "   '{temperature}'), ARRAY[99.5::float8] FROM s WHERE n = 100"
        " RETURNING 1)"
        " SELECT count(*) FROM i",
        from, first, first + devices - 1);
    mht_db_num(&s_p.db,
               "WITH i AS (INSERT INTO ingest.rollup_dirty (tier, bucket)"
               " SELECT '1m', generate_series(to_timestamp(%" PRId64 " / 1000.0),"
               " to_timestamp(%" PRId64 " / 1000.0) - interval '1 minute', interval '1 minute')"
               " RETURNING 1) SELECT count(*) FROM i",
               from, to);
}

static void s_load(int first, int devices)
{
    s_load_at(s_from, s_to, first, devices);
}

static void s_wait_rollups(void)
{
    assert_true(mht_db_wait_num(&s_p.db, "SELECT count(*) FROM ingest.rollup_dirty", 0, 30000) ==
                0);
}

/* A late temperature of -40.25 for a compressed span, as the hot path
 * writes it (row and dirty minute); waits until it is merged and rolled up. */
static void s_late_sample(const char *device, int64_t late)
{
    mht_db_num(&s_p.db,
               "WITH i AS (INSERT INTO ingest.telemetry_raw VALUES ('%s', 'temperature',"
               " to_timestamp(%" PRId64 " / 1000.0), -40.25) RETURNING 1),"
               " m AS (INSERT INTO ingest.rollup_dirty (tier, bucket) VALUES ('1m',"
               " to_timestamp(%" PRId64 " / 1000.0)) RETURNING 1) SELECT count(*) FROM i, m",
               device, late, late - late % 60000);
    assert_true(mht_db_wait_num(&s_p.db, "SELECT count(*) FROM ingest.telemetry_raw", 0, 30000) ==
                0);
    s_wait_rollups();
}

/* Blocks of one series that overlap: none may. */
static double s_overlapping_blocks(void)
{
    return mht_db_num(&s_p.db, "SELECT count(*) FROM ingest.telemetry_blocks a JOIN"
                               " ingest.telemetry_blocks b USING (device_id, metric)"
                               " WHERE a.period_start < b.period_start AND a.period_start"
                               " + a.hours * interval '1 hour' > b.period_start");
}

/* Fails showing where two answers part. */
static void s_same(const char *what, const char *before, const char *after)
{
    size_t i = 0;
    while (before[i] && before[i] == after[i])
        i++;
    if (!before[i] && !after[i])
        return;
    size_t from = i > 200 ? i - 200 : 0;
    fail_msg("%s answers differently from byte %zu:\nbefore …%.400s\nafter  …%.400s", what, i,
             before + from, after + from);
}

static int64_t s_count(const char *like)
{
    return (int64_t)mht_db_num(&s_p.db,
                               "SELECT (SELECT count(*) FROM ingest.telemetry_raw WHERE device_id"
                               " LIKE '%s') + (SELECT coalesce(sum(n), 0) FROM"
                               " ingest.telemetry_blocks WHERE device_id LIKE '%s')",
                               like, like);
}

static void s_compressor(mht_service_t *s, const char *name, const char *chunk)
{
    char c[64];
    snprintf(c, sizeof c, "--compress-chunk=%s", chunk);
    const char *extra[] = {"--compress-interval=100ms", "--seal-lag=1s", c, NULL};
    *s = (mht_service_t){0};
    mht_ingest_start(s, name, &s_p.db, 0, extra);
}

static void test_same_answers_across_the_seal(void **state)
{
    (void)state;
    s_load(0, 2);
    s_wait_rollups();
    char *before[2] = {s_answers("cp-0000"), s_answers("cp-0001")};
    mht_service_t c;
    s_compressor(&c, "ingest-compress", "500");
    assert_true(mht_db_wait_num(&s_p.db,
                                "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id"
                                " LIKE 'cp-000_'",
                                0, 30000) == 0);
    /* one block per series and hour (or day, once the day is sealed) */
    assert_true(mht_db_num(&s_p.db, "SELECT count(*) FROM ingest.telemetry_blocks") >= 4);
    for (int d = 0; d < 2; d++) {
        char *after = s_answers(d ? "cp-0001" : "cp-0000");
        s_same(d ? "cp-0001" : "cp-0000", before[d], after);
        free(after);
        free(before[d]);
    }
    /* bytes a sample in the blocks */
    printf("# %.0f samples in %.0f blocks, %.2f bytes a sample of block data\n",
           mht_db_num(&s_p.db, "SELECT sum(n) FROM ingest.telemetry_blocks"),
           mht_db_num(&s_p.db, "SELECT count(*) FROM ingest.telemetry_blocks"),
           mht_db_num(&s_p.db, "SELECT sum(length(data))::float8 / sum(n) FROM"
                               " ingest.telemetry_blocks"));

    /* a late sample of a compressed hour: merged, and its minute rolled up */
    int64_t late = s_from + 90 * 60000 + 1234;
    s_late_sample("cp-0000", late);
    char path[512];
    snprintf(path, sizeof path,
             "/api/v1/devices/cp-0000/telemetry?bucket=raw&metric=temperature&from=%" PRId64
             "&to=%" PRId64,
             late, late + 1);
    json_t *v = s_get(path);
    json_t *pt = json_array_get(
        json_object_get(json_array_get(json_object_get(v, "series"), 0), "points"), 0);
    assert_int_equal(json_integer_value(json_array_get(pt, 0)), late);
    assert_true(json_real_value(json_array_get(pt, 1)) == -40.25);
    json_decref(v);
    snprintf(path, sizeof path,
             "/api/v1/devices/cp-0000/telemetry?bucket=1m&metric=temperature&from=%" PRId64
             "&to=%" PRId64,
             late - late % 60000, late - late % 60000 + 60000);
    v = s_get(path);
    pt = json_array_get(json_object_get(json_array_get(json_object_get(v, "series"), 0), "points"),
                        0);
    assert_int_equal(json_integer_value(json_object_get(pt, "count")), 3); /* two + the late one */
    assert_true(json_real_value(json_object_get(pt, "min")) == -40.25);
    json_decref(v);
    assert_int_equal(s_count("cp-0000"), 2 * 360 + 1 + 1);
    assert_int_equal(mht_stop(c.pid, SIGTERM, 20000), 0);
}

static void test_sigkill_and_two_replicas_lose_nothing(void **state)
{
    (void)state;
    s_load(100, 200); /* cp-0100 .. cp-0299 */
    s_wait_rollups();
    int64_t want = s_count("cp-0%");
    want -= s_count("cp-000%"); /* the first test's devices */
    char *before = s_answers("cp-0150");
    srandom(42);
    for (int i = 0; i < 6; i++) {
        mht_service_t a, b;
        s_compressor(&a, i % 2 ? "ingest-ka" : "ingest-kb", "2");
        s_compressor(&b, i % 2 ? "ingest-kc" : "ingest-kd", "2");
        mht_sleep_ms(100 + random() % 400);
        mht_stop(a.pid, SIGKILL, 5000);
        mht_sleep_ms(random() % 200);
        mht_stop(b.pid, SIGKILL, 5000);
        int64_t got = s_count("cp-0%") - s_count("cp-000%");
        if (got != want)
            fail_msg("after SIGKILL %d: %" PRId64 " samples, want %" PRId64, i + 1, got, want);
        printf("# SIGKILL %d: %.0f raw rows, %.0f blocks\n", i + 1,
               mht_db_num(&s_p.db, "SELECT count(*) FROM ingest.samples"),
               mht_db_num(&s_p.db, "SELECT count(*) FROM ingest.telemetry_blocks"));
    }
    printf("# after six SIGKILLs: %.0f raw rows left, %.0f blocks\n",
           mht_db_num(&s_p.db, "SELECT count(*) FROM ingest.telemetry_raw"),
           mht_db_num(&s_p.db, "SELECT count(*) FROM ingest.telemetry_blocks"));
    mht_service_t a, b;
    s_compressor(&a, "ingest-ke", "50");
    s_compressor(&b, "ingest-kf", "50");
    assert_true(mht_db_wait_num(&s_p.db, "SELECT count(*) FROM ingest.telemetry_raw", 0, 60000) ==
                0);
    assert_int_equal(mht_stop(a.pid, SIGTERM, 20000), 0);
    assert_int_equal(mht_stop(b.pid, SIGTERM, 20000), 0);
    assert_int_equal(s_count("cp-0%") - s_count("cp-000%"), want);
    /* one block per series and hour: nothing written twice */
    assert_int_equal(mht_db_num(&s_p.db, "SELECT count(*) - count(DISTINCT (device_id, metric,"
                                         " period_start)) FROM ingest.telemetry_blocks"),
                     0);
    assert_int_equal(s_overlapping_blocks(), 0);
    s_wait_rollups();
    char *after = s_answers("cp-0150");
    s_same("cp-0150", before, after);
    free(before);
    free(after);
}

/* A sealed day's hourly blocks become one block a series, answering the
 * same; a late sample of that day is merged into the day's block. */
static void test_sealed_days_become_one_block(void **state)
{
    (void)state;
    int64_t now = (int64_t)time(NULL) * 1000, day = now - now % (24 * S_HOUR) - 24 * S_HOUR;
    int64_t from = s_from, to = s_to;
    s_from = day + 20 * S_HOUR; /* yesterday 20:00 to 23:00 */
    s_to = day + 23 * S_HOUR;
    s_load_at(s_from, s_to, 10, 2); /* cp-0010, cp-0011 */
    s_wait_rollups();
    char *before = s_answers("cp-0010");
    mht_service_t c;
    s_compressor(&c, "ingest-days", "500");
    assert_true(mht_db_wait_num(&s_p.db,
                                "SELECT (SELECT count(*) FROM ingest.telemetry_raw WHERE"
                                " device_id LIKE 'cp-001_') + (SELECT count(*) FROM"
                                " ingest.telemetry_blocks WHERE device_id LIKE 'cp-001_' AND"
                                " hours < 24)",
                                0, 30000) == 0);
    const char *day_blocks =
        "SELECT count(*) FROM ingest.telemetry_blocks WHERE device_id ="
        " 'cp-0010' AND hours = 24 AND period_start = to_timestamp(%" PRId64 " / 1000.0)";
    assert_int_equal(mht_db_num(&s_p.db, "SELECT count(*) FROM ingest.telemetry_blocks WHERE"
                                         " device_id = 'cp-0010'"),
                     2);
    assert_int_equal(mht_db_num(&s_p.db, day_blocks, day), 2); /* temperature, noise */
    char *after = s_answers("cp-0010");
    s_same("cp-0010 after its day's blocks joined", before, after);
    free(after);
    free(before);

    int64_t late = day + 21 * S_HOUR + 30 * 60000 + 1234;
    s_late_sample("cp-0010", late);
    assert_int_equal(mht_db_num(&s_p.db, day_blocks, day), 2);
    assert_int_equal(s_overlapping_blocks(), 0);
    assert_int_equal(s_count("cp-0010"), 2 * 360 + 1 + 1);
    /* the day's raw and hour-block partitions, emptied, give their disk back:
     * a truncated one is its indexes' metapages, at most 64 KB */
    char emptied[512];
    snprintf(emptied, sizeof emptied,
             "SELECT greatest(pg_total_relation_size(format('ingest.samples_p%%s', d)::regclass),"
             " pg_total_relation_size(format('ingest.telemetry_blocks_hour_p%%s',"
             " d)::regclass)) / 65537"
             " FROM to_char(to_timestamp(%" PRId64 " / 1000.0) AT TIME ZONE 'UTC', 'YYYYMMDD') d",
             day);
    double left = mht_db_wait_num(&s_p.db, emptied, 0, 30000);
    if (left != 0)
        fail_msg("an emptied partition still takes more than 64 KB (index metapages)");
    char path[512];
    snprintf(path, sizeof path,
             "/api/v1/devices/cp-0010/telemetry?bucket=1m&metric=temperature&from=%" PRId64
             "&to=%" PRId64,
             late - late % 60000, late - late % 60000 + 60000);
    json_t *v = s_get(path);
    json_t *pt = json_array_get(
        json_object_get(json_array_get(json_object_get(v, "series"), 0), "points"), 0);
    assert_int_equal(json_integer_value(json_object_get(pt, "count")), 3);
    assert_true(json_real_value(json_object_get(pt, "min")) == -40.25);
    json_decref(v);
    assert_int_equal(mht_stop(c.pid, SIGTERM, 20000), 0);
    s_from = from;
    s_to = to;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_answers_across_the_seal),
        cmocka_unit_test(test_sigkill_and_two_replicas_lose_nothing),
        cmocka_unit_test(test_sealed_days_become_one_block),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
