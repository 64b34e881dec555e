/* fs_internal — what fleet-stats' files share (not a public API): its
 * state and the functions one file offers the others. The files, by
 * concern:
 *   fs_service.c   configuration, metrics, set-up (the actor)
 *   fs_tokens.c    API tokens: made, listed, revoked, checked and cached
 *   fs_http.c      answers, bodies, query strings, and calling twin, ota
 *                  and ingest (s_call: one path for every service)
 *   fs_routes.c    routing a request by resource, authorisation, the
 *                  /api/v1/live WebSocket handlers, the dashboard's files
 *   fs_devices.c   devices, twins and commands (twin)
 *   fs_templates.c fleet provisioning templates (twin)
 *   fs_telemetry.c telemetry queries (ingest)
 *   fs_ota.c       firmware and rollouts (ota)
 *   fs_live.c      live fleet aggregates from events, WebSocket frames */
#pragma once
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

extern const char fs_openapi[];
extern const size_t fs_openapi_len;

#define FS_LOCK_MIGRATE 7203104
#define FS_MAX_BODY     (1024 * 1024)

/* A valid token is remembered this long: a revoked one stops working
 * within it on every replica. */
#define FS_TOKEN_TTL_MS 5000

typedef struct {
    char name[64];
    int64_t until; /* monotonic */
} fs_tok_t;

typedef struct {
    mh_service_ctx_t *ctx;
    fs_config_t *cfg;
    struct mg_context *web;
    mh_rpc_t *twin, *ota, *ingest;
    fs_live_t *live;
    int64_t max_ws;
    pthread_mutex_t lock; /* the token connection and cache */
    mh_pg_t *pg;
    zhashx_t *tokens; /* hash -> fs_tok_t, tokens seen valid lately */
    uint64_t seq;
    mh_counter_t *m_requests[5]; /* 2xx 3xx 4xx 5xx 401 */
    mh_histogram_t *m_request_time;
} fs_t;

/* ---- fs_service.c ---- */

/* the fleet schema (API tokens), made by whoever connects first */
extern const char *fs_schema_sql;

/* ---- fs_tokens.c ---- */

void fs_free_tok(void **p);
int fs_token_ok(fs_t *self, const char *token, char name_out[64]);

/* ---- fs_http.c ---- */

int fs_send(fs_t *self, struct mg_connection *c, int status, const char *body,
            const char *extra_headers);
int fs_error(fs_t *self, struct mg_connection *c, int status, const char *code,
             const char *message);
json_t *fs_body_object(fs_t *self, struct mg_connection *c, bool required);
ProtobufCMessage *fs_call(fs_t *self, struct mg_connection *c, mh_rpc_t *rpc, const char *who,
                          const char *type, ProtobufCMessage *q,
                          const ProtobufCMessageDescriptor *reply, mh_rpc_common_t *rc,
                          int *status);
int fs_twin(fs_t *self, struct mg_connection *c, Mh__TwinRequest *q, bool etag);
uint32_t fs_query_u32(const char *qs, const char *name, bool *bad);
void fs_query_str(const char *qs, const char *name, char *out, size_t len);

/* ---- fs_telemetry.c ---- */

int fs_telemetry(fs_t *self, struct mg_connection *c, const char *method, const char *id,
                 const char *what);

/* ---- fs_templates.c ---- */

/* /api/v1/provisioning-templates[/{name}] */
int fs_templates(fs_t *self, struct mg_connection *c, const char *method, const char *name);

/* ---- fs_devices.c ---- */

int fs_devices(fs_t *self, struct mg_connection *c, const char *method, const char *id,
               const char *sub, const char *cid);

/* ---- fs_ota.c ---- */

int fs_firmware(fs_t *self, struct mg_connection *c, const char *method, const char *version);
/* /api/v1/rollouts, and with `jobs` /api/v1/jobs: the rollouts of a
 * document (AWS IoT Jobs), whose per-device list is "executions" */
int fs_rollouts(fs_t *self, struct mg_connection *c, const char *method, const char *id,
                const char *action, bool jobs);

/* ---- fs_routes.c ---- */

int fs_ws_connect(const struct mg_connection *cc, void *ud);
void fs_ws_ready(struct mg_connection *c, void *ud);
int fs_ws_data(struct mg_connection *c, int bits, char *data, size_t len, void *ud);
void fs_ws_close(const struct mg_connection *c, void *ud);
int fs_static(struct mg_connection *c, void *ud);
