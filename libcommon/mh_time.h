/* mh_time — wall and monotonic clocks in milliseconds (and microseconds). */
#pragma once
#include <stdint.h>
#include <time.h>

/* Milliseconds since the Unix epoch (the device protocol's time unit). */
static inline int64_t mh_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Monotonic milliseconds, for timeouts and intervals. */
static inline int64_t mh_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Monotonic microseconds, for latencies and pacing finer than a millisecond. */
static inline int64_t mh_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
