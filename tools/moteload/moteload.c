/* moteload — a light load generator: QoS 1 telemetry from thousands of
 * devices, one MQTT connection and client id each, at a few microseconds of
 * CPU a message, so a benchmark measures the pipeline and not itself
 * (motesim runs a Paho client and its threads per device: ~100 µs a
 * message).
 *
 * A few threads each drive their share of the connections without
 * blocking (epoll): every tick a thread reads what the broker sent
 * (CONNACKs, PUBACKs), builds the messages due by the total rate, round
 * robin over its devices, and writes each connection's messages in one
 * call. The readings are motesim's (sim_readings), stamped with the time
 * they are built, so ingest's lag histogram measures publish to commit.
 *
 * With --twin each device instead subscribes to its
 * devices/<id>/twin/update/+ and sends twin/update (the readings as
 * reported state, the send time in µs as clientToken); the latency is
 * then from that send to the update/accepted that carries the token back:
 * broker → gateway → twin → PostgreSQL commit → gateway → broker → device.
 *
 * Phases: connect every device (at --connect-rate), publish for
 * --duration, wait up to --drain for the last PUBACKs (and answers),
 * disconnect. Prints the connect time, what was published and
 * acknowledged, the latency, and its own CPU a message; the last line is
 *   moteload: devices=N published=N acked=N ... cpu_us_per_msg=X */
#include "ml_mqtt.h"
#include "ml_payload.h"
#include "sim_readings.h"

#include "mh_config.h"
#include "mh_log.h"
#include "mh_time.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    char *mqtt_url;
    char *prefix;
    int64_t devices;
    double rate;
    int64_t interval_ms;
    int64_t duration_ms;
    int64_t metrics;
    int64_t threads;
    double connect_rate;
    int64_t connect_timeout_ms;
    int64_t inflight;
    int64_t tick_ms;
    int64_t keepalive_s;
    int64_t drain_ms;
    int64_t report_ms;
    bool twin;
} ml_config_t;

#define S_CFG(f) offsetof(ml_config_t, f)
static const mh_cfg_opt_t s_options[] = {
    {"mqtt-url", "MH_MQTT_URL", MH_CFG_STR, "tcp://127.0.0.1:1883", S_CFG(mqtt_url),
     "MQTT broker, tcp://HOST:PORT (plain TCP only)"},
    {"prefix", "MOTELOAD_PREFIX", MH_CFG_STR, "load", S_CFG(prefix),
     "device ids are PREFIX-0000, PREFIX-0001, ..."},
    {"devices", "MOTELOAD_DEVICES", MH_CFG_INT, "1000", S_CFG(devices), "devices (connections)"},
    {"rate", "MOTELOAD_RATE", MH_CFG_DOUBLE, "0", S_CFG(rate),
     "messages per second in all (overrides --interval)"},
    {"interval", "MOTELOAD_INTERVAL", MH_CFG_DURATION, "1s", S_CFG(interval_ms),
     "telemetry interval per device"},
    {"duration", "MOTELOAD_DURATION", MH_CFG_DURATION, "30s", S_CFG(duration_ms),
     "how long to publish, once every device is connected"},
    {"metrics", "MOTELOAD_METRICS", MH_CFG_INT, "3", S_CFG(metrics),
     "metrics per message, 1-5: temperature, humidity, battery, rssi, door_open"},
    {"threads", "MOTELOAD_THREADS", MH_CFG_INT, "2", S_CFG(threads), "threads"},
    {"connect-rate", "MOTELOAD_CONNECT_RATE", MH_CFG_DOUBLE, "2000", S_CFG(connect_rate),
     "new connections per second at most"},
    {"connect-timeout", "MOTELOAD_CONNECT_TIMEOUT", MH_CFG_DURATION, "120s",
     S_CFG(connect_timeout_ms), "publish anyway once this passed without every device connected"},
    {"inflight", "MOTELOAD_INFLIGHT", MH_CFG_INT, "256", S_CFG(inflight),
     "unacknowledged messages a connection may have; a message due beyond it is skipped"},
    {"tick", "MOTELOAD_TICK", MH_CFG_DURATION, "2ms", S_CFG(tick_ms),
     "how often a thread reads, builds and writes"},
    {"keepalive", "MOTELOAD_KEEPALIVE", MH_CFG_INT, "60", S_CFG(keepalive_s),
     "MQTT keep-alive in seconds"},
    {"drain", "MOTELOAD_DRAIN", MH_CFG_DURATION, "10s", S_CFG(drain_ms),
     "how long to wait for the last PUBACKs"},
    {"report", "MOTELOAD_REPORT", MH_CFG_DURATION, "10s", S_CFG(report_ms),
     "print progress this often (0: never)"},
    {"twin", "MOTELOAD_TWIN", MH_CFG_BOOL, "false", S_CFG(twin),
     "send twin/update instead of telemetry, timed to its update/accepted"},
    MH_CFG_END};

enum { S_DOWN, S_TCP, S_CONNACK, S_SUBACK, S_UP };
enum { P_CONNECT, P_PUBLISH, P_DRAIN, P_STOP };

#define S_MAX_PACKET (1 << 20) /* the most a broker's packet may be here */
#define S_OUT_MAX    (1 << 20) /* a connection's unwritten bytes before it skips */
#define S_HIST       400       /* latency buckets: 8 a power of two, in µs */

typedef struct {
    int fd;
    uint8_t state;
    uint16_t next_id;
    uint32_t inflight;
    uint32_t index;
    bool dirty;
    int64_t retry_at_us, last_send_us, last_ts, seq;
    sim_readings_t r;
    uint8_t *out, *in;
    size_t out_len, out_cap, in_len, in_cap;
    int64_t *sent_us; /* by packet id modulo the in-flight window */
    char *topic; /* devices/<id>/telemetry (or /twin/update), made once; the id is its middle */
    size_t topic_len;
} s_conn_t;

typedef struct {
    pthread_t th;
    const ml_config_t *cfg;
    s_conn_t *conns;
    size_t n, cursor, sweep, opened, *dirty, ndirty;
    int ep;
    double rate; /* messages per second */
    uint64_t rng;
    int64_t offered;
    /* read by the main thread (relaxed atomics) */
    uint64_t published, acked, skipped, connected, refused, dropped, malformed;
    uint64_t accepted, rejected; /* --twin: the answers */
    uint64_t hist[S_HIST];       /* PUBACK latency, or --twin's update → accepted */
} s_worker_t;

static const char *s_suffix = "/telemetry"; /* the topic's end: "/twin/update" with --twin */
static struct sockaddr_storage s_addr;
static socklen_t s_addrlen;
static int s_phase;        /* P_*, set by the main thread */
static int64_t s_t0_us;    /* publishing starts */
static int64_t s_start_us; /* connecting starts */
static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static uint64_t s_get(const uint64_t *v)
{
    return __atomic_load_n(v, __ATOMIC_RELAXED);
}

static void s_add(uint64_t *v, uint64_t d)
{
    __atomic_store_n(v, *v + d, __ATOMIC_RELAXED); /* one writer: its worker */
}

static size_t s_bucket(uint64_t us)
{
    if (us < 8)
        return (size_t)us;
    int e = 63 - __builtin_clzll(us); /* >= 3 */
    size_t b = (size_t)(e - 2) * 8 + ((us >> (e - 3)) & 7);
    return b < S_HIST ? b : S_HIST - 1;
}

static double s_bucket_us(size_t b)
{
    if (b < 8)
        return (double)b;
    int e = (int)(b / 8) + 2;
    return (double)((8 + b % 8) << (e - 3));
}

/* ---- one connection ---- */

static bool s_reserve(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return true;
    size_t c = *cap ? *cap : 512;
    while (c < need)
        c *= 2;
    uint8_t *b = realloc(*buf, c);
    if (!b)
        return false;
    *buf = b;
    *cap = c;
    return true;
}

static void s_mark_dirty(s_worker_t *w, s_conn_t *c)
{
    if (!c->dirty) {
        c->dirty = true;
        w->dirty[w->ndirty++] = (size_t)(c - w->conns);
    }
}

static void s_close(s_worker_t *w, s_conn_t *c, int64_t now)
{
    if (c->fd >= 0) {
        epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    if (c->state == S_UP)
        s_add(&w->connected, (uint64_t)-1);
    c->fd = -1;
    c->state = S_DOWN;
    c->inflight = 0; /* clean session: what was in flight is not sent again */
    c->out_len = c->in_len = 0;
    c->retry_at_us = now + 1000000;
}

static void s_open(s_worker_t *w, s_conn_t *c, int64_t now)
{
    c->fd = socket(s_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        mh_error("socket: %s", strerror(errno));
        c->retry_at_us = now + 1000000;
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)(c - w->conns)};
    if ((connect(c->fd, (struct sockaddr *)&s_addr, s_addrlen) < 0 && errno != EINPROGRESS) ||
        epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        s_add(&w->dropped, 1);
        s_close(w, c, now);
        return;
    }
    c->state = S_TCP;
}

/* the TCP connection is up: CONNECT, then wait for CONNACK */
static void s_on_connected(s_worker_t *w, s_conn_t *c, int64_t now)
{
    int err = 0;
    socklen_t len = sizeof err;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - w->conns)};
    char id[128]; /* the topic's middle: devices/<id>/telemetry */
    size_t id_len = c->topic_len - strlen("devices/") - strlen(s_suffix);
    memcpy(id, c->topic + strlen("devices/"), id_len);
    id[id_len] = 0;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err ||
        epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev) < 0 ||
        !s_reserve(&c->out, &c->out_cap, c->out_len + 200 + id_len)) {
        s_add(&w->dropped, 1);
        s_close(w, c, now);
        return;
    }
    c->out_len += ml_mqtt_connect(c->out + c->out_len, c->out_cap - c->out_len, id,
                                  (uint16_t)w->cfg->keepalive_s);
    c->state = S_CONNACK;
    s_mark_dirty(w, c);
}

static void s_latency_add(s_worker_t *w, int64_t lat)
{
    w->hist[s_bucket(lat > 0 ? (uint64_t)lat : 0)]++;
}

/* --twin: subscribe to the device's answers, devices/<id>/twin/update/+ */
static bool s_subscribe(s_worker_t *w, s_conn_t *c, int64_t now)
{
    char filter[160];
    if (c->topic_len + 3 > sizeof filter || !s_reserve(&c->out, &c->out_cap, c->out_len + 200)) {
        s_close(w, c, now);
        return false;
    }
    memcpy(filter, c->topic, c->topic_len);
    memcpy(filter + c->topic_len, "/+", 3);
    c->out_len += ml_mqtt_subscribe(c->out + c->out_len, c->out_cap - c->out_len, 1, filter, 0);
    c->state = S_SUBACK;
    s_mark_dirty(w, c);
    return true;
}

/* --twin: an answer on devices/<id>/twin/update/accepted or /rejected; the
 * clientToken it carries back is when its update was sent (µs) */
static void s_on_answer(s_worker_t *w, const ml_packet_t *p, int64_t now)
{
    static const char acc[] = "/accepted", key[] = "\"clientToken\":\"";
    bool accepted = p->topic_len >= sizeof acc - 1 &&
                    memcmp(p->topic + p->topic_len - (sizeof acc - 1), acc, sizeof acc - 1) == 0;
    s_add(accepted ? &w->accepted : &w->rejected, 1);
    const uint8_t *t = memmem(p->payload, p->payload_len, key, sizeof key - 1);
    if (!accepted || !t)
        return;
    int64_t sent = 0;
    for (t += sizeof key - 1; t < p->payload + p->payload_len && *t >= '0' && *t <= '9'; t++)
        sent = sent * 10 + (*t - '0');
    s_latency_add(w, now - sent);
}

static void s_on_packet(s_worker_t *w, s_conn_t *c, const ml_packet_t *p, int64_t now)
{
    if (p->type == ML_CONNACK && c->state == S_CONNACK) {
        if (p->value) {
            s_add(&w->refused, 1);
            s_close(w, c, now);
            return;
        }
        if (w->cfg->twin) {
            s_subscribe(w, c, now);
            return;
        }
        c->state = S_UP;
        s_add(&w->connected, 1);
    } else if (p->type == ML_SUBACK && c->state == S_SUBACK) {
        c->state = S_UP;
        s_add(&w->connected, 1);
    } else if (p->type == ML_PUBACK && c->inflight) {
        c->inflight--;
        s_add(&w->acked, 1);
        if (!w->cfg->twin)
            s_latency_add(w, now - c->sent_us[p->value % (uint64_t)w->cfg->inflight]);
    } else if (p->type == ML_PUBLISH) {
        if (p->value && s_reserve(&c->out, &c->out_cap, c->out_len + 4)) {
            c->out_len += ml_mqtt_puback(c->out + c->out_len, c->out_cap - c->out_len, p->value);
            s_mark_dirty(w, c);
        }
        if (w->cfg->twin)
            s_on_answer(w, p, now);
    }
}

static void s_read(s_worker_t *w, s_conn_t *c, int64_t now)
{
    if (!s_reserve(&c->in, &c->in_cap, c->in_len + 4096)) {
        s_close(w, c, now);
        return;
    }
    ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
    if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        s_add(&w->dropped, 1);
        s_close(w, c, now);
        return;
    }
    c->in_len += (size_t)r;
    size_t off = 0;
    for (;;) {
        ml_packet_t p;
        ssize_t k = ml_mqtt_parse(c->in + off, c->in_len - off, S_MAX_PACKET, &p);
        if (k < 0) {
            s_add(&w->malformed, 1);
            s_close(w, c, now);
            return;
        }
        if (k == 0)
            break;
        off += (size_t)k;
        s_on_packet(w, c, &p, now);
        if (c->state == S_DOWN)
            return;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
}

static void s_flush(s_worker_t *w, s_conn_t *c, int64_t now)
{
    c->dirty = false;
    if (c->fd < 0 || c->state == S_TCP || !c->out_len)
        return;
    ssize_t r = write(c->fd, c->out, c->out_len);
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            s_mark_dirty(w, c);
            return;
        }
        s_add(&w->dropped, 1);
        s_close(w, c, now);
        return;
    }
    memmove(c->out, c->out + r, c->out_len - (size_t)r);
    c->out_len -= (size_t)r;
    c->last_send_us = now;
    if (c->out_len)
        s_mark_dirty(w, c);
}

/* one message of device c, appended to what it writes this tick */
static void s_publish(s_worker_t *w, s_conn_t *c, int64_t now_ms, int64_t now_us)
{
    char payload[600];
    double v[SIM_METRICS];
    int64_t ts = now_ms > c->last_ts ? now_ms : c->last_ts + 1; /* a device's ts increase */
    sim_readings_next(&c->r, ts, &w->rng, v);
    size_t pl;
    if (w->cfg->twin)
        pl = ml_payload_twin(payload, ts, c->seq, v, (size_t)w->cfg->metrics, (uint64_t)now_us);
    else
        pl = ml_payload(payload, ts, c->seq, v, (size_t)w->cfg->metrics);
    if (c->out_len > S_OUT_MAX ||
        !s_reserve(&c->out, &c->out_cap, c->out_len + c->topic_len + pl + 16)) {
        s_add(&w->skipped, 1);
        return;
    }
    if (++c->next_id == 0)
        c->next_id = 1;
    c->out_len += ml_mqtt_publish(c->out + c->out_len, c->out_cap - c->out_len, c->topic,
                                  c->topic_len, c->next_id, payload, pl);
    c->sent_us[c->next_id % (uint64_t)w->cfg->inflight] = now_us;
    c->inflight++;
    c->last_ts = ts;
    c->seq++;
    s_add(&w->published, 1);
    s_mark_dirty(w, c);
}

/* ---- a worker thread ---- */

static void s_tick(s_worker_t *w, struct epoll_event *evs, int nev_max)
{
    const ml_config_t *cfg = w->cfg;
    int64_t now = mh_mono_us();
    int phase = __atomic_load_n(&s_phase, __ATOMIC_ACQUIRE);
    /* connections: the first ones at the connect rate, then those to retry */
    size_t allowed =
        (size_t)((double)(now - s_start_us) / 1e6 * cfg->connect_rate / (double)cfg->threads) + 1;
    while (w->opened < w->n && w->opened < allowed)
        s_open(w, &w->conns[w->opened++], now);
    int nev = epoll_wait(w->ep, evs, nev_max, 0);
    for (int i = 0; i < nev; i++) {
        s_conn_t *c = &w->conns[evs[i].data.u32];
        if (c->fd < 0)
            continue;
        if (c->state == S_TCP && (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            s_on_connected(w, c, now);
        else if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            s_read(w, c, now);
    }
    if (phase == P_PUBLISH) {
        int64_t due = (int64_t)((double)(now - s_t0_us) / 1e6 * w->rate);
        int64_t now_ms = mh_now_ms();
        for (; w->offered < due; w->offered++) {
            s_conn_t *c = &w->conns[w->cursor];
            w->cursor = (w->cursor + 1) % w->n;
            if (c->state == S_UP && c->inflight < (uint32_t)cfg->inflight)
                s_publish(w, c, now_ms, now);
            else
                s_add(&w->skipped, 1);
        }
    }
    /* keep-alive, and connections to open again, once a second in turn */
    size_t slice = w->n / (size_t)(1000 / cfg->tick_ms + 1) + 1;
    for (size_t k = 0; k < slice && w->opened == w->n; k++) {
        s_conn_t *c = &w->conns[w->sweep];
        w->sweep = (w->sweep + 1) % w->n;
        if (c->state == S_DOWN && now >= c->retry_at_us && phase != P_STOP)
            s_open(w, c, now);
        else if (c->state == S_UP && now - c->last_send_us > cfg->keepalive_s * 500000 &&
                 s_reserve(&c->out, &c->out_cap, c->out_len + 2)) {
            c->out_len += ml_mqtt_pingreq(c->out + c->out_len, 2);
            s_mark_dirty(w, c);
        }
    }
    size_t n = w->ndirty;
    w->ndirty = 0;
    for (size_t i = 0; i < n; i++)
        s_flush(w, &w->conns[w->dirty[i]], now);
}

static void *s_worker(void *arg)
{
    s_worker_t *w = arg;
    struct epoll_event evs[1024];
    int64_t tick_us = w->cfg->tick_ms * 1000, next = mh_mono_us();
    while (__atomic_load_n(&s_phase, __ATOMIC_ACQUIRE) != P_STOP) {
        s_tick(w, evs, 1024);
        next += tick_us;
        int64_t wait = next - mh_mono_us();
        if (wait > 0) {
            struct timespec ts = {.tv_sec = wait / 1000000, .tv_nsec = (wait % 1000000) * 1000};
            nanosleep(&ts, NULL);
        } else {
            next = mh_mono_us(); /* behind: no catch-up burst of ticks */
        }
    }
    /* a clean goodbye */
    for (size_t i = 0; i < w->n; i++) {
        s_conn_t *c = &w->conns[i];
        if (c->state == S_UP) {
            uint8_t d[2];
            if (write(c->fd, d, ml_mqtt_disconnect(d, sizeof d)) < 0)
                s_add(&w->dropped, 1);
        }
        s_close(w, c, 0);
    }
    return NULL;
}

/* ---- the run ---- */

static int s_resolve(const char *url)
{
    const char *hp = strstr(url, "://");
    if (!hp || (strncmp(url, "tcp://", 6) && strncmp(url, "mqtt://", 7))) {
        mh_error("--mqtt-url %s: only tcp://HOST:PORT (or mqtt://)", url);
        return -1;
    }
    hp += 3;
    char host[256];
    const char *colon = strrchr(hp, ':');
    const char *port = colon ? colon + 1 : "1883";
    size_t hl = colon ? (size_t)(colon - hp) : strlen(hp);
    if (hl == 0 || hl >= sizeof host) {
        mh_error("--mqtt-url %s: no host", url);
        return -1;
    }
    memcpy(host, hp, hl);
    host[hl] = 0;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc || !ai) {
        mh_error("--mqtt-url %s: %s", url, gai_strerror(rc));
        return -1;
    }
    memcpy(&s_addr, ai->ai_addr, ai->ai_addrlen);
    s_addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

typedef struct {
    uint64_t published, acked, skipped, connected, refused, dropped, malformed, accepted, rejected;
} s_totals_t;

static s_totals_t s_sum(s_worker_t *ws, size_t n)
{
    s_totals_t t = {0};
    for (size_t i = 0; i < n; i++) {
        t.published += s_get(&ws[i].published);
        t.acked += s_get(&ws[i].acked);
        t.skipped += s_get(&ws[i].skipped);
        t.connected += s_get(&ws[i].connected);
        t.refused += s_get(&ws[i].refused);
        t.dropped += s_get(&ws[i].dropped);
        t.malformed += s_get(&ws[i].malformed);
        t.accepted += s_get(&ws[i].accepted);
        t.rejected += s_get(&ws[i].rejected);
    }
    return t;
}

static double s_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

/* sleeps up to ms, in steps, returning early on a signal or when done() */
static void s_wait(int64_t ms, bool (*done)(s_worker_t *, size_t), s_worker_t *ws, size_t n)
{
    int64_t end = mh_mono_ms() + ms;
    while (!s_stop && mh_mono_ms() < end && !(done && done(ws, n))) {
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
}

static bool s_all_connected(s_worker_t *ws, size_t n)
{
    return s_sum(ws, n).connected == (uint64_t)ws[0].cfg->devices;
}

static bool s_all_acked(s_worker_t *ws, size_t n)
{
    s_totals_t t = s_sum(ws, n);
    return t.acked >= t.published && (!ws[0].cfg->twin || t.accepted + t.rejected >= t.published);
}

static void s_latency(s_worker_t *ws, size_t n, double *p50, double *p99)
{
    uint64_t h[S_HIST] = {0}, total = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t b = 0; b < S_HIST; b++) {
            h[b] += ws[i].hist[b];
            total += ws[i].hist[b];
        }
    *p50 = *p99 = 0;
    uint64_t seen = 0;
    for (size_t b = 0; b < S_HIST && total; b++) {
        seen += h[b];
        if (*p50 == 0 && seen * 2 >= total)
            *p50 = s_bucket_us(b) / 1000;
        if (seen * 100 >= total * 99) {
            *p99 = s_bucket_us(b) / 1000;
            break;
        }
    }
}

static int s_run(const ml_config_t *cfg)
{
    size_t nt = (size_t)cfg->threads, n = (size_t)cfg->devices;
    double rate = cfg->rate > 0 ? cfg->rate : (double)n * 1000.0 / (double)cfg->interval_ms;
    s_worker_t *ws = calloc(nt, sizeof *ws);
    s_conn_t *conns = calloc(n, sizeof *conns);
    int64_t *sent = calloc(n * (size_t)cfg->inflight, sizeof *sent);
    size_t *dirty = calloc(n, sizeof *dirty);
    if (!ws || !conns || !sent || !dirty) {
        mh_error("out of memory for %zu devices", n);
        free(ws), free(conns), free(sent), free(dirty);
        return 1;
    }
    uint64_t seed = (uint64_t)mh_now_ms() * 0x9E3779B97F4A7C15ULL | 1;
    size_t at = 0;
    for (size_t t = 0; t < nt; t++) {
        s_worker_t *w = &ws[t];
        w->cfg = cfg;
        w->n = n / nt + (t < n % nt);
        w->conns = conns + at;
        w->dirty = dirty + at;
        w->rate = rate * (double)w->n / (double)n;
        w->rng = seed + t * 0x632BE59BD9B4E019ULL;
        for (size_t i = 0; i < w->n; i++) {
            s_conn_t *c = &w->conns[i];
            c->fd = -1;
            c->index = (uint32_t)(at + i);
            c->sent_us = sent + (at + i) * (size_t)cfg->inflight;
            int tl = asprintf(&c->topic, "devices/%s-%04zu%s", cfg->prefix, at + i, s_suffix);
            if (tl < 0) {
                mh_error("out of memory for %zu devices", n);
                exit(1);
            }
            c->topic_len = (size_t)tl;
            sim_readings_init(&c->r, &w->rng);
        }
        at += w->n;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
    }
    mh_info("%zu devices on %zu threads, %.0f msg/s in all for %.1f s, broker %s", n, nt, rate,
            (double)cfg->duration_ms / 1000, cfg->mqtt_url);
    s_start_us = mh_mono_us();
    __atomic_store_n(&s_phase, P_CONNECT, __ATOMIC_RELEASE);
    for (size_t t = 0; t < nt; t++)
        pthread_create(&ws[t].th, NULL, s_worker, &ws[t]);
    s_wait(cfg->connect_timeout_ms, s_all_connected, ws, nt);
    double connect_s = (double)(mh_mono_us() - s_start_us) / 1e6;
    s_totals_t t0 = s_sum(ws, nt);
    mh_info("%" PRIu64 " of %zu devices connected in %.2f s (%.0f a second)", t0.connected, n,
            connect_s, (double)t0.connected / connect_s);
    double cpu0 = s_cpu_s();
    s_t0_us = mh_mono_us();
    __atomic_store_n(&s_phase, P_PUBLISH, __ATOMIC_RELEASE);
    for (int64_t done = 0; done < cfg->duration_ms && !s_stop;) {
        int64_t step = cfg->report_ms > 0 ? cfg->report_ms : cfg->duration_ms;
        if (step > cfg->duration_ms - done)
            step = cfg->duration_ms - done;
        s_wait(step, NULL, ws, nt);
        done += step;
        if (cfg->report_ms > 0 && done < cfg->duration_ms) {
            s_totals_t t = s_sum(ws, nt);
            mh_info("%.0f s: connected=%" PRIu64 " published=%" PRIu64 " acked=%" PRIu64
                    " skipped=%" PRIu64,
                    (double)done / 1000, t.connected, t.published, t.acked, t.skipped);
        }
    }
    double publish_s = (double)(mh_mono_us() - s_t0_us) / 1e6;
    __atomic_store_n(&s_phase, P_DRAIN, __ATOMIC_RELEASE);
    s_wait(cfg->drain_ms, s_all_acked, ws, nt);
    double cpu = s_cpu_s() - cpu0;
    __atomic_store_n(&s_phase, P_STOP, __ATOMIC_RELEASE);
    for (size_t t = 0; t < nt; t++)
        pthread_join(ws[t].th, NULL);
    s_totals_t tot = s_sum(ws, nt);
    double p50, p99;
    s_latency(ws, nt, &p50, &p99);
    char twin[200] = "";
    if (cfg->twin)
        snprintf(twin, sizeof twin,
                 " accepted=%" PRIu64 " rejected=%" PRIu64 " accepted_rate=%.0f"
                 " accepted_p50_ms=%.2f accepted_p99_ms=%.2f",
                 tot.accepted, tot.rejected, (double)tot.accepted / publish_s, p50, p99);
    printf("moteload: devices=%zu connected_in_s=%.2f published=%" PRIu64 " acked=%" PRIu64
           " skipped=%" PRIu64 " refused=%" PRIu64 " dropped=%" PRIu64 " malformed=%" PRIu64
           " rate=%.0f puback_p50_ms=%.2f puback_p99_ms=%.2f%s cpu_s=%.3f cpu_us_per_msg=%.2f\n",
           n, connect_s, tot.published, tot.acked, tot.skipped, tot.refused, tot.dropped,
           tot.malformed, (double)tot.published / publish_s, cfg->twin ? -1.0 : p50,
           cfg->twin ? -1.0 : p99, twin, cpu,
           tot.published ? cpu * 1e6 / (double)tot.published : 0.0);
    fflush(stdout);
    for (size_t i = 0; i < n; i++)
        free(conns[i].out), free(conns[i].in), free(conns[i].topic);
    for (size_t t = 0; t < nt; t++)
        close(ws[t].ep);
    free(ws), free(conns), free(sent), free(dirty);
    return tot.published && tot.acked == tot.published &&
                   (!cfg->twin || tot.accepted == tot.published)
               ? 0
               : 1;
}

int main(int argc, char **argv)
{
    ml_config_t cfg = {0};
    int rc = mh_config_load(s_options, &cfg, argc, argv, "moteload",
                            "A light MQTT load generator: QoS 1 telemetry, one connection a "
                            "device, a few threads.");
    if (rc != 0) {
        mh_config_free(s_options, &cfg);
        return rc > 0 ? 0 : 2;
    }
    mh_log_init("moteload", MH_LOG_INFO);
    if (cfg.devices < 1 || cfg.devices > 10000000 || cfg.metrics < 1 || cfg.metrics > 5 ||
        cfg.threads < 1 || cfg.threads > 64 || cfg.threads > cfg.devices || cfg.inflight < 1 ||
        cfg.inflight > 65535 || cfg.tick_ms < 1 || cfg.tick_ms > 1000 || cfg.interval_ms < 1 ||
        cfg.rate < 0 || cfg.connect_rate <= 0 || cfg.keepalive_s < 1 || cfg.keepalive_s > 65535 ||
        !*cfg.prefix || strlen(cfg.prefix) > 56) {
        mh_error("--devices 1..10000000, --metrics 1..5, --threads 1..64 and at most --devices, "
                 "--inflight 1..65535, --tick 1ms..1s, --interval >= 1ms, --rate >= 0, "
                 "--connect-rate > 0, --keepalive 1..65535, --prefix 1..56 characters (ids are at "
                 "most 64)");
        mh_config_free(s_options, &cfg);
        return 2;
    }
    if (s_resolve(cfg.mqtt_url) < 0) {
        mh_config_free(s_options, &cfg);
        return 2;
    }
    if (cfg.twin)
        s_suffix = "/twin/update";
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    rc = s_run(&cfg);
    mh_config_free(s_options, &cfg);
    return rc;
}
