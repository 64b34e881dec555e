/* ota_image — firmware images: signing with the fleet's Ed25519 key,
 * digests, pre-signed download links, and the HTTP handler that serves the
 * images to devices (GET /firmware/{version}/image?exp=…&sig=…, with
 * Range requests so an interrupted download resumes).
 *
 * The handler runs on the HTTP server's thread with its own PostgreSQL
 * connection; images are read once and kept in a small in-memory cache. */
#pragma once
#include "mh_metrics.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ota_signer_t ota_signer_t;

/* Loads an Ed25519 private key (PEM, as `openssl genpkey -algorithm
 * ed25519` writes it). NULL with err filled. */
ota_signer_t *ota_signer_load(const char *path, char *err, size_t errlen);
void ota_signer_destroy(ota_signer_t **self_p);
/* The public key as PEM (SubjectPublicKeyInfo); owned by the signer. */
const char *ota_signer_public_pem(ota_signer_t *self);
/* Signs the whole image; base64 of the 64-byte signature into out (>= 89
 * bytes). 0 or -1. */
int ota_sign(ota_signer_t *self, const uint8_t *data, size_t len, char *out, size_t outlen);

/* Lower-case hex SHA-256 into out[65]. */
void ota_sha256_hex(const uint8_t *data, size_t len, char out[65]);
/* The link signature: hex HMAC-SHA256(secret, "<version>\n<exp>") into out[65]. */
void ota_link_sig(const char *secret, const char *version, int64_t exp_s, char out[65]);
/* The path and query of a download link valid until exp_s (Unix seconds). */
void ota_link(const char *secret, const char *version, int64_t exp_s, char *out, size_t outlen);

typedef struct ota_images_t ota_images_t;

ota_images_t *ota_images_new(const char *pg_url, mh_metrics_t *metrics);
void ota_images_destroy(ota_images_t **self_p);
/* The secret links are signed with (copied). */
void ota_images_set_secret(ota_images_t *self, const char *secret);
/* The mh_http handler (ud = the ota_images_t). */
struct MHD_Connection;
int ota_images_handle(void *ud, struct MHD_Connection *conn, const char *method, const char *url);
