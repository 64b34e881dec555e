#include "mh_pbarena.h"

#include <obstack.h>
#include <stdlib.h>

#define obstack_chunk_alloc malloc
#define obstack_chunk_free  free

struct mh_pbarena_t {
    struct obstack ob;
    void *base; /* the first object: everything after it goes on reset */
    ProtobufCAllocator pb;
};

static void *s_alloc(void *data, size_t size)
{
    return obstack_alloc(&((mh_pbarena_t *)data)->ob, size);
}

static void s_free(void *data, void *ptr)
{
    (void)data;
    (void)ptr;
}

mh_pbarena_t *mh_pbarena_new(void)
{
    mh_pbarena_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    /* 64 KiB chunks: a group of batches takes a few */
    if (!obstack_begin(&self->ob, 65536 - 64)) {
        free(self);
        return NULL;
    }
    self->base = obstack_alloc(&self->ob, 0);
    self->pb = (ProtobufCAllocator){s_alloc, s_free, self};
    return self;
}

void mh_pbarena_destroy(mh_pbarena_t **self_p)
{
    mh_pbarena_t *self = *self_p;
    if (!self)
        return;
    obstack_free(&self->ob, NULL);
    free(self);
    *self_p = NULL;
}

ProtobufCAllocator *mh_pbarena_allocator(mh_pbarena_t *self)
{
    return &self->pb;
}

void mh_pbarena_reset(mh_pbarena_t *self)
{
    obstack_free(&self->ob, self->base);
    self->base = obstack_alloc(&self->ob, 0);
}
