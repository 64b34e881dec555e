#include "mh_pg.h"
#include "mh_dns.h"
#include "mh_time.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mh_pg_t {
    PGconn *conn;
    char *url, *schema;
    char *session; /* run on every connection once migrated (NULL: none) */
    int64_t lock_key;
    bool migrated;
    bool any_result; /* mh_pg_ok: a statement returning rows succeeds too */
    char sqlstate[8];
    int64_t next_try, backoff; /* monotonic ms */
};

static void s_ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

mh_pg_t *mh_pg_new(const char *url, const char *schema_sql, int64_t lock_key)
{
    mh_pg_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->url = strdup(url);
    self->schema = strdup(schema_sql ? schema_sql : "");
    self->lock_key = lock_key;
    if (!self->url || !self->schema)
        mh_pg_destroy(&self);
    return self;
}

void mh_pg_destroy(mh_pg_t **self_p)
{
    mh_pg_t *self = *self_p;
    if (!self)
        return;
    if (self->conn)
        PQfinish(self->conn);
    free(self->url);
    free(self->schema);
    free(self->session);
    free(self);
    *self_p = NULL;
}

int mh_pg_set_session(mh_pg_t *self, const char *sql)
{
    char *copy = strdup(sql);
    if (!copy)
        return -ENOMEM;
    free(self->session);
    self->session = copy;
    return 0;
}

bool mh_pg_ready(mh_pg_t *self)
{
    return self->conn && PQstatus(self->conn) == CONNECTION_OK && self->migrated;
}

PGconn *mh_pg_conn(mh_pg_t *self)
{
    return self->conn;
}

static void s_trim(char *s)
{
    size_t l = strlen(s);
    while (l && (s[l - 1] == '\n' || s[l - 1] == ' '))
        s[--l] = 0;
}

PGresult *mh_pg_exec(mh_pg_t *self, ExecStatusType want, const char *sql, int nparams,
                     const char *const *params, char *err, size_t errlen)
{
    return mh_pg_exec_bin(self, want, sql, nparams, params, NULL, NULL, 0, err, errlen);
}

PGresult *mh_pg_exec_bin(mh_pg_t *self, ExecStatusType want, const char *sql, int nparams,
                         const char *const *params, const int *lengths, const int *formats,
                         int result_format, char *err, size_t errlen)
{
    self->sqlstate[0] = 0;
    if (!self->conn) {
        if (err)
            snprintf(err, errlen, "not connected to PostgreSQL");
        return NULL;
    }
    PGresult *res =
        PQexecParams(self->conn, sql, nparams, NULL, params, lengths, formats, result_format);
    /* mh_pg_ok's statements may return rows too */
    if (PQresultStatus(res) == want ||
        (want == PGRES_COMMAND_OK && PQresultStatus(res) == PGRES_TUPLES_OK && self->any_result))
        return res;
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    snprintf(self->sqlstate, sizeof self->sqlstate, "%s", st ? st : "");
    if (err) {
        const char *m = res ? PQresultErrorMessage(res) : "";
        snprintf(err, errlen, "%s", *m ? m : PQerrorMessage(self->conn));
        s_trim(err);
    }
    PQclear(res);
    if (PQstatus(self->conn) != CONNECTION_OK)
        self->migrated = false;
    return NULL;
}

bool mh_pg_ok(mh_pg_t *self, const char *sql, int nparams, const char *const *params, char *err,
              size_t errlen)
{
    /* Statements that return rows are fine too. */
    self->any_result = true;
    PGresult *res = mh_pg_exec(self, PGRES_COMMAND_OK, sql, nparams, params, err, errlen);
    self->any_result = false;
    if (!res)
        return false;
    PQclear(res);
    return true;
}

bool mh_pg_begin(mh_pg_t *self, char *err, size_t errlen)
{
    return mh_pg_ok(self, "BEGIN", 0, NULL, err, errlen);
}

bool mh_pg_commit(mh_pg_t *self, char *err, size_t errlen)
{
    bool ok = mh_pg_ok(self, "COMMIT", 0, NULL, err, errlen);
    if (!ok)
        mh_pg_rollback(self);
    return ok;
}

void mh_pg_rollback(mh_pg_t *self)
{
    if (self->conn && PQstatus(self->conn) == CONNECTION_OK &&
        PQtransactionStatus(self->conn) != PQTRANS_IDLE)
        PQclear(PQexec(self->conn, "ROLLBACK"));
}

bool mh_pg_lost(mh_pg_t *self)
{
    return !self->conn || PQstatus(self->conn) != CONNECTION_OK;
}

const char *mh_pg_sqlstate(mh_pg_t *self)
{
    return self->sqlstate;
}

bool mh_pg_retryable(mh_pg_t *self)
{
    return strcmp(self->sqlstate, "40P01") == 0 || strcmp(self->sqlstate, "40001") == 0;
}

bool mh_pg_busy(mh_pg_t *self)
{
    return strcmp(self->sqlstate, "55P03") == 0;
}

static int s_connect(mh_pg_t *self, char *err, size_t errlen);
static int s_migrate(mh_pg_t *self, char *err, size_t errlen);

int mh_pg_connect(mh_pg_t *self, char *err, size_t errlen)
{
    if (mh_pg_ready(self))
        return 0;
    int64_t now = mh_mono_ms();
    if (now < self->next_try)
        return -EAGAIN;
    if (s_connect(self, err, errlen) == 0) {
        self->backoff = 0;
        return 1;
    }
    self->backoff = self->backoff ? (self->backoff * 2 > 5000 ? 5000 : self->backoff * 2) : 250;
    self->next_try = now + self->backoff;
    return -EIO;
}

/* The address of the URL's host name, looked up through mh_dns (libpq's
 * own lookup would hold the caller for as long as DNS takes): false for an
 * address, a socket directory, a list of hosts or a name with no answer
 * (libpq looks it up itself then). */
static bool s_host_addr(const char *url, char addr[INET_ADDRSTRLEN])
{
    PQconninfoOption *opts = PQconninfoParse(url, NULL);
    const char *host = NULL;
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
    struct in6_addr a;
    mh_dns_addr_t found;
    bool ok = host && *host && *host != '/' && !strchr(host, ',') &&
              inet_pton(AF_INET, host, &a) != 1 && inet_pton(AF_INET6, host, &a) != 1 &&
              mh_dns_lookup(host, 250, &found, 1) == 1;
    if (ok)
        memcpy(addr, found.ip, INET_ADDRSTRLEN);
    PQconninfoFree(opts);
    return ok;
}

static int s_connect(mh_pg_t *self, char *err, size_t errlen)
{
    if (self->conn)
        PQfinish(self->conn);
    self->migrated = false;
    /* JIT off unless the URL says otherwise (its options come after and
     * win): Motehub's statements are short, and a row estimate that trips
     * JIT's cost threshold (a set-returning function over an array is
     * guessed at 1,000 rows) spends more compiling than the query takes. */
    char addr[INET_ADDRSTRLEN] = "";
    const char *const keys[] = {"options", "dbname",
                                s_host_addr(self->url, addr) ? "hostaddr" : NULL, NULL};
    const char *const values[] = {"-c jit=off", self->url, addr, NULL};
    self->conn = PQconnectdbParams(keys, values, 1);
    /* "relation … already exists, skipping" from the idempotent schema is
     * not news. */
    PQsetNoticeProcessor(self->conn, s_ignore_notice, NULL);
    if (PQstatus(self->conn) != CONNECTION_OK) {
        if (err) {
            snprintf(err, errlen, "cannot connect to PostgreSQL: %s", PQerrorMessage(self->conn));
            s_trim(err);
        }
        PQfinish(self->conn);
        self->conn = NULL;
        return -EIO;
    }
    if (!mh_pg_ok(self, "SET TIME ZONE 'UTC'", 0, NULL, err, errlen))
        return -EIO;
    if (*self->schema && s_migrate(self, err, errlen) != 0)
        return -EIO;
    if (self->session) {
        PGresult *res = PQexec(self->conn, self->session);
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
        if (!ok && err) {
            snprintf(err, errlen, "session settings refused: %s", PQerrorMessage(self->conn));
            s_trim(err);
        }
        PQclear(res);
        if (!ok)
            return -EIO;
    }
    self->migrated = true;
    return 0;
}

/* The schema, under the advisory lock that serialises replicas. */
static int s_migrate(mh_pg_t *self, char *err, size_t errlen)
{
    char lock[32];
    snprintf(lock, sizeof lock, "%" PRId64, self->lock_key);
    const char *p[] = {lock};
    PGresult *res =
        mh_pg_exec(self, PGRES_TUPLES_OK, "SELECT pg_advisory_lock($1::bigint)", 1, p, err, errlen);
    if (!res)
        return -EIO;
    PQclear(res);
    res = PQexec(self->conn, self->schema);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok && err) {
        snprintf(err, errlen, "schema migration failed: %s", PQerrorMessage(self->conn));
        s_trim(err);
    }
    PQclear(res);
    PQclear(PQexecParams(self->conn, "SELECT pg_advisory_unlock($1::bigint)", 1, NULL, p, NULL,
                         NULL, 0));
    return ok ? 0 : -EIO;
}

char *mh_pg_text_array(const char *const *items, size_t n)
{
    size_t len = 3;
    for (size_t i = 0; i < n; i++)
        len += (items[i] ? 2 * strlen(items[i]) : 4) + 3;
    char *s = malloc(len), *p = s;
    if (!s)
        return NULL;
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *p++ = ',';
        if (!items[i]) {
            memcpy(p, "NULL", 4);
            p += 4;
            continue;
        }
        *p++ = '"';
        for (const char *c = items[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                *p++ = '\\';
            *p++ = *c;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = 0;
    return s;
}

PGresult *mh_pg_exec_ids(mh_pg_t *self, const char *sql, const char *const *ids, size_t n,
                         const char *arg2, char *err, size_t errlen)
{
    char *lit = mh_pg_text_array(ids, n);
    if (!lit) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    const char *p[] = {lit, arg2};
    PGresult *res = mh_pg_exec(self, PGRES_TUPLES_OK, sql, arg2 ? 2 : 1, p, err, errlen);
    free(lit);
    return res;
}

PGresult *mh_pg_exec_list(mh_pg_t *self, const char *sql, zlist_t *ids, const char *arg2, char *err,
                          size_t errlen)
{
    size_t n = zlist_size(ids), i = 0;
    const char **v = calloc(n + 1, sizeof *v);
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (const char *id = zlist_first(ids); id; id = zlist_next(ids))
        v[i++] = id;
    PGresult *res = mh_pg_exec_ids(self, sql, v, n, arg2, err, errlen);
    free(v);
    return res;
}
