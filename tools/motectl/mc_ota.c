/* motectl: firmware, rollouts and jobs. */
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

static void s_t_firmware(json_t *v)
{
    printf("%-14s %-10s %10s %-64s %s\n", "VERSION", "HARDWARE", "SIZE", "SHA-256",
           "CREATED (UTC)");
    size_t i;
    json_t *f;
    json_t *items = json_incref(json_object_get(v, "items"));
    if (!items) /* one entry, not a list */
        items = json_pack("[O]", v);
    json_array_foreach(items, i, f)
        printf("%-14s %-10s %10s %-64s %s\n", mc_str(f, "version"), mc_str(f, "hardware"),
               mc_str(f, "size"), mc_str(f, "sha256"), mc_time(f, "created"));
    json_decref(items);
}

void mc_t_rollout(json_t *r)
{
    printf("%-36s %-10s %-13s wave %s  targeted %s\n", mc_str(r, "id"), mc_str(r, "firmware"),
           mc_str(r, "state"), mc_str(r, "currentWave"), mc_str(r, "targeted"));
    if (json_is_string(json_object_get(r, "reason")))
        printf("  reason: %s\n", mc_str(r, "reason"));
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(r, "waves"), i, w) printf(
        "  wave %zu %5s%% %-9s targeted %-6s sent %-6s observing %-6s succeeded %-6s failed %-6s"
        " timed out %s\n",
        i, mc_str(w, "percent"), mc_str(w, "state"), mc_str(w, "targeted"), mc_str(w, "sent"),
        mc_str(w, "observing"), mc_str(w, "succeeded"), mc_str(w, "failed"), mc_str(w, "timedOut"));
    /* the health gate's last evaluation: each wave's updated devices
     * against the control group */
    json_t *h = json_object_get(r, "healthNow");
    if (json_is_object(h))
        printf("  health at %s:\n", mc_time(h, "at"));
    json_array_foreach(json_object_get(h, "signals"), i, w)
    {
        const char *m = json_string_value(json_object_get(w, "metric"));
        printf("    wave %s %-18s updated %-10.4g (%s) control %-10.4g (%s)%s\n", mc_str(w, "wave"),
               m ? m : mc_str(w, "signal"), json_number_value(json_object_get(w, "updated")),
               mc_str(w, "updatedDevices"), json_number_value(json_object_get(w, "control")),
               mc_str(w, "controlDevices"),
               json_is_true(json_object_get(w, "worse")) ? "  WORSE" : "");
    }
}

static void s_t_rollouts(json_t *v)
{
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(v, "items"), i, r) mc_t_rollout(r);
}

int mc_firmware(int argc, char **argv)
{
    NEED(1);
    int rc;
    char path[1024];
    if (strcmp(argv[0], "list") == 0)
        return mc_out(mc_call("GET", "/api/v1/firmware", NULL, NULL, &rc), s_t_firmware) ? rc : 0;
    if (strcmp(argv[0], "signing-key") == 0) {
        mh_http_resp_t out;
        long st = mc_http("GET", "/api/v1/firmware/signing-key", NULL, NULL, 0, NULL, &out);
        if (st == 200)
            fputs(out.body ? out.body : "", stdout);
        else if (st)
            fprintf(stderr, "motectl: %ld: %s\n", st, out.body ? out.body : "");
        free(out.body);
        return st == 200 ? 0 : st ? 1 : 3;
    }
    NEED(2);
    if (strcmp(argv[0], "get") == 0) {
        mc_path_escape(path, sizeof path, "/api/v1/firmware/%s%s", argv[1], NULL);
        return mc_out(mc_call("GET", path, NULL, NULL, &rc), s_t_firmware) ? rc : 0;
    }
    if (strcmp(argv[0], "upload") != 0) {
        fputs(mc_usage, stderr);
        return 2;
    }
    mc_opt_t o[] = {{"version"}, {"hardware"}};
    char *pos[4];
    int np;
    if (mc_opts(argc - 2, argv + 2, o, 2, pos, &np) || !mc_opt(o, 2, "version")) {
        fprintf(stderr, "motectl: firmware upload FILE --version V [--hardware H]\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    char *img = NULL;
    size_t img_len = 0;
    FILE *m = open_memstream(&img, &img_len);
    char chunk[65536];
    size_t n;
    while (m && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, n, m);
    fclose(f);
    if (!m || fclose(m)) {
        perror(argv[1]);
        return 2;
    }
    char q[512] = "";
    mc_qappend(q, sizeof q, "version", mc_opt(o, 2, "version"));
    mc_qappend(q, sizeof q, "hardware", mc_opt(o, 2, "hardware"));
    snprintf(path, sizeof path, "/api/v1/firmware%s", q);
    mh_http_resp_t out;
    long st = mc_http("POST", path, "application/octet-stream", img, img_len, NULL, &out);
    free(img);
    json_t *v = out.len ? mh_json_loadb(out.body, out.len, 0, MH_JSON_MAX_DEPTH, NULL) : NULL;
    free(out.body);
    if (st != 201) {
        if (st)
            fprintf(stderr, "motectl: %ld: %s\n", st,
                    json_string_value(json_object_get(json_object_get(v, "error"), "message"))
                        ?: "upload refused");
        json_decref(v);
        return st ? 1 : 3;
    }
    return mc_out(v, s_t_firmware);
}

/* rollout and job: /api/v1/rollouts and /api/v1/jobs (`jobs`) */
int mc_rollout(int argc, char **argv, bool jobs)
{
    NEED(1);
    int rc;
    char path[1024];
    const char *base = jobs ? "/api/v1/jobs" : "/api/v1/rollouts";
    if (strcmp(argv[0], "list") == 0)
        return mc_out(mc_call("GET", base, NULL, NULL, &rc), s_t_rollouts) ? rc : 0;
    if (strcmp(argv[0], "create") == 0) {
        mc_opt_t o[] = {{"firmware"},    {"waves"},     {"tag"},         {"from-firmware"},
                        {"success"},     {"failure"},   {"soak"},        {"max-per-minute"},
                        {"on-failure"},  {"json-spec"}, {"job-timeout"}, {"document"},
                        {"stratify-by"}, {"health"}};
        char *pos[4];
        int np;
        if (mc_opts(argc - 1, argv + 1, o, 14, pos, &np))
            return 2;
        json_t *doc = NULL;
        if (mc_opt(o, 12, "document") &&
            !(doc = mh_json_loads(mc_opt(o, 12, "document"), 0, MH_JSON_MAX_DEPTH, NULL))) {
            fprintf(stderr, "motectl: --document is not a JSON object\n");
            return 2;
        }
        json_t *spec;
        if (mc_opt(o, 11, "json-spec")) {
            spec = mh_json_loads(mc_opt(o, 11, "json-spec"), 0, MH_JSON_MAX_DEPTH, NULL);
            if (!spec) {
                fprintf(stderr, "motectl: --json-spec is not JSON\n");
                return 2;
            }
        } else {
            if (!mc_opt(o, 11, "firmware") == !doc) {
                fprintf(stderr, jobs ? "motectl: job create --document JSON ...\n"
                                     : "motectl: rollout create --firmware V ...\n");
                json_decref(doc);
                return 2;
            }
            spec = doc ? json_pack("{s:o}", "document", doc)
                       : json_pack("{s:s}", "firmware", mc_opt(o, 11, "firmware"));
            json_t *target = json_object(), *tags = json_object();
            for (int j = 0; j < o[2].n; j++) {
                char kv[256];
                snprintf(kv, sizeof kv, "%s", o[2].values[j]);
                char *c = strchr(kv, ':');
                if (c) {
                    *c = 0;
                    json_object_set_new(tags, kv, json_string(c + 1));
                }
            }
            if (json_object_size(tags))
                json_object_set(target, "tags", tags);
            json_decref(tags);
            if (mc_opt(o, 11, "from-firmware"))
                json_object_set_new(target, "firmware",
                                    json_string(mc_opt(o, 11, "from-firmware")));
            json_object_set_new(spec, "target", target);
            char waves[256];
            snprintf(waves, sizeof waves, "%s", mc_opt(o, 11, "waves") ?: "1,10,100");
            json_t *wa = json_array();
            for (char *save = NULL, *t = strtok_r(waves, ",", &save); t;
                 t = strtok_r(NULL, ",", &save))
                json_array_append_new(wa, json_pack("{s:o}", "percent", mc_number(t)));
            json_object_set_new(spec, "waves", wa);
            static const char *num[][2] = {{"success", "successThreshold"},
                                           {"failure", "failureThreshold"},
                                           {"soak", "soakSeconds"},
                                           {"max-per-minute", "maxPerMinute"},
                                           {"job-timeout", "jobTimeoutSeconds"}};
            for (size_t k = 0; k < sizeof num / sizeof *num; k++)
                if (mc_opt(o, 11, num[k][0]))
                    json_object_set_new(spec, num[k][1], mc_number(mc_opt(o, 11, num[k][0])));
            if (mc_opt(o, 11, "on-failure"))
                json_object_set_new(spec, "onFailure", json_string(mc_opt(o, 11, "on-failure")));
            if (mc_opt(o, 14, "stratify-by")) {
                char by[512];
                snprintf(by, sizeof by, "%s", mc_opt(o, 14, "stratify-by"));
                json_t *a = json_array();
                for (char *save = NULL, *t = strtok_r(by, ",", &save); t;
                     t = strtok_r(NULL, ",", &save))
                    json_array_append_new(a, json_string(t));
                json_object_set_new(spec, "stratifyBy", a);
            }
            if (mc_opt(o, 14, "health")) {
                json_t *h = mh_json_loads(mc_opt(o, 14, "health"), 0, MH_JSON_MAX_DEPTH, NULL);
                if (!h) {
                    fprintf(stderr, "motectl: --health is not JSON\n");
                    json_decref(spec);
                    return 2;
                }
                json_object_set_new(spec, "health", h);
            }
        }
        json_t *v = mc_call("POST", base, spec, NULL, &rc);
        json_decref(spec);
        return mc_out(v, mc_t_rollout) ? rc : 0;
    }
    NEED(2);
    char fmt[64];
    if (strcmp(argv[0], "get") == 0) {
        snprintf(fmt, sizeof fmt, "%s/%%s%%s", base);
        mc_path_escape(path, sizeof path, fmt, argv[1], NULL);
        return mc_out(mc_call("GET", path, NULL, NULL, &rc), mc_t_rollout) ? rc : 0;
    }
    if (strcmp(argv[0], jobs ? "executions" : "jobs") == 0) {
        snprintf(fmt, sizeof fmt, "%s/%%s/%s%%s", base, argv[0]);
        mc_path_escape(path, sizeof path, fmt, argv[1], NULL);
        return mc_out(mc_call("GET", path, NULL, NULL, &rc), NULL) ? rc : 0;
    }
    static const char *controls[] = {"pause", "resume", "abort", "rollback"};
    for (size_t k = 0; k < (jobs ? 3 : 4); k++)
        if (strcmp(argv[0], controls[k]) == 0) {
            snprintf(fmt, sizeof fmt, "%s/%%s/%s%%s", base, controls[k]);
            mc_path_escape(path, sizeof path, fmt, argv[1], NULL);
            return mc_out(mc_call("POST", path, NULL, NULL, &rc), mc_t_rollout) ? rc : 0;
        }
    fputs(mc_usage, stderr);
    return 2;
}
