/* mh_pbarena — protobuf-c's allocations for many messages that are freed
 * together (a group of telemetry batches): taken from 64 KiB chunks in
 * turn (bump allocation; freeing one message is a no-op) and all given
 * back at once by mh_pbarena_reset. A batch of 60 device messages is ~1,300
 * allocations to unpack and as many to free with malloc. Not thread-safe:
 * one per actor. */
#pragma once
#include <protobuf-c/protobuf-c.h>

typedef struct mh_pbarena_t mh_pbarena_t;

/* NULL when out of memory. */
mh_pbarena_t *mh_pbarena_new(void);
void mh_pbarena_destroy(mh_pbarena_t **self_p);
/* The allocator to pass to protobuf-c's unpack (and free_unpacked, which
 * then frees nothing). */
ProtobufCAllocator *mh_pbarena_allocator(mh_pbarena_t *self);
/* Gives back everything allocated since the last reset: every message
 * unpacked from it is gone. */
void mh_pbarena_reset(mh_pbarena_t *self);
