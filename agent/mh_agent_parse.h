/* mh_agent_parse — what the agent reads from the broker (commands, OTA jobs,
 * twin deltas), parsed and checked before it acts on it. A hostile or broken
 * broker must not crash a device: nesting is bounded before jansson
 * recurses (mh_json), and every field is checked for type and length. Pure
 * functions, fuzzed by tests/fuzz/fuzz_agent.c. */
#pragma once
#include "mh_agent.h"

#include <jansson.h>
#include <stdint.h>

/* The longest command or job id the agent takes (the spec's ids are shorter). */
#define MH_AGENT_MAX_ID 64

/* A command from devices/{id}/commands; the pointers borrow from the root. */
typedef struct {
    const char *id, *name;
    json_t *params; /* NULL when absent */
} mh_agent_cmd_t;

/* Parses a command: an object with string "id" (1..64 bytes) and "name".
 * Returns the root (the caller owns it; `out` borrows from it) or NULL
 * when the payload is not such a command. */
json_t *mh_agent_parse_command(const char *payload, size_t len, mh_agent_cmd_t *out);

/* Parses an OTA job: an object with a string "jobId" of 1..64 bytes. Fills
 * `out` (borrowed from the root, as mh_agent_job_read). Returns the root,
 * owned by the caller, or NULL. */
json_t *mh_agent_parse_job(const char *payload, size_t len, mh_ota_job_t *out);

/* Reads a parsed job's fields: strings where they are strings, NULL
 * otherwise; size -1 unless a non-negative integer. */
void mh_agent_job_read(json_t *job, mh_ota_job_t *out);

/* Parses a twin delta {"state":{...},"version":N}. Returns the root, owned by
 * the caller, with *state borrowed from it, or NULL when "state" is not an
 * object. */
json_t *mh_agent_parse_delta(const char *payload, size_t len, json_t **state, int64_t *version);
