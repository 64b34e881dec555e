#include "in_block.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- residual codes (version 2) ----
 *
 * Each stream of integers (timestamp residuals, value residuals) is
 * written in the prefix code that costs that stream least, chosen from its
 * own histogram and named in one header byte: bit 6 clear — plain: zigzag
 * < 2^k → '0' + k bits, else '1' + a bucket; bit 6 set — zero first:
 * 0 → '0', zigzag < 2^k → '10' + k bits, else '11' + a bucket. k is bits
 * 0–5. Version 1 blocks used the buckets alone. */

typedef struct {
    unsigned version, k;
    bool zero;
} s_code_t;

static unsigned s_len(uint64_t z)
{
    return z ? 64 - (unsigned)__builtin_clzll(z) : 0;
}

/* What a non-zero value whose zigzag is `len` bits long costs in the
 * buckets. */
static unsigned s_bucket_cost(unsigned len)
{
    size_t i = 0;
    while (s_buckets[i].bits < 64 && len > s_buckets[i].bits)
        i++;
    return s_buckets[i].plen + s_buckets[i].bits;
}

/* The cheapest code for n integers; returns its cost in bits. */
static uint64_t s_choose(const int64_t *r, size_t n, s_code_t *best)
{
    uint64_t hist[65] = {0}, best_bits = UINT64_MAX;
    for (size_t i = 0; i < n; i++)
        hist[s_len(s_zig(r[i]))]++;
    /* the lengths present (a k past the longest never costs less) */
    unsigned lens[65], nlens = 0, longest = 0;
    for (unsigned len = 0; len <= 64; len++)
        if (hist[len]) {
            lens[nlens++] = len;
            longest = len;
        }
    *best = (s_code_t){2, 0, false};
    for (unsigned zero = 0; zero < 2; zero++) {
        for (unsigned k = 0; k < 64 && k <= longest; k++) {
            uint64_t bits = 0;
            for (unsigned j = 0; j < nlens; j++) {
                unsigned len = lens[j];
                uint64_t each = zero ? (len == 0   ? 1
                                        : len <= k ? 2 + k
                                                   : 2 + s_bucket_cost(len))
                                     : (len <= k ? 1 + k : 1 + s_bucket_cost(len));
                bits += hist[len] * each;
            }
            if (bits < best_bits) {
                best_bits = bits;
                *best = (s_code_t){2, k, zero != 0};
            }
        }
    }
    return best_bits;
}

static bool s_put_int(s_w_t *w, const s_code_t *c, int64_t v)
{
    uint64_t z = s_zig(v);
    unsigned len = s_len(z);
    if (c->zero) {
        if (!z)
            return s_put(w, 0, 1);
        if (len <= c->k)
            return s_put(w, 0x2, 2) && s_put(w, z, c->k);
        return s_put(w, 0x3, 2) && s_put_bucket(w, v);
    }
    if (len <= c->k)
        return s_put(w, 0, 1) && s_put(w, z, c->k);
    return s_put(w, 1, 1) && s_put_bucket(w, v);
}

static int64_t s_get_int(s_r_t *r, const s_code_t *c)
{
    if (c->version == 1)
        return s_get_bucket(r);
    if (c->zero && !s_get(r, 1))
        return 0;
    if (!s_get(r, 1))
        return s_unzig(s_get(r, c->k));
    return s_get_bucket(r);
}

static bool s_get_code(s_r_t *r, s_code_t *c)
{
    uint64_t b = s_get(r, 8);
    *c = (s_code_t){2, (unsigned)(b & 0x3f), (b & 0x40) != 0};
    return !r->bad && !(b & 0x80);
}

/* ---- predictors ----
 *
 * Timestamps: delta-of-delta (S_TS_DOD), or a grid of step d (the robust
 * mean of the deltas) that follows the samples' mean phase: each residual
 * is the sample's distance from the grid's next point, and the grid moves
 * by residual / 2^shift (S_TS_GRID + shift) — a device's publish jitter
 * costs its few bits instead of delta-of-delta's doubled range. A residual
 * beyond half a step (a missed or extra sample) re-anchors the grid on the
 * sample.
 * Values (decimal): the residual from a level that follows the series by
 * residual / 2^shift; shift 0 is the plain delta. Noisy readings of a slow
 * signal cost less against the level, random walks against the last
 * value. All arithmetic wraps: any int64 series round-trips. */

enum { S_TS_DOD = 0, S_TS_GRID = 16 };
#define S_MAX_SHIFT 6

typedef struct {
    uint64_t g, d;
    unsigned shift;
} s_grid_t;

/* The residual of t against the grid, and the grid moved past it. */
static int64_t s_grid_step(s_grid_t *g, uint64_t t)
{
    uint64_t p = g->g + g->d;
    int64_t r = (int64_t)(t - p);
    uint64_t mag = r < 0 ? -(uint64_t)r : (uint64_t)r;
    uint64_t half = (int64_t)g->d > 0 ? g->d / 2 : 0;
    g->g = mag > half ? t : p + (uint64_t)(r >> g->shift);
    return r;
}

static int s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* The grid's step: the mean of the deltas within half the median of it. */
static uint64_t s_grid_d(const int64_t *ts, size_t n, int64_t *scratch)
{
    for (size_t i = 1; i < n; i++)
        scratch[i - 1] = (int64_t)((uint64_t)ts[i] - (uint64_t)ts[i - 1]);
    qsort(scratch, n - 1, sizeof *scratch, s_cmp_i64);
    int64_t med = scratch[(n - 1) / 2];
    if (med <= 0)
        return (uint64_t)med;
    __int128 sum = 0;
    int64_t count = 0;
    for (size_t i = 0; i < n - 1; i++)
        if (scratch[i] >= med - med / 2 && scratch[i] - med <= med / 2) {
            sum += scratch[i];
            count++;
        }
    return (uint64_t)(int64_t)((sum + count / 2) / count);
}

/* The n - 1 timestamp residuals of a mode into r. */
static void s_ts_residuals(const int64_t *ts, size_t n, unsigned mode, uint64_t d, int64_t *r)
{
    if (mode == S_TS_DOD) {
        uint64_t delta = (uint64_t)ts[1] - (uint64_t)ts[0];
        r[0] = (int64_t)delta;
        for (size_t i = 2; i < n; i++) {
            uint64_t dd = (uint64_t)ts[i] - (uint64_t)ts[i - 1];
            r[i - 1] = (int64_t)(dd - delta);
            delta = dd;
        }
        return;
    }
    s_grid_t g = {(uint64_t)ts[0], d, mode - S_TS_GRID};
    for (size_t i = 1; i < n; i++)
        r[i - 1] = s_grid_step(&g, (uint64_t)ts[i]);
}

/* The n - 1 value residuals at a shift into r (x: the scaled integers). */
static void s_v_residuals(const int64_t *x, size_t n, unsigned shift, int64_t *r)
{
    uint64_t m = (uint64_t)x[0];
    for (size_t i = 1; i < n; i++) {
        r[i - 1] = (int64_t)((uint64_t)x[i] - m);
        m = shift ? m + (uint64_t)(r[i - 1] >> shift) : (uint64_t)x[i];
    }
}

static unsigned s_varint_bits(uint64_t v)
{
    unsigned b = 8;
    while (v >= 0x80) {
        v >>= 7;
        b += 8;
    }
    return b;
}

static bool s_put_stream(s_w_t *w, const int64_t *r, size_t n)
{
    s_code_t c;
    s_choose(r, n, &c);
    bool ok = s_put(w, (c.zero ? 0x40u : 0) | c.k, 8);
    for (size_t i = 0; ok && i < n; i++)
        ok = s_put_int(w, &c, r[i]);
    return ok;
}

/* ---- blocks ---- */

/* Version 2: version, n, first timestamp, value codec, timestamp mode,
 * [grid step | first delta], the timestamp residuals, then the values. */
#define S_VERSION 2

static bool s_put_timestamps(s_w_t *w, const int64_t *ts, size_t n, int64_t *r, int64_t *tmp)
{
    if (n < 2)
        return s_put(w, S_TS_DOD, 8);
    uint64_t d = s_grid_d(ts, n, tmp);
    unsigned best_mode = S_TS_DOD;
    s_code_t c;
    s_ts_residuals(ts, n, S_TS_DOD, 0, r);
    uint64_t best = s_varint_bits(s_zig(r[0])) + s_choose(r + 1, n - 2, &c);
    for (unsigned shift = 0; shift <= S_MAX_SHIFT; shift++) {
        s_ts_residuals(ts, n, S_TS_GRID + shift, d, r);
        uint64_t bits = s_varint_bits(s_zig((int64_t)d)) + s_choose(r, n - 1, &c);
        if (bits < best) {
            best = bits;
            best_mode = S_TS_GRID + shift;
        }
    }
    s_ts_residuals(ts, n, best_mode, d, r);
    if (!s_put(w, best_mode, 8))
        return false;
    if (best_mode == S_TS_DOD)
        return s_put_varint(w, s_zig(r[0])) && s_put_stream(w, r + 1, n - 2);
    return s_put_varint(w, s_zig((int64_t)d)) && s_put_stream(w, r, n - 1);
}

static bool s_put_decimal(s_w_t *w, const double *v, size_t n, int places, int64_t *r, int64_t *x)
{
    for (size_t i = 0; i < n; i++)
        x[i] = llround(v[i] * s_pow10[places]);
    unsigned best_shift = 0;
    uint64_t best = UINT64_MAX;
    s_code_t c;
    for (unsigned shift = 0; n > 1 && shift <= S_MAX_SHIFT; shift++) {
        s_v_residuals(x, n, shift, r);
        uint64_t bits = s_choose(r, n - 1, &c);
        if (bits < best) {
            best = bits;
            best_shift = shift;
        }
    }
    s_v_residuals(x, n, best_shift, r);
    return s_put(w, (uint64_t)places, 8) && s_put(w, best_shift, 8) &&
           s_put_varint(w, s_zig(x[0])) && s_put_stream(w, r, n - 1);
}

size_t in_block_encode(const int64_t *ts, const double *v, size_t n, uint8_t **out)
{
    *out = NULL;
    if (n < 1 || n > IN_BLOCK_MAX_SAMPLES)
        return 0;
    s_w_t w = {0};
    int64_t *r = malloc(n * sizeof *r), *tmp = malloc(n * sizeof *tmp);
    int places = s_places(v, n);
    bool ok = r && tmp && s_put(&w, S_VERSION, 8) && s_put_varint(&w, n) &&
              s_put_varint(&w, s_zig(ts[0])) && s_put(&w, places < 0 ? S_XOR : S_DECIMAL, 8) &&
              s_put_timestamps(&w, ts, n, r, tmp);
    if (ok)
        ok = places >= 0 ? s_put_decimal(&w, v, n, places, r, tmp) : s_put_xor(&w, v, n);
    free(r);
    free(tmp);
    if (!ok) {
        free(w.buf);
        return 0;
    }
    *out = w.buf;
    return (w.bits + 7) / 8;
}

static bool s_get_timestamps(s_r_t *r, unsigned version, int64_t *ts, size_t n)
{
    unsigned mode = version == 1 ? S_TS_DOD : (unsigned)s_get(r, 8);
    if (n < 2 || r->bad)
        return !r->bad && mode == S_TS_DOD;
    uint64_t first = (uint64_t)s_unzig(s_get_varint(r));
    s_code_t c = {1, 0, false};
    if (version == 2 && !s_get_code(r, &c))
        return false;
    if (mode == S_TS_DOD) {
        uint64_t delta = first;
        for (size_t i = 1; i < n && !r->bad; i++) {
            if (i > 1)
                delta += (uint64_t)s_get_int(r, &c);
            ts[i] = (int64_t)((uint64_t)ts[i - 1] + delta);
        }
        return !r->bad;
    }
    if (mode < S_TS_GRID || mode > S_TS_GRID + S_MAX_SHIFT)
        return false;
    s_grid_t g = {(uint64_t)ts[0], first, mode - S_TS_GRID};
    for (size_t i = 1; i < n && !r->bad; i++) {
        uint64_t t = g.g + g.d + (uint64_t)s_get_int(r, &c);
        s_grid_step(&g, t);
        ts[i] = (int64_t)t;
    }
    return !r->bad;
}

static bool s_get_decimal(s_r_t *r, unsigned version, double *v, size_t n)
{
    uint64_t places = s_get(r, 8);
    uint64_t shift = version == 1 ? 0 : s_get(r, 8);
    if (places > S_MAX_PLACES || shift > S_MAX_SHIFT)
        return false;
    uint64_t m = (uint64_t)s_unzig(s_get_varint(r)), x = m;
    s_code_t c = {1, 0, false};
    if (version == 2 && !s_get_code(r, &c))
        return false;
    v[0] = (double)(int64_t)x / s_pow10[places];
    for (size_t i = 1; i < n && !r->bad; i++) {
        int64_t res = s_get_int(r, &c);
        x = m + (uint64_t)res;
        m = shift ? m + (uint64_t)(res >> shift) : x;
        v[i] = (double)(int64_t)x / s_pow10[places];
    }
    return !r->bad;
}

long in_block_decode(const uint8_t *data, size_t len, int64_t **ts_out, double **v_out)
{
    *ts_out = NULL;
    *v_out = NULL;
    if (!data || len == 0 || len > SIZE_MAX / 8)
        return -1;
    s_r_t r = {.buf = data, .len_bits = len * 8};
    unsigned version = (unsigned)s_get(&r, 8);
    if (version != 1 && version != 2)
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
    uint64_t mode = s_get(&r, 8);
    if (mode != S_DECIMAL && mode != S_XOR)
        goto bad;
    if (!s_get_timestamps(&r, version, ts, n))
        goto bad;
    if (mode == S_DECIMAL ? !s_get_decimal(&r, version, v, n) : !s_get_xor(&r, v, n))
        goto bad;
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
