/* fleet-stats: devices, twins and commands, answered by twin
 * (fs_internal.h). */
#include "fs_internal.h"

/* ---- devices, twins and commands ---- */

int fs_devices(fs_t *self, struct mg_connection *c, const char *method, const char *id,
               const char *sub, const char *cid)
{
    const char *qs = mg_get_request_info(c)->query_string;
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.device_id = (char *)(id ? id : "");
    if (!id) {
        if (strcmp(method, "POST") == 0) {
            json_t *b = fs_body_object(self, c, true);
            if (!b)
                return 400;
            const char *did = json_string_value(json_object_get(b, "id"));
            json_t *tags = json_object_get(b, "tags");
            if (!did || (tags && !json_is_object(tags))) {
                json_decref(b);
                return fs_error(self, c, 400, "bad_request",
                                "{\"id\":\"…\",\"tags\":{…}}: \"id\" is required, \"tags\" an"
                                " object");
            }
            char *tags_text = tags ? json_dumps(tags, JSON_COMPACT) : NULL;
            q.method = MH__TWIN_REQUEST__METHOD__REGISTER;
            q.device_id = (char *)did;
            q.tags_json = tags_text ? tags_text : "";
            int st = fs_twin(self, c, &q, false);
            free(tags_text);
            json_decref(b);
            return st;
        }
        if (strcmp(method, "GET") != 0)
            return fs_error(self, c, 405, "method_not_allowed", "GET or POST");
        bool bad = false;
        char status[16], firmware[80], prefix[80], cursor[200];
        fs_query_str(qs, "status", status, sizeof status);
        fs_query_str(qs, "firmware", firmware, sizeof firmware);
        fs_query_str(qs, "q", prefix, sizeof prefix);
        fs_query_str(qs, "cursor", cursor, sizeof cursor);
        q.method = MH__TWIN_REQUEST__METHOD__LIST_DEVICES;
        q.limit = fs_query_u32(qs, "limit", &bad);
        if (bad)
            return fs_error(self, c, 400, "bad_request", "\"limit\" is a number from 1 to 1000");
        q.status = status;
        q.firmware = firmware;
        q.prefix = prefix;
        q.cursor = cursor;
        char tagbuf[16][160];
        char *tags[16];
        size_t nt = 0;
        for (int i = 0; qs && nt < 16; i++) {
            if (mg_get_var2(qs, strlen(qs), "tag", tagbuf[nt], sizeof tagbuf[nt], (size_t)i) < 0)
                break;
            tags[nt] = tagbuf[nt];
            nt++;
        }
        q.tags = tags;
        q.n_tags = nt;
        return fs_twin(self, c, &q, false);
    }
    if (!sub) {
        if (strcmp(method, "GET") == 0)
            q.method = MH__TWIN_REQUEST__METHOD__GET_DEVICE;
        else if (strcmp(method, "DELETE") == 0)
            q.method = MH__TWIN_REQUEST__METHOD__DELETE_DEVICE;
        else
            return fs_error(self, c, 405, "method_not_allowed", "GET or DELETE");
        return fs_twin(self, c, &q, false);
    }
    if (strcmp(sub, "telemetry") == 0)
        return fs_telemetry(self, c, method, id, cid);
    if (strcmp(sub, "twin") == 0 && !cid) {
        if (strcmp(method, "GET") == 0) {
            q.method = MH__TWIN_REQUEST__METHOD__GET_TWIN;
            return fs_twin(self, c, &q, true);
        }
        if (strcmp(method, "PATCH") != 0)
            return fs_error(self, c, 405, "method_not_allowed", "GET or PATCH");
        const char *im = mg_get_header(c, "If-Match");
        if (im) {
            char *end;
            const char *p = *im == '"' ? im + 1 : im;
            long long v = strtoll(p, &end, 10);
            if (end == p || v < 1 || (*im == '"' && *end != '"'))
                return fs_error(self, c, 400, "bad_request",
                                "If-Match is the twin's ETag, e.g. \"7\"");
            q.if_match = v;
        }
        json_t *b = fs_body_object(self, c, true);
        if (!b)
            return 400;
        json_t *desired = json_object_get(b, "desired"), *tags = json_object_get(b, "tags");
        char *d = desired ? json_dumps(desired, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        char *t = tags ? json_dumps(tags, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        q.method = MH__TWIN_REQUEST__METHOD__PATCH_TWIN;
        q.desired_json = d ? d : "";
        q.tags_json = t ? t : "";
        int st = json_object_size(b) == (size_t)(!!desired + !!tags) && (desired || tags)
                     ? fs_twin(self, c, &q, true)
                     : fs_error(self, c, 400, "bad_request",
                                "the body is {\"desired\":{…}} and/or {\"tags\":{…}}");
        free(d);
        free(t);
        json_decref(b);
        return st;
    }
    if (strcmp(sub, "shadows") == 0) {
        /* named shadows (AWS IoT Device Shadow); the classic one is the twin */
        q.shadow = (char *)(cid ? cid : "");
        if (!cid) {
            if (strcmp(method, "GET") != 0)
                return fs_error(self, c, 405, "method_not_allowed", "GET");
            q.method = MH__TWIN_REQUEST__METHOD__LIST_SHADOWS;
            return fs_twin(self, c, &q, false);
        }
        if (strcmp(method, "GET") == 0 || strcmp(method, "DELETE") == 0) {
            q.method = *method == 'G' ? MH__TWIN_REQUEST__METHOD__GET_SHADOW
                                      : MH__TWIN_REQUEST__METHOD__DELETE_SHADOW;
            return fs_twin(self, c, &q, false);
        }
        if (strcmp(method, "PATCH") != 0)
            return fs_error(self, c, 405, "method_not_allowed", "GET, PATCH or DELETE");
        json_t *b = fs_body_object(self, c, true);
        if (!b)
            return 400;
        json_t *desired = json_object_get(b, "desired"), *ver = json_object_get(b, "version");
        size_t known = !!desired + !!ver;
        int st;
        if (!desired || json_object_size(b) != known ||
            (ver && (!json_is_integer(ver) || json_integer_value(ver) < 0))) {
            st = fs_error(self, c, 400, "bad_request",
                          "the body is {\"desired\":{…}} with an optional \"version\"");
        } else {
            char *d = json_dumps(desired, JSON_COMPACT | JSON_ENCODE_ANY);
            q.method = MH__TWIN_REQUEST__METHOD__UPDATE_SHADOW;
            q.desired_json = d ? d : "";
            q.if_match = ver ? json_integer_value(ver) : 0;
            st = fs_twin(self, c, &q, false);
            free(d);
        }
        json_decref(b);
        return st;
    }
    if (strcmp(sub, "commands") == 0) {
        if (cid) {
            if (strcmp(method, "GET") != 0)
                return fs_error(self, c, 405, "method_not_allowed", "GET");
            q.method = MH__TWIN_REQUEST__METHOD__GET_COMMAND;
            q.command_id = (char *)cid;
            return fs_twin(self, c, &q, false);
        }
        if (strcmp(method, "GET") == 0) {
            bool bad = false;
            char cursor[200];
            fs_query_str(qs, "cursor", cursor, sizeof cursor);
            q.method = MH__TWIN_REQUEST__METHOD__LIST_COMMANDS;
            q.limit = fs_query_u32(qs, "limit", &bad);
            q.cursor = cursor;
            if (bad)
                return fs_error(self, c, 400, "bad_request",
                                "\"limit\" is a number from 1 to 1000");
            return fs_twin(self, c, &q, false);
        }
        if (strcmp(method, "POST") != 0)
            return fs_error(self, c, 405, "method_not_allowed", "GET or POST");
        json_t *b = fs_body_object(self, c, true);
        if (!b)
            return 400;
        const char *name = json_string_value(json_object_get(b, "name"));
        json_t *params = json_object_get(b, "params"), *ttl = json_object_get(b, "ttl"),
               *tmo = json_object_get(b, "timeout");
        if (!name || (params && !json_is_object(params)) || (ttl && !json_is_integer(ttl)) ||
            (tmo && !json_is_integer(tmo))) {
            json_decref(b);
            return fs_error(self, c, 400, "bad_request",
                            "{\"name\":\"…\",\"params\":{…},\"ttl\":seconds,\"timeout\":seconds}");
        }
        char *ptext = params ? json_dumps(params, JSON_COMPACT) : NULL;
        q.method = MH__TWIN_REQUEST__METHOD__SEND_COMMAND;
        q.command_name = (char *)name;
        q.params_json = ptext ? ptext : "";
        q.ttl_s = ttl ? json_integer_value(ttl) : 0;
        q.timeout_s = tmo ? json_integer_value(tmo) : 0;
        int st = fs_twin(self, c, &q, false);
        free(ptext);
        json_decref(b);
        return st;
    }
    return fs_error(self, c, 404, "not_found", "no such path");
}
