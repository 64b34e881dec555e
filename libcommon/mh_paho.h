/* mh_paho — what every Paho MQTT client in Motehub sets once (the gateway,
 * the device agent). Header only: libcommon itself does not link Paho. */
#pragma once
#include <MQTTAsync.h>
#include <stdlib.h>

/* Paho records each entry and exit of its own functions at its default
 * trace level (TRACE_MINIMUM: a timestamped entry in a ring, under a lock)
 * for a trace nobody reads unless MQTT_C_CLIENT_TRACE asks for one: a
 * quarter of the gateway's CPU a message (docs/benchmarks.md). Errors
 * only, unless the environment chose a level. Process-wide. */
static inline void mh_paho_quiet_trace(void)
{
    if (!getenv("MQTT_C_CLIENT_TRACE_LEVEL"))
        MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_ERROR);
}
