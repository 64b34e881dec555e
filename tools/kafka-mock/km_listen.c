/* kafka-mock --listen: the mock broker on every interface at a known port,
 * advertising an address other hosts reach (a container's).
 *
 * librdkafka's mock brokers listen on 127.0.0.1 at a port of their own
 * choosing and advertise exactly that in their metadata, so nothing outside
 * the process's network namespace can produce to them — and a compose
 * stack's ingest runs in another container. librdkafka has no setting for
 * it, so this executable interposes bind() and getsockname(): the mock's
 * listener (the first loopback bind to port 0 once km_listen_set was
 * called) binds 0.0.0.0:PORT instead, and reads back the advertised
 * address, which is what the mock copies into its metadata. Every other
 * socket passes through untouched. */
#include "km_listen.h"

#include <dlfcn.h>
#include <string.h>

static uint16_t s_port;
static struct in_addr s_advertise;
static int s_listen_fd = -1;

void km_listen_set(uint16_t port, struct in_addr advertise)
{
    s_port = port;
    s_advertise = advertise;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    int (*real)(int, const struct sockaddr *, socklen_t) =
        (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    struct sockaddr_in sin;
    if (s_port && s_listen_fd < 0 && addr && addr->sa_family == AF_INET && len >= sizeof sin) {
        memcpy(&sin, addr, sizeof sin);
        if (sin.sin_addr.s_addr == htonl(INADDR_LOOPBACK) && sin.sin_port == 0) {
            sin.sin_addr.s_addr = htonl(INADDR_ANY);
            sin.sin_port = htons(s_port);
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            int rc = real(fd, (const struct sockaddr *)&sin, sizeof sin);
            if (rc == 0)
                s_listen_fd = fd;
            return rc;
        }
    }
    return real(fd, addr, len);
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
    int (*real)(int, struct sockaddr *, socklen_t *) =
        (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "getsockname");
    int rc = real(fd, addr, len);
    if (rc == 0 && fd == s_listen_fd && s_listen_fd >= 0 && addr->sa_family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, addr, sizeof sin);
        sin.sin_addr = s_advertise;
        memcpy(addr, &sin, sizeof sin);
    }
    return rc;
}
