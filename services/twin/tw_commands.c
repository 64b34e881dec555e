/* twin: Command rows as JSON, and delivering queued commands to devices
 * that are online (tw_internal.h). */
#include "tw_internal.h"

/* ---- command JSON ---- */

json_t *tw_command_json(PGresult *res, int r)
{
    json_t *c = json_object();
    json_object_set_new(c, "id", json_string(PQgetvalue(res, r, 0)));
    json_object_set_new(c, "deviceId", json_string(PQgetvalue(res, r, 1)));
    json_object_set_new(c, "name", json_string(PQgetvalue(res, r, 2)));
    json_object_set_new(c, "params", tw_json_col(res, r, 3));
    json_object_set_new(c, "status", json_string(PQgetvalue(res, r, 4)));
    json_object_set_new(c, "createdAt", json_integer(tw_i64(res, r, 5)));
    json_object_set_new(c, "expiresAt", json_integer(tw_i64(res, r, 6)));
    json_object_set_new(c, "timeout", json_integer(tw_i64(res, r, 7) / 1000));
    json_object_set_new(c, "sentAt", tw_ms_or_null(res, r, 8));
    json_object_set_new(c, "completedAt", tw_ms_or_null(res, r, 9));
    json_object_set_new(c, "result", tw_json_col(res, r, 10));
    return c;
}

/* Hands every queued command of `devices` (their rows locked by the
 * caller) to the gateways in the order sent, expiring the stale ones.
 * Inside the caller's transaction. A command stays "queued", with its
 * handed_ms, until a gateway says it has published it (tw_commands_sent);
 * one handed less than TW_REHAND_MS ago is the relay's to deliver and is
 * not handed again. Returns false on a database error. */
bool tw_deliver(tw_t *self, tw_out_t *o, const char *const *devices, size_t n, int64_t now,
                char *err, size_t errlen)
{
    if (!n)
        return true;
    char rehand_s[32], now_s[32];
    snprintf(rehand_s, sizeof rehand_s, "%" PRId64, now - TW_REHAND_MS);
    snprintf(now_s, sizeof now_s, "%" PRId64, now);
    PGresult *res = mh_pg_exec_ids(self->pg,
                                   "SELECT id, device_id, name, params::text, expires_ms"
                                   " FROM twin.commands WHERE device_id = ANY($1::text[])"
                                   " AND status = 'queued'"
                                   " AND (handed_ms IS NULL OR handed_ms <= $2::bigint)"
                                   " ORDER BY device_id, seq",
                                   devices, n, rehand_s, err, errlen);
    if (!res)
        return false;
    int rows = PQntuples(res);
    const char **handed = calloc((size_t)rows + 1, sizeof *handed);
    const char **expired = calloc((size_t)rows + 1, sizeof *expired);
    size_t nhanded = 0, nexp = 0;
    for (int r = 0; r < rows; r++) {
        const char *id = PQgetvalue(res, r, 0), *dev = PQgetvalue(res, r, 1),
                   *name = PQgetvalue(res, r, 2);
        int64_t exp = tw_i64(res, r, 4);
        if (exp <= now) {
            expired[nexp++] = id;
            tw_out_command_event(o, dev, id, name, "expired");
            continue;
        }
        json_t *msg = json_object();
        json_object_set_new(msg, "id", json_string(id));
        json_object_set_new(msg, "name", json_string(name));
        json_object_set_new(msg, "params", tw_json_col(res, r, 3));
        json_object_set_new(msg, "expiresAt", json_integer(exp));
        tw_out_publish_command(o, dev, id, msg);
        handed[nhanded++] = id;
    }
    bool ok = true;
    for (int pass = 0; pass < 2 && ok; pass++) {
        size_t cnt = pass ? nexp : nhanded;
        if (!cnt)
            continue;
        char *ids = mh_pg_text_array(pass ? expired : handed, cnt);
        const char *up[] = {ids, now_s};
        ok = mh_pg_ok(self->pg,
                      pass ? "UPDATE twin.commands SET status = 'expired', completed_ms = $2"
                             " WHERE id = ANY($1::text[])"
                           : "UPDATE twin.commands SET handed_ms = $2 WHERE id = ANY($1::text[])",
                      2, up, err, errlen);
        free(ids);
    }
    if (ok)
        mh_counter_add(self->m_commands[5], nexp);
    free(handed);
    free(expired);
    PQclear(res);
    return ok;
}

void tw_commands_published(void *ud, const char *tag)
{
    tw_t *self = ud;
    char *copy = strdup(tag), *save = NULL;
    for (char *id = copy ? strtok_r(copy, " ", &save) : NULL; id; id = strtok_r(NULL, " ", &save))
        zlist_append(self->published, id); /* the list copies (autofree) */
    free(copy);
}

void tw_commands_sent(tw_t *self)
{
    if (!zlist_size(self->published) || !mh_pg_ready(self->pg))
        return;
    char now_s[32], err[512];
    snprintf(now_s, sizeof now_s, "%" PRId64, mh_now_ms());
    /* a device quick to answer may have finished it already: it stays so */
    PGresult *res = mh_pg_exec_list(self->pg,
                                    "UPDATE twin.commands SET status = 'sent', sent_ms = $2::bigint"
                                    " WHERE id = ANY($1::text[]) AND status = 'queued'"
                                    " RETURNING device_id, id, name",
                                    self->published, now_s, err, sizeof err);
    if (!res) {
        if (!mh_pg_retryable(self->pg))
            mh_log_limited(&self->rl_db, MH_LOG_ERROR, "marking commands sent failed: %s", err);
        return; /* kept: tried again next time */
    }
    zlist_purge(self->published);
    tw_out_t out;
    tw_out_init(&out);
    for (int r = 0; r < PQntuples(res); r++)
        tw_out_command_event(&out, PQgetvalue(res, r, 0), PQgetvalue(res, r, 1),
                             PQgetvalue(res, r, 2), "sent");
    mh_counter_add(self->m_commands[1], (uint64_t)PQntuples(res));
    PQclear(res);
    tw_out_flush(self, &out);
    tw_out_destroy(&out);
}

void tw_commands_rehand(tw_t *self)
{
    char rehand_s[32], err[512];
    int64_t now = mh_now_ms();
    snprintf(rehand_s, sizeof rehand_s, "%" PRId64, now - TW_REHAND_MS);
    const char *p[] = {rehand_s};
    tw_out_t out;
    tw_out_init(&out);
    /* the devices' rows locked in id order, as every writer does */
    PGresult *res = NULL;
    bool ok = mh_pg_begin(self->pg, err, sizeof err) &&
              (res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                                "SELECT d.id FROM twin.devices d WHERE d.online AND EXISTS"
                                " (SELECT 1 FROM twin.commands c WHERE c.device_id = d.id"
                                "  AND c.status = 'queued' AND c.handed_ms <= $1::bigint)"
                                " ORDER BY d.id LIMIT 1000 FOR UPDATE SKIP LOCKED",
                                1, p, err, sizeof err));
    size_t n = res ? (size_t)PQntuples(res) : 0;
    const char **devs = calloc(n + 1, sizeof *devs);
    for (size_t i = 0; devs && i < n; i++)
        devs[i] = PQgetvalue(res, (int)i, 0);
    ok = ok && devs && tw_deliver(self, &out, devs, n, now, err, sizeof err) &&
         mh_pg_commit(self->pg, err, sizeof err);
    free(devs);
    PQclear(res);
    if (ok) {
        tw_out_flush(self, &out);
    } else {
        mh_pg_rollback(self->pg);
        if (!mh_pg_retryable(self->pg))
            mh_log_limited(&self->rl_db, MH_LOG_ERROR, "handing commands again failed: %s", err);
    }
    tw_out_destroy(&out);
}
