/* fs_live — the documents built from the aggregates: summary, geo, and
 * the sections frames are made of (fs_live.h; fs_live_internal.h). */
#include "fs_live_internal.h"
#include "mh_json.h"
#include "mh_log.h"
#include "mh_time.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static const char *s_bat_names[FS_BAT_N] = {"<20", "20-50", "50-80", ">=80", "unknown"};
static const char *s_rssi_names[FS_RSSI_N] = {"good", "fair", "weak", "poor", "unknown"};
static const char *s_seen_names[FS_SEEN_N] = {"online", "<1h", "<24h", ">=24h", "never"};

/* ---- documents ---- */

static json_t *s_counts_object(zhashx_t *h)
{
    json_t *o = json_object();
    for (void *v = zhashx_first(h); v; v = zhashx_next(h))
        json_object_set_new(o, zhashx_cursor(h), json_integer((intptr_t)v));
    return o;
}

/* Last-seen buckets age with the clock, so they take a pass over every
 * device (about 1 ms per 25,000 devices here) each time a summary or frame
 * is built. */
static void s_seen_buckets(fs_live_t *self)
{
    memset(self->seen, 0, sizeof self->seen);
    int64_t now = mh_now_ms();
    for (fs_live_dev_t *d = zhashx_first(self->agg.devs); d; d = zhashx_next(self->agg.devs)) {
        int k = d->online                           ? 0
                : !d->last_seen                     ? 4
                : now - d->last_seen < 3600000      ? 1
                : now - d->last_seen < 24 * 3600000 ? 2
                                                    : 3;
        self->seen[k]++;
    }
}

static int s_cmp_cell(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The sections, in frame order: devices, firmware, health, rates,
 * rollouts, geo. Under self->lock. */
void fs_live_sections(fs_live_t *self, json_t *out[6])
{
    fs_live_agg_t *a = &self->agg;
    out[0] = json_pack("{s:I,s:I,s:I}", "total", (json_int_t)a->total, "online",
                       (json_int_t)a->online, "offline", (json_int_t)(a->total - a->online));
    out[1] = s_counts_object(a->fw);
    json_t *bat = json_object(), *rssi = json_object(), *seen = json_object();
    s_seen_buckets(self);
    for (int i = 0; i < FS_BAT_N; i++)
        json_object_set_new(bat, s_bat_names[i], json_integer(a->bat[i]));
    for (int i = 0; i < FS_RSSI_N; i++)
        json_object_set_new(rssi, s_rssi_names[i], json_integer(a->rssi[i]));
    for (int i = 0; i < FS_SEEN_N; i++)
        json_object_set_new(seen, s_seen_names[i], json_integer(self->seen[i]));
    out[2] = json_pack("{s:o,s:o,s:o}", "battery", bat, "rssi", rssi, "lastSeen", seen);
    double in = 0, outr = 0;
    int64_t now = mh_mono_ms();
    for (fs_live_gw_t *g = zhashx_first(self->gateways); g; g = zhashx_next(self->gateways))
        if (now - g->at < 5000) {
            in += g->in;
            outr += g->out;
        }
    out[3] = json_pack("{s:f,s:f,s:I}", "in", round(in * 10) / 10, "out", round(outr * 10) / 10,
                       "gateways", (json_int_t)zhashx_size(self->gateways));
    out[4] = self->rollouts ? json_copy(self->rollouts) : json_array();
    /* cells in a stable order (south to north, west to east), so replicas
     * give the same document */
    size_t nc = zhashx_size(a->cells), k = 0;
    int64_t(*cv)[2] = calloc(nc ? nc : 1, sizeof *cv);
    for (void *v = zhashx_first(a->cells); v && cv; v = zhashx_next(a->cells), k++) {
        cv[k][0] = strtoll(zhashx_cursor(a->cells), NULL, 10);
        cv[k][1] = (intptr_t)v;
    }
    if (cv)
        qsort(cv, nc, sizeof *cv, s_cmp_cell);
    json_t *cells = json_array();
    for (k = 0; cv && k < nc; k++) {
        double lat, lon;
        fs_live_cell_corner(self, cv[k][0], &lat, &lon);
        json_array_append_new(cells, json_pack("{s:f,s:f,s:I}", "lat", lat, "lon", lon, "count",
                                               (json_int_t)cv[k][1]));
    }
    free(cv);
    out[5] = json_pack("{s:f,s:o}", "cellDegrees", self->o.cell_degrees, "cells", cells);
}

/* Built at most once per change (and per second, as last-seen ages); under
 * a steady stream of changes at most every 100 ms, so many readers cost one
 * pass over the devices, not one each. */
char *fs_live_summary(fs_live_t *self)
{
    pthread_mutex_lock(&self->lock);
    char *text = NULL;
    int64_t now = mh_mono_ms();
    if (self->summary && ((self->summary_gen == self->gen && now - self->summary_at < 1000) ||
                          now - self->summary_at < 100)) {
        text = strdup(self->summary);
    } else if (self->ready) {
        json_t *s[6];
        fs_live_sections(self, s);
        json_decref(s[5]);
        json_t *o =
            json_pack("{s:o,s:o,s:o,s:o,s:o,s:I}", "devices", s[0], "firmware", s[1], "health",
                      s[2], "rates", s[3], "rollouts", s[4], "ts", (json_int_t)mh_now_ms());
        text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(o);
        free(self->summary);
        self->summary = text ? strdup(text) : NULL;
        self->summary_gen = self->gen;
        self->summary_at = now;
    }
    pthread_mutex_unlock(&self->lock);
    return text;
}

char *fs_live_geo(fs_live_t *self)
{
    pthread_mutex_lock(&self->lock);
    char *text = NULL;
    if (self->ready) {
        json_t *s[6];
        fs_live_sections(self, s);
        for (int i = 0; i < 5; i++)
            json_decref(s[i]);
        text = json_dumps(s[5], JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(s[5]);
    }
    pthread_mutex_unlock(&self->lock);
    return text;
}

json_t *fs_live_history_json(fs_live_t *self, int from)
{
    json_t *h = json_array();
    for (int i = from; i < self->nhist; i++) {
        int64_t *p = self->hist[(self->hist_start + i) % FS_HISTORY];
        json_array_append_new(
            h, json_pack("[I,I,I]", (json_int_t)p[0], (json_int_t)p[1], (json_int_t)p[2]));
    }
    return h;
}
