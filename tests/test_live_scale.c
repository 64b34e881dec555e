/* The live feed at scale (issue 20): one fleet-stats replica holds 1,000
 * dashboards on /api/v1/live at once, one of them a reader that never
 * reads, while 2,000 devices flap at 1,000 status changes a second. Every
 * other dashboard keeps getting its frames within a second (p99), the
 * replica answers the 1,001st with 503 and still serves API requests.
 * tools/bench/live_clients does the clients (tools/bench/fleet.py runs it
 * at 100,000 devices). */
#include "mh_test.h"

#include <inttypes.h>

#define S_DEVICES 2000

static void test_thousand_dashboards_one_slow(void **state)
{
    (void)state;
    mht_platform_t *p = &mht_platform;
    mht_register_devices(p->twin.rpc_endpoint, "ls", S_DEVICES);

    char bin[512], a_port[32], a_token[1024], a_url[4096];
    mht_build_path("tools/bench/live_clients", bin, sizeof bin);
    snprintf(a_port, sizeof a_port, "--port=%d", p->fleet.port);
    snprintf(a_token, sizeof a_token, "--token=%s", p->token);
    snprintf(a_url, sizeof a_url, "--mqtt-url=%s", p->broker.url);
    char *argv[] = {
        bin,   a_port,        a_token,          "--clients=1000", "--slow=1", "--duration=10",
        a_url, "--prefix=ls", "--devices=2000", "--rate=1000",    NULL};
    pid_t pid = mht_spawn("live-clients", argv);
    int st = mht_stop(pid, 0, 240000);

    char path[700], line[1024], last[1024] = "";
    snprintf(path, sizeof path, "%s/live-clients.log", mht_artifacts());
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "live_clients:", 13) == 0)
            snprintf(last, sizeof last, "%s", line);
    fclose(f);
    print_message("# %s", last);
    int clients = 0, connected = 0, over = 0, api = 0;
    long changes = 0;
    int64_t frames = 0, min_frames = 0, gap = 0;
    double p50 = -1, p99 = -1, max = -1;
    int got = sscanf(
        last,
        "live_clients: clients=%d connected=%d slow=%*d over_limit_status=%d "
        "api_status=%d changes=%ld frames=%" SCNd64 " latency_p50_ms=%lf "
        "latency_p99_ms=%lf latency_max_ms=%lf min_frames=%" SCNd64 " max_gap_ms=%" SCNd64,
        &clients, &connected, &over, &api, &changes, &frames, &p50, &p99, &max, &min_frames, &gap);
    assert_int_equal(got, 11);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* all 1,000 held, the next refused, requests still served */
    assert_int_equal(connected, 1000);
    assert_int_equal(over, 503);
    assert_int_equal(api, 200);
    /* devices flapped for the whole window, and every fast dashboard kept
     * hearing about it: frames within a second at p99, none silent for 2 s */
    assert_true(changes >= 9000);
    assert_true(p99 >= 0 && p99 <= 1000);
    assert_true(min_frames >= 10);
    assert_true(gap <= 2000);
    /* the replica counts them, and lets them all go once they close */
    int64_t end = mht_now_ms() + 45000;
    while (mht_metric(p->fleet.http_port, "mh_fleet_live_clients", NULL) > 0 && mht_now_ms() < end)
        mht_sleep_ms(200);
    double held = mht_metric(p->fleet.http_port, "mh_fleet_live_clients", NULL);
    print_message("# live clients counted %.1f s after the tool exited: %.0f\n",
                  (double)(mht_now_ms() - (end - 45000)) / 1000, held);
    assert_true(held == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_thousand_dashboards_one_slow),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, mht_platform_setup, mht_platform_teardown);
}
