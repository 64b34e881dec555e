/* Security (shared/DESIGN.md, "Security"; issue 6), against the broker as
 * deploy/ configures it (deploy/mosquitto/mosquitto-conf.sh) and a fleet CA
 * made with motectl ca:
 *  - a device with its own certificate connects; without one, with one from
 *    another CA, with an expired one or a revoked one it is refused; TLS 1.1
 *    is refused;
 *  - device A publishing on device B's topics or subscribing to them is
 *    denied, nothing is stored, and the denials are counted;
 *  - a CA signs a device's CSR without ever seeing its key.
 * (API tokens: test_api's test_tokens; CURVE: test_curve.) */
#include "mh_test.h"

#include "mh_agent.h"

#include <inttypes.h>
#include <sys/stat.h>
#include <time.h>

static char s_ca[700], s_other_ca[700], s_certs[700], s_other[700];

/* A CA, the broker's and gateway's certificates, devices dev-a, dev-b,
 * dev-rev, an expired dev-old, and a dev-a from another CA. */
static int s_make_certs(void)
{
    snprintf(s_ca, sizeof s_ca, "%s/ca", mht_artifacts());
    snprintf(s_other_ca, sizeof s_other_ca, "%s/other-ca", mht_artifacts());
    snprintf(s_certs, sizeof s_certs, "%s/certs", mht_artifacts());
    snprintf(s_other, sizeof s_other, "%s/other-certs", mht_artifacts());
    mht_shell("rm -rf '%s' '%s' '%s' '%s'", s_ca, s_other_ca, s_certs, s_other);
    if (mht_motectl("ca --ca-dir '%s' init", s_ca) != 0 ||
        mht_motectl("ca --ca-dir '%s' issue --server broker --san 127.0.0.1 --san localhost "
                    "--out '%s'",
                    s_ca, s_certs) != 0 ||
        mht_motectl("ca --ca-dir '%s' issue --service gateway --out '%s'", s_ca, s_certs) != 0 ||
        mht_motectl("ca --ca-dir '%s' issue dev-a dev-b dev-rev --out '%s'", s_ca, s_certs) != 0 ||
        mht_motectl("ca --ca-dir '%s' issue dev-old --not-before 2020-01-01T00:00:00Z "
                    "--not-after 2021-01-01T00:00:00Z --out '%s'",
                    s_ca, s_certs) != 0 ||
        mht_motectl("ca --ca-dir '%s' init --cn 'Somebody else'", s_other_ca) != 0 ||
        mht_motectl("ca --ca-dir '%s' issue dev-a --out '%s'", s_other_ca, s_other) != 0)
        return -1;
    return mht_shell("cp '%s/crl.pem' '%s/crl.pem'", s_ca, s_certs) == 0 ? 0 : -1;
}

/* An agent for `id` with DIR/id.crt and .key (dir NULL: no certificate);
 * true when it connected within the time. */
static bool s_connects(const mht_broker_t *b, const char *id, const char *dir, int timeout_ms,
                       char *why, size_t whylen)
{
    char ca[800], crt[800], key[800];
    snprintf(ca, sizeof ca, "%s/ca.crt", s_certs);
    snprintf(crt, sizeof crt, "%s/%s.crt", dir ? dir : "", id);
    snprintf(key, sizeof key, "%s/%s.key", dir ? dir : "", id);
    mh_agent_opts_t o = {.url = b->url,
                         .device_id = id,
                         .ca_file = ca,
                         .cert_file = dir ? crt : NULL,
                         .key_file = dir ? key : NULL};
    mh_agent_t *a = mh_agent_new(&o);
    assert_non_null(a);
    mh_agent_connect(a);
    bool ok = mh_agent_wait_connected(a, timeout_ms);
    if (why)
        mh_agent_last_error(a, why, whylen);
    if (!ok)
        assert_true(mh_agent_connect_failures(a) >= 1);
    mh_agent_destroy(&a);
    return ok;
}

static void test_mtls_who_may_connect(void **state)
{
    (void)state;
    mht_broker_t b = {0};
    mht_broker_start_tls(&b, s_certs);
    char why[160];

    assert_true(s_connects(&b, "dev-a", s_certs, 10000, NULL, 0));
    assert_true(s_connects(&b, "dev-rev", s_certs, 10000, NULL, 0));

    assert_false(s_connects(&b, "dev-a", NULL, 3000, why, sizeof why));
    print_message("# no certificate: refused (%s)\n", why);
    assert_false(s_connects(&b, "dev-a", s_other, 3000, why, sizeof why));
    print_message("# another CA's certificate: refused (%s)\n", why);
    assert_false(s_connects(&b, "dev-old", s_certs, 3000, why, sizeof why));
    print_message("# expired certificate: refused (%s)\n", why);

    /* revoke, publish the CRL to the broker, reload it */
    assert_int_equal(mht_motectl("ca --ca-dir '%s' revoke dev-rev", s_ca), 0);
    assert_int_equal(mht_shell("cp '%s/crl.pem' '%s/crl.pem'", s_ca, s_certs), 0);
    mht_broker_reload(&b);
    assert_false(s_connects(&b, "dev-rev", s_certs, 3000, why, sizeof why));
    print_message("# revoked certificate: refused (%s)\n", why);
    /* the others are unaffected */
    assert_true(s_connects(&b, "dev-a", s_certs, 10000, NULL, 0));

    /* TLS below 1.2 is refused; 1.2 is taken */
    const char *sc =
        "echo | timeout 5 openssl s_client -connect 127.0.0.1:%d %s -CAfile '%s/ca.crt' "
        "-cert '%s/dev-a.crt' -key '%s/dev-a.key' >/dev/null 2>&1";
    assert_int_not_equal(mht_shell(sc, b.port, "-tls1_1", s_certs, s_certs, s_certs), 0);
    assert_int_equal(mht_shell(sc, b.port, "-tls1_2", s_certs, s_certs, s_certs), 0);
    mht_broker_stop(&b);
}

/* mosquitto_pub / mosquitto_sub as device `id` (a client that is not our
 * agent, as an attacker's would be); returns what it printed. */
static void s_mqtt_client(const mht_broker_t *b, const char *prog, const char *id, const char *args,
                          char *out, size_t len)
{
    char file[800];
    snprintf(file, sizeof file, "%s/%s-%s.out", mht_artifacts(), prog, id);
    mht_shell("timeout 5 %s -h 127.0.0.1 -p %d -V mqttv5 --cafile '%s/ca.crt' --cert '%s/%s.crt' "
              "--key '%s/%s.key' %s > '%s' 2>&1",
              prog, b->port, s_certs, s_certs, id, s_certs, id, args, file);
    FILE *f = fopen(file, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, len - 1, f);
    out[n] = 0;
    fclose(f);
    fprintf(stderr, "# %s as %s %s: %s", prog, id, args, out);
}

static void test_acl_one_device_cannot_use_anothers_topics(void **state)
{
    (void)state;
    mht_broker_t b = {0};
    mht_broker_start_tls(&b, s_certs);
    mht_db_t db;
    mht_db_create(&db);
    mht_service_t ing = {0}, gw = {0};
    mht_ingest_start(&ing, "ingest-acl", &db, 0, NULL);
    mht_gateway_start(&gw, "gateway-acl", &b, ing.endpoint, NULL);
    /* the gateway (CN motehub:gateway) is connected over mTLS */
    int64_t deadline = mht_now_ms() + 10000;
    while (mht_metric(gw.http_port, "mh_gateway_mqtt_connected", NULL) != 1 &&
           mht_now_ms() < deadline)
        mht_sleep_ms(50);
    assert_true(mht_metric(gw.http_port, "mh_gateway_mqtt_connected", NULL) == 1);

    char out[2048];
    /* its own topic: taken and stored */
    s_mqtt_client(&b, "mosquitto_pub", "dev-a", "-q 1 -t devices/dev-a/telemetry -m '{\"t\":1}'",
                  out, sizeof out);
    assert_null(strstr(out, "Not authorized"));
    assert_true(mht_db_wait_num(&db,
                                "SELECT count(*) FROM ingest.telemetry_raw "
                                "WHERE device_id = 'dev-a'",
                                1, 20000) == 1);

    /* another device's telemetry, status and command acks: not authorized */
    s_mqtt_client(&b, "mosquitto_pub", "dev-a", "-q 1 -t devices/dev-b/telemetry -m '{\"t\":2}'",
                  out, sizeof out);
    assert_non_null(strstr(out, "Not authorized"));
    s_mqtt_client(&b, "mosquitto_pub", "dev-a",
                  "-q 1 -t devices/dev-b/status -m '{\"state\":\"offline\"}'", out, sizeof out);
    assert_non_null(strstr(out, "Not authorized"));
    /* claiming dev-b's client id does not help: the id is the certificate's CN */
    s_mqtt_client(&b, "mosquitto_pub", "dev-a",
                  "-i dev-b -q 1 -t devices/dev-b/telemetry -m '{\"t\":3}'", out, sizeof out);
    assert_non_null(strstr(out, "Not authorized"));
    /* subscribing to another device's commands, or to everyone's */
    s_mqtt_client(&b, "mosquitto_sub", "dev-a", "-C 1 -t devices/dev-b/commands", out, sizeof out);
    assert_non_null(strstr(out, "denied"));
    s_mqtt_client(&b, "mosquitto_sub", "dev-a", "-C 1 -t 'devices/+/commands'", out, sizeof out);
    assert_non_null(strstr(out, "denied"));
    s_mqtt_client(&b, "mosquitto_sub", "dev-a", "-C 1 -t '#'", out, sizeof out);
    assert_non_null(strstr(out, "denied"));

    /* counted (the broker plugin's counts, exported by the gateway) */
    deadline = mht_now_ms() + 10000;
    while ((mht_metric(gw.http_port, "mh_broker_acl_denied", "op=\"publish\"") < 3 ||
            mht_metric(gw.http_port, "mh_broker_acl_denied", "op=\"subscribe\"") < 3) &&
           mht_now_ms() < deadline)
        mht_sleep_ms(100);
    double pub = mht_metric(gw.http_port, "mh_broker_acl_denied", "op=\"publish\"");
    double sub = mht_metric(gw.http_port, "mh_broker_acl_denied", "op=\"subscribe\"");
    print_message("# denied: %.0f publishes, %.0f subscriptions\n", pub, sub);
    assert_true(pub == 3);
    assert_true(sub == 3);
    /* and when the broker's CRL must be replaced: `motectl ca crl` writes
     * one good for 30 days */
    double crl = mht_metric(gw.http_port, "mh_broker_crl_next_update_timestamp_seconds", NULL);
    double days = (crl - (double)time(NULL)) / 86400.0;
    print_message("# the broker's CRL is good for %.1f more days\n", days);
    assert_true(days > 29 && days <= 30.01);

    /* nothing stored for dev-b, dev-a's one sample only */
    mht_sleep_ms(500);
    assert_true(mht_db_num(&db, "SELECT count(*) FROM ingest.telemetry_raw "
                                "WHERE device_id = 'dev-b'") == 0);
    assert_true(mht_db_num(&db, "SELECT count(*) FROM ingest.telemetry_raw") == 1);

    assert_int_equal(mht_stop(gw.pid, SIGTERM, 20000), 0);
    assert_int_equal(mht_stop(ing.pid, SIGTERM, 20000), 0);
    mht_broker_stop(&b);
    mht_db_drop(&db);
}

static void test_ca_signs_a_csr(void **state)
{
    (void)state;
    char dir[800];
    snprintf(dir, sizeof dir, "%s/csr", mht_artifacts());
    mht_shell("rm -rf '%s' && mkdir -p '%s'", dir, dir);
    /* the device makes its key and request; only the request travels */
    assert_int_equal(mht_shell("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
                               "-nodes -keyout '%s/dev-csr.key' -subj /CN=dev-csr "
                               "-out '%s/dev-csr.csr' 2>/dev/null",
                               dir, dir),
                     0);
    assert_int_equal(mht_motectl("ca --ca-dir '%s' sign '%s/dev-csr.csr' --out '%s/dev-csr.crt'",
                                 s_ca, dir, dir),
                     0);
    assert_int_equal(
        mht_shell("openssl verify -CAfile '%s/ca.crt' '%s/dev-csr.crt' >/dev/null", s_certs, dir),
        0);
    /* a request for a name that is not a device id is refused */
    mht_shell("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
              "-keyout '%s/bad.key' -subj '/CN=motehub:gateway' -out '%s/bad.csr' 2>/dev/null",
              dir, dir);
    assert_int_not_equal(
        mht_motectl("ca --ca-dir '%s' sign '%s/bad.csr' --out '%s/bad.crt' 2>/dev/null", s_ca, dir,
                    dir),
        0);

    /* and the device connects with it */
    mht_broker_t b = {0};
    mht_broker_start_tls(&b, s_certs);
    assert_true(s_connects(&b, "dev-csr", dir, 10000, NULL, 0));
    mht_broker_stop(&b);
}

static void test_ca_makes_a_fleet(void **state)
{
    (void)state;
    assert_int_equal(s_make_certs(), 0);
    /* a fleet at once, and again: only the missing ones are made */
    assert_int_equal(mht_motectl("ca --ca-dir '%s' issue --prefix fl --count 200 --out '%s/fleet' "
                                 ">/dev/null",
                                 s_ca, mht_artifacts()),
                     0);
    assert_int_equal(mht_shell("test -f '%s/fleet/fl-0199.key' && openssl verify -CAfile "
                               "'%s/ca.crt' '%s/fleet/fl-0000.crt' >/dev/null",
                               mht_artifacts(), s_certs, mht_artifacts()),
                     0);
    /* keys are readable by their owner only */
    char key[800];
    snprintf(key, sizeof key, "%s/fleet/fl-0007.key", mht_artifacts());
    struct stat st;
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* a name that is not a device id is refused */
    assert_int_equal(
        mht_motectl("ca --ca-dir '%s' issue 'a/b' --out '%s' 2>/dev/null", s_ca, mht_artifacts()),
        2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ca_makes_a_fleet),
        cmocka_unit_test(test_mtls_who_may_connect),
        cmocka_unit_test(test_acl_one_device_cannot_use_anothers_topics),
        cmocka_unit_test(test_ca_signs_a_csr),
    };
    return MHT_RUN(tests);
}
