/* mh_digest — SHA-256 and lower-case hex, as the services write them
 * (firmware digests, token hashes, link signatures). */
#pragma once
#include <stddef.h>

/* Lower-case hex of len bytes into out (2 * len + 1 bytes). */
void mh_hex(const void *bytes, size_t len, char *out);
/* Lower-case hex SHA-256 of len bytes into out[65]. */
void mh_sha256_hex(const void *data, size_t len, char out[65]);
