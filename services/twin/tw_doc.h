/* tw_doc — twin document semantics (shared/spec/device-protocol.md, Twin):
 * JSON merge patches (RFC 7386), the recursive delta, limits, per-key
 * metadata timestamps and the version. Pure functions over jansson values:
 * no I/O, so the twin service applies them inside its PostgreSQL
 * transaction and the tests check every rule directly.
 *
 * A document is
 *   {"state":{"desired":{},"reported":{},"delta":{}},
 *    "metadata":{"desired":{"<key>":{"timestamp":T}},"reported":{...}},
 *    "tags":{},"version":N,"timestamp":T}
 * Metadata is kept per top-level key, as the spec's example shows. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define TW_MAX_STATE (32 * 1024) /* desired, reported: serialized bytes */
#define TW_MAX_TAGS  (8 * 1024)
#define TW_MAX_DEPTH 8

typedef enum {
    TW_OK = 0,
    TW_BAD_REQUEST = 400, /* not an object where one is needed */
    TW_CONFLICT = 409,    /* version mismatch */
    TW_TOO_LARGE = 413,   /* over a size or depth limit */
} tw_status_t;

/* A new document: empty state, the given tags (borrowed; may be NULL),
 * version 1. */
json_t *tw_doc_new(json_t *tags, int64_t now_ms);

/* RFC 7386: applies `patch` to `*target` in place (a non-object patch
 * replaces the target). Keys set to null are removed; nested objects merge. */
void tw_merge_patch(json_t **target, json_t *patch);

/* Keys of `desired` whose value differs from `reported`, recursively for
 * objects. Returns a new object. */
json_t *tw_delta(json_t *desired, json_t *reported);

/* Keys along the longest path: {} is 0, {"a":1} is 1, {"a":{"b":1}} is 2. */
int tw_depth(json_t *v);

/* Serialized size in bytes (compact). */
size_t tw_size(json_t *v);

/* Applies a device's reported patch: `ts` (ms) orders it against what is
 * stored per top-level key; a key whose stored timestamp is newer is left
 * alone (several gateways may deliver out of order). `expected_version` < 0
 * means no version check. On TW_OK with *changed set, the version grew by
 * one and delta was recomputed. On an error the document is unchanged and
 * `why` explains. */
tw_status_t tw_apply_reported(json_t *doc, json_t *patch, int64_t ts, int64_t expected_version,
                              bool *changed, char *why, size_t why_len);

/* Applies an operator's patch of desired and/or tags (either may be NULL).
 * Same contract as above; version checks are the caller's (412 on If-Match). */
tw_status_t tw_apply_operator(json_t *doc, json_t *desired, json_t *tags, int64_t now_ms,
                              bool *changed, char *why, size_t why_len);

/* The state.delta of the document (borrowed), and whether it is non-empty. */
json_t *tw_doc_delta(json_t *doc);
int64_t tw_doc_version(json_t *doc);

/* An AWS IoT shadow update (shared/spec/aws-iot-compat.md): merge patches
 * of desired and/or reported (either NULL when absent; JSON null clears the
 * whole section), applied together with one version bump when something
 * changed. `expected_version` < 0: no check. Nothing is applied on an
 * error. */
tw_status_t tw_apply_shadow(json_t *doc, json_t *desired, json_t *reported, int64_t ts,
                            int64_t expected_version, bool *changed, char *why, size_t why_len);

#define TW_SHADOW_MAX_TOKEN 64

/* An AWS IoT shadow request's payload as a JSON object: an empty one is {}
 * where `empty_ok`; trailing NUL bytes (the embedded C SDK's demos send
 * one) are dropped. NULL with `why` ("Invalid JSON: ...") otherwise; the
 * caller checks it is an object. */
json_t *tw_shadow_parse(const uint8_t *data, size_t len, bool empty_ok, char *why, size_t why_len);
/* clientToken absent, or a string of at most TW_SHADOW_MAX_TOKEN bytes. */
bool tw_shadow_token_ok(json_t *root, char *why, size_t why_len);
/* An update request's shape (state with desired and/or reported, each an
 * object or null, at most TW_MAX_DEPTH deep; clientToken; version): on
 * success *desired and *reported are the sections (NULL when absent,
 * borrowed from root) and *version the expected version (-1: none). */
bool tw_shadow_update_valid(json_t *root, json_t **desired, json_t **reported, int64_t *version,
                            char *why, size_t why_len);
