#include "gw_validate.h"
#include "mh_json.h"
#include "telemetry.pb-c.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *s_reason_names[GW_REASON_COUNT] = {
    "ok",           "bad_topic",        "bad_device_id", "too_large",       "bad_json",
    "bad_shape",    "too_many_samples", "empty",         "bad_metric_name", "bad_value",
    "bad_ts",       "future_ts",        "bad_seq",       "bad_protobuf",    "bad_status",
    "unregistered", "bad_ota_status",
};

const char *gw_reason_name(gw_reason_t r)
{
    return r < GW_REASON_COUNT ? s_reason_names[r] : "unknown";
}

static bool s_charset(const char *s, size_t len, const char *extra)
{
    if (len < 1 || len > GW_MAX_ID)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c && strchr(extra, c))))
            return false;
    }
    return true;
}

bool gw_device_id_valid(const char *id, size_t len)
{
    return s_charset(id, len, "._-");
}

bool gw_metric_name_valid(const char *name, size_t len)
{
    return s_charset(name, len, "_.");
}

/* "<prefix><id>/...": the id's start and length, and the '/' after it. */
static gw_reason_t s_split_id(const char *topic, size_t len, const char *prefix, const char **id,
                              size_t *idlen, const char **slash)
{
    size_t plen = strlen(prefix);
    if (len <= plen || memcmp(topic, prefix, plen) != 0)
        return GW_BAD_TOPIC;
    *id = topic + plen;
    *slash = memchr(*id, '/', len - plen);
    if (!*slash)
        return GW_BAD_TOPIC;
    *idlen = (size_t)(*slash - *id);
    return gw_device_id_valid(*id, *idlen) ? GW_OK : GW_BAD_DEVICE_ID;
}

gw_reason_t gw_topic_parse(const char *topic, size_t len, char *id_out, gw_topic_kind_t *kind)
{
    if (len > 22 && memcmp(topic, "motehub/aws/provision/", 22) == 0)
        return gw_provision_topic_parse(topic, len, id_out, NULL, kind);
    if (len > 0 && (topic[0] == '$' || (len > 12 && memcmp(topic, "motehub/aws/", 12) == 0)))
        return gw_aws_topic_parse(topic, len, id_out, NULL, kind);
    const char *id, *slash, *end = topic + len;
    size_t idlen;
    gw_reason_t r = s_split_id(topic, len, "devices/", &id, &idlen, &slash);
    if (r)
        return r;
    const char *rest = slash + 1;
    size_t rlen = (size_t)(end - rest);
#define S_IS(lit) (rlen == sizeof(lit) - 1 && memcmp(rest, lit, rlen) == 0)
    if (S_IS("telemetry"))
        *kind = GW_TOPIC_TELEMETRY;
    else if (S_IS("telemetry/pb"))
        *kind = GW_TOPIC_TELEMETRY_PB;
    else if (S_IS("status"))
        *kind = GW_TOPIC_STATUS;
    else if (S_IS("twin/get"))
        *kind = GW_TOPIC_TWIN_GET;
    else if (S_IS("twin/update"))
        *kind = GW_TOPIC_TWIN_UPDATE;
    else if (S_IS("commands/ack"))
        *kind = GW_TOPIC_COMMAND_ACK;
    else if (S_IS("ota/status"))
        *kind = GW_TOPIC_OTA_STATUS;
    else
        return GW_BAD_TOPIC;
#undef S_IS
    memcpy(id_out, id, idlen);
    id_out[idlen] = 0;
    return GW_OK;
}

/* A jobs request after "jobs/": get, start-next, or {jobId}/get and
 * {jobId}/update, where the job id may be $next (get only, as AWS). */
static bool s_jobs_request(const char *rest, size_t len)
{
#define S_IS(lit) (len == sizeof(lit) - 1 && memcmp(rest, lit, len) == 0)
    if (S_IS("get") || S_IS("start-next") || S_IS("$next/get"))
        return true;
#undef S_IS
    const char *slash = memchr(rest, '/', len);
    if (!slash || slash - rest > GW_MAX_JOB_ID || !s_charset(rest, (size_t)(slash - rest), "_-"))
        return false;
    size_t tail = len - (size_t)(slash - rest);
    return (tail == 4 && memcmp(slash, "/get", 4) == 0) ||
           (tail == 7 && memcmp(slash, "/update", 7) == 0);
}

gw_reason_t gw_aws_topic_parse(const char *topic, size_t len, char *id_out, char *name_out,
                               gw_topic_kind_t *kind)
{
    /* as published, or as the broker plugin moved it (motehub_acl.c) */
    const char *id, *slash, *end = topic + len;
    size_t idlen;
    gw_reason_t r = s_split_id(topic, len, topic[0] == '$' ? "$aws/things/" : "motehub/aws/things/",
                               &id, &idlen, &slash);
    if (r)
        return r;
    static const char shadow[] = "/shadow/", named[] = "name/", jobs[] = "/jobs/";
    const char *rest = slash;
    if ((size_t)(end - rest) > sizeof jobs - 1 && memcmp(rest, jobs, sizeof jobs - 1) == 0) {
        rest += sizeof jobs - 1;
        if (!s_jobs_request(rest, (size_t)(end - rest)))
            return GW_BAD_TOPIC;
        *kind = GW_TOPIC_JOBS;
        memcpy(id_out, id, idlen);
        id_out[idlen] = 0;
        if (name_out) {
            memcpy(name_out, rest, (size_t)(end - rest));
            name_out[end - rest] = 0;
        }
        return GW_OK;
    }
    if ((size_t)(end - rest) <= sizeof shadow - 1 || memcmp(rest, shadow, sizeof shadow - 1))
        return GW_BAD_TOPIC;
    rest += sizeof shadow - 1;
    const char *name = rest;
    size_t nlen = 0;
    if ((size_t)(end - rest) > sizeof named - 1 && memcmp(rest, named, sizeof named - 1) == 0) {
        name = rest + sizeof named - 1;
        const char *ns = memchr(name, '/', (size_t)(end - name));
        if (!ns)
            return GW_BAD_TOPIC;
        nlen = (size_t)(ns - name);
        if (nlen > GW_MAX_SHADOW_NAME || !s_charset(name, nlen, ":_-"))
            return GW_BAD_TOPIC;
        rest = ns + 1;
    }
    size_t rlen = (size_t)(end - rest);
#define S_IS(lit) (rlen == sizeof(lit) - 1 && memcmp(rest, lit, rlen) == 0)
    if (S_IS("get"))
        *kind = GW_TOPIC_SHADOW_GET;
    else if (S_IS("update"))
        *kind = GW_TOPIC_SHADOW_UPDATE;
    else if (S_IS("delete"))
        *kind = GW_TOPIC_SHADOW_DELETE;
    else
        return GW_BAD_TOPIC;
#undef S_IS
    memcpy(id_out, id, idlen);
    id_out[idlen] = 0;
    if (name_out) {
        memcpy(name_out, name, nlen);
        name_out[nlen] = 0;
    }
    return GW_OK;
}

gw_reason_t gw_provision_topic_parse(const char *topic, size_t len, char *client_out,
                                     char *template_out, gw_topic_kind_t *kind)
{
    static const char prefix[] = "motehub/aws/provision/", claim[] = "claim:";
    static const char create[] = "certificates/create/json",
                      csr[] = "certificates/create-from-csr/json",
                      tpl[] = "provisioning-templates/", prov[] = "/provision/json";
    const char *end = topic + len, *client = topic + sizeof prefix - 1;
    if (len <= sizeof prefix - 1 || memcmp(topic, prefix, sizeof prefix - 1) != 0)
        return GW_BAD_TOPIC;
    const char *slash = memchr(client, '/', (size_t)(end - client));
    size_t clen = slash ? (size_t)(slash - client) : 0;
    if (!slash || clen > GW_MAX_ID || clen <= sizeof claim - 1 ||
        memcmp(client, claim, sizeof claim - 1) != 0 ||
        !gw_device_id_valid(client + sizeof claim - 1, clen - (sizeof claim - 1)))
        return GW_BAD_DEVICE_ID;
    const char *rest = slash + 1, *name = rest;
    size_t rlen = (size_t)(end - rest), nlen = 0;
#define S_IS(lit) (rlen == sizeof(lit) - 1 && memcmp(rest, lit, rlen) == 0)
    if (S_IS(create))
        *kind = GW_TOPIC_PROVISION_CREATE;
    else if (S_IS(csr))
        *kind = GW_TOPIC_PROVISION_CSR;
    else if (rlen > sizeof tpl - 1 + sizeof prov - 1 && memcmp(rest, tpl, sizeof tpl - 1) == 0 &&
             memcmp(end - (sizeof prov - 1), prov, sizeof prov - 1) == 0) {
        name = rest + sizeof tpl - 1;
        nlen = (size_t)(end - (sizeof prov - 1) - name);
        if (nlen == 0 || nlen > GW_MAX_TEMPLATE || !s_charset(name, nlen, "_-"))
            return GW_BAD_TOPIC;
        *kind = GW_TOPIC_PROVISION_REGISTER;
    } else
        return GW_BAD_TOPIC;
#undef S_IS
    memcpy(client_out, client, clen);
    client_out[clen] = 0;
    if (template_out) {
        memcpy(template_out, name, nlen);
        template_out[nlen] = 0;
    }
    return GW_OK;
}

void gw_points_reset(gw_points_t *p)
{
    p->n = 0;
    p->arena_len = 0;
}

void gw_points_free(gw_points_t *p)
{
    free(p->v);
    free(p->arena);
    *p = (gw_points_t){0};
}

int gw_points_push(gw_points_t *p, const char *metric, size_t mlen, int64_t ts, double value)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        gw_point_t *v = realloc(p->v, cap * sizeof *v);
        if (!v)
            return -1;
        p->v = v;
        p->cap = cap;
    }
    if (p->arena_len + mlen + 1 > p->arena_cap) {
        size_t cap = (p->arena_cap ? p->arena_cap * 2 : 4096) + mlen + 1;
        char *a = realloc(p->arena, cap);
        if (!a)
            return -1;
        p->arena = a;
        p->arena_cap = cap;
    }
    p->v[p->n++] = (gw_point_t){(uint32_t)p->arena_len, ts, value};
    memcpy(p->arena + p->arena_len, metric, mlen);
    p->arena[p->arena_len + mlen] = 0;
    p->arena_len += mlen + 1;
    return 0;
}

#define S_DETAIL(...)                                                                              \
    do {                                                                                           \
        if (detail)                                                                                \
            snprintf(detail, detail_len, __VA_ARGS__);                                             \
    } while (0)

/* A device's JSON payload, parsed; NULL with *why (too large, or not JSON)
 * and the detail otherwise. */
static json_t *s_load(const char *payload, size_t len, gw_reason_t *why, char *detail,
                      size_t detail_len)
{
    if (len > GW_MAX_PAYLOAD) {
        S_DETAIL("payload of %zu bytes is over 256 KiB", len);
        *why = GW_TOO_LARGE;
        return NULL;
    }
    json_error_t err;
    json_t *root = mh_json_loadb(payload, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
                                 MH_JSON_MAX_DEPTH, &err);
    if (!root) {
        S_DETAIL("invalid JSON at %d:%d: %s", err.line, err.column, err.text);
        *why = GW_BAD_JSON;
    }
    return root;
}

static gw_reason_t s_check_ts(json_int_t ts, int64_t now_ms, size_t idx, char *detail,
                              size_t detail_len)
{
    if (ts < 0) {
        S_DETAIL("sample %zu: ts is negative", idx);
        return GW_BAD_TS;
    }
    if (ts > now_ms + GW_MAX_FUTURE_MS) {
        S_DETAIL("sample %zu: ts %lld is more than 1 hour in the future", idx, (long long)ts);
        return GW_FUTURE_TS;
    }
    return GW_OK;
}

static gw_reason_t s_sample_json(json_t *s, size_t idx, int64_t now_ms, gw_points_t *out,
                                 char *detail, size_t detail_len)
{
    if (!json_is_object(s)) {
        S_DETAIL("sample %zu is not a JSON object", idx);
        return GW_BAD_SHAPE;
    }
    int64_t ts = now_ms;
    json_t *jts = json_object_get(s, "ts");
    if (jts) {
        if (!json_is_integer(jts)) {
            S_DETAIL("sample %zu: ts must be an integer (ms since epoch)", idx);
            return GW_BAD_TS;
        }
        gw_reason_t r = s_check_ts(json_integer_value(jts), now_ms, idx, detail, detail_len);
        if (r)
            return r;
        ts = json_integer_value(jts);
    }
    json_t *jseq = json_object_get(s, "seq");
    if (jseq && (!json_is_integer(jseq) || json_integer_value(jseq) < 0)) {
        S_DETAIL("sample %zu: seq must be a non-negative integer", idx);
        return GW_BAD_SEQ;
    }
    size_t metrics = 0;
    const char *key;
    json_t *val;
    json_object_foreach(s, key, val)
    {
        if (strcmp(key, "ts") == 0 || strcmp(key, "seq") == 0)
            continue;
        size_t klen = strlen(key);
        if (!gw_metric_name_valid(key, klen)) {
            S_DETAIL("sample %zu: metric name \"%.64s\" is not 1-64 of A-Z a-z 0-9 _ .", idx, key);
            return GW_BAD_METRIC_NAME;
        }
        double v;
        if (json_is_boolean(val))
            v = json_is_true(val) ? 1.0 : 0.0;
        else if (json_is_number(val))
            v = json_number_value(val);
        else {
            S_DETAIL("sample %zu: metric \"%s\" must be a number or a boolean", idx, key);
            return GW_BAD_VALUE;
        }
        if (!isfinite(v)) {
            S_DETAIL("sample %zu: metric \"%s\" is not finite", idx, key);
            return GW_BAD_VALUE;
        }
        if (gw_points_push(out, key, klen, ts, v) < 0) {
            S_DETAIL("out of memory");
            return GW_TOO_LARGE;
        }
        metrics++;
    }
    if (!metrics) {
        S_DETAIL("sample %zu has no metric", idx);
        return GW_EMPTY;
    }
    return GW_OK;
}

gw_reason_t gw_validate_telemetry_json(const char *payload, size_t len, int64_t now_ms,
                                       gw_points_t *out, char *detail, size_t detail_len)
{
    if (gw_telemetry_json_fast(payload, len, now_ms, out))
        return GW_OK;
    return gw_validate_telemetry_json_full(payload, len, now_ms, out, detail, detail_len);
}

gw_reason_t gw_validate_telemetry_json_full(const char *payload, size_t len, int64_t now_ms,
                                            gw_points_t *out, char *detail, size_t detail_len)
{
    gw_reason_t why;
    json_t *root = s_load(payload, len, &why, detail, detail_len);
    if (!root)
        return why;
    size_t mark_n = out->n, mark_arena = out->arena_len;
    gw_reason_t r = GW_OK;
    if (json_is_array(root)) {
        size_t n = json_array_size(root);
        if (n == 0) {
            S_DETAIL("empty array of samples");
            r = GW_EMPTY;
        } else if (n > GW_MAX_SAMPLES) {
            S_DETAIL("%zu samples, at most %d per message", n, GW_MAX_SAMPLES);
            r = GW_TOO_MANY_SAMPLES;
        }
        for (size_t i = 0; r == GW_OK && i < n; i++)
            r = s_sample_json(json_array_get(root, i), i, now_ms, out, detail, detail_len);
    } else if (json_is_object(root)) {
        r = s_sample_json(root, 0, now_ms, out, detail, detail_len);
    } else {
        S_DETAIL("payload must be a sample object or an array of them");
        r = GW_BAD_SHAPE;
    }
    json_decref(root);
    if (r != GW_OK) {
        out->n = mark_n;
        out->arena_len = mark_arena;
    }
    return r;
}

gw_reason_t gw_validate_telemetry_pb(const uint8_t *payload, size_t len, int64_t now_ms,
                                     gw_points_t *out, char *detail, size_t detail_len)
{
    if (len > GW_MAX_PAYLOAD) {
        S_DETAIL("payload of %zu bytes is over 256 KiB", len);
        return GW_TOO_LARGE;
    }
    Mh__DeviceTelemetry *t = mh__device_telemetry__unpack(NULL, len, payload);
    if (!t) {
        S_DETAIL("payload is not a DeviceTelemetry protobuf");
        return GW_BAD_PROTOBUF;
    }
    size_t mark_n = out->n, mark_arena = out->arena_len;
    gw_reason_t r = GW_OK;
    if (t->n_samples == 0) {
        S_DETAIL("no samples");
        r = GW_EMPTY;
    } else if (t->n_samples > GW_MAX_SAMPLES) {
        S_DETAIL("%zu samples, at most %d per message", t->n_samples, GW_MAX_SAMPLES);
        r = GW_TOO_MANY_SAMPLES;
    }
    for (size_t i = 0; r == GW_OK && i < t->n_samples; i++) {
        Mh__DeviceSample *s = t->samples[i];
        int64_t ts = s->ts ? s->ts : now_ms;
        if ((r = s_check_ts(ts, now_ms, i, detail, detail_len)))
            break;
        if (s->n_metrics == 0) {
            S_DETAIL("sample %zu has no metric", i);
            r = GW_EMPTY;
            break;
        }
        for (size_t j = 0; r == GW_OK && j < s->n_metrics; j++) {
            Mh__DeviceMetric *m = s->metrics[j];
            size_t nlen = strlen(m->name);
            double v;
            if (!gw_metric_name_valid(m->name, nlen) || strcmp(m->name, "ts") == 0 ||
                strcmp(m->name, "seq") == 0) {
                S_DETAIL("sample %zu: metric name \"%.64s\" is not valid", i, m->name);
                r = GW_BAD_METRIC_NAME;
            } else if (m->value_case == MH__DEVICE_METRIC__VALUE_NUMBER) {
                v = m->number;
            } else if (m->value_case == MH__DEVICE_METRIC__VALUE_FLAG) {
                v = m->flag ? 1.0 : 0.0;
            } else {
                S_DETAIL("sample %zu: metric \"%s\" has no value", i, m->name);
                r = GW_BAD_VALUE;
            }
            if (r == GW_OK && !isfinite(v)) {
                S_DETAIL("sample %zu: metric \"%s\" is not finite", i, m->name);
                r = GW_BAD_VALUE;
            }
            if (r == GW_OK && gw_points_push(out, m->name, nlen, ts, v) < 0)
                r = GW_TOO_LARGE;
        }
    }
    mh__device_telemetry__free_unpacked(t, NULL);
    if (r != GW_OK) {
        out->n = mark_n;
        out->arena_len = mark_arena;
    }
    return r;
}

gw_reason_t gw_validate_status(const char *payload, size_t len, bool *online, char *firmware,
                               char *detail, size_t detail_len)
{
    if (firmware)
        *firmware = 0;
    gw_reason_t why;
    json_t *root = s_load(payload, len, &why, detail, detail_len);
    if (!root)
        return why;
    gw_reason_t r = GW_OK;
    const char *state = json_string_value(json_object_get(root, "state"));
    json_t *fw = json_object_get(root, "firmware"), *ip = json_object_get(root, "ip");
    if (!json_is_object(root) || !state ||
        (strcmp(state, "online") != 0 && strcmp(state, "offline") != 0)) {
        S_DETAIL("status needs \"state\": \"online\" or \"offline\"");
        r = GW_BAD_STATUS;
    } else if ((fw && !json_is_string(fw)) || (ip && !json_is_string(ip))) {
        S_DETAIL("\"firmware\" and \"ip\" must be strings");
        r = GW_BAD_STATUS;
    } else if (fw && json_string_length(fw) > GW_MAX_FIRMWARE) {
        S_DETAIL("\"firmware\" is at most %d bytes", GW_MAX_FIRMWARE);
        r = GW_BAD_STATUS;
    } else {
        *online = strcmp(state, "online") == 0;
        if (fw && firmware)
            snprintf(firmware, GW_MAX_FIRMWARE + 1, "%s", json_string_value(fw));
    }
    json_decref(root);
    return r;
}

gw_reason_t gw_validate_ota_status(const char *payload, size_t len, char *detail, size_t detail_len)
{
    gw_reason_t why;
    json_t *root = s_load(payload, len, &why, detail, detail_len);
    if (!root)
        return why;
    gw_reason_t r = GW_BAD_OTA_STATUS;
    json_t *job = json_object_get(root, "jobId"), *state = json_object_get(root, "state");
    json_t *progress = json_object_get(root, "progress"), *ver = json_object_get(root, "version");
    json_t *error = json_object_get(root, "error");
    const char *st = json_string_value(state);
    if (!json_is_object(root) || !json_is_string(job) || json_string_length(job) == 0 ||
        json_string_length(job) > 64)
        S_DETAIL("ota/status needs \"jobId\": the job's id");
    else if (!st || (strcmp(st, "downloading") && strcmp(st, "installing") &&
                     strcmp(st, "succeeded") && strcmp(st, "failed")))
        S_DETAIL("\"state\" is downloading, installing, succeeded or failed");
    else if (progress && (!json_is_number(progress) || json_number_value(progress) < 0 ||
                          json_number_value(progress) > 100))
        S_DETAIL("\"progress\" is a number from 0 to 100");
    else if (ver && (!json_is_string(ver) || json_string_length(ver) > GW_MAX_FIRMWARE))
        S_DETAIL("\"version\" is a string of at most %d bytes", GW_MAX_FIRMWARE);
    else if (error && (!json_is_string(error) || json_string_length(error) > 1024))
        S_DETAIL("\"error\" is a string of at most 1024 bytes");
    else
        r = GW_OK;
    json_decref(root);
    return r;
}
