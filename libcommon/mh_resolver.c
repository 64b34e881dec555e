#include "mh_resolver.h"

#include "mh_curve.h"

#include "mh_dns.h"

#include <arpa/inet.h>
#include <errno.h>

/* How long a refresh waits for a name's new answer before it goes on with
 * the one before (a loop calls it: an answer from a working server takes a
 * millisecond), and how long a new socket waits for a first answer. */
#define S_REFRESH_WAIT_MS 250
#define S_FIRST_WAIT_MS   1000

struct mh_resolver_t {
    zsock_t *sock;
    zlist_t *specs;      /* of char*: the endpoints as configured */
    zhashx_t *connected; /* "tcp://ip:port" -> spec it came from */
};

mh_resolver_t *mh_resolver_new(zsock_t *sock, const char *spec)
{
    /* every connect of the platform goes through here: CURVE when on */
    if (sock)
        mh_curve_client(sock);
    if (!spec || !*spec)
        return NULL;
    mh_resolver_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->sock = sock;
    self->specs = zlist_new();
    zlist_autofree(self->specs);
    self->connected = zhashx_new();
    zhashx_set_destructor(self->connected, (zhashx_destructor_fn *)zstr_free);
    zhashx_set_duplicator(self->connected, (zhashx_duplicator_fn *)strdup);
    char *copy = strdup(spec), *save = NULL;
    for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        if (strncmp(tok, "tcp://", 6) != 0 && strncmp(tok, "ipc://", 6) != 0 &&
            strncmp(tok, "inproc://", 9) != 0) {
            free(copy);
            mh_resolver_destroy(&self);
            return NULL;
        }
        zlist_append(self->specs, tok);
    }
    free(copy);
    if (zlist_size(self->specs) == 0)
        mh_resolver_destroy(&self);
    return self;
}

void mh_resolver_destroy(mh_resolver_t **self_p)
{
    mh_resolver_t *self = *self_p;
    if (!self)
        return;
    zlist_destroy(&self->specs);
    zhashx_destroy(&self->connected);
    free(self);
    *self_p = NULL;
}

/* Adds the addresses `spec` stands for to `want`, waiting up to wait_ms
 * for a new answer (mh_dns.h). -errno if it can't resolve. */
static int s_expand(const char *spec, zhashx_t *want, int wait_ms)
{
    if (strncmp(spec, "tcp://", 6) != 0) {
        zhashx_insert(want, spec, (void *)spec);
        return 0;
    }
    const char *hp = spec + 6, *colon = strrchr(hp, ':');
    if (!colon)
        return -EINVAL;
    char host[256];
    size_t hl = (size_t)(colon - hp);
    if (hl == 0 || hl >= sizeof host)
        return -EINVAL;
    memcpy(host, hp, hl);
    host[hl] = 0;
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1 || host[0] == '[') {
        zhashx_insert(want, spec, (void *)spec);
        return 0;
    }
    mh_dns_addr_t addrs[MH_DNS_MAX_ADDRS];
    int n = mh_dns_lookup(host, wait_ms, addrs, MH_DNS_MAX_ADDRS);
    if (n < 0)
        return n;
    for (int i = 0; i < n; i++) {
        char ep[300];
        if (snprintf(ep, sizeof ep, "tcp://%s%s", addrs[i].ip, colon) < (int)sizeof ep)
            zhashx_insert(want, ep, (void *)spec);
    }
    return 0;
}

int mh_resolver_refresh(mh_resolver_t *self)
{
    zhashx_t *want = zhashx_new();
    zhashx_set_duplicator(want, (zhashx_duplicator_fn *)strdup);
    zhashx_set_destructor(want, (zhashx_destructor_fn *)zstr_free);
    int failures = 0;
    for (const char *spec = zlist_first(self->specs); spec; spec = zlist_next(self->specs))
        if (s_expand(spec, want, S_REFRESH_WAIT_MS) < 0) {
            failures++;
            /* Keep what this spec had before. */
            for (const char *v = zhashx_first(self->connected); v; v = zhashx_next(self->connected))
                if (strcmp(v, spec) == 0)
                    zhashx_insert(want, zhashx_cursor(self->connected), (void *)v);
        }
    /* Disconnect what is gone, connect what is new. */
    zlistx_t *gone = zhashx_keys(self->connected);
    for (const char *ep = zlistx_first(gone); ep; ep = zlistx_next(gone))
        if (!zhashx_lookup(want, ep)) {
            if (self->sock)
                zsock_disconnect(self->sock, "%s", ep);
            zhashx_delete(self->connected, ep);
        }
    zlistx_destroy(&gone);
    for (const char *spec = zhashx_first(want); spec; spec = zhashx_next(want)) {
        const char *ep = zhashx_cursor(want);
        if (!zhashx_lookup(self->connected, ep) &&
            (!self->sock || zsock_connect(self->sock, "%s", ep) == 0))
            zhashx_insert(self->connected, ep, (void *)spec);
    }
    zhashx_destroy(&want);
    int n = (int)zhashx_size(self->connected);
    return n == 0 && failures ? -EHOSTUNREACH : n;
}

size_t mh_resolver_endpoints(const mh_resolver_t *self, const char **out, size_t max)
{
    size_t n = 0;
    for (void *v = zhashx_first(self->connected); v && n < max; v = zhashx_next(self->connected))
        out[n++] = zhashx_cursor(self->connected);
    return n;
}

/* How many addresses the spec stands for now. */
static size_t s_count(mh_resolver_t *self)
{
    zhashx_t *want = zhashx_new();
    for (const char *spec = zlist_first(self->specs); spec; spec = zlist_next(self->specs))
        s_expand(spec, want, S_FIRST_WAIT_MS);
    size_t n = zhashx_size(want);
    zhashx_destroy(&want);
    return n;
}

zsock_t *mh_push_new(const char *spec, mh_resolver_t **resolver_out)
{
    zsock_t *push = zsock_new(ZMQ_PUSH);
    if (!push)
        return NULL;
    zsock_set_sndhwm(push, 100000);
    zsock_set_linger(push, 2000);
    zsock_set_reconnect_ivl(push, 100);
    zsock_set_reconnect_ivl_max(push, 2000);
    *resolver_out = mh_resolver_new(push, spec);
    if (!*resolver_out) {
        zsock_destroy(&push);
        return NULL;
    }
    /* Several replicas: deal only to the ones connected, so one that died
     * strands nothing in its pipe — the others take its share at once. A
     * single peer: queue for it while it restarts (up to the send HWM). */
    if (s_count(*resolver_out) > 1)
        zsock_set_immediate(push, 1);
    return push;
}

zsock_t *mh_dealer_new(const char *spec, int sndhwm, mh_resolver_t **resolver_out)
{
    *resolver_out = NULL;
    zsock_t *dealer = zsock_new(ZMQ_DEALER);
    if (!dealer)
        return NULL;
    zsock_set_linger(dealer, 0);
    if (sndhwm > 0)
        zsock_set_sndhwm(dealer, sndhwm);
    zsock_set_reconnect_ivl(dealer, 100);
    zsock_set_reconnect_ivl_max(dealer, 2000);
    zsock_set_immediate(dealer, 1);
    *resolver_out = mh_resolver_new(dealer, spec);
    if (!*resolver_out)
        zsock_destroy(&dealer);
    return dealer;
}
