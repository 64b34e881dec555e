/* The twin actor. See tw_service.h for the shape; docs/twin.md for the
 * behaviour operators and firmware writers see. */
#include "tw_service.h"
#include "mh_json.h"
#include "mh_curve.h"
#include "mh_envelope.h"
#include "mh_ids.h"
#include "mh_pg.h"
#include "mh_resolver.h"
#include "mh_time.h"
#include "tw_doc.h"
#include "twin.pb-c.h"

#include <inttypes.h>
#include <jansson.h>

#define S_CFG(field) offsetof(tw_config_t, field)

const mh_cfg_opt_t tw_config_options[] = {
    MH_CFG_COMMON(tw_config_t, "127.0.0.1:9103"),
    {"pg-url", "MH_PG_URL", MH_CFG_STR, "postgresql://postgres@127.0.0.1:5433/motehub",
     S_CFG(pg_url), "PostgreSQL connection string"},
    {"bind", "MH_TWIN_BIND", MH_CFG_STR, "tcp://127.0.0.1:5580", S_CFG(bind),
     "where the PULL for device messages from the gateways binds"},
    {"rpc-bind", "MH_TWIN_RPC_BIND", MH_CFG_STR, "tcp://127.0.0.1:5581", S_CFG(rpc_bind),
     "where the ROUTER for the operator RPC binds"},
    {"events-bind", "MH_TWIN_EVENTS_BIND", MH_CFG_STR, "tcp://127.0.0.1:5573", S_CFG(events_bind),
     "where the event PUB socket binds (empty: none)"},
    {"downlink-endpoint", "MH_DOWNLINK_ENDPOINT", MH_CFG_STR, "tcp://127.0.0.1:5590",
     S_CFG(downlink_endpoint), "the gateways' downlink PULL endpoint(s); names resolve to all"},
    {"batch-max", "MH_TWIN_BATCH_MAX", MH_CFG_INT, "1000", S_CFG(batch_max),
     "device messages handled in one transaction at most"},
    {"keepalive", "MH_DEVICE_KEEPALIVE", MH_CFG_DURATION, "60s", S_CFG(keepalive_ms),
     "device keep-alive: a device online only by its messages goes offline after"
     " keep-alive plus grace in silence"},
    {"grace", "MH_DEVICE_GRACE", MH_CFG_DURATION, "30s", S_CFG(grace_ms),
     "grace added to the keep-alive before a silent device counts as offline"},
    {"command-ttl", "MH_COMMAND_TTL", MH_CFG_DURATION, "1h", S_CFG(command_ttl_ms),
     "time to live of a command sent without \"ttl\""},
    {"command-timeout", "MH_COMMAND_TIMEOUT", MH_CFG_DURATION, "30s", S_CFG(command_timeout_ms),
     "how long after sending a command without \"timeout\" waits for its ack"},
    {"sweep-interval", "MH_TWIN_SWEEP_INTERVAL", MH_CFG_DURATION, "1s", S_CFG(sweep_interval_ms),
     "how often expired commands, timed-out commands and silent devices are found"},
    {"resolve-interval", "MH_RESOLVE_INTERVAL", MH_CFG_DURATION, "10s", S_CFG(resolve_interval_ms),
     "how often service names are resolved again"},
    MH_CFG_END,
};

const mh_service_def_t tw_service_def = {
    .name = "twin",
    .summary = "Motehub twin: device registry, twin documents and the offline command queue.",
    .options = tw_config_options,
    .config_size = sizeof(tw_config_t),
    .actor = tw_actor,
};

#define S_LOCK_MIGRATE 7203101
#define S_MAX_TOKEN    64
#define S_MAX_PARAMS   (32 * 1024)
#define S_MAX_TTL_S    (30LL * 86400)
#define S_MAX_TMO_S    (7LL * 86400)
#define S_MAX_FUTURE   (3600 * 1000)

static const char *s_schema_sql =
    "CREATE SCHEMA IF NOT EXISTS twin;"
    "CREATE TABLE IF NOT EXISTS twin.devices ("
    "  id text COLLATE \"C\" PRIMARY KEY,"
    "  doc jsonb NOT NULL,"
    "  version bigint NOT NULL,"
    "  firmware text,"
    "  online boolean NOT NULL DEFAULT false,"
    "  online_source text NOT NULL DEFAULT '',"
    "  conn_ms bigint NOT NULL DEFAULT 0,"
    "  last_seen_ms bigint,"
    "  created_ms bigint NOT NULL);"
    "CREATE INDEX IF NOT EXISTS devices_silent ON twin.devices (last_seen_ms)"
    "  WHERE online AND online_source = 'message';"
    "CREATE INDEX IF NOT EXISTS devices_firmware ON twin.devices (firmware, id);"
    "CREATE TABLE IF NOT EXISTS twin.commands ("
    "  seq bigserial PRIMARY KEY,"
    "  id text NOT NULL UNIQUE,"
    "  device_id text COLLATE \"C\" NOT NULL REFERENCES twin.devices (id) ON DELETE CASCADE,"
    "  name text NOT NULL,"
    "  params jsonb NOT NULL,"
    "  status text NOT NULL,"
    "  created_ms bigint NOT NULL,"
    "  expires_ms bigint NOT NULL,"
    "  timeout_ms bigint NOT NULL,"
    "  sent_ms bigint,"
    "  completed_ms bigint,"
    "  result jsonb);"
    "CREATE INDEX IF NOT EXISTS commands_device ON twin.commands (device_id, seq);"
    "CREATE INDEX IF NOT EXISTS commands_queued ON twin.commands (expires_ms)"
    "  WHERE status = 'queued';"
    "CREATE INDEX IF NOT EXISTS commands_sent ON twin.commands ((sent_ms + timeout_ms))"
    "  WHERE status = 'sent';";

static const double s_ms_bounds[] = {0.5, 1,   2,   3,    5,    7,    10,    15,
                                     20,  30,  40,  50,   75,   100,  150,   200,
                                     300, 500, 750, 1000, 2000, 5000, 10000, 30000};
#define S_NBOUNDS (sizeof s_ms_bounds / sizeof s_ms_bounds[0])

/* Reasons a device message is refused or ignored; each is a metric label. */
typedef enum {
    S_R_BAD_JSON,
    S_R_BAD_REQUEST,
    S_R_CONFLICT,
    S_R_TOO_LARGE,
    S_R_UNREGISTERED,
    S_R_BAD_ACK,
    S_R_UNKNOWN_COMMAND,
    S_R_STALE_STATUS,
    S_R_MALFORMED,
    S_R_COUNT
} s_reason_t;
static const char *s_reason_names[S_R_COUNT] = {
    "bad_json", "bad_request",     "version_conflict", "too_large",         "unregistered",
    "bad_ack",  "unknown_command", "stale_status",     "malformed_internal"};

static const char *s_kind_names[] = {"status", "twin_get", "twin_update", "command_ack", "seen"};
#define S_NKINDS 5

/* RPC methods, for metric labels. */
static const char *s_method_names[] = {"register",    "get_device", "list_devices", "delete",
                                       "get_twin",    "patch_twin", "send_command", "list_commands",
                                       "get_command", "list_ids"};
#define S_NMETHODS 10

typedef struct {
    mh_service_ctx_t *ctx;
    tw_config_t *cfg;
    mh_pg_t *pg;
    zsock_t *pull, *router, *pub, *push;
    mh_resolver_t *resolver;

    zmsg_t **pending; /* a batch read but not yet committed (database away) */
    size_t npending;

    mh_counter_t *m_messages[S_NKINDS], *m_rejected[S_R_COUNT], *m_updates_accepted,
        *m_updates_changed, *m_commits, *m_db_errors, *m_retries, *m_downlink_dropped,
        *m_rpc[S_NMETHODS], *m_rpc_errors, *m_commands[7], *m_online, *m_offline, *m_published;
    mh_histogram_t *m_batch_ms, *m_rpc_ms;
    mh_gauge_t *m_db;
    mh_ratelimit_t rl_warn, rl_db;
} tw_t;

/* ---- small helpers ---- */

static char *s_dumps(json_t *v)
{
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

static int64_t s_i64(PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return 0;
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static json_t *s_json_col(PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return json_null();
    json_t *v = json_loads(PQgetvalue(res, row, col), JSON_DECODE_ANY, NULL);
    return v ? v : json_null();
}

static json_t *s_ms_or_null(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? json_null() : json_integer(s_i64(res, row, col));
}

/* `{"a","b"}`: a text[] literal of device or command ids; both are plain
 * ASCII without quotes or backslashes (validated before they get here). */
static bool s_command_name_valid(const char *s)
{
    /* Same alphabet as device ids: names become handler keys on devices. */
    return s && mh_device_id_valid(s, strlen(s));
}

/* ---- what a transaction sends once it commits ---- */

typedef struct {
    char device[MH_MAX_DEVICE_ID + 1];
    Mh__Publish **pubs;
    size_t n, cap;
} s_dl_t;

typedef struct {
    s_dl_t *dls; /* downlinks per device, in first-use order */
    size_t ndl, capdl;
    zhashx_t *dl_index; /* device -> index + 1 */
    zlist_t *events;    /* zmsg_t: [type][envelope] */
} s_out_t;

static void s_out_init(s_out_t *o)
{
    memset(o, 0, sizeof *o);
    o->dl_index = zhashx_new();
    o->events = zlist_new();
}

static void s_out_clear(s_out_t *o)
{
    for (size_t i = 0; i < o->ndl; i++) {
        for (size_t j = 0; j < o->dls[i].n; j++) {
            free(o->dls[i].pubs[j]->topic);
            free(o->dls[i].pubs[j]->payload.data);
            free(o->dls[i].pubs[j]);
        }
        free(o->dls[i].pubs);
    }
    free(o->dls);
    o->dls = NULL;
    o->ndl = o->capdl = 0;
    zhashx_purge(o->dl_index);
    zmsg_t *m;
    while ((m = zlist_pop(o->events)))
        zmsg_destroy(&m);
}

static void s_out_destroy(s_out_t *o)
{
    s_out_clear(o);
    zhashx_destroy(&o->dl_index);
    zlist_destroy(&o->events);
}

/* Queues a publish to devices/{device}/{sub}; `payload` is taken. */
static void s_out_publish(s_out_t *o, const char *device, const char *sub, char *payload)
{
    if (!payload)
        return;
    size_t idx = (size_t)(uintptr_t)zhashx_lookup(o->dl_index, device);
    if (!idx) {
        if (o->ndl == o->capdl) {
            o->capdl = o->capdl ? o->capdl * 2 : 64;
            o->dls = realloc(o->dls, o->capdl * sizeof *o->dls);
        }
        memset(&o->dls[o->ndl], 0, sizeof o->dls[o->ndl]);
        snprintf(o->dls[o->ndl].device, sizeof o->dls[o->ndl].device, "%s", device);
        idx = ++o->ndl;
        zhashx_insert(o->dl_index, device, (void *)(uintptr_t)idx);
    }
    s_dl_t *dl = &o->dls[idx - 1];
    if (dl->n == dl->cap) {
        dl->cap = dl->cap ? dl->cap * 2 : 4;
        dl->pubs = realloc(dl->pubs, dl->cap * sizeof *dl->pubs);
    }
    Mh__Publish *p = malloc(sizeof *p);
    mh__publish__init(p);
    char topic[160];
    snprintf(topic, sizeof topic, "devices/%s/%s", device, sub);
    p->topic = strdup(topic);
    p->payload.data = (uint8_t *)payload;
    p->payload.len = strlen(payload);
    p->qos = 1;
    dl->pubs[dl->n++] = p;
}

static void s_out_publish_json(s_out_t *o, const char *device, const char *sub, json_t *v)
{
    s_out_publish(o, device, sub, s_dumps(v));
    json_decref(v);
}

static void s_out_event(s_out_t *o, const char *type, const ProtobufCMessage *body)
{
    zframe_t *f = mh_envelope_pack(type, NULL, body);
    if (!f)
        return;
    zmsg_t *m = zmsg_new();
    zmsg_addstr(m, type);
    zmsg_append(m, &f);
    zlist_append(o->events, m);
}

static void s_out_command_event(s_out_t *o, const char *device, const char *id, const char *name,
                                const char *status)
{
    Mh__CommandStatus ev = MH__COMMAND_STATUS__INIT;
    ev.device_id = (char *)device;
    ev.command_id = (char *)id;
    ev.name = (char *)name;
    ev.status = (char *)status;
    s_out_event(o, "command.status", &ev.base);
}

static int s_status_index(const char *status)
{
    static const char *names[] = {"queued",   "sent",    "succeeded", "failed",
                                  "rejected", "expired", "timed_out"};
    for (int i = 0; i < 7; i++)
        if (strcmp(status, names[i]) == 0)
            return i;
    return 0;
}

/* Sends what a committed transaction produced. */
static void s_out_flush(tw_t *self, s_out_t *o)
{
    for (size_t i = 0; i < o->ndl; i++) {
        Mh__Downlink dl = MH__DOWNLINK__INIT;
        dl.publishes = o->dls[i].pubs;
        dl.n_publishes = o->dls[i].n;
        if (mh_envelope_send(self->push, NULL, "downlink", NULL, &dl.base, true) < 0) {
            mh_counter_add(self->m_downlink_dropped, dl.n_publishes);
            mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                           "no gateway takes downlink messages (queue full); %zu to %s dropped",
                           dl.n_publishes, o->dls[i].device);
        } else {
            mh_counter_add(self->m_published, dl.n_publishes);
        }
    }
    zmsg_t *m;
    while ((m = zlist_pop(o->events))) {
        if (self->pub)
            zmsg_send(&m, self->pub);
        zmsg_destroy(&m);
    }
    s_out_clear(o);
}

/* ---- command JSON ---- */

#define S_COMMAND_COLS                                                                             \
    "id, device_id, name, params::text, status, created_ms, expires_ms, timeout_ms, sent_ms,"      \
    " completed_ms, result::text, seq"

static json_t *s_command_json(PGresult *res, int r)
{
    json_t *c = json_object();
    json_object_set_new(c, "id", json_string(PQgetvalue(res, r, 0)));
    json_object_set_new(c, "deviceId", json_string(PQgetvalue(res, r, 1)));
    json_object_set_new(c, "name", json_string(PQgetvalue(res, r, 2)));
    json_object_set_new(c, "params", s_json_col(res, r, 3));
    json_object_set_new(c, "status", json_string(PQgetvalue(res, r, 4)));
    json_object_set_new(c, "createdAt", json_integer(s_i64(res, r, 5)));
    json_object_set_new(c, "expiresAt", json_integer(s_i64(res, r, 6)));
    json_object_set_new(c, "timeout", json_integer(s_i64(res, r, 7) / 1000));
    json_object_set_new(c, "sentAt", s_ms_or_null(res, r, 8));
    json_object_set_new(c, "completedAt", s_ms_or_null(res, r, 9));
    json_object_set_new(c, "result", s_json_col(res, r, 10));
    return c;
}

/* Publishes every queued command of `devices` (their rows locked by the
 * caller) in the order sent, expiring the stale ones. Inside the caller's
 * transaction. Returns false on a database error. */
static bool s_deliver(tw_t *self, s_out_t *o, const char *const *devices, size_t n, int64_t now,
                      char *err, size_t errlen)
{
    if (!n)
        return true;
    char *lit = mh_pg_text_array(devices, n);
    const char *p[] = {lit};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT id, device_id, name, params::text, expires_ms"
                               " FROM twin.commands WHERE device_id = ANY($1::text[])"
                               " AND status = 'queued' ORDER BY device_id, seq",
                               1, p, err, errlen);
    free(lit);
    if (!res)
        return false;
    int rows = PQntuples(res);
    const char **sent = calloc((size_t)rows + 1, sizeof *sent);
    const char **expired = calloc((size_t)rows + 1, sizeof *expired);
    size_t nsent = 0, nexp = 0;
    for (int r = 0; r < rows; r++) {
        const char *id = PQgetvalue(res, r, 0), *dev = PQgetvalue(res, r, 1),
                   *name = PQgetvalue(res, r, 2);
        int64_t exp = s_i64(res, r, 4);
        if (exp <= now) {
            expired[nexp++] = id;
            s_out_command_event(o, dev, id, name, "expired");
            continue;
        }
        json_t *msg = json_object();
        json_object_set_new(msg, "id", json_string(id));
        json_object_set_new(msg, "name", json_string(name));
        json_object_set_new(msg, "params", s_json_col(res, r, 3));
        json_object_set_new(msg, "expiresAt", json_integer(exp));
        s_out_publish_json(o, dev, "commands", msg);
        sent[nsent++] = id;
        s_out_command_event(o, dev, id, name, "sent");
    }
    char now_s[32];
    snprintf(now_s, sizeof now_s, "%" PRId64, now);
    bool ok = true;
    for (int pass = 0; pass < 2 && ok; pass++) {
        size_t cnt = pass ? nexp : nsent;
        if (!cnt)
            continue;
        char *ids = mh_pg_text_array(pass ? expired : sent, cnt);
        const char *up[] = {ids, now_s};
        ok = mh_pg_ok(self->pg,
                      pass ? "UPDATE twin.commands SET status = 'expired', completed_ms = $2"
                             " WHERE id = ANY($1::text[])"
                           : "UPDATE twin.commands SET status = 'sent', sent_ms = $2"
                             " WHERE id = ANY($1::text[])",
                      2, up, err, errlen);
        free(ids);
    }
    if (ok) {
        mh_counter_add(self->m_commands[1], nsent);
        mh_counter_add(self->m_commands[5], nexp);
    }
    free(sent);
    free(expired);
    PQclear(res);
    return ok;
}

/* ---- device messages, in batches ---- */

typedef struct {
    char id[MH_MAX_DEVICE_ID + 1];
    char *doc_text; /* as read; parsed on first need */
    json_t *doc;
    int64_t version, conn_ms, last_seen;
    bool online, doc_dirty, row_dirty, came_online;
    char source[8];
    char *firmware; /* the column: reported firmware, else the status message's */
} s_dev_t;

typedef struct {
    zhashx_t *devs; /* id -> s_dev_t */
    json_t *acks;   /* [{id, device_id, status, result}] */
    s_out_t out;
    int64_t now;
    mh_counter_t *m_online;
} s_batch_t;

static void s_dev_free(void **item)
{
    s_dev_t *d = *item;
    if (d) {
        free(d->doc_text);
        json_decref(d->doc);
        free(d->firmware);
        free(d);
        *item = NULL;
    }
}

static json_t *s_dev_doc(s_dev_t *d)
{
    if (!d->doc) {
        d->doc = json_loads(d->doc_text ? d->doc_text : "{}", 0, NULL);
        if (!d->doc)
            d->doc = tw_doc_new(NULL, 0);
    }
    return d->doc;
}

static void s_connectivity_event(s_batch_t *b, s_dev_t *d, const char *reason, int64_t ts)
{
    Mh__DeviceConnectivity ev = MH__DEVICE_CONNECTIVITY__INIT;
    ev.device_id = d->id;
    ev.online = d->online;
    ev.ts_ms = ts;
    ev.firmware = d->firmware ? d->firmware : "";
    ev.reason = (char *)reason;
    s_out_event(&b->out, d->online ? "device.online" : "device.offline", &ev.base);
}

static void s_set_online(s_batch_t *b, s_dev_t *d, const char *source, int64_t ts)
{
    if (!d->online) {
        d->online = true;
        d->came_online = true;
        mh_counter_inc(b->m_online);
        s_connectivity_event(b, d, source, ts);
    }
    snprintf(d->source, sizeof d->source, "%s", source);
    d->conn_ms = ts;
    d->row_dirty = true;
}

/* Any message: last seen, and online for a device that never said so. */
static void s_seen(s_batch_t *b, s_dev_t *d, int64_t ts)
{
    if (ts > d->last_seen) {
        d->last_seen = ts;
        d->row_dirty = true;
    }
    if (!d->online && ts >= d->conn_ms)
        s_set_online(b, d, "message", ts);
}

static void s_status(tw_t *self, s_batch_t *b, s_dev_t *d, const Mh__DeviceMessage *m)
{
    int64_t ts = m->received_ms;
    if (ts < d->conn_ms) {
        /* Older than the last change we applied (another gateway was
         * faster): the newer state stands. */
        mh_counter_inc(self->m_rejected[S_R_STALE_STATUS]);
        if (m->online && ts > d->last_seen) {
            d->last_seen = ts;
            d->row_dirty = true;
        }
        return;
    }
    if (m->firmware && *m->firmware &&
        !json_is_string(json_object_get(
            json_object_get(json_object_get(s_dev_doc(d), "state"), "reported"), "firmware"))) {
        free(d->firmware);
        d->firmware = strdup(m->firmware);
        d->row_dirty = true;
    }
    if (m->online) {
        if (ts > d->last_seen)
            d->last_seen = ts;
        s_set_online(b, d, "status", ts);
    } else {
        bool was = d->online;
        d->online = false;
        d->came_online = false;
        d->conn_ms = ts;
        d->row_dirty = true;
        if (was)
            s_connectivity_event(b, d, "last_will", ts);
    }
}

static void s_reject(tw_t *self, s_batch_t *b, s_dev_t *d, const char *sub, int code,
                     const char *msg, json_t *token)
{
    s_reason_t r = code == 409 ? S_R_CONFLICT : code == 413 ? S_R_TOO_LARGE : S_R_BAD_REQUEST;
    mh_counter_inc(self->m_rejected[r]);
    mh_log_limited(&self->rl_warn, MH_LOG_WARN, "refused %s from %s (%d): %s", sub, d->id, code,
                   msg);
    json_t *rej = json_pack("{s:i,s:s}", "code", code, "message", msg);
    if (json_is_string(token))
        json_object_set(rej, "clientToken", token);
    char topic[48];
    snprintf(topic, sizeof topic, "%s/rejected", sub);
    s_out_publish_json(&b->out, d->id, topic, rej);
}

/* Parses a device's JSON payload as an object. */
static json_t *s_parse_object(const Mh__DeviceMessage *m, bool empty_ok, char *why, size_t len)
{
    if (m->payload.len == 0 && empty_ok)
        return json_object();
    json_error_t err;
    json_t *v = mh_json_loadb((const char *)m->payload.data, m->payload.len,
                              JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, MH_JSON_MAX_DEPTH, &err);
    if (!v) {
        snprintf(why, len, "invalid JSON at %d:%d: %s", err.line, err.column, err.text);
        return NULL;
    }
    if (!json_is_object(v)) {
        snprintf(why, len, "the payload must be a JSON object");
        json_decref(v);
        return NULL;
    }
    return v;
}

static bool s_token_ok(json_t *root, char *why, size_t len)
{
    json_t *t = json_object_get(root, "clientToken");
    if (t && (!json_is_string(t) || json_string_length(t) > S_MAX_TOKEN)) {
        snprintf(why, len, "\"clientToken\" must be a string of at most %d bytes", S_MAX_TOKEN);
        return false;
    }
    return true;
}

static void s_twin_get(tw_t *self, s_batch_t *b, s_dev_t *d, const Mh__DeviceMessage *m)
{
    char why[256];
    json_t *root = s_parse_object(m, true, why, sizeof why);
    if (root && !s_token_ok(root, why, sizeof why)) {
        json_decref(root);
        root = NULL;
    }
    if (!root) {
        s_reject(self, b, d, "twin/get", 400, why, NULL);
        return;
    }
    json_t *doc = json_deep_copy(s_dev_doc(d));
    json_t *tok = json_object_get(root, "clientToken");
    if (tok)
        json_object_set(doc, "clientToken", tok);
    s_out_publish_json(&b->out, d->id, "twin/get/accepted", doc);
    json_decref(root);
}

/* Types of the reported keys the platform reads (device-protocol.md). */
static bool s_reported_types_ok(json_t *rep, char *why, size_t len)
{
    json_t *v;
    if ((v = json_object_get(rep, "firmware")) && !json_is_null(v) &&
        (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 64)) {
        snprintf(why, len, "reported \"firmware\" must be a string of 1-64 bytes");
        return false;
    }
    if ((v = json_object_get(rep, "battery")) && !json_is_null(v) &&
        (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 100)) {
        snprintf(why, len, "reported \"battery\" must be a number from 0 to 100");
        return false;
    }
    if ((v = json_object_get(rep, "rssi")) && !json_is_null(v) && !json_is_number(v)) {
        snprintf(why, len, "reported \"rssi\" must be a number (dBm)");
        return false;
    }
    if ((v = json_object_get(rep, "location")) && !json_is_null(v)) {
        json_t *lat = json_object_get(v, "lat"), *lon = json_object_get(v, "lon");
        if (!json_is_object(v) || !json_is_number(lat) || !json_is_number(lon) ||
            fabs(json_number_value(lat)) > 90 || fabs(json_number_value(lon)) > 180) {
            snprintf(why, len,
                     "reported \"location\" must be {\"lat\": -90..90, \"lon\": -180..180}");
            return false;
        }
    }
    return true;
}

/* Validates a twin/update request; on success *reported, *version (-1 =
 * none) and *ts are set. */
static bool s_update_valid(json_t *root, int64_t now, json_t **reported, int64_t *version,
                           int64_t *ts, char *why, size_t len)
{
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "state") && strcmp(key, "clientToken") && strcmp(key, "version") &&
            strcmp(key, "ts")) {
            snprintf(why, len, "unknown field \"%.64s\" (allowed: state, clientToken, version, ts)",
                     key);
            return false;
        }
    }
    if (!s_token_ok(root, why, len))
        return false;
    json_t *state = json_object_get(root, "state");
    if (!json_is_object(state)) {
        snprintf(why, len, "\"state\" must be an object with \"reported\"");
        return false;
    }
    json_object_foreach(state, key, v)
    {
        if (strcmp(key, "reported")) {
            snprintf(why, len,
                     strcmp(key, "desired") == 0
                         ? "a device may only update state.reported; desired is the operators'"
                         : "unknown field \"state.%.64s\" (allowed: reported)",
                     key);
            return false;
        }
    }
    *reported = json_object_get(state, "reported");
    if (!json_is_object(*reported)) {
        snprintf(why, len, "\"state.reported\" must be an object");
        return false;
    }
    v = json_object_get(root, "version");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 1)) {
        snprintf(why, len, "\"version\" must be a positive integer");
        return false;
    }
    *version = v ? json_integer_value(v) : -1;
    v = json_object_get(root, "ts");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 0)) {
        snprintf(why, len, "\"ts\" must be milliseconds since the epoch");
        return false;
    }
    if (v && json_integer_value(v) > now + S_MAX_FUTURE) {
        snprintf(why, len, "\"ts\" is more than an hour in the future");
        return false;
    }
    *ts = v ? json_integer_value(v) : now;
    return s_reported_types_ok(*reported, why, len);
}

static void s_twin_changed_event(s_batch_t *b, s_dev_t *d, json_t *before_rep, json_t *doc)
{
    json_t *rep = json_object_get(json_object_get(doc, "state"), "reported");
    Mh__TwinChanged ev = MH__TWIN_CHANGED__INIT;
    ev.device_id = d->id;
    ev.version = tw_doc_version(doc);
    json_t *fw = json_object_get(rep, "firmware"), *loc = json_object_get(rep, "location");
    ev.firmware_changed = !json_equal(fw, json_object_get(before_rep, "firmware")) &&
                          (fw || json_object_get(before_rep, "firmware"));
    ev.firmware = (char *)(json_is_string(fw) ? json_string_value(fw) : "");
    ev.location_changed = !json_equal(loc, json_object_get(before_rep, "location")) &&
                          (loc || json_object_get(before_rep, "location"));
    if (json_is_object(loc)) {
        ev.has_location = true;
        ev.lat = json_number_value(json_object_get(loc, "lat"));
        ev.lon = json_number_value(json_object_get(loc, "lon"));
    }
    json_t *bat = json_object_get(rep, "battery"), *rssi = json_object_get(rep, "rssi");
    if ((ev.has_battery = json_is_number(bat)))
        ev.battery = json_number_value(bat);
    if ((ev.has_rssi = json_is_number(rssi)))
        ev.rssi = json_number_value(rssi);
    s_out_event(&b->out, "twin.changed", &ev.base);
}

/* Publishes twin/delta when the delta is non-empty and differs from `old`. */
static void s_maybe_delta(s_out_t *o, const char *device, json_t *old, json_t *doc)
{
    json_t *delta = tw_doc_delta(doc);
    if (json_object_size(delta) == 0 || (old && json_equal(old, delta)))
        return;
    json_t *msg = json_object();
    json_object_set(msg, "state", delta);
    json_object_set_new(msg, "version", json_integer(tw_doc_version(doc)));
    json_object_set(msg, "timestamp", json_object_get(doc, "timestamp"));
    s_out_publish_json(o, device, "twin/delta", msg);
}

static void s_twin_update(tw_t *self, s_batch_t *b, s_dev_t *d, const Mh__DeviceMessage *m)
{
    char why[256];
    json_t *root = s_parse_object(m, false, why, sizeof why);
    if (!root) {
        mh_counter_inc(self->m_rejected[S_R_BAD_JSON]);
        s_reject(self, b, d, "twin/update", 400, why, NULL);
        return;
    }
    json_t *tok = json_object_get(root, "clientToken");
    json_t *reported = NULL;
    int64_t version = -1, ts = 0;
    if (!s_update_valid(root, b->now, &reported, &version, &ts, why, sizeof why)) {
        s_reject(self, b, d, "twin/update", 400, why, json_is_string(tok) ? tok : NULL);
        json_decref(root);
        return;
    }
    json_t *doc = s_dev_doc(d);
    json_t *old_delta = json_deep_copy(tw_doc_delta(doc));
    json_t *before_rep = json_deep_copy(json_object_get(json_object_get(doc, "state"), "reported"));
    bool changed = false;
    tw_status_t st = tw_apply_reported(doc, reported, ts, version, &changed, why, sizeof why);
    if (st != TW_OK) {
        s_reject(self, b, d, "twin/update", (int)st, why, tok);
    } else {
        mh_counter_inc(self->m_updates_accepted);
        if (changed) {
            mh_counter_inc(self->m_updates_changed);
            d->doc_dirty = d->row_dirty = true;
            d->version = tw_doc_version(doc);
            json_t *fw = json_object_get(json_object_get(json_object_get(doc, "state"), "reported"),
                                         "firmware");
            if (json_is_string(fw) &&
                (!d->firmware || strcmp(d->firmware, json_string_value(fw)))) {
                free(d->firmware);
                d->firmware = strdup(json_string_value(fw));
            }
            s_twin_changed_event(b, d, before_rep, doc);
        }
        json_t *acc = json_object();
        json_object_set_new(acc, "state", json_pack("{s:O}", "reported", reported));
        json_object_set_new(acc, "version", json_integer(tw_doc_version(doc)));
        json_object_set_new(acc, "timestamp", json_integer(b->now));
        if (tok)
            json_object_set(acc, "clientToken", tok);
        s_out_publish_json(&b->out, d->id, "twin/update/accepted", acc);
        if (changed)
            s_maybe_delta(&b->out, d->id, old_delta, doc);
    }
    json_decref(old_delta);
    json_decref(before_rep);
    json_decref(root);
}

static void s_command_ack(tw_t *self, s_batch_t *b, s_dev_t *d, const Mh__DeviceMessage *m)
{
    char why[256];
    json_t *root = s_parse_object(m, false, why, sizeof why);
    const char *st = NULL;
    json_t *id = NULL, *result = NULL;
    if (root) {
        id = json_object_get(root, "id");
        st = json_string_value(json_object_get(root, "status"));
        result = json_object_get(root, "result");
        if (!json_is_string(id) ||
            !mh_device_id_valid(json_string_value(id), json_string_length(id)))
            snprintf(why, sizeof why, "\"id\" must be a command id");
        else if (!st || (strcmp(st, "succeeded") && strcmp(st, "failed") && strcmp(st, "rejected")))
            snprintf(why, sizeof why, "\"status\" must be succeeded, failed or rejected");
        else if (result && !json_is_object(result) && !json_is_null(result))
            snprintf(why, sizeof why, "\"result\" must be an object");
        else if (result && tw_size(result) > S_MAX_PARAMS)
            snprintf(why, sizeof why, "\"result\" is over %d bytes", S_MAX_PARAMS);
        else
            why[0] = 0;
    }
    if (!root || why[0]) {
        mh_counter_inc(self->m_rejected[S_R_BAD_ACK]);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "ignored commands/ack from %s: %s", d->id, why);
        json_decref(root);
        return;
    }
    json_array_append_new(b->acks,
                          json_pack("{s:O,s:s,s:s,s:O}", "id", id, "device_id", d->id, "status", st,
                                    "result", result ? result : json_null()));
    json_decref(root);
}

typedef struct {
    Mh__DeviceMessage *msg;
    Mh__DeviceSeen *seen;
} s_msg_t;

static void s_msgs_free(s_msg_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i].msg)
            mh__device_message__free_unpacked(v[i].msg, NULL);
        if (v[i].seen)
            mh__device_seen__free_unpacked(v[i].seen, NULL);
    }
    free(v);
}

static s_msg_t *s_decode(tw_t *self, zmsg_t **raw, size_t n)
{
    s_msg_t *v = calloc(n + 1, sizeof *v);
    for (size_t i = 0; i < n; i++) {
        zframe_t *f = zmsg_first(raw[i]);
        Mh__Envelope *env = f ? mh_envelope_unpack(f) : NULL;
        if (env && strcmp(env->type, "device.message") == 0)
            v[i].msg = mh__device_message__unpack(NULL, env->body.len, env->body.data);
        else if (env && strcmp(env->type, "device.seen") == 0)
            v[i].seen = mh__device_seen__unpack(NULL, env->body.len, env->body.data);
        if (v[i].msg && !mh_device_id_valid(v[i].msg->device_id, strlen(v[i].msg->device_id))) {
            mh__device_message__free_unpacked(v[i].msg, NULL);
            v[i].msg = NULL;
        }
        if (v[i].seen)
            for (size_t j = 0; j < v[i].seen->n_device_ids; j++)
                if (!mh_device_id_valid(v[i].seen->device_ids[j],
                                        strlen(v[i].seen->device_ids[j]))) {
                    mh__device_seen__free_unpacked(v[i].seen, NULL);
                    v[i].seen = NULL;
                    break;
                }
        if (!v[i].msg && !v[i].seen) {
            mh_counter_inc(self->m_rejected[S_R_MALFORMED]);
            mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                           "malformed message on the device socket, ignoring");
        } else if (v[i].msg && v[i].msg->kind < 4) {
            mh_counter_inc(self->m_messages[v[i].msg->kind]);
        } else if (v[i].seen) {
            mh_counter_inc(self->m_messages[4]);
        }
        mh_envelope_free(&env);
    }
    return v;
}

/* Loads and locks the rows of every device the batch names, in id order. */
static bool s_load(tw_t *self, s_batch_t *b, s_msg_t *v, size_t n, char *err, size_t errlen)
{
    zhashx_t *ids = zhashx_new();
    for (size_t i = 0; i < n; i++) {
        if (v[i].msg)
            zhashx_insert(ids, v[i].msg->device_id, (void *)1);
        if (v[i].seen)
            for (size_t j = 0; j < v[i].seen->n_device_ids; j++)
                zhashx_insert(ids, v[i].seen->device_ids[j], (void *)1);
    }
    zlistx_t *keys = zhashx_keys(ids);
    size_t nk = zlistx_size(keys), k = 0;
    const char **arr = calloc(nk + 1, sizeof *arr);
    for (const char *key = zlistx_first(keys); key; key = zlistx_next(keys))
        arr[k++] = key;
    char *lit = mh_pg_text_array(arr, nk);
    free(arr);
    const char *p[] = {lit};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT id, doc::text, version, online, online_source, conn_ms,"
                               " last_seen_ms, firmware FROM twin.devices"
                               " WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
                               1, p, err, errlen);
    free(lit);
    zlistx_destroy(&keys);
    zhashx_destroy(&ids);
    if (!res)
        return false;
    for (int r = 0; r < PQntuples(res); r++) {
        s_dev_t *d = calloc(1, sizeof *d);
        snprintf(d->id, sizeof d->id, "%s", PQgetvalue(res, r, 0));
        d->doc_text = strdup(PQgetvalue(res, r, 1));
        d->version = s_i64(res, r, 2);
        d->online = strcmp(PQgetvalue(res, r, 3), "t") == 0;
        snprintf(d->source, sizeof d->source, "%s", PQgetvalue(res, r, 4));
        d->conn_ms = s_i64(res, r, 5);
        d->last_seen = s_i64(res, r, 6);
        d->firmware = PQgetisnull(res, r, 7) ? NULL : strdup(PQgetvalue(res, r, 7));
        zhashx_insert(b->devs, d->id, d);
    }
    PQclear(res);
    return true;
}

/* Writes back every changed row in one statement, then the acks. */
static bool s_store(tw_t *self, s_batch_t *b, char *err, size_t errlen)
{
    json_t *rows = json_array();
    for (s_dev_t *d = zhashx_first(b->devs); d; d = zhashx_next(b->devs)) {
        if (!d->row_dirty)
            continue;
        json_t *row = json_object();
        json_object_set_new(row, "id", json_string(d->id));
        json_object_set(row, "doc", d->doc_dirty ? d->doc : json_null());
        json_object_set_new(row, "version", json_integer(d->version));
        json_object_set_new(row, "firmware", d->firmware ? json_string(d->firmware) : json_null());
        json_object_set_new(row, "online", json_boolean(d->online));
        json_object_set_new(row, "source", json_string(d->source));
        json_object_set_new(row, "conn_ms", json_integer(d->conn_ms));
        json_object_set_new(row, "last_seen",
                            d->last_seen ? json_integer(d->last_seen) : json_null());
        json_array_append_new(rows, row);
    }
    bool ok = true;
    if (json_array_size(rows)) {
        char *text = s_dumps(rows);
        const char *p[] = {text};
        ok = mh_pg_ok(self->pg,
                      "UPDATE twin.devices d SET doc = COALESCE(u.doc, d.doc), version = u.version,"
                      " firmware = u.firmware, online = u.online, online_source = u.source,"
                      " conn_ms = u.conn_ms, last_seen_ms = u.last_seen"
                      " FROM jsonb_to_recordset($1::jsonb) AS u(id text, doc jsonb, version bigint,"
                      " firmware text, online boolean, source text, conn_ms bigint,"
                      " last_seen bigint) WHERE d.id = u.id",
                      1, p, err, errlen);
        free(text);
    }
    json_decref(rows);
    if (ok && json_array_size(b->acks)) {
        char *text = s_dumps(b->acks), now_s[32];
        snprintf(now_s, sizeof now_s, "%" PRId64, b->now);
        const char *p[] = {text, now_s};
        PGresult *res = mh_pg_exec(
            self->pg, PGRES_TUPLES_OK,
            "UPDATE twin.commands c SET status = u.status, result = u.result, completed_ms = $2"
            " FROM jsonb_to_recordset($1::jsonb) AS u(id text, device_id text, status text,"
            " result jsonb) WHERE c.id = u.id AND c.device_id = u.device_id AND c.status = 'sent'"
            " RETURNING c.device_id, c.id, c.name, c.status",
            2, p, err, errlen);
        free(text);
        ok = res != NULL;
        if (res) {
            int rows_n = PQntuples(res);
            for (int r = 0; r < rows_n; r++) {
                s_out_command_event(&b->out, PQgetvalue(res, r, 0), PQgetvalue(res, r, 1),
                                    PQgetvalue(res, r, 2), PQgetvalue(res, r, 3));
                mh_counter_inc(self->m_commands[s_status_index(PQgetvalue(res, r, 3))]);
            }
            if ((size_t)rows_n < json_array_size(b->acks)) {
                mh_counter_add(self->m_rejected[S_R_UNKNOWN_COMMAND],
                               json_array_size(b->acks) - (size_t)rows_n);
                mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                               "%zu command acks named no command waiting for an ack (unknown id,"
                               " or already finished); ignored",
                               json_array_size(b->acks) - (size_t)rows_n);
            }
            PQclear(res);
        }
    }
    return ok;
}

/* One attempt at a batch: everything in one transaction. */
static int s_batch_try(tw_t *self, s_msg_t *v, size_t n, s_out_t *out, char *err, size_t errlen)
{
    s_batch_t b = {.now = mh_now_ms(), .acks = json_array(), .m_online = self->m_online};
    b.devs = zhashx_new();
    zhashx_set_destructor(b.devs, s_dev_free);
    b.out = *out;
    bool ok = mh_pg_begin(self->pg, err, errlen) && s_load(self, &b, v, n, err, errlen);
    if (ok) {
        for (size_t i = 0; i < n; i++) {
            if (v[i].seen) {
                for (size_t j = 0; j < v[i].seen->n_device_ids; j++) {
                    s_dev_t *d = zhashx_lookup(b.devs, v[i].seen->device_ids[j]);
                    int64_t ts =
                        j < v[i].seen->n_seen_ms ? v[i].seen->seen_ms[j] : v[i].seen->ts_ms;
                    if (d)
                        s_seen(&b, d, ts);
                    else
                        mh_counter_inc(self->m_rejected[S_R_UNREGISTERED]);
                }
                continue;
            }
            Mh__DeviceMessage *m = v[i].msg;
            if (!m)
                continue;
            s_dev_t *d = zhashx_lookup(b.devs, m->device_id);
            if (!d) {
                mh_counter_inc(self->m_rejected[S_R_UNREGISTERED]);
                mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                               "message from unregistered device %s ignored", m->device_id);
                continue;
            }
            if (m->kind == MH__DEVICE_MESSAGE__KIND__STATUS) {
                s_status(self, &b, d, m);
                continue;
            }
            s_seen(&b, d, m->received_ms);
            if (m->kind == MH__DEVICE_MESSAGE__KIND__TWIN_GET)
                s_twin_get(self, &b, d, m);
            else if (m->kind == MH__DEVICE_MESSAGE__KIND__TWIN_UPDATE)
                s_twin_update(self, &b, d, m);
            else if (m->kind == MH__DEVICE_MESSAGE__KIND__COMMAND_ACK)
                s_command_ack(self, &b, d, m);
        }
        /* Devices that came online get their delta and their queue. */
        size_t cap = zhashx_size(b.devs), nc = 0;
        const char **online = calloc(cap + 1, sizeof *online);
        for (s_dev_t *d = zhashx_first(b.devs); d; d = zhashx_next(b.devs)) {
            if (!d->came_online)
                continue;
            online[nc++] = d->id;
            s_maybe_delta(&b.out, d->id, NULL, s_dev_doc(d));
        }
        ok = s_store(self, &b, err, errlen) &&
             s_deliver(self, &b.out, online, nc, b.now, err, errlen) &&
             mh_pg_commit(self->pg, err, errlen);
        free(online);
    }
    if (!ok)
        mh_pg_rollback(self->pg);
    *out = b.out;
    zhashx_destroy(&b.devs);
    json_decref(b.acks);
    return ok ? 0 : mh_pg_lost(self->pg) ? -EIO : mh_pg_retryable(self->pg) ? -EAGAIN : -EINVAL;
}

/* Handles a batch; returns -EIO when the database is away (the caller keeps
 * the batch and tries again), else 0. */
static int s_batch(tw_t *self, zmsg_t **raw, size_t n)
{
    s_msg_t *v = s_decode(self, raw, n);
    s_out_t out;
    s_out_init(&out);
    char err[512];
    int64_t t0 = mh_mono_ms();
    int rc = -EAGAIN;
    for (int attempt = 0; attempt < 5 && rc == -EAGAIN; attempt++) {
        if (attempt)
            mh_counter_inc(self->m_retries);
        s_out_clear(&out);
        rc = s_batch_try(self, v, n, &out, err, sizeof err);
    }
    if (rc == -EINVAL && n > 1) {
        /* One message the database refuses must not hold back the rest. */
        s_out_clear(&out);
        for (size_t i = 0; i < n && rc != -EIO; i++) {
            rc = s_batch_try(self, &v[i], 1, &out, err, sizeof err);
            if (rc == 0)
                s_out_flush(self, &out);
            else if (rc != -EIO) {
                mh_counter_inc(self->m_db_errors);
                mh_log_limited(&self->rl_db, MH_LOG_ERROR, "device message refused: %s", err);
                s_out_clear(&out);
            }
        }
        rc = rc == -EIO ? -EIO : 0;
    } else if (rc == 0) {
        mh_counter_inc(self->m_commits);
        mh_histogram_observe(self->m_batch_ms, (double)(mh_mono_ms() - t0));
        s_out_flush(self, &out);
    } else {
        mh_counter_inc(self->m_db_errors);
        mh_log_limited(&self->rl_db, MH_LOG_ERROR, "device messages not applied: %s", err);
        if (rc != -EIO)
            rc = 0; /* dropped, counted */
    }
    s_out_destroy(&out);
    s_msgs_free(v, n);
    return rc == -EIO ? -EIO : 0;
}

/* ---- the operator RPC ---- */

typedef struct {
    Mh__TwinReply rep;
    char *body; /* owned */
    char **ids; /* LIST_IDS, owned */
    char msg[512];
    char next[160];
} s_reply_t;

static void s_fail(s_reply_t *r, uint32_t status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void s_fail(s_reply_t *r, uint32_t status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    r->rep.status = status;
    r->rep.error_code = (char *)code;
    r->rep.message = r->msg;
}

static void s_ok_json(s_reply_t *r, uint32_t status, json_t *body)
{
    r->rep.status = status;
    free(r->body);
    r->body = s_dumps(body);
    r->rep.body_json = r->body ? r->body : "";
    json_decref(body);
}

static void s_db_fail(tw_t *self, s_reply_t *r, const char *err)
{
    mh_counter_inc(self->m_db_errors);
    mh_log_limited(&self->rl_db, MH_LOG_ERROR, "database error: %s", err);
    if (mh_pg_lost(self->pg))
        s_fail(r, 503, "unavailable", "the database is unavailable; try again");
    else
        s_fail(r, 500, "internal", "database error");
}

/* Parses optional JSON object text from a request. NULL text or "" = absent
 * (returns NULL, *bad false). */
static json_t *s_req_object(const char *text, const char *what, s_reply_t *r, bool *bad)
{
    *bad = false;
    if (!text || !*text)
        return NULL;
    json_error_t err;
    json_t *v =
        mh_json_loads(text, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, MH_JSON_MAX_DEPTH, &err);
    if (!v || !json_is_object(v)) {
        s_fail(r, 400, "bad_request", "\"%s\" must be a JSON object%s%s", what, v ? "" : ": ",
               v ? "" : err.text);
        json_decref(v);
        *bad = true;
        return NULL;
    }
    return v;
}

static bool s_check_id(const char *id, s_reply_t *r)
{
    if (!id || !mh_device_id_valid(id, strlen(id))) {
        s_fail(r, 400, "bad_request", "a device id is 1-64 characters of A-Z a-z 0-9 . _ -");
        return false;
    }
    return true;
}

#define S_DEVICE_COLS                                                                              \
    "id, (doc->'tags')::text, online, last_seen_ms, firmware, created_ms, version, conn_ms"

static json_t *s_device_json(PGresult *res, int r)
{
    json_t *d = json_object();
    json_object_set_new(d, "id", json_string(PQgetvalue(res, r, 0)));
    json_object_set_new(d, "tags", s_json_col(res, r, 1));
    bool online = strcmp(PQgetvalue(res, r, 2), "t") == 0;
    json_object_set_new(d, "status", json_string(online ? "online" : "offline"));
    json_object_set_new(d, "lastSeen", s_ms_or_null(res, r, 3));
    json_object_set_new(d, "firmware",
                        PQgetisnull(res, r, 4) ? json_null() : json_string(PQgetvalue(res, r, 4)));
    json_object_set_new(d, "createdAt", json_integer(s_i64(res, r, 5)));
    json_object_set_new(d, "version", json_integer(s_i64(res, r, 6)));
    int64_t conn = s_i64(res, r, 7);
    json_object_set_new(d, online ? "connectedAt" : "disconnectedAt",
                        conn ? json_integer(conn) : json_null());
    return d;
}

static void s_hex(const char *in, char *out, size_t outlen)
{
    size_t j = 0;
    for (size_t i = 0; in[i] && j + 2 < outlen; i++)
        j += (size_t)snprintf(out + j, outlen - j, "%02x", (unsigned char)in[i]);
    out[j] = 0;
}

static bool s_unhex(const char *in, char *out, size_t outlen)
{
    size_t n = strlen(in);
    if (n % 2 || n / 2 >= outlen)
        return false;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(in + 2 * i, "%2x", &v) != 1 || !isxdigit((unsigned char)in[2 * i]) ||
            !isxdigit((unsigned char)in[2 * i + 1]))
            return false;
        out[i] = (char)v;
    }
    out[n / 2] = 0;
    return true;
}

static uint32_t s_limit(const Mh__TwinRequest *q, uint32_t max, s_reply_t *r)
{
    if (q->limit > max) {
        s_fail(r, 400, "bad_request", "\"limit\" is at most %u", max);
        return 0;
    }
    return q->limit ? q->limit : 100;
}

static void s_rpc_register(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    bool bad;
    json_t *tags = s_req_object(q->tags_json, "tags", r, &bad);
    if (bad)
        return;
    if (tags && (tw_depth(tags) > TW_MAX_DEPTH || tw_size(tags) > TW_MAX_TAGS)) {
        s_fail(r, 413, "too_large", "tags are limited to %d bytes and %d levels", TW_MAX_TAGS,
               TW_MAX_DEPTH);
        json_decref(tags);
        return;
    }
    int64_t now = mh_now_ms();
    json_t *doc = tw_doc_new(tags, now);
    json_decref(tags);
    char *text = s_dumps(doc), now_s[32], err[512];
    json_decref(doc);
    snprintf(now_s, sizeof now_s, "%" PRId64, now);
    const char *p[] = {q->device_id, text, now_s};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "INSERT INTO twin.devices (id, doc, version, created_ms)"
                               " VALUES ($1, $2::jsonb, 1, $3::bigint) ON CONFLICT (id) DO NOTHING"
                               " RETURNING " S_DEVICE_COLS,
                               3, p, err, sizeof err);
    free(text);
    if (!res) {
        s_db_fail(self, r, err);
        return;
    }
    if (PQntuples(res) == 0) {
        s_fail(r, 409, "conflict", "device %s is already registered", q->device_id);
    } else {
        s_ok_json(r, 201, s_device_json(res, 0));
        Mh__DeviceRegistered ev = MH__DEVICE_REGISTERED__INIT;
        ev.device_id = q->device_id;
        if (self->pub)
            mh_event_publish(self->pub, "device.registered", &ev.base);
    }
    PQclear(res);
}

static void s_rpc_get_device(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    char err[512];
    const char *p[] = {q->device_id};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT " S_DEVICE_COLS " FROM twin.devices WHERE id = $1", 1, p,
                               err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    if (PQntuples(res) == 0)
        s_fail(r, 404, "not_found", "no device %s", q->device_id);
    else
        s_ok_json(r, 200, s_device_json(res, 0));
    PQclear(res);
}

static void s_rpc_list_devices(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    uint32_t limit = s_limit(q, 1000, r);
    if (!limit)
        return;
    char cursor[MH_MAX_DEVICE_ID + 1] = "", upper[MH_MAX_DEVICE_ID + 1] = "";
    if (*q->cursor && (!s_unhex(q->cursor, cursor, sizeof cursor) ||
                       !mh_device_id_valid(cursor, strlen(cursor)))) {
        s_fail(r, 400, "bad_request", "\"cursor\" is not one this API returned");
        return;
    }
    if (*q->status && strcmp(q->status, "online") && strcmp(q->status, "offline")) {
        s_fail(r, 400, "bad_request", "\"status\" is online or offline");
        return;
    }
    if (*q->prefix) {
        if (!mh_device_id_valid(q->prefix, strlen(q->prefix))) {
            s_fail(r, 400, "bad_request", "\"q\" is an id prefix: characters A-Z a-z 0-9 . _ -");
            return;
        }
        snprintf(upper, sizeof upper, "%s", q->prefix);
        upper[strlen(upper) - 1]++; /* every id with the prefix sorts below this */
    }
    json_t *tags = json_array();
    for (size_t i = 0; i < q->n_tags; i++) {
        const char *colon = strchr(q->tags[i], ':');
        if (!colon || colon == q->tags[i]) {
            s_fail(r, 400, "bad_request", "\"tag\" filters are key:value");
            json_decref(tags);
            return;
        }
        json_array_append_new(
            tags, json_pack("[s#,s]", q->tags[i], (int)(colon - q->tags[i]), colon + 1));
    }
    char *tags_text = json_array_size(tags) ? s_dumps(tags) : NULL;
    json_decref(tags);
    char lim[16], err[512];
    snprintf(lim, sizeof lim, "%u", limit + 1);
    const char *p[] = {*cursor ? cursor : NULL,
                       *q->status ? (strcmp(q->status, "online") == 0 ? "t" : "f") : NULL,
                       *q->firmware ? q->firmware : NULL,
                       *q->prefix ? q->prefix : NULL,
                       *q->prefix ? upper : NULL,
                       tags_text,
                       lim};
    PGresult *res = mh_pg_exec(
        self->pg, PGRES_TUPLES_OK,
        "SELECT " S_DEVICE_COLS " FROM twin.devices d"
        " WHERE ($1::text IS NULL OR id > $1) AND ($2::boolean IS NULL OR online = $2)"
        " AND ($3::text IS NULL OR firmware = $3)"
        " AND ($4::text IS NULL OR (id >= $4 AND id < $5))"
        " AND ($6::jsonb IS NULL OR NOT EXISTS (SELECT 1 FROM jsonb_array_elements($6::jsonb) f"
        "   WHERE (d.doc->'tags')->>(f.value->>0) IS DISTINCT FROM f.value->>1))"
        " ORDER BY id LIMIT $7::int",
        7, p, err, sizeof err);
    free(tags_text);
    if (!res)
        return s_db_fail(self, r, err);
    int rows = PQntuples(res);
    json_t *items = json_array();
    for (int i = 0; i < rows && (uint32_t)i < limit; i++)
        json_array_append_new(items, s_device_json(res, i));
    json_t *next = json_null();
    if ((uint32_t)rows > limit) {
        char hex[2 * MH_MAX_DEVICE_ID + 2];
        s_hex(PQgetvalue(res, (int)limit - 1, 0), hex, sizeof hex);
        next = json_string(hex);
    }
    PQclear(res);
    s_ok_json(r, 200, json_pack("{s:o,s:o}", "items", items, "next", next));
}

static void s_rpc_delete(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    char err[512];
    const char *p[] = {q->device_id};
    PGresult *res =
        mh_pg_exec(self->pg, PGRES_TUPLES_OK, "DELETE FROM twin.devices WHERE id = $1 RETURNING id",
                   1, p, err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    if (PQntuples(res) == 0) {
        s_fail(r, 404, "not_found", "no device %s", q->device_id);
    } else {
        r->rep.status = 204;
        Mh__DeviceDeleted ev = MH__DEVICE_DELETED__INIT;
        ev.device_id = q->device_id;
        if (self->pub)
            mh_event_publish(self->pub, "device.deleted", &ev.base);
    }
    PQclear(res);
}

static void s_rpc_get_twin(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    char err[512];
    const char *p[] = {q->device_id};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT doc::text, version FROM twin.devices WHERE id = $1", 1, p,
                               err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    if (PQntuples(res) == 0) {
        s_fail(r, 404, "not_found", "no device %s", q->device_id);
    } else {
        r->rep.version = s_i64(res, 0, 1);
        s_ok_json(r, 200, s_json_col(res, 0, 0));
    }
    PQclear(res);
}

static void s_rpc_patch_twin(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    bool bad;
    json_t *desired = s_req_object(q->desired_json, "desired", r, &bad);
    if (bad)
        return;
    json_t *tags = s_req_object(q->tags_json, "tags", r, &bad);
    if (bad) {
        json_decref(desired);
        return;
    }
    if (!desired && !tags) {
        s_fail(r, 400, "bad_request", "the patch needs \"desired\" and/or \"tags\"");
        return;
    }
    char err[512], why[256];
    const char *p[] = {q->device_id};
    s_out_t out;
    s_out_init(&out);
    PGresult *res = NULL;
    for (int attempt = 0; attempt < 5; attempt++) {
        s_out_clear(&out);
        if (!mh_pg_begin(self->pg, err, sizeof err) ||
            !(res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT doc::text, online FROM twin.devices WHERE id = $1"
                               " FOR UPDATE",
                               1, p, err, sizeof err))) {
            mh_pg_rollback(self->pg);
            if (mh_pg_retryable(self->pg))
                continue;
            s_db_fail(self, r, err);
            break;
        }
        if (PQntuples(res) == 0) {
            s_fail(r, 404, "not_found", "no device %s", q->device_id);
            mh_pg_rollback(self->pg);
            break;
        }
        json_t *doc = s_json_col(res, 0, 0);
        bool online = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
        PQclear(res);
        res = NULL;
        int64_t now = mh_now_ms();
        if (q->if_match && q->if_match != tw_doc_version(doc)) {
            s_fail(r, 412, "precondition_failed",
                   "If-Match %" PRId64 " but the twin is at %" PRId64, q->if_match,
                   tw_doc_version(doc));
            json_decref(doc);
            mh_pg_rollback(self->pg);
            break;
        }
        json_t *old_delta = json_deep_copy(tw_doc_delta(doc));
        bool changed = false;
        tw_status_t st = tw_apply_operator(doc, desired, tags, now, &changed, why, sizeof why);
        bool ok = true;
        if (st != TW_OK) {
            s_fail(r, (uint32_t)st, st == TW_TOO_LARGE ? "too_large" : "bad_request", "%s", why);
            mh_pg_rollback(self->pg);
        } else if (changed) {
            char *text = s_dumps(doc), ver[32];
            snprintf(ver, sizeof ver, "%" PRId64, tw_doc_version(doc));
            const char *up[] = {q->device_id, text, ver};
            ok = mh_pg_ok(self->pg,
                          "UPDATE twin.devices SET doc = $2::jsonb, version = $3::bigint"
                          " WHERE id = $1",
                          3, up, err, sizeof err) &&
                 mh_pg_commit(self->pg, err, sizeof err);
            free(text);
            if (ok) {
                if (online)
                    s_maybe_delta(&out, q->device_id, old_delta, doc);
                Mh__TwinChanged ev = MH__TWIN_CHANGED__INIT;
                ev.device_id = q->device_id;
                ev.version = tw_doc_version(doc);
                ev.firmware = "";
                s_out_event(&out, "twin.changed", &ev.base);
            }
        } else {
            mh_pg_rollback(self->pg);
        }
        json_decref(old_delta);
        if (!ok) {
            json_decref(doc);
            mh_pg_rollback(self->pg);
            if (mh_pg_retryable(self->pg))
                continue;
            s_db_fail(self, r, err);
            break;
        }
        if (st == TW_OK) {
            r->rep.version = tw_doc_version(doc);
            s_ok_json(r, 200, doc);
            s_out_flush(self, &out);
        } else {
            json_decref(doc);
        }
        break;
    }
    s_out_destroy(&out);
    json_decref(desired);
    json_decref(tags);
}

static json_t *s_command_row_json(PGresult *res)
{
    return PQntuples(res) ? s_command_json(res, 0) : NULL;
}

static void s_rpc_send_command(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    if (!s_command_name_valid(q->command_name)) {
        s_fail(r, 400, "bad_request", "\"name\" is 1-64 characters of A-Z a-z 0-9 . _ -");
        return;
    }
    if (q->ttl_s < 0 || q->ttl_s > S_MAX_TTL_S || q->timeout_s < 0 || q->timeout_s > S_MAX_TMO_S) {
        s_fail(r, 400, "bad_request", "\"ttl\" is 1..%lld seconds and \"timeout\" 1..%lld seconds",
               S_MAX_TTL_S, S_MAX_TMO_S);
        return;
    }
    bool bad;
    json_t *params = s_req_object(q->params_json, "params", r, &bad);
    if (bad)
        return;
    if (params && (tw_size(params) > S_MAX_PARAMS || tw_depth(params) > TW_MAX_DEPTH)) {
        s_fail(r, 413, "too_large", "\"params\" is limited to %d bytes and %d levels", S_MAX_PARAMS,
               TW_MAX_DEPTH);
        json_decref(params);
        return;
    }
    char *ptext = params ? s_dumps(params) : strdup("{}");
    json_decref(params);
    int64_t now = mh_now_ms();
    int64_t ttl = q->ttl_s ? q->ttl_s * 1000 : self->cfg->command_ttl_ms;
    int64_t tmo = q->timeout_s ? q->timeout_s * 1000 : self->cfg->command_timeout_ms;
    char now_s[32], exp_s[32], tmo_s[32], err[512];
    snprintf(now_s, sizeof now_s, "%" PRId64, now);
    snprintf(exp_s, sizeof exp_s, "%" PRId64, now + ttl);
    snprintf(tmo_s, sizeof tmo_s, "%" PRId64, tmo);
    s_out_t out;
    s_out_init(&out);
    for (int attempt = 0; attempt < 5; attempt++) {
        s_out_clear(&out);
        const char *p[] = {q->device_id};
        PGresult *res = NULL;
        bool ok = mh_pg_begin(self->pg, err, sizeof err) &&
                  (res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                                    "SELECT online FROM twin.devices WHERE id = $1 FOR UPDATE", 1,
                                    p, err, sizeof err));
        if (ok && PQntuples(res) == 0) {
            s_fail(r, 404, "not_found", "no device %s", q->device_id);
            PQclear(res);
            mh_pg_rollback(self->pg);
            break;
        }
        bool online = ok && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        res = NULL;
        const char *ip[] = {q->device_id, q->command_name, ptext, now_s, exp_s, tmo_s};
        ok = ok && (res = mh_pg_exec(
                        self->pg, PGRES_TUPLES_OK,
                        "INSERT INTO twin.commands (id, device_id, name, params, status,"
                        " created_ms, expires_ms, timeout_ms) VALUES (gen_random_uuid()::text,"
                        " $1, $2, $3::jsonb, 'queued', $4::bigint, $5::bigint, $6::bigint)"
                        " RETURNING id",
                        6, ip, err, sizeof err));
        char cid[64] = "";
        if (ok) {
            snprintf(cid, sizeof cid, "%s", PQgetvalue(res, 0, 0));
            PQclear(res);
            res = NULL;
            s_out_command_event(&out, q->device_id, cid, q->command_name, "queued");
            mh_counter_inc(self->m_commands[0]);
        }
        const char *devs[] = {q->device_id};
        ok = ok && (!online || s_deliver(self, &out, devs, 1, now, err, sizeof err));
        const char *gp[] = {cid};
        ok = ok && (res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                                     "SELECT " S_COMMAND_COLS " FROM twin.commands WHERE id = $1",
                                     1, gp, err, sizeof err));
        json_t *cmd = ok ? s_command_row_json(res) : NULL;
        PQclear(res);
        ok = ok && cmd && mh_pg_commit(self->pg, err, sizeof err);
        if (ok) {
            s_ok_json(r, 202, cmd);
            s_out_flush(self, &out);
            break;
        }
        json_decref(cmd);
        mh_pg_rollback(self->pg);
        if (!mh_pg_retryable(self->pg)) {
            s_db_fail(self, r, err);
            break;
        }
    }
    s_out_destroy(&out);
    free(ptext);
}

static void s_rpc_list_commands(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    uint32_t limit = s_limit(q, 1000, r);
    if (!limit)
        return;
    char *end = NULL;
    long long cursor = *q->cursor ? strtoll(q->cursor, &end, 10) : 0;
    if (*q->cursor && (*end || cursor <= 0)) {
        s_fail(r, 400, "bad_request", "\"cursor\" is not one this API returned");
        return;
    }
    char cur[32], lim[16], err[512];
    snprintf(cur, sizeof cur, "%lld", cursor);
    snprintf(lim, sizeof lim, "%u", limit + 1);
    const char *p[] = {q->device_id, *q->cursor ? cur : NULL, lim};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT c.id, c.device_id, c.name, c.params::text, c.status,"
                               " c.created_ms, c.expires_ms, c.timeout_ms, c.sent_ms,"
                               " c.completed_ms, c.result::text, c.seq"
                               " FROM twin.devices dv LEFT JOIN twin.commands c"
                               " ON c.device_id = dv.id AND ($2::bigint IS NULL OR c.seq < $2)"
                               " WHERE dv.id = $1 ORDER BY c.seq DESC NULLS LAST LIMIT $3::int",
                               3, p, err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    int rows = PQntuples(res);
    if (rows == 0) {
        PQclear(res);
        s_fail(r, 404, "not_found", "no device %s", q->device_id);
        return;
    }
    json_t *items = json_array();
    for (int i = 0; i < rows && (uint32_t)i < limit; i++)
        if (!PQgetisnull(res, i, 0))
            json_array_append_new(items, s_command_json(res, i));
    json_t *next = json_null();
    if ((uint32_t)rows > limit)
        next = json_string(PQgetvalue(res, (int)limit - 1, 11));
    PQclear(res);
    s_ok_json(r, 200, json_pack("{s:o,s:o}", "items", items, "next", next));
}

static void s_rpc_get_command(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    if (!s_check_id(q->device_id, r))
        return;
    char err[512];
    const char *p[] = {q->device_id, q->command_id};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT " S_COMMAND_COLS " FROM twin.commands"
                               " WHERE device_id = $1 AND id = $2",
                               2, p, err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    if (PQntuples(res) == 0)
        s_fail(r, 404, "not_found", "no command %s for device %s", q->command_id, q->device_id);
    else
        s_ok_json(r, 200, s_command_json(res, 0));
    PQclear(res);
}

static void s_rpc_list_ids(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    uint32_t limit = q->limit && q->limit <= 100000 ? q->limit : 10000;
    char lim[16], err[512];
    snprintf(lim, sizeof lim, "%u", limit);
    if (*q->status && strcmp(q->status, "online") && strcmp(q->status, "offline")) {
        s_fail(r, 400, "bad_request", "\"status\" is online or offline");
        return;
    }
    const char *p[] = {q->cursor, lim,
                       *q->status ? (strcmp(q->status, "online") == 0 ? "t" : "f") : NULL};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "SELECT id FROM twin.devices WHERE id > $1"
                               " AND ($3::boolean IS NULL OR online = $3) ORDER BY id"
                               " LIMIT $2::int",
                               3, p, err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    int rows = PQntuples(res);
    r->ids = calloc((size_t)rows + 1, sizeof *r->ids);
    for (int i = 0; i < rows; i++)
        r->ids[i] = strdup(PQgetvalue(res, i, 0));
    r->rep.ids = r->ids;
    r->rep.n_ids = (size_t)rows;
    if ((uint32_t)rows == limit)
        snprintf(r->next, sizeof r->next, "%s", r->ids[rows - 1]);
    r->rep.next = r->next;
    r->rep.status = 200;
    PQclear(res);
}

/* What fleet-stats needs of every device to build its aggregates, in pages:
 * {"items":[[id, online, last_seen_ms, firmware, battery, rssi, lat, lon],…],
 *  "next": "<cursor>"|null}; JSON built by PostgreSQL. */
static void s_rpc_snapshot(tw_t *self, const Mh__TwinRequest *q, s_reply_t *r)
{
    uint32_t limit = q->limit && q->limit <= 20000 ? q->limit : 5000;
    char lim[16], err[512];
    snprintf(lim, sizeof lim, "%u", limit);
    const char *p[] = {q->cursor, lim};
    PGresult *res = mh_pg_exec(
        self->pg, PGRES_TUPLES_OK,
        "WITH page AS (SELECT id, online, last_seen_ms, firmware,"
        "  doc->'state'->'reported' AS rep FROM twin.devices WHERE id > $1 ORDER BY id"
        "  LIMIT $2::int)"
        " SELECT json_build_object('items', coalesce(json_agg(json_build_array(id, online,"
        "   last_seen_ms, firmware,"
        "   CASE WHEN jsonb_typeof(rep->'battery') = 'number' THEN rep->'battery' END,"
        "   CASE WHEN jsonb_typeof(rep->'rssi') = 'number' THEN rep->'rssi' END,"
        "   CASE WHEN jsonb_typeof(rep->'location'->'lat') = 'number'"
        "     AND jsonb_typeof(rep->'location'->'lon') = 'number' THEN rep->'location'->'lat' END,"
        "   CASE WHEN jsonb_typeof(rep->'location'->'lat') = 'number'"
        "     AND jsonb_typeof(rep->'location'->'lon') = 'number' THEN rep->'location'->'lon' END)"
        "   ORDER BY id), '[]'),"
        "  'next', CASE WHEN count(*) = $2::int THEN max(id) END)::text FROM page",
        2, p, err, sizeof err);
    if (!res)
        return s_db_fail(self, r, err);
    r->body = strdup(PQgetvalue(res, 0, 0));
    r->rep.body_json = r->body ? r->body : "";
    r->rep.status = r->body ? 200 : 503;
    PQclear(res);
}

static void s_rpc(tw_t *self)
{
    zmsg_t *m = zmsg_recv(self->router);
    if (!m)
        return;
    int64_t t0 = mh_mono_ms();
    zframe_t *routing = zmsg_pop(m), *body = zmsg_pop(m);
    Mh__Envelope *env = body ? mh_envelope_unpack(body) : NULL;
    Mh__TwinRequest *q = NULL;
    if (env && strcmp(env->type, "twin.request") == 0)
        q = mh__twin_request__unpack(NULL, env->body.len, env->body.data);
    s_reply_t r;
    memset(&r, 0, sizeof r);
    mh__twin_reply__init(&r.rep);
    if (!q) {
        mh_counter_inc(self->m_rpc_errors);
        mh_log_limited(&self->rl_warn, MH_LOG_WARN, "malformed RPC request, ignoring");
        goto done;
    }
    r.rep.request_id = q->request_id;
    if ((unsigned)q->method < S_NMETHODS)
        mh_counter_inc(self->m_rpc[q->method]);
    if (q->deadline_ms && q->deadline_ms < mh_now_ms()) {
        s_fail(&r, 504, "deadline_exceeded", "the request's deadline passed before it ran");
    } else if (!mh_pg_ready(self->pg)) {
        s_fail(&r, 503, "unavailable", "the database is unavailable; try again");
    } else {
        switch (q->method) {
        case MH__TWIN_REQUEST__METHOD__REGISTER:
            s_rpc_register(self, q, &r);
            break;
        case MH__TWIN_REQUEST__METHOD__GET_DEVICE:
            s_rpc_get_device(self, q, &r);
            break;
        case MH__TWIN_REQUEST__METHOD__LIST_DEVICES:
            s_rpc_list_devices(self, q, &r);
            break;
        case MH__TWIN_REQUEST__METHOD__DELETE_DEVICE:
            s_rpc_delete(self, q, &r);
            break;
        case MH__TWIN_REQUEST__METHOD__GET_TWIN:
            s_rpc_get_twin(self, q, &r);
            break;
        case MH__TWIN_REQUEST__METHOD__PATCH_TWIN:
            s_rpc_patch_twin(self, q, &r);
            break;
        case MH__TWIN_REQUEST__METHOD__SEND_COMMAND:
            s_rpc_send_command(self, q, &r);
            break;
        case MH__TWIN_REQUEST__METHOD__LIST_COMMANDS:
            s_rpc_list_commands(self, q, &r);
            break;
        case MH__TWIN_REQUEST__METHOD__GET_COMMAND:
            s_rpc_get_command(self, q, &r);
            break;
        case MH__TWIN_REQUEST__METHOD__LIST_IDS:
            s_rpc_list_ids(self, q, &r);
            break;
        case MH__TWIN_REQUEST__METHOD__SNAPSHOT:
            s_rpc_snapshot(self, q, &r);
            break;
        default:
            s_fail(&r, 400, "bad_request", "unknown method %d", (int)q->method);
            break;
        }
    }
    if (r.rep.status >= 400)
        mh_counter_inc(self->m_rpc_errors);
    mh_envelope_send(self->router, routing, "twin.reply", env->trace_id, &r.rep.base, true);
    mh_histogram_observe(self->m_rpc_ms, (double)(mh_mono_ms() - t0));
done:
    free(r.body);
    if (r.ids)
        for (size_t i = 0; i < r.rep.n_ids; i++)
            free(r.ids[i]);
    free(r.ids);
    if (q)
        mh__twin_request__free_unpacked(q, NULL);
    mh_envelope_free(&env);
    zframe_destroy(&routing);
    zframe_destroy(&body);
    zmsg_destroy(&m);
}

/* ---- sweeps: expiry, timeouts, silence ---- */

static void s_sweep(tw_t *self)
{
    char now_s[32], silent_s[32], err[512];
    int64_t now = mh_now_ms();
    snprintf(now_s, sizeof now_s, "%" PRId64, now);
    snprintf(silent_s, sizeof silent_s, "%" PRId64,
             now - self->cfg->keepalive_ms - self->cfg->grace_ms);
    s_out_t out;
    s_out_init(&out);
    static const struct {
        const char *sql;
        int status;
    } cmd_sweeps[] = {
        {"UPDATE twin.commands SET status = 'expired', completed_ms = $1::bigint"
         " WHERE status = 'queued' AND expires_ms <= $1::bigint"
         " RETURNING device_id, id, name, status",
         5},
        {"UPDATE twin.commands SET status = 'timed_out', completed_ms = $1::bigint"
         " WHERE status = 'sent' AND sent_ms + timeout_ms <= $1::bigint"
         " RETURNING device_id, id, name, status",
         6},
    };
    const char *p[] = {now_s};
    for (size_t i = 0; i < 2; i++) {
        PGresult *res =
            mh_pg_exec(self->pg, PGRES_TUPLES_OK, cmd_sweeps[i].sql, 1, p, err, sizeof err);
        if (!res) {
            if (!mh_pg_retryable(self->pg))
                mh_log_limited(&self->rl_db, MH_LOG_ERROR, "command sweep failed: %s", err);
            continue;
        }
        for (int r = 0; r < PQntuples(res); r++)
            s_out_command_event(&out, PQgetvalue(res, r, 0), PQgetvalue(res, r, 1),
                                PQgetvalue(res, r, 2), PQgetvalue(res, r, 3));
        mh_counter_add(self->m_commands[cmd_sweeps[i].status], (uint64_t)PQntuples(res));
        PQclear(res);
    }
    const char *sp[] = {silent_s, now_s};
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "UPDATE twin.devices SET online = false, conn_ms = $2::bigint"
                               " WHERE online AND online_source = 'message'"
                               " AND last_seen_ms < $1::bigint RETURNING id, firmware",
                               2, sp, err, sizeof err);
    if (res) {
        for (int r = 0; r < PQntuples(res); r++) {
            Mh__DeviceConnectivity ev = MH__DEVICE_CONNECTIVITY__INIT;
            ev.device_id = PQgetvalue(res, r, 0);
            ev.ts_ms = now;
            ev.firmware = PQgetvalue(res, r, 1);
            ev.reason = "silence";
            s_out_event(&out, "device.offline", &ev.base);
            mh_counter_inc(self->m_offline);
        }
        PQclear(res);
    } else if (!mh_pg_retryable(self->pg)) {
        mh_log_limited(&self->rl_db, MH_LOG_ERROR, "silence sweep failed: %s", err);
    }
    s_out_flush(self, &out);
    s_out_destroy(&out);
}

/* ---- set-up and the loop ---- */

static void s_register_metrics(tw_t *self)
{
    mh_metrics_t *m = self->ctx->metrics;
    char labels[64];
    for (int i = 0; i < S_NKINDS; i++) {
        snprintf(labels, sizeof labels, "kind=\"%s\"", s_kind_names[i]);
        self->m_messages[i] =
            mh_metrics_counter(m, "mh_twin_device_messages_total",
                               "Device messages from the gateways, by kind", labels);
    }
    for (int i = 0; i < S_R_COUNT; i++) {
        snprintf(labels, sizeof labels, "reason=\"%s\"", s_reason_names[i]);
        self->m_rejected[i] =
            mh_metrics_counter(m, "mh_twin_messages_refused_total",
                               "Device messages refused or ignored, by reason", labels);
    }
    static const char *cmd_status[] = {"queued",   "sent",    "succeeded", "failed",
                                       "rejected", "expired", "timed_out"};
    for (int i = 0; i < 7; i++) {
        snprintf(labels, sizeof labels, "status=\"%s\"", cmd_status[i]);
        self->m_commands[i] = mh_metrics_counter(
            m, "mh_twin_commands_total", "Command life-cycle transitions, by new status", labels);
    }
    for (int i = 0; i < S_NMETHODS; i++) {
        snprintf(labels, sizeof labels, "method=\"%s\"", s_method_names[i]);
        self->m_rpc[i] =
            mh_metrics_counter(m, "mh_twin_rpc_requests_total", "RPC requests, by method", labels);
    }
    self->m_rpc_errors = mh_metrics_counter(m, "mh_twin_rpc_errors_total",
                                            "RPC requests answered with an error", NULL);
    self->m_updates_accepted = mh_metrics_counter(m, "mh_twin_updates_accepted_total",
                                                  "Reported-state updates accepted", NULL);
    self->m_updates_changed = mh_metrics_counter(m, "mh_twin_updates_changed_total",
                                                 "Accepted updates that changed the twin", NULL);
    self->m_commits =
        mh_metrics_counter(m, "mh_twin_commits_total", "Device-message batches committed", NULL);
    self->m_db_errors =
        mh_metrics_counter(m, "mh_twin_db_errors_total", "Failed database transactions", NULL);
    self->m_retries = mh_metrics_counter(m, "mh_twin_retries_total",
                                         "Transactions retried after a deadlock or conflict", NULL);
    self->m_downlink_dropped = mh_metrics_counter(m, "mh_twin_downlink_dropped_total",
                                                  "Downlink publishes no gateway could take", NULL);
    self->m_published = mh_metrics_counter(m, "mh_twin_downlink_sent_total",
                                           "Downlink publishes handed to the gateways", NULL);
    self->m_online =
        mh_metrics_counter(m, "mh_twin_devices_online_total", "Devices that came online", NULL);
    self->m_offline = mh_metrics_counter(m, "mh_twin_devices_offline_total",
                                         "Devices that went offline by silence", NULL);
    self->m_batch_ms = mh_metrics_histogram(m, "mh_twin_batch_ms",
                                            "Time to apply and commit a batch, in milliseconds",
                                            NULL, s_ms_bounds, S_NBOUNDS);
    self->m_rpc_ms = mh_metrics_histogram(m, "mh_twin_rpc_ms", "RPC handling time, in milliseconds",
                                          NULL, s_ms_bounds, S_NBOUNDS);
    self->m_db = mh_metrics_gauge(m, "mh_twin_db_connected",
                                  "1 while connected to PostgreSQL with the schema ready", NULL);
}

static void s_destroy(tw_t **self_p)
{
    tw_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->npending; i++)
        zmsg_destroy(&self->pending[i]);
    free(self->pending);
    mh_pg_destroy(&self->pg);
    mh_resolver_destroy(&self->resolver);
    zsock_destroy(&self->pull);
    zsock_destroy(&self->router);
    zsock_destroy(&self->pub);
    zsock_destroy(&self->push);
    free(self);
    *self_p = NULL;
}

static tw_t *s_new(mh_service_ctx_t *ctx)
{
    tw_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->ctx = ctx;
    self->cfg = ctx->cfg;
    if (self->cfg->batch_max < 1)
        self->cfg->batch_max = 1;
    self->rl_warn = (mh_ratelimit_t)MH_RATELIMIT_INIT(1000, 10);
    self->rl_db = (mh_ratelimit_t)MH_RATELIMIT_INIT(1000, 5);
    s_register_metrics(self);
    self->pending = calloc((size_t)self->cfg->batch_max, sizeof *self->pending);
    self->pg = mh_pg_new(self->cfg->pg_url, s_schema_sql, S_LOCK_MIGRATE);
    self->pull = zsock_new(ZMQ_PULL);
    zsock_set_rcvhwm(self->pull, 100000);
    self->router = zsock_new(ZMQ_ROUTER);
    zsock_set_router_mandatory(self->router, 0);
    self->push = mh_push_new(self->cfg->downlink_endpoint, &self->resolver);
    if (!self->pending || !self->pg || !self->resolver) {
        mh_error("bad settings (downlink endpoint \"%s\")", self->cfg->downlink_endpoint);
        s_destroy(&self);
        return NULL;
    }
    if (mh_curve_bind(self->pull, self->cfg->bind) < 0 ||
        mh_curve_bind(self->router, self->cfg->rpc_bind) < 0) {
        mh_error("cannot bind %s / %s: %s", self->cfg->bind, self->cfg->rpc_bind,
                 zmq_strerror(zmq_errno()));
        s_destroy(&self);
        return NULL;
    }
    if (*self->cfg->events_bind) {
        self->pub = zsock_new(ZMQ_PUB);
        zsock_set_sndhwm(self->pub, 100000);
        if (mh_curve_bind(self->pub, self->cfg->events_bind) < 0) {
            mh_error("cannot bind events on %s: %s", self->cfg->events_bind,
                     zmq_strerror(zmq_errno()));
            s_destroy(&self);
            return NULL;
        }
    }
    return self;
}

static void s_connect_db(tw_t *self)
{
    char err[512];
    int rc = mh_pg_connect(self->pg, err, sizeof err);
    if (rc == 1)
        mh_info("connected to PostgreSQL, schema ready");
    else if (rc == -EIO)
        mh_log_limited(&self->rl_db, MH_LOG_WARN, "%s; retrying", err);
}

/* Reads up to batch_max waiting device messages into `pending`. */
static void s_read_batch(tw_t *self)
{
    while ((int64_t)self->npending < self->cfg->batch_max &&
           (zsock_events(self->pull) & ZMQ_POLLIN)) {
        zmsg_t *m = zmsg_recv(self->pull);
        if (!m)
            break;
        self->pending[self->npending++] = m;
    }
}

static void s_run_pending(tw_t *self)
{
    if (!self->npending || !mh_pg_ready(self->pg))
        return;
    if (s_batch(self, self->pending, self->npending) == -EIO) {
        mh_log_limited(&self->rl_db, MH_LOG_WARN,
                       "database lost; holding %zu device messages until it is back",
                       self->npending);
        return;
    }
    for (size_t i = 0; i < self->npending; i++)
        zmsg_destroy(&self->pending[i]);
    self->npending = 0;
}

void tw_actor(zsock_t *pipe, void *args)
{
    mh_service_ctx_t *ctx = args;
    tw_t *self = s_new(ctx);
    if (!self) {
        mh_actor_failed(pipe);
        return;
    }
    mh_resolver_refresh(self->resolver);
    s_connect_db(self);
    mh_actor_ready(pipe);
    int64_t next_sweep = 0, next_cron = 0;
    int64_t next_resolve = mh_mono_ms() + self->cfg->resolve_interval_ms;
    bool stopping = false;
    while (!stopping) {
        zmq_pollitem_t items[] = {
            {zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(self->router), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(self->pull), 0, ZMQ_POLLIN, 0},
        };
        /* While a batch waits for the database, take no more. */
        int nitems = self->npending ? 2 : 3;
        if (zmq_poll(items, nitems, 100) < 0 && errno != EINTR)
            break;
        if (items[0].revents & ZMQ_POLLIN) {
            char *cmd = zstr_recv(pipe);
            stopping = cmd && strcmp(cmd, "$TERM") == 0;
            zstr_free(&cmd);
        }
        s_connect_db(self);
        /* Handle a few RPCs between batches, so neither starves the other. */
        for (int i = 0; i < 16 && (zsock_events(self->router) & ZMQ_POLLIN); i++)
            s_rpc(self);
        if (!self->npending)
            s_read_batch(self);
        s_run_pending(self);

        int64_t now = mh_mono_ms();
        if (now >= next_sweep && mh_pg_ready(self->pg)) {
            next_sweep = now + self->cfg->sweep_interval_ms;
            s_sweep(self);
        }
        if (now >= next_cron) {
            next_cron = now + 500;
            mh_http_heartbeat(ctx->http);
            bool ready = mh_pg_ready(self->pg);
            mh_http_set_ready(ctx->http, ready);
            mh_gauge_set(self->m_db, ready);
        }
        if (now >= next_resolve) {
            next_resolve = now + self->cfg->resolve_interval_ms;
            mh_resolver_refresh(self->resolver);
        }
    }
    /* Drain: what is already read is applied before exit, if the database
     * allows within a few seconds. */
    int64_t deadline = mh_mono_ms() + 5000;
    s_read_batch(self);
    while (self->npending && mh_mono_ms() < deadline) {
        s_connect_db(self);
        s_run_pending(self);
        if (!self->npending)
            s_read_batch(self);
        if (self->npending)
            zclock_sleep(20);
    }
    if (self->npending)
        mh_error("stopping with %zu device messages not applied (database away)", self->npending);
    s_destroy(&self);
}
