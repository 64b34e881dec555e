/* libFuzzer target for the gateway's validators: whatever a device sends
 * must give a verdict, never a crash, a leak or undefined behaviour, and a
 * refusal must leave the points buffer as it was.
 * The first byte picks the validator; the rest is the input. */
#include "gw_validate.h"

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *in = data + 1;
    size_t n = size - 1;
    gw_points_t p = {0};
    char detail[256];
    const int64_t now = 1800000000000LL;
    /* one accepted point first, to check that a refusal keeps it */
    assert(gw_validate_telemetry_json("{\"keep\":1}", 10, now, &p, NULL, 0) == GW_OK);
    gw_reason_t r = GW_OK;
    switch (data[0] % 5) {
    case 0: {
        char id[GW_MAX_ID + 1];
        gw_topic_kind_t kind;
        /* a device id, or for fleet provisioning a claim's client id */
        if (gw_topic_parse((const char *)in, n, id, &kind) == GW_OK) {
            bool claim = kind >= GW_TOPIC_PROVISION_CREATE && kind <= GW_TOPIC_PROVISION_REGISTER;
            assert(claim
                       ? strncmp(id, "claim:", 6) == 0 && gw_device_id_valid(id + 6, strlen(id) - 6)
                       : gw_device_id_valid(id, strlen(id)));
        }
        break;
    }
    case 1: {
        r = gw_validate_telemetry_json((const char *)in, n, now, &p, detail, sizeof detail);
        /* the fast path takes only what the full parser accepts, with the
         * same points in the same order, bit for bit */
        gw_points_t fast = {0}, full = {0};
        if (gw_telemetry_json_fast((const char *)in, n, now, &fast)) {
            assert(r == GW_OK);
            assert(gw_validate_telemetry_json_full((const char *)in, n, now, &full, NULL, 0) ==
                   GW_OK);
            assert(fast.n == full.n && fast.n == p.n - 1);
            for (size_t i = 0; i < fast.n; i++) {
                assert(strcmp(gw_point_metric(&fast, &fast.v[i]),
                              gw_point_metric(&full, &full.v[i])) == 0);
                assert(fast.v[i].ts_ms == full.v[i].ts_ms);
                assert(memcmp(&fast.v[i].value, &full.v[i].value, sizeof(double)) == 0);
            }
        }
        gw_points_free(&fast);
        gw_points_free(&full);
        break;
    }
    case 2:
        r = gw_validate_telemetry_pb(in, n, now, &p, detail, sizeof detail);
        break;
    case 3: {
        bool online;
        char fw[GW_MAX_FIRMWARE + 1];
        gw_validate_status((const char *)in, n, &online, fw, detail, sizeof detail);
        break;
    }
    case 4:
        gw_validate_ota_status((const char *)in, n, detail, sizeof detail);
        break;
    }
    if (r != GW_OK)
        assert(p.n == 1);
    for (size_t i = 0; i < p.n; i++) {
        const char *m = gw_point_metric(&p, &p.v[i]);
        assert(gw_metric_name_valid(m, strlen(m)));
        assert(p.v[i].ts_ms <= now + GW_MAX_FUTURE_MS);
    }
    gw_points_free(&p);
    return 0;
}
