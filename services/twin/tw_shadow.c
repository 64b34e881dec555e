/* twin: the AWS IoT Device Shadow service (shared/spec/aws-iot-compat.md)
 * on $aws/things/{id}/shadow[/name/{shadow}]/{get,update,delete}.
 *
 * The classic shadow is the device's twin document itself, so an operator's
 * desired change reaches a device on either protocol and both see the same
 * reports. Named shadows are further documents of the device in
 * twin.shadows, in the same format (tw_doc.h) without tags; a deleted one
 * keeps its row and version, so a shadow made again continues the count.
 * Replies use AWS's documents: epoch seconds, metadata on every leaf. */
#include "tw_internal.h"

#define S_MAX_REQUEST (8 * 1024) /* AWS: 8 KB per request and per document */

/* The reply topic $aws/things/{id}/shadow[/name/{n}]/{what}. */
static void s_topic(char *buf, size_t len, const char *device, const char *name, const char *what)
{
    if (name && *name)
        snprintf(buf, len, "$aws/things/%s/shadow/name/%s/%s", device, name, what);
    else
        snprintf(buf, len, "$aws/things/%s/shadow/%s", device, what);
}

static void s_send(tw_out_t *o, const char *device, const char *name, const char *what, json_t *v)
{
    char topic[256];
    s_topic(topic, sizeof topic, device, name, what);
    tw_out_publish_topic(o, device, topic, v);
}

/* AWS metadata: the value's shape with {"timestamp": s} on every leaf. */
static json_t *s_leaf_meta(json_t *v, json_int_t ts_s)
{
    if (!json_is_object(v))
        return json_pack("{s:I}", "timestamp", ts_s);
    json_t *m = json_object();
    const char *key;
    json_t *child;
    json_object_foreach(v, key, child)
    {
        json_object_set_new(m, key, s_leaf_meta(child, ts_s));
    }
    return m;
}

/* Metadata of `values` (a section, or part of one) from the document's
 * per-key timestamps (milliseconds) in metadata.<section>. */
static json_t *s_section_meta(json_t *doc, const char *section, json_t *values)
{
    json_t *stamps = json_object_get(json_object_get(doc, "metadata"), section);
    json_int_t now_s = json_integer_value(json_object_get(doc, "timestamp")) / 1000;
    json_t *m = json_object();
    const char *key;
    json_t *v;
    json_object_foreach(values, key, v)
    {
        json_t *ts = json_object_get(json_object_get(stamps, key), "timestamp");
        json_object_set_new(m, key, s_leaf_meta(v, ts ? json_integer_value(ts) / 1000 : now_s));
    }
    return m;
}

static json_int_t s_seconds(json_t *doc)
{
    return json_integer_value(json_object_get(doc, "timestamp")) / 1000;
}

/* The AWS shadow document of a twin-format document: state (desired,
 * reported, and delta when `with_delta` and they differ), metadata,
 * version, timestamp. Empty sections are left out, as AWS does. */
json_t *tw_shadow_aws_doc(json_t *doc, bool with_delta)
{
    json_t *state = json_object(), *meta = json_object();
    json_t *src = json_object_get(doc, "state");
    static const char *sections[2] = {"desired", "reported"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(src, sections[i]);
        if (json_object_size(v) == 0)
            continue;
        json_object_set(state, sections[i], v);
        json_object_set_new(meta, sections[i], s_section_meta(doc, sections[i], v));
    }
    json_t *delta = json_object_get(src, "delta");
    if (with_delta && json_object_size(delta))
        json_object_set(state, "delta", delta);
    return json_pack("{s:o,s:o,s:I,s:I}", "state", state, "metadata", meta, "version",
                     (json_int_t)tw_doc_version(doc), "timestamp", s_seconds(doc));
}

void tw_shadow_delta(tw_out_t *o, const char *device, const char *name, json_t *doc)
{
    json_t *delta = tw_doc_delta(doc);
    if (json_object_size(delta) == 0)
        return;
    json_t *msg = json_pack("{s:O,s:o,s:I,s:I}", "state", delta, "metadata",
                            s_section_meta(doc, "desired", delta), "version",
                            (json_int_t)tw_doc_version(doc), "timestamp", s_seconds(doc));
    s_send(o, device, name, "update/delta", msg);
}

void tw_shadow_operator_update(tw_out_t *o, const char *device, json_t *desired, json_t *doc)
{
    json_t *acc = json_pack("{s:{s:O},s:{s:o},s:I,s:I}", "state", "desired", desired, "metadata",
                            "desired", s_section_meta(doc, "desired", desired), "version",
                            (json_int_t)tw_doc_version(doc), "timestamp", s_seconds(doc));
    s_send(o, device, NULL, "update/accepted", acc);
}

static void s_reject(tw_t *self, tw_batch_t *b, const char *device, const char *name,
                     const char *op, int code, const char *msg, json_t *token)
{
    tw_reason_t r = code == 409 ? TW_R_CONFLICT : code == 413 ? TW_R_TOO_LARGE : TW_R_BAD_REQUEST;
    mh_counter_inc(self->m_rejected[r]);
    mh_log_limited(&self->rl_warn, MH_LOG_WARN, "refused shadow %s%s%s of %s (%d): %s", op,
                   name && *name ? " of " : "", name ? name : "", device, code, msg);
    json_t *rej =
        json_pack("{s:i,s:s,s:I}", "code", code, "message", msg, "timestamp", b->now / 1000);
    if (json_is_string(token))
        json_object_set(rej, "clientToken", token);
    char what[32];
    snprintf(what, sizeof what, "%s/rejected", op);
    s_send(&b->out, device, name, what, rej);
}

void tw_shadow_updated(tw_out_t *o, const char *device, const char *name, json_t *before,
                       json_t *doc, json_t *desired, json_t *reported, json_t *token, bool changed)
{
    json_t *state = json_object(), *meta = json_object();
    json_t *secs[2] = {desired, reported};
    static const char *names[2] = {"desired", "reported"};
    for (int i = 0; i < 2; i++) {
        if (!secs[i])
            continue;
        json_object_set(state, names[i], secs[i]);
        json_object_set_new(meta, names[i],
                            json_is_null(secs[i]) ? json_null()
                                                  : s_section_meta(doc, names[i], secs[i]));
    }
    json_t *acc = json_pack("{s:o,s:o,s:I,s:I}", "state", state, "metadata", meta, "version",
                            (json_int_t)tw_doc_version(doc), "timestamp", s_seconds(doc));
    if (token)
        json_object_set(acc, "clientToken", token);
    s_send(o, device, name, "update/accepted", acc);
    if (!changed)
        return;
    json_t *docs = json_pack("{s:o,s:o,s:I}", "previous", tw_shadow_aws_doc(before, false),
                             "current", tw_shadow_aws_doc(doc, false), "timestamp", s_seconds(doc));
    json_object_del(json_object_get(docs, "previous"), "timestamp");
    json_object_del(json_object_get(docs, "current"), "timestamp");
    if (token)
        json_object_set(docs, "clientToken", token);
    s_send(o, device, name, "update/documents", docs);
    if (!json_equal(tw_doc_delta(before), tw_doc_delta(doc)))
        tw_shadow_delta(o, device, name, doc);
}

/* ---- the classic shadow: the twin ---- */

static void s_classic(tw_t *self, tw_batch_t *b, tw_dev_t *d, const Mh__DeviceMessage *m,
                      const char *op, json_t *root)
{
    json_t *doc = tw_dev_doc(d), *tok = json_object_get(root, "clientToken");
    char why[256];
    if (m->kind == MH__DEVICE_MESSAGE__KIND__SHADOW_GET) {
        json_t *g = tw_shadow_aws_doc(doc, true);
        if (tok)
            json_object_set(g, "clientToken", tok);
        s_send(&b->out, d->id, NULL, "get/accepted", g);
        return;
    }
    json_t *desired = NULL, *reported = NULL;
    int64_t version = -1;
    bool del = m->kind == MH__DEVICE_MESSAGE__KIND__SHADOW_DELETE;
    if (del)
        desired = reported = json_null();
    else if (!tw_shadow_update_valid(root, &desired, &reported, &version, why, sizeof why)) {
        s_reject(self, b, d->id, NULL, op, 400, why, tok);
        return;
    }
    if (reported && !json_is_null(reported) && !tw_reported_types_ok(reported, why, sizeof why)) {
        s_reject(self, b, d->id, NULL, op, 400, why, tok);
        return;
    }
    json_t *before = json_deep_copy(doc);
    bool changed = false;
    tw_status_t st =
        tw_apply_shadow(doc, desired, reported, b->now, version, &changed, why, sizeof why);
    if (st != TW_OK) {
        s_reject(self, b, d->id, NULL, op, (int)st, why, tok);
        json_decref(before);
        return;
    }
    mh_counter_inc(self->m_updates_accepted);
    if (changed)
        tw_dev_changed(self, b, d, before);
    if (del) {
        json_t *acc = json_pack("{s:I,s:I}", "version", (json_int_t)tw_doc_version(doc),
                                "timestamp", b->now / 1000);
        if (tok)
            json_object_set(acc, "clientToken", tok);
        s_send(&b->out, d->id, NULL, "delete/accepted", acc);
    } else {
        tw_shadow_updated(&b->out, d->id, NULL, before, doc, desired, reported, tok, changed);
        /* a native device hears of the operator's and other clients' desired
         * changes on twin/delta */
        if (changed && desired)
            tw_maybe_delta(&b->out, d->id, tw_doc_delta(before), doc, false);
    }
    json_decref(before);
}

/* ---- named shadows: twin.shadows ---- */

bool tw_shadow_load(tw_t *self, const char *device, const char *name, int64_t now, json_t **doc,
                    bool *exists, char *err, size_t errlen)
{
    const char *p[2] = {device, name};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT doc::text, version, deleted FROM twin.shadows"
                               " WHERE device_id = $1 AND name = $2 FOR UPDATE",
                               2, p, err, errlen);
    if (!res)
        return false;
    *exists = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 2), "t") != 0;
    *doc = *exists ? json_loads(PQgetvalue(res, 0, 0), 0, NULL) : NULL;
    if (!*doc) {
        /* version 0: the first update makes version 1; a deleted shadow
         * continues its count */
        *doc = tw_doc_new(NULL, now);
        json_object_del(*doc, "tags");
        json_object_set_new(*doc, "version",
                            json_integer(PQntuples(res) == 1 ? tw_i64(res, 0, 1) : 0));
    }
    PQclear(res);
    return true;
}

bool tw_shadow_store(tw_t *self, const char *device, const char *name, json_t *doc, bool deleted,
                     char *err, size_t errlen)
{
    char *text = deleted ? NULL : tw_dumps(doc);
    char version[24];
    snprintf(version, sizeof version, "%" PRId64, tw_doc_version(doc));
    const char *p[5] = {device, name, text, version, deleted ? "true" : "false"};
    bool ok = mh_pg_ok(self->pg,
                       "INSERT INTO twin.shadows (device_id, name, doc, version, deleted)"
                       " VALUES ($1, $2, $3::jsonb, $4, $5)"
                       " ON CONFLICT (device_id, name) DO UPDATE SET doc = excluded.doc,"
                       " version = excluded.version, deleted = excluded.deleted",
                       5, p, err, errlen);
    free(text);
    return ok;
}

static bool s_named(tw_t *self, tw_batch_t *b, tw_dev_t *d, const Mh__DeviceMessage *m,
                    const char *op, json_t *root, char *err, size_t errlen)
{
    const char *name = m->shadow;
    json_t *tok = json_object_get(root, "clientToken"), *doc = NULL;
    bool exists = false;
    char why[256];
    if (!tw_shadow_load(self, d->id, name, b->now, &doc, &exists, err, errlen))
        return false;
    bool ok = true;
    if (m->kind != MH__DEVICE_MESSAGE__KIND__SHADOW_UPDATE && !exists) {
        snprintf(why, sizeof why, "No shadow exists with name: '%s'", name);
        s_reject(self, b, d->id, name, op, 404, why, tok);
    } else if (m->kind == MH__DEVICE_MESSAGE__KIND__SHADOW_GET) {
        json_t *g = tw_shadow_aws_doc(doc, true);
        if (tok)
            json_object_set(g, "clientToken", tok);
        s_send(&b->out, d->id, name, "get/accepted", g);
    } else if (m->kind == MH__DEVICE_MESSAGE__KIND__SHADOW_DELETE) {
        ok = tw_shadow_store(self, d->id, name, doc, true, err, errlen);
        json_t *acc = json_pack("{s:I,s:I}", "version", (json_int_t)tw_doc_version(doc),
                                "timestamp", b->now / 1000);
        if (tok)
            json_object_set(acc, "clientToken", tok);
        s_send(&b->out, d->id, name, "delete/accepted", acc);
    } else {
        json_t *desired = NULL, *reported = NULL, *before = json_deep_copy(doc);
        int64_t version = -1;
        bool changed = false;
        tw_status_t st = TW_BAD_REQUEST;
        if (tw_shadow_update_valid(root, &desired, &reported, &version, why, sizeof why))
            st =
                tw_apply_shadow(doc, desired, reported, b->now, version, &changed, why, sizeof why);
        json_t *state = json_object_get(doc, "state");
        if (st == TW_OK && tw_size(json_object_get(state, "desired")) +
                                   tw_size(json_object_get(state, "reported")) >
                               S_MAX_REQUEST) {
            snprintf(why, sizeof why, "The shadow document would be over %d bytes", S_MAX_REQUEST);
            st = TW_TOO_LARGE;
        }
        if (st != TW_OK) {
            s_reject(self, b, d->id, name, op, (int)st, why, tok);
        } else {
            mh_counter_inc(self->m_updates_accepted);
            if (changed || !exists)
                ok = tw_shadow_store(self, d->id, name, doc, false, err, errlen);
            tw_shadow_updated(&b->out, d->id, name, before, doc, desired, reported, tok, changed);
        }
        json_decref(before);
    }
    json_decref(doc);
    return ok;
}

bool tw_msg_shadow(tw_t *self, tw_batch_t *b, tw_dev_t *d, const Mh__DeviceMessage *m, char *err,
                   size_t errlen)
{
    const char *op = m->kind == MH__DEVICE_MESSAGE__KIND__SHADOW_GET      ? "get"
                     : m->kind == MH__DEVICE_MESSAGE__KIND__SHADOW_UPDATE ? "update"
                                                                          : "delete";
    const char *name = m->shadow && *m->shadow ? m->shadow : NULL;
    char why[256];
    if (m->payload.len > S_MAX_REQUEST) {
        snprintf(why, sizeof why, "The payload exceeds the maximum size allowed (%d bytes)",
                 S_MAX_REQUEST);
        s_reject(self, b, d->id, name, op, 413, why, NULL);
        return true;
    }
    bool empty_ok = m->kind != MH__DEVICE_MESSAGE__KIND__SHADOW_UPDATE;
    json_t *root = tw_shadow_parse(m->payload.data, m->payload.len, empty_ok, why, sizeof why);
    if (root && !json_is_object(root)) {
        snprintf(why, sizeof why, "Invalid JSON: the payload must be an object");
        json_decref(root);
        root = NULL;
    }
    if (!root) {
        mh_counter_inc(self->m_rejected[TW_R_BAD_JSON]);
        s_reject(self, b, d->id, name, op, 400, why, NULL);
        return true;
    }
    bool ok = true;
    if (!tw_shadow_token_ok(root, why, sizeof why))
        s_reject(self, b, d->id, name, op, 400, why, NULL);
    else if (name)
        ok = s_named(self, b, d, m, op, root, err, errlen);
    else
        s_classic(self, b, d, m, op, root);
    json_decref(root);
    return ok;
}
