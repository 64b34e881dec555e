/* gw_inbox — what Paho's thread hands the gateway's actor: a bounded queue
 * of (topic, payload) copies behind a mutex, with an eventfd the actor
 * polls that is readable exactly while the queue holds something.
 *
 * It replaced an inproc PUSH/PULL pair: a message there cost a zmsg, two
 * frames and their copies on each side (about ten allocations); here it
 * is one allocation holding both strings, moved by pointer. */
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t tlen, plen;
    char *topic, *payload; /* into the same allocation: free(item) frees all */
} gw_in_t;

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t room;
    gw_in_t **ring;
    size_t cap, head, n;
    int efd;          /* readable once signalled, until the queue empties */
    bool signalled;   /* efd is readable */
    size_t signal_at; /* put signals when the queue holds this many (1) */
    bool urgent;      /* something held may not wait for the taker's timer */
    int64_t since_ms; /* monotonic: when the queue last went from empty to not */
} gw_inbox_t;

/* 0, or -errno. `cap`: the most messages held before put waits. */
int gw_inbox_init(gw_inbox_t *self, size_t cap);
/* Frees what is still held too. */
void gw_inbox_fini(gw_inbox_t *self);

/* Copies a message in; waits up to `wait_ms` for room. false when there
 * was none (or no memory): the caller keeps the message. `may_wait`: the
 * taker batches it anyway (telemetry), so the end of a burst need not wake
 * the taker for it (gw_inbox_signal); the taker's own timer takes it. */
bool gw_inbox_put(gw_inbox_t *self, const char *topic, size_t tlen, const void *payload,
                  size_t plen, bool may_wait, int wait_ms);
/* The oldest message (the caller frees it with free()), or NULL. */
gw_in_t *gw_inbox_take(gw_inbox_t *self);
/* For the one taking thread, a lock for many messages: up to `max` of the
 * oldest messages into v, still held (how many); then gw_inbox_drop(k)
 * gives the first k to the caller (who frees them) and keeps the rest. */
size_t gw_inbox_peek(gw_inbox_t *self, gw_in_t **v, size_t max);
void gw_inbox_drop(gw_inbox_t *self, size_t k);
/* Makes the descriptor readable if a message put without `may_wait` is
 * held, and has later puts signal only once the queue holds `signal_at`
 * messages: the putting thread calls it when it is about to sleep
 * (gw_receive_linger.h), so that the taker wakes once a burst rather than
 * once a message — and not at all for a burst of telemetry alone. */
void gw_inbox_signal(gw_inbox_t *self, size_t signal_at);
/* How many are waiting. */
size_t gw_inbox_size(gw_inbox_t *self);
/* The monotonic time (mh_mono_ms) the oldest message still held arrived —
 * or one older: the queue's last step from empty; 0 when empty. */
int64_t gw_inbox_since(gw_inbox_t *self);
/* The descriptor to poll for POLLIN: readable once the queue holds
 * `signal_at` messages (1 unless gw_inbox_signal said otherwise). */
int gw_inbox_fd(const gw_inbox_t *self);
