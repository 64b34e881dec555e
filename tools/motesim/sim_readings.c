/* sim_readings — see sim_readings.h. */
#include "sim_readings.h"

#include <math.h>

const char *const sim_metric_names[SIM_METRICS] = {"temperature", "humidity", "battery", "rssi",
                                                   "door_open"};
const int sim_metric_decimals[SIM_METRICS] = {2, 1, 1, 0, -1};

double sim_rand(uint64_t *rng)
{
    uint64_t x = *rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0; /* 2^53 */
}

void sim_readings_init(sim_readings_t *r, uint64_t *rng)
{
    r->temp_bias = (sim_rand(rng) - 0.5) * 6;
    r->battery = 60 + 40 * sim_rand(rng);
    r->rssi = -60 - 30 * sim_rand(rng);
    r->door = false;
}

void sim_readings_next(sim_readings_t *r, int64_t ts, uint64_t *rng, double out[SIM_METRICS])
{
    double hour = fmod((double)ts / 3600000.0, 24.0);
    r->battery = fmax(0, r->battery - 0.0005 * sim_rand(rng));
    r->rssi = fmin(-40, fmax(-110, r->rssi + (sim_rand(rng) - 0.5) * 3));
    if (sim_rand(rng) < 0.01)
        r->door = !r->door;
    out[0] =
        round((18 + r->temp_bias + 4 * sin((hour - 9) / 24 * 2 * M_PI) + (sim_rand(rng) - 0.5)) *
              100) /
        100;
    out[1] = round((45 + 10 * cos(hour / 24 * 2 * M_PI) + (sim_rand(rng) - 0.5) * 4) * 10) / 10;
    out[2] = round(r->battery * 10) / 10;
    out[3] = round(r->rssi);
    out[4] = r->door;
}
