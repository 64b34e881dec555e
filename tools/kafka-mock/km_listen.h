/* kafka-mock --listen (km_listen.c): the mock broker reachable from other
 * hosts. */
#pragma once
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

/* From now on the mock's listener binds 0.0.0.0:port and advertises
 * `advertise`. Call before rd_kafka_mock_cluster_new. */
void km_listen_set(uint16_t port, struct in_addr advertise);
