#include "tw_template.h"

#include "mh_ids.h"
#include "mh_json.h"

#include <regex.h>
#include <stdio.h>
#include <string.h>

#define S_MAX_PARAMS 64
#define S_MAX_VALUE  256

static bool s_aws(json_t *body)
{
    return json_object_get(body, "Resources") || json_object_get(body, "Parameters");
}

static json_t *s_params(json_t *body)
{
    return json_object_get(body, s_aws(body) ? "Parameters" : "parameters");
}

/* The AWS::IoT::Thing resource's properties, or NULL. */
static json_t *s_thing_props(json_t *body)
{
    const char *k;
    json_t *r;
    json_object_foreach(json_object_get(body, "Resources"), k, r)
    {
        const char *type = json_string_value(json_object_get(r, "Type"));
        if (type && strcmp(type, "AWS::IoT::Thing") == 0)
            return json_object_get(r, "Properties");
    }
    return NULL;
}

static json_t *s_field(json_t *body, const char *motehub, const char *aws)
{
    if (!s_aws(body))
        return json_object_get(body, motehub);
    if (strcmp(aws, "DeviceConfiguration") == 0)
        return json_object_get(body, aws);
    return json_object_get(s_thing_props(body), aws);
}

static const char *s_pattern(json_t *spec, bool aws)
{
    return json_string_value(json_object_get(spec, aws ? "AllowedPattern" : "pattern"));
}

static const char *s_default(json_t *spec, bool aws)
{
    return json_string_value(json_object_get(spec, aws ? "Default" : "default"));
}

/* Evaluates an expression: a string (with {Name} placeholders when
 * `braces`: Motehub's templates; AWS's strings are literal), {"Ref":N},
 * {"Fn::Join":[sep,[...]]}. With `values` NULL it only checks that every
 * name is a declared parameter. Returns a new string, or NULL (err). */
static json_t *s_eval(json_t *e, bool braces, json_t *params, json_t *values, int depth, char *err,
                      size_t errlen)
{
    if (depth > 8) {
        snprintf(err, errlen, "expressions nest at most 8 deep");
        return NULL;
    }
    if (json_is_string(e)) {
        const char *s = json_string_value(e);
        char out[1024];
        size_t n = 0;
        while (*s) {
            const char *close = braces && *s == '{' ? strchr(s, '}') : NULL;
            const char *v = NULL;
            size_t vl = 1;
            char name[128];
            if (close && (size_t)(close - s - 1) < sizeof name && close > s + 1) {
                memcpy(name, s + 1, (size_t)(close - s - 1));
                name[close - s - 1] = 0;
                if (!json_object_get(params, name)) {
                    snprintf(err, errlen, "\"{%s}\" names no parameter", name);
                    return NULL;
                }
                v = values ? json_string_value(json_object_get(values, name)) : "";
                vl = v ? strlen(v) : 0;
                s = close + 1;
            } else {
                v = s++;
            }
            if (n + vl >= sizeof out) {
                snprintf(err, errlen, "a value over %zu bytes", sizeof out - 1);
                return NULL;
            }
            memcpy(out + n, v ? v : "", vl);
            n += vl;
        }
        return json_stringn(out, n);
    }
    const char *ref = json_string_value(json_object_get(e, "Ref"));
    if (ref && json_object_size(e) == 1) {
        if (!json_object_get(params, ref)) {
            snprintf(err, errlen, "Ref \"%s\" names no parameter", ref);
            return NULL;
        }
        const char *v = values ? json_string_value(json_object_get(values, ref)) : "";
        return json_string(v ? v : "");
    }
    json_t *join = json_object_get(e, "Fn::Join");
    if (join && json_object_size(e) == 1) {
        const char *sep = json_string_value(json_array_get(join, 0));
        json_t *parts = json_array_get(join, 1);
        if (!sep || !json_is_array(parts) || json_array_size(join) != 2) {
            snprintf(err, errlen, "Fn::Join takes [separator, [values]]");
            return NULL;
        }
        char out[1024];
        size_t n = 0, i;
        json_t *p;
        json_array_foreach(parts, i, p)
        {
            json_t *v = s_eval(p, braces, params, values, depth + 1, err, errlen);
            if (!v)
                return NULL;
            int w = snprintf(out + n, sizeof out - n, "%s%s", i ? sep : "", json_string_value(v));
            json_decref(v);
            if (w < 0 || (size_t)w >= sizeof out - n) {
                snprintf(err, errlen, "a value over %zu bytes", sizeof out - 1);
                return NULL;
            }
            n += (size_t)w;
        }
        return json_stringn(out, n);
    }
    snprintf(err, errlen, "a value must be a string, {\"Ref\":...} or {\"Fn::Join\":...}");
    return NULL;
}

/* Every value of an object of expressions, evaluated (values NULL: checked). */
static json_t *s_eval_object(json_t *obj, bool braces, const char *what, json_t *params,
                             json_t *values, char *err, size_t errlen)
{
    json_t *out = json_object();
    const char *k;
    json_t *e;
    json_object_foreach(obj, k, e)
    {
        json_t *v = s_eval(e, braces, params, values, 0, err, errlen);
        if (!v) {
            size_t l = strlen(err);
            snprintf(err + l, errlen - l, " (%s.%s)", what, k);
            json_decref(out);
            return NULL;
        }
        json_object_set_new(out, k, v);
    }
    return out;
}

/* Patterns are POSIX extended regexes, compiled by glibc, which copies a
 * repeated part once per repetition when it compiles: "[A-F]+++…+" or
 * "(a{999}){999}" takes gigabytes (found by the fuzzer). A pattern is
 * taken only if the copies it asks for stay under S_PATTERN_COST — sized
 * for what serial numbers and ids need ("[A-Z0-9]{1,64}" costs 65) — and
 * without back-references (\1: a glibc extension whose matching can take
 * exponential time). */
#define S_PATTERN_MAX  256
#define S_PATTERN_COST 4096
static bool s_pattern_ok(const char *p, char *why, size_t whylen)
{
    if (strlen(p) > S_PATTERN_MAX) {
        snprintf(why, whylen, "is longer than %d characters", S_PATTERN_MAX);
        return false;
    }
    /* the size of the sequence being read at each open group, and of the
     * last atom (what a repetition applies to) */
    double seq[S_PATTERN_MAX + 1], last = 0;
    int depth = 0;
    seq[0] = 0;
    for (const char *c = p; *c; c++) {
        double times = 0;
        switch (*c) {
        case '\\':
            if (c[1] >= '1' && c[1] <= '9') {
                snprintf(why, whylen, "uses a back-reference, which is not supported");
                return false;
            }
            if (c[1])
                c++;
            last = 1;
            seq[depth] += 1;
            break;
        case '[': {
            const char *e = c + 1;
            if (*e == '^')
                e++;
            if (*e == ']')
                e++;
            while (*e && *e != ']')
                e +=
                    e[0] == '[' && (e[1] == ':' || e[1] == '.' || e[1] == '=') && strchr(e + 2, ']')
                        ? strchr(e + 2, ']') - e + 1
                        : 1;
            c = *e ? e : e - 1;
            last = 1;
            seq[depth] += 1;
            break;
        }
        case '(':
            seq[++depth] = 0;
            last = 0;
            break;
        case ')':
            if (depth == 0) {
                last = 1;
                seq[0] += 1;
                break;
            }
            last = seq[depth--];
            seq[depth] += last;
            break;
        case '*':
        case '+':
        case '?':
            times = 2;
            break;
        case '{': {
            /* {m}, {m,} or {m,n}; anything else is read as a plain brace */
            const char *e = c + 1;
            double m = 0;
            while (*e >= '0' && *e <= '9' && m < 1e6)
                m = m * 10 + (*e++ - '0');
            bool digits = e > c + 1;
            double n = m;
            if (digits && *e == ',') {
                e++;
                if (*e >= '0' && *e <= '9')
                    for (n = 0; *e >= '0' && *e <= '9' && n < 1e6;)
                        n = n * 10 + (*e++ - '0');
            }
            if (digits && *e == '}') {
                times = (n > m ? n : m) + 1;
                c = e;
                break;
            }
            last = 1;
            seq[depth] += 1;
            break;
        }
        default:
            last = 1;
            seq[depth] += 1;
        }
        if (times > 0) {
            seq[depth] += last * (times - 1);
            last *= times;
        }
        if (seq[depth] > S_PATTERN_COST || last > S_PATTERN_COST) {
            snprintf(why, whylen, "has repetitions that expand to more than %d parts",
                     S_PATTERN_COST);
            return false;
        }
    }
    return true;
}

/* regcomp after s_pattern_ok; false with `why` filled (it reads after
 * "pattern "). */
static bool s_regcomp(regex_t *re, const char *pat, int flags, char *why, size_t whylen)
{
    if (!s_pattern_ok(pat, why, whylen))
        return false;
    if (regcomp(re, pat, REG_EXTENDED | flags) != 0) {
        snprintf(why, whylen, "is not a POSIX extended regex");
        return false;
    }
    return true;
}

bool tw_template_check(json_t *body, char *err, size_t errlen)
{
    if (!json_is_object(body)) {
        snprintf(err, errlen, "a template is a JSON object");
        return false;
    }
    char *text = mh_json_dumps(body, JSON_COMPACT);
    size_t size = text ? strlen(text) : 0;
    free(text);
    if (size > TW_TEMPLATE_MAX) {
        snprintf(err, errlen, "a template is at most %d bytes", TW_TEMPLATE_MAX);
        return false;
    }
    bool aws = s_aws(body);
    json_t *params = s_params(body), *enabled = json_object_get(body, "enabled");
    if (params && (!json_is_object(params) || json_object_size(params) > S_MAX_PARAMS)) {
        snprintf(err, errlen, "parameters must be an object of at most %d", S_MAX_PARAMS);
        return false;
    }
    if (enabled && !json_is_boolean(enabled)) {
        snprintf(err, errlen, "enabled must be true or false");
        return false;
    }
    const char *name;
    json_t *spec;
    json_object_foreach(params, name, spec)
    {
        json_t *pat = json_object_get(spec, aws ? "AllowedPattern" : "pattern");
        json_t *def = json_object_get(spec, aws ? "Default" : "default");
        regex_t re;
        if (!json_is_object(spec) || (pat && !json_is_string(pat)) ||
            (def && !json_is_string(def))) {
            snprintf(err, errlen, "parameter \"%s\": pattern and default must be strings", name);
            return false;
        }
        char why[96];
        if (pat && !s_regcomp(&re, json_string_value(pat), REG_NOSUB, why, sizeof why)) {
            snprintf(err, errlen, "parameter \"%s\": pattern %s", name, why);
            return false;
        }
        if (pat)
            regfree(&re);
    }
    if (aws && !s_thing_props(body)) {
        snprintf(err, errlen, "Resources holds no AWS::IoT::Thing");
        return false;
    }
    json_t *thing = s_field(body, "thingName", "ThingName");
    if (!thing) {
        snprintf(err, errlen, "%s is required", aws ? "the thing's ThingName" : "thingName");
        return false;
    }
    json_t *v = s_eval(thing, !aws, params, NULL, 0, err, errlen);
    if (!v)
        return false;
    json_decref(v);
    json_t *desired = json_object_get(body, "desired");
    if (desired && !json_is_object(desired)) {
        snprintf(err, errlen, "desired must be an object");
        return false;
    }
    static const char *const objs[][2] = {{"tags", "AttributePayload"},
                                          {"deviceConfiguration", "DeviceConfiguration"}};
    for (int i = 0; i < 2; i++) {
        json_t *o = s_field(body, objs[i][0], objs[i][1]);
        if (o && !json_is_object(o)) {
            snprintf(err, errlen, "%s must be an object", objs[i][aws]);
            return false;
        }
        json_t *checked =
            o ? s_eval_object(o, !aws, objs[i][aws], params, NULL, err, errlen) : NULL;
        if (o && !checked)
            return false;
        json_decref(checked);
    }
    return true;
}

bool tw_template_enabled(json_t *body)
{
    json_t *e = json_object_get(body, "enabled");
    return !e || json_is_true(e);
}

/* The parameters with defaults filled in, every one checked. */
static json_t *s_values(json_t *body, json_t *given, char *err, size_t errlen)
{
    bool aws = s_aws(body);
    if (given && !json_is_object(given)) {
        snprintf(err, errlen, "parameters must be an object of strings");
        return NULL;
    }
    json_t *values = json_object();
    const char *name;
    json_t *spec;
    json_object_foreach(s_params(body), name, spec)
    {
        json_t *g = json_object_get(given, name);
        const char *v = g ? json_string_value(g) : s_default(spec, aws);
        if (g && !v) {
            snprintf(err, errlen, "parameter %s is not a string", name);
            goto fail;
        }
        if (!v) {
            snprintf(err, errlen, "parameter %s is missing", name);
            goto fail;
        }
        if (strlen(v) > S_MAX_VALUE) {
            snprintf(err, errlen, "parameter %s is over %d bytes", name, S_MAX_VALUE);
            goto fail;
        }
        const char *pat = s_pattern(spec, aws);
        regex_t re;
        regmatch_t m;
        if (pat) {
            char why[96];
            if (!s_regcomp(&re, pat, 0, why, sizeof why)) {
                snprintf(err, errlen, "parameter %s: the template's pattern %s", name, why);
                goto fail;
            }
            bool whole =
                regexec(&re, v, 1, &m, 0) == 0 && m.rm_so == 0 && (size_t)m.rm_eo == strlen(v);
            regfree(&re);
            if (!whole) {
                snprintf(err, errlen, "parameter %s does not match %s", name, pat);
                goto fail;
            }
        }
        json_object_set_new(values, name, json_string(v));
    }
    return values;
fail:
    json_decref(values);
    return NULL;
}

json_t *tw_template_apply(json_t *body, json_t *parameters, char *err, size_t errlen)
{
    json_t *params = s_params(body), *values = s_values(body, parameters, err, errlen);
    if (!values)
        return NULL;
    bool aws = s_aws(body);
    json_t *thing =
        s_eval(s_field(body, "thingName", "ThingName"), !aws, params, values, 0, err, errlen);
    json_t *tags = NULL, *config = NULL, *out = NULL;
    const char *id = json_string_value(thing);
    if (thing && !mh_device_id_valid(id, strlen(id))) {
        snprintf(err, errlen,
                 "the thing name \"%.64s\" is not a device id (1-64 of A-Z a-z 0-9 . _ -)", id);
        goto done;
    }
    json_t *t = s_field(body, "tags", "AttributePayload");
    json_t *c = s_field(body, "deviceConfiguration", "DeviceConfiguration");
    tags =
        t ? s_eval_object(t, !aws, aws ? "AttributePayload" : "tags", params, values, err, errlen)
          : json_object();
    config = tags && c ? s_eval_object(c, !aws, aws ? "DeviceConfiguration" : "deviceConfiguration",
                                       params, values, err, errlen)
                       : json_object();
    if (!thing || !tags || !config)
        goto done;
    json_t *desired = json_object_get(body, "desired");
    out = json_pack("{s:O,s:O,s:o,s:O}", "thingName", thing, "tags", tags, "desired",
                    desired ? json_incref(desired) : json_object(), "deviceConfiguration", config);
done:
    json_decref(values);
    json_decref(thing);
    json_decref(tags);
    json_decref(config);
    return out;
}
