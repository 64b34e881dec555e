/* ml_mqtt — the few MQTT 3.1.1 packets a device publisher needs:
 * CONNECT, PUBLISH at QoS 1, SUBSCRIBE, PUBACK, PINGREQ, DISCONNECT out;
 * CONNACK, PUBACK, SUBACK, PUBLISH, PINGRESP in (anything else the broker
 * sends is framed and skipped).
 * Plain buffers, no I/O, no allocation: moteload drives thousands of
 * connections on one thread with it. The parser reads what a broker sent
 * and is fuzzed (tests/fuzz/fuzz_mqtt_client.c). */
#ifndef ML_MQTT_H
#define ML_MQTT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum { ML_CONNACK = 2, ML_PUBLISH = 3, ML_PUBACK = 4, ML_SUBACK = 9, ML_PINGRESP = 13 };

typedef struct {
    uint8_t type;  /* the fixed header's upper nibble */
    uint8_t flags; /* its lower nibble */
    const uint8_t *body;
    size_t len;
    /* CONNACK: the return code (0 = accepted); PUBACK, SUBACK: the packet
     * id; PUBLISH: its packet id at QoS 1 or 2 (0 at QoS 0) */
    uint16_t value;
    /* PUBLISH: its topic and payload, inside body */
    const uint8_t *topic, *payload;
    size_t topic_len, payload_len;
} ml_packet_t;

/* Frames one packet at buf[0..n): its size in bytes (> 0), 0 when more
 * bytes are needed, -1 when it is malformed (a remaining length over
 * `max_len` or of more than four bytes, a CONNACK or PUBACK whose body is
 * not two bytes, a PUBACK or SUBACK for packet id 0, a PUBLISH at QoS 3
 * or whose topic does not fit in it). */
ssize_t ml_mqtt_parse(const uint8_t *buf, size_t n, size_t max_len, ml_packet_t *p);

/* Each writes one packet at out (cap bytes) and returns its size, or 0
 * when it does not fit. */
size_t ml_mqtt_connect(uint8_t *out, size_t cap, const char *client_id, uint16_t keepalive_s);
/* PUBLISH, QoS 1, not retained: topic, packet id (1..65535), payload. */
size_t ml_mqtt_publish(uint8_t *out, size_t cap, const char *topic, size_t topic_len, uint16_t id,
                       const void *payload, size_t payload_len);
/* SUBSCRIBE to one topic filter at `qos` (0 or 1), packet id `id`. */
size_t ml_mqtt_subscribe(uint8_t *out, size_t cap, uint16_t id, const char *filter, uint8_t qos);
size_t ml_mqtt_puback(uint8_t *out, size_t cap, uint16_t id);
size_t ml_mqtt_pingreq(uint8_t *out, size_t cap);
size_t ml_mqtt_disconnect(uint8_t *out, size_t cap);

#endif
