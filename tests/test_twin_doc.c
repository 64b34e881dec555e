/* Unit tests of the twin document rules (device protocol, Twin section). */
#include "mh_test.h"

#include "tw_doc.h"
#include "tw_template.h"

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
    if (!v)
        fail_msg("bad test JSON %s: %s", text, e.text);
    return v;
}

static void s_expect(json_t *got, const char *want)
{
    json_t *w = J(want);
    if (!json_equal(got, w)) {
        char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        fail_msg("got %s, want %s", g, want);
    }
    json_decref(w);
}

static json_t *s_state(json_t *doc, const char *section)
{
    return json_object_get(json_object_get(doc, "state"), section);
}

static void test_new_document(void **state)
{
    (void)state;
    json_t *tags = J("{\"model\":\"x1\"}");
    json_t *doc = tw_doc_new(tags, 1000);
    s_expect(doc, "{\"state\":{\"desired\":{},\"reported\":{},\"delta\":{}},"
                  "\"metadata\":{\"desired\":{},\"reported\":{}},\"tags\":{\"model\":\"x1\"},"
                  "\"version\":1,\"timestamp\":1000}");
    json_decref(doc);
    json_decref(tags);
    doc = tw_doc_new(NULL, 5);
    s_expect(json_object_get(doc, "tags"), "{}");
    json_decref(doc);
}

/* Examples from RFC 7386, appendix A. */
static void test_merge_patch_rfc7386(void **state)
{
    (void)state;
    const char *cases[][3] = {
        {"{\"a\":\"b\"}", "{\"a\":\"c\"}", "{\"a\":\"c\"}"},
        {"{\"a\":\"b\"}", "{\"b\":\"c\"}", "{\"a\":\"b\",\"b\":\"c\"}"},
        {"{\"a\":\"b\"}", "{\"a\":null}", "{}"},
        {"{\"a\":\"b\",\"b\":\"c\"}", "{\"a\":null}", "{\"b\":\"c\"}"},
        {"{\"a\":[\"b\"]}", "{\"a\":\"c\"}", "{\"a\":\"c\"}"},
        {"{\"a\":\"c\"}", "{\"a\":[\"b\"]}", "{\"a\":[\"b\"]}"},
        {"{\"a\":{\"b\":\"c\"}}", "{\"a\":{\"b\":\"d\",\"c\":null}}", "{\"a\":{\"b\":\"d\"}}"},
        {"{\"a\":[{\"b\":\"c\"}]}", "{\"a\":[1]}", "{\"a\":[1]}"},
        {"[\"a\",\"b\"]", "[\"c\",\"d\"]", "[\"c\",\"d\"]"},
        {"{\"a\":\"b\"}", "[\"c\"]", "[\"c\"]"},
        {"{\"e\":null}", "{\"a\":1}", "{\"e\":null,\"a\":1}"},
        {"[1,2]", "{\"a\":\"b\",\"c\":null}", "{\"a\":\"b\"}"},
        {"{}", "{\"a\":{\"bb\":{\"ccc\":null}}}", "{\"a\":{\"bb\":{}}}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *target = J(cases[i][0]), *patch = J(cases[i][1]);
        tw_merge_patch(&target, patch);
        s_expect(target, cases[i][2]);
        json_decref(target);
        json_decref(patch);
    }
}

static void test_delta_recursive(void **state)
{
    (void)state;
    json_t *d = J("{\"a\":{\"b\":1,\"c\":2},\"mode\":\"eco\",\"same\":5,\"list\":[1,2]}");
    json_t *r = J("{\"a\":{\"b\":1,\"c\":3},\"same\":5,\"list\":[1,2],\"extra\":true}");
    json_t *delta = tw_delta(d, r);
    s_expect(delta, "{\"a\":{\"c\":2},\"mode\":\"eco\"}");
    json_decref(delta);
    json_decref(d);
    json_decref(r);
}

static void test_reported_patch_versions_and_delta(void **state)
{
    (void)state;
    json_t *doc = tw_doc_new(NULL, 1), *desired = J("{\"interval\":30,\"led\":{\"on\":true}}");
    bool changed;
    char why[200];
    assert_int_equal(tw_apply_operator(doc, desired, NULL, 10, &changed, why, sizeof why), TW_OK);
    assert_true(changed);
    assert_int_equal(tw_doc_version(doc), 2);
    s_expect(tw_doc_delta(doc), "{\"interval\":30,\"led\":{\"on\":true}}");

    json_t *p = J("{\"interval\":30,\"led\":{\"on\":false},\"firmware\":\"1.0.0\"}");
    assert_int_equal(tw_apply_reported(doc, p, 20, 2, &changed, why, sizeof why), TW_OK);
    assert_true(changed);
    assert_int_equal(tw_doc_version(doc), 3);
    s_expect(tw_doc_delta(doc), "{\"led\":{\"on\":true}}");
    s_expect(
        json_object_get(json_object_get(json_object_get(doc, "metadata"), "reported"), "firmware"),
        "{\"timestamp\":20}");
    /* the same values again change nothing: no new version */
    assert_int_equal(tw_apply_reported(doc, p, 21, -1, &changed, why, sizeof why), TW_OK);
    assert_false(changed);
    assert_int_equal(tw_doc_version(doc), 3);
    /* null deletes a key, nested objects merge */
    json_t *p2 = J("{\"firmware\":null,\"led\":{\"on\":true,\"color\":\"red\"}}");
    assert_int_equal(tw_apply_reported(doc, p2, 30, -1, &changed, why, sizeof why), TW_OK);
    s_expect(s_state(doc, "reported"), "{\"interval\":30,\"led\":{\"on\":true,\"color\":\"red\"}}");
    s_expect(tw_doc_delta(doc), "{}");
    assert_int_equal(tw_doc_version(doc), 4);
    json_decref(p);
    json_decref(p2);
    json_decref(desired);
    json_decref(doc);
}

static void test_version_conflict_changes_nothing(void **state)
{
    (void)state;
    json_t *doc = tw_doc_new(NULL, 1), *p = J("{\"a\":1}");
    json_t *before = json_deep_copy(doc);
    bool changed;
    char why[200];
    assert_int_equal(tw_apply_reported(doc, p, 5, 7, &changed, why, sizeof why), TW_CONFLICT);
    assert_false(changed);
    assert_non_null(strstr(why, "version"));
    assert_true(json_equal(doc, before));
    json_decref(p);
    json_decref(before);
    json_decref(doc);
}

static json_t *s_nested(int depth)
{
    json_t *v = json_integer(1);
    for (int i = 0; i < depth; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "k", v);
        v = o;
    }
    return v;
}

static void test_limits_413_change_nothing(void **state)
{
    (void)state;
    json_t *doc = tw_doc_new(NULL, 1);
    bool changed;
    char why[200];
    /* depth 8 is fine, depth 9 is refused */
    json_t *d8 = s_nested(8), *d9 = s_nested(9);
    assert_int_equal(tw_depth(d8), 8);
    assert_int_equal(tw_apply_reported(doc, d8, 1, -1, &changed, why, sizeof why), TW_OK);
    json_t *before = json_deep_copy(doc);
    json_t *wrap = json_pack("{s:O}", "deep", d9);
    assert_int_equal(tw_apply_reported(doc, wrap, 2, -1, &changed, why, sizeof why), TW_TOO_LARGE);
    assert_true(json_equal(doc, before));
    /* reported over 32 KiB */
    char *big = malloc(33 * 1024);
    memset(big, 'x', 33 * 1024 - 1);
    big[33 * 1024 - 1] = 0;
    json_t *bp = json_pack("{s:s}", "blob", big);
    assert_int_equal(tw_apply_reported(doc, bp, 3, -1, &changed, why, sizeof why), TW_TOO_LARGE);
    assert_true(json_equal(doc, before));
    /* desired over 32 KiB, tags over 8 KiB; a bad tags patch also keeps desired unchanged */
    assert_int_equal(tw_apply_operator(doc, bp, NULL, 4, &changed, why, sizeof why), TW_TOO_LARGE);
    big[9 * 1024] = 0;
    json_t *tp = json_pack("{s:s}", "t", big);
    json_t *ok_desired = J("{\"a\":1}");
    assert_int_equal(tw_apply_operator(doc, ok_desired, tp, 5, &changed, why, sizeof why),
                     TW_TOO_LARGE);
    assert_true(json_equal(doc, before));
    /* not an object */
    json_t *arr = J("[1]");
    assert_int_equal(tw_apply_reported(doc, arr, 6, -1, &changed, why, sizeof why), TW_BAD_REQUEST);
    assert_int_equal(tw_apply_operator(doc, NULL, NULL, 6, &changed, why, sizeof why),
                     TW_BAD_REQUEST);
    assert_true(json_equal(doc, before));
    free(big);
    json_decref(arr);
    json_decref(ok_desired);
    json_decref(tp);
    json_decref(bp);
    json_decref(wrap);
    json_decref(d8);
    json_decref(d9);
    json_decref(before);
    json_decref(doc);
}

/* Two gateways may deliver a device's updates out of order: per key, the
 * newer update (by ts) wins. */
static void test_out_of_order_reported_keys(void **state)
{
    (void)state;
    json_t *doc = tw_doc_new(NULL, 1);
    bool changed;
    char why[200];
    json_t *newer = J("{\"battery\":80,\"rssi\":-60}"), *older = J("{\"battery\":90,\"temp\":21}");
    assert_int_equal(tw_apply_reported(doc, newer, 2000, -1, &changed, why, sizeof why), TW_OK);
    assert_int_equal(tw_apply_reported(doc, older, 1000, -1, &changed, why, sizeof why), TW_OK);
    assert_true(changed); /* temp was new */
    s_expect(s_state(doc, "reported"), "{\"battery\":80,\"rssi\":-60,\"temp\":21}");
    json_decref(newer);
    json_decref(older);
    json_decref(doc);
}

static void test_operator_patch_tags_and_desired(void **state)
{
    (void)state;
    json_t *tags = J("{\"model\":\"x1\",\"site\":\"a\"}");
    json_t *doc = tw_doc_new(tags, 1);
    json_t *d = J("{\"mode\":\"eco\"}"), *t = J("{\"site\":null,\"floor\":3}");
    bool changed;
    char why[200];
    assert_int_equal(tw_apply_operator(doc, d, t, 50, &changed, why, sizeof why), TW_OK);
    assert_true(changed);
    assert_int_equal(tw_doc_version(doc), 2); /* one change, one version */
    s_expect(json_object_get(doc, "tags"), "{\"model\":\"x1\",\"floor\":3}");
    s_expect(s_state(doc, "desired"), "{\"mode\":\"eco\"}");
    s_expect(tw_doc_delta(doc), "{\"mode\":\"eco\"}");
    s_expect(json_object_get(doc, "timestamp"), "50");
    json_decref(tags);
    json_decref(d);
    json_decref(t);
    json_decref(doc);
}

/* An AWS shadow update: desired and reported in one version, a null
 * section cleared, a version mismatch changing nothing. */
static void test_shadow_update(void **state)
{
    (void)state;
    char why[256];
    bool changed = false;
    json_t *doc = tw_doc_new(NULL, 10);
    json_t *d = json_pack("{s:i}", "led", 1), *r = json_pack("{s:i,s:i}", "led", 0, "t", 5);
    assert_int_equal(tw_apply_shadow(doc, d, r, 20, 1, &changed, why, sizeof why), TW_OK);
    assert_true(changed);
    assert_int_equal(tw_doc_version(doc), 2);
    assert_int_equal(json_integer_value(json_object_get(tw_doc_delta(doc), "led")), 1);
    /* stale version: 409, nothing applied */
    json_t *r2 = json_pack("{s:i}", "t", 6);
    assert_int_equal(tw_apply_shadow(doc, NULL, r2, 30, 1, &changed, why, sizeof why), TW_CONFLICT);
    assert_false(changed);
    assert_int_equal(tw_doc_version(doc), 2);
    /* "desired": null clears the section */
    json_t *null = json_null();
    assert_int_equal(tw_apply_shadow(doc, null, NULL, 40, -1, &changed, why, sizeof why), TW_OK);
    assert_true(changed);
    assert_int_equal(json_object_size(json_object_get(json_object_get(doc, "state"), "desired")),
                     0);
    assert_int_equal(json_object_size(tw_doc_delta(doc)), 0);
    assert_int_equal(tw_doc_version(doc), 3);
    /* nothing new: no version */
    assert_int_equal(tw_apply_shadow(doc, NULL, r, 50, -1, &changed, why, sizeof why), TW_OK);
    assert_false(changed);
    assert_int_equal(tw_doc_version(doc), 3);
    json_decref(d);
    json_decref(r);
    json_decref(r2);
    json_decref(doc);
}

/* Provisioning templates, both spellings: what a device becomes from its
 * parameters, and each kind of bad template or parameter refused. */
static void test_templates(void **state)
{
    (void)state;
    char err[512];
    json_t *mh = J("{\"parameters\":{\"Serial\":{\"pattern\":\"[0-9]{4}\"},"
                   "\"Model\":{\"default\":\"m1\"}},\"thingName\":\"s-{Serial}\","
                   "\"tags\":{\"model\":\"{Model}\",\"fixed\":\"x\"},\"desired\":{\"i\":30},"
                   "\"deviceConfiguration\":{\"a\":\"{Model}-{Serial}\"}}");
    assert_true(tw_template_check(mh, err, sizeof err));
    assert_true(tw_template_enabled(mh));
    json_t *p = J("{\"Serial\":\"0042\"}"), *made = tw_template_apply(mh, p, err, sizeof err);
    s_expect(made, "{\"thingName\":\"s-0042\",\"tags\":{\"model\":\"m1\",\"fixed\":\"x\"},"
                   "\"desired\":{\"i\":30},\"deviceConfiguration\":{\"a\":\"m1-0042\"}}");
    json_decref(made);
    json_decref(p);
    /* the pattern holds for the whole value; missing, non-string, too long */
    const char *bad[] = {"{\"Serial\":\"00421\"}", "{}", "{\"Serial\":42}",
                         "{\"Serial\":\"0042\",\"Model\":\"bad/id\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        p = J(bad[i]);
        made = tw_template_apply(mh, p, err, sizeof err);
        if (i < 3)
            assert_null(made);
        else /* a tag may hold anything; the thing name is what must be an id */
            json_decref(made);
        json_decref(p);
    }
    json_decref(mh);
    /* AWS's spelling: Ref and Fn::Join; its plain strings are literal */
    json_t *aws = J("{\"Parameters\":{\"SN\":{\"Type\":\"String\",\"AllowedPattern\":\"[A-F]+\"}},"
                    "\"Resources\":{\"t\":{\"Type\":\"AWS::IoT::Thing\",\"Properties\":{"
                    "\"ThingName\":{\"Fn::Join\":[\"_\",[\"dev\",{\"Ref\":\"SN\"}]]},"
                    "\"AttributePayload\":{\"sn\":{\"Ref\":\"SN\"}}}},"
                    "\"cert\":{\"Type\":\"AWS::IoT::Certificate\"}},"
                    "\"DeviceConfiguration\":{\"c\":\"{SN}\"},\"enabled\":false}");
    assert_true(tw_template_check(aws, err, sizeof err));
    assert_false(tw_template_enabled(aws));
    p = J("{\"SN\":\"ABC\"}");
    made = tw_template_apply(aws, p, err, sizeof err);
    s_expect(made, "{\"thingName\":\"dev_ABC\",\"tags\":{\"sn\":\"ABC\"},\"desired\":{},"
                   "\"deviceConfiguration\":{\"c\":\"{SN}\"}}");
    json_decref(made);
    json_decref(p);
    json_decref(aws);
    /* bad templates, each refused with a message */
    const char *bad_t[] = {
        "[]",
        "{\"parameters\":{}}",
        "{\"parameters\":{\"a\":{\"pattern\":\"([\"}},\"thingName\":\"{a}\"}",
        "{\"parameters\":{},\"thingName\":\"{nope}\"}",
        "{\"parameters\":{},\"thingName\":{\"Ref\":\"nope\"}}",
        "{\"parameters\":{},\"thingName\":{\"Fn::Join\":[1]}}",
        "{\"parameters\":{},\"thingName\":\"x\",\"tags\":[]}",
        "{\"parameters\":{},\"thingName\":\"x\",\"desired\":3}",
        "{\"parameters\":{},\"thingName\":\"x\",\"enabled\":\"yes\"}",
        "{\"Resources\":{\"t\":{\"Type\":\"AWS::IoT::Policy\"}}}",
        /* patterns glibc would compile into gigabytes (the fuzzer's find:
         * twin out of memory), or match in exponential time */
        "{\"parameters\":{\"a\":{\"pattern\":\"[A-F]++++++++++++++++++++++++++++++++++++\"}},"
        "\"thingName\":\"{a}\"}",
        "{\"parameters\":{\"a\":{\"pattern\":\"(a{999}){999}\"}},\"thingName\":\"{a}\"}",
        "{\"parameters\":{\"a\":{\"pattern\":\"((((((((((((a*)*)*)*)*)*)*)*)*)*)*)*)*\"}},"
        "\"thingName\":\"{a}\"}",
        "{\"parameters\":{\"a\":{\"pattern\":\"a{x++++++++++++++++++++++++++++++++++++}\"}},"
        "\"thingName\":\"{a}\"}",
        "{\"parameters\":{\"a\":{\"pattern\":\"(a*)\\\\1\"}},\"thingName\":\"{a}\"}",
    };
    for (size_t i = 0; i < sizeof bad_t / sizeof *bad_t; i++) {
        json_t *t = J(bad_t[i]);
        err[0] = 0;
        if (tw_template_check(t, err, sizeof err))
            fail_msg("template %s accepted", bad_t[i]);
        assert_true(err[0] != 0);
        json_decref(t);
    }
    /* patterns real serial numbers and ids need are taken */
    const char *good_p[] = {
        "[0-9]{4}",
        "[A-Z0-9]{1,64}",
        "^[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$",
        "(SN|sn)-[[:digit:]]{6,10}",
        "[]a-z]+(_[a-z0-9]+)*",
        "a{2,}b?c*",
    };
    for (size_t i = 0; i < sizeof good_p / sizeof *good_p; i++) {
        json_t *t = json_pack("{s:{s:{s:s}},s:s}", "parameters", "a", "pattern", good_p[i],
                              "thingName", "{a}");
        err[0] = 0;
        if (!tw_template_check(t, err, sizeof err))
            fail_msg("pattern %s refused: %s", good_p[i], err);
        json_decref(t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_document),
        cmocka_unit_test(test_merge_patch_rfc7386),
        cmocka_unit_test(test_delta_recursive),
        cmocka_unit_test(test_reported_patch_versions_and_delta),
        cmocka_unit_test(test_version_conflict_changes_nothing),
        cmocka_unit_test(test_limits_413_change_nothing),
        cmocka_unit_test(test_out_of_order_reported_keys),
        cmocka_unit_test(test_operator_patch_tags_and_desired),
        cmocka_unit_test(test_shadow_update),
        cmocka_unit_test(test_templates),
    };
    return MHT_RUN(tests);
}
