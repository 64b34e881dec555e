/* in_kafka — the cold path: every sample ingest stored, produced to Kafka.
 *
 * One message per point: key = device id, value = mh.Point (proto/
 * telemetry.proto), header "batch" = the gateway's batch id. A batch the
 * gateway re-sends (ingest's duplicate) is produced again only when this
 * process has not produced it already (the last 65,536 batch ids are
 * remembered) — i.e. after a restart, or when the replica that stored it
 * died: the cold path is at-least-once, and the batch id is what a consumer
 * de-duplicates on. Idempotent producer (acks=all,
 * no duplicates or reordering from its own retries) and no message timeout:
 * while the brokers are away, messages wait in the local queue; when the
 * queue is full, in_kafka_produce waits for room — ingest stops taking
 * batches, the gateways hold theirs, the broker keeps the rest. Nothing is
 * dropped for lack of room. Delivery failures (permanent errors) are
 * counted and logged. */
#pragma once
#include "mh_metrics.h"
#include "telemetry.pb-c.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct in_kafka_t in_kafka_t;

typedef struct {
    const char *brokers; /* bootstrap.servers */
    const char *topic;
    int64_t queue_max; /* messages held locally at most */
    mh_metrics_t *metrics;
} in_kafka_opts_t;

in_kafka_t *in_kafka_new(const in_kafka_opts_t *o);
/* Flushes what is queued (up to timeout_ms), then frees. */
void in_kafka_destroy(in_kafka_t **self_p, int timeout_ms);
/* Produces the points of `b` that `keep` accepts (the ones stored). Waits
 * while the local queue is full; returns false only when a message arrived
 * on `pipe` (the actor is told to stop) while waiting — the rest of the
 * batch is then not produced, and the caller must not acknowledge it. */
bool in_kafka_produce(in_kafka_t *self, const Mh__TelemetryBatch *b, bool duplicate,
                      bool (*keep)(void *ud, int64_t ts_ms), void *ud, void *pipe);
/* Serves delivery reports; call often. */
void in_kafka_poll(in_kafka_t *self);
