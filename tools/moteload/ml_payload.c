/* ml_payload — see ml_payload.h. */
#include "ml_payload.h"
#include "sim_readings.h"

#include <math.h>
#include <string.h>

static size_t s_u64(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static size_t s_i64(char *out, int64_t v)
{
    if (v < 0) {
        out[0] = '-';
        return 1 + s_u64(out + 1, (uint64_t)0 - (uint64_t)v);
    }
    return s_u64(out, (uint64_t)v);
}

/* v at `places` decimals (0..6), trailing zeros of the fraction dropped */
static size_t s_decimal(char *out, double v, int places)
{
    static const int64_t scale[] = {1, 10, 100, 1000, 10000, 100000, 1000000};
    if (!isfinite(v) || fabs(v) > 9e12) {
        memcpy(out, "0", 1);
        return 1;
    }
    int64_t fixed = llround(v * (double)scale[places]);
    size_t k = 0;
    if (fixed < 0) {
        out[k++] = '-';
        fixed = -fixed;
    }
    k += s_u64(out + k, (uint64_t)(fixed / scale[places]));
    int64_t frac = fixed % scale[places];
    if (frac) {
        out[k++] = '.';
        for (int p = places - 1; p >= 0 && frac; p--) {
            out[k++] = (char)('0' + frac / scale[p]);
            frac %= scale[p];
        }
    }
    return k;
}

static size_t s_lit(char *out, const char *s)
{
    size_t n = strlen(s);
    memcpy(out, s, n);
    return n;
}

size_t ml_payload(char *out, int64_t ts, int64_t seq, const double *values, size_t metrics)
{
    size_t k = s_lit(out, "{\"ts\":");
    k += s_i64(out + k, ts);
    k += s_lit(out + k, ",\"seq\":");
    k += s_i64(out + k, seq);
    for (size_t i = 0; i < metrics && i < SIM_METRICS; i++) {
        out[k++] = ',';
        out[k++] = '"';
        k += s_lit(out + k, sim_metric_names[i]);
        out[k++] = '"';
        out[k++] = ':';
        if (sim_metric_decimals[i] < 0)
            k += s_lit(out + k, values[i] != 0 ? "true" : "false");
        else
            k += s_decimal(out + k, values[i], sim_metric_decimals[i]);
    }
    out[k++] = '}';
    return k;
}

size_t ml_payload_twin(char *out, int64_t ts, int64_t seq, const double *values, size_t metrics,
                       uint64_t token)
{
    size_t k = s_lit(out, "{\"state\":{\"reported\":");
    k += ml_payload(out + k, ts, seq, values, metrics);
    k += s_lit(out + k, "},\"clientToken\":\"");
    k += s_u64(out + k, token);
    k += s_lit(out + k, "\"}");
    return k;
}
