/* fleet-stats: routing a request by resource, authorisation, the
 * /api/v1/live WebSocket handlers and the dashboard's files
 * (fs_internal.h). */
#include "fs_internal.h"

/* ---- routing ---- */

/* Checks the bearer token (header, or for a WebSocket `access_token` in the
 * query as RFC 6750 allows). 0 when valid; else answers 401/503 itself. */
static int s_authorize(fs_t *self, struct mg_connection *c, bool query_ok, char name[64])
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    const char *auth = mg_get_header(c, "Authorization");
    char qtok[128] = "";
    const char *token = NULL;
    if (auth && strncmp(auth, "Bearer ", 7) == 0 && auth[7])
        token = auth + 7;
    else if (!auth && query_ok && ri->query_string &&
             mg_get_var(ri->query_string, strlen(ri->query_string), "access_token", qtok,
                        sizeof qtok) > 0)
        token = qtok;
    if (!token)
        return fs_error(self, c, 401, "unauthorized", "send Authorization: Bearer <token>");
    int ok = fs_token_ok(self, token, name);
    if (ok < 0)
        return fs_error(self, c, 503, "unavailable", "cannot check the token now; try again");
    if (ok == 0)
        return fs_error(self, c, 401, "unauthorized", "the token is not valid");
    return 0;
}

/* GET /api/v1/fleet/summary and /geo, from the live aggregates. */
static int s_fleet(fs_t *self, struct mg_connection *c, const char *method, const char *what)
{
    if (strcmp(method, "GET") != 0)
        return fs_error(self, c, 405, "method_not_allowed", "GET");
    char *text = strcmp(what, "summary") == 0 ? fs_live_summary(self->live)
                 : strcmp(what, "geo") == 0   ? fs_live_geo(self->live)
                                              : (char *)"";
    if (text && !*text)
        return fs_error(self, c, 404, "not_found", "no such path");
    if (!text)
        return fs_error(self, c, 503, "unavailable",
                        "the fleet aggregates are still loading; try again");
    int st = fs_send(self, c, 200, text, NULL);
    free(text);
    return st;
}

static int s_handle(struct mg_connection *c, void *ud)
{
    fs_t *self = ud;
    int64_t t0 = mh_mono_ms();
    const struct mg_request_info *ri = mg_get_request_info(c);
    char who[64] = "-";
    int denied = s_authorize(self, c, false, who);
    if (denied) {
        mh_info("api: %s %s %d token=-", ri->request_method, ri->local_uri, denied);
        return denied;
    }
    if (strcmp(ri->local_uri, "/api/v1/openapi.json") == 0) {
        mh_histogram_observe_ms(self->m_request_time, mh_mono_ms() - t0);
        mh_info("api: %s %s token=%s", ri->request_method, ri->local_uri, who);
        if (strcmp(ri->request_method, "GET") != 0)
            return fs_error(self, c, 405, "method_not_allowed", "GET");
        mg_printf(c,
                  "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  "Content-Length: %zu\r\n\r\n",
                  fs_openapi_len);
        mg_write(c, fs_openapi, fs_openapi_len);
        mh_counter_inc(self->m_requests[0]);
        return 200;
    }
    /* /api/v1/devices[/{id}[/{sub}[/{cid}]]] */
    char path[512];
    snprintf(path, sizeof path, "%s", ri->local_uri);
    char *parts[8];
    int n = 0;
    for (char *save = NULL, *t = strtok_r(path, "/", &save); t && n < 8;
         t = strtok_r(NULL, "/", &save))
        parts[n++] = t;
    int status;
    if (n >= 3 && strcmp(parts[0], "api") == 0 && strcmp(parts[1], "v1") == 0 &&
        strcmp(parts[2], "devices") == 0 && n <= 6) {
        if (n >= 4 && !mh_device_id_valid(parts[3], strlen(parts[3])))
            status = fs_error(self, c, 404, "not_found", "no such device");
        else
            status = fs_devices(self, c, ri->request_method, n >= 4 ? parts[3] : NULL,
                                n >= 5 ? parts[4] : NULL, n >= 6 ? parts[5] : NULL);
    } else if (n >= 3 && n <= 4 && strcmp(parts[0], "api") == 0 && strcmp(parts[1], "v1") == 0 &&
               strcmp(parts[2], "firmware") == 0) {
        status = fs_firmware(self, c, ri->request_method, n >= 4 ? parts[3] : NULL);
    } else if (n >= 3 && n <= 5 && strcmp(parts[0], "api") == 0 && strcmp(parts[1], "v1") == 0 &&
               (strcmp(parts[2], "rollouts") == 0 || strcmp(parts[2], "jobs") == 0)) {
        status = fs_rollouts(self, c, ri->request_method, n >= 4 ? parts[3] : NULL,
                             n >= 5 ? parts[4] : NULL, strcmp(parts[2], "jobs") == 0);
    } else if (n >= 3 && n <= 4 && strcmp(parts[0], "api") == 0 && strcmp(parts[1], "v1") == 0 &&
               strcmp(parts[2], "provisioning-templates") == 0) {
        status = fs_templates(self, c, ri->request_method, n >= 4 ? parts[3] : NULL);
    } else if (n == 3 && strcmp(parts[0], "api") == 0 && strcmp(parts[1], "v1") == 0 &&
               strcmp(parts[2], "live") == 0) {
        status = fs_error(self, c, 400, "bad_request",
                          "/api/v1/live is a WebSocket: connect with Upgrade: websocket");
    } else if (n == 4 && strcmp(parts[0], "api") == 0 && strcmp(parts[1], "v1") == 0 &&
               strcmp(parts[2], "fleet") == 0) {
        status = s_fleet(self, c, ri->request_method, parts[3]);
    } else {
        status = fs_error(self, c, 404, "not_found", "no such path");
    }
    mh_histogram_observe_ms(self->m_request_time, mh_mono_ms() - t0);
    /* every call, by the token's name (never its value) */
    mh_info("api: %s %s %d %" PRId64 "ms token=%s", ri->request_method, ri->local_uri, status,
            mh_mono_ms() - t0, who);
    return status;
}

/* ---- /api/v1/live ---- */

int fs_ws_connect(const struct mg_connection *cc, void *ud)
{
    fs_t *self = ud;
    struct mg_connection *c = (struct mg_connection *)cc;
    char who[64] = "-";
    int denied = s_authorize(self, c, true, who);
    mh_info("api: live connect %d token=%s", denied ? denied : 101, who);
    if (denied)
        return 1; /* answered 401/503; no handshake */
    if (!fs_live_reserve(self->live, (size_t)self->max_ws)) {
        fs_error(self, c, 503, "unavailable", "too many live connections on this replica");
        return 1;
    }
    mg_set_user_connection_data(c, self); /* a place is held: fs_ws_close gives it back */
    return 0;
}

static int s_ws_send(void *conn, const char *text, size_t len)
{
    if (!text)
        return mg_websocket_write(conn, MG_WEBSOCKET_OPCODE_PING, "", 0);
    return mg_websocket_write(conn, MG_WEBSOCKET_OPCODE_TEXT, text, len);
}

/* The connection's worker writes its frames until it is gone (fs_live.h);
 * a live client sends nothing the feed needs, so nothing reads meanwhile. */
void fs_ws_ready(struct mg_connection *c, void *ud)
{
    fs_t *self = ud;
    fs_live_serve(self->live, c, s_ws_send, 5000);
}

int fs_ws_data(struct mg_connection *c, int bits, char *data, size_t len, void *ud)
{
    (void)c, (void)data, (void)len, (void)ud;
    return (bits & 0x0f) != MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE;
}

void fs_ws_close(const struct mg_connection *c, void *ud)
{
    fs_t *self = ud;
    if (mg_get_user_connection_data(c)) {
        fs_live_release(self->live);
        mg_set_user_connection_data(c, NULL);
    }
}

/* ---- the dashboard's files ---- */

/* Everything outside /api/: a file of the built dashboard, or its
 * index.html for the app's own routes (/devices/…), never outside it. */
int fs_static(struct mg_connection *c, void *ud)
{
    fs_t *self = ud;
    const struct mg_request_info *ri = mg_get_request_info(c);
    if (strncmp(ri->local_uri, "/api/", 5) == 0)
        return s_handle(c, ud);
    if (!*self->cfg->dashboard_dir || strstr(ri->local_uri, ".."))
        return fs_error(self, c, 404, "not_found", "no such path");
    if (strcmp(ri->request_method, "GET") != 0 && strcmp(ri->request_method, "HEAD") != 0)
        return fs_error(self, c, 405, "method_not_allowed", "GET");
    char path[1024];
    struct stat st;
    snprintf(path, sizeof path, "%s%s", self->cfg->dashboard_dir, ri->local_uri);
    bool asset = strncmp(ri->local_uri, "/assets/", 8) == 0;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (asset || strchr(strrchr(ri->local_uri, '/'), '.'))
            return fs_error(self, c, 404, "not_found", "no such file");
        snprintf(path, sizeof path, "%s/index.html", self->cfg->dashboard_dir);
    }
    /* Vite names assets by content hash: they never change. */
    mg_send_mime_file2(c, path, NULL,
                       asset ? "Cache-Control: public, max-age=31536000, immutable\r\n"
                             : "Cache-Control: no-cache\r\n");
    mh_counter_inc(self->m_requests[0]);
    return 200;
}
