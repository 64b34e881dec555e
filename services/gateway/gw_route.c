/* gateway: routing a device message — validation, refusals, forwarding
 * to twin and ota, and telling twin a device was seen (gw_internal.h). */
#include "gw_internal.h"

/* ---- handling device messages ---- */

/* Counts, logs and publishes a refusal. The topic is copied into a string
 * only here, off the path of accepted messages. */
static void s_reject(gw_t *self, const char *device, const gw_in_t *in, gw_reason_t r,
                     const char *detail)
{
    char topic[512];
    size_t tlen = in->tlen < sizeof topic - 1 ? in->tlen : sizeof topic - 1;
    memcpy(topic, in->topic, tlen);
    topic[tlen] = 0;
    mh_counter_inc(self->m_rejected[r]);
    mh_log_limited(&self->rl_reject, MH_LOG_WARN,
                   "rejected message, ignoring (device=%s topic=%.128s reason=%s: %s)",
                   *device ? device : "-", topic, gw_reason_name(r), detail);
    if (self->pub) {
        Mh__DeviceRejected ev = MH__DEVICE_REJECTED__INIT;
        ev.device_id = (char *)device;
        ev.reason = (char *)gw_reason_name(r);
        ev.detail = (char *)detail;
        ev.topic = (char *)topic;
        mh_event_publish(self->pub, "device.rejected", &ev.base);
    }
}

/* ---- twin: forwarding and seen ---- */

/* Hands a message to twin or ota through their relay: kept until they
 * acknowledge it (mh_relay.h). */
static void s_forward_to(gw_t *self, mh_relay_t *relay, const char *who, const char *type,
                         const ProtobufCMessage *body)
{
    if (mh_relay_add(relay, type, body) == 0) {
        mh_counter_inc(self->m_forwarded);
    } else {
        mh_counter_inc(self->m_forward_dropped);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "out of memory: a message to %s dropped", who);
    }
}

static void s_forward(gw_t *self, const char *type, const ProtobufCMessage *body)
{
    s_forward_to(self, self->twin_relay, "twin", type, body);
}

static void s_forward_message(gw_t *self, const char *device, Mh__DeviceMessage__Kind kind,
                              const char *payload, size_t plen, int64_t now, bool online,
                              const char *firmware)
{
    Mh__DeviceMessage dm = MH__DEVICE_MESSAGE__INIT;
    dm.device_id = (char *)device;
    dm.kind = kind;
    dm.payload.data = (uint8_t *)payload;
    dm.payload.len = plen;
    dm.received_ms = now;
    dm.online = online;
    dm.firmware = (char *)(firmware ? firmware : "");
    s_forward(self, "device.message", &dm.base);
    /* The message itself tells twin the device was seen. */
    zhashx_update(self->seen, device, (void *)(uintptr_t)mh_mono_ms());
}

void gw_seen_flush(gw_t *self)
{
    size_t n = self->nseen;
    if (!n)
        return;
    char *ids[GW_SEEN_BATCH];
    int64_t ms[GW_SEEN_BATCH];
    for (size_t i = 0; i < n; i++) {
        ids[i] = self->seen_pending[i].id;
        ms[i] = self->seen_pending[i].ms;
    }
    Mh__DeviceSeen ev = MH__DEVICE_SEEN__INIT;
    ev.device_ids = ids;
    ev.n_device_ids = n;
    ev.seen_ms = ms;
    ev.n_seen_ms = n;
    ev.ts_ms = mh_now_ms();
    s_forward(self, "device.seen", &ev.base);
    self->nseen = 0;
}

/* A device's message as it came, with `arg` (a shadow's name, a jobs
 * request, or ""), to twin or ota. */
static void s_forward_raw(gw_t *self, mh_relay_t *relay, const char *who, const char *device,
                          Mh__DeviceMessage__Kind kind, const char *arg, const char *payload,
                          size_t plen, int64_t now)
{
    Mh__DeviceMessage dm = MH__DEVICE_MESSAGE__INIT;
    dm.device_id = (char *)device;
    dm.kind = kind;
    dm.shadow = (char *)arg;
    dm.payload.data = (uint8_t *)payload;
    dm.payload.len = plen;
    dm.received_ms = now;
    s_forward_to(self, relay, who, "device.message", &dm.base);
}

/* Telemetry tells twin a device is alive, at most once per seen-interval. */
static void s_seen(gw_t *self, const char *device, int64_t received_ms)
{
    int64_t now = mh_mono_ms();
    uintptr_t last = (uintptr_t)zhashx_lookup(self->seen, device);
    if (last && now - (int64_t)last < self->cfg->seen_interval_ms)
        return;
    zhashx_update(self->seen, device, (void *)(uintptr_t)now);
    snprintf(self->seen_pending[self->nseen].id, sizeof self->seen_pending[0].id, "%s", device);
    self->seen_pending[self->nseen++].ms = received_ms;
    if (self->nseen >= GW_SEEN_BATCH)
        gw_seen_flush(self);
}

void gw_seen_prune(gw_t *self)
{
    int64_t now = mh_mono_ms();
    zlistx_t *old = zlistx_new();
    for (void *v = zhashx_first(self->seen); v; v = zhashx_next(self->seen))
        if (now - (int64_t)(uintptr_t)v >= self->cfg->seen_interval_ms)
            zlistx_add_end(old, (void *)zhashx_cursor(self->seen));
    for (const char *k = zlistx_first(old); k; k = zlistx_next(old))
        zhashx_delete(self->seen, k);
    zlistx_destroy(&old);
}

/* ---- routing a device message ---- */

/* The broker plugin's list of connected devices, {"ids":[...]}: to twin as
 * "broker.present" (ids that are not device ids are left out). */
static void s_present(gw_t *self, const char *payload, size_t len)
{
    json_t *root = mh_json_loadb(payload, len, 0, MH_JSON_MAX_DEPTH, NULL);
    json_t *ids = json_object_get(root, "ids");
    size_t n = json_array_size(ids), k = 0;
    char **v = calloc(n + 1, sizeof *v);
    for (size_t i = 0; v && i < n; i++) {
        const char *id = json_string_value(json_array_get(ids, i));
        if (id && gw_device_id_valid(id, strlen(id)))
            v[k++] = (char *)id;
    }
    if (k && self->twin_relay) {
        Mh__DeviceSeen ps = MH__DEVICE_SEEN__INIT;
        ps.device_ids = v;
        ps.n_device_ids = k;
        ps.ts_ms = mh_now_ms();
        s_forward(self, "broker.present", &ps.base);
    } else if (!json_is_array(ids)) {
        mh_counter_inc(self->m_bad_internal);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "malformed presence list from the broker");
    }
    free(v);
    json_decref(root);
}

void gw_handle(gw_t *self, const gw_in_t *in)
{
    if (in->tlen == strlen(GW_PRESENT_TOPIC) &&
        memcmp(in->topic, GW_PRESENT_TOPIC, in->tlen) == 0) {
        s_present(self, in->payload, in->plen);
        return;
    }
    char device[GW_MAX_ID + 1];
    char detail[256];
    device[0] = detail[0] = 0;
    gw_topic_kind_t kind;
    gw_reason_t r = gw_topic_parse(in->topic, in->tlen, device, &kind);
    if (r) {
        s_reject(self, device, in, r, "topic is not one of the protocol's");
        return;
    }
    mh_counter_inc(self->m_received[kind]);
    bool provision = kind >= GW_TOPIC_PROVISION_CREATE && kind <= GW_TOPIC_PROVISION_REGISTER;
    if (self->registry && !provision && !mh_idset_has(self->registry, device)) {
        mh_idset_missed(self->registry);
        s_reject(self, device, in, GW_UNREGISTERED, "the device is not registered");
        return;
    }
    const char *payload = in->payload;
    size_t plen = in->plen;
    int64_t now = mh_now_ms();
    gw_points_reset(&self->scratch);
    switch (kind) {
    case GW_TOPIC_TELEMETRY:
        r = gw_validate_telemetry_json(payload, plen, now, &self->scratch, detail, sizeof detail);
        break;
    case GW_TOPIC_TELEMETRY_PB:
        r = gw_validate_telemetry_pb((const uint8_t *)payload, plen, now, &self->scratch, detail,
                                     sizeof detail);
        break;
    case GW_TOPIC_STATUS: {
        bool online = false;
        char firmware[GW_MAX_FIRMWARE + 1];
        r = gw_validate_status(payload, plen, &online, firmware, detail, sizeof detail);
        if (!r && self->twin_relay)
            s_forward_message(self, device, MH__DEVICE_MESSAGE__KIND__STATUS, payload, plen, now,
                              online, firmware);
        break;
    }
    case GW_TOPIC_TWIN_GET:
    case GW_TOPIC_TWIN_UPDATE:
    case GW_TOPIC_COMMAND_ACK:
        /* Twin validates these and answers the device on .../rejected. */
        if (plen > GW_MAX_PAYLOAD) {
            snprintf(detail, sizeof detail, "payload of %zu bytes is over the limit", plen);
            r = GW_TOO_LARGE;
        } else if (self->twin_relay) {
            Mh__DeviceMessage__Kind k =
                kind == GW_TOPIC_TWIN_GET      ? MH__DEVICE_MESSAGE__KIND__TWIN_GET
                : kind == GW_TOPIC_TWIN_UPDATE ? MH__DEVICE_MESSAGE__KIND__TWIN_UPDATE
                                               : MH__DEVICE_MESSAGE__KIND__COMMAND_ACK;
            s_forward_message(self, device, k, payload, plen, now, false, NULL);
        }
        break;
    case GW_TOPIC_SHADOW_GET:
    case GW_TOPIC_SHADOW_UPDATE:
    case GW_TOPIC_SHADOW_DELETE:
    case GW_TOPIC_JOBS: {
        /* Twin (shadows) and ota (jobs) validate these and answer on the AWS
         * reply topics; the shadow's name or the jobs request goes along. */
        bool jobs = kind == GW_TOPIC_JOBS;
        mh_relay_t *to = jobs ? self->ota_relay : self->twin_relay;
        if (plen > GW_MAX_PAYLOAD) {
            snprintf(detail, sizeof detail, "payload of %zu bytes is over the limit", plen);
            r = GW_TOO_LARGE;
        } else if (to) {
            char arg[GW_MAX_AWS_ARG + 1];
            gw_aws_topic_parse(in->topic, in->tlen, device, arg, &kind);
            s_forward_raw(self, to, jobs ? "ota" : "twin", device,
                          jobs                          ? MH__DEVICE_MESSAGE__KIND__JOBS_REQUEST
                          : kind == GW_TOPIC_SHADOW_GET ? MH__DEVICE_MESSAGE__KIND__SHADOW_GET
                          : kind == GW_TOPIC_SHADOW_UPDATE
                              ? MH__DEVICE_MESSAGE__KIND__SHADOW_UPDATE
                              : MH__DEVICE_MESSAGE__KIND__SHADOW_DELETE,
                          arg, payload, plen, now);
        }
        /* twin sees a device in its own messages; ota's are told to it */
        if (!r && !jobs && self->twin_relay)
            zhashx_update(self->seen, device, (void *)(uintptr_t)mh_mono_ms());
        else if (!r && self->twin_relay)
            s_seen(self, device, now);
        break;
    }
    case GW_TOPIC_PROVISION_CREATE:
    case GW_TOPIC_PROVISION_CSR:
    case GW_TOPIC_PROVISION_REGISTER:
        /* Twin answers the claim certificate's client (tw_provision.c);
         * `device` is that client's id here, no device's. */
        if (plen > GW_MAX_PAYLOAD) {
            snprintf(detail, sizeof detail, "payload of %zu bytes is over the limit", plen);
            r = GW_TOO_LARGE;
        } else if (self->twin_relay) {
            char tpl[GW_MAX_AWS_ARG + 1];
            gw_provision_topic_parse(in->topic, in->tlen, device, tpl, &kind);
            s_forward_raw(
                self, self->twin_relay, "twin", device,
                kind == GW_TOPIC_PROVISION_CREATE ? MH__DEVICE_MESSAGE__KIND__PROVISION_CREATE
                : kind == GW_TOPIC_PROVISION_CSR  ? MH__DEVICE_MESSAGE__KIND__PROVISION_CSR
                                                  : MH__DEVICE_MESSAGE__KIND__PROVISION_REGISTER,
                tpl, payload, plen, now);
        }
        break;
    case GW_TOPIC_OTA_STATUS:
        r = gw_validate_ota_status(payload, plen, detail, sizeof detail);
        if (!r && self->ota_relay)
            s_forward_raw(self, self->ota_relay, "ota", device,
                          MH__DEVICE_MESSAGE__KIND__OTA_STATUS, "", payload, plen, now);
        if (!r && self->twin_relay)
            s_seen(self, device, now);
        break;
    default:
        break;
    }
    if (r) {
        s_reject(self, device, in, r, detail);
        return;
    }
    if (self->scratch.n) {
        if (gw_batch_add(self, device) < 0) {
            mh_error("out of memory adding points; message from %s lost", device);
            return;
        }
        mh_counter_add(self->m_points, self->scratch.n);
        if (self->twin_relay)
            s_seen(self, device, now);
    }
}
