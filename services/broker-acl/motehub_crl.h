/* The broker's certificate revocation list, watched for its expiry: a CRL
 * past its nextUpdate makes mosquitto refuse every client certificate, so
 * the on-call engineer needs to see it coming (the gateway exports it as
 * mh_broker_crl_next_update_timestamp_seconds; deploy/prometheus alerts). */
#pragma once
#include <time.h>

/* The CRL file's nextUpdate (seconds since the epoch), read again when the
 * file changes; 0 when there is no such file or it does not parse. */
time_t crl_next_update(const char *path);
