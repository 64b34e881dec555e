#include "mh_log.h"
#include "mh_time.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *s_name = "motehub";
static mh_log_level_t s_level = MH_LOG_INFO;
static const char *s_level_names[] = {"debug", "info", "warn", "error"};

void mh_log_init(const char *name, mh_log_level_t level)
{
    s_name = name;
    s_level = level;
}

int mh_log_level_parse(const char *s, mh_log_level_t *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, s_level_names[i]) == 0) {
            *out = (mh_log_level_t)i;
            return 0;
        }
    return -EINVAL;
}

static void s_vlog(mh_log_level_t level, uint64_t suppressed, const char *fmt, va_list ap)
{
    char line[2048];
    int64_t now = mh_now_ms();
    time_t secs = (time_t)(now / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    int n = snprintf(line, sizeof line,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(now % 1000),
                     s_level_names[level], s_name);
    if (n < 0 || (size_t)n >= sizeof line)
        return;
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    if (m < 0)
        return;
    size_t len = (size_t)n + (size_t)m;
    if (len >= sizeof line - 64)
        len = sizeof line - 64; /* truncated; keep room for the suffix */
    if (suppressed)
        len += (size_t)snprintf(line + len, sizeof line - len, " (%llu similar lines suppressed)",
                                (unsigned long long)suppressed);
    line[len++] = '\n';
    /* One write per line keeps lines whole when several threads log. */
    fwrite(line, 1, len, stderr);
}

void mh_log(mh_log_level_t level, const char *fmt, ...)
{
    if (level < s_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    s_vlog(level, 0, fmt, ap);
    va_end(ap);
}

bool mh_ratelimit_ok(mh_ratelimit_t *rl, uint64_t *suppressed_out)
{
    while (__atomic_exchange_n(&rl->lock, 1, __ATOMIC_ACQUIRE))
        ;
    int64_t now = mh_now_ms();
    bool ok;
    if (now - rl->window_start >= rl->interval_ms) {
        rl->window_start = now;
        rl->printed = 0;
    }
    if (rl->printed < rl->burst) {
        rl->printed++;
        *suppressed_out = rl->suppressed;
        rl->suppressed = 0;
        ok = true;
    } else {
        rl->suppressed++;
        ok = false;
    }
    __atomic_store_n(&rl->lock, 0, __ATOMIC_RELEASE);
    return ok;
}

void mh_log_limited(mh_ratelimit_t *rl, mh_log_level_t level, const char *fmt, ...)
{
    if (level < s_level)
        return;
    uint64_t suppressed;
    if (!mh_ratelimit_ok(rl, &suppressed))
        return;
    va_list ap;
    va_start(ap, fmt);
    s_vlog(level, suppressed, fmt, ap);
    va_end(ap);
}
