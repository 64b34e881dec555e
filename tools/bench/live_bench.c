/* live_bench — time from a device's status change to the /api/v1/live
 * frame that shows it (tools/bench/fleet.py runs it).
 *
 * It keeps a WebSocket open on fleet-stats, publishes `devices/<id>/status`
 * for one device at a time over MQTT (as the device would), and waits for
 * the first frame whose online count reflects it; then a burst of --burst
 * changes at once, timed until a frame shows all of them. Prints
 * "status->frame p50=… p99=… max=… ms" and the burst time. */
#include "bench_mqtt.h"

#include <civetweb.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t s_cond = PTHREAD_COND_INITIALIZER;
static long long s_online = -1; /* from the last frame that had devices */
static long long s_frames;

static int64_t s_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int s_data(struct mg_connection *c, int bits, char *data, size_t len, void *ud)
{
    (void)c, (void)ud;
    if ((bits & 0x0f) != MG_WEBSOCKET_OPCODE_TEXT)
        return 1;
    json_t *f = json_loadb(data, len, 0, NULL);
    json_t *d = json_object_get(f, "devices");
    pthread_mutex_lock(&s_lock);
    s_frames++;
    if (d)
        s_online = json_integer_value(json_object_get(d, "online"));
    pthread_cond_broadcast(&s_cond);
    pthread_mutex_unlock(&s_lock);
    json_decref(f);
    return 1;
}

/* Waits until the frames show `want` online; returns the arrival time or 0. */
static int64_t s_wait_online(long long want, int timeout_ms)
{
    int64_t end = s_ms() + timeout_ms;
    pthread_mutex_lock(&s_lock);
    while (s_online != want && s_ms() < end) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 2000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&s_cond, &s_lock, &ts);
    }
    int64_t at = s_online == want ? s_ms() : 0;
    pthread_mutex_unlock(&s_lock);
    return at;
}

static void s_publish(MQTTAsync c, const char *prefix, long i, bool online)
{
    char topic[128], payload[64];
    snprintf(topic, sizeof topic, "devices/%s-%04ld/status", prefix, i);
    snprintf(payload, sizeof payload, "{\"state\":\"%s\"}", online ? "online" : "offline");
    MQTTAsync_message m = MQTTAsync_message_initializer;
    m.payload = payload;
    m.payloadlen = (int)strlen(payload);
    m.qos = 1;
    while (MQTTAsync_sendMessage(c, topic, &m, NULL) != MQTTASYNC_SUCCESS)
        usleep(1000);
}

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const char *mqtt = "tcp://127.0.0.1:1883", *host = "127.0.0.1", *token = "", *prefix = "bench";
    int port = 8080, changes = 200, gap = 300, burst = 1000;
    static const struct option o[] = {{"mqtt-url", 1, NULL, 'm'}, {"api-port", 1, NULL, 'p'},
                                      {"token", 1, NULL, 't'},    {"prefix", 1, NULL, 'x'},
                                      {"changes", 1, NULL, 'n'},  {"gap-ms", 1, NULL, 'g'},
                                      {"burst", 1, NULL, 'b'},    {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", o, NULL)) != -1) {
        switch (ch) {
        case 'm':
            mqtt = optarg;
            break;
        case 'p':
            port = atoi(optarg);
            break;
        case 't':
            token = optarg;
            break;
        case 'x':
            prefix = optarg;
            break;
        case 'n':
            changes = atoi(optarg);
            break;
        case 'g':
            gap = atoi(optarg);
            break;
        case 'b':
            burst = atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: live_bench --mqtt-url U --api-port P --token T [--prefix bench]"
                            " [--changes 200] [--gap-ms 300] [--burst 1000]\n");
            return 2;
        }
    }
    mg_init_library(0);
    char path[300], err[256] = "";
    snprintf(path, sizeof path, "/api/v1/live?access_token=%s", token);
    struct mg_connection *ws =
        mg_connect_websocket_client(host, port, 0, err, sizeof err, path, NULL, s_data, NULL, NULL);
    if (!ws) {
        fprintf(stderr, "live_bench: cannot open the feed: %s\n", err);
        return 1;
    }
    MQTTAsync c = bench_mqtt_connect(mqtt, "live-bench");
    if (!c) {
        fprintf(stderr, "live_bench: cannot connect to %s\n", mqtt);
        return 1;
    }
    for (int i = 0; i < 100; i++) {
        pthread_mutex_lock(&s_lock);
        long long on = s_online;
        pthread_mutex_unlock(&s_lock);
        if (on >= 0)
            break;
        usleep(50000);
    }
    pthread_mutex_lock(&s_lock);
    long long online = s_online;
    pthread_mutex_unlock(&s_lock);
    if (online < 0) {
        fprintf(stderr, "live_bench: no summary frame\n");
        return 1;
    }
    /* one change at a time: device i goes online, counted once it shows */
    double *lat = calloc((size_t)changes, sizeof *lat);
    int n = 0, missed = 0;
    for (long i = 0; i < changes; i++) {
        int64_t t0 = s_ms();
        s_publish(c, prefix, i, true);
        int64_t at = s_wait_online(online + 1, 5000);
        if (!at) {
            missed++;
            pthread_mutex_lock(&s_lock);
            online = s_online;
            pthread_mutex_unlock(&s_lock);
            continue;
        }
        online++;
        lat[n++] = (double)(at - t0);
        usleep((useconds_t)gap * 1000);
    }
    qsort(lat, (size_t)n, sizeof *lat, s_cmp);
    printf("status->frame: %d changes, p50=%.0f ms p99=%.0f ms max=%.0f ms (missed %d)\n", n,
           n ? lat[n / 2] : 0, n ? lat[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] : 0,
           n ? lat[n - 1] : 0, missed);
    /* a burst: `burst` devices online at once (those after the first run) */
    pthread_mutex_lock(&s_lock);
    long long f0 = s_frames;
    pthread_mutex_unlock(&s_lock);
    int64_t t0 = s_ms();
    for (long i = changes; i < changes + burst; i++)
        s_publish(c, prefix, i, true);
    int64_t sent = s_ms();
    int64_t at = s_wait_online(online + burst, 30000);
    pthread_mutex_lock(&s_lock);
    long long frames = s_frames - f0;
    pthread_mutex_unlock(&s_lock);
    if (at)
        printf("burst: %d status changes published in %" PRId64 " ms, all shown %" PRId64
               " ms after the first, in %lld frames\n",
               burst, sent - t0, at - t0, frames);
    else
        printf("burst: not all %d changes shown within 30 s\n", burst);
    /* put them back offline for a rerun */
    for (long i = 0; i < changes + burst; i++)
        s_publish(c, prefix, i, false);
    sleep(1);
    free(lat);
    MQTTAsync_disconnectOptions dopt = MQTTAsync_disconnectOptions_initializer;
    MQTTAsync_disconnect(c, &dopt);
    usleep(200000);
    MQTTAsync_destroy(&c);
    mg_close_connection(ws);
    mg_exit_library();
    return 0;
}
