/* fleet-stats. See fs_service.h; docs/fleet-stats.md for the API as served. */
#include "fs_service.h"
#include "mh_json.h"
#include "fs_live.h"
#include "mh_digest.h"
#include "mh_ids.h"
#include "mh_pg.h"
#include "mh_rpc.h"
#include "mh_time.h"
#include "ota.pb-c.h"
#include "telemetry.pb-c.h"
#include "twin.pb-c.h"

#include <civetweb.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <ctype.h>
#include <time.h>

#define S_CFG(field) offsetof(fs_config_t, field)

const mh_cfg_opt_t fs_config_options[] = {
    MH_CFG_COMMON(fs_config_t, "127.0.0.1:9105"),
    {"pg-url", "MH_PG_URL", MH_CFG_STR, "postgresql://postgres@127.0.0.1:5433/motehub",
     S_CFG(pg_url), "PostgreSQL connection string (API tokens)"},
    {"api-listen", "MH_API_LISTEN", MH_CFG_STR, "127.0.0.1:8080", S_CFG(api_listen),
     "where the operator API is served (HOST:PORT)"},
    {"twin-rpc-endpoint", "MH_TWIN_RPC_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5581",
     S_CFG(twin_rpc_endpoint), "twin's RPC ROUTER(s)"},
    {"ota-rpc-endpoint", "MH_OTA_RPC_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5583",
     S_CFG(ota_rpc_endpoint), "ota's RPC ROUTER(s)"},
    {"max-image-size", "MH_OTA_MAX_IMAGE", MH_CFG_INT, "67108864", S_CFG(max_image),
     "largest firmware upload taken, in bytes"},
    {"rpc-timeout", "MH_RPC_TIMEOUT", MH_CFG_DURATION, "10s", S_CFG(rpc_timeout_ms),
     "how long an API request waits for the service behind it"},
    {"api-threads", "MH_API_THREADS", MH_CFG_INT, "32", S_CFG(api_threads),
     "HTTP worker threads (each open WebSocket holds one)"},
    {"twin-events-endpoint", "MH_TWIN_EVENTS_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5573",
     S_CFG(twin_events_endpoint), "twin's event PUB(s), for the live aggregates"},
    {"ota-events-endpoint", "MH_OTA_EVENTS_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5574",
     S_CFG(ota_events_endpoint), "ota's event PUB(s), for rollout progress"},
    {"gateway-events-endpoint", "MH_GATEWAY_EVENTS_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5571",
     S_CFG(gateway_events_endpoint), "every gateway's event PUB, for message rates"},
    {"ingest-rpc-endpoint", "MH_INGEST_RPC_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5561",
     S_CFG(ingest_rpc_endpoint), "ingest's telemetry query ROUTER(s)"},
    {"geo-cell", "MH_GEO_CELL", MH_CFG_DOUBLE, "1", S_CFG(geo_cell),
     "size of a geographic cell, in degrees"},
    {"live-resync", "MH_LIVE_RESYNC", MH_CFG_DURATION, "10m", S_CFG(live_resync_ms),
     "how often the aggregates are rebuilt from a full snapshot"},
    {"live-frame-interval", "MH_LIVE_FRAME_INTERVAL", MH_CFG_DURATION, "250ms",
     S_CFG(live_frame_ms), "at most one /api/v1/live frame per this"},
    {"dashboard-dir", "MH_DASHBOARD_DIR", MH_CFG_STR, "", S_CFG(dashboard_dir),
     "the built dashboard (dashboard/dist), served at / (empty: none)"},
    MH_CFG_END,
};

const mh_service_def_t fs_service_def = {
    .name = "fleet-stats",
    .summary = "Motehub fleet-stats: the operator HTTP API.",
    .options = fs_config_options,
    .config_size = sizeof(fs_config_t),
    .actor = fs_actor,
};

extern const char fs_openapi[];
extern const size_t fs_openapi_len;

#define S_LOCK_MIGRATE 7203104
#define S_MAX_BODY     (1024 * 1024)

static const char *s_schema_sql =
    "CREATE SCHEMA IF NOT EXISTS fleet;"
    "CREATE TABLE IF NOT EXISTS fleet.tokens (name text NOT NULL,"
    "  hash text PRIMARY KEY, created_ms bigint NOT NULL);"
    "ALTER TABLE fleet.tokens ADD COLUMN IF NOT EXISTS prefix text;"
    "ALTER TABLE fleet.tokens ADD COLUMN IF NOT EXISTS revoked_ms bigint;";

/* A valid token is remembered this long: a revoked one stops working
 * within it on every replica. */
#define S_TOKEN_TTL_MS 5000

typedef struct {
    char name[64];
    int64_t until; /* monotonic */
} s_tok_t;

typedef struct {
    mh_service_ctx_t *ctx;
    fs_config_t *cfg;
    struct mg_context *web;
    mh_rpc_t *twin, *ota, *ingest;
    fs_live_t *live;
    int64_t max_ws;
    pthread_mutex_t lock; /* the token connection and cache */
    mh_pg_t *pg;
    zhashx_t *tokens; /* hash -> s_tok_t, tokens seen valid lately */
    uint64_t seq;
    mh_counter_t *m_requests[5]; /* 2xx 3xx 4xx 5xx 401 */
    mh_histogram_t *m_ms;
} fs_t;

/* ---- tokens ---- */

static void s_free_tok(void **p)
{
    free(*p);
    *p = NULL;
}

static mh_pg_t *s_cli_pg(const char *pg_url)
{
    char err[512];
    mh_pg_t *pg = mh_pg_new(pg_url, s_schema_sql, S_LOCK_MIGRATE);
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
           n == 1 ? "" : "s", name, S_TOKEN_TTL_MS / 1000);
    return 0;
}

/* 1 valid (its name in name_out), 0 not, -1 cannot tell (database away).
 * Tokens are looked up by their SHA-256, so how long a lookup takes says
 * nothing about the stored tokens (a digest comparison, not a token one). */
static int s_token_ok(fs_t *self, const char *token, char name_out[64])
{
    char hash[65], err[512];
    mh_sha256_hex(token, strlen(token), hash);
    int64_t now = mh_mono_ms();
    pthread_mutex_lock(&self->lock);
    s_tok_t *t = zhashx_lookup(self->tokens, hash);
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
                    t->until = now + S_TOKEN_TTL_MS;
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

/* ---- responses ---- */

static const char *s_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Payload Too Large";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status < 500 ? "Error" : "Server Error";
    }
}

static int s_send(fs_t *self, struct mg_connection *c, int status, const char *body,
                  const char *extra_headers)
{
    size_t len = body ? strlen(body) : 0;
    mg_printf(c,
              "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
              "Cache-Control: no-store\r\n%s\r\n",
              status, s_reason(status), len, extra_headers ? extra_headers : "");
    if (len)
        mg_write(c, body, len);
    int k = status == 401 ? 4 : status / 100 - 2;
    if (k >= 0 && k < 5)
        mh_counter_inc(self->m_requests[k]);
    return status;
}

static int s_error(fs_t *self, struct mg_connection *c, int status, const char *code,
                   const char *message)
{
    json_t *e = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", message);
    char *text = json_dumps(e, JSON_COMPACT);
    json_decref(e);
    const char *hdr = status == 401 ? "WWW-Authenticate: Bearer realm=\"motehub\"\r\n" : NULL;
    s_send(self, c, status, text, hdr);
    free(text);
    return status;
}

/* Reads a JSON object body. NULL after answering 400/413 itself. */
static json_t *s_body_object(fs_t *self, struct mg_connection *c, bool required)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    if (ri->content_length > S_MAX_BODY) {
        s_error(self, c, 413, "too_large", "the request body is over 1 MiB");
        return NULL;
    }
    size_t cap = ri->content_length > 0 ? (size_t)ri->content_length : 4096, n = 0;
    char *buf = malloc(cap + 1);
    int r;
    while (buf && (r = mg_read(c, buf + n, cap - n)) > 0) {
        n += (size_t)r;
        if (n == cap) {
            if (cap >= S_MAX_BODY) {
                free(buf);
                s_error(self, c, 413, "too_large", "the request body is over 1 MiB");
                return NULL;
            }
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
    }
    if (!buf) {
        s_error(self, c, 503, "unavailable", "out of memory");
        return NULL;
    }
    buf[n] = 0;
    if (n == 0 && !required) {
        free(buf);
        return json_object();
    }
    json_error_t err;
    json_t *v = mh_json_loadb(buf, n, JSON_REJECT_DUPLICATES, MH_JSON_MAX_DEPTH, &err);
    free(buf);
    if (!v || !json_is_object(v)) {
        char msg[300];
        if (!v && mh_json_too_deep(&err))
            snprintf(msg, sizeof msg, "the body is %s (the API's limit for any body)", err.text);
        else
            snprintf(msg, sizeof msg, "the body must be a JSON object%s%s", v ? "" : ": ",
                     v ? "" : err.text);
        json_decref(v);
        s_error(self, c, 400, "bad_request", msg);
        return NULL;
    }
    return v;
}

/* ---- twin RPC ---- */

/* Calls twin and answers the HTTP request from its reply. `ok_status`
 * overrides the success status (0: twin's). `etag`: send ETag/version. */
static int s_twin(fs_t *self, struct mg_connection *c, Mh__TwinRequest *q, bool etag)
{
    char rid[48];
    snprintf(rid, sizeof rid, "fs-%" PRIu64, __atomic_add_fetch(&self->seq, 1, __ATOMIC_RELAXED));
    q->request_id = rid;
    q->deadline_ms = mh_now_ms() + self->cfg->rpc_timeout_ms;
    Mh__Envelope *env = mh_rpc_call(self->twin, "twin.request", &q->base, rid, mh_rpc_reply_match,
                                    (int)self->cfg->rpc_timeout_ms);
    if (!env)
        return s_error(self, c, 504, "deadline_exceeded", "twin did not answer in time");
    Mh__TwinReply *r = mh__twin_reply__unpack(NULL, env->body.len, env->body.data);
    mh_envelope_free(&env);
    if (!r)
        return s_error(self, c, 502, "internal", "twin's answer did not decode");
    int status;
    if (r->status >= 400) {
        status = s_error(self, c, (int)r->status, *r->error_code ? r->error_code : "internal",
                         r->message);
    } else {
        char hdr[64] = "";
        if (etag)
            snprintf(hdr, sizeof hdr, "ETag: \"%" PRId64 "\"\r\n", r->version);
        status = s_send(self, c, (int)r->status, *r->body_json ? r->body_json : NULL, hdr);
    }
    mh__twin_reply__free_unpacked(r, NULL);
    return status;
}

static uint32_t s_query_u32(const char *qs, const char *name, bool *bad)
{
    char v[32];
    if (!qs || mg_get_var(qs, strlen(qs), name, v, sizeof v) < 0)
        return 0;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < 1 || n > 1000000)
        *bad = true;
    return (uint32_t)n;
}

static void s_query_str(const char *qs, const char *name, char *out, size_t len)
{
    out[0] = 0;
    if (qs && mg_get_var(qs, strlen(qs), name, out, len) < 0)
        out[0] = 0;
}

/* ---- ingest RPC: telemetry ---- */

/* A time in the query: milliseconds since the epoch or RFC 3339
 * ("2026-11-24T10:00:00Z", "…T10:00:00.250+01:00"). 0 absent, -1 bad. */
static int64_t s_query_time(const char *qs, const char *name)
{
    char v[64];
    s_query_str(qs, name, v, sizeof v);
    if (!*v)
        return 0;
    char *end;
    long long ms = strtoll(v, &end, 10);
    if (!*end)
        return ms > 0 ? ms : -1;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *p = strptime(v, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p)
        return -1;
    int64_t frac = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; isdigit((unsigned char)*p); p++, digits++)
            if (digits < 3)
                frac = frac * 10 + (*p - '0');
        for (; digits < 3; digits++)
            frac *= 10;
    }
    int64_t off = 0;
    if (*p == '+' || *p == '-') {
        int hh, mm;
        if (sscanf(p + 1, "%2d:%2d", &hh, &mm) != 2 || strlen(p) != 6)
            return -1;
        off = (*p == '+' ? 1 : -1) * (hh * 60 + mm) * 60000LL;
    } else if (strcmp(p, "Z") != 0 && strcmp(p, "z") != 0) {
        return -1;
    }
    return (int64_t)timegm(&tm) * 1000 + frac - off;
}

static int s_telemetry(fs_t *self, struct mg_connection *c, const char *method, const char *id,
                       const char *what)
{
    if (strcmp(method, "GET") != 0)
        return s_error(self, c, 405, "method_not_allowed", "GET");
    if (what && strcmp(what, "latest") != 0)
        return s_error(self, c, 404, "not_found", "no such path");
    const char *qs = mg_get_request_info(c)->query_string;
    Mh__TelemetryQuery q = MH__TELEMETRY_QUERY__INIT;
    char rid[48], bucket[16], cursor[160], mbuf[16][80];
    char *metrics[16];
    size_t nm = 0;
    for (int i = 0; qs && nm < 16; i++) {
        if (mg_get_var2(qs, strlen(qs), "metric", mbuf[nm], sizeof mbuf[nm], (size_t)i) < 0)
            break;
        metrics[nm] = mbuf[nm];
        nm++;
    }
    bool bad = false;
    q.device_id = (char *)id;
    q.metrics = metrics;
    q.n_metrics = nm;
    q.latest = what != NULL;
    q.from_ms = s_query_time(qs, "from");
    q.to_ms = s_query_time(qs, "to");
    if (q.from_ms < 0 || q.to_ms < 0)
        return s_error(self, c, 400, "bad_request",
                       "\"from\" and \"to\" are milliseconds since 1970 or RFC 3339 times");
    s_query_str(qs, "bucket", bucket, sizeof bucket);
    s_query_str(qs, "cursor", cursor, sizeof cursor);
    q.bucket = bucket;
    q.cursor = cursor;
    q.limit = s_query_u32(qs, "limit", &bad);
    if (bad)
        return s_error(self, c, 400, "bad_request", "\"limit\" is a number from 1 to 100000");
    snprintf(rid, sizeof rid, "fs-%" PRIu64, __atomic_add_fetch(&self->seq, 1, __ATOMIC_RELAXED));
    q.request_id = rid;
    q.deadline_ms = mh_now_ms() + self->cfg->rpc_timeout_ms;
    Mh__Envelope *env = mh_rpc_call(self->ingest, "telemetry.query", &q.base, rid,
                                    mh_rpc_reply_match, (int)self->cfg->rpc_timeout_ms);
    if (!env)
        return s_error(self, c, 504, "deadline_exceeded", "ingest did not answer in time");
    Mh__TelemetryReply *r = mh__telemetry_reply__unpack(NULL, env->body.len, env->body.data);
    mh_envelope_free(&env);
    if (!r)
        return s_error(self, c, 502, "internal", "ingest's answer did not decode");
    int status = r->status >= 400 ? s_error(self, c, (int)r->status,
                                            *r->error_code ? r->error_code : "internal", r->message)
                                  : s_send(self, c, (int)r->status, r->body_json, NULL);
    mh__telemetry_reply__free_unpacked(r, NULL);
    return status;
}

static int s_devices(fs_t *self, struct mg_connection *c, const char *method, const char *id,
                     const char *sub, const char *cid)
{
    const char *qs = mg_get_request_info(c)->query_string;
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.device_id = (char *)(id ? id : "");
    if (!id) {
        if (strcmp(method, "POST") == 0) {
            json_t *b = s_body_object(self, c, true);
            if (!b)
                return 400;
            const char *did = json_string_value(json_object_get(b, "id"));
            json_t *tags = json_object_get(b, "tags");
            if (!did || (tags && !json_is_object(tags))) {
                json_decref(b);
                return s_error(self, c, 400, "bad_request",
                               "{\"id\":\"…\",\"tags\":{…}}: \"id\" is required, \"tags\" an"
                               " object");
            }
            char *tags_text = tags ? json_dumps(tags, JSON_COMPACT) : NULL;
            q.method = MH__TWIN_REQUEST__METHOD__REGISTER;
            q.device_id = (char *)did;
            q.tags_json = tags_text ? tags_text : "";
            int st = s_twin(self, c, &q, false);
            free(tags_text);
            json_decref(b);
            return st;
        }
        if (strcmp(method, "GET") != 0)
            return s_error(self, c, 405, "method_not_allowed", "GET or POST");
        bool bad = false;
        char status[16], firmware[80], prefix[80], cursor[200];
        s_query_str(qs, "status", status, sizeof status);
        s_query_str(qs, "firmware", firmware, sizeof firmware);
        s_query_str(qs, "q", prefix, sizeof prefix);
        s_query_str(qs, "cursor", cursor, sizeof cursor);
        q.method = MH__TWIN_REQUEST__METHOD__LIST_DEVICES;
        q.limit = s_query_u32(qs, "limit", &bad);
        if (bad)
            return s_error(self, c, 400, "bad_request", "\"limit\" is a number from 1 to 1000");
        q.status = status;
        q.firmware = firmware;
        q.prefix = prefix;
        q.cursor = cursor;
        char tagbuf[16][160];
        char *tags[16];
        size_t nt = 0;
        for (int i = 0; qs && nt < 16; i++) {
            if (mg_get_var2(qs, strlen(qs), "tag", tagbuf[nt], sizeof tagbuf[nt], (size_t)i) < 0)
                break;
            tags[nt] = tagbuf[nt];
            nt++;
        }
        q.tags = tags;
        q.n_tags = nt;
        return s_twin(self, c, &q, false);
    }
    if (!sub) {
        if (strcmp(method, "GET") == 0)
            q.method = MH__TWIN_REQUEST__METHOD__GET_DEVICE;
        else if (strcmp(method, "DELETE") == 0)
            q.method = MH__TWIN_REQUEST__METHOD__DELETE_DEVICE;
        else
            return s_error(self, c, 405, "method_not_allowed", "GET or DELETE");
        return s_twin(self, c, &q, false);
    }
    if (strcmp(sub, "telemetry") == 0)
        return s_telemetry(self, c, method, id, cid);
    if (strcmp(sub, "twin") == 0 && !cid) {
        if (strcmp(method, "GET") == 0) {
            q.method = MH__TWIN_REQUEST__METHOD__GET_TWIN;
            return s_twin(self, c, &q, true);
        }
        if (strcmp(method, "PATCH") != 0)
            return s_error(self, c, 405, "method_not_allowed", "GET or PATCH");
        const char *im = mg_get_header(c, "If-Match");
        if (im) {
            char *end;
            const char *p = *im == '"' ? im + 1 : im;
            long long v = strtoll(p, &end, 10);
            if (end == p || v < 1 || (*im == '"' && *end != '"'))
                return s_error(self, c, 400, "bad_request",
                               "If-Match is the twin's ETag, e.g. \"7\"");
            q.if_match = v;
        }
        json_t *b = s_body_object(self, c, true);
        if (!b)
            return 400;
        json_t *desired = json_object_get(b, "desired"), *tags = json_object_get(b, "tags");
        char *d = desired ? json_dumps(desired, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        char *t = tags ? json_dumps(tags, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        q.method = MH__TWIN_REQUEST__METHOD__PATCH_TWIN;
        q.desired_json = d ? d : "";
        q.tags_json = t ? t : "";
        int st = json_object_size(b) == (size_t)(!!desired + !!tags) && (desired || tags)
                     ? s_twin(self, c, &q, true)
                     : s_error(self, c, 400, "bad_request",
                               "the body is {\"desired\":{…}} and/or {\"tags\":{…}}");
        free(d);
        free(t);
        json_decref(b);
        return st;
    }
    if (strcmp(sub, "commands") == 0) {
        if (cid) {
            if (strcmp(method, "GET") != 0)
                return s_error(self, c, 405, "method_not_allowed", "GET");
            q.method = MH__TWIN_REQUEST__METHOD__GET_COMMAND;
            q.command_id = (char *)cid;
            return s_twin(self, c, &q, false);
        }
        if (strcmp(method, "GET") == 0) {
            bool bad = false;
            char cursor[200];
            s_query_str(qs, "cursor", cursor, sizeof cursor);
            q.method = MH__TWIN_REQUEST__METHOD__LIST_COMMANDS;
            q.limit = s_query_u32(qs, "limit", &bad);
            q.cursor = cursor;
            if (bad)
                return s_error(self, c, 400, "bad_request", "\"limit\" is a number from 1 to 1000");
            return s_twin(self, c, &q, false);
        }
        if (strcmp(method, "POST") != 0)
            return s_error(self, c, 405, "method_not_allowed", "GET or POST");
        json_t *b = s_body_object(self, c, true);
        if (!b)
            return 400;
        const char *name = json_string_value(json_object_get(b, "name"));
        json_t *params = json_object_get(b, "params"), *ttl = json_object_get(b, "ttl"),
               *tmo = json_object_get(b, "timeout");
        if (!name || (params && !json_is_object(params)) || (ttl && !json_is_integer(ttl)) ||
            (tmo && !json_is_integer(tmo))) {
            json_decref(b);
            return s_error(self, c, 400, "bad_request",
                           "{\"name\":\"…\",\"params\":{…},\"ttl\":seconds,\"timeout\":seconds}");
        }
        char *ptext = params ? json_dumps(params, JSON_COMPACT) : NULL;
        q.method = MH__TWIN_REQUEST__METHOD__SEND_COMMAND;
        q.command_name = (char *)name;
        q.params_json = ptext ? ptext : "";
        q.ttl_s = ttl ? json_integer_value(ttl) : 0;
        q.timeout_s = tmo ? json_integer_value(tmo) : 0;
        int st = s_twin(self, c, &q, false);
        free(ptext);
        json_decref(b);
        return st;
    }
    return s_error(self, c, 404, "not_found", "no such path");
}

/* ---- ota RPC: firmware and rollouts ---- */

/* Calls ota; answers from its reply. With `pem`, a successful reply's
 * "publicKey" is sent as the PEM text itself. */
static int s_ota(fs_t *self, struct mg_connection *c, Mh__OtaRequest *q, bool pem)
{
    char rid[48];
    snprintf(rid, sizeof rid, "fs-%" PRIu64, __atomic_add_fetch(&self->seq, 1, __ATOMIC_RELAXED));
    q->request_id = rid;
    q->deadline_ms = mh_now_ms() + self->cfg->rpc_timeout_ms;
    Mh__Envelope *env = mh_rpc_call(self->ota, "ota.request", &q->base, rid, mh_rpc_reply_match,
                                    (int)self->cfg->rpc_timeout_ms);
    if (!env)
        return s_error(self, c, 504, "deadline_exceeded", "ota did not answer in time");
    Mh__OtaReply *r = mh__ota_reply__unpack(NULL, env->body.len, env->body.data);
    mh_envelope_free(&env);
    if (!r)
        return s_error(self, c, 502, "internal", "ota's answer did not decode");
    int status;
    if (r->status >= 400) {
        status = s_error(self, c, (int)r->status, *r->error_code ? r->error_code : "internal",
                         r->message);
    } else if (pem) {
        json_t *v = mh_json_loads(r->body_json, 0, MH_JSON_MAX_DEPTH, NULL);
        const char *key = json_string_value(json_object_get(v, "publicKey"));
        size_t len = key ? strlen(key) : 0;
        mg_printf(c,
                  "HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\n"
                  "Content-Length: %zu\r\n\r\n",
                  len);
        mg_write(c, key ? key : "", len);
        mh_counter_inc(self->m_requests[0]);
        status = 200;
        json_decref(v);
    } else {
        status = s_send(self, c, (int)r->status, *r->body_json ? r->body_json : NULL, NULL);
    }
    mh__ota_reply__free_unpacked(r, NULL);
    return status;
}

static int s_firmware(fs_t *self, struct mg_connection *c, const char *method, const char *version)
{
    const char *qs = mg_get_request_info(c)->query_string;
    Mh__OtaRequest q = MH__OTA_REQUEST__INIT;
    if (!version && strcmp(method, "POST") == 0) {
        const struct mg_request_info *ri = mg_get_request_info(c);
        char ver[80], hw[80];
        s_query_str(qs, "version", ver, sizeof ver);
        s_query_str(qs, "hardware", hw, sizeof hw);
        if (ri->content_length < 0)
            return s_error(self, c, 400, "bad_request",
                           "send the image as the body with a Content-Length");
        if (ri->content_length > self->cfg->max_image)
            return s_error(self, c, 413, "too_large", "the image is over the size limit");
        size_t len = (size_t)ri->content_length, n = 0;
        uint8_t *img = malloc(len ? len : 1);
        if (!img)
            return s_error(self, c, 503, "unavailable", "out of memory");
        int r;
        while (n < len && (r = mg_read(c, img + n, len - n)) > 0)
            n += (size_t)r;
        if (n != len) {
            free(img);
            return s_error(self, c, 400, "bad_request", "the body ended early");
        }
        q.method = MH__OTA_REQUEST__METHOD__UPLOAD_FIRMWARE;
        q.version = ver;
        q.hardware = hw;
        q.image.data = img;
        q.image.len = len;
        int st = s_ota(self, c, &q, false);
        free(img);
        return st;
    }
    if (strcmp(method, "GET") != 0)
        return s_error(self, c, 405, "method_not_allowed", version ? "GET" : "GET or POST");
    if (!version) {
        bool bad = false;
        char cursor[200];
        s_query_str(qs, "cursor", cursor, sizeof cursor);
        q.method = MH__OTA_REQUEST__METHOD__LIST_FIRMWARE;
        q.limit = s_query_u32(qs, "limit", &bad);
        q.cursor = cursor;
        if (bad)
            return s_error(self, c, 400, "bad_request", "\"limit\" is a number from 1 to 1000");
        return s_ota(self, c, &q, false);
    }
    if (strcmp(version, "signing-key") == 0) {
        q.method = MH__OTA_REQUEST__METHOD__SIGNING_KEY;
        return s_ota(self, c, &q, true);
    }
    q.method = MH__OTA_REQUEST__METHOD__GET_FIRMWARE;
    q.version = (char *)version;
    return s_ota(self, c, &q, false);
}

static int s_rollouts(fs_t *self, struct mg_connection *c, const char *method, const char *id,
                      const char *action)
{
    const char *qs = mg_get_request_info(c)->query_string;
    Mh__OtaRequest q = MH__OTA_REQUEST__INIT;
    q.rollout_id = (char *)(id ? id : "");
    if (!id) {
        if (strcmp(method, "POST") == 0) {
            json_t *b = s_body_object(self, c, true);
            if (!b)
                return 400;
            char *text = json_dumps(b, JSON_COMPACT);
            json_decref(b);
            q.method = MH__OTA_REQUEST__METHOD__CREATE_ROLLOUT;
            q.body_json = text ? text : "";
            int st = s_ota(self, c, &q, false);
            free(text);
            return st;
        }
        if (strcmp(method, "GET") != 0)
            return s_error(self, c, 405, "method_not_allowed", "GET or POST");
        bool bad = false;
        char cursor[64], state[32];
        s_query_str(qs, "cursor", cursor, sizeof cursor);
        s_query_str(qs, "state", state, sizeof state);
        q.method = MH__OTA_REQUEST__METHOD__LIST_ROLLOUTS;
        q.limit = s_query_u32(qs, "limit", &bad);
        q.cursor = cursor;
        q.state = state;
        if (bad)
            return s_error(self, c, 400, "bad_request", "\"limit\" is a number from 1 to 1000");
        return s_ota(self, c, &q, false);
    }
    if (!action) {
        if (strcmp(method, "GET") != 0)
            return s_error(self, c, 405, "method_not_allowed", "GET");
        q.method = MH__OTA_REQUEST__METHOD__GET_ROLLOUT;
        return s_ota(self, c, &q, false);
    }
    if (strcmp(method, "POST") != 0)
        return s_error(self, c, 405, "method_not_allowed", "POST");
    if (strcmp(action, "pause") == 0)
        q.method = MH__OTA_REQUEST__METHOD__PAUSE_ROLLOUT;
    else if (strcmp(action, "resume") == 0)
        q.method = MH__OTA_REQUEST__METHOD__RESUME_ROLLOUT;
    else if (strcmp(action, "abort") == 0)
        q.method = MH__OTA_REQUEST__METHOD__ABORT_ROLLOUT;
    else if (strcmp(action, "rollback") == 0)
        q.method = MH__OTA_REQUEST__METHOD__ROLLBACK_ROLLOUT;
    else
        return s_error(self, c, 404, "not_found", "no such path");
    return s_ota(self, c, &q, false);
}

/* ---- routing ---- */

/* Checks the bearer token (header, or for a WebSocket `access_token` in the
 * query as RFC 6750 allows). 0 when valid; else answers 401/503 itself. */
static int s_authorize(fs_t *self, struct mg_connection *c, bool query_ok, char name[64])
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    const char *auth = mg_get_header(c, "Authorization");
    char qtok[128] = "";
    const char *token = NULL;
    if (auth && strncmp(auth, "Bearer ", 7) == 0 && auth[7])
        token = auth + 7;
    else if (!auth && query_ok && ri->query_string &&
             mg_get_var(ri->query_string, strlen(ri->query_string), "access_token", qtok,
                        sizeof qtok) > 0)
        token = qtok;
    if (!token)
        return s_error(self, c, 401, "unauthorized", "send Authorization: Bearer <token>");
    int ok = s_token_ok(self, token, name);
    if (ok < 0)
        return s_error(self, c, 503, "unavailable", "cannot check the token now; try again");
    if (ok == 0)
        return s_error(self, c, 401, "unauthorized", "the token is not valid");
    return 0;
}

/* GET /api/v1/fleet/summary and /geo, from the live aggregates. */
static int s_fleet(fs_t *self, struct mg_connection *c, const char *method, const char *what)
{
    if (strcmp(method, "GET") != 0)
        return s_error(self, c, 405, "method_not_allowed", "GET");
    char *text = strcmp(what, "summary") == 0 ? fs_live_summary(self->live)
                 : strcmp(what, "geo") == 0   ? fs_live_geo(self->live)
                                              : (char *)"";
    if (text && !*text)
        return s_error(self, c, 404, "not_found", "no such path");
    if (!text)
        return s_error(self, c, 503, "unavailable",
                       "the fleet aggregates are still loading; try again");
    int st = s_send(self, c, 200, text, NULL);
    free(text);
    return st;
}

static int s_handle(struct mg_connection *c, void *ud)
{
    fs_t *self = ud;
    int64_t t0 = mh_mono_ms();
    const struct mg_request_info *ri = mg_get_request_info(c);
    char who[64] = "-";
    int denied = s_authorize(self, c, false, who);
    if (denied) {
        mh_info("api: %s %s %d token=-", ri->request_method, ri->local_uri, denied);
        return denied;
    }
    if (strcmp(ri->local_uri, "/api/v1/openapi.json") == 0) {
        mh_histogram_observe(self->m_ms, (double)(mh_mono_ms() - t0));
        mh_info("api: %s %s token=%s", ri->request_method, ri->local_uri, who);
        if (strcmp(ri->request_method, "GET") != 0)
            return s_error(self, c, 405, "method_not_allowed", "GET");
        mg_printf(c,
                  "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  "Content-Length: %zu\r\n\r\n",
                  fs_openapi_len);
        mg_write(c, fs_openapi, fs_openapi_len);
        mh_counter_inc(self->m_requests[0]);
        return 200;
    }
    /* /api/v1/devices[/{id}[/{sub}[/{cid}]]] */
    char path[512];
    snprintf(path, sizeof path, "%s", ri->local_uri);
    char *parts[8];
    int n = 0;
    for (char *save = NULL, *t = strtok_r(path, "/", &save); t && n < 8;
         t = strtok_r(NULL, "/", &save))
        parts[n++] = t;
    int status;
    if (n >= 3 && strcmp(parts[0], "api") == 0 && strcmp(parts[1], "v1") == 0 &&
        strcmp(parts[2], "devices") == 0 && n <= 6) {
        if (n >= 4 && !mh_device_id_valid(parts[3], strlen(parts[3])))
            status = s_error(self, c, 404, "not_found", "no such device");
        else
            status = s_devices(self, c, ri->request_method, n >= 4 ? parts[3] : NULL,
                               n >= 5 ? parts[4] : NULL, n >= 6 ? parts[5] : NULL);
    } else if (n >= 3 && n <= 4 && strcmp(parts[0], "api") == 0 && strcmp(parts[1], "v1") == 0 &&
               strcmp(parts[2], "firmware") == 0) {
        status = s_firmware(self, c, ri->request_method, n >= 4 ? parts[3] : NULL);
    } else if (n >= 3 && n <= 5 && strcmp(parts[0], "api") == 0 && strcmp(parts[1], "v1") == 0 &&
               strcmp(parts[2], "rollouts") == 0) {
        status = s_rollouts(self, c, ri->request_method, n >= 4 ? parts[3] : NULL,
                            n >= 5 ? parts[4] : NULL);
    } else if (n == 3 && strcmp(parts[0], "api") == 0 && strcmp(parts[1], "v1") == 0 &&
               strcmp(parts[2], "live") == 0) {
        status = s_error(self, c, 400, "bad_request",
                         "/api/v1/live is a WebSocket: connect with Upgrade: websocket");
    } else if (n == 4 && strcmp(parts[0], "api") == 0 && strcmp(parts[1], "v1") == 0 &&
               strcmp(parts[2], "fleet") == 0) {
        status = s_fleet(self, c, ri->request_method, parts[3]);
    } else {
        status = s_error(self, c, 404, "not_found", "no such path");
    }
    mh_histogram_observe(self->m_ms, (double)(mh_mono_ms() - t0));
    /* every call, by the token's name (never its value) */
    mh_info("api: %s %s %d %" PRId64 "ms token=%s", ri->request_method, ri->local_uri, status,
            mh_mono_ms() - t0, who);
    return status;
}

/* ---- /api/v1/live ---- */

static int s_ws_connect(const struct mg_connection *cc, void *ud)
{
    fs_t *self = ud;
    struct mg_connection *c = (struct mg_connection *)cc;
    char who[64] = "-";
    int denied = s_authorize(self, c, true, who);
    mh_info("api: live connect %d token=%s", denied ? denied : 101, who);
    if (denied)
        return 1; /* answered 401/503; no handshake */
    if (fs_live_clients(self->live) >= (size_t)self->max_ws) {
        s_error(self, c, 503, "unavailable", "too many live connections on this replica");
        return 1;
    }
    return 0;
}

static int s_ws_send(void *conn, const char *text, size_t len)
{
    return mg_websocket_write(conn, MG_WEBSOCKET_OPCODE_TEXT, text, len);
}

static void s_ws_ready(struct mg_connection *c, void *ud)
{
    fs_t *self = ud;
    fs_live_attach(self->live, c, s_ws_send);
}

static int s_ws_data(struct mg_connection *c, int bits, char *data, size_t len, void *ud)
{
    (void)c, (void)data, (void)len, (void)ud;
    return (bits & 0x0f) != MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE;
}

static void s_ws_close(const struct mg_connection *c, void *ud)
{
    fs_t *self = ud;
    fs_live_detach(self->live, (void *)c);
}

/* ---- the dashboard's files ---- */

/* Everything outside /api/: a file of the built dashboard, or its
 * index.html for the app's own routes (/devices/…), never outside it. */
static int s_static(struct mg_connection *c, void *ud)
{
    fs_t *self = ud;
    const struct mg_request_info *ri = mg_get_request_info(c);
    if (strncmp(ri->local_uri, "/api/", 5) == 0)
        return s_handle(c, ud);
    if (!*self->cfg->dashboard_dir || strstr(ri->local_uri, ".."))
        return s_error(self, c, 404, "not_found", "no such path");
    if (strcmp(ri->request_method, "GET") != 0 && strcmp(ri->request_method, "HEAD") != 0)
        return s_error(self, c, 405, "method_not_allowed", "GET");
    char path[1024];
    struct stat st;
    snprintf(path, sizeof path, "%s%s", self->cfg->dashboard_dir, ri->local_uri);
    bool asset = strncmp(ri->local_uri, "/assets/", 8) == 0;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (asset || strchr(strrchr(ri->local_uri, '/'), '.'))
            return s_error(self, c, 404, "not_found", "no such file");
        snprintf(path, sizeof path, "%s/index.html", self->cfg->dashboard_dir);
    }
    /* Vite names assets by content hash: they never change. */
    mg_send_mime_file2(c, path, NULL,
                       asset ? "Cache-Control: public, max-age=31536000, immutable\r\n"
                             : "Cache-Control: no-cache\r\n");
    mh_counter_inc(self->m_requests[0]);
    return 200;
}

/* ---- the actor ---- */

static const double s_bounds[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000};

static void s_destroy(fs_t **self_p)
{
    fs_t *self = *self_p;
    if (!self)
        return;
    if (self->web)
        mg_stop(self->web);
    fs_live_destroy(&self->live);
    mh_rpc_destroy(&self->twin);
    mh_rpc_destroy(&self->ota);
    mh_rpc_destroy(&self->ingest);
    mh_pg_destroy(&self->pg);
    zhashx_destroy(&self->tokens);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

void fs_actor(zsock_t *pipe, void *args)
{
    mh_service_ctx_t *ctx = args;
    fs_t *self = calloc(1, sizeof *self);
    if (!self) {
        mh_actor_failed(pipe);
        return;
    }
    self->ctx = ctx;
    self->cfg = ctx->cfg;
    pthread_mutex_init(&self->lock, NULL);
    self->tokens = zhashx_new();
    zhashx_set_destructor(self->tokens, s_free_tok);
    self->pg = mh_pg_new(self->cfg->pg_url, s_schema_sql, S_LOCK_MIGRATE);
    self->twin = mh_rpc_new(self->cfg->twin_rpc_endpoint);
    self->ota = mh_rpc_new(self->cfg->ota_rpc_endpoint);
    self->ingest = mh_rpc_new(self->cfg->ingest_rpc_endpoint);
    fs_live_opts_t lo = {.twin_events = self->cfg->twin_events_endpoint,
                         .ota_events = self->cfg->ota_events_endpoint,
                         .gateway_events = self->cfg->gateway_events_endpoint,
                         .twin = self->twin,
                         .ota = self->ota,
                         .rpc_timeout_ms = self->cfg->rpc_timeout_ms,
                         .cell_degrees = self->cfg->geo_cell,
                         .resync_ms = self->cfg->live_resync_ms,
                         .min_frame_ms = self->cfg->live_frame_ms};
    if (self->twin && self->ota)
        self->live = fs_live_new(&lo, ctx->metrics);
    static const char *classes[] = {"2xx", "3xx", "4xx", "5xx", "401"};
    for (int i = 0; i < 5; i++) {
        char labels[32];
        snprintf(labels, sizeof labels, "code=\"%s\"", classes[i]);
        self->m_requests[i] = mh_metrics_counter(ctx->metrics, "mh_api_requests_total",
                                                 "Operator API requests, by answer", labels);
    }
    self->m_ms = mh_metrics_histogram(ctx->metrics, "mh_api_request_ms",
                                      "Operator API request time, in milliseconds", NULL, s_bounds,
                                      sizeof s_bounds / sizeof s_bounds[0]);
    char threads[32];
    int64_t nthreads = self->cfg->api_threads > 4 ? self->cfg->api_threads : 4;
    snprintf(threads, sizeof threads, "%" PRId64, nthreads);
    self->max_ws = nthreads / 2; /* the other half keeps serving requests */
    const char *opts[] = {"listening_ports",
                          self->cfg->api_listen,
                          "num_threads",
                          threads,
                          "request_timeout_ms",
                          "30000",
                          NULL};
    mg_init_library(0);
    char err[512];
    mh_pg_connect(self->pg, err, sizeof err);
    if (self->pg && self->twin && self->ota && self->ingest && self->live)
        self->web = mg_start(NULL, NULL, opts);
    if (!self->web) {
        mh_error("cannot serve the API on %s", self->cfg->api_listen);
        s_destroy(&self);
        mg_exit_library();
        mh_actor_failed(pipe);
        return;
    }
    mg_set_request_handler(self->web, "/", s_static, self);
    mg_set_websocket_handler(self->web, "/api/v1/live", s_ws_connect, s_ws_ready, s_ws_data,
                             s_ws_close, self);
    mh_info("operator API on http://%s/api/v1/", self->cfg->api_listen);
    mh_actor_ready(pipe);
    for (;;) {
        zmq_pollitem_t items[] = {{zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
                                  {zsock_resolve(fs_live_events(self->live)), 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, 50) < 0 && errno != EINTR)
            break;
        if (items[1].revents & ZMQ_POLLIN)
            fs_live_on_event(self->live);
        fs_live_tick(self->live);
        if (items[0].revents & ZMQ_POLLIN) {
            char *cmd = zstr_recv(pipe);
            bool stop = !cmd || strcmp(cmd, "$TERM") == 0;
            zstr_free(&cmd);
            if (stop)
                break;
        }
        mh_http_heartbeat(ctx->http);
        pthread_mutex_lock(&self->lock);
        bool ready = mh_pg_connect(self->pg, err, sizeof err) >= 0 && fs_live_ready(self->live);
        pthread_mutex_unlock(&self->lock);
        mh_http_set_ready(ctx->http, ready);
    }
    s_destroy(&self);
    mg_exit_library();
}
