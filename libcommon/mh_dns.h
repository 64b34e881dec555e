/* mh_dns — host names looked up off the caller's thread.
 *
 * getaddrinfo blocks for as long as the name server takes: five seconds a
 * try when a query is dropped, and glibc tries each server and search
 * domain in turn. aardvark-dns (podman's) drops queries while compose is
 * still creating containers, which held twin's loop — and with it the
 * operator API — for 10 to 25 s when it looked up "gateway". So every
 * lookup of the platform goes through here: each runs on a thread of its
 * own, the caller waits for it no longer than it says, and gets the name's
 * last answer otherwise. One lookup at a time per name; answers are kept
 * for the process's life (a handful of service names). */
#pragma once
#include <arpa/inet.h>
#include <stddef.h>

/* The most addresses a name's answer keeps. */
#define MH_DNS_MAX_ADDRS 64

typedef struct {
    char ip[INET_ADDRSTRLEN];
} mh_dns_addr_t;

/* Looks `host` up again (unless a lookup of it is under way already, or
 * began less than a second ago) and waits up to wait_ms for the answer.
 * Copies up to `max` IPv4 addresses of the newest answer into `out` and
 * returns how many: the new answer if it came in time, the one before
 * otherwise. -EHOSTUNREACH when the newest answer is that the name does
 * not resolve; -EAGAIN when there has been no answer yet. */
int mh_dns_lookup(const char *host, int wait_ms, mh_dns_addr_t *out, size_t max);
