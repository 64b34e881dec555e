#include "mh_pbarena.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* A list of chunks, newest first, each filled from the front. (glibc's
 * obstack did this until clang's UBSan flagged its alignment macro, which
 * offsets a null pointer, in the fuzz build.) */
#define S_CHUNK (64 * 1024)
#define S_ALIGN (sizeof(max_align_t))

typedef struct s_chunk {
    struct s_chunk *next;
    size_t size, used;
    max_align_t data[];
} s_chunk_t;

struct mh_pbarena_t {
    s_chunk_t *head;
    ProtobufCAllocator pb;
};

static void *s_alloc(void *data, size_t size)
{
    mh_pbarena_t *self = data;
    size = (size + S_ALIGN - 1) / S_ALIGN * S_ALIGN;
    s_chunk_t *c = self->head;
    if (!c || c->size - c->used < size) {
        size_t room = size > S_CHUNK ? size : S_CHUNK;
        if (!(c = malloc(sizeof *c + room)))
            return NULL;
        *c = (s_chunk_t){self->head, room, 0};
        self->head = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += size;
    return p;
}

static void s_free(void *data, void *ptr)
{
    (void)data;
    (void)ptr;
}

mh_pbarena_t *mh_pbarena_new(void)
{
    mh_pbarena_t *self = calloc(1, sizeof *self);
    if (self)
        self->pb = (ProtobufCAllocator){s_alloc, s_free, self};
    return self;
}

/* Frees every chunk after `keep` (all when NULL). */
static void s_free_after(mh_pbarena_t *self, s_chunk_t *keep)
{
    s_chunk_t *c = keep ? keep->next : self->head;
    while (c) {
        s_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    if (keep)
        keep->next = NULL;
    else
        self->head = NULL;
}

void mh_pbarena_destroy(mh_pbarena_t **self_p)
{
    mh_pbarena_t *self = *self_p;
    if (!self)
        return;
    s_free_after(self, NULL);
    free(self);
    *self_p = NULL;
}

ProtobufCAllocator *mh_pbarena_allocator(mh_pbarena_t *self)
{
    return &self->pb;
}

void mh_pbarena_reset(mh_pbarena_t *self)
{
    /* the newest chunk stays for the next group */
    if (self->head) {
        s_free_after(self, self->head);
        self->head->used = 0;
    }
}
