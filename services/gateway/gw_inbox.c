/* gw_inbox — see gw_inbox.h. */
#include "gw_inbox.h"
#include "mh_time.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

int gw_inbox_init(gw_inbox_t *self, size_t cap)
{
    memset(self, 0, sizeof *self);
    self->efd = -1;
    self->cap = cap ? cap : 1;
    self->signal_at = 1;
    self->ring = calloc(self->cap, sizeof *self->ring);
    if (!self->ring)
        return -ENOMEM;
    self->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->efd < 0) {
        int e = errno;
        free(self->ring);
        self->ring = NULL;
        return -e;
    }
    pthread_mutex_init(&self->lock, NULL);
    mh_cond_init_mono(&self->room);
    return 0;
}

void gw_inbox_fini(gw_inbox_t *self)
{
    if (!self->ring)
        return;
    for (gw_in_t *m; (m = gw_inbox_take(self));)
        free(m);
    free(self->ring);
    self->ring = NULL;
    close(self->efd);
    self->efd = -1;
    pthread_cond_destroy(&self->room);
    pthread_mutex_destroy(&self->lock);
}

/* Under the lock. The counter cannot overflow: it is written once and read
 * back to 0 whenever the queue empties. */
static void s_signal(gw_inbox_t *self)
{
    if (self->signalled || !self->n)
        return;
    uint64_t one = 1;
    (void)!write(self->efd, &one, sizeof one);
    self->signalled = true;
}

void gw_inbox_signal(gw_inbox_t *self, size_t signal_at)
{
    pthread_mutex_lock(&self->lock);
    self->signal_at = signal_at ? signal_at : 1;
    if (self->urgent)
        s_signal(self);
    pthread_mutex_unlock(&self->lock);
}

bool gw_inbox_put(gw_inbox_t *self, const char *topic, size_t tlen, const void *payload,
                  size_t plen, bool may_wait, int wait_ms)
{
    gw_in_t *m = malloc(sizeof *m + tlen + plen + 2);
    if (!m)
        return false;
    m->tlen = tlen;
    m->plen = plen;
    m->topic = (char *)(m + 1);
    m->payload = m->topic + tlen + 1;
    memcpy(m->topic, topic, tlen);
    m->topic[tlen] = 0;
    memcpy(m->payload, payload, plen);
    m->payload[plen] = 0;

    pthread_mutex_lock(&self->lock);
    if (self->n == self->cap && wait_ms > 0) {
        struct timespec until = mh_mono_after(wait_ms);
        while (self->n == self->cap &&
               pthread_cond_timedwait(&self->room, &self->lock, &until) != ETIMEDOUT)
            ;
    }
    bool taken = self->n < self->cap;
    if (taken) {
        if (!self->n)
            self->since_ms = mh_mono_ms();
        self->urgent |= !may_wait;
        self->ring[(self->head + self->n) % self->cap] = m;
        if (++self->n >= self->signal_at)
            s_signal(self);
    }
    pthread_mutex_unlock(&self->lock);
    if (!taken)
        free(m);
    return taken;
}

size_t gw_inbox_peek(gw_inbox_t *self, gw_in_t **v, size_t max)
{
    pthread_mutex_lock(&self->lock);
    size_t k = 0;
    for (; k < max && k < self->n; k++)
        v[k] = self->ring[(self->head + k) % self->cap];
    pthread_mutex_unlock(&self->lock);
    return k;
}

void gw_inbox_drop(gw_inbox_t *self, size_t k)
{
    pthread_mutex_lock(&self->lock);
    k = k < self->n ? k : self->n;
    bool was_full = self->n == self->cap;
    self->head = (self->head + k) % self->cap;
    self->n -= k;
    if (!self->n)
        self->urgent = false;
    if (!self->n && self->signalled) {
        uint64_t c;
        (void)!read(self->efd, &c, sizeof c);
        self->signalled = false;
    }
    if (was_full && k)
        pthread_cond_broadcast(&self->room);
    pthread_mutex_unlock(&self->lock);
}

gw_in_t *gw_inbox_take(gw_inbox_t *self)
{
    gw_in_t *m = NULL;
    if (gw_inbox_peek(self, &m, 1))
        gw_inbox_drop(self, 1);
    return m;
}

size_t gw_inbox_size(gw_inbox_t *self)
{
    pthread_mutex_lock(&self->lock);
    size_t n = self->n;
    pthread_mutex_unlock(&self->lock);
    return n;
}

int64_t gw_inbox_since(gw_inbox_t *self)
{
    pthread_mutex_lock(&self->lock);
    int64_t since = self->n ? self->since_ms : 0;
    pthread_mutex_unlock(&self->lock);
    return since;
}

int gw_inbox_fd(const gw_inbox_t *self)
{
    return self->efd;
}
