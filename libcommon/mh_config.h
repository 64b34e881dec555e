/* mh_config — one declarative table per program: flag, environment variable,
 * type, default, where it lands in the config struct, and help.
 *
 * Precedence: default < environment < command line. `--help` is generated
 * from the table; an unknown flag or a bad value is an error. (Fluent Bit's
 * config_map, 12-factor.) */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    MH_CFG_STR,      /* char *  (owned by the struct; freed by mh_config_free) */
    MH_CFG_INT,      /* int64_t */
    MH_CFG_DURATION, /* int64_t milliseconds: "250ms", "30s", "5m", "2h", "7d"; bare = ms */
    MH_CFG_BOOL,     /* bool: 1/0, true/false, yes/no, on/off */
    MH_CFG_DOUBLE,   /* double */
} mh_cfg_type_t;

typedef struct {
    const char *flag; /* long option without dashes, e.g. "mqtt-url" */
    const char *env;  /* environment variable, e.g. "MH_MQTT_URL" */
    mh_cfg_type_t type;
    const char *def; /* default as text; NULL = empty string / zero */
    size_t offset;   /* offsetof(struct, field) */
    const char *help;
} mh_cfg_opt_t;

#define MH_CFG_END                                                                                 \
    {                                                                                              \
        NULL, NULL, 0, NULL, 0, NULL                                                               \
    }

/* Fills `cfg` from the table. Returns 0 to run, 1 when --help or --version
 * was printed (exit 0), or -EINVAL after printing the problem to stderr
 * (exit 2). On error the struct may be partly filled; mh_config_free it. */
int mh_config_load(const mh_cfg_opt_t *table, void *cfg, int argc, char **argv, const char *prog,
                   const char *summary);

/* Parses one value; exposed for tests. Returns 0 or -EINVAL. */
int mh_config_parse_duration(const char *s, int64_t *out_ms);
int mh_config_parse_bool(const char *s, bool *out);

/* Frees the strings the table put in `cfg`. */
void mh_config_free(const mh_cfg_opt_t *table, void *cfg);
