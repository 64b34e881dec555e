/* mh_http_client: libcurl's default writer into an open_memstream buffer,
 * so there is no growing-buffer code of our own. */
#include "mh_http_client.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static size_t s_header(char *p, size_t sz, size_t n, void *ud)
{
    mh_http_resp_t *resp = ud;
    if (sz * n > 5 && strncasecmp(p, "ETag:", 5) == 0)
        sscanf(p + 5, " %95[^\r\n]", resp->etag);
    return sz * n;
}

static struct curl_slist *s_header_add(struct curl_slist *h, const char *name, const char *value)
{
    if (!value)
        return h;
    char line[1024];
    snprintf(line, sizeof line, "%s: %s", name, value);
    return curl_slist_append(h, line);
}

long mh_http_request(const mh_http_req_t *req, mh_http_resp_t *resp)
{
    memset(resp, 0, sizeof *resp);
    char bearer[600];
    const char *auth = req->authorization;
    if (!auth && req->bearer) {
        snprintf(bearer, sizeof bearer, "Bearer %s", req->bearer);
        auth = bearer;
    }
    struct curl_slist *h = s_header_add(NULL, "Authorization", auth);
    h = s_header_add(h, "If-Match", req->if_match);
    if (req->body)
        h = s_header_add(h, "Content-Type",
                         req->content_type ? req->content_type : "application/json");
    FILE *out = open_memstream(&resp->body, &resp->len);
    CURL *c = curl_easy_init();
    if (!out || !c) {
        snprintf(resp->error, sizeof resp->error, "out of memory");
    } else {
        curl_easy_setopt(c, CURLOPT_URL, req->url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req->method ? req->method : "GET");
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, req->timeout_ms);
        if (req->body) {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, req->body);
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        }
        curl_easy_setopt(c, CURLOPT_WRITEDATA, out); /* curl's own fwrite */
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, s_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, resp);
        CURLcode rc = curl_easy_perform(c);
        if (rc == CURLE_OK)
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
        else
            snprintf(resp->error, sizeof resp->error, "%s", curl_easy_strerror(rc));
    }
    if (out)
        fclose(out); /* sets body and len */
    if (!resp->body) {
        resp->body = calloc(1, 1);
        resp->len = 0;
    }
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    return resp->status;
}

void mh_http_resp_free(mh_http_resp_t *resp)
{
    free(resp->body);
    resp->body = NULL;
    resp->len = 0;
}
