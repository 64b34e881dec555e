/* mh_metrics — counters, gauges and histograms rendered as Prometheus text.
 *
 * Registration takes a mutex; updates are lock-free atomics, so any thread
 * (a Paho callback, the HTTP server) may update or read them. Cells live as
 * long as the registry, so pointers to them stay valid. */
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct mh_metrics_t mh_metrics_t;
typedef struct mh_metric_cell_t mh_counter_t;
typedef struct mh_metric_cell_t mh_gauge_t;
typedef struct mh_metric_cell_t mh_histogram_t;

mh_metrics_t *mh_metrics_new(void);
void mh_metrics_destroy(mh_metrics_t **self_p);

/* Each returns the cell for (name, labels), creating it on first use; labels
 * is Prometheus label text such as `reason="bad_json"`, or NULL. Returns NULL
 * only when out of memory; the update functions accept NULL and do nothing. */
mh_counter_t *mh_metrics_counter(mh_metrics_t *self, const char *name, const char *help,
                                 const char *labels);
mh_gauge_t *mh_metrics_gauge(mh_metrics_t *self, const char *name, const char *help,
                             const char *labels);
/* `bounds` are the upper bounds of the buckets, ascending; +Inf is implied. */
/* Buckets for request and transaction times in seconds (Prometheus' base
 * unit), 0.5 ms to 30 s (MH_SECONDS_NBOUNDS of them): the RPC server's,
 * twin's batches, ota's ticks. */
extern const double mh_seconds_bounds[];
#define MH_SECONDS_NBOUNDS 24
mh_histogram_t *mh_metrics_histogram(mh_metrics_t *self, const char *name, const char *help,
                                     const char *labels, const double *bounds, size_t nbounds);

void mh_counter_add(mh_counter_t *c, uint64_t n);
static inline void mh_counter_inc(mh_counter_t *c)
{
    mh_counter_add(c, 1);
}
uint64_t mh_counter_get(const mh_counter_t *c);
void mh_gauge_set(mh_gauge_t *g, double v);
double mh_gauge_get(const mh_gauge_t *g);
void mh_histogram_observe(mh_histogram_t *h, double v);
/* A duration measured in milliseconds, into a histogram in seconds. */
static inline void mh_histogram_observe_ms(mh_histogram_t *h, int64_t ms)
{
    mh_histogram_observe(h, (double)ms / 1000.0);
}
/* Approximate quantile (0..1) by linear interpolation inside the bucket. */
double mh_histogram_quantile(const mh_histogram_t *h, double q);
uint64_t mh_histogram_count(const mh_histogram_t *h);

/* Prometheus text exposition format 0.0.4. Caller frees. NULL if no memory. */
char *mh_metrics_render(mh_metrics_t *self);

/* Reads one sample from Prometheus text (as rendered above): the line whose
 * name and label text match exactly. For tests and benchmarks. Returns 0 or
 * -ENOENT. */
int mh_metrics_text_value(const char *text, const char *name, const char *labels, double *out);
