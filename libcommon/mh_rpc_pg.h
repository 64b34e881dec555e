/* mh_rpc_pg — what RPC methods answered from PostgreSQL share (twin, ota):
 * a database error turned into the right answer, a single row fetched or
 * a 404, a page limit checked, and a page of rows with its cursor.
 * Every function here fills the reply itself when it fails, so a method
 * returns as soon as one returns NULL / 0. */
#pragma once
#include "mh_log.h"
#include "mh_metrics.h"
#include "mh_pg.h"
#include "mh_rpc_server.h"

/* A service's database as its RPC methods see it. Borrowed pointers. */
typedef struct {
    mh_pg_t *pg;
    mh_counter_t *errors; /* the service's database-error counter */
    mh_ratelimit_t *rl;   /* limits the log lines of those errors */
} mh_rpc_db_t;

/* Counts and logs `err` and answers 503 unavailable when the connection is
 * lost (the caller may retry), 500 internal otherwise. */
void mh_rpc_db_fail(const mh_rpc_db_t *db, mh_rpc_reply_t *r, const char *err);

/* Runs a query that returns rows. NULL when it failed, the reply filled
 * through mh_rpc_db_fail. */
PGresult *mh_rpc_db_query(const mh_rpc_db_t *db, mh_rpc_reply_t *r, const char *sql, int nparams,
                          const char *const *params);

/* Runs a query for one row. NULL when it failed, or when it found no row:
 * then the reply is 404 not_found with the printf-style `missing` text. */
PGresult *mh_rpc_db_row(const mh_rpc_db_t *db, mh_rpc_reply_t *r, const char *sql, int nparams,
                        const char *const *params, const char *missing, ...)
    __attribute__((format(printf, 6, 7)));

/* The page size a request asked for: 100 when it asked none; 0, with a 400
 * reply, when it asked for more than `max`. `sql_limit` gets the LIMIT to
 * query with, as a parameter's text: one row more than the page, which
 * tells mh_rpc_page whether there is a next one. */
uint32_t mh_rpc_limit(mh_rpc_reply_t *r, uint32_t asked, uint32_t max, char sql_limit[16]);

/* How a page of rows becomes {"items": [...], "next": cursor|null}. The
 * query asked for limit + 1 rows: a row past `limit` means there is more,
 * and the cursor is taken from the last row given. */
typedef struct {
    /* the JSON of row `i` (a new reference); NULL leaves the row out */
    json_t *(*item)(PGresult *res, int i, void *ud);
    void *ud;
    int cursor_col; /* the cursor is this column's text, */
    /* or, when set, what this writes of the row */
    void (*cursor)(PGresult *res, int i, char *out, size_t outlen);
} mh_rpc_page_t;

/* Answers 200 with the page of `res` (freed). A NULL `res` is a query that
 * failed, whose reply already says why: nothing to do. */
void mh_rpc_page(mh_rpc_reply_t *r, PGresult *res, uint32_t limit, const mh_rpc_page_t *page);
