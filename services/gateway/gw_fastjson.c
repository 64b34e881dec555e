/* gw_fastjson — the fast path of gw_validate_telemetry_json (see
 * gw_validate.h): the payload nearly every device sends, one flat object
 * like {"ts":1796252260635,"seq":7,"temperature":21.37,"door_open":false},
 * read in one pass without a JSON tree. Parsing it with jansson was a
 * third of the gateway's own CPU a message (perf, docs/benchmarks.md).
 *
 * It only ever says yes: on anything it does not fully understand, or
 * that the full parser would refuse, it returns false and leaves the
 * points as they were, so the verdicts and their details stay the full
 * parser's. Where it says yes it must produce what jansson would: numbers
 * by the same strtod / strtoll, keys in document order, "-0" an integer
 * (0.0), duplicate keys refused. */
#include "gw_validate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_KEYS  32
#define S_MAX_TOKEN 63

typedef struct {
    const char *p, *end;
} s_cur_t;

static void s_ws(s_cur_t *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static bool s_eat(s_cur_t *c, char ch)
{
    s_ws(c);
    if (c->p >= c->end || *c->p != ch)
        return false;
    c->p++;
    s_ws(c);
    return true;
}

/* a key of printable ASCII, no escapes */
static bool s_key(s_cur_t *c, const char **k, size_t *klen)
{
    if (c->p >= c->end || *c->p != '"')
        return false;
    const char *s = ++c->p;
    while (c->p < c->end && *c->p != '"') {
        unsigned char ch = (unsigned char)*c->p;
        if (ch < 0x20 || ch >= 0x7f || ch == '\\')
            return false;
        c->p++;
    }
    if (c->p >= c->end)
        return false;
    *k = s;
    *klen = (size_t)(c->p - s);
    c->p++;
    return true;
}

static bool s_digit(const s_cur_t *c, const char *p)
{
    return p < c->end && *p >= '0' && *p <= '9';
}

/* a number as RFC 8259 writes it; *integer when it has neither fraction
 * nor exponent (jansson's integer), then *iv holds it */
static bool s_number(s_cur_t *c, double *v, long long *iv, bool *integer)
{
    const char *s = c->p, *p = s;
    if (p < c->end && *p == '-')
        p++;
    if (!s_digit(c, p))
        return false;
    if (*p == '0')
        p++;
    else
        while (s_digit(c, p))
            p++;
    *integer = true;
    if (p < c->end && *p == '.') {
        *integer = false;
        if (!s_digit(c, ++p))
            return false;
        while (s_digit(c, p))
            p++;
    }
    if (p < c->end && (*p == 'e' || *p == 'E')) {
        *integer = false;
        p++;
        if (p < c->end && (*p == '+' || *p == '-'))
            p++;
        if (!s_digit(c, p))
            return false;
        while (s_digit(c, p))
            p++;
    }
    size_t n = (size_t)(p - s);
    char buf[S_MAX_TOKEN + 1];
    if (n > S_MAX_TOKEN)
        return false;
    memcpy(buf, s, n);
    buf[n] = 0;
    if (*integer) {
        if (n > 18) /* surely inside long long; longer ones go to jansson */
            return false;
        *iv = strtoll(buf, NULL, 10);
        *v = (double)*iv;
    } else {
        *v = strtod(buf, NULL);
        if (!isfinite(*v)) /* jansson refuses an overflow */
            return false;
    }
    c->p = p;
    return true;
}

static bool s_literal(s_cur_t *c, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0)
        return false;
    c->p += n;
    return true;
}

static bool s_is(const char *k, size_t klen, const char *name)
{
    return klen == strlen(name) && memcmp(k, name, klen) == 0;
}

bool gw_telemetry_json_fast(const char *payload, size_t len, int64_t now_ms, gw_points_t *out)
{
    if (len > GW_MAX_PAYLOAD)
        return false;
    struct {
        const char *k;
        size_t klen;
        double v;
    } kv[S_MAX_KEYS];
    size_t nk = 0;
    bool have_ts = false, have_seq = false;
    int64_t ts = now_ms;
    s_cur_t c = {payload, payload + len};
    s_ws(&c);
    if (!s_eat(&c, '{'))
        return false;
    do {
        const char *k;
        size_t klen;
        double v;
        long long iv;
        bool integer;
        if (!s_key(&c, &k, &klen) || !s_eat(&c, ':'))
            return false;
        if (s_is(k, klen, "ts") || s_is(k, klen, "seq")) {
            bool is_ts = klen == 2, *seen = is_ts ? &have_ts : &have_seq;
            if (*seen || !s_number(&c, &v, &iv, &integer) || !integer || iv < 0 ||
                (is_ts && iv > now_ms + GW_MAX_FUTURE_MS))
                return false;
            *seen = true;
            if (is_ts)
                ts = iv;
        } else {
            if (nk == S_MAX_KEYS || !gw_metric_name_valid(k, klen))
                return false;
            for (size_t i = 0; i < nk; i++)
                if (kv[i].klen == klen && memcmp(kv[i].k, k, klen) == 0)
                    return false;
            if (s_literal(&c, "true"))
                v = 1.0;
            else if (s_literal(&c, "false"))
                v = 0.0;
            else if (!s_number(&c, &v, &iv, &integer))
                return false;
            kv[nk].k = k;
            kv[nk].klen = klen;
            kv[nk++].v = v;
        }
    } while (s_eat(&c, ','));
    if (!s_eat(&c, '}') || c.p != c.end || nk == 0)
        return false;
    size_t mark_n = out->n, mark_arena = out->arena_len;
    for (size_t i = 0; i < nk; i++)
        if (gw_points_push(out, kv[i].k, kv[i].klen, ts, kv[i].v) < 0) {
            out->n = mark_n;
            out->arena_len = mark_arena;
            return false;
        }
    return true;
}
