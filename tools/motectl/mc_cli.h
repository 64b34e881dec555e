/* motectl's shared plumbing (mc_cli.c): the API's address and token, HTTP
 * calls, output as a table or JSON, options after the command words. The
 * commands, by concern: mc_devices.c (devices, twins, shadows, commands,
 * telemetry, provisioning templates), mc_ota.c (firmware, rollouts, jobs),
 * motectl.c (the fleet, tokens, CURVE keys and dispatch), mc_ca.c (the
 * fleet CA). Each command returns motectl's exit status. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "mh_http_client.h"

extern const char *mc_url, *mc_token;
extern bool mc_json;
extern const char *mc_usage;

#define NEED(n)                                                                                    \
    do {                                                                                           \
        if (argc < (n)) {                                                                          \
            fputs(mc_usage, stderr);                                                               \
            return 2;                                                                              \
        }                                                                                          \
    } while (0)

/* Performs a request; returns the HTTP status (0 when unreachable) and the
 * body in *out (caller frees). */
long mc_http(const char *method, const char *path, const char *ctype, const char *body, size_t blen,
             const char *if_match, mh_http_resp_t *out);
/* A JSON call: prints the API's error and returns NULL on failure (*rc
 * set to the exit status). */
json_t *mc_call(const char *method, const char *path, json_t *body, const char *if_match, int *rc);
/* `fmt` with two %s: a and b URL-escaped (either may be NULL). */
void mc_path_escape(char *out, size_t len, const char *fmt, const char *a, const char *b);
/* Appends name=value (escaped) to a query string; nothing when value is NULL. */
void mc_qappend(char *q, size_t len, const char *name, const char *value);

void mc_print_json(json_t *v);
/* A member as text ("-" when absent or null); milliseconds as UTC time. */
const char *mc_str(json_t *o, const char *k);
const char *mc_time(json_t *o, const char *k);
/* Prints `v` as JSON (--json) or with `table`; consumes v. 1 when v is NULL. */
int mc_out(json_t *v, void (*table)(json_t *));

/* Options after the command words: --name value pairs, repeatable. */
typedef struct {
    const char *name;
    const char *values[16];
    int n;
} mc_opt_t;
int mc_opts(int argc, char **argv, mc_opt_t *opts, int nopts, char **pos, int *npos);
const char *mc_opt(mc_opt_t *o, int nopts, const char *name);
/* KEY=VALUE arguments as an object: with `json` the values are JSON (a
 * bare word is a string), else strings. NULL (said why) on a malformed one. */
json_t *mc_key_values(char **pos, int np, bool json);
/* "10" → 10, "0.95" → 0.95: whole numbers stay integers. */
json_t *mc_number(const char *t);

/* the commands: argv after the command word */
int mc_devices(int argc, char **argv);
int mc_twin(int argc, char **argv);
int mc_shadow(int argc, char **argv);
int mc_command(int argc, char **argv);
int mc_telemetry(int argc, char **argv);
int mc_template(int argc, char **argv);
int mc_firmware(int argc, char **argv);
int mc_rollout(int argc, char **argv, bool jobs);
/* One rollout as a table row, with its waves. */
void mc_t_rollout(json_t *r);
