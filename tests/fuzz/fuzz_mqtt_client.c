/* libFuzzer target for moteload's MQTT framing (ml_mqtt.h): the bytes a
 * broker sends, framed packet by packet as moteload reads them. A packet
 * is never framed past the input, a CONNACK/PUBACK body is always two
 * bytes, a PUBLISH's topic and payload lie inside its body, and what is framed covers the input
 * exactly up to where framing stopped (needs more, or malformed). */
#include "ml_mqtt.h"

#include <assert.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    for (;;) {
        ml_packet_t p;
        ssize_t k = ml_mqtt_parse(data + off, size - off, 1 << 16, &p);
        if (k <= 0)
            break;
        assert((size_t)k <= size - off);
        assert(p.body >= data + off && p.body + p.len == data + off + (size_t)k);
        if (p.type == ML_CONNACK || p.type == ML_PUBACK)
            assert(p.len == 2);
        if (p.type == ML_PUBACK || p.type == ML_SUBACK)
            assert(p.value != 0);
        if (p.type == ML_PUBLISH) { /* topic and payload inside the body, in order */
            assert(p.topic == p.body + 2 && p.topic + p.topic_len <= p.payload);
            assert(p.payload + p.payload_len == p.body + p.len);
        }
        off += (size_t)k;
    }
    return 0;
}
