/* motesim — a device simulator and load generator on the reference agent.
 *
 * N devices, one MQTT connection each, publishing telemetry at an interval
 * per device (or a total rate) with realistic, varying metrics: temperature
 * on a daily curve with noise, humidity, a draining battery, a noisy rssi,
 * a door contact. Devices connect at a bounded rate and reconnect with
 * backoff (the agent's).
 *
 * Twin: on every connect a device reports firmware, location, battery and
 * rssi; it applies the desired keys it knows ("interval" in seconds, "led")
 * and reports them back; it acks the commands "reboot", "ping" and "blink"
 * (others are rejected by the agent). --flap-* takes devices offline (last
 * will) and back. --twin-rate drives twin updates and measures the time
 * from twin/update to update/accepted. --register registers the devices
 * through twin's RPC first. Ctrl-C stops it and prints what it did. */
#include "mh_agent.h"
#include "mh_json.h"
#include "mh_config.h"
#include "mh_curve.h"
#include "mh_envelope.h"
#include "mh_log.h"
#include "mh_time.h"
#include "sim_fleet.h"
#include "sim_readings.h"
#include "twin.pb-c.h"

#include <czmq.h>
#include <pthread.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <fcntl.h>
#include <sys/wait.h>
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
    bool twin;
    char *register_rpc;
    bool register_only;
    double twin_rate;
    double flap_fraction;
    int64_t flap_interval_ms;
    int64_t flap_down_ms;
    int64_t wait_commands;
    int64_t queue_commands;
    char *ota_key;
    char *ota_fail;
    char *tags;
    char *misbehave;
    int64_t ota_install_ms;
    int64_t ota_workers;
    char *mqtt_ca, *certs, *issue_certs, *motectl;
    char *curve_dir;
    bool aws;
} sim_config_t;

#define S_CFG(f) offsetof(sim_config_t, f)
static const mh_cfg_opt_t s_options[] = {
    {"mqtt-url", "MH_MQTT_URL", MH_CFG_STR, "tcp://127.0.0.1:1883", S_CFG(mqtt_url),
     "MQTT broker URL"},
    {"mqtt-ca", "MOTESIM_MQTT_CA", MH_CFG_STR, "", S_CFG(mqtt_ca),
     "the fleet CA certificate (ssl:// URLs); default CERTS/ca.crt"},
    {"certs", "MOTESIM_CERTS", MH_CFG_STR, "", S_CFG(certs),
     "directory of per-device certificates CERTS/<id>.crt and <id>.key (ssl:// URLs)"},
    {"issue-certs", "MOTESIM_ISSUE_CERTS", MH_CFG_STR, "", S_CFG(issue_certs),
     "fleet CA directory: issue the devices' missing certificates into --certs with motectl"},
    {"motectl", "MOTESIM_MOTECTL", MH_CFG_STR, "motectl", S_CFG(motectl),
     "the motectl program --issue-certs runs"},
    {"curve-dir", "MH_CURVE_DIR", MH_CFG_STR, "", S_CFG(curve_dir),
     "CURVE keys for --register (motectl curve keygen; client key tools)"},
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
    {"twin", "MOTESIM_TWIN", MH_CFG_BOOL, "true", S_CFG(twin),
     "report firmware, location, battery and rssi to the twin on every connect"},
    {"register-only", "MOTESIM_REGISTER_ONLY", MH_CFG_BOOL, "false", S_CFG(register_only),
     "register the devices through --register and exit (for benchmarks of a large registry)"},
    {"register", "MOTESIM_REGISTER", MH_CFG_STR, "", S_CFG(register_rpc),
     "twin RPC endpoint to register the devices at first (e.g. tcp://127.0.0.1:5581)"},
    {"aws", "MOTESIM_AWS", MH_CFG_BOOL, "false", S_CFG(aws),
     "speak the AWS IoT device APIs as an AWS SDK device: twin updates through the classic"
     " shadow ($aws/things/ID/shadow/update), jobs from notify-next answered SUCCEEDED"},
    {"twin-rate", "MOTESIM_TWIN_RATE", MH_CFG_DOUBLE, "0", S_CFG(twin_rate),
     "twin updates per second across devices; latency to update/accepted is measured"},
    {"flap-fraction", "MOTESIM_FLAP_FRACTION", MH_CFG_DOUBLE, "0", S_CFG(flap_fraction),
     "share of devices (0..1) that drop off (last will) every --flap-interval"},
    {"flap-interval", "MOTESIM_FLAP_INTERVAL", MH_CFG_DURATION, "60s", S_CFG(flap_interval_ms),
     "how often devices flap"},
    {"flap-down", "MOTESIM_FLAP_DOWN", MH_CFG_DURATION, "5s", S_CFG(flap_down_ms),
     "how long a flapping device stays offline"},
    {"wait-commands", "MOTESIM_WAIT_COMMANDS", MH_CFG_INT, "0", S_CFG(wait_commands),
     "stop once this many commands were handled in all (0: no) and print when"},
    {"queue-commands", "MOTESIM_QUEUE_COMMANDS", MH_CFG_INT, "0", S_CFG(queue_commands),
     "before connecting, send this many \"ping\" commands (round-robin over the devices) through"
     " the --register endpoint, then wait for all of them (a reconnect-storm benchmark)"},
    {"ota-key", "MOTESIM_OTA_KEY", MH_CFG_STR, "", S_CFG(ota_key),
     "the fleet's Ed25519 public key (PEM file) the devices verify images with; without it"
     " OTA jobs fail"},
    {"ota-fail", "MOTESIM_OTA_FAIL", MH_CFG_STR, "", S_CFG(ota_fail),
     "VERSION:SHARE[,...]: installing VERSION fails on that share of the devices (the same"
     " devices every run)"},
    {"tags", "MOTESIM_TAGS", MH_CFG_STR, "", S_CFG(tags),
     "KEY=VALUE[:WEIGHT],...;KEY2=...: the tags devices register with, one value of each key"
     " per device, picked by weight (the same devices every run), beside \"sim\": true"},
    {"misbehave", "MOTESIM_MISBEHAVE", MH_CFG_STR, "", S_CFG(misbehave),
     "VERSION:SHARE:MODE[,...]: after installing VERSION, that share of the devices (the same"
     " every run) misbehaves — MODE reconnect (runs 5 s, then drops its connection every 6 s),"
     " hot (+15 degrees),"
     " drain (battery a hundred times faster) or errors (metric \"errors\", reported as 0 by"
     " every other device)"},
    {"ota-install-time", "MOTESIM_OTA_INSTALL_TIME", MH_CFG_DURATION, "1s", S_CFG(ota_install_ms),
     "how long installing an image takes"},
    {"ota-workers", "MOTESIM_OTA_WORKERS", MH_CFG_INT, "8", S_CFG(ota_workers),
     "threads downloading and verifying images for all devices"},
    MH_CFG_END,
};

typedef struct {
    mh_agent_t *agent;
    int64_t interval_ms; /* desired "interval" when set, else the global one (0) */
    int led;
    bool was_connected;
    int64_t down_until; /* flapping: reconnect at this time */
    int64_t up_since;   /* when its connection came up (mono ms) */
    unsigned bad;       /* --misbehave modes it shows now (SIM_BAD_*) */
    int reboots;        /* crashes so far (a crash loop's), reported as rebootCount */
    bool crashed;       /* the next connect follows a crash: report it */
    int64_t next_ms;
    int64_t seq, last_ts;
    sim_readings_t r;
    bool started;
} s_device_t;

static volatile sig_atomic_t s_stop;
static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static uint64_t s_rng = 0x9E3779B97F4A7C15ULL;

static double s_rand(void)
{
    return sim_rand(&s_rng);
}

static bool s_errors_metric; /* --misbehave has an errors mode: every device reports "errors" */

static void s_fill(s_device_t *d, mh_sample_t *s, int64_t ts, size_t metrics)
{
    double v[SIM_METRICS];
    if (d->bad & SIM_BAD_DRAIN)
        d->r.battery = d->r.battery > 2 ? d->r.battery - 2 : 0;
    sim_readings_next(&d->r, ts, &s_rng, v);
    if (d->bad & SIM_BAD_HOT)
        v[0] += 15;
    s->ts = ts;
    s->seq = d->seq++;
    for (size_t i = 0; i < SIM_METRICS; i++) {
        s->m[i].name = sim_metric_names[i];
        s->m[i].value = v[i];
        s->m[i].is_bool = sim_metric_decimals[i] < 0;
    }
    s->n = metrics;
    if (s_errors_metric) {
        s->m[metrics].name = "errors";
        s->m[metrics].value = d->bad & SIM_BAD_ERRORS ? (double)(1 + (int)(s_rand() * 3)) : 0;
        s->m[metrics].is_bool = false;
        s->n = metrics + 1;
    }
}

/* ---- twin behaviour (Paho's thread for the callbacks) ---- */

static pthread_mutex_t s_lat_lock = PTHREAD_MUTEX_INITIALIZER;
static double *s_lat;
static size_t s_nlat, s_caplat;
static uint64_t s_accepted, s_rejected, s_commands;
static int64_t s_first_cmd_ms, s_last_cmd_ms, s_start_wall;

static void s_report_state(s_device_t *d, const char *firmware, bool full)
{
    json_t *rep = json_object();
    if (full) {
        json_object_set_new(rep, "firmware", json_string(firmware));
        /* a stable position per device, around Europe */
        unsigned h = 2166136261u;
        for (const char *p = mh_agent_id(d->agent); *p; p++)
            h = (h ^ (unsigned char)*p) * 16777619u;
        json_object_set_new(rep, "location",
                            json_pack("{s:f,s:f}", "lat", 40 + (h % 2000) / 100.0, "lon",
                                      -5 + ((h / 2000) % 3000) / 100.0));
    }
    if (d->crashed) {
        /* what a device reports at boot after a crash */
        json_object_set_new(rep, "rebootCount", json_integer(d->reboots));
        json_object_set_new(rep, "resetReason", json_string("watchdog"));
        d->crashed = false;
    }
    json_object_set_new(rep, "battery", json_real(round(d->r.battery * 10) / 10));
    json_object_set_new(rep, "rssi", json_integer((json_int_t)round(d->r.rssi)));
    mh_agent_report(d->agent, rep, NULL);
    json_decref(rep);
}

static void s_on_delta(mh_agent_t *a, json_t *state, int64_t version, void *ud)
{
    (void)version;
    s_device_t *d = ud;
    json_t *applied = json_object();
    json_t *iv = json_object_get(state, "interval"), *led = json_object_get(state, "led");
    if (json_is_number(iv) && json_number_value(iv) >= 1 && json_number_value(iv) <= 86400) {
        __atomic_store_n(&d->interval_ms, (int64_t)(json_number_value(iv) * 1000),
                         __ATOMIC_RELAXED);
        json_object_set(applied, "interval", iv);
    }
    if (json_is_boolean(led)) {
        d->led = json_is_true(led);
        json_object_set(applied, "led", led);
    }
    if (json_object_size(applied))
        mh_agent_report(a, applied, NULL);
    json_decref(applied);
}

static mh_cmd_outcome_t s_on_command(mh_agent_t *a, const char *id, json_t *params, json_t **result,
                                     void *ud)
{
    (void)a;
    (void)id;
    (void)params;
    (void)ud;
    int64_t now = mh_now_ms();
    pthread_mutex_lock(&s_lat_lock);
    if (!s_commands++)
        s_first_cmd_ms = now - s_start_wall;
    s_last_cmd_ms = now - s_start_wall;
    pthread_mutex_unlock(&s_lat_lock);
    *result = json_pack("{s:I}", "at", (json_int_t)now);
    return MH_CMD_SUCCEEDED;
}

/* An AWS IoT job from notify-next: done at once (SUCCEEDED), counted. */
static uint64_t s_aws_jobs, s_aws_first_ms, s_aws_last_ms;
static void s_aws_job(mh_agent_t *a, const char *payload, size_t len)
{
    json_t *v = mh_json_loadb(payload, len, 0, MH_JSON_MAX_DEPTH, NULL);
    const char *job = json_string_value(json_object_get(json_object_get(v, "execution"), "jobId"));
    char topic[160];
    static const char done[] = "{\"status\":\"SUCCEEDED\",\"statusDetails\":{\"by\":\"motesim\"}}";
    if (job && snprintf(topic, sizeof topic, "jobs/%s/update", job) < (int)sizeof topic &&
        mh_agent_publish_aws(a, topic, done, sizeof done - 1, 1) == 0) {
        uint64_t now = (uint64_t)mh_now_ms();
        pthread_mutex_lock(&s_lat_lock);
        if (!s_aws_jobs++)
            s_aws_first_ms = now;
        s_aws_last_ms = now;
        pthread_mutex_unlock(&s_lat_lock);
    }
    json_decref(v);
}

/* Latency of twin updates: the clientToken carries the send time in µs. */
static void s_on_message(mh_agent_t *a, const char *sub, const char *payload, size_t len, void *ud)
{
    (void)a;
    (void)ud;
    if (strcmp(sub, "aws/jobs/notify-next") == 0) {
        s_aws_job(a, payload, len);
        return;
    }
    bool acc =
        strcmp(sub, "twin/update/accepted") == 0 || strcmp(sub, "aws/shadow/update/accepted") == 0;
    if (!acc && strcmp(sub, "twin/update/rejected") != 0 &&
        strcmp(sub, "aws/shadow/update/rejected") != 0)
        return;
    json_t *v = mh_json_loadb(payload, len, 0, MH_JSON_MAX_DEPTH, NULL);
    const char *tok = json_string_value(json_object_get(v, "clientToken"));
    if (tok && strncmp(tok, "b", 1) == 0) {
        double ms = ((double)mh_mono_us() - strtod(tok + 1, NULL)) / 1000.0;
        pthread_mutex_lock(&s_lat_lock);
        if (acc) {
            s_accepted++;
            if (s_nlat == s_caplat) {
                s_caplat = s_caplat ? s_caplat * 2 : 65536;
                s_lat = realloc(s_lat, s_caplat * sizeof *s_lat);
            }
            s_lat[s_nlat++] = ms;
        } else {
            s_rejected++;
        }
        pthread_mutex_unlock(&s_lat_lock);
    }
    json_decref(v);
}

/* ---- OTA behaviour ---- */

static sim_config_t *s_cfg;
static uint64_t s_ota_ok, s_ota_failed;
typedef struct s_install_t {
    mh_agent_t *agent;
    char job[72];
    int64_t due;
    struct s_install_t *next;
} s_install_t;
static s_install_t *s_installs; /* under s_lat_lock */

static mh_cmd_outcome_t s_on_install(mh_agent_t *a, const mh_ota_job_t *job, const uint8_t *image,
                                     size_t len, char *error, size_t errlen, void *ud)
{
    (void)image;
    (void)len;
    (void)ud;
    if (strcmp(job->action, "install") == 0 &&
        sim_ota_fails(s_cfg->ota_fail, mh_agent_id(a), job->version)) {
        snprintf(error, errlen, "simulated install failure of %s", job->version);
        __atomic_add_fetch(&s_ota_failed, 1, __ATOMIC_RELAXED);
        return MH_CMD_FAILED;
    }
    if (s_cfg->ota_install_ms <= 0) {
        __atomic_add_fetch(&s_ota_ok, 1, __ATOMIC_RELAXED);
        return MH_CMD_SUCCEEDED;
    }
    s_install_t *in = calloc(1, sizeof *in);
    if (!in) {
        snprintf(error, errlen, "out of memory");
        return MH_CMD_FAILED;
    }
    in->agent = a;
    snprintf(in->job, sizeof in->job, "%s", job->job_id);
    in->due = mh_mono_ms() + s_cfg->ota_install_ms;
    pthread_mutex_lock(&s_lat_lock);
    in->next = s_installs;
    s_installs = in;
    pthread_mutex_unlock(&s_lat_lock);
    return MH_CMD_PENDING;
}

/* Finishes installs whose time has come (all of them when `all`). */
static void s_ota_due(int64_t now, bool all)
{
    pthread_mutex_lock(&s_lat_lock);
    s_install_t **pp = &s_installs, *done = NULL;
    while (*pp) {
        s_install_t *in = *pp;
        if (all || in->due <= now) {
            *pp = in->next;
            in->next = done;
            done = in;
        } else {
            pp = &in->next;
        }
    }
    pthread_mutex_unlock(&s_lat_lock);
    while (done) {
        s_install_t *in = done;
        done = in->next;
        if (!all) {
            mh_agent_ota_done(in->agent, in->job, true, NULL);
            __atomic_add_fetch(&s_ota_ok, 1, __ATOMIC_RELAXED);
        }
        free(in);
    }
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Fills request `i` of a pipelined run; `id` is room for the device id. */
typedef void(s_fill_fn)(Mh__TwinRequest *q, size_t i, char *id, size_t idlen, void *ud);

/* Sends `total` requests to twin's RPC with at most 200 unanswered, and
 * counts the answers: `*n_ok` with status `ok`; `also_ok` (0: none) is
 * accepted without counting. Returns -1 when an answer is something else or
 * twin stops answering for 10 s. */
static int s_rpc_pipeline(const char *endpoint, size_t total, s_fill_fn *fill, void *ud,
                          uint32_t ok, uint32_t also_ok, size_t *n_ok)
{
    zsock_t *rpc = zsock_new(ZMQ_DEALER);
    if (!rpc || mh_curve_client(rpc) < 0 || zsock_connect(rpc, "%s", endpoint) < 0) {
        zsock_destroy(&rpc);
        return -1;
    }
    zsock_set_rcvtimeo(rpc, 10000);
    size_t sent = 0, done = 0, window = 0;
    int rc = 0;
    *n_ok = 0;
    while (done < total) {
        while (sent < total && window < 200) {
            char id[80], rid[32];
            snprintf(rid, sizeof rid, "%zu", sent);
            Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
            q.request_id = rid;
            fill(&q, sent, id, sizeof id, ud);
            mh_envelope_send(rpc, NULL, "twin.request", NULL, &q.base, false);
            sent++;
            window++;
        }
        zframe_t *f = zframe_recv(rpc);
        if (!f) {
            mh_error("twin at %s did not answer", endpoint);
            rc = -1;
            break;
        }
        Mh__Envelope *env = mh_envelope_unpack(f);
        Mh__TwinReply *r = env ? mh__twin_reply__unpack(NULL, env->body.len, env->body.data) : NULL;
        if (r && r->status == ok)
            (*n_ok)++;
        else if (!r || !also_ok || r->status != also_ok) {
            mh_error("request refused: %u %s", r ? r->status : 0, r ? r->message : "");
            rc = -1;
        }
        if (r)
            mh__twin_reply__free_unpacked(r, NULL);
        mh_envelope_free(&env);
        zframe_destroy(&f);
        done++;
        window--;
    }
    zsock_destroy(&rpc);
    return rc;
}

typedef struct {
    const char *prefix;
    size_t n;
    const char *tags; /* --tags */
    char *tags_json;  /* the last request's */
} s_fleet_t;

static void s_fill_register(Mh__TwinRequest *q, size_t i, char *id, size_t idlen, void *ud)
{
    s_fleet_t *f = ud;
    snprintf(id, idlen, "%s-%04zu", f->prefix, i);
    q->method = MH__TWIN_REQUEST__METHOD__REGISTER;
    q->device_id = id;
    free(f->tags_json);
    f->tags_json = sim_tags_json(f->tags, id);
    q->tags_json = f->tags_json ? f->tags_json : "{\"sim\":true}";
}

static void s_fill_command(Mh__TwinRequest *q, size_t i, char *id, size_t idlen, void *ud)
{
    const s_fleet_t *f = ud;
    snprintf(id, idlen, "%s-%04zu", f->prefix, i % f->n);
    q->method = MH__TWIN_REQUEST__METHOD__SEND_COMMAND;
    q->device_id = id;
    q->command_name = "ping";
    q->ttl_s = 3600;
    q->timeout_s = 600;
}

/* Registers every device through twin's RPC; 409 (already there) is fine. */
/* Issues the certificates the fleet lacks: motectl ca issue --prefix P
 * --count N --skip-existing --out CERTS (the CA key stays with motectl). */
static int s_issue_certs(const sim_config_t *cfg)
{
    if (!*cfg->certs) {
        mh_error("--issue-certs needs --certs DIR to write into");
        return -1;
    }
    char count[32];
    snprintf(count, sizeof count, "%" PRId64, cfg->devices);
    char *argv[] = {cfg->motectl, "ca",      "--ca-dir", cfg->issue_certs,  "issue", "--prefix",
                    cfg->prefix,  "--count", count,      "--skip-existing", "--out", cfg->certs,
                    NULL};
    pid_t pid = fork();
    if (pid == 0) {
        execvp(argv[0], argv);
        fprintf(stderr, "motesim: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        mh_error("issuing the fleet's certificates with %s failed", cfg->motectl);
        return -1;
    }
    return 0;
}

static int s_register_all(const char *endpoint, const char *prefix, size_t n, const char *tags)
{
    s_fleet_t f = {prefix, n, tags, NULL};
    size_t created = 0;
    int rc = s_rpc_pipeline(endpoint, n, s_fill_register, &f, 201, 409, &created);
    free(f.tags_json);
    mh_info("registered %zu devices (%zu new)", n, created);
    return rc;
}

/* Sends `total` commands round-robin over the devices through twin's RPC. */
static int s_queue_commands(const char *endpoint, const char *prefix, size_t n, int64_t total)
{
    s_fleet_t f = {prefix, n};
    size_t queued = 0;
    int64_t t0 = mh_mono_ms();
    int rc = s_rpc_pipeline(endpoint, (size_t)total, s_fill_command, &f, 202, 0, &queued);
    mh_info("queued %zu commands in %" PRId64 " ms", queued, mh_mono_ms() - t0);
    return rc;
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
    char why[200];
    if (*cfg.tags && sim_tags_check(cfg.tags, why, sizeof why) < 0) {
        mh_error("--tags: %s", why);
        mh_config_free(s_options, &cfg);
        return 2;
    }
    if (*cfg.misbehave && sim_misbehave_check(cfg.misbehave, why, sizeof why) < 0) {
        mh_error("--misbehave: %s", why);
        mh_config_free(s_options, &cfg);
        return 2;
    }
    s_errors_metric = sim_misbehave_errors(cfg.misbehave);
    if (mh_curve_init(cfg.curve_dir, "tools") < 0) {
        mh_config_free(s_options, &cfg);
        return 1;
    }
    if (*cfg.register_rpc &&
        s_register_all(cfg.register_rpc, cfg.prefix, (size_t)cfg.devices, cfg.tags) < 0) {
        mh_curve_shutdown(); /* before exit's zsys shutdown, or its actor asserts */
        mh_config_free(s_options, &cfg);
        return 1;
    }
    if (cfg.register_only) {
        int rc = *cfg.register_rpc ? 0 : 2;
        mh_curve_shutdown();
        mh_config_free(s_options, &cfg);
        return rc;
    }
    if (cfg.queue_commands > 0) {
        if (!*cfg.register_rpc || s_queue_commands(cfg.register_rpc, cfg.prefix,
                                                   (size_t)cfg.devices, cfg.queue_commands) < 0) {
            mh_error("--queue-commands needs a working --register endpoint");
            mh_curve_shutdown();
            mh_config_free(s_options, &cfg);
            return 1;
        }
        if (!cfg.wait_commands)
            cfg.wait_commands = cfg.queue_commands;
    }
    mh_curve_shutdown(); /* the platform's sockets are done with */
    if (*cfg.issue_certs && s_issue_certs(&cfg) < 0) {
        mh_config_free(s_options, &cfg);
        return 1;
    }
    char ca_default[4200];
    snprintf(ca_default, sizeof ca_default, "%s/ca.crt", cfg.certs);
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    s_rng ^= (uint64_t)time(NULL) * 0x100000001B3ULL;
    if (!s_rng)
        s_rng = 1;

    int64_t interval =
        cfg.rate > 0 ? (int64_t)(1000.0 * (double)cfg.devices / cfg.rate) : cfg.interval_ms;
    if (interval < 1)
        interval = 1;
    size_t n = (size_t)cfg.devices;
    s_device_t *devs = calloc(n, sizeof *devs);
    s_cfg = &cfg;
    mh_agent_ota_workers((int)cfg.ota_workers);
    char *ota_pem = NULL;
    if (*cfg.ota_key) {
        FILE *f = fopen(cfg.ota_key, "r");
        size_t cap = 0;
        if (!f || getdelim(&ota_pem, &cap, 0, f) < 0) {
            mh_error("cannot read --ota-key %s", cfg.ota_key);
            return 1;
        }
        fclose(f);
    }
    mh_sample_t *samples = calloc((size_t)cfg.samples, sizeof *samples);
    int64_t start = mh_mono_ms();
    for (size_t i = 0; i < n; i++) {
        char id[80], crt[4200], key[4200];
        snprintf(id, sizeof id, "%s-%04zu", cfg.prefix, i);
        snprintf(crt, sizeof crt, "%s/%s.crt", cfg.certs, id);
        snprintf(key, sizeof key, "%s/%s.key", cfg.certs, id);
        mh_agent_opts_t o = {.url = cfg.mqtt_url,
                             .device_id = id,
                             .mqtt_version = (int)cfg.mqtt_version,
                             .max_inflight = 64,
                             .firmware = cfg.firmware,
                             .ca_file = *cfg.mqtt_ca ? cfg.mqtt_ca : ca_default,
                             .cert_file = *cfg.certs ? crt : NULL,
                             .key_file = *cfg.certs ? key : NULL,
                             .aws = cfg.aws};
        devs[i].agent = mh_agent_new(&o);
        if (!devs[i].agent) {
            mh_error("cannot create device %s (bad --mqtt-url?)", id);
            return 1;
        }
        mh_agent_on_delta(devs[i].agent, s_on_delta, &devs[i]);
        mh_agent_on_command(devs[i].agent, "reboot", s_on_command, &devs[i]);
        mh_agent_on_command(devs[i].agent, "ping", s_on_command, &devs[i]);
        mh_agent_on_command(devs[i].agent, "blink", s_on_command, &devs[i]);
        mh_agent_on_message(devs[i].agent, s_on_message, &devs[i]);
        if (ota_pem && mh_agent_on_ota(devs[i].agent, ota_pem, s_on_install, &devs[i]) < 0) {
            mh_error("%s is not an Ed25519 public key in PEM", cfg.ota_key);
            return 1;
        }
        sim_readings_init(&devs[i].r, &s_rng);
        /* spread the first publications over one interval */
        devs[i].next_ms = start + (int64_t)((double)interval * (double)i / (double)n);
    }
    mh_info("%zu devices, one message every %" PRId64 " ms each (%.0f msg/s in all), broker %s", n,
            interval, 1000.0 * (double)n / (double)interval, cfg.mqtt_url);

    size_t connected_started = 0;
    uint64_t published = 0, failed = 0, last_published = 0, twin_sent = 0;
    int64_t next_report = start + cfg.report_ms, last_report = start;
    int64_t next_flap = start + cfg.flap_interval_ms, next_bad = start;
    double twin_credit = 0;
    int64_t last_twin = start;
    size_t twin_next = 0;
    s_start_wall = mh_now_ms();
    int64_t commands_done_ms = -1, next_scan = 0, all_up_ms = 0, twin_started = 0;
    bool twin_go = false;
    while (!s_stop) {
        int64_t now = mh_mono_ms();
        s_ota_due(now, false);
        if (cfg.duration_ms && now - start >= cfg.duration_ms)
            break;
        if (cfg.wait_commands > 0 &&
            __atomic_load_n(&s_commands, __ATOMIC_RELAXED) >= (uint64_t)cfg.wait_commands) {
            commands_done_ms = now - start;
            break;
        }
        /* Scans over every device run every 10 ms, not every turn: with
         * thousands of devices they would cost more than the load. */
        bool scan = now >= next_scan;
        if (scan)
            next_scan = now + 10;
        size_t up_now = 0;
        /* twin: report on every (re)connect; flapping devices come back */
        for (size_t i = 0; scan && i < connected_started; i++) {
            s_device_t *d = &devs[i];
            bool up = mh_agent_connected(d->agent);
            up_now += up;
            if (up && !d->was_connected && cfg.twin) {
                char fw[80];
                s_report_state(d, mh_agent_firmware(d->agent, fw, sizeof fw), true);
            }
            if (up && !d->was_connected)
                d->up_since = now;
            d->was_connected = up;
            if (d->down_until && now >= d->down_until) {
                d->down_until = 0;
                mh_agent_connect(d->agent);
            }
        }
        /* misbehaving firmware: which devices run a bad version now (once
         * a second); a crash loop drops its connection 5 s after each
         * connect and is back a second later */
        if (*cfg.misbehave && now >= next_bad) {
            next_bad = now + 1000;
            for (size_t i = 0; i < connected_started; i++) {
                s_device_t *d = &devs[i];
                char fw[80];
                unsigned was = d->bad;
                d->bad = sim_misbehaves(cfg.misbehave, mh_agent_id(d->agent),
                                        mh_agent_firmware(d->agent, fw, sizeof fw));
                if ((d->bad & SIM_BAD_RECONNECT) && !(was & SIM_BAD_RECONNECT))
                    d->up_since = now; /* the new version runs 5 s, then crashes */
                if ((d->bad & SIM_BAD_RECONNECT) && !d->down_until && d->was_connected &&
                    now - d->up_since >= 5000) {
                    mh_agent_kill_connection(d->agent);
                    d->was_connected = false;
                    d->down_until = now + 1000;
                    d->reboots++;
                    d->crashed = true;
                }
            }
        }
        if (cfg.flap_fraction > 0 && now >= next_flap) {
            next_flap = now + cfg.flap_interval_ms;
            size_t k = 0;
            for (size_t i = 0; i < connected_started; i++)
                if (!devs[i].down_until && mh_agent_connected(devs[i].agent) &&
                    s_rand() < cfg.flap_fraction) {
                    mh_agent_kill_connection(devs[i].agent);
                    devs[i].was_connected = false;
                    devs[i].down_until = now + cfg.flap_down_ms;
                    k++;
                }
            mh_info("flapping: %zu devices dropped off for %" PRId64 " ms", k, cfg.flap_down_ms);
        }
        /* The twin load starts once every device is connected (a second
         * after), so connecting does not skew the latencies. */
        if (scan && !twin_go && up_now == n) {
            if (!all_up_ms) {
                all_up_ms = now;
                /* read by tools/bench/mtls.py */
                printf("motesim: all %zu devices connected %" PRId64 " ms after the first "
                       "connect\n",
                       n, now - start);
                fflush(stdout);
            } else if (now - all_up_ms >= 1000) {
                twin_go = true;
                last_twin = now;
                twin_started = now;
            }
        }
        if (cfg.twin_rate > 0 && twin_go) {
            twin_credit += (double)(now - last_twin) * cfg.twin_rate / 1000.0;
            last_twin = now;
            if (twin_credit > cfg.twin_rate)
                twin_credit = cfg.twin_rate; /* no bursts after a stall */
            for (size_t tries = 0; twin_credit >= 1 && tries < n; tries++) {
                s_device_t *d = &devs[twin_next];
                twin_next = (twin_next + 1) % n;
                if (!mh_agent_connected(d->agent))
                    continue;
                char tok[40];
                snprintf(tok, sizeof tok, "b%" PRId64, mh_mono_us());
                json_t *rep = json_pack("{s:I}", "counter", (json_int_t)twin_sent);
                if (mh_agent_report(d->agent, rep, tok) == 0) {
                    twin_sent++;
                    twin_credit -= 1;
                }
                json_decref(rep);
            }
        }
        /* connect at the configured rate */
        size_t want =
            (size_t)fmin((double)n, (double)(now - start) / 1000.0 * cfg.connect_rate + 1);
        for (; connected_started < want; connected_started++)
            if (mh_agent_connect(devs[connected_started].agent) < 0)
                failed++;
        int64_t wall = mh_now_ms();
        for (size_t i = 0; scan && i < connected_started; i++) {
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
            int64_t iv = __atomic_load_n(&d->interval_ms, __ATOMIC_RELAXED);
            if (!iv)
                iv = interval;
            if (r == 0) {
                published++;
                d->next_ms += iv;
                if (d->next_ms < now - 5 * iv)
                    d->next_ms = now; /* fell far behind: do not burst */
            } else if (r != -EAGAIN) {
                failed++;
                d->next_ms = now + iv;
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
        /* telemetry only: the agent counts its PUBACKs apart from the
         * status message of every (re)connect, twin reports and acks */
        delivered += mh_agent_telemetry_acked(devs[i].agent);
        mh_agent_disconnect_begin(devs[i].agent);
    }
    s_ota_due(0, true);
    uint64_t ota_jobs = 0, ota_repeats = 0;
    for (size_t i = 0; i < n; i++) {
        ota_jobs += mh_agent_ota_jobs(devs[i].agent);
        ota_repeats += mh_agent_ota_repeats(devs[i].agent);
    }
    /* the figures first: they are final now, and closing the connections
     * may take a while on a broker that is slow to answer */
    printf("motesim: devices=%zu published=%" PRIu64 " acked=%" PRIu64 " failed=%" PRIu64
           " elapsed_ms=%" PRId64 " rate=%.1f\n",
           n, published, delivered, failed, elapsed,
           (double)published * 1000.0 / (double)(elapsed ? elapsed : 1));
    if (cfg.twin_rate > 0) {
        pthread_mutex_lock(&s_lat_lock);
        qsort(s_lat, s_nlat, sizeof *s_lat, s_cmp_double);
        double p50 = s_nlat ? s_lat[s_nlat / 2] : 0, p99 = s_nlat ? s_lat[s_nlat * 99 / 100] : 0;
        printf("motesim: twin_updates sent=%" PRIu64 " accepted=%" PRIu64 " rejected=%" PRIu64
               " rate=%.1f p50_ms=%.2f p99_ms=%.2f\n",
               twin_sent, s_accepted, s_rejected,
               (double)s_accepted * 1000.0 /
                   (double)(twin_started ? start + elapsed - twin_started : 1),
               p50, p99);
        pthread_mutex_unlock(&s_lat_lock);
    }
    if (cfg.wait_commands > 0 || s_commands)
        printf("motesim: commands handled=%" PRIu64 " first_ms=%" PRId64 " last_ms=%" PRId64
               " all_done_ms=%" PRId64 "\n",
               s_commands, s_first_cmd_ms, s_last_cmd_ms, commands_done_ms);
    if (s_aws_jobs)
        printf("motesim: aws_jobs done=%" PRIu64 " first_ms=%" PRIu64 " last_ms=%" PRIu64 "\n",
               s_aws_jobs, s_aws_first_ms, s_aws_last_ms);
    if (ota_jobs)
        printf("motesim: ota jobs=%" PRIu64 " installed=%" PRIu64 " simulated_failures=%" PRIu64
               " repeats=%" PRIu64 "\n",
               ota_jobs, s_ota_ok, s_ota_failed, ota_repeats);
    fflush(stdout);
    for (size_t i = 0; i < n; i++)
        mh_agent_destroy(&devs[i].agent);
    free(ota_pem);
    free(s_lat);
    free(devs);
    free(samples);
    mh_config_free(s_options, &cfg);
    return 0;
}
