/* ml_mqtt — see ml_mqtt.h. MQTT 3.1.1, OASIS standard, sections 2 and 3. */
#include "ml_mqtt.h"

#include <string.h>

/* the remaining length's variable byte integer (2.2.3); its size */
static size_t s_varint(uint8_t *out, size_t v)
{
    size_t n = 0;
    do {
        uint8_t b = v & 0x7f;
        v >>= 7;
        out[n++] = b | (v ? 0x80 : 0);
    } while (v);
    return n;
}

ssize_t ml_mqtt_parse(const uint8_t *buf, size_t n, size_t max_len, ml_packet_t *p)
{
    if (n < 2)
        return 0;
    size_t len = 0, i = 1;
    for (unsigned shift = 0;; shift += 7) {
        if (i > 4)
            return -1; /* more than four length bytes */
        if (i >= n)
            return 0;
        uint8_t b = buf[i++];
        len |= (size_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            break;
    }
    if (len > max_len)
        return -1;
    if (n - i < len)
        return 0;
    p->type = buf[0] >> 4;
    p->flags = buf[0] & 0x0f;
    p->body = buf + i;
    p->len = len;
    p->value = 0;
    p->topic = p->payload = NULL;
    p->topic_len = p->payload_len = 0;
    if (p->type == ML_PUBLISH) {
        unsigned qos = (p->flags >> 1) & 3;
        size_t need = 2 + (qos ? 2 : 0);
        if (qos == 3 || len < need)
            return -1;
        p->topic_len = (size_t)p->body[0] << 8 | p->body[1];
        if (len - need < p->topic_len)
            return -1;
        p->topic = p->body + 2;
        if (qos &&
            !(p->value = (uint16_t)(p->topic[p->topic_len] << 8 | p->topic[p->topic_len + 1])))
            return -1;
        p->payload = p->topic + p->topic_len + (qos ? 2 : 0);
        p->payload_len = len - need - p->topic_len;
    } else if (p->type == ML_SUBACK) {
        if (len < 3 || !(p->value = (uint16_t)(p->body[0] << 8 | p->body[1])))
            return -1;
    } else if (p->type == ML_CONNACK || p->type == ML_PUBACK) {
        if (len != 2)
            return -1;
        if (p->type == ML_CONNACK)
            p->value = p->body[1];
        else if (!(p->value = (uint16_t)(p->body[0] << 8 | p->body[1])))
            return -1;
    }
    return (ssize_t)(i + len);
}

static size_t s_str(uint8_t *out, const char *s, size_t len)
{
    out[0] = (uint8_t)(len >> 8);
    out[1] = (uint8_t)len;
    memcpy(out + 2, s, len);
    return 2 + len;
}

size_t ml_mqtt_connect(uint8_t *out, size_t cap, const char *client_id, uint16_t keepalive_s)
{
    size_t id_len = strlen(client_id);
    if (id_len > 65535)
        return 0;
    size_t rem = 10 + 2 + id_len, hdr = 1 + (rem < 128 ? 1 : rem < 16384 ? 2 : 3);
    if (hdr + rem > cap)
        return 0;
    size_t k = 0;
    out[k++] = 0x10;
    k += s_varint(out + k, rem);
    k += s_str(out + k, "MQTT", 4);
    out[k++] = 4;    /* protocol level: 3.1.1 */
    out[k++] = 0x02; /* clean session, no will, no user name */
    out[k++] = (uint8_t)(keepalive_s >> 8);
    out[k++] = (uint8_t)keepalive_s;
    k += s_str(out + k, client_id, id_len);
    return k;
}

size_t ml_mqtt_publish(uint8_t *out, size_t cap, const char *topic, size_t topic_len, uint16_t id,
                       const void *payload, size_t payload_len)
{
    if (topic_len > 65535 || !id)
        return 0;
    size_t rem = 2 + topic_len + 2 + payload_len;
    if (rem > 268435455)
        return 0;
    size_t hdr = 1 + (rem < 128 ? 1 : rem < 16384 ? 2 : rem < 2097152 ? 3 : 4);
    if (hdr + rem > cap)
        return 0;
    size_t k = 0;
    out[k++] = 0x32; /* PUBLISH, QoS 1 */
    k += s_varint(out + k, rem);
    k += s_str(out + k, topic, topic_len);
    out[k++] = (uint8_t)(id >> 8);
    out[k++] = (uint8_t)id;
    memcpy(out + k, payload, payload_len);
    return k + payload_len;
}

size_t ml_mqtt_subscribe(uint8_t *out, size_t cap, uint16_t id, const char *filter, uint8_t qos)
{
    size_t flen = strlen(filter);
    size_t rem = 2 + 2 + flen + 1;
    if (!id || flen > 65535 || qos > 1 || 1 + 3 + rem > cap)
        return 0;
    size_t k = 0;
    out[k++] = 0x82; /* SUBSCRIBE, its reserved flags 0010 */
    k += s_varint(out + k, rem);
    out[k++] = (uint8_t)(id >> 8);
    out[k++] = (uint8_t)id;
    k += s_str(out + k, filter, flen);
    out[k++] = qos;
    return k;
}

size_t ml_mqtt_puback(uint8_t *out, size_t cap, uint16_t id)
{
    if (cap < 4 || !id)
        return 0;
    out[0] = 0x40;
    out[1] = 2;
    out[2] = (uint8_t)(id >> 8);
    out[3] = (uint8_t)id;
    return 4;
}

static size_t s_empty(uint8_t *out, size_t cap, uint8_t type)
{
    if (cap < 2)
        return 0;
    out[0] = type;
    out[1] = 0;
    return 2;
}

size_t ml_mqtt_pingreq(uint8_t *out, size_t cap)
{
    return s_empty(out, cap, 0xc0);
}

size_t ml_mqtt_disconnect(uint8_t *out, size_t cap)
{
    return s_empty(out, cap, 0xe0);
}
