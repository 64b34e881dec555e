/* libFuzzer target for the sealed-telemetry codec (in_block.h). Input
 * byte 0 chooses: even — the rest is a block to decode (a corrupt one is
 * refused, never over-read; whatever decodes encodes and decodes again to
 * the same samples); odd — the rest is up to 4,096 (timestamp, value)
 * pairs of raw bits, which must round-trip bit for bit. */
#include "in_block.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void s_round_trip(const int64_t *ts, const double *v, size_t n)
{
    uint8_t *block = NULL;
    size_t len = in_block_encode(ts, v, n, &block);
    assert(len > 0);
    int64_t *dts;
    double *dv;
    long got = in_block_decode(block, len, &dts, &dv);
    assert(got == (long)n);
    assert(memcmp(dts, ts, n * sizeof *ts) == 0);
    assert(memcmp(dv, v, n * sizeof *v) == 0);
    free(dts);
    free(dv);
    free(block);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] % 2 == 0) {
        /* an exact-size copy: ASan sees any read past the end */
        uint8_t *copy = malloc(size - 1 ? size - 1 : 1);
        memcpy(copy, data + 1, size - 1);
        int64_t *ts;
        double *v;
        long n = in_block_decode(copy, size - 1, &ts, &v);
        free(copy);
        if (n > 0) {
            s_round_trip(ts, v, (size_t)n);
            free(ts);
            free(v);
        }
        return 0;
    }
    size_t n = (size - 1) / 16;
    if (n == 0 || n > 4096)
        return 0;
    int64_t *ts = malloc(n * sizeof *ts);
    double *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) {
        memcpy(&ts[i], data + 1 + 16 * i, 8);
        memcpy(&v[i], data + 1 + 16 * i + 8, 8);
    }
    s_round_trip(ts, v, n);
    free(ts);
    free(v);
    return 0;
}
