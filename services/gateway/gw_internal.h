/* gw_internal — what the gateway's files share (not a public API): its
 * state and the functions one file offers the others. The files, by
 * concern:
 *   gw_service.c   configuration, metrics, set-up, the MQTT client's start
 *                  and stop, and the loop
 *   gw_mqtt.c      the MQTT session: Paho's callbacks (on Paho's thread),
 *                  TLS, subscriptions
 *   gw_route.c     routing a device message: validation, refusals, and
 *                  forwarding to twin and ota (and "seen" to twin)
 *   gw_batch.c     telemetry batches to ingest: building them, and their
 *                  acknowledgements (the window and re-sends: mh_window)
 *   gw_downlink.c  twin's and ota's publishes to devices, in order
 *   gw_validate.c  the device protocol's rules (pure, fuzzed) */
#pragma once
#include "gw_inbox.h"
#include "gw_service.h"
#include "mh_json.h"
#include "mh_idset.h"

#include <openssl/crypto.h>
#include "gw_validate.h"
#include "mh_curve.h"
#include "mh_envelope.h"
#include "mh_relay.h"
#include "mh_window.h"
#include "mh_resolver.h"
#include "mh_time.h"
#include "telemetry.pb-c.h"
#include "twin.pb-c.h"

#include <MQTTAsync.h>
#include <jansson.h>
#include <inttypes.h>

/* devices seen, told to twin in batches of at most this many */
#define GW_SEEN_BATCH 1000

/* A batch in ingest's window (mh_window keeps its frame). */
typedef struct {
    uint32_t points;
} gw_pending_t;

/* The batch being filled: narrow points with offsets into a string arena. */
typedef struct {
    uint32_t dev_off, met_off;
    int64_t ts_ms;
    double value;
} gw_item_t;

typedef struct {
    mh_service_ctx_t *ctx;
    gw_config_t *cfg;
    zsock_t *pipe;

    MQTTAsync mqtt;
    gw_inbox_t inbox; /* what Paho's thread hands over; ring NULL until made */
    int mqtt_connected, mqtt_subscribed, unsubscribed; /* atomics, set by Paho callbacks */
    int may_subscribe;                                 /* atomic: registry loaded (or unchecked) */
    bool bind_failed;

    zsock_t *dealer; /* to ingest */
    mh_resolver_t *resolver;
    zsock_t *pub; /* events, may be NULL */

    /* twin */
    /* acknowledged delivery (mh_relay.h); NULL when not configured */
    mh_relay_t *twin_relay; /* device messages to twin */
    mh_relay_t *ota_relay;  /* OTA status messages to ota */
    zsock_t *downlink;      /* ROUTER for relay batches, may be NULL */
    zlist_t *dl_queue;      /* publishes waiting for Paho to take them */
    zlistx_t *dl_batches;   /* gw_dlbatch_t: batches being published */
    int64_t deferred_ms;    /* when Paho was last asked to offer a message again */
    mh_idset_t *registry;   /* NULL when not checking */
    zhashx_t *seen;         /* device -> monotonic ms it was last reported seen */
    struct s_seen_item {
        char id[GW_MAX_ID + 1];
        int64_t ms;
    } * seen_pending; /* devices to report, with the time they were heard */
    size_t nseen;
    int64_t seen_flushed, seen_pruned;

    gw_points_t scratch; /* one message's points while validating */
    gw_item_t *items;
    size_t nitems, cap_items;
    char *arena;
    size_t arena_len, arena_cap;
    uint32_t batch_messages;
    int64_t batch_started_ms; /* monotonic, of the first point */

    mh_window_t *window;       /* batches to ingest, unacknowledged: gw_pending_t */
    uint64_t points_in_flight; /* their points */
    uint64_t batch_seq;
    char id_prefix[48];

    /* metrics */
    mh_counter_t *m_received[GW_TOPIC_COUNT], *m_forwarded, *m_forward_dropped, *m_downlink_sent,
        *m_downlink_dropped, *m_downlink_retried, *m_downlink_unacked, *m_rejected[GW_REASON_COUNT],
        *m_points, *m_batches_acked, *m_points_stored, *m_points_dropped_ingest,
        *m_points_dropped_old, *m_points_lost_shutdown, *m_deferred, *m_bad_internal, *m_connects;
    mh_gauge_t *m_connected, *m_acl_denied[3], *m_crl_next_update;
    mh_ratelimit_t rl_reject, rl_warn;
} gw_t;

/* the MQTT subscriptions: every device topic the gateway serves */
#define GW_NTOPICS 7
#define GW_NAWS    23 /* the AWS IoT shadow and jobs requests, twice; provisioning */
typedef struct {
    /* and the broker plugin's presence list */
    char buf[GW_NTOPICS + GW_NAWS + 1][160];
    char *ptr[GW_NTOPICS + GW_NAWS + 1];
    int qos[GW_NTOPICS + GW_NAWS + 1];
    int n;
} gw_topics_t;

/* ---- gw_mqtt.c ---- */

bool gw_tls(const gw_config_t *cfg);
int gw_on_message(void *context, char *topic, int topic_len, MQTTAsync_message *msg);
void gw_on_receive_idle(void *arg);
void gw_topics(gw_t *self, gw_topics_t *t);
void gw_subscribe(gw_t *self);
void gw_on_connected(void *context, char *cause);
void gw_on_connection_lost(void *context, char *cause);
void gw_on_unsubscribed(void *context, MQTTAsync_successData5 *resp);
void gw_on_unsubscribed3(void *context, MQTTAsync_successData *resp);
void gw_on_connect_failed5(void *context, MQTTAsync_failureData5 *resp);
void gw_on_connect_failed3(void *context, MQTTAsync_failureData *resp);

/* ---- gw_batch.c ---- */

int gw_batch_add(gw_t *self, const char *device);
void gw_flush(gw_t *self);
void gw_on_ack(gw_t *self, zframe_t *frame);

/* ---- gw_route.c ---- */

void gw_seen_flush(gw_t *self);
void gw_seen_prune(gw_t *self);
void gw_handle(gw_t *self, const gw_in_t *in);
/* Where the broker plugin lists the devices connected (motehub_presence.h). */
#define GW_PRESENT_TOPIC "motehub/present"

/* ---- gw_downlink.c ---- */

typedef struct gw_dlbatch_t gw_dlbatch_t;
void gw_downlink_pump(gw_t *self);
void gw_on_downlink(gw_t *self);
/* Acknowledges the downlink batches whose publishes are all done. */
void gw_downlink_settle(gw_t *self);
void gw_dlbatch_free(void **item);
/* Frees the queue and the batches; only once Paho is destroyed. */
void gw_downlink_destroy(gw_t *self);
