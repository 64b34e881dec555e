/* ota: jobs a gateway has published, and devices' OTA status messages,
 * applied in batches (ota_internal.h). */
#include "ota_internal.h"

/* ---- jobs published: sent ---- */

void ota_jobs_published(void *ud, const char *job)
{
    ota_t *self = ud;
    zlist_append(self->published, (void *)job); /* the list copies (autofree) */
}

void ota_jobs_sent(ota_t *self)
{
    if (!zlist_size(self->published) || !mh_pg_ready(self->pg))
        return;
    char now_s[32], err[512];
    ota_fmt_i64(now_s, sizeof now_s, mh_now_ms());
    /* a device quick to answer may have moved it on already: it stays so */
    PGresult *res =
        mh_pg_exec_list(self->pg,
                        "UPDATE ota.jobs SET status = 'sent',"
                        " sent_ms = COALESCE(sent_ms, $2::bigint)"
                        " WHERE id = ANY($1::text[]) AND status = 'queued'"
                        " RETURNING rollout_id, id, device_id, action, to_version, wave",
                        self->published, now_s, err, sizeof err);
    if (!res) {
        if (!mh_pg_retryable(self->pg)) {
            mh_counter_inc(self->m_db_errors);
            mh_log_limited(&self->rl_db, MH_LOG_ERROR, "marking jobs sent failed: %s", err);
        }
        return; /* kept: tried again next time */
    }
    zlist_purge(self->published);
    for (int r = 0; r < PQntuples(res); r++) {
        bool install = strcmp(PQgetvalue(res, r, 3), "install") == 0;
        mh_counter_inc(self->m_jobs_sent[install ? 0 : 1]);
        ota_job_event(self, PQgetvalue(res, r, 0), PQgetvalue(res, r, 1), PQgetvalue(res, r, 2),
                      PQgetvalue(res, r, 3), "sent", PQgetvalue(res, r, 4), (int)ota_i64(res, r, 5),
                      NULL);
    }
    PQclear(res);
    ota_out_flush(self);
}

/* ---- status messages from devices ---- */

typedef struct {
    char job[72], device[MH_MAX_DEVICE_ID + 1], state[16], error[1025];
    int rank, progress; /* progress -1 = absent */
    int64_t ts;
} s_status_t;

static void s_free_item(void **item)
{
    free(*item);
    *item = NULL;
}

static void s_free_message(void **item)
{
    if (*item)
        mh__device_message__free_unpacked(*item, NULL);
    *item = NULL;
}

/* Adds one status message to `by_job` (the newest state of each job), or
 * an AWS IoT jobs request to `requests` (in order). */
static void s_take(zhashx_t *by_job, zlistx_t *requests, const zframe_t *f, size_t *bad)
{
    Mh__Envelope *env = mh_envelope_unpack(f);
    Mh__DeviceMessage *m = NULL;
    if (env && strcmp(env->type, "device.message") == 0)
        m = mh__device_message__unpack(NULL, env->body.len, env->body.data);
    ota_status_msg_t sm;
    if (m && m->kind == MH__DEVICE_MESSAGE__KIND__JOBS_REQUEST &&
        mh_device_id_valid(m->device_id, strlen(m->device_id)) && m->shadow) {
        zlistx_add_end(requests, m); /* the list owns it now */
        m = NULL;
    } else if (!m || m->kind != MH__DEVICE_MESSAGE__KIND__OTA_STATUS ||
               !mh_device_id_valid(m->device_id, strlen(m->device_id)) ||
               ota_status_parse((const char *)m->payload.data, m->payload.len, &sm) < 0) {
        (*bad)++;
    } else {
        s_status_t *st = zhashx_lookup(by_job, sm.job);
        if (!st || sm.rank >= st->rank) {
            s_status_t *nw = calloc(1, sizeof *nw);
            if (nw) {
                snprintf(nw->job, sizeof nw->job, "%s", sm.job);
                snprintf(nw->device, sizeof nw->device, "%s", m->device_id);
                snprintf(nw->state, sizeof nw->state, "%s", sm.state);
                snprintf(nw->error, sizeof nw->error, "%s", sm.error);
                nw->rank = sm.rank;
                nw->progress = sm.progress;
                nw->ts = m->received_ms ? m->received_ms : mh_now_ms();
                zhashx_update(by_job, sm.job, nw);
            }
        }
    }
    if (m)
        mh__device_message__free_unpacked(m, NULL);
    mh_envelope_free(&env);
}

/* Runs requests [from, to) of `requests` in one transaction. */
static int s_requests_txn(ota_t *self, Mh__DeviceMessage **v, size_t from, size_t to)
{
    char err[512];
    if (!mh_pg_begin(self->pg, err, sizeof err))
        return mh_pg_lost(self->pg) ? -EIO : -EAGAIN;
    int rc = 0;
    for (size_t i = from; i < to && rc == 0; i++)
        rc = ota_jobs_request(self, v[i]->device_id, v[i]->shadow, v[i]->payload.data,
                              v[i]->payload.len);
    if (rc == 0 && !mh_pg_commit(self->pg, err, sizeof err))
        rc = mh_pg_lost(self->pg) ? -EIO : -EAGAIN;
    if (rc < 0) {
        mh_pg_rollback(self->pg);
        ota_out_discard(self);
    }
    return rc;
}

/* The AWS IoT jobs requests of a batch (ota_jobs.c), in one transaction:
 * one commit for all. A conflict is tried again; a request that keeps
 * failing is answered InternalError on its own, the others applied. */
static int s_requests(ota_t *self, zlistx_t *requests)
{
    size_t n = zlistx_size(requests), k = 0;
    if (!n)
        return 0;
    Mh__DeviceMessage **v = calloc(n, sizeof *v);
    if (!v)
        return -EAGAIN;
    for (Mh__DeviceMessage *m = zlistx_first(requests); m; m = zlistx_next(requests))
        v[k++] = m;
    int rc, tries = 0;
    do
        rc = s_requests_txn(self, v, 0, n);
    while (rc == -EAGAIN && ++tries < 5);
    for (size_t i = 0; rc < 0 && rc != -EIO && i < n; i++) {
        int one = s_requests_txn(self, v, i, i + 1);
        if (one == -EIO) {
            rc = -EIO;
            break;
        }
        if (one < 0) {
            mh_counter_inc(self->m_db_errors);
            ota_jobs_failed(self, v[i]->device_id, v[i]->shadow);
        }
    }
    free(v);
    if (rc == -EIO)
        return rc;
    ota_out_flush(self);
    return 0;
}

/* Applies relay batches of status messages in one statement. 0, -EAGAIN
 * (retry), -EIO (database lost: keep the messages).
 *
 * Applying a batch twice (a gateway's re-send after a lost acknowledgement)
 * changes nothing: a job's state only moves forward (the rank check), a
 * finished job takes no more statuses, and events go only for rows the
 * UPDATE changed. So ota needs no record of batch ids. */
static int s_status_batch(ota_t *self, mh_relay_batch_t **batches, size_t nb)
{
    zhashx_t *by_job = zhashx_new();
    zhashx_set_destructor(by_job, s_free_item);
    zlistx_t *requests = zlistx_new();
    zlistx_set_destructor(requests, s_free_message);
    size_t bad = 0;
    for (size_t k = 0; k < nb; k++)
        for (size_t j = 0; j < batches[k]->n; j++)
            s_take(by_job, requests, batches[k]->messages[j], &bad);
    int rc = s_requests(self, requests);
    zlistx_destroy(&requests);
    if (rc < 0) {
        zhashx_destroy(&by_job);
        return rc;
    }
    if (bad) {
        mh_counter_add(self->m_status[2], bad);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "%zu malformed OTA status messages ignored",
                       bad);
    }
    json_t *arr = json_array();
    for (s_status_t *st = zhashx_first(by_job); st; st = zhashx_next(by_job))
        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:s,s:o,s:o,s:I,s:i}", "id", st->job, "device", st->device,
                           "state", st->state, "progress",
                           st->progress >= 0 ? json_integer(st->progress) : json_null(), "error",
                           *st->error ? json_string(st->error) : json_null(), "ts",
                           (json_int_t)st->ts, "rk", st->rank));
    size_t distinct = zhashx_size(by_job);
    zhashx_destroy(&by_job);
    if (!distinct) {
        json_decref(arr);
        return 0;
    }
    char *text = ota_dumps(arr);
    json_decref(arr);
    char err[512];
    const char *p[] = {text};
    PGresult *res = mh_pg_exec(
        self->pg, PGRES_TUPLES_OK,
        "UPDATE ota.jobs j SET status = u.state, sent_ms = COALESCE(j.sent_ms, u.ts),"
        " progress = GREATEST(j.progress, COALESCE(u.progress, j.progress)),"
        " error = COALESCE(u.error, j.error), answered_ms = COALESCE(j.answered_ms, u.ts),"
        " finished_ms = CASE WHEN u.rk = 3 THEN u.ts ELSE j.finished_ms END"
        " FROM jsonb_to_recordset($1::jsonb) AS u(id text, device text, state text,"
        "   progress int, error text, ts bigint, rk int)"
        " WHERE j.id = u.id AND j.device_id = u.device"
        /* a job handed to a gateway may be answered before the gateway's
         * acknowledgement has marked it sent */
        " AND (j.status IN ('sent', 'downloading', 'installing')"
        "   OR (j.status = 'queued' AND j.last_sent_ms IS NOT NULL))"
        " AND u.rk >= CASE j.status WHEN 'downloading' THEN 1 WHEN 'installing' THEN 2 ELSE 0 END"
        " RETURNING j.id, j.rollout_id, j.device_id, j.action, j.status, j.to_version, j.wave,"
        " j.error",
        1, p, err, sizeof err);
    free(text);
    if (!res) {
        if (mh_pg_lost(self->pg))
            return -EIO;
        if (mh_pg_retryable(self->pg))
            return -EAGAIN;
        mh_counter_inc(self->m_db_errors);
        mh_log_limited(&self->rl_db, MH_LOG_ERROR, "OTA status batch refused: %s", err);
        return 0;
    }
    int rows = PQntuples(res);
    for (int r = 0; r < rows; r++)
        ota_job_event(self, PQgetvalue(res, r, 1), PQgetvalue(res, r, 0), PQgetvalue(res, r, 2),
                      PQgetvalue(res, r, 3), PQgetvalue(res, r, 4), PQgetvalue(res, r, 5),
                      (int)ota_i64(res, r, 6),
                      PQgetisnull(res, r, 7) ? NULL : PQgetvalue(res, r, 7));
    mh_counter_add(self->m_status[0], (uint64_t)rows);
    if ((size_t)rows < distinct)
        mh_counter_add(self->m_status[1], distinct - (size_t)rows);
    PQclear(res);
    ota_out_flush(self);
    return 0;
}

/* Reads relay batches, up to 1,000 status messages, unless some are still
 * held. */
void ota_read_status(ota_t *self)
{
    while (self->npending < 1000 && self->npending_msgs < 1000 &&
           (zsock_events(self->pull) & ZMQ_POLLIN)) {
        mh_relay_batch_t *b = mh_relay_in_recv(self->pull);
        if (!b) {
            mh_counter_inc(self->m_status[2]);
            mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                           "malformed frame on the status socket, ignoring");
            continue;
        }
        self->pending[self->npending++] = b;
        self->npending_msgs += b->n;
    }
}

/* Applies the held messages; keeps them while the database is away. */
void ota_run_status(ota_t *self)
{
    if (!self->npending || !mh_pg_ready(self->pg))
        return;
    int rc, tries = 0;
    do
        rc = s_status_batch(self, self->pending, self->npending);
    while (rc == -EAGAIN && ++tries < 5);
    if (rc == -EIO) {
        mh_log_limited(&self->rl_db, MH_LOG_WARN,
                       "database lost; holding %zu OTA status messages until it is back",
                       self->npending_msgs);
        return;
    }
    /* applied, or refused and counted (a re-send would be refused again);
     * after 5 conflicts not acknowledged: the gateway sends them again */
    for (size_t i = 0; i < self->npending; i++) {
        if (rc == 0)
            mh_relay_in_ack(self->pull, self->pending[i], false);
        mh_relay_batch_destroy(&self->pending[i]);
    }
    self->npending = self->npending_msgs = 0;
}
