/* mh_relay — see mh_relay.h. */
#include "mh_relay.h"
#include "envelope.pb-c.h"
#include "mh_window.h"
#include "mh_envelope.h"
#include "mh_log.h"
#include "mh_time.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A batch: its packed "relay.batch" envelope until it is handed to the
 * window (which keeps the frame from then on), and what the sender needs
 * when it is acknowledged. */
typedef struct {
    char id[96];
    zframe_t *frame;
    size_t messages;
    char **tags; /* the messages' tags (NULL entries: none); NULL when none has one */
} s_batch_t;

struct mh_relay_t {
    mh_relay_opts_t o;
    char *name, *instance;
    zsock_t *dealer;
    mh_resolver_t *resolver;
    /* the batch being built: packed envelopes */
    zframe_t **building;
    char **building_tags;
    size_t nbuilding;
    size_t held; /* messages in building, waiting and the window */
    int64_t started_ms;
    uint64_t seq;
    zlistx_t *waiting;   /* s_batch_t built, not sent: the window was full */
    mh_window_t *window; /* sent, not acknowledged: items are s_batch_t */
    mh_counter_t *m_messages;
    mh_ratelimit_t rl;
};

static void s_batch_free(void *item)
{
    s_batch_t *b = item;
    zframe_destroy(&b->frame);
    for (size_t i = 0; b->tags && i < b->messages; i++)
        free(b->tags[i]);
    free(b->tags);
    free(b);
}

static void s_batch_destructor(void **item)
{
    if (*item)
        s_batch_free(*item);
    *item = NULL;
}

mh_relay_t *mh_relay_new(const mh_relay_opts_t *opts, mh_metrics_t *metrics)
{
    mh_relay_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->o = *opts;
    if (!self->o.batch_max)
        self->o.batch_max = 500;
    if (!self->o.linger_ms)
        self->o.linger_ms = 5;
    if (!self->o.window)
        self->o.window = 64;
    if (!self->o.max_held)
        self->o.max_held = 100000;
    if (!self->o.ack_timeout_ms)
        self->o.ack_timeout_ms = 5000;
    self->name = strdup(opts->name);
    self->instance = strdup(opts->instance);
    self->building = calloc(self->o.batch_max, sizeof *self->building);
    self->building_tags = calloc(self->o.batch_max, sizeof *self->building_tags);
    self->waiting = zlistx_new();
    /* sends only to receivers connected now: a batch handed to a dead
     * replica's pipe would wait out the whole ack timeout */
    self->dealer = mh_dealer_new(opts->endpoint, (int)self->o.window + 16, &self->resolver);
    if (self->dealer) {
        self->window = mh_window_new(self->dealer,
                                     &(mh_window_opts_t){.name = opts->name,
                                                         .size = self->o.window,
                                                         .ack_timeout_ms = self->o.ack_timeout_ms,
                                                         .metric_prefix = opts->metric_prefix,
                                                         .item_free = s_batch_free},
                                     metrics);
    }
    if (!self->name || !self->instance || !self->building || !self->building_tags ||
        !self->waiting || !self->window || !self->resolver) {
        mh_relay_destroy(&self);
        return NULL;
    }
    zlistx_set_destructor(self->waiting, s_batch_destructor);
    self->rl = (mh_ratelimit_t)MH_RATELIMIT_INIT(1000, 5);
    char name[128];
    snprintf(name, sizeof name, "%s_messages_total", opts->metric_prefix);
    self->m_messages = mh_metrics_counter(metrics, name, "Messages put into batches", NULL);
    return self;
}

void mh_relay_destroy(mh_relay_t **self_p)
{
    mh_relay_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->nbuilding; i++) {
        zframe_destroy(&self->building[i]);
        free(self->building_tags[i]);
    }
    free(self->building);
    free(self->building_tags);
    zlistx_destroy(&self->waiting);
    mh_window_destroy(&self->window);
    mh_resolver_destroy(&self->resolver);
    zsock_destroy(&self->dealer);
    free(self->name);
    free(self->instance);
    free(self);
    *self_p = NULL;
}

/* Moves waiting batches into the window while it has room. */
static void s_fill_window(mh_relay_t *self)
{
    while (!mh_window_full(self->window) && zlistx_size(self->waiting)) {
        s_batch_t *b = zlistx_detach(self->waiting, NULL); /* the oldest */
        if (mh_window_send(self->window, b->id, &b->frame, b) < 0) {
            self->held -= b->messages; /* out of memory: the batch is lost */
            mh_log_limited(&self->rl, MH_LOG_ERROR, "out of memory: a batch of %zu to %s lost",
                           b->messages, self->name);
            s_batch_free(b);
        }
    }
}

/* Closes the batch being built. -1 when out of memory (the messages stay). */
static int s_close_batch(mh_relay_t *self)
{
    if (!self->nbuilding)
        return 0;
    s_batch_t *b = calloc(1, sizeof *b);
    ProtobufCBinaryData *msgs = calloc(self->nbuilding, sizeof *msgs);
    if (!b || !msgs) {
        free(b);
        free(msgs);
        return -1;
    }
    snprintf(b->id, sizeof b->id, "%s-%" PRIu64, self->instance, ++self->seq);
    for (size_t i = 0; i < self->nbuilding; i++)
        msgs[i] =
            (ProtobufCBinaryData){zframe_size(self->building[i]), zframe_data(self->building[i])};
    Mh__RelayBatch rb = MH__RELAY_BATCH__INIT;
    rb.batch_id = b->id;
    rb.messages = msgs;
    rb.n_messages = self->nbuilding;
    b->frame = mh_envelope_pack("relay.batch", NULL, &rb.base);
    free(msgs);
    if (!b->frame) {
        free(b);
        return -1;
    }
    b->messages = self->nbuilding;
    bool tagged = false;
    for (size_t i = 0; i < self->nbuilding; i++)
        tagged = tagged || self->building_tags[i];
    /* out of memory: the tags are lost, never the messages */
    b->tags = tagged ? calloc(self->nbuilding, sizeof *b->tags) : NULL;
    for (size_t i = 0; i < self->nbuilding; i++) {
        zframe_destroy(&self->building[i]);
        if (b->tags)
            b->tags[i] = self->building_tags[i];
        else
            free(self->building_tags[i]);
        self->building_tags[i] = NULL;
    }
    self->nbuilding = 0;
    zlistx_add_end(self->waiting, b);
    s_fill_window(self);
    return 0;
}

static int s_add(mh_relay_t *self, zframe_t **frame_p, const char *tag)
{
    zframe_t *f = *frame_p;
    *frame_p = NULL;
    char *t = tag ? strdup(tag) : NULL;
    if ((tag && !t) || (self->nbuilding == self->o.batch_max && s_close_batch(self) < 0)) {
        zframe_destroy(&f);
        free(t);
        return -1;
    }
    if (self->nbuilding == 0)
        self->started_ms = mh_mono_ms();
    self->building_tags[self->nbuilding] = t;
    self->building[self->nbuilding++] = f;
    self->held++;
    mh_counter_inc(self->m_messages);
    if (self->nbuilding == self->o.batch_max)
        s_close_batch(self);
    return 0;
}

int mh_relay_add(mh_relay_t *self, const char *type, const ProtobufCMessage *body)
{
    return mh_relay_add_tagged(self, type, body, NULL);
}

int mh_relay_add_tagged(mh_relay_t *self, const char *type, const ProtobufCMessage *body,
                        const char *tag)
{
    zframe_t *f = mh_envelope_pack(type, NULL, body);
    return f ? s_add(self, &f, tag) : -1;
}

int mh_relay_add_packed(mh_relay_t *self, zframe_t **frame_p, const char *tag)
{
    return s_add(self, frame_p, tag);
}

bool mh_relay_full(const mh_relay_t *self)
{
    return self->held >= self->o.max_held;
}

size_t mh_relay_unacked(const mh_relay_t *self)
{
    return self->held;
}

zsock_t *mh_relay_socket(mh_relay_t *self)
{
    return self->dealer;
}

void mh_relay_on_acks(mh_relay_t *self)
{
    while (zsock_events(self->dealer) & ZMQ_POLLIN) {
        zframe_t *f = zframe_recv(self->dealer);
        if (!f)
            break;
        Mh__Envelope *env = mh_envelope_unpack(f);
        zframe_destroy(&f);
        Mh__RelayAck *ack = NULL;
        if (env && strcmp(env->type, "relay.ack") == 0)
            ack = mh__relay_ack__unpack(NULL, env->body.len, env->body.data);
        mh_envelope_free(&env);
        s_batch_t *b = mh_window_ack(self->window, ack ? ack->batch_id : "");
        if (b) {
            self->held -= b->messages;
            for (size_t i = 0; b->tags && self->o.delivered && i < b->messages; i++)
                if (b->tags[i])
                    self->o.delivered(self->o.ud, b->tags[i]);
            s_batch_free(b);
        }
        if (ack)
            mh__relay_ack__free_unpacked(ack, NULL);
    }
    s_fill_window(self);
}

void mh_relay_tick(mh_relay_t *self, bool force)
{
    int64_t now = mh_mono_ms();
    /* while the window is full a lingering batch keeps filling: fewer,
     * fuller batches to send when the receiver is back */
    if (self->nbuilding &&
        (force || (now - self->started_ms >= self->o.linger_ms && !mh_window_full(self->window) &&
                   !zlistx_size(self->waiting))))
        s_close_batch(self);
    mh_window_tick(self->window);
    s_fill_window(self);
}

size_t mh_relay_drain(mh_relay_t *self, int64_t timeout_ms)
{
    int64_t deadline = mh_mono_ms() + timeout_ms;
    while (self->held && mh_mono_ms() < deadline) {
        mh_relay_tick(self, true);
        zmq_pollitem_t item = {zsock_resolve(self->dealer), 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, 10);
        mh_relay_on_acks(self);
    }
    return self->held;
}

void mh_relay_refresh(mh_relay_t *self)
{
    mh_resolver_refresh(self->resolver);
}

/* ---- the receiving half ---- */

/* A batch id is the sender's instance name and a number: nothing a text[]
 * literal would need to escape. */
static bool s_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n >= 96)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)id[i]) && !strchr("._:-", id[i]))
            return false;
    return true;
}

mh_relay_batch_t *mh_relay_in_recv(zsock_t *router)
{
    zmsg_t *m = zmsg_recv(router);
    if (!m)
        return NULL;
    mh_relay_batch_t *b = NULL;
    Mh__RelayBatch *rb = NULL;
    zframe_t *routing = zmsg_size(m) == 2 ? zmsg_pop(m) : NULL;
    zframe_t *f = routing ? zmsg_first(m) : NULL;
    Mh__Envelope *env = f ? mh_envelope_unpack(f) : NULL;
    if (env && strcmp(env->type, "relay.batch") == 0)
        rb = mh__relay_batch__unpack(NULL, env->body.len, env->body.data);
    if (rb && s_id_ok(rb->batch_id) && (b = calloc(1, sizeof *b)) &&
        (b->messages = calloc(rb->n_messages + 1, sizeof *b->messages)) &&
        (b->batch_id = strdup(rb->batch_id))) {
        b->routing = routing;
        routing = NULL;
        for (size_t i = 0; i < rb->n_messages; i++)
            b->messages[b->n++] = zframe_new(rb->messages[i].data, rb->messages[i].len);
    } else if (b) {
        mh_relay_batch_destroy(&b);
    }
    if (rb)
        mh__relay_batch__free_unpacked(rb, NULL);
    mh_envelope_free(&env);
    zframe_destroy(&routing);
    zmsg_destroy(&m);
    return b;
}

void mh_relay_in_ack(zsock_t *router, const mh_relay_batch_t *b, bool duplicate)
{
    Mh__RelayAck ack = MH__RELAY_ACK__INIT;
    ack.batch_id = b->batch_id;
    ack.duplicate = duplicate;
    mh_envelope_send(router, b->routing, "relay.ack", NULL, &ack.base, true);
}

void mh_relay_batch_destroy(mh_relay_batch_t **b_p)
{
    mh_relay_batch_t *b = *b_p;
    if (!b)
        return;
    zframe_destroy(&b->routing);
    for (size_t i = 0; i < b->n; i++)
        zframe_destroy(&b->messages[i]);
    free(b->messages);
    free(b->batch_id);
    free(b);
    *b_p = NULL;
}
