/* bench_mqtt — the MQTT publisher the benchmark drivers share (live_bench,
 * live_clients): a Paho client with a clean session and a wide in-flight
 * window. */
#pragma once
#include <MQTTAsync.h>
#include <unistd.h>

/* Connects to `url` as `client_id`, waiting up to 5 s. The client, or NULL
 * (nothing left to free). */
static inline MQTTAsync bench_mqtt_connect(const char *url, const char *client_id)
{
    MQTTAsync c;
    if (MQTTAsync_create(&c, url, client_id, MQTTCLIENT_PERSISTENCE_NONE, NULL) !=
        MQTTASYNC_SUCCESS)
        return NULL;
    MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer;
    co.cleansession = 1;
    co.maxInflight = 65535;
    MQTTAsync_connect(c, &co);
    for (int i = 0; i < 200 && !MQTTAsync_isConnected(c); i++)
        usleep(25000);
    if (!MQTTAsync_isConnected(c)) {
        MQTTAsync_destroy(&c);
        return NULL;
    }
    return c;
}
