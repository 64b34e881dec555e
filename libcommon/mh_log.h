/* mh_log — one line per event to stderr, with levels and rate limiting.
 *
 * Lines look like
 *   2026-11-24T17:31:00.123Z warn gateway: rejected message, ignoring (device=d1 reason=bad_json)
 * Programs log; libcommon's other modules return errors and let the caller
 * decide (systemd's rule). */
#pragma once
#include <stdbool.h>
#include <stdint.h>

typedef enum { MH_LOG_DEBUG = 0, MH_LOG_INFO, MH_LOG_WARN, MH_LOG_ERROR } mh_log_level_t;

/* Sets the name printed on every line and the lowest level printed.
 * Not thread-safe; call once at start-up. */
void mh_log_init(const char *name, mh_log_level_t level);
/* Parses "debug", "info", "warn", "error"; returns -EINVAL otherwise. */
int mh_log_level_parse(const char *s, mh_log_level_t *out);

void mh_log(mh_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define mh_debug(...) mh_log(MH_LOG_DEBUG, __VA_ARGS__)
#define mh_info(...)  mh_log(MH_LOG_INFO, __VA_ARGS__)
#define mh_warn(...)  mh_log(MH_LOG_WARN, __VA_ARGS__)
#define mh_error(...) mh_log(MH_LOG_ERROR, __VA_ARGS__)

/* A token bucket for noisy log lines: at most `burst` lines per `interval_ms`;
 * the first line after a suppressed stretch says how many were suppressed.
 * Thread-safe (a mutex-free CAS loop would be overkill at log rates). */
typedef struct {
    int64_t interval_ms;
    uint32_t burst;
    int64_t window_start;
    uint32_t printed;
    uint64_t suppressed;
    int lock; /* spin flag, see mh_log.c */
} mh_ratelimit_t;

#define MH_RATELIMIT_INIT(interval_ms_, burst_)                                                    \
    {                                                                                              \
        .interval_ms = (interval_ms_), .burst = (burst_)                                           \
    }

/* Returns true when a line may be printed now; *suppressed_out gets the number
 * of lines dropped since the last printed one. */
bool mh_ratelimit_ok(mh_ratelimit_t *rl, uint64_t *suppressed_out);

/* Logs through a rate limiter; appends " (N similar lines suppressed)". */
void mh_log_limited(mh_ratelimit_t *rl, mh_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
