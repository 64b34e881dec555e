/* ota_gate — a rollout's health gate, apart from any database or socket
 * (unit-tested and fuzzed with the rollout spec):
 *   - the "health" object of a rollout parsed and checked;
 *   - given what the devices that installed did over their observation
 *     windows and what the control group (targeted, not yet updated) did
 *     over the same time, whether the installed are worse, signal by
 *     signal, with a reason that names the numbers on both sides.
 * docs/ota.md, "Health gates". */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OTA_MAX_SIGNALS 16

typedef enum {
    OTA_SIG_DISCONNECTS, /* disconnects per device-hour */
    OTA_SIG_OFFLINE,     /* share of the window offline, 0..1 */
    OTA_SIG_FW_ROLLBACK, /* share of installed devices now reporting another version */
    OTA_SIG_METRIC,      /* a telemetry metric's statistic, from ingest's rollups */
    OTA_SIG_REBOOTS,     /* share of devices that reported twin key `metric` in their window */
} ota_sig_kind_t;

typedef enum {
    OTA_STAT_MEAN,
    OTA_STAT_P95,
    OTA_STAT_MAX,
    OTA_STAT_SLOPE,
    OTA_STAT_RATE
} ota_stat_t;

typedef struct {
    ota_sig_kind_t kind;
    char metric[128]; /* OTA_SIG_METRIC; OTA_SIG_REBOOTS: the reported twin key */
    ota_stat_t stat;  /* OTA_SIG_METRIC */
    bool lower_worse; /* "worse": "lower" (e.g. a battery's slope) */
    double margin;    /* absolute slack beyond the tolerance */
    bool has_max;     /* an absolute bound on the installed devices' value */
    double max;       /* (a minimum when lower is worse) */
} ota_signal_t;

typedef struct {
    bool on;
    int64_t window_s; /* observation after a device reports success */
    double tolerance; /* installed may be worse than control by this share of |control| */
    ota_signal_t sig[OTA_MAX_SIGNALS];
    int nsig;
} ota_health_t;

/* Parses "health" (NULL or JSON null: off). 0, or -1 with `why` naming the
 * problem (the API's 400). */
int ota_health_parse(json_t *v, ota_health_t *out, char *why, size_t whylen);
/* The normalised object, every field present (new reference). */
json_t *ota_health_json(const ota_health_t *h);
/* A statistic's and a signal's names ("p95", "disconnects", ...). */
const char *ota_stat_name(ota_stat_t s);
const char *ota_signal_name(const ota_signal_t *s);
/* Needs ingest (a metric signal)? */
bool ota_health_needs_metrics(const ota_health_t *h);

/* One cohort's value of one signal; `n` devices it is over (0: none). */
typedef struct {
    double value;
    int64_t n;
} ota_sample_t;

/* Is `treated` worse than `control` for signal `s` (or past its absolute
 * bound)? With no control devices only the bound can fail it. Fills
 * `reason` (either way) with the numbers on both sides. */
bool ota_signal_bad(const ota_health_t *h, const ota_signal_t *s, ota_sample_t treated,
                    ota_sample_t control, char *reason, size_t len);
