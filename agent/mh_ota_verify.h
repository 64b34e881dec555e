/* mh_ota_verify — what a device checks before it installs an image: the
 * size, the SHA-256 and the fleet's Ed25519 signature over the image
 * (shared/spec/device-protocol.md, OTA jobs). Pure; used by the agent and
 * by the tests. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Loads a PEM public key (SubjectPublicKeyInfo, Ed25519). Returns an
 * EVP_PKEY* as void* (free with mh_ota_key_free), or NULL. */
void *mh_ota_key_load(const char *pem);
void mh_ota_key_free(void *key);

/* 0 when the image is the one the job describes and the signature is the
 * fleet's; else -1 with `why` filled ("size 1000 is not the 1024 the job
 * names", "SHA-256 does not match", "signature does not verify", ...). */
int mh_ota_verify(void *key, const uint8_t *image, size_t len, int64_t size, const char *sha256_hex,
                  const char *signature_b64, char *why, size_t whylen);
