/* ota: the operator RPC methods; mh_rpc_server checks the deadline and
 * the database and counts (ota_internal.h). */
#include "ota_internal.h"

/* ---- RPC ---- */

/* A reply in the making (mh_rpc_server.h): the common fields first, then
 * ota's own reply message. */
typedef struct {
    mh_rpc_reply_t base;
    Mh__OtaReply rep;
} s_reply_t;

static void s_db_fail(ota_t *self, s_reply_t *r, const char *err)
{
    mh_rpc_db_fail(&self->db, &r->base, err);
}

static bool s_rollout_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 40)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)id[i]) && id[i] != '-')
            return false;
    return true;
}

#define S_FIRMWARE_COLS "version, hardware, size, sha256, signature, created_ms"

static json_t *s_firmware_json(PGresult *res, int r, void *ud)
{
    (void)ud;
    return json_pack("{s:s,s:s,s:I,s:s,s:s,s:I}", "version", PQgetvalue(res, r, 0), "hardware",
                     PQgetvalue(res, r, 1), "size", (json_int_t)ota_i64(res, r, 2), "sha256",
                     PQgetvalue(res, r, 3), "signature", PQgetvalue(res, r, 4), "created",
                     (json_int_t)ota_i64(res, r, 5));
}

static void s_rpc_upload(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    if (!self->signer)
        return mh_rpc_fail(
            &r->base, 503, "unavailable",
            "no signing key is configured (--signing-key); firmware cannot be signed");
    if (!ota_name_valid(q->version))
        return mh_rpc_fail(&r->base, 400, "bad_request",
                           "\"version\" is required: 1-64 of A-Z a-z 0-9 . _ + -");
    if (!ota_name_valid(q->hardware))
        return mh_rpc_fail(&r->base, 400, "bad_request",
                           "\"hardware\" is required: 1-64 of A-Z a-z 0-9 . _ + -");
    if (q->image.len == 0)
        return mh_rpc_fail(&r->base, 400, "bad_request", "the image is empty");
    if ((int64_t)q->image.len > self->cfg->max_image)
        return mh_rpc_fail(&r->base, 413, "too_large", "the image is over %" PRId64 " bytes",
                           self->cfg->max_image);
    char sha[65], sig[128], size[32], now_s[32], err[512];
    ota_sha256_hex(q->image.data, q->image.len, sha);
    if (ota_sign(self->signer, q->image.data, q->image.len, sig, sizeof sig) < 0)
        return mh_rpc_fail(&r->base, 500, "internal", "signing failed");
    ota_fmt_i64(size, sizeof size, (int64_t)q->image.len);
    ota_fmt_i64(now_s, sizeof now_s, mh_now_ms());
    const char *p[] = {q->version, q->hardware, size, sha, sig, (const char *)q->image.data, now_s};
    int lengths[] = {0, 0, 0, 0, 0, (int)q->image.len, 0};
    int formats[] = {0, 0, 0, 0, 0, 1, 0};
    PGresult *res = mh_pg_exec_bin(
        self->pg, PGRES_TUPLES_OK,
        "INSERT INTO ota.firmware (version, hardware, size, sha256, signature, image, created_ms)"
        " VALUES ($1, $2, $3::bigint, $4, $5, $6, $7::bigint) ON CONFLICT (version) DO NOTHING"
        " RETURNING " S_FIRMWARE_COLS,
        7, p, lengths, formats, 0, err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    if (PQntuples(res) != 1) {
        PQclear(res);
        return mh_rpc_fail(&r->base, 409, "conflict",
                           "firmware %s already exists; a version is uploaded once", q->version);
    }
    mh_info("firmware %s (%s) uploaded: %zu bytes, sha256 %s", q->version, q->hardware,
            q->image.len, sha);
    mh_rpc_ok_json(&r->base, 201, s_firmware_json(res, 0, NULL));
    PQclear(res);
}

static void s_rpc_list_firmware(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    char lim[16];
    uint32_t limit = mh_rpc_limit(&r->base, q->limit, 1000, lim);
    if (!limit)
        return;
    const char *p[] = {*q->cursor ? q->cursor : NULL, lim};
    PGresult *res = mh_rpc_db_query(&self->db, &r->base,
                                    "SELECT " S_FIRMWARE_COLS " FROM ota.firmware"
                                    " WHERE ($1::text IS NULL OR version > $1) ORDER BY version"
                                    " LIMIT $2::int",
                                    2, p);
    mh_rpc_page(&r->base, res, limit, &(mh_rpc_page_t){.item = s_firmware_json});
}

static void s_rpc_get_firmware(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    if (!ota_name_valid(q->version))
        return mh_rpc_fail(&r->base, 404, "not_found", "no firmware \"%.64s\"", q->version);
    const char *p[] = {q->version};
    PGresult *res = mh_rpc_db_row(&self->db, &r->base,
                                  "SELECT " S_FIRMWARE_COLS " FROM ota.firmware WHERE version = $1",
                                  1, p, "no firmware %s", q->version);
    if (res)
        mh_rpc_ok_json(&r->base, 200, s_firmware_json(res, 0, NULL));
    PQclear(res);
}

static void s_rpc_signing_key(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    (void)q;
    if (!self->signer)
        return mh_rpc_fail(&r->base, 503, "unavailable",
                           "no signing key is configured (--signing-key)");
    mh_rpc_ok_json(&r->base, 200,
                   json_pack("{s:s,s:s}", "algorithm", "Ed25519", "publicKey",
                             ota_signer_public_pem(self->signer)));
}

static void s_reply_rollout(ota_t *self, const char *id, uint32_t status, s_reply_t *r)
{
    const char *p[] = {id};
    PGresult *res = mh_rpc_db_row(&self->db, &r->base,
                                  "SELECT " OTA_ROLLOUT_COLS " FROM ota.rollouts WHERE id = $1", 1,
                                  p, "no rollout %s", id);
    if (res)
        mh_rpc_ok_json(&r->base, status, ota_rollout_json(self, res, 0, true));
    PQclear(res);
}

/* A stratified rollout names tags its targeted devices have: each is
 * asked of twin (one device that matches the target and has the tag).
 * False with the reply failed: 400 naming a tag no targeted device has,
 * 503 when twin does not answer. */
static bool s_strata_present(ota_t *self, const ota_spec_t *spec, s_reply_t *r)
{
    size_t i;
    json_t *e;
    json_array_foreach(spec->stratify_by, i, e)
    {
        char *filters[66], rid[48], err[300];
        size_t nf = 0;
        const char *key;
        json_t *v;
        json_object_foreach(spec->target_tags, key, v)
        {
            if (nf < 64 && asprintf(&filters[nf], "%s:%s", key, json_string_value(v)) > 0)
                nf++;
        }
        filters[nf++] = (char *)json_string_value(e); /* has the tag */
        Mh__TwinRequest tq = MH__TWIN_REQUEST__INIT;
        tq.method = MH__TWIN_REQUEST__METHOD__LIST_DEVICES;
        tq.firmware = (char *)spec->target_firmware;
        tq.tags = filters;
        tq.n_tags = nf;
        tq.limit = 1;
        snprintf(rid, sizeof rid, "ota-strata-%" PRIu64, ++self->seq);
        json_t *page =
            mh_rpc_call_json(self->twin_rpc, "twin.request", &tq.base, rid, 5000, err, sizeof err);
        for (size_t k = 0; k + 1 < nf; k++)
            free(filters[k]);
        if (!page) {
            mh_rpc_fail(&r->base, 503, "unavailable", "cannot check \"stratifyBy\" with twin: %s",
                        err);
            return false;
        }
        bool found = json_array_size(json_object_get(page, "items")) > 0;
        json_decref(page);
        if (!found) {
            mh_rpc_fail(&r->base, 400, "bad_request",
                        "\"stratifyBy\": no device the rollout targets has tag \"%s\"",
                        json_string_value(e));
            return false;
        }
    }
    return true;
}

/* A health gate on a metric needs ingest, and a metric some device has
 * reported (a misspelt one would never fail the gate). False with the reply
 * failed: 400 naming the metric, 503 when ingest does not answer. */
static bool s_metrics_known(ota_t *self, const ota_spec_t *spec, s_reply_t *r)
{
    for (int i = 0; i < spec->health.nsig; i++) {
        const ota_signal_t *s = &spec->health.sig[i];
        if (s->kind != OTA_SIG_METRIC)
            continue;
        if (!self->ingest_rpc) {
            mh_rpc_fail(&r->base, 400, "bad_request",
                        "health.signals[%d]: a metric signal needs ota's --ingest-rpc-endpoint", i);
            return false;
        }
        char params[200], rid[48], err[300];
        snprintf(params, sizeof params, "{\"metric\":\"%s\",\"exists\":true}", s->metric);
        Mh__TelemetryQuery q = MH__TELEMETRY_QUERY__INIT;
        q.cohort_json = params;
        snprintf(rid, sizeof rid, "ota-metric-%" PRIu64, ++self->seq);
        json_t *ans = mh_rpc_call_json(self->ingest_rpc, "telemetry.query", &q.base, rid, 5000, err,
                                       sizeof err);
        if (!ans) {
            mh_rpc_fail(&r->base, 503, "unavailable", "cannot check metric \"%s\" with ingest: %s",
                        s->metric, err);
            return false;
        }
        bool known = json_is_true(json_object_get(ans, "exists"));
        json_decref(ans);
        if (!known) {
            mh_rpc_fail(&r->base, 400, "bad_request",
                        "health.signals[%d]: no device has reported metric \"%s\"", i, s->metric);
            return false;
        }
    }
    return true;
}

static void s_rpc_create_rollout(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    ota_spec_t spec;
    char why[256], err[512], now_s[32];
    if (ota_spec_parse(q->body_json, &spec, why, sizeof why) < 0)
        return mh_rpc_fail(&r->base, 400, "bad_request", "%s", why);
    if ((spec.stratify_by && !s_strata_present(self, &spec, r)) ||
        !s_metrics_known(self, &spec, r)) {
        ota_spec_clear(&spec);
        return;
    }
    json_t *norm = ota_spec_json(&spec);
    char *text = ota_dumps(norm);
    json_decref(norm);
    ota_fmt_i64(now_s, sizeof now_s, mh_now_ms());
    const char *p[] = {spec.firmware, text, now_s};
    bool ok = text && mh_pg_begin(self->pg, err, sizeof err);
    PGresult *res = NULL;
    if (ok) {
        /* a job of a document (AWS IoT Jobs) installs no firmware */
        res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                         "INSERT INTO ota.rollouts (id, firmware, spec, state, created_ms,"
                         " updated_ms) SELECT gen_random_uuid()::text, NULLIF($1, ''), $2::jsonb,"
                         " 'scheduled', $3::bigint, $3::bigint"
                         " WHERE $1 = '' OR EXISTS (SELECT 1 FROM ota.firmware WHERE version = $1)"
                         " RETURNING id",
                         3, p, err, sizeof err);
        ok = res != NULL;
    }
    char id[48] = "";
    if (ok && PQntuples(res) == 1) {
        snprintf(id, sizeof id, "%s", PQgetvalue(res, 0, 0));
        for (int k = 0; k < spec.nwaves && ok; k++) {
            char idx[16], pct[32];
            snprintf(idx, sizeof idx, "%d", k);
            snprintf(pct, sizeof pct, "%.17g", spec.percents[k]);
            const char *wp[] = {id, idx, pct};
            ok = mh_pg_ok(self->pg,
                          "INSERT INTO ota.waves (rollout_id, idx, percent)"
                          " VALUES ($1, $2::int, $3::double precision)",
                          3, wp, err, sizeof err);
        }
    }
    if (res)
        PQclear(res);
    if (ok && !*id) {
        mh_pg_rollback(self->pg);
        mh_rpc_fail(&r->base, 404, "not_found", "no firmware %s; upload it first", spec.firmware);
    } else if (ok && mh_pg_commit(self->pg, err, sizeof err)) {
        ota_rollout_event(self, id, spec.firmware, "scheduled", -1, NULL);
        mh_counter_inc(self->m_rollouts[0]);
        ota_out_flush(self);
        s_reply_rollout(self, id, 201, r);
    } else {
        mh_pg_rollback(self->pg);
        s_db_fail(self, r, text ? err : "out of memory");
    }
    free(text);
    ota_spec_clear(&spec);
}

static json_t *s_rollout_item(PGresult *res, int i, void *ud)
{
    return ota_rollout_json(ud, res, i, true);
}

static void s_rpc_list_rollouts(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    char lim[16];
    uint32_t limit = mh_rpc_limit(&r->base, q->limit, 1000, lim);
    if (!limit)
        return;
    char *end = NULL;
    if (*q->cursor && (strtoll(q->cursor, &end, 10) <= 0 || *end))
        return mh_rpc_fail(&r->base, 400, "bad_request", "\"cursor\" is not one this API returned");
    const char *p[] = {*q->cursor ? q->cursor : NULL, *q->state ? q->state : NULL, lim,
                       q->kind && *q->kind ? q->kind : NULL};
    PGresult *res = mh_rpc_db_query(&self->db, &r->base,
                                    "SELECT " OTA_ROLLOUT_COLS " FROM ota.rollouts"
                                    " WHERE ($1::bigint IS NULL OR seq < $1::bigint)"
                                    " AND ($2::text IS NULL OR state = $2)"
                                    " AND ($4::text IS NULL OR (firmware IS NULL) = ($4 = 'job'))"
                                    " ORDER BY seq DESC LIMIT $3::int",
                                    4, p);
    mh_rpc_page(&r->base, res, limit,
                &(mh_rpc_page_t){.item = s_rollout_item, .ud = self, .cursor_col = 11});
}

static void s_rpc_get_rollout(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    if (!s_rollout_id_ok(q->rollout_id))
        return mh_rpc_fail(&r->base, 404, "not_found", "no rollout \"%.40s\"", q->rollout_id);
    s_reply_rollout(self, q->rollout_id, 200, r);
}

/* pause, resume, abort, rollback */
static void s_rpc_control(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    const char *id = q->rollout_id;
    if (!s_rollout_id_ok(id))
        return mh_rpc_fail(&r->base, 404, "not_found", "no rollout \"%.40s\"", id);
    char err[512];
    int64_t now = mh_now_ms();
    if (!mh_pg_begin(self->pg, err, sizeof err))
        return s_db_fail(self, r, err);
    const char *p[] = {id};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT state, firmware, paused_by, current_wave,"
                               " EXISTS (SELECT 1 FROM ota.jobs WHERE rollout_id = $1)"
                               " FROM ota.rollouts WHERE id = $1 FOR UPDATE",
                               1, p, err, sizeof err);
    if (!res) {
        mh_pg_rollback(self->pg);
        return s_db_fail(self, r, err);
    }
    if (PQntuples(res) != 1) {
        PQclear(res);
        mh_pg_rollback(self->pg);
        return mh_rpc_fail(&r->base, 404, "not_found", "no rollout %s", id);
    }
    char state[24], firmware[OTA_MAX_VERSION + 1], paused_by[16];
    snprintf(state, sizeof state, "%s", PQgetvalue(res, 0, 0));
    snprintf(firmware, sizeof firmware, "%s", PQgetvalue(res, 0, 1));
    snprintf(paused_by, sizeof paused_by, "%s", PQgetvalue(res, 0, 2));
    int current = (int)ota_i64(res, 0, 3);
    bool has_jobs = strcmp(PQgetvalue(res, 0, 4), "t") == 0;
    PQclear(res);
    const char *to = NULL, *reason = NULL, *by = NULL;
    bool ok = true, cancel = false;
    switch (q->method) {
    case MH__OTA_REQUEST__METHOD__PAUSE_ROLLOUT:
        if (strcmp(state, "running") == 0 || strcmp(state, "scheduled") == 0)
            to = "paused", reason = "paused by an operator", by = "operator";
        break;
    case MH__OTA_REQUEST__METHOD__RESUME_ROLLOUT:
        if (strcmp(state, "paused") == 0) {
            to = has_jobs ? "running" : "scheduled", reason = "", by = "";
            if (strcmp(paused_by, "gate") == 0) {
                /* The operator accepts the waves that stopped it. */
                char k[16];
                snprintf(k, sizeof k, "%d", current);
                ok = mh_pg_ok(self->pg,
                              "UPDATE ota.rollouts SET accepted_wave = $2::int WHERE id = $1", 2,
                              (const char *[]){id, k}, err, sizeof err);
            }
        }
        break;
    case MH__OTA_REQUEST__METHOD__ABORT_ROLLOUT:
        if (strcmp(state, "scheduled") == 0 || strcmp(state, "running") == 0 ||
            strcmp(state, "paused") == 0)
            to = "aborted", reason = "aborted by an operator", cancel = true;
        break;
    default: /* rollback; a job of a document (no firmware) has nothing to go back to */
        if (has_jobs && *firmware &&
            (strcmp(state, "running") == 0 || strcmp(state, "paused") == 0 ||
             strcmp(state, "completed") == 0 || strcmp(state, "aborted") == 0))
            to = "rolling_back", reason = OTA_OPERATOR_ROLLBACK, cancel = true;
        break;
    }
    if (!to) {
        mh_pg_rollback(self->pg);
        return mh_rpc_fail(&r->base, 409, "conflict", "the rollout is %s%s; it cannot be %s", state,
                           *firmware ? "" : " (a job of a document)",
                           q->method == MH__OTA_REQUEST__METHOD__PAUSE_ROLLOUT    ? "paused"
                           : q->method == MH__OTA_REQUEST__METHOD__RESUME_ROLLOUT ? "resumed"
                           : q->method == MH__OTA_REQUEST__METHOD__ABORT_ROLLOUT  ? "aborted"
                                                                                  : "rolled back");
    }
    ok = ok && (!cancel || ota_cancel_unsent(self, id, now, err, sizeof err)) &&
         ota_set_state(self, id, to, reason, by, now, err, sizeof err) &&
         (strcmp(to, "rolling_back") != 0 || ota_insert_rollbacks(self, id, now, err, sizeof err));
    if (!ok || !mh_pg_commit(self->pg, err, sizeof err)) {
        mh_pg_rollback(self->pg);
        ota_out_discard(self);
        return s_db_fail(self, r, err);
    }
    ota_rollout_event(self, id, firmware, to, current, reason);
    ota_out_flush(self);
    s_reply_rollout(self, id, 200, r);
}

static json_t *s_job_item(PGresult *res, int i, void *ud)
{
    (void)ud;
    json_t *details = PQgetisnull(res, i, 15) ? NULL : json_loads(PQgetvalue(res, i, 15), 0, NULL);
    return json_pack(
        "{s:s,s:s,s:s,s:o,s:o,s:I,s:s,s:I,s:o,s:o,s:o,s:o,s:I,s:s,s:o,s:I}", "jobId",
        PQgetvalue(res, i, 0), "device", PQgetvalue(res, i, 1), "action", PQgetvalue(res, i, 2),
        "version", ota_str_or_null(res, i, 3), "fromVersion", ota_str_or_null(res, i, 4), "wave",
        (json_int_t)ota_i64(res, i, 5), "status", PQgetvalue(res, i, 6), "progress",
        (json_int_t)ota_i64(res, i, 7), "error", ota_str_or_null(res, i, 8), "sentAt",
        ota_ms_or_null(res, i, 9), "answeredAt", ota_ms_or_null(res, i, 10), "finishedAt",
        ota_ms_or_null(res, i, 11), "sends", (json_int_t)ota_i64(res, i, 12), "awsStatus",
        ota_jobs_aws_status(PQgetvalue(res, i, 6), PQgetvalue(res, i, 14)), "statusDetails",
        details ? details : json_null(), "versionNumber", (json_int_t)ota_i64(res, i, 16));
}

/* A job list's cursor: "rank:action" of the last job given. */
static void s_job_cursor(PGresult *res, int i, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s:%s", PQgetvalue(res, i, 13), PQgetvalue(res, i, 2));
}

static void s_rpc_list_jobs(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r)
{
    char lim[16];
    uint32_t limit = mh_rpc_limit(&r->base, q->limit, 1000, lim);
    if (!limit)
        return;
    if (!s_rollout_id_ok(q->rollout_id))
        return mh_rpc_fail(&r->base, 404, "not_found", "no rollout \"%.40s\"", q->rollout_id);
    long rank = -1;
    char action[16] = "";
    if (*q->cursor && (sscanf(q->cursor, "%ld:%15[a-z]", &rank, action) != 2 || rank < 0))
        return mh_rpc_fail(&r->base, 400, "bad_request", "\"cursor\" is not one this API returned");
    char rk[24];
    snprintf(rk, sizeof rk, "%ld", rank);
    const char *p[] = {q->rollout_id,
                       *q->cursor ? rk : NULL,
                       *q->cursor ? action : NULL,
                       *q->state ? q->state : NULL,
                       *q->device_id ? q->device_id : NULL,
                       lim};
    PGresult *res = mh_rpc_db_query(
        &self->db, &r->base,
        "SELECT id, device_id, action, to_version, from_version, wave, status, progress, error,"
        " sent_ms, answered_ms, finished_ms, sends, rank, outcome, status_details::text,"
        " version_number FROM ota.jobs WHERE rollout_id = $1"
        " AND ($2::int IS NULL OR (rank, action) > ($2::int, $3::text))"
        " AND ($4::text IS NULL OR status = $4) AND ($5::text IS NULL OR device_id = $5)"
        " ORDER BY rank, action LIMIT $6::int",
        6, p);
    mh_rpc_page(&r->base, res, limit, &(mh_rpc_page_t){.item = s_job_item, .cursor = s_job_cursor});
}

/* The methods, typed as ota_t writes them; indexed by Mh__OtaRequest.method like
 * s_methods below. */
typedef void(s_method_fn)(ota_t *self, const Mh__OtaRequest *q, s_reply_t *r);
static s_method_fn *const s_typed[] = {
    [MH__OTA_REQUEST__METHOD__UPLOAD_FIRMWARE] = s_rpc_upload,
    [MH__OTA_REQUEST__METHOD__LIST_FIRMWARE] = s_rpc_list_firmware,
    [MH__OTA_REQUEST__METHOD__GET_FIRMWARE] = s_rpc_get_firmware,
    [MH__OTA_REQUEST__METHOD__SIGNING_KEY] = s_rpc_signing_key,
    [MH__OTA_REQUEST__METHOD__CREATE_ROLLOUT] = s_rpc_create_rollout,
    [MH__OTA_REQUEST__METHOD__LIST_ROLLOUTS] = s_rpc_list_rollouts,
    [MH__OTA_REQUEST__METHOD__GET_ROLLOUT] = s_rpc_get_rollout,
    [MH__OTA_REQUEST__METHOD__PAUSE_ROLLOUT] = s_rpc_control,
    [MH__OTA_REQUEST__METHOD__RESUME_ROLLOUT] = s_rpc_control,
    [MH__OTA_REQUEST__METHOD__ABORT_ROLLOUT] = s_rpc_control,
    [MH__OTA_REQUEST__METHOD__ROLLBACK_ROLLOUT] = s_rpc_control,
    [MH__OTA_REQUEST__METHOD__LIST_JOBS] = s_rpc_list_jobs,
};

/* The one handler the RPC server knows: the untyped arguments become
 * ota_t's own here and nowhere else. */
static void s_call(void *ud, const void *req, void *reply)
{
    const Mh__OtaRequest *q = req;
    s_typed[q->method](ud, q, reply);
}

/* Every method needs the database. */
static const mh_rpc_method_t s_methods[] = {
    [MH__OTA_REQUEST__METHOD__UPLOAD_FIRMWARE] = {"upload_firmware", s_call, true},
    [MH__OTA_REQUEST__METHOD__LIST_FIRMWARE] = {"list_firmware", s_call, true},
    [MH__OTA_REQUEST__METHOD__GET_FIRMWARE] = {"get_firmware", s_call, true},
    [MH__OTA_REQUEST__METHOD__SIGNING_KEY] = {"signing_key", s_call, true},
    [MH__OTA_REQUEST__METHOD__CREATE_ROLLOUT] = {"create_rollout", s_call, true},
    [MH__OTA_REQUEST__METHOD__LIST_ROLLOUTS] = {"list_rollouts", s_call, true},
    [MH__OTA_REQUEST__METHOD__GET_ROLLOUT] = {"get_rollout", s_call, true},
    [MH__OTA_REQUEST__METHOD__PAUSE_ROLLOUT] = {"pause_rollout", s_call, true},
    [MH__OTA_REQUEST__METHOD__RESUME_ROLLOUT] = {"resume_rollout", s_call, true},
    [MH__OTA_REQUEST__METHOD__ABORT_ROLLOUT] = {"abort_rollout", s_call, true},
    [MH__OTA_REQUEST__METHOD__ROLLBACK_ROLLOUT] = {"rollback_rollout", s_call, true},
    [MH__OTA_REQUEST__METHOD__LIST_JOBS] = {"list_jobs", s_call, true},
};
_Static_assert(sizeof s_methods / sizeof s_methods[0] == sizeof s_typed / sizeof s_typed[0],
               "s_typed and s_methods list the same methods");

const mh_rpc_service_t ota_rpc_def = {
    .request_type = "ota.request",
    .reply_type = "ota.reply",
    .request = &mh__ota_request__descriptor,
    .reply = &mh__ota_reply__descriptor,
    .reply_size = sizeof(s_reply_t),
    .reply_msg_offset = offsetof(s_reply_t, rep),
    .methods = s_methods,
    .n_methods = sizeof s_methods / sizeof s_methods[0],
    .metric_prefix = "mh_ota_rpc",
};
