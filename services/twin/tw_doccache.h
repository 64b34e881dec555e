/* tw_doccache — twin documents kept parsed between batches.
 *
 * A batch locks its devices' rows and needs each one's document as a JSON
 * tree; parsing it from the row's text was the largest single cost of a
 * twin update (docs/benchmarks.md). The cache keeps the tree a committed
 * batch left, under the row version it was written as: PostgreSQL's `xmin`,
 * the id of the transaction that wrote that version. Any write to the row
 * — another replica, the operator API, the sweep, a delete and a new
 * registration — makes a new version with a new xmin, so a cached tree is
 * used only when the row is still exactly the one it came from; otherwise
 * the text is read as before. An entry older than an hour is never used
 * (xids are reused only after billions of transactions).
 *
 * A batch takes its trees out (it may change them and then roll back) and
 * puts them back after COMMIT. Bounded: beyond `max` entries one is
 * dropped per insertion. Owner thread only. */
#pragma once
#include <jansson.h>
#include <stddef.h>

typedef struct tw_doccache_t tw_doccache_t;

/* max 0: nothing is cached. */
tw_doccache_t *tw_doccache_new(size_t max);
void tw_doccache_destroy(tw_doccache_t **self_p);

/* The row version the cached tree of `id` was written as, or "" (none, or
 * too old). Borrowed until the next call. */
const char *tw_doccache_xmin(tw_doccache_t *self, const char *id);
/* Takes the cached tree of `id` out when it was written as `xmin`
 * (the caller owns it); NULL otherwise. Either way the entry is gone. */
json_t *tw_doccache_take(tw_doccache_t *self, const char *id, const char *xmin);
/* Keeps `doc` (a new reference is taken) as row version `xmin` of `id`. */
void tw_doccache_put(tw_doccache_t *self, const char *id, const char *xmin, json_t *doc);
size_t tw_doccache_size(tw_doccache_t *self);
