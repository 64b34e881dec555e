#include "mh_metrics.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { S_COUNTER, S_GAUGE, S_HISTOGRAM } s_kind_t;

struct mh_metric_cell_t {
    struct mh_metric_cell_t *next;
    char *labels;
    uint64_t value; /* counter, or gauge/histogram-sum as double bits */
    double *bounds; /* histogram only */
    uint64_t *buckets;
    size_t nbounds;
    uint64_t count;
};

typedef struct s_family_t {
    struct s_family_t *next;
    char *name, *help;
    s_kind_t kind;
    struct mh_metric_cell_t *cells, **tail;
} s_family_t;

struct mh_metrics_t {
    pthread_mutex_t lock;
    s_family_t *families, **tail;
};

mh_metrics_t *mh_metrics_new(void)
{
    mh_metrics_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    pthread_mutex_init(&self->lock, NULL);
    self->tail = &self->families;
    return self;
}

void mh_metrics_destroy(mh_metrics_t **self_p)
{
    mh_metrics_t *self = *self_p;
    if (!self)
        return;
    for (s_family_t *f = self->families, *fn; f; f = fn) {
        fn = f->next;
        for (struct mh_metric_cell_t *c = f->cells, *cn; c; c = cn) {
            cn = c->next;
            free(c->labels);
            free(c->bounds);
            free(c->buckets);
            free(c);
        }
        free(f->name);
        free(f->help);
        free(f);
    }
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

static struct mh_metric_cell_t *s_cell(mh_metrics_t *self, const char *name, const char *help,
                                       const char *labels, s_kind_t kind, const double *bounds,
                                       size_t nbounds)
{
    if (!self)
        return NULL;
    labels = labels ? labels : "";
    pthread_mutex_lock(&self->lock);
    s_family_t *f = self->families;
    while (f && strcmp(f->name, name) != 0)
        f = f->next;
    if (!f) {
        f = calloc(1, sizeof *f);
        if (!f || !(f->name = strdup(name)) || !(f->help = strdup(help ? help : ""))) {
            if (f) {
                free(f->name);
                free(f);
            }
            pthread_mutex_unlock(&self->lock);
            return NULL;
        }
        f->kind = kind;
        f->tail = &f->cells;
        *self->tail = f;
        self->tail = &f->next;
    }
    struct mh_metric_cell_t *c = f->cells;
    while (c && strcmp(c->labels, labels) != 0)
        c = c->next;
    if (!c && (c = calloc(1, sizeof *c))) {
        c->labels = strdup(labels);
        if (kind == S_HISTOGRAM) {
            c->nbounds = nbounds;
            c->bounds = malloc(nbounds * sizeof(double));
            c->buckets = calloc(nbounds + 1, sizeof(uint64_t));
            if (c->bounds)
                memcpy(c->bounds, bounds, nbounds * sizeof(double));
        }
        if (!c->labels || (kind == S_HISTOGRAM && (!c->bounds || !c->buckets))) {
            free(c->labels);
            free(c->bounds);
            free(c->buckets);
            free(c);
            c = NULL;
        } else {
            *f->tail = c;
            f->tail = &c->next;
        }
    }
    pthread_mutex_unlock(&self->lock);
    return c;
}

mh_counter_t *mh_metrics_counter(mh_metrics_t *self, const char *name, const char *help,
                                 const char *labels)
{
    return s_cell(self, name, help, labels, S_COUNTER, NULL, 0);
}

mh_gauge_t *mh_metrics_gauge(mh_metrics_t *self, const char *name, const char *help,
                             const char *labels)
{
    return s_cell(self, name, help, labels, S_GAUGE, NULL, 0);
}

mh_histogram_t *mh_metrics_histogram(mh_metrics_t *self, const char *name, const char *help,
                                     const char *labels, const double *bounds, size_t nbounds)
{
    return s_cell(self, name, help, labels, S_HISTOGRAM, bounds, nbounds);
}

void mh_counter_add(mh_counter_t *c, uint64_t n)
{
    if (c)
        __atomic_add_fetch(&c->value, n, __ATOMIC_RELAXED);
}

uint64_t mh_counter_get(const mh_counter_t *c)
{
    return c ? __atomic_load_n(&c->value, __ATOMIC_RELAXED) : 0;
}

static double s_bits_to_double(uint64_t bits)
{
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static uint64_t s_double_to_bits(double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof d);
    return bits;
}

void mh_gauge_set(mh_gauge_t *g, double v)
{
    if (g)
        __atomic_store_n(&g->value, s_double_to_bits(v), __ATOMIC_RELAXED);
}

double mh_gauge_get(const mh_gauge_t *g)
{
    return g ? s_bits_to_double(__atomic_load_n(&g->value, __ATOMIC_RELAXED)) : 0;
}

void mh_histogram_observe(mh_histogram_t *h, double v)
{
    if (!h)
        return;
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds[i])
        i++;
    __atomic_add_fetch(&h->buckets[i], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&h->count, 1, __ATOMIC_RELAXED);
    uint64_t old = __atomic_load_n(&h->value, __ATOMIC_RELAXED), upd;
    do
        upd = s_double_to_bits(s_bits_to_double(old) + v);
    while (!__atomic_compare_exchange_n(&h->value, &old, upd, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED));
}

uint64_t mh_histogram_count(const mh_histogram_t *h)
{
    return h ? __atomic_load_n(&h->count, __ATOMIC_RELAXED) : 0;
}

double mh_histogram_quantile(const mh_histogram_t *h, double q)
{
    uint64_t total = mh_histogram_count(h);
    if (!total)
        return NAN;
    double rank = q * (double)total, seen = 0, lower = 0;
    for (size_t i = 0; i <= h->nbounds; i++) {
        double n = (double)__atomic_load_n(&h->buckets[i], __ATOMIC_RELAXED);
        if (seen + n >= rank && n > 0) {
            if (i == h->nbounds)
                return h->nbounds ? h->bounds[h->nbounds - 1] : 0;
            return lower + (h->bounds[i] - lower) * ((rank - seen) / n);
        }
        seen += n;
        if (i < h->nbounds)
            lower = h->bounds[i];
    }
    return lower;
}

/* A growing string for rendering. */
typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} s_text_t;

static void s_printf(s_text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_printf(s_text_t *t, const char *fmt, ...)
{
    if (t->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n + 1;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->failed = 1;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

static void s_sample(s_text_t *t, const char *name, const char *suffix, const char *labels,
                     const char *extra, double v)
{
    int has = labels && *labels, hasx = extra && *extra;
    s_printf(t, "%s%s%s%s%s%s%s %.17g\n", name, suffix, has || hasx ? "{" : "", has ? labels : "",
             has && hasx ? "," : "", hasx ? extra : "", has || hasx ? "}" : "", v);
}

char *mh_metrics_render(mh_metrics_t *self)
{
    s_text_t t = {.cap = 4096};
    if (!(t.buf = malloc(t.cap)))
        return NULL;
    t.buf[0] = 0;
    static const char *kinds[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&self->lock);
    for (s_family_t *f = self->families; f; f = f->next) {
        s_printf(&t, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, kinds[f->kind]);
        for (struct mh_metric_cell_t *c = f->cells; c; c = c->next) {
            if (f->kind == S_COUNTER) {
                s_sample(&t, f->name, "", c->labels, NULL, (double)mh_counter_get(c));
            } else if (f->kind == S_GAUGE) {
                s_sample(&t, f->name, "", c->labels, NULL, mh_gauge_get(c));
            } else {
                uint64_t cum = 0;
                char le[48];
                for (size_t i = 0; i <= c->nbounds; i++) {
                    cum += __atomic_load_n(&c->buckets[i], __ATOMIC_RELAXED);
                    if (i < c->nbounds)
                        snprintf(le, sizeof le, "le=\"%g\"", c->bounds[i]);
                    else
                        snprintf(le, sizeof le, "le=\"+Inf\"");
                    s_sample(&t, f->name, "_bucket", c->labels, le, (double)cum);
                }
                s_sample(&t, f->name, "_sum", c->labels, NULL,
                         s_bits_to_double(__atomic_load_n(&c->value, __ATOMIC_RELAXED)));
                s_sample(&t, f->name, "_count", c->labels, NULL, (double)mh_histogram_count(c));
            }
        }
    }
    pthread_mutex_unlock(&self->lock);
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}

int mh_metrics_text_value(const char *text, const char *name, const char *labels, double *out)
{
    char want[512];
    if (labels && *labels)
        snprintf(want, sizeof want, "%s{%s} ", name, labels);
    else
        snprintf(want, sizeof want, "%s ", name);
    size_t wl = strlen(want);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, want, wl) == 0) {
            *out = strtod(p + wl, NULL);
            return 0;
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return -ENOENT;
}

const double mh_seconds_bounds[MH_SECONDS_NBOUNDS] = {
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.007, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
    0.075,  0.1,   0.15,  0.2,   0.3,   0.5,   0.75, 1,     2,    5,    10,   30};
