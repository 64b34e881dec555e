/* libFuzzer target for what the device agent reads from the broker: a
 * hostile broker must not crash a device. The first byte picks command, OTA
 * job or twin delta; the rest is the payload. */
#include "mh_agent_parse.h"

#include <assert.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    json_t *root = NULL;
    switch (data[0] % 3) {
    case 0: {
        mh_agent_cmd_t c;
        if ((root = mh_agent_parse_command(p, n, &c))) {
            assert(c.id && *c.id && strlen(c.id) <= MH_AGENT_MAX_ID && c.name);
            char *text = json_dumps(c.params, JSON_ENCODE_ANY); /* what a handler may do */
            free(text);
        }
        break;
    }
    case 1: {
        mh_ota_job_t j;
        if ((root = mh_agent_parse_job(p, n, &j))) {
            assert(j.job_id && *j.job_id && strlen(j.job_id) <= MH_AGENT_MAX_ID);
            assert(j.size >= -1);
        }
        break;
    }
    default: {
        json_t *state;
        int64_t version;
        if ((root = mh_agent_parse_delta(p, n, &state, &version))) {
            assert(json_is_object(state));
            json_t *copy = json_deep_copy(state); /* what motesim does with it */
            assert(json_equal(copy, state));
            json_decref(copy);
        }
        break;
    }
    }
    json_decref(root);
    return 0;
}
