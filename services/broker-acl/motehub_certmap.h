/* motehub_certmap — which device a fleet-provisioned certificate belongs to.
 *
 * Twin issues a provisioned device's certificate before the device's name
 * is known (CreateKeysAndCertificate, then RegisterThing decides it), so
 * its CN is "cert:" and a random id, and the binding lives in PostgreSQL
 * (twin.certificates, tw_provision.c). The plugin asks once per
 * certificate, on its first use of the broker, and keeps the answer; the
 * query blocks the broker's loop for one round trip, once per provisioned
 * device connecting after a start. Without plugin_opt_pg_conninfo, or with
 * the database away, provisioned certificates get nothing (fail closed). */
#pragma once

int certmap_init(const char *conninfo);
/* The device `cn` ("cert:...") is bound to, or NULL (not yet registered, or
 * the database is away). */
const char *certmap_thing(const char *cn);
/* The client id (= CN) a bound device connected with last, or NULL. */
const char *certmap_client(const char *thing);
void certmap_cleanup(void);
