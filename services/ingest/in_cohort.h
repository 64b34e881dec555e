/* in_cohort — a statistic of one metric over cohorts of devices, each
 * device over its own window, from the 1-minute rollups: what ota's health
 * gates compare between the devices that installed a version and the
 * control group (ota_health.c). Asked as a TelemetryQuery whose
 * cohort_json is set (telemetry.proto). */
#pragma once
#include "mh_pg.h"
#include "mh_rpc_server.h"

/* {"metric", "stat", "cohorts": {NAME: [[device, from_ms, to_ms], ...]}}
 * -> {NAME: {"value", "devices"}}; or {"metric", "exists": true} ->
 * {"exists": bool} (has any device ever reported it). Answers `r`. */
void in_cohort_answer(mh_pg_t *pg, const char *json, mh_rpc_reply_t *r);
