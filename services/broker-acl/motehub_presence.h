/* motehub_presence — which devices are connected to this broker, said
 * every interval on motehub/present so twin can correct a device
 * whose last will (or "offline" status) was lost on the way: a device the
 * broker no longer has goes offline after a few intervals (docs/twin.md,
 * "Connectivity"). A device is "present" from its first publish or
 * subscription (the ACL check) until it disconnects. */
#pragma once
#include <stddef.h>
#include <time.h>

/* interval_s: how often the list is published (0: never). */
int presence_init(int interval_s);
void presence_cleanup(void);
/* A device `id` (its certificate's CN) used the broker. */
void presence_seen(const char *id);
/* The client with username `id` disconnected. */
void presence_gone(const char *id);
/* Publishes the list when the interval has passed: chunks of at most 500
 * ids, {"ids":["a","b",…]}, QoS 1, not retained. */
void presence_tick(time_t now);
/* How many devices are present (tests, logs). */
size_t presence_count(void);
