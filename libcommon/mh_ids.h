/* mh_ids — identifiers of the device protocol shared by the services. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#define MH_MAX_DEVICE_ID 64

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
