/* ota: events and jobs published once a transaction commits (ota_internal.h). */
#include "ota_internal.h"

/* ---- what leaves after COMMIT ---- */

void ota_out_free(void **item)
{
    ota_out_t *o = *item;
    if (o) {
        zframe_destroy(&o->frame);
        free(o);
        *item = NULL;
    }
}

static void s_out_add(ota_t *self, const char *type, const char *envelope_type,
                      const ProtobufCMessage *body, const char *job)
{
    ota_out_t *o = calloc(1, sizeof *o);
    if (!o)
        return;
    snprintf(o->type, sizeof o->type, "%s", type);
    snprintf(o->job, sizeof o->job, "%s", job ? job : "");
    o->frame = mh_envelope_pack(envelope_type, NULL, body);
    if (!o->frame) {
        free(o);
        return;
    }
    zlistx_add_end(self->out, o);
}

static void s_out_event(ota_t *self, const char *type, const ProtobufCMessage *body)
{
    if (self->pub)
        s_out_add(self, type, type, body, NULL);
}

void ota_job_event(ota_t *self, const char *rollout, const char *job, const char *device,
                   const char *action, const char *status, const char *version, int wave,
                   const char *error)
{
    Mh__OtaJobStatus ev = MH__OTA_JOB_STATUS__INIT;
    ev.rollout_id = (char *)rollout;
    ev.job_id = (char *)job;
    ev.device_id = (char *)device;
    ev.action = (char *)action;
    ev.status = (char *)status;
    ev.version = (char *)(version ? version : "");
    ev.wave = wave;
    ev.error = (char *)(error ? error : "");
    ev.ts_ms = mh_now_ms();
    s_out_event(self, "ota.job", &ev.base);
    int i = strcmp(status, "succeeded") == 0   ? 0
            : strcmp(status, "failed") == 0    ? 1
            : strcmp(status, "timed_out") == 0 ? 2
            : strcmp(status, "cancelled") == 0 ? 3
                                               : -1;
    if (i >= 0)
        mh_counter_inc(self->m_job_final[i]);
}

void ota_rollout_event(ota_t *self, const char *id, const char *firmware, const char *state,
                       int wave, const char *reason)
{
    Mh__RolloutChanged ev = MH__ROLLOUT_CHANGED__INIT;
    ev.rollout_id = (char *)id;
    ev.firmware = (char *)firmware;
    ev.state = (char *)state;
    ev.wave = wave;
    ev.reason = (char *)(reason ? reason : "");
    ev.ts_ms = mh_now_ms();
    s_out_event(self, "ota.rollout", &ev.base);
    mh_info("rollout %s (%s): %s%s%s", id, firmware, state, reason && *reason ? ": " : "",
            reason ? reason : "");
}

void ota_out_flush(ota_t *self)
{
    for (ota_out_t *o = zlistx_first(self->out); o; o = zlistx_next(self->out)) {
        if (*o->type) {
            zsock_t *pub = self->pub;
            if (zstr_sendm(pub, o->type) == 0)
                zframe_send(&o->frame, pub, ZFRAME_DONTWAIT);
        } else if (mh_relay_add_packed(self->downlink, &o->frame, *o->job ? o->job : NULL) != 0) {
            mh_counter_inc(self->m_downlink_dropped);
            mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                           "out of memory: a job not handed over; it will be sent again");
        }
    }
    zlistx_purge(self->out);
    mh_relay_tick(self->downlink, true); /* one batch per transaction, now */
}

void ota_out_discard(ota_t *self)
{
    zlistx_purge(self->out);
}

void ota_out_publish(ota_t *self, const char *device, const char *topic, json_t *v, bool direct)
{
    char *payload = ota_dumps(v);
    json_decref(v);
    if (!payload)
        return;
    char full[384];
    if (direct) /* to the device alone (the broker plugin, motehub_acl.c) */
        snprintf(full, sizeof full, MH_DIRECT_PREFIX "%s/%s", device, topic);
    else
        snprintf(full, sizeof full, "%s", topic);
    Mh__Publish pub = MH__PUBLISH__INIT;
    pub.topic = full;
    pub.payload.data = (uint8_t *)payload;
    pub.payload.len = strlen(payload);
    pub.qos = 1;
    Mh__Publish *pubs[] = {&pub};
    Mh__Downlink dl = MH__DOWNLINK__INIT;
    dl.publishes = pubs;
    dl.n_publishes = 1;
    s_out_add(self, "", "downlink", &dl.base, NULL);
    free(payload);
}

/* A job as the device sees it, queued for publishing after COMMIT. Columns:
 * id, device, action, to_version, rollout, size, sha256, signature, fresh
 * ("t": never handed over), wave, document (a job of a document; NULL for
 * firmware), queued at (ms).
 *
 * Firmware goes to devices/{id}/ota for the native agent; an AWS IoT
 * device hears of a job on $aws/things/{id}/jobs/notify (the pending list)
 * and, on its first hand-over only, notify-next: the v1 SDK runs a job
 * again on every notify-next. Both go in one downlink, tagged with the job
 * id: it is sent once a gateway published them. */
void ota_out_job(ota_t *self, PGresult *res, int r, int64_t exp_s)
{
    const char *device = PQgetvalue(res, r, 1), *version = PQgetvalue(res, r, 3);
    bool firmware = PQgetisnull(res, r, 10), fresh = strcmp(PQgetvalue(res, r, 8), "t") == 0;
    Mh__Publish pubs[3], *pp[3];
    char *payloads[3] = {0};
    char topics[3][160];
    size_t n = 0;
    if (firmware) {
        json_t *job =
            json_pack("{s:s,s:s,s:s,s:s}", "jobId", PQgetvalue(res, r, 0), "rollout",
                      PQgetvalue(res, r, 4), "action", PQgetvalue(res, r, 2), "version", version);
        if (!PQgetisnull(res, r, 5)) {
            char link[512], url[1024];
            ota_link(self->secret, version, exp_s, link, sizeof link);
            snprintf(url, sizeof url, "%s%s", self->cfg->public_url, link);
            json_object_set_new(job, "url", json_string(url));
            json_object_set_new(job, "size", json_integer(ota_i64(res, r, 5)));
            json_object_set_new(job, "sha256", json_string(PQgetvalue(res, r, 6)));
            json_object_set_new(job, "signature", json_string(PQgetvalue(res, r, 7)));
        }
        payloads[n] = ota_dumps(job);
        json_decref(job);
        snprintf(topics[n++], sizeof topics[0], "devices/%s/ota", device);
    }
    /* the AWS IoT view of the one execution handed now */
    char job_id[96];
    ota_jobs_id(PQgetvalue(res, r, 4), PQgetvalue(res, r, 2), job_id, sizeof job_id);
    int64_t now_s = mh_now_ms() / 1000, queued_s = ota_i64(res, r, 11) / 1000;
    json_t *summary =
        json_pack("{s:s,s:I,s:I,s:i,s:i}", "jobId", job_id, "queuedAt", (json_int_t)queued_s,
                  "lastUpdatedAt", (json_int_t)queued_s, "versionNumber", 1, "executionNumber", 1);
    json_t *notify =
        json_pack("{s:{s:[O]},s:I}", "jobs", "QUEUED", summary, "timestamp", (json_int_t)now_s);
    payloads[n] = ota_dumps(notify);
    json_decref(notify);
    snprintf(topics[n++], sizeof topics[0], "$aws/things/%s/jobs/notify", device);
    if (fresh) {
        json_t *ex = json_deep_copy(summary);
        json_object_set_new(ex, "thingName", json_string(device));
        json_object_set_new(ex, "status", json_string("QUEUED"));
        json_object_set_new(ex, "jobDocument",
                            ota_jobs_document(self, firmware ? NULL : PQgetvalue(res, r, 10),
                                              PQgetvalue(res, r, 2), version, PQgetvalue(res, r, 4),
                                              ota_i64(res, r, 5), PQgetvalue(res, r, 6),
                                              PQgetvalue(res, r, 7)));
        json_t *next = json_pack("{s:o,s:I}", "execution", ex, "timestamp", (json_int_t)now_s);
        payloads[n] = ota_dumps(next);
        json_decref(next);
        snprintf(topics[n++], sizeof topics[0], "$aws/things/%s/jobs/notify-next", device);
    }
    json_decref(summary);
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        ok = ok && payloads[i];
        mh__publish__init(&pubs[i]);
        pubs[i].topic = topics[i];
        pubs[i].payload.data = (uint8_t *)payloads[i];
        pubs[i].payload.len = payloads[i] ? strlen(payloads[i]) : 0;
        pubs[i].qos = 1;
        pp[i] = &pubs[i];
    }
    if (ok) {
        Mh__Downlink dl = MH__DOWNLINK__INIT;
        dl.publishes = pp;
        dl.n_publishes = n;
        s_out_add(self, "", "downlink", &dl.base, PQgetvalue(res, r, 0));
    }
    for (size_t i = 0; i < n; i++)
        free(payloads[i]);
}
