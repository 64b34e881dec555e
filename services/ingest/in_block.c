#include "in_block.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define S_VERSION 1
enum { S_DECIMAL = 0, S_XOR = 1 };
#define S_MAX_PLACES 6

/* ---- bits ---- */

typedef struct {
    uint8_t *buf;
    size_t cap, bits;
} s_w_t;

static bool s_put(s_w_t *w, uint64_t value, unsigned nbits)
{
    if (w->bits + nbits > w->cap * 8) {
        size_t cap = w->cap * 2 + 64;
        uint8_t *b = realloc(w->buf, cap);
        if (!b)
            return false;
        memset(b + w->cap, 0, cap - w->cap);
        w->buf = b;
        w->cap = cap;
    }
    for (unsigned i = nbits; i-- > 0;) {
        if ((value >> i) & 1)
            w->buf[w->bits >> 3] |= (uint8_t)(0x80u >> (w->bits & 7));
        w->bits++;
    }
    return true;
}

typedef struct {
    const uint8_t *buf;
    size_t len_bits, pos;
    bool bad;
} s_r_t;

static uint64_t s_get(s_r_t *r, unsigned nbits)
{
    if (r->bad || nbits > r->len_bits - r->pos) {
        r->bad = true;
        return 0;
    }
    uint64_t v = 0;
    for (unsigned i = 0; i < nbits; i++, r->pos++)
        v = v << 1 | ((r->buf[r->pos >> 3] >> (7 - (r->pos & 7))) & 1);
    return v;
}

/* Variable-length unsigned integers, 7 bits a byte, on the bit stream. */
static bool s_put_varint(s_w_t *w, uint64_t v)
{
    while (v >= 0x80) {
        if (!s_put(w, (v & 0x7f) | 0x80, 8))
            return false;
        v >>= 7;
    }
    return s_put(w, v, 8);
}

static uint64_t s_get_varint(s_r_t *r)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        uint64_t b = s_get(r, 8);
        if (shift == 63 && (b & 0x7e)) /* more than 64 bits */
            break;
        v |= (b & 0x7f) << shift;
        if (!(b & 0x80) || r->bad)
            return v;
    }
    r->bad = true;
    return 0;
}

static uint64_t s_zig(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static int64_t s_unzig(uint64_t u)
{
    return (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
}

/* ---- signed integers in prefix buckets: 0 | 10+7 | 110+12 | 1110+20 |
 * 11110+32 | 11111+64 bits (zigzag inside each) ---- */

static const struct {
    unsigned prefix, plen, bits;
} s_buckets[] = {{0x2, 2, 7}, {0x6, 3, 12}, {0xe, 4, 20}, {0x1e, 5, 32}, {0x1f, 5, 64}};

static bool s_put_bucket(s_w_t *w, int64_t v)
{
    if (v == 0)
        return s_put(w, 0, 1);
    uint64_t z = s_zig(v);
    for (size_t i = 0; i < sizeof s_buckets / sizeof *s_buckets; i++)
        if (s_buckets[i].bits == 64 || z < (1ull << s_buckets[i].bits))
            return s_put(w, s_buckets[i].prefix, s_buckets[i].plen) &&
                   s_put(w, z, s_buckets[i].bits);
    return false;
}

static int64_t s_get_bucket(s_r_t *r)
{
    if (!s_get(r, 1))
        return 0;
    unsigned ones = 1;
    while (ones < 5 && s_get(r, 1))
        ones++;
    return s_unzig(s_get(r, s_buckets[ones - 1].bits));
}

/* ---- values ---- */

static uint64_t s_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double s_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static const double s_pow10[] = {1, 10, 100, 1000, 10000, 100000, 1000000};

/* Whether every value survives value → integer at k places → value bit
 * for bit (within 2^53, so the integer is exact). */
static bool s_decimal_at(const double *v, size_t n, int k)
{
    for (size_t i = 0; i < n; i++) {
        double scaled = v[i] * s_pow10[k];
        if (!(fabs(scaled) < 9007199254740992.0)) /* false for NaN */
            return false;
        if (s_bits((double)llround(scaled) / s_pow10[k]) != s_bits(v[i]))
            return false;
    }
    return true;
}

/* The fewest decimal places (≤ 6) at which every value survives; -1 when
 * there are none. The first value's own places are the place to start. */
static int s_places(const double *v, size_t n)
{
    for (int k = 0; k <= S_MAX_PLACES; k++)
        if (s_decimal_at(v, n < 1 ? 0 : 1, k) && s_decimal_at(v, n, k))
            return k;
    return -1;
}

static bool s_put_xor(s_w_t *w, const double *v, size_t n)
{
    uint64_t prev = s_bits(v[0]);
    unsigned lead = 65, trail = 0; /* no window yet */
    if (!s_put(w, prev, 64))
        return false;
    for (size_t i = 1; i < n; i++) {
        uint64_t cur = s_bits(v[i]), x = cur ^ prev;
        prev = cur;
        if (!x) {
            if (!s_put(w, 0, 1))
                return false;
            continue;
        }
        unsigned l = (unsigned)__builtin_clzll(x), t = (unsigned)__builtin_ctzll(x);
        if (l > 31)
            l = 31;
        if (lead <= 64 && l >= lead && t >= trail) { /* fits the previous window */
            if (!s_put(w, 0x2, 2) || !s_put(w, x >> trail, 64 - lead - trail))
                return false;
            continue;
        }
        lead = l;
        trail = t;
        unsigned len = 64 - l - t; /* 1..64, stored as len - 1 in 6 bits */
        if (!s_put(w, 0x3, 2) || !s_put(w, l, 5) || !s_put(w, len - 1, 6) || !s_put(w, x >> t, len))
            return false;
    }
    return true;
}

static bool s_get_xor(s_r_t *r, double *v, size_t n)
{
    uint64_t prev = s_get(r, 64);
    unsigned lead = 65, trail = 0;
    v[0] = s_double(prev);
    for (size_t i = 1; i < n && !r->bad; i++) {
        if (s_get(r, 1)) {
            if (s_get(r, 1)) {
                lead = (unsigned)s_get(r, 5);
                unsigned len = (unsigned)s_get(r, 6) + 1;
                if (lead + len > 64)
                    return false;
                trail = 64 - lead - len;
            } else if (lead > 64) {
                return false; /* a window before any was set */
            }
            unsigned len = 64 - lead - trail;
            prev ^= s_get(r, len) << trail;
        }
        v[i] = s_double(prev);
    }
    return !r->bad;
}

/* ---- blocks ---- */

size_t in_block_encode(const int64_t *ts, const double *v, size_t n, uint8_t **out)
{
    *out = NULL;
    if (n < 1 || n > IN_BLOCK_MAX_SAMPLES)
        return 0;
    s_w_t w = {0};
    int places = s_places(v, n);
    bool ok = s_put(&w, S_VERSION, 8) && s_put_varint(&w, n) && s_put_varint(&w, s_zig(ts[0])) &&
              s_put(&w, places < 0 ? S_XOR : S_DECIMAL, 8);
    /* timestamps: the first delta, then delta-of-delta (two's complement
     * arithmetic: any int64 series round-trips) */
    uint64_t delta = 0;
    for (size_t i = 1; ok && i < n; i++) {
        uint64_t d = (uint64_t)ts[i] - (uint64_t)ts[i - 1];
        ok = i == 1 ? s_put_varint(&w, s_zig((int64_t)d)) : s_put_bucket(&w, (int64_t)(d - delta));
        delta = d;
    }
    if (ok && places >= 0) {
        ok = s_put(&w, (uint64_t)places, 8);
        int64_t prev = 0;
        for (size_t i = 0; ok && i < n; i++) {
            int64_t cur = llround(v[i] * s_pow10[places]);
            ok = i == 0 ? s_put_varint(&w, s_zig(cur))
                        : s_put_bucket(&w, (int64_t)((uint64_t)cur - (uint64_t)prev));
            prev = cur;
        }
    } else if (ok) {
        ok = s_put_xor(&w, v, n);
    }
    if (!ok) {
        free(w.buf);
        return 0;
    }
    *out = w.buf;
    return (w.bits + 7) / 8;
}

long in_block_decode(const uint8_t *data, size_t len, int64_t **ts_out, double **v_out)
{
    *ts_out = NULL;
    *v_out = NULL;
    if (!data || len == 0 || len > SIZE_MAX / 8)
        return -1;
    s_r_t r = {.buf = data, .len_bits = len * 8};
    if (s_get(&r, 8) != S_VERSION)
        return -1;
    uint64_t n = s_get_varint(&r);
    /* every sample after the first costs at least two bits */
    if (r.bad || n < 1 || n > IN_BLOCK_MAX_SAMPLES || (n - 1) * 2 > r.len_bits)
        return -1;
    int64_t *ts = malloc(n * sizeof *ts);
    double *v = malloc(n * sizeof *v);
    if (!ts || !v)
        goto bad;
    ts[0] = s_unzig(s_get_varint(&r));
    uint64_t mode = s_get(&r, 8), delta = 0;
    if (mode != S_DECIMAL && mode != S_XOR)
        goto bad;
    for (size_t i = 1; i < n && !r.bad; i++) {
        delta = i == 1 ? (uint64_t)s_unzig(s_get_varint(&r)) : delta + (uint64_t)s_get_bucket(&r);
        ts[i] = (int64_t)((uint64_t)ts[i - 1] + delta);
    }
    if (mode == S_DECIMAL) {
        uint64_t places = s_get(&r, 8);
        if (places > S_MAX_PLACES)
            goto bad;
        int64_t cur = 0;
        for (size_t i = 0; i < n && !r.bad; i++) {
            cur = i == 0 ? s_unzig(s_get_varint(&r))
                         : (int64_t)((uint64_t)cur + (uint64_t)s_get_bucket(&r));
            v[i] = (double)cur / s_pow10[places];
        }
    } else if (!s_get_xor(&r, v, n)) {
        goto bad;
    }
    if (r.bad)
        goto bad;
    *ts_out = ts;
    *v_out = v;
    return (long)n;
bad:
    free(ts);
    free(v);
    return -1;
}
