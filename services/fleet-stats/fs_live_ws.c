/* fs_live — the WebSocket frames and the clients that write them out
 * (fs_live.h; fs_live_internal.h).
 *
 * The owner builds each frame once and only swaps it in: every client
 * writes on its own thread (the HTTP worker its connection holds), so a
 * reader that does not keep up holds up nobody but itself. A client that
 * has the frame before the newest gets the changed sections; one that is
 * new or fell behind gets the whole summary, which stands in for the
 * change frames it missed. */
#include "fs_live_internal.h"
#include "mh_time.h"

#include <stdlib.h>
#include <string.h>

static const char *s_names[6] = {"devices", "firmware", "health", "rates", "rollouts", "geo"};

void fs_live_ws_init(fs_live_t *self)
{
    pthread_mutex_init(&self->ws_lock, NULL);
    mh_cond_init_mono(&self->ws_cond);
}

/* Under ws_lock. */
static void s_unref(fs_live_frame_t **fp)
{
    fs_live_frame_t *f = *fp;
    *fp = NULL;
    if (f && --f->refs == 0) {
        free(f->full);
        free(f->changes);
        free(f);
    }
}

void fs_live_ws_free(fs_live_t *self)
{
    s_unref(&self->frame);
    for (int i = 0; i < 6; i++)
        free(self->last[i]);
    pthread_cond_destroy(&self->ws_cond);
    pthread_mutex_destroy(&self->ws_lock);
}

void fs_live_frame(fs_live_t *self)
{
    json_t *s[6];
    char *text[6];
    pthread_mutex_lock(&self->lock);
    self->framed_gen = self->gen;
    fs_live_sections(self, s);
    json_t *full = json_pack("{s:s,s:I}", "type", "summary", "ts", (json_int_t)mh_now_ms());
    json_t *changes = json_pack("{s:s,s:I}", "type", "changes", "ts", (json_int_t)mh_now_ms());
    bool changed = false;
    for (int i = 0; i < 6; i++) {
        text[i] = json_dumps(s[i], JSON_COMPACT | JSON_SORT_KEYS);
        if (!self->last[i] || !text[i] || strcmp(self->last[i], text[i]) != 0) {
            json_object_set(changes, s_names[i], s[i]);
            changed = true;
        }
        json_object_set_new(full, s_names[i], s[i]);
    }
    json_object_set_new(full, "history", fs_live_history_json(self, 0));
    if (self->hist_sent < self->nhist) {
        json_object_set_new(changes, "history", fs_live_history_json(self, self->hist_sent));
        changed = true;
    }
    self->hist_sent = self->nhist;
    pthread_mutex_unlock(&self->lock);

    fs_live_frame_t *f = calloc(1, sizeof *f);
    if (f) {
        f->refs = 1;
        f->full = json_dumps(full, JSON_COMPACT);
        f->changes = changed ? json_dumps(changes, JSON_COMPACT) : NULL;
    }
    json_decref(full);
    json_decref(changes);
    pthread_mutex_lock(&self->ws_lock);
    for (int i = 0; i < 6; i++) {
        free(self->last[i]);
        self->last[i] = text[i];
    }
    if (f && f->full && (changed || !self->frame)) {
        f->n = self->frame ? self->frame->n + 1 : 1;
        s_unref(&self->frame);
        self->frame = f;
        f = NULL;
        pthread_cond_broadcast(&self->ws_cond);
    }
    s_unref(&f);
    pthread_mutex_unlock(&self->ws_lock);
}

bool fs_live_reserve(fs_live_t *self, size_t max)
{
    pthread_mutex_lock(&self->ws_lock);
    bool ok = !self->stopping && self->reserved < max;
    if (ok)
        self->reserved++;
    pthread_mutex_unlock(&self->ws_lock);
    return ok;
}

void fs_live_release(fs_live_t *self)
{
    pthread_mutex_lock(&self->ws_lock);
    if (self->reserved)
        self->reserved--;
    pthread_mutex_unlock(&self->ws_lock);
}

static void s_clients(fs_live_t *self, int add)
{
    pthread_mutex_lock(&self->ws_lock);
    self->nclients += (size_t)add;
    mh_gauge_set(self->m_clients, (double)self->nclients);
    pthread_mutex_unlock(&self->ws_lock);
}

void fs_live_serve(fs_live_t *self, void *conn, fs_live_send_fn *send, int64_t ping_ms)
{
    s_clients(self, 1);
    uint64_t had = 0; /* the frame this client has */
    for (;;) {
        struct timespec until = mh_mono_after(ping_ms);
        pthread_mutex_lock(&self->ws_lock);
        int waited = 0;
        while (!self->stopping && (!self->frame || self->frame->n == had) && waited == 0)
            waited = pthread_cond_timedwait(&self->ws_cond, &self->ws_lock, &until);
        fs_live_frame_t *f = NULL;
        if (!self->stopping && self->frame && self->frame->n != had) {
            f = self->frame;
            f->refs++;
        }
        bool stopping = self->stopping;
        pthread_mutex_unlock(&self->ws_lock);
        if (stopping)
            break;
        int rc;
        if (f) {
            const char *t = had && f->n == had + 1 && f->changes ? f->changes : f->full;
            rc = send(conn, t, strlen(t));
            had = f->n;
            mh_counter_inc(self->m_frames);
            pthread_mutex_lock(&self->ws_lock);
            s_unref(&f);
            pthread_mutex_unlock(&self->ws_lock);
        } else {
            rc = send(conn, NULL, 0); /* a ping: is the reader still there? */
        }
        if (rc <= 0)
            break;
    }
    s_clients(self, -1);
}

void fs_live_stop(fs_live_t *self)
{
    pthread_mutex_lock(&self->ws_lock);
    self->stopping = true;
    pthread_cond_broadcast(&self->ws_cond);
    pthread_mutex_unlock(&self->ws_lock);
}
