#include "ota_gate.h"
#include "mh_ids.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define S_WHY(...) snprintf(why, whylen, __VA_ARGS__)

static const char *const s_stats[] = {"mean", "p95", "max", "slope", "rate"};
static const char *const s_kinds[] = {"disconnects", "offline", "firmwareRollback", "metric",
                                      "reboots"};

const char *ota_stat_name(ota_stat_t s)
{
    return s_stats[s];
}

const char *ota_signal_name(const ota_signal_t *s)
{
    return s_kinds[s->kind];
}

bool ota_health_needs_metrics(const ota_health_t *h)
{
    for (int i = 0; i < h->nsig; i++)
        if (h->sig[i].kind == OTA_SIG_METRIC)
            return true;
    return false;
}

static int s_signal(json_t *o, size_t i, ota_signal_t *s, char *why, size_t whylen)
{
    if (!json_is_object(o)) {
        S_WHY("health.signals[%zu] must be an object with \"signal\"", i);
        return -1;
    }
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        static const char *known[] = {"signal", "metric", "stat", "worse",
                                      "margin", "max",    "key",  NULL};
        int k = 0;
        while (known[k] && strcmp(known[k], key))
            k++;
        if (!known[k]) {
            S_WHY("unknown field \"health.signals[%zu].%s\" (known: signal, metric, stat, worse,"
                  " margin, max, key)",
                  i, key);
            return -1;
        }
    }
    const char *name = json_string_value(json_object_get(o, "signal"));
    int kind = -1;
    for (int k = 0; name && k < 5; k++)
        if (strcmp(name, s_kinds[k]) == 0)
            kind = k;
    if (kind < 0) {
        S_WHY("health.signals[%zu]: unknown signal \"%s\" (known: disconnects, offline,"
              " firmwareRollback, reboots, metric)",
              i, name ? name : "");
        return -1;
    }
    s->kind = (ota_sig_kind_t)kind;
    /* defaults: a disconnect an hour more than control, 5 points more of
     * the time offline, no device back on another version */
    s->margin = kind == OTA_SIG_DISCONNECTS                          ? 1
                : kind == OTA_SIG_OFFLINE || kind == OTA_SIG_REBOOTS ? 0.05
                                                                     : 0;
    json_t *rkey = json_object_get(o, "key");
    if (kind == OTA_SIG_REBOOTS) {
        /* a reported key a device sends at boot: a reboot count or reset reason */
        const char *k = rkey ? json_string_value(rkey) : "rebootCount";
        if (!k || !*k || strlen(k) >= sizeof s->metric) {
            S_WHY("health.signals[%zu]: \"key\" must name a reported twin key (a reboot count or"
                  " reset reason), 1-127 characters",
                  i);
            return -1;
        }
        snprintf(s->metric, sizeof s->metric, "%s", k);
    } else if (rkey) {
        S_WHY("health.signals[%zu]: \"key\" belongs to a \"reboots\" signal", i);
        return -1;
    }
    json_t *metric = json_object_get(o, "metric"), *stat = json_object_get(o, "stat");
    if (kind == OTA_SIG_METRIC) {
        if (!mh_metric_name_valid(json_string_value(metric))) {
            S_WHY("health.signals[%zu]: \"metric\" must name a telemetry metric (1-64 of"
                  " A-Z a-z 0-9 _ . -)",
                  i);
            return -1;
        }
        snprintf(s->metric, sizeof s->metric, "%s", json_string_value(metric));
        const char *st = stat ? json_string_value(stat) : "mean";
        int k = -1;
        for (int j = 0; st && j < 5; j++)
            if (strcmp(st, s_stats[j]) == 0)
                k = j;
        if (k < 0) {
            S_WHY("health.signals[%zu]: unknown stat \"%s\" (known: mean, p95, max, slope, rate)",
                  i, st ? st : "");
            return -1;
        }
        s->stat = (ota_stat_t)k;
    } else if (metric || stat) {
        S_WHY("health.signals[%zu]: \"metric\" and \"stat\" belong to a \"metric\" signal", i);
        return -1;
    }
    json_t *worse = json_object_get(o, "worse");
    if (worse) {
        const char *w = json_string_value(worse);
        if (!w || (strcmp(w, "higher") && strcmp(w, "lower")) ||
            (kind != OTA_SIG_METRIC && strcmp(w, "higher"))) {
            S_WHY("health.signals[%zu]: \"worse\" is \"higher\" or \"lower\" (a metric's only)", i);
            return -1;
        }
        s->lower_worse = strcmp(w, "lower") == 0;
    }
    json_t *margin = json_object_get(o, "margin"), *max = json_object_get(o, "max");
    if (margin) {
        if (!json_is_number(margin) || json_number_value(margin) < 0 ||
            !isfinite(json_number_value(margin))) {
            S_WHY("health.signals[%zu]: \"margin\" must be a number of at least 0", i);
            return -1;
        }
        s->margin = json_number_value(margin);
    }
    if (max) {
        if (!json_is_number(max) || !isfinite(json_number_value(max))) {
            S_WHY("health.signals[%zu]: \"max\" must be a number", i);
            return -1;
        }
        s->has_max = true;
        s->max = json_number_value(max);
    }
    if (kind == OTA_SIG_FW_ROLLBACK && !s->has_max) {
        s->has_max = true; /* no control group has installed anything */
        s->max = 0;
    }
    return 0;
}

int ota_health_parse(json_t *v, ota_health_t *out, char *why, size_t whylen)
{
    memset(out, 0, sizeof *out);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v)) {
        S_WHY("\"health\" must be an object with \"windowSeconds\" and \"signals\"");
        return -1;
    }
    const char *key;
    json_t *e;
    json_object_foreach(v, key, e)
    {
        if (strcmp(key, "windowSeconds") && strcmp(key, "tolerance") && strcmp(key, "signals")) {
            S_WHY("unknown field \"health.%s\" (known: windowSeconds, tolerance, signals)", key);
            return -1;
        }
    }
    json_t *w = json_object_get(v, "windowSeconds");
    if (!json_is_integer(w) || json_integer_value(w) < 1 || json_integer_value(w) > 7 * 86400) {
        S_WHY("\"health.windowSeconds\" must be a whole number of seconds from 1 to 604800 (the"
              " observation after each device's install)");
        return -1;
    }
    out->window_s = json_integer_value(w);
    out->tolerance = 0.2;
    json_t *t = json_object_get(v, "tolerance");
    if (t) {
        if (!json_is_number(t) || json_number_value(t) < 0 || json_number_value(t) > 10) {
            S_WHY("\"health.tolerance\" must be a number from 0 to 10 (a share of the control"
                  " group's value)");
            return -1;
        }
        out->tolerance = json_number_value(t);
    }
    json_t *sigs = json_object_get(v, "signals");
    if (!json_is_array(sigs) || json_array_size(sigs) == 0 ||
        json_array_size(sigs) > OTA_MAX_SIGNALS) {
        S_WHY("\"health.signals\" must be an array of 1 to %d signals", OTA_MAX_SIGNALS);
        return -1;
    }
    size_t i;
    json_array_foreach(sigs, i, e)
    {
        if (s_signal(e, i, &out->sig[i], why, whylen) < 0)
            return -1;
    }
    out->nsig = (int)json_array_size(sigs);
    out->on = true;
    if (ota_health_needs_metrics(out) && out->window_s < 120) {
        S_WHY("\"health.windowSeconds\" must be at least 120 with a metric signal (metrics are"
              " judged on whole minutes of ingest's rollups)");
        return -1;
    }
    return 0;
}

json_t *ota_health_json(const ota_health_t *h)
{
    json_t *sigs = json_array();
    for (int i = 0; i < h->nsig; i++) {
        const ota_signal_t *s = &h->sig[i];
        json_t *o = json_pack("{s:s,s:s,s:f}", "signal", ota_signal_name(s), "worse",
                              s->lower_worse ? "lower" : "higher", "margin", s->margin);
        if (s->kind == OTA_SIG_METRIC) {
            json_object_set_new(o, "metric", json_string(s->metric));
            json_object_set_new(o, "stat", json_string(ota_stat_name(s->stat)));
        }
        if (s->kind == OTA_SIG_REBOOTS)
            json_object_set_new(o, "key", json_string(s->metric));
        if (s->has_max)
            json_object_set_new(o, "max", json_real(s->max));
        json_array_append_new(sigs, o);
    }
    return json_pack("{s:I,s:f,s:o}", "windowSeconds", (json_int_t)h->window_s, "tolerance",
                     h->tolerance, "signals", sigs);
}

bool ota_signal_bad(const ota_health_t *h, const ota_signal_t *s, ota_sample_t treated,
                    ota_sample_t control, char *reason, size_t len)
{
    const char *name = s->kind == OTA_SIG_METRIC ? s->metric : ota_signal_name(s);
    char what[160];
    if (s->kind == OTA_SIG_METRIC)
        snprintf(what, sizeof what, "%s %s", name, ota_stat_name(s->stat));
    else if (s->kind == OTA_SIG_REBOOTS)
        snprintf(what, sizeof what, "reboots (%s reported)", s->metric);
    else
        snprintf(what, sizeof what, "%s", name);
    if (treated.n == 0) {
        snprintf(reason, len, "%s: no updated device observed yet", what);
        return false;
    }
    double sign = s->lower_worse ? -1 : 1;
    if (s->has_max && sign * treated.value > sign * s->max) {
        snprintf(reason, len, "%s %.4g on %lld updated devices, beyond the bound %.4g", what,
                 treated.value, (long long)treated.n, s->max);
        return true;
    }
    if (s->kind == OTA_SIG_FW_ROLLBACK || control.n == 0) {
        snprintf(reason, len, "%s %.4g on %lld updated devices%s", what, treated.value,
                 (long long)treated.n,
                 s->kind == OTA_SIG_FW_ROLLBACK ? "" : " (no control group left to compare)");
        return false;
    }
    double allowed = control.value + sign * (fabs(control.value) * h->tolerance + s->margin);
    bool bad = sign * treated.value > sign * allowed;
    snprintf(reason, len,
             "%s %.4g on %lld updated devices vs %.4g on %lld in the control group (%s allowed:"
             " %.4g, tolerance %.0f%%, margin %.4g)",
             what, treated.value, (long long)treated.n, control.value, (long long)control.n,
             s->lower_worse ? "lowest" : "highest", allowed, 100 * h->tolerance, s->margin);
    return bad;
}
