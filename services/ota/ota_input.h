/* ota_input — what ota reads from outside itself, parsed and checked apart
 * from any database or socket: a device's OTA status message
 * (devices/{id}/ota/status, shared/spec/device-protocol.md) and the Range
 * header of a signed image download. Fuzzed by tests/fuzz/fuzz_ota.c. */
#pragma once
#include <stddef.h>

/* A device's report on one job. */
typedef struct {
    char job[72], state[16], error[1025];
    int rank;     /* 1 downloading, 2 installing, 3 succeeded or failed */
    int progress; /* 0..100, or -1 when the message has none */
} ota_status_msg_t;

/* Parses {"jobId":"…","state":"downloading|installing|succeeded|failed",
 * "progress":0..100?,"error":"…"?}. A progress outside 0..100 is clamped;
 * a terminal state without one counts as 100. An error longer than 1,024
 * bytes is cut. Returns 0, or -EINVAL (nothing written) when the payload is
 * not such a message. */
int ota_status_parse(const char *payload, size_t len, ota_status_msg_t *out);

/* A Range header against an image of `len` bytes: "bytes=a-b", "bytes=a-"
 * or "bytes=-n" (one range). Returns 0 with *from <= *to < len, or -1 when
 * unsatisfiable or not understood (the caller answers 416). */
int ota_range_parse(const char *header, size_t len, size_t *from, size_t *to);
