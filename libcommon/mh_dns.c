#include "mh_dns.h"

#include "mh_time.h"

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define S_RELOOK_MS 1000

typedef enum { S_NONE, S_OK, S_NXDOMAIN } s_state_t;

/* A name and its newest answer. Entries are never freed: lookup threads
 * hold them, and a process asks for a handful of names. */
typedef struct s_entry_t {
    char *host;
    s_state_t state;
    mh_dns_addr_t addrs[MH_DNS_MAX_ADDRS];
    size_t n;
    bool busy;          /* a lookup is under way */
    int64_t started_ms; /* when the newest lookup began */
    uint64_t answers;   /* how many lookups have finished */
    struct s_entry_t *next;
} s_entry_t;

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t s_answered;
static pthread_once_t s_once = PTHREAD_ONCE_INIT;
static s_entry_t *s_entries;

static void s_init(void)
{
    mh_cond_init_mono(&s_answered);
}

static void *s_lookup(void *arg)
{
    s_entry_t *e = arg;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(e->host, NULL, &hints, &res);
    mh_dns_addr_t addrs[MH_DNS_MAX_ADDRS];
    size_t n = 0;
    for (struct addrinfo *ai = rc == 0 ? res : NULL; ai && n < MH_DNS_MAX_ADDRS; ai = ai->ai_next) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, addrs[n].ip,
                  sizeof addrs[n].ip);
        bool dup = false;
        for (size_t i = 0; i < n && !dup; i++)
            dup = strcmp(addrs[i].ip, addrs[n].ip) == 0;
        if (!dup)
            n++;
    }
    if (res)
        freeaddrinfo(res);
    pthread_mutex_lock(&s_lock);
    /* a failure that is not "no such name" (a server that did not answer,
     * EAI_AGAIN) keeps the answer before it */
    if (rc == 0 && n > 0) {
        memcpy(e->addrs, addrs, n * sizeof *addrs);
        e->n = n;
        e->state = S_OK;
    } else if (rc == EAI_NONAME || (rc == 0 && n == 0)
#ifdef EAI_NODATA
               || rc == EAI_NODATA
#endif
    ) {
        e->n = 0;
        e->state = S_NXDOMAIN;
    }
    e->busy = false;
    e->answers++;
    pthread_cond_broadcast(&s_answered);
    pthread_mutex_unlock(&s_lock);
    return NULL;
}

static s_entry_t *s_entry(const char *host)
{
    for (s_entry_t *e = s_entries; e; e = e->next)
        if (strcmp(e->host, host) == 0)
            return e;
    s_entry_t *e = calloc(1, sizeof *e);
    if (!e || !(e->host = strdup(host))) {
        free(e);
        return NULL;
    }
    e->next = s_entries;
    s_entries = e;
    return e;
}

/* Starts a lookup of `e` on a thread of its own; false if none could start. */
static bool s_start(s_entry_t *e)
{
    pthread_attr_t attr;
    pthread_t t;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    bool ok = pthread_create(&t, &attr, s_lookup, e) == 0;
    pthread_attr_destroy(&attr);
    if (ok) {
        e->busy = true;
        e->started_ms = mh_mono_ms();
    }
    return ok;
}

int mh_dns_lookup(const char *host, int wait_ms, mh_dns_addr_t *out, size_t max)
{
    pthread_once(&s_once, s_init);
    pthread_mutex_lock(&s_lock);
    s_entry_t *e = s_entry(host);
    if (!e) {
        pthread_mutex_unlock(&s_lock);
        return -ENOMEM;
    }
    bool fresh = e->answers > 0 && mh_mono_ms() - e->started_ms < S_RELOOK_MS;
    if (!e->busy && !fresh)
        s_start(e);
    if (e->busy) {
        uint64_t seen = e->answers;
        struct timespec until = mh_mono_after(wait_ms > 0 ? wait_ms : 0);
        while (e->answers == seen &&
               pthread_cond_timedwait(&s_answered, &s_lock, &until) != ETIMEDOUT)
            ;
    }
    int rc = e->state == S_OK ? 0 : e->state == S_NXDOMAIN ? -EHOSTUNREACH : -EAGAIN;
    if (rc == 0) {
        size_t n = e->n < max ? e->n : max;
        memcpy(out, e->addrs, n * sizeof *out);
        rc = (int)n;
    }
    pthread_mutex_unlock(&s_lock);
    return rc;
}
