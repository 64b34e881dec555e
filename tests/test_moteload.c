/* moteload, the light load generator (tools/moteload), against a real
 * mosquitto: what a benchmark relies on — one connection and client id a
 * device, the rate it was asked for, every message acknowledged and
 * received, payloads the gateway accepts (motesim's readings, increasing
 * ts and seq per device), and with --twin every update answered — and its
 * MQTT framing unit by unit. */
#include "mh_test.h"
#include "ml_mqtt.h"
#include "gw_validate.h"
#include "mh_time.h"

#include <inttypes.h>
#include <jansson.h>

static mht_broker_t s_broker;

static int s_setup(void **state)
{
    (void)state;
    mht_broker_start(&s_broker);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    mht_broker_stop(&s_broker);
    return 0;
}

/* runs moteload with `args`; its last line (moteload: ...) in out */
static int s_moteload(const char *args, char *out, size_t len)
{
    char bin[512], cmd[1400];
    mht_build_path("tools/moteload/moteload", bin, sizeof bin);
    snprintf(cmd, sizeof cmd, "%s %s 2>>'%s/moteload.log'", bin, args, mht_artifacts());
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    out[0] = 0;
    char line[1024];
    while (fgets(line, sizeof line, p))
        if (strncmp(line, "moteload:", 9) == 0)
            snprintf(out, len, "%s", line);
    int rc = pclose(p);
    if (*out)
        print_message("# %s", out);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static uint64_t s_field(const char *line, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, " %s=", name);
    const char *p = strstr(line, key);
    assert_non_null(p);
    return strtoull(p + strlen(key), NULL, 10);
}

static void test_publishes_what_was_asked(void **state)
{
    (void)state;
    char sub_out[600], args[300], line[1024];
    snprintf(sub_out, sizeof sub_out, "%s/moteload-sub.txt", mht_artifacts());
    char port[16];
    snprintf(port, sizeof port, "%d", s_broker.port);
    /* a subscriber that prints topic and payload of every message */
    char *const sub_argv[] = {"sh",
                              "-c",
                              "exec mosquitto_sub -h 127.0.0.1 -p \"$0\" -q 1 -v -i sink"
                              " -t 'devices/+/telemetry' > \"$1\"",
                              port,
                              sub_out,
                              NULL};
    pid_t sub = mht_spawn("moteload-sub", sub_argv);
    usleep(500 * 1000);
    snprintf(args, sizeof args,
             "--mqtt-url=tcp://127.0.0.1:%d --devices=300 --rate=3000 --duration=3s"
             " --metrics=3 --prefix=ld --report=0",
             s_broker.port);
    assert_int_equal(s_moteload(args, line, sizeof line), 0);
    uint64_t published = s_field(line, "published"), acked = s_field(line, "acked");
    /* the rate asked for, within 3 % */
    assert_true(published >= 8730 && published <= 9270);
    assert_int_equal(acked, published);
    assert_int_equal(s_field(line, "skipped"), 0);
    assert_int_equal(s_field(line, "dropped"), 0);
    usleep(500 * 1000);
    mht_stop(sub, SIGTERM, 5000);

    /* every message arrived, from 300 devices, each in order and valid */
    FILE *f = fopen(sub_out, "r");
    assert_non_null(f);
    int64_t last_ts[300], last_seq[300];
    for (int i = 0; i < 300; i++)
        last_ts[i] = last_seq[i] = -1;
    uint64_t got = 0, bad = 0;
    char *buf = NULL;
    size_t cap = 0;
    gw_points_t pts = {0};
    while (getline(&buf, &cap, f) > 0) {
        int dev = -1, at = 0;
        if (sscanf(buf, "devices/ld-%d/telemetry %n", &dev, &at) != 1 || dev < 0 || dev >= 300 ||
            !at) {
            bad++;
            continue;
        }
        const char *payload = buf + at;
        size_t len = strcspn(payload, "\n");
        char detail[200] = "";
        gw_points_reset(&pts);
        json_t *j = json_loadb(payload, len, 0, NULL);
        int64_t ts = json_integer_value(json_object_get(j, "ts"));
        int64_t seq = json_integer_value(json_object_get(j, "seq"));
        double temp = json_number_value(json_object_get(j, "temperature"));
        if (gw_validate_telemetry_json(payload, len, mh_now_ms(), &pts, detail, sizeof detail) !=
                GW_OK ||
            pts.n != 3 || !json_object_get(j, "humidity") || !json_object_get(j, "battery") ||
            temp < -20 || temp > 60 || ts <= last_ts[dev] || seq != last_seq[dev] + 1) {
            if (bad++ < 3)
                print_message("# unexpected: %.*s (%s)\n", (int)len, payload, detail);
        }
        last_ts[dev] = ts;
        last_seq[dev] = seq;
        json_decref(j);
        got++;
    }
    free(buf);
    fclose(f);
    gw_points_free(&pts);
    int devices = 0;
    for (int i = 0; i < 300; i++)
        devices += last_seq[i] >= 0;
    print_message("# the subscriber got %" PRIu64 " messages from %d devices, %" PRIu64 " bad\n",
                  got, devices, bad);
    assert_int_equal(got, acked);
    assert_int_equal(devices, 300);
    assert_int_equal(bad, 0);
}

/* no broker: a clear count of nothing connected, a failing exit, no hang */
static void test_no_broker(void **state)
{
    (void)state;
    char args[300], line[1024];
    snprintf(args, sizeof args,
             "--mqtt-url=tcp://127.0.0.1:%d --devices=20 --rate=100 --duration=1s"
             " --connect-timeout=2s --drain=1s --report=0",
             mht_free_port());
    assert_int_equal(s_moteload(args, line, sizeof line), 1);
    assert_int_equal(s_field(line, "published"), 0);
    assert_int_equal(s_moteload("--devices=0", line, sizeof line), 2);
    assert_int_equal(s_moteload("--mqtt-url=ssl://127.0.0.1:1 --devices=1", line, sizeof line), 2);
}

/* ---- the MQTT framing ---- */

static void test_frames_packets(void **state)
{
    (void)state;
    ml_packet_t p;
    /* CONNACK accepted, refused; PUBACK; a PINGRESP; a broker's PUBLISH skipped whole */
    const uint8_t connack[] = {0x20, 2, 0, 0}, refused[] = {0x20, 2, 0, 5},
                  puback[] = {0x40, 2, 0x12, 0x34}, ping[] = {0xd0, 0},
                  publish[] = {0x30, 0x80, 0x01}; /* 128 bytes to come */
    assert_int_equal(ml_mqtt_parse(connack, 4, 1024, &p), 4);
    assert_int_equal(p.type, ML_CONNACK);
    assert_int_equal(p.value, 0);
    assert_int_equal(ml_mqtt_parse(refused, 4, 1024, &p), 4);
    assert_int_equal(p.value, 5);
    assert_int_equal(ml_mqtt_parse(puback, 4, 1024, &p), 4);
    assert_int_equal(p.type, ML_PUBACK);
    assert_int_equal(p.value, 0x1234);
    assert_int_equal(ml_mqtt_parse(ping, 2, 1024, &p), 2);
    assert_int_equal(p.type, ML_PINGRESP);
    uint8_t big[131] = {0x30, 0x80, 0x01};
    assert_int_equal(ml_mqtt_parse(publish, 3, 1024, &p), 0); /* needs more */
    assert_int_equal(ml_mqtt_parse(big, 130, 1024, &p), 0);
    assert_int_equal(ml_mqtt_parse(big, 131, 1024, &p), 131);
    assert_int_equal(p.len, 128);
    /* every prefix of a packet needs more */
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(ml_mqtt_parse(puback, i, 1024, &p), 0);
    /* malformed: five length bytes, over the limit, bodies not two bytes, PUBACK id 0 */
    const uint8_t five[] = {0x40, 0x80, 0x80, 0x80, 0x80, 0x01}, over[] = {0x30, 0x80, 0x10},
                  long_ack[] = {0x40, 3, 0, 1, 0}, short_connack[] = {0x20, 1, 0},
                  zero[] = {0x40, 2, 0, 0};
    assert_int_equal(ml_mqtt_parse(five, sizeof five, 1024, &p), -1);
    assert_int_equal(ml_mqtt_parse(over, sizeof over, 1024, &p), -1);
    assert_int_equal(ml_mqtt_parse(long_ack, sizeof long_ack, 1024, &p), -1);
    assert_int_equal(ml_mqtt_parse(short_connack, sizeof short_connack, 1024, &p), -1);
    assert_int_equal(ml_mqtt_parse(zero, sizeof zero, 1024, &p), -1);

    /* a PUBLISH at QoS 0 and at QoS 1: topic, packet id, payload */
    const uint8_t q0[] = {0x30, 7, 0, 3, 'a', '/', 'b', '{', '}'},
                  q1[] = {0x32, 9, 0, 3, 'a', '/', 'b', 0x00, 0x2a, '{', '}'};
    assert_int_equal(ml_mqtt_parse(q0, sizeof q0, 1024, &p), sizeof q0);
    assert_int_equal(p.type, ML_PUBLISH);
    assert_int_equal(p.value, 0);
    assert_int_equal(p.topic_len, 3);
    assert_memory_equal(p.topic, "a/b", 3);
    assert_int_equal(p.payload_len, 2);
    assert_memory_equal(p.payload, "{}", 2);
    assert_int_equal(ml_mqtt_parse(q1, sizeof q1, 1024, &p), sizeof q1);
    assert_int_equal(p.value, 42);
    assert_int_equal(p.payload_len, 2);
    assert_memory_equal(p.payload, "{}", 2);
    /* a SUBACK; malformed: QoS 3, a topic longer than the packet, QoS 1 id 0, SUBACK id 0 */
    const uint8_t suback[] = {0x90, 3, 0, 1, 0}, qos3[] = {0x36, 5, 0, 1, 'a', 0, 1},
                  long_topic[] = {0x30, 4, 0, 9, 'a', 'b'}, id0[] = {0x32, 5, 0, 1, 'a', 0, 0},
                  suback0[] = {0x90, 3, 0, 0, 0};
    assert_int_equal(ml_mqtt_parse(suback, sizeof suback, 1024, &p), sizeof suback);
    assert_int_equal(p.type, ML_SUBACK);
    assert_int_equal(p.value, 1);
    assert_int_equal(ml_mqtt_parse(qos3, sizeof qos3, 1024, &p), -1);
    assert_int_equal(ml_mqtt_parse(long_topic, sizeof long_topic, 1024, &p), -1);
    assert_int_equal(ml_mqtt_parse(id0, sizeof id0, 1024, &p), -1);
    assert_int_equal(ml_mqtt_parse(suback0, sizeof suback0, 1024, &p), -1);
}

static void test_encodes_packets(void **state)
{
    (void)state;
    uint8_t b[300];
    const uint8_t connect[] = {0x10, 14, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 2, 'd', '1'};
    assert_int_equal(ml_mqtt_connect(b, sizeof b, "d1", 60), sizeof connect);
    assert_memory_equal(b, connect, sizeof connect);
    const uint8_t pub[] = {0x32, 9, 0, 3, 't', '/', 'x', 0x01, 0x02, '{', '}'};
    assert_int_equal(ml_mqtt_publish(b, sizeof b, "t/x", 3, 0x0102, "{}", 2), sizeof pub);
    assert_memory_equal(b, pub, sizeof pub);
    /* a remaining length of two bytes */
    char payload[200];
    memset(payload, 'a', sizeof payload);
    size_t n = ml_mqtt_publish(b, sizeof b, "t", 1, 7, payload, sizeof payload);
    assert_int_equal(n, 1 + 2 + 3 + 2 + 200);
    assert_int_equal(b[1], (205 & 0x7f) | 0x80);
    assert_int_equal(b[2], 1);
    /* what does not fit, and packet id 0, are refused */
    assert_int_equal(ml_mqtt_publish(b, 100, "t", 1, 7, payload, sizeof payload), 0);
    assert_int_equal(ml_mqtt_publish(b, sizeof b, "t", 1, 0, "{}", 2), 0);
    assert_int_equal(ml_mqtt_pingreq(b, sizeof b), 2);
    assert_int_equal(b[0], 0xc0);
    assert_int_equal(ml_mqtt_disconnect(b, 1), 0);
    /* SUBSCRIBE (flags 0010) to one filter at QoS 0; PUBACK */
    const uint8_t sub[] = {0x82, 8, 0, 1, 0, 3, 'a', '/', '+', 0};
    assert_int_equal(ml_mqtt_subscribe(b, sizeof b, 1, "a/+", 0), sizeof sub);
    assert_memory_equal(b, sub, sizeof sub);
    assert_int_equal(ml_mqtt_subscribe(b, sizeof b, 0, "a/+", 0), 0);
    const uint8_t ack[] = {0x40, 2, 0x01, 0x02};
    assert_int_equal(ml_mqtt_puback(b, sizeof b, 0x0102), sizeof ack);
    assert_memory_equal(b, ack, sizeof ack);
}

/* --twin against the platform: every update answered with update/accepted
 * carrying its token back, and each device's document holding the last
 * seq it reported */
static void test_twin_updates(void **state)
{
    (void)state;
    mht_platform_t p = {0};
    mht_platform_start(&p);
    mht_register_devices(p.twin.rpc_endpoint, "lt", 50);
    char args[600], line[1024];
    snprintf(args, sizeof args,
             "--mqtt-url=%s --prefix=lt --devices=50 --twin=true --rate=250 --duration=3s"
             " --report=0",
             p.broker.url);
    assert_int_equal(s_moteload(args, line, sizeof line), 0);
    uint64_t published = s_field(line, "published");
    assert_true(published >= 700);
    assert_int_equal(s_field(line, "accepted"), published);
    assert_int_equal(s_field(line, "rejected"), 0);
    assert_non_null(strstr(line, " accepted_p99_ms="));
    /* seq runs 0.. per device, so the devices' last ones add up to what was sent less 50 */
    assert_int_equal(mht_db_num(&p.db, "SELECT sum((doc->'state'->'reported'->>'seq')::bigint)"
                                       " FROM twin.devices WHERE id LIKE 'lt-%%'"),
                     (double)published - 50);
    assert_true(mht_platform_stop(&p));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frames_packets),
        cmocka_unit_test(test_encodes_packets),
        cmocka_unit_test(test_publishes_what_was_asked),
        cmocka_unit_test(test_no_broker),
        cmocka_unit_test(test_twin_updates),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
