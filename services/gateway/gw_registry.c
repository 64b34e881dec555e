#include "gw_registry.h"
#include "mh_envelope.h"
#include "mh_log.h"
#include "mh_resolver.h"
#include "mh_time.h"
#include "twin.pb-c.h"

#include <inttypes.h>

#define S_PAGE        10000
#define S_RPC_TIMEOUT 5000

struct gw_registry_t {
    zsock_t *dealer, *sub;
    mh_resolver_t *rpc_resolver, *ev_resolver;
    zhashx_t *live, *building; /* id -> (void *)1 */
    bool loaded;
    int64_t refresh_ms, next_load, sent_ms, next_resolve;
    char cursor[80];
    char req_id[40];
    uint64_t seq;
    mh_gauge_t *m_size;
    mh_counter_t *m_loads, *m_events;
    mh_ratelimit_t rl;
};

gw_registry_t *gw_registry_new(const char *rpc_endpoint, const char *events_endpoint,
                               int64_t refresh_ms, mh_metrics_t *m)
{
    gw_registry_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->refresh_ms = refresh_ms > 0 ? refresh_ms : 300000;
    self->rl = (mh_ratelimit_t)MH_RATELIMIT_INIT(5000, 2);
    self->live = zhashx_new();
    self->dealer = zsock_new(ZMQ_DEALER);
    zsock_set_linger(self->dealer, 0);
    zsock_set_sndhwm(self->dealer, 16);
    self->sub = zsock_new(ZMQ_SUB);
    zsock_set_rcvhwm(self->sub, 100000);
    zsock_set_subscribe(self->sub, "device.registered");
    zsock_set_subscribe(self->sub, "device.deleted");
    self->rpc_resolver = mh_resolver_new(self->dealer, rpc_endpoint);
    self->ev_resolver = mh_resolver_new(self->sub, events_endpoint);
    if (!self->rpc_resolver || !self->ev_resolver) {
        gw_registry_destroy(&self);
        return NULL;
    }
    mh_resolver_refresh(self->rpc_resolver);
    mh_resolver_refresh(self->ev_resolver);
    self->next_resolve = mh_mono_ms() + 10000;
    self->m_size = mh_metrics_gauge(m, "mh_gateway_registered_devices",
                                    "Registered device ids in the gateway's cache", NULL);
    self->m_loads = mh_metrics_counter(m, "mh_gateway_registry_loads_total",
                                       "Complete loads of the registered ids from twin", NULL);
    self->m_events =
        mh_metrics_counter(m, "mh_gateway_registry_events_total",
                           "Registrations and deletions applied from twin's events", NULL);
    return self;
}

void gw_registry_destroy(gw_registry_t **self_p)
{
    gw_registry_t *self = *self_p;
    if (!self)
        return;
    mh_resolver_destroy(&self->rpc_resolver);
    mh_resolver_destroy(&self->ev_resolver);
    zsock_destroy(&self->dealer);
    zsock_destroy(&self->sub);
    zhashx_destroy(&self->live);
    zhashx_destroy(&self->building);
    free(self);
    *self_p = NULL;
}

zsock_t *gw_registry_rpc(gw_registry_t *self)
{
    return self->dealer;
}

zsock_t *gw_registry_events(gw_registry_t *self)
{
    return self->sub;
}

bool gw_registry_loaded(gw_registry_t *self)
{
    return self->loaded;
}

bool gw_registry_has(gw_registry_t *self, const char *id)
{
    return zhashx_lookup(self->live, id) != NULL;
}

size_t gw_registry_size(gw_registry_t *self)
{
    return zhashx_size(self->live);
}

static void s_request(gw_registry_t *self)
{
    snprintf(self->req_id, sizeof self->req_id, "reg-%" PRIu64, ++self->seq);
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.request_id = self->req_id;
    q.method = MH__TWIN_REQUEST__METHOD__LIST_IDS;
    q.cursor = self->cursor;
    q.limit = S_PAGE;
    q.deadline_ms = mh_now_ms() + S_RPC_TIMEOUT;
    mh_envelope_send(self->dealer, NULL, "twin.request", NULL, &q.base, true);
    self->sent_ms = mh_mono_ms();
}

void gw_registry_tick(gw_registry_t *self)
{
    int64_t now = mh_mono_ms();
    if (!self->building && now >= self->next_load) {
        self->building = zhashx_new();
        self->cursor[0] = 0;
        s_request(self);
    } else if (self->building && now - self->sent_ms > S_RPC_TIMEOUT) {
        mh_log_limited(&self->rl, MH_LOG_WARN,
                       "twin did not answer for the registered ids; asking again");
        s_request(self);
    }
    if (now >= self->next_resolve) {
        self->next_resolve = now + 10000;
        mh_resolver_refresh(self->rpc_resolver);
        mh_resolver_refresh(self->ev_resolver);
    }
}

void gw_registry_on_rpc(gw_registry_t *self)
{
    zframe_t *f = zframe_recv(self->dealer);
    if (!f)
        return;
    Mh__Envelope *env = mh_envelope_unpack(f);
    zframe_destroy(&f);
    Mh__TwinReply *r = NULL;
    if (env && strcmp(env->type, "twin.reply") == 0)
        r = mh__twin_reply__unpack(NULL, env->body.len, env->body.data);
    mh_envelope_free(&env);
    if (!r || !self->building || strcmp(r->request_id, self->req_id) != 0) {
        if (r)
            mh__twin_reply__free_unpacked(r, NULL);
        return; /* an answer to a request we gave up on */
    }
    if (r->status != 200) {
        mh_log_limited(&self->rl, MH_LOG_WARN, "twin cannot list registered ids yet (%u %s)",
                       r->status, r->message);
        self->sent_ms = mh_mono_ms() - S_RPC_TIMEOUT + 1000; /* ask again in a second */
        mh__twin_reply__free_unpacked(r, NULL);
        return;
    }
    for (size_t i = 0; i < r->n_ids; i++)
        zhashx_insert(self->building, r->ids[i], (void *)1);
    if (*r->next) {
        snprintf(self->cursor, sizeof self->cursor, "%s", r->next);
        s_request(self);
    } else {
        zhashx_destroy(&self->live);
        self->live = self->building;
        self->building = NULL;
        if (!self->loaded)
            mh_info("registered devices loaded: %zu", zhashx_size(self->live));
        self->loaded = true;
        self->next_load = mh_mono_ms() + self->refresh_ms;
        mh_counter_inc(self->m_loads);
        mh_gauge_set(self->m_size, (double)zhashx_size(self->live));
    }
    mh__twin_reply__free_unpacked(r, NULL);
}

void gw_registry_on_event(gw_registry_t *self)
{
    zmsg_t *m = zmsg_recv(self->sub);
    if (!m)
        return;
    char *type = zmsg_popstr(m);
    zframe_t *f = zmsg_pop(m);
    Mh__Envelope *env = f ? mh_envelope_unpack(f) : NULL;
    if (env && type && strcmp(type, "device.registered") == 0) {
        Mh__DeviceRegistered *ev =
            mh__device_registered__unpack(NULL, env->body.len, env->body.data);
        if (ev) {
            zhashx_insert(self->live, ev->device_id, (void *)1);
            if (self->building)
                zhashx_insert(self->building, ev->device_id, (void *)1);
            mh_counter_inc(self->m_events);
            mh__device_registered__free_unpacked(ev, NULL);
        }
    } else if (env && type && strcmp(type, "device.deleted") == 0) {
        Mh__DeviceDeleted *ev = mh__device_deleted__unpack(NULL, env->body.len, env->body.data);
        if (ev) {
            zhashx_delete(self->live, ev->device_id);
            if (self->building)
                zhashx_delete(self->building, ev->device_id);
            mh_counter_inc(self->m_events);
            mh__device_deleted__free_unpacked(ev, NULL);
        }
    }
    mh_gauge_set(self->m_size, (double)zhashx_size(self->live));
    mh_envelope_free(&env);
    zframe_destroy(&f);
    zstr_free(&type);
    zmsg_destroy(&m);
}
