/* mh_service — what every daemon's main() shares: load the config table,
 * set up logging, metrics and the health/metrics endpoint, run the service
 * actor, stop it cleanly on SIGTERM or SIGINT.
 *
 * The actor receives an mh_service_ctx_t* as its args, signals the pipe once
 * started (zsock_signal(pipe, 0)) or failed (zsock_signal(pipe, 1)), and
 * returns after "$TERM", having drained its work. Tests start the same actor
 * in-process with a context they build themselves. */
#pragma once
#include "mh_config.h"
#include "mh_http.h"
#include "mh_log.h"
#include "mh_metrics.h"
#include <czmq.h>

typedef struct {
    void *cfg;             /* the service's config struct, filled from its table */
    mh_metrics_t *metrics; /* the service's registry */
    mh_http_t *http;       /* may be NULL in tests */
    const char *instance;  /* unique name of this process, e.g. "gateway-3f2a" */
} mh_service_ctx_t;

/* Fields every service has; put this first in the config struct and add
 * MH_CFG_COMMON(struct_type, "127.0.0.1:9100") to the table. */
typedef struct {
    char *log_level;
    char *http_listen;
    char *curve_dir;
} mh_common_cfg_t;

#define MH_CFG_COMMON(type, http_default)                                                          \
    {"log-level",                                                                                  \
     "MH_LOG_LEVEL",                                                                               \
     MH_CFG_STR,                                                                                   \
     "info",                                                                                       \
     offsetof(type, common.log_level),                                                             \
     "debug, info, warn or error"},                                                                \
        {"http-listen",                                                                            \
         "MH_HTTP_LISTEN",                                                                         \
         MH_CFG_STR,                                                                               \
         http_default,                                                                             \
         offsetof(type, common.http_listen),                                                       \
         "address of /metrics, /healthz and /readyz"},                                             \
    {                                                                                              \
        "curve-dir", "MH_CURVE_DIR", MH_CFG_STR, "", offsetof(type, common.curve_dir),             \
            "CURVE keys for the internal sockets (motectl curve keygen); empty = plain"            \
    }

typedef struct {
    const char *name;
    const char *summary;
    const mh_cfg_opt_t *options;
    size_t config_size;
    zactor_fn *actor;
} mh_service_def_t;

/* Runs the service; returns the process exit code. */
int mh_service_main(const mh_service_def_t *def, int argc, char **argv);

/* Start-up handshake helpers for actors. */
static inline void mh_actor_ready(zsock_t *pipe)
{
    zsock_signal(pipe, 0);
}
static inline void mh_actor_failed(zsock_t *pipe)
{
    zsock_signal(pipe, 1);
}
/* Takes the command waiting on an actor's pipe: true when it says stop
 * ($TERM, or the pipe gone). */
bool mh_actor_term(zsock_t *pipe);
/* What a service loop reports twice a second: alive (the heartbeat), ready
 * or not, and the same readiness as the gauge `ready_gauge` (may be NULL). */
void mh_service_health(mh_service_ctx_t *ctx, bool ready, mh_gauge_t *ready_gauge);
/* Starts `fn` as an actor; returns NULL if it reported failure. */
zactor_t *mh_actor_start(zactor_fn *fn, mh_service_ctx_t *ctx);
