/* mh_pg — one PostgreSQL connection as the services use it: connect,
 * migrate the service's schema idempotently under an advisory lock (replicas
 * start together), run parameterised statements, and tell a lost connection
 * from a failed statement. Not thread-safe: one per actor. */
#pragma once
#include <czmq.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mh_pg_t mh_pg_t;

/* `schema_sql` runs on every (re)connection and must be idempotent;
 * `lock_key` names the advisory lock that serialises it across replicas.
 * NULL schema_sql: nothing to migrate (a reader of another's tables). */
mh_pg_t *mh_pg_new(const char *url, const char *schema_sql, int64_t lock_key);
void mh_pg_destroy(mh_pg_t **self_p);

/* SQL run on every connection after the schema (one or more statements,
 * e.g. "SET lock_timeout = '250ms'"): a service's session settings. */
int mh_pg_set_session(mh_pg_t *self, const char *sql);

/* Connected with the schema in place? */
bool mh_pg_ready(mh_pg_t *self);
/* Connects and migrates when not ready, at most as often as its backoff
 * allows (250 ms doubling to 5 s after failures). Returns 0 when already
 * ready, 1 when it connected now, -EAGAIN while backing off, or -EIO with
 * err filled. Call it freely from a service loop. */
int mh_pg_connect(mh_pg_t *self, char *err, size_t errlen);
PGconn *mh_pg_conn(mh_pg_t *self);

/* Runs `sql` with text parameters (NULL entries are SQL NULL). Returns the
 * result when its status is `want`; else NULL with err filled (err may be
 * NULL), the SQLSTATE kept for mh_pg_sqlstate. */
PGresult *mh_pg_exec(mh_pg_t *self, ExecStatusType want, const char *sql, int nparams,
                     const char *const *params, char *err, size_t errlen);
/* The same with binary parameters (formats[i] = 1, lengths[i] bytes) or a
 * binary result (result_format = 1), e.g. for bytea. */
PGresult *mh_pg_exec_bin(mh_pg_t *self, ExecStatusType want, const char *sql, int nparams,
                         const char *const *params, const int *lengths, const int *formats,
                         int result_format, char *err, size_t errlen);
/* Same for statements whose result is not needed. */
bool mh_pg_ok(mh_pg_t *self, const char *sql, int nparams, const char *const *params, char *err,
              size_t errlen);
bool mh_pg_begin(mh_pg_t *self, char *err, size_t errlen);
bool mh_pg_commit(mh_pg_t *self, char *err, size_t errlen);
/* Rolls back if a transaction is open and the connection is alive. */
void mh_pg_rollback(mh_pg_t *self);

/* After a failure: was the connection lost (the caller retries later), or
 * did the statement fail (SQLSTATE, e.g. "40P01" deadlock)? */
bool mh_pg_lost(mh_pg_t *self);
const char *mh_pg_sqlstate(mh_pg_t *self);
/* Deadlock or serialisation failure: the transaction may simply be retried. */
bool mh_pg_retryable(mh_pg_t *self);
/* A lock not had within lock_timeout (55P03): another session holds rows
 * the statement wants; try again later, after other work. */
bool mh_pg_busy(mh_pg_t *self);

/* A text[] literal ({"a","b"}) for parameters like `= ANY($1::text[])`;
 * '"' and '\\' in a string are escaped; a NULL item is SQL NULL. Caller
 * frees; NULL when out of memory. */
char *mh_pg_text_array(const char *const *items, size_t n);
/* Runs `sql`, which returns rows, with $1 = `ids` as text[] (the same
 * rules as mh_pg_text_array) and $2 = `arg2` (NULL: the statement takes $1
 * alone). NULL with err filled on failure. */
PGresult *mh_pg_exec_ids(mh_pg_t *self, const char *sql, const char *const *ids, size_t n,
                         const char *arg2, char *err, size_t errlen);
/* The same with the ids in a zlist of strings. */
PGresult *mh_pg_exec_list(mh_pg_t *self, const char *sql, zlist_t *ids, const char *arg2, char *err,
                          size_t errlen);
