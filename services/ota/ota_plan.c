#include "ota_plan.h"
#include "mh_json.h"

#include <math.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_WHY(...) snprintf(why, whylen, __VA_ARGS__)

bool ota_name_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > OTA_MAX_VERSION)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '+' || c == '-'))
            return false;
    }
    return true;
}

void ota_spec_clear(ota_spec_t *spec)
{
    json_decref(spec->target_tags);
    spec->target_tags = NULL;
    json_decref(spec->document);
    spec->document = NULL;
    json_decref(spec->stratify_by);
    spec->stratify_by = NULL;
}

/* A number field in [lo, hi]; absent keeps *out. */
static int s_number(json_t *root, const char *key, double lo, double hi, double *out, char *why,
                    size_t whylen)
{
    json_t *v = json_object_get(root, key);
    if (!v)
        return 0;
    if (!json_is_number(v) || json_number_value(v) < lo || json_number_value(v) > hi) {
        S_WHY("\"%s\" must be a number from %g to %g", key, lo, hi);
        return -1;
    }
    *out = json_number_value(v);
    return 0;
}

/* An integer field in [lo, hi]; absent keeps *out. */
static int s_integer(json_t *root, const char *key, int64_t lo, int64_t hi, int64_t *out, char *why,
                     size_t whylen)
{
    json_t *v = json_object_get(root, key);
    int64_t n = json_integer_value(v); /* 0 for what is not an integer */
    if (v && (!json_is_integer(v) || n < lo || n > hi)) {
        S_WHY("\"%s\" must be a whole number from %lld to %lld", key, (long long)lo, (long long)hi);
        return -1;
    }
    if (v)
        *out = n;
    return 0;
}

static int s_target(json_t *t, ota_spec_t *out, char *why, size_t whylen)
{
    if (!t || json_is_null(t))
        return 0;
    if (!json_is_object(t)) {
        S_WHY("\"target\" must be an object with \"tags\" and/or \"firmware\"");
        return -1;
    }
    const char *key;
    json_t *v;
    json_object_foreach(t, key, v)
    {
        if (strcmp(key, "tags") && strcmp(key, "firmware")) {
            S_WHY("unknown field \"target.%s\" (known: tags, firmware)", key);
            return -1;
        }
    }
    json_t *tags = json_object_get(t, "tags");
    if (tags && !json_is_null(tags)) {
        if (!json_is_object(tags)) {
            S_WHY("\"target.tags\" must be an object of strings");
            return -1;
        }
        json_object_foreach(tags, key, v)
        {
            if (!json_is_string(v) || !*key || strchr(key, ':')) {
                S_WHY("\"target.tags\" must map tag names (no ':') to strings");
                return -1;
            }
        }
        if (json_object_size(tags))
            out->target_tags = json_incref(tags);
    }
    json_t *fw = json_object_get(t, "firmware");
    if (fw && !json_is_null(fw)) {
        if (!json_is_string(fw) || !ota_name_valid(json_string_value(fw))) {
            S_WHY("\"target.firmware\" must be a version (1-64 of A-Z a-z 0-9 . _ + -)");
            return -1;
        }
        snprintf(out->target_firmware, sizeof out->target_firmware, "%s", json_string_value(fw));
    }
    return 0;
}

static int s_stratify(json_t *by, ota_spec_t *out, char *why, size_t whylen)
{
    if (!by || json_is_null(by))
        return 0;
    if (!json_is_array(by) || json_array_size(by) == 0 || json_array_size(by) > OTA_MAX_STRATA) {
        S_WHY("\"stratifyBy\" must be an array of 1 to %d tag names", OTA_MAX_STRATA);
        return -1;
    }
    size_t i, j;
    json_t *e;
    json_array_foreach(by, i, e)
    {
        const char *t = json_string_value(e);
        if (!t || !*t || strchr(t, ':') || strlen(t) > 128) {
            S_WHY("stratifyBy[%zu] must be a tag name (1-128 characters, no ':')", i);
            return -1;
        }
        for (j = 0; j < i; j++)
            if (strcmp(t, json_string_value(json_array_get(by, j))) == 0) {
                S_WHY("\"stratifyBy\" names tag \"%s\" twice", t);
                return -1;
            }
    }
    out->stratify_by = json_incref(by);
    return 0;
}

static int s_waves(json_t *w, ota_spec_t *out, char *why, size_t whylen)
{
    if (!w) {
        out->percents[0] = 1;
        out->percents[1] = 10;
        out->percents[2] = 100;
        out->nwaves = 3;
        return 0;
    }
    if (!json_is_array(w) || json_array_size(w) == 0 || json_array_size(w) > OTA_MAX_WAVES) {
        S_WHY("\"waves\" must be an array of 1 to %d waves", OTA_MAX_WAVES);
        return -1;
    }
    size_t i;
    json_t *e;
    double prev = 0;
    json_array_foreach(w, i, e)
    {
        json_t *p = json_is_object(e) ? json_object_get(e, "percent") : NULL;
        if (!p || !json_is_number(p) || json_object_size(e) != 1) {
            S_WHY("waves[%zu] must be {\"percent\": number}", i);
            return -1;
        }
        double v = json_number_value(p);
        if (!(v > prev) || v > 100) {
            S_WHY("wave percents must rise above 0 and end at 100 (waves[%zu] is %g)", i, v);
            return -1;
        }
        out->percents[i] = prev = v;
    }
    if (prev != 100) {
        S_WHY("wave percents are cumulative and the last must be 100 (it is %g)", prev);
        return -1;
    }
    out->nwaves = (int)json_array_size(w);
    return 0;
}

int ota_spec_from_json(json_t *root, ota_spec_t *out, char *why, size_t whylen)
{
    memset(out, 0, sizeof *out);
    out->success_threshold = 0.95;
    out->failure_threshold = 0.05;
    out->min_devices = 1;
    out->soak_s = 600;
    out->job_timeout_s = 3600;
    out->max_per_minute = 1000;
    out->rollback_on_failure = true;
    if (!json_is_object(root)) {
        S_WHY("the rollout must be a JSON object");
        return -1;
    }
    static const char *known[] = {"firmware",
                                  "document",
                                  "target",
                                  "waves",
                                  "successThreshold",
                                  "failureThreshold",
                                  "minDevicesPerWave",
                                  "soakSeconds",
                                  "jobTimeoutSeconds",
                                  "maxPerMinute",
                                  "onFailure",
                                  "stratifyBy",
                                  "health",
                                  NULL};
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        int i = 0;
        while (known[i] && strcmp(known[i], key))
            i++;
        if (!known[i]) {
            S_WHY("unknown field \"%s\"", key);
            return -1;
        }
    }
    json_t *fw = json_object_get(root, "firmware"), *doc = json_object_get(root, "document");
    if (fw && doc) {
        S_WHY("a rollout installs \"firmware\" or runs a job's \"document\", not both");
        return -1;
    }
    if (doc) {
        if (!json_is_object(doc) || json_dumpb(doc, NULL, 0, JSON_COMPACT) > OTA_MAX_DOCUMENT) {
            S_WHY("\"document\" must be a JSON object of at most %d bytes", OTA_MAX_DOCUMENT);
            return -1;
        }
        out->document = json_incref(doc);
        out->rollback_on_failure = false; /* nothing to roll back to */
    } else if (!json_is_string(fw) || !ota_name_valid(json_string_value(fw))) {
        S_WHY("\"firmware\" must be the version to install (1-64 of A-Z a-z 0-9 . _ + -),"
              " or \"document\" a job's document");
        return -1;
    } else {
        snprintf(out->firmware, sizeof out->firmware, "%s", json_string_value(fw));
    }
    double min_devices = 1;
    if (s_target(json_object_get(root, "target"), out, why, whylen) < 0 ||
        s_waves(json_object_get(root, "waves"), out, why, whylen) < 0 ||
        s_stratify(json_object_get(root, "stratifyBy"), out, why, whylen) < 0 ||
        ota_health_parse(json_object_get(root, "health"), &out->health, why, whylen) < 0 ||
        s_number(root, "successThreshold", 0, 1, &out->success_threshold, why, whylen) < 0 ||
        s_number(root, "failureThreshold", 0, 1, &out->failure_threshold, why, whylen) < 0 ||
        s_number(root, "minDevicesPerWave", 1, 1e9, &min_devices, why, whylen) < 0 ||
        s_integer(root, "soakSeconds", 0, 365LL * 86400, &out->soak_s, why, whylen) < 0 ||
        s_integer(root, "jobTimeoutSeconds", 1, 30LL * 86400, &out->job_timeout_s, why, whylen) <
            0 ||
        s_integer(root, "maxPerMinute", 1, 10000000, &out->max_per_minute, why, whylen) < 0) {
        ota_spec_clear(out);
        return -1;
    }
    if (min_devices != floor(min_devices)) {
        S_WHY("\"minDevicesPerWave\" must be a whole number of at least 1");
        ota_spec_clear(out);
        return -1;
    }
    out->min_devices = (int64_t)min_devices;
    for (int i = 0; out->document && i < out->health.nsig; i++)
        if (out->health.sig[i].kind == OTA_SIG_FW_ROLLBACK) {
            S_WHY("health.signals[%d]: a job of a document installs no version to roll back from",
                  i);
            ota_spec_clear(out);
            return -1;
        }
    json_t *of = json_object_get(root, "onFailure");
    if (of) {
        const char *s = json_string_value(of);
        if (!s || (strcmp(s, "rollback") && strcmp(s, "pause"))) {
            S_WHY("\"onFailure\" is \"rollback\" or \"pause\"");
            ota_spec_clear(out);
            return -1;
        }
        if (out->document && strcmp(s, "rollback") == 0) {
            S_WHY("a job of a document cannot roll back: \"onFailure\" is \"pause\"");
            ota_spec_clear(out);
            return -1;
        }
        out->rollback_on_failure = strcmp(s, "rollback") == 0;
    }
    return 0;
}

int ota_spec_parse(const char *json, ota_spec_t *out, char *why, size_t whylen)
{
    json_error_t err;
    json_t *root = mh_json_loads(json ? json : "", JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
                                 MH_JSON_MAX_DEPTH, &err);
    if (!root) {
        memset(out, 0, sizeof *out);
        S_WHY("invalid JSON at %d:%d: %s", err.line, err.column, err.text);
        return -1;
    }
    int rc = ota_spec_from_json(root, out, why, whylen);
    json_decref(root);
    return rc;
}

json_t *ota_spec_json(const ota_spec_t *s)
{
    json_t *target = json_object();
    if (s->target_tags)
        json_object_set(target, "tags", s->target_tags);
    if (*s->target_firmware)
        json_object_set_new(target, "firmware", json_string(s->target_firmware));
    json_t *waves = json_array();
    for (int i = 0; i < s->nwaves; i++)
        json_array_append_new(waves, json_pack("{s:f}", "percent", s->percents[i]));
    json_t *out = json_pack(
        "{s:s,s:o,s:o,s:f,s:f,s:I,s:I,s:I,s:I,s:s}", "firmware", s->firmware, "target", target,
        "waves", waves, "successThreshold", s->success_threshold, "failureThreshold",
        s->failure_threshold, "minDevicesPerWave", (json_int_t)s->min_devices, "soakSeconds",
        (json_int_t)s->soak_s, "jobTimeoutSeconds", (json_int_t)s->job_timeout_s, "maxPerMinute",
        (json_int_t)s->max_per_minute, "onFailure", s->rollback_on_failure ? "rollback" : "pause");
    if (s->stratify_by)
        json_object_set(out, "stratifyBy", s->stratify_by);
    if (s->health.on)
        json_object_set_new(out, "health", ota_health_json(&s->health));
    if (s->document) {
        json_object_del(out, "firmware");
        json_object_set(out, "document", s->document);
    }
    return out;
}

uint64_t ota_device_hash(const char *id)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)id, strlen(id), md);
    uint64_t h = 0;
    for (int i = 0; i < 8; i++)
        h = (h << 8) | md[i];
    return h;
}

typedef struct {
    uint64_t h;
    const char *id;
    size_t at;
} s_ord_t;

static int s_ord_cmp(const void *a, const void *b)
{
    const s_ord_t *x = a, *y = b;
    if (x->h != y->h)
        return x->h < y->h ? -1 : 1;
    return strcmp(x->id, y->id);
}

void ota_order_perm(char *const *ids, size_t n, size_t *perm)
{
    s_ord_t *v = malloc((n ? n : 1) * sizeof *v);
    if (!v)
        abort(); /* a few bytes per device; nothing sensible to do without them */
    for (size_t i = 0; i < n; i++)
        v[i] = (s_ord_t){ota_device_hash(ids[i]), ids[i], i};
    qsort(v, n, sizeof *v, s_ord_cmp);
    for (size_t i = 0; i < n; i++)
        perm[i] = v[i].at;
    free(v);
}

void ota_permute(void **a, const size_t *perm, size_t n, void **tmp)
{
    if (!a)
        return;
    for (size_t i = 0; i < n; i++)
        tmp[i] = a[perm[i]];
    memcpy(a, tmp, n * sizeof *a);
}

void ota_order_devices(char **ids, char **extra, size_t n)
{
    size_t *perm = malloc((n ? n : 1) * sizeof *perm);
    void **tmp = malloc((n ? n : 1) * sizeof *tmp);
    if (!perm || !tmp)
        abort();
    ota_order_perm(ids, n, perm);
    ota_permute((void **)ids, perm, n, tmp);
    ota_permute((void **)extra, perm, n, tmp);
    free(perm);
    free(tmp);
}

/* Device i's value of stratum k: tag by[k], or the firmware past the tags. */
static const char *s_stratum(char **fw, json_t **tags, const json_t *by, size_t k, size_t i)
{
    if (k == json_array_size(by))
        return fw ? fw[i] : NULL;
    json_t *v =
        tags && tags[i] ? json_object_get(tags[i], json_string_value(json_array_get(by, k))) : NULL;
    return json_string_value(v); /* a tag that is not a string is no value */
}

size_t ota_stratify(char **ids, char **fw, json_t **tags, size_t n, size_t head, const json_t *by)
{
    size_t nk = json_array_size(by) + 1;
    if (!by || n == 0)
        return head;
    if (head > n)
        head = n;
    /* the values wave 1 has, per stratum */
    json_t **seen = calloc(nk, sizeof *seen);
    bool *pick = calloc(n, sizeof *pick);
    if (!seen || !pick)
        abort();
    for (size_t k = 0; k < nk; k++) {
        seen[k] = json_object();
        for (size_t i = 0; i < head; i++) {
            const char *v = s_stratum(fw, tags, by, k, i);
            if (v)
                json_object_set_new(seen[k], v, json_true());
        }
    }
    size_t picked = 0;
    for (size_t i = head; i < n; i++)
        for (size_t k = 0; k < nk; k++) {
            const char *v = s_stratum(fw, tags, by, k, i);
            if (v && !json_object_get(seen[k], v)) {
                json_object_set_new(seen[k], v, json_true());
                pick[i] = true;
            }
        }
    /* a stable partition of [head, n): the picked first */
    char **ids2 = malloc(n * sizeof *ids2), **fw2 = malloc(n * sizeof *fw2);
    json_t **tags2 = malloc(n * sizeof *tags2);
    if (!ids2 || !fw2 || !tags2)
        abort();
    size_t at = head;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = head; i < n; i++)
            if (pick[i] == (pass == 0)) {
                ids2[at] = ids[i];
                fw2[at] = fw ? fw[i] : NULL;
                tags2[at] = tags ? tags[i] : NULL;
                picked += pass == 0;
                at++;
            }
    for (size_t i = head; i < n; i++) {
        ids[i] = ids2[i];
        if (fw)
            fw[i] = fw2[i];
        if (tags)
            tags[i] = tags2[i];
    }
    free(ids2);
    free(fw2);
    free(tags2);
    for (size_t k = 0; k < nk; k++)
        json_decref(seen[k]);
    free(seen);
    free(pick);
    return head + picked;
}

size_t ota_wave_end(double percent, size_t n)
{
    /* The small epsilon keeps 0.1 % of 1000 at 1, not 2, despite binary
     * fractions. */
    double end = ceil(percent * (double)n / 100.0 - 1e-9);
    if (end < 0)
        end = 0;
    return end > (double)n ? n : (size_t)end;
}

int ota_wave_of(const ota_spec_t *spec, size_t rank, size_t n, size_t first)
{
    if (rank < first)
        return 0;
    for (int k = 0; k < spec->nwaves; k++)
        if (rank < ota_wave_end(spec->percents[k], n))
            return k;
    return spec->nwaves - 1;
}

void ota_decide(const ota_spec_t *spec, const ota_wave_t *w, int current, int accepted, int64_t now,
                ota_decision_t *out)
{
    memset(out, 0, sizeof *out);
    out->fail_wave = out->ok_wave = out->start_wave = -1;
    int64_t min_done = spec->min_devices > 0 ? spec->min_devices : 1;
    for (int k = accepted + 1; k <= current && k < spec->nwaves; k++) {
        int64_t bad = w[k].failed + w[k].timed_out, done = bad + w[k].succeeded;
        if (done >= min_done && done > 0 &&
            (double)bad / (double)done > spec->failure_threshold + 1e-12) {
            out->fail_wave = k;
            snprintf(out->reason, sizeof out->reason,
                     "wave %d: %lld of %lld finished jobs failed or timed out (%.1f%% > %.1f%%)",
                     k + 1, (long long)bad, (long long)done, 100.0 * (double)bad / (double)done,
                     100.0 * spec->failure_threshold);
            return;
        }
    }
    if (current < 0) {
        out->start_wave = 0;
        return;
    }
    const ota_wave_t *c = &w[current];
    bool ok = current <= accepted || c->targeted == 0 ||
              (double)c->succeeded + 1e-9 >= spec->success_threshold * (double)c->targeted;
    int64_t ok_ms = c->ok_ms;
    if (ok && !ok_ms) {
        out->ok_wave = current;
        ok_ms = now;
    }
    if (current + 1 < spec->nwaves) {
        bool soaked = c->targeted == 0 || now - ok_ms >= spec->soak_s * 1000;
        if (ok && soaked)
            out->start_wave = current + 1;
        else if (!ok && !c->queued && !c->in_flight && !c->pending)
            out->stalled = true;
        return;
    }
    bool idle = true;
    for (int k = 0; k < spec->nwaves; k++)
        if (w[k].pending || w[k].queued || w[k].in_flight)
            idle = false;
    out->completed = idle;
}
