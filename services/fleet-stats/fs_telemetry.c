/* fleet-stats: GET /api/v1/devices/{id}/telemetry, answered by ingest
 * (fs_internal.h). */
#include "fs_internal.h"

/* ---- telemetry ---- */

/* A time in the query: milliseconds since the epoch or RFC 3339
 * ("2026-11-24T10:00:00Z", "…T10:00:00.250+01:00"). 0 absent, -1 bad. */
static int64_t s_query_time(const char *qs, const char *name)
{
    char v[64];
    fs_query_str(qs, name, v, sizeof v);
    if (!*v)
        return 0;
    char *end;
    long long ms = strtoll(v, &end, 10);
    if (!*end)
        return ms > 0 ? ms : -1;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *p = strptime(v, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p)
        return -1;
    int64_t frac = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; isdigit((unsigned char)*p); p++, digits++)
            if (digits < 3)
                frac = frac * 10 + (*p - '0');
        for (; digits < 3; digits++)
            frac *= 10;
    }
    int64_t off = 0;
    if (*p == '+' || *p == '-') {
        int hh, mm;
        if (sscanf(p + 1, "%2d:%2d", &hh, &mm) != 2 || strlen(p) != 6)
            return -1;
        off = (*p == '+' ? 1 : -1) * (hh * 60 + mm) * 60000LL;
    } else if (strcmp(p, "Z") != 0 && strcmp(p, "z") != 0) {
        return -1;
    }
    return (int64_t)timegm(&tm) * 1000 + frac - off;
}

int fs_telemetry(fs_t *self, struct mg_connection *c, const char *method, const char *id,
                 const char *what)
{
    if (strcmp(method, "GET") != 0)
        return fs_error(self, c, 405, "method_not_allowed", "GET");
    if (what && strcmp(what, "latest") != 0)
        return fs_error(self, c, 404, "not_found", "no such path");
    const char *qs = mg_get_request_info(c)->query_string;
    Mh__TelemetryQuery q = MH__TELEMETRY_QUERY__INIT;
    char bucket[16], cursor[160], mbuf[16][80];
    char *metrics[16];
    size_t nm = 0;
    for (int i = 0; qs && nm < 16; i++) {
        if (mg_get_var2(qs, strlen(qs), "metric", mbuf[nm], sizeof mbuf[nm], (size_t)i) < 0)
            break;
        metrics[nm] = mbuf[nm];
        nm++;
    }
    bool bad = false;
    q.device_id = (char *)id;
    q.metrics = metrics;
    q.n_metrics = nm;
    q.latest = what != NULL;
    q.from_ms = s_query_time(qs, "from");
    q.to_ms = s_query_time(qs, "to");
    if (q.from_ms < 0 || q.to_ms < 0)
        return fs_error(self, c, 400, "bad_request",
                        "\"from\" and \"to\" are milliseconds since 1970 or RFC 3339 times");
    fs_query_str(qs, "bucket", bucket, sizeof bucket);
    fs_query_str(qs, "cursor", cursor, sizeof cursor);
    q.bucket = bucket;
    q.cursor = cursor;
    q.limit = fs_query_u32(qs, "limit", &bad);
    if (bad)
        return fs_error(self, c, 400, "bad_request", "\"limit\" is a number from 1 to 100000");
    mh_rpc_common_t rc;
    int status;
    ProtobufCMessage *r = fs_call(self, c, self->ingest, "ingest", "telemetry.query", &q.base,
                                  &mh__telemetry_reply__descriptor, &rc, &status);
    if (!r)
        return status;
    status = fs_send(self, c, (int)rc.status, rc.body_json, NULL);
    protobuf_c_message_free_unpacked(r, NULL);
    return status;
}
