/* twin: the operator's side of a device's named shadows (AWS IoT Device
 * Shadow, tw_shadow.c): list, read, change desired, delete. A change
 * reaches the device as AWS would tell it: update/accepted,
 * update/documents and update/delta on the shadow's topics. */
#include "tw_internal.h"

static void s_list(tw_t *self, const Mh__TwinRequest *q, mh_rpc_reply_t *r)
{
    const char *p[] = {q->device_id};
    PGresult *res = mh_rpc_db_query(
        &self->db, r,
        "SELECT s.name, s.version, (s.doc->>'timestamp')::bigint, d.id IS NOT NULL"
        " FROM (SELECT $1::text AS id) q LEFT JOIN twin.devices d ON d.id = q.id"
        " LEFT JOIN twin.shadows s ON s.device_id = q.id AND NOT s.deleted ORDER BY s.name",
        1, p);
    if (!res)
        return;
    if (PQntuples(res) == 0 || strcmp(PQgetvalue(res, 0, 3), "t") != 0) {
        PQclear(res);
        return mh_rpc_fail(r, 404, "not_found", "no device %s", q->device_id);
    }
    json_t *items = json_array();
    for (int i = 0; i < PQntuples(res); i++)
        if (!PQgetisnull(res, i, 0))
            json_array_append_new(items, json_pack("{s:s,s:I,s:I}", "name", PQgetvalue(res, i, 0),
                                                   "version", (json_int_t)tw_i64(res, i, 1),
                                                   "updatedAt", (json_int_t)tw_i64(res, i, 2)));
    PQclear(res);
    mh_rpc_ok_json(r, 200, json_pack("{s:o}", "items", items));
}

void tw_shadow_rpc(tw_t *self, const Mh__TwinRequest *q, mh_rpc_reply_t *r)
{
    if (q->method == MH__TWIN_REQUEST__METHOD__LIST_SHADOWS)
        return s_list(self, q, r);
    const char *name = q->shadow;
    if (!tw_name_ok(name, 64, ":_-"))
        return mh_rpc_fail(r, 400, "bad_request",
                           "a shadow's name is 1-64 characters of A-Z a-z 0-9 : _ -");
    json_t *desired = NULL;
    if (q->method == MH__TWIN_REQUEST__METHOD__UPDATE_SHADOW) {
        json_error_t jerr;
        desired = mh_json_loads(q->desired_json, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
                                MH_JSON_MAX_DEPTH, &jerr);
        if (!desired || (!json_is_object(desired) && !json_is_null(desired))) {
            json_decref(desired);
            return mh_rpc_fail(r, 400, "bad_request",
                               "the body is {\"desired\":{…}} (null clears it), with an optional"
                               " \"version\"");
        }
    }
    char err[512], why[256];
    int64_t now = mh_now_ms();
    json_t *doc = NULL;
    bool exists = false, ok = mh_pg_begin(self->pg, err, sizeof err);
    PGresult *dev = ok ? mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                                    "SELECT online FROM twin.devices WHERE id = $1 FOR SHARE", 1,
                                    (const char *[]){q->device_id}, err, sizeof err)
                       : NULL;
    ok = dev != NULL;
    bool known = ok && PQntuples(dev) == 1;
    bool online = known && strcmp(PQgetvalue(dev, 0, 0), "t") == 0;
    if (dev)
        PQclear(dev);
    ok = ok &&
         (!known || tw_shadow_load(self, q->device_id, name, now, &doc, &exists, err, sizeof err));
    if (!ok) {
        mh_pg_rollback(self->pg);
        json_decref(desired);
        mh_log_limited(&self->rl_db, MH_LOG_ERROR, "shadow %s of %s: %s", name, q->device_id, err);
        return mh_rpc_fail(r, 503, "unavailable", "the database is not reachable; try again");
    }
    if (!known || (!exists && q->method != MH__TWIN_REQUEST__METHOD__UPDATE_SHADOW)) {
        mh_pg_rollback(self->pg);
        json_decref(desired);
        json_decref(doc);
        return mh_rpc_fail(r, 404, "not_found",
                           known ? "no shadow exists with name: '%s'" : "no device %s",
                           known ? name : q->device_id);
    }
    tw_out_t out;
    tw_out_init(&out);
    uint32_t status = 200;
    if (q->method == MH__TWIN_REQUEST__METHOD__GET_SHADOW) {
        mh_pg_rollback(self->pg);
        mh_rpc_ok_json(r, 200, tw_shadow_aws_doc(doc, true));
    } else if (q->method == MH__TWIN_REQUEST__METHOD__DELETE_SHADOW) {
        ok = tw_shadow_store(self, q->device_id, name, doc, true, err, sizeof err) &&
             mh_pg_commit(self->pg, err, sizeof err);
        if (ok)
            mh_rpc_ok_json(r, 200,
                           json_pack("{s:I,s:I}", "version", (json_int_t)tw_doc_version(doc),
                                     "timestamp", (json_int_t)(now / 1000)));
    } else {
        json_t *before = json_deep_copy(doc);
        bool changed = false;
        tw_status_t st = tw_apply_shadow(doc, desired, NULL, now, q->if_match ? q->if_match : -1,
                                         &changed, why, sizeof why);
        if (st != TW_OK) {
            mh_pg_rollback(self->pg);
            status = 0;
            mh_rpc_fail(r, (uint32_t)st,
                        st == TW_CONFLICT    ? "conflict"
                        : st == TW_TOO_LARGE ? "too_large"
                                             : "bad_request",
                        "%s", why);
        } else {
            ok = (!changed && exists) ||
                 (tw_shadow_store(self, q->device_id, name, doc, false, err, sizeof err));
            ok = ok && mh_pg_commit(self->pg, err, sizeof err);
            if (ok && online)
                tw_shadow_updated(&out, q->device_id, name, before, doc, desired, NULL, NULL,
                                  changed);
            if (ok)
                mh_rpc_ok_json(r, exists ? 200 : 201, tw_shadow_aws_doc(doc, true));
        }
        json_decref(before);
    }
    if (!ok) {
        mh_pg_rollback(self->pg);
        mh_log_limited(&self->rl_db, MH_LOG_ERROR, "shadow %s of %s: %s", name, q->device_id, err);
        mh_rpc_fail(r, 503, "unavailable", "the database is not reachable; try again");
    } else if (status) {
        tw_out_flush(self, &out);
    }
    tw_out_destroy(&out);
    json_decref(desired);
    json_decref(doc);
}
