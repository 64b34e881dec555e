/* fs_live — see fs_live.h. */
#include "fs_live.h"
#include "mh_json.h"
#include "mh_log.h"
#include "mh_resolver.h"
#include "mh_time.h"
#include "ota.pb-c.h"
#include "telemetry.pb-c.h"
#include "twin.pb-c.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>

enum { S_BAT_N = 5, S_RSSI_N = 5, S_SEEN_N = 5, S_HISTORY = 360 };
static const char *s_bat_names[S_BAT_N] = {"<20", "20-50", "50-80", ">=80", "unknown"};
static const char *s_rssi_names[S_RSSI_N] = {"good", "fair", "weak", "poor", "unknown"};
static const char *s_seen_names[S_SEEN_N] = {"online", "<1h", "<24h", ">=24h", "never"};

/* One device as the aggregates need it. */
typedef struct {
    int64_t last_seen; /* ms; 0 never */
    int64_t conn_ts;   /* time of the connectivity change last applied */
    int64_t cell;      /* -1: no location */
    int8_t bat, rssi;  /* bucket indexes */
    bool online;
    char fw[48]; /* "" unknown */
} s_dev_t;

typedef struct {
    zhashx_t *devs;  /* id -> s_dev_t */
    zhashx_t *fw;    /* version -> count */
    zhashx_t *cells; /* cell key -> count */
    int64_t total, online, bat[S_BAT_N], rssi[S_RSSI_N];
} s_agg_t;

typedef struct {
    uint64_t received, published;
    int64_t at; /* monotonic ms of the last stats */
    double in, out;
} s_gw_t;

typedef struct {
    void *conn;
    fs_live_send_fn *send;
    bool need_summary;
} s_client_t;

struct fs_live_t {
    fs_live_opts_t o;
    zsock_t *sub;
    mh_resolver_t *res[3];
    pthread_mutex_t lock; /* agg, rollouts, rates, history */
    s_agg_t agg;
    bool ready;
    int64_t next_snapshot, next_resolve, next_history, next_rollouts, last_frame;
    bool rollouts_dirty;
    uint64_t gen, framed_gen; /* bumped on every change; what the last frame showed */
    char *summary;            /* cached summary text */
    uint64_t summary_gen;
    int64_t summary_at;
    json_t *rollouts;   /* active rollouts */
    zhashx_t *gateways; /* instance -> s_gw_t */
    int64_t seen[S_SEEN_N];
    int64_t hist[S_HISTORY][3];
    int nhist, hist_start, hist_sent; /* ring; hist_sent: points already in frames */
    /* frames */
    pthread_mutex_t ws_lock;
    zlistx_t *clients; /* s_client_t */
    char *last[6];     /* the sections as last framed */
    char *full;        /* the last full frame */
    uint64_t seq;
    mh_counter_t *m_events, *m_snapshots, *m_frames, *m_snapshot_errors;
    mh_gauge_t *m_clients, *m_devices;
};

static void s_free_ptr(void **p)
{
    free(*p);
    *p = NULL;
}

static void s_agg_init(s_agg_t *a)
{
    memset(a, 0, sizeof *a);
    a->devs = zhashx_new();
    zhashx_set_destructor(a->devs, s_free_ptr);
    a->fw = zhashx_new();
    a->cells = zhashx_new();
}

static void s_agg_free(s_agg_t *a)
{
    zhashx_destroy(&a->devs);
    zhashx_destroy(&a->fw);
    zhashx_destroy(&a->cells);
}

static void s_count(zhashx_t *h, const char *key, int sign)
{
    intptr_t n = (intptr_t)zhashx_lookup(h, key) + sign;
    if (n <= 0)
        zhashx_delete(h, key);
    else if (zhashx_lookup(h, key))
        zhashx_update(h, key, (void *)n);
    else
        zhashx_insert(h, key, (void *)n);
}

static void s_cell_key(int64_t cell, char *out, size_t len)
{
    snprintf(out, len, "%" PRId64, cell);
}

/* Adds (sign 1) or removes (-1) a device's share of every aggregate. */
static void s_account(s_agg_t *a, const s_dev_t *d, int sign)
{
    a->total += sign;
    if (d->online)
        a->online += sign;
    s_count(a->fw, *d->fw ? d->fw : "unknown", sign);
    a->bat[d->bat] += sign;
    a->rssi[d->rssi] += sign;
    if (d->cell >= 0) {
        char k[32];
        s_cell_key(d->cell, k, sizeof k);
        s_count(a->cells, k, sign);
    }
}

static int8_t s_bat_bucket(bool has, double v)
{
    return !has ? 4 : v < 20 ? 0 : v < 50 ? 1 : v < 80 ? 2 : 3;
}

static int8_t s_rssi_bucket(bool has, double v)
{
    return !has ? 4 : v >= -70 ? 0 : v >= -85 ? 1 : v >= -100 ? 2 : 3;
}

/* Cells are `cell_degrees` squares numbered from the south-west. */
static int64_t s_cell(const fs_live_t *self, bool has, double lat, double lon)
{
    if (!has || !isfinite(lat) || !isfinite(lon) || lat < -90 || lat > 90 || lon < -180 ||
        lon > 180)
        return -1;
    double cd = self->o.cell_degrees;
    int64_t per_row = (int64_t)ceil(360 / cd) + 1;
    int64_t y = (int64_t)floor((lat + 90) / cd), x = (int64_t)floor((lon + 180) / cd);
    return y * per_row + x;
}

static void s_cell_corner(const fs_live_t *self, int64_t cell, double *lat, double *lon)
{
    double cd = self->o.cell_degrees;
    int64_t per_row = (int64_t)ceil(360 / cd) + 1;
    *lat = (double)(cell / per_row) * cd - 90;
    *lon = (double)(cell % per_row) * cd - 180;
}

static s_dev_t *s_dev(s_agg_t *a, const char *id, bool create)
{
    s_dev_t *d = zhashx_lookup(a->devs, id);
    if (d || !create)
        return d;
    d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->cell = -1;
    d->bat = 4;
    d->rssi = 4;
    zhashx_insert(a->devs, id, d);
    s_account(a, d, 1);
    return d;
}

/* ---- snapshot ---- */

static json_t *s_twin_page(fs_live_t *self, const char *cursor, char *err, size_t errlen)
{
    char rid[48];
    snprintf(rid, sizeof rid, "live-%" PRIu64, ++self->seq);
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.method = MH__TWIN_REQUEST__METHOD__SNAPSHOT;
    q.cursor = (char *)cursor;
    q.limit = 5000;
    return mh_rpc_call_json(self->o.twin, "twin.request", &q.base, rid, (int)self->o.rpc_timeout_ms,
                            err, errlen);
}

static bool s_snapshot(fs_live_t *self)
{
    s_agg_t fresh;
    s_agg_init(&fresh);
    char cursor[256] = "", err[256];
    int64_t t0 = mh_mono_ms();
    for (;;) {
        json_t *page = s_twin_page(self, cursor, err, sizeof err);
        if (!page) {
            mh_counter_inc(self->m_snapshot_errors);
            mh_warn("fleet snapshot failed, trying again in 5 s: %s", err);
            s_agg_free(&fresh);
            return false;
        }
        size_t i;
        json_t *row;
        json_array_foreach(json_object_get(page, "items"), i, row)
        {
            const char *id = json_string_value(json_array_get(row, 0));
            s_dev_t *d = id ? s_dev(&fresh, id, true) : NULL;
            if (!d)
                continue;
            s_account(&fresh, d, -1);
            d->online = json_is_true(json_array_get(row, 1));
            d->last_seen = json_integer_value(json_array_get(row, 2));
            snprintf(d->fw, sizeof d->fw, "%s", json_string_value(json_array_get(row, 3)) ?: "");
            json_t *b = json_array_get(row, 4), *r = json_array_get(row, 5),
                   *la = json_array_get(row, 6), *lo = json_array_get(row, 7);
            d->bat = s_bat_bucket(json_is_number(b), json_number_value(b));
            d->rssi = s_rssi_bucket(json_is_number(r), json_number_value(r));
            d->cell = s_cell(self, json_is_number(la) && json_is_number(lo), json_number_value(la),
                             json_number_value(lo));
            s_account(&fresh, d, 1);
        }
        const char *next = json_string_value(json_object_get(page, "next"));
        snprintf(cursor, sizeof cursor, "%s", next ? next : "");
        json_decref(page);
        if (!next)
            break;
    }
    pthread_mutex_lock(&self->lock);
    s_agg_free(&self->agg);
    self->agg = fresh;
    self->ready = true;
    self->gen++;
    pthread_mutex_unlock(&self->lock);
    mh_counter_inc(self->m_snapshots);
    mh_gauge_set(self->m_devices, (double)fresh.total);
    mh_info("fleet snapshot: %" PRId64 " devices, %" PRId64 " online, in %" PRId64 " ms",
            fresh.total, fresh.online, mh_mono_ms() - t0);
    return true;
}

/* ---- rollouts ---- */

static void s_fetch_rollouts(fs_live_t *self)
{
    char rid[48];
    snprintf(rid, sizeof rid, "live-%" PRIu64, ++self->seq);
    Mh__OtaRequest q = MH__OTA_REQUEST__INIT;
    q.method = MH__OTA_REQUEST__METHOD__LIST_ROLLOUTS;
    q.limit = 20;
    /* short: the event loop waits meanwhile, and ota being away must not
     * hold the device counters up */
    int timeout = self->o.rpc_timeout_ms < 1000 ? (int)self->o.rpc_timeout_ms : 1000;
    char err[256];
    json_t *page =
        mh_rpc_call_json(self->o.ota, "ota.request", &q.base, rid, timeout, err, sizeof err);
    if (!page)
        return; /* ota away: keep what we have, try on the next change */
    json_t *active = json_array();
    size_t i;
    json_t *ro;
    json_array_foreach(json_object_get(page, "items"), i, ro)
    {
        const char *st = json_string_value(json_object_get(ro, "state"));
        if (st && (strcmp(st, "scheduled") == 0 || strcmp(st, "running") == 0 ||
                   strcmp(st, "paused") == 0 || strcmp(st, "rolling_back") == 0))
            json_array_append(active, ro);
    }
    json_decref(page);
    pthread_mutex_lock(&self->lock);
    json_decref(self->rollouts);
    self->rollouts = active;
    self->rollouts_dirty = false;
    self->gen++;
    pthread_mutex_unlock(&self->lock);
}

/* ---- events ---- */

static void s_on_connectivity(fs_live_t *self, const Mh__DeviceConnectivity *ev)
{
    s_dev_t *d = s_dev(&self->agg, ev->device_id, true);
    if (!d || (ev->ts_ms && ev->ts_ms < d->conn_ts))
        return; /* an older change than the one we have */
    s_account(&self->agg, d, -1);
    d->online = ev->online;
    d->conn_ts = ev->ts_ms;
    if (ev->ts_ms > d->last_seen)
        d->last_seen = ev->ts_ms;
    if (*ev->firmware)
        snprintf(d->fw, sizeof d->fw, "%s", ev->firmware);
    s_account(&self->agg, d, 1);
}

static void s_on_twin(fs_live_t *self, const Mh__TwinChanged *ev)
{
    s_dev_t *d = s_dev(&self->agg, ev->device_id, true);
    if (!d)
        return;
    s_account(&self->agg, d, -1);
    if (ev->firmware_changed)
        snprintf(d->fw, sizeof d->fw, "%s", ev->firmware);
    if (ev->location_changed)
        d->cell = s_cell(self, ev->has_location, ev->lat, ev->lon);
    d->bat = s_bat_bucket(ev->has_battery, ev->battery);
    d->rssi = s_rssi_bucket(ev->has_rssi, ev->rssi);
    s_account(&self->agg, d, 1);
}

static void s_on_stats(fs_live_t *self, const Mh__GatewayStats *ev)
{
    int64_t now = mh_mono_ms();
    s_gw_t *g = zhashx_lookup(self->gateways, ev->gateway);
    if (!g) {
        g = calloc(1, sizeof *g);
        if (!g)
            return;
        zhashx_insert(self->gateways, ev->gateway, g);
    } else if (now > g->at) {
        double dt = (double)(now - g->at) / 1000;
        g->in = ev->received >= g->received ? (double)(ev->received - g->received) / dt : 0;
        g->out = ev->published >= g->published ? (double)(ev->published - g->published) / dt : 0;
    }
    g->received = ev->received;
    g->published = ev->published;
    g->at = now;
}

void fs_live_on_event(fs_live_t *self)
{
    for (int n = 0; n < 2000 && (zsock_events(self->sub) & ZMQ_POLLIN); n++) {
        Mh__Envelope *env = mh_event_recv(self->sub);
        const char *type = env ? env->type : NULL;
        if (env && type) {
            mh_counter_inc(self->m_events);
            const uint8_t *b = env->body.data;
            size_t len = env->body.len;
            pthread_mutex_lock(&self->lock);
            if (strcmp(type, "device.online") == 0 || strcmp(type, "device.offline") == 0) {
                Mh__DeviceConnectivity *ev = mh__device_connectivity__unpack(NULL, len, b);
                if (ev)
                    s_on_connectivity(self, ev);
                mh__device_connectivity__free_unpacked(ev, NULL);
            } else if (strcmp(type, "device.registered") == 0) {
                Mh__DeviceRegistered *ev = mh__device_registered__unpack(NULL, len, b);
                if (ev)
                    s_dev(&self->agg, ev->device_id, true);
                mh__device_registered__free_unpacked(ev, NULL);
            } else if (strcmp(type, "device.deleted") == 0) {
                Mh__DeviceDeleted *ev = mh__device_deleted__unpack(NULL, len, b);
                s_dev_t *d = ev ? s_dev(&self->agg, ev->device_id, false) : NULL;
                if (d) {
                    s_account(&self->agg, d, -1);
                    zhashx_delete(self->agg.devs, ev->device_id);
                }
                mh__device_deleted__free_unpacked(ev, NULL);
            } else if (strcmp(type, "twin.changed") == 0) {
                Mh__TwinChanged *ev = mh__twin_changed__unpack(NULL, len, b);
                if (ev)
                    s_on_twin(self, ev);
                mh__twin_changed__free_unpacked(ev, NULL);
            } else if (strcmp(type, "gateway.stats") == 0) {
                Mh__GatewayStats *ev = mh__gateway_stats__unpack(NULL, len, b);
                if (ev)
                    s_on_stats(self, ev);
                mh__gateway_stats__free_unpacked(ev, NULL);
            } else if (strncmp(type, "ota.", 4) == 0) {
                self->rollouts_dirty = true;
            }
            self->gen++;
            pthread_mutex_unlock(&self->lock);
        }
        mh_envelope_free(&env);
    }
}

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
    for (s_dev_t *d = zhashx_first(self->agg.devs); d; d = zhashx_next(self->agg.devs)) {
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
static void s_sections(fs_live_t *self, json_t *out[6])
{
    s_agg_t *a = &self->agg;
    out[0] = json_pack("{s:I,s:I,s:I}", "total", (json_int_t)a->total, "online",
                       (json_int_t)a->online, "offline", (json_int_t)(a->total - a->online));
    out[1] = s_counts_object(a->fw);
    json_t *bat = json_object(), *rssi = json_object(), *seen = json_object();
    s_seen_buckets(self);
    for (int i = 0; i < S_BAT_N; i++)
        json_object_set_new(bat, s_bat_names[i], json_integer(a->bat[i]));
    for (int i = 0; i < S_RSSI_N; i++)
        json_object_set_new(rssi, s_rssi_names[i], json_integer(a->rssi[i]));
    for (int i = 0; i < S_SEEN_N; i++)
        json_object_set_new(seen, s_seen_names[i], json_integer(self->seen[i]));
    out[2] = json_pack("{s:o,s:o,s:o}", "battery", bat, "rssi", rssi, "lastSeen", seen);
    double in = 0, outr = 0;
    int64_t now = mh_mono_ms();
    for (s_gw_t *g = zhashx_first(self->gateways); g; g = zhashx_next(self->gateways))
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
        s_cell_corner(self, cv[k][0], &lat, &lon);
        json_array_append_new(cells, json_pack("{s:f,s:f,s:I}", "lat", lat, "lon", lon, "count",
                                               (json_int_t)cv[k][1]));
    }
    free(cv);
    out[5] = json_pack("{s:f,s:o}", "cellDegrees", self->o.cell_degrees, "cells", cells);
}

static const char *s_names[6] = {"devices", "firmware", "health", "rates", "rollouts", "geo"};

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
        s_sections(self, s);
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
        s_sections(self, s);
        for (int i = 0; i < 5; i++)
            json_decref(s[i]);
        text = json_dumps(s[5], JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(s[5]);
    }
    pthread_mutex_unlock(&self->lock);
    return text;
}

static json_t *s_history_json(fs_live_t *self, int from)
{
    json_t *h = json_array();
    for (int i = from; i < self->nhist; i++) {
        int64_t *p = self->hist[(self->hist_start + i) % S_HISTORY];
        json_array_append_new(
            h, json_pack("[I,I,I]", (json_int_t)p[0], (json_int_t)p[1], (json_int_t)p[2]));
    }
    return h;
}

/* Builds the sections, and sends every client what it lacks: a full
 * frame to a new one, the sections that changed to the others. */
static void s_frame(fs_live_t *self)
{
    json_t *s[6];
    char *text[6];
    pthread_mutex_lock(&self->lock);
    self->framed_gen = self->gen;
    s_sections(self, s);
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
    json_object_set_new(full, "history", s_history_json(self, 0));
    if (self->hist_sent < self->nhist) {
        json_object_set_new(changes, "history", s_history_json(self, self->hist_sent));
        changed = true;
    }
    self->hist_sent = self->nhist;
    pthread_mutex_unlock(&self->lock);

    char *full_text = json_dumps(full, JSON_COMPACT);
    char *change_text = changed ? json_dumps(changes, JSON_COMPACT) : NULL;
    json_decref(full);
    json_decref(changes);
    pthread_mutex_lock(&self->ws_lock);
    for (int i = 0; i < 6; i++) {
        free(self->last[i]);
        self->last[i] = text[i];
    }
    free(self->full);
    self->full = full_text;
    for (s_client_t *c = zlistx_first(self->clients); c; c = zlistx_next(self->clients)) {
        const char *t = c->need_summary ? full_text : change_text;
        if (t && full_text) {
            c->send(c->conn, t, strlen(t));
            c->need_summary = false;
            mh_counter_inc(self->m_frames);
        }
    }
    pthread_mutex_unlock(&self->ws_lock);
    free(change_text);
}

void fs_live_attach(fs_live_t *self, void *conn, fs_live_send_fn *send)
{
    s_client_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->conn = conn;
    c->send = send;
    pthread_mutex_lock(&self->ws_lock);
    if (self->full) {
        send(conn, self->full, strlen(self->full));
        mh_counter_inc(self->m_frames);
    } else {
        c->need_summary = true;
    }
    zlistx_add_end(self->clients, c);
    mh_gauge_set(self->m_clients, (double)zlistx_size(self->clients));
    pthread_mutex_unlock(&self->ws_lock);
}

void fs_live_detach(fs_live_t *self, void *conn)
{
    pthread_mutex_lock(&self->ws_lock);
    for (s_client_t *c = zlistx_first(self->clients); c; c = zlistx_next(self->clients))
        if (c->conn == conn) {
            free(c);
            zlistx_delete(self->clients, zlistx_cursor(self->clients));
            break;
        }
    mh_gauge_set(self->m_clients, (double)zlistx_size(self->clients));
    pthread_mutex_unlock(&self->ws_lock);
}

size_t fs_live_clients(fs_live_t *self)
{
    pthread_mutex_lock(&self->ws_lock);
    size_t n = zlistx_size(self->clients);
    pthread_mutex_unlock(&self->ws_lock);
    return n;
}

/* ---- life ---- */

void fs_live_tick(fs_live_t *self)
{
    int64_t now = mh_mono_ms();
    if (now >= self->next_resolve) {
        self->next_resolve = now + 10000;
        for (int i = 0; i < 3; i++)
            if (self->res[i])
                mh_resolver_refresh(self->res[i]);
    }
    if (now >= self->next_snapshot) {
        bool ok = s_snapshot(self);
        now = mh_mono_ms();
        self->next_snapshot = now + (!ok                     ? 5000
                                     : self->o.resync_ms > 0 ? self->o.resync_ms
                                                             : INT64_MAX / 2);
        if (ok)
            self->rollouts_dirty = true;
    }
    if (!self->ready)
        return;
    if ((self->rollouts_dirty && now >= self->next_rollouts) || now >= self->next_rollouts + 9000) {
        s_fetch_rollouts(self);
        self->next_rollouts = mh_mono_ms() + 1000;
    }
    if (now >= self->next_history) {
        self->next_history = now + 10000;
        pthread_mutex_lock(&self->lock);
        if (self->nhist == S_HISTORY) {
            self->hist_start = (self->hist_start + 1) % S_HISTORY;
            self->nhist--;
            if (self->hist_sent > 0)
                self->hist_sent--;
        }
        int64_t *p = self->hist[(self->hist_start + self->nhist) % S_HISTORY];
        p[0] = mh_now_ms();
        p[1] = self->agg.online;
        p[2] = self->agg.total - self->agg.online;
        self->nhist++;
        self->gen++;
        pthread_mutex_unlock(&self->lock);
    }
    /* a frame when something changed (an isolated change goes out at once),
     * at most one per min_frame_ms; every 5 s regardless, as last-seen ages */
    if ((self->gen != self->framed_gen && now - self->last_frame >= self->o.min_frame_ms) ||
        now - self->last_frame >= 5000) {
        self->last_frame = now;
        s_frame(self);
        mh_gauge_set(self->m_devices, (double)self->agg.total);
    }
}

bool fs_live_ready(fs_live_t *self)
{
    return self->ready;
}

zsock_t *fs_live_events(fs_live_t *self)
{
    return self->sub;
}

fs_live_t *fs_live_new(const fs_live_opts_t *opts, mh_metrics_t *m)
{
    fs_live_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->o = *opts;
    if (self->o.cell_degrees <= 0.01 || self->o.cell_degrees > 90)
        self->o.cell_degrees = 1;
    if (self->o.min_frame_ms <= 0)
        self->o.min_frame_ms = 250;
    pthread_mutex_init(&self->lock, NULL);
    pthread_mutex_init(&self->ws_lock, NULL);
    s_agg_init(&self->agg);
    self->gateways = zhashx_new();
    zhashx_set_destructor(self->gateways, s_free_ptr);
    self->clients = zlistx_new();
    self->sub = zsock_new(ZMQ_SUB);
    zsock_set_rcvhwm(self->sub, 200000);
    static const char *topics[] = {"device.", "twin.changed", "gateway.stats", "ota."};
    for (size_t i = 0; i < sizeof topics / sizeof *topics; i++)
        zsock_set_subscribe(self->sub, topics[i]);
    const char *eps[3] = {opts->twin_events, opts->ota_events, opts->gateway_events};
    for (int i = 0; i < 3; i++)
        if (eps[i] && *eps[i] && !(self->res[i] = mh_resolver_new(self->sub, eps[i]))) {
            mh_error("bad event endpoint \"%s\"", eps[i]);
            fs_live_destroy(&self);
            return NULL;
        }
    self->m_events = mh_metrics_counter(m, "mh_fleet_live_events_total",
                                        "Events applied to the live aggregates", NULL);
    self->m_snapshots =
        mh_metrics_counter(m, "mh_fleet_live_snapshots_total",
                           "Complete snapshots of the fleet loaded from twin", NULL);
    self->m_snapshot_errors = mh_metrics_counter(m, "mh_fleet_live_snapshot_errors_total",
                                                 "Snapshots that failed and were retried", NULL);
    self->m_frames =
        mh_metrics_counter(m, "mh_fleet_live_frames_total", "WebSocket frames sent", NULL);
    self->m_clients =
        mh_metrics_gauge(m, "mh_fleet_live_clients", "WebSocket clients of /api/v1/live", NULL);
    self->m_devices =
        mh_metrics_gauge(m, "mh_fleet_live_devices", "Devices in the live aggregates", NULL);
    return self;
}

void fs_live_destroy(fs_live_t **self_p)
{
    fs_live_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < 3; i++)
        mh_resolver_destroy(&self->res[i]);
    zsock_destroy(&self->sub);
    s_agg_free(&self->agg);
    zhashx_destroy(&self->gateways);
    for (s_client_t *c = zlistx_first(self->clients); c; c = zlistx_next(self->clients))
        free(c);
    zlistx_destroy(&self->clients);
    for (int i = 0; i < 6; i++)
        free(self->last[i]);
    free(self->full);
    free(self->summary);
    json_decref(self->rollouts);
    pthread_mutex_destroy(&self->lock);
    pthread_mutex_destroy(&self->ws_lock);
    free(self);
    *self_p = NULL;
}
