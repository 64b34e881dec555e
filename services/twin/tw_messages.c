/* twin: what each device message does to its device — status, "seen",
 * twin get and update, command acks, the broker's presence list — inside
 * the batch's transaction (tw_batch.c runs it; tw_internal.h). */
#include "tw_internal.h"

void tw_dev_free(void **item)
{
    tw_dev_t *d = *item;
    if (d) {
        free(d->doc_text);
        json_decref(d->doc);
        free(d->firmware);
        free(d);
        *item = NULL;
    }
}

json_t *tw_dev_doc(tw_dev_t *d)
{
    if (!d->doc) {
        d->doc = json_loads(d->doc_text ? d->doc_text : "{}", 0, NULL);
        if (!d->doc)
            d->doc = tw_doc_new(NULL, 0);
    }
    return d->doc;
}

static void s_connectivity_event(tw_batch_t *b, tw_dev_t *d, const char *reason, int64_t ts)
{
    Mh__DeviceConnectivity ev = MH__DEVICE_CONNECTIVITY__INIT;
    ev.device_id = d->id;
    ev.online = d->online;
    ev.ts_ms = ts;
    ev.firmware = d->firmware ? d->firmware : "";
    ev.reason = (char *)reason;
    tw_out_event(&b->out, d->online ? "device.online" : "device.offline", &ev.base);
    json_array_append_new(b->conn, json_pack("{s:s,s:I,s:b,s:s}", "id", d->id, "ts", (json_int_t)ts,
                                             "online", d->online, "reason", reason ? reason : ""));
}

static void s_set_online(tw_batch_t *b, tw_dev_t *d, const char *source, int64_t ts)
{
    if (!d->online) {
        d->online = true;
        d->came_online = true;
        mh_counter_inc(b->m_online);
        s_connectivity_event(b, d, source, ts);
    }
    snprintf(d->source, sizeof d->source, "%s", source);
    d->conn_ms = ts;
    d->row_dirty = true;
}

/* Any message: last seen, and online for a device that never said so. */
void tw_msg_seen(tw_batch_t *b, tw_dev_t *d, int64_t ts)
{
    if (ts > d->last_seen) {
        d->last_seen = ts;
        d->row_dirty = true;
    }
    if (!d->online && ts >= d->conn_ms)
        s_set_online(b, d, "message", ts);
}

void tw_msg_status(tw_t *self, tw_batch_t *b, tw_dev_t *d, const Mh__DeviceMessage *m)
{
    int64_t ts = m->received_ms;
    if (ts < d->conn_ms) {
        /* Older than the last change we applied (another gateway was
         * faster): the newer state stands. */
        mh_counter_inc(self->m_rejected[TW_R_STALE_STATUS]);
        if (m->online && ts > d->last_seen) {
            d->last_seen = ts;
            d->row_dirty = true;
        }
        return;
    }
    if (m->firmware && *m->firmware &&
        !json_is_string(json_object_get(
            json_object_get(json_object_get(tw_dev_doc(d), "state"), "reported"), "firmware"))) {
        free(d->firmware);
        d->firmware = strdup(m->firmware);
        d->row_dirty = true;
    }
    if (m->online) {
        if (ts > d->last_seen)
            d->last_seen = ts;
        s_set_online(b, d, "status", ts);
    } else {
        bool was = d->online;
        d->online = false;
        d->came_online = false;
        d->conn_ms = ts;
        d->row_dirty = true;
        if (was)
            s_connectivity_event(b, d, "last_will", ts);
    }
}

static void s_reject(tw_t *self, tw_batch_t *b, tw_dev_t *d, const char *sub, int code,
                     const char *msg, json_t *token)
{
    tw_reason_t r = code == 409 ? TW_R_CONFLICT : code == 413 ? TW_R_TOO_LARGE : TW_R_BAD_REQUEST;
    mh_counter_inc(self->m_rejected[r]);
    mh_log_limited(&self->rl_warn, MH_LOG_WARN, "refused %s from %s (%d): %s", sub, d->id, code,
                   msg);
    json_t *rej = json_pack("{s:i,s:s}", "code", code, "message", msg);
    if (json_is_string(token))
        json_object_set(rej, "clientToken", token);
    char topic[48];
    snprintf(topic, sizeof topic, "%s/rejected", sub);
    tw_out_publish_json(&b->out, d->id, topic, rej);
}

/* Parses a device's JSON payload as an object. */
static json_t *s_parse_object(const Mh__DeviceMessage *m, bool empty_ok, char *why, size_t len)
{
    if (m->payload.len == 0 && empty_ok)
        return json_object();
    json_error_t err;
    json_t *v = mh_json_loadb((const char *)m->payload.data, m->payload.len,
                              JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, MH_JSON_MAX_DEPTH, &err);
    if (!v) {
        snprintf(why, len, "invalid JSON at %d:%d: %s", err.line, err.column, err.text);
        return NULL;
    }
    if (!json_is_object(v)) {
        snprintf(why, len, "the payload must be a JSON object");
        json_decref(v);
        return NULL;
    }
    return v;
}

static bool s_token_ok(json_t *root, char *why, size_t len)
{
    json_t *t = json_object_get(root, "clientToken");
    if (t && (!json_is_string(t) || json_string_length(t) > TW_MAX_TOKEN)) {
        snprintf(why, len, "\"clientToken\" must be a string of at most %d bytes", TW_MAX_TOKEN);
        return false;
    }
    return true;
}

void tw_msg_twin_get(tw_t *self, tw_batch_t *b, tw_dev_t *d, const Mh__DeviceMessage *m)
{
    char why[256];
    json_t *root = s_parse_object(m, true, why, sizeof why);
    if (root && !s_token_ok(root, why, sizeof why)) {
        json_decref(root);
        root = NULL;
    }
    if (!root) {
        s_reject(self, b, d, "twin/get", 400, why, NULL);
        return;
    }
    json_t *doc = json_deep_copy(tw_dev_doc(d));
    json_t *tok = json_object_get(root, "clientToken");
    if (tok)
        json_object_set(doc, "clientToken", tok);
    tw_out_publish_json(&b->out, d->id, "twin/get/accepted", doc);
    json_decref(root);
}

/* Types of the reported keys the platform reads (device-protocol.md). */
bool tw_reported_types_ok(json_t *rep, char *why, size_t len)
{
    json_t *v;
    if ((v = json_object_get(rep, "firmware")) && !json_is_null(v) &&
        (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 64)) {
        snprintf(why, len, "reported \"firmware\" must be a string of 1-64 bytes");
        return false;
    }
    if ((v = json_object_get(rep, "battery")) && !json_is_null(v) &&
        (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 100)) {
        snprintf(why, len, "reported \"battery\" must be a number from 0 to 100");
        return false;
    }
    if ((v = json_object_get(rep, "rssi")) && !json_is_null(v) && !json_is_number(v)) {
        snprintf(why, len, "reported \"rssi\" must be a number (dBm)");
        return false;
    }
    if ((v = json_object_get(rep, "location")) && !json_is_null(v)) {
        json_t *lat = json_object_get(v, "lat"), *lon = json_object_get(v, "lon");
        if (!json_is_object(v) || !json_is_number(lat) || !json_is_number(lon) ||
            fabs(json_number_value(lat)) > 90 || fabs(json_number_value(lon)) > 180) {
            snprintf(why, len,
                     "reported \"location\" must be {\"lat\": -90..90, \"lon\": -180..180}");
            return false;
        }
    }
    return true;
}

/* Validates a twin/update request; on success *reported, *version (-1 =
 * none) and *ts are set. */
static bool s_update_valid(json_t *root, int64_t now, json_t **reported, int64_t *version,
                           int64_t *ts, char *why, size_t len)
{
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "state") && strcmp(key, "clientToken") && strcmp(key, "version") &&
            strcmp(key, "ts")) {
            snprintf(why, len, "unknown field \"%.64s\" (allowed: state, clientToken, version, ts)",
                     key);
            return false;
        }
    }
    if (!s_token_ok(root, why, len))
        return false;
    json_t *state = json_object_get(root, "state");
    if (!json_is_object(state)) {
        snprintf(why, len, "\"state\" must be an object with \"reported\"");
        return false;
    }
    json_object_foreach(state, key, v)
    {
        if (strcmp(key, "reported")) {
            snprintf(why, len,
                     strcmp(key, "desired") == 0
                         ? "a device may only update state.reported; desired is the operators'"
                         : "unknown field \"state.%.64s\" (allowed: reported)",
                     key);
            return false;
        }
    }
    *reported = json_object_get(state, "reported");
    if (!json_is_object(*reported)) {
        snprintf(why, len, "\"state.reported\" must be an object");
        return false;
    }
    v = json_object_get(root, "version");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 1)) {
        snprintf(why, len, "\"version\" must be a positive integer");
        return false;
    }
    *version = v ? json_integer_value(v) : -1;
    v = json_object_get(root, "ts");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 0)) {
        snprintf(why, len, "\"ts\" must be milliseconds since the epoch");
        return false;
    }
    if (v && json_integer_value(v) > now + TW_MAX_FUTURE) {
        snprintf(why, len, "\"ts\" is more than an hour in the future");
        return false;
    }
    *ts = v ? json_integer_value(v) : now;
    return tw_reported_types_ok(*reported, why, len);
}

static void s_twin_changed_event(tw_batch_t *b, tw_dev_t *d, json_t *before_rep, json_t *doc)
{
    json_t *rep = json_object_get(json_object_get(doc, "state"), "reported");
    Mh__TwinChanged ev = MH__TWIN_CHANGED__INIT;
    ev.device_id = d->id;
    ev.version = tw_doc_version(doc);
    json_t *fw = json_object_get(rep, "firmware"), *loc = json_object_get(rep, "location");
    ev.firmware_changed = !json_equal(fw, json_object_get(before_rep, "firmware")) &&
                          (fw || json_object_get(before_rep, "firmware"));
    ev.firmware = (char *)(json_is_string(fw) ? json_string_value(fw) : "");
    ev.location_changed = !json_equal(loc, json_object_get(before_rep, "location")) &&
                          (loc || json_object_get(before_rep, "location"));
    if (json_is_object(loc)) {
        ev.has_location = true;
        ev.lat = json_number_value(json_object_get(loc, "lat"));
        ev.lon = json_number_value(json_object_get(loc, "lon"));
    }
    json_t *bat = json_object_get(rep, "battery"), *rssi = json_object_get(rep, "rssi");
    if ((ev.has_battery = json_is_number(bat)))
        ev.battery = json_number_value(bat);
    if ((ev.has_rssi = json_is_number(rssi)))
        ev.rssi = json_number_value(rssi);
    tw_out_event(&b->out, "twin.changed", &ev.base);
}

/* Publishes twin/delta when the delta is non-empty and differs from `old`,
 * and with `aws` the AWS IoT shadow's update/delta too. */
void tw_maybe_delta(tw_out_t *o, const char *device, json_t *old, json_t *doc, bool aws)
{
    json_t *delta = tw_doc_delta(doc);
    if (json_object_size(delta) == 0 || (old && json_equal(old, delta)))
        return;
    json_t *msg = json_object();
    json_object_set(msg, "state", delta);
    json_object_set_new(msg, "version", json_integer(tw_doc_version(doc)));
    json_object_set(msg, "timestamp", json_object_get(doc, "timestamp"));
    tw_out_publish_json(o, device, "twin/delta", msg);
    if (aws)
        tw_shadow_delta(o, device, NULL, doc);
}

void tw_dev_changed(tw_t *self, tw_batch_t *b, tw_dev_t *d, json_t *before)
{
    json_t *doc = tw_dev_doc(d);
    mh_counter_inc(self->m_updates_changed);
    d->doc_dirty = d->row_dirty = true;
    d->version = tw_doc_version(doc);
    json_t *fw =
        json_object_get(json_object_get(json_object_get(doc, "state"), "reported"), "firmware");
    if (json_is_string(fw) && (!d->firmware || strcmp(d->firmware, json_string_value(fw)))) {
        free(d->firmware);
        d->firmware = strdup(json_string_value(fw));
    }
    s_twin_changed_event(b, d, json_object_get(json_object_get(before, "state"), "reported"), doc);
}

void tw_msg_twin_update(tw_t *self, tw_batch_t *b, tw_dev_t *d, const Mh__DeviceMessage *m)
{
    char why[256];
    json_t *root = s_parse_object(m, false, why, sizeof why);
    if (!root) {
        mh_counter_inc(self->m_rejected[TW_R_BAD_JSON]);
        s_reject(self, b, d, "twin/update", 400, why, NULL);
        return;
    }
    json_t *tok = json_object_get(root, "clientToken");
    json_t *reported = NULL;
    int64_t version = -1, ts = 0;
    if (!s_update_valid(root, b->now, &reported, &version, &ts, why, sizeof why)) {
        s_reject(self, b, d, "twin/update", 400, why, json_is_string(tok) ? tok : NULL);
        json_decref(root);
        return;
    }
    json_t *doc = tw_dev_doc(d);
    /* What the change is measured against: the reported and delta objects
     * as they are now. Applying replaces them in `doc` and never changes
     * them, so references are enough — no copy of the document. */
    json_t *state = json_object_get(doc, "state");
    json_t *before =
        json_pack("{s:{s:O?,s:O?}}", "state", "reported", json_object_get(state, "reported"),
                  "delta", json_object_get(state, "delta"));
    bool changed = false;
    tw_status_t st = tw_apply_reported(doc, reported, ts, version, &changed, why, sizeof why);
    if (st != TW_OK) {
        s_reject(self, b, d, "twin/update", (int)st, why, tok);
    } else {
        mh_counter_inc(self->m_updates_accepted);
        if (changed)
            tw_dev_changed(self, b, d, before);
        json_t *acc = json_object();
        json_object_set_new(acc, "state", json_pack("{s:O}", "reported", reported));
        json_object_set_new(acc, "version", json_integer(tw_doc_version(doc)));
        json_object_set_new(acc, "timestamp", json_integer(b->now));
        if (tok)
            json_object_set(acc, "clientToken", tok);
        tw_out_publish_json(&b->out, d->id, "twin/update/accepted", acc);
        if (changed)
            tw_maybe_delta(&b->out, d->id, tw_doc_delta(before), doc, false);
    }
    json_decref(before);
    json_decref(root);
}

void tw_msg_command_ack(tw_t *self, tw_batch_t *b, tw_dev_t *d, const Mh__DeviceMessage *m)
{
    char why[256];
    json_t *root = s_parse_object(m, false, why, sizeof why);
    const char *st = NULL;
    json_t *id = NULL, *result = NULL;
    if (root) {
        id = json_object_get(root, "id");
        st = json_string_value(json_object_get(root, "status"));
        result = json_object_get(root, "result");
        if (!json_is_string(id) ||
            !mh_device_id_valid(json_string_value(id), json_string_length(id)))
            snprintf(why, sizeof why, "\"id\" must be a command id");
        else if (!st || (strcmp(st, "succeeded") && strcmp(st, "failed") && strcmp(st, "rejected")))
            snprintf(why, sizeof why, "\"status\" must be succeeded, failed or rejected");
        else if (result && !json_is_object(result) && !json_is_null(result))
            snprintf(why, sizeof why, "\"result\" must be an object");
        else if (result && tw_size(result) > TW_MAX_PARAMS)
            snprintf(why, sizeof why, "\"result\" is over %d bytes", TW_MAX_PARAMS);
        else
            why[0] = 0;
    }
    if (!root || why[0]) {
        mh_counter_inc(self->m_rejected[TW_R_BAD_ACK]);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "ignored commands/ack from %s: %s", d->id, why);
        json_decref(root);
        return;
    }
    json_array_append_new(b->acks,
                          json_pack("{s:O,s:s,s:s,s:O}", "id", id, "device_id", d->id, "status", st,
                                    "result", result ? result : json_null()));
    json_decref(root);
}

void tw_msg_present(tw_batch_t *b, const Mh__DeviceSeen *p)
{
    b->presence = true;
    for (size_t j = 0; j < p->n_device_ids; j++) {
        tw_dev_t *d = zhashx_lookup(b->devs, p->device_ids[j]);
        if (d && p->ts_ms > d->present_ms) {
            d->present_ms = p->ts_ms;
            d->row_dirty = true;
        }
    }
}
