/* motesim — a device simulator and load generator on the reference agent.
 *
 * N devices, one MQTT connection each, publishing telemetry at an interval
 * per device (or a total rate) with realistic, varying metrics: temperature
 * on a daily curve with noise, humidity, a draining battery, a noisy rssi,
 * a door contact. Devices connect at a bounded rate and reconnect with
 * backoff (the agent's). Ctrl-C stops it and prints what it published. */
#include "mh_agent.h"
#include "mh_config.h"
#include "mh_log.h"
#include "mh_time.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <fcntl.h>
#include <unistd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    char *mqtt_url;
    char *prefix;
    int64_t devices;
    int64_t interval_ms;
    double rate;
    int64_t duration_ms;
    int64_t qos;
    int64_t mqtt_version;
    int64_t samples;
    int64_t metrics;
    double connect_rate;
    int64_t report_ms;
    bool stamp;
    char *firmware;
} sim_config_t;

#define S_CFG(f) offsetof(sim_config_t, f)
static const mh_cfg_opt_t s_options[] = {
    {"mqtt-url", "MH_MQTT_URL", MH_CFG_STR, "tcp://127.0.0.1:1883", S_CFG(mqtt_url),
     "MQTT broker URL"},
    {"prefix", "MOTESIM_PREFIX", MH_CFG_STR, "sim", S_CFG(prefix), "device ids are PREFIX-0000..."},
    {"devices", "MOTESIM_DEVICES", MH_CFG_INT, "1000", S_CFG(devices), "number of devices"},
    {"interval", "MOTESIM_INTERVAL", MH_CFG_DURATION, "10s", S_CFG(interval_ms),
     "telemetry interval per device"},
    {"rate", "MOTESIM_RATE", MH_CFG_DOUBLE, "0", S_CFG(rate),
     "total messages per second across devices (overrides --interval when > 0)"},
    {"duration", "MOTESIM_DURATION", MH_CFG_DURATION, "0", S_CFG(duration_ms),
     "stop after this long (0: run until Ctrl-C)"},
    {"qos", "MOTESIM_QOS", MH_CFG_INT, "1", S_CFG(qos), "MQTT QoS of telemetry (0 or 1)"},
    {"mqtt-version", "MOTESIM_MQTT_VERSION", MH_CFG_INT, "5", S_CFG(mqtt_version),
     "5, or 4 for MQTT 3.1.1"},
    {"samples", "MOTESIM_SAMPLES", MH_CFG_INT, "1", S_CFG(samples), "samples per message"},
    {"metrics", "MOTESIM_METRICS", MH_CFG_INT, "5", S_CFG(metrics),
     "metrics per sample, 1-5: temperature, humidity, battery, rssi, door_open"},
    {"connect-rate", "MOTESIM_CONNECT_RATE", MH_CFG_DOUBLE, "500", S_CFG(connect_rate),
     "new connections per second at most"},
    {"report", "MOTESIM_REPORT", MH_CFG_DURATION, "10s", S_CFG(report_ms),
     "print progress this often (0: never)"},
    {"stamp", "MOTESIM_STAMP", MH_CFG_BOOL, "true", S_CFG(stamp),
     "put the publish time in each sample's ts (used to measure latency)"},
    {"firmware", "MOTESIM_FIRMWARE", MH_CFG_STR, "1.0.0", S_CFG(firmware),
     "firmware version the devices report"},
    MH_CFG_END,
};

typedef struct {
    mh_agent_t *agent;
    int64_t next_ms;
    int64_t seq, last_ts;
    double temp_bias, battery, rssi;
    bool door;
    bool started;
} s_device_t;

static volatile sig_atomic_t s_stop;
static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static double s_rand(void)
{
    return (double)random() / RAND_MAX;
}

static void s_fill(s_device_t *d, mh_sample_t *s, int64_t ts, size_t metrics)
{
    double hour = fmod((double)ts / 3600000.0, 24.0);
    s->ts = ts;
    s->seq = d->seq++;
    s->n = 5;
    d->battery = fmax(0, d->battery - 0.0005 * s_rand());
    d->rssi = fmin(-40, fmax(-110, d->rssi + (s_rand() - 0.5) * 3));
    if (s_rand() < 0.01)
        d->door = !d->door;
    s->m[0].name = "temperature";
    s->m[0].value =
        round((18 + d->temp_bias + 4 * sin((hour - 9) / 24 * 2 * M_PI) + (s_rand() - 0.5)) * 100) /
        100;
    s->m[1].name = "humidity";
    s->m[1].value = round((45 + 10 * cos(hour / 24 * 2 * M_PI) + (s_rand() - 0.5) * 4) * 10) / 10;
    s->m[2].name = "battery";
    s->m[2].value = round(d->battery * 10) / 10;
    s->m[3].name = "rssi";
    s->m[3].value = round(d->rssi);
    s->m[4].name = "door_open";
    s->m[4].value = d->door;
    s->m[4].is_bool = true;
    s->n = metrics;
}

int main(int argc, char **argv)
{
    sim_config_t cfg = {0};
    int rc = mh_config_load(s_options, &cfg, argc, argv, "motesim",
                            "Simulates Motehub devices publishing telemetry over MQTT.");
    if (rc != 0) {
        mh_config_free(s_options, &cfg);
        return rc > 0 ? 0 : 2;
    }
    mh_log_init("motesim", MH_LOG_INFO);
    if (cfg.devices < 1 || cfg.samples < 1 || cfg.samples > 1000 || cfg.metrics < 1 ||
        cfg.metrics > 5 || cfg.qos < 0 || cfg.qos > 1) {
        mh_error("--devices must be >= 1, --samples 1..1000, --metrics 1..5, --qos 0 or 1");
        mh_config_free(s_options, &cfg);
        return 2;
    }
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    srandom((unsigned)time(NULL));

    int64_t interval =
        cfg.rate > 0 ? (int64_t)(1000.0 * (double)cfg.devices / cfg.rate) : cfg.interval_ms;
    if (interval < 1)
        interval = 1;
    size_t n = (size_t)cfg.devices;
    s_device_t *devs = calloc(n, sizeof *devs);
    mh_sample_t *samples = calloc((size_t)cfg.samples, sizeof *samples);
    int64_t start = mh_mono_ms();
    for (size_t i = 0; i < n; i++) {
        char id[80];
        snprintf(id, sizeof id, "%s-%04zu", cfg.prefix, i);
        mh_agent_opts_t o = {.url = cfg.mqtt_url,
                             .device_id = id,
                             .mqtt_version = (int)cfg.mqtt_version,
                             .max_inflight = 64,
                             .firmware = cfg.firmware};
        devs[i].agent = mh_agent_new(&o);
        if (!devs[i].agent) {
            mh_error("cannot create device %s (bad --mqtt-url?)", id);
            return 1;
        }
        devs[i].temp_bias = (s_rand() - 0.5) * 6;
        devs[i].battery = 60 + s_rand() * 40;
        devs[i].rssi = -60 - s_rand() * 30;
        /* spread the first publications over one interval */
        devs[i].next_ms = start + (int64_t)((double)interval * (double)i / (double)n);
    }
    mh_info("%zu devices, one message every %" PRId64 " ms each (%.0f msg/s in all), broker %s", n,
            interval, 1000.0 * (double)n / (double)interval, cfg.mqtt_url);

    size_t connected_started = 0;
    uint64_t published = 0, failed = 0, last_published = 0;
    int64_t next_report = start + cfg.report_ms, last_report = start;
    while (!s_stop) {
        int64_t now = mh_mono_ms();
        if (cfg.duration_ms && now - start >= cfg.duration_ms)
            break;
        /* connect at the configured rate */
        size_t want =
            (size_t)fmin((double)n, (double)(now - start) / 1000.0 * cfg.connect_rate + 1);
        for (; connected_started < want; connected_started++)
            if (mh_agent_connect(devs[connected_started].agent) < 0)
                failed++;
        int64_t wall = mh_now_ms();
        for (size_t i = 0; i < connected_started; i++) {
            s_device_t *d = &devs[i];
            if (d->next_ms > now || !mh_agent_connected(d->agent))
                continue;
            for (int64_t k = 0; k < cfg.samples; k++) {
                /* unique, increasing ts per device */
                int64_t ts = cfg.stamp ? wall : 0;
                if (ts && ts <= d->last_ts)
                    ts = d->last_ts + 1;
                if (ts)
                    d->last_ts = ts;
                s_fill(d, &samples[k], ts, (size_t)cfg.metrics);
            }
            int r = mh_agent_publish_samples(d->agent, samples, (size_t)cfg.samples, (int)cfg.qos);
            if (r == 0) {
                published++;
                d->next_ms += interval;
                if (d->next_ms < now - 5 * interval)
                    d->next_ms = now; /* fell far behind: do not burst */
            } else if (r != -EAGAIN) {
                failed++;
                d->next_ms = now + interval;
            }
        }
        if (cfg.report_ms && now >= next_report) {
            size_t up = 0;
            for (size_t i = 0; i < n; i++)
                up += mh_agent_connected(devs[i].agent);
            mh_info("%zu/%zu connected, %.0f msg/s, %" PRIu64 " published", up, n,
                    (double)(published - last_published) * 1000.0 / (double)(now - last_report),
                    published);
            last_published = published;
            last_report = now;
            next_report = now + cfg.report_ms;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    int64_t elapsed = mh_mono_ms() - start;
    uint64_t delivered = 0;
    /* Wait for the last acknowledgements, then close every connection at
     * once rather than one after another. */
    int64_t deadline = mh_mono_ms() + 5000;
    for (size_t i = 0; i < n; i++)
        mh_agent_wait_delivered(devs[i].agent, (int)fmax(0, (double)(deadline - mh_mono_ms())));
    for (size_t i = 0; i < n; i++) {
        /* minus the status message each sent on connect */
        uint64_t d = mh_agent_delivered(devs[i].agent);
        delivered += d ? d - 1 : 0;
        mh_agent_disconnect_begin(devs[i].agent);
    }
    for (size_t i = 0; i < n; i++)
        mh_agent_destroy(&devs[i].agent);
    printf("motesim: devices=%zu published=%" PRIu64 " acked=%" PRIu64 " failed=%" PRIu64
           " elapsed_ms=%" PRId64 " rate=%.1f\n",
           n, published, delivered, failed, elapsed,
           (double)published * 1000.0 / (double)(elapsed ? elapsed : 1));
    free(devs);
    free(samples);
    mh_config_free(s_options, &cfg);
    return 0;
}
