/* twin: how cohorts of devices kept their connection, each device over its
 * own window — what a rollout's health gate compares between the devices
 * that installed and the control group that did not yet (ota_health.c).
 *
 * From twin.conn_log (every online/offline change, tw_messages.c and
 * tw_sweep.c): a device's disconnects are its offline entries inside the
 * window; its offline time is the part of the window it spent offline,
 * starting from its state at the window's start (its last entry before
 * it; online when there is none: it was installing or reporting then).
 * `notOnVersion` counts the devices whose reported firmware is known and
 * is not `firmware` — for devices that installed it, ones that went back
 * to another version on their own. With "key", `reported` counts the
 * devices that reported that key inside their window (its metadata
 * timestamp): a reboot count or reset reason a device sends at boot. */
#include "tw_internal.h"
#include "mh_cohort.h"

void tw_health_rpc(tw_t *self, const Mh__TwinRequest *q, mh_rpc_reply_t *r)
{
    json_error_t jerr;
    json_t *params = mh_json_loads(q->params_json, 0, MH_JSON_MAX_DEPTH, &jerr);
    json_t *out = json_object();
    json_t *empty =
        json_pack("{s:i,s:f,s:i,s:f,s:i,s:i}", "devices", 0, "deviceHours", 0.0, "disconnects", 0,
                  "offlineHours", 0.0, "notOnVersion", 0, "reported", 0);
    json_t *rows = mh_cohort_rows(json_object_get(params, "cohorts"), out, empty);
    json_decref(empty);
    if (!rows) {
        json_decref(out);
        json_decref(params);
        return mh_rpc_fail(r, 400, "bad_request", "params_json: %s", MH_COHORT_BAD);
    }
    const char *fw = json_string_value(json_object_get(params, "firmware"));
    char *text = tw_dumps(rows);
    const char *key = json_string_value(json_object_get(params, "key"));
    const char *p[] = {text, fw, key};
    PGresult *res = mh_rpc_db_query(
        &self->db, r,
        "WITH w AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS w(c text, id text, f bigint,"
        "   t bigint)),"
        " seg AS (SELECT w.c, w.id, w.f, w.t, e.ts, e.online,"
        "   lead(e.ts) OVER (PARTITION BY w.c, w.id ORDER BY e.ts) AS nxt"
        "   FROM w CROSS JOIN LATERAL ("
        "     SELECT w.f AS ts, COALESCE((SELECT l.online FROM twin.conn_log l"
        "       WHERE l.device_id = w.id AND l.ts_ms <= w.f ORDER BY l.ts_ms DESC LIMIT 1), true)"
        "       AS online"
        "     UNION ALL SELECT l.ts_ms, l.online FROM twin.conn_log l"
        "       WHERE l.device_id = w.id AND l.ts_ms > w.f AND l.ts_ms <= w.t) e),"
        " per AS (SELECT c, id, max(t - f) AS span, max(f) AS f, max(t) AS t,"
        "   count(*) FILTER (WHERE NOT online AND ts > f) AS disc,"
        "   COALESCE(sum(COALESCE(nxt, t) - ts) FILTER (WHERE NOT online), 0) AS off"
        "   FROM seg GROUP BY c, id)"
        " SELECT per.c, count(*), sum(span), sum(disc), sum(off),"
        "   count(*) FILTER (WHERE d.firmware IS NOT NULL AND d.firmware IS DISTINCT FROM $2),"
        "   count(*) FILTER (WHERE $3::text IS NOT NULL AND"
        "     (d.doc->'metadata'->'reported'->$3->>'timestamp')::bigint > per.f AND"
        "     (d.doc->'metadata'->'reported'->$3->>'timestamp')::bigint <= per.t)"
        " FROM per LEFT JOIN twin.devices d ON d.id = per.id GROUP BY per.c",
        3, p);
    free(text);
    json_decref(rows);
    json_decref(params);
    if (!res) {
        json_decref(out);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++)
        json_object_set_new(
            out, PQgetvalue(res, i, 0),
            json_pack("{s:I,s:f,s:I,s:f,s:I,s:I}", "devices", (json_int_t)tw_i64(res, i, 1),
                      "deviceHours", (double)tw_i64(res, i, 2) / 3.6e6, "disconnects",
                      (json_int_t)tw_i64(res, i, 3), "offlineHours",
                      (double)tw_i64(res, i, 4) / 3.6e6, "notOnVersion",
                      (json_int_t)tw_i64(res, i, 5), "reported", (json_int_t)tw_i64(res, i, 6)));
    PQclear(res);
    mh_rpc_ok_json(r, 200, out);
}
