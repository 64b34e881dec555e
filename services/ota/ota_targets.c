/* ota: the devices a scheduled rollout covers, asked of twin page by
 * page, and the tick that drives rollouts (ota_internal.h). */
#include "ota_internal.h"

/* ---- targets: the devices a scheduled rollout covers, from twin ---- */

void ota_res_clear(ota_t *self)
{
    for (size_t i = 0; i < self->res.n; i++) {
        free(self->res.ids[i]);
        free(self->res.fw[i]);
        if (self->res.tags)
            json_decref(self->res.tags[i]);
    }
    free(self->res.ids);
    free(self->res.fw);
    free(self->res.tags);
    ota_spec_clear(&self->res.spec);
    memset(&self->res, 0, sizeof self->res);
}

static void s_res_request(ota_t *self)
{
    snprintf(self->res.req_id, sizeof self->res.req_id, "ota-%" PRIu64, ++self->seq);
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.request_id = self->res.req_id;
    q.method = MH__TWIN_REQUEST__METHOD__LIST_DEVICES;
    q.cursor = self->res.cursor;
    q.limit = OTA_PAGE;
    q.firmware = self->res.spec.target_firmware;
    q.deadline_ms = mh_now_ms() + OTA_RPC_TIMEOUT;
    char *tags[64];
    size_t nt = 0;
    const char *key;
    json_t *v;
    json_object_foreach(self->res.spec.target_tags, key, v)
    {
        if (nt == 64)
            break;
        if (asprintf(&tags[nt], "%s:%s", key, json_string_value(v)) < 0)
            break;
        nt++;
    }
    q.tags = tags;
    q.n_tags = nt;
    mh_envelope_send(self->dealer, NULL, "twin.request", NULL, &q.base, true);
    for (size_t i = 0; i < nt; i++)
        free(tags[i]);
    self->res.sent_ms = mh_mono_ms();
}

static void s_res_start(ota_t *self)
{
    char err[512];
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT id, spec::text FROM ota.rollouts WHERE state = 'scheduled'"
                               " ORDER BY seq LIMIT 1",
                               0, NULL, err, sizeof err);
    if (!res)
        return;
    if (PQntuples(res) == 1) {
        char why[256];
        if (ota_spec_parse(PQgetvalue(res, 0, 1), &self->res.spec, why, sizeof why) == 0) {
            self->res.active = true;
            snprintf(self->res.rollout, sizeof self->res.rollout, "%s", PQgetvalue(res, 0, 0));
            s_res_request(self);
        }
    }
    PQclear(res);
}

static char *s_int_array(const int *v, size_t n)
{
    char *s = malloc(n * 12 + 3), *p = s;
    if (!s)
        return NULL;
    *p++ = '{';
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, i ? ",%d" : "%d", v[i]);
    *p++ = '}';
    *p = 0;
    return s;
}

/* All pages are in: order the devices, place them in waves, create the
 * jobs and start the rollout, if it is still scheduled. */
static void s_res_finish(ota_t *self)
{
    char err[512], now_s[32];
    int64_t now = mh_now_ms();
    ota_fmt_i64(now_s, sizeof now_s, now);
    const char *id = self->res.rollout;
    size_t n = self->res.n;
    size_t *perm = malloc((n + 1) * sizeof *perm);
    void **tmp = malloc((n + 1) * sizeof *tmp);
    if (!perm || !tmp)
        abort(); /* a few bytes a device */
    ota_order_perm(self->res.ids, n, perm);
    ota_permute((void **)self->res.ids, perm, n, tmp);
    ota_permute((void **)self->res.fw, perm, n, tmp);
    ota_permute((void **)self->res.tags, perm, n, tmp);
    free(perm);
    free(tmp);
    /* a stratified canary: wave 1 grows to hold every value of the tags
     * named and every firmware version present */
    size_t first = ota_wave_end(self->res.spec.percents[0], n);
    if (self->res.spec.stratify_by)
        first = ota_stratify(self->res.ids, self->res.fw, self->res.tags, n, first,
                             self->res.spec.stratify_by);
    int *waves = calloc(n + 1, sizeof *waves), *ranks = calloc(n + 1, sizeof *ranks);
    int64_t sizes[OTA_MAX_WAVES] = {0};
    for (size_t i = 0; i < n && waves && ranks; i++) {
        waves[i] = ota_wave_of(&self->res.spec, i, n, first);
        ranks[i] = (int)i;
        sizes[waves[i]]++;
    }
    char *ids = mh_pg_text_array((const char *const *)self->res.ids, n);
    char *fws = mh_pg_text_array((const char *const *)self->res.fw, n); /* NULL: unknown */
    char *wv = waves ? s_int_array(waves, n) : NULL, *rk = ranks ? s_int_array(ranks, n) : NULL;
    free(waves);
    free(ranks);
    bool ok = ids && fws && wv && rk && mh_pg_begin(self->pg, err, sizeof err);
    if (!ok)
        goto done;
    const char *p[] = {id};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT COALESCE(firmware, '') FROM ota.rollouts WHERE id = $1"
                               " AND state = 'scheduled' FOR UPDATE",
                               1, p, err, sizeof err);
    if (!res || PQntuples(res) != 1) {
        if (res)
            PQclear(res);
        ok = res != NULL; /* paused, aborted or taken by another replica: nothing to do */
        mh_pg_rollback(self->pg);
        goto done;
    }
    char firmware[OTA_MAX_VERSION + 1];
    snprintf(firmware, sizeof firmware, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    for (int k = 0; k < self->res.spec.nwaves && ok; k++) {
        char idx[16], pct[32], size[32];
        snprintf(idx, sizeof idx, "%d", k);
        snprintf(pct, sizeof pct, "%.17g", self->res.spec.percents[k]);
        ota_fmt_i64(size, sizeof size, sizes[k]);
        const char *wp[] = {id, idx, pct, size};
        ok = mh_pg_ok(self->pg,
                      "INSERT INTO ota.waves (rollout_id, idx, percent, size)"
                      " VALUES ($1, $2::int, $3::double precision, $4::int)"
                      " ON CONFLICT (rollout_id, idx) DO UPDATE SET size = EXCLUDED.size",
                      4, wp, err, sizeof err);
    }
    char n_s[32];
    ota_fmt_i64(n_s, sizeof n_s, (int64_t)n);
    /* a job of a document installs no version */
    const char *jp[] = {id, *firmware ? firmware : NULL, now_s, ids, wv, rk, fws};
    ok = ok &&
         mh_pg_ok(self->pg,
                  "INSERT INTO ota.jobs (id, rollout_id, device_id, action, wave, rank,"
                  " from_version, to_version, status, created_ms)"
                  " SELECT gen_random_uuid()::text, $1, d, 'install', w, r, f, $2, 'pending',"
                  " $3::bigint FROM unnest($4::text[], $5::int[], $6::int[], $7::text[])"
                  " AS u(d, w, r, f)",
                  7, jp, err, sizeof err) &&
         mh_pg_ok(self->pg,
                  "UPDATE ota.rollouts SET state = CASE WHEN $3::int = 0 THEN 'completed'"
                  " ELSE 'running' END, reason = CASE WHEN $3::int = 0 THEN"
                  " 'no device matches the target' ELSE '' END, targeted = $3::int,"
                  " started_ms = $2::bigint, updated_ms = $2::bigint,"
                  " finished_ms = CASE WHEN $3::int = 0 THEN $2::bigint END WHERE id = $1",
                  3, (const char *[]){id, now_s, n_s}, err, sizeof err);
    if (ok && (ok = mh_pg_commit(self->pg, err, sizeof err))) {
        mh_info("rollout %s: %zu devices targeted", id, n);
        ota_rollout_event(self, id, firmware, n ? "running" : "completed", -1,
                          n ? NULL : "no device matches the target");
        ota_out_flush(self);
    } else {
        mh_pg_rollback(self->pg);
        ota_out_discard(self);
    }
done:
    if (!ok) {
        mh_counter_inc(self->m_db_errors);
        mh_log_limited(&self->rl_db, MH_LOG_ERROR, "starting rollout %s failed: %s", id,
                       ids && fws && wv && rk ? err : "out of memory");
    }
    free(ids);
    free(fws);
    free(wv);
    free(rk);
    ota_res_clear(self);
}

void ota_on_twin_reply(ota_t *self)
{
    Mh__TwinReply *r =
        (Mh__TwinReply *)mh_rpc_recv_reply(self->dealer, "twin.reply", &mh__twin_reply__descriptor,
                                           self->res.active ? self->res.req_id : NULL);
    if (!r)
        return; /* malformed, or an answer to a request given up on */
    json_error_t jerr;
    json_t *body =
        r->status == 200 ? mh_json_loads(r->body_json, 0, MH_JSON_MAX_DEPTH, &jerr) : NULL;
    json_t *items = json_object_get(body, "items");
    if (!json_is_array(items)) {
        mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                       "twin cannot list the rollout's devices yet (%u %s); asking again",
                       r->status, r->message);
        self->res.sent_ms = mh_mono_ms() - OTA_RPC_TIMEOUT + 1000;
        json_decref(body);
        mh__twin_reply__free_unpacked(r, NULL);
        return;
    }
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        const char *id = json_string_value(json_object_get(it, "id"));
        const char *fw = json_string_value(json_object_get(it, "firmware"));
        if (!id || (fw && *self->res.spec.firmware && strcmp(fw, self->res.spec.firmware) == 0))
            continue; /* already on the version this rollout installs */
        if (self->res.n == self->res.cap) {
            size_t cap = self->res.cap ? self->res.cap * 2 : 1024;
            char **a = realloc(self->res.ids, cap * sizeof *a);
            if (a)
                self->res.ids = a;
            char **b = a ? realloc(self->res.fw, cap * sizeof *b) : NULL;
            if (b)
                self->res.fw = b;
            json_t **t = b && self->res.spec.stratify_by ? realloc(self->res.tags, cap * sizeof *t)
                                                         : self->res.tags;
            if (t)
                self->res.tags = t;
            if (!a || !b || (self->res.spec.stratify_by && !t))
                break;
            self->res.cap = cap;
        }
        self->res.ids[self->res.n] = strdup(id);
        self->res.fw[self->res.n] = fw && ota_name_valid(fw) ? strdup(fw) : NULL;
        if (self->res.tags)
            self->res.tags[self->res.n] = json_incref(json_object_get(it, "tags"));
        self->res.n++;
    }
    const char *next = json_string_value(json_object_get(body, "next"));
    if (next) {
        snprintf(self->res.cursor, sizeof self->res.cursor, "%s", next);
        s_res_request(self);
    } else {
        s_res_finish(self);
    }
    json_decref(body);
    mh__twin_reply__free_unpacked(r, NULL);
}

void ota_tick(ota_t *self)
{
    int64_t t0 = mh_mono_ms(), now = mh_now_ms();
    char err[512];
    ota_sweep_timeouts(self, now);
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT id FROM ota.rollouts"
                               " WHERE state IN ('running', 'rolling_back') ORDER BY seq",
                               0, NULL, err, sizeof err);
    if (res) {
        for (int r = 0; r < PQntuples(res); r++)
            ota_advance(self, PQgetvalue(res, r, 0), now);
        PQclear(res);
    }
    if (!self->res.active)
        s_res_start(self);
    else if (mh_mono_ms() - self->res.sent_ms > OTA_RPC_TIMEOUT)
        s_res_request(self); /* the page was lost, or twin is away: ask again */
    if (mh_mono_ms() >= self->next_gauges) {
        self->next_gauges = mh_mono_ms() + 10000;
        ota_rollout_gauges(self);
    }
    mh_histogram_observe_ms(self->m_tick_time, mh_mono_ms() - t0);
}
