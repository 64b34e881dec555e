/* The sealed-telemetry codec (services/ingest/in_block.h), tested like a
 * codec: round trips bit for bit on every edge value and timestamp shape,
 * the size a sample costs on motesim's series and on noisy floats, and a
 * corrupt or truncated block refused without an over-read (ASan watches;
 * tests/fuzz/fuzz_block.c goes further). */
#include "mh_test.h"

#include "in_block.h"

#include <float.h>
#include <math.h>
#include <string.h>

static uint64_t s_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double s_from(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

/* Encodes, decodes, checks every timestamp and value bit for bit; returns
 * the block's size. */
static size_t s_round_trip(const int64_t *ts, const double *v, size_t n)
{
    uint8_t *block = NULL;
    size_t size = in_block_encode(ts, v, n, &block);
    assert_true(size > 0);
    int64_t *dts;
    double *dv;
    long got = in_block_decode(block, size, &dts, &dv);
    assert_int_equal(got, (long)n);
    for (size_t i = 0; i < n; i++) {
        if (dts[i] != ts[i])
            fail_msg("sample %zu: timestamp %lld, want %lld", i, (long long)dts[i],
                     (long long)ts[i]);
        if (s_bits(dv[i]) != s_bits(v[i]))
            fail_msg("sample %zu: value bits %016llx, want %016llx", i,
                     (unsigned long long)s_bits(dv[i]), (unsigned long long)s_bits(v[i]));
    }
    free(dts);
    free(dv);
    free(block);
    return size;
}

static void test_edge_values_round_trip(void **state)
{
    (void)state;
    double v[] = {0.0,
                  -0.0,
                  INFINITY,
                  -INFINITY,
                  s_from(0x7ff8000000000000ull), /* quiet NaN */
                  s_from(0x7ff0000000000001ull), /* signalling NaN, a payload */
                  s_from(0xfff8dead0000beefull), /* negative NaN with a payload */
                  DBL_TRUE_MIN,
                  -DBL_TRUE_MIN,
                  DBL_MIN / 3, /* subnormal */
                  DBL_MAX,
                  -DBL_MAX,
                  1e300,
                  -1e-300,
                  21.53,
                  9007199254740993.0,
                  0.1,
                  1.0 / 3,
                  42};
    size_t n = sizeof v / sizeof *v;
    int64_t ts[sizeof v / sizeof *v];
    for (size_t i = 0; i < n; i++)
        ts[i] = 1800000000000LL + (int64_t)i * 30000;
    s_round_trip(ts, v, n);
    /* each alone, and each after itself (the unchanged path) */
    for (size_t i = 0; i < n; i++) {
        double two[] = {v[i], v[i], v[(i + 1) % n]};
        s_round_trip(ts, &v[i], 1);
        s_round_trip(ts, two, 3);
    }
}

static void test_timestamp_shapes_round_trip(void **state)
{
    (void)state;
    int64_t shapes[][8] = {
        {0, 0, 0, 0, 0, 0, 0, 0},                                  /* repeated */
        {1000, 2000, 2999, 4003, 4003, 9000, 9001, 86400000},      /* irregular */
        {9000, 8000, 7000, 1, -5, -1000000, 0, 5},                 /* decreasing */
        {INT64_MIN, INT64_MAX, INT64_MIN, 0, INT64_MAX, -1, 1, 0}, /* huge jumps */
        {1800000000000LL, 1800000030000LL, 1800000060000LL, 1800000090000LL, 1800000120000LL,
         1800000150000LL, 1800000180000LL, 1800000210000LL}, /* regular */
    };
    double v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (size_t n = 1; n <= 8; n++)
            s_round_trip(shapes[s], v, n);
    /* huge jumps in values, decimal and not */
    double jumps[] = {-9e15, 9e15, 0, -9e15, 1e-6, 123456.789012, -0.000001, 5};
    s_round_trip(shapes[4], jumps, 8);
}

/* motesim's five metrics (tools/motesim: temperature to 0.01 on a daily
 * curve with noise, humidity to 0.1, a draining battery, a random-walk
 * rssi, a door that rarely changes) every 30 s for a day, one block per
 * metric; and a noisy double for comparison. */
static void test_size_per_sample(void **state)
{
    (void)state;
    enum { N = 2880 };
    static int64_t ts[N];
    static double v[5][N], noisy[N];
    srandom(7);
    double battery = 80, rssi = -70;
    int door = 0;
    for (int i = 0; i < N; i++) {
        ts[i] = 1800000000000LL + (int64_t)i * 30000;
        double hour = fmod((double)ts[i] / 3600000.0, 24.0), r = (double)random() / RAND_MAX;
        battery = fmax(0, battery - 0.0005 * r);
        rssi = fmin(-40, fmax(-110, rssi + ((double)random() / RAND_MAX - 0.5) * 3));
        if ((double)random() / RAND_MAX < 0.01)
            door = !door;
        v[0][i] = round((18 + 4 * sin((hour - 9) / 24 * 2 * M_PI) + (r - 0.5)) * 100) / 100;
        v[1][i] = round((45 + 10 * cos(hour / 24 * 2 * M_PI) + (r - 0.5) * 4) * 10) / 10;
        v[2][i] = round(battery * 10) / 10;
        v[3][i] = round(rssi);
        v[4][i] = door;
        noisy[i] = 20 + sin(i / 100.0) + r * 1e-3;
    }
    size_t total = 0;
    const char *names[] = {"temperature", "humidity", "battery", "rssi", "door_open"};
    for (int m = 0; m < 5; m++) {
        size_t size = s_round_trip(ts, v[m], N);
        printf("# %-12s %6zu bytes for %d samples: %.2f bytes a sample\n", names[m], size, N,
               (double)size / N);
        total += size;
    }
    double per = (double)total / (5.0 * N);
    printf("# motesim's five metrics: %.2f bytes a sample\n", per);
    assert_true(per <= 2.0);
    /* as devices publish: 0–20 ms of jitter on a clock 3 ms a minute
     * slow, and an hour offline */
    static int64_t jittered[N];
    total = 0;
    for (int i = 0; i < N; i++)
        jittered[i] =
            1800000000000LL + (int64_t)i * 30001 + (i >= 1000 ? 3600000 : 0) + random() % 21;
    for (int m = 0; m < 5; m++)
        total += s_round_trip(jittered, v[m], N);
    per = (double)total / (5.0 * N);
    printf("# the same with 0-20 ms of publish jitter: %.2f bytes a sample\n", per);
    assert_true(per <= 2.0);
    size_t size = s_round_trip(ts, noisy, N);
    printf("# a noisy double: %.2f bytes a sample\n", (double)size / N);
    assert_true((double)size / N < 9.0);
}

/* Blocks written by version 1 of the format (delta-of-delta and value
 * deltas in buckets alone) still decode, value for value. */
static void test_version_1_blocks_decode(void **state)
{
    (void)state;
    static const uint8_t decimal[] = {0x01, 0x05, 0x80, 0xc0, 0xe2, 0x85, 0xe3, 0x68, 0x00,
                                      0xf8, 0xd4, 0x03, 0x94, 0xf0, 0x75, 0x26, 0xf1, 0x5f,
                                      0x8d, 0x01, 0x69, 0x10, 0xc1, 0x78, 0x04, 0xd5, 0x71,
                                      0x45, 0x78, 0x2f, 0xaf, 0x08, 0x00};
    static const uint8_t xor [] = {0x01, 0x05, 0x80, 0xc0, 0xe2, 0x85, 0xe3, 0x68, 0x01, 0xf8, 0xd4,
                                   0x03, 0x94, 0xf0, 0x75, 0x26, 0xf1, 0x5f, 0x8d, 0x1f, 0xdc, 0xcc,
                                   0xcc, 0xcc, 0xcc, 0xcc, 0xcd, 0x60, 0xfa, 0xfe, 0xe6, 0x66, 0x66,
                                   0x66, 0x66, 0x66, 0x6e, 0x0f, 0xef, 0xf5, 0x55, 0x55, 0x55, 0x55,
                                   0x55, 0x55, 0x63, 0xfd, 0x57, 0xb5, 0x00, 0x9c, 0xf6, 0xa3, 0x9b,
                                   0xf8, 0xdf, 0x28, 0xe7, 0x52, 0x69, 0x2b, 0xc0};
    const int64_t ts[] = {1800000000000LL, 1800000030012LL, 1800000060003LL, 1800000060003LL,
                          1800000150000LL};
    const double a[] = {21.53, 21.5, -3.25, 0, 1e6}, b[] = {0.1, -0.0, 1.0 / 3, 2.5e-310, -1e300};
    const struct {
        const uint8_t *block;
        size_t len;
        const double *v;
    } cases[] = {{decimal, sizeof decimal, a}, {xor, sizeof xor, b}};
    for (size_t c = 0; c < 2; c++) {
        int64_t *dts;
        double *dv;
        assert_int_equal(in_block_decode(cases[c].block, cases[c].len, &dts, &dv), 5);
        for (int i = 0; i < 5; i++) {
            assert_int_equal(dts[i], ts[i]);
            assert_int_equal(s_bits(dv[i]), s_bits(cases[c].v[i]));
        }
        free(dts);
        free(dv);
    }
}

static void test_largest_block(void **state)
{
    (void)state;
    size_t n = IN_BLOCK_MAX_SAMPLES;
    int64_t *ts = malloc(n * sizeof *ts);
    double *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) {
        ts[i] = (int64_t)i * 1000;
        v[i] = (double)(i % 1000) / 10;
    }
    s_round_trip(ts, v, n);
    uint8_t *block = NULL;
    assert_int_equal(in_block_encode(ts, v, n + 1, &block), 0);
    assert_int_equal(in_block_encode(ts, v, 0, &block), 0);
    assert_null(block);
    free(ts);
    free(v);
}

/* Every truncation and every single-bit flip of a valid block: refused or
 * decoded, never read past the end. */
static void test_corrupt_blocks_refused(void **state)
{
    (void)state;
    int64_t ts[64];
    double v[64];
    for (int i = 0; i < 64; i++) {
        ts[i] = 1800000000000LL + i * 30000 + (i % 7) * 13;
        v[i] = i % 3 ? 21.5 + i / 100.0 : s_from(0x7ff8000000000000ull + (uint64_t)i);
    }
    uint8_t *block = NULL;
    size_t size = in_block_encode(ts, v, 64, &block);
    assert_true(size > 0);
    int64_t *dts;
    double *dv;
    for (size_t len = 0; len < size; len++) {
        uint8_t *copy = malloc(len ? len : 1); /* exact size: ASan sees any over-read */
        memcpy(copy, block, len);
        long got = in_block_decode(copy, len, &dts, &dv);
        assert_true(got == -1 || got == 64);
        if (got > 0) {
            free(dts);
            free(dv);
        }
        free(copy);
    }
    int refused = 0;
    for (size_t bit = 0; bit < size * 8; bit++) {
        uint8_t *copy = malloc(size);
        memcpy(copy, block, size);
        copy[bit / 8] ^= (uint8_t)(0x80 >> (bit % 8));
        long got = in_block_decode(copy, size, &dts, &dv);
        if (got > 0) {
            free(dts);
            free(dv);
        } else {
            refused++;
        }
        free(copy);
    }
    printf("# %d of %zu single-bit flips refused, the rest decoded to other samples\n", refused,
           size * 8);
    /* a version or mode byte that is not one, a count over the maximum */
    uint8_t bad_version[] = {2, 1, 0, 0};
    uint8_t huge[] = {1, 0xff, 0xff, 0xff, 0x7f, 0, 0};
    assert_int_equal(in_block_decode(bad_version, sizeof bad_version, &dts, &dv), -1);
    assert_int_equal(in_block_decode(huge, sizeof huge, &dts, &dv), -1);
    assert_int_equal(in_block_decode(NULL, 0, &dts, &dv), -1);
    free(block);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edge_values_round_trip),
        cmocka_unit_test(test_timestamp_shapes_round_trip),
        cmocka_unit_test(test_size_per_sample),
        cmocka_unit_test(test_version_1_blocks_decode),
        cmocka_unit_test(test_largest_block),
        cmocka_unit_test(test_corrupt_blocks_refused),
    };
    return MHT_RUN(tests);
}
