/* twin: The sweeps: expired and timed-out commands, silent devices
 * (tw_internal.h). */
#include "tw_internal.h"

/* ---- sweeps: expiry, timeouts, silence ---- */

void tw_sweep(tw_t *self)
{
    char now_s[32], silent_s[32], err[512];
    int64_t now = mh_now_ms();
    snprintf(now_s, sizeof now_s, "%" PRId64, now);
    snprintf(silent_s, sizeof silent_s, "%" PRId64,
             now - self->cfg->keepalive_ms - self->cfg->grace_ms);
    tw_out_t out;
    tw_out_init(&out);
    static const struct {
        const char *sql;
        int status;
    } cmd_sweeps[] = {
        {"UPDATE twin.commands SET status = 'expired', completed_ms = $1::bigint"
         " WHERE status = 'queued' AND expires_ms <= $1::bigint"
         " RETURNING device_id, id, name, status",
         5},
        {"UPDATE twin.commands SET status = 'timed_out', completed_ms = $1::bigint"
         " WHERE status = 'sent' AND sent_ms + timeout_ms <= $1::bigint"
         " RETURNING device_id, id, name, status",
         6},
    };
    const char *p[] = {now_s};
    for (size_t i = 0; i < 2; i++) {
        PGresult *res =
            mh_pg_exec(self->pg, PGRES_TUPLES_OK, cmd_sweeps[i].sql, 1, p, err, sizeof err);
        if (!res) {
            if (!mh_pg_retryable(self->pg))
                mh_log_limited(&self->rl_db, MH_LOG_ERROR, "command sweep failed: %s", err);
            continue;
        }
        for (int r = 0; r < PQntuples(res); r++)
            tw_out_command_event(&out, PQgetvalue(res, r, 0), PQgetvalue(res, r, 1),
                                 PQgetvalue(res, r, 2), PQgetvalue(res, r, 3));
        mh_counter_add(self->m_commands[cmd_sweeps[i].status], (uint64_t)PQntuples(res));
        PQclear(res);
    }
    /* a gateway re-sends an unacknowledged batch within seconds: an hour
     * of applied ids covers any re-send, and pruning them once a minute is
     * plenty (the sweep runs every second) */
    if (now >= self->next_relay_prune) {
        self->next_relay_prune = now + 60000;
        char old_s[32];
        snprintf(old_s, sizeof old_s, "%" PRId64, now - 3600 * 1000);
        const char *op[] = {old_s};
        if (!mh_pg_ok(self->pg, "DELETE FROM twin.relay_batches WHERE at_ms < $1::bigint", 1, op,
                      err, sizeof err) &&
            !mh_pg_retryable(self->pg))
            mh_log_limited(&self->rl_db, MH_LOG_ERROR, "relay batch sweep failed: %s", err);
        char keep_s[32];
        snprintf(keep_s, sizeof keep_s, "%" PRId64, now - self->cfg->conn_log_retention_ms);
        const char *kp[] = {keep_s};
        if (!mh_pg_ok(self->pg, "DELETE FROM twin.conn_log WHERE ts_ms < $1::bigint", 1, kp, err,
                      sizeof err) &&
            !mh_pg_retryable(self->pg))
            mh_log_limited(&self->rl_db, MH_LOG_ERROR, "connectivity log sweep failed: %s", err);
    }
    /* the devices a sweep takes offline go into the connectivity log too */
#define S_LOG_OFFLINE                                                                              \
    " l AS (INSERT INTO twin.conn_log (device_id, ts_ms, online, reason)"                          \
    "   SELECT id, $2::bigint, false, $3 FROM s) SELECT id, firmware FROM s"
    char absent_s[32];
    snprintf(absent_s, sizeof absent_s, "%" PRId64, now - self->cfg->presence_timeout_ms);
    static const struct {
        const char *sql, *reason;
    } offline_sweeps[] = {
        /* online by its messages alone, and silent past keep-alive + grace */
        {"WITH s AS (UPDATE twin.devices SET online = false, conn_ms = $2::bigint"
         " WHERE online AND online_source = 'message'"
         " AND last_seen_ms < $1::bigint RETURNING id, firmware)," S_LOG_OFFLINE,
         "silence"},
        /* online by its status, and the broker, which lists the devices
         * connected, has not listed it since before the presence timeout:
         * its last will was lost */
        {"WITH s AS (UPDATE twin.devices SET online = false, conn_ms = $2::bigint"
         " WHERE online AND online_source = 'status' AND COALESCE(present_ms, 0) < $1::bigint"
         " AND conn_ms < $1::bigint"
         " AND EXISTS (SELECT 1 FROM twin.presence WHERE at_ms >= $1::bigint)"
         " RETURNING id, firmware)," S_LOG_OFFLINE,
         "not connected"},
    };
    for (size_t i = 0; i < 2; i++) {
        const char *sp[] = {i ? absent_s : silent_s, now_s, offline_sweeps[i].reason};
        PGresult *res =
            mh_pg_exec(self->pg, PGRES_TUPLES_OK, offline_sweeps[i].sql, 3, sp, err, sizeof err);
        if (!res) {
            if (!mh_pg_retryable(self->pg))
                mh_log_limited(&self->rl_db, MH_LOG_ERROR, "connectivity sweep failed: %s", err);
            continue;
        }
        for (int r = 0; r < PQntuples(res); r++) {
            Mh__DeviceConnectivity ev = MH__DEVICE_CONNECTIVITY__INIT;
            ev.device_id = PQgetvalue(res, r, 0);
            ev.ts_ms = now;
            ev.firmware = PQgetvalue(res, r, 1);
            ev.reason = (char *)offline_sweeps[i].reason;
            tw_out_event(&out, "device.offline", &ev.base);
            mh_counter_inc(self->m_offline);
        }
        PQclear(res);
    }
    tw_out_flush(self, &out);
    tw_out_destroy(&out);
    if (now >= self->next_rehand) {
        self->next_rehand = now + TW_REHAND_MS / 6;
        tw_commands_rehand(self);
    }
}
