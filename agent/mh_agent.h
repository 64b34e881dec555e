/* mh_agent — the reference device agent: a small library that speaks the
 * Motehub device protocol (shared/spec/device-protocol.md) over Paho MQTT C,
 * so firmware writers start from working code.
 *
 * One agent = one device = one MQTT connection (client id = device id).
 * On connect it subscribes to its twin and command topics, then publishes
 * {"state":"online"} to devices/{id}/status (so nothing the cloud sends on
 * coming online is missed), with the last will {"state":"offline"}; it
 * reconnects on its own with exponential backoff (1 s doubling to 60 s).
 *
 * Twin: mh_agent_report sends reported state, mh_agent_twin_get asks for
 * the document, and a delta handler receives desired changes. Commands: a
 * handler per command name; the agent acks with the handler's outcome,
 * rejects names it has no handler for, and ignores a command id it has
 * already handled (delivery is at-least-once).
 *
 * Thread-safety: the publish functions may be called from any one thread;
 * counters are atomics. Callbacks run on Paho's thread. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mh_agent_t mh_agent_t;

typedef struct {
    const char *url;       /* broker, e.g. "tcp://127.0.0.1:1883" */
    const char *device_id; /* 1-64 of A-Z a-z 0-9 . _ - */
    int mqtt_version;      /* 5 (default when 0) or 4 for 3.1.1 */
    int keepalive_s;       /* default 30 */
    int max_inflight;      /* QoS1 messages unacknowledged at most; default 100 */
    const char *firmware;  /* reported in the status message; may be NULL */
    /* Mutual TLS, for ssl:// URLs (port 8883): the fleet CA's certificate
     * the broker's must chain to, and this device's certificate (CN = its
     * device id) and private key, all PEM files. */
    const char *ca_file, *cert_file, *key_file;
    /* Speak the AWS IoT device APIs too (shared/spec/aws-iot-compat.md), as
     * a device built on an AWS SDK would: mh_agent_report updates the
     * classic shadow ($aws/things/<id>/shadow/update), and the shadow's
     * update replies and the jobs' notify-next reach on_message as
     * "aws/shadow/update/accepted", ".../rejected", "aws/jobs/notify-next".
     * mh_agent_publish_aws publishes under $aws/things/<id>/. */
    bool aws;
} mh_agent_opts_t;

/* One telemetry sample: up to 16 metrics; ts 0 = let the gateway stamp it. */
typedef struct {
    int64_t ts;
    int64_t seq; /* < 0 = omit */
    size_t n;
    struct {
        const char *name;
        double value;
        bool is_bool;
    } m[16];
} mh_sample_t;

mh_agent_t *mh_agent_new(const mh_agent_opts_t *opts);
/* Says {"state":"offline"}, disconnects cleanly (no last will) and frees. */
void mh_agent_destroy(mh_agent_t **self_p);
/* Starts a clean disconnect without waiting for it; for many agents, call
 * this on each, then mh_agent_destroy on each, so they close in parallel. */
void mh_agent_disconnect_begin(mh_agent_t *self);

/* Starts connecting; returns at once. 0 or a negative errno. */
int mh_agent_connect(mh_agent_t *self);
bool mh_agent_connected(mh_agent_t *self);
/* Waits up to timeout_ms for the connection; true when connected. */
bool mh_agent_wait_connected(mh_agent_t *self, int timeout_ms);
/* Connection attempts that failed (refused, TLS handshake, unreachable),
 * and the last reason, copied into buf. */
uint64_t mh_agent_connect_failures(mh_agent_t *self);
const char *mh_agent_last_error(mh_agent_t *self, char *buf, size_t len);
/* Drops the connection so that the broker sends the last will (a simulated
 * power loss; MQTT 5 only, see the source). */
void mh_agent_kill_connection(mh_agent_t *self);

/* Publishes to devices/{id}/{subtopic}. Returns 0, -EAGAIN when
 * max_inflight QoS1 messages are unacknowledged, -ENOTCONN, or -EIO. */
int mh_agent_publish(mh_agent_t *self, const char *subtopic, const void *payload, size_t len,
                     int qos);
/* Publishes samples as the JSON telemetry message (one object, or an array
 * when n > 1). */
/* Publishes under $aws/things/<id>/ (e.g. "jobs/<jobId>/update"). */
int mh_agent_publish_aws(mh_agent_t *self, const char *subtopic, const void *payload, size_t len,
                         int qos);
int mh_agent_publish_samples(mh_agent_t *self, const mh_sample_t *samples, size_t n, int qos);

/* Messages acknowledged by the broker (QoS1) and sent (QoS0). */
uint64_t mh_agent_delivered(mh_agent_t *self);
/* Telemetry messages acknowledged by the broker (QoS1) and sent (QoS0):
 * what a sender may count on being stored. */
uint64_t mh_agent_telemetry_acked(mh_agent_t *self);
/* Messages accepted by mh_agent_publish. */
uint64_t mh_agent_published(mh_agent_t *self);
/* Waits until every published QoS1 message is acknowledged. */
bool mh_agent_wait_delivered(mh_agent_t *self, int timeout_ms);

/* ---- twin and commands ---- */

/* Every message the cloud sends the device, before the agent's own
 * handling: `subtopic` is the part after devices/{id}/. */
typedef void(mh_agent_message_fn)(mh_agent_t *agent, const char *subtopic, const char *payload,
                                  size_t len, void *ud);
void mh_agent_on_message(mh_agent_t *self, mh_agent_message_fn *fn, void *ud);

/* twin/delta: `state` holds the desired keys that differ from reported. */
typedef void(mh_agent_delta_fn)(mh_agent_t *agent, json_t *state, int64_t version, void *ud);
void mh_agent_on_delta(mh_agent_t *self, mh_agent_delta_fn *fn, void *ud);

/* The outcome of a command handler. */
typedef enum { MH_CMD_SUCCEEDED, MH_CMD_FAILED, MH_CMD_REJECTED, MH_CMD_PENDING } mh_cmd_outcome_t;
/* Runs on Paho's thread; may set *result to a new JSON object (taken). */
typedef mh_cmd_outcome_t(mh_agent_command_fn)(mh_agent_t *agent, const char *id, json_t *params,
                                              json_t **result, void *ud);
/* Registers the handler for command `name` (replacing any). 0 or -ENOMEM. */
int mh_agent_on_command(mh_agent_t *self, const char *name, mh_agent_command_fn *fn, void *ud);
/* A handler that returns MH_CMD_PENDING (long-running work) acks later
 * with this; `result` (may be NULL) is borrowed. */
int mh_agent_ack(mh_agent_t *self, const char *id, mh_cmd_outcome_t outcome, json_t *result);
/* Commands handled (distinct ids). */
uint64_t mh_agent_commands_handled(mh_agent_t *self);

/* twin/update with {"state":{"reported":reported}} (borrowed), and
 * clientToken when not NULL. */
int mh_agent_report(mh_agent_t *self, json_t *reported, const char *client_token);
/* twin/get; the answer arrives on twin/get/accepted (see mh_agent_on_message). */
int mh_agent_twin_get(mh_agent_t *self, const char *client_token);
const char *mh_agent_id(mh_agent_t *self);

/* ---- OTA ---- */

/* A job from devices/{id}/ota (shared/spec/device-protocol.md). */
typedef struct {
    const char *job_id, *rollout, *action, *version, *url, *sha256, *signature;
    int64_t size; /* -1 when the job names no image (a rollback to a kept slot) */
} mh_ota_job_t;

/* Installs an image the agent has downloaded and verified (size, SHA-256,
 * the fleet's signature); `image` is NULL for a rollback job without one.
 * Runs on one of the agent's OTA worker threads. Returns MH_CMD_SUCCEEDED,
 * MH_CMD_FAILED (with `error` filled), or MH_CMD_PENDING and later
 * mh_agent_ota_done. */
typedef mh_cmd_outcome_t(mh_agent_install_fn)(mh_agent_t *agent, const mh_ota_job_t *job,
                                              const uint8_t *image, size_t len, char *error,
                                              size_t errlen, void *ud);
/* Takes OTA jobs: `public_key_pem` is the fleet's signing key the device is
 * provisioned with. The agent reports downloading, installing, then
 * succeeded (and the new "firmware" in the twin and on later connects) or
 * failed with the reason; a bad image is never handed to `fn`. A repeated
 * job id is not run again (the final status is repeated instead). Without
 * this call jobs are answered "failed". 0, or -EINVAL for a bad key. */
int mh_agent_on_ota(mh_agent_t *self, const char *public_key_pem, mh_agent_install_fn *fn,
                    void *ud);
/* Finishes a job whose install returned MH_CMD_PENDING. */
int mh_agent_ota_done(mh_agent_t *self, const char *job_id, bool ok, const char *error);
/* The running firmware (as given in the options, then as installed);
 * copied into buf. */
const char *mh_agent_firmware(mh_agent_t *self, char *buf, size_t len);
/* Distinct jobs received, and jobs received again after the device had
 * answered them. */
uint64_t mh_agent_ota_jobs(mh_agent_t *self);
uint64_t mh_agent_ota_repeats(mh_agent_t *self);
/* OTA worker threads shared by every agent in the process (default 4);
 * call before the first job arrives. */
void mh_agent_ota_workers(int n);

/* Builds the JSON for samples; caller frees. Exposed for tests. */
char *mh_agent_samples_json(const mh_sample_t *samples, size_t n);
