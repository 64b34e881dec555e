/* ota: the rollout engine — per-wave counts, rollout JSON, advancing a
 * rollout one transaction at a time with its row locked (ota_internal.h). */
#include "ota_internal.h"

/* ---- per-wave counts ---- */

typedef struct {
    ota_wave_t w[OTA_MAX_WAVES];
    double percent[OTA_MAX_WAVES];
    int64_t size[OTA_MAX_WAVES];
    int64_t sent[OTA_MAX_WAVES], rolled_back[OTA_MAX_WAVES], rb_queued, rb_in_flight, rb_succeeded,
        rb_failed, in_flight_total;
    /* succeeded within the health gate's window: still observed, and not
     * counted in w[].succeeded (a device counts once its window passed) */
    int64_t observing[OTA_MAX_WAVES];
    int n;
} s_counts_t;

/* `observed_after`: installs that succeeded after it are still in their
 * health window (0: no health gate) */
static bool s_load_counts(ota_t *self, const char *id, int64_t observed_after, s_counts_t *c,
                          char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    char after_s[32];
    ota_fmt_i64(after_s, sizeof after_s, observed_after);
    const char *p[] = {id, after_s};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT idx, percent, size, started_ms, ok_ms FROM ota.waves"
                               " WHERE rollout_id = $1 ORDER BY idx",
                               1, p, err, errlen);
    if (!res)
        return false;
    for (int r = 0; r < PQntuples(res) && r < OTA_MAX_WAVES; r++) {
        c->percent[r] = strtod(PQgetvalue(res, r, 1), NULL);
        c->size[r] = ota_i64(res, r, 2);
        c->w[r].started_ms = ota_i64(res, r, 3);
        c->w[r].ok_ms = ota_i64(res, r, 4);
        c->n = r + 1;
    }
    PQclear(res);
    res = mh_pg_exec(
        self->pg, PGRES_TUPLES_OK,
        "SELECT wave,"
        " count(*) FILTER (WHERE action = 'install'),"
        " count(*) FILTER (WHERE action = 'install' AND status = 'pending'),"
        /* a job handed to a gateway and not yet acknowledged is out */
        " count(*) FILTER (WHERE action = 'install' AND status = 'queued'"
        "   AND last_sent_ms IS NULL),"
        " count(*) FILTER (WHERE action = 'install' AND (status IN ('sent', 'downloading',"
        "   'installing') OR (status = 'queued' AND last_sent_ms IS NOT NULL))),"
        " count(*) FILTER (WHERE action = 'install' AND status = 'succeeded'),"
        " count(*) FILTER (WHERE action = 'install' AND status = 'failed'),"
        " count(*) FILTER (WHERE action = 'install' AND status = 'timed_out'),"
        " count(*) FILTER (WHERE action = 'install' AND status = 'cancelled'),"
        " count(*) FILTER (WHERE action = 'install' AND sent_ms IS NOT NULL),"
        " count(*) FILTER (WHERE action = 'rollback' AND sent_ms IS NOT NULL),"
        " count(*) FILTER (WHERE action = 'rollback' AND status = 'queued'"
        "   AND last_sent_ms IS NULL),"
        " count(*) FILTER (WHERE action = 'rollback' AND (status IN ('sent', 'downloading',"
        "   'installing') OR (status = 'queued' AND last_sent_ms IS NOT NULL))),"
        " count(*) FILTER (WHERE action = 'rollback' AND status = 'succeeded'),"
        " count(*) FILTER (WHERE action = 'rollback' AND status IN ('failed', 'timed_out')),"
        " count(*) FILTER (WHERE action = 'install' AND status = 'succeeded'"
        "   AND $2::bigint > 0 AND finished_ms > $2::bigint)"
        " FROM ota.jobs WHERE rollout_id = $1 GROUP BY wave",
        2, p, err, errlen);
    if (!res)
        return false;
    for (int r = 0; r < PQntuples(res); r++) {
        int k = (int)ota_i64(res, r, 0);
        if (k < 0 || k >= OTA_MAX_WAVES)
            continue;
        ota_wave_t *w = &c->w[k];
        w->targeted = ota_i64(res, r, 1);
        w->pending = ota_i64(res, r, 2);
        w->queued = ota_i64(res, r, 3);
        w->in_flight = ota_i64(res, r, 4);
        w->succeeded = ota_i64(res, r, 5);
        w->failed = ota_i64(res, r, 6);
        w->timed_out = ota_i64(res, r, 7);
        w->cancelled = ota_i64(res, r, 8);
        c->sent[k] = ota_i64(res, r, 9);
        c->rolled_back[k] = ota_i64(res, r, 10);
        c->rb_queued += ota_i64(res, r, 11);
        c->rb_in_flight += ota_i64(res, r, 12);
        c->rb_succeeded += ota_i64(res, r, 13);
        c->rb_failed += ota_i64(res, r, 14);
        c->in_flight_total += w->in_flight;
        c->observing[k] = ota_i64(res, r, 15);
        w->succeeded -= c->observing[k];
    }
    PQclear(res);
    return true;
}

/* ---- rollout JSON ---- */

json_t *ota_rollout_json(ota_t *self, PGresult *res, int r, bool with_waves)
{
    json_error_t jerr;
    json_t *o = json_loads(PQgetvalue(res, r, 2), 0, &jerr);
    if (!o)
        o = json_object();
    json_object_set_new(o, "id", json_string(PQgetvalue(res, r, 0)));
    json_object_set_new(o, "state", json_string(PQgetvalue(res, r, 3)));
    json_object_set_new(o, "reason",
                        *PQgetvalue(res, r, 4) ? json_string(PQgetvalue(res, r, 4)) : json_null());
    json_object_set_new(o, "currentWave", json_integer(ota_i64(res, r, 5)));
    json_object_set_new(o, "targeted", json_integer(ota_i64(res, r, 6)));
    json_object_set_new(o, "createdAt", json_integer(ota_i64(res, r, 7)));
    json_object_set_new(o, "startedAt", ota_ms_or_null(res, r, 8));
    json_object_set_new(o, "stoppedAt", ota_ms_or_null(res, r, 9));
    json_object_set_new(o, "finishedAt", ota_ms_or_null(res, r, 10));
    /* the health gate's last evaluation, when it has one */
    json_t *hnow = PQgetisnull(res, r, 13) ? NULL : json_loads(PQgetvalue(res, r, 13), 0, &jerr);
    json_object_set_new(o, "healthNow", hnow ? hnow : json_null());
    int64_t window_s =
        json_integer_value(json_object_get(json_object_get(o, "health"), "windowSeconds"));
    s_counts_t c;
    char err[256];
    if (!with_waves ||
        !s_load_counts(self, PQgetvalue(res, r, 0),
                       window_s > 0 ? mh_now_ms() - window_s * 1000 : 0, &c, err, sizeof err))
        return o;
    json_t *waves = json_array();
    json_int_t t[6] = {0};
    int current = (int)ota_i64(res, r, 5);
    for (int k = 0; k < c.n; k++) {
        ota_wave_t *w = &c.w[k];
        const char *ws = c.observing[k] && k <= current                   ? "observing"
                         : k > current                                    ? "pending"
                         : (w->pending || w->queued || w->in_flight) != 0 ? "running"
                                                                          : "done";
        json_array_append_new(
            waves,
            json_pack("{s:i,s:f,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:s,s:o}", "index", k, "percent",
                      c.percent[k], "targeted", (json_int_t)w->targeted, "sent",
                      (json_int_t)c.sent[k], "inProgress", (json_int_t)w->in_flight, "succeeded",
                      (json_int_t)w->succeeded, "failed", (json_int_t)w->failed, "timedOut",
                      (json_int_t)w->timed_out, "cancelled", (json_int_t)w->cancelled, "rolledBack",
                      (json_int_t)c.rolled_back[k], "state", ws, "startedAt",
                      w->started_ms ? json_integer(w->started_ms) : json_null()));
        json_object_set_new(json_array_get(waves, json_array_size(waves) - 1), "observing",
                            json_integer(c.observing[k]));
        t[0] += w->targeted;
        t[1] += c.sent[k];
        t[2] += w->succeeded;
        t[3] += w->failed;
        t[4] += w->timed_out;
        t[5] += c.rolled_back[k];
    }
    json_object_set_new(o, "waves", waves);
    json_object_set_new(o, "totals",
                        json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "targeted", t[0], "sent", t[1],
                                  "succeeded", t[2], "failed", t[3], "timedOut", t[4], "rolledBack",
                                  t[5]));
    json_object_set_new(o, "rollback",
                        json_pack("{s:I,s:I,s:I,s:I}", "queued", (json_int_t)c.rb_queued,
                                  "inProgress", (json_int_t)c.rb_in_flight, "succeeded",
                                  (json_int_t)c.rb_succeeded, "failed", (json_int_t)c.rb_failed));
    return o;
}

/* ---- advancing a rollout (one transaction, the rollout row locked) ---- */

bool ota_cancel_unsent(ota_t *self, const char *id, int64_t now, char *err, size_t errlen)
{
    char now_s[32];
    ota_fmt_i64(now_s, sizeof now_s, now);
    const char *p[] = {id, now_s};
    PGresult *res = mh_pg_exec(self->pg, PGRES_COMMAND_OK,
                               "UPDATE ota.jobs SET status = 'cancelled', finished_ms = $2::bigint"
                               " WHERE rollout_id = $1 AND action = 'install'"
                               " AND (status = 'pending'"
                               /* one handed to a gateway may be published yet */
                               "   OR (status = 'queued' AND last_sent_ms IS NULL))",
                               2, p, err, errlen);
    if (!res)
        return false;
    mh_counter_add(self->m_job_final[3], strtoull(PQcmdTuples(res), NULL, 10));
    PQclear(res);
    return true;
}

/* Every device that took the new image in this rollout gets a rollback job
 * to the version it had (once). */
bool ota_insert_rollbacks(ota_t *self, const char *id, int64_t now, char *err, size_t errlen)
{
    char now_s[32];
    ota_fmt_i64(now_s, sizeof now_s, now);
    const char *p[] = {id, now_s};
    return mh_pg_ok(
        self->pg,
        "INSERT INTO ota.jobs (id, rollout_id, device_id, action, wave, rank, from_version,"
        "  to_version, status, error, created_ms, finished_ms)"
        " SELECT gen_random_uuid()::text, rollout_id, device_id, 'rollback', wave, rank,"
        "  to_version, from_version,"
        "  CASE WHEN from_version IS NULL THEN 'failed' ELSE 'queued' END,"
        "  CASE WHEN from_version IS NULL THEN 'the version before this rollout is not known'"
        "  END, $2::bigint, CASE WHEN from_version IS NULL THEN $2::bigint END"
        " FROM ota.jobs WHERE rollout_id = $1 AND action = 'install' AND status = 'succeeded'"
        " ON CONFLICT (rollout_id, device_id, action) DO NOTHING",
        2, p, err, errlen);
}

bool ota_set_state(ota_t *self, const char *id, const char *state, const char *reason,
                   const char *paused_by, int64_t now, char *err, size_t errlen)
{
    char now_s[32];
    ota_fmt_i64(now_s, sizeof now_s, now);
    /* NULL reason / paused_by keep what is there. */
    const char *p[] = {id, state, reason, paused_by, now_s};
    return mh_pg_ok(self->pg,
                    "UPDATE ota.rollouts SET state = $2, reason = COALESCE($3, reason),"
                    " paused_by = COALESCE($4, paused_by), updated_ms = $5::bigint,"
                    " stopped_ms = CASE WHEN $2 IN ('paused', 'aborted', 'rolling_back')"
                    "   AND stopped_ms IS NULL THEN $5::bigint ELSE stopped_ms END,"
                    " finished_ms = CASE WHEN $2 IN ('completed', 'aborted', 'rolled_back')"
                    "   THEN $5::bigint ELSE finished_ms END"
                    " WHERE id = $1",
                    5, p, err, errlen);
}

/* Hands queued jobs of online devices to the gateways (installs within the
 * token budget, rollbacks at once), and again the ones not published, not
 * answered, or not finished within resend-after. A job becomes "sent" when a gateway
 * says it has published it (ota_jobs_sent). Returns the tokens left, or
 * NAN on a database error. */
static double s_dispatch(ota_t *self, const char *id, bool installs, double tokens,
                         const ota_spec_t *spec, int64_t now, char *err, size_t errlen)
{
    char now_s[32], resend_s[32];
    ota_fmt_i64(now_s, sizeof now_s, now);
    ota_fmt_i64(resend_s, sizeof resend_s, now - self->cfg->resend_ms);
    const char *p[] = {id, installs ? "t" : "f", resend_s};
    PGresult *res = mh_pg_exec(
        self->pg, PGRES_TUPLES_OK,
        "SELECT j.id, j.device_id, j.action, j.to_version, j.rollout_id, f.size, f.sha256,"
        " f.signature, j.last_sent_ms IS NULL, j.wave, (r.spec->'document')::text, j.created_ms"
        " FROM ota.jobs j JOIN ota.rollouts r ON r.id = j.rollout_id"
        " LEFT JOIN ota.firmware f ON f.version = j.to_version"
        " WHERE j.rollout_id = $1 AND (j.action = 'rollback' OR $2) AND ("
        "   (j.status = 'queued' AND (j.last_sent_ms IS NULL OR j.last_sent_ms <= $3::bigint))"
        "   OR (j.status = 'sent' AND j.last_sent_ms <= $3::bigint)"
        /* in progress for longer than resend-after: its final answer may
         * have been lost (a gateway killed holding it); the device ignores
         * a job it is still running and repeats the final status of one it
         * finished */
        "   OR (j.status IN ('downloading', 'installing') AND j.last_sent_ms <= $3::bigint"
        "     AND j.answered_ms <= $3::bigint))"
        " ORDER BY (j.action = 'rollback') DESC, j.rank LIMIT 20000",
        3, p, err, errlen);
    if (!res)
        return NAN;
    int rows = PQntuples(res);
    const char **ids = calloc((size_t)rows + 1, sizeof *ids);
    int *pick = calloc((size_t)rows + 1, sizeof *pick);
    size_t n = 0;
    for (int r = 0; r < rows && ids; r++) {
        if (!mh_idset_has(self->online, PQgetvalue(res, r, 1)))
            continue; /* sent when it comes online */
        /* never handed over: an install costs a token */
        bool fresh = strcmp(PQgetvalue(res, r, 8), "t") == 0;
        bool install = strcmp(PQgetvalue(res, r, 2), "install") == 0;
        if (fresh && install) {
            if (tokens < 1)
                continue;
            tokens -= 1;
        }
        pick[n] = r;
        ids[n++] = PQgetvalue(res, r, 0);
    }
    if (n) {
        char *lit = mh_pg_text_array(ids, n);
        const char *up[] = {lit, now_s};
        bool ok = lit && mh_pg_ok(self->pg,
                                  "UPDATE ota.jobs SET last_sent_ms = $2::bigint, sends = sends + 1"
                                  " WHERE id = ANY($1::text[]) AND status IN ('queued', 'sent')",
                                  2, up, err, errlen);
        free(lit);
        if (!ok) {
            free(ids);
            free(pick);
            PQclear(res);
            return NAN;
        }
        int64_t exp_s = now / 1000 + spec->job_timeout_s + 3600;
        for (size_t i = 0; i < n; i++) {
            ota_out_job(self, res, pick[i], exp_s);
            if (strcmp(PQgetvalue(res, pick[i], 8), "t") != 0)
                mh_counter_inc(self->m_resent);
        }
    }
    free(ids);
    free(pick);
    PQclear(res);
    return tokens;
}

/* One rollout, one transaction. Returns false on a database error (rolled
 * back; the next tick tries again). */
bool ota_advance(ota_t *self, const char *id, int64_t now)
{
    char err[512];
    if (!mh_pg_begin(self->pg, err, sizeof err))
        goto fail;
    const char *p[] = {id};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT state, spec::text, current_wave, accepted_wave, tokens,"
                               " tokens_ms, firmware FROM ota.rollouts WHERE id = $1"
                               " AND state IN ('running', 'rolling_back') FOR UPDATE SKIP LOCKED",
                               1, p, err, sizeof err);
    if (!res)
        goto fail;
    if (PQntuples(res) != 1) { /* another replica has it, or it changed */
        PQclear(res);
        mh_pg_rollback(self->pg);
        return true;
    }
    char state[24], firmware[OTA_MAX_VERSION + 1];
    snprintf(state, sizeof state, "%s", PQgetvalue(res, 0, 0));
    snprintf(firmware, sizeof firmware, "%s", PQgetvalue(res, 0, 6));
    ota_spec_t spec;
    char why[256];
    int spec_rc = ota_spec_parse(PQgetvalue(res, 0, 1), &spec, why, sizeof why);
    int current = (int)ota_i64(res, 0, 2), accepted = (int)ota_i64(res, 0, 3);
    double tokens = strtod(PQgetvalue(res, 0, 4), NULL);
    int64_t tokens_ms = ota_i64(res, 0, 5);
    PQclear(res);
    if (spec_rc < 0) {
        snprintf(err, sizeof err, "stored rollout spec unreadable: %s", why);
        goto fail;
    }
    bool rolling_back = strcmp(state, "rolling_back") == 0;
    if (rolling_back && !ota_insert_rollbacks(self, id, now, err, sizeof err))
        goto fail_spec;
    s_counts_t c;
    bool gated = spec.health.on && !rolling_back;
    if (!s_load_counts(self, id, gated ? now - spec.health.window_s * 1000 : 0, &c, err,
                       sizeof err))
        goto fail_spec;
    char now_s[32];
    ota_fmt_i64(now_s, sizeof now_s, now);
    if (!rolling_back) {
        ota_decision_t d;
        ota_health_verdict_t hv = {.fresh = true};
        if (gated) {
            /* still observed: not done yet */
            for (int k = 0; k < OTA_MAX_WAVES; k++)
                c.w[k].in_flight += c.observing[k];
            if (!ota_health_check(self, id, &spec, accepted, current, now, &hv, err, sizeof err))
                goto fail_spec;
        }
        ota_decide(&spec, c.w, current, accepted, now, &d);
        if (hv.bad && d.fail_wave < 0) {
            d.fail_wave = current;
            snprintf(d.reason, sizeof d.reason, "%s", hv.reason);
        }
        if (!hv.fresh && d.fail_wave < 0) {
            /* no recent good verdict (twin or ingest away): promote nothing */
            d.start_wave = -1;
            d.completed = false;
        }
        if (d.fail_wave >= 0) {
            if (spec.rollback_on_failure) {
                if (!ota_cancel_unsent(self, id, now, err, sizeof err) ||
                    !ota_set_state(self, id, "rolling_back", d.reason, NULL, now, err,
                                   sizeof err) ||
                    !ota_insert_rollbacks(self, id, now, err, sizeof err))
                    goto fail_spec;
                ota_rollout_event(self, id, firmware, "rolling_back", current, d.reason);
                rolling_back = true;
            } else {
                if (!ota_set_state(self, id, "paused", d.reason, "gate", now, err, sizeof err))
                    goto fail_spec;
                ota_rollout_event(self, id, firmware, "paused", current, d.reason);
                goto commit;
            }
        } else {
            if (d.ok_wave >= 0) {
                char k[16];
                snprintf(k, sizeof k, "%d", d.ok_wave);
                const char *up[] = {id, k, now_s};
                if (!mh_pg_ok(self->pg,
                              "UPDATE ota.waves SET ok_ms = $3::bigint"
                              " WHERE rollout_id = $1 AND idx = $2::int",
                              3, up, err, sizeof err))
                    goto fail_spec;
            }
            if (d.start_wave >= 0) {
                char k[16];
                snprintf(k, sizeof k, "%d", d.start_wave);
                const char *up[] = {id, k, now_s};
                if (!mh_pg_ok(self->pg,
                              "UPDATE ota.waves SET started_ms = $3::bigint"
                              " WHERE rollout_id = $1 AND idx = $2::int",
                              3, up, err, sizeof err) ||
                    !mh_pg_ok(self->pg,
                              "UPDATE ota.jobs SET status = 'queued' WHERE rollout_id = $1"
                              " AND wave = $2::int AND status = 'pending'",
                              2, up, err, sizeof err) ||
                    !mh_pg_ok(self->pg,
                              "UPDATE ota.rollouts SET current_wave = $2::int,"
                              " updated_ms = $3::bigint WHERE id = $1",
                              3, up, err, sizeof err))
                    goto fail_spec;
                current = d.start_wave;
                char reason[64];
                snprintf(reason, sizeof reason, "wave %d of %d started", current + 1, spec.nwaves);
                ota_rollout_event(self, id, firmware, "running", current, reason);
            } else if (d.completed) {
                if (!ota_set_state(self, id, "completed", NULL, NULL, now, err, sizeof err))
                    goto fail_spec;
                ota_rollout_event(self, id, firmware, "completed", current, NULL);
                goto commit;
            } else if (d.stalled) {
                char reason[160];
                snprintf(reason, sizeof reason,
                         "wave %d finished below the success threshold (%.0f%%)", current + 1,
                         100 * spec.success_threshold);
                if (!ota_set_state(self, id, "paused", reason, "gate", now, err, sizeof err))
                    goto fail_spec;
                ota_rollout_event(self, id, firmware, "paused", current, reason);
                goto commit;
            }
        }
    }
    /* Refill the send budget: maxPerMinute, at most one second's worth saved. */
    double rate = (double)spec.max_per_minute / 60000.0; /* per ms */
    double cap = fmax(1.0, rate * 1000.0);
    tokens = fmin(cap, tokens + rate * (double)(now - (tokens_ms ? tokens_ms : now)));
    if (!rolling_back && tokens_ms == 0)
        tokens = cap;
    tokens = s_dispatch(self, id, !rolling_back, tokens, &spec, now, err, sizeof err);
    if (isnan(tokens))
        goto fail_spec;
    char tok_s[64];
    snprintf(tok_s, sizeof tok_s, "%.6f", tokens);
    const char *tp[] = {id, tok_s, now_s};
    if (!mh_pg_ok(self->pg,
                  "UPDATE ota.rollouts SET tokens = $2::double precision, tokens_ms = $3::bigint"
                  " WHERE id = $1",
                  3, tp, err, sizeof err))
        goto fail_spec;
    if (rolling_back) {
        /* Done once every rollback job is sent and no install is still out
         * (one that succeeds late gets its rollback job on a later tick). */
        if (!s_load_counts(self, id, 0, &c, err, sizeof err))
            goto fail_spec;
        if (c.rb_queued == 0 && c.in_flight_total == 0) {
            if (!ota_set_state(self, id, "rolled_back", NULL, NULL, now, err, sizeof err))
                goto fail_spec;
            /* keep the reason the rollback started with */
            const char *rp[] = {id};
            PGresult *rr = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                                      "SELECT COALESCE(NULLIF(reason, ''), 'rolled back')"
                                      " FROM ota.rollouts WHERE id = $1",
                                      1, rp, err, sizeof err);
            if (rr) {
                ota_rollout_event(self, id, firmware, "rolled_back", current,
                                  PQntuples(rr) ? PQgetvalue(rr, 0, 0) : "");
                PQclear(rr);
            }
        }
    }
commit:
    ota_spec_clear(&spec);
    if (!mh_pg_commit(self->pg, err, sizeof err))
        goto fail;
    ota_out_flush(self);
    return true;
fail_spec:
    ota_spec_clear(&spec);
fail:
    mh_pg_rollback(self->pg);
    ota_out_discard(self);
    if (!mh_pg_retryable(self->pg)) {
        mh_counter_inc(self->m_db_errors);
        mh_log_limited(&self->rl_db, MH_LOG_ERROR, "advancing rollout %s failed: %s", id, err);
    }
    return false;
}

void ota_sweep_timeouts(ota_t *self, int64_t now)
{
    char now_s[32], err[512];
    ota_fmt_i64(now_s, sizeof now_s, now);
    const char *p[] = {now_s};
    PGresult *res =
        mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                   "UPDATE ota.jobs j SET status = 'timed_out', finished_ms = $1::bigint,"
                   " updated_ms = $1::bigint, version_number = j.version_number + 1"
                   " FROM ota.rollouts r WHERE j.rollout_id = r.id"
                   " AND (j.status IN ('sent', 'downloading', 'installing')"
                   "   AND j.sent_ms <= $1::bigint - (r.spec->>'jobTimeoutSeconds')::bigint * 1000"
                   /* an AWS IoT job's step timer ran out (ota_jobs.c) */
                   "   OR j.status IN ('sent', 'downloading', 'installing')"
                   "   AND j.step_deadline_ms <= $1::bigint"
                   /* handed to a gateway and never confirmed published: an
                    * active rollout hands it again every resend-after, so
                    * its last hand-over gets old only when nothing will
                    * (an aborted rollout whose ota died holding it, its
                    * device offline since) */
                   "   OR j.status = 'queued' AND j.last_sent_ms <= $1::bigint"
                   "     - (r.spec->>'jobTimeoutSeconds')::bigint * 1000)"
                   " RETURNING j.id, j.rollout_id, j.device_id, j.action, j.to_version, j.wave",
                   1, p, err, sizeof err);
    if (!res) {
        if (!mh_pg_retryable(self->pg))
            mh_log_limited(&self->rl_db, MH_LOG_ERROR, "job timeout sweep failed: %s", err);
        return;
    }
    for (int r = 0; r < PQntuples(res); r++)
        ota_job_event(self, PQgetvalue(res, r, 1), PQgetvalue(res, r, 0), PQgetvalue(res, r, 2),
                      PQgetvalue(res, r, 3), "timed_out", PQgetvalue(res, r, 4),
                      (int)ota_i64(res, r, 5), "no answer within the job timeout");
    PQclear(res);
    ota_out_flush(self);
}

const char *const ota_states[OTA_NSTATES] = {"scheduled", "running", "paused",     "rolling_back",
                                             "completed", "aborted", "rolled_back"};

void ota_rollout_gauges(ota_t *self)
{
    char err[512];
    /* stopped by a gate: paused by it (an operator must look), or rolling
     * back on its own (not at an operator's word) */
    const char *p[] = {OTA_OPERATOR_ROLLBACK};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT state, count(*), count(*) FILTER (WHERE"
                               " (state = 'paused' AND paused_by = 'gate') OR (state ="
                               " 'rolling_back' AND reason <> $1))"
                               " FROM ota.rollouts GROUP BY state",
                               1, p, err, sizeof err);
    if (!res)
        return;
    double by_state[OTA_NSTATES] = {0}, by_gate = 0;
    for (int r = 0; r < PQntuples(res); r++) {
        for (int k = 0; k < OTA_NSTATES; k++)
            if (strcmp(PQgetvalue(res, r, 0), ota_states[k]) == 0)
                by_state[k] = (double)ota_i64(res, r, 1);
        by_gate += (double)ota_i64(res, r, 2);
    }
    PQclear(res);
    for (int k = 0; k < OTA_NSTATES; k++)
        mh_gauge_set(self->m_rollout_states[k], by_state[k]);
    mh_gauge_set(self->m_stopped_by_gate, by_gate);
}
