/* libFuzzer target for the operator API as an attacker with a token sees
 * it: the real fleet-stats (its actor, CivetWeb and all) runs in this
 * process under AddressSanitizer, with real twin, ota and ingest and a
 * PostgreSQL database behind it, and each input is one TCP connection's
 * bytes — request line, path, query string, headers, body, or a WebSocket
 * upgrade followed by frames. "@TOKEN@" in an input becomes a valid API
 * token, so inputs get past authentication.
 *
 * The input is then asserted to have left twin, ota and ingest running.
 *
 * Needs MH_TEST_PG (a PostgreSQL server) and MH_BUILD_ROOT (the build whose
 * twin, ota and ingest to start). A crash anywhere in fleet-stats is a crash
 * here; a connection that gets no status line while the server stays up
 * is fine (CivetWeb drops what it cannot parse). */
#include "fs_service.h"
#include "mh_test.h"

#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static mht_backends_t s_be;
static int s_port;
static char s_token[128];
static zactor_t *s_fs;
static mh_metrics_t *s_metrics;
static void *s_cfg;

static void s_stop(void)
{
    zactor_destroy(&s_fs);
    mh_metrics_destroy(&s_metrics);
    mh_config_free(fs_config_options, s_cfg);
    free(s_cfg);
    mht_backends_stop(&s_be);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (!getenv("MH_TEST_PG") || !getenv("MH_BUILD_ROOT")) {
        fprintf(stderr, "fuzz_http needs MH_TEST_PG and MH_BUILD_ROOT\n");
        exit(2);
    }
    signal(SIGPIPE, SIG_IGN);
    mht_backends_start(&s_be);
    mht_api_token(&s_be.db, "fuzz", s_token);

    s_port = mht_free_port();
    char a_pg[600], a_listen[64], a_twin[128], a_ota[128], a_ing[128], a_tev[128], a_oev[128];
    snprintf(a_pg, sizeof a_pg, "--pg-url=%s", s_be.db.url);
    snprintf(a_listen, sizeof a_listen, "--api-listen=127.0.0.1:%d", s_port);
    snprintf(a_twin, sizeof a_twin, "--twin-rpc-endpoint=%s", s_be.twin.rpc_endpoint);
    snprintf(a_ota, sizeof a_ota, "--ota-rpc-endpoint=%s", s_be.ota.rpc_endpoint);
    snprintf(a_ing, sizeof a_ing, "--ingest-rpc-endpoint=%s", s_be.ingest.rpc_endpoint);
    snprintf(a_tev, sizeof a_tev, "--twin-events-endpoint=%s", s_be.twin.events_endpoint);
    snprintf(a_oev, sizeof a_oev, "--ota-events-endpoint=%s", s_be.ota.events_endpoint);
    char *args[] = {"fuzz_http",
                    a_pg,
                    a_listen,
                    a_twin,
                    a_ota,
                    a_ing,
                    a_tev,
                    a_oev,
                    "--gateway-events-endpoint=tcp://127.0.0.1:1",
                    "--http-listen=",
                    "--rpc-timeout=2s",
                    "--api-threads=8",
                    "--live-frame-interval=50ms",
                    NULL};
    s_cfg = calloc(1, fs_service_def.config_size);
    if (mh_config_load(fs_config_options, s_cfg, (int)(sizeof args / sizeof args[0]) - 1, args,
                       "fleet-stats", "fuzz") != 0)
        exit(2);
    mh_log_init("fleet-stats", MH_LOG_ERROR);
    s_metrics = mh_metrics_new();
    static mh_service_ctx_t ctx;
    ctx = (mh_service_ctx_t){.cfg = s_cfg, .metrics = s_metrics, .instance = "fleet-stats-fuzz"};
    if (!(s_fs = mh_actor_start(fs_actor, &ctx))) {
        fprintf(stderr, "fuzz_http: fleet-stats did not start\n");
        exit(2);
    }
    atexit(s_stop);
    return 0;
}

/* The input with every "@TOKEN@" replaced by the token. Caller frees. */
static char *s_expand(const uint8_t *data, size_t size, size_t *len)
{
    static const char mark[] = "@TOKEN@";
    size_t tl = strlen(s_token), cap = size + 1, n = 0;
    for (const uint8_t *q = data; (q = memmem(q, size - (size_t)(q - data), mark, 7)); q += 7)
        cap += tl;
    char *out = malloc(cap);
    for (size_t i = 0; i < size;) {
        if (size - i >= 7 && memcmp(data + i, mark, 7) == 0) {
            memcpy(out + n, s_token, tl);
            n += tl;
            i += 7;
        } else {
            out[n++] = (char)data[i++];
        }
    }
    *len = n;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t len;
    char *req = s_expand(data, size, &len);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        fprintf(stderr, "fuzz_http: fleet-stats no longer accepts connections\n");
        abort();
    }
    for (size_t off = 0; off < len;) {
        ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break; /* the server closed early: it may */
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    /* the whole answer (the API's largest, openapi.json, is ~40 KB) */
    size_t got = 0, cap = 65536;
    char *head = malloc(cap + 1);
    ssize_t r;
    while ((r = recv(fd, head + got, cap - got, 0)) > 0) {
        got += (size_t)r;
        if (got == cap)
            head = realloc(head, (cap *= 2) + 1);
    }
    head[got] = 0;
    close(fd);
    free(req);
    /* fleet-stats' own answers (s_send) start "HTTP/1.1 NNN Reason\r\n
     * Content-Type: application/json": never a 500. Others are CivetWeb's
     * refusals of what it cannot parse, which echo the client's protocol
     * version, spaces, digits and CR LF included ("HTTP/1@x 500P/1 401 …",
     * corpus/http/regress-*-version), or bare "Error 426: Upgrade
     * Required" from its WebSocket handshake (corpus/http/regress-ws-*). */
    int code = 0;
    char reason[64];
    if (sscanf(head, "HTTP/1.1 %3d %63[^\r]\r\nContent-Type: application/json\r\n", &code,
               reason) == 2 &&
        strstr(head, "\r\nContent-Type: application/json\r\n") == strchr(head, '\r'))
        assert(code != 500);
    free(head);
    /* the request may have travelled on to twin, ota or ingest: they live */
    if (!mht_alive(s_be.twin.pid) || !mht_alive(s_be.ota.pid) || !mht_alive(s_be.ingest.pid)) {
        fprintf(stderr, "fuzz_http: a service behind fleet-stats died (logs in %s)\n",
                mht_artifacts());
        abort();
    }
    return 0;
}
