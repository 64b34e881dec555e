/* mh_resolver — connects a socket to every address a service name resolves
 * to, and keeps it so: `--scale ingest=3` in compose or a Kubernetes headless
 * Service returns several A records, and each gets a connection.
 *
 * The spec is a comma-separated list of endpoints, e.g.
 * "tcp://ingest:5560" or "tcp://127.0.0.1:5560,tcp://127.0.0.1:5561". */
#pragma once
#include <czmq.h>

typedef struct mh_resolver_t mh_resolver_t;

/* `sock` is borrowed and must outlive the resolver; NULL keeps the
 * addresses only (mh_resolver_endpoints), for a caller that makes a socket
 * per address. NULL on a bad spec. */
mh_resolver_t *mh_resolver_new(zsock_t *sock, const char *spec);
void mh_resolver_destroy(mh_resolver_t **self_p);

/* Resolves every name and connects to new addresses, disconnecting from
 * addresses that are gone. Lookups run off the caller's thread (mh_dns):
 * it waits up to 250 ms a name for a new answer, then goes on with the last
 * one. A name that fails to resolve keeps its previous addresses (DNS
 * hiccups must not cut traffic). Returns the number of
 * connected endpoints, or a negative errno if none could be resolved yet. */
int mh_resolver_refresh(mh_resolver_t *self);

/* The addresses connected to ("tcp://10.89.0.5:5581"), up to `max`, valid
 * until the next refresh. */
size_t mh_resolver_endpoints(const mh_resolver_t *self, const char **out, size_t max);

/* A PUSH socket for fan-out to every replica of a service (device messages
 * to twin or ota, downlinks to the gateways): deep send queue, 2 s linger,
 * fast reconnects, with its resolver in *resolver_out. When the spec stands
 * for several replicas at start, messages go only to connected ones
 * (ZMQ_IMMEDIATE: a dead replica strands nothing); for a single one they
 * queue while it restarts. NULL on a bad spec (nothing to free then). */
zsock_t *mh_push_new(const char *spec, mh_resolver_t **resolver_out);

/* A DEALER for requests to a service's replicas (RPC calls, pages of a
 * snapshot), with its resolver in *resolver_out: no linger, fast
 * reconnects, and a request goes only to a replica connected now
 * (ZMQ_IMMEDIATE) — one handed to a replica that died, or is still
 * connecting, would wait out the caller's whole deadline while another is
 * there to answer. With none connected a send waits (up to the socket's
 * send timeout) or, with dontwait, fails: callers retry on a deadline
 * anyway. `sndhwm` 0 keeps ZeroMQ's default. NULL on a bad spec. */
zsock_t *mh_dealer_new(const char *spec, int sndhwm, mh_resolver_t **resolver_out);
