/* libFuzzer target for the twin document rules and the JSON nesting limit
 * in front of them. Input: one byte choosing the operation, then up to two
 * JSON texts separated by a NUL byte (a device's or an operator's patches).
 *
 * Operations: a device's reported patch, an operator's desired patch,
 * desired and tags together, an AWS shadow update (tw_apply_shadow); and
 * the first text as an AWS shadow request (tw_shadow_parse,
 * tw_shadow_update_valid) applied to a new document; and the first text as
 * a provisioning template (tw_template_check) applied to the second as a
 * device's parameters (tw_template_apply).
 * Checked: mh_json_depth agrees with the tree jansson builds; a refused
 * patch leaves the document exactly as it was; an accepted one keeps every
 * limit (depth 8, 32 KiB, tags 8 KiB), bumps the version by one when it
 * changed something, and leaves delta equal to desired minus reported. */
#include "mh_json.h"
#include "mh_ids.h"
#include "tw_doc.h"
#include "tw_template.h"

#include <assert.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Tree depth in mh_json's sense; jansson itself stops parsing at 2,048. */
static int s_tree_depth(json_t *v)
{
    int best = 0;
    size_t i;
    const char *k;
    json_t *c;
    if (json_is_object(v))
        json_object_foreach(v, k, c)
        {
            int d = s_tree_depth(c);
            best = d > best ? d : best;
        }
    else if (json_is_array(v))
        json_array_foreach(v, i, c)
        {
            int d = s_tree_depth(c);
            best = d > best ? d : best;
        }
    else
        return 0;
    return best + 1;
}

static json_t *s_parse(const char *text, size_t len)
{
    const size_t flags = JSON_REJECT_DUPLICATES | JSON_DECODE_ANY;
    json_error_t err;
    json_t *v = mh_json_loadb(text, len, flags, MH_JSON_MAX_DEPTH, &err);
    int scanned = mh_json_depth(text, len, MH_JSON_MAX_DEPTH);
    if (v) {
        assert(s_tree_depth(v) == scanned);
    } else if (mh_json_too_deep(&err)) {
        assert(scanned > MH_JSON_MAX_DEPTH);
    } else if (scanned <= MH_JSON_MAX_DEPTH) {
        /* within the limit, refused only for what jansson refuses */
        assert(!json_loadb(text, len, flags, NULL));
    }
    return v;
}

static void s_check(json_t *doc, json_t *before, tw_status_t st, bool changed)
{
    if (st != TW_OK || !changed) {
        assert(json_equal(doc, before));
        return;
    }
    json_t *state = json_object_get(doc, "state");
    json_t *desired = json_object_get(state, "desired"),
           *reported = json_object_get(state, "reported");
    assert(tw_depth(desired) <= TW_MAX_DEPTH && tw_depth(reported) <= TW_MAX_DEPTH);
    assert(tw_size(desired) <= TW_MAX_STATE && tw_size(reported) <= TW_MAX_STATE);
    assert(tw_size(json_object_get(doc, "tags")) <= TW_MAX_TAGS);
    assert(tw_doc_version(doc) == tw_doc_version(before) + 1);
    json_t *delta = tw_delta(desired, reported);
    assert(json_equal(delta, tw_doc_delta(doc)));
    json_decref(delta);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *a = (const char *)data + 1, *nul = memchr(a, 0, size - 1);
    size_t alen = nul ? (size_t)(nul - a) : size - 1;
    const char *b = nul ? nul + 1 : NULL;
    size_t blen = nul ? size - 1 - alen - 1 : 0;
    json_t *pa = s_parse(a, alen), *pb = b ? s_parse(b, blen) : NULL;
    json_t *doc = tw_doc_new(NULL, 1000);
    char why[256];
    bool changed;
    for (int step = 0; step < 2; step++) {
        json_t *patch = step ? pb : pa;
        if (!patch)
            continue;
        json_t *before = json_deep_copy(doc);
        tw_status_t st;
        switch (data[0] % 4) {
        case 0: /* a device's reported patch, the second one older */
            st = tw_apply_reported(doc, patch, step ? 1500 : 2000, -1, &changed, why, sizeof why);
            break;
        case 1: /* an operator's desired patch */
            st = tw_apply_operator(doc, patch, NULL, 3000 + step, &changed, why, sizeof why);
            break;
        case 2: /* desired and tags together: both hold or neither */
            st = tw_apply_operator(doc, pa, step ? pb : pa, 3000 + step, &changed, why, sizeof why);
            break;
        default: /* an AWS shadow update: desired and reported (null: cleared), a
                    version that matches on the first step */
            st = tw_apply_shadow(doc, pa, step ? pb : pa, 4000 + step, step ? -1 : 1, &changed, why,
                                 sizeof why);
            break;
        }
        s_check(doc, before, st, changed);
        json_decref(before);
    }
    if (pa && json_is_object(pa)) {
        /* RFC 7386 on a scratch value: applying a patch twice changes nothing more */
        json_t *t = json_deep_copy(pb), *once;
        tw_merge_patch(&t, pa);
        once = json_deep_copy(t);
        tw_merge_patch(&t, pa);
        assert(json_equal(t, once));
        json_decref(once);
        json_decref(t);
    }
    /* the first text as an AWS shadow update request: refused, or its
     * sections applied to a new document within every limit */
    char why2[256];
    json_t *req = tw_shadow_parse((const uint8_t *)a, alen, false, why2, sizeof why2), *d = NULL,
           *r = NULL;
    int64_t ver = -1;
    if (req && json_is_object(req) &&
        tw_shadow_update_valid(req, &d, &r, &ver, why2, sizeof why2)) {
        assert(!d || json_is_object(d) || json_is_null(d));
        assert(!r || json_is_object(r) || json_is_null(r));
        json_t *fresh = tw_doc_new(NULL, 1000), *before = json_deep_copy(fresh);
        tw_status_t st = tw_apply_shadow(fresh, d, r, 5000, ver, &changed, why, sizeof why);
        s_check(fresh, before, st, changed);
        json_decref(before);
        json_decref(fresh);
    }
    json_decref(req);
    /* a template and a device's parameters: refused with a message, or a
     * device whose id is a device id */
    char terr[512];
    if (pa && tw_template_check(pa, terr, sizeof terr)) {
        json_t *made = tw_template_apply(pa, pb, terr, sizeof terr);
        const char *id = json_string_value(json_object_get(made, "thingName"));
        assert(!made || (id && mh_device_id_valid(id, strlen(id))));
        assert(!made || json_is_object(json_object_get(made, "tags")));
        json_decref(made);
    }
    json_decref(doc);
    json_decref(pa);
    json_decref(pb);
    return 0;
}
