/* fleet-stats: API tokens — made, listed and revoked (motectl, the
 * create-token command), checked in constant time and cached for a few
 * seconds (fs_internal.h). */
#include "fs_internal.h"

/* ---- tokens ---- */

void fs_free_tok(void **p)
{
    free(*p);
    *p = NULL;
}

static mh_pg_t *s_cli_pg(const char *pg_url)
{
    char err[512];
    mh_pg_t *pg = mh_pg_new(pg_url, fs_schema_sql, FS_LOCK_MIGRATE);
    if (pg && mh_pg_connect(pg, err, sizeof err) >= 0)
        return pg;
    fprintf(stderr, "cannot reach the database: %s\n", pg ? err : "out of memory");
    mh_pg_destroy(&pg);
    return NULL;
}

int fs_create_token(const char *pg_url, const char *name)
{
    unsigned char raw[32];
    if (getrandom(raw, sizeof raw, 0) != sizeof raw) {
        fprintf(stderr, "no randomness for a token\n");
        return 1;
    }
    char token[80] = "mht_", hash[65], err[512], now[32], prefix[16];
    mh_hex(raw, sizeof raw, token + 4);
    mh_sha256_hex(token, strlen(token), hash);
    snprintf(prefix, sizeof prefix, "%.12s", token); /* "mht_" + 8 hex: to tell tokens apart */
    snprintf(now, sizeof now, "%" PRId64, mh_now_ms());
    mh_pg_t *pg = s_cli_pg(pg_url);
    const char *p[] = {name, hash, now, prefix};
    if (!pg || !mh_pg_ok(pg,
                         "INSERT INTO fleet.tokens (name, hash, created_ms, prefix)"
                         " VALUES ($1, $2, $3::bigint, $4)",
                         4, p, err, sizeof err)) {
        if (pg)
            fprintf(stderr, "cannot store the token: %s\n", err);
        mh_pg_destroy(&pg);
        return 1;
    }
    mh_pg_destroy(&pg);
    printf("%s\n", token);
    return 0;
}

int fs_list_tokens(const char *pg_url)
{
    char err[512];
    mh_pg_t *pg = s_cli_pg(pg_url);
    PGresult *res =
        pg ? mh_pg_exec(pg, PGRES_TUPLES_OK,
                        "SELECT name, coalesce(prefix, '-'),"
                        " to_char(to_timestamp(created_ms / 1000.0), 'YYYY-MM-DD HH24:MI:SS'),"
                        " coalesce(to_char(to_timestamp(revoked_ms / 1000.0),"
                        "   'YYYY-MM-DD HH24:MI:SS'), '-')"
                        " FROM fleet.tokens ORDER BY created_ms",
                        0, NULL, err, sizeof err)
           : NULL;
    if (!res) {
        if (pg)
            fprintf(stderr, "cannot list the tokens: %s\n", err);
        mh_pg_destroy(&pg);
        return 1;
    }
    printf("%-24s %-14s %-20s %s\n", "NAME", "TOKEN", "CREATED (UTC)", "REVOKED (UTC)");
    for (int i = 0; i < PQntuples(res); i++)
        printf("%-24s %-14s %-20s %s\n", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
               PQgetvalue(res, i, 2), PQgetvalue(res, i, 3));
    PQclear(res);
    mh_pg_destroy(&pg);
    return 0;
}

int fs_revoke_token(const char *pg_url, const char *name)
{
    char err[512], now[32];
    snprintf(now, sizeof now, "%" PRId64, mh_now_ms());
    mh_pg_t *pg = s_cli_pg(pg_url);
    const char *p[] = {name, now};
    PGresult *res = pg ? mh_pg_exec(pg, PGRES_COMMAND_OK,
                                    "UPDATE fleet.tokens SET revoked_ms = $2::bigint"
                                    " WHERE (name = $1 OR prefix = $1) AND revoked_ms IS NULL",
                                    2, p, err, sizeof err)
                       : NULL;
    if (!res) {
        if (pg)
            fprintf(stderr, "cannot revoke: %s\n", err);
        mh_pg_destroy(&pg);
        return 1;
    }
    int n = atoi(PQcmdTuples(res));
    PQclear(res);
    mh_pg_destroy(&pg);
    if (n == 0) {
        fprintf(stderr, "no live token named \"%s\"\n", name);
        return 1;
    }
    printf("revoked %d token%s named %s (in force on every replica within %d s)\n", n,
           n == 1 ? "" : "s", name, FS_TOKEN_TTL_MS / 1000);
    return 0;
}

/* 1 valid (its name in name_out), 0 not, -1 cannot tell (database away).
 * Tokens are looked up by their SHA-256, so how long a lookup takes says
 * nothing about the stored tokens (a digest comparison, not a token one). */
int fs_token_ok(fs_t *self, const char *token, char name_out[64])
{
    char hash[65], err[512];
    mh_sha256_hex(token, strlen(token), hash);
    int64_t now = mh_mono_ms();
    pthread_mutex_lock(&self->lock);
    fs_tok_t *t = zhashx_lookup(self->tokens, hash);
    int ok = t && t->until > now ? 1 : -1;
    if (ok < 0 && mh_pg_connect(self->pg, err, sizeof err) >= 0) {
        const char *p[] = {hash};
        PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                                   "SELECT name FROM fleet.tokens WHERE hash = $1"
                                   " AND revoked_ms IS NULL",
                                   1, p, err, sizeof err);
        if (res) {
            ok = PQntuples(res) == 1;
            if (ok) {
                if (!t && (t = calloc(1, sizeof *t)))
                    zhashx_insert(self->tokens, hash, t);
                if (t) {
                    snprintf(t->name, sizeof t->name, "%s", PQgetvalue(res, 0, 0));
                    t->until = now + FS_TOKEN_TTL_MS;
                }
            } else {
                zhashx_delete(self->tokens, hash);
                t = NULL;
            }
            PQclear(res);
        }
    }
    if (ok == 1)
        snprintf(name_out, 64, "%s", t ? t->name : "?");
    pthread_mutex_unlock(&self->lock);
    return ok;
}
