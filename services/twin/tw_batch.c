/* twin: device messages applied in batches, one transaction each: decode,
 * lock and load the devices' rows, apply each message (tw_messages.c),
 * store, record the relay batch ids, acknowledge after COMMIT
 * (tw_internal.h). */
#include "tw_internal.h"

/* ---- device messages, in batches ---- */

typedef struct {
    Mh__DeviceMessage *msg;
    Mh__DeviceSeen *seen;
    Mh__DeviceSeen *present; /* the broker's list of connected devices */
    size_t batch, pos;       /* its relay batch, and its place in it */
} s_msg_t;

/* The relay batches of one transaction: which are new (applied now) and
 * which were applied before (acknowledged again, not applied). */
typedef struct {
    mh_relay_batch_t **v;
    size_t n;
    bool *fresh;
} s_relays_t;

static void s_msgs_free(s_msg_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i].msg)
            mh__device_message__free_unpacked(v[i].msg, NULL);
        if (v[i].seen)
            mh__device_seen__free_unpacked(v[i].seen, NULL);
        if (v[i].present)
            mh__device_seen__free_unpacked(v[i].present, NULL);
    }
    free(v);
}

static bool s_ids_valid(const Mh__DeviceSeen *s)
{
    for (size_t j = 0; j < s->n_device_ids; j++)
        if (!mh_device_id_valid(s->device_ids[j], strlen(s->device_ids[j])))
            return false;
    return true;
}

/* Decodes every message of the batches into *n_out entries. */
/* A fleet provisioning request from a claim certificate's client
 * ("claim:" and a device id), as the gateway forwards it. */
static bool s_provision_client(const Mh__DeviceMessage *m)
{
    size_t n = strlen(m->device_id);
    return m->kind >= MH__DEVICE_MESSAGE__KIND__PROVISION_CREATE &&
           m->kind <= MH__DEVICE_MESSAGE__KIND__PROVISION_REGISTER && n > 6 &&
           n <= MH_MAX_DEVICE_ID && strncmp(m->device_id, "claim:", 6) == 0 &&
           mh_device_id_valid(m->device_id + 6, n - 6) && strlen(m->shadow) <= 36;
}

static s_msg_t *s_decode(tw_t *self, mh_relay_batch_t **batches, size_t nb, size_t *n_out)
{
    size_t n = 0;
    for (size_t k = 0; k < nb; k++)
        n += batches[k]->n;
    s_msg_t *v = calloc(n + 1, sizeof *v);
    if (!v)
        return NULL;
    for (size_t k = 0, i = 0; k < nb; k++)
        for (size_t j = 0; j < batches[k]->n; j++, i++)
            v[i].batch = k, v[i].pos = j;
    *n_out = n;
    for (size_t i = 0; i < n; i++) {
        zframe_t *f = batches[v[i].batch]->messages[v[i].pos];
        Mh__Envelope *env = f ? mh_envelope_unpack(f) : NULL;
        if (env && strcmp(env->type, "device.message") == 0)
            v[i].msg = mh__device_message__unpack(NULL, env->body.len, env->body.data);
        else if (env && strcmp(env->type, "device.seen") == 0)
            v[i].seen = mh__device_seen__unpack(NULL, env->body.len, env->body.data);
        else if (env && strcmp(env->type, "broker.present") == 0)
            v[i].present = mh__device_seen__unpack(NULL, env->body.len, env->body.data);
        if (v[i].msg && !mh_device_id_valid(v[i].msg->device_id, strlen(v[i].msg->device_id)) &&
            !s_provision_client(v[i].msg)) {
            mh__device_message__free_unpacked(v[i].msg, NULL);
            v[i].msg = NULL;
        }
        if (v[i].seen && !s_ids_valid(v[i].seen)) {
            mh__device_seen__free_unpacked(v[i].seen, NULL);
            v[i].seen = NULL;
        }
        if (v[i].present && !s_ids_valid(v[i].present)) {
            mh__device_seen__free_unpacked(v[i].present, NULL);
            v[i].present = NULL;
        }
        if (!v[i].msg && !v[i].seen && !v[i].present) {
            mh_counter_inc(self->m_rejected[TW_R_MALFORMED]);
            mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                           "malformed message on the device socket, ignoring");
        } else if (v[i].msg && v[i].msg->kind < 4) {
            mh_counter_inc(self->m_messages[v[i].msg->kind]);
        } else if (v[i].msg && v[i].msg->kind >= MH__DEVICE_MESSAGE__KIND__SHADOW_GET &&
                   v[i].msg->kind <= MH__DEVICE_MESSAGE__KIND__SHADOW_DELETE) {
            mh_counter_inc(self->m_messages[v[i].msg->kind]); /* 5..7 */
        } else if (v[i].seen) {
            mh_counter_inc(self->m_messages[4]);
        }
        mh_envelope_free(&env);
    }
    return v;
}

/* Loads and locks the rows of every device the batch names, in id order. */
static bool s_load(tw_t *self, tw_batch_t *b, s_msg_t *v, size_t n, char *err, size_t errlen)
{
    zhashx_t *ids = zhashx_new();
    for (size_t i = 0; i < n; i++) {
        if (v[i].msg && !s_provision_client(v[i].msg))
            zhashx_insert(ids, v[i].msg->device_id, (void *)1);
        for (int k = 0; k < 2; k++) {
            const Mh__DeviceSeen *s = k ? v[i].present : v[i].seen;
            for (size_t j = 0; s && j < s->n_device_ids; j++)
                zhashx_insert(ids, s->device_ids[j], (void *)1);
        }
    }
    zlistx_t *keys = zhashx_keys(ids);
    size_t nk = zlistx_size(keys), k = 0;
    const char **arr = calloc(nk + 1, sizeof *arr);
    for (const char *key = zlistx_first(keys); key; key = zlistx_next(keys))
        arr[k++] = key;
    PGresult *res = mh_pg_exec_ids(self->pg,
                                   "SELECT id, doc::text, version, online, online_source, conn_ms,"
                                   " last_seen_ms, firmware, present_ms FROM twin.devices"
                                   " WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
                                   arr, nk, NULL, err, errlen);
    free(arr);
    zlistx_destroy(&keys);
    zhashx_destroy(&ids);
    if (!res)
        return false;
    for (int r = 0; r < PQntuples(res); r++) {
        tw_dev_t *d = calloc(1, sizeof *d);
        snprintf(d->id, sizeof d->id, "%s", PQgetvalue(res, r, 0));
        d->doc_text = strdup(PQgetvalue(res, r, 1));
        d->version = tw_i64(res, r, 2);
        d->online = strcmp(PQgetvalue(res, r, 3), "t") == 0;
        snprintf(d->source, sizeof d->source, "%s", PQgetvalue(res, r, 4));
        d->conn_ms = tw_i64(res, r, 5);
        d->last_seen = tw_i64(res, r, 6);
        d->firmware = PQgetisnull(res, r, 7) ? NULL : strdup(PQgetvalue(res, r, 7));
        d->present_ms = tw_i64(res, r, 8);
        zhashx_insert(b->devs, d->id, d);
    }
    PQclear(res);
    return true;
}

/* Writes back every changed row in one statement, then the acks. */
static bool s_store(tw_t *self, tw_batch_t *b, char *err, size_t errlen)
{
    json_t *rows = json_array();
    for (tw_dev_t *d = zhashx_first(b->devs); d; d = zhashx_next(b->devs)) {
        if (!d->row_dirty)
            continue;
        json_t *row = json_object();
        json_object_set_new(row, "id", json_string(d->id));
        json_object_set(row, "doc", d->doc_dirty ? d->doc : json_null());
        json_object_set_new(row, "version", json_integer(d->version));
        json_object_set_new(row, "firmware", d->firmware ? json_string(d->firmware) : json_null());
        json_object_set_new(row, "online", json_boolean(d->online));
        json_object_set_new(row, "source", json_string(d->source));
        json_object_set_new(row, "conn_ms", json_integer(d->conn_ms));
        json_object_set_new(row, "last_seen",
                            d->last_seen ? json_integer(d->last_seen) : json_null());
        json_object_set_new(row, "present",
                            d->present_ms ? json_integer(d->present_ms) : json_null());
        json_array_append_new(rows, row);
    }
    bool ok = true;
    if (json_array_size(rows)) {
        char *text = tw_dumps(rows);
        const char *p[] = {text};
        ok = mh_pg_ok(self->pg,
                      "UPDATE twin.devices d SET doc = COALESCE(u.doc, d.doc), version = u.version,"
                      " firmware = u.firmware, online = u.online, online_source = u.source,"
                      " conn_ms = u.conn_ms, last_seen_ms = u.last_seen, present_ms = u.present"
                      " FROM jsonb_to_recordset($1::jsonb) AS u(id text, doc jsonb, version bigint,"
                      " firmware text, online boolean, source text, conn_ms bigint,"
                      " last_seen bigint, present bigint) WHERE d.id = u.id",
                      1, p, err, errlen);
        free(text);
    }
    json_decref(rows);
    if (ok && json_array_size(b->conn)) {
        char *text = tw_dumps(b->conn);
        const char *p[] = {text};
        ok = mh_pg_ok(self->pg,
                      "INSERT INTO twin.conn_log (device_id, ts_ms, online, reason)"
                      " SELECT id, ts, online, reason FROM jsonb_to_recordset($1::jsonb)"
                      " AS u(id text, ts bigint, online boolean, reason text)",
                      1, p, err, errlen);
        free(text);
    }
    if (ok && json_array_size(b->acks)) {
        char *text = tw_dumps(b->acks), now_s[32];
        snprintf(now_s, sizeof now_s, "%" PRId64, b->now);
        const char *p[] = {text, now_s};
        PGresult *res = mh_pg_exec(
            self->pg, PGRES_TUPLES_OK,
            /* a command handed to a gateway may be answered before the
             * gateway's acknowledgement has marked it sent */
            "UPDATE twin.commands c SET status = u.status, result = u.result, completed_ms = $2,"
            " sent_ms = COALESCE(c.sent_ms, $2)"
            " FROM jsonb_to_recordset($1::jsonb) AS u(id text, device_id text, status text,"
            " result jsonb) WHERE c.id = u.id AND c.device_id = u.device_id"
            " AND (c.status = 'sent' OR (c.status = 'queued' AND c.handed_ms IS NOT NULL))"
            " RETURNING c.device_id, c.id, c.name, c.status",
            2, p, err, errlen);
        free(text);
        ok = res != NULL;
        if (res) {
            int rows_n = PQntuples(res);
            for (int r = 0; r < rows_n; r++) {
                tw_out_command_event(&b->out, PQgetvalue(res, r, 0), PQgetvalue(res, r, 1),
                                     PQgetvalue(res, r, 2), PQgetvalue(res, r, 3));
                mh_counter_inc(self->m_commands[tw_out_status_index(PQgetvalue(res, r, 3))]);
            }
            if ((size_t)rows_n < json_array_size(b->acks)) {
                mh_counter_add(self->m_rejected[TW_R_UNKNOWN_COMMAND],
                               json_array_size(b->acks) - (size_t)rows_n);
                mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                               "%zu command acks named no command waiting for an ack (unknown id,"
                               " or already finished); ignored",
                               json_array_size(b->acks) - (size_t)rows_n);
            }
            PQclear(res);
        }
    }
    return ok;
}

/* The broker had these devices connected at ts_ms (motehub_presence.h):
 * the sweep takes a device online by its status offline when the broker
 * has not had it for a while (tw_sweep). */
static bool s_presence_heard(tw_t *self, int64_t now, char *err, size_t errlen)
{
    char now_s[32];
    snprintf(now_s, sizeof now_s, "%" PRId64, now);
    const char *p[] = {now_s};
    return mh_pg_ok(self->pg,
                    "INSERT INTO twin.presence VALUES (1, $1::bigint) ON CONFLICT (k) DO UPDATE"
                    " SET at_ms = GREATEST(twin.presence.at_ms, EXCLUDED.at_ms)",
                    1, p, err, errlen);
}

/* Records the relay batches' ids in the transaction that applies them:
 * rl->fresh says which were not applied before. A second copy of one id in
 * the same set (a re-send read with the original) is not fresh. With
 * `claim` false it only looks (the one-message-at-a-time path). */
static bool s_claim(tw_t *self, s_relays_t *rl, bool claim, int64_t now, char *err, size_t errlen)
{
    const char **ids = calloc(rl->n + 1, sizeof *ids);
    if (!ids) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    for (size_t k = 0; k < rl->n; k++)
        ids[k] = rl->v[k]->batch_id;
    char now_s[32], *lit = mh_pg_text_array(ids, rl->n);
    snprintf(now_s, sizeof now_s, "%" PRId64, now);
    const char *p[] = {lit, now_s};
    PGresult *res = !lit ? NULL
                    : claim
                        ? mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                                     "INSERT INTO twin.relay_batches (batch_id, at_ms)"
                                     " SELECT unnest($1::text[]), $2::bigint ON CONFLICT DO NOTHING"
                                     " RETURNING batch_id",
                                     2, p, err, errlen)
                        : mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                                     "SELECT b FROM unnest($1::text[]) b WHERE NOT EXISTS"
                                     " (SELECT 1 FROM twin.relay_batches r WHERE r.batch_id = b)",
                                     1, p, err, errlen);
    free(lit);
    free(ids);
    if (!res)
        return false;
    zhashx_t *fresh = zhashx_new();
    for (int i = 0; i < PQntuples(res); i++)
        zhashx_insert(fresh, PQgetvalue(res, i, 0), (void *)1);
    for (size_t k = 0; k < rl->n; k++) {
        rl->fresh[k] = zhashx_lookup(fresh, rl->v[k]->batch_id) != NULL;
        zhashx_delete(fresh, rl->v[k]->batch_id); /* the first copy only */
        if (!rl->fresh[k])
            mh_counter_inc(self->m_relay_duplicates);
    }
    zhashx_destroy(&fresh);
    PQclear(res);
    return true;
}

/* One attempt at a batch: everything in one transaction. With `rl`, the
 * relay batches' ids are recorded in it and messages of batches applied
 * before are skipped. */
static int s_batch_try(tw_t *self, s_msg_t *v, size_t n, s_relays_t *rl, tw_out_t *out, char *err,
                       size_t errlen)
{
    tw_batch_t b = {
        .now = mh_now_ms(), .acks = json_array(), .conn = json_array(), .m_online = self->m_online};
    b.devs = zhashx_new();
    zhashx_set_destructor(b.devs, tw_dev_free);
    b.out = *out;
    /* device rows held elsewhere past 250 ms: kept and tried again after
     * the loop's other work (tw_service.c says why) */
    bool ok = mh_pg_begin(self->pg, err, errlen) &&
              mh_pg_ok(self->pg, "SET LOCAL lock_timeout = '250ms'", 0, NULL, err, errlen) &&
              (!rl || s_claim(self, rl, true, b.now, err, errlen)) &&
              s_load(self, &b, v, n, err, errlen);
    if (ok) {
        for (size_t i = 0; i < n; i++) {
            if (rl && !rl->fresh[v[i].batch])
                continue;
            if (v[i].present) {
                tw_msg_present(&b, v[i].present);
                continue;
            }
            if (v[i].seen) {
                for (size_t j = 0; j < v[i].seen->n_device_ids; j++) {
                    tw_dev_t *d = zhashx_lookup(b.devs, v[i].seen->device_ids[j]);
                    int64_t ts =
                        j < v[i].seen->n_seen_ms ? v[i].seen->seen_ms[j] : v[i].seen->ts_ms;
                    if (d)
                        tw_msg_seen(&b, d, ts);
                    else
                        mh_counter_inc(self->m_rejected[TW_R_UNREGISTERED]);
                }
                continue;
            }
            Mh__DeviceMessage *m = v[i].msg;
            if (!m)
                continue;
            if (s_provision_client(m)) {
                if (!tw_msg_provision(self, &b, m, err, errlen)) {
                    ok = false;
                    break;
                }
                continue;
            }
            tw_dev_t *d = zhashx_lookup(b.devs, m->device_id);
            if (!d) {
                mh_counter_inc(self->m_rejected[TW_R_UNREGISTERED]);
                mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                               "message from unregistered device %s ignored", m->device_id);
                continue;
            }
            if (m->kind == MH__DEVICE_MESSAGE__KIND__STATUS) {
                tw_msg_status(self, &b, d, m);
                continue;
            }
            tw_msg_seen(&b, d, m->received_ms);
            if (m->kind == MH__DEVICE_MESSAGE__KIND__TWIN_GET)
                tw_msg_twin_get(self, &b, d, m);
            else if (m->kind == MH__DEVICE_MESSAGE__KIND__TWIN_UPDATE)
                tw_msg_twin_update(self, &b, d, m);
            else if (m->kind == MH__DEVICE_MESSAGE__KIND__COMMAND_ACK)
                tw_msg_command_ack(self, &b, d, m);
            else if (m->kind >= MH__DEVICE_MESSAGE__KIND__SHADOW_GET &&
                     m->kind <= MH__DEVICE_MESSAGE__KIND__SHADOW_DELETE &&
                     !tw_msg_shadow(self, &b, d, m, err, errlen)) {
                ok = false;
                break;
            }
        }
    }
    if (ok) {
        /* Devices that came online get their delta and their queue. */
        size_t cap = zhashx_size(b.devs), nc = 0;
        const char **online = calloc(cap + 1, sizeof *online);
        for (tw_dev_t *d = zhashx_first(b.devs); d; d = zhashx_next(b.devs)) {
            if (!d->came_online)
                continue;
            online[nc++] = d->id;
            tw_maybe_delta(&b.out, d->id, NULL, tw_dev_doc(d), false);
        }
        ok = (!b.presence || s_presence_heard(self, b.now, err, errlen)) &&
             s_store(self, &b, err, errlen) &&
             tw_deliver(self, &b.out, online, nc, b.now, err, errlen) &&
             mh_pg_commit(self->pg, err, errlen);
        free(online);
    }
    if (!ok)
        mh_pg_rollback(self->pg);
    *out = b.out;
    zhashx_destroy(&b.devs);
    json_decref(b.acks);
    json_decref(b.conn);
    return ok                          ? 0
           : mh_pg_lost(self->pg)      ? -EIO
           : mh_pg_retryable(self->pg) ? -EAGAIN
           : mh_pg_busy(self->pg)      ? -EBUSY
                                       : -EINVAL;
}

/* Acknowledges every relay batch: its effect is committed, or was before. */
static void s_ack(tw_t *self, s_relays_t *rl)
{
    for (size_t k = 0; k < rl->n; k++)
        mh_relay_in_ack(self->pull, rl->v[k], !rl->fresh[k]);
}

/* Records the batches' ids in a transaction of their own and acknowledges
 * them: for batches handled (or refused) message by message. 0, or -EIO
 * (kept, tried again). */
static int s_settle(tw_t *self, s_relays_t *rl, char *err, size_t errlen)
{
    if (!(mh_pg_begin(self->pg, err, errlen) && s_claim(self, rl, true, mh_now_ms(), err, errlen) &&
          mh_pg_commit(self->pg, err, errlen))) {
        mh_pg_rollback(self->pg);
        return -EIO;
    }
    s_ack(self, rl);
    return 0;
}

/* Handles a batch; returns -EIO when the database is away or -EBUSY when
 * another session holds its devices' rows (either way the caller keeps the
 * batch and tries again), else 0. */
int tw_batch(tw_t *self, mh_relay_batch_t **batches, size_t nb)
{
    size_t n = 0;
    s_msg_t *v = s_decode(self, batches, nb, &n);
    s_relays_t rl = {batches, nb, calloc(nb + 1, sizeof(bool))};
    if (!v || !rl.fresh) {
        free(rl.fresh);
        s_msgs_free(v, n);
        return -EIO; /* out of memory: kept, tried again */
    }
    tw_out_t out;
    tw_out_init(&out);
    char err[512];
    int64_t t0 = mh_mono_ms();
    int rc = -EAGAIN;
    for (int attempt = 0; attempt < 5 && rc == -EAGAIN; attempt++) {
        if (attempt)
            mh_counter_inc(self->m_retries);
        tw_out_clear(&out);
        rc = s_batch_try(self, v, n, &rl, &out, err, sizeof err);
    }
    if (rc == -EINVAL && n > 1) {
        /* One message the database refuses must not hold back the rest:
         * each is applied alone, then the batch ids recorded. A crash in
         * between may apply some of them twice (at least once, on this
         * rare path only). */
        tw_out_clear(&out);
        rc = s_claim(self, &rl, false, mh_now_ms(), err, sizeof err) ? 0 : -EIO;
        for (size_t i = 0; i < n && rc != -EIO; i++) {
            if (!rl.fresh[v[i].batch])
                continue;
            /* rows another replica holds: wait for them here (this path is
             * rare; a stuck holder's session ends within 5 s) */
            for (int busy = 0; busy < 40; busy++) {
                rc = s_batch_try(self, &v[i], 1, NULL, &out, err, sizeof err);
                if (rc != -EBUSY)
                    break;
                tw_out_clear(&out);
            }
            if (rc == -EBUSY)
                rc = -EIO;
            if (rc == 0)
                tw_out_flush(self, &out);
            else if (rc != -EIO) {
                mh_counter_inc(self->m_db_errors);
                mh_log_limited(&self->rl_db, MH_LOG_ERROR, "device message refused: %s", err);
                tw_out_clear(&out);
            }
        }
        rc = rc == -EIO ? -EIO : s_settle(self, &rl, err, sizeof err);
    } else if (rc == 0) {
        mh_counter_inc(self->m_commits);
        mh_histogram_observe_ms(self->m_batch_time, mh_mono_ms() - t0);
        tw_out_flush(self, &out);
        s_ack(self, &rl);
    } else if (rc == -EBUSY) {
        /* rows another replica holds past lock_timeout: kept, tried again
         * after the loop has served the API and its other sockets */
        mh_counter_inc(self->m_retries);
        mh_log_limited(&self->rl_db, MH_LOG_WARN,
                       "device messages wait for device rows another session has held past"
                       " lock_timeout; trying again");
    } else {
        mh_counter_inc(self->m_db_errors);
        mh_log_limited(&self->rl_db, MH_LOG_ERROR, "device messages not applied: %s", err);
        if (rc == -EINVAL) /* refused by the database: dropped, counted, settled */
            rc = s_settle(self, &rl, err, sizeof err);
        else if (rc == -EAGAIN) /* conflicts all five times: the gateway sends it again */
            rc = 0;
    }
    tw_out_destroy(&out);
    s_msgs_free(v, n);
    free(rl.fresh);
    return rc == -EIO || rc == -EBUSY ? rc : 0;
}
