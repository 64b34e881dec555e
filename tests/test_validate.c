/* Unit tests of the gateway's validators against every rule of the device
 * protocol's Connection and Telemetry sections. */
#include "mh_test.h"

#include "gw_validate.h"
#include "telemetry.pb-c.h"

#define NOW 1800000000000LL

static gw_reason_t s_json(const char *payload, gw_points_t *p)
{
    char detail[256];
    gw_reason_t r =
        gw_validate_telemetry_json(payload, strlen(payload), NOW, p, detail, sizeof detail);
    if (r)
        assert_true(strlen(detail) > 0); /* every rejection explains itself */
    return r;
}

static void test_topics(void **state)
{
    (void)state;
    char id[GW_MAX_ID + 1];
    gw_topic_kind_t k;
#define T(s) gw_topic_parse(s, strlen(s), id, &k)
    assert_int_equal(T("devices/dev-1/telemetry"), GW_OK);
    assert_string_equal(id, "dev-1");
    assert_int_equal(k, GW_TOPIC_TELEMETRY);
    assert_int_equal(T("devices/a.b_C-9/telemetry/pb"), GW_OK);
    assert_int_equal(k, GW_TOPIC_TELEMETRY_PB);
    assert_int_equal(T("devices/x/status"), GW_OK);
    assert_int_equal(k, GW_TOPIC_STATUS);
    assert_int_equal(T("devices/x/telemetry/extra"), GW_BAD_TOPIC);
    assert_int_equal(T("devices/x"), GW_BAD_TOPIC);
    assert_int_equal(T("device/x/telemetry"), GW_BAD_TOPIC);
    assert_int_equal(T("devices//telemetry"), GW_BAD_DEVICE_ID);
    assert_int_equal(T("devices/bad id/telemetry"), GW_BAD_DEVICE_ID);
    assert_int_equal(T("devices/bad+id/telemetry"), GW_BAD_DEVICE_ID);
    assert_int_equal(T("devices/ümlaut/telemetry"), GW_BAD_DEVICE_ID);
    char long_id[200] = "devices/";
    memset(long_id + 8, 'a', 65);
    strcpy(long_id + 8 + 65, "/telemetry");
    assert_int_equal(T(long_id), GW_BAD_DEVICE_ID);
    long_id[8 + 64] = '/';
    strcpy(long_id + 8 + 64, "/telemetry");
    assert_int_equal(T(long_id), GW_OK);
    assert_int_equal(strlen(id), 64);
    /* the AWS IoT shadow requests, as published and as the broker plugin
     * moves them */
    assert_int_equal(T("$aws/things/dev-1/shadow/update"), GW_OK);
    assert_string_equal(id, "dev-1");
    assert_int_equal(k, GW_TOPIC_SHADOW_UPDATE);
    assert_int_equal(T("motehub/aws/things/dev-2/shadow/name/cfg:a_b-1/get"), GW_OK);
    assert_string_equal(id, "dev-2");
    assert_int_equal(k, GW_TOPIC_SHADOW_GET);
    char name[GW_MAX_SHADOW_NAME + 1];
    const char *t = "$aws/things/x/shadow/name/n1/delete";
    assert_int_equal(gw_aws_topic_parse(t, strlen(t), id, name, &k), GW_OK);
    assert_string_equal(name, "n1");
    assert_int_equal(k, GW_TOPIC_SHADOW_DELETE);
    t = "$aws/things/x/shadow/get";
    assert_int_equal(gw_aws_topic_parse(t, strlen(t), id, name, &k), GW_OK);
    assert_string_equal(name, "");
    assert_int_equal(T("$aws/things/x/shadow/update/accepted"), GW_BAD_TOPIC);
    assert_int_equal(T("$aws/things/x/shadow/name//get"), GW_BAD_TOPIC);
    assert_int_equal(T("$aws/things/x/shadow/name/a.b/get"), GW_BAD_TOPIC);
    assert_int_equal(T("$aws/things/x/shadow/name/n"), GW_BAD_TOPIC);
    /* the jobs requests: get, start-next, {jobId}/get and /update, $next/get */
    const char *jobs[] = {"get", "start-next", "$next/get", "job-1_a/get", "job-1_a/update"};
    for (size_t i = 0; i < sizeof jobs / sizeof *jobs; i++) {
        char topic[128];
        snprintf(topic, sizeof topic, "$aws/things/x/jobs/%s", jobs[i]);
        assert_int_equal(gw_aws_topic_parse(topic, strlen(topic), id, name, &k), GW_OK);
        assert_int_equal(k, GW_TOPIC_JOBS);
        assert_string_equal(name, jobs[i]);
    }
    assert_int_equal(T("$aws/things/x/jobs/notify-next"), GW_BAD_TOPIC);
    assert_int_equal(T("$aws/things/x/jobs/get/accepted"), GW_BAD_TOPIC);
    assert_int_equal(T("$aws/things/x/jobs/$next/update"), GW_BAD_TOPIC);
    assert_int_equal(T("$aws/things/x/jobs/a.b/update"), GW_BAD_TOPIC);
    assert_int_equal(T("$aws/things/x/jobs/j/delete"), GW_BAD_TOPIC);
    assert_int_equal(T("$aws/things/bad+id/shadow/get"), GW_BAD_DEVICE_ID);
    assert_int_equal(T("$SYS/broker/uptime"), GW_BAD_TOPIC);
    assert_int_equal(T("motehub/aws/x"), GW_BAD_TOPIC);
    /* fleet provisioning, as the broker plugin moves it: the claim's client */
    char tpl[GW_MAX_AWS_ARG + 1];
    t = "motehub/aws/provision/claim:line-1/certificates/create/json";
    assert_int_equal(gw_provision_topic_parse(t, strlen(t), id, tpl, &k), GW_OK);
    assert_string_equal(id, "claim:line-1");
    assert_int_equal(k, GW_TOPIC_PROVISION_CREATE);
    assert_int_equal(T("motehub/aws/provision/claim:a/certificates/create-from-csr/json"), GW_OK);
    assert_int_equal(k, GW_TOPIC_PROVISION_CSR);
    t = "motehub/aws/provision/claim:a/provisioning-templates/factory_1-b/provision/json";
    assert_int_equal(gw_provision_topic_parse(t, strlen(t), id, tpl, &k), GW_OK);
    assert_int_equal(k, GW_TOPIC_PROVISION_REGISTER);
    assert_string_equal(tpl, "factory_1-b");
    /* not a claim, a bad template name, a reply, an unknown request */
    assert_int_equal(T("motehub/aws/provision/dev-1/certificates/create/json"), GW_BAD_DEVICE_ID);
    assert_int_equal(T("motehub/aws/provision/claim:/certificates/create/json"), GW_BAD_DEVICE_ID);
    assert_int_equal(T("motehub/aws/provision/claim:a+b/certificates/create/json"),
                     GW_BAD_DEVICE_ID);
    assert_int_equal(T("motehub/aws/provision/claim:a/provisioning-templates/a.b/provision/json"),
                     GW_BAD_TOPIC);
    assert_int_equal(T("motehub/aws/provision/claim:a/provisioning-templates//provision/json"),
                     GW_BAD_TOPIC);
    assert_int_equal(T("motehub/aws/provision/claim:a/certificates/create/json/accepted"),
                     GW_BAD_TOPIC);
    assert_int_equal(T("motehub/aws/provision/claim:a/certificates/create/cbor"), GW_BAD_TOPIC);
#undef T
}

static void test_json_accepts(void **state)
{
    (void)state;
    gw_points_t p = {0};
    assert_int_equal(
        s_json("{\"ts\":1799999999000,\"seq\":4,\"temp\":21.5,\"on\":true,\"n\":3}", &p), GW_OK);
    assert_int_equal(p.n, 3);
    for (size_t i = 0; i < p.n; i++) {
        assert_int_equal(p.v[i].ts_ms, 1799999999000LL);
        const char *m = gw_point_metric(&p, &p.v[i]);
        if (strcmp(m, "temp") == 0)
            assert_true(p.v[i].value == 21.5);
        else if (strcmp(m, "on") == 0)
            assert_true(p.v[i].value == 1.0);
        else
            assert_string_equal(m, "n");
    }
    gw_points_reset(&p);
    /* no ts: the receive time is used */
    assert_int_equal(s_json("{\"a.b_c\":false}", &p), GW_OK);
    assert_int_equal(p.v[0].ts_ms, NOW);
    assert_true(p.v[0].value == 0.0);
    gw_points_reset(&p);
    /* an array of samples, exactly at the 1,000 limit */
    size_t cap = 1000 * 24 + 16;
    char *big = malloc(cap), *w = big;
    *w++ = '[';
    for (int i = 0; i < 1000; i++)
        w += sprintf(w, "%s{\"ts\":%d,\"v\":%d}", i ? "," : "", 1000 + i, i);
    strcpy(w, "]");
    assert_int_equal(s_json(big, &p), GW_OK);
    assert_int_equal(p.n, 1000);
    gw_points_reset(&p);
    /* 1 hour ahead is still fine */
    char edge[96];
    snprintf(edge, sizeof edge, "{\"ts\":%lld,\"x\":1}", NOW + GW_MAX_FUTURE_MS);
    assert_int_equal(s_json(edge, &p), GW_OK);
    free(big);
    gw_points_free(&p);
}

/* The fast path (gw_fastjson.c) takes the common shape and agrees with
 * the full parser point for point; everything else it leaves to it. */
static void test_json_fast_path(void **state)
{
    (void)state;
    const int64_t now = 1800000000000LL;
    const char *takes[] = {
        "{\"ts\":1796252260635,\"seq\":0,\"temperature\":18.94,\"humidity\":52.6,\"battery\":72}",
        " { \"door_open\" : true ,\"b\":false,\"x\":-0,\"y\":-0.0,\"z\":1e-400,\"w\":-12.5E+3 } \n",
        "{\"v\":123456789012345678,\"ts\":0}",
    };
    for (size_t i = 0; i < sizeof takes / sizeof *takes; i++) {
        gw_points_t fast = {0}, full = {0};
        size_t len = strlen(takes[i]);
        assert_true(gw_telemetry_json_fast(takes[i], len, now, &fast));
        assert_int_equal(gw_validate_telemetry_json_full(takes[i], len, now, &full, NULL, 0),
                         GW_OK);
        assert_int_equal(fast.n, full.n);
        for (size_t k = 0; k < fast.n; k++) {
            assert_string_equal(gw_point_metric(&fast, &fast.v[k]),
                                gw_point_metric(&full, &full.v[k]));
            assert_int_equal(fast.v[k].ts_ms, full.v[k].ts_ms);
            assert_memory_equal(&fast.v[k].value, &full.v[k].value, sizeof(double));
        }
        gw_points_free(&fast);
        gw_points_free(&full);
    }
    /* left to the full parser: arrays, escapes, null, strings, nesting,
     * duplicates, overflow, big or leading-zero integers, bad ts/seq,
     * bad names, no metric, trailing bytes */
    const char *leaves[] = {
        "[{\"v\":1}]",
        "{\"v\\u0041\":1}",
        "{\"v\":null}",
        "{\"v\":\"1\"}",
        "{\"v\":{\"a\":1}}",
        "{\"v\":1,\"v\":2}",
        "{\"ts\":1,\"ts\":1,\"v\":1}",
        "{\"v\":1e999}",
        "{\"v\":1234567890123456789012}",
        "{\"v\":01}",
        "{\"ts\":1.5,\"v\":1}",
        "{\"ts\":-1,\"v\":1}",
        "{\"ts\":1900000000000,\"v\":1}",
        "{\"seq\":-1,\"v\":1}",
        "{\"bad name\":1}",
        "{}",
        "{\"ts\":1}",
        "{\"v\":1} x",
        "{\"v\":1,}",
        "{\"v\":tru}",
        "",
    };
    for (size_t i = 0; i < sizeof leaves / sizeof *leaves; i++) {
        gw_points_t p = {0};
        assert_false(gw_telemetry_json_fast(leaves[i], strlen(leaves[i]), now, &p));
        assert_int_equal(p.n, 0);
        gw_points_free(&p);
    }
}

static void test_json_rejects(void **state)
{
    (void)state;
    gw_points_t p = {0};
    /* a good message first: a later rejection must leave its points alone */
    assert_int_equal(s_json("{\"keep\":1}", &p), GW_OK);
    struct {
        const char *payload;
        gw_reason_t want;
    } cases[] = {
        {"not json", GW_BAD_JSON},
        {"{\"a\":1", GW_BAD_JSON},
        {"{\"a\":1,\"a\":2}", GW_BAD_JSON},    /* duplicate key */
        {"{\"a\":\"\xff\xfe\"}", GW_BAD_JSON}, /* invalid UTF-8 */
        {"{\"a\":NaN}", GW_BAD_JSON},
        {"{\"a\":99999999999999999999999}", GW_BAD_JSON}, /* integer overflow */
        {"42", GW_BAD_SHAPE},
        {"\"text\"", GW_BAD_SHAPE},
        {"[1,2]", GW_BAD_SHAPE},
        {"[{\"a\":1},[]]", GW_BAD_SHAPE},
        {"[]", GW_EMPTY},
        {"{}", GW_EMPTY},
        {"{\"ts\":1799999999000}", GW_EMPTY},
        {"{\"bad name\":1}", GW_BAD_METRIC_NAME},
        {"{\"bad-dash\":1}", GW_BAD_METRIC_NAME},
        {"{\"\":1}", GW_BAD_METRIC_NAME},
        {"{\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\":1}",
         GW_BAD_METRIC_NAME},
        {"{\"a\":\"21.5\"}", GW_BAD_VALUE},
        {"{\"a\":null}", GW_BAD_VALUE},
        {"{\"a\":{\"b\":1}}", GW_BAD_VALUE},
        {"{\"a\":[1]}", GW_BAD_VALUE},
        {"{\"ts\":\"now\",\"a\":1}", GW_BAD_TS},
        {"{\"ts\":1.5,\"a\":1}", GW_BAD_TS},
        {"{\"ts\":-5,\"a\":1}", GW_BAD_TS},
        {"{\"ts\":1900000000000,\"a\":1}", GW_FUTURE_TS},
        {"{\"seq\":-1,\"a\":1}", GW_BAD_SEQ},
        {"{\"seq\":\"1\",\"a\":1}", GW_BAD_SEQ},
        {"[{\"a\":1},{\"b\":\"x\"}]", GW_BAD_VALUE}, /* one bad sample rejects the message */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gw_reason_t r = s_json(cases[i].payload, &p);
        if (r != cases[i].want)
            fail_msg("payload %s: got %s, want %s", cases[i].payload, gw_reason_name(r),
                     gw_reason_name(cases[i].want));
        assert_int_equal(p.n, 1);
    }
    /* 1,001 samples */
    size_t cap = 1001 * 16 + 16;
    char *big = malloc(cap), *w = big;
    *w++ = '[';
    for (int i = 0; i < 1001; i++)
        w += sprintf(w, "%s{\"v\":%d}", i ? "," : "", i);
    strcpy(w, "]");
    assert_int_equal(s_json(big, &p), GW_TOO_MANY_SAMPLES);
    free(big);
    /* over 256 KiB */
    size_t n = GW_MAX_PAYLOAD + 1;
    char *huge = malloc(n + 1);
    memset(huge, ' ', n);
    huge[0] = '{';
    memcpy(huge + n - 7, "\"a\":1}", 6);
    huge[n] = 0;
    char detail[128];
    assert_int_equal(gw_validate_telemetry_json(huge, n, NOW, &p, detail, sizeof detail),
                     GW_TOO_LARGE);
    free(huge);
    assert_int_equal(p.n, 1);
    assert_string_equal(gw_point_metric(&p, &p.v[0]), "keep");
    gw_points_free(&p);
}

static size_t s_pack(Mh__DeviceTelemetry *t, uint8_t *buf)
{
    return mh__device_telemetry__pack(t, buf);
}

static void test_protobuf(void **state)
{
    (void)state;
    Mh__DeviceMetric m1 = MH__DEVICE_METRIC__INIT, m2 = MH__DEVICE_METRIC__INIT;
    m1.name = "temp";
    m1.value_case = MH__DEVICE_METRIC__VALUE_NUMBER;
    m1.number = 20.25;
    m2.name = "door";
    m2.value_case = MH__DEVICE_METRIC__VALUE_FLAG;
    m2.flag = 1;
    Mh__DeviceMetric *ms[] = {&m1, &m2};
    Mh__DeviceSample s = MH__DEVICE_SAMPLE__INIT;
    s.ts = 1799999999123;
    s.metrics = ms;
    s.n_metrics = 2;
    Mh__DeviceSample *ss[] = {&s};
    Mh__DeviceTelemetry t = MH__DEVICE_TELEMETRY__INIT;
    t.samples = ss;
    t.n_samples = 1;
    uint8_t buf[512];
    size_t n = s_pack(&t, buf);
    gw_points_t p = {0};
    char d[256];
    assert_int_equal(gw_validate_telemetry_pb(buf, n, NOW, &p, d, sizeof d), GW_OK);
    assert_int_equal(p.n, 2);
    assert_true(p.v[1].value == 1.0);
    assert_int_equal(p.v[0].ts_ms, 1799999999123LL);
    /* garbage */
    assert_int_equal(
        gw_validate_telemetry_pb((const uint8_t *)"\xff\xff\xff", 3, NOW, &p, d, sizeof d),
        GW_BAD_PROTOBUF);
    /* bad name, missing value, future ts, non-finite value, empty */
    m1.name = "bad name";
    n = s_pack(&t, buf);
    assert_int_equal(gw_validate_telemetry_pb(buf, n, NOW, &p, d, sizeof d), GW_BAD_METRIC_NAME);
    m1.name = "temp";
    m1.value_case = MH__DEVICE_METRIC__VALUE__NOT_SET;
    n = s_pack(&t, buf);
    assert_int_equal(gw_validate_telemetry_pb(buf, n, NOW, &p, d, sizeof d), GW_BAD_VALUE);
    m1.value_case = MH__DEVICE_METRIC__VALUE_NUMBER;
    m1.number = 1.0 / 0.0;
    n = s_pack(&t, buf);
    assert_int_equal(gw_validate_telemetry_pb(buf, n, NOW, &p, d, sizeof d), GW_BAD_VALUE);
    m1.number = 1;
    s.ts = NOW + GW_MAX_FUTURE_MS + 1;
    n = s_pack(&t, buf);
    assert_int_equal(gw_validate_telemetry_pb(buf, n, NOW, &p, d, sizeof d), GW_FUTURE_TS);
    t.n_samples = 0;
    n = s_pack(&t, buf);
    assert_int_equal(gw_validate_telemetry_pb(buf, n, NOW, &p, d, sizeof d), GW_EMPTY);
    assert_int_equal(p.n, 2); /* rejections added nothing */
    gw_points_free(&p);
}

static void test_status(void **state)
{
    (void)state;
    bool online = false;
    char d[128];
#define S(x) gw_validate_status(x, strlen(x), &online, NULL, d, sizeof d)
    assert_int_equal(S("{\"state\":\"online\",\"firmware\":\"1.0.0\",\"ip\":\"10.0.0.1\"}"), GW_OK);
    assert_true(online);
    assert_int_equal(S("{\"state\":\"offline\"}"), GW_OK);
    assert_false(online);
    assert_int_equal(S("{\"state\":\"sleeping\"}"), GW_BAD_STATUS);
    assert_int_equal(S("{\"state\":1}"), GW_BAD_STATUS);
    assert_int_equal(S("{\"state\":\"online\",\"firmware\":2}"), GW_BAD_STATUS);
    assert_int_equal(S("[]"), GW_BAD_STATUS);
    assert_int_equal(S("online"), GW_BAD_JSON);
#undef S
}

static void test_ota_status(void **state)
{
    (void)state;
    char d[128];
    char id[80];
    gw_topic_kind_t kind;
    const char *t = "devices/d-1/ota/status";
    assert_int_equal(gw_topic_parse(t, strlen(t), id, &kind), GW_OK);
    assert_int_equal(kind, GW_TOPIC_OTA_STATUS);
#define S(x) gw_validate_ota_status(x, strlen(x), d, sizeof d)
    assert_int_equal(S("{\"jobId\":\"j1\",\"state\":\"downloading\",\"progress\":40}"), GW_OK);
    assert_int_equal(S("{\"jobId\":\"j1\",\"state\":\"failed\",\"error\":\"bad sha\","
                       "\"version\":\"2.1.0\"}"),
                     GW_OK);
    assert_int_equal(S("{\"state\":\"succeeded\"}"), GW_BAD_OTA_STATUS);
    assert_int_equal(S("{\"jobId\":\"j1\",\"state\":\"done\"}"), GW_BAD_OTA_STATUS);
    assert_int_equal(S("{\"jobId\":\"j1\",\"state\":\"installing\",\"progress\":101}"),
                     GW_BAD_OTA_STATUS);
    assert_int_equal(S("{\"jobId\":7,\"state\":\"installing\"}"), GW_BAD_OTA_STATUS);
    assert_int_equal(S("{\"jobId\":\"j\",\"state\":\"failed\",\"error\":5}"), GW_BAD_OTA_STATUS);
    assert_int_equal(S("{\"jobId\":"), GW_BAD_JSON);
    assert_string_equal(gw_reason_name(GW_BAD_OTA_STATUS), "bad_ota_status");
#undef S
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topics),       cmocka_unit_test(test_json_accepts),
        cmocka_unit_test(test_json_rejects), cmocka_unit_test(test_json_fast_path),
        cmocka_unit_test(test_protobuf),     cmocka_unit_test(test_status),
        cmocka_unit_test(test_ota_status),
    };
    return MHT_RUN(tests);
}
