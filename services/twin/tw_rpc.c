/* twin: The operator RPC methods; mh_rpc_server checks the deadline and the
 * database and counts (tw_internal.h). */
#include "tw_internal.h"

/* ---- the operator RPC ---- */

/* A reply in the making (mh_rpc_server.h): the common fields first, then
 * twin's own reply message and what LIST_IDS puts in it. */
typedef struct {
    mh_rpc_reply_t base;
    Mh__TwinReply rep;
    char **ids; /* LIST_IDS, owned */
    char next[160];
} s_reply_t;

static void s_reply_free(void *reply)
{
    s_reply_t *r = reply;
    for (size_t i = 0; r->ids && i < r->rep.n_ids; i++)
        free(r->ids[i]);
    free(r->ids);
}

static void s_db_fail(tw_t *self, s_reply_t *r, const char *err)
{
    mh_rpc_db_fail(&self->db, &r->base, err);
}

/* A transaction failed: rolls it back; true when it may be tried again,
 * otherwise the reply says why. */
static bool s_retry(tw_t *self, s_reply_t *r, const char *err)
{
    mh_pg_rollback(self->pg);
    if (mh_pg_retryable(self->pg))
        return true;
    s_db_fail(self, r, err);
    return false;
}

/* Parses optional JSON object text from a request. NULL text or "" = absent
 * (returns NULL, *bad false). */
static json_t *s_req_object(const char *text, const char *what, s_reply_t *r, bool *bad)
{
    *bad = false;
    if (!text || !*text)
        return NULL;
    json_error_t err;
    json_t *v =
        mh_json_loads(text, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, MH_JSON_MAX_DEPTH, &err);
    if (!v || !json_is_object(v)) {
        mh_rpc_fail(&r->base, 400, "bad_request", "\"%s\" must be a JSON object%s%s", what,
                    v ? "" : ": ", v ? "" : err.text);
        json_decref(v);
        *bad = true;
        return NULL;
    }
    return v;
}

static bool s_check_id(const char *id, s_reply_t *r)
{
    if (!id || !mh_device_id_valid(id, strlen(id))) {
        mh_rpc_fail(&r->base, 400, "bad_request",
                    "a device id is 1-64 characters of A-Z a-z 0-9 . _ -");
        return false;
    }
    return true;
}

/* The row of device `id` that `sql` ($1 = the id) selects; NULL when the
 * id is not one or there is no such device (the reply filled). */
static PGresult *s_device_row(tw_t *self, const char *id, s_reply_t *r, const char *sql)
{
    if (!s_check_id(id, r))
        return NULL;
    const char *p[] = {id};
    return mh_rpc_db_row(&self->db, &r->base, sql, 1, p, "no device %s", id);
}

#define S_DEVICE_COLS                                                                              \
    "id, (doc->'tags')::text, online, last_seen_ms, firmware, created_ms, version, conn_ms"

static json_t *s_device_json(PGresult *res, int r)
{
    json_t *d = json_object();
    json_object_set_new(d, "id", json_string(PQgetvalue(res, r, 0)));
    json_object_set_new(d, "tags", tw_json_col(res, r, 1));
    bool online = strcmp(PQgetvalue(res, r, 2), "t") == 0;
    json_object_set_new(d, "status", json_string(online ? "online" : "offline"));
    json_object_set_new(d, "lastSeen", tw_ms_or_null(res, r, 3));
    json_object_set_new(d, "firmware",
                        PQgetisnull(res, r, 4) ? json_null() : json_string(PQgetvalue(res, r, 4)));
    json_object_set_new(d, "createdAt", json_integer(tw_i64(res, r, 5)));
    json_object_set_new(d, "version", json_integer(tw_i64(res, r, 6)));
    int64_t conn = tw_i64(res, r, 7);
    json_object_set_new(d, online ? "connectedAt" : "disconnectedAt",
                        conn ? json_integer(conn) : json_null());
    return d;
}

static json_t *s_device_item(PGresult *res, int i, void *ud)
{
    (void)ud;
    return s_device_json(res, i);
}

/* A device list's cursor: the last id in hex, so it needs no escaping in
 * a URL. */
static void s_device_cursor(PGresult *res, int i, char *out, size_t outlen)
{
    const char *in = PQgetvalue(res, i, 0);
    size_t j = 0;
    for (size_t k = 0; in[k] && j + 2 < outlen; k++)
        j += (size_t)snprintf(out + j, outlen - j, "%02x", (unsigned char)in[k]);
    out[j] = 0;
}

static bool s_unhex(const char *in, char *out, size_t outlen)
{
    size_t n = strlen(in);
    if (n % 2 || n / 2 >= outlen)
        return false;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(in + 2 * i, "%2x", &v) != 1 || !isxdigit((unsigned char)in[2 * i]) ||
            !isxdigit((unsigned char)in[2 * i + 1]))
            return false;
        out[i] = (char)v;
    }
    out[n / 2] = 0;
    return true;
}

static void s_rpc_register(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    bool bad;
    json_t *tags = s_req_object(q->tags_json, "tags", r, &bad);
    if (bad)
        return;
    if (tags && (tw_depth(tags) > TW_MAX_DEPTH || tw_size(tags) > TW_MAX_TAGS)) {
        mh_rpc_fail(&r->base, 413, "too_large", "tags are limited to %d bytes and %d levels",
                    TW_MAX_TAGS, TW_MAX_DEPTH);
        json_decref(tags);
        return;
    }
    int64_t now = mh_now_ms();
    json_t *doc = tw_doc_new(tags, now);
    json_decref(tags);
    char *text = tw_dumps(doc), now_s[32], err[512];
    json_decref(doc);
    snprintf(now_s, sizeof now_s, "%" PRId64, now);
    const char *p[] = {q->device_id, text, now_s};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "INSERT INTO twin.devices (id, doc, version, created_ms)"
                               " VALUES ($1, $2::jsonb, 1, $3::bigint) ON CONFLICT (id) DO NOTHING"
                               " RETURNING " S_DEVICE_COLS,
                               3, p, err, sizeof err);
    free(text);
    if (!res) {
        s_db_fail(self, r, err);
        return;
    }
    if (PQntuples(res) == 0) {
        mh_rpc_fail(&r->base, 409, "conflict", "device %s is already registered", q->device_id);
    } else {
        mh_rpc_ok_json(&r->base, 201, s_device_json(res, 0));
        Mh__DeviceRegistered ev = MH__DEVICE_REGISTERED__INIT;
        ev.device_id = q->device_id;
        if (self->pub)
            mh_event_publish(self->pub, "device.registered", &ev.base);
    }
    PQclear(res);
}

static void s_rpc_get_device(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    PGresult *res = s_device_row(self, q->device_id, r,
                                 "SELECT " S_DEVICE_COLS " FROM twin.devices WHERE id = $1");
    if (res)
        mh_rpc_ok_json(&r->base, 200, s_device_json(res, 0));
    PQclear(res);
}

static void s_rpc_list_devices(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    char lim[16];
    uint32_t limit = mh_rpc_limit(&r->base, q->limit, 1000, lim);
    if (!limit)
        return;
    char cursor[MH_MAX_DEVICE_ID + 1] = "", upper[MH_MAX_DEVICE_ID + 1] = "";
    if (*q->cursor && (!s_unhex(q->cursor, cursor, sizeof cursor) ||
                       !mh_device_id_valid(cursor, strlen(cursor)))) {
        mh_rpc_fail(&r->base, 400, "bad_request", "\"cursor\" is not one this API returned");
        return;
    }
    if (*q->status && strcmp(q->status, "online") && strcmp(q->status, "offline")) {
        mh_rpc_fail(&r->base, 400, "bad_request", "\"status\" is online or offline");
        return;
    }
    if (*q->prefix) {
        if (!mh_device_id_valid(q->prefix, strlen(q->prefix))) {
            mh_rpc_fail(&r->base, 400, "bad_request",
                        "\"q\" is an id prefix: characters A-Z a-z 0-9 . _ -");
            return;
        }
        snprintf(upper, sizeof upper, "%s", q->prefix);
        upper[strlen(upper) - 1]++; /* every id with the prefix sorts below this */
    }
    json_t *tags = json_array();
    for (size_t i = 0; i < q->n_tags; i++) {
        /* key:value — the tag has that value; key alone — it has the tag */
        const char *colon = strchr(q->tags[i], ':');
        if (colon == q->tags[i] || !*q->tags[i]) {
            mh_rpc_fail(&r->base, 400, "bad_request",
                        "\"tag\" filters are key:value, or a key the devices have");
            json_decref(tags);
            return;
        }
        json_array_append_new(
            tags, colon ? json_pack("[s#,s]", q->tags[i], (int)(colon - q->tags[i]), colon + 1)
                        : json_pack("[s,n]", q->tags[i]));
    }
    char *tags_text = json_array_size(tags) ? tw_dumps(tags) : NULL;
    json_decref(tags);
    const char *p[] = {*cursor ? cursor : NULL,
                       *q->status ? (strcmp(q->status, "online") == 0 ? "t" : "f") : NULL,
                       *q->firmware ? q->firmware : NULL,
                       *q->prefix ? q->prefix : NULL,
                       *q->prefix ? upper : NULL,
                       tags_text,
                       lim};
    PGresult *res = mh_rpc_db_query(
        &self->db, &r->base,
        "SELECT " S_DEVICE_COLS " FROM twin.devices d"
        " WHERE ($1::text IS NULL OR id > $1) AND ($2::boolean IS NULL OR online = $2)"
        " AND ($3::text IS NULL OR firmware = $3)"
        " AND ($4::text IS NULL OR (id >= $4 AND id < $5))"
        " AND ($6::jsonb IS NULL OR NOT EXISTS (SELECT 1 FROM jsonb_array_elements($6::jsonb) f"
        "   WHERE CASE WHEN f.value->>1 IS NULL THEN NOT ((d.doc->'tags') ? (f.value->>0))"
        "   ELSE (d.doc->'tags')->>(f.value->>0) IS DISTINCT FROM f.value->>1 END))"
        " ORDER BY id LIMIT $7::int",
        7, p);
    free(tags_text);
    mh_rpc_page(&r->base, res, limit,
                &(mh_rpc_page_t){.item = s_device_item, .cursor = s_device_cursor});
}

static void s_rpc_delete(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    PGresult *res =
        s_device_row(self, q->device_id, r, "DELETE FROM twin.devices WHERE id = $1 RETURNING id");
    if (res) {
        r->base.status = 204;
        Mh__DeviceDeleted ev = MH__DEVICE_DELETED__INIT;
        ev.device_id = q->device_id;
        if (self->pub)
            mh_event_publish(self->pub, "device.deleted", &ev.base);
    }
    PQclear(res);
}

static void s_rpc_get_twin(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    PGresult *res = s_device_row(self, q->device_id, r,
                                 "SELECT doc::text, version FROM twin.devices WHERE id = $1");
    if (res) {
        r->rep.version = tw_i64(res, 0, 1);
        mh_rpc_ok_json(&r->base, 200, tw_json_col(res, 0, 0));
    }
    PQclear(res);
}

static void s_rpc_patch_twin(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    bool bad;
    json_t *desired = s_req_object(q->desired_json, "desired", r, &bad);
    if (bad)
        return;
    json_t *tags = s_req_object(q->tags_json, "tags", r, &bad);
    if (bad) {
        json_decref(desired);
        return;
    }
    if (!desired && !tags) {
        mh_rpc_fail(&r->base, 400, "bad_request", "the patch needs \"desired\" and/or \"tags\"");
        return;
    }
    char err[512], why[256];
    const char *p[] = {q->device_id};
    tw_out_t out;
    tw_out_init(&out);
    PGresult *res = NULL;
    for (int attempt = 0; attempt < 5; attempt++) {
        tw_out_clear(&out);
        if (!mh_pg_begin(self->pg, err, sizeof err) ||
            !(res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT doc::text, online FROM twin.devices WHERE id = $1"
                               " FOR UPDATE",
                               1, p, err, sizeof err))) {
            if (s_retry(self, r, err))
                continue;
            break;
        }
        if (PQntuples(res) == 0) {
            mh_rpc_fail(&r->base, 404, "not_found", "no device %s", q->device_id);
            mh_pg_rollback(self->pg);
            break;
        }
        json_t *doc = tw_json_col(res, 0, 0);
        bool online = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
        PQclear(res);
        res = NULL;
        int64_t now = mh_now_ms();
        if (q->if_match && q->if_match != tw_doc_version(doc)) {
            mh_rpc_fail(&r->base, 412, "precondition_failed",
                        "If-Match %" PRId64 " but the twin is at %" PRId64, q->if_match,
                        tw_doc_version(doc));
            json_decref(doc);
            mh_pg_rollback(self->pg);
            break;
        }
        json_t *old_delta = json_deep_copy(tw_doc_delta(doc));
        bool changed = false;
        tw_status_t st = tw_apply_operator(doc, desired, tags, now, &changed, why, sizeof why);
        bool ok = true;
        if (st != TW_OK) {
            mh_rpc_fail(&r->base, (uint32_t)st, st == TW_TOO_LARGE ? "too_large" : "bad_request",
                        "%s", why);
            mh_pg_rollback(self->pg);
        } else if (changed) {
            char *text = tw_dumps(doc), ver[32];
            snprintf(ver, sizeof ver, "%" PRId64, tw_doc_version(doc));
            const char *up[] = {q->device_id, text, ver};
            ok = mh_pg_ok(self->pg,
                          "UPDATE twin.devices SET doc = $2::jsonb, version = $3::bigint"
                          " WHERE id = $1",
                          3, up, err, sizeof err) &&
                 mh_pg_commit(self->pg, err, sizeof err);
            free(text);
            if (ok) {
                if (online)
                    tw_maybe_delta(&out, q->device_id, old_delta, doc, true);
                if (online && desired)
                    tw_shadow_operator_update(&out, q->device_id, desired, doc);
                Mh__TwinChanged ev = MH__TWIN_CHANGED__INIT;
                ev.device_id = q->device_id;
                ev.version = tw_doc_version(doc);
                ev.firmware = "";
                tw_out_event(&out, "twin.changed", &ev.base);
            }
        } else {
            mh_pg_rollback(self->pg);
        }
        json_decref(old_delta);
        if (!ok) {
            json_decref(doc);
            if (s_retry(self, r, err))
                continue;
            break;
        }
        if (st == TW_OK) {
            r->rep.version = tw_doc_version(doc);
            mh_rpc_ok_json(&r->base, 200, doc);
            tw_out_flush(self, &out);
        } else {
            json_decref(doc);
        }
        break;
    }
    tw_out_destroy(&out);
    json_decref(desired);
    json_decref(tags);
}

static json_t *s_command_item(PGresult *res, int i, void *ud)
{
    (void)ud;
    return PQgetisnull(res, i, 0) ? NULL : tw_command_json(res, i);
}

static json_t *s_command_row_json(PGresult *res)
{
    return PQntuples(res) ? tw_command_json(res, 0) : NULL;
}

static void s_rpc_send_command(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    if (!tw_command_name_valid(q->command_name)) {
        mh_rpc_fail(&r->base, 400, "bad_request",
                    "\"name\" is 1-64 characters of A-Z a-z 0-9 . _ -");
        return;
    }
    if (q->ttl_s < 0 || q->ttl_s > TW_MAX_TTL_S || q->timeout_s < 0 ||
        q->timeout_s > TW_MAX_TMO_S) {
        mh_rpc_fail(&r->base, 400, "bad_request",
                    "\"ttl\" is 1..%lld seconds and \"timeout\" 1..%lld seconds", TW_MAX_TTL_S,
                    TW_MAX_TMO_S);
        return;
    }
    bool bad;
    json_t *params = s_req_object(q->params_json, "params", r, &bad);
    if (bad)
        return;
    if (params && (tw_size(params) > TW_MAX_PARAMS || tw_depth(params) > TW_MAX_DEPTH)) {
        mh_rpc_fail(&r->base, 413, "too_large", "\"params\" is limited to %d bytes and %d levels",
                    TW_MAX_PARAMS, TW_MAX_DEPTH);
        json_decref(params);
        return;
    }
    char *ptext = params ? tw_dumps(params) : strdup("{}");
    json_decref(params);
    int64_t now = mh_now_ms();
    int64_t ttl = q->ttl_s ? q->ttl_s * 1000 : self->cfg->command_ttl_ms;
    int64_t tmo = q->timeout_s ? q->timeout_s * 1000 : self->cfg->command_timeout_ms;
    char now_s[32], exp_s[32], tmo_s[32], err[512];
    snprintf(now_s, sizeof now_s, "%" PRId64, now);
    snprintf(exp_s, sizeof exp_s, "%" PRId64, now + ttl);
    snprintf(tmo_s, sizeof tmo_s, "%" PRId64, tmo);
    tw_out_t out;
    tw_out_init(&out);
    for (int attempt = 0; attempt < 5; attempt++) {
        tw_out_clear(&out);
        const char *p[] = {q->device_id};
        PGresult *res = NULL;
        bool ok = mh_pg_begin(self->pg, err, sizeof err) &&
                  (res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                                    "SELECT online FROM twin.devices WHERE id = $1 FOR UPDATE", 1,
                                    p, err, sizeof err));
        if (ok && PQntuples(res) == 0) {
            mh_rpc_fail(&r->base, 404, "not_found", "no device %s", q->device_id);
            PQclear(res);
            mh_pg_rollback(self->pg);
            break;
        }
        bool online = ok && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        res = NULL;
        const char *ip[] = {q->device_id, q->command_name, ptext, now_s, exp_s, tmo_s};
        ok = ok && (res = mh_pg_exec(
                        self->pg, PGRES_TUPLES_OK,
                        "INSERT INTO twin.commands (id, device_id, name, params, status,"
                        " created_ms, expires_ms, timeout_ms) VALUES (gen_random_uuid()::text,"
                        " $1, $2, $3::jsonb, 'queued', $4::bigint, $5::bigint, $6::bigint)"
                        " RETURNING id",
                        6, ip, err, sizeof err));
        char cid[64] = "";
        if (ok) {
            snprintf(cid, sizeof cid, "%s", PQgetvalue(res, 0, 0));
            PQclear(res);
            res = NULL;
            tw_out_command_event(&out, q->device_id, cid, q->command_name, "queued");
            mh_counter_inc(self->m_commands[0]);
        }
        const char *devs[] = {q->device_id};
        ok = ok && (!online || tw_deliver(self, &out, devs, 1, now, err, sizeof err));
        const char *gp[] = {cid};
        ok = ok && (res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                                     "SELECT " TW_COMMAND_COLS " FROM twin.commands WHERE id = $1",
                                     1, gp, err, sizeof err));
        json_t *cmd = ok ? s_command_row_json(res) : NULL;
        PQclear(res);
        ok = ok && cmd && mh_pg_commit(self->pg, err, sizeof err);
        if (ok) {
            mh_rpc_ok_json(&r->base, 202, cmd);
            tw_out_flush(self, &out);
            break;
        }
        json_decref(cmd);
        if (!s_retry(self, r, err))
            break;
    }
    tw_out_destroy(&out);
    free(ptext);
}

static void s_rpc_list_commands(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    char lim[16];
    uint32_t limit = mh_rpc_limit(&r->base, q->limit, 1000, lim);
    if (!limit)
        return;
    char *end = NULL;
    long long cursor = *q->cursor ? strtoll(q->cursor, &end, 10) : 0;
    if (*q->cursor && (*end || cursor <= 0)) {
        mh_rpc_fail(&r->base, 400, "bad_request", "\"cursor\" is not one this API returned");
        return;
    }
    char cur[32];
    snprintf(cur, sizeof cur, "%lld", cursor);
    const char *p[] = {q->device_id, *q->cursor ? cur : NULL, lim};
    /* one row, of NULLs, for a device without commands; none without the
     * device */
    PGresult *res = mh_rpc_db_row(&self->db, &r->base,
                                  "SELECT c.id, c.device_id, c.name, c.params::text, c.status,"
                                  " c.created_ms, c.expires_ms, c.timeout_ms, c.sent_ms,"
                                  " c.completed_ms, c.result::text, c.seq"
                                  " FROM twin.devices dv LEFT JOIN twin.commands c"
                                  " ON c.device_id = dv.id AND ($2::bigint IS NULL OR c.seq < $2)"
                                  " WHERE dv.id = $1 ORDER BY c.seq DESC NULLS LAST LIMIT $3::int",
                                  3, p, "no device %s", q->device_id);
    mh_rpc_page(&r->base, res, limit, &(mh_rpc_page_t){.item = s_command_item, .cursor_col = 11});
}

static void s_rpc_get_command(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    const char *p[] = {q->device_id, q->command_id};
    PGresult *res = mh_rpc_db_row(&self->db, &r->base,
                                  "SELECT " TW_COMMAND_COLS " FROM twin.commands"
                                  " WHERE device_id = $1 AND id = $2",
                                  2, p, "no command %s for device %s", q->command_id, q->device_id);
    if (res)
        mh_rpc_ok_json(&r->base, 200, tw_command_json(res, 0));
    PQclear(res);
}

static void s_rpc_list_ids(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    uint32_t limit = q->limit && q->limit <= 100000 ? q->limit : 10000;
    char lim[16];
    snprintf(lim, sizeof lim, "%u", limit);
    if (*q->status && strcmp(q->status, "online") && strcmp(q->status, "offline")) {
        mh_rpc_fail(&r->base, 400, "bad_request", "\"status\" is online or offline");
        return;
    }
    const char *p[] = {q->cursor, lim,
                       *q->status ? (strcmp(q->status, "online") == 0 ? "t" : "f") : NULL};
    PGresult *res = mh_rpc_db_query(&self->db, &r->base,
                                    "SELECT id FROM twin.devices WHERE id > $1"
                                    " AND ($3::boolean IS NULL OR online = $3) ORDER BY id"
                                    " LIMIT $2::int",
                                    3, p);
    if (!res)
        return;
    int rows = PQntuples(res);
    r->ids = calloc((size_t)rows + 1, sizeof *r->ids);
    for (int i = 0; i < rows; i++)
        r->ids[i] = strdup(PQgetvalue(res, i, 0));
    r->rep.ids = r->ids;
    r->rep.n_ids = (size_t)rows;
    if ((uint32_t)rows == limit)
        snprintf(r->next, sizeof r->next, "%s", r->ids[rows - 1]);
    r->rep.next = r->next;
    r->base.status = 200;
    PQclear(res);
}

/* What fleet-stats needs of every device to build its aggregates, in pages:
 * {"items":[[id, online, last_seen_ms, firmware, battery, rssi, lat, lon],…],
 *  "next": "<cursor>"|null}; JSON built by PostgreSQL. */
static void s_rpc_snapshot(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    uint32_t limit = q->limit && q->limit <= 20000 ? q->limit : 5000;
    char lim[16];
    snprintf(lim, sizeof lim, "%u", limit);
    const char *p[] = {q->cursor, lim};
    PGresult *res = mh_rpc_db_query(
        &self->db, &r->base,
        "WITH page AS (SELECT id, online, last_seen_ms, firmware,"
        "  doc->'state'->'reported' AS rep FROM twin.devices WHERE id > $1 ORDER BY id"
        "  LIMIT $2::int)"
        " SELECT json_build_object('items', coalesce(json_agg(json_build_array(id, online,"
        "   last_seen_ms, firmware,"
        "   CASE WHEN jsonb_typeof(rep->'battery') = 'number' THEN rep->'battery' END,"
        "   CASE WHEN jsonb_typeof(rep->'rssi') = 'number' THEN rep->'rssi' END,"
        "   CASE WHEN jsonb_typeof(rep->'location'->'lat') = 'number'"
        "     AND jsonb_typeof(rep->'location'->'lon') = 'number' THEN rep->'location'->'lat' END,"
        "   CASE WHEN jsonb_typeof(rep->'location'->'lat') = 'number'"
        "     AND jsonb_typeof(rep->'location'->'lon') = 'number' THEN rep->'location'->'lon' END)"
        "   ORDER BY id), '[]'),"
        "  'next', CASE WHEN count(*) = $2::int THEN max(id) END)::text FROM page",
        2, p);
    if (!res)
        return;
    r->base.body = strdup(PQgetvalue(res, 0, 0));
    r->base.status = r->base.body ? 200 : 503;
    PQclear(res);
}

static void s_rpc_shadow(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (s_check_id(q->device_id, r))
        tw_shadow_rpc(self, q, &r->base);
}

static void s_rpc_template(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    tw_provision_rpc(self, q, &r->base);
}

static void s_rpc_health(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    tw_health_rpc(self, q, &r->base);
}

/* The methods, typed as tw_t writes them; indexed by Mh__TwinRequest.method like
 * s_methods below. */
typedef void(s_method_fn)(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r);
static s_method_fn *const s_typed[] = {
    [MH__TWIN_REQUEST__METHOD__REGISTER] = s_rpc_register,
    [MH__TWIN_REQUEST__METHOD__GET_DEVICE] = s_rpc_get_device,
    [MH__TWIN_REQUEST__METHOD__LIST_DEVICES] = s_rpc_list_devices,
    [MH__TWIN_REQUEST__METHOD__DELETE_DEVICE] = s_rpc_delete,
    [MH__TWIN_REQUEST__METHOD__GET_TWIN] = s_rpc_get_twin,
    [MH__TWIN_REQUEST__METHOD__PATCH_TWIN] = s_rpc_patch_twin,
    [MH__TWIN_REQUEST__METHOD__SEND_COMMAND] = s_rpc_send_command,
    [MH__TWIN_REQUEST__METHOD__LIST_COMMANDS] = s_rpc_list_commands,
    [MH__TWIN_REQUEST__METHOD__GET_COMMAND] = s_rpc_get_command,
    [MH__TWIN_REQUEST__METHOD__LIST_IDS] = s_rpc_list_ids,
    [MH__TWIN_REQUEST__METHOD__SNAPSHOT] = s_rpc_snapshot,
    [MH__TWIN_REQUEST__METHOD__LIST_SHADOWS] = s_rpc_shadow,
    [MH__TWIN_REQUEST__METHOD__GET_SHADOW] = s_rpc_shadow,
    [MH__TWIN_REQUEST__METHOD__UPDATE_SHADOW] = s_rpc_shadow,
    [MH__TWIN_REQUEST__METHOD__DELETE_SHADOW] = s_rpc_shadow,
    [MH__TWIN_REQUEST__METHOD__LIST_TEMPLATES] = s_rpc_template,
    [MH__TWIN_REQUEST__METHOD__GET_TEMPLATE] = s_rpc_template,
    [MH__TWIN_REQUEST__METHOD__PUT_TEMPLATE] = s_rpc_template,
    [MH__TWIN_REQUEST__METHOD__DELETE_TEMPLATE] = s_rpc_template,
    [MH__TWIN_REQUEST__METHOD__HEALTH_STATS] = s_rpc_health,
};

/* The one handler the RPC server knows: the untyped arguments become
 * tw_t's own here and nowhere else. */
static void s_call(void *ud, const void *req, void *reply)
{
    const Mh__TwinRequest *q = req;
    s_typed[q->method](ud, q, reply);
}

/* Every method needs the database. */
static const mh_rpc_method_t s_methods[] = {
    [MH__TWIN_REQUEST__METHOD__REGISTER] = {"register", s_call, true},
    [MH__TWIN_REQUEST__METHOD__GET_DEVICE] = {"get_device", s_call, true},
    [MH__TWIN_REQUEST__METHOD__LIST_DEVICES] = {"list_devices", s_call, true},
    [MH__TWIN_REQUEST__METHOD__DELETE_DEVICE] = {"delete", s_call, true},
    [MH__TWIN_REQUEST__METHOD__GET_TWIN] = {"get_twin", s_call, true},
    [MH__TWIN_REQUEST__METHOD__PATCH_TWIN] = {"patch_twin", s_call, true},
    [MH__TWIN_REQUEST__METHOD__SEND_COMMAND] = {"send_command", s_call, true},
    [MH__TWIN_REQUEST__METHOD__LIST_COMMANDS] = {"list_commands", s_call, true},
    [MH__TWIN_REQUEST__METHOD__GET_COMMAND] = {"get_command", s_call, true},
    [MH__TWIN_REQUEST__METHOD__LIST_IDS] = {"list_ids", s_call, true},
    [MH__TWIN_REQUEST__METHOD__SNAPSHOT] = {"snapshot", s_call, true},
    [MH__TWIN_REQUEST__METHOD__LIST_SHADOWS] = {"list_shadows", s_call, true},
    [MH__TWIN_REQUEST__METHOD__GET_SHADOW] = {"get_shadow", s_call, true},
    [MH__TWIN_REQUEST__METHOD__UPDATE_SHADOW] = {"update_shadow", s_call, true},
    [MH__TWIN_REQUEST__METHOD__DELETE_SHADOW] = {"delete_shadow", s_call, true},
    [MH__TWIN_REQUEST__METHOD__LIST_TEMPLATES] = {"list_templates", s_call, true},
    [MH__TWIN_REQUEST__METHOD__GET_TEMPLATE] = {"get_template", s_call, true},
    [MH__TWIN_REQUEST__METHOD__PUT_TEMPLATE] = {"put_template", s_call, true},
    [MH__TWIN_REQUEST__METHOD__DELETE_TEMPLATE] = {"delete_template", s_call, true},
    [MH__TWIN_REQUEST__METHOD__HEALTH_STATS] = {"health_stats", s_call, true},
};
_Static_assert(sizeof s_methods / sizeof s_methods[0] == sizeof s_typed / sizeof s_typed[0],
               "s_typed and s_methods list the same methods");

const mh_rpc_service_t tw_rpc_def = {
    .request_type = "twin.request",
    .reply_type = "twin.reply",
    .request = &mh__twin_request__descriptor,
    .reply = &mh__twin_reply__descriptor,
    .reply_size = sizeof(s_reply_t),
    .reply_msg_offset = offsetof(s_reply_t, rep),
    .methods = s_methods,
    .n_methods = sizeof s_methods / sizeof s_methods[0],
    .reply_free = s_reply_free,
    .metric_prefix = "mh_twin_rpc",
};
