/* in_block — the codec of sealed telemetry: one (device, metric, period)
 * series as one block of a few bytes a sample (issue 19; the format in
 * docs/telemetry.md). Pure: no I/O, no allocation but the output.
 *
 * Timestamps (ms): the first, then the cheaper per block of
 * delta-of-delta and a residual from a grid at the series' own step that
 * follows its mean phase (a device's publish jitter then costs its few
 * bits, not delta-of-delta's doubled range; a missed sample re-anchors
 * it); irregular, repeated or decreasing timestamps round-trip too. Values
 * take the cheaper of two codecs, chosen per block:
 *   decimal  when every value is a decimal with at most 6 places that
 *            survives the round trip bit for bit (what sensors report:
 *            21.53, 45.2, -71, booleans): the scaled integers' residuals
 *            from a level that follows the series (shift 0: the plain
 *            delta; more: noisy readings of a slow signal);
 *   xor      otherwise (NaN payloads, infinities, -0, subnormals, noisy
 *            doubles): Gorilla's XOR with the previous value's bits.
 * Every integer stream is written in the prefix code (k-bit body, escape
 * to Gorilla's buckets, optionally a 1-bit zero) that its own histogram
 * says is cheapest. Version 1 blocks (buckets alone) still decode.
 * Decoding checks everything: a corrupt or truncated block is an error,
 * never an over-read. */
#pragma once
#include <stddef.h>
#include <stdint.h>

/* The most samples one block holds: a device reporting every second for a
 * day is 86,400. */
#define IN_BLOCK_MAX_SAMPLES (1u << 20)

/* Encodes n samples (1 ≤ n ≤ IN_BLOCK_MAX_SAMPLES; timestamps in any
 * order). Returns the block's size and *out (malloc'd), or 0 on a bad n or
 * no memory. */
size_t in_block_encode(const int64_t *ts, const double *v, size_t n, uint8_t **out);

/* Decodes a block: the number of samples, with *ts and *v (malloc'd, the
 * caller frees both), or -1 when it is corrupt, truncated or too large. */
long in_block_decode(const uint8_t *data, size_t len, int64_t **ts, double **v);
