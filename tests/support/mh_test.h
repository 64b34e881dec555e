/* mh_test — what the integration tests share: real mosquitto and PostgreSQL
 * on free loopback ports, the real service binaries as child processes,
 * and small helpers to read /metrics and query the database.
 * Every wait has a deadline; nothing sleeps blindly. */
#pragma once
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* cmocka pulls these in; the tests include cmocka after this header. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

int64_t mht_now_ms(void);
void mht_sleep_ms(int ms);
int mht_free_port(void);
/* Folder for this test's logs and files (created). */
const char *mht_artifacts(void);
/* Path of a built program, relative to the build root ("services/gateway/motehub-gateway"). */
const char *mht_build_path(const char *rel, char *buf, size_t len);

/* Child processes; output goes to artifacts/<name>.log. argv ends with NULL. */
pid_t mht_spawn(const char *name, char *const argv[]);
/* Sends `sig`, waits up to timeout_ms; returns the exit status (as from
 * waitpid) or -1 if it had to be SIGKILLed. */
int mht_stop(pid_t pid, int sig, int timeout_ms);
bool mht_alive(pid_t pid);

/* A mosquitto broker on a free port. */
typedef struct {
    pid_t pid;
    int port;
    char url[64];
    char certs[512]; /* mutual TLS: ca.crt, broker.crt, crl.pem, gateway.crt ... */
    char pg[512];    /* mutual TLS: the plugin's database (provisioned certificates) */
} mht_broker_t;
void mht_broker_start(mht_broker_t *b);
/* The broker as deploy/ runs it (deploy/mosquitto/mosquitto-conf.sh): mTLS
 * only on a free port, url ssl://127.0.0.1:PORT, the motehub_acl plugin.
 * `certs` holds ca.crt, broker.crt/.key (SAN 127.0.0.1), crl.pem; gateways
 * started on it use certs/gateway.crt/.key. */
void mht_broker_start_tls(mht_broker_t *b, const char *certs);
/* Re-reads the CRL (SIGHUP), as after `motectl ca revoke`. */
void mht_broker_reload(mht_broker_t *b);
/* Runs motectl (the build's) with the arguments; its exit status. */
int mht_motectl(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void mht_broker_stop(mht_broker_t *b);

/* librdkafka's mock cluster in a helper process (tools/kafka-mock) on
 * loopback: `bootstrap` for --kafka-brokers. */
typedef struct {
    pid_t pid;
    int in, out; /* its stdin and stdout */
    char bootstrap[256];
} mht_kafka_t;
void mht_kafka_start(mht_kafka_t *k);
/* "down" (every broker stops answering), "up", "topic NAME PARTITIONS". */
void mht_kafka_cmd(mht_kafka_t *k, const char *cmd);
void mht_kafka_stop(mht_kafka_t *k);

/* Restarts a plain broker (mht_broker_start) on its port, as an operator
 * would: SIGTERM, then the same configuration. */
void mht_broker_restart(mht_broker_t *b);

/* A test that restarts PostgreSQL runs its own cluster: call before the
 * first mht_db_create. */
void mht_pg_private(void);
/* Restarts that private cluster (fast shutdown, then start on its port). */
void mht_pg_restart(void);

/* A fresh database in the suite's PostgreSQL cluster (started on demand). */
typedef struct {
    PGconn *conn;
    char url[512];
    char name[64];
} mht_db_t;
void mht_db_create(mht_db_t *db);
void mht_db_drop(mht_db_t *db);
/* Runs a query (printf-style) that returns one number; fails the test on
 * error. */
double mht_db_num(mht_db_t *db, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Polls `sql` until it returns `want` or the deadline passes; returns the last value. */
double mht_db_wait_num(mht_db_t *db, const char *sql, double want, int timeout_ms);

/* HTTP GET to 127.0.0.1:port/path; returns the status, body in *body (free it). */
int mht_http_get(int port, const char *path, char **body);
/* Reads one sample from a service's /metrics; NAN if absent. */
double mht_metric(int http_port, const char *name, const char *labels);
/* Waits until /readyz answers 200. */
bool mht_wait_ready(int http_port, int timeout_ms);
/* Polls a /metrics sample until it is at least `at_least` or timeout_ms
 * pass; returns the last value read (NAN if absent). */
double mht_wait_metric(int http_port, const char *name, const char *labels, double at_least,
                       int timeout_ms);

/* The services as processes, on free ports. */
typedef struct {
    pid_t pid;
    int http_port, port, events_port, rpc_port;
    char endpoint[64], rpc_endpoint[64], events_endpoint[64];
    char name[32];
} mht_service_t;
/* extra: further "--flag=value" arguments, NULL-terminated (may be NULL). */
void mht_ingest_start(mht_service_t *s, const char *name, const mht_db_t *db, int port,
                      const char *const *extra);
void mht_gateway_start(mht_service_t *s, const char *name, const mht_broker_t *b,
                       const char *ingest_endpoint, const char *const *extra);

/* A gateway as the twin and ota tests run it: checking registration
 * against `twin`, forwarding device messages to it, binding `downlink` for
 * twin's and ota's publishes, and OTA statuses to ota's PULL port
 * `ota_port` (0: none). */
void mht_gateway_for_twin(mht_service_t *s, const char *name, const mht_broker_t *b,
                          const mht_service_t *ingest, const mht_service_t *twin,
                          const char *downlink, int ota_port);

/* Twin, sending downlinks to `downlink_endpoint` (a gateway's --downlink-bind).
 * Ports left 0 in *s are picked free. */
void mht_twin_start(mht_service_t *s, const char *name, const mht_db_t *db,
                    const char *downlink_endpoint, const char *const *extra);

/* ota, with the twin it asks for devices and the gateway it sends jobs
 * through; images are served from its HTTP port. Ports left 0 are picked
 * free (kept on a restart with the same *s). */
void mht_ota_start(mht_service_t *s, const char *name, const mht_db_t *db,
                   const char *downlink_endpoint, const mht_service_t *twin,
                   const char *signing_key, const char *const *extra);

/* fleet-stats on free ports (s->port: the API), wired to the given
 * services (NULL: unreachable); `token` receives a token made with the
 * documented create-token command (when non-NULL). */
void mht_fleet_start(mht_service_t *s, const char *name, const mht_db_t *db,
                     const mht_service_t *twin, const mht_service_t *ota,
                     const mht_service_t *ingest, const mht_service_t *gateway,
                     const char *const *extra, char token[128]);

/* An API token made with fleet-stats' documented create-token command. */
void mht_api_token(const mht_db_t *db, const char *name, char token[128]);

/* What the operator API stands on: a new database, twin, ota (with a fresh
 * signing key) and ingest, wired to no gateway. */
typedef struct {
    mht_db_t db;
    mht_service_t twin, ota, ingest;
} mht_backends_t;
void mht_backends_start(mht_backends_t *b);
/* Stops them (SIGTERM) and drops the database; false when twin or ota did
 * not exit cleanly. */
bool mht_backends_stop(mht_backends_t *b);

/* Registers PREFIX-0000.. (n devices) with twin over its RPC, as motesim
 * does (motesim --register-only); fails the test if it cannot. */
void mht_register_devices(const char *twin_rpc, const char *prefix, int n);

/* The whole platform on one new database and broker: ingest, twin, ota,
 * a gateway forwarding to them and fleet-stats with an API token (what
 * MH_CURVE_DIR etc. in the environment say applies to all). With
 * broker.certs set beforehand the broker is the mutual-TLS one
 * (mht_broker_start_tls), reading the platform's database; with ca_dir set
 * twin signs fleet-provisioned certificates with that CA. */
typedef struct {
    mht_broker_t broker;
    mht_db_t db;
    mht_service_t ingest, twin, ota, gateway, fleet;
    char downlink[64], token[128];
    char ca_dir[700];
} mht_platform_t;
void mht_platform_start(mht_platform_t *p);
/* Stops it, newest first, and drops the database; false when a daemon did
 * not exit cleanly (each named on stderr). */
bool mht_platform_stop(mht_platform_t *p);
/* For a suite on one platform: cmocka group setup and teardown that start
 * and stop `mht_platform`. */
extern mht_platform_t mht_platform;
int mht_platform_setup(void **state);
int mht_platform_teardown(void **state);

/* A simulated fleet: motesim with `devices` devices `prefix`-N, registered
 * at twin's RPC `twin_rpc` and connected to the broker at `mqtt_url`;
 * `args` are motesim's other options (NULL-terminated, up to 16). Output
 * goes to artifacts/<name>.log. */
pid_t mht_motesim_start(const char *name, const char *mqtt_url, const char *twin_rpc,
                        const char *prefix, int devices, const char *const *args);
/* Waits until the `n` devices `prefix`-N are online and report `firmware`;
 * fails the test (saying how many did) after 30 s. */
void mht_fleet_wait_online(mht_db_t *db, const char *prefix, int n, const char *firmware);

/* Makes the fleet's Ed25519 signing key pair in the artifacts folder with
 * openssl (fleet-signing.pem, fleet-signing.pub.pem) and gives the paths. */
void mht_signing_key(char *key, size_t keylen, char *pub, size_t publen);

/* Runs a shell command (sh -c) and returns its exit status. */
int mht_shell(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Publishes with mosquitto_pub; returns its exit code. version "mqttv311" or "mqttv5". */
int mht_mosquitto_pub(const mht_broker_t *b, const char *version, const char *topic,
                      const char *payload, int qos);

/* Runs cmocka tests with TAP output (counted by tests/run.sh). */
#define MHT_RUN(tests)                                                                             \
    (cmocka_set_message_output(CM_OUTPUT_TAP), cmocka_run_group_tests(tests, NULL, NULL))
