/* mh_ids — identifiers of the device protocol shared by the services. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#define MH_MAX_DEVICE_ID 64

/* A publish to MH_DIRECT_PREFIX "<client id>/<topic>" reaches that client
 * alone, as <topic>, subscribed or not (the broker plugin, motehub_acl.c). */
#define MH_DIRECT_PREFIX "motehub/to/"

/* A device id is 1-64 characters of A-Z a-z 0-9 . _ - */
static inline bool mh_device_id_valid(const char *id, size_t len)
{
    if (len < 1 || len > MH_MAX_DEVICE_ID)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* A metric name, as ingest stores it and health gates name it: the same
 * 1-64 characters as a device id. */
static inline bool mh_metric_name_valid(const char *name)
{
    return name && mh_device_id_valid(name, strlen(name));
}
