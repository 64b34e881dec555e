#include "in_kafka.h"

#include "mh_log.h"
#include "mh_time.h"

#include <czmq.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct in_kafka_t {
    rd_kafka_t *rk;
    rd_kafka_topic_t *topic;
    char topic_name[256];
    mh_counter_t *m_produced, *m_delivered, *m_failed, *m_queue_full;
    mh_gauge_t *m_queued;
    mh_ratelimit_t rl;
    /* batch ids produced by this process, the newest S_REMEMBER of them */
    zhashx_t *produced;
    char **ring;
    size_t ring_next;
};

#define S_REMEMBER 65536

static void s_remember(in_kafka_t *self, const char *batch_id)
{
    char **slot = &self->ring[self->ring_next];
    if (*slot) {
        zhashx_delete(self->produced, *slot);
        free(*slot);
    }
    *slot = strdup(batch_id);
    if (*slot)
        zhashx_insert(self->produced, *slot, (void *)1);
    self->ring_next = (self->ring_next + 1) % S_REMEMBER;
}

static void s_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    in_kafka_t *self = opaque;
    if (m->err) {
        mh_counter_inc(self->m_failed);
        mh_log_limited(&self->rl, MH_LOG_ERROR, "kafka: a sample was not delivered to %s: %s",
                       self->topic_name, rd_kafka_err2str(m->err));
    } else {
        mh_counter_inc(self->m_delivered);
    }
}

static void s_on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    in_kafka_t *self = opaque;
    /* transient (brokers down): librdkafka retries; say so, rate-limited */
    mh_log_limited(&self->rl, MH_LOG_WARN, "kafka: %s: %s",
                   rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

/* librdkafka's own log lines, through ours (rate-limited); errors also
 * arrive through s_on_error. With log.queue they come from rd_kafka_poll on
 * ingest's thread, like the delivery reports, so nothing here races. */
static void s_on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    in_kafka_t *self = rd_kafka_opaque(rk);
    if (level <= 4 && self)
        mh_log_limited(&self->rl, MH_LOG_WARN, "kafka %s: %s", fac, buf);
}

static bool s_set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char err[256];
    if (rd_kafka_conf_set(conf, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
        mh_error("kafka: %s=%s: %s", k, v, err);
        return false;
    }
    return true;
}

in_kafka_t *in_kafka_new(const in_kafka_opts_t *o)
{
    in_kafka_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->rl = (mh_ratelimit_t)MH_RATELIMIT_INIT(5000, 3);
    self->produced = zhashx_new();
    self->ring = calloc(S_REMEMBER, sizeof *self->ring);
    if (!self->produced || !self->ring) {
        zhashx_destroy(&self->produced);
        free(self->ring);
        free(self);
        return NULL;
    }
    snprintf(self->topic_name, sizeof self->topic_name, "%s", o->topic);
    mh_metrics_t *m = o->metrics;
    const char *h = "Samples produced to Kafka, by outcome";
    self->m_produced =
        mh_metrics_counter(m, "mh_ingest_kafka_samples_total", h, "outcome=\"queued\"");
    self->m_delivered =
        mh_metrics_counter(m, "mh_ingest_kafka_samples_total", h, "outcome=\"delivered\"");
    self->m_failed =
        mh_metrics_counter(m, "mh_ingest_kafka_samples_total", h, "outcome=\"failed\"");
    self->m_queue_full =
        mh_metrics_counter(m, "mh_ingest_kafka_queue_full_total",
                           "Times ingest waited for room in the Kafka queue (backpressure)", NULL);
    self->m_queued = mh_metrics_gauge(m, "mh_ingest_kafka_queued",
                                      "Messages waiting for the Kafka brokers", NULL);
    char qmax[32];
    snprintf(qmax, sizeof qmax, "%lld", (long long)(o->queue_max > 0 ? o->queue_max : 1000000));
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512];
    bool ok =
        s_set(conf, "bootstrap.servers", o->brokers) && s_set(conf, "enable.idempotence", "true") &&
        s_set(conf, "message.timeout.ms", "0") && /* never give up on a sample */
        s_set(conf, "queue.buffering.max.messages", qmax) &&
        s_set(conf, "queue.buffering.max.kbytes", "1048576") && s_set(conf, "linger.ms", "5") &&
        s_set(conf, "compression.type", "lz4") && s_set(conf, "reconnect.backoff.max.ms", "2000") &&
        s_set(conf, "log.queue", "true") && s_set(conf, "client.id", "motehub-ingest");
    if (!ok) {
        rd_kafka_conf_destroy(conf);
        self->rk = NULL;
        in_kafka_destroy(&self, 0);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, self);
    rd_kafka_conf_set_dr_msg_cb(conf, s_on_delivery);
    rd_kafka_conf_set_error_cb(conf, s_on_error);
    rd_kafka_conf_set_log_cb(conf, s_on_log);
    self->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!self->rk) {
        mh_error("kafka: %s", err);
        rd_kafka_conf_destroy(conf);
        in_kafka_destroy(&self, 0);
        return NULL;
    }
    rd_kafka_set_log_queue(self->rk, NULL); /* the main queue: served by rd_kafka_poll */
    self->topic = rd_kafka_topic_new(self->rk, o->topic, NULL);
    mh_info("cold path: producing every stored sample to Kafka topic %s at %s", o->topic,
            o->brokers);
    return self;
}

void in_kafka_destroy(in_kafka_t **self_p, int timeout_ms)
{
    in_kafka_t *self = *self_p;
    if (!self)
        return;
    if (self->rk) {
        if (rd_kafka_flush(self->rk, timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR)
            mh_warn("kafka: %d samples still undelivered at exit", rd_kafka_outq_len(self->rk));
        if (self->topic)
            rd_kafka_topic_destroy(self->topic);
        rd_kafka_destroy(self->rk);
    }
    zhashx_destroy(&self->produced);
    for (size_t i = 0; i < S_REMEMBER; i++)
        free(self->ring[i]);
    free(self->ring);
    free(self);
    *self_p = NULL;
}

void in_kafka_poll(in_kafka_t *self)
{
    rd_kafka_poll(self->rk, 0);
    mh_gauge_set(self->m_queued, (double)rd_kafka_outq_len(self->rk));
}

bool in_kafka_produce(in_kafka_t *self, const Mh__TelemetryBatch *b, bool duplicate,
                      bool (*keep)(void *ud, int64_t ts_ms), void *ud, void *pipe)
{
    if (duplicate && zhashx_lookup(self->produced, b->batch_id))
        return true; /* a re-send of what this process already produced */
    uint8_t buf[512];
    bool waited = false;
    for (size_t i = 0; i < b->n_points; i++) {
        const Mh__Point *p = b->points[i];
        if (keep && !keep(ud, p->ts_ms))
            continue;
        size_t len = mh__point__get_packed_size(p);
        uint8_t *val = len <= sizeof buf ? buf : malloc(len);
        if (!val)
            return false;
        mh__point__pack(p, val);
        for (;;) {
            rd_kafka_resp_err_t err = rd_kafka_producev(
                self->rk, RD_KAFKA_V_RKT(self->topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                RD_KAFKA_V_KEY(p->device_id, strlen(p->device_id)), RD_KAFKA_V_VALUE(val, len),
                RD_KAFKA_V_HEADER("batch", b->batch_id, (ssize_t)strlen(b->batch_id)),
                RD_KAFKA_V_END);
            if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                mh_counter_inc(self->m_produced);
                break;
            }
            if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                mh_counter_inc(self->m_failed);
                mh_log_limited(&self->rl, MH_LOG_ERROR, "kafka: cannot produce: %s",
                               rd_kafka_err2str(err));
                break;
            }
            /* Full: wait for room, serving delivery reports meanwhile. */
            if (!waited) {
                mh_counter_inc(self->m_queue_full);
                mh_log_limited(&self->rl, MH_LOG_WARN,
                               "kafka: local queue full (%d waiting); holding new batches",
                               rd_kafka_outq_len(self->rk));
                waited = true;
            }
            rd_kafka_poll(self->rk, 100);
            if (pipe && (zsock_events(pipe) & ZMQ_POLLIN)) {
                if (val != buf)
                    free(val);
                return false;
            }
        }
        if (val != buf)
            free(val);
    }
    s_remember(self, b->batch_id);
    return true;
}
