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

/* Publishes every queued command of `devices` (their rows locked by the
 * caller) in the order sent, expiring the stale ones. Inside the caller's
 * transaction. Returns false on a database error. */
bool tw_deliver(tw_t *self, tw_out_t *o, const char *const *devices, size_t n, int64_t now,
                char *err, size_t errlen)
{
    if (!n)
        return true;
    PGresult *res = mh_pg_exec_ids(self->pg,
                                   "SELECT id, device_id, name, params::text, expires_ms"
                                   " FROM twin.commands WHERE device_id = ANY($1::text[])"
                                   " AND status = 'queued' ORDER BY device_id, seq",
                                   devices, n, err, errlen);
    if (!res)
        return false;
    int rows = PQntuples(res);
    const char **sent = calloc((size_t)rows + 1, sizeof *sent);
    const char **expired = calloc((size_t)rows + 1, sizeof *expired);
    size_t nsent = 0, nexp = 0;
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
        tw_out_publish_json(o, dev, "commands", msg);
        sent[nsent++] = id;
        tw_out_command_event(o, dev, id, name, "sent");
    }
    char now_s[32];
    snprintf(now_s, sizeof now_s, "%" PRId64, now);
    bool ok = true;
    for (int pass = 0; pass < 2 && ok; pass++) {
        size_t cnt = pass ? nexp : nsent;
        if (!cnt)
            continue;
        char *ids = mh_pg_text_array(pass ? expired : sent, cnt);
        const char *up[] = {ids, now_s};
        ok = mh_pg_ok(self->pg,
                      pass ? "UPDATE twin.commands SET status = 'expired', completed_ms = $2"
                             " WHERE id = ANY($1::text[])"
                           : "UPDATE twin.commands SET status = 'sent', sent_ms = $2"
                             " WHERE id = ANY($1::text[])",
                      2, up, err, errlen);
        free(ids);
    }
    if (ok) {
        mh_counter_add(self->m_commands[1], nsent);
        mh_counter_add(self->m_commands[5], nexp);
    }
    free(sent);
    free(expired);
    PQclear(res);
    return ok;
}
