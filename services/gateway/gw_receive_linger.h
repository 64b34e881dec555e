/* gw_receive_linger — coalescing the wake-ups of Paho's receive thread.
 *
 * At 10,000 messages a second from one broker connection, Paho's receive
 * thread slept in poll() and woke for nearly every PUBLISH: a context
 * switch in and out, and the eventfd write that woke the actor, per
 * message — a third of the gateway's CPU in the scheduler (the profile is
 * in docs/benchmarks.md). The gateway links Paho's static archive with
 * poll() wrapped (gw_paho_io.c): on the thread that delivers messages,
 * when no socket is ready, it first sleeps up to `gw_receive_linger_us`
 * and then polls, so that what arrived meanwhile is read in one go — the
 * interrupt moderation of a network card, for one thread. While messages
 * keep arriving the sockets are always ready and nothing sleeps; a lone
 * message waits at most the linger. 0 turns it off. */
#pragma once
#include <stdbool.h>

/* Microseconds; set before Paho starts (gw_service.c), read by the wrapper. */
extern int gw_receive_linger_us;
/* True on the thread Paho calls gw_on_message on: Paho's receive thread. */
extern _Thread_local bool gw_paho_receiver;
/* Called on that thread just before it sleeps: the gateway wakes its actor
 * for what the burst put in the inbox (gw_inbox_signal). */
extern void (*gw_receive_idle)(void *arg);
extern void *gw_receive_idle_arg;
