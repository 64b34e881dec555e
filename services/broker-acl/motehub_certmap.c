#include "motehub_certmap.h"

#include <libpq-fe.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_BUCKETS 65536

typedef struct s_entry {
    struct s_entry *next_cn, *next_thing;
    char *cn, *thing; /* thing NULL: unbound when last asked */
    time_t retry_at;
} s_entry_t;

static struct {
    char *conninfo;
    PGconn *pg;
    s_entry_t *by_cn[S_BUCKETS], *by_thing[S_BUCKETS];
    time_t last_fail_log;
} s_map;

static uint32_t s_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h % S_BUCKETS;
}

int certmap_init(const char *conninfo)
{
    s_map.conninfo = conninfo && *conninfo ? strdup(conninfo) : NULL;
    return 0;
}

static void s_fail(const char *what)
{
    time_t now = time(NULL);
    if (now == s_map.last_fail_log)
        return;
    s_map.last_fail_log = now;
    mosquitto_log_printf(MOSQ_LOG_WARNING, "motehub_acl: provisioned certificates: %s%s%s", what,
                         s_map.pg ? ": " : "", s_map.pg ? PQerrorMessage(s_map.pg) : "");
}

/* Asks the database; NULL when unbound or unreachable. */
static char *s_query(const char *cn)
{
    if (!s_map.conninfo) {
        s_fail("no plugin_opt_pg_conninfo");
        return NULL;
    }
    if (!s_map.pg || PQstatus(s_map.pg) != CONNECTION_OK) {
        PQfinish(s_map.pg);
        s_map.pg = PQconnectdb(s_map.conninfo);
        if (PQstatus(s_map.pg) != CONNECTION_OK) {
            s_fail("cannot reach PostgreSQL");
            PQfinish(s_map.pg);
            s_map.pg = NULL;
            return NULL;
        }
    }
    const char *p[] = {cn};
    PGresult *res = PQexecParams(s_map.pg,
                                 "SELECT device_id FROM twin.certificates"
                                 " WHERE cn = $1 AND device_id IS NOT NULL",
                                 1, NULL, p, NULL, NULL, 0);
    char *thing = NULL;
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        s_fail("the lookup failed");
    else if (PQntuples(res) == 1)
        thing = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return thing;
}

/* An unbound certificate is asked about again after this many seconds at
 * the soonest, however often its holder publishes. */
#define S_RETRY_S 2

const char *certmap_thing(const char *cn)
{
    uint32_t hc = s_hash(cn);
    s_entry_t *e = s_map.by_cn[hc];
    while (e && strcmp(e->cn, cn) != 0)
        e = e->next_cn;
    if (e && (e->thing || time(NULL) < e->retry_at))
        return e->thing;
    if (!e) {
        e = calloc(1, sizeof *e);
        if (!e || !(e->cn = strdup(cn))) {
            free(e);
            return NULL;
        }
        e->next_cn = s_map.by_cn[hc];
        s_map.by_cn[hc] = e;
    }
    e->thing = s_query(cn);
    e->retry_at = time(NULL) + S_RETRY_S;
    if (e->thing) {
        uint32_t ht = s_hash(e->thing);
        e->next_thing = s_map.by_thing[ht];
        s_map.by_thing[ht] = e;
    }
    return e->thing;
}

const char *certmap_client(const char *thing)
{
    for (s_entry_t *e = s_map.by_thing[s_hash(thing)]; e; e = e->next_thing)
        if (e->thing && strcmp(e->thing, thing) == 0)
            return e->cn;
    return NULL;
}

void certmap_cleanup(void)
{
    for (int i = 0; i < S_BUCKETS; i++)
        for (s_entry_t *e = s_map.by_cn[i], *next; e; e = next) {
            next = e->next_cn;
            free(e->cn);
            free(e->thing);
            free(e);
        }
    memset(s_map.by_cn, 0, sizeof s_map.by_cn);
    memset(s_map.by_thing, 0, sizeof s_map.by_thing);
    PQfinish(s_map.pg);
    s_map.pg = NULL;
    free(s_map.conninfo);
    s_map.conninfo = NULL;
}
