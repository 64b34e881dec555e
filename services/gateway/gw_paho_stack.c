/* Paho's function-call stack trace, left out — in the gateway only, which
 * links Debian's static libpaho-mqtt3as.a (gw_paho_heap.c does the same for
 * Paho's heap tracker).
 *
 * Debian builds Paho without HIGH_PERFORMANCE, so FUNC_ENTRY and FUNC_EXIT
 * at the top and bottom of nearly every Paho function call
 * StackTrace_entry/StackTrace_exit: a global mutex, a search of Paho's
 * thread table for the caller, a copy of the function's name onto a
 * per-thread stack and, on exit, a compare of it. Paho keeps that stack to
 * print where each thread was if it logs a fatal error, and writes entry and
 * exit lines when its trace level is set to minimum. At 10,000 messages a
 * second the profile put 10 % of the gateway's CPU in it (docs/benchmarks.md,
 * "Paho's stack trace, and telemetry that does not wake the actor").
 *
 * Paho's own HIGH_PERFORMANCE build defines NOSTACKTRACE, which compiles
 * those calls away; this is the same with Debian's binary: defining every
 * symbol of StackTrace.c.o keeps the linker from taking it from the
 * archive. The gateway sets no Paho trace callback, so nothing it logs
 * changes. The signatures are Paho 1.3's (StackTrace.h; LOG_LEVELS is an
 * enum, passed as an int). Should a later Paho need a StackTrace.c symbol
 * missing here, the linker takes StackTrace.c.o after all and fails on the
 * duplicate definitions. */
#include <stdio.h>

void StackTrace_entry(const char *name, int line, int trace);
void StackTrace_exit(const char *name, int line, void *return_value, int trace);
void StackTrace_printStack(FILE *dest);
char *StackTrace_get(unsigned long threadid, char *buf, int bufsize);
int setStack(int create);

void StackTrace_entry(const char *name, int line, int trace)
{
    (void)name;
    (void)line;
    (void)trace;
}

void StackTrace_exit(const char *name, int line, void *return_value, int trace)
{
    (void)name;
    (void)line;
    (void)return_value;
    (void)trace;
}

/* Paho calls neither of these two (nm on Debian's archive); they are here so
 * that every symbol of StackTrace.c.o is. */
void StackTrace_printStack(FILE *dest)
{
    (void)dest;
}

char *StackTrace_get(unsigned long threadid, char *buf, int bufsize)
{
    (void)threadid;
    if (buf != NULL && bufsize > 0)
        buf[0] = '\0';
    return buf;
}

int setStack(int create)
{
    (void)create;
    return 0;
}
