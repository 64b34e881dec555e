/* mh_rpc_pg — see mh_rpc_pg.h. */
#include "mh_rpc_pg.h"

#include <stdarg.h>
#include <stdio.h>

void mh_rpc_db_fail(const mh_rpc_db_t *db, mh_rpc_reply_t *r, const char *err)
{
    mh_counter_inc(db->errors);
    mh_log_limited(db->rl, MH_LOG_ERROR, "database error: %s", err);
    if (mh_pg_lost(db->pg))
        mh_rpc_fail(r, 503, "unavailable", "the database is unavailable; try again");
    else if (mh_pg_busy(db->pg))
        mh_rpc_fail(r, 503, "unavailable", "another write holds these rows; try again");
    else
        mh_rpc_fail(r, 500, "internal", "database error");
}

PGresult *mh_rpc_db_query(const mh_rpc_db_t *db, mh_rpc_reply_t *r, const char *sql, int nparams,
                          const char *const *params)
{
    char err[512];
    PGresult *res = mh_pg_exec(db->pg, PGRES_TUPLES_OK, sql, nparams, params, err, sizeof err);
    if (!res)
        mh_rpc_db_fail(db, r, err);
    return res;
}

PGresult *mh_rpc_db_row(const mh_rpc_db_t *db, mh_rpc_reply_t *r, const char *sql, int nparams,
                        const char *const *params, const char *missing, ...)
{
    PGresult *res = mh_rpc_db_query(db, r, sql, nparams, params);
    if (!res || PQntuples(res) > 0)
        return res;
    PQclear(res);
    r->status = 404;
    r->code = "not_found";
    va_list ap;
    va_start(ap, missing);
    vsnprintf(r->message, sizeof r->message, missing, ap);
    va_end(ap);
    return NULL;
}

uint32_t mh_rpc_limit(mh_rpc_reply_t *r, uint32_t asked, uint32_t max, char sql_limit[16])
{
    if (asked > max) {
        mh_rpc_fail(r, 400, "bad_request", "\"limit\" is at most %u", max);
        return 0;
    }
    uint32_t limit = asked ? asked : 100;
    snprintf(sql_limit, 16, "%u", limit + 1);
    return limit;
}

void mh_rpc_page(mh_rpc_reply_t *r, PGresult *res, uint32_t limit, const mh_rpc_page_t *page)
{
    if (!res)
        return;
    json_t *items = json_array();
    int rows = PQntuples(res);
    for (int i = 0; i < rows && (uint32_t)i < limit; i++) {
        json_t *item = page->item(res, i, page->ud);
        if (item)
            json_array_append_new(items, item);
    }
    json_t *next = json_null();
    if ((uint32_t)rows > limit) {
        char cursor[256];
        if (page->cursor)
            page->cursor(res, (int)limit - 1, cursor, sizeof cursor);
        else
            snprintf(cursor, sizeof cursor, "%s",
                     PQgetvalue(res, (int)limit - 1, page->cursor_col));
        next = json_string(cursor);
    }
    PQclear(res);
    mh_rpc_ok_json(r, 200, json_pack("{s:o,s:o}", "items", items, "next", next));
}
