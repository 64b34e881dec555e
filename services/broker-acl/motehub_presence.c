/* motehub_presence — see motehub_presence.h. A chained hash set of device
 * ids: the broker calls the plugin from its one thread, so no locking. */
#include "motehub_presence.h"

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_CHUNK 500

typedef struct s_node_t {
    struct s_node_t *next;
    char id[];
} s_node_t;

static struct {
    s_node_t **buckets;
    size_t nbuckets, count;
    int interval_s;
    time_t last;
} s_p;

static uint64_t s_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static void s_grow(void)
{
    size_t n = s_p.nbuckets * 2;
    s_node_t **b = calloc(n, sizeof *b);
    if (!b)
        return; /* stays slower, still right */
    for (size_t i = 0; i < s_p.nbuckets; i++)
        for (s_node_t *x = s_p.buckets[i], *next; x; x = next) {
            next = x->next;
            size_t k = s_hash(x->id) % n;
            x->next = b[k];
            b[k] = x;
        }
    free(s_p.buckets);
    s_p.buckets = b;
    s_p.nbuckets = n;
}

int presence_init(int interval_s)
{
    s_p.nbuckets = 1024;
    s_p.buckets = calloc(s_p.nbuckets, sizeof *s_p.buckets);
    s_p.count = 0;
    s_p.interval_s = interval_s;
    s_p.last = time(NULL);
    return s_p.buckets ? 0 : -1;
}

void presence_cleanup(void)
{
    for (size_t i = 0; i < s_p.nbuckets; i++)
        for (s_node_t *x = s_p.buckets[i], *next; x; x = next) {
            next = x->next;
            free(x);
        }
    free(s_p.buckets);
    memset(&s_p, 0, sizeof s_p);
}

static int s_device_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

void presence_seen(const char *id)
{
    if (!s_p.buckets || !s_device_id(id))
        return;
    size_t k = s_hash(id) % s_p.nbuckets;
    for (s_node_t *x = s_p.buckets[k]; x; x = x->next)
        if (strcmp(x->id, id) == 0)
            return;
    size_t len = strlen(id);
    s_node_t *x = malloc(sizeof *x + len + 1);
    if (!x)
        return;
    memcpy(x->id, id, len + 1);
    x->next = s_p.buckets[k];
    s_p.buckets[k] = x;
    if (++s_p.count > s_p.nbuckets * 2)
        s_grow();
}

void presence_gone(const char *id)
{
    if (!s_p.buckets)
        return;
    s_node_t **pp = &s_p.buckets[s_hash(id) % s_p.nbuckets];
    for (; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->id, id) == 0) {
            s_node_t *x = *pp;
            *pp = x->next;
            free(x);
            s_p.count--;
            return;
        }
}

size_t presence_count(void)
{
    return s_p.count;
}

static void s_publish(const char *buf, size_t len)
{
    mosquitto_broker_publish_copy(NULL, "motehub/present", (int)len, buf, 1, false, NULL);
}

void presence_tick(time_t now)
{
    if (!s_p.buckets || s_p.interval_s <= 0 || now - s_p.last < s_p.interval_s)
        return;
    s_p.last = now;
    /* device ids are 1-64 of A-Z a-z 0-9 . _ - (the ACL admits no other
     * CN as a device): nothing to escape */
    size_t cap = 16 + S_CHUNK * 68;
    char *buf = malloc(cap);
    if (!buf)
        return;
    size_t len = 0, in_chunk = 0;
    for (size_t i = 0; i < s_p.nbuckets; i++)
        for (s_node_t *x = s_p.buckets[i]; x; x = x->next) {
            if (in_chunk == 0)
                len = (size_t)snprintf(buf, cap, "{\"ids\":[");
            len +=
                (size_t)snprintf(buf + len, cap - len, "%s\"%.64s\"", in_chunk ? "," : "", x->id);
            if (++in_chunk == S_CHUNK) {
                len += (size_t)snprintf(buf + len, cap - len, "]}");
                s_publish(buf, len);
                in_chunk = 0;
            }
        }
    if (in_chunk) {
        len += (size_t)snprintf(buf + len, cap - len, "]}");
        s_publish(buf, len);
    }
    free(buf);
}
