/* Paho's poll(), with the receive linger (gw_receive_linger.h) — in the
 * gateway daemon only, which links Debian's static libpaho-mqtt3as.a with
 * -Wl,--wrap=poll: Socket.c.o is Paho's one caller of poll(), and the
 * gateway's own code calls none (its sockets are ZeroMQ's, polled by
 * libzmq). Other threads, and the receive thread before its first
 * message, poll as before. */
#include <poll.h>
#include <time.h>

#include "gw_receive_linger.h"

int __real_poll(struct pollfd *fds, nfds_t nfds, int timeout);
int __wrap_poll(struct pollfd *fds, nfds_t nfds, int timeout);

int __wrap_poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    int linger = __atomic_load_n(&gw_receive_linger_us, __ATOMIC_RELAXED);
    if (linger <= 0 || timeout == 0 || !gw_paho_receiver)
        return __real_poll(fds, nfds, timeout);
    int ready = __real_poll(fds, nfds, 0);
    if (ready != 0)
        return ready; /* something to read (or an error): no wait */
    void (*idle)(void *) = __atomic_load_n(&gw_receive_idle, __ATOMIC_ACQUIRE);
    if (idle)
        idle(gw_receive_idle_arg);
    struct timespec t = {linger / 1000000, (long)(linger % 1000000) * 1000};
    nanosleep(&t, NULL);
    int left = timeout < 0 ? -1 : timeout - linger / 1000;
    return __real_poll(fds, nfds, left < 0 && timeout >= 0 ? 0 : left);
}
