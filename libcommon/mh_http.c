#include "mh_http.h"
#include "mh_time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mh_http_t {
    struct MHD_Daemon *daemon;
    mh_metrics_t *metrics;
    int ready;
    int64_t heartbeat_ms;
    pthread_rwlock_t lock; /* guards the handler */
    char prefix[64];
    mh_http_handler_fn *fn;
    void *ud;
};

void mh_http_set_handler(mh_http_t *self, const char *prefix, mh_http_handler_fn *fn, void *ud)
{
    if (!self)
        return;
    pthread_rwlock_wrlock(&self->lock);
    snprintf(self->prefix, sizeof self->prefix, "%s", prefix ? prefix : "");
    self->fn = fn;
    self->ud = ud;
    pthread_rwlock_unlock(&self->lock);
}

int mh_split_hostport(const char *s, char **host_out, int *port_out)
{
    const char *colon = s ? strrchr(s, ':') : NULL;
    if (!colon || colon == s)
        return -EINVAL;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535)
        return -EINVAL;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    char *host = strndup(h, hl);
    if (!host)
        return -ENOMEM;
    *host_out = host;
    *port_out = (int)port;
    return 0;
}

static enum MHD_Result s_reply(struct MHD_Connection *conn, unsigned status, const char *ctype,
                               char *body, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, mode);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result s_handle(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload;
    (void)upload_size;
    (void)con_cls;
    mh_http_t *self = cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return s_reply(conn, 405, "text/plain", "method not allowed\n", MHD_RESPMEM_PERSISTENT);
    pthread_rwlock_rdlock(&self->lock);
    if (self->fn && *self->prefix && strncmp(url, self->prefix, strlen(self->prefix)) == 0) {
        enum MHD_Result ret = (enum MHD_Result)self->fn(self->ud, conn, method, url);
        pthread_rwlock_unlock(&self->lock);
        return ret;
    }
    pthread_rwlock_unlock(&self->lock);
    if (strcmp(url, "/metrics") == 0) {
        char *text = mh_metrics_render(self->metrics);
        if (!text)
            return s_reply(conn, 500, "text/plain", "out of memory\n", MHD_RESPMEM_PERSISTENT);
        return s_reply(conn, 200, "text/plain; version=0.0.4", text, MHD_RESPMEM_MUST_FREE);
    }
    if (strcmp(url, "/healthz") == 0) {
        int64_t age = mh_mono_ms() - __atomic_load_n(&self->heartbeat_ms, __ATOMIC_RELAXED);
        return age < 10000 ? s_reply(conn, 200, "text/plain", "ok\n", MHD_RESPMEM_PERSISTENT)
                           : s_reply(conn, 503, "text/plain", "service loop stalled\n",
                                     MHD_RESPMEM_PERSISTENT);
    }
    if (strcmp(url, "/readyz") == 0)
        return __atomic_load_n(&self->ready, __ATOMIC_RELAXED)
                   ? s_reply(conn, 200, "text/plain", "ready\n", MHD_RESPMEM_PERSISTENT)
                   : s_reply(conn, 503, "text/plain", "not ready\n", MHD_RESPMEM_PERSISTENT);
    return s_reply(conn, 404, "text/plain", "not found\n", MHD_RESPMEM_PERSISTENT);
}

mh_http_t *mh_http_new(const char *listen, mh_metrics_t *metrics)
{
    char *host;
    int port;
    if (mh_split_hostport(listen, &host, &port) < 0) {
        errno = EINVAL;
        return NULL;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, *host ? host : "0.0.0.0", &sa.sin_addr) != 1) {
        struct addrinfo hints = {.ai_family = AF_INET}, *res = NULL;
        if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res) {
            free(host);
            errno = EINVAL;
            return NULL;
        }
        sa.sin_addr = ((struct sockaddr_in *)res->ai_addr)->sin_addr;
        freeaddrinfo(res);
    }
    free(host);
    mh_http_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->metrics = metrics;
    self->heartbeat_ms = mh_mono_ms();
    pthread_rwlock_init(&self->lock, NULL);
    self->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL, NULL,
                                    s_handle, self, MHD_OPTION_SOCK_ADDR, &sa,
                                    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (!self->daemon) {
        pthread_rwlock_destroy(&self->lock);
        free(self);
        errno = EADDRINUSE;
        return NULL;
    }
    return self;
}

void mh_http_destroy(mh_http_t **self_p)
{
    mh_http_t *self = *self_p;
    if (!self)
        return;
    MHD_stop_daemon(self->daemon);
    pthread_rwlock_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

int mh_http_port(mh_http_t *self)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(self->daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : -1;
}

void mh_http_set_ready(mh_http_t *self, bool ready)
{
    if (self)
        __atomic_store_n(&self->ready, ready ? 1 : 0, __ATOMIC_RELAXED);
}

void mh_http_heartbeat(mh_http_t *self)
{
    if (self)
        __atomic_store_n(&self->heartbeat_ms, mh_mono_ms(), __ATOMIC_RELAXED);
}
