/* libFuzzer target for what arrives on every internal ZeroMQ socket: a
 * peer sending garbage. The input is one frame: unpacked as an Envelope
 * (mh_envelope_unpack, as every service does first), its body and the
 * frame itself as every message type of proto/, and a reply matched as
 * fleet-stats matches them. Each decoded message is packed again (what a
 * service does when it forwards one). */
#include "envelope.pb-c.h"
#include "mh_envelope.h"
#include "mh_rpc.h"
#include "ota.pb-c.h"
#include "telemetry.pb-c.h"
#include "twin.pb-c.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const s_types[] = {
    &mh__envelope__descriptor,         &mh__rpc_reply__descriptor,
    &mh__ota_request__descriptor,      &mh__ota_reply__descriptor,
    &mh__rollout_changed__descriptor,  &mh__ota_job_status__descriptor,
    &mh__device_metric__descriptor,    &mh__device_sample__descriptor,
    &mh__device_telemetry__descriptor, &mh__point__descriptor,
    &mh__telemetry_batch__descriptor,  &mh__telemetry_ack__descriptor,
    &mh__telemetry_stored__descriptor, &mh__device_rejected__descriptor,
    &mh__gateway_stats__descriptor,    &mh__telemetry_query__descriptor,
    &mh__telemetry_reply__descriptor,  &mh__device_message__descriptor,
    &mh__device_seen__descriptor,      &mh__publish__descriptor,
    &mh__downlink__descriptor,         &mh__twin_request__descriptor,
    &mh__twin_reply__descriptor,       &mh__device_registered__descriptor,
    &mh__device_deleted__descriptor,   &mh__device_connectivity__descriptor,
    &mh__twin_changed__descriptor,     &mh__command_status__descriptor,
};

static void s_each_type(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < sizeof s_types / sizeof s_types[0]; i++) {
        ProtobufCMessage *m = protobuf_c_message_unpack(s_types[i], NULL, size, data);
        if (!m)
            continue;
        size_t n = protobuf_c_message_get_packed_size(m);
        uint8_t *out = malloc(n ? n : 1);
        assert(protobuf_c_message_pack(m, out) == n);
        /* Not asserted: that the packed bytes read back. protobuf-c keeps an
         * overlong-encoded tag of field 0 (80 00 ..) as an unknown field
         * and packs it as a bare 00 it then refuses (corpus/envelope/
         * regress-field0-tag). No service forwards a received message
         * as it came, so nothing downstream sees it. */
        ProtobufCMessage *again = protobuf_c_message_unpack(s_types[i], NULL, n, out);
        protobuf_c_message_free_unpacked(again, NULL);
        free(out);
        protobuf_c_message_free_unpacked(m, NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    s_each_type(data, size);
    zframe_t *f = zframe_new(data, size);
    Mh__Envelope *env = mh_envelope_unpack(f);
    if (env) {
        assert(env->type);
        s_each_type(env->body.data, env->body.len);
        (void)mh_rpc_reply_match(env, "fs-1");
        mh_envelope_free(&env);
        assert(!env);
    }
    zframe_destroy(&f);
    return 0;
}
