#include "mh_ota_verify.h"

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>

void *mh_ota_key_load(const char *pem)
{
    if (!pem)
        return NULL;
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *key = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (key && EVP_PKEY_id(key) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(key);
        key = NULL;
    }
    return key;
}

void mh_ota_key_free(void *key)
{
    EVP_PKEY_free(key);
}

int mh_ota_verify(void *key, const uint8_t *image, size_t len, int64_t size, const char *sha256_hex,
                  const char *signature_b64, char *why, size_t whylen)
{
    if (!key) {
        snprintf(why, whylen, "no signing key is provisioned on the device");
        return -1;
    }
    if (size < 0 || (uint64_t)size != len) {
        snprintf(why, whylen, "size %zu is not the %lld the job names", len, (long long)size);
        return -1;
    }
    unsigned char md[32];
    unsigned int mdlen = 0;
    char hex[65];
    EVP_Digest(image, len, md, &mdlen, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    if (!sha256_hex || strlen(sha256_hex) != 64 || strncasecmp(hex, sha256_hex, 64) != 0) {
        snprintf(why, whylen, "SHA-256 %s does not match the job's", hex);
        return -1;
    }
    size_t blen = signature_b64 ? strlen(signature_b64) : 0;
    unsigned char sig[96];
    if (blen == 0 || blen > 4 * (sizeof sig / 3) || blen % 4) {
        snprintf(why, whylen, "the signature is not base64 of 64 bytes");
        return -1;
    }
    int n = EVP_DecodeBlock(sig, (const unsigned char *)signature_b64, (int)blen);
    for (size_t i = blen; i > 0 && signature_b64[i - 1] == '='; i--)
        n--;
    if (n != 64) {
        snprintf(why, whylen, "the signature is not base64 of 64 bytes");
        return -1;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
             EVP_DigestVerify(ctx, sig, 64, image, len) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok) {
        snprintf(why, whylen, "the signature does not verify with the fleet's key");
        return -1;
    }
    return 0;
}
