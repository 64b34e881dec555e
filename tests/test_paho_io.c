/* Unit tests of the gateway's wrapped socket calls (gw_paho_io.c), linked
 * with -Wl,--wrap as the daemon is: the calls below are the ones Paho
 * makes. Small reads are served from a buffer and poll() says a socket
 * with buffered bytes is readable though the kernel has nothing; a closed
 * descriptor's buffer does not reach the next socket given its number;
 * small writes on the receive thread are kept until it polls for reads,
 * and leave before any other write, in order; on other threads writes go
 * at once; a socket read with recv() is writable without asking; the
 * linger sleeps only on the receive thread and calls the idle hook first. */
#include "mh_test.h"

#include "gw_receive_linger.h"

#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static int s_idle_calls;
static void s_idle(void *arg)
{
    (void)arg;
    s_idle_calls++;
}

static void s_pair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
}

static int s_kernel_bytes(int fd)
{
    int n = -1;
    assert_int_equal(ioctl(fd, FIONREAD, &n), 0);
    return n;
}

static bool s_readable(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static void test_reads_from_the_buffer(void **state)
{
    (void)state;
    int sv[2];
    s_pair(sv);
    /* three packets at once, read as Paho reads: a byte, a byte, the rest */
    const char sent[] = "\x30\x05"
                        "hello"
                        "\x30\x03"
                        "abc"
                        "\x40\x02\x00\x01";
    assert_int_equal(write(sv[1], sent, sizeof sent - 1), sizeof sent - 1);
    char got[64] = {0};
    size_t at = 0;
    assert_int_equal(recv(sv[0], got + at, 1, 0), 1);
    at++;
    /* the rest is in the buffer, none in the kernel: still readable */
    assert_int_equal(s_kernel_bytes(sv[0]), 0);
    assert_true(s_readable(sv[0]));
    assert_int_equal(recv(sv[0], got + at, 1, 0), 1);
    at++;
    assert_int_equal(recv(sv[0], got + at, 5, 0), 5);
    at += 5;
    while (s_readable(sv[0])) {
        ssize_t r = recv(sv[0], got + at, 3, 0);
        assert_true(r > 0);
        at += (size_t)r;
    }
    assert_int_equal(at, sizeof sent - 1);
    assert_memory_equal(got, sent, at);
    /* empty: as the kernel says */
    assert_int_equal(recv(sv[0], got, 1, 0), -1);
    assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
    /* a large read with nothing held goes straight to the socket */
    char big[20000];
    memset(big, 'x', sizeof big);
    assert_int_equal(write(sv[1], big, sizeof big), sizeof big);
    char in[20000];
    assert_int_equal(recv(sv[0], in, sizeof in, 0), sizeof in);
    assert_memory_equal(in, big, sizeof in);
    /* the end of the stream, after what was buffered */
    assert_int_equal(write(sv[1], "ab", 2), 2);
    close(sv[1]);
    assert_int_equal(recv(sv[0], got, 1, 0), 1);
    assert_int_equal(recv(sv[0], got + 1, 1, 0), 1);
    assert_memory_equal(got, "ab", 2);
    assert_int_equal(recv(sv[0], got, 1, 0), 0);
    close(sv[0]);
}

static void test_close_forgets(void **state)
{
    (void)state;
    int a[2], b[2];
    s_pair(a);
    assert_int_equal(write(a[1], "old-data", 8), 8);
    char c;
    assert_int_equal(recv(a[0], &c, 1, 0), 1); /* "ld-data" buffered */
    int fd = a[0];
    close(a[0]);
    close(a[1]);
    s_pair(b);
    assert_int_equal(b[0], fd); /* the same number, a new socket */
    assert_false(s_readable(b[0]));
    assert_int_equal(write(b[1], "new", 3), 3);
    char got[8] = {0};
    assert_int_equal(recv(b[0], got, 1, 0), 1);
    assert_int_equal(recv(b[0], got + 1, 2, 0), 2);
    assert_string_equal(got, "new");
    close(b[0]);
    close(b[1]);
}

static void *s_other_thread_writes(void *arg)
{
    int fd = *(int *)arg;
    struct iovec v = {"\x40\x02\x00\x09", 4};
    return (void *)(intptr_t)writev(fd, &v, 1);
}

static void test_writes_kept_for_the_burst(void **state)
{
    (void)state;
    int sv[2];
    s_pair(sv);
    /* on another thread: at once */
    pthread_t th;
    pthread_create(&th, NULL, s_other_thread_writes, &sv[0]);
    void *r;
    pthread_join(th, &r);
    assert_int_equal((intptr_t)r, 4);
    assert_int_equal(s_kernel_bytes(sv[1]), 4);
    char got[256];
    assert_int_equal(read(sv[1], got, sizeof got), 4);

    gw_paho_receiver = true; /* this thread is Paho's receive thread now */
    for (int i = 1; i <= 3; i++) {
        char ack[4] = {0x40, 0x02, 0x00, (char)i};
        struct iovec v[2] = {{ack, 2}, {ack + 2, 2}};
        assert_int_equal(writev(sv[0], v, 2), 4);
    }
    assert_int_equal(s_kernel_bytes(sv[1]), 0); /* kept */
    /* a POLLOUT check (Paho's pending writes) does not send them */
    struct pollfd p = {sv[0], POLLOUT, 0};
    assert_int_equal(poll(&p, 1, 0), 1);
    assert_int_equal(s_kernel_bytes(sv[1]), 0);
    /* a large write sends what was kept first */
    char pub[100];
    memset(pub, 'p', sizeof pub);
    struct iovec v = {pub, sizeof pub};
    assert_int_equal(writev(sv[0], &v, 1), sizeof pub);
    assert_int_equal(read(sv[1], got, sizeof got), 12 + sizeof pub);
    for (int i = 1; i <= 3; i++)
        assert_int_equal(got[(i - 1) * 4 + 3], i);
    assert_memory_equal(got + 12, pub, sizeof pub);
    /* kept again; a poll for reads sends them */
    struct iovec one = {"\x40\x02\x00\x07", 4};
    assert_int_equal(writev(sv[0], &one, 1), 4);
    assert_int_equal(s_kernel_bytes(sv[1]), 0);
    assert_false(s_readable(sv[0]));
    assert_int_equal(read(sv[1], got, sizeof got), 4);
    assert_int_equal(got[3], 7);
    /* kept, with an empty part as Paho writes a DISCONNECT ({NULL, 0}),
     * then closed: sent before the close */
    struct iovec parts[3] = {{"\xe0", 1}, {NULL, 0}, {"\x00", 1}};
    assert_int_equal(writev(sv[0], parts, 3), 2);
    assert_int_equal(s_kernel_bytes(sv[1]), 0);
    assert_int_equal(read(sv[1], got, sizeof got), -1); /* nothing yet */
    assert_int_equal(writev(sv[0], &one, 1), 4);
    close(sv[0]);
    assert_int_equal(read(sv[1], got, sizeof got), 6);
    assert_memory_equal(got, "\xe0\x00\x40\x02\x00\x07", 6);
    assert_int_equal(read(sv[1], got, sizeof got), 0);
    close(sv[1]);
    gw_paho_receiver = false;
}

/* Paho's "is it writable?" before each packet: for a socket it has read
 * with recv() the answer comes without the kernel; any other socket (still
 * connecting, or TLS: never read with recv) gets the kernel's. */
static void test_writable_without_asking(void **state)
{
    (void)state;
    int sv[2];
    s_pair(sv);
    /* fill sv[0]'s way out: the kernel says not writable */
    char junk[4096];
    memset(junk, 0, sizeof junk);
    while (write(sv[0], junk, sizeof junk) > 0)
        ;
    struct pollfd w = {sv[0], POLLOUT, 0};
    assert_int_equal(poll(&w, 1, 0), 0); /* never read with recv(): the kernel */
    /* read once with recv(): Paho's connected plain socket */
    assert_int_equal(write(sv[1], "x", 1), 1);
    char c;
    assert_int_equal(recv(sv[0], &c, 1, 0), 1);
    w.revents = 0;
    assert_int_equal(poll(&w, 1, 0), 1);
    assert_int_equal(w.revents, POLLOUT);
    /* with a timeout, or asking for more than POLLOUT: the kernel */
    w.revents = 0;
    assert_int_equal(poll(&w, 1, 10), 0);
    struct pollfd both = {sv[0], POLLOUT | POLLIN, 0};
    assert_int_equal(poll(&both, 1, 0), 0);
    /* closed: forgotten; the next socket of that number is asked about */
    int fd = sv[0];
    close(sv[0]);
    close(sv[1]);
    s_pair(sv);
    assert_int_equal(sv[0], fd);
    while (write(sv[0], junk, sizeof junk) > 0)
        ;
    w = (struct pollfd){sv[0], POLLOUT, 0};
    assert_int_equal(poll(&w, 1, 0), 0);
    close(sv[0]);
    close(sv[1]);
}

static void *s_write_later(void *arg)
{
    usleep(5000);
    assert_int_equal(write(*(int *)arg, "z", 1), 1);
    return NULL;
}

static void test_linger_on_the_receive_thread_only(void **state)
{
    (void)state;
    int sv[2];
    s_pair(sv);
    __atomic_store_n(&gw_receive_idle, s_idle, __ATOMIC_RELEASE);
    gw_receive_linger_us = 30000;
    struct pollfd p = {sv[0], POLLIN, 0};
    /* not the receive thread: a plain poll */
    int64_t t0 = mht_now_ms();
    assert_int_equal(poll(&p, 1, 10), 0);
    assert_int_equal(s_idle_calls, 0);
    assert_true(mht_now_ms() - t0 < 25);
    gw_paho_receiver = true;
    /* something to read: no wait, no hook */
    assert_int_equal(write(sv[1], "x", 1), 1);
    assert_int_equal(poll(&p, 1, 1000), 1);
    assert_int_equal(s_idle_calls, 0);
    char c;
    assert_int_equal(recv(sv[0], &c, 1, 0), 1);
    assert_int_equal(poll(&p, 1, 0), 0); /* a zero timeout never lingers */
    assert_int_equal(s_idle_calls, 0);
    /* nothing: the hook, then the linger — a byte written 5 ms in is read
     * after it, not at once */
    pthread_t th;
    pthread_create(&th, NULL, s_write_later, &sv[1]);
    t0 = mht_now_ms();
    assert_int_equal(poll(&p, 1, 1000), 1);
    int64_t took = mht_now_ms() - t0;
    pthread_join(th, NULL);
    assert_int_equal(s_idle_calls, 1);
    assert_true(took >= 29);
    assert_int_equal(recv(sv[0], &c, 1, 0), 1);
    assert_int_equal(c, 'z');
    /* nothing at all: the whole timeout, the linger included */
    t0 = mht_now_ms();
    assert_int_equal(poll(&p, 1, 50), 0);
    took = mht_now_ms() - t0;
    assert_true(took >= 49 && took < 500);
    assert_int_equal(s_idle_calls, 2);
    gw_paho_receiver = false;
    gw_receive_linger_us = 0;
    __atomic_store_n(&gw_receive_idle, NULL, __ATOMIC_RELEASE);
    close(sv[0]);
    close(sv[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reads_from_the_buffer),
        cmocka_unit_test(test_close_forgets),
        cmocka_unit_test(test_writes_kept_for_the_burst),
        cmocka_unit_test(test_writable_without_asking),
        cmocka_unit_test(test_linger_on_the_receive_thread_only),
    };
    return MHT_RUN(tests);
}
