/* The telemetry path end to end, with real mosquitto, PostgreSQL, ingest and
 * gateway processes: what a device publishes lands as rows; rollups agree
 * with the raw rows; every malformed message is refused, counted and stores
 * nothing; the daemons stay up. */
#include "mh_test.h"

#include "mh_agent.h"
#include "mh_envelope.h"
#include "telemetry.pb-c.h"

#include <czmq.h>
#include <inttypes.h>
#include <math.h>
#include <time.h>

static mht_broker_t s_broker;
static mht_db_t s_db;
static mht_service_t s_ingest, s_gw;

static int64_t s_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int s_setup(void **state)
{
    (void)state;
    mht_broker_start(&s_broker);
    mht_db_create(&s_db);
    mht_ingest_start(&s_ingest, "ingest", &s_db, 0, NULL);
    mht_gateway_start(&s_gw, "gateway", &s_broker, s_ingest.endpoint, NULL);
    /* the gateway is ready once subscribed */
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    assert_true(mht_stop(s_gw.pid, SIGTERM, 20000) == 0);
    assert_true(mht_stop(s_ingest.pid, SIGTERM, 20000) == 0);
    mht_broker_stop(&s_broker);
    if (!getenv("MHT_KEEP_DB"))
        mht_db_drop(&s_db);
    return 0;
}

static double s_wait(double want, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static double s_wait(double want, const char *fmt, ...)
{
    char sql[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    return mht_db_wait_num(&s_db, sql, want, 20000);
}

static void test_mosquitto_pub_lands_as_rows(void **state)
{
    (void)state;
    int64_t ts = s_wall_ms() - 60000;
    char payload[256];
    /* MQTT 3.1.1, one sample */
    snprintf(payload, sizeof payload, "{\"ts\":%" PRId64 ",\"seq\":1,\"temp\":21.5,\"door\":true}",
             ts);
    assert_int_equal(
        mht_mosquitto_pub(&s_broker, "mqttv311", "devices/e2e-311/telemetry", payload, 1), 0);
    /* MQTT 5, an array of samples */
    snprintf(payload, sizeof payload,
             "[{\"ts\":%" PRId64 ",\"hum\":40},{\"ts\":%" PRId64 ",\"hum\":41.25}]", ts, ts + 1000);
    assert_int_equal(mht_mosquitto_pub(&s_broker, "mqttv5", "devices/e2e-5/telemetry", payload, 1),
                     0);

    assert_int_equal(
        s_wait(2, "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'e2e-311'"), 2);
    assert_int_equal(
        mht_db_num(&s_db,
                   "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'e2e-311' "
                   "AND metric = 'temp' AND value = 21.5 AND ts = to_timestamp(%" PRId64
                   " / 1000.0)",
                   ts),
        1);
    assert_int_equal(
        mht_db_num(&s_db, "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'e2e-311' "
                          "AND metric = 'door' AND value = 1"),
        1);
    /* stored compactly: the message is one row, its metric names one set */
    assert_int_equal(mht_db_num(&s_db,
                                "SELECT count(*) FROM ingest.samples s JOIN ingest.device_ids"
                                " d ON d.id = s.device JOIN ingest.metric_sets m ON m.id ="
                                " s.metric_set WHERE d.device_id = 'e2e-311' AND m.metrics ="
                                " '{temp,door}' AND s.value = '{21.5,1}'"),
                     1);
    assert_int_equal(
        s_wait(2, "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'e2e-5'"), 2);
    assert_int_equal(
        mht_db_num(&s_db,
                   "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'e2e-5' AND "
                   "metric = 'hum' "
                   "AND value = 41.25 AND ts = to_timestamp(%" PRId64 " / 1000.0)",
                   ts + 1000),
        1);

    /* no ts: the gateway's receive time, within a few seconds of now */
    int64_t before = s_wall_ms();
    assert_int_equal(
        mht_mosquitto_pub(&s_broker, "mqttv5", "devices/e2e-nots/telemetry", "{\"x\":7}", 1), 0);
    assert_int_equal(
        s_wait(1, "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'e2e-nots'"), 1);
    double t = mht_db_num(
        &s_db, "SELECT extract(epoch FROM ts) * 1000 FROM ingest.telemetry_raw WHERE device_id "
               "= 'e2e-nots'");
    assert_true(t >= (double)before - 1000 && t <= (double)s_wall_ms() + 1000);
}

static void test_protobuf_topic(void **state)
{
    (void)state;
    Mh__DeviceMetric m = MH__DEVICE_METRIC__INIT;
    m.name = "pressure";
    m.value_case = MH__DEVICE_METRIC__VALUE_NUMBER;
    m.number = 1013.25;
    Mh__DeviceMetric *ms[] = {&m};
    Mh__DeviceSample s = MH__DEVICE_SAMPLE__INIT;
    s.ts = s_wall_ms() - 5000;
    s.metrics = ms;
    s.n_metrics = 1;
    Mh__DeviceSample *ss[] = {&s};
    Mh__DeviceTelemetry t = MH__DEVICE_TELEMETRY__INIT;
    t.samples = ss;
    t.n_samples = 1;
    uint8_t buf[256];
    size_t n = mh__device_telemetry__pack(&t, buf);
    char path[700];
    snprintf(path, sizeof path, "%s/sample.pb", mht_artifacts());
    FILE *f = fopen(path, "wb");
    fwrite(buf, 1, n, f);
    fclose(f);
    char port[16];
    snprintf(port, sizeof port, "%d", s_broker.port);
    char *argv[] = {"mosquitto_pub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    port,
                    "-q",
                    "1",
                    "-t",
                    "devices/e2e-pb/telemetry/pb",
                    "-f",
                    path,
                    NULL};
    pid_t pid = mht_spawn("mosquitto_pub", argv);
    int st;
    waitpid(pid, &st, 0);
    assert_int_equal(s_wait(1,
                            "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'e2e-pb' "
                            "AND metric = 'pressure' AND value = 1013.25"),
                     1);
}

/* Samples spread over three closed hours; the rollups must equal aggregates
 * of the raw rows, bucket by bucket. */
static void test_rollups_agree_with_raw(void **state)
{
    (void)state;
    mh_agent_opts_t o = {.url = s_broker.url, .device_id = "roll-1"};
    mh_agent_t *a = mh_agent_new(&o);
    assert_int_equal(mh_agent_connect(a), 0);
    assert_true(mh_agent_wait_connected(a, 5000));
    int64_t start = (s_wall_ms() / 3600000 - 3) * 3600000; /* three hours ago, on the hour */
    mh_sample_t batch[500];
    int total = 0;
    for (int msg = 0; msg < 10; msg++) {
        for (int i = 0; i < 500; i++) {
            int k = msg * 500 + i;
            batch[i] = (mh_sample_t){.ts = start + (int64_t)k * 2000 + 17, .seq = k, .n = 2};
            batch[i].m[0].name = "temp";
            batch[i].m[0].value = 20 + sin(k / 50.0) * 5;
            batch[i].m[1].name = "ok";
            batch[i].m[1].value = k % 3 == 0;
            batch[i].m[1].is_bool = true;
        }
        while (mh_agent_publish_samples(a, batch, 500, 1) == -EAGAIN)
            mht_sleep_ms(5);
        total += 1000;
    }
    assert_true(mh_agent_wait_delivered(a, 10000));
    mh_agent_destroy(&a);
    assert_int_equal(
        s_wait(total, "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'roll-1'"),
        total);
    /* every bucket holding this device's samples processed (the open
     * minute of earlier tests' samples is rolled up only once it closes) */
    assert_int_equal(mht_db_wait_num(&s_db,
                                     "SELECT count(*) FROM ingest.rollup_dirty WHERE bucket <= "
                                     "(SELECT max(ts) FROM ingest.telemetry_raw WHERE "
                                     "device_id = 'roll-1')",
                                     0, 30000),
                     0);
    int minutes = (int)mht_db_num(&s_db, "SELECT count(DISTINCT date_trunc('minute', ts)) FROM "
                                         "ingest.telemetry_raw WHERE device_id = 'roll-1'");
    assert_true(minutes > 150);
    assert_int_equal(
        mht_db_num(&s_db, "SELECT count(*) FROM ingest.rollup_1m WHERE device_id = 'roll-1'"),
        minutes * 2);
    /* 1m vs raw: no bucket differs */
    assert_int_equal(
        mht_db_num(
            &s_db,
            "SELECT count(*) FROM ("
            " SELECT device_id, metric, date_trunc('minute', ts) b, min(value) mn, max(value) mx,"
            "  sum(value) s, count(*) c FROM ingest.telemetry_raw WHERE device_id = 'roll-1' GROUP "
            "BY 1,2,3) r"
            " FULL JOIN (SELECT * FROM ingest.rollup_1m WHERE device_id = 'roll-1') m"
            " ON m.device_id = r.device_id AND m.metric = r.metric AND m.bucket = r.b"
            " WHERE m.bucket IS NULL OR r.b IS NULL OR m.min <> r.mn OR m.max <> r.mx"
            " OR abs(m.sum - r.s) > 1e-6 OR m.count <> r.c"),
        0);
    /* 1h vs raw */
    assert_int_equal(
        mht_db_num(
            &s_db,
            "SELECT count(*) FROM ("
            " SELECT device_id, metric, date_trunc('hour', ts) b, min(value) mn, max(value) mx,"
            "  sum(value) s, count(*) c FROM ingest.telemetry_raw WHERE device_id = 'roll-1' GROUP "
            "BY 1,2,3) r"
            " FULL JOIN (SELECT * FROM ingest.rollup_1h WHERE device_id = 'roll-1') m"
            " ON m.device_id = r.device_id AND m.metric = r.metric AND m.bucket = r.b"
            " WHERE m.bucket IS NULL OR r.b IS NULL OR m.min <> r.mn OR m.max <> r.mx"
            " OR abs(m.sum - r.s) > 1e-6 OR m.count <> r.c"),
        0);
    assert_true(
        mht_db_num(&s_db, "SELECT count(*) FROM ingest.rollup_1h WHERE device_id = 'roll-1'") >= 4);

    /* a late sample for a rolled-up minute: the minute and its hour follow */
    char payload[128];
    snprintf(payload, sizeof payload, "{\"ts\":%" PRId64 ",\"temp\":1000}", start + 1);
    assert_int_equal(mht_mosquitto_pub(&s_broker, "mqttv5", "devices/roll-1/telemetry", payload, 1),
                     0);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT max FROM ingest.rollup_1h WHERE device_id = 'roll-1' AND metric = 'temp' "
             "AND bucket = to_timestamp(%" PRId64 " / 1000.0)",
             start);
    assert_true(mht_db_wait_num(&s_db, sql, 1000, 20000) == 1000);
}

/* The rollup job has a connection of its own: while it waits (here on a
 * lock an operator's session holds on the rollup table; on a large fleet,
 * on aggregating a minute of 1.8 M samples) telemetry is still written. It
 * ran on the writer's connection before, and every batch waited behind it
 * (the telemetry path's p99 at 10,000 msg/s, issue 20). */
static void test_rollup_never_holds_a_write(void **state)
{
    (void)state;
    PGconn *op = PQconnectdb(s_db.url);
    assert_int_equal(PQstatus(op), CONNECTION_OK);
    PGresult *r = PQexec(op, "BEGIN; LOCK TABLE ingest.rollup_1m IN ACCESS EXCLUSIVE MODE");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    /* a sample of a closed minute: the rollup job takes it up and waits */
    char payload[128];
    snprintf(payload, sizeof payload, "{\"ts\":%" PRId64 ",\"temp\":7}", s_wall_ms() - 600000);
    assert_int_equal(mht_mosquitto_pub(&s_broker, "mqttv5", "devices/rl-old/telemetry", payload, 1),
                     0);
    assert_int_equal(mht_db_wait_num(&s_db,
                                     "SELECT count(*) FROM pg_stat_activity WHERE "
                                     "application_name LIKE 'ingest%' AND wait_event_type = 'Lock'",
                                     1, 20000),
                     1);
    /* a new sample is stored meanwhile, in well under a second here */
    int64_t t0 = mht_now_ms();
    assert_int_equal(
        mht_mosquitto_pub(&s_broker, "mqttv5", "devices/rl-new/telemetry", "{\"temp\":8}", 1), 0);
    double stored = mht_db_wait_num(
        &s_db, "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'rl-new'", 1, 3000);
    int64_t took = mht_now_ms() - t0;
    /* the lock given back (before asserting: the suite goes on), the job
     * finishes its minute */
    PQclear(PQexec(op, "COMMIT"));
    PQfinish(op);
    print_message("# stored %" PRId64 " ms after publishing, the rollup job waiting\n", took);
    assert_int_equal(stored, 1);
    assert_int_equal(mht_db_wait_num(&s_db,
                                     "SELECT count(*) FROM ingest.rollup_1m WHERE "
                                     "device_id = 'rl-old' AND max = 7",
                                     1, 20000),
                     1);
}

static double s_rejected(const char *reason)
{
    char labels[64];
    snprintf(labels, sizeof labels, "reason=\"%s\"", reason);
    return mht_metric(s_gw.http_port, "mh_gateway_messages_rejected_total", labels);
}

/* Every malformed case of the spec through a real broker. */
static void test_malformed_rejected_counted_nothing_stored(void **state)
{
    (void)state;
    char future[96], big[80];
    snprintf(future, sizeof future, "{\"ts\":%" PRId64 ",\"a\":1}", s_wall_ms() + 2 * 3600000);
    struct {
        const char *topic, *payload, *reason;
    } cases[] = {
        {"devices/bad-1/telemetry", "not json", "bad_json"},
        {"devices/bad-2/telemetry", "{\"a\":1,\"a\":2}", "bad_json"},
        {"devices/bad-3/telemetry", "[1,2,3]", "bad_shape"},
        {"devices/bad-4/telemetry", "{}", "empty"},
        {"devices/bad-5/telemetry", "{\"bad name\":1}", "bad_metric_name"},
        {"devices/bad-6/telemetry", "{\"a\":\"text\"}", "bad_value"},
        {"devices/bad-7/telemetry", "{\"ts\":\"yesterday\",\"a\":1}", "bad_ts"},
        {"devices/bad-8/telemetry", future, "future_ts"},
        {"devices/bad-9/telemetry", "{\"seq\":-3,\"a\":1}", "bad_seq"},
        {"devices/bad-10/telemetry/pb", "\xff\xff\xff\xff", "bad_protobuf"},
        {"devices/bad-11/status", "{\"state\":\"dancing\"}", "bad_status"},
        {"devices/bad id/telemetry", "{\"a\":1}", "bad_device_id"},
    };
    size_t n = sizeof cases / sizeof cases[0];
    double before[32];
    for (size_t i = 0; i < n; i++) {
        before[i] = s_rejected(cases[i].reason);
        if (isnan(before[i]))
            fail_msg("no counter for reason %s", cases[i].reason);
    }
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(
            mht_mosquitto_pub(&s_broker, "mqttv5", cases[i].topic, cases[i].payload, 1), 0);
        /* wait for this message's counter before the next, so counts are exact */
        int64_t deadline = mht_now_ms() + 10000;
        double want = before[i] + 1;
        for (size_t j = 0; j < i; j++)
            if (strcmp(cases[j].reason, cases[i].reason) == 0)
                want++;
        while (s_rejected(cases[i].reason) < want && mht_now_ms() < deadline)
            mht_sleep_ms(20);
        if (s_rejected(cases[i].reason) != want)
            fail_msg("%s on %s not counted as %s", cases[i].payload, cases[i].topic,
                     cases[i].reason);
    }
    /* 1,001 samples and a payload over 256 KiB */
    size_t cap = 300 * 1024;
    char *p = malloc(cap), *w = p;
    *w++ = '[';
    for (int i = 0; i < 1001; i++)
        w += sprintf(w, "%s{\"v\":%d}", i ? "," : "", i);
    strcpy(w, "]");
    double b1 = s_rejected("too_many_samples"), b2 = s_rejected("too_large");
    assert_int_equal(mht_mosquitto_pub(&s_broker, "mqttv5", "devices/bad-12/telemetry", p, 1), 0);
    memset(p, ' ', cap - 1);
    p[0] = '{';
    memcpy(p + cap - 8, "\"a\":1}", 7);
    assert_int_equal(mht_mosquitto_pub(&s_broker, "mqttv5", "devices/bad-13/telemetry", p, 1), 0);
    free(p);
    int64_t deadline = mht_now_ms() + 10000;
    while ((s_rejected("too_many_samples") < b1 + 1 || s_rejected("too_large") < b2 + 1) &&
           mht_now_ms() < deadline)
        mht_sleep_ms(20);
    assert_true(s_rejected("too_many_samples") == b1 + 1);
    assert_true(s_rejected("too_large") == b2 + 1);
    (void)big;

    /* the gateway is alive and still stores good data; nothing bad was stored */
    assert_int_equal(mht_http_get(s_gw.http_port, "/healthz", NULL), 200);
    assert_true(mht_alive(s_gw.pid));
    assert_int_equal(
        mht_mosquitto_pub(&s_broker, "mqttv5", "devices/good-after/telemetry", "{\"a\":1}", 1), 0);
    assert_int_equal(
        s_wait(1, "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'good-after'"), 1);
    assert_int_equal(
        mht_db_num(&s_db, "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id LIKE 'bad%%'"),
        0);
}

/* Samples older than the raw retention are dropped and counted at ingest. */
static void test_too_old_dropped_and_counted(void **state)
{
    (void)state;
    double before =
        mht_metric(s_ingest.http_port, "mh_ingest_points_dropped_total", "reason=\"too_old\"");
    char payload[160];
    int64_t now = s_wall_ms();
    snprintf(payload, sizeof payload, "[{\"ts\":%" PRId64 ",\"a\":1},{\"ts\":%" PRId64 ",\"a\":2}]",
             (int64_t)(now - 8LL * 86400000), now - 1000);
    assert_int_equal(mht_mosquitto_pub(&s_broker, "mqttv5", "devices/old-1/telemetry", payload, 1),
                     0);
    assert_int_equal(
        s_wait(1, "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'old-1'"), 1);
    assert_int_equal(
        mht_db_num(&s_db, "SELECT value FROM ingest.telemetry_raw WHERE device_id = 'old-1'"), 2);
    assert_true(mht_wait_metric(s_ingest.http_port, "mh_ingest_points_dropped_total",
                                "reason=\"too_old\"", before + 1, 5000) == before + 1);
}

/* Sends one batch of one point straight to ingest; its acknowledgement. */
static Mh__TelemetryAck__Status s_direct(zsock_t *d, const char *batch_id, const char *device)
{
    Mh__Point p = MH__POINT__INIT;
    p.device_id = (char *)device;
    p.metric = "m";
    p.ts_ms = s_wall_ms() - 1000;
    p.value = 3;
    Mh__Point *pts[] = {&p};
    Mh__TelemetryBatch b = MH__TELEMETRY_BATCH__INIT;
    b.batch_id = (char *)batch_id;
    b.points = pts;
    b.n_points = 1;
    b.messages = 1;
    assert_int_equal(mh_envelope_send(d, NULL, "telemetry.batch", NULL, &b.base, false), 0);
    zframe_t *f = zframe_recv(d);
    assert_non_null(f);
    Mh__Envelope *env = mh_envelope_unpack(f);
    assert_non_null(env);
    assert_string_equal(env->type, "telemetry.ack");
    Mh__TelemetryAck *ack = mh__telemetry_ack__unpack(NULL, env->body.len, env->body.data);
    assert_non_null(ack);
    assert_string_equal(ack->batch_id, batch_id);
    Mh__TelemetryAck__Status status = ack->status;
    mh__telemetry_ack__free_unpacked(ack, NULL);
    mh_envelope_free(&env);
    zframe_destroy(&f);
    return status;
}

/* Straight to ingest's socket: a re-sent batch id is stored once and
 * acknowledged as a duplicate; garbage does not hurt it, and a device id
 * or batch id PostgreSQL cannot store (not UTF-8) is refused without
 * blocking the batches after it. */
static void test_ingest_batch_stored_once(void **state)
{
    (void)state;
    zsock_t *d = zsock_new(ZMQ_DEALER);
    zsock_set_rcvtimeo(d, 10000);
    assert_int_equal(zsock_connect(d, "%s", s_ingest.endpoint), 0);
    /* garbage first */
    zstr_send(d, "this is not an envelope");
    assert_int_equal(s_direct(d, "test-direct-batch-1", "direct-1"),
                     MH__TELEMETRY_ACK__STATUS__STORED);
    assert_int_equal(s_direct(d, "test-direct-batch-1", "direct-1"),
                     MH__TELEMETRY_ACK__STATUS__DUPLICATE);
    assert_int_equal(
        mht_db_num(&s_db, "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'direct-1'"),
        1);
    assert_int_equal(s_direct(d, "test-direct-batch-2", "direct-\xff"),
                     MH__TELEMETRY_ACK__STATUS__REJECTED);
    assert_int_equal(s_direct(d, "test-direct-batch-3", "direct-3"),
                     MH__TELEMETRY_ACK__STATUS__STORED);
    assert_int_equal(
        mht_db_num(&s_db, "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id = 'direct-3'"),
        1);
    /* a batch id is data (it goes to PostgreSQL inside an array literal):
     * quotes, a backslash, braces and a comma are kept as sent */
    const char *odd = "b'\"\\{x},y";
    assert_int_equal(s_direct(d, odd, "direct-4"), MH__TELEMETRY_ACK__STATUS__STORED);
    assert_int_equal(s_direct(d, odd, "direct-4"), MH__TELEMETRY_ACK__STATUS__DUPLICATE);
    assert_int_equal(
        mht_db_num(&s_db, "SELECT count(*) FROM ingest.batches WHERE batch_id = 'b''\"\\{x},y'"),
        1);
    /* one that is not text is refused alone */
    assert_int_equal(s_direct(d, "bad-\xff-id", "direct-5"), MH__TELEMETRY_ACK__STATUS__REJECTED);
    assert_int_equal(s_direct(d, "test-direct-batch-6", "direct-6"),
                     MH__TELEMETRY_ACK__STATUS__STORED);
    assert_true(mht_alive(s_ingest.pid));
    zsock_destroy(&d);
}

/* Partitions exist ahead of time; retention drops whole partitions. */
static void test_partitions_and_retention(void **state)
{
    (void)state;
    assert_int_equal(mht_db_num(&s_db,
                                "SELECT count(*) FROM pg_class WHERE relname = 'samples_p' || "
                                "to_char(now() AT TIME ZONE 'UTC' + interval '1 day', 'YYYYMMDD')"),
                     1);
    /* an old partition, as a long-running system would have */
    mht_db_num(&s_db,
               "SELECT ingest.ensure_partitions('samples', 1, now() - interval '20 days', now() - "
               "interval '19 days')");
    assert_int_equal(
        mht_db_num(&s_db, "SELECT count(*) FROM pg_class WHERE relname = 'samples_p' || "
                          "to_char(now() AT TIME ZONE 'UTC' - interval '20 days', 'YYYYMMDD')"),
        1);
    mht_service_t second = {0};
    const char *extra[] = {"--maintain-interval=200ms", NULL};
    mht_ingest_start(&second, "ingest-retention", &s_db, 0, extra);
    assert_int_equal(
        mht_db_wait_num(&s_db,
                        "SELECT count(*) FROM pg_class WHERE relname = 'samples_p' || "
                        "to_char(now() AT TIME ZONE 'UTC' - interval '20 days', 'YYYYMMDD')",
                        0, 10000),
        0);
    /* rollup tiers keep longer: their 20-day-old partitions are kept */
    assert_true(
        mht_db_num(&s_db,
                   "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent "
                   "WHERE p.relname = 'rollup_1m'") >= 13);
    assert_int_equal(mht_stop(second.pid, SIGTERM, 10000), 0);
}

/* A database from before the compact raw tier: its rows are moved into
 * it when ingest starts, and read the same through the view. */
static void test_upgrade_moves_the_old_raw_tier(void **state)
{
    (void)state;
    mht_db_t old;
    mht_db_create(&old);
    int64_t t = s_wall_ms() - 3600000;
    /* the old schema, as ingest made it */
    PGresult *r =
        PQexec(old.conn,
               "CREATE SCHEMA ingest;"
               "CREATE TABLE ingest.telemetry_raw (device_id text NOT NULL, metric text NOT NULL,"
               " ts timestamptz NOT NULL, value double precision NOT NULL) PARTITION BY RANGE (ts);"
               "CREATE INDEX telemetry_raw_device ON ingest.telemetry_raw (device_id, metric, ts);"
               "CREATE TABLE ingest.telemetry_raw_p0 PARTITION OF ingest.telemetry_raw"
               " FOR VALUES FROM (now() - interval '2 days') TO (now() + interval '2 days');"
               /* and the blocks of the first compression, by range alone */
               "CREATE TABLE ingest.telemetry_blocks (device_id text NOT NULL, metric text NOT"
               " NULL, period_start timestamptz NOT NULL, n int NOT NULL, data bytea NOT NULL,"
               " PRIMARY KEY (device_id, metric, period_start)) PARTITION BY RANGE (period_start);"
               "CREATE TABLE ingest.telemetry_blocks_p0 PARTITION OF ingest.telemetry_blocks"
               " FOR VALUES FROM (now() - interval '2 days') TO (now() + interval '2 days');"
               "INSERT INTO ingest.telemetry_blocks VALUES ('up-3', 'temp',"
               " date_trunc('hour', now() - interval '1 day'), 2, '\\x0102');");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    mht_db_num(&old,
               "WITH i AS (INSERT INTO ingest.telemetry_raw VALUES"
               " ('up-1', 'temp', to_timestamp(%" PRId64 " / 1000.0), 21.5),"
               " ('up-1', 'hum', to_timestamp(%" PRId64 " / 1000.0), -0.0),"
               " ('up-2', 'temp', to_timestamp(%" PRId64 " / 1000.0), 1e300) RETURNING 1)"
               " SELECT count(*) FROM i",
               t, t, t + 1);
    mht_service_t ing = {0};
    mht_ingest_start(&ing, "ingest-upgrade", &old, 0, NULL);
    assert_int_equal(mht_db_num(&old, "SELECT count(*) FROM pg_class WHERE relname ="
                                      " 'telemetry_raw' AND relkind = 'v'"),
                     1);
    assert_int_equal(mht_db_num(&old, "SELECT count(*) FROM pg_class WHERE relname LIKE"
                                      " 'telemetry_raw_%%' OR relname LIKE 'telemetry_blocks_v1%%'"
                                      " OR relname = 'telemetry_blocks_p0'"),
                     0);
    assert_int_equal(mht_db_num(&old, "SELECT count(*) FROM ingest.telemetry_blocks_hour WHERE"
                                      " device_id = 'up-3' AND hours = 1 AND n = 2 AND data ="
                                      " '\\x0102'"),
                     1);
    assert_int_equal(mht_db_num(&old, "SELECT count(*) FROM ingest.telemetry_raw"), 3);
    assert_int_equal(mht_db_num(&old,
                                "SELECT count(*) FROM ingest.telemetry_raw WHERE"
                                " (device_id, metric, value) IN (('up-1', 'temp', 21.5),"
                                " ('up-1', 'hum', 0), ('up-2', 'temp', 1e300)) AND ts ="
                                " to_timestamp((%" PRId64 " + (device_id = 'up-2')::int) / 1000.0)",
                                t),
                     3);
    assert_int_equal(mht_stop(ing.pid, SIGTERM, 20000), 0);
    mht_db_drop(&old);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mosquitto_pub_lands_as_rows),
        cmocka_unit_test(test_protobuf_topic),
        cmocka_unit_test(test_rollups_agree_with_raw),
        cmocka_unit_test(test_rollup_never_holds_a_write),
        cmocka_unit_test(test_malformed_rejected_counted_nothing_stored),
        cmocka_unit_test(test_too_old_dropped_and_counted),
        cmocka_unit_test(test_ingest_batch_stored_once),
        cmocka_unit_test(test_partitions_and_retention),
        cmocka_unit_test(test_upgrade_moves_the_old_raw_tier),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
