/* The AWS IoT device APIs (shared/spec/aws-iot-compat.md) with the AWS IoT
 * Device SDKs from npm, unmodified, over mutual TLS against the whole
 * platform. Each test runs one scenario in tests/aws/ (node), which checks
 * what a device and an operator see and prints "# ok - ..." per check; the
 * scenario exits non-zero when any check failed. */
#include "mh_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static char s_ca[700];
static mht_platform_t s_p;

/* The fleet CA, the broker's certificate with the names clients dial, the
 * gateway's, and devices thing-0000..0003 (registered in twin). */
static int s_setup(void **state)
{
    (void)state;
    snprintf(s_ca, sizeof s_ca, "%s/ca", mht_artifacts());
    snprintf(s_p.broker.certs, sizeof s_p.broker.certs, "%s/certs", mht_artifacts());
    mht_shell("rm -rf '%s' '%s'", s_ca, s_p.broker.certs);
    if (mht_motectl("ca --ca-dir '%s' init", s_ca) != 0 ||
        mht_motectl("ca --ca-dir '%s' issue --server broker --san 127.0.0.1 --san localhost "
                    "--out '%s'",
                    s_ca, s_p.broker.certs) != 0 ||
        mht_motectl("ca --ca-dir '%s' issue --service gateway --out '%s'", s_ca,
                    s_p.broker.certs) != 0 ||
        mht_motectl("ca --ca-dir '%s' issue thing-0000 thing-0001 thing-0002 thing-0003 "
                    "--out '%s'",
                    s_ca, s_p.broker.certs) != 0 ||
        mht_motectl("ca --ca-dir '%s' issue --claim claim-factory --out '%s'", s_ca,
                    s_p.broker.certs) != 0 ||
        mht_shell("cp '%s/crl.pem' '%s/crl.pem'", s_ca, s_p.broker.certs) != 0)
        return -1;
    snprintf(s_p.ca_dir, sizeof s_p.ca_dir, "%s", s_ca); /* twin signs provisioned devices' */
    mht_platform_start(&s_p);
    mht_register_devices(s_p.twin.rpc_endpoint, "thing", 4);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    return mht_platform_stop(&s_p) ? 0 : -1;
}

/* Runs tests/aws/<script> <arg> for `thing`; its exit status. */
static int s_scenario(const char *script, const char *arg, const char *thing)
{
    const char *src = getenv("MH_SOURCE_ROOT") ? getenv("MH_SOURCE_ROOT") : ".";
    return mht_shell("cd '%s/tests/aws' && MH_AWS_PORT=%d MH_AWS_CERTS='%s' MH_API_PORT=%d "
                     "MH_API_TOKEN='%s' MH_AWS_THING='%s' timeout 120 node '%s' %s "
                     "2>>'%s/%s.stderr'",
                     src, s_p.broker.port, s_p.broker.certs, s_p.fleet.port, s_p.token, thing,
                     script, arg, mht_artifacts(), script);
}

#define S_SCENARIO(fn, script, arg, thing)                                                         \
    static void fn(void **state)                                                                   \
    {                                                                                              \
        (void)state;                                                                               \
        assert_int_equal(s_scenario(script, arg, thing), 0);                                       \
    }

S_SCENARIO(test_v1_thing_shadow, "shadow-v1.mjs", "", "thing-0000")
S_SCENARIO(test_named_shadows_and_bad_input, "shadow-raw.mjs", "", "thing-0001")
S_SCENARIO(test_v2_shadow_mqtt5, "shadow-v2.mjs", "mqtt5", "thing-0002")
S_SCENARIO(test_v2_shadow_mqtt311, "shadow-v2.mjs", "mqtt311", "thing-0002")
S_SCENARIO(test_v1_jobs, "jobs-v1.mjs", "", "thing-0003")
S_SCENARIO(test_v2_jobs_mqtt5, "jobs-v2.mjs", "mqtt5", "thing-0002")
S_SCENARIO(test_v2_jobs_mqtt311, "jobs-v2.mjs", "mqtt311", "thing-0002")
S_SCENARIO(test_firmware_as_aws_job, "jobs-firmware.mjs", "", "thing-0001")

/* motectl: provisioning templates, as an operator types them */
static void test_motectl_templates(void **state)
{
    (void)state;
    char url[64], out[800], tpl[800];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", s_p.fleet.port);
    setenv("MOTEHUB_URL", url, 1);
    setenv("MOTEHUB_TOKEN", s_p.token, 1);
    snprintf(out, sizeof out, "%s/motectl-templates.out", mht_artifacts());
    snprintf(tpl, sizeof tpl, "%s/lab.json", mht_artifacts());
    FILE *f = fopen(tpl, "w");
    assert_non_null(f);
    fputs("{\"parameters\":{\"Serial\":{\"pattern\":\"[0-9]{4}\"}},"
          "\"thingName\":\"lab-{Serial}\",\"tags\":{\"site\":\"lab\"}}",
          f);
    fclose(f);
    assert_int_equal(mht_motectl("template put lab '%s'", tpl), 0);
    assert_int_equal(mht_motectl("template list > '%s' 2>&1", out), 0);
    assert_int_equal(mht_shell("grep -q '^lab ' '%s'", out), 0);
    assert_int_equal(mht_motectl("--json template get lab > '%s' 2>&1", out), 0);
    assert_int_equal(mht_shell("grep -q 'lab-{Serial}' '%s'", out), 0);
    /* a placeholder naming no parameter: refused, and the old one kept */
    assert_int_equal(mht_shell("echo '{\"thingName\":\"x-{nope}\"}' > '%s.bad'", tpl), 0);
    assert_int_not_equal(mht_motectl("template put lab - < '%s.bad' 2> '%s'", tpl, out), 0);
    assert_int_equal(mht_shell("grep -q 'names no parameter' '%s'", out), 0);
    assert_int_equal(mht_motectl("--json template get lab > '%s' 2>&1", out), 0);
    assert_int_equal(mht_shell("grep -q 'lab-{Serial}' '%s'", out), 0);
    assert_int_not_equal(mht_motectl("template put 'bad name' '%s'", tpl), 0);
    assert_int_equal(mht_motectl("template delete lab"), 0);
    assert_int_not_equal(mht_motectl("template get lab"), 0);
}

/* Fleet provisioning with the v2 SDK's iotidentity from a claim
 * certificate (tests/aws/provision-v2.mjs); then the first device's
 * certificate, listed by `motectl ca list` like any other, is revoked and
 * no longer connects. */
static void test_v2_fleet_provisioning_mqtt5(void **state)
{
    (void)state;
    assert_int_equal(s_scenario("provision-v2.mjs", "mqtt5", ""), 0);
    char out[800], cn[128] = "";
    snprintf(out, sizeof out, "%s/ca-list.out", mht_artifacts());
    assert_int_equal(mht_motectl("ca --ca-dir '%s' list > '%s'", s_ca, out), 0);
    /* two certificates issued to devices through provisioning */
    assert_int_equal(mht_shell("test $(grep -c ' cert:' '%s') -eq 2", out), 0);
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "openssl x509 -noout -subject -nameopt multiline -in '%s/sensor-00C0FFA1.crt'"
             " | sed -n 's/ *commonName *= *//p'",
             s_p.broker.certs);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    if (!fgets(cn, sizeof cn, f))
        cn[0] = 0;
    pclose(f);
    cn[strcspn(cn, "\n")] = 0;
    assert_true(strncmp(cn, "cert:", 5) == 0);
    assert_int_equal(mht_motectl("ca --ca-dir '%s' revoke '%s'", s_ca, cn), 0);
    assert_int_equal(mht_shell("cp '%s/crl.pem' '%s/crl.pem'", s_ca, s_p.broker.certs), 0);
    mht_broker_reload(&s_p.broker);
    assert_int_equal(s_scenario("provision-v2.mjs", "mqtt5 revoked", ""), 0);
}

S_SCENARIO(test_v2_fleet_provisioning_mqtt311, "provision-v2.mjs", "mqtt311", "")

/* motectl: named shadows and jobs, as an operator types them */
static void test_motectl_shadows_and_jobs(void **state)
{
    (void)state;
    char url[64], out[800];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", s_p.fleet.port);
    setenv("MOTEHUB_URL", url, 1);
    setenv("MOTEHUB_TOKEN", s_p.token, 1);
    snprintf(out, sizeof out, "%s/motectl.out", mht_artifacts());
    assert_int_equal(mht_motectl("--json shadow set thing-0003 ops mode='\"eco\"' level=3"), 0);
    assert_int_equal(mht_motectl("--json shadow get thing-0003 ops > '%s' 2>&1", out), 0);
    assert_int_equal(mht_shell("grep -q '\"level\": *3' '%s'", out), 0);
    assert_int_equal(mht_motectl("--json shadow set thing-0003 ops level=4 --version 1"), 0);
    /* a stale version: refused, non-zero */
    assert_int_not_equal(mht_motectl("shadow set thing-0003 ops level=5 --version 1"), 0);
    assert_int_equal(mht_motectl("--json shadow list thing-0003 > '%s' 2>&1", out), 0);
    assert_int_equal(mht_shell("grep -q '\"ops\"' '%s'", out), 0);
    assert_int_equal(mht_motectl("shadow delete thing-0003 ops"), 0);
    assert_int_not_equal(mht_motectl("shadow get thing-0003 ops"), 0);
    /* a job: made from a document, listed, its executions, aborted */
    assert_int_equal(mht_motectl("--json job create --document '{\"operation\":\"noop\"}'"
                                 " --tag jobs:nobody > '%s' 2>&1",
                                 out),
                     0);
    assert_int_equal(mht_shell("grep -q '\"operation\": *\"noop\"' '%s'", out), 0);
    assert_int_equal(mht_motectl("--json job list > '%s' 2>&1", out), 0);
    assert_int_equal(mht_shell("grep -q noop '%s'", out), 0);
    /* a job needs a document; a document cannot roll back */
    assert_int_not_equal(mht_motectl("job create --firmware 1.0.0"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_thing_shadow),
        cmocka_unit_test(test_named_shadows_and_bad_input),
        cmocka_unit_test(test_v2_shadow_mqtt5),
        cmocka_unit_test(test_v2_shadow_mqtt311),
        cmocka_unit_test(test_v1_jobs),
        cmocka_unit_test(test_v2_jobs_mqtt5),
        cmocka_unit_test(test_v2_jobs_mqtt311),
        cmocka_unit_test(test_firmware_as_aws_job),
        cmocka_unit_test(test_motectl_shadows_and_jobs),
        cmocka_unit_test(test_motectl_templates),
        cmocka_unit_test(test_v2_fleet_provisioning_mqtt5),
        cmocka_unit_test(test_v2_fleet_provisioning_mqtt311),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
