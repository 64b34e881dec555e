/* tw_internal — what the twin service's files share (not a public API):
 * the service's state, the limits it enforces, the queue of what a
 * transaction sends once it commits, and the functions one file offers
 * the others. The files, by concern:
 *   tw_service.c   configuration, schema, metrics, set-up and the loop
 *   tw_out.c       what a transaction publishes and sends after COMMIT
 *   tw_commands.c  command rows as JSON, delivering queued commands, and
 *                  marking them sent once a gateway published them
 *   tw_batch.c     device messages applied in batches, one transaction
 *                  each: decode, load, store, relay ids, acknowledgements
 *   tw_messages.c  what each message (status, seen, twin get/update,
 *                  command ack, presence) does to its device
 *   tw_shadow.c    the AWS IoT Device Shadow requests, classic and named
 *   tw_shadow_rpc.c  the operator's named shadows
 *   tw_health_rpc.c  cohorts' connectivity over windows, for rollout health
 *   tw_provision.c fleet provisioning: certificates and RegisterThing
 *   tw_provision_rpc.c  the operator's provisioning templates
 *   tw_rpc.c       the operator RPC methods (served by mh_rpc_server)
 *   tw_sweep.c     expiry, command timeouts, silence
 *   tw_doc.c       twin document rules (pure) */
#pragma once
#include "mh_ca.h"
#include "mh_curve.h"
#include "mh_envelope.h"
#include "mh_ids.h"
#include "mh_json.h"
#include "mh_pg.h"
#include "mh_relay.h"
#include "mh_resolver.h"
#include "mh_rpc.h"
#include "mh_rpc_pg.h"
#include "mh_time.h"
#include "tw_doc.h"
#include "tw_service.h"
#include "twin.pb-c.h"

#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>

#define TW_MAX_TOKEN  64
#define TW_MAX_PARAMS (32 * 1024)
#define TW_MAX_TTL_S  (30LL * 86400)
#define TW_MAX_TMO_S  (7LL * 86400)
#define TW_MAX_FUTURE (3600 * 1000)

/* Reasons a device message is refused or ignored; each is a metric label. */
typedef enum {
    TW_R_BAD_JSON,
    TW_R_BAD_REQUEST,
    TW_R_CONFLICT,
    TW_R_TOO_LARGE,
    TW_R_UNREGISTERED,
    TW_R_BAD_ACK,
    TW_R_UNKNOWN_COMMAND,
    TW_R_STALE_STATUS,
    TW_R_MALFORMED,
    TW_R_COUNT
} tw_reason_t;

#define TW_NKINDS 8

typedef struct {
    mh_service_ctx_t *ctx;
    tw_config_t *cfg;
    mh_pg_t *pg;
    zsock_t *pull, *router, *pub;
    mh_relay_t *downlink; /* to the gateways, acknowledged once published */
    zlist_t *published;   /* command ids a gateway published, not yet marked sent */
    mh_rpc_server_t *rpc; /* on router */

    /* relay batches read but not yet committed (database away); acknowledged
     * once they are */
    mh_relay_batch_t **pending;
    size_t npending, npending_msgs;

    mh_counter_t *m_messages[TW_NKINDS], *m_rejected[TW_R_COUNT], *m_updates_accepted,
        *m_updates_changed, *m_commits, *m_db_errors, *m_retries, *m_relay_duplicates,
        *m_downlink_dropped, *m_commands[7], *m_online, *m_offline, *m_published;
    mh_histogram_t *m_batch_time;
    mh_gauge_t *m_db;
    mh_ratelimit_t rl_warn, rl_db;
    mh_rpc_db_t db;           /* pg, m_db_errors and rl_db, for the RPC methods */
    int64_t next_relay_prune; /* wall ms: when tw_sweep next prunes relay ids */
    int64_t next_rehand;      /* wall ms: when it next hands stale commands again */
    mh_ca_t ca;               /* the fleet CA (--ca-dir); ca.key NULL: no provisioning */
} tw_t;

/* small helpers */

static inline char *tw_dumps(json_t *v)
{
    return mh_json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

static inline int64_t tw_i64(PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return 0;
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static inline json_t *tw_json_col(PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return json_null();
    json_t *v = json_loads(PQgetvalue(res, row, col), JSON_DECODE_ANY, NULL);
    return v ? v : json_null();
}

static inline json_t *tw_ms_or_null(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? json_null() : json_integer(tw_i64(res, row, col));
}

/* `{"a","b"}`: a text[] literal of device or command ids; both are plain
 * ASCII without quotes or backslashes (validated before they get here). */
static inline bool tw_command_name_valid(const char *s)
{
    /* Same alphabet as device ids: names become handler keys on devices. */
    return s && mh_device_id_valid(s, strlen(s));
}

/* 1..max characters of A-Z a-z 0-9 and `extra`: shadow and template names. */
static inline bool tw_name_ok(const char *s, size_t max, const char *extra)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr(extra, s[i]))
            return false;
    return true;
}

#define TW_COMMAND_COLS                                                                            \
    "id, device_id, name, params::text, status, created_ms, expires_ms, timeout_ms, sent_ms,"      \
    " completed_ms, result::text, seq"

/* ---- tw_out.c ---- */

typedef struct {
    char device[MH_MAX_DEVICE_ID + 1];
    Mh__Publish **pubs;
    size_t n, cap;
    char *commands; /* the command ids among them, space-separated: the relay tag */
} tw_dl_t;

typedef struct {
    tw_dl_t *dls; /* downlinks per device, in first-use order */
    size_t ndl, capdl;
    zhashx_t *dl_index; /* device -> index + 1 */
    zlist_t *events;    /* zmsg_t: [type][envelope] */
} tw_out_t;

void tw_out_init(tw_out_t *o);
void tw_out_clear(tw_out_t *o);
void tw_out_destroy(tw_out_t *o);
void tw_out_publish_json(tw_out_t *o, const char *device, const char *sub, json_t *v);
/* The same to a whole topic (the AWS IoT reply topics, tw_shadow.c). */
void tw_out_publish_topic(tw_out_t *o, const char *device, const char *topic, json_t *v);
/* The same for command `id`: it counts as sent once a gateway has
 * published it (tw_commands_published). */
void tw_out_publish_command(tw_out_t *o, const char *device, const char *id, json_t *v);
void tw_out_event(tw_out_t *o, const char *type, const ProtobufCMessage *body);
void tw_out_command_event(tw_out_t *o, const char *device, const char *id, const char *name,
                          const char *status);
int tw_out_status_index(const char *status);
void tw_out_flush(tw_t *self, tw_out_t *o);

/* ---- tw_commands.c ---- */

json_t *tw_command_json(PGresult *res, int r);
bool tw_deliver(tw_t *self, tw_out_t *o, const char *const *devices, size_t n, int64_t now,
                char *err, size_t errlen);
/* The downlink relay's delivered callback: `tag` holds the ids of commands
 * a gateway has published (the broker's PUBACK); noted for
 * tw_commands_sent. */
void tw_commands_published(void *ud, const char *tag);
/* Marks the noted commands sent; kept for the next call while the
 * database is away. */
void tw_commands_sent(tw_t *self);
/* Hands again the queued commands of online devices that were handed to a
 * gateway TW_REHAND_MS ago and never acknowledged (the twin that handed
 * them died holding them). */
void tw_commands_rehand(tw_t *self);
#define TW_REHAND_MS 30000

/* ---- tw_messages.c ---- */

/* A device in a batch: its row as loaded, and what the messages changed. */
typedef struct {
    char id[MH_MAX_DEVICE_ID + 1];
    char *doc_text; /* as read; parsed on first need */
    json_t *doc;
    int64_t version, conn_ms, last_seen, present_ms;
    bool online, doc_dirty, row_dirty, came_online;
    char source[8];
    char *firmware; /* the column: reported firmware, else the status message's */
} tw_dev_t;

/* One batch's transaction: its devices, the command acks it applies, what
 * it sends after COMMIT. */
typedef struct {
    zhashx_t *devs; /* id -> tw_dev_t */
    json_t *acks;   /* [{id, device_id, status, result}] */
    json_t *conn;   /* connectivity changes for twin.conn_log: [{id, ts, online, reason}] */
    tw_out_t out;
    int64_t now;
    mh_counter_t *m_online;
    bool presence; /* a presence list is in the batch */
} tw_batch_t;

void tw_dev_free(void **item);
/* The device's twin document, parsed on first need. */
json_t *tw_dev_doc(tw_dev_t *d);
/* Each device message, applied to its device in the batch. */
void tw_msg_status(tw_t *self, tw_batch_t *b, tw_dev_t *d, const Mh__DeviceMessage *m);
void tw_msg_seen(tw_batch_t *b, tw_dev_t *d, int64_t ts);
void tw_msg_twin_get(tw_t *self, tw_batch_t *b, tw_dev_t *d, const Mh__DeviceMessage *m);
void tw_msg_twin_update(tw_t *self, tw_batch_t *b, tw_dev_t *d, const Mh__DeviceMessage *m);
void tw_msg_command_ack(tw_t *self, tw_batch_t *b, tw_dev_t *d, const Mh__DeviceMessage *m);
/* The broker's list of connected devices (motehub_presence.h). */
void tw_msg_present(tw_batch_t *b, const Mh__DeviceSeen *p);
/* twin/delta when the delta is not empty and differs from `old` (NULL:
 * always); with `aws` also the AWS shadow's update/delta. */
void tw_maybe_delta(tw_out_t *o, const char *device, json_t *old, json_t *doc, bool aws);
/* A device's twin changed from `before`: its row to store, its firmware
 * column, the twin.changed event. */
void tw_dev_changed(tw_t *self, tw_batch_t *b, tw_dev_t *d, json_t *before);
/* The types of the reported keys the platform reads (device-protocol.md). */
bool tw_reported_types_ok(json_t *rep, char *why, size_t len);

/* ---- tw_shadow.c ---- */

/* A $aws/things/{id}/shadow request (classic: the twin; named: twin.shadows),
 * answered on its reply topics. False on a database error. */
bool tw_msg_shadow(tw_t *self, tw_batch_t *b, tw_dev_t *d, const Mh__DeviceMessage *m, char *err,
                   size_t errlen);
/* The shadow's update/delta (name NULL: the classic shadow) when its delta
 * is not empty. */
void tw_shadow_delta(tw_out_t *o, const char *device, const char *name, json_t *doc);
/* The AWS shadow document of a twin-format one: state (desired, reported,
 * delta when `with_delta`), metadata on every leaf, version, timestamp (s). */
json_t *tw_shadow_aws_doc(json_t *doc, bool with_delta);
/* A named shadow's row, locked: *doc (new, version 0 or the deleted one's,
 * when there is none or it was deleted) and *exists; false on a database
 * error. */
bool tw_shadow_load(tw_t *self, const char *device, const char *name, int64_t now, json_t **doc,
                    bool *exists, char *err, size_t errlen);
bool tw_shadow_store(tw_t *self, const char *device, const char *name, json_t *doc, bool deleted,
                     char *err, size_t errlen);
/* update/accepted (the request's sections), and when `changed`
 * update/documents and update/delta, after an update from `before` to
 * `doc`; `token` (may be NULL) echoed. */
void tw_shadow_updated(tw_out_t *o, const char *device, const char *name, json_t *before,
                       json_t *doc, json_t *desired, json_t *reported, json_t *token, bool changed);

/* ---- tw_health_rpc.c ---- */

/* HEALTH_STATS: connectivity of cohorts of devices, each over its own
 * window, from twin.conn_log (a rollout's health, ota_health.c). */
void tw_health_rpc(tw_t *self, const Mh__TwinRequest *q, mh_rpc_reply_t *reply);

/* ---- tw_shadow_rpc.c ---- */

/* The operator's methods on named shadows (LIST_, GET_, UPDATE_,
 * DELETE_SHADOW), answering into `reply`. */
void tw_shadow_rpc(tw_t *self, const Mh__TwinRequest *q, mh_rpc_reply_t *reply);

/* An operator's desired patch to the twin, on the classic shadow's
 * update/accepted (an SDK reports it as a change it did not make). */
void tw_shadow_operator_update(tw_out_t *o, const char *device, json_t *desired, json_t *doc);

/* ---- tw_provision.c, tw_provision_rpc.c ---- */

/* A fleet provisioning request from a claim certificate's client
 * (m->device_id), answered to that client. False on a database error. */
bool tw_msg_provision(tw_t *self, tw_batch_t *b, const Mh__DeviceMessage *m, char *err,
                      size_t errlen);
/* The operator's methods on provisioning templates (*_TEMPLATE). */
void tw_provision_rpc(tw_t *self, const Mh__TwinRequest *q, mh_rpc_reply_t *reply);

/* ---- tw_batch.c ---- */

/* Applies device messages: 0, or -EIO / -EBUSY (database away / rows held
 * elsewhere: keep the batches and try again). */
int tw_batch(tw_t *self, mh_relay_batch_t **batches, size_t n);

/* ---- tw_rpc.c ---- */

extern const mh_rpc_service_t tw_rpc_def;

/* ---- tw_sweep.c ---- */

void tw_sweep(tw_t *self);
