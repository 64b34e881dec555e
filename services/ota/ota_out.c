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

/* A job as the device sees it, queued for publishing after COMMIT. Columns:
 * id, device, action, to_version, rollout, size, sha256, signature. */
void ota_out_job(ota_t *self, PGresult *res, int r, int64_t exp_s)
{
    const char *device = PQgetvalue(res, r, 1), *version = PQgetvalue(res, r, 3);
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
    char *payload = ota_dumps(job);
    json_decref(job);
    if (!payload)
        return;
    char topic[128];
    snprintf(topic, sizeof topic, "devices/%s/ota", device);
    Mh__Publish pub = MH__PUBLISH__INIT;
    pub.topic = topic;
    pub.payload.data = (uint8_t *)payload;
    pub.payload.len = strlen(payload);
    pub.qos = 1;
    Mh__Publish *pubs[] = {&pub};
    Mh__Downlink dl = MH__DOWNLINK__INIT;
    dl.publishes = pubs;
    dl.n_publishes = 1;
    s_out_add(self, "", "downlink", &dl.base, PQgetvalue(res, r, 0));
    free(payload);
}
