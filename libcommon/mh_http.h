/* mh_http — the small HTTP endpoint every service serves (libmicrohttpd):
 *   /metrics  Prometheus text from the service's registry
 *   /healthz  200 while the service loop is alive (heartbeat in the last 10 s)
 *   /readyz   200 once the service says it is ready (connected to what it needs)
 * The server runs its own thread and reads only atomics. */
#pragma once
#include "mh_metrics.h"
#include <stdbool.h>
#include <stdint.h>

typedef struct mh_http_t mh_http_t;

/* `listen` is "HOST:PORT" (IPv4 or a name; port 0 picks a free one).
 * Returns NULL and sets errno on failure. */
mh_http_t *mh_http_new(const char *listen, mh_metrics_t *metrics);
void mh_http_destroy(mh_http_t **self_p);
/* The port actually bound. */
int mh_http_port(mh_http_t *self);
void mh_http_set_ready(mh_http_t *self, bool ready);
/* Called by the service loop at least every few seconds. */
void mh_http_heartbeat(mh_http_t *self);

/* A service's own GET/HEAD paths (ota's firmware images): `fn` runs on the
 * HTTP thread for every URL that starts with `prefix` and returns an
 * MHD_Result (enum MHD_Result as int). Pass fn NULL to remove it; removal
 * waits for a call in progress. One handler per server. */
struct MHD_Connection;
typedef int(mh_http_handler_fn)(void *ud, struct MHD_Connection *conn, const char *method,
                                const char *url);
void mh_http_set_handler(mh_http_t *self, const char *prefix, mh_http_handler_fn *fn, void *ud);

/* Parses "HOST:PORT" into a host copy (caller frees) and a port. 0 / -EINVAL. */
int mh_split_hostport(const char *s, char **host_out, int *port_out);
