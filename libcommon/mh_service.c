#include "mh_service.h"

#include "mh_curve.h"

#include <signal.h>
#include <unistd.h>

static volatile sig_atomic_t s_stop_signal;

static void s_on_signal(int sig)
{
    s_stop_signal = sig;
}

/* zactor_new waits for the first signal; the actor then sends a second one
 * with its start-up status, which we read here. */
typedef struct {
    zactor_fn *fn;
    mh_service_ctx_t *ctx;
} s_start_t;

static void s_trampoline(zsock_t *pipe, void *args)
{
    s_start_t *st = args;
    zsock_signal(pipe, 0); /* lets zactor_new return */
    st->fn(pipe, st->ctx);
}

bool mh_actor_term(zsock_t *pipe)
{
    char *cmd = zstr_recv(pipe);
    bool term = !cmd || strcmp(cmd, "$TERM") == 0;
    zstr_free(&cmd);
    return term;
}

void mh_service_health(mh_service_ctx_t *ctx, bool ready, mh_gauge_t *ready_gauge)
{
    mh_http_heartbeat(ctx->http);
    mh_http_set_ready(ctx->http, ready);
    mh_gauge_set(ready_gauge, ready);
}

zactor_t *mh_actor_start(zactor_fn *fn, mh_service_ctx_t *ctx)
{
    s_start_t *st = malloc(sizeof *st);
    if (!st)
        return NULL;
    *st = (s_start_t){fn, ctx};
    zactor_t *actor = zactor_new(s_trampoline, st);
    if (!actor) {
        free(st);
        return NULL;
    }
    int status = zsock_wait(actor);
    free(st); /* the actor read it before signalling */
    if (status != 0) {
        zactor_destroy(&actor);
        return NULL;
    }
    return actor;
}

int mh_service_main(const mh_service_def_t *def, int argc, char **argv)
{
    void *cfg = calloc(1, def->config_size);
    if (!cfg)
        return 1;
    int rc = mh_config_load(def->options, cfg, argc, argv, def->name, def->summary);
    if (rc != 0) {
        mh_config_free(def->options, cfg);
        free(cfg);
        return rc > 0 ? 0 : 2;
    }
    mh_common_cfg_t *common = cfg;
    mh_log_level_t level;
    if (mh_log_level_parse(common->log_level, &level) < 0) {
        fprintf(stderr, "%s: invalid log level \"%s\"\n", def->name, common->log_level);
        mh_config_free(def->options, cfg);
        free(cfg);
        return 2;
    }
    mh_log_init(def->name, level);
    if (mh_curve_init(common->curve_dir, def->name) < 0) {
        mh_config_free(def->options, cfg);
        free(cfg);
        return 1;
    }

    /* Our own handlers: they only set a flag, the loop below acts on it. */
    zsys_handler_set(NULL);
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char instance[96];
    char host[64] = "local";
    gethostname(host, sizeof host - 1);
    snprintf(instance, sizeof instance, "%s-%s-%d", def->name, host, (int)getpid());
    /* PostgreSQL's sessions named after the process (pg_stat_activity's
     * application_name), unless the environment names them already */
    setenv("PGAPPNAME", instance, 0);

    mh_metrics_t *metrics = mh_metrics_new();
    mh_http_t *http = NULL;
    if (common->http_listen && *common->http_listen) {
        http = mh_http_new(common->http_listen, metrics);
        if (!http) {
            mh_error("cannot serve HTTP on %s: %s", common->http_listen, strerror(errno));
            rc = 1;
            goto out;
        }
    }
    mh_service_ctx_t ctx = {.cfg = cfg, .metrics = metrics, .http = http, .instance = instance};
    zactor_t *actor = mh_actor_start(def->actor, &ctx);
    if (!actor) {
        mh_error("start-up failed");
        rc = 1;
        goto out;
    }
    mh_info("started as %s%s%s", instance, http ? ", metrics on " : "",
            http ? common->http_listen : "");
    /* Wait for a signal, or for the actor to end on its own (a fatal error). */
    zpoller_t *poller = zpoller_new(actor, NULL);
    bool died = false;
    while (!s_stop_signal) {
        if (zpoller_wait(poller, 200)) {
            died = true;
            break;
        }
    }
    zpoller_destroy(&poller);
    if (died) {
        mh_error("service stopped on its own");
        rc = 1;
    } else {
        mh_info("%s received, draining", strsignal(s_stop_signal));
    }
    zactor_destroy(&actor);
    if (!died)
        mh_info("stopped cleanly");
out:
    mh_curve_shutdown();
    mh_http_destroy(&http);
    mh_metrics_destroy(&metrics);
    mh_config_free(def->options, cfg);
    free(cfg);
    return rc;
}
