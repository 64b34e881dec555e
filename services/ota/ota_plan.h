/* ota_plan — the pure rules of a rollout, apart from any database or
 * socket (unit-tested on their own):
 *   - a rollout request parsed and checked, with the defaults filled in;
 *   - devices ordered by a stable hash of their id and placed in waves;
 *   - given per-wave counts, what happens now: a failure stops the
 *     rollout, a wave reaches its success threshold, the next wave starts,
 *     or the rollout is complete. */
#pragma once
#include "ota_gate.h"
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OTA_MAX_WAVES   20
#define OTA_MAX_VERSION 64

/* A job's document: a JSON object of at most 32 KiB (AWS IoT's limit) */
#define OTA_MAX_DOCUMENT (32 * 1024)

typedef struct {
    char firmware[OTA_MAX_VERSION + 1];        /* "" for a job of a document */
    json_t *document;                          /* a job: the document devices get; else NULL */
    json_t *target_tags;                       /* object of strings, or NULL */
    char target_firmware[OTA_MAX_VERSION + 1]; /* "" = any */
    double percents[OTA_MAX_WAVES];            /* cumulative, rising, last 100 */
    int nwaves;
    double success_threshold; /* 0..1, default 0.95 */
    double failure_threshold; /* 0..1, default 0.05 */
    int64_t min_devices;      /* finished jobs before the failure share counts, default 1 */
    int64_t soak_s;           /* default 600 */
    int64_t job_timeout_s;    /* default 3600 */
    int64_t max_per_minute;   /* default 1000 */
    bool rollback_on_failure; /* onFailure "rollback" (firmware's default) or "pause" */
    json_t *stratify_by;      /* array of tag names, or NULL: wave 1 covers every value */
    ota_health_t health;      /* the health gate (health.on), ota_gate.h */
} ota_spec_t;

#define OTA_MAX_STRATA 8

/* Parses a rollout request. 0, or -1 with `why` filled (the API's 400). */
int ota_spec_parse(const char *json, ota_spec_t *out, char *why, size_t whylen);
/* The same from a JSON value (borrowed). */
int ota_spec_from_json(json_t *root, ota_spec_t *out, char *why, size_t whylen);
/* The normalised request, every field present (new reference). */
json_t *ota_spec_json(const ota_spec_t *spec);
void ota_spec_clear(ota_spec_t *spec);

/* A version or hardware name: 1-64 of A-Z a-z 0-9 . _ + - */
bool ota_name_valid(const char *s);

/* The stable hash devices are ordered by: the first 8 bytes of SHA-256 of
 * the id, big-endian. The same on every replica and in every release. */
uint64_t ota_device_hash(const char *device_id);
/* Sorts ids (and, in step, `extra` when not NULL) by (hash, id). */
void ota_order_devices(char **ids, char **extra, size_t n);
/* The same, giving the permutation instead: perm[i] is the index in `ids`
 * of the device that sorts i-th. */
void ota_order_perm(char *const *ids, size_t n, size_t *perm);
/* Puts a[perm[i]] at i in an array of n pointers (nothing when `a` is
 * NULL); `tmp` has room for n. */
void ota_permute(void **a, const size_t *perm, size_t n, void **tmp);
/* Stratified canary. The devices are in hash order and the first `head`
 * are wave 1 by its percentage; for each tag named in `by` and for the
 * firmware, every value some device has and none of the first `head` has
 * brings the first device (in hash order) that has it forward into wave 1,
 * the others keeping their order. tags[i] is device i's tags object (or
 * NULL), fw[i] its firmware (or NULL: not known). Returns wave 1's size
 * now (>= head). */
size_t ota_stratify(char **ids, char **fw, json_t **tags, size_t n, size_t head, const json_t *by);
/* Devices in waves 0..k together: ceil(percent_k * n / 100). */
size_t ota_wave_end(double percent, size_t n);
/* The wave of the device at position `rank` (0-based) of n, wave 1 being
 * at least `first` devices (a stratified canary's; 0 for none). */
int ota_wave_of(const ota_spec_t *spec, size_t rank, size_t n, size_t first);

/* What a wave's jobs are doing (install jobs; rollbacks apart). */
typedef struct {
    int64_t targeted, pending, queued, in_flight, succeeded, failed, timed_out, cancelled;
    int64_t started_ms, ok_ms; /* 0 = not yet */
} ota_wave_t;

typedef struct {
    int fail_wave; /* -1: no failure; else the wave whose failed share crossed */
    char reason[400];
    int ok_wave;    /* -1, or the wave that reached its success threshold now */
    int start_wave; /* -1, or the wave to start now */
    bool completed; /* every wave started and every job finished */
    bool stalled;   /* the current wave finished below its success threshold */
} ota_decision_t;

/* `current` is the highest started wave (-1 before the first); waves up to
 * `accepted` were accepted by an operator (resume after a stop) and are
 * neither judged again nor held to the success threshold. */
void ota_decide(const ota_spec_t *spec, const ota_wave_t *waves, int current, int accepted,
                int64_t now_ms, ota_decision_t *out);
