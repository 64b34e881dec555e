/* tw_doccache — see tw_doccache.h. */
#include "tw_doccache.h"
#include "mh_time.h"

#include <czmq.h>
#include <stdio.h>

#define S_MAX_AGE_MS (3600 * 1000)

typedef struct {
    char xmin[16];
    int64_t at_ms;
    json_t *doc;
} s_entry_t;

struct tw_doccache_t {
    zhashx_t *map; /* id -> s_entry_t */
    size_t max;
};

static void s_entry_free(void **item)
{
    s_entry_t *e = *item;
    if (e) {
        json_decref(e->doc);
        free(e);
        *item = NULL;
    }
}

tw_doccache_t *tw_doccache_new(size_t max)
{
    tw_doccache_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->max = max;
    self->map = zhashx_new();
    if (!self->map) {
        free(self);
        return NULL;
    }
    zhashx_set_destructor(self->map, s_entry_free);
    return self;
}

void tw_doccache_destroy(tw_doccache_t **self_p)
{
    tw_doccache_t *self = *self_p;
    if (!self)
        return;
    zhashx_destroy(&self->map);
    free(self);
    *self_p = NULL;
}

static s_entry_t *s_fresh(tw_doccache_t *self, const char *id)
{
    s_entry_t *e = zhashx_lookup(self->map, id);
    if (e && mh_mono_ms() - e->at_ms > S_MAX_AGE_MS) {
        zhashx_delete(self->map, id);
        e = NULL;
    }
    return e;
}

const char *tw_doccache_xmin(tw_doccache_t *self, const char *id)
{
    s_entry_t *e = s_fresh(self, id);
    return e ? e->xmin : "";
}

json_t *tw_doccache_take(tw_doccache_t *self, const char *id, const char *xmin)
{
    s_entry_t *e = s_fresh(self, id);
    if (!e)
        return NULL;
    json_t *doc = NULL;
    if (*xmin && strcmp(e->xmin, xmin) == 0) {
        doc = e->doc;
        e->doc = NULL;
    }
    zhashx_delete(self->map, id);
    return doc;
}

void tw_doccache_put(tw_doccache_t *self, const char *id, const char *xmin, json_t *doc)
{
    if (!self->max || !doc || !*xmin || strlen(xmin) >= sizeof((s_entry_t *)0)->xmin)
        return;
    s_entry_t *e = calloc(1, sizeof *e);
    if (!e)
        return;
    snprintf(e->xmin, sizeof e->xmin, "%s", xmin);
    e->at_ms = mh_mono_ms();
    e->doc = json_incref(doc);
    zhashx_delete(self->map, id);
    if (zhashx_size(self->map) >= self->max && zhashx_first(self->map))
        zhashx_delete(self->map, zhashx_cursor(self->map)); /* one, in hash order: any */
    zhashx_insert(self->map, id, e);
}

size_t tw_doccache_size(tw_doccache_t *self)
{
    return zhashx_size(self->map);
}
