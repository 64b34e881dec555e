/* mh_http_client — one HTTP request with libcurl, the whole answer in
 * memory. For the command-line tools and the tests, which talk to the
 * operator API and the services' /metrics; the daemons never call out over
 * HTTP and do not link it. */
#pragma once
#include <stddef.h>

typedef struct {
    const char *method; /* "GET" when NULL */
    const char *url;
    const char *bearer;        /* sent as "Authorization: Bearer …"; NULL: none */
    const char *authorization; /* or the whole Authorization value as given */
    const char *if_match;      /* the If-Match value as given (quotes included); NULL: none */
    const char *content_type;  /* of the body; NULL: application/json */
    const void *body;          /* NULL: no body */
    size_t body_len;
    long timeout_ms; /* 0: no limit */
} mh_http_req_t;

typedef struct {
    long status; /* 0 when no answer came; `error` says why */
    char *body;  /* the answer, NUL-terminated, owned; never NULL after a request */
    size_t len;
    char etag[96];   /* the ETag header's value, "" without one */
    char error[256]; /* why there was no answer */
} mh_http_resp_t;

/* Performs `req`; returns resp->status. Free the answer with
 * mh_http_resp_free. */
long mh_http_request(const mh_http_req_t *req, mh_http_resp_t *resp);
void mh_http_resp_free(mh_http_resp_t *resp);
