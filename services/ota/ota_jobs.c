/* ota: the AWS IoT Jobs device API (shared/spec/aws-iot-compat.md) on
 * $aws/things/{id}/jobs/..., over the same ota.jobs rows the native OTA
 * protocol moves (ota_internal.h).
 *
 * An AWS job is a rollout: its jobId is the rollout's id (a rollback's
 * "<id>-rollback"), its document the rollout's "document", or for a
 * firmware rollout one Motehub builds (operation, version, url, size,
 * sha256, signature). A device sees an execution once ota has handed it
 * over (waves, rate cap and online state decide when, as for OTA). States:
 * queued and sent are QUEUED; downloading and installing are IN_PROGRESS;
 * succeeded, failed, timed_out and cancelled are SUCCEEDED, FAILED,
 * TIMED_OUT and CANCELED; a device's REJECTED is failed with the outcome
 * kept. Replies go to the asking client alone (motehub/to/, the broker
 * plugin), also when it has not subscribed to them. */
#include "ota_internal.h"

#define S_VISIBLE                                                                                  \
    "(j.status IN ('sent', 'downloading', 'installing')"                                           \
    " OR (j.status = 'queued' AND j.last_sent_ms IS NOT NULL))"
#define S_EXEC_COLS                                                                                \
    "j.id, j.rollout_id, j.action, j.status, j.outcome, j.version_number,"                         \
    " j.status_details::text, j.created_ms, j.started_ms, j.updated_ms, j.to_version, f.size,"     \
    " f.sha256, f.signature, (r.spec->'document')::text, j.wave, j.device_id"
#define S_EXEC_FROM                                                                                \
    " FROM ota.jobs j JOIN ota.rollouts r ON r.id = j.rollout_id"                                  \
    " LEFT JOIN ota.firmware f ON f.version = j.to_version"

enum {
    C_ID,
    C_ROLLOUT,
    C_ACTION,
    C_STATUS,
    C_OUTCOME,
    C_VERSION,
    C_DETAILS,
    C_CREATED,
    C_STARTED,
    C_UPDATED,
    C_TO,
    C_SIZE,
    C_SHA,
    C_SIG,
    C_DOC,
    C_WAVE,
    C_DEVICE
};

static bool s_terminal(const char *aws)
{
    return strcmp(aws, "QUEUED") && strcmp(aws, "IN_PROGRESS");
}

const char *ota_jobs_aws_status(const char *status, const char *outcome)
{
    if (outcome && *outcome)
        return outcome;
    return strcmp(status, "downloading") == 0 || strcmp(status, "installing") == 0 ? "IN_PROGRESS"
           : strcmp(status, "succeeded") == 0                                      ? "SUCCEEDED"
           : strcmp(status, "failed") == 0                                         ? "FAILED"
           : strcmp(status, "timed_out") == 0                                      ? "TIMED_OUT"
           : strcmp(status, "cancelled") == 0                                      ? "CANCELED"
                                                                                   : "QUEUED";
}

void ota_jobs_id(const char *rollout, const char *action, char *out, size_t len)
{
    snprintf(out, len, "%s%s", rollout, strcmp(action, "rollback") == 0 ? "-rollback" : "");
}

json_t *ota_jobs_document(ota_t *self, const char *document, const char *action,
                          const char *version, const char *rollout, int64_t size, const char *sha,
                          const char *sig)
{
    if (document && *document) {
        json_t *d = json_loads(document, 0, NULL);
        return d ? d : json_object();
    }
    char link[512], url[1024];
    ota_link(self->secret, version, mh_now_ms() / 1000 + 86400, link, sizeof link);
    snprintf(url, sizeof url, "%s%s", self->cfg->public_url, link);
    return json_pack("{s:s,s:s,s:s,s:I,s:s,s:s,s:s}", "operation", action, "version", version,
                     "url", url, "size", (json_int_t)size, "sha256", sha ? sha : "", "signature",
                     sig ? sig : "", "rollout", rollout);
}

/* The execution of row `r` as AWS describes it (times in epoch seconds). */
static json_t *s_execution(ota_t *self, PGresult *res, int r, bool with_document)
{
    char job_id[96];
    ota_jobs_id(PQgetvalue(res, r, C_ROLLOUT), PQgetvalue(res, r, C_ACTION), job_id, sizeof job_id);
    const char *outcome = PQgetisnull(res, r, C_OUTCOME) ? NULL : PQgetvalue(res, r, C_OUTCOME);
    int64_t queued = ota_i64(res, r, C_CREATED) / 1000;
    int64_t updated = PQgetisnull(res, r, C_UPDATED) ? queued : ota_i64(res, r, C_UPDATED) / 1000;
    json_t *e = json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:I}", "jobId", job_id, "thingName",
                          PQgetvalue(res, r, C_DEVICE), "status",
                          ota_jobs_aws_status(PQgetvalue(res, r, C_STATUS), outcome), "queuedAt",
                          (json_int_t)queued, "lastUpdatedAt", (json_int_t)updated, "versionNumber",
                          (json_int_t)ota_i64(res, r, C_VERSION), "executionNumber", (json_int_t)1);
    if (!PQgetisnull(res, r, C_STARTED))
        json_object_set_new(e, "startedAt", json_integer(ota_i64(res, r, C_STARTED) / 1000));
    if (!PQgetisnull(res, r, C_DETAILS)) {
        json_t *d = json_loads(PQgetvalue(res, r, C_DETAILS), 0, NULL);
        if (d)
            json_object_set_new(e, "statusDetails", d);
    }
    if (with_document)
        json_object_set_new(
            e, "jobDocument",
            ota_jobs_document(self, PQgetisnull(res, r, C_DOC) ? NULL : PQgetvalue(res, r, C_DOC),
                              PQgetvalue(res, r, C_ACTION), PQgetvalue(res, r, C_TO),
                              PQgetvalue(res, r, C_ROLLOUT), ota_i64(res, r, C_SIZE),
                              PQgetvalue(res, r, C_SHA), PQgetvalue(res, r, C_SIG)));
    return e;
}

/* A job summary, as get's lists and notify carry. */
static json_t *s_summary(PGresult *res, int r)
{
    char job_id[96];
    ota_jobs_id(PQgetvalue(res, r, C_ROLLOUT), PQgetvalue(res, r, C_ACTION), job_id, sizeof job_id);
    int64_t queued = ota_i64(res, r, C_CREATED) / 1000;
    json_t *s = json_pack(
        "{s:s,s:I,s:I,s:I,s:I}", "jobId", job_id, "queuedAt", (json_int_t)queued, "lastUpdatedAt",
        (json_int_t)(PQgetisnull(res, r, C_UPDATED) ? queued : ota_i64(res, r, C_UPDATED) / 1000),
        "versionNumber", (json_int_t)ota_i64(res, r, C_VERSION), "executionNumber", (json_int_t)1);
    if (!PQgetisnull(res, r, C_STARTED))
        json_object_set_new(s, "startedAt", json_integer(ota_i64(res, r, C_STARTED) / 1000));
    return s;
}

/* The device's pending executions, in progress first, then oldest first. */
#define S_PENDING                                                                                  \
    "SELECT " S_EXEC_COLS S_EXEC_FROM " WHERE j.device_id = $1 AND " S_VISIBLE                     \
    " ORDER BY j.status IN ('downloading', 'installing') DESC, j.created_ms, j.id"
static PGresult *s_pending(ota_t *self, const char *device, bool lock, char *err, size_t errlen)
{
    const char *p[] = {device};
    return mh_pg_exec(self->pg, PGRES_TUPLES_OK, lock ? S_PENDING " FOR UPDATE OF j" : S_PENDING, 1,
                      p, err, errlen);
}

/* ---- replies ---- */

typedef struct {
    const char *device;
    char base[160]; /* $aws/things/{id}/jobs/{request} */
    json_t *token;  /* clientToken, borrowed */
    int64_t now_s;
} s_req_t;

static void s_reply(ota_t *self, s_req_t *q, bool accepted, json_t *body)
{
    if (json_is_string(q->token))
        json_object_set(body, "clientToken", q->token);
    json_object_set_new(body, "timestamp", json_integer(q->now_s));
    char topic[256];
    snprintf(topic, sizeof topic, "%s/%s", q->base, accepted ? "accepted" : "rejected");
    ota_out_publish(self, q->device, topic, body, true);
}

static void s_error(ota_t *self, s_req_t *q, const char *code, const char *message, json_t *state)
{
    json_t *e = json_pack("{s:s,s:s}", "code", code, "message", message);
    if (state)
        json_object_set_new(e, "executionState", state);
    mh_log_limited(&self->rl_warn, MH_LOG_WARN, "jobs request %s refused (%s): %s", q->base, code,
                   message);
    s_reply(self, q, false, e);
}

void ota_jobs_notify(ota_t *self, const char *device, PGresult *pending, bool next)
{
    json_t *queued = json_array(), *running = json_array();
    for (int r = 0; r < PQntuples(pending); r++) {
        bool in_progress = strcmp(ota_jobs_aws_status(PQgetvalue(pending, r, C_STATUS),
                                                      PQgetvalue(pending, r, C_OUTCOME)),
                                  "IN_PROGRESS") == 0;
        json_array_append_new(in_progress ? running : queued, s_summary(pending, r));
    }
    int64_t now_s = mh_now_ms() / 1000;
    json_t *jobs = json_object();
    if (json_array_size(queued))
        json_object_set(jobs, "QUEUED", queued);
    if (json_array_size(running))
        json_object_set(jobs, "IN_PROGRESS", running);
    json_decref(queued);
    json_decref(running);
    char topic[160];
    snprintf(topic, sizeof topic, "$aws/things/%s/jobs/notify", device);
    ota_out_publish(self, device, topic,
                    json_pack("{s:o,s:I}", "jobs", jobs, "timestamp", (json_int_t)now_s), false);
    if (!next)
        return;
    json_t *n = json_pack("{s:I}", "timestamp", (json_int_t)now_s);
    if (PQntuples(pending))
        json_object_set_new(n, "execution", s_execution(self, pending, 0, true));
    snprintf(topic, sizeof topic, "$aws/things/%s/jobs/notify-next", device);
    ota_out_publish(self, device, topic, n, false);
}

/* ---- requests ---- */

/* statusDetails: a map of strings (AWS: up to 10 keys). */
static bool s_details_ok(json_t *d)
{
    if (!d)
        return true;
    if (!json_is_object(d) || json_object_size(d) > 10)
        return false;
    const char *k;
    json_t *v;
    json_object_foreach(d, k, v)
    {
        if (!json_is_string(v) || strlen(k) > 128 || json_string_length(v) > 1024)
            return false;
    }
    return true;
}

/* stepTimeoutInMinutes: absent (0), or 1..10080 (AWS: a week); -1 bad. */
static int64_t s_step_minutes(json_t *root)
{
    json_t *v = json_object_get(root, "stepTimeoutInMinutes");
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 10080)
        return -1;
    return json_integer_value(v);
}

static int s_get_list(ota_t *self, s_req_t *q, char *err, size_t errlen)
{
    PGresult *res = s_pending(self, q->device, false, err, errlen);
    if (!res)
        return -1;
    json_t *running = json_array(), *queued = json_array();
    for (int r = 0; r < PQntuples(res); r++) {
        bool in_progress =
            strcmp(ota_jobs_aws_status(PQgetvalue(res, r, C_STATUS), PQgetvalue(res, r, C_OUTCOME)),
                   "IN_PROGRESS") == 0;
        json_array_append_new(in_progress ? running : queued, s_summary(res, r));
    }
    PQclear(res);
    s_reply(self, q, true, json_pack("{s:o,s:o}", "inProgressJobs", running, "queuedJobs", queued));
    return 0;
}

/* {jobId} as rollout and action; false when it cannot be one. */
static bool s_job_key(const char *job_id, char *rollout, size_t len, const char **action)
{
    size_t n = strlen(job_id);
    *action = "install";
    if (n > 9 && strcmp(job_id + n - 9, "-rollback") == 0) {
        n -= 9;
        *action = "rollback";
    }
    if (n == 0 || n >= len)
        return false;
    memcpy(rollout, job_id, n);
    rollout[n] = 0;
    return true;
}

/* $next/get or {jobId}/get */
static int s_describe(ota_t *self, s_req_t *q, const char *job_id, json_t *root, char *err,
                      size_t errlen)
{
    json_t *inc = json_object_get(root, "includeJobDocument");
    bool with_doc = !json_is_false(inc);
    PGresult *res;
    if (strcmp(job_id, "$next") == 0) {
        res = s_pending(self, q->device, false, err, errlen);
    } else {
        char rollout[72];
        const char *action;
        if (!s_job_key(job_id, rollout, sizeof rollout, &action)) {
            s_error(self, q, "ResourceNotFound", "no such job execution", NULL);
            return 0;
        }
        const char *p[] = {q->device, rollout, action};
        res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                         "SELECT " S_EXEC_COLS S_EXEC_FROM
                         " WHERE j.device_id = $1 AND j.rollout_id = $2 AND j.action = $3"
                         " AND j.status <> 'pending'"
                         " AND NOT (j.status = 'queued' AND j.last_sent_ms IS NULL)",
                         3, p, err, errlen);
    }
    if (!res)
        return -1;
    if (PQntuples(res) == 0 && strcmp(job_id, "$next")) {
        s_error(self, q, "ResourceNotFound", "no such job execution", NULL);
    } else {
        json_t *body = json_object();
        if (PQntuples(res))
            json_object_set_new(body, "execution", s_execution(self, res, 0, with_doc));
        s_reply(self, q, true, body);
    }
    PQclear(res);
    return 0;
}

/* Moves row `r` of `res` (locked) to `status` with the request's details
 * and step timeout; fills `next_res` with the device's pending list after
 * a terminal update. */
static bool s_move(ota_t *self, PGresult *res, int r, const char *status, const char *outcome,
                   json_t *details, int64_t step_min, int64_t now, char *err, size_t errlen)
{
    char *dtext = details ? ota_dumps(details) : NULL;
    char now_s[32], step_s[32];
    ota_fmt_i64(now_s, sizeof now_s, now);
    ota_fmt_i64(step_s, sizeof step_s, step_min);
    const char *p[] = {PQgetvalue(res, r, C_ID), status, dtext, now_s, step_s, outcome};
    bool terminal = strcmp(status, "installing") != 0;
    bool ok = mh_pg_ok(
        self->pg,
        "UPDATE ota.jobs SET status = $2, outcome = $6, version_number = version_number + 1,"
        " status_details = COALESCE($3::jsonb, status_details), updated_ms = $4::bigint,"
        " started_ms = CASE WHEN $2 = 'installing' THEN COALESCE(started_ms, $4::bigint)"
        "   ELSE started_ms END,"
        " sent_ms = COALESCE(sent_ms, $4::bigint), answered_ms = COALESCE(answered_ms, $4::bigint),"
        " finished_ms = CASE WHEN $2 = 'installing' THEN finished_ms ELSE $4::bigint END,"
        " step_deadline_ms = CASE WHEN $2 <> 'installing' THEN NULL"
        "   WHEN $5::bigint > 0 THEN $4::bigint + $5::bigint * 60000 ELSE step_deadline_ms END"
        " WHERE id = $1",
        6, p, err, errlen);
    free(dtext);
    if (ok)
        ota_job_event(self, PQgetvalue(res, r, C_ROLLOUT), PQgetvalue(res, r, C_ID),
                      PQgetvalue(res, r, C_DEVICE), PQgetvalue(res, r, C_ACTION),
                      terminal ? status : "installing", PQgetvalue(res, r, C_TO),
                      (int)ota_i64(res, r, C_WAVE), outcome);
    return ok;
}

static int s_start_next(ota_t *self, s_req_t *q, json_t *root, char *err, size_t errlen)
{
    json_t *details = json_object_get(root, "statusDetails");
    int64_t step = s_step_minutes(root);
    if (!s_details_ok(details) || step < 0) {
        s_error(self, q, "InvalidRequest",
                step < 0 ? "stepTimeoutInMinutes must be 1 to 10080"
                         : "statusDetails must be a map of at most 10 strings",
                NULL);
        return 0;
    }
    int64_t now = mh_now_ms();
    PGresult *res = s_pending(self, q->device, true, err, errlen);
    bool ok = res != NULL;
    if (ok && PQntuples(res) &&
        strcmp(ota_jobs_aws_status(PQgetvalue(res, 0, C_STATUS), PQgetvalue(res, 0, C_OUTCOME)),
               "QUEUED") == 0) {
        ok = s_move(self, res, 0, "installing", NULL, details, step, now, err, errlen);
        PQclear(res);
        res = ok ? s_pending(self, q->device, false, err, errlen) : NULL;
        ok = res != NULL;
    }
    if (!ok) {
        if (res)
            PQclear(res);
        return -1;
    }
    json_t *body = json_object();
    if (PQntuples(res))
        json_object_set_new(body, "execution", s_execution(self, res, 0, true));
    PQclear(res);
    s_reply(self, q, true, body);
    return 0;
}

static int s_update(ota_t *self, s_req_t *q, const char *job_id, json_t *root, char *err,
                    size_t errlen)
{
    const char *st = json_string_value(json_object_get(root, "status"));
    json_t *details = json_object_get(root, "statusDetails");
    json_t *expected = json_object_get(root, "expectedVersion");
    int64_t step = s_step_minutes(root);
    const char *to = !st                              ? NULL
                     : strcmp(st, "IN_PROGRESS") == 0 ? "installing"
                     : strcmp(st, "SUCCEEDED") == 0   ? "succeeded"
                     : strcmp(st, "FAILED") == 0      ? "failed"
                     : strcmp(st, "REJECTED") == 0    ? "failed"
                                                      : NULL;
    if (!to || !s_details_ok(details) || step < 0 ||
        (expected && (!json_is_integer(expected) || json_integer_value(expected) < 0))) {
        s_error(self, q, "InvalidRequest",
                !to        ? "status must be IN_PROGRESS, SUCCEEDED, FAILED or REJECTED"
                : step < 0 ? "stepTimeoutInMinutes must be 1 to 10080"
                : expected ? "expectedVersion must be a version number"
                           : "statusDetails must be a map of at most 10 strings",
                NULL);
        return 0;
    }
    char rollout[72];
    const char *action;
    if (!s_job_key(job_id, rollout, sizeof rollout, &action)) {
        s_error(self, q, "ResourceNotFound", "no such job execution", NULL);
        return 0;
    }
    int64_t now = mh_now_ms();
    const char *p[] = {q->device, rollout, action};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT " S_EXEC_COLS S_EXEC_FROM
                               " WHERE j.device_id = $1 AND j.rollout_id = $2 AND j.action = $3"
                               " AND j.status <> 'pending'"
                               " AND NOT (j.status = 'queued' AND j.last_sent_ms IS NULL)"
                               " FOR UPDATE OF j",
                               3, p, err, errlen);
    if (!res)
        return -1;
    if (PQntuples(res) == 0) {
        PQclear(res);
        s_error(self, q, "ResourceNotFound", "no such job execution", NULL);
        return 0;
    }
    const char *cur =
        ota_jobs_aws_status(PQgetvalue(res, 0, C_STATUS), PQgetvalue(res, 0, C_OUTCOME));
    json_t *state = json_pack("{s:s,s:I}", "status", cur, "versionNumber",
                              (json_int_t)ota_i64(res, 0, C_VERSION));
    const char *code = NULL, *why = NULL;
    if (expected && json_integer_value(expected) != ota_i64(res, 0, C_VERSION))
        code = "VersionMismatch", why = "expectedVersion does not match the execution's version";
    else if (s_terminal(cur))
        code = "InvalidStateTransition", why = "the job execution is already in a terminal state";
    if (code) {
        PQclear(res);
        s_error(self, q, code, why, state);
        return 0;
    }
    json_decref(state);
    bool terminal = strcmp(to, "installing") != 0;
    bool ok = s_move(self, res, 0, to, strcmp(st, "REJECTED") == 0 ? "REJECTED" : NULL, details,
                     step, now, err, errlen);
    PGresult *after = NULL, *pending = NULL;
    if (ok) {
        after = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                           "SELECT " S_EXEC_COLS S_EXEC_FROM " WHERE j.id = $1", 1,
                           (const char *[]){PQgetvalue(res, 0, C_ID)}, err, errlen);
        ok = after && PQntuples(after) == 1;
    }
    if (ok && terminal) {
        pending = s_pending(self, q->device, false, err, errlen);
        ok = pending != NULL;
    }
    PQclear(res);
    if (!ok) {
        if (after)
            PQclear(after);
        if (pending)
            PQclear(pending);
        return -1;
    }
    json_t *ex = s_execution(self, after, 0, false);
    json_t *body = json_object();
    if (!json_is_false(json_object_get(root, "includeJobExecutionState")))
        json_object_set_new(
            body, "executionState",
            json_pack("{s:O,s:O,s:O}", "status", json_object_get(ex, "status"), "statusDetails",
                      json_object_get(ex, "statusDetails") ? json_object_get(ex, "statusDetails")
                                                           : json_object(),
                      "versionNumber", json_object_get(ex, "versionNumber")));
    if (json_is_true(json_object_get(root, "includeJobDocument"))) {
        json_t *full = s_execution(self, after, 0, true);
        json_object_set(body, "jobDocument", json_object_get(full, "jobDocument"));
        json_decref(full);
    }
    json_decref(ex);
    PQclear(after);
    s_reply(self, q, true, body);
    if (pending) {
        /* the pending list changed; the next execution, if any, is new */
        ota_jobs_notify(self, q->device, pending, true);
        PQclear(pending);
    }
    return 0;
}

void ota_jobs_failed(ota_t *self, const char *device, const char *request)
{
    s_req_t q = {.device = device, .now_s = mh_now_ms() / 1000};
    snprintf(q.base, sizeof q.base, "$aws/things/%s/jobs/%s", device, request);
    s_error(self, &q, "InternalError", "the request could not be completed; try again", NULL);
}

int ota_jobs_request(ota_t *self, const char *device, const char *request, const uint8_t *payload,
                     size_t len)
{
    s_req_t q = {.device = device, .now_s = mh_now_ms() / 1000};
    snprintf(q.base, sizeof q.base, "$aws/things/%s/jobs/%s", device, request);
    while (len && payload[len - 1] == 0) /* the embedded SDK's trailing NUL */
        len--;
    json_error_t jerr;
    json_t *root = len ? mh_json_loadb((const char *)payload, len, JSON_REJECT_DUPLICATES,
                                       MH_JSON_MAX_DEPTH, &jerr)
                       : json_object();
    char err[512];
    int rc = 0;
    if (!root || !json_is_object(root)) {
        s_error(self, &q, "InvalidJson", root ? "the payload must be a JSON object" : jerr.text,
                NULL);
    } else if ((q.token = json_object_get(root, "clientToken")) &&
               (!json_is_string(q.token) || json_string_length(q.token) > 64)) {
        q.token = NULL;
        s_error(self, &q, "InvalidRequest", "clientToken must be a string of at most 64 bytes",
                NULL);
    } else if (strcmp(request, "get") == 0) {
        rc = s_get_list(self, &q, err, sizeof err);
    } else if (strcmp(request, "start-next") == 0) {
        rc = s_start_next(self, &q, root, err, sizeof err);
    } else {
        char job_id[80];
        const char *slash = strrchr(request, '/');
        size_t n = slash ? (size_t)(slash - request) : 0;
        snprintf(job_id, sizeof job_id, "%.*s", (int)n, request);
        if (slash && strcmp(slash, "/get") == 0)
            rc = s_describe(self, &q, job_id, root, err, sizeof err);
        else if (slash && strcmp(slash, "/update") == 0 && strcmp(job_id, "$next"))
            rc = s_update(self, &q, job_id, root, err, sizeof err);
        else
            s_error(self, &q, "InvalidTopic", "not a jobs request topic", NULL);
    }
    json_decref(root);
    if (rc < 0) {
        mh_log_limited(&self->rl_db, MH_LOG_WARN, "jobs request %s failed: %s", q.base, err);
        return mh_pg_lost(self->pg) ? -EIO : mh_pg_retryable(self->pg) ? -EAGAIN : -EINVAL;
    }
    return 0;
}
