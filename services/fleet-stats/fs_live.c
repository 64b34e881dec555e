/* fs_live — the live aggregates: a snapshot from twin, kept current by
 * events, and the active rollouts (fs_live.h; fs_live_internal.h). */
#include "fs_live_internal.h"
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

static void s_free_ptr(void **p)
{
    free(*p);
    *p = NULL;
}

static void s_agg_init(fs_live_agg_t *a)
{
    memset(a, 0, sizeof *a);
    a->devs = zhashx_new();
    zhashx_set_destructor(a->devs, s_free_ptr);
    a->fw = zhashx_new();
    a->cells = zhashx_new();
}

static void s_agg_free(fs_live_agg_t *a)
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
static void s_account(fs_live_agg_t *a, const fs_live_dev_t *d, int sign)
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

void fs_live_cell_corner(const fs_live_t *self, int64_t cell, double *lat, double *lon)
{
    double cd = self->o.cell_degrees;
    int64_t per_row = (int64_t)ceil(360 / cd) + 1;
    *lat = (double)(cell / per_row) * cd - 90;
    *lon = (double)(cell % per_row) * cd - 180;
}

static fs_live_dev_t *s_dev(fs_live_agg_t *a, const char *id, bool create)
{
    fs_live_dev_t *d = zhashx_lookup(a->devs, id);
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
    fs_live_agg_t fresh;
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
            fs_live_dev_t *d = id ? s_dev(&fresh, id, true) : NULL;
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
    fs_live_dev_t *d = s_dev(&self->agg, ev->device_id, true);
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
    fs_live_dev_t *d = s_dev(&self->agg, ev->device_id, true);
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
    fs_live_gw_t *g = zhashx_lookup(self->gateways, ev->gateway);
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
                fs_live_dev_t *d = ev ? s_dev(&self->agg, ev->device_id, false) : NULL;
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
        if (self->nhist == FS_HISTORY) {
            self->hist_start = (self->hist_start + 1) % FS_HISTORY;
            self->nhist--;
            if (self->hist_sent > 0)
                self->hist_sent--;
        }
        int64_t *p = self->hist[(self->hist_start + self->nhist) % FS_HISTORY];
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
        fs_live_frame(self);
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
    fs_live_ws_init(self);
    s_agg_init(&self->agg);
    self->gateways = zhashx_new();
    zhashx_set_destructor(self->gateways, s_free_ptr);
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
    fs_live_ws_free(self);
    free(self->summary);
    json_decref(self->rollouts);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}
