/* motehub-coldstore — the cold path's far end, as a local stand-in for a
 * data lake: consumes the telemetry topic (a consumer group, so several
 * run side by side) and writes every sample into an hourly-partitioned
 * folder of gzip-compressed JSON lines:
 *
 *   OUT/date=2026-11-25/hour=14/part-<host>-<pid>.jsonl.gz
 *   {"device":"sim-0001","metric":"temperature","ts":1795572000123,"value":21.5,"batch":"gw-1:42"}
 *
 * The hour is the sample's own time (UTC). Every --flush-interval the open
 * files are closed (each flush appends a complete gzip member; zcat reads
 * them all) and only then are the offsets committed: a crash repeats at
 * most one interval's samples, never loses one (at-least-once; "batch"
 * says which ingest batch a sample came in, to de-duplicate on). */
#include "mh_config.h"
#include "mh_log.h"
#include "mh_time.h"
#include "telemetry.pb-c.h"

#include <errno.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

typedef struct {
    char *brokers, *topic, *group, *out;
    int64_t flush_ms;
} cs_config_t;

#define S_CFG(f) offsetof(cs_config_t, f)
static const mh_cfg_opt_t s_options[] = {
    {"kafka-brokers", "MH_KAFKA_BROKERS", MH_CFG_STR, "127.0.0.1:9092", S_CFG(brokers),
     "Kafka bootstrap servers"},
    {"kafka-topic", "MH_KAFKA_TOPIC", MH_CFG_STR, "motehub.telemetry", S_CFG(topic),
     "the topic ingest produces to"},
    {"group", "MH_COLDSTORE_GROUP", MH_CFG_STR, "motehub-coldstore", S_CFG(group),
     "consumer group"},
    {"out", "MH_COLDSTORE_OUT", MH_CFG_STR, "coldstore", S_CFG(out), "folder to write into"},
    {"flush-interval", "MH_COLDSTORE_FLUSH", MH_CFG_DURATION, "5s", S_CFG(flush_ms),
     "close files and commit offsets this often"},
    MH_CFG_END,
};

static volatile sig_atomic_t s_stop;
static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

/* Open files, one per hour seen since the last flush. */
#define S_MAX_OPEN 64
static struct {
    int64_t hour;
    gzFile f;
} s_open[S_MAX_OPEN];
static int s_nopen;
static char s_part[128];

static void s_close_all(void)
{
    for (int i = 0; i < s_nopen; i++)
        gzclose(s_open[i].f);
    s_nopen = 0;
}

static int s_mkdirs(char *path)
{
    for (char *p = path + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(path, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(path, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static gzFile s_file_for(const cs_config_t *cfg, int64_t ts_ms)
{
    int64_t hour = ts_ms / 3600000;
    for (int i = 0; i < s_nopen; i++)
        if (s_open[i].hour == hour)
            return s_open[i].f;
    if (s_nopen == S_MAX_OPEN)
        s_close_all();
    time_t t = (time_t)(hour * 3600);
    struct tm tm;
    gmtime_r(&t, &tm);
    char dir[4200], path[4400];
    snprintf(dir, sizeof dir, "%s/date=%04d-%02d-%02d/hour=%02d", cfg->out, tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour);
    if (s_mkdirs(dir) < 0) {
        mh_error("cannot create %s: %s", dir, strerror(errno));
        return NULL;
    }
    snprintf(path, sizeof path, "%s/part-%s.jsonl.gz", dir, s_part);
    gzFile f = gzopen(path, "ab");
    if (!f) {
        mh_error("cannot open %s", path);
        return NULL;
    }
    s_open[s_nopen].hour = hour;
    s_open[s_nopen++].f = f;
    return f;
}

static void s_json_str(gzFile f, const char *s, size_t n)
{
    gzputc(f, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            gzprintf(f, "\\%c", c);
        else if (c < 0x20)
            gzprintf(f, "\\u%04x", c);
        else
            gzputc(f, c);
    }
    gzputc(f, '"');
}

int main(int argc, char **argv)
{
    cs_config_t cfg = {0};
    int rc = mh_config_load(s_options, &cfg, argc, argv, "motehub-coldstore",
                            "Writes the telemetry topic into hourly folders of gzip files");
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    mh_log_init("coldstore", MH_LOG_INFO);
    char host[64] = "local";
    gethostname(host, sizeof host - 1);
    snprintf(s_part, sizeof s_part, "%s-%d", host, (int)getpid());
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", cfg.brokers, err, sizeof err) ||
        rd_kafka_conf_set(conf, "group.id", cfg.group, err, sizeof err) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err) ||
        rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof err)) {
        mh_error("kafka: %s", err);
        return 2;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        mh_error("kafka: %s", err);
        return 1;
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, cfg.topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (e) {
        mh_error("kafka: cannot subscribe to %s: %s", cfg.topic, rd_kafka_err2str(e));
        rd_kafka_destroy(rk);
        return 1;
    }
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    mh_info("writing %s from %s into %s/", cfg.topic, cfg.brokers, cfg.out);
    uint64_t written = 0, bad = 0, since_flush = 0;
    bool brokers_down = false; /* then leaving the group at exit would wait forever */
    int64_t next_flush = mh_mono_ms() + cfg.flush_ms;
    while (!s_stop) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (m && m->err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
            brokers_down = true;
        if (m && !m->err) {
            brokers_down = false;
            Mh__Point *p = mh__point__unpack(NULL, m->len, m->payload);
            gzFile f = p ? s_file_for(&cfg, p->ts_ms) : NULL;
            if (f) {
                const void *batch = NULL;
                size_t blen = 0;
                rd_kafka_headers_t *hdrs = NULL;
                if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR)
                    rd_kafka_header_get_last(hdrs, "batch", &batch, &blen);
                gzputs(f, "{\"device\":");
                s_json_str(f, p->device_id, strlen(p->device_id));
                gzputs(f, ",\"metric\":");
                s_json_str(f, p->metric, strlen(p->metric));
                /* the shortest text that reads back as the same double */
                char num[40];
                snprintf(num, sizeof num, "%.15g", p->value);
                if (strtod(num, NULL) != p->value)
                    snprintf(num, sizeof num, "%.17g", p->value);
                gzprintf(f, ",\"ts\":%" PRId64 ",\"value\":%s,\"batch\":", p->ts_ms, num);
                s_json_str(f, batch ? batch : "", batch ? blen : 0);
                gzputs(f, "}\n");
                written++;
                since_flush++;
            } else {
                bad++;
            }
            mh__point__free_unpacked(p, NULL);
        } else if (m && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            mh_warn("kafka: %s", rd_kafka_message_errstr(m));
        }
        if (m)
            rd_kafka_message_destroy(m);
        if (mh_mono_ms() >= next_flush) {
            s_close_all();
            if (since_flush)
                rd_kafka_commit(rk, NULL, 0);
            since_flush = 0;
            next_flush = mh_mono_ms() + cfg.flush_ms;
        }
    }
    s_close_all();
    if (brokers_down) {
        /* what was written stays written; its offsets are committed by the
         * next run's repeat (at-least-once) */
        mh_warn("the Kafka brokers are unreachable: leaving without committing");
        rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    } else {
        if (since_flush)
            rd_kafka_commit(rk, NULL, 0);
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
    }
    mh_info("stopped: %" PRIu64 " samples written, %" PRIu64 " unreadable", written, bad);
    mh_config_free(s_options, &cfg);
    return 0;
}
