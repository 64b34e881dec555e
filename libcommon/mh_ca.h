/* mh_ca — the fleet's certificate authority on disk, with OpenSSL: what
 * `motectl ca` and twin's fleet provisioning (which signs with the same CA,
 * tw_provision.c) share.
 *
 * The directory (motectl's --ca-dir, $MOTEHUB_CA_DIR; twin's ca_dir):
 *   ca.key      the CA's private key (P-256, mode 0600)
 *   ca.crt      the CA certificate every broker and device trusts
 *   index.tsv   one line per certificate issued: status (V valid, R
 *               revoked), serial (hex), notAfter and revocation time (Unix
 *               seconds), CN
 *   crl.pem     the revocation list, rewritten by `motectl ca revoke`/`crl`
 *   crlnumber   the CRL's sequence number
 * Every change to index.tsv holds an exclusive lock (flock) on it, so any
 * number of motectl runs and twin replicas may issue at once. Failures
 * leave a message in ca->err. */
#pragma once
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/types.h>
#include <time.h>

typedef struct {
    const char *dir;
    char key_path[4200], crt_path[4200], index_path[4200], crl_path[4200], crlnum_path[4200];
    EVP_PKEY *key;
    X509 *crt;
    char err[4600];
} mh_ca_t;

/* What a certificate is for: a device (clientAuth), a platform service
 * (clientAuth, CN motehub:NAME), a broker (serverAuth, subjectAltNames) or
 * the CA itself. */
typedef enum { MH_CA_DEVICE, MH_CA_SERVICE, MH_CA_SERVER, MH_CA_ROOT } mh_ca_kind_t;

typedef struct {
    char status;
    char serial[64];
    long long not_after, revoked;
    char cn[256];
} mh_ca_entry_t;

void mh_ca_paths(mh_ca_t *ca, const char *dir);
/* Reads ca.key and ca.crt; -1 (ca->err) without them. */
int mh_ca_load(mh_ca_t *ca);
void mh_ca_unload(mh_ca_t *ca);
/* Sets ca->err to `what` and OpenSSL's last error; returns -1. */
int mh_ca_fail(mh_ca_t *ca, const char *what);

/* A certificate for `pub` with CN `cn`, signed by the CA (by `signer`, the
 * new CA's own key, for MH_CA_ROOT); its random serial in hex in `serial`. */
X509 *mh_ca_make_cert(mh_ca_t *ca, EVP_PKEY *pub, EVP_PKEY *signer, const char *cn,
                      mh_ca_kind_t kind, time_t not_before, time_t not_after, const char *san,
                      char *serial, size_t serial_len);
/* index.tsv opened with `mode` and locked; NULL (ca->err) if it cannot be. */
FILE *mh_ca_index_lock(mh_ca_t *ca, const char *mode);
bool mh_ca_parse_entry(char *line, mh_ca_entry_t *e);
/* One index.tsv line; the revocation time is 0 while valid. */
char *mh_ca_format_entry(char *buf, size_t len, char status, const char *serial,
                         long long not_after, long long revoked, const char *cn);

/* Writes a PEM file through a temporary and a rename, with `mode`. */
int mh_ca_write_pem(mh_ca_t *ca, const char *path, mode_t mode, int (*write)(BIO *, void *),
                    void *obj);
int mh_ca_pem_key(BIO *b, void *key);
int mh_ca_pem_crt(BIO *b, void *x509);
int mh_ca_pem_crl(BIO *b, void *crl);

/* Issues a device certificate for `pub` with CN `cn`, valid `days` from five
 * minutes ago, and records it in index.tsv: its PEM (malloc'd), serial and
 * SHA-256 fingerprint (64 hex digits: AWS IoT's certificateId). NULL
 * (ca->err) on failure. */
char *mh_ca_issue_device(mh_ca_t *ca, EVP_PKEY *pub, const char *cn, int days, char *serial,
                         size_t serial_len, char fingerprint[65]);
/* A private key as PEM (PKCS#8), malloc'd. */
char *mh_ca_key_pem(EVP_PKEY *key);
