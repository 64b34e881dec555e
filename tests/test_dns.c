/* Name lookups that do not hold their caller (mh_dns.h, mh_resolver.h,
 * mh_pg's host address), against a name server that stops answering — as
 * aardvark-dns did while compose created containers and held twin's loop,
 * and the operator API with it, for 10 to 25 s.
 *
 * The test runs in mount and network namespaces of its own (it needs
 * root, as the container tests do): its /etc/resolv.conf names a server on
 * its own loopback, served by a thread here that drops every query except
 * those for "*-gone" names, which it answers "no such name"; its
 * /etc/hosts is a file the test rewrites. No query leaves the namespace. */
#include "mh_test.h"

#include "mh_dns.h"
#include "mh_resolver.h"
#include "mh_time.h"

#include <arpa/inet.h>
#include <czmq.h>
#include <net/if.h>
#include <netdb.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>

static char s_hosts[256];
static int s_dns_fd = -1;

static void s_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* The name server: drops queries, answers NXDOMAIN for names with "-gone". */
static void *s_server(void *arg)
{
    (void)arg;
    unsigned char buf[512];
    for (;;) {
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(s_dns_fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        if (n < 12)
            continue;
        if (!memmem(buf + 12, (size_t)n - 12, "-gone", 5))
            continue;
        buf[2] = 0x81; /* a response, recursion desired */
        buf[3] = 0x83; /* recursion available, NXDOMAIN */
        sendto(s_dns_fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
    }
    return NULL;
}

static int s_setup(void **state)
{
    (void)state;
    if (unshare(CLONE_NEWNS | CLONE_NEWNET) != 0) {
        fprintf(stderr, "# unshare: %s (this test needs root)\n", strerror(errno));
        return -1;
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        return -1;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) != 0)
        return -1;
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) != 0)
        return -1;
    close(fd);
    char resolv[256];
    snprintf(resolv, sizeof resolv, "%s/resolv.conf", mht_artifacts());
    snprintf(s_hosts, sizeof s_hosts, "%s/hosts", mht_artifacts());
    /* one server, one try of 2 s: a dropped query holds getaddrinfo 2 s */
    s_write(resolv, "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n");
    s_write(s_hosts, "127.0.0.1 localhost\n127.0.0.1 svc-hosts\n127.0.0.1 svc-moved\n");
    if (mount(resolv, "/etc/resolv.conf", NULL, MS_BIND, NULL) != 0 ||
        mount(s_hosts, "/etc/hosts", NULL, MS_BIND, NULL) != 0)
        return -1;
    s_dns_fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(53)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s_dns_fd, (struct sockaddr *)&a, sizeof a) != 0)
        return -1;
    pthread_t t;
    pthread_create(&t, NULL, s_server, NULL);
    pthread_detach(t);
    return 0;
}

/* The server really holds a plain lookup: what the platform must not wait on. */
static void test_server_stalls(void **state)
{
    (void)state;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int64_t t0 = mh_mono_ms();
    int rc = getaddrinfo("svc-stalled-a", NULL, &hints, &res);
    int64_t took = mh_mono_ms() - t0;
    printf("# getaddrinfo of a name the server drops: %s after %" PRId64 " ms\n", gai_strerror(rc),
           took);
    assert_int_not_equal(rc, 0);
    assert_true(took >= 1500);
}

static void test_lookups(void **state)
{
    (void)state;
    mh_dns_addr_t a[4];
    /* from /etc/hosts, at once */
    assert_int_equal(mh_dns_lookup("svc-hosts", 1000, a, 4), 1);
    assert_string_equal(a[0].ip, "127.0.0.1");
    /* a name the server says does not exist */
    int64_t t0 = mh_mono_ms();
    assert_int_equal(mh_dns_lookup("svc-gone", 1000, a, 4), -EHOSTUNREACH);
    assert_true(mh_mono_ms() - t0 < 1000);
    /* a dropped query: the caller waits what it said, not the 2 s */
    t0 = mh_mono_ms();
    assert_int_equal(mh_dns_lookup("svc-stalled-b", 200, a, 4), -EAGAIN);
    int64_t took = mh_mono_ms() - t0;
    printf("# mh_dns_lookup of a dropped name, 200 ms asked: -EAGAIN after %" PRId64 " ms\n", took);
    assert_true(took >= 190 && took < 700);
    /* asked again while that lookup is under way: no second one, same wait */
    t0 = mh_mono_ms();
    assert_int_equal(mh_dns_lookup("svc-stalled-b", 100, a, 4), -EAGAIN);
    assert_true(mh_mono_ms() - t0 < 600);
}

/* A name whose server stops answering keeps its last answer. */
static void test_keeps_last_answer(void **state)
{
    (void)state;
    mh_dns_addr_t a[4];
    assert_int_equal(mh_dns_lookup("svc-moved", 1000, a, 4), 1);
    /* gone from the hosts file: the next lookup goes to the stalled server */
    s_write(s_hosts, "127.0.0.1 localhost\n127.0.0.1 svc-hosts\n");
    mht_sleep_ms(1100);
    int64_t t0 = mh_mono_ms();
    assert_int_equal(mh_dns_lookup("svc-moved", 200, a, 4), 1);
    assert_true(mh_mono_ms() - t0 < 700);
    assert_string_equal(a[0].ip, "127.0.0.1");
    /* and after that lookup failed (timed out, not "no such name") too */
    mht_sleep_ms(2500);
    assert_int_equal(mh_dns_lookup("svc-moved", 0, a, 4), 1);
}

/* A service's refresh connects what answers and does not wait on the rest. */
static void test_resolver_refresh(void **state)
{
    (void)state;
    zsock_t *dealer = zsock_new(ZMQ_DEALER);
    mh_resolver_t *r = mh_resolver_new(
        dealer, "tcp://svc-stalled-c:5599,tcp://svc-hosts:5598,tcp://svc-gone:5597");
    assert_non_null(r);
    for (int i = 0; i < 3; i++) {
        int64_t t0 = mh_mono_ms();
        assert_int_equal(mh_resolver_refresh(r), 1);
        int64_t took = mh_mono_ms() - t0;
        printf("# refresh %d with a stalled name: %" PRId64 " ms\n", i + 1, took);
        assert_true(took < 700);
        const char *eps[4];
        assert_int_equal(mh_resolver_endpoints(r, eps, 4), 1);
        assert_string_equal(eps[0], "tcp://127.0.0.1:5598");
    }
    mh_resolver_destroy(&r);
    zsock_destroy(&dealer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_stalls),
        cmocka_unit_test(test_lookups),
        cmocka_unit_test(test_keeps_last_answer),
        cmocka_unit_test(test_resolver_refresh),
    };
    cmocka_set_message_output(CM_OUTPUT_TAP);
    return cmocka_run_group_tests(tests, s_setup, NULL);
}
