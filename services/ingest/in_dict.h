/* in_dict — the raw tier's dictionaries (in_schema.c): a device id, and a
 * message's list of metric names (its "metric set"), as small integers.
 * Each ingest caches what it has seen; what it has not is resolved in one
 * statement per kind before a batch's transaction (found, or inserted —
 * ON CONFLICT makes every replica agree on one id; an id committed is
 * never changed, so a cached id stays right). Not thread-safe: the store's
 * actor owns it. */
#pragma once
#include "mh_pg.h"
#include "telemetry.pb-c.h"

#include <stddef.h>
#include <stdint.h>

typedef struct in_dict_t in_dict_t;

/* At most `max_entries` cached per kind; past that the cache starts over
 * (a fleet's devices fit: ~60 bytes an entry). */
in_dict_t *in_dict_new(size_t max_entries);
void in_dict_destroy(in_dict_t **self_p);

/* A metric set's key — the JSON array of the n points' metric names, in
 * order — into *buf (grown as needed). Returns its length, 0 when out of
 * memory. */
size_t in_dict_set_key(Mh__Point *const *points, size_t n, char **buf, size_t *cap);

/* The cached id, or 0 after noting it wanted by the next in_dict_fetch. */
int32_t in_dict_device(in_dict_t *self, const char *device);
int32_t in_dict_set(in_dict_t *self, const char *key);

/* Resolves everything wanted since the last fetch. Returns 0, or -1 with
 * err filled (nothing cached from a failed fetch). */
int in_dict_fetch(in_dict_t *self, mh_pg_t *pg, char *err, size_t errlen);
