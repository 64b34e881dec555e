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
 * to another version on their own. */
#include "tw_internal.h"

#define S_MAX_DEVICES 200000

void tw_health_rpc(tw_t *self, const Mh__TwinRequest *q, mh_rpc_reply_t *r)
{
    json_error_t jerr;
    json_t *params = mh_json_loads(q->params_json, 0, MH_JSON_MAX_DEPTH, &jerr);
    json_t *cohorts = json_object_get(params, "cohorts");
    if (!json_is_object(cohorts)) {
        json_decref(params);
        return mh_rpc_fail(r, 400, "bad_request",
                           "params_json must be {\"cohorts\": {name: [[device, from, to], ...]}}");
    }
    /* flattened rows [cohort, device, from, to], checked */
    json_t *rows = json_array(), *out = json_object();
    const char *name;
    json_t *list;
    size_t total = 0;
    json_object_foreach(cohorts, name, list)
    {
        size_t i;
        json_t *e;
        json_object_set_new(out, name,
                            json_pack("{s:i,s:f,s:i,s:f,s:i}", "devices", 0, "deviceHours", 0.0,
                                      "disconnects", 0, "offlineHours", 0.0, "notOnVersion", 0));
        if (!json_is_array(list))
            goto bad;
        json_array_foreach(list, i, e)
        {
            const char *id = json_string_value(json_array_get(e, 0));
            json_t *f = json_array_get(e, 1), *t = json_array_get(e, 2);
            if (!id || !json_is_integer(f) || !json_is_integer(t) ||
                json_integer_value(t) < json_integer_value(f) || ++total > S_MAX_DEVICES)
                goto bad;
            json_array_append_new(
                rows, json_pack("{s:s,s:s,s:O,s:O}", "c", name, "id", id, "f", f, "t", t));
        }
    }
    const char *fw = json_string_value(json_object_get(params, "firmware"));
    char *text = tw_dumps(rows);
    const char *p[] = {text, fw};
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
        " per AS (SELECT c, id, max(t - f) AS span,"
        "   count(*) FILTER (WHERE NOT online AND ts > f) AS disc,"
        "   COALESCE(sum(COALESCE(nxt, t) - ts) FILTER (WHERE NOT online), 0) AS off"
        "   FROM seg GROUP BY c, id)"
        " SELECT per.c, count(*), sum(span), sum(disc), sum(off),"
        "   count(*) FILTER (WHERE d.firmware IS NOT NULL AND d.firmware IS DISTINCT FROM $2)"
        " FROM per LEFT JOIN twin.devices d ON d.id = per.id GROUP BY per.c",
        2, p);
    free(text);
    json_decref(rows);
    json_decref(params);
    if (!res) {
        json_decref(out);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++)
        json_object_set_new(out, PQgetvalue(res, i, 0),
                            json_pack("{s:I,s:f,s:I,s:f,s:I}", "devices",
                                      (json_int_t)tw_i64(res, i, 1), "deviceHours",
                                      (double)tw_i64(res, i, 2) / 3.6e6, "disconnects",
                                      (json_int_t)tw_i64(res, i, 3), "offlineHours",
                                      (double)tw_i64(res, i, 4) / 3.6e6, "notOnVersion",
                                      (json_int_t)tw_i64(res, i, 5)));
    PQclear(res);
    mh_rpc_ok_json(r, 200, out);
    return;
bad:
    json_decref(rows);
    json_decref(out);
    json_decref(params);
    mh_rpc_fail(r, 400, "bad_request",
                "each cohort is a list of [device, from_ms, to_ms] with from <= to (at most %d"
                " devices in all)",
                S_MAX_DEVICES);
}
