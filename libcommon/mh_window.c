/* mh_window — see mh_window.h. */
#include "mh_window.h"
#include "mh_log.h"
#include "mh_time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    zframe_t *frame;
    void *item;
    int64_t sent_ms; /* 0: never reached a receiver yet */
    unsigned attempts;
} s_flight_t;

struct mh_window_t {
    mh_window_opts_t o;
    char *name;
    zsock_t *dealer;
    zhashx_t *flights; /* id -> s_flight_t */
    mh_counter_t *m_sent, *m_resent, *m_unknown;
    mh_gauge_t *m_size;
    mh_ratelimit_t rl;
};

static void s_flight_free(mh_window_t *self, s_flight_t *f)
{
    zframe_destroy(&f->frame);
    if (f->item)
        (self->o.item_free ? self->o.item_free : free)(f->item);
    free(f);
}

mh_window_t *mh_window_new(zsock_t *dealer, const mh_window_opts_t *opts, mh_metrics_t *metrics)
{
    mh_window_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->o = *opts;
    self->dealer = dealer;
    self->name = strdup(opts->name);
    self->flights = zhashx_new();
    if (!self->name || !self->flights) {
        mh_window_destroy(&self);
        return NULL;
    }
    self->rl = (mh_ratelimit_t)MH_RATELIMIT_INIT(1000, 5);
    char name[128];
    const char *p = opts->metric_prefix;
    snprintf(name, sizeof name, "%s_batches_sent_total", p);
    self->m_sent = mh_metrics_counter(metrics, name, "Batches sent the first time", NULL);
    snprintf(name, sizeof name, "%s_batches_resent_total", p);
    self->m_resent =
        mh_metrics_counter(metrics, name, "Batches sent again, not acknowledged in time", NULL);
    snprintf(name, sizeof name, "%s_acks_unknown_total", p);
    self->m_unknown = mh_metrics_counter(
        metrics, name, "Acknowledgements of no batch in the window (late, repeated or forged)",
        NULL);
    snprintf(name, sizeof name, "%s_window_batches", p);
    self->m_size = mh_metrics_gauge(metrics, name, "Batches sent and not yet acknowledged", NULL);
    return self;
}

void mh_window_destroy(mh_window_t **self_p)
{
    mh_window_t *self = *self_p;
    if (!self)
        return;
    for (s_flight_t *f = zhashx_first(self->flights); f; f = zhashx_next(self->flights))
        s_flight_free(self, f);
    zhashx_destroy(&self->flights);
    free(self->name);
    free(self);
    *self_p = NULL;
}

static void s_send(mh_window_t *self, const char *id, s_flight_t *f)
{
    /* zmq_send copies the bytes into its own message: the kept frame is
     * sent as it is, no copy of ours */
    void *raw = zsock_resolve(self->dealer);
    if (zmq_send(raw, zframe_data(f->frame), zframe_size(f->frame), ZMQ_DONTWAIT) >= 0) {
        f->sent_ms = mh_mono_ms();
        if (f->attempts++ > 0) {
            mh_counter_inc(self->m_resent);
            mh_log_limited(&self->rl, MH_LOG_WARN,
                           "batch %s to %s not acknowledged in time, sent again (attempt %u)", id,
                           self->name, f->attempts);
        } else {
            mh_counter_inc(self->m_sent);
        }
    } else {
        f->sent_ms = 0; /* no receiver reachable: the next tick tries again */
    }
}

int mh_window_send(mh_window_t *self, const char *id, zframe_t **frame_p, void *item)
{
    s_flight_t *f = calloc(1, sizeof *f);
    if (!f) {
        zframe_destroy(frame_p);
        return -1;
    }
    f->frame = *frame_p;
    *frame_p = NULL;
    f->item = item;
    if (zhashx_insert(self->flights, id, f) != 0) { /* an id already in flight */
        f->item = NULL;
        s_flight_free(self, f);
        return -1;
    }
    s_send(self, id, f);
    mh_gauge_set(self->m_size, (double)zhashx_size(self->flights));
    return 0;
}

bool mh_window_full(const mh_window_t *self)
{
    return zhashx_size(self->flights) >= self->o.size;
}

size_t mh_window_size(const mh_window_t *self)
{
    return zhashx_size(self->flights);
}

uint64_t mh_window_resent(const mh_window_t *self)
{
    return mh_counter_get(self->m_resent);
}

void *mh_window_ack(mh_window_t *self, const char *id)
{
    s_flight_t *f = zhashx_lookup(self->flights, id);
    if (!f) {
        mh_counter_inc(self->m_unknown);
        mh_log_limited(&self->rl, MH_LOG_WARN,
                       "an acknowledgement from %s for no batch in the window, ignoring",
                       self->name);
        return NULL;
    }
    void *item = f->item;
    f->item = NULL;
    zhashx_delete(self->flights, id);
    s_flight_free(self, f);
    mh_gauge_set(self->m_size, (double)zhashx_size(self->flights));
    return item;
}

void mh_window_tick(mh_window_t *self)
{
    int64_t now = mh_mono_ms();
    for (s_flight_t *f = zhashx_first(self->flights); f; f = zhashx_next(self->flights))
        if (!f->sent_ms || now - f->sent_ms >= self->o.ack_timeout_ms)
            s_send(self, zhashx_cursor(self->flights), f);
}
