#include "sim_fleet.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

double sim_share_of(const char *device, const char *salt)
{
    unsigned h = 2166136261u;
    for (const char *c = device; *c; c++)
        h = (h ^ (unsigned char)*c) * 16777619u;
    for (const char *c = salt; *c; c++)
        h = (h ^ (unsigned char)*c) * 16777619u;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return (double)(h % 1000000) / 1e6;
}

/* Parses the spec into {key: [[value, weight], ...]}; NULL with `why`. */
static json_t *s_parse(const char *spec, char *why, size_t whylen)
{
    json_t *out = json_object();
    char *copy = strdup(spec ? spec : ""), *save = NULL;
    for (char *part = strtok_r(copy, ";", &save); part; part = strtok_r(NULL, ";", &save)) {
        char *eq = strchr(part, '=');
        if (!eq || eq == part || !eq[1]) {
            snprintf(why, whylen, "\"%s\" is not key=value[:weight],...", part);
            goto bad;
        }
        *eq = 0;
        json_t *vals = json_array();
        json_object_set_new(out, part, vals);
        char *save2 = NULL;
        for (char *v = strtok_r(eq + 1, ",", &save2); v; v = strtok_r(NULL, ",", &save2)) {
            char *colon = strchr(v, ':'), *end = NULL;
            double w = 1;
            if (colon) {
                *colon = 0;
                w = strtod(colon + 1, &end);
                if (!*(colon + 1) || *end || !(w > 0)) {
                    snprintf(why, whylen, "the weight of %s=%s must be a positive number", part, v);
                    goto bad;
                }
            }
            if (!*v) {
                snprintf(why, whylen, "an empty value of tag %s", part);
                goto bad;
            }
            json_array_append_new(vals, json_pack("[s,f]", v, w));
        }
    }
    free(copy);
    return out;
bad:
    free(copy);
    json_decref(out);
    return NULL;
}

int sim_tags_check(const char *spec, char *why, size_t whylen)
{
    json_t *p = s_parse(spec, why, whylen);
    json_decref(p);
    return p ? 0 : -1;
}

char *sim_tags_json(const char *spec, const char *device)
{
    char why[200];
    json_t *p = s_parse(spec, why, sizeof why);
    if (!p)
        return NULL;
    json_t *tags = json_pack("{s:b}", "sim", 1);
    const char *key;
    json_t *vals;
    json_object_foreach(p, key, vals)
    {
        double total = 0, at = 0;
        size_t i;
        json_t *e;
        json_array_foreach(vals, i, e) total += json_real_value(json_array_get(e, 1));
        double pick = sim_share_of(device, key) * total;
        json_array_foreach(vals, i, e)
        {
            at += json_real_value(json_array_get(e, 1));
            if (pick < at || i + 1 == json_array_size(vals)) {
                json_object_set(tags, key, json_array_get(e, 0));
                break;
            }
        }
    }
    char *text = json_dumps(tags, JSON_COMPACT);
    json_decref(tags);
    json_decref(p);
    return text;
}

bool sim_ota_fails(const char *spec, const char *device, const char *version)
{
    const char *p = spec;
    size_t vl = strlen(version);
    while (p && *p) {
        const char *colon = strchr(p, ':'), *comma = strchr(p, ',');
        if (!colon)
            break;
        if ((size_t)(colon - p) == vl && strncmp(p, version, vl) == 0)
            return sim_share_of(device, version) < strtod(colon + 1, NULL);
        p = comma ? comma + 1 : NULL;
    }
    return false;
}

static const char *const s_modes[] = {"reconnect", "hot", "drain", "errors"};

/* Calls `fn` for each entry; -1 with `why` on a malformed one. */
static int s_each_bad(const char *spec, char *why, size_t whylen,
                      bool (*fn)(const char *version, double share, unsigned mode, void *ud),
                      void *ud)
{
    char *copy = strdup(spec ? spec : ""), *save = NULL;
    int rc = 0;
    for (char *e = strtok_r(copy, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
        char *c1 = strchr(e, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL, *end = NULL;
        if (!c1 || !c2 || c1 == e) {
            snprintf(why, whylen, "\"%s\" is not VERSION:SHARE:MODE", e);
            rc = -1;
            break;
        }
        *c1 = *c2 = 0;
        double share = strtod(c1 + 1, &end);
        unsigned mode = 0;
        for (unsigned k = 0; k < 4; k++)
            if (strcmp(c2 + 1, s_modes[k]) == 0)
                mode = 1u << k;
        if (end == c1 + 1 || *end || share < 0 || share > 1 || !mode) {
            snprintf(why, whylen,
                     "%s: the share is 0..1 and the mode reconnect, hot, drain or errors", e);
            rc = -1;
            break;
        }
        if (fn && fn(e, share, mode, ud))
            break;
    }
    free(copy);
    return rc;
}

int sim_misbehave_check(const char *spec, char *why, size_t whylen)
{
    return s_each_bad(spec, why, whylen, NULL, NULL);
}

typedef struct {
    const char *device, *firmware;
    unsigned mask;
} s_bad_t;

static bool s_match(const char *version, double share, unsigned mode, void *ud)
{
    s_bad_t *b = ud;
    char salt[200];
    snprintf(salt, sizeof salt, "misbehave:%s", version);
    if (strcmp(version, b->firmware) == 0 && sim_share_of(b->device, salt) < share)
        b->mask |= mode;
    return false;
}

unsigned sim_misbehaves(const char *spec, const char *device, const char *firmware)
{
    if (!spec || !*spec || !firmware)
        return 0;
    char why[200];
    s_bad_t b = {device, firmware, 0};
    s_each_bad(spec, why, sizeof why, s_match, &b);
    return b.mask;
}

static bool s_errors(const char *version, double share, unsigned mode, void *ud)
{
    (void)version, (void)share;
    if (mode == SIM_BAD_ERRORS)
        *(bool *)ud = true;
    return false;
}

bool sim_misbehave_errors(const char *spec)
{
    bool any = false;
    char why[200];
    s_each_bad(spec, why, sizeof why, s_errors, &any);
    return any;
}
