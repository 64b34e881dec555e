#include "tw_doc.h"

#include "mh_json.h"

#include <stdio.h>
#include <string.h>

#define S_WHY(...)                                                                                 \
    do {                                                                                           \
        if (why)                                                                                   \
            snprintf(why, why_len, __VA_ARGS__);                                                   \
    } while (0)

json_t *tw_doc_new(json_t *tags, int64_t now_ms)
{
    json_t *t = tags ? json_deep_copy(tags) : json_object();
    return json_pack("{s:{s:{},s:{},s:{}}, s:{s:{},s:{}}, s:o, s:I, s:I}", "state", "desired",
                     "reported", "delta", "metadata", "desired", "reported", "tags", t, "version",
                     (json_int_t)1, "timestamp", (json_int_t)now_ms);
}

void tw_merge_patch(json_t **target, json_t *patch)
{
    if (!json_is_object(patch)) {
        json_decref(*target);
        *target = json_deep_copy(patch);
        return;
    }
    if (!json_is_object(*target)) {
        json_decref(*target);
        *target = json_object();
    }
    const char *key;
    json_t *value;
    json_object_foreach(patch, key, value)
    {
        if (json_is_null(value)) {
            json_object_del(*target, key);
            continue;
        }
        json_t *cur = json_incref(json_object_get(*target, key));
        tw_merge_patch(&cur, value);
        json_object_set_new(*target, key, cur);
    }
}

json_t *tw_delta(json_t *desired, json_t *reported)
{
    json_t *delta = json_object();
    const char *key;
    json_t *d;
    json_object_foreach(desired, key, d)
    {
        json_t *r = json_object_get(reported, key);
        if (json_is_object(d) && json_is_object(r)) {
            json_t *sub = tw_delta(d, r);
            if (json_object_size(sub))
                json_object_set_new(delta, key, sub);
            else
                json_decref(sub);
        } else if (!r || !json_equal(d, r)) {
            json_object_set(delta, key, d);
        }
    }
    return delta;
}

int tw_depth(json_t *v)
{
    int best = 0;
    if (json_is_object(v)) {
        const char *key;
        json_t *child;
        json_object_foreach(v, key, child)
        {
            int d = 1 + tw_depth(child);
            best = d > best ? d : best;
        }
    } else if (json_is_array(v)) {
        /* arrays add no key to the path, but their objects do */
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child)
        {
            int d = tw_depth(child);
            best = d > best ? d : best;
        }
    }
    return best;
}

size_t tw_size(json_t *v)
{
    return json_dumpb(v, NULL, 0, JSON_COMPACT);
}

json_t *tw_doc_delta(json_t *doc)
{
    return json_object_get(json_object_get(doc, "state"), "delta");
}

int64_t tw_doc_version(json_t *doc)
{
    return json_integer_value(json_object_get(doc, "version"));
}

/* Checks the limits of a section after a patch. */
static tw_status_t s_limits(json_t *section, size_t max, const char *name, char *why,
                            size_t why_len)
{
    if (tw_depth(section) > TW_MAX_DEPTH) {
        S_WHY("%s is nested deeper than %d levels", name, TW_MAX_DEPTH);
        return TW_TOO_LARGE;
    }
    if (tw_size(section) > max) {
        S_WHY("%s would be %zu bytes, over the %zu-byte limit", name, tw_size(section), max);
        return TW_TOO_LARGE;
    }
    return TW_OK;
}

static void s_bump(json_t *doc, int64_t now_ms)
{
    json_t *state = json_object_get(doc, "state");
    json_object_set_new(
        state, "delta",
        tw_delta(json_object_get(state, "desired"), json_object_get(state, "reported")));
    json_object_set_new(doc, "version", json_integer(tw_doc_version(doc) + 1));
    json_object_set_new(doc, "timestamp", json_integer(now_ms));
}

/* Patches one section of `doc` (state.desired, state.reported or tags) on a
 * copy; keys whose stored metadata timestamp is newer than `ts` are skipped
 * when `ordered`. Commits the copy only if the limits hold. */
static tw_status_t s_patch_section(json_t *doc, const char *section, json_t *patch, int64_t ts,
                                   bool ordered, size_t max, bool *changed, char *why,
                                   size_t why_len)
{
    if (!json_is_object(patch)) {
        S_WHY("%s must be a JSON object", section);
        return TW_BAD_REQUEST;
    }
    bool is_tags = strcmp(section, "tags") == 0;
    json_t *parent = is_tags ? doc : json_object_get(doc, "state");
    json_t *meta = is_tags ? NULL : json_object_get(json_object_get(doc, "metadata"), section);
    json_t *copy = json_deep_copy(json_object_get(parent, section));
    json_t *applied = json_object();
    const char *key;
    json_t *value;
    json_object_foreach(patch, key, value)
    {
        json_int_t stored =
            json_integer_value(json_object_get(json_object_get(meta, key), "timestamp"));
        if (ordered && meta && stored > ts)
            continue; /* an older update arriving late */
        json_object_set(applied, key, value);
    }
    tw_merge_patch(&copy, applied);
    tw_status_t st = s_limits(copy, max, section, why, why_len);
    /* the section itself is untouched until the copy replaces it */
    if (st == TW_OK && !json_equal(json_object_get(parent, section), copy)) {
        json_object_set(parent, section, copy);
        if (meta)
            json_object_foreach(applied, key, value)
            {
                if (json_is_null(value))
                    json_object_del(meta, key);
                else
                    json_object_set_new(meta, key, json_pack("{s:I}", "timestamp", (json_int_t)ts));
            }
        *changed = true;
    }
    json_decref(copy);
    json_decref(applied);
    return st;
}

tw_status_t tw_apply_reported(json_t *doc, json_t *patch, int64_t ts, int64_t expected_version,
                              bool *changed, char *why, size_t why_len)
{
    *changed = false;
    if (expected_version >= 0 && expected_version != tw_doc_version(doc)) {
        S_WHY("version %lld does not match the stored version %lld", (long long)expected_version,
              (long long)tw_doc_version(doc));
        return TW_CONFLICT;
    }
    tw_status_t st =
        s_patch_section(doc, "reported", patch, ts, true, TW_MAX_STATE, changed, why, why_len);
    if (st == TW_OK && *changed)
        s_bump(doc, ts);
    return st;
}

tw_status_t tw_apply_operator(json_t *doc, json_t *desired, json_t *tags, int64_t now_ms,
                              bool *changed, char *why, size_t why_len)
{
    *changed = false;
    if (!desired && !tags) {
        S_WHY("the patch needs \"desired\" and/or \"tags\"");
        return TW_BAD_REQUEST;
    }
    /* Check both on a scratch copy first, so a refused tags patch cannot
     * leave an applied desired patch behind. */
    json_t *scratch = json_deep_copy(doc);
    bool c1 = false, c2 = false;
    tw_status_t st = TW_OK;
    if (desired)
        st = s_patch_section(scratch, "desired", desired, now_ms, false, TW_MAX_STATE, &c1, why,
                             why_len);
    if (st == TW_OK && tags)
        st = s_patch_section(scratch, "tags", tags, now_ms, false, TW_MAX_TAGS, &c2, why, why_len);
    if (st == TW_OK && (c1 || c2)) {
        s_bump(scratch, now_ms);
        json_object_update(doc, scratch);
        *changed = true;
    }
    json_decref(scratch);
    return st;
}

/* A section set to null in a shadow update: a patch removing every key. */
static json_t *s_clear_patch(json_t *doc, const char *section)
{
    json_t *patch = json_object();
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(json_object_get(doc, "state"), section), key, v)
    {
        json_object_set_new(patch, key, json_null());
    }
    return patch;
}

tw_status_t tw_apply_shadow(json_t *doc, json_t *desired, json_t *reported, int64_t ts,
                            int64_t expected_version, bool *changed, char *why, size_t why_len)
{
    *changed = false;
    if (expected_version >= 0 && expected_version != tw_doc_version(doc)) {
        S_WHY("Version conflict: version %lld does not match the stored version %lld",
              (long long)expected_version, (long long)tw_doc_version(doc));
        return TW_CONFLICT;
    }
    json_t *scratch = json_deep_copy(doc);
    bool c1 = false, c2 = false;
    tw_status_t st = TW_OK;
    const char *names[2] = {"desired", "reported"};
    json_t *patches[2] = {desired, reported};
    bool *flags[2] = {&c1, &c2};
    for (int i = 0; i < 2 && st == TW_OK; i++) {
        if (!patches[i])
            continue;
        json_t *p =
            json_is_null(patches[i]) ? s_clear_patch(scratch, names[i]) : json_incref(patches[i]);
        st =
            s_patch_section(scratch, names[i], p, ts, i == 1, TW_MAX_STATE, flags[i], why, why_len);
        json_decref(p);
    }
    if (st == TW_OK && (c1 || c2)) {
        s_bump(scratch, ts);
        json_object_update(doc, scratch);
        *changed = true;
    }
    json_decref(scratch);
    return st;
}

/* ---- AWS IoT shadow requests (tw_shadow.c) ---- */

json_t *tw_shadow_parse(const uint8_t *data, size_t n, bool empty_ok, char *why, size_t len)
{
    while (n && data[n - 1] == 0)
        n--;
    if (n == 0 && empty_ok)
        return json_object();
    json_error_t err;
    json_t *v =
        mh_json_loadb((const char *)data, n, JSON_REJECT_DUPLICATES, MH_JSON_MAX_DEPTH, &err);
    if (!v)
        snprintf(why, len, "Invalid JSON: %s", err.text);
    return v;
}

bool tw_shadow_token_ok(json_t *root, char *why, size_t len)
{
    json_t *t = json_object_get(root, "clientToken");
    if (t && (!json_is_string(t) || json_string_length(t) > TW_SHADOW_MAX_TOKEN)) {
        snprintf(why, len, "clientToken must be a string of at most %d bytes", TW_SHADOW_MAX_TOKEN);
        return false;
    }
    return true;
}

bool tw_shadow_update_valid(json_t *root, json_t **desired, json_t **reported, int64_t *version,
                            char *why, size_t len)
{
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "state") && strcmp(key, "clientToken") && strcmp(key, "version")) {
            snprintf(why, len, "Unexpected field: %.64s", key);
            return false;
        }
    }
    if (!tw_shadow_token_ok(root, why, len))
        return false;
    json_t *state = json_object_get(root, "state");
    if (!state) {
        snprintf(why, len, "Missing required node: state");
        return false;
    }
    if (!json_is_object(state)) {
        snprintf(why, len, "State node must be an object");
        return false;
    }
    *desired = *reported = NULL;
    json_object_foreach(state, key, v)
    {
        bool d = strcmp(key, "desired") == 0;
        if (!d && strcmp(key, "reported")) {
            snprintf(why, len, "State contains an invalid node: '%.64s'", key);
            return false;
        }
        if (!json_is_object(v) && !json_is_null(v)) {
            snprintf(why, len, "%s node must be an object", d ? "Desired" : "Reported");
            return false;
        }
        if (tw_depth(v) > TW_MAX_DEPTH) {
            snprintf(why, len, "JSON contains too many levels of nesting; maximum is %d",
                     TW_MAX_DEPTH);
            return false;
        }
        *(d ? desired : reported) = v;
    }
    v = json_object_get(root, "version");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 0)) {
        snprintf(why, len, "Invalid version");
        return false;
    }
    *version = v ? json_integer_value(v) : -1;
    return true;
}
