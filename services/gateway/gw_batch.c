/* gateway: telemetry batches to ingest — building them and reading their
 * acknowledgements; the window and re-sends are mh_window's, as for every
 * acknowledged path (gw_internal.h). */
#include "gw_internal.h"

/* ---- the batch ---- */

static int s_arena_add(gw_t *self, const char *s, uint32_t *off_out)
{
    size_t len = strlen(s) + 1;
    if (self->arena_len + len > self->arena_cap) {
        size_t cap = self->arena_cap * 2 + len + 4096;
        char *a = realloc(self->arena, cap);
        if (!a)
            return -1;
        self->arena = a;
        self->arena_cap = cap;
    }
    memcpy(self->arena + self->arena_len, s, len);
    *off_out = (uint32_t)self->arena_len;
    self->arena_len += len;
    return 0;
}

/* Moves one validated message's points into the batch. */
int gw_batch_add(gw_t *self, const char *device)
{
    if (self->nitems + self->scratch.n > self->cap_items) {
        size_t cap = (self->cap_items ? self->cap_items * 2 : 1024) + self->scratch.n;
        gw_item_t *v = realloc(self->items, cap * sizeof *v);
        if (!v)
            return -1;
        self->items = v;
        self->cap_items = cap;
    }
    uint32_t dev_off;
    if (s_arena_add(self, device, &dev_off) < 0)
        return -1;
    /* Consecutive points of one message usually share metric names with
     * other messages; a tiny cache would help, but the arena is cheap. */
    for (size_t i = 0; i < self->scratch.n; i++) {
        const gw_point_t *p = &self->scratch.v[i];
        uint32_t met_off;
        if (s_arena_add(self, gw_point_metric(&self->scratch, p), &met_off) < 0)
            return -1;
        self->items[self->nitems++] = (gw_item_t){dev_off, met_off, p->ts_ms, p->value};
    }
    if (self->batch_messages++ == 0)
        self->batch_started_ms = mh_mono_ms();
    return 0;
}

void gw_flush(gw_t *self)
{
    if (!self->nitems)
        return;
    size_t n = self->nitems;
    Mh__Point *pts = calloc(n, sizeof *pts);
    Mh__Point **ptrs = calloc(n, sizeof *ptrs);
    if (!pts || !ptrs) {
        free(pts);
        free(ptrs);
        return; /* try again on the next tick */
    }
    for (size_t i = 0; i < n; i++) {
        mh__point__init(&pts[i]);
        pts[i].device_id = self->arena + self->items[i].dev_off;
        pts[i].metric = self->arena + self->items[i].met_off;
        pts[i].ts_ms = self->items[i].ts_ms;
        pts[i].value = self->items[i].value;
        ptrs[i] = &pts[i];
    }
    char batch_id[80];
    snprintf(batch_id, sizeof batch_id, "%s-%" PRIu64, self->id_prefix, ++self->batch_seq);
    Mh__TelemetryBatch b = MH__TELEMETRY_BATCH__INIT;
    b.batch_id = batch_id;
    b.points = ptrs;
    b.n_points = n;
    b.messages = self->batch_messages;
    b.received_ms = mh_now_ms() - (mh_mono_ms() - self->batch_started_ms);
    zframe_t *frame = mh_envelope_pack("telemetry.batch", NULL, &b.base);
    free(pts);
    free(ptrs);
    if (!frame)
        return;
    gw_pending_t *p = calloc(1, sizeof *p);
    if (!p) {
        zframe_destroy(&frame);
        return; /* the points stay: tried again on the next tick */
    }
    p->points = (uint32_t)n;
    if (mh_window_send(self->window, batch_id, &frame, p) < 0) {
        free(p);
        return; /* out of memory: the points stay, tried again on the next tick */
    }
    self->points_in_flight += n;
    self->nitems = 0;
    self->arena_len = 0;
    self->batch_messages = 0;
}

/* ---- acknowledgements from ingest ---- */

void gw_on_ack(gw_t *self, zframe_t *frame)
{
    Mh__Envelope *env = mh_envelope_unpack(frame);
    Mh__TelemetryAck *ack = NULL;
    if (!env || strcmp(env->type, "telemetry.ack") != 0 ||
        !(ack = mh__telemetry_ack__unpack(NULL, env->body.len, env->body.data))) {
        mh_counter_inc(self->m_bad_internal);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "malformed message from ingest, ignoring");
        mh_envelope_free(&env);
        return;
    }
    gw_pending_t *p = mh_window_ack(self->window, ack->batch_id);
    if (p) {
        mh_counter_inc(self->m_batches_acked);
        self->points_in_flight -= p->points;
        if (ack->status == MH__TELEMETRY_ACK__STATUS__REJECTED) {
            mh_counter_add(self->m_points_dropped_ingest, p->points);
            mh_log_limited(&self->rl_warn, MH_LOG_ERROR, "ingest refused batch %s (%u points): %s",
                           ack->batch_id, p->points, ack->error);
        } else {
            mh_counter_add(self->m_points_stored, ack->stored);
            mh_counter_add(self->m_points_dropped_old, ack->dropped);
        }
        free(p);
    }
    mh__telemetry_ack__free_unpacked(ack, NULL);
    mh_envelope_free(&env);
}
