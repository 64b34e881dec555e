/* mh_test_device — a simulated device for the integration tests, on the
 * device agent (agent/mh_agent.h). */
#pragma once
#include "mh_agent.h"

/* Device `id` connected to the broker at `url`; fails the test when it is
 * not connected within 10 s. */
mh_agent_t *mht_device(const char *url, const char *id);
/* Publishes one sample, `metric` = `value`, at QoS 1, stamped by the gateway;
 * the agent's result (0, or a negative errno). */
int mht_device_sample(mh_agent_t *a, const char *metric, double value);
