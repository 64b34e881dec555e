/* fleet-stats: firmware and rollouts, answered by ota (fs_internal.h). */
#include "fs_internal.h"

/* ---- firmware and rollouts ---- */

/* Calls ota; answers from its reply. With `pem`, a successful reply's
 * "publicKey" is sent as the PEM text itself. */
static int s_ota(fs_t *self, struct mg_connection *c, Mh__OtaRequest *q, bool pem)
{
    mh_rpc_common_t rc;
    int status;
    ProtobufCMessage *r = fs_call(self, c, self->ota, "ota", "ota.request", &q->base,
                                  &mh__ota_reply__descriptor, &rc, &status);
    if (!r)
        return status;
    if (pem) {
        json_t *v = mh_json_loads(rc.body_json, 0, MH_JSON_MAX_DEPTH, NULL);
        const char *key = json_string_value(json_object_get(v, "publicKey"));
        size_t len = key ? strlen(key) : 0;
        mg_printf(c,
                  "HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\nConnection: close\r\n"
                  "Content-Length: %zu\r\n\r\n",
                  len);
        mg_write(c, key ? key : "", len);
        mh_counter_inc(self->m_requests[0]);
        status = 200;
        json_decref(v);
    } else {
        status = fs_send(self, c, (int)rc.status, *rc.body_json ? rc.body_json : NULL, NULL);
    }
    protobuf_c_message_free_unpacked(r, NULL);
    return status;
}

int fs_firmware(fs_t *self, struct mg_connection *c, const char *method, const char *version)
{
    const char *qs = mg_get_request_info(c)->query_string;
    Mh__OtaRequest q = MH__OTA_REQUEST__INIT;
    if (!version && strcmp(method, "POST") == 0) {
        const struct mg_request_info *ri = mg_get_request_info(c);
        char ver[80], hw[80];
        fs_query_str(qs, "version", ver, sizeof ver);
        fs_query_str(qs, "hardware", hw, sizeof hw);
        if (ri->content_length < 0)
            return fs_error(self, c, 400, "bad_request",
                            "send the image as the body with a Content-Length");
        if (ri->content_length > self->cfg->max_image)
            return fs_error(self, c, 413, "too_large", "the image is over the size limit");
        size_t len = (size_t)ri->content_length, n = 0;
        uint8_t *img = malloc(len ? len : 1);
        if (!img)
            return fs_error(self, c, 503, "unavailable", "out of memory");
        int r;
        while (n < len && (r = mg_read(c, img + n, len - n)) > 0)
            n += (size_t)r;
        if (n != len) {
            free(img);
            return fs_error(self, c, 400, "bad_request", "the body ended early");
        }
        q.method = MH__OTA_REQUEST__METHOD__UPLOAD_FIRMWARE;
        q.version = ver;
        q.hardware = hw;
        q.image.data = img;
        q.image.len = len;
        int st = s_ota(self, c, &q, false);
        free(img);
        return st;
    }
    if (strcmp(method, "GET") != 0)
        return fs_error(self, c, 405, "method_not_allowed", version ? "GET" : "GET or POST");
    if (!version) {
        bool bad = false;
        char cursor[200];
        fs_query_str(qs, "cursor", cursor, sizeof cursor);
        q.method = MH__OTA_REQUEST__METHOD__LIST_FIRMWARE;
        q.limit = fs_query_u32(qs, "limit", &bad);
        q.cursor = cursor;
        if (bad)
            return fs_error(self, c, 400, "bad_request", "\"limit\" is a number from 1 to 1000");
        return s_ota(self, c, &q, false);
    }
    if (strcmp(version, "signing-key") == 0) {
        q.method = MH__OTA_REQUEST__METHOD__SIGNING_KEY;
        return s_ota(self, c, &q, true);
    }
    q.method = MH__OTA_REQUEST__METHOD__GET_FIRMWARE;
    q.version = (char *)version;
    return s_ota(self, c, &q, false);
}

int fs_rollouts(fs_t *self, struct mg_connection *c, const char *method, const char *id,
                const char *action, bool jobs)
{
    const char *qs = mg_get_request_info(c)->query_string;
    Mh__OtaRequest q = MH__OTA_REQUEST__INIT;
    q.rollout_id = (char *)(id ? id : "");
    if (!id) {
        if (strcmp(method, "POST") == 0) {
            json_t *b = fs_body_object(self, c, true);
            if (!b)
                return 400;
            if (jobs && !json_object_get(b, "document")) {
                json_decref(b);
                return fs_error(self, c, 400, "bad_request",
                                "a job needs a \"document\" (a JSON object); firmware goes to"
                                " /api/v1/rollouts");
            }
            char *text = json_dumps(b, JSON_COMPACT);
            json_decref(b);
            q.method = MH__OTA_REQUEST__METHOD__CREATE_ROLLOUT;
            q.body_json = text ? text : "";
            int st = s_ota(self, c, &q, false);
            free(text);
            return st;
        }
        if (strcmp(method, "GET") != 0)
            return fs_error(self, c, 405, "method_not_allowed", "GET or POST");
        bool bad = false;
        char cursor[64], state[32];
        fs_query_str(qs, "cursor", cursor, sizeof cursor);
        fs_query_str(qs, "state", state, sizeof state);
        q.method = MH__OTA_REQUEST__METHOD__LIST_ROLLOUTS;
        q.limit = fs_query_u32(qs, "limit", &bad);
        q.cursor = cursor;
        q.state = state;
        q.kind = jobs ? "job" : "";
        if (bad)
            return fs_error(self, c, 400, "bad_request", "\"limit\" is a number from 1 to 1000");
        return s_ota(self, c, &q, false);
    }
    if (!action) {
        if (strcmp(method, "GET") != 0)
            return fs_error(self, c, 405, "method_not_allowed", "GET");
        q.method = MH__OTA_REQUEST__METHOD__GET_ROLLOUT;
        return s_ota(self, c, &q, false);
    }
    if (strcmp(action, jobs ? "executions" : "jobs") == 0) {
        /* each device's job, the AWS IoT status beside ota's */
        if (strcmp(method, "GET") != 0)
            return fs_error(self, c, 405, "method_not_allowed", "GET");
        bool bad = false;
        char cursor[64], state[32], device[MH_MAX_DEVICE_ID + 1];
        fs_query_str(qs, "cursor", cursor, sizeof cursor);
        fs_query_str(qs, "state", state, sizeof state);
        fs_query_str(qs, "device", device, sizeof device);
        q.method = MH__OTA_REQUEST__METHOD__LIST_JOBS;
        q.limit = fs_query_u32(qs, "limit", &bad);
        q.cursor = cursor;
        q.state = state;
        q.device_id = device;
        if (bad)
            return fs_error(self, c, 400, "bad_request", "\"limit\" is a number from 1 to 1000");
        return s_ota(self, c, &q, false);
    }
    if (strcmp(method, "POST") != 0)
        return fs_error(self, c, 405, "method_not_allowed", "POST");
    if (strcmp(action, "pause") == 0)
        q.method = MH__OTA_REQUEST__METHOD__PAUSE_ROLLOUT;
    else if (strcmp(action, "resume") == 0)
        q.method = MH__OTA_REQUEST__METHOD__RESUME_ROLLOUT;
    else if (strcmp(action, "abort") == 0)
        q.method = MH__OTA_REQUEST__METHOD__ABORT_ROLLOUT;
    else if (strcmp(action, "rollback") == 0)
        q.method = MH__OTA_REQUEST__METHOD__ROLLBACK_ROLLOUT;
    else
        return fs_error(self, c, 404, "not_found", "no such path");
    return s_ota(self, c, &q, false);
}
