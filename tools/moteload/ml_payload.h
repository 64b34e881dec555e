/* ml_payload — a telemetry sample as the device protocol's JSON
 * ({"ts":T,"seq":N,"temperature":21.37,...}), written without printf:
 * metrics at their fixed decimal places (sim_readings), booleans as
 * true/false. */
#ifndef ML_PAYLOAD_H
#define ML_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>

/* Writes the sample at out (at least 64 + 40 * metrics bytes); returns its
 * length. values[i] is metric i of sim_readings (metrics <= SIM_METRICS). */
size_t ml_payload(char *out, int64_t ts, int64_t seq, const double *values, size_t metrics);

/* A twin/update of the same sample as reported state, with `token` as its
 * clientToken: {"state":{"reported":{…}},"clientToken":"<token>"} (at
 * least 100 + 40 * metrics bytes). */
size_t ml_payload_twin(char *out, int64_t ts, int64_t seq, const double *values, size_t metrics,
                       uint64_t token);

#endif
