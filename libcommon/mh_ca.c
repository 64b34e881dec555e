#include "mh_ca.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

int mh_ca_fail(mh_ca_t *ca, const char *what)
{
    unsigned long e = ERR_get_error();
    snprintf(ca->err, sizeof ca->err, "%s%s%s", what, e ? ": " : "",
             e ? ERR_reason_error_string(e) : "");
    ERR_clear_error();
    return -1;
}

void mh_ca_paths(mh_ca_t *ca, const char *dir)
{
    ca->dir = dir;
    snprintf(ca->key_path, sizeof ca->key_path, "%s/ca.key", dir);
    snprintf(ca->crt_path, sizeof ca->crt_path, "%s/ca.crt", dir);
    snprintf(ca->index_path, sizeof ca->index_path, "%s/index.tsv", dir);
    snprintf(ca->crl_path, sizeof ca->crl_path, "%s/crl.pem", dir);
    snprintf(ca->crlnum_path, sizeof ca->crlnum_path, "%s/crlnumber", dir);
}

int mh_ca_write_pem(mh_ca_t *ca, const char *path, mode_t mode, int (*write)(BIO *, void *),
                    void *obj)
{
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0) {
        snprintf(ca->err, sizeof ca->err, "%s: %s", tmp, strerror(errno));
        return -1;
    }
    FILE *f = fdopen(fd, "w");
    BIO *b = f ? BIO_new_fp(f, BIO_CLOSE) : NULL;
    if (!b) {
        if (f)
            fclose(f);
        else
            close(fd);
        unlink(tmp);
        return mh_ca_fail(ca, "out of memory");
    }
    int ok = write(b, obj);
    BIO_free(b);
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        snprintf(ca->err, sizeof ca->err, "cannot write %s", path);
        return -1;
    }
    return 0;
}

int mh_ca_pem_key(BIO *b, void *k)
{
    return PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
}
int mh_ca_pem_crt(BIO *b, void *x)
{
    return PEM_write_bio_X509(b, x);
}
int mh_ca_pem_crl(BIO *b, void *c)
{
    return PEM_write_bio_X509_CRL(b, c);
}

int mh_ca_load(mh_ca_t *ca)
{
    FILE *f = fopen(ca->key_path, "r");
    if (!f) {
        snprintf(ca->err, sizeof ca->err, "no CA in %s (run motectl ca init)", ca->dir);
        return -1;
    }
    ca->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    f = fopen(ca->crt_path, "r");
    if (f) {
        ca->crt = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
    }
    if (!ca->key || !ca->crt)
        return mh_ca_fail(ca, "cannot read the CA key or certificate");
    return 0;
}

void mh_ca_unload(mh_ca_t *ca)
{
    EVP_PKEY_free(ca->key);
    X509_free(ca->crt);
    ca->key = NULL;
    ca->crt = NULL;
}

/* A random positive 127-bit serial. */
static int s_serial(X509 *x, char *hex, size_t hexlen)
{
    BIGNUM *bn = BN_new();
    int ok = bn && BN_rand(bn, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) &&
             BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    if (ok) {
        char *h = BN_bn2hex(bn);
        snprintf(hex, hexlen, "%s", h ? h : "");
        OPENSSL_free(h);
        ok = h != NULL;
    }
    BN_free(bn);
    return ok ? 0 : -1;
}

static int s_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!e)
        return -1;
    int ok = X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok ? 0 : -1;
}

bool mh_ca_parse_entry(char *line, mh_ca_entry_t *e)
{
    return sscanf(line, "%c\t%63s\t%lld\t%lld\t%255[^\n]", &e->status, e->serial, &e->not_after,
                  &e->revoked, e->cn) == 5;
}

char *mh_ca_format_entry(char *buf, size_t len, char status, const char *serial,
                         long long not_after, long long revoked, const char *cn)
{
    snprintf(buf, len, "%c\t%s\t%lld\t%lld\t%s\n", status, serial, not_after, revoked, cn);
    return buf;
}

X509 *mh_ca_make_cert(mh_ca_t *ca, EVP_PKEY *pub, EVP_PKEY *signer, const char *cn,
                      mh_ca_kind_t kind, time_t not_before, time_t not_after, const char *san,
                      char *serial, size_t serial_len)
{
    X509 *x = X509_new();
    if (!x || !X509_set_version(x, 2) || s_serial(x, serial, serial_len) < 0)
        goto fail;
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                    0))
        goto fail;
    if (kind == MH_CA_ROOT)
        X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"Motehub", -1,
                                   -1, 0);
    X509 *issuer = kind == MH_CA_ROOT ? x : ca->crt;
    if (!X509_set_issuer_name(x, X509_get_subject_name(issuer)) || !X509_set_pubkey(x, pub))
        goto fail;
    if (!ASN1_TIME_set(X509_getm_notBefore(x), not_before) ||
        !ASN1_TIME_set(X509_getm_notAfter(x), not_after))
        goto fail;
    int rc = s_ext(x, issuer, NID_subject_key_identifier, "hash");
    if (kind == MH_CA_ROOT) {
        rc |= s_ext(x, issuer, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
        rc |= s_ext(x, issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        rc |= s_ext(x, issuer, NID_authority_key_identifier, "keyid");
        rc |= s_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE");
        rc |= s_ext(x, issuer, NID_key_usage, "critical,digitalSignature");
        rc |=
            s_ext(x, issuer, NID_ext_key_usage, kind == MH_CA_SERVER ? "serverAuth" : "clientAuth");
        if (san && *san)
            rc |= s_ext(x, issuer, NID_subject_alt_name, san);
    }
    if (rc || !X509_sign(x, signer, EVP_sha256()))
        goto fail;
    return x;
fail:
    mh_ca_fail(ca, "cannot make the certificate");
    X509_free(x);
    return NULL;
}

FILE *mh_ca_index_lock(mh_ca_t *ca, const char *mode)
{
    FILE *f = fopen(ca->index_path, mode);
    if (!f) {
        snprintf(ca->err, sizeof ca->err, "%s: %s", ca->index_path, strerror(errno));
        return NULL;
    }
    flock(fileno(f), LOCK_EX);
    return f;
}

static char *s_bio_text(BIO *b)
{
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    char *out = n > 0 ? malloc((size_t)n + 1) : NULL;
    if (out) {
        memcpy(out, data, (size_t)n);
        out[n] = 0;
    }
    return out;
}

char *mh_ca_key_pem(EVP_PKEY *key)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = b && mh_ca_pem_key(b, key) ? s_bio_text(b) : NULL;
    BIO_free(b);
    return out;
}

char *mh_ca_issue_device(mh_ca_t *ca, EVP_PKEY *pub, const char *cn, int days, char *serial,
                         size_t serial_len, char fingerprint[65])
{
    time_t now = time(NULL), not_after = now + (time_t)days * 86400;
    X509 *x = mh_ca_make_cert(ca, pub, ca->key, cn, MH_CA_DEVICE, now - 300, not_after, NULL,
                              serial, serial_len);
    if (!x)
        return NULL;
    unsigned char md[32];
    unsigned int mdlen = 0;
    BIO *b = BIO_new(BIO_s_mem());
    char *pem = NULL;
    if (b && X509_digest(x, EVP_sha256(), md, &mdlen) && mdlen == 32 && PEM_write_bio_X509(b, x))
        pem = s_bio_text(b);
    BIO_free(b);
    X509_free(x);
    if (!pem) {
        mh_ca_fail(ca, "cannot encode the certificate");
        return NULL;
    }
    for (unsigned i = 0; i < 32; i++)
        snprintf(fingerprint + 2 * i, 3, "%02x", md[i]);
    FILE *index = mh_ca_index_lock(ca, "a");
    char line[512];
    if (!index ||
        fputs(mh_ca_format_entry(line, sizeof line, 'V', serial, (long long)not_after, 0, cn),
              index) < 0 ||
        fflush(index) != 0 || fsync(fileno(index)) != 0) {
        if (index) {
            snprintf(ca->err, sizeof ca->err, "%s: %s", ca->index_path, strerror(errno));
            fclose(index);
        }
        free(pem);
        return NULL;
    }
    fclose(index);
    return pem;
}
