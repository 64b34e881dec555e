/* live_clients — many dashboards on /api/v1/live at once, one of them slow,
 * while devices flap (tests/test_live_scale.c and tools/bench/fleet.py run
 * it).
 *
 * Opens --clients WebSockets on fleet-stats from one epoll thread (--slow
 * of them with a 2 KiB receive buffer, never read after the handshake),
 * tries one more to see the replica's limit answer, and makes one plain
 * API request while they are all held. Then, for --duration, a second
 * thread publishes devices/<prefix>-NNNN/status online/offline over MQTT at
 * --rate changes a second across --devices devices, while every frame the
 * fast clients receive is timed against its "ts" (the server's clock when
 * it built the frame; the same machine's clock). Prints one line:
 *   live_clients: clients=… connected=… slow=… over_limit_status=…
 *   api_status=… changes=… frames=… latency_p50_ms=… latency_p99_ms=…
 *   latency_max_ms=… min_frames=… max_gap_ms=… */
#include "bench_mqtt.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    bool open, slow;
    char *buf;
    size_t len, cap;
    int64_t frames, last_at, max_gap;
} s_client_t;

static int64_t s_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int s_connect(int port, bool slow)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    if (slow) {
        int small = 2048;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends an HTTP request and reads the answer's head; returns its status
 * (0: none) and leaves what came after the head in c->buf. */
static int s_request(s_client_t *c, const char *req)
{
    if (write(c->fd, req, strlen(req)) != (ssize_t)strlen(req))
        return 0;
    c->len = 0;
    for (;;) {
        if (c->cap - c->len < 4096) {
            c->cap = c->cap ? c->cap * 2 : 16384;
            c->buf = realloc(c->buf, c->cap);
        }
        ssize_t n = read(c->fd, c->buf + c->len, c->cap - c->len - 1);
        if (n <= 0)
            return 0;
        c->len += (size_t)n;
        c->buf[c->len] = 0;
        char *end = strstr(c->buf, "\r\n\r\n");
        if (end) {
            int status = 0;
            sscanf(c->buf, "HTTP/1.%*d %d", &status);
            size_t head = (size_t)(end + 4 - c->buf);
            memmove(c->buf, c->buf + head, c->len - head);
            c->len -= head;
            return status;
        }
    }
}

static int s_ws_open(s_client_t *c, int port, const char *token, bool slow)
{
    memset(c, 0, sizeof *c);
    c->slow = slow;
    c->fd = s_connect(port, slow);
    if (c->fd < 0)
        return 0;
    char req[512];
    snprintf(req, sizeof req,
             "GET /api/v1/live?access_token=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
             "Upgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
             token, port);
    int status = s_request(c, req);
    c->open = status == 101;
    return status;
}

static double *s_lat;
static size_t s_nlat, s_caplat;
static volatile bool s_timing;

/* Takes every whole frame out of c->buf. */
static void s_frames(s_client_t *c)
{
    size_t off = 0;
    for (;;) {
        unsigned char *p = (unsigned char *)c->buf + off;
        size_t left = c->len - off, hdr = 2;
        if (left < 2)
            break;
        uint64_t n = p[1] & 0x7f;
        if (n == 126) {
            hdr = 4;
            if (left < hdr)
                break;
            n = (uint64_t)p[2] << 8 | p[3];
        } else if (n == 127) {
            hdr = 10;
            if (left < hdr)
                break;
            n = 0;
            for (int i = 2; i < 10; i++)
                n = n << 8 | p[i];
        }
        if (left < hdr + n)
            break;
        if ((p[0] & 0x0f) == 1 && s_timing) {
            int64_t now = s_wall_ms();
            char *ts = memmem(p + hdr, n, "\"ts\":", 5);
            if (ts) {
                if (s_nlat == s_caplat) {
                    s_caplat = s_caplat ? s_caplat * 2 : 65536;
                    s_lat = realloc(s_lat, s_caplat * sizeof *s_lat);
                }
                s_lat[s_nlat++] = (double)(now - strtoll(ts + 5, NULL, 10));
            }
            if (c->frames && now - c->last_at > c->max_gap)
                c->max_gap = now - c->last_at;
            c->frames++;
            c->last_at = now;
        }
        off += hdr + n;
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
}

typedef struct {
    const char *url, *prefix;
    long devices, rate;
    int64_t until_ms;
    long sent;
} s_flap_t;

static void *s_flap(void *arg)
{
    s_flap_t *f = arg;
    MQTTAsync m = bench_mqtt_connect(f->url, "live-clients-flap");
    if (!m)
        return NULL;
    uint64_t x = 88172645463325252ull;
    int64_t start = s_wall_ms();
    while (MQTTAsync_isConnected(m) && s_wall_ms() < f->until_ms) {
        long due = (long)((s_wall_ms() - start) * f->rate / 1000);
        for (; f->sent < due; f->sent++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            char topic[128], payload[40];
            snprintf(topic, sizeof topic, "devices/%s-%04ld/status", f->prefix,
                     (long)(x % (uint64_t)f->devices));
            snprintf(payload, sizeof payload, "{\"state\":\"%s\"}",
                     (x >> 32) & 1 ? "online" : "offline");
            MQTTAsync_message msg = MQTTAsync_message_initializer;
            msg.payload = payload;
            msg.payloadlen = (int)strlen(payload);
            msg.qos = 1;
            while (MQTTAsync_sendMessage(m, topic, &msg, NULL) != MQTTASYNC_SUCCESS)
                usleep(1000);
        }
        usleep(5000);
    }
    MQTTAsync_disconnectOptions dc = MQTTAsync_disconnectOptions_initializer;
    MQTTAsync_disconnect(m, &dc);
    usleep(200000);
    MQTTAsync_destroy(&m);
    return NULL;
}

/* Reads every fast client until `end_ms`. */
static void s_pump(int ep, int64_t end_ms)
{
    struct epoll_event evs[256];
    while (s_wall_ms() < end_ms) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            s_client_t *c = evs[i].data.ptr;
            if (c->cap - c->len < 65536) {
                c->cap = c->cap * 2 > c->len + 65536 ? c->cap * 2 : c->len + 65536;
                c->buf = realloc(c->buf, c->cap);
            }
            ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
            if (r > 0) {
                c->len += (size_t)r;
                s_frames(c);
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                c->open = false;
            }
        }
    }
}

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const char *token = "", *mqtt = "", *prefix = "bench";
    int port = 8080, nclients = 1000, nslow = 1, duration = 10;
    long devices = 1000, rate = 1000;
    /* --name value, each into its variable: 'i' int, 'l' long, 's' string */
    static const struct {
        const char *name;
        char kind;
    } opts[] = {{"port", 'i'},   {"token", 's'},    {"clients", 'i'},
                {"slow", 'i'},   {"duration", 'i'}, {"mqtt-url", 's'},
                {"prefix", 's'}, {"devices", 'l'},  {"rate", 'l'}};
    void *vars[] = {&port, &token, &nclients, &nslow, &duration, &mqtt, &prefix, &devices, &rate};
    enum { N_OPTS = sizeof opts / sizeof *opts };
    struct option o[N_OPTS + 1] = {{0}};
    for (int i = 0; i < N_OPTS; i++)
        o[i] = (struct option){opts[i].name, required_argument, NULL, i};
    int ch;
    while ((ch = getopt_long(argc, argv, "", o, NULL)) != -1) {
        if (ch < 0 || ch >= N_OPTS) {
            fprintf(stderr, "usage: live_clients --port P --token T [--clients 1000] [--slow 1]"
                            " [--duration 10] [--mqtt-url U --prefix bench --devices 1000"
                            " --rate 1000]\n");
            return 2;
        }
        if (opts[ch].kind == 'i')
            *(int *)vars[ch] = atoi(optarg);
        else if (opts[ch].kind == 'l')
            *(long *)vars[ch] = atol(optarg);
        else
            *(const char **)vars[ch] = optarg;
    }
    if (nclients < 1 || nslow < 0 || nslow > nclients || duration < 1 || devices < 1 || rate < 0)
        return 2;
    s_client_t *cl = calloc((size_t)nclients, sizeof *cl);
    int ep = epoll_create1(0), connected = 0;
    for (int i = 0; i < nclients; i++) {
        bool slow = i < nslow;
        if (s_ws_open(&cl[i], port, token, slow) != 101)
            continue;
        connected++;
        if (!slow) {
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cl[i]};
            epoll_ctl(ep, EPOLL_CTL_ADD, cl[i].fd, &ev);
        }
    }
    /* one more than that, and a plain API request while they are held */
    s_client_t extra, api;
    int over = s_ws_open(&extra, port, token, false);
    memset(&api, 0, sizeof api);
    api.fd = s_connect(port, false);
    char req[400];
    snprintf(req, sizeof req,
             "GET /api/v1/devices?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
             "%s\r\nConnection: close\r\n\r\n",
             token);
    int api_status = api.fd >= 0 ? s_request(&api, req) : 0;

    s_flap_t flap = {mqtt, prefix, devices, rate, s_wall_ms() + duration * 1000L, 0};
    pthread_t th;
    bool flapping = *mqtt && rate > 0 && pthread_create(&th, NULL, s_flap, &flap) == 0;
    s_pump(ep, s_wall_ms() + 1000); /* what queued while the others connected */
    s_timing = true;
    int64_t end = s_wall_ms() + duration * 1000L;
    s_pump(ep, end);
    s_timing = false;
    if (flapping)
        pthread_join(th, NULL);

    int64_t frames = 0, min_frames = -1, max_gap = 0;
    for (int i = 0; i < nclients; i++) {
        if (cl[i].slow || !cl[i].open)
            continue;
        frames += cl[i].frames;
        if (min_frames < 0 || cl[i].frames < min_frames)
            min_frames = cl[i].frames;
        int64_t tail = end - cl[i].last_at; /* a client that stopped hearing counts too */
        max_gap = cl[i].max_gap > max_gap ? cl[i].max_gap : max_gap;
        max_gap = cl[i].frames && tail > max_gap ? tail : max_gap;
    }
    qsort(s_lat, s_nlat, sizeof *s_lat, s_cmp);
    size_t p99 = s_nlat ? (s_nlat * 99) / 100 : 0;
    printf("live_clients: clients=%d connected=%d slow=%d over_limit_status=%d api_status=%d"
           " changes=%ld frames=%" PRId64 " latency_p50_ms=%.0f latency_p99_ms=%.0f"
           " latency_max_ms=%.0f min_frames=%" PRId64 " max_gap_ms=%" PRId64 "\n",
           nclients, connected, nslow, over, api_status, flap.sent, frames,
           s_nlat ? s_lat[s_nlat / 2] : -1, s_nlat ? s_lat[p99 < s_nlat ? p99 : s_nlat - 1] : -1,
           s_nlat ? s_lat[s_nlat - 1] : -1, min_frames, max_gap);
    for (int i = 0; i < nclients; i++) {
        if (cl[i].fd >= 0)
            close(cl[i].fd);
        free(cl[i].buf);
    }
    if (extra.fd >= 0)
        close(extra.fd);
    if (api.fd >= 0)
        close(api.fd);
    free(extra.buf);
    free(api.buf);
    free(cl);
    free(s_lat);
    close(ep);
    return connected == nclients ? 0 : 1;
}
