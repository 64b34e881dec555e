/* mh_cohort — cohorts of devices, each device over its own window, as
 * ota's health gates send them to twin and ingest:
 * {NAME: [[device, from_ms, to_ms], ...], ...}. */
#pragma once
#include <jansson.h>
#include <stddef.h>

/* At most this many devices in all the cohorts of one request. */
#define MH_COHORT_MAX_DEVICES 200000

/* Flattens `cohorts` into rows [{"c": NAME, "id", "f", "t"}, ...] for
 * PostgreSQL's jsonb_to_recordset, and sets every cohort's name in `out`
 * to a copy of `empty` (the answer for a cohort with no data). NULL when
 * it is not an object of such lists, a window ends before it starts, or
 * the devices are too many. */
json_t *mh_cohort_rows(json_t *cohorts, json_t *out, json_t *empty);

/* The message for a request refused by mh_cohort_rows (the 400's text). */
#define MH_COHORT_BAD                                                                              \
    "\"cohorts\" is {name: [[device, from_ms, to_ms], ...]} with from <= to, at most 200000"       \
    " devices in all"
