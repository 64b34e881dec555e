#include "mh_config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int mh_config_parse_duration(const char *s, int64_t *out_ms)
{
    if (!s || !*s)
        return -EINVAL;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -EINVAL;
    double mult;
    if (!*end || strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "m") == 0)
        mult = 60e3;
    else if (strcmp(end, "h") == 0)
        mult = 3600e3;
    else if (strcmp(end, "d") == 0)
        mult = 86400e3;
    else
        return -EINVAL;
    double ms = v * mult;
    if (ms > 9.2e18)
        return -EINVAL;
    *out_ms = (int64_t)ms;
    return 0;
}

int mh_config_parse_bool(const char *s, bool *out)
{
    static const char *yes[] = {"1", "true", "yes", "on"}, *no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

static int s_set(const mh_cfg_opt_t *o, void *cfg, const char *val)
{
    char *field = (char *)cfg + o->offset;
    char *end;
    switch (o->type) {
    case MH_CFG_STR: {
        char *copy = strdup(val);
        if (!copy)
            return -ENOMEM;
        free(*(char **)field);
        *(char **)field = copy;
        return 0;
    }
    case MH_CFG_INT: {
        errno = 0;
        long long v = strtoll(val, &end, 10);
        if (errno || end == val || *end)
            return -EINVAL;
        *(int64_t *)field = v;
        return 0;
    }
    case MH_CFG_DOUBLE: {
        errno = 0;
        double v = strtod(val, &end);
        if (errno || end == val || *end)
            return -EINVAL;
        *(double *)field = v;
        return 0;
    }
    case MH_CFG_DURATION:
        return mh_config_parse_duration(val, (int64_t *)field);
    case MH_CFG_BOOL:
        return mh_config_parse_bool(val, (bool *)field);
    }
    return -EINVAL;
}

static const char *s_type_hint(mh_cfg_type_t t)
{
    switch (t) {
    case MH_CFG_STR:
        return "TEXT";
    case MH_CFG_INT:
        return "N";
    case MH_CFG_DOUBLE:
        return "X";
    case MH_CFG_DURATION:
        return "DURATION";
    case MH_CFG_BOOL:
        return "BOOL";
    }
    return "";
}

static void s_help(const mh_cfg_opt_t *table, const char *prog, const char *summary)
{
    printf("Usage: %s [OPTION]...\n%s\n\nEvery option can also be set by its environment "
           "variable; a flag wins over the variable.\n\n",
           prog, summary);
    for (const mh_cfg_opt_t *o = table; o->flag; o++) {
        char left[64];
        snprintf(left, sizeof left, "--%s=%s", o->flag, s_type_hint(o->type));
        printf("  %-30s %s\n  %-30s   env %s, default \"%s\"\n", left, o->help, "", o->env,
               o->def ? o->def : "");
    }
    printf("  %-30s %s\n", "--help", "print this help and exit");
    printf("\nDURATION takes ms, s, m, h or d (\"30s\", \"7d\"); BOOL takes true/false.\n");
}

int mh_config_load(const mh_cfg_opt_t *table, void *cfg, int argc, char **argv, const char *prog,
                   const char *summary)
{
    size_t n = 0;
    while (table[n].flag)
        n++;

    for (size_t i = 0; i < n; i++) {
        const mh_cfg_opt_t *o = &table[i];
        const char *env = o->env ? getenv(o->env) : NULL;
        const char *val = env ? env : (o->def ? o->def : (o->type == MH_CFG_STR ? "" : "0"));
        if (s_set(o, cfg, val) < 0) {
            fprintf(stderr, "%s: invalid value \"%s\" for %s\n", prog, val, env ? o->env : o->flag);
            return -EINVAL;
        }
    }

    struct option *longopts = calloc(n + 2, sizeof *longopts);
    if (!longopts)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        longopts[i] = (struct option){table[i].flag, required_argument, NULL, (int)i + 256};
    longopts[n] = (struct option){"help", no_argument, NULL, 'h'};

    int rc = 0;
    optind = 1;
    opterr = 0;
    for (;;) {
        int idx = -1;
        int c = getopt_long(argc, argv, ":h", longopts, &idx);
        if (c == -1)
            break;
        if (c == 'h') {
            s_help(table, prog, summary);
            rc = 1;
            break;
        }
        if (c == '?' || c == ':') {
            fprintf(stderr, "%s: %s option '%s'; see --help\n", prog,
                    c == '?' ? "unknown" : "missing value for", argv[optind - 1]);
            rc = -EINVAL;
            break;
        }
        const mh_cfg_opt_t *o = &table[c - 256];
        if (s_set(o, cfg, optarg) < 0) {
            fprintf(stderr, "%s: invalid value \"%s\" for --%s\n", prog, optarg, o->flag);
            rc = -EINVAL;
            break;
        }
    }
    if (rc == 0 && optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'; see --help\n", prog, argv[optind]);
        rc = -EINVAL;
    }
    free(longopts);
    return rc;
}

void mh_config_free(const mh_cfg_opt_t *table, void *cfg)
{
    for (const mh_cfg_opt_t *o = table; o->flag; o++)
        if (o->type == MH_CFG_STR) {
            char **field = (char **)((char *)cfg + o->offset);
            free(*field);
            *field = NULL;
        }
}
