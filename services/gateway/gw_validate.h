/* gw_validate — the device protocol's rules for topics, telemetry and status
 * (shared/spec/device-protocol.md). Pure functions: no I/O, no globals, so
 * they are unit-tested directly and fuzzed. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_MAX_PAYLOAD   (256 * 1024)
#define GW_MAX_SAMPLES   1000
#define GW_MAX_ID        64
#define GW_MAX_FUTURE_MS (3600 * 1000)

/* Why a message was refused; each has a metric label (gw_reason_name). */
typedef enum {
    GW_OK = 0,
    GW_BAD_TOPIC,        /* not a topic of the protocol */
    GW_BAD_DEVICE_ID,    /* id not 1-64 of A-Z a-z 0-9 . _ - */
    GW_TOO_LARGE,        /* payload over 256 KiB */
    GW_BAD_JSON,         /* not JSON, not UTF-8, duplicate keys */
    GW_BAD_SHAPE,        /* not an object / array of objects */
    GW_TOO_MANY_SAMPLES, /* over 1,000 samples */
    GW_EMPTY,            /* no sample, or a sample with no metric */
    GW_BAD_METRIC_NAME,  /* name not 1-64 of A-Z a-z 0-9 _ . */
    GW_BAD_VALUE,        /* value not a finite number or a boolean */
    GW_BAD_TS,           /* ts not a non-negative integer */
    GW_FUTURE_TS,        /* ts more than 1 hour ahead */
    GW_BAD_SEQ,          /* seq not a non-negative integer */
    GW_BAD_PROTOBUF,     /* /pb payload does not decode */
    GW_BAD_STATUS,       /* status payload malformed */
    GW_UNREGISTERED,     /* the device id is not registered */
    GW_BAD_OTA_STATUS,   /* ota/status payload malformed */
    GW_REASON_COUNT
} gw_reason_t;

const char *gw_reason_name(gw_reason_t r);

typedef enum {
    GW_TOPIC_TELEMETRY,
    GW_TOPIC_TELEMETRY_PB,
    GW_TOPIC_STATUS,
    GW_TOPIC_TWIN_GET, /* forwarded to twin, which validates and answers */
    GW_TOPIC_TWIN_UPDATE,
    GW_TOPIC_COMMAND_ACK,
    GW_TOPIC_OTA_STATUS, /* forwarded to ota */
    GW_TOPIC_SHADOW_GET, /* $aws/things/{id}/shadow[/name/{n}]/get: to twin */
    GW_TOPIC_SHADOW_UPDATE,
    GW_TOPIC_SHADOW_DELETE,
    GW_TOPIC_JOBS, /* $aws/things/{id}/jobs/...: to ota */
    /* fleet provisioning, as the broker plugin moved it: to twin */
    GW_TOPIC_PROVISION_CREATE,
    GW_TOPIC_PROVISION_CSR,
    GW_TOPIC_PROVISION_REGISTER,
    GW_TOPIC_COUNT
} gw_topic_kind_t;

bool gw_device_id_valid(const char *id, size_t len);
bool gw_metric_name_valid(const char *name, size_t len);

/* Splits "devices/{id}/{rest}", or one of the AWS IoT request topics
 * (gw_aws_topic_parse). On success copies the id (NUL-terminated) into
 * id_out[GW_MAX_ID + 1] and sets *kind. */
gw_reason_t gw_topic_parse(const char *topic, size_t len, char *id_out, gw_topic_kind_t *kind);

/* The longest shadow name (shared/spec/aws-iot-compat.md): 1-64 of
 * a-zA-Z0-9:_- */
#define GW_MAX_SHADOW_NAME 64
/* AWS IoT job ids: 1-64 of a-zA-Z0-9_- */
#define GW_MAX_JOB_ID 64
/* What gw_aws_topic_parse gives in name_out: a shadow's name or a jobs
 * request ("start-next", "{jobId}/update", ...) */
#define GW_MAX_AWS_ARG (GW_MAX_JOB_ID + 8)

/* Splits "$aws/things/{id}/shadow/{get,update,delete}",
 * "$aws/things/{id}/shadow/name/{shadow}/{get,update,delete}" and the jobs
 * requests "$aws/things/{id}/jobs/{get,start-next,{jobId}/get,
 * {jobId}/update}": the id into id_out[GW_MAX_ID + 1], and when name_out
 * is not NULL the shadow's name (or "") or the jobs request after "jobs/"
 * into name_out[GW_MAX_AWS_ARG + 1]. The same under motehub/aws/things/,
 * where the broker plugin moves them. */
gw_reason_t gw_aws_topic_parse(const char *topic, size_t len, char *id_out, char *name_out,
                               gw_topic_kind_t *kind);

/* A provisioning template's name: 1-36 of A-Za-z0-9_- (as AWS IoT). */
#define GW_MAX_TEMPLATE 36

/* Splits the fleet provisioning requests as the broker plugin moves them
 * (motehub_acl.c): motehub/aws/provision/{client}/certificates/create/json,
 * .../certificates/create-from-csr/json and
 * .../provisioning-templates/{template}/provision/json, where {client} is
 * a claim certificate's client id ("claim:" and a device id, GW_MAX_ID in
 * all): the client into client_out[GW_MAX_ID + 1], the template (or "")
 * into template_out[GW_MAX_AWS_ARG + 1]. */
gw_reason_t gw_provision_topic_parse(const char *topic, size_t len, char *client_out,
                                     char *template_out, gw_topic_kind_t *kind);

/* One accepted point. `metric` points into gw_points_t's string arena. */
typedef struct {
    uint32_t metric_off; /* offset into the arena */
    int64_t ts_ms;
    double value;
} gw_point_t;

/* Accumulates the points of accepted messages. On rejection nothing a call
 * added remains. */
typedef struct {
    gw_point_t *v;
    size_t n, cap;
    char *arena; /* NUL-terminated metric names */
    size_t arena_len, arena_cap;
} gw_points_t;

void gw_points_reset(gw_points_t *p);
void gw_points_free(gw_points_t *p);
static inline const char *gw_point_metric(const gw_points_t *p, const gw_point_t *pt)
{
    return p->arena + pt->metric_off;
}

/* Validates a JSON telemetry payload; on GW_OK appends its points to `out`.
 * Samples without ts get `now_ms`. `detail` (may be NULL) receives a short
 * human explanation of a rejection. */
gw_reason_t gw_validate_telemetry_json(const char *payload, size_t len, int64_t now_ms,
                                       gw_points_t *out, char *detail, size_t detail_len);
/* The parts of it: gw_telemetry_json_fast takes the common shape — one
 * flat sample object of numbers and booleans that passes every check —
 * without building a JSON tree, appends its points and returns true;
 * anything else (arrays, escapes, null, strings, duplicate keys, any
 * refusal) returns false with `out` as it was, and the full parser
 * (jansson) decides. The two agree point for point on what the fast one
 * takes (tests/fuzz/fuzz_validate.c checks it). */
bool gw_telemetry_json_fast(const char *payload, size_t len, int64_t now_ms, gw_points_t *out);
gw_reason_t gw_validate_telemetry_json_full(const char *payload, size_t len, int64_t now_ms,
                                            gw_points_t *out, char *detail, size_t detail_len);
/* Appends one point; -1 when out of memory. */
int gw_points_push(gw_points_t *p, const char *metric, size_t mlen, int64_t ts, double value);
/* Same for the protobuf form (devices/{id}/telemetry/pb). */
gw_reason_t gw_validate_telemetry_pb(const uint8_t *payload, size_t len, int64_t now_ms,
                                     gw_points_t *out, char *detail, size_t detail_len);

/* Validates a status payload; *online set from "state", and `firmware`
 * (GW_MAX_FIRMWARE + 1 bytes, may be NULL) from "firmware" ("" when absent). */
#define GW_MAX_FIRMWARE 64
/* devices/{id}/ota/status: {"jobId":"…","state":"downloading|installing|
 * succeeded|failed","progress":0-100,"version":"…","error":"…"}; jobId and
 * state required, the rest optional. */
gw_reason_t gw_validate_ota_status(const char *payload, size_t len, char *detail,
                                   size_t detail_len);
gw_reason_t gw_validate_status(const char *payload, size_t len, bool *online, char *firmware,
                               char *detail, size_t detail_len);
