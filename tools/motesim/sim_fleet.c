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
