/* libFuzzer target for ota's inputs from outside: a device's OTA status
 * message, the Range header of an image download, and an operator's
 * rollout request. The first byte picks one; the rest is the input. */
#include "ota_input.h"
#include "ota_plan.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *text = malloc(size);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = 0;
    switch (data[0] % 3) {
    case 0: {
        ota_status_msg_t m;
        if (ota_status_parse(text, size - 1, &m) == 0) {
            assert(*m.job && m.rank >= 1 && m.rank <= 3);
            assert(m.progress == -1 || (m.progress >= 0 && m.progress <= 100));
        }
        break;
    }
    case 1: {
        /* the image size from the input too: 0 .. 65,535 bytes */
        size_t len = size >= 3 ? (size_t)data[1] << 8 | data[2] : 0;
        size_t from, to;
        if (ota_range_parse(size >= 3 ? text + 2 : "", len, &from, &to) == 0)
            assert(from <= to && to < len);
        break;
    }
    default: {
        ota_spec_t spec;
        char why[256];
        if (ota_spec_parse(text, &spec, why, sizeof why) == 0)
            ota_spec_clear(&spec);
        else
            assert(*why);
        break;
    }
    }
    free(text);
    return 0;
}
