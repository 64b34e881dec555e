#include "in_rollup.h"
#include "mh_log.h"
#include "mh_time.h"

#include <errno.h>

void in_rollup_actor(zsock_t *pipe, void *args)
{
    in_rollup_opts_t o = *(in_rollup_opts_t *)args;
    in_store_t *store = in_store_new(o.pg_url, &o.ret);
    mh_ratelimit_t rl = MH_RATELIMIT_INIT(10000, 3);
    mh_counter_t *m_buckets = mh_metrics_counter(o.metrics, "mh_ingest_rollup_buckets_total",
                                                 "Rollup buckets recomputed", NULL);
    zsock_signal(pipe, 0);
    zpoller_t *poller = zpoller_new(pipe, NULL);
    int64_t next = 0; /* the first run as soon as connected */
    if (!store)
        mh_error("rollup job: out of memory; rollups stop");
    for (;;) {
        int64_t wait = next - mh_mono_ms();
        void *which = zpoller_wait(poller, (int)(wait > 0 ? wait : 0));
        if (which == pipe || zpoller_terminated(poller))
            break;
        if (!store) {
            next = mh_mono_ms() + o.interval_ms;
            continue;
        }
        char err[512];
        int rc = in_store_connect(store, err, sizeof err);
        if (rc == -EIO)
            mh_log_limited(&rl, MH_LOG_WARN, "rollup job: %s; retrying", err);
        if (!in_store_connected(store)) {
            next = mh_mono_ms() + 250;
            continue;
        }
        int done = 0;
        if (in_store_rollup(store, &done, err, sizeof err) < 0)
            mh_log_limited(&rl, MH_LOG_WARN, "rollup failed, will retry: %s", err);
        mh_counter_add(m_buckets, (uint64_t)done);
        next = mh_mono_ms() + o.interval_ms;
    }
    zpoller_destroy(&poller);
    in_store_destroy(&store);
}
