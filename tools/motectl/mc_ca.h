/* motectl ca — the fleet certificate authority (see mc_ca.c). */
#pragma once
#include <stdbool.h>

/* argv[0] is the ca subcommand ("init", "issue", ...). Exit status: 0, 1 on
 * a failure, 2 on a usage error. */
int mc_ca_main(int argc, char **argv);
/* 1-64 of A-Z a-z 0-9 . _ - (shared/spec/device-protocol.md). */
bool mc_valid_device_id(const char *id);
