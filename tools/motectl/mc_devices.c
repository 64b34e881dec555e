/* motectl: devices, twins, named shadows, commands, telemetry and fleet
 * provisioning templates. */
#include "mc_cli.h"

#include "mh_json.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void s_t_devices(json_t *v)
{
    printf("%-28s %-8s %-12s %-20s %s\n", "ID", "STATUS", "FIRMWARE", "LAST SEEN (UTC)", "TAGS");
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(v, "items"), i, d)
    {
        char *tags = json_dumps(json_object_get(d, "tags"), JSON_COMPACT);
        printf("%-28s %-8s %-12s %-20s %s\n", mc_str(d, "id"), mc_str(d, "status"),
               mc_str(d, "firmware"), mc_time(d, "lastSeen"), tags ? tags : "{}");
        free(tags);
    }
    if (json_is_string(json_object_get(v, "next")))
        printf("(more: --cursor %s, or --all)\n", mc_str(v, "next"));
}

static void s_t_device(json_t *d)
{
    const char *k;
    json_t *x;
    json_object_foreach(d, k, x)
    {
        char *t = json_is_string(x) ? NULL : json_dumps(x, JSON_COMPACT | JSON_ENCODE_ANY);
        printf("%-12s %s\n", k, t ? t : json_string_value(x));
        free(t);
    }
}

static void s_t_commands(json_t *v)
{
    printf("%-36s %-12s %-10s %s\n", "ID", "NAME", "STATUS", "CREATED (UTC)");
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(v, "items"), i, c)
        printf("%-36s %-12s %-10s %s\n", mc_str(c, "id"), mc_str(c, "name"), mc_str(c, "status"),
               mc_time(c, "createdAt"));
}

static void s_t_telemetry(json_t *v)
{
    size_t i, j;
    json_t *s, *p;
    json_array_foreach(json_object_get(v, "series"), i, s)
    {
        printf("%s (%s)\n", mc_str(s, "metric"), mc_str(s, "bucket"));
        json_array_foreach(json_object_get(s, "points"), j, p)
        {
            json_t *t = json_is_array(p) ? json_array_get(p, 0) : json_object_get(p, "t");
            json_t *tmp = json_pack("{s:O}", "t", t);
            if (json_is_array(p))
                printf("  %s  %g\n", mc_time(tmp, "t"), json_number_value(json_array_get(p, 1)));
            else
                printf("  %s  min %g  avg %g  max %g  n %s\n", mc_time(tmp, "t"),
                       json_number_value(json_object_get(p, "min")),
                       json_number_value(json_object_get(p, "avg")),
                       json_number_value(json_object_get(p, "max")), mc_str(p, "count"));
            json_decref(tmp);
        }
    }
}

static void s_t_latest(json_t *v)
{
    const char *k;
    json_t *m;
    json_object_foreach(json_object_get(v, "metrics"), k, m) printf(
        "%-16s %-12g %s\n", k, json_number_value(json_object_get(m, "value")), mc_time(m, "t"));
}

int mc_devices(int argc, char **argv)
{
    NEED(1);
    int rc;
    char path[2048];
    if (strcmp(argv[0], "list") == 0) {
        mc_opt_t o[] = {{"status"}, {"firmware"}, {"tag"}, {"q"}, {"limit"}, {"cursor"}};
        char *pos[16];
        int np;
        if (mc_opts(argc - 1, argv + 1, o, 6, pos, &np))
            return 2;
        bool all = np && strcmp(pos[0], "--all") == 0;
        char q[1024] = "";
        for (int k = 0; k < 6; k++)
            for (int j = 0; j < o[k].n; j++)
                mc_qappend(q, sizeof q, o[k].name, o[k].values[j]);
        json_t *acc = NULL;
        for (;;) {
            snprintf(path, sizeof path, "/api/v1/devices%s", q);
            json_t *v = mc_call("GET", path, NULL, NULL, &rc);
            if (!v)
                return rc;
            if (!all)
                return mc_out(v, s_t_devices);
            if (!acc)
                acc = json_pack("{s:[],s:n}", "items", "next");
            json_array_extend(json_object_get(acc, "items"), json_object_get(v, "items"));
            const char *next = json_string_value(json_object_get(v, "next"));
            if (!next) {
                json_decref(v);
                return mc_out(acc, s_t_devices);
            }
            char *cq = strstr(q, "cursor=");
            if (cq)
                *(cq - 1) = 0;
            mc_qappend(q, sizeof q, "cursor", next);
            json_decref(v);
        }
    }
    NEED(2);
    if (strcmp(argv[0], "get") == 0) {
        mc_path_escape(path, sizeof path, "/api/v1/devices/%s%s", argv[1], NULL);
        return mc_out(mc_call("GET", path, NULL, NULL, &rc), s_t_device) ? rc : 0;
    }
    if (strcmp(argv[0], "delete") == 0) {
        mc_path_escape(path, sizeof path, "/api/v1/devices/%s%s", argv[1], NULL);
        json_t *v = mc_call("DELETE", path, NULL, NULL, &rc);
        if (v && !mc_json)
            printf("deleted %s\n", argv[1]);
        json_decref(v);
        return v ? 0 : rc;
    }
    if (strcmp(argv[0], "register") == 0) {
        json_t *tags = json_object();
        for (int i = 2; i < argc; i++) {
            char *eq = strchr(argv[i], '=');
            if (!eq) {
                fprintf(stderr, "motectl: tags are KEY=VALUE\n");
                json_decref(tags);
                return 2;
            }
            *eq = 0;
            json_object_set_new(tags, argv[i], json_string(eq + 1));
        }
        json_t *body = json_pack("{s:s,s:o}", "id", argv[1], "tags", tags);
        json_t *v = mc_call("POST", "/api/v1/devices", body, NULL, &rc);
        json_decref(body);
        return mc_out(v, s_t_device) ? rc : 0;
    }
    fputs(mc_usage, stderr);
    return 2;
}

int mc_twin(int argc, char **argv)
{
    NEED(2);
    int rc;
    char path[1024];
    mc_path_escape(path, sizeof path, "/api/v1/devices/%s/twin%s", argv[1], NULL);
    if (strcmp(argv[0], "get") == 0)
        return mc_out(mc_call("GET", path, NULL, NULL, &rc), NULL) ? rc : 0;
    bool set = strcmp(argv[0], "set") == 0;
    if (!set && strcmp(argv[0], "tag") != 0) {
        fputs(mc_usage, stderr);
        return 2;
    }
    mc_opt_t o[] = {{"if-match"}};
    char *pos[64];
    int np;
    if (mc_opts(argc - 2, argv + 2, o, 1, pos, &np) || np == 0) {
        fputs(mc_usage, stderr);
        return 2;
    }
    json_t *patch = mc_key_values(pos, np, set);
    if (!patch)
        return 2;
    json_t *body = json_pack("{s:o}", set ? "desired" : "tags", patch);
    json_t *v = mc_call("PATCH", path, body, mc_opt(o, 1, "if-match"), &rc);
    json_decref(body);
    return mc_out(v, NULL) ? rc : 0;
}

/* A device's named shadows: /api/v1/devices/{id}/shadows[/{name}] */
int mc_shadow(int argc, char **argv)
{
    NEED(2);
    int rc;
    char path[1024];
    if (strcmp(argv[0], "list") == 0) {
        mc_path_escape(path, sizeof path, "/api/v1/devices/%s/shadows%s", argv[1], NULL);
        return mc_out(mc_call("GET", path, NULL, NULL, &rc), NULL) ? rc : 0;
    }
    NEED(3);
    mc_path_escape(path, sizeof path, "/api/v1/devices/%s/shadows/%s", argv[1], argv[2]);
    if (strcmp(argv[0], "get") == 0 || strcmp(argv[0], "delete") == 0)
        return mc_out(mc_call(*argv[0] == 'g' ? "GET" : "DELETE", path, NULL, NULL, &rc), NULL) ? rc
                                                                                                : 0;
    mc_opt_t o[] = {{"version"}};
    char *pos[64];
    int np;
    if (strcmp(argv[0], "set") || mc_opts(argc - 3, argv + 3, o, 1, pos, &np) || np == 0) {
        fputs(mc_usage, stderr);
        return 2;
    }
    json_t *desired = mc_key_values(pos, np, true);
    if (!desired)
        return 2;
    json_t *body = json_pack("{s:o}", "desired", desired);
    if (mc_opt(o, 1, "version"))
        json_object_set_new(body, "version", mc_number(mc_opt(o, 1, "version")));
    json_t *v = mc_call("PATCH", path, body, NULL, &rc);
    json_decref(body);
    return mc_out(v, NULL) ? rc : 0;
}

int mc_command(int argc, char **argv)
{
    NEED(2);
    int rc;
    char path[1024];
    if (strcmp(argv[0], "list") == 0) {
        mc_path_escape(path, sizeof path, "/api/v1/devices/%s/commands%s", argv[1], NULL);
        return mc_out(mc_call("GET", path, NULL, NULL, &rc), s_t_commands) ? rc : 0;
    }
    NEED(3);
    if (strcmp(argv[0], "get") == 0) {
        mc_path_escape(path, sizeof path, "/api/v1/devices/%s/commands/%s", argv[1], argv[2]);
        return mc_out(mc_call("GET", path, NULL, NULL, &rc), s_t_device) ? rc : 0;
    }
    if (strcmp(argv[0], "send") != 0) {
        fputs(mc_usage, stderr);
        return 2;
    }
    mc_opt_t o[] = {{"ttl"}, {"timeout"}};
    char *pos[8];
    int np;
    if (mc_opts(argc - 3, argv + 3, o, 2, pos, &np))
        return 2;
    json_t *params = np ? mh_json_loads(pos[0], 0, MH_JSON_MAX_DEPTH, NULL) : json_object();
    if (!json_is_object(params)) {
        fprintf(stderr, "motectl: PARAMS is a JSON object, e.g. '{\"ms\":500}'\n");
        json_decref(params);
        return 2;
    }
    json_t *body = json_pack("{s:s,s:o}", "name", argv[2], "params", params);
    if (mc_opt(o, 2, "ttl"))
        json_object_set_new(body, "ttl", json_integer(atoll(mc_opt(o, 2, "ttl"))));
    if (mc_opt(o, 2, "timeout"))
        json_object_set_new(body, "timeout", json_integer(atoll(mc_opt(o, 2, "timeout"))));
    mc_path_escape(path, sizeof path, "/api/v1/devices/%s/commands%s", argv[1], NULL);
    json_t *v = mc_call("POST", path, body, NULL, &rc);
    json_decref(body);
    return mc_out(v, s_t_device) ? rc : 0;
}

int mc_telemetry(int argc, char **argv)
{
    NEED(1);
    int rc;
    char path[2048];
    if (strcmp(argv[0], "latest") == 0) {
        NEED(2);
        mc_path_escape(path, sizeof path, "/api/v1/devices/%s/telemetry/latest%s", argv[1], NULL);
        return mc_out(mc_call("GET", path, NULL, NULL, &rc), s_t_latest) ? rc : 0;
    }
    mc_opt_t o[] = {{"metric"}, {"from"}, {"to"}, {"bucket"}, {"limit"}, {"cursor"}};
    char *pos[8];
    int np;
    if (mc_opts(argc - 1, argv + 1, o, 6, pos, &np))
        return 2;
    char q[1024] = "";
    for (int k = 0; k < 6; k++)
        for (int j = 0; j < o[k].n; j++)
            mc_qappend(q, sizeof q, o[k].name, o[k].values[j]);
    char base[600];
    mc_path_escape(base, sizeof base, "/api/v1/devices/%s/telemetry%s", argv[0], NULL);
    snprintf(path, sizeof path, "%s%s", base, q);
    return mc_out(mc_call("GET", path, NULL, NULL, &rc), s_t_telemetry) ? rc : 0;
}

static void s_t_templates(json_t *v)
{
    printf("%-36s %-8s %-8s %s\n", "NAME", "ENABLED", "DEVICES", "UPDATED (UTC)");
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(v, "items"), i, t)
    {
        json_t *e = json_object_get(json_object_get(t, "template"), "enabled");
        printf("%-36s %-8s %-8s %s\n", mc_str(t, "name"), e && !json_is_true(e) ? "no" : "yes",
               mc_str(t, "devices"), mc_time(t, "updatedAt"));
    }
}

/* Fleet provisioning templates: /api/v1/provisioning-templates[/{name}]; a
 * template's body from a file or "-" (stdin). */
int mc_template(int argc, char **argv)
{
    NEED(1);
    int rc;
    char path[512];
    if (strcmp(argv[0], "list") == 0 && argc == 1)
        return mc_out(mc_call("GET", "/api/v1/provisioning-templates", NULL, NULL, &rc),
                      s_t_templates)
                   ? rc
                   : 0;
    NEED(2);
    mc_path_escape(path, sizeof path, "/api/v1/provisioning-templates/%s%s", argv[1], NULL);
    if (strcmp(argv[0], "get") == 0 && argc == 2)
        return mc_out(mc_call("GET", path, NULL, NULL, &rc), NULL) ? rc : 0;
    if (strcmp(argv[0], "delete") == 0 && argc == 2) {
        json_t *v = mc_call("DELETE", path, NULL, NULL, &rc);
        json_decref(v);
        if (v && !mc_json)
            printf("deleted template %s\n", argv[1]);
        return v ? 0 : rc;
    }
    if (strcmp(argv[0], "put") == 0 && argc == 3) {
        json_error_t jerr;
        json_t *body = strcmp(argv[2], "-") == 0 ? json_loadf(stdin, 0, &jerr)
                                                 : json_load_file(argv[2], 0, &jerr);
        if (!body) {
            fprintf(stderr, "motectl: %s: %s (line %d)\n", argv[2], jerr.text, jerr.line);
            return 2;
        }
        json_t *v = mc_call("PUT", path, body, NULL, &rc);
        json_decref(body);
        return mc_out(v, NULL) ? rc : 0;
    }
    fputs(mc_usage, stderr);
    return 2;
}
