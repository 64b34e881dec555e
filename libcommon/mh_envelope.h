/* mh_envelope — every message between services is one protobuf Envelope
 * frame (schema version, type, trace id, timestamp, body), preceded by the
 * routing id on ROUTER sockets and by the type as topic frame on PUB. */
#pragma once
#include "envelope.pb-c.h"
#include <czmq.h>

#define MH_SCHEMA_VERSION 1

/* Fills out[33] with a fresh 128-bit trace id in hex. */
void mh_trace_id_new(char out[33]);

/* Packs `body` into an envelope frame. `trace_id` may be NULL (a new one is
 * made). Returns NULL when out of memory. */
zframe_t *mh_envelope_pack(const char *type, const char *trace_id, const ProtobufCMessage *body);

/* Unpacks an envelope frame. Returns NULL when the frame is not an envelope
 * or its schema version is newer than ours (the caller counts and drops it). */
Mh__Envelope *mh_envelope_unpack(const zframe_t *frame);
void mh_envelope_free(Mh__Envelope **env_p);

/* Convenience: sends [routing_id?][envelope] on `sock`. `routing_id` is
 * borrowed and may be NULL. Non-blocking when `dontwait`; returns 0 or -1
 * with errno (EAGAIN when the peer queue is full). */
int mh_envelope_send(zsock_t *sock, const zframe_t *routing_id, const char *type,
                     const char *trace_id, const ProtobufCMessage *body, bool dontwait);

/* Binds a service's event PUB socket on `endpoint` (through mh_curve_bind)
 * with a send queue of `sndhwm` messages. An empty endpoint means no
 * events: *pub_out NULL and 0. -1, logged, when the bind fails. */
int mh_events_bind(zsock_t **pub_out, const char *endpoint, int sndhwm);

/* Publishes an event: [type][envelope] on a PUB socket. Never blocks. */
int mh_event_publish(zsock_t *pub, const char *type, const ProtobufCMessage *body);
/* Receives one event from a SUB socket: its envelope (env->type is the
 * event's type; free with mh_envelope_free), NULL when the message is not
 * an event. */
Mh__Envelope *mh_event_recv(zsock_t *sub);
