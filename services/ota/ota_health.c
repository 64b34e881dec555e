/* ota: a running rollout's health gate (ota_gate.h has the rules), run by
 * ota_advance inside its transaction with the rollout row locked.
 *
 * Every --health-interval it makes the cohorts from the rollout's jobs:
 *   - per started wave (not accepted by an operator), the devices whose
 *     install succeeded, each observed from its success for windowSeconds
 *     (up to now);
 *   - the control group: the targeted devices whose install has not gone
 *     out, observed over the same span of time (the first updated device's
 *     success to the last one's window end or now);
 * asks twin for their connectivity (HEALTH_STATS) and, for metric signals,
 * ingest for the metric's statistic (TelemetryQuery.cohort_json), and
 * judges every signal of every wave against control. The evaluation is
 * kept in ota.rollouts.health (shown by the API); it is made from durable
 * data only (jobs, twin's connectivity log, ingest's rollups), so an ota
 * restarted mid-window reaches the same verdict.
 *
 * Counts (disconnects, hours offline) of the updated devices are divided
 * by their whole windows, not the part seen so far: a count only grows, so
 * a wave judged worse early would be judged worse at its window's end too
 * — a crash loop is caught within seconds without a quiet first minute
 * passing a device that will misbehave later. */
#include "ota_internal.h"

typedef struct {
    char name[16];
    json_t *list; /* [[device, from, to], ...] */
    int64_t first, last;
    int64_t n;
} s_cohort_t;

static void s_add(s_cohort_t *c, const char *id, int64_t from, int64_t to)
{
    json_array_append_new(c->list, json_pack("[s,I,I]", id, (json_int_t)from, (json_int_t)to));
    if (!c->n || from < c->first)
        c->first = from;
    if (!c->n || to > c->last)
        c->last = to;
    c->n++;
}

/* The value of a twin-side signal for a cohort from HEALTH_STATS' answer;
 * `whole_h`: the device-hours of their whole windows (updated devices), 0
 * for the hours seen (control). */
static ota_sample_t s_conn_value(const ota_signal_t *s, json_t *st, double whole_h)
{
    int64_t n = json_integer_value(json_object_get(st, "devices"));
    double hours = whole_h > 0 ? whole_h : json_real_value(json_object_get(st, "deviceHours"));
    ota_sample_t v = {0, n};
    if (n == 0)
        return v;
    if (s->kind == OTA_SIG_FW_ROLLBACK)
        v.value = (double)json_integer_value(json_object_get(st, "notOnVersion")) / (double)n;
    else if (s->kind == OTA_SIG_REBOOTS)
        v.value = (double)json_integer_value(json_object_get(st, "reported")) / (double)n;
    else if (hours <= 0)
        v.n = 0; /* nothing observed yet */
    else if (s->kind == OTA_SIG_DISCONNECTS)
        v.value = (double)json_integer_value(json_object_get(st, "disconnects")) / hours;
    else
        v.value = json_real_value(json_object_get(st, "offlineHours")) / hours;
    return v;
}

/* A call's deadline: half the interval (at most 5 s, at least 200 ms), so
 * a service that is away blocks the actor for at most half of it. */
static int s_deadline(ota_t *self)
{
    int64_t d = self->cfg->health_interval_ms / 2;
    return (int)(d < 200 ? 200 : d > 5000 ? 5000 : d);
}

/* Twin's HEALTH_STATS for the cohorts (`key`: a reported key to count, or
 * NULL); NULL with `err`. */
static json_t *s_twin_stats(ota_t *self, json_t *cohorts, const char *firmware, const char *key,
                            char *err, size_t errlen)
{
    json_t *params =
        json_pack("{s:O,s:s,s:s?}", "cohorts", cohorts, "firmware", firmware, "key", key);
    char *text = ota_dumps(params), rid[48];
    json_decref(params);
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.method = MH__TWIN_REQUEST__METHOD__HEALTH_STATS;
    q.params_json = text;
    snprintf(rid, sizeof rid, "ota-health-%" PRIu64, ++self->seq);
    json_t *st = text ? mh_rpc_call_json(self->twin_rpc, "twin.request", &q.base, rid,
                                         s_deadline(self), err, errlen)
                      : NULL;
    free(text);
    return st;
}

/* A metric signal's values per cohort, from ingest; NULL with `err`. */
static json_t *s_metric_stats(ota_t *self, const ota_signal_t *s, json_t *cohorts, char *err,
                              size_t errlen)
{
    if (!self->ingest_rpc) {
        snprintf(err, errlen, "no --ingest-rpc-endpoint to read metric %s from", s->metric);
        return NULL;
    }
    json_t *params = json_pack("{s:s,s:s,s:O}", "metric", s->metric, "stat", ota_stat_name(s->stat),
                               "cohorts", cohorts);
    char *text = ota_dumps(params), rid[48];
    json_decref(params);
    Mh__TelemetryQuery q = MH__TELEMETRY_QUERY__INIT;
    q.cohort_json = text;
    snprintf(rid, sizeof rid, "ota-health-%" PRIu64, ++self->seq);
    json_t *body = text ? mh_rpc_call_json(self->ingest_rpc, "telemetry.query", &q.base, rid,
                                           s_deadline(self), err, errlen)
                        : NULL;
    free(text);
    return body;
}

bool ota_health_check(ota_t *self, const char *id, const ota_spec_t *spec, int accepted,
                      int current, int64_t now, ota_health_verdict_t *v, char *err, size_t errlen)
{
    memset(v, 0, sizeof *v);
    const ota_health_t *h = &spec->health;
    const char *p[] = {id};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT health_ms, health_bad FROM ota.rollouts WHERE id = $1", 1, p,
                               err, errlen);
    if (!res)
        return false;
    int64_t last = PQntuples(res) ? ota_i64(res, 0, 0) : 0;
    bool last_bad = PQntuples(res) && strcmp(PQgetvalue(res, 0, 1), "t") == 0;
    PQclear(res);
    v->fresh = last && now - last <= 3 * self->cfg->health_interval_ms && !last_bad;
    if ((last && now - last < self->cfg->health_interval_ms) ||
        mh_mono_ms() < self->health_retry_mono)
        return true; /* not due, or the last try found twin or ingest away */

    int64_t t0 = mh_mono_ms(), window = h->window_s * 1000;
    char acc_s[16];
    snprintf(acc_s, sizeof acc_s, "%d", accepted);
    const char *jp[] = {id, acc_s};
    res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                     "SELECT device_id, wave, finished_ms, status = 'succeeded' FROM ota.jobs"
                     " WHERE rollout_id = $1 AND action = 'install' AND ("
                     "   (status = 'succeeded' AND wave > $2::int)"
                     "   OR (status IN ('pending', 'queued') AND sent_ms IS NULL))",
                     2, jp, err, errlen);
    if (!res)
        return false;
    s_cohort_t waves[OTA_MAX_WAVES], control = {.list = json_array()};
    snprintf(control.name, sizeof control.name, "control");
    for (int k = 0; k < OTA_MAX_WAVES; k++) {
        waves[k] = (s_cohort_t){.list = json_array()};
        snprintf(waves[k].name, sizeof waves[k].name, "w%d", k);
    }
    double whole_h[OTA_MAX_WAVES] = {0};
    for (int r = 0; r < PQntuples(res); r++) {
        int k = (int)ota_i64(res, r, 1);
        if (strcmp(PQgetvalue(res, r, 3), "t") != 0 || k < 0 || k >= OTA_MAX_WAVES)
            continue;
        int64_t from = ota_i64(res, r, 2), to = from + window < now ? from + window : now;
        s_add(&waves[k], PQgetvalue(res, r, 0), from, to > from ? to : from);
        whole_h[k] += (double)window / 3.6e6;
    }
    int64_t first = 0, end = 0;
    for (int k = 0; k < OTA_MAX_WAVES; k++)
        if (waves[k].n) {
            first = !first || waves[k].first < first ? waves[k].first : first;
            end = waves[k].last > end ? waves[k].last : end;
        }
    for (int r = 0; r < PQntuples(res) && first; r++)
        if (strcmp(PQgetvalue(res, r, 3), "t") != 0)
            s_add(&control, PQgetvalue(res, r, 0), first, end > first ? end : first);
    PQclear(res);

    json_t *cohorts = json_object(), *eval = json_array();
    for (int k = 0; k < OTA_MAX_WAVES; k++)
        if (waves[k].n)
            json_object_set(cohorts, waves[k].name, waves[k].list);
    json_object_set(cohorts, "control", control.list);
    bool ok = true;
    if (first) {
        /* connectivity, once for every signal that needs it */
        /* twin's answer once for the connectivity signals and the first
         * reboots signal's key; another reboots key asks again */
        bool conn = false;
        const char *key = NULL;
        for (int i = 0; i < h->nsig; i++) {
            conn |= h->sig[i].kind != OTA_SIG_METRIC;
            if (h->sig[i].kind == OTA_SIG_REBOOTS && !key)
                key = h->sig[i].metric;
        }
        json_t *cst = NULL;
        if (conn) {
            cst = s_twin_stats(self, cohorts, spec->firmware, key, err, errlen);
            ok = cst != NULL;
        }
        for (int i = 0; i < h->nsig && ok; i++) {
            const ota_signal_t *s = &h->sig[i];
            /* the answer this signal reads: ingest's for a metric, twin's
             * again for a reboots key other than the first, else cst */
            bool metric = s->kind == OTA_SIG_METRIC;
            bool again = s->kind == OTA_SIG_REBOOTS && strcmp(s->metric, key) != 0;
            json_t *own = metric ? s_metric_stats(self, s, cohorts, err, errlen)
                          : again
                              ? s_twin_stats(self, cohorts, spec->firmware, s->metric, err, errlen)
                              : NULL;
            if ((metric || again) && !own) {
                ok = false;
                break;
            }
            json_t *tst = again ? own : cst, *mst = metric ? own : NULL;
            ota_sample_t c = mst ? (ota_sample_t){json_number_value(json_object_get(
                                                      json_object_get(mst, "control"), "value")),
                                                  json_integer_value(json_object_get(
                                                      json_object_get(mst, "control"), "devices"))}
                                 : s_conn_value(s, json_object_get(tst, "control"), 0);
            for (int k = accepted + 1; k <= current && k < OTA_MAX_WAVES; k++) {
                if (!waves[k].n)
                    continue;
                json_t *ws = json_object_get(mst ? mst : tst, waves[k].name);
                ota_sample_t t =
                    mst ? (ota_sample_t){json_number_value(json_object_get(ws, "value")),
                                         json_integer_value(json_object_get(ws, "devices"))}
                        : s_conn_value(s, ws, whole_h[k]);
                char reason[300];
                /* judged once enough devices of the wave are observed */
                bool judged = waves[k].n >= spec->min_devices;
                bool bad = ota_signal_bad(h, s, t, c, reason, sizeof reason) && judged;
                json_array_append_new(
                    eval,
                    json_pack("{s:i,s:s,s:s?,s:f,s:I,s:f,s:I,s:b,s:b,s:s}", "wave", k + 1, "signal",
                              ota_signal_name(s), "metric",
                              s->kind == OTA_SIG_METRIC || s->kind == OTA_SIG_REBOOTS ? s->metric
                                                                                      : NULL,
                              "updated", t.value, "updatedDevices", (json_int_t)t.n, "control",
                              c.value, "controlDevices", (json_int_t)c.n, "judged", judged, "worse",
                              bad, "detail", reason));
                if (bad && !v->bad) {
                    v->bad = true;
                    snprintf(v->reason, sizeof v->reason, "wave %d health: %s", k + 1, reason);
                }
            }
            json_decref(own);
        }
        json_decref(cst);
    }
    json_decref(cohorts);
    for (int k = 0; k < OTA_MAX_WAVES; k++)
        json_decref(waves[k].list);
    json_decref(control.list);
    if (!ok) {
        /* no verdict this time: no wave is promoted meanwhile (fresh goes
         * false once the last good one is old) */
        json_decref(eval);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "rollout %s: health not evaluated: %s", id,
                       err);
        self->health_retry_mono = mh_mono_ms() + self->cfg->health_interval_ms;
        return true;
    }
    json_t *doc = json_pack("{s:I,s:b,s:s?,s:o}", "at", (json_int_t)now, "worse", v->bad, "reason",
                            v->bad ? v->reason : NULL, "signals", eval);
    char *text = ota_dumps(doc), now_s[32];
    json_decref(doc);
    ota_fmt_i64(now_s, sizeof now_s, now);
    const char *up[] = {id, text, now_s, v->bad ? "t" : "f"};
    bool stored =
        text && mh_pg_ok(self->pg,
                         "UPDATE ota.rollouts SET health = $2::jsonb,"
                         " health_ms = $3::bigint, health_bad = $4::boolean WHERE id = $1",
                         4, up, err, errlen);
    free(text);
    v->fresh = !v->bad;
    mh_histogram_observe_ms(self->m_health_time, mh_mono_ms() - t0);
    return stored;
}
