#include "ota_image.h"
#include "ota_input.h"
#include "mh_digest.h"
#include "mh_log.h"
#include "mh_pg.h"
#include "mh_time.h"
#include "ota_plan.h"

#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- signing and digests ---- */

struct ota_signer_t {
    EVP_PKEY *key;
    char *public_pem;
};

ota_signer_t *ota_signer_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read the signing key %s: %s", path, strerror(errno));
        return NULL;
    }
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!key || EVP_PKEY_id(key) != EVP_PKEY_ED25519) {
        snprintf(err, errlen,
                 "%s is not an Ed25519 private key in PEM (make one with: openssl genpkey"
                 " -algorithm ed25519 -out %s)",
                 path, path);
        EVP_PKEY_free(key);
        return NULL;
    }
    ota_signer_t *self = calloc(1, sizeof *self);
    BIO *bio = BIO_new(BIO_s_mem());
    char *data = NULL;
    long n = 0;
    if (self && bio && PEM_write_bio_PUBKEY(bio, key) == 1)
        n = BIO_get_mem_data(bio, &data);
    if (!self || n <= 0 || !(self->public_pem = strndup(data, (size_t)n))) {
        snprintf(err, errlen, "out of memory");
        BIO_free(bio);
        EVP_PKEY_free(key);
        free(self);
        return NULL;
    }
    BIO_free(bio);
    self->key = key;
    return self;
}

void ota_signer_destroy(ota_signer_t **self_p)
{
    ota_signer_t *self = *self_p;
    if (!self)
        return;
    EVP_PKEY_free(self->key);
    free(self->public_pem);
    free(self);
    *self_p = NULL;
}

const char *ota_signer_public_pem(ota_signer_t *self)
{
    return self->public_pem;
}

int ota_sign(ota_signer_t *self, const uint8_t *data, size_t len, char *out, size_t outlen)
{
    unsigned char sig[64];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, self->key) == 1 &&
             EVP_DigestSign(ctx, sig, &siglen, data, len) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok || outlen < 4 * ((siglen + 2) / 3) + 1)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, sig, (int)siglen);
    return 0;
}

void ota_sha256_hex(const uint8_t *data, size_t len, char out[65])
{
    mh_sha256_hex(data, len, out);
}

void ota_link_sig(const char *secret, const char *version, int64_t exp_s, char out[65])
{
    char msg[128];
    int n = snprintf(msg, sizeof msg, "%s\n%" PRId64, version, exp_s);
    unsigned char md[32];
    unsigned int mdlen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)msg, (size_t)n, md,
         &mdlen);
    mh_hex(md, 32, out);
}

void ota_link(const char *secret, const char *version, int64_t exp_s, char *out, size_t outlen)
{
    char sig[65];
    ota_link_sig(secret, version, exp_s, sig);
    snprintf(out, outlen, "/firmware/%s/image?exp=%" PRId64 "&sig=%s", version, exp_s, sig);
}

/* ---- the image server ---- */

#define S_CACHE 8

typedef struct {
    char version[OTA_MAX_VERSION + 1];
    uint8_t *data;
    size_t len;
    int refs;
    int64_t used;
} s_entry_t;

struct ota_images_t {
    pthread_mutex_t lock;
    mh_pg_t *pg;
    char secret[128];
    s_entry_t cache[S_CACHE];
    mh_counter_t *m_requests[4]; /* 200, 206, 4xx, 5xx */
    mh_counter_t *m_bytes;
    mh_ratelimit_t rl;
};

ota_images_t *ota_images_new(const char *pg_url, mh_metrics_t *m)
{
    ota_images_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    pthread_mutex_init(&self->lock, NULL);
    self->pg = mh_pg_new(pg_url, "SELECT 1", 7203102);
    self->rl = (mh_ratelimit_t)MH_RATELIMIT_INIT(5000, 3);
    static const char *codes[] = {"200", "206", "4xx", "5xx"};
    for (int i = 0; i < 4; i++) {
        char labels[32];
        snprintf(labels, sizeof labels, "code=\"%s\"", codes[i]);
        self->m_requests[i] = mh_metrics_counter(m, "mh_ota_image_requests_total",
                                                 "Firmware image downloads, by answer", labels);
    }
    self->m_bytes =
        mh_metrics_counter(m, "mh_ota_image_bytes_total", "Firmware image bytes served", NULL);
    if (!self->pg)
        ota_images_destroy(&self);
    return self;
}

void ota_images_destroy(ota_images_t **self_p)
{
    ota_images_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < S_CACHE; i++)
        free(self->cache[i].data);
    mh_pg_destroy(&self->pg);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

void ota_images_set_secret(ota_images_t *self, const char *secret)
{
    pthread_mutex_lock(&self->lock);
    snprintf(self->secret, sizeof self->secret, "%s", secret);
    pthread_mutex_unlock(&self->lock);
}

/* Finds or loads an image, taking a reference. Under the lock. Returns
 * NULL with *status 404 (no such version) or 503 (database away). */
static s_entry_t *s_get(ota_images_t *self, const char *version, unsigned *status)
{
    int64_t now = mh_mono_ms();
    for (int i = 0; i < S_CACHE; i++)
        if (self->cache[i].data && strcmp(self->cache[i].version, version) == 0) {
            self->cache[i].refs++;
            self->cache[i].used = now;
            return &self->cache[i];
        }
    char err[256];
    if (mh_pg_connect(self->pg, err, sizeof err) < 0) {
        *status = 503;
        return NULL;
    }
    const char *p[] = {version};
    PGresult *res = mh_pg_exec_bin(self->pg, PGRES_TUPLES_OK,
                                   "SELECT image FROM ota.firmware WHERE version = $1", 1, p, NULL,
                                   NULL, 1, err, sizeof err);
    if (!res) {
        mh_log_limited(&self->rl, MH_LOG_WARN, "cannot read image %s: %s", version, err);
        *status = 503;
        return NULL;
    }
    if (PQntuples(res) != 1) {
        PQclear(res);
        *status = 404;
        return NULL;
    }
    /* Evict the least recently used entry nobody is downloading. */
    s_entry_t *slot = NULL;
    for (int i = 0; i < S_CACHE; i++) {
        s_entry_t *e = &self->cache[i];
        if (!e->data) {
            slot = e;
            break;
        }
        if (!e->refs && (!slot || e->used < slot->used))
            slot = e;
    }
    size_t len = (size_t)PQgetlength(res, 0, 0);
    uint8_t *data = slot ? malloc(len ? len : 1) : NULL;
    if (!data) {
        PQclear(res);
        *status = 503;
        return NULL;
    }
    memcpy(data, PQgetvalue(res, 0, 0), len);
    PQclear(res);
    free(slot->data);
    *slot = (s_entry_t){.data = data, .len = len, .refs = 1, .used = now};
    snprintf(slot->version, sizeof slot->version, "%s", version);
    return slot;
}

typedef struct {
    ota_images_t *images;
    s_entry_t *entry;
    size_t from;
} s_reader_t;

static ssize_t s_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    s_reader_t *r = cls;
    size_t off = r->from + (size_t)pos;
    if (off >= r->entry->len)
        return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = r->entry->len - off < max ? r->entry->len - off : max;
    memcpy(buf, r->entry->data + off, n);
    mh_counter_add(r->images->m_bytes, n);
    return (ssize_t)n;
}

static void s_release(void *cls)
{
    s_reader_t *r = cls;
    pthread_mutex_lock(&r->images->lock);
    r->entry->refs--;
    pthread_mutex_unlock(&r->images->lock);
    free(r);
}

static enum MHD_Result s_text(ota_images_t *self, struct MHD_Connection *conn, unsigned status,
                              const char *text)
{
    mh_counter_inc(self->m_requests[status >= 500 ? 3 : 2]);
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(r, "Content-Type", "text/plain");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

int ota_images_handle(void *ud, struct MHD_Connection *conn, const char *method, const char *url)
{
    ota_images_t *self = ud;
    (void)method;
    /* /firmware/{version}/image */
    const char *v = url + strlen("/firmware/");
    const char *slash = strchr(v, '/');
    char version[OTA_MAX_VERSION + 1];
    if (!slash || strcmp(slash, "/image") != 0 || (size_t)(slash - v) > OTA_MAX_VERSION)
        return s_text(self, conn, 404, "not found\n");
    memcpy(version, v, (size_t)(slash - v));
    version[slash - v] = 0;
    if (!ota_name_valid(version))
        return s_text(self, conn, 404, "not found\n");
    const char *exp = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "exp");
    const char *sig = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "sig");
    char *end = NULL;
    long long exp_s = exp ? strtoll(exp, &end, 10) : 0;
    if (!exp || !sig || *end || strlen(sig) != 64)
        return s_text(self, conn, 403, "a download link needs exp and sig\n");
    char want[65];
    pthread_mutex_lock(&self->lock);
    ota_link_sig(self->secret, version, exp_s, want);
    pthread_mutex_unlock(&self->lock);
    if (CRYPTO_memcmp(want, sig, 64) != 0)
        return s_text(self, conn, 403, "the link's signature does not match\n");
    if (exp_s < mh_now_ms() / 1000)
        return s_text(self, conn, 403, "the link has expired\n");
    unsigned status = 0;
    pthread_mutex_lock(&self->lock);
    s_entry_t *e = s_get(self, version, &status);
    pthread_mutex_unlock(&self->lock);
    if (!e)
        return status == 404 ? s_text(self, conn, 404, "no such firmware\n")
                             : s_text(self, conn, 503, "the image store is unavailable\n");
    size_t from = 0, to = e->len ? e->len - 1 : 0;
    unsigned code = 200;
    const char *range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Range");
    if (range) {
        if (ota_range_parse(range, e->len, &from, &to) < 0) {
            pthread_mutex_lock(&self->lock);
            e->refs--;
            pthread_mutex_unlock(&self->lock);
            char cr[64];
            snprintf(cr, sizeof cr, "bytes */%zu", e->len);
            mh_counter_inc(self->m_requests[2]);
            struct MHD_Response *r =
                MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
            MHD_add_response_header(r, "Content-Range", cr);
            enum MHD_Result ret = MHD_queue_response(conn, 416, r);
            MHD_destroy_response(r);
            return ret;
        }
        code = 206;
    }
    s_reader_t *rd = calloc(1, sizeof *rd);
    if (!rd) {
        pthread_mutex_lock(&self->lock);
        e->refs--;
        pthread_mutex_unlock(&self->lock);
        return s_text(self, conn, 503, "out of memory\n");
    }
    *rd = (s_reader_t){self, e, from};
    uint64_t n = e->len ? (uint64_t)(to - from + 1) : 0;
    struct MHD_Response *r = MHD_create_response_from_callback(n, 64 * 1024, s_read, rd, s_release);
    if (!r) {
        s_release(rd);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/octet-stream");
    MHD_add_response_header(r, "Accept-Ranges", "bytes");
    if (code == 206) {
        char cr[96];
        snprintf(cr, sizeof cr, "bytes %zu-%zu/%zu", from, to, e->len);
        MHD_add_response_header(r, "Content-Range", cr);
    }
    mh_counter_inc(self->m_requests[code == 200 ? 0 : 1]);
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}
