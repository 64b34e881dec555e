#include "mh_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The scan behind mh_json_depth; *at is the offset of the bracket that went
 * past `stop`, when one did. */
static int s_scan(const char *buf, size_t len, int stop, size_t *at)
{
    int depth = 0, best = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (in_string) {
            if (c == '\\')
                i++; /* the escaped byte cannot end the string */
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > best && (best = depth) > stop) {
                *at = i;
                return stop + 1;
            }
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return best;
}

int mh_json_depth(const char *buf, size_t len, int stop)
{
    size_t at;
    return s_scan(buf, len, stop, &at);
}

json_t *mh_json_loadb(const char *buf, size_t len, size_t flags, int max_depth, json_error_t *err)
{
    if (!buf)
        return NULL;
    size_t at = 0;
    if (s_scan(buf, len, max_depth, &at) > max_depth) {
        if (err) {
            memset(err, 0, sizeof *err);
            /* where jansson would say it: 1-based line and column */
            err->line = 1;
            size_t line_start = 0;
            for (size_t i = 0; i < at; i++)
                if (buf[i] == '\n') {
                    err->line++;
                    line_start = i + 1;
                }
            err->column = (int)(at - line_start) + 1;
            err->position = (int)at;
            snprintf(err->text, sizeof err->text - 1, "nested deeper than %d levels", max_depth);
            snprintf(err->source, sizeof err->source, "<buffer>");
            /* where jansson keeps the code json_error_code() reads */
            err->text[JSON_ERROR_TEXT_LENGTH - 1] = (char)json_error_stack_overflow;
        }
        return NULL;
    }
    return json_loadb(buf, len, flags, err);
}

json_t *mh_json_loads(const char *text, size_t flags, int max_depth, json_error_t *err)
{
    return text ? mh_json_loadb(text, strlen(text), flags, max_depth, err) : NULL;
}

bool mh_json_too_deep(const json_error_t *err)
{
    return json_error_code(err) == json_error_stack_overflow;
}

/* The digits every real under v needs to read back exactly, at least `p`. */
static int s_precision(const json_t *v, int p)
{
    if (p >= 17)
        return 17;
    if (json_is_real(v)) {
        double d = json_real_value(v);
        char buf[40];
        for (; p < 17; p++) {
            snprintf(buf, sizeof buf, "%.*g", p, d);
            if (strtod(buf, NULL) == d)
                break;
        }
        return p;
    }
    const char *key;
    json_t *child;
    size_t i;
    if (json_is_object(v))
        json_object_foreach((json_t *)v, key, child) p = s_precision(child, p);
    else if (json_is_array(v))
        json_array_foreach((json_t *)v, i, child) p = s_precision(child, p);
    return p;
}

char *mh_json_dumps(const json_t *v, size_t flags)
{
    return json_dumps(v, (flags & ~(size_t)JSON_REAL_PRECISION(31)) |
                             JSON_REAL_PRECISION(s_precision(v, 15)));
}
