/* The Kafka cold path (issue 7): ingest produces every sample it stores to
 * a topic on librdkafka's mock cluster (tools/kafka-mock, a helper process
 * on loopback), and motehub-coldstore writes the topic into hourly folders
 * of gzip files. Checked as a data engineer would: the samples in the files
 * are exactly the rows in PostgreSQL, value for value; a Kafka outage stops
 * neither the hot path nor loses anything from the cold one; a full local
 * queue holds batches back instead of dropping them. */
#include "mh_test.h"

#include "mh_agent.h"

#include <jansson.h>
#include <time.h>

typedef struct {
    mht_kafka_t k;
    mht_broker_t b;
    mht_db_t db;
    mht_service_t ing, gw;
    char out[700];
} s_stack_t;

static void s_up(s_stack_t *st, const char *tag, const char *queue_max)
{
    memset(st, 0, sizeof *st);
    mht_kafka_start(&st->k);
    mht_broker_start(&st->b);
    mht_db_create(&st->db);
    char brokers[300], qmax[64], name[64];
    snprintf(brokers, sizeof brokers, "--kafka-brokers=%s", st->k.bootstrap);
    snprintf(qmax, sizeof qmax, "--kafka-queue-max=%s", queue_max);
    const char *extra[] = {brokers, "--kafka-topic=telemetry", qmax, NULL};
    snprintf(name, sizeof name, "ingest-%s", tag);
    mht_ingest_start(&st->ing, name, &st->db, 0, extra);
    snprintf(name, sizeof name, "gateway-%s", tag);
    const char *gx[] = {"--ack-timeout=3s", NULL};
    mht_gateway_start(&st->gw, name, &st->b, st->ing.endpoint, gx);
    snprintf(st->out, sizeof st->out, "%s/cold-%s", mht_artifacts(), tag);
    mht_shell("rm -rf '%s'", st->out);
}

static void s_down(s_stack_t *st)
{
    assert_int_equal(mht_stop(st->gw.pid, SIGTERM, 20000), 0);
    assert_int_equal(mht_stop(st->ing.pid, SIGTERM, 40000), 0);
    mht_broker_stop(&st->b);
    mht_db_drop(&st->db);
    mht_kafka_stop(&st->k);
}

/* `devices` devices publish `per` messages each, 2 metrics with values
 * that are not short decimals; returns the samples sent. */
static int s_publish(s_stack_t *st, const char *prefix, int devices, int per)
{
    mh_agent_t *a[16];
    for (int d = 0; d < devices; d++) {
        char id[64];
        snprintf(id, sizeof id, "%s-%d", prefix, d);
        mh_agent_opts_t o = {.url = st->b.url, .device_id = id, .max_inflight = 50};
        a[d] = mh_agent_new(&o);
        mh_agent_connect(a[d]);
        assert_true(mh_agent_wait_connected(a[d], 10000));
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t base = (int64_t)ts.tv_sec * 1000 - 60000; /* distinct times a minute ago */
    for (int i = 0; i < per; i++)
        for (int d = 0; d < devices; d++) {
            mh_sample_t s = {.ts = base + i, .seq = -1, .n = 2};
            s.m[0].name = "temp";
            s.m[0].value = (d * 1000 + i) / 7.0;
            s.m[1].name = "volts";
            s.m[1].value = 3.3 + i * 1e-9;
            int64_t deadline = mht_now_ms() + 60000;
            int rc;
            while ((rc = mh_agent_publish_samples(a[d], &s, 1, 1)) == -EAGAIN &&
                   mht_now_ms() < deadline)
                mht_sleep_ms(1);
            assert_int_equal(rc, 0);
        }
    for (int d = 0; d < devices; d++) {
        assert_true(mh_agent_wait_delivered(a[d], 120000));
        mh_agent_destroy(&a[d]);
    }
    return devices * per * 2;
}

static int s_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "device|metric|ts|value" lines, sorted. */
typedef struct {
    char **v;
    size_t n, cap;
} s_rows_t;

static void s_add(s_rows_t *r, const char *dev, const char *metric, long long ts, double value)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 1024;
        r->v = realloc(r->v, r->cap * sizeof *r->v);
    }
    char buf[300];
    snprintf(buf, sizeof buf, "%s|%s|%lld|%.17g", dev, metric, ts, value);
    r->v[r->n++] = strdup(buf);
}

static void s_free(s_rows_t *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->v[i]);
    free(r->v);
}

static s_rows_t s_pg_rows(s_stack_t *st, const char *prefix)
{
    s_rows_t r = {0};
    char sql[300];
    snprintf(sql, sizeof sql,
             "SELECT device_id, metric, (extract(epoch FROM ts) * 1000)::bigint, value "
             "FROM ingest.telemetry_raw WHERE device_id LIKE '%s-%%'",
             prefix);
    PGresult *res = PQexec(st->db.conn, sql);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    for (int i = 0; i < PQntuples(res); i++)
        s_add(&r, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
              strtoll(PQgetvalue(res, i, 2), NULL, 10), strtod(PQgetvalue(res, i, 3), NULL));
    PQclear(res);
    if (r.n)
        qsort(r.v, r.n, sizeof *r.v, s_cmp);
    return r;
}

/* Every sample in the cold files, duplicates included. While coldstore is
 * still writing (strict false), a file's last line may be cut short: skip
 * such a line; once it has stopped and closed its files, every line must
 * be whole. */
static s_rows_t s_cold_rows(const char *out, bool strict)
{
    s_rows_t r = {0};
    char cmd[900];
    snprintf(cmd, sizeof cmd, "find '%s' -name '*.jsonl.gz' -exec zcat {} + 2>/dev/null", out);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        if (!j && !strict)
            continue;
        if (!j)
            fail_msg("a line in the cold files is not JSON: %s", line);
        s_add(&r, json_string_value(json_object_get(j, "device")),
              json_string_value(json_object_get(j, "metric")),
              (long long)json_integer_value(json_object_get(j, "ts")),
              json_number_value(json_object_get(j, "value")));
        json_decref(j);
    }
    pclose(f);
    if (r.n)
        qsort(r.v, r.n, sizeof *r.v, s_cmp);
    return r;
}

/* Runs the cold store until it has written at least `want` samples (or 60
 * s); returns them. */
static s_rows_t s_cold_store(s_stack_t *st, size_t want, const char *tag)
{
    char bin[512], a_b[300], a_out[800], name[64];
    mht_build_path("tools/coldstore/motehub-coldstore", bin, sizeof bin);
    snprintf(a_b, sizeof a_b, "--kafka-brokers=%s", st->k.bootstrap);
    snprintf(a_out, sizeof a_out, "--out=%s", st->out);
    snprintf(name, sizeof name, "coldstore-%s", tag);
    char *argv[] = {bin, a_b, "--kafka-topic=telemetry", a_out, "--flush-interval=500ms", NULL};
    pid_t pid = mht_spawn(name, argv);
    s_rows_t r = {0};
    int64_t deadline = mht_now_ms() + 60000;
    while (mht_now_ms() < deadline) {
        mht_sleep_ms(500);
        s_free(&r);
        r = s_cold_rows(st->out, false);
        if (r.n >= want)
            break;
    }
    assert_int_equal(mht_stop(pid, SIGTERM, 10000), 0);
    s_free(&r);
    return s_cold_rows(st->out, true); /* after the last flush */
}

/* The cold rows hold every PostgreSQL row, value for value, and nothing
 * else; returns how many were there more than once. */
static size_t s_expect_same(s_rows_t *pg, s_rows_t *cold)
{
    size_t dup = 0, u = 0;
    for (size_t i = 0; i < cold->n; i++) {
        if (i && strcmp(cold->v[i], cold->v[i - 1]) == 0) {
            dup++;
            continue;
        }
        if (u >= pg->n || strcmp(cold->v[i], pg->v[u]) != 0)
            fail_msg("cold sample %s is not the stored row %s", cold->v[i],
                     u < pg->n ? pg->v[u] : "(none)");
        u++;
    }
    if (u != pg->n)
        fail_msg("%zu rows stored, %zu distinct samples in the cold files", pg->n, u);
    return dup;
}

/* Runs coldstore until the `n` samples stored for `prefix` are in the files,
 * checks they are the PostgreSQL rows value for value, none repeated and
 * none failed; what `what` names goes into the message. */
static void s_expect_cold_path(s_stack_t *st, const char *prefix, int n, const char *what)
{
    s_rows_t pg = s_pg_rows(st, prefix);
    s_rows_t cold = s_cold_store(st, (size_t)n, prefix);
    size_t dup = s_expect_same(&pg, &cold);
    print_message("# %s: %d sent, %zu stored, %zu in the cold files (%zu repeated)\n", what, n,
                  pg.n, cold.n, dup);
    assert_int_equal(dup, 0);
    assert_true(
        mht_metric(st->ing.http_port, "mh_ingest_kafka_samples_total", "outcome=\"failed\"") == 0);
    s_free(&pg);
    s_free(&cold);
}

static void test_every_stored_sample_reaches_the_files(void **state)
{
    (void)state;
    s_stack_t st;
    s_up(&st, "all", "1000000");
    int n = s_publish(&st, "cold", 5, 300);
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM ingest.telemetry_raw");
    assert_true(mht_db_wait_num(&st.db, sql, n, 30000) == n);
    s_expect_cold_path(&st, "cold", n, "healthy");
    assert_true(mht_metric(st.ing.http_port, "mh_ingest_kafka_samples_total",
                           "outcome=\"delivered\"") == n);
    /* hourly folders */
    assert_int_equal(mht_shell("ls -d '%s'/date=*/hour=* >/dev/null", st.out), 0);
    s_down(&st);
}

static void test_a_kafka_outage_loses_nothing(void **state)
{
    (void)state;
    s_stack_t st;
    s_up(&st, "outage", "1000000");
    mht_kafka_cmd(&st.k, "down");
    int n = s_publish(&st, "out", 4, 250);
    /* the hot path does not wait for Kafka */
    assert_true(mht_db_wait_num(&st.db, "SELECT count(*) FROM ingest.telemetry_raw", n, 30000) ==
                n);
    double queued = mht_metric(st.ing.http_port, "mh_ingest_kafka_queued", NULL);
    print_message("# Kafka down: %d samples stored in PostgreSQL, %.0f waiting for Kafka\n", n,
                  queued);
    assert_true(queued > 0);
    mht_sleep_ms(2000);
    mht_kafka_cmd(&st.k, "up");
    mht_wait_metric(st.ing.http_port, "mh_ingest_kafka_samples_total", "outcome=\"delivered\"", n,
                    60000);
    s_expect_cold_path(&st, "out", n, "after the outage");
    s_down(&st);
}

static void test_a_full_queue_holds_batches_back(void **state)
{
    (void)state;
    s_stack_t st;
    s_up(&st, "full", "300");
    mht_kafka_cmd(&st.k, "down");
    /* 8,000 samples against a queue of 300 while Kafka is away: the broker
     * takes them all (its PUBACKs do not wait for the gateway) and keeps
     * what the gateway, held back by ingest, does not take */
    int n = s_publish(&st, "full", 4, 1000);
    mht_sleep_ms(1500);
    double full = mht_metric(st.ing.http_port, "mh_ingest_kafka_queue_full_total", NULL);
    double stored = mht_db_num(&st.db, "SELECT count(*) FROM ingest.telemetry_raw");
    print_message("# queue full %.0f times; %.0f of %d samples stored while Kafka was down\n", full,
                  stored, n);
    assert_true(full >= 1);
    assert_true(stored < n); /* ingest held the rest back */
    mht_kafka_cmd(&st.k, "up");
    /* everything arrives: in PostgreSQL and on the topic */
    assert_true(mht_db_wait_num(&st.db, "SELECT count(*) FROM ingest.telemetry_raw", n, 90000) ==
                n);
    /* the gateway re-sent the batches ingest was holding; ingest knew it had
     * produced them and did not produce them twice */
    s_expect_cold_path(&st, "full", n, "after Kafka came back");
    s_down(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_stored_sample_reaches_the_files),
        cmocka_unit_test(test_a_kafka_outage_loses_nothing),
        cmocka_unit_test(test_a_full_queue_holds_batches_back),
    };
    return MHT_RUN(tests);
}
