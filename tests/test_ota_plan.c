/* The pure rollout rules: request checks, wave placement, the gate. */
#include "mh_test.h"

#include "ota_input.h"
#include "ota_plan.h"

static void test_spec_defaults(void **state)
{
    (void)state;
    ota_spec_t s;
    char why[256];
    assert_int_equal(ota_spec_parse("{\"firmware\":\"2.1.0\"}", &s, why, sizeof why), 0);
    assert_int_equal(s.nwaves, 3);
    assert_true(s.percents[0] == 1 && s.percents[1] == 10 && s.percents[2] == 100);
    assert_true(s.success_threshold == 0.95 && s.failure_threshold == 0.05);
    assert_int_equal(s.min_devices, 1);
    assert_int_equal(s.soak_s, 600);
    assert_int_equal(s.job_timeout_s, 3600);
    assert_int_equal(s.max_per_minute, 1000);
    assert_true(s.rollback_on_failure);
    ota_spec_clear(&s);
    /* the spec's own example */
    assert_int_equal(
        ota_spec_parse("{\"firmware\":\"2.1.0\",\"target\":{\"tags\":{\"model\":\"x1\"},"
                       "\"firmware\":\"2.0.0\"},\"waves\":[{\"percent\":1},{\"percent\":10},"
                       "{\"percent\":100}],\"successThreshold\":0.95,\"failureThreshold\":0.05,"
                       "\"minDevicesPerWave\":1,\"soakSeconds\":600,\"jobTimeoutSeconds\":3600,"
                       "\"maxPerMinute\":1000,\"onFailure\":\"pause\"}",
                       &s, why, sizeof why),
        0);
    assert_string_equal(s.target_firmware, "2.0.0");
    assert_string_equal(json_string_value(json_object_get(s.target_tags, "model")), "x1");
    assert_false(s.rollback_on_failure);
    json_t *norm = ota_spec_json(&s);
    assert_string_equal(json_string_value(json_object_get(norm, "onFailure")), "pause");
    json_decref(norm);
    ota_spec_clear(&s);
}

static void test_spec_rejects(void **state)
{
    (void)state;
    static const char *bad[] = {
        "{}",
        "{\"firmware\":\"\"}",
        "{\"firmware\":\"a b\"}",
        "{\"firmware\":\"1\",\"waves\":[{\"percent\":0},{\"percent\":100}]}",
        "{\"firmware\":\"1\",\"waves\":[{\"percent\":100},{\"percent\":100}]}",
        "{\"firmware\":\"1\",\"waves\":[{\"percent\":101}]}",
        "{\"firmware\":\"1\",\"waves\":[{\"percent\":50,\"x\":1},{\"percent\":100}]}",
        "{\"firmware\":\"1\",\"successThreshold\":\"0.9\"}",
        "{\"firmware\":\"1\",\"minDevicesPerWave\":0}",
        "{\"firmware\":\"1\",\"minDevicesPerWave\":1.5}",
        "{\"firmware\":\"1\",\"maxPerMinute\":0}",
        "{\"firmware\":\"1\",\"target\":{\"tags\":{\"a:b\":\"c\"}}}",
        "{\"firmware\":\"1\",\"target\":{\"model\":\"x\"}}",
        "{\"firmware\":\"1\",\"firmware\":\"2\"}",
        "nope",
        /* a job of a document: an object, not beside firmware, no rollback */
        "{\"document\":[1]}",
        "{\"document\":{\"a\":1},\"firmware\":\"1\"}",
        "{\"document\":{\"a\":1},\"onFailure\":\"rollback\"}",
        ("{\"document\":{\"a\":1},\"health\":{\"windowSeconds\":60,\"signals\":"
         "[{\"signal\":\"firmwareRollback\"}]}}"),
        /* stratifyBy: tag names, 1 to 8, none twice */
        "{\"firmware\":\"1\",\"stratifyBy\":[]}",
        "{\"firmware\":\"1\",\"stratifyBy\":\"model\"}",
        "{\"firmware\":\"1\",\"stratifyBy\":[\"model\",\"model\"]}",
        "{\"firmware\":\"1\",\"stratifyBy\":[\"a:b\"]}",
        "{\"firmware\":\"1\",\"stratifyBy\":[\"\"]}",
        "{\"firmware\":\"1\",\"stratifyBy\":[1]}",
        /* nine tags, one too many */
        ("{\"firmware\":\"1\",\"stratifyBy\":"
         "[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]}"),
        "{}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ota_spec_t s;
        char why[256] = "";
        if (ota_spec_parse(bad[i], &s, why, sizeof why) == 0)
            fail_msg("accepted %s", bad[i]);
        assert_true(strlen(why) > 5);
    }
}

/* A job of a document (AWS IoT Jobs): kept whole, no firmware, pause on
 * failure, and written back as "document". */
static void test_document_job(void **state)
{
    (void)state;
    ota_spec_t s;
    char why[256];
    assert_int_equal(ota_spec_parse("{\"document\":{\"operation\":\"reboot\",\"n\":[1,2]}}", &s,
                                    why, sizeof why),
                     0);
    assert_string_equal(s.firmware, "");
    assert_false(s.rollback_on_failure);
    json_t *j = ota_spec_json(&s);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "document"), "operation")), "reboot");
    assert_null(json_object_get(j, "firmware"));
    assert_string_equal(json_string_value(json_object_get(j, "onFailure")), "pause");
    json_decref(j);
    ota_spec_clear(&s);
}

static void test_waves(void **state)
{
    (void)state;
    ota_spec_t s;
    char why[256];
    assert_int_equal(ota_spec_parse("{\"firmware\":\"1\"}", &s, why, sizeof why), 0);
    /* 200 devices with 1/10/100: 2, 18, 180 */
    int sizes[3] = {0};
    for (size_t r = 0; r < 200; r++)
        sizes[ota_wave_of(&s, r, 200, 0)]++;
    assert_int_equal(sizes[0], 2);
    assert_int_equal(sizes[1], 18);
    assert_int_equal(sizes[2], 180);
    /* one device: it is the canary */
    assert_int_equal(ota_wave_of(&s, 0, 1, 0), 0);
    assert_int_equal(ota_wave_end(0.1, 1000), 1);
    assert_int_equal(ota_wave_end(1, 10001), 101);
    assert_int_equal(ota_wave_end(100, 7), 7);
    ota_spec_clear(&s);
    /* the order is by hash, the same for the same ids in any input order */
    char *a[] = {"d-1", "d-2", "d-3", "d-4", "d-5"}, *b[] = {"d-5", "d-3", "d-1", "d-4", "d-2"};
    ota_order_devices(a, NULL, 5);
    ota_order_devices(b, NULL, 5);
    for (int i = 0; i < 5; i++) {
        assert_string_equal(a[i], b[i]);
        if (i)
            assert_true(ota_device_hash(a[i - 1]) <= ota_device_hash(a[i]));
    }
}

/* A stratified canary: wave 1 (1 % of 1,000 = 10 devices by hash) grows
 * to hold every model, every region and every firmware present — the rare
 * ones by the first device in hash order that has them — and the rest keep
 * their hash order. */
static void test_stratify(void **state)
{
    (void)state;
    enum { N = 1000 };
    char *ids[N], *fw[N];
    json_t *tags[N];
    for (int i = 0; i < N; i++) {
        assert_true(asprintf(&ids[i], "s-%04d", i) > 0);
        /* model: m1 mostly, m2 on 3 devices, m3 on 1; region: eu/us, ap on
         * 2; firmware 1.0 mostly, 0.9 on one, unknown on some */
        const char *model = i == 500 ? "m3" : i % 300 == 7 ? "m2" : "m1";
        const char *region = i == 10 || i == 990 ? "ap" : i % 2 ? "eu" : "us";
        fw[i] = i == 777 ? "0.9" : i % 50 == 3 ? NULL : "1.0";
        tags[i] = i == 42 ? json_object() /* no tags at all */
                          : json_pack("{s:s,s:s,s:i}", "model", model, "region", region, "n", i);
    }
    char *before[N];
    ota_order_devices(ids, NULL, 0); /* nothing to order: no crash */
    size_t perm[N];
    void *tmp[N];
    ota_order_perm(ids, N, perm);
    ota_permute((void **)ids, perm, N, tmp);
    ota_permute((void **)fw, perm, N, tmp);
    ota_permute((void **)tags, perm, N, tmp);
    memcpy(before, ids, sizeof before);
    ota_spec_t s;
    char why[256];
    assert_int_equal(ota_spec_parse("{\"firmware\":\"2\",\"waves\":[{\"percent\":1},"
                                    "{\"percent\":100}],\"stratifyBy\":[\"model\",\"region\"]}",
                                    &s, why, sizeof why),
                     0);
    json_t *spec = ota_spec_json(&s);
    assert_string_equal(json_string_value(json_array_get(json_object_get(spec, "stratifyBy"), 1)),
                        "region");
    json_decref(spec);
    size_t head = ota_wave_end(s.percents[0], N);
    assert_int_equal(head, 10);
    size_t first = ota_stratify(ids, fw, tags, N, head, s.stratify_by);
    /* every value present is in wave 1 */
    const char *want[][2] = {{"model", "m1"},  {"model", "m2"},  {"model", "m3"},
                             {"region", "eu"}, {"region", "us"}, {"region", "ap"}};
    for (size_t w = 0; w < 6; w++) {
        bool has = false;
        for (size_t i = 0; i < first; i++)
            has |= json_string_value(json_object_get(tags[i], want[w][0])) &&
                   strcmp(json_string_value(json_object_get(tags[i], want[w][0])), want[w][1]) == 0;
        if (!has)
            fail_msg("wave 1 (%zu devices) has no %s=%s", first, want[w][0], want[w][1]);
    }
    bool has09 = false;
    for (size_t i = 0; i < first; i++)
        has09 |= fw[i] && strcmp(fw[i], "0.9") == 0;
    assert_true(has09);
    /* grown beyond 10 by at most one a missing value (m2, m3, ap, 0.9) */
    assert_true(first > 10 && first <= 14);
    /* the first 10 are as they were, and the rest keep their hash order */
    for (size_t i = 0; i < 10; i++)
        assert_ptr_equal(ids[i], before[i]);
    for (size_t i = first + 1; i < N; i++)
        assert_true(ota_device_hash(ids[i - 1]) <= ota_device_hash(ids[i]));
    for (size_t i = 11; i < first; i++)
        assert_true(ota_device_hash(ids[i - 1]) <= ota_device_hash(ids[i]));
    /* waves: the first holds `first`, the second the rest */
    int sizes[2] = {0};
    for (size_t r = 0; r < N; r++)
        sizes[ota_wave_of(&s, r, N, first)]++;
    assert_int_equal(sizes[0], (int)first);
    assert_int_equal(sizes[1], N - (int)first);
    /* a value the first wave has already brings no one forward */
    assert_int_equal(ota_stratify(ids, fw, tags, N, first, s.stratify_by), first);
    /* without tags or firmware known nothing moves */
    assert_int_equal(ota_stratify(ids, NULL, NULL, N, 10, s.stratify_by), 10);
    ota_spec_clear(&s);
    for (int i = 0; i < N; i++) {
        free(ids[i]);
        json_decref(tags[i]);
    }
}

/* Health gates: specs checked, and the verdict against control. */
static void test_health_gate(void **state)
{
    (void)state;
    static const struct {
        const char *health, *says;
    } bad[] = {
        {"{\"signals\":[{\"signal\":\"disconnects\"}]}", "windowSeconds"},
        {"{\"windowSeconds\":0,\"signals\":[{\"signal\":\"disconnects\"}]}", "windowSeconds"},
        {"{\"windowSeconds\":1.5,\"signals\":[{\"signal\":\"disconnects\"}]}", "windowSeconds"},
        {"{\"windowSeconds\":60,\"signals\":[]}", "signals"},
        {"{\"windowSeconds\":60,\"signals\":[{\"signal\":\"vibes\"}]}", "unknown signal \"vibes\""},
        {"{\"windowSeconds\":60,\"tolerance\":-0.1,\"signals\":[{\"signal\":\"offline\"}]}",
         "tolerance"},
        {"{\"windowSeconds\":60,\"tolerance\":11,\"signals\":[{\"signal\":\"offline\"}]}",
         "tolerance"},
        {"{\"windowSeconds\":60,\"signals\":[{\"signal\":\"metric\"}]}", "metric"},
        {"{\"windowSeconds\":60,\"signals\":[{\"signal\":\"metric\",\"metric\":\"a b\"}]}",
         "metric"},
        {"{\"windowSeconds\":60,\"signals\":[{\"signal\":\"metric\",\"metric\":\"t\","
         "\"stat\":\"median\"}]}",
         "unknown stat \"median\""},
        {"{\"windowSeconds\":60,\"signals\":[{\"signal\":\"offline\",\"margin\":-1}]}", "margin"},
        {"{\"windowSeconds\":60,\"signals\":[{\"signal\":\"offline\",\"stat\":\"p95\"}]}",
         "belong"},
        {"{\"windowSeconds\":60,\"signals\":[{\"signal\":\"offline\",\"worse\":\"lower\"}]}",
         "worse"},
        {"{\"windowSeconds\":60,\"signals\":[{\"signal\":\"offline\",\"colour\":1}]}",
         "unknown field"},
        {"{\"windowSeconds\":60,\"colour\":1,\"signals\":[{\"signal\":\"offline\"}]}",
         "unknown field"},
        {"{\"windowSeconds\":60,\"signals\":[{\"signal\":\"metric\",\"metric\":\"t\"}]}",
         "at least 120"},
        {"{\"windowSeconds\":60,\"signals\":[{\"signal\":\"reboots\",\"key\":\"\"}]}", "key"},
        {"{\"windowSeconds\":60,\"signals\":[{\"signal\":\"offline\",\"key\":\"x\"}]}", "key"},
        {"[]", "health"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char spec[600], why[256] = "";
        snprintf(spec, sizeof spec, "{\"firmware\":\"1\",\"health\":%s}", bad[i].health);
        ota_spec_t s;
        if (ota_spec_parse(spec, &s, why, sizeof why) == 0)
            fail_msg("accepted %s", spec);
        if (!strstr(why, bad[i].says))
            fail_msg("%s: \"%s\" does not mention %s", spec, why, bad[i].says);
    }
    ota_spec_t s;
    char why[256];
    assert_int_equal(
        ota_spec_parse("{\"firmware\":\"1\",\"health\":{\"windowSeconds\":600,\"signals\":["
                       "{\"signal\":\"disconnects\"},{\"signal\":\"firmwareRollback\"},"
                       "{\"signal\":\"metric\",\"metric\":\"temperature\",\"stat\":\"p95\"},"
                       "{\"signal\":\"metric\",\"metric\":\"battery\",\"stat\":\"slope\","
                       "\"worse\":\"lower\",\"margin\":0.5}]}}",
                       &s, why, sizeof why),
        0);
    const ota_health_t *h = &s.health;
    assert_true(h->on);
    assert_int_equal(h->nsig, 4);
    assert_true(ota_health_needs_metrics(h));
    assert_true(h->tolerance == 0.2);
    assert_true(h->sig[0].margin == 1);                   /* a disconnect an hour */
    assert_true(h->sig[1].has_max && h->sig[1].max == 0); /* no device back */
    json_t *j = ota_spec_json(&s);
    json_t *hj = json_object_get(j, "health");
    assert_int_equal(json_integer_value(json_object_get(hj, "windowSeconds")), 600);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(hj, "signals"), 2), "stat")),
                        "p95");
    /* the normalised form parses to the same */
    char *text = json_dumps(j, JSON_COMPACT);
    ota_spec_t s2;
    assert_int_equal(ota_spec_parse(text, &s2, why, sizeof why), 0);
    assert_int_equal(s2.health.nsig, 4);
    assert_true(s2.health.sig[3].lower_worse && s2.health.sig[3].margin == 0.5);
    free(text);
    json_decref(j);
    ota_spec_clear(&s2);

    char reason[300];
    const ota_signal_t *temp = &h->sig[2];
    /* a heat wave: both groups run hot, the updated no hotter than
     * control allows (45 * 1.2) */
    assert_false(ota_signal_bad(h, temp, (ota_sample_t){52, 10}, (ota_sample_t){45, 90}, reason,
                                sizeof reason));
    /* hotter than control: bad, and the reason has both numbers */
    assert_true(ota_signal_bad(h, temp, (ota_sample_t){60, 10}, (ota_sample_t){45, 90}, reason,
                               sizeof reason));
    assert_non_null(strstr(reason, "60"));
    assert_non_null(strstr(reason, "45"));
    assert_non_null(strstr(reason, "temperature p95"));
    /* a crash loop: 40 disconnects an hour against none */
    assert_true(ota_signal_bad(h, &h->sig[0], (ota_sample_t){40, 3}, (ota_sample_t){0, 97}, reason,
                               sizeof reason));
    /* within the margin of a disconnect an hour */
    assert_false(ota_signal_bad(h, &h->sig[0], (ota_sample_t){0.9, 3}, (ota_sample_t){0, 97},
                                reason, sizeof reason));
    /* lower is worse: a battery draining faster than control */
    assert_true(ota_signal_bad(h, &h->sig[3], (ota_sample_t){-5, 3}, (ota_sample_t){-1, 97}, reason,
                               sizeof reason));
    assert_false(ota_signal_bad(h, &h->sig[3], (ota_sample_t){-1.4, 3}, (ota_sample_t){-1, 97},
                                reason, sizeof reason));
    /* one device back on its old version */
    assert_true(ota_signal_bad(h, &h->sig[1], (ota_sample_t){0.1, 10}, (ota_sample_t){0, 0}, reason,
                               sizeof reason));
    /* no control left: only a bound can fail it; nothing observed: nothing */
    assert_false(ota_signal_bad(h, temp, (ota_sample_t){90, 10}, (ota_sample_t){0, 0}, reason,
                                sizeof reason));
    assert_false(ota_signal_bad(h, temp, (ota_sample_t){0, 0}, (ota_sample_t){45, 9}, reason,
                                sizeof reason));
    ota_spec_clear(&s);
    /* reboots: the share of devices that reported a boot key in their
     * window, rebootCount unless named */
    assert_int_equal(ota_spec_parse("{\"firmware\":\"1\",\"health\":{\"windowSeconds\":60,"
                                    "\"signals\":[{\"signal\":\"reboots\"},{\"signal\":\"reboots\","
                                    "\"key\":\"resetReason\"}]}}",
                                    &s, why, sizeof why),
                     0);
    assert_string_equal(s.health.sig[0].metric, "rebootCount");
    assert_string_equal(s.health.sig[1].metric, "resetReason");
    assert_true(s.health.sig[0].margin == 0.05);
    assert_true(ota_signal_bad(&s.health, &s.health.sig[0], (ota_sample_t){0.5, 4},
                               (ota_sample_t){0.02, 36}, reason, sizeof reason));
    assert_non_null(strstr(reason, "reboots (rebootCount reported)"));
    assert_false(ota_signal_bad(&s.health, &s.health.sig[0], (ota_sample_t){0.05, 40},
                                (ota_sample_t){0.02, 360}, reason, sizeof reason));
    json_t *j2 = ota_spec_json(&s);
    assert_string_equal(
        json_string_value(json_object_get(
            json_array_get(json_object_get(json_object_get(j2, "health"), "signals"), 1), "key")),
        "resetReason");
    json_decref(j2);
    ota_spec_clear(&s);
}

static void test_decide(void **state)
{
    (void)state;
    ota_spec_t s;
    char why[256];
    assert_int_equal(ota_spec_parse("{\"firmware\":\"1\",\"soakSeconds\":10}", &s, why, sizeof why),
                     0);
    ota_wave_t w[3] = {{.targeted = 2, .pending = 2},
                       {.targeted = 18, .pending = 18},
                       {.targeted = 180, .pending = 180}};
    ota_decision_t d;
    ota_decide(&s, w, -1, -1, 1000, &d);
    assert_int_equal(d.start_wave, 0);
    /* canary running: nothing yet */
    w[0] = (ota_wave_t){.targeted = 2, .in_flight = 1, .succeeded = 1, .started_ms = 1000};
    ota_decide(&s, w, 0, -1, 2000, &d);
    assert_int_equal(d.start_wave, -1);
    assert_int_equal(d.ok_wave, -1);
    assert_int_equal(d.fail_wave, -1);
    /* both succeeded: ok now, soak 10 s before wave 2 */
    w[0].in_flight = 0;
    w[0].succeeded = 2;
    ota_decide(&s, w, 0, -1, 3000, &d);
    assert_int_equal(d.ok_wave, 0);
    assert_int_equal(d.start_wave, -1);
    w[0].ok_ms = 3000;
    ota_decide(&s, w, 0, -1, 12999, &d);
    assert_int_equal(d.start_wave, -1);
    ota_decide(&s, w, 0, -1, 13000, &d);
    assert_int_equal(d.start_wave, 1);
    /* one failure in 18 finished of wave 2 is over 5 %: stop */
    w[1] = (ota_wave_t){.targeted = 18, .succeeded = 17, .failed = 1, .started_ms = 13000};
    ota_decide(&s, w, 1, -1, 14000, &d);
    assert_int_equal(d.fail_wave, 1);
    assert_non_null(strstr(d.reason, "wave 2"));
    /* ... unless an operator accepted that wave */
    ota_decide(&s, w, 1, 1, 14000, &d);
    assert_int_equal(d.fail_wave, -1);
    /* timed out counts as failed; minDevicesPerWave holds the gate */
    ota_spec_clear(&s);
    assert_int_equal(
        ota_spec_parse("{\"firmware\":\"1\",\"minDevicesPerWave\":5}", &s, why, sizeof why), 0);
    w[1] = (ota_wave_t){.targeted = 18, .timed_out = 2, .succeeded = 2, .in_flight = 14};
    ota_decide(&s, w, 1, -1, 14000, &d);
    assert_int_equal(d.fail_wave, -1);
    w[1].succeeded = 3;
    w[1].in_flight = 13;
    ota_decide(&s, w, 1, -1, 14000, &d);
    assert_int_equal(d.fail_wave, 1);
    /* last wave finished: completed; below threshold earlier: stalled */
    w[1] = (ota_wave_t){.targeted = 18, .succeeded = 18, .ok_ms = 1};
    w[2] = (ota_wave_t){.targeted = 180, .succeeded = 179, .failed = 1};
    ota_spec_clear(&s);
    assert_int_equal(
        ota_spec_parse("{\"firmware\":\"1\",\"failureThreshold\":0.5}", &s, why, sizeof why), 0);
    ota_decide(&s, w, 2, -1, 20000, &d);
    assert_true(d.completed);
    w[1] = (ota_wave_t){.targeted = 18, .succeeded = 10, .failed = 8};
    ota_decide(&s, w, 1, -1, 20000, &d);
    assert_true(d.stalled);
    assert_int_equal(d.start_wave, -1);
    ota_spec_clear(&s);
}

/* A device's OTA status as ota reads it: states ranked, progress clamped
 * (1e300 once went through a cast to int), malformed ones refused. */
static void test_status_messages(void **state)
{
    (void)state;
    ota_status_msg_t m;
    const char *ok = "{\"jobId\":\"j-1\",\"state\":\"downloading\",\"progress\":40}";
    assert_int_equal(ota_status_parse(ok, strlen(ok), &m), 0);
    assert_string_equal(m.job, "j-1");
    assert_int_equal(m.rank, 1);
    assert_int_equal(m.progress, 40);
    const char *huge = "{\"jobId\":\"j-1\",\"state\":\"installing\",\"progress\":1e300}";
    assert_int_equal(ota_status_parse(huge, strlen(huge), &m), 0);
    assert_int_equal(m.progress, 100);
    const char *neg = "{\"jobId\":\"j-1\",\"state\":\"installing\",\"progress\":-1e300}";
    assert_int_equal(ota_status_parse(neg, strlen(neg), &m), 0);
    assert_int_equal(m.progress, 0);
    const char *done = "{\"jobId\":\"j-1\",\"state\":\"failed\",\"error\":\"bad signature\"}";
    assert_int_equal(ota_status_parse(done, strlen(done), &m), 0);
    assert_int_equal(m.rank, 3);
    assert_int_equal(m.progress, 100);
    assert_string_equal(m.error, "bad signature");
    const char *bad[] = {
        "",
        "[]",
        "{\"jobId\":\"j\"}",
        "{\"jobId\":\"j\",\"state\":\"done\"}",
        "{\"jobId\":\"\",\"state\":\"failed\"}",
        "{\"jobId\":7,\"state\":\"failed\"}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(ota_status_parse(bad[i], strlen(bad[i]), &m), -EINVAL);
}

/* The Range header of an image download, against a 1,000-byte image. */
static void test_ranges(void **state)
{
    (void)state;
    size_t from, to;
    assert_int_equal(ota_range_parse("bytes=0-99", 1000, &from, &to), 0);
    assert_true(from == 0 && to == 99);
    assert_int_equal(ota_range_parse("bytes=900-", 1000, &from, &to), 0);
    assert_true(from == 900 && to == 999);
    assert_int_equal(ota_range_parse("bytes=-100", 1000, &from, &to), 0);
    assert_true(from == 900 && to == 999);
    assert_int_equal(ota_range_parse("bytes=-5000", 1000, &from, &to), 0);
    assert_true(from == 0 && to == 999);
    assert_int_equal(ota_range_parse("bytes=500-5000", 1000, &from, &to), 0);
    assert_true(from == 500 && to == 999);
    const char *bad[] = {"bytes=1000-", "bytes=5-3",  "bytes=-0",   "bytes=0-1,5-9",
                         "bytes=--5",   "bytes=-1-5", "bytes= 0-9", "bytes=0-9x",
                         "items=0-9",   "bytes=",     "bytes=+1-2", "bytes=99999999999999999999-"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (ota_range_parse(bad[i], 1000, &from, &to) == 0)
            fail_msg("took %s", bad[i]);
    assert_int_equal(ota_range_parse("bytes=0-0", 0, &from, &to), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_defaults), cmocka_unit_test(test_spec_rejects),
        cmocka_unit_test(test_waves),         cmocka_unit_test(test_document_job),
        cmocka_unit_test(test_decide),        cmocka_unit_test(test_status_messages),
        cmocka_unit_test(test_ranges),        cmocka_unit_test(test_stratify),
        cmocka_unit_test(test_health_gate),
    };
    return MHT_RUN(tests);
}
