/* fleet-stats' live side, end to end: mosquitto, gateway, ingest, twin, ota
 * and two fleet-stats replicas on one PostgreSQL, with motesim devices.
 * What an operator sees: the summary counts, two replicas agreeing, the
 * WebSocket feed following devices going offline within 2 s without
 * polling, the telemetry reads on every tier, and a restarted replica
 * rebuilding the same picture. */
#include "mh_test.h"
#include "mh_http_client.h"

#include <civetweb.h>
#include <curl/curl.h>
#include <czmq.h>
#include <jansson.h>
#include <pthread.h>

static mht_db_t s_db;
static mht_broker_t s_broker;
static mht_service_t s_ingest, s_gw, s_twin, s_ota, s_fa, s_fb;
static char s_token[128], s_downlink[64];
static pid_t s_sim_a, s_sim_b;

/* ---- HTTP ---- */

/* GET with the token; the body as JSON (NULL if none). */
static json_t *s_get(int port, const char *path, long *status)
{
    char url[1024];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    mh_http_resp_t resp;
    *status = mh_http_request(&(mh_http_req_t){.url = url, .bearer = s_token}, &resp);
    if (!*status)
        fail_msg("GET %s: %s", path, resp.error);
    json_t *v = resp.len ? json_loadb(resp.body, resp.len, 0, NULL) : NULL;
    mh_http_resp_free(&resp);
    return v;
}

static json_t *s_get_ok(int port, const char *path)
{
    long st = 0;
    json_t *v = s_get(port, path, &st);
    if (st != 200)
        fail_msg("GET %s answered %ld", path, st);
    return v;
}

static json_int_t s_path_int(json_t *v, const char *a, const char *b)
{
    return json_integer_value(json_object_get(json_object_get(v, a), b));
}

/* Waits until replica `port` reports `online` of `total` devices. */
static json_t *s_wait_summary(int port, json_int_t total, json_int_t online, int timeout_ms)
{
    int64_t end = mht_now_ms() + timeout_ms;
    json_t *v = NULL;
    do {
        json_decref(v);
        long st;
        v = s_get(port, "/api/v1/fleet/summary", &st);
        if (st == 200 && s_path_int(v, "devices", "total") == total &&
            s_path_int(v, "devices", "online") == online)
            return v;
        mht_sleep_ms(100);
    } while (mht_now_ms() < end);
    char *t = json_dumps(v, JSON_COMPACT);
    fail_msg("replica :%d never showed %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT
             " devices online: %.400s",
             port, online, total, t ? t : "(none)");
    return NULL;
}

/* ---- devices ---- */

static char s_pub[600];

static pid_t s_fleet(const char *name, const char *prefix, int n, const char *firmware)
{
    char a_key[700], a_fw[64];
    snprintf(a_key, sizeof a_key, "--ota-key=%s", s_pub);
    snprintf(a_fw, sizeof a_fw, "--firmware=%s", firmware);
    const char *args[] = {a_fw, "--interval=1s", "--report=5s", a_key, "--ota-install-time=200ms",
                          NULL};
    pid_t pid = mht_motesim_start(name, s_broker.url, s_twin.rpc_endpoint, prefix, n, args);
    mht_fleet_wait_online(&s_db, prefix, n, firmware);
    return pid;
}

/* ---- WebSocket client (CivetWeb's) ---- */

typedef struct {
    pthread_mutex_t lock;
    json_t *frames; /* [{at, frame}] */
    bool closed;
} s_ws_t;

static int s_ws_data(struct mg_connection *c, int bits, char *data, size_t len, void *ud)
{
    (void)c;
    s_ws_t *w = ud;
    if ((bits & 0x0f) != MG_WEBSOCKET_OPCODE_TEXT)
        return 1;
    json_t *f = json_loadb(data, len, 0, NULL);
    pthread_mutex_lock(&w->lock);
    if (f)
        json_array_append_new(w->frames,
                              json_pack("{s:I,s:o}", "at", (json_int_t)mht_now_ms(), "frame", f));
    pthread_mutex_unlock(&w->lock);
    return 1;
}

static void s_ws_close(const struct mg_connection *c, void *ud)
{
    (void)c;
    s_ws_t *w = ud;
    pthread_mutex_lock(&w->lock);
    w->closed = true;
    pthread_mutex_unlock(&w->lock);
}

static struct mg_connection *s_ws_open(s_ws_t *w, int port, const char *token)
{
    char path[300], err[256] = "";
    snprintf(path, sizeof path, "/api/v1/live%s%s", token ? "?access_token=" : "",
             token ? token : "");
    pthread_mutex_init(&w->lock, NULL);
    w->frames = json_array();
    w->closed = false;
    return mg_connect_websocket_client("127.0.0.1", port, 0, err, sizeof err, path, NULL, s_ws_data,
                                       s_ws_close, w);
}

/* The number of frames so far; *last the newest (borrowed until closed). */
static size_t s_ws_count(s_ws_t *w)
{
    pthread_mutex_lock(&w->lock);
    size_t n = json_array_size(w->frames);
    pthread_mutex_unlock(&w->lock);
    return n;
}

static json_t *s_ws_frame(s_ws_t *w, size_t i, int64_t *at)
{
    pthread_mutex_lock(&w->lock);
    json_t *e = json_array_get(w->frames, i);
    *at = json_integer_value(json_object_get(e, "at"));
    json_t *f = json_incref(json_object_get(e, "frame"));
    pthread_mutex_unlock(&w->lock);
    return f;
}

/* ---- set-up ---- */

static int s_setup(void **state)
{
    (void)state;
    mg_init_library(0);
    char key[600];
    mht_signing_key(key, sizeof key, s_pub, sizeof s_pub);
    mht_broker_start(&s_broker);
    mht_db_create(&s_db);
    snprintf(s_downlink, sizeof s_downlink, "tcp://127.0.0.1:%d", mht_free_port());
    mht_twin_start(&s_twin, "twin", &s_db, s_downlink, NULL);
    mht_ingest_start(&s_ingest, "ingest", &s_db, 0, NULL);
    s_ota.port = mht_free_port();
    mht_gateway_for_twin(&s_gw, "gateway", &s_broker, &s_ingest, &s_twin, s_downlink, s_ota.port);
    mht_ota_start(&s_ota, "ota", &s_db, s_downlink, &s_twin, key, NULL);
    static char a_dash[700];
    snprintf(a_dash, sizeof a_dash, "--dashboard-dir=%s/dashboard/dist",
             getenv("MH_SOURCE_ROOT") ? getenv("MH_SOURCE_ROOT") : ".");
    const char *fa_extra[] = {a_dash, NULL};
    mht_fleet_start(&s_fa, "fleet-stats-a", &s_db, &s_twin, &s_ota, &s_ingest, &s_gw, fa_extra,
                    s_token);
    mht_fleet_start(&s_fb, "fleet-stats-b", &s_db, &s_twin, &s_ota, &s_ingest, &s_gw, NULL, NULL);
    s_sim_a = s_fleet("sim-a", "la", 150, "1.0.0");
    s_sim_b = s_fleet("sim-b", "lb", 100, "2.0.0");
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    if (s_sim_a > 0)
        mht_stop(s_sim_a, SIGINT, 20000);
    if (s_sim_b > 0)
        mht_stop(s_sim_b, SIGINT, 20000);
    int sa = mht_stop(s_fa.pid, SIGTERM, 20000), sb = mht_stop(s_fb.pid, SIGTERM, 20000);
    int sg = mht_stop(s_gw.pid, SIGTERM, 20000);
    mht_stop(s_ota.pid, SIGTERM, 20000);
    int st = mht_stop(s_twin.pid, SIGTERM, 20000);
    int si = mht_stop(s_ingest.pid, SIGTERM, 20000);
    mht_broker_stop(&s_broker);
    mht_db_drop(&s_db);
    mg_exit_library();
    int all[] = {sa, sb, sg, st, si};
    for (int i = 0; i < 5; i++)
        if (!WIFEXITED(all[i]) || WEXITSTATUS(all[i])) {
            fprintf(stderr, "a daemon did not exit cleanly (%d: status %d)\n", i, all[i]);
            return -1;
        }
    return 0;
}

/* ---- tests ---- */

/* The summary an operator opens: 250 devices, all online, by firmware,
 * every device in each health breakdown and on the map, messages flowing;
 * the two replicas agree. */
static void test_summary(void **state)
{
    (void)state;
    json_t *a = s_wait_summary(s_fa.port, 250, 250, 15000);
    json_t *b = s_wait_summary(s_fb.port, 250, 250, 15000);
    json_t *fw = json_object_get(a, "firmware");
    assert_int_equal(json_integer_value(json_object_get(fw, "1.0.0")), 150);
    assert_int_equal(json_integer_value(json_object_get(fw, "2.0.0")), 100);
    assert_true(json_equal(fw, json_object_get(b, "firmware")));
    const char *kinds[] = {"battery", "rssi", "lastSeen"};
    for (int k = 0; k < 3; k++) {
        json_t *h = json_object_get(json_object_get(a, "health"), kinds[k]);
        const char *name;
        json_t *n;
        json_int_t sum = 0;
        json_object_foreach(h, name, n) sum += json_integer_value(n);
        if (sum != 250)
            fail_msg("health.%s covers %" JSON_INTEGER_FORMAT " devices, not 250", kinds[k], sum);
    }
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_object_get(a, "health"), "lastSeen"), "online")),
                     250);
    /* messages per second: 250 devices sending every second (the median of
     * readings over 3 s, past the burst of connecting) */
    double rates[12];
    int nr = 0;
    int64_t end = mht_now_ms() + 15000;
    while (nr < 12 && mht_now_ms() < end) {
        json_t *s = s_get_ok(s_fa.port, "/api/v1/fleet/summary");
        double in = json_number_value(json_object_get(json_object_get(s, "rates"), "in"));
        json_decref(s);
        if (in > 100 || nr)
            rates[nr++] = in;
        mht_sleep_ms(250);
    }
    for (int i = 0; i < nr; i++)
        for (int j = i + 1; j < nr; j++)
            if (rates[j] < rates[i]) {
                double t = rates[i];
                rates[i] = rates[j];
                rates[j] = t;
            }
    double in = nr ? rates[nr / 2] : 0;
    if (in < 150 || in > 450)
        fail_msg("rates.in is %.1f/s (median) for 250 devices sending every second", in);
    /* the map: every device in a cell, both replicas the same once the
     * devices' first location reports have reached both (each replica
     * applies the events as they come; under ASan one may be a report
     * behind for a moment) */
    json_t *ga = NULL, *gb = NULL;
    for (int64_t until = mht_now_ms() + 10000;;) {
        ga = s_get_ok(s_fa.port, "/api/v1/fleet/geo");
        gb = s_get_ok(s_fb.port, "/api/v1/fleet/geo");
        if (json_equal(json_object_get(ga, "cells"), json_object_get(gb, "cells")) ||
            mht_now_ms() > until)
            break;
        json_decref(ga);
        json_decref(gb);
        mht_sleep_ms(200);
    }
    json_int_t cells = 0;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(ga, "cells"), i, c)
    {
        double lat = json_number_value(json_object_get(c, "lat"));
        assert_true(lat >= 35 && lat <= 61); /* motesim places devices around Europe */
        cells += json_integer_value(json_object_get(c, "count"));
    }
    assert_int_equal(cells, 250);
    assert_true(json_equal(json_object_get(ga, "cells"), json_object_get(gb, "cells")));
    json_decref(ga);
    json_decref(gb);
    json_decref(a);
    json_decref(b);
}

/* The feed: a summary at once, then changes; 100 devices going offline
 * show within 2 s, never more than a few frames a second; no token, no
 * feed. */
static void test_live_feed(void **state)
{
    (void)state;
    s_ws_t nobody;
    struct mg_connection *bad = s_ws_open(&nobody, s_fa.port, NULL);
    assert_null(bad);
    s_ws_t w;
    struct mg_connection *ws = s_ws_open(&w, s_fa.port, s_token);
    assert_non_null(ws);
    int64_t end = mht_now_ms() + 3000;
    while (s_ws_count(&w) == 0 && mht_now_ms() < end)
        mht_sleep_ms(10);
    assert_true(s_ws_count(&w) >= 1);
    int64_t at;
    json_t *f = s_ws_frame(&w, 0, &at);
    assert_string_equal(json_string_value(json_object_get(f, "type")), "summary");
    assert_int_equal(s_path_int(f, "devices", "online"), 250);
    assert_true(json_array_size(json_object_get(f, "history")) >= 1);
    assert_non_null(json_object_get(f, "geo"));
    json_decref(f);

    /* take the 100 "lb" devices offline */
    size_t before = s_ws_count(&w);
    int64_t t0 = mht_now_ms();
    mht_stop(s_sim_b, SIGINT, 20000);
    s_sim_b = 0;
    int64_t stopped = mht_now_ms();
    int64_t seen_at = 0;
    for (end = stopped + 2000; !seen_at && mht_now_ms() < end + 100;) {
        for (size_t i = before; i < s_ws_count(&w) && !seen_at; i++) {
            json_t *g = s_ws_frame(&w, i, &at);
            json_t *d = json_object_get(g, "devices");
            if (d && json_integer_value(json_object_get(d, "online")) == 150 &&
                json_integer_value(json_object_get(d, "offline")) == 100)
                seen_at = at;
            json_decref(g);
        }
        mht_sleep_ms(20);
    }
    if (!seen_at || seen_at > stopped + 2000)
        fail_msg("the feed did not show 150 online within 2 s of motesim's exit");
    fprintf(stderr,
            "# offline shown %" PRId64 " ms after motesim's exit (%" PRId64
            " ms after the stop began)\n",
            seen_at - stopped, seen_at - t0);
    /* coalesced: over the next 3 s, at most 4 frames a second */
    size_t n0 = s_ws_count(&w);
    mht_sleep_ms(3000);
    size_t frames = s_ws_count(&w) - n0;
    assert_true(frames <= 13);
    for (size_t i = 1; i < s_ws_count(&w); i++) {
        json_t *g = s_ws_frame(&w, i, &at);
        assert_string_equal(json_string_value(json_object_get(g, "type")), "changes");
        json_decref(g);
    }
    mg_close_connection(ws);
    json_decref(w.frames);
    json_decref(nobody.frames);
    /* both replicas agree on the new picture */
    json_t *b = s_wait_summary(s_fb.port, 250, 150, 5000);
    json_decref(b);
}

/* Telemetry reads: raw points, the latest, rollups, auto, pages, errors. */
static void test_telemetry(void **state)
{
    (void)state;
    char path[512];
    int64_t now = (int64_t)time(NULL) * 1000;
    /* raw: the device sends every second */
    json_t *v = NULL;
    int64_t end = mht_now_ms() + 10000;
    size_t npoints = 0;
    do {
        json_decref(v);
        snprintf(path, sizeof path,
                 "/api/v1/devices/la-0001/telemetry?metric=temperature&from=%" PRId64 "&to=%" PRId64
                 "&bucket=raw",
                 now - 600000, now + 600000);
        v = s_get_ok(s_fa.port, path);
        json_t *s0 = json_array_get(json_object_get(v, "series"), 0);
        npoints = json_array_size(json_object_get(s0, "points"));
        if (npoints >= 5)
            break;
        mht_sleep_ms(500);
    } while (mht_now_ms() < end);
    assert_true(npoints >= 5);
    json_t *s0 = json_array_get(json_object_get(v, "series"), 0);
    assert_string_equal(json_string_value(json_object_get(s0, "metric")), "temperature");
    assert_string_equal(json_string_value(json_object_get(s0, "bucket")), "raw");
    json_t *p0 = json_array_get(json_object_get(s0, "points"), 0);
    assert_true(json_is_array(p0) && json_array_size(p0) == 2);
    assert_true(json_is_null(json_object_get(v, "next")));
    json_decref(v);

    /* the latest of every metric */
    v = s_get_ok(s_fa.port, "/api/v1/devices/la-0001/telemetry/latest");
    json_t *t = json_object_get(json_object_get(v, "metrics"), "temperature");
    assert_non_null(t);
    assert_true(json_integer_value(json_object_get(t, "t")) > now - 60000);
    assert_true(json_is_number(json_object_get(t, "value")));
    json_decref(v);

    /* 1-minute rollups of the same range: min <= avg <= max, counts */
    snprintf(path, sizeof path,
             "/api/v1/devices/la-0001/telemetry?metric=temperature&from=%" PRId64 "&to=%" PRId64
             "&bucket=1m",
             now - 600000, now + 600000);
    json_int_t count = 0;
    end = mht_now_ms() + 75000; /* a minute is rolled up once it has ended */
    do {
        v = s_get_ok(s_fa.port, path);
        json_t *pts = json_object_get(json_array_get(json_object_get(v, "series"), 0), "points");
        size_t i;
        json_t *p;
        count = 0;
        json_array_foreach(pts, i, p)
        {
            double mn = json_number_value(json_object_get(p, "min")),
                   mx = json_number_value(json_object_get(p, "max")),
                   avg = json_number_value(json_object_get(p, "avg"));
            assert_true(mn <= avg + 1e-9 && avg <= mx + 1e-9);
            count += json_integer_value(json_object_get(p, "count"));
        }
        json_decref(v);
        if (count > 0)
            break;
        mht_sleep_ms(500);
    } while (mht_now_ms() < end);
    assert_true(count > 0);

    /* auto picks the tier from the range; RFC 3339 times work */
    snprintf(path, sizeof path,
             "/api/v1/devices/la-0001/telemetry?metric=temperature&from=%" PRId64 "&to=%" PRId64,
             now - 30 * 60000, now);
    v = s_get_ok(s_fa.port, path);
    assert_string_equal(json_string_value(json_object_get(v, "bucket")), "raw");
    json_decref(v);
    v = s_get_ok(s_fa.port, "/api/v1/devices/la-0001/telemetry?metric=temperature&from=2026-01-01T"
                            "00:00:00Z&to=2026-01-02T12:00:00.500%2B01:00");
    assert_string_equal(json_string_value(json_object_get(v, "bucket")), "1m");
    assert_int_equal(json_integer_value(json_object_get(v, "from")), 1767225600000LL);
    assert_int_equal(json_integer_value(json_object_get(v, "to")), 1767351600500LL);
    json_decref(v);
    snprintf(path, sizeof path, "/api/v1/devices/la-0001/telemetry?from=%" PRId64 "&to=%" PRId64,
             now - (int64_t)10 * 86400000, now);
    v = s_get_ok(s_fa.port, path);
    assert_string_equal(json_string_value(json_object_get(v, "bucket")), "1h");
    json_decref(v);

    /* pages of 7 points through every metric, to the end, equal one read */
    snprintf(path, sizeof path,
             "/api/v1/devices/la-0002/telemetry?from=%" PRId64 "&to=%" PRId64 "&bucket=raw",
             now - 600000, now);
    v = s_get_ok(s_fa.port, path);
    size_t total = 0, i;
    json_t *s;
    json_array_foreach(json_object_get(v, "series"), i, s) total +=
        json_array_size(json_object_get(s, "points"));
    json_decref(v);
    assert_true(total >= 10);
    char cursor[200] = "";
    size_t paged = 0;
    int pages = 0;
    for (;;) {
        snprintf(path, sizeof path,
                 "/api/v1/devices/la-0002/telemetry?from=%" PRId64 "&to=%" PRId64
                 "&bucket=raw&limit=7%s%s",
                 now - 600000, now, *cursor ? "&cursor=" : "", cursor);
        v = s_get_ok(s_fa.port, path);
        json_array_foreach(json_object_get(v, "series"), i, s) paged +=
            json_array_size(json_object_get(s, "points"));
        pages++;
        const char *next = json_string_value(json_object_get(v, "next"));
        char *esc = next ? curl_easy_escape(NULL, next, 0) : NULL;
        snprintf(cursor, sizeof cursor, "%s", esc ? esc : "");
        curl_free(esc);
        json_decref(v);
        if (!*cursor)
            break;
    }
    assert_int_equal(paged, total);
    assert_int_equal(pages, (int)((total + 6) / 7));

    /* bad input: a clear 400, nothing else */
    const char *bad[] = {
        "/api/v1/devices/la-0001/telemetry?bucket=5m",
        "/api/v1/devices/la-0001/telemetry?from=2000&to=1000",
        "/api/v1/devices/la-0001/telemetry?from=yesterday",
        "/api/v1/devices/la-0001/telemetry?metric=bad%20name",
        "/api/v1/devices/la-0001/telemetry?cursor=nonsense",
        "/api/v1/devices/la-0001/telemetry?limit=0",
    };
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        long st;
        json_t *e = s_get(s_fa.port, bad[k], &st);
        if (st != 400)
            fail_msg("%s answered %ld, not 400", bad[k], st);
        assert_non_null(json_object_get(json_object_get(e, "error"), "message"));
        json_decref(e);
    }
}

/* A replica killed and started again rebuilds the same picture from the
 * snapshot. */
static void test_replica_restart(void **state)
{
    (void)state;
    mht_stop(s_fb.pid, SIGKILL, 5000);
    mht_fleet_start(&s_fb, "fleet-stats-b2", &s_db, &s_twin, &s_ota, &s_ingest, &s_gw, NULL, NULL);
    json_t *b = s_wait_summary(s_fb.port, 250, 150, 15000);
    json_t *a = s_wait_summary(s_fa.port, 250, 150, 5000);
    assert_true(json_equal(json_object_get(a, "devices"), json_object_get(b, "devices")));
    assert_true(json_equal(json_object_get(a, "firmware"), json_object_get(b, "firmware")));
    json_t *ga = s_get_ok(s_fa.port, "/api/v1/fleet/geo"),
           *gb = s_get_ok(s_fb.port, "/api/v1/fleet/geo");
    if (!json_equal(ga, gb)) {
        char *ta = json_dumps(ga, JSON_COMPACT | JSON_SORT_KEYS),
             *tb = json_dumps(gb, JSON_COMPACT | JSON_SORT_KEYS);
        fail_msg("the replicas' maps differ:\n%s\n%s", ta, tb);
    }
    json_decref(ga);
    json_decref(gb);
    json_decref(a);
    json_decref(b);
}

/* The dashboard in headless Chromium (tests/browser/dashboard.mjs): the
 * overview's counts, 100 devices going offline shown within 2 s without a
 * reload, devices and a device page, a rollout created from the page
 * showing its waves; screenshots kept in the artifacts. */
static void test_browser(void **state)
{
    (void)state;
    s_sim_b = s_fleet("sim-b2", "lb", 100, "2.0.0");
    json_decref(s_wait_summary(s_fa.port, 250, 250, 10000));
    const char *src = getenv("MH_SOURCE_ROOT") ? getenv("MH_SOURCE_ROOT") : ".";
    char out[700];
    snprintf(out, sizeof out, "%s/browser.txt", mht_artifacts());
    int rc = mht_shell("MH_URL=http://127.0.0.1:%d MH_TOKEN=%s MH_SIM_B_PID=%d MH_SHOTS='%s' "
                       "node '%s/tests/browser/dashboard.mjs' >'%s' 2>&1",
                       s_fa.port, s_token, (int)s_sim_b, mht_artifacts(), src, out);
    mht_stop(s_sim_b, SIGINT, 20000); /* the script stopped it; reap it */
    s_sim_b = 0;
    FILE *f = fopen(out, "r");
    char line[1024];
    while (f && fgets(line, sizeof line, f))
        fprintf(stderr, "# browser: %s", line);
    if (f)
        fclose(f);
    if (rc != 0)
        fail_msg("the browser test failed (see above and the screenshots in %s)", mht_artifacts());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_summary),   cmocka_unit_test(test_live_feed),
        cmocka_unit_test(test_telemetry), cmocka_unit_test(test_replica_restart),
        cmocka_unit_test(test_browser),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
