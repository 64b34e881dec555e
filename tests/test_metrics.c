/* Every service's /metrics as Prometheus' own linter reads it
 * (`promtool check metrics`: names, units, HELP and TYPE), on the whole
 * platform after some traffic, and every histogram in seconds (the base
 * unit): what an SRE's scrape config and alert rules rely on. */
#include "mh_test.h"
#include "mh_agent.h"

static mht_platform_t *const s_p = &mht_platform;

/* Some of everything: a registration, a device's status and telemetry,
 * and an API call, so the histograms have observations. */
static void s_traffic(void)
{
    mht_register_devices(s_p->twin.rpc_endpoint, "met", 1);
    mh_agent_t *a =
        mh_agent_new(&(mh_agent_opts_t){.url = s_p->broker.url, .device_id = "met-0000"});
    mh_agent_connect(a);
    assert_true(mh_agent_wait_connected(a, 10000));
    mh_sample_t s = {.seq = -1, .n = 1};
    s.m[0].name = "temperature";
    s.m[0].value = 21.5;
    assert_int_equal(mh_agent_publish_samples(a, &s, 1, 1), 0);
    assert_true(mh_agent_wait_delivered(a, 5000));
    assert_true(mht_db_wait_num(&s_p->db,
                                "SELECT count(*) FROM ingest.telemetry_raw WHERE device_id ="
                                " 'met-0000'",
                                1, 10000) == 1);
    mh_agent_destroy(&a);
    assert_int_equal(mht_shell("curl -sf -o /dev/null -H 'Authorization: Bearer %s'"
                               " http://127.0.0.1:%d/api/v1/devices",
                               s_p->token, s_p->fleet.port),
                     0);
}

static void test_promtool_check_metrics(void **state)
{
    (void)state;
    s_traffic();
    const mht_service_t *all[] = {&s_p->gateway, &s_p->ingest, &s_p->twin, &s_p->ota, &s_p->fleet};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        char out[700];
        snprintf(out, sizeof out, "%s/metrics-%s.txt", mht_artifacts(), all[i]->name);
        assert_int_equal(
            mht_shell("curl -sf http://127.0.0.1:%d/metrics > '%s'", all[i]->http_port, out), 0);
        int rc = mht_shell("promtool check metrics < '%s' > '%s.lint' 2>&1", out, out);
        mht_shell("sed 's/^/# %s: /' '%s.lint' >&2", all[i]->name, out);
        print_message("# %s: promtool check metrics exit %d\n", all[i]->name, rc);
        assert_int_equal(rc, 0);
        /* histograms in seconds: every _bucket family ends in _seconds */
        assert_int_equal(mht_shell("! grep '^# TYPE .* histogram' '%s' | grep -v '_seconds"
                                   " histogram' >&2",
                                   out),
                         0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_promtool_check_metrics),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, mht_platform_setup, mht_platform_teardown);
}
