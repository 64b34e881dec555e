/* mh_json — every piece of JSON from outside (a device, an operator, a
 * peer service, a broker) is parsed through here, so that nesting is
 * bounded before anything recurses.
 *
 * jansson's parser recurses once per level, and so do json_dumps,
 * json_equal, json_deep_copy and our own tree walks (twin merge patches,
 * deltas, depth). On a thread with a small stack (CivetWeb's workers have
 * 100 KiB) a 2 KB body nested 1,000 deep used to overflow it. The check here
 * is a single pass over the bytes with a counter: no recursion, any stack.
 *
 * Depends on jansson only, so the device agent and the fuzz targets compile
 * it in without the rest of libcommon. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* The nesting limit for JSON from outside: arrays and objects, counted as
 * levels ({} is 1, {"a":[1]} is 2). Twin documents allow 8 keys along a
 * path (shared/spec/device-protocol.md); bodies that carry one wrap it in
 * two or three more levels; 32 leaves room for arrays without letting any
 * recursion go deep. docs/security.md lists every parser and its limit. */
#define MH_JSON_MAX_DEPTH 32

/* The deepest nesting of arrays and objects in buf[0..len), counting only
 * brackets outside strings. Counting stops past `stop`: the result is then
 * stop + 1. Malformed text gets a number too (jansson judges the syntax). */
int mh_json_depth(const char *buf, size_t len, int stop);

/* json_loadb, refused before jansson sees it when nested deeper than
 * `max_depth`: then NULL, err->text says "nested deeper than N levels" and
 * json_error_code(err) is json_error_stack_overflow. `err` may be NULL.
 * The caller owns the result. */
json_t *mh_json_loadb(const char *buf, size_t len, size_t flags, int max_depth, json_error_t *err);

/* The same for a NUL-terminated string (NULL gives NULL). */
json_t *mh_json_loads(const char *text, size_t flags, int max_depth, json_error_t *err);

/* Whether a failed mh_json_load* failed on depth (not on syntax). */
bool mh_json_too_deep(const json_error_t *err);

/* json_dumps with every real at the fewest significant digits (15, 16 or
 * 17, one count for the whole value) at which each reads back as the same
 * double: a device's 21.37 goes out as 21.37, not jansson's default
 * 21.370000000000001, and nothing is ever rounded. `flags` as json_dumps'
 * (a JSON_REAL_PRECISION in them is replaced). The caller frees. */
char *mh_json_dumps(const json_t *v, size_t flags);
