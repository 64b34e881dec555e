/* in_dict — see in_dict.h. */
#include "in_dict.h"

#include <czmq.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    zhashx_t *ids;  /* key -> (void *)(intptr_t)id */
    zhashx_t *want; /* keys to resolve (values unused) */
    const char *sql;
} s_kind_t;

struct in_dict_t {
    s_kind_t devices, sets;
    size_t max;
};

/* $1: a JSON array of the wanted; answers (position from 1, id). What
 * exists is found first, so an id is only drawn for what is new. */
static const char *s_sql_devices =
    "WITH want AS (SELECT d, ord FROM jsonb_array_elements_text($1::jsonb)"
    "   WITH ORDINALITY AS w(d, ord)),"
    " have AS (SELECT w.ord, k.id FROM want w JOIN ingest.device_ids k ON k.device_id = w.d),"
    " ins AS (INSERT INTO ingest.device_ids (device_id) SELECT w.d FROM want w"
    "   WHERE w.ord NOT IN (SELECT ord FROM have) ON CONFLICT DO NOTHING"
    "   RETURNING id, device_id)"
    " SELECT ord, id FROM have UNION ALL SELECT w.ord, i.id FROM ins i JOIN want w"
    "   ON w.d = i.device_id";
static const char *s_sql_sets =
    "WITH want AS (SELECT ARRAY(SELECT x FROM jsonb_array_elements_text(e) WITH ORDINALITY"
    "   AS t(x, o) ORDER BY o) AS m, ord FROM jsonb_array_elements($1::jsonb)"
    "   WITH ORDINALITY AS w(e, ord)),"
    " have AS (SELECT w.ord, k.id FROM want w JOIN ingest.metric_sets k ON k.metrics = w.m),"
    " ins AS (INSERT INTO ingest.metric_sets (metrics) SELECT w.m FROM want w"
    "   WHERE w.ord NOT IN (SELECT ord FROM have) ON CONFLICT DO NOTHING"
    "   RETURNING id, metrics)"
    " SELECT ord, id FROM have UNION ALL SELECT w.ord, i.id FROM ins i JOIN want w"
    "   ON w.m = i.metrics";

static void s_kind_init(s_kind_t *k, const char *sql)
{
    k->ids = zhashx_new();
    k->want = zhashx_new();
    k->sql = sql;
}

in_dict_t *in_dict_new(size_t max_entries)
{
    in_dict_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    s_kind_init(&self->devices, s_sql_devices);
    s_kind_init(&self->sets, s_sql_sets);
    self->max = max_entries;
    return self;
}

void in_dict_destroy(in_dict_t **self_p)
{
    in_dict_t *self = *self_p;
    if (!self)
        return;
    zhashx_destroy(&self->devices.ids);
    zhashx_destroy(&self->devices.want);
    zhashx_destroy(&self->sets.ids);
    zhashx_destroy(&self->sets.want);
    free(self);
    *self_p = NULL;
}

static bool s_grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return true;
    size_t c = need * 2 + 256;
    char *b = realloc(*buf, c);
    if (!b)
        return false;
    *buf = b;
    *cap = c;
    return true;
}

size_t in_dict_set_key(Mh__Point *const *points, size_t n, char **buf, size_t *cap)
{
    size_t len = 0;
    if (!s_grow(buf, cap, 2))
        return 0;
    (*buf)[len++] = '[';
    for (size_t i = 0; i < n; i++) {
        const char *m = points[i]->metric;
        /* worst case: every byte escaped as \u00XX, quotes, comma, ']' */
        if (!s_grow(buf, cap, len + strlen(m) * 6 + 5))
            return 0;
        if (i)
            (*buf)[len++] = ',';
        (*buf)[len++] = '"';
        for (const unsigned char *c = (const unsigned char *)m; *c; c++) {
            if (*c == '"' || *c == '\\') {
                (*buf)[len++] = '\\';
                (*buf)[len++] = (char)*c;
            } else if (*c < 0x20) {
                len += (size_t)snprintf(*buf + len, 7, "\\u%04x", *c);
            } else {
                (*buf)[len++] = (char)*c;
            }
        }
        (*buf)[len++] = '"';
    }
    (*buf)[len++] = ']';
    (*buf)[len] = 0;
    return len;
}

static int32_t s_lookup(in_dict_t *self, s_kind_t *k, const char *key)
{
    intptr_t id = (intptr_t)zhashx_lookup(k->ids, key);
    if (id)
        return (int32_t)id;
    if (zhashx_size(k->want) < self->max)
        zhashx_insert(k->want, key, (void *)1);
    return 0;
}

int32_t in_dict_device(in_dict_t *self, const char *device)
{
    return s_lookup(self, &self->devices, device);
}

int32_t in_dict_set(in_dict_t *self, const char *key)
{
    return s_lookup(self, &self->sets, key);
}

/* The wanted of one kind as a JSON array: devices as strings, sets (whose
 * keys are JSON arrays already) as they are. NULL when a name is not
 * UTF-8 (PostgreSQL would refuse it as text too) or memory ran out. */
static char *s_want_json(s_kind_t *k, bool raw, zlistx_t *order)
{
    json_t *arr = raw ? NULL : json_array();
    size_t len = 2;
    for (void *v = zhashx_first(k->want); v; v = zhashx_next(k->want)) {
        const char *key = zhashx_cursor(k->want);
        zlistx_add_end(order, (void *)key);
        if (raw) {
            len += strlen(key) + 1;
        } else if (json_array_append_new(arr, json_string(key)) < 0) {
            json_decref(arr);
            return NULL;
        }
    }
    if (!raw) {
        char *s = json_dumps(arr, JSON_COMPACT);
        json_decref(arr);
        return s;
    }
    char *s = malloc(len + 1), *p = s;
    if (!s)
        return NULL;
    *p++ = '[';
    for (const char *key = zlistx_first(order); key; key = zlistx_next(order)) {
        if (p > s + 1)
            *p++ = ',';
        size_t l = strlen(key);
        memcpy(p, key, l);
        p += l;
    }
    *p++ = ']';
    *p = 0;
    return s;
}

static int s_fetch(in_dict_t *self, s_kind_t *k, mh_pg_t *pg, bool raw, char *err, size_t errlen)
{
    /* a replica inserting the same name at once leaves it unanswered:
     * asked again, it is found */
    for (int attempt = 0; attempt < 3 && zhashx_size(k->want); attempt++) {
        zlistx_t *order = zlistx_new();
        char *json = s_want_json(k, raw, order);
        PGresult *res =
            json ? mh_pg_exec(pg, PGRES_TUPLES_OK, k->sql, 1, (const char *[]){json}, err, errlen)
                 : NULL;
        free(json);
        if (!res) {
            zlistx_destroy(&order);
            if (!json)
                snprintf(err, errlen, "a name that is not UTF-8, or out of memory");
            return -1;
        }
        if (zhashx_size(k->ids) + (size_t)PQntuples(res) > self->max)
            zhashx_purge(k->ids);
        size_t n = zlistx_size(order);
        const char **keys = calloc(n ? n : 1, sizeof *keys);
        size_t i = 0;
        for (const char *key = zlistx_first(order); key && keys; key = zlistx_next(order))
            keys[i++] = key;
        for (int r = 0; keys && r < PQntuples(res); r++) {
            long ord = strtol(PQgetvalue(res, r, 0), NULL, 10);
            long id = strtol(PQgetvalue(res, r, 1), NULL, 10);
            if (ord >= 1 && (size_t)ord <= n && id > 0) {
                zhashx_update(k->ids, keys[ord - 1], (void *)(intptr_t)id);
            }
        }
        PQclear(res);
        /* what is resolved is no longer wanted */
        for (i = 0; keys && i < n; i++)
            if (zhashx_lookup(k->ids, keys[i]))
                zhashx_delete(k->want, keys[i]);
        free(keys);
        zlistx_destroy(&order);
    }
    if (zhashx_size(k->want)) {
        snprintf(err, errlen, "%zu dictionary names left unresolved", zhashx_size(k->want));
        zhashx_purge(k->want);
        return -1;
    }
    return 0;
}

int in_dict_fetch(in_dict_t *self, mh_pg_t *pg, char *err, size_t errlen)
{
    if (s_fetch(self, &self->devices, pg, false, err, errlen) < 0 ||
        s_fetch(self, &self->sets, pg, true, err, errlen) < 0) {
        /* a name that cannot be stored must not block the next batches */
        zhashx_purge(self->devices.want);
        zhashx_purge(self->sets.want);
        return -1;
    }
    return 0;
}
