/* twin: the operator's fleet provisioning templates (tw_template.h): list,
 * read, create or replace, delete. A template in use may be replaced or
 * deleted at any time; a registration reads it in its own transaction. */
#include "tw_internal.h"

#include "tw_template.h"

#define S_COLS                                                                                     \
    "json_build_object('name', t.name, 'template', t.body, 'createdAt', t.created_ms,"             \
    " 'updatedAt', t.updated_ms, 'devices', (SELECT count(*) FROM twin.certificates c"             \
    " WHERE c.template = t.name AND c.device_id IS NOT NULL))::text"

static void s_list(tw_t *self, mh_rpc_reply_t *r)
{
    PGresult *res = mh_rpc_db_query(&self->db, r,
                                    "SELECT coalesce(json_agg(x ORDER BY x->>'name'), '[]')::text"
                                    " FROM (SELECT " S_COLS "::json AS x"
                                    " FROM twin.provisioning_templates t) q",
                                    0, NULL);
    if (!res)
        return;
    json_t *items = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    PQclear(res);
    mh_rpc_ok_json(r, 200, json_pack("{s:o}", "items", items ? items : json_array()));
}

void tw_provision_rpc(tw_t *self, const Mh__TwinRequest *q, mh_rpc_reply_t *r)
{
    if (q->method == MH__TWIN_REQUEST__METHOD__LIST_TEMPLATES)
        return s_list(self, r);
    if (!tw_name_ok(q->shadow, 36, "_-"))
        return mh_rpc_fail(r, 400, "bad_request",
                           "a template's name is 1-36 characters of A-Z a-z 0-9 _ -");
    const char *p[] = {q->shadow, NULL, NULL};
    PGresult *res = NULL;
    if (q->method == MH__TWIN_REQUEST__METHOD__PUT_TEMPLATE) {
        json_error_t jerr;
        char why[512];
        json_t *body =
            mh_json_loads(q->params_json, JSON_REJECT_DUPLICATES, MH_JSON_MAX_DEPTH, &jerr);
        if (!body)
            return mh_rpc_fail(r, 400, "bad_json", "the template is not JSON: %s", jerr.text);
        bool ok = tw_template_check(body, why, sizeof why);
        char *text = ok ? tw_dumps(body) : NULL, now_s[32];
        json_decref(body);
        if (!ok)
            return mh_rpc_fail(r, 400, "bad_template", "%s", why);
        snprintf(now_s, sizeof now_s, "%" PRId64, mh_now_ms());
        p[1] = text;
        p[2] = now_s;
        res = mh_rpc_db_query(&self->db, r,
                              "WITH t AS (INSERT INTO twin.provisioning_templates AS t"
                              " (name, body, created_ms, updated_ms)"
                              " VALUES ($1, $2::jsonb, $3::bigint, $3::bigint)"
                              " ON CONFLICT (name) DO UPDATE SET body = excluded.body,"
                              " updated_ms = excluded.updated_ms RETURNING *,"
                              " (xmax = 0) AS created)"
                              " SELECT " S_COLS ", t.created FROM t",
                              3, p);
        free(text);
    } else if (q->method == MH__TWIN_REQUEST__METHOD__DELETE_TEMPLATE) {
        res = mh_rpc_db_query(&self->db, r,
                              "DELETE FROM twin.provisioning_templates t WHERE name = $1"
                              " RETURNING " S_COLS,
                              1, p);
    } else {
        res = mh_rpc_db_query(&self->db, r,
                              "SELECT " S_COLS " FROM twin.provisioning_templates t"
                              " WHERE name = $1",
                              1, p);
    }
    if (!res)
        return;
    if (PQntuples(res) == 0) {
        PQclear(res);
        return mh_rpc_fail(r, 404, "not_found", "no provisioning template %s", q->shadow);
    }
    json_t *v = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    int status = q->method == MH__TWIN_REQUEST__METHOD__PUT_TEMPLATE &&
                         strcmp(PQgetvalue(res, 0, 1), "t") == 0
                     ? 201
                 : q->method == MH__TWIN_REQUEST__METHOD__DELETE_TEMPLATE ? 204
                                                                          : 200;
    PQclear(res);
    if (status == 204) {
        json_decref(v);
        r->status = 204;
        return;
    }
    mh_rpc_ok_json(r, (uint32_t)status, v ? v : json_object());
}
