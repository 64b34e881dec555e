#include "mh_idset.h"
#include "mh_rpc.h"
#include "mh_envelope.h"
#include "mh_log.h"
#include "mh_resolver.h"
#include "mh_time.h"
#include "twin.pb-c.h"

#include <inttypes.h>

#define S_PAGE        10000
#define S_RPC_TIMEOUT 5000

struct mh_idset_t {
    zsock_t *dealer, *sub;
    zsock_t *monitor; /* the SUB's handshakes: a twin replica (re)connected */
    mh_resolver_t *rpc_resolver, *ev_resolver;
    zhashx_t *live, *building; /* id -> (void *)1 */
    bool loaded, online_only;
    char what[64];
    int64_t refresh_ms, next_load, sent_ms, next_resolve, loaded_ms;
    char cursor[80];
    char req_id[40];
    uint64_t seq;
    mh_gauge_t *m_size;
    mh_counter_t *m_loads, *m_events;
    mh_ratelimit_t rl;
};

mh_idset_t *mh_idset_new(const mh_idset_opts_t *o, mh_metrics_t *m)
{
    mh_idset_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->refresh_ms = o->refresh_ms > 0 ? o->refresh_ms : 300000;
    self->online_only = o->online_only;
    snprintf(self->what, sizeof self->what, "%s", o->what ? o->what : "devices");
    self->rl = (mh_ratelimit_t)MH_RATELIMIT_INIT(5000, 2);
    self->live = zhashx_new();
    self->dealer = mh_dealer_new(o->rpc_endpoint, 16, &self->rpc_resolver);
    self->sub = zsock_new(ZMQ_SUB);
    zsock_set_rcvhwm(self->sub, 100000);
    if (self->online_only) {
        zsock_set_subscribe(self->sub, "device.online");
        zsock_set_subscribe(self->sub, "device.offline");
    } else {
        zsock_set_subscribe(self->sub, "device.registered");
    }
    zsock_set_subscribe(self->sub, "device.deleted");
    /* Events published while the SUB was not connected to a replica (twin
     * restarting, a replica just started) are gone: every handshake with a
     * replica starts a load afresh (s_on_handshake). */
    char addr[64];
    snprintf(addr, sizeof addr, "inproc://mh-idset-monitor-%p", (void *)self);
    if (zmq_socket_monitor(zsock_resolve(self->sub), addr, ZMQ_EVENT_HANDSHAKE_SUCCEEDED) == 0) {
        self->monitor = zsock_new(ZMQ_PAIR);
        if (self->monitor && zsock_connect(self->monitor, "%s", addr) != 0)
            zsock_destroy(&self->monitor);
    }
    self->ev_resolver = mh_resolver_new(self->sub, o->events_endpoint);
    if (!self->rpc_resolver || !self->ev_resolver) {
        mh_idset_destroy(&self);
        return NULL;
    }
    mh_resolver_refresh(self->rpc_resolver);
    mh_resolver_refresh(self->ev_resolver);
    self->next_resolve = mh_mono_ms() + 10000;
    const char *pre = o->metric_prefix ? o->metric_prefix : "mh_idset";
    char name[128], help[160];
    snprintf(name, sizeof name, "%s_devices", pre);
    snprintf(help, sizeof help, "Device ids in the cache of %s", self->what);
    self->m_size = mh_metrics_gauge(m, name, help, NULL);
    snprintf(name, sizeof name, "%s_loads_total", pre);
    snprintf(help, sizeof help, "Complete loads of the %s from twin", self->what);
    self->m_loads = mh_metrics_counter(m, name, help, NULL);
    snprintf(name, sizeof name, "%s_events_total", pre);
    snprintf(help, sizeof help, "Changes to the %s applied from twin's events", self->what);
    self->m_events = mh_metrics_counter(m, name, help, NULL);
    return self;
}

void mh_idset_destroy(mh_idset_t **self_p)
{
    mh_idset_t *self = *self_p;
    if (!self)
        return;
    mh_resolver_destroy(&self->rpc_resolver);
    mh_resolver_destroy(&self->ev_resolver);
    if (self->monitor) {
        zmq_socket_monitor(zsock_resolve(self->sub), NULL, 0);
        zsock_destroy(&self->monitor);
    }
    zsock_destroy(&self->dealer);
    zsock_destroy(&self->sub);
    zhashx_destroy(&self->live);
    zhashx_destroy(&self->building);
    free(self);
    *self_p = NULL;
}

zsock_t *mh_idset_rpc(mh_idset_t *self)
{
    return self->dealer;
}

zsock_t *mh_idset_events(mh_idset_t *self)
{
    return self->sub;
}

bool mh_idset_loaded(mh_idset_t *self)
{
    return self->loaded;
}

void mh_idset_missed(mh_idset_t *self)
{
    int64_t soon = self->loaded_ms + 10000;
    if (!self->building && self->next_load > soon)
        self->next_load = soon;
}

bool mh_idset_has(mh_idset_t *self, const char *id)
{
    return zhashx_lookup(self->live, id) != NULL;
}

size_t mh_idset_size(mh_idset_t *self)
{
    return zhashx_size(self->live);
}

static void s_request(mh_idset_t *self)
{
    snprintf(self->req_id, sizeof self->req_id, "reg-%" PRIu64, ++self->seq);
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.request_id = self->req_id;
    q.method = MH__TWIN_REQUEST__METHOD__LIST_IDS;
    q.cursor = self->cursor;
    q.status = self->online_only ? "online" : "";
    q.limit = S_PAGE;
    q.deadline_ms = mh_now_ms() + S_RPC_TIMEOUT;
    mh_envelope_send(self->dealer, NULL, "twin.request", NULL, &q.base, true);
    self->sent_ms = mh_mono_ms();
}

/* A replica's event stream (re)connected: what it published before is
 * not in the set. A load in progress starts over (its snapshot may predate
 * the handshake); otherwise one starts now. Before the first load is asked
 * for, nothing to do: it will come after. */
static void s_on_handshake(mh_idset_t *self, const char *endpoint)
{
    if (!self->building && !self->loaded)
        return;
    mh_info("twin's events (re)connected at %s: loading the %s again", endpoint, self->what);
    if (self->building) {
        zhashx_purge(self->building);
        self->cursor[0] = 0;
        s_request(self);
    } else {
        self->next_load = mh_mono_ms();
    }
}

static void s_monitor(mh_idset_t *self)
{
    while (self->monitor && (zsock_events(self->monitor) & ZMQ_POLLIN)) {
        zmsg_t *m = zmsg_recv(self->monitor);
        if (!m)
            break;
        zframe_t *ev = zmsg_first(m), *ep = zmsg_next(m);
        uint16_t event = 0;
        if (ev && zframe_size(ev) >= 2)
            memcpy(&event, zframe_data(ev), 2);
        if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            char *endpoint = ep ? zframe_strdup(ep) : NULL;
            s_on_handshake(self, endpoint ? endpoint : "?");
            free(endpoint);
        }
        zmsg_destroy(&m);
    }
}

void mh_idset_tick(mh_idset_t *self)
{
    s_monitor(self);
    int64_t now = mh_mono_ms();
    if (!self->building && now >= self->next_load) {
        self->building = zhashx_new();
        self->cursor[0] = 0;
        s_request(self);
    } else if (self->building && now - self->sent_ms > S_RPC_TIMEOUT) {
        mh_log_limited(&self->rl, MH_LOG_WARN, "twin did not answer for the %s; asking again",
                       self->what);
        s_request(self);
    }
    if (now >= self->next_resolve) {
        self->next_resolve = now + 10000;
        mh_resolver_refresh(self->rpc_resolver);
        mh_resolver_refresh(self->ev_resolver);
    }
}

void mh_idset_on_rpc(mh_idset_t *self)
{
    Mh__TwinReply *r =
        (Mh__TwinReply *)mh_rpc_recv_reply(self->dealer, "twin.reply", &mh__twin_reply__descriptor,
                                           self->building ? self->req_id : NULL);
    if (!r)
        return; /* malformed, or an answer to a request we gave up on */
    if (r->status != 200) {
        mh_log_limited(&self->rl, MH_LOG_WARN, "twin cannot list the %s yet (%u %s)", self->what,
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
            mh_info("%s loaded: %zu", self->what, zhashx_size(self->live));
        self->loaded = true;
        self->loaded_ms = mh_mono_ms();
        self->next_load = self->loaded_ms + self->refresh_ms;
        mh_counter_inc(self->m_loads);
        mh_gauge_set(self->m_size, (double)zhashx_size(self->live));
    }
    mh__twin_reply__free_unpacked(r, NULL);
}

void mh_idset_on_event(mh_idset_t *self)
{
    Mh__Envelope *env = mh_event_recv(self->sub);
    const char *type = env ? env->type : NULL;
    const char *id = NULL;
    bool add = false;
    Mh__DeviceRegistered *reg = NULL;
    Mh__DeviceDeleted *del = NULL;
    Mh__DeviceConnectivity *conn = NULL;
    if (env && type && strcmp(type, "device.registered") == 0 && !self->online_only) {
        reg = mh__device_registered__unpack(NULL, env->body.len, env->body.data);
        id = reg ? reg->device_id : NULL;
        add = true;
    } else if (env && type && strcmp(type, "device.deleted") == 0) {
        del = mh__device_deleted__unpack(NULL, env->body.len, env->body.data);
        id = del ? del->device_id : NULL;
    } else if (env && type && self->online_only &&
               (strcmp(type, "device.online") == 0 || strcmp(type, "device.offline") == 0)) {
        conn = mh__device_connectivity__unpack(NULL, env->body.len, env->body.data);
        id = conn ? conn->device_id : NULL;
        add = conn && conn->online;
    }
    if (id) {
        if (add) {
            zhashx_insert(self->live, id, (void *)1);
            if (self->building)
                zhashx_insert(self->building, id, (void *)1);
        } else {
            zhashx_delete(self->live, id);
            if (self->building)
                zhashx_delete(self->building, id);
        }
        mh_counter_inc(self->m_events);
    }
    if (reg)
        mh__device_registered__free_unpacked(reg, NULL);
    if (del)
        mh__device_deleted__free_unpacked(del, NULL);
    if (conn)
        mh__device_connectivity__free_unpacked(conn, NULL);
    mh_gauge_set(self->m_size, (double)zhashx_size(self->live));
    mh_envelope_free(&env);
}
