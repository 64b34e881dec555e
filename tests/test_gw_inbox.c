/* Unit tests of the gateway's inbox (gw_inbox.h): what Paho's thread hands
 * the actor arrives whole and in order, the descriptor is readable exactly
 * while something waits (or, after gw_inbox_signal, once a burst is over or
 * many wait; never at a burst's end for telemetry alone), what is peeked
 * and not dropped stays, and a full inbox makes the producer wait, then
 * refuse. */
#include "mh_test.h"

#include "gw_inbox.h"

#include <poll.h>
#include <pthread.h>
#include <unistd.h>

static bool s_readable(gw_inbox_t *in)
{
    struct pollfd p = {gw_inbox_fd(in), POLLIN, 0};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static void test_order_and_readiness(void **state)
{
    (void)state;
    gw_inbox_t in;
    assert_int_equal(gw_inbox_init(&in, 4), 0);
    assert_false(s_readable(&in));
    assert_null(gw_inbox_take(&in));
    /* around the ring several times */
    int next_in = 0, next_out = 0;
    for (int round = 0; round < 10; round++) {
        for (int k = 0; k < 3; k++) {
            char t[32], p[32];
            snprintf(t, sizeof t, "devices/d%d/telemetry", next_in);
            snprintf(p, sizeof p, "{\"n\":%d}", next_in++);
            assert_true(gw_inbox_put(&in, t, strlen(t), p, strlen(p), false, 0));
            assert_true(s_readable(&in));
        }
        for (int k = 0; k < 3; k++) {
            gw_in_t *m = gw_inbox_take(&in);
            assert_non_null(m);
            char t[32];
            snprintf(t, sizeof t, "devices/d%d/telemetry", next_out);
            assert_int_equal(m->tlen, strlen(t));
            assert_memory_equal(m->topic, t, m->tlen);
            int n = -1;
            assert_int_equal(sscanf(m->payload, "{\"n\":%d}", &n), 1);
            assert_int_equal(n, next_out++);
            free(m);
        }
        assert_false(s_readable(&in));
    }
    /* an empty payload, and bytes that are not text */
    assert_true(gw_inbox_put(&in, "a", 1, "", 0, false, 0));
    assert_true(gw_inbox_put(&in, "b", 1, "\0\1\2", 3, false, 0));
    gw_in_t *m = gw_inbox_take(&in);
    assert_int_equal(m->plen, 0);
    free(m);
    m = gw_inbox_take(&in);
    assert_int_equal(m->plen, 3);
    assert_memory_equal(m->payload, "\0\1\2", 3);
    free(m);
    /* what is left at the end is freed with it (valgrind/ASan check) */
    assert_true(gw_inbox_put(&in, "c", 1, "x", 1, false, 0));
    gw_inbox_fini(&in);
}

static void test_full_waits_then_refuses(void **state)
{
    (void)state;
    gw_inbox_t in;
    assert_int_equal(gw_inbox_init(&in, 2), 0);
    assert_true(gw_inbox_put(&in, "a", 1, "1", 1, false, 0));
    assert_true(gw_inbox_put(&in, "a", 1, "2", 1, false, 0));
    assert_false(gw_inbox_put(&in, "a", 1, "3", 1, false, 0));
    int64_t t0 = mht_now_ms();
    assert_false(gw_inbox_put(&in, "a", 1, "3", 1, false, 100));
    assert_true(mht_now_ms() - t0 >= 95);
    assert_int_equal(gw_inbox_size(&in), 2);
    gw_inbox_fini(&in);
}

/* After gw_inbox_signal(in, 4), a put makes the descriptor readable only
 * at the 4th message; the next signal makes it readable for fewer. Peeked
 * messages not dropped stay, first, in order. */
static void test_signal_a_burst(void **state)
{
    (void)state;
    gw_inbox_t in;
    assert_int_equal(gw_inbox_init(&in, 8), 0);
    gw_inbox_signal(&in, 4); /* nothing held: not readable */
    assert_false(s_readable(&in));
    for (int i = 0; i < 3; i++) {
        char p[8];
        snprintf(p, sizeof p, "%d", i);
        assert_true(gw_inbox_put(&in, "t", 1, p, strlen(p), false, 0));
        assert_false(s_readable(&in));
    }
    assert_true(gw_inbox_put(&in, "t", 1, "3", 1, false, 0));
    assert_true(s_readable(&in));
    gw_in_t *v[8];
    assert_int_equal(gw_inbox_peek(&in, v, 8), 4);
    assert_string_equal(v[0]->payload, "0");
    assert_string_equal(v[3]->payload, "3");
    free(v[0]);
    free(v[1]);
    gw_inbox_drop(&in, 2); /* two taken, two stay */
    assert_true(s_readable(&in));
    assert_int_equal(gw_inbox_size(&in), 2);
    assert_int_equal(gw_inbox_peek(&in, v, 1), 1);
    assert_string_equal(v[0]->payload, "2");
    assert_int_equal(gw_inbox_peek(&in, v, 8), 2);
    free(v[0]);
    free(v[1]);
    gw_inbox_drop(&in, 2);
    assert_false(s_readable(&in));
    /* a burst of one, then the producer goes idle */
    assert_true(gw_inbox_put(&in, "t", 1, "4", 1, false, 0));
    assert_false(s_readable(&in));
    gw_inbox_signal(&in, 4);
    assert_true(s_readable(&in));
    gw_in_t *m = gw_inbox_take(&in);
    assert_string_equal(m->payload, "4");
    free(m);
    assert_false(s_readable(&in));
    gw_inbox_fini(&in);
}

/* Telemetry (put with may_wait) does not make the descriptor readable at
 * the end of a burst — the taker's timer takes it — unless the threshold
 * is reached; one other message among it does. gw_inbox_since says when
 * the oldest held arrived. */
static void test_telemetry_waits_for_the_timer(void **state)
{
    (void)state;
    gw_inbox_t in;
    assert_int_equal(gw_inbox_init(&in, 8), 0);
    assert_int_equal(gw_inbox_since(&in), 0);
    gw_inbox_signal(&in, 4);
    int64_t t0 = mht_now_ms();
    assert_true(gw_inbox_put(&in, "t", 1, "0", 1, true, 0));
    usleep(20000);
    assert_true(gw_inbox_put(&in, "t", 1, "1", 1, true, 0));
    gw_inbox_signal(&in, 4); /* the burst is over: telemetry alone waits */
    assert_false(s_readable(&in));
    int64_t since = gw_inbox_since(&in);
    assert_true(since >= t0 - 1 && since <= t0 + 10);
    assert_true(gw_inbox_put(&in, "twin", 4, "2", 1, false, 0));
    assert_false(s_readable(&in)); /* in a burst: not yet */
    gw_inbox_signal(&in, 4);
    assert_true(s_readable(&in)); /* at its end: the twin message wakes the taker */
    gw_in_t *v[8];
    assert_int_equal(gw_inbox_peek(&in, v, 8), 3);
    for (int i = 0; i < 3; i++)
        free(v[i]);
    gw_inbox_drop(&in, 3);
    assert_false(s_readable(&in));
    assert_int_equal(gw_inbox_since(&in), 0);
    /* the next telemetry burst: not readable at its end, readable at 4 */
    for (int i = 0; i < 3; i++)
        assert_true(gw_inbox_put(&in, "t", 1, "x", 1, true, 0));
    gw_inbox_signal(&in, 4);
    assert_false(s_readable(&in));
    assert_true(gw_inbox_since(&in) >= since + 19);
    assert_true(gw_inbox_put(&in, "t", 1, "x", 1, true, 0));
    assert_true(s_readable(&in));
    gw_inbox_fini(&in);
}

enum { S_N = 200000 };

static void *s_producer(void *arg)
{
    gw_inbox_t *in = arg;
    for (int i = 0; i < S_N; i++) {
        char p[16];
        int n = snprintf(p, sizeof p, "%d", i);
        while (!gw_inbox_put(in, "t", 1, p, (size_t)n, false, 200))
            ;
    }
    return NULL;
}

/* The same in bursts of 1 to 40 messages, each ended by gw_inbox_signal
 * (as Paho's thread does before it sleeps), with the threshold at 16;
 * `telemetry` in four of them put with may_wait. */
static void s_bursts(gw_inbox_t *in, unsigned seed, unsigned telemetry)
{
    for (int i = 0; i < S_N;) {
        int burst = 1 + (int)(rand_r(&seed) % 40);
        for (int k = 0; k < burst && i < S_N; k++, i++) {
            char p[16];
            int n = snprintf(p, sizeof p, "%d", i);
            bool may_wait = (unsigned)rand_r(&seed) % 4 < telemetry;
            while (!gw_inbox_put(in, "t", 1, p, (size_t)n, may_wait, 200))
                ;
        }
        gw_inbox_signal(in, 16);
    }
}

static void *s_burst_producer(void *arg)
{
    s_bursts(arg, 7, 0);
    return NULL;
}

/* Three messages in four telemetry. */
static void *s_telemetry_producer(void *arg)
{
    s_bursts(arg, 11, 3);
    return NULL;
}

/* A producer thread faster than the consumer: it waits for room, nothing is
 * lost or reordered, and the consumer sleeps in poll() whenever it is empty
 * — taking one at a time, or many at a lock and some of them left. With
 * `tick_ms`, the consumer's poll also ends on that timer, as the actor's
 * does, and takes what waits then. */
static void s_consume_ticking(void *(*producer)(void *), bool many, int tick_ms)
{
    gw_inbox_t in;
    assert_int_equal(gw_inbox_init(&in, 64), 0);
    pthread_t th;
    pthread_create(&th, NULL, producer, &in);
    int want = 0, round = 0;
    while (want < S_N) {
        struct pollfd p = {gw_inbox_fd(&in), POLLIN, 0};
        if (tick_ms)
            assert_true(poll(&p, 1, tick_ms) >= 0);
        else
            assert_true(poll(&p, 1, 5000) == 1);
        if (!many) {
            for (gw_in_t *m; (m = gw_inbox_take(&in)); free(m))
                assert_int_equal(atoi(m->payload), want++);
            continue;
        }
        gw_in_t *v[64];
        size_t k = gw_inbox_peek(&in, v, 64), use = k - (k > 1 && round++ % 3 == 0);
        for (size_t j = 0; j < use; j++)
            assert_int_equal(atoi(v[j]->payload), want++);
        gw_inbox_drop(&in, use);
        for (size_t j = 0; j < use; j++)
            free(v[j]);
    }
    pthread_join(th, NULL);
    assert_false(s_readable(&in));
    gw_inbox_fini(&in);
}

static void s_consume(void *(*producer)(void *), bool many)
{
    s_consume_ticking(producer, many, 0);
}

static void test_threads(void **state)
{
    (void)state;
    s_consume(s_producer, false);
    s_consume(s_producer, true);
}

static void test_threads_in_bursts(void **state)
{
    (void)state;
    s_consume(s_burst_producer, true);
    s_consume_ticking(s_telemetry_producer, true, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_readiness),
        cmocka_unit_test(test_full_waits_then_refuses),
        cmocka_unit_test(test_signal_a_burst),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_threads_in_bursts),
        cmocka_unit_test(test_telemetry_waits_for_the_timer),
    };
    return MHT_RUN(tests);
}
