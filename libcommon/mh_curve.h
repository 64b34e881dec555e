/* mh_curve — CURVE on the platform's internal ZeroMQ sockets.
 *
 * Off unless a key directory is configured (--curve-dir / MH_CURVE_DIR;
 * DESIGN.md: plain on a developer's loopback, on in production). The
 * directory, made by `motectl curve keygen --out DIR`:
 *   server.key, server.key_secret   the keypair every bound socket serves
 *                                   with (clients need server.key only)
 *   NAME.key_secret                 the client keypair of NAME (gateway,
 *                                   ingest, twin, ota, fleet-stats, tools)
 *   clients/NAME.key                the public client keys the services
 *                                   accept — the allow-list (ZAP, via
 *                                   CZMQ's zauth; re-read when it changes)
 * A peer without an allowed client key, or without CURVE, cannot complete
 * the handshake: it can neither deliver a message nor subscribe.
 *
 * Process-wide (ZAP is per ZeroMQ context, and CZMQ has one). Call the
 * socket functions after zsock_new and before bind / connect; they do
 * nothing while CURVE is off. */
#pragma once
#include <czmq.h>
#include <stdbool.h>

/* Loads DIR/server.key (and its secret, if present) and
 * DIR/<client_name>.key_secret, and starts the ZAP handler when the server
 * secret is there. dir NULL or "" = off. 0, or -1 with the reason logged. */
int mh_curve_init(const char *dir, const char *client_name);
/* A socket that connects: our client key, the server's public key. 0 or -1. */
int mh_curve_client(zsock_t *sock);
/* A socket that binds: serve CURVE with the server key (when on), then
 * zsock_bind. What zsock_bind returns; -1 also when the socket cannot serve
 * CURVE. */
int mh_curve_bind(zsock_t *sock, const char *endpoint);
/* Stops the ZAP handler and forgets the keys. */
void mh_curve_shutdown(void);

/* Writes a key directory for the given client names (server keypair
 * included); existing keys are kept. 0 or -1 (errno). */
int mh_curve_keygen(const char *dir, const char *const *names, size_t n);
