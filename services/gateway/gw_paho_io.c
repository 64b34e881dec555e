/* Paho's socket calls, wrapped — in the gateway daemon only, which links
 * Debian's static libpaho-mqtt3as.a with -Wl,--wrap=poll,--wrap=recv,
 * --wrap=writev,--wrap=close (meson.build). Socket.c.o is Paho's one caller
 * of poll(), recv() and writev(); the gateway's own code calls none of them
 * (its sockets are ZeroMQ's), and a close() of anything else only passes
 * through.
 *
 * - recv: Paho reads a PUBLISH in three calls or more (the first byte, each
 *   byte of the remaining length, then the rest), each a system call. A
 *   small read is served from a buffer per socket, filled by one recv() of
 *   up to S_RBUF bytes: one system call for every packet that arrived.
 *   TLS connections read through OpenSSL (read(), not recv()) and are not
 *   buffered.
 * - poll: a socket with buffered bytes is readable without asking the
 *   kernel (it would say "nothing" and Paho would wait for the next packet
 *   with a whole packet in hand). Before each packet Paho also asks, with
 *   a zero timeout, whether its sockets are writable (it takes work only
 *   from a socket that can take the answer); for sockets it reads with
 *   recv() — plain TCP, connected — the answer is yes without a system
 *   call: what it then writes is kept or waits for room (below).
 *   Otherwise, on Paho's receive thread, the receive linger
 *   (gw_receive_linger.h).
 * - writev: Paho writes a PUBACK (4 bytes) per PUBLISH it took, each a
 *   system call and a TCP segment. On the receive thread a small write is
 *   kept and sent with the others of the burst, in one write() before the
 *   thread polls again — and before any other write to that socket, from
 *   any thread, so that bytes leave in the order they were written. As with
 *   any write() that returned, a connection that fails before the bytes
 *   leave loses them: the broker delivers the unacknowledged messages
 *   again (MQTT's at-least-once).
 * - close: sends what is kept, then drops the socket's buffers, so that a
 *   new connection given the same descriptor starts empty. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "gw_receive_linger.h"

int __real_poll(struct pollfd *fds, nfds_t nfds, int timeout);
int __wrap_poll(struct pollfd *fds, nfds_t nfds, int timeout);
ssize_t __real_recv(int fd, void *buf, size_t len, int flags);
ssize_t __wrap_recv(int fd, void *buf, size_t len, int flags);
int __real_close(int fd);
int __wrap_close(int fd);
ssize_t __real_writev(int fd, const struct iovec *iov, int iovcnt);
ssize_t __wrap_writev(int fd, const struct iovec *iov, int iovcnt);

#define S_RBUF  32768 /* bytes read at once */
#define S_WBUF  4096  /* small writes kept for a burst, at most */
#define S_SMALL 64    /* a write this size or smaller is kept */
#define S_NSOCK 8     /* sockets with buffers; more pass straight through */

/* a socket's buffers: bytes read ahead, writes kept */
typedef struct {
    int fd1; /* the descriptor + 1; 0: free */
    size_t off, len;
    char data[S_RBUF];
    size_t wlen; /* kept writes */
    char wdata[S_WBUF];
} s_sock_t;

static s_sock_t s_socks[S_NSOCK];
static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static int s_nbuffered; /* sockets holding bytes: poll looks only then */
static int s_nkept;     /* sockets holding writes */

/* Under s_lock. */
static s_sock_t *s_find(int fd, bool make)
{
    s_sock_t *free_slot = NULL;
    for (int i = 0; i < S_NSOCK; i++) {
        if (s_socks[i].fd1 == fd + 1)
            return &s_socks[i];
        if (!s_socks[i].fd1 && !free_slot)
            free_slot = &s_socks[i];
    }
    if (make && free_slot) {
        free_slot->fd1 = fd + 1;
        free_slot->off = free_slot->len = free_slot->wlen = 0;
    }
    return make ? free_slot : NULL;
}

ssize_t __wrap_recv(int fd, void *buf, size_t len, int flags)
{
    if (len == 0 || flags != 0 || fd < 0)
        return __real_recv(fd, buf, len, flags);
    pthread_mutex_lock(&s_lock);
    s_sock_t *b = s_find(fd, true);
    if (b && b->off == b->len && len < S_RBUF / 2) {
        ssize_t r = __real_recv(fd, b->data, S_RBUF, 0);
        if (r <= 0) {
            int e = errno;
            pthread_mutex_unlock(&s_lock);
            errno = e;
            return r;
        }
        b->off = 0;
        b->len = (size_t)r;
        __atomic_add_fetch(&s_nbuffered, 1, __ATOMIC_RELAXED);
    }
    if (!b || b->off == b->len) { /* no slot, or a large read with nothing held */
        pthread_mutex_unlock(&s_lock);
        return __real_recv(fd, buf, len, 0);
    }
    size_t k = len < b->len - b->off ? len : b->len - b->off;
    memcpy(buf, b->data + b->off, k);
    b->off += k;
    if (b->off == b->len)
        __atomic_sub_fetch(&s_nbuffered, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&s_lock);
    return (ssize_t)k;
}

/* Under s_lock: sends the kept writes, waiting (briefly) for room in the
 * socket. A socket that fails drops them: the connection is gone. */
static void s_send_kept(s_sock_t *b)
{
    size_t done = 0;
    for (int tries = 0; done < b->wlen && tries < 50;) {
        ssize_t r = write(b->fd1 - 1, b->wdata + done, b->wlen - done);
        if (r > 0) {
            done += (size_t)r;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            struct pollfd p = {b->fd1 - 1, POLLOUT, 0};
            __real_poll(&p, 1, 100);
            tries++;
        } else {
            break;
        }
    }
    b->wlen = 0;
    __atomic_sub_fetch(&s_nkept, 1, __ATOMIC_RELAXED);
}

static void s_send_all_kept(void)
{
    if (!__atomic_load_n(&s_nkept, __ATOMIC_RELAXED))
        return;
    int e = errno;
    pthread_mutex_lock(&s_lock);
    for (int i = 0; i < S_NSOCK; i++)
        if (s_socks[i].fd1 && s_socks[i].wlen)
            s_send_kept(&s_socks[i]);
    pthread_mutex_unlock(&s_lock);
    errno = e;
}

ssize_t __wrap_writev(int fd, const struct iovec *iov, int iovcnt)
{
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    bool keep = gw_paho_receiver && total <= S_SMALL;
    pthread_mutex_lock(&s_lock);
    s_sock_t *b = s_find(fd, keep);
    if (b && keep) {
        if (b->wlen + total > S_WBUF)
            s_send_kept(b);
        if (!b->wlen)
            __atomic_add_fetch(&s_nkept, 1, __ATOMIC_RELAXED);
        for (int i = 0; i < iovcnt; i++) {
            if (!iov[i].iov_len)
                continue; /* Paho passes {NULL, 0} for an empty part */
            memcpy(b->wdata + b->wlen, iov[i].iov_base, iov[i].iov_len);
            b->wlen += iov[i].iov_len;
        }
        pthread_mutex_unlock(&s_lock);
        return (ssize_t)total;
    }
    if (b && b->wlen)
        s_send_kept(b); /* what was kept goes first */
    ssize_t r = __real_writev(fd, iov, iovcnt);
    int e = errno;
    pthread_mutex_unlock(&s_lock);
    errno = e;
    return r;
}

int __wrap_close(int fd)
{
    pthread_mutex_lock(&s_lock);
    s_sock_t *b = s_find(fd, false);
    if (b) {
        if (b->wlen)
            s_send_kept(b);
        if (b->off < b->len)
            __atomic_sub_fetch(&s_nbuffered, 1, __ATOMIC_RELAXED);
        b->fd1 = 0;
    }
    pthread_mutex_unlock(&s_lock);
    return __real_close(fd);
}

/* The sockets asked for POLLIN that hold buffered bytes, marked readable
 * (every other revents cleared); how many. */
static int s_buffered_ready(struct pollfd *fds, nfds_t nfds)
{
    if (!__atomic_load_n(&s_nbuffered, __ATOMIC_RELAXED))
        return 0;
    int ready = 0;
    pthread_mutex_lock(&s_lock);
    for (nfds_t i = 0; i < nfds; i++) {
        s_sock_t *b = (fds[i].events & POLLIN) ? s_find(fds[i].fd, false) : NULL;
        fds[i].revents = b && b->off < b->len ? POLLIN : 0;
        ready += fds[i].revents != 0;
    }
    pthread_mutex_unlock(&s_lock);
    return ready;
}

/* A zero-timeout poll for POLLOUT only, of sockets that all have a buffer
 * (they were read with recv(): connected, not TLS): all writable. A socket
 * still connecting or read through OpenSSL has none and goes to the
 * kernel. */
static bool s_writable_known(struct pollfd *fds, nfds_t nfds)
{
    if (!nfds)
        return false;
    for (nfds_t i = 0; i < nfds; i++)
        if (fds[i].events != POLLOUT)
            return false;
    bool known = true;
    pthread_mutex_lock(&s_lock);
    for (nfds_t i = 0; i < nfds && known; i++)
        known = s_find(fds[i].fd, false) != NULL;
    pthread_mutex_unlock(&s_lock);
    for (nfds_t i = 0; i < nfds && known; i++)
        fds[i].revents = POLLOUT;
    return known;
}

int __wrap_poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    if (timeout == 0 && s_writable_known(fds, nfds))
        return (int)nfds;
    int ready = s_buffered_ready(fds, nfds);
    if (ready)
        return ready;
    for (nfds_t i = 0; i < nfds; i++)
        if (fds[i].events & POLLIN) {
            /* about to wait for reads: the burst is read, its
             * acknowledgements go (not for Paho's check of its pending
             * writes, a POLLOUT poll between every two packets) */
            s_send_all_kept();
            break;
        }
    int linger = __atomic_load_n(&gw_receive_linger_us, __ATOMIC_RELAXED);
    if (linger <= 0 || timeout == 0 || !gw_paho_receiver)
        return __real_poll(fds, nfds, timeout);
    ready = __real_poll(fds, nfds, 0);
    if (ready != 0)
        return ready; /* something to read (or an error): no wait */
    void (*idle)(void *) = __atomic_load_n(&gw_receive_idle, __ATOMIC_ACQUIRE);
    if (idle)
        idle(gw_receive_idle_arg);
    struct timespec t = {linger / 1000000, (long)(linger % 1000000) * 1000};
    nanosleep(&t, NULL);
    int slept_ms = linger / 1000;
    return __real_poll(fds, nfds, timeout < 0 ? -1 : timeout > slept_ms ? timeout - slept_ms : 0);
}
