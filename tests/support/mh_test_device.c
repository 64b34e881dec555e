#include "mh_test_device.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

mh_agent_t *mht_device(const char *url, const char *id)
{
    mh_agent_t *a = mh_agent_new(&(mh_agent_opts_t){.url = url, .device_id = id});
    assert_non_null(a);
    assert_int_equal(mh_agent_connect(a), 0);
    if (!mh_agent_wait_connected(a, 10000))
        fail_msg("device %s did not connect to %s within 10 s", id, url);
    return a;
}

int mht_device_sample(mh_agent_t *a, const char *metric, double value)
{
    mh_sample_t smp = {.n = 1, .seq = -1};
    smp.m[0].name = metric;
    smp.m[0].value = value;
    return mh_agent_publish_samples(a, &smp, 1, 1);
}
