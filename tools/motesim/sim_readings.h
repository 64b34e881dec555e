/* sim_readings — what a simulated device measures: temperature on a daily
 * curve with noise, humidity, a draining battery, a noisy rssi, a door
 * contact. Shared by motesim (one Paho client a device) and moteload (the
 * light load generator), so both publish the same readings. Not
 * thread-safe per state; each thread keeps its own random state. */
#ifndef SIM_READINGS_H
#define SIM_READINGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIM_METRICS 5

typedef struct {
    double temp_bias, battery, rssi;
    bool door;
} sim_readings_t;

/* The metrics in the order readings fill them, and the decimal places
 * each is rounded to (-1: a boolean). */
extern const char *const sim_metric_names[SIM_METRICS];
extern const int sim_metric_decimals[SIM_METRICS];

/* A uniform number in [0, 1) from xorshift64* state (seed it non-zero). */
double sim_rand(uint64_t *rng);

void sim_readings_init(sim_readings_t *r, uint64_t *rng);
/* The next reading at ts (Unix ms): out[0..SIM_METRICS-1], booleans 0/1. */
void sim_readings_next(sim_readings_t *r, int64_t ts, uint64_t *rng, double out[SIM_METRICS]);

#endif
