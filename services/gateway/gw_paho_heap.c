/* Paho's heap tracker, replaced by the system allocator — in the gateway
 * only, which links Debian's static libpaho-mqtt3as.a.
 *
 * Debian builds Paho without HIGH_PERFORMANCE, so every allocation Paho
 * makes goes through Heap.c's mymalloc/myfree: a global mutex, a copy of
 * the caller's file name, and an insert into (or a search and removal from)
 * a balanced tree of every live block, so that Paho can print what leaked.
 * At 20,000 messages a second the profile put 6 % of the gateway's CPU in
 * Heap.c's own code, besides the mutex and the string copies it calls
 * (docs/benchmarks.md has the profile and the runs before and after).
 * Paho's own HIGH_PERFORMANCE build maps these calls straight to malloc and
 * free, which is what this does: defining the symbols of Heap.c.o keeps the
 * linker from taking it from the archive. The signatures are Paho 1.3's
 * (Heap.h). Should a later Paho need a Heap.c symbol missing here, the
 * linker takes Heap.c.o after all and fails on the duplicate definitions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Heap.h's heap_info */
typedef struct {
    size_t current_size;
    size_t max_size;
} heap_info;

void *mymalloc(char *file, int line, size_t size);
void *myrealloc(char *file, int line, void *p, size_t size);
void myfree(char *file, int line, void *p);
int Heap_initialize(void);
void Heap_terminate(void);
heap_info *Heap_get_info(void);
int HeapDump(FILE *file);
int HeapDumpString(FILE *file, char *str);
void *Heap_findItem(void *p);
void Heap_unlink(char *file, int line, void *p);

void *mymalloc(char *file, int line, size_t size)
{
    (void)file;
    (void)line;
    return malloc(size);
}

void *myrealloc(char *file, int line, void *p, size_t size)
{
    (void)file;
    (void)line;
    return realloc(p, size);
}

void myfree(char *file, int line, void *p)
{
    (void)file;
    (void)line;
    free(p);
}

int Heap_initialize(void)
{
    return 0;
}

void Heap_terminate(void) {}

heap_info *Heap_get_info(void)
{
    static heap_info none;
    return &none;
}

int HeapDump(FILE *file)
{
    (void)file;
    return 0;
}

int HeapDumpString(FILE *file, char *str)
{
    (void)file;
    (void)str;
    return 0;
}

/* Paho asks whether a block is one it allocated before freeing some: with
 * no tracking, every block is. */
void *Heap_findItem(void *p)
{
    return p;
}

/* Paho hands a block to the application (a message it passes up) and stops
 * tracking it: nothing to do. */
void Heap_unlink(char *file, int line, void *p)
{
    (void)file;
    (void)line;
    (void)p;
}
