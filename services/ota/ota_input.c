#include "ota_input.h"
#include "mh_json.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int s_state_rank(const char *s)
{
    if (strcmp(s, "downloading") == 0)
        return 1;
    if (strcmp(s, "installing") == 0)
        return 2;
    if (strcmp(s, "succeeded") == 0 || strcmp(s, "failed") == 0)
        return 3;
    return 0;
}

int ota_status_parse(const char *payload, size_t len, ota_status_msg_t *out)
{
    json_t *root = mh_json_loadb(payload, len, 0, MH_JSON_MAX_DEPTH, NULL);
    const char *job = json_string_value(json_object_get(root, "jobId"));
    const char *state = json_string_value(json_object_get(root, "state"));
    json_t *progress = json_object_get(root, "progress");
    const char *error = json_string_value(json_object_get(root, "error"));
    int rank = state ? s_state_rank(state) : 0;
    if (!job || !*job || strlen(job) >= sizeof out->job || !rank) {
        json_decref(root);
        return -EINVAL;
    }
    snprintf(out->job, sizeof out->job, "%s", job);
    snprintf(out->state, sizeof out->state, "%s", state);
    snprintf(out->error, sizeof out->error, "%s", error ? error : "");
    out->rank = rank;
    if (json_is_number(progress)) {
        /* compared as a double first: casting 1e300 to int is undefined */
        double p = json_number_value(progress);
        out->progress = p >= 100 ? 100 : p > 0 ? (int)p : 0;
    } else {
        out->progress = rank == 3 ? 100 : -1;
    }
    json_decref(root);
    return 0;
}

/* A decimal count of bytes, digits only (sscanf's %llu also takes a sign
 * and wraps "-1" to 2^64 - 1). Advances *p past it. */
static int s_bytes(const char **p, unsigned long long *v)
{
    const char *s = *p;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long long n = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (n > (UINT64_MAX - 9) / 10)
            return -1;
        n = n * 10 + (unsigned long long)(*s - '0');
    }
    *v = n;
    *p = s;
    return 0;
}

int ota_range_parse(const char *h, size_t len, size_t *from, size_t *to)
{
    unsigned long long a, b;
    if (!h || strncmp(h, "bytes=", 6) != 0 || len == 0)
        return -1;
    h += 6;
    if (*h == '-') {
        h++;
        if (s_bytes(&h, &b) < 0 || *h || b == 0)
            return -1;
        *from = b >= len ? 0 : len - (size_t)b;
        *to = len - 1;
        return 0;
    }
    if (s_bytes(&h, &a) < 0 || *h++ != '-' || a >= len)
        return -1;
    if (!*h) {
        b = len - 1;
    } else if (s_bytes(&h, &b) < 0 || *h) {
        return -1;
    }
    *from = (size_t)a;
    *to = b >= len ? len - 1 : (size_t)b;
    return *to < *from ? -1 : 0;
}
