/* The device agent's insides, shared by its two halves: mh_agent.c (the
 * MQTT session, twin, commands, telemetry) and mh_agent_ota.c (OTA jobs on
 * a worker pool: download, verify, install, report). Not for users of the
 * agent: mh_agent.h is its interface. */
#pragma once
#include "mh_agent.h"

#include <MQTTAsync.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

#define AG_MAX_HANDLERS 32
#define AG_SEEN_IDS     256

struct mh_agent_t {
    MQTTAsync client;
    int64_t disconnect_until; /* mh_agent_disconnect_begin: when its wait ends (0: not begun) */
    char *device_id, *url, *firmware;
    char *ca_file, *cert_file, *key_file;
    uint64_t connect_failures;
    char last_error[160], tls_error[200]; /* under lock */
    int mqtt_version, keepalive, max_inflight;
    int connected;
    uint64_t published, delivered, inflight, commands_handled;
    uint64_t telemetry_acked; /* telemetry messages the broker acknowledged */
    char status_topic[96];
    size_t prefix_len; /* strlen("devices/{id}/") */
    bool aws;          /* the AWS IoT device APIs too (mh_agent_opts_t) */

    pthread_mutex_t lock; /* handlers and the seen-id ring */
    mh_agent_message_fn *on_message;
    void *on_message_ud;
    mh_agent_delta_fn *on_delta;
    void *on_delta_ud;
    struct {
        char *name;
        mh_agent_command_fn *fn;
        void *ud;
    } handlers[AG_MAX_HANDLERS];
    size_t nhandlers;
    char seen_ids[AG_SEEN_IDS][65];
    size_t seen_next;

    /* OTA (under lock) */
    mh_agent_install_fn *on_install;
    void *install_ud;
    void *ota_key;
    char ota_job[72], ota_version[72];
    struct {
        char id[72];
        char *status; /* the final status payload, repeated for a repeated job */
    } ota_done[8];
    size_t ota_done_next;
    uint64_t ota_jobs, ota_repeats;
    int ota_active; /* work items queued or running (under s_pool_lock) */
};

/* mh_agent.c */
/* Publishes `v` (taken) as JSON on devices/{id}/{sub}, QoS 1. */
void ag_send(mh_agent_t *self, const char *sub, json_t *v);
void ag_sleep_ms(int ms);
int64_t ag_mono_ms(void);

/* mh_agent_ota.c */
/* A message on devices/{id}/ota: a job to run, or one seen before. */
void ag_ota_job(mh_agent_t *self, const char *payload, size_t len);
/* Before the agent is freed: drops its queued jobs, waits for its running one. */
void ag_ota_forget(mh_agent_t *self);
