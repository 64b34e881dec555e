/* twin: AWS IoT fleet provisioning (shared/spec/aws-iot-compat.md). A
 * device holding a claim certificate asks for its own certificate
 * (CreateKeysAndCertificate: twin makes the key; CreateCertificateFromCsr:
 * the device keeps it), signed by the fleet CA (mh_ca.h, the same
 * index.tsv `motectl ca list` and `revoke` read), then registers through a
 * provisioning template (RegisterThing, tw_template.h): the device is made
 * with the template's id, tags and desired state and the certificate is
 * bound to it in the same transaction. The certificate's CN is
 * "cert:<random>": the broker plugin maps it to the device
 * (motehub_certmap.h). Replies go to the asking client alone
 * (motehub/to/<client>/..., the broker plugin). */
#include "tw_internal.h"

#include "mh_ca.h"
#include "tw_template.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#define S_TOKEN_TTL_MS (3600 * 1000) /* AWS: an ownership token lasts an hour */
#define S_CERT_DAYS    825

static void s_hex(char *out, size_t bytes)
{
    unsigned char b[32];
    RAND_bytes(b, (int)bytes);
    for (size_t i = 0; i < bytes; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* .../accepted or .../rejected of the request's topic, to the client. */
static void s_reply(tw_batch_t *b, const Mh__DeviceMessage *m, const char *base, bool ok, json_t *v)
{
    char topic[384];
    snprintf(topic, sizeof topic, MH_DIRECT_PREFIX "%s/%s/%s", m->device_id, base,
             ok ? "accepted" : "rejected");
    tw_out_publish_topic(&b->out, m->device_id, topic, v);
}

static void s_reject(tw_batch_t *b, const Mh__DeviceMessage *m, const char *base, int status,
                     const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void s_reject(tw_batch_t *b, const Mh__DeviceMessage *m, const char *base, int status,
                     const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s_reply(
        b, m, base, false,
        json_pack("{s:i,s:s,s:s}", "statusCode", status, "errorCode", code, "errorMessage", msg));
}

/* Signs `pub` into a new certificate, recorded in index.tsv and
 * twin.certificates with an ownership token; replies accepted with
 * `key_pem` (CreateKeysAndCertificate) or without. False on a database
 * error. */
static bool s_issue(tw_t *self, tw_batch_t *b, const Mh__DeviceMessage *m, const char *base,
                    EVP_PKEY *pub, const char *key_pem, char *err, size_t errlen)
{
    char cn[40] = "cert:", serial[64], fp[65], token[65], now_s[32], exp_s[32];
    s_hex(cn + 5, 16);
    s_hex(token, 32);
    char *pem = mh_ca_issue_device(&self->ca, pub, cn, S_CERT_DAYS, serial, sizeof serial, fp);
    if (!pem) {
        mh_log_limited(&self->rl_warn, MH_LOG_ERROR, "fleet provisioning: %s", self->ca.err);
        s_reject(b, m, base, 500, "InternalFailure", "the certificate could not be issued");
        return true;
    }
    snprintf(now_s, sizeof now_s, "%" PRId64, b->now);
    snprintf(exp_s, sizeof exp_s, "%" PRId64, b->now + S_TOKEN_TTL_MS);
    const char *p[] = {fp, cn, serial, m->device_id, token, exp_s, now_s};
    PGresult *res = mh_pg_exec(self->pg, PGRES_COMMAND_OK,
                               "INSERT INTO twin.certificates (id, cn, serial, claim, token,"
                               " token_expires_ms, created_ms) VALUES ($1, $2, $3, $4, $5,"
                               " $6::bigint, $7::bigint)",
                               7, p, err, errlen);
    if (!res) {
        free(pem);
        return false;
    }
    PQclear(res);
    json_t *v = json_pack("{s:s,s:s,s:s}", "certificateId", fp, "certificatePem", pem,
                          "certificateOwnershipToken", token);
    if (key_pem)
        json_object_set_new(v, "privateKey", json_string(key_pem));
    free(pem);
    s_reply(b, m, base, true, v);
    mh_log(MH_LOG_INFO, "fleet provisioning: certificate %s (%s) issued to %s", fp, cn,
           m->device_id);
    return true;
}

static bool s_create(tw_t *self, tw_batch_t *b, const Mh__DeviceMessage *m, const char *base,
                     json_t *req, char *err, size_t errlen)
{
    (void)req;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    char *key_pem = key ? mh_ca_key_pem(key) : NULL;
    bool ok = true;
    if (!key_pem)
        s_reject(b, m, base, 500, "InternalFailure", "a key could not be made");
    else
        ok = s_issue(self, b, m, base, key, key_pem, err, errlen);
    if (key_pem)
        OPENSSL_cleanse(key_pem, strlen(key_pem));
    free(key_pem);
    EVP_PKEY_free(key);
    return ok;
}

/* Accepts P-256/P-384 EC keys and RSA keys of 2048 bits or more. */
static bool s_key_ok(EVP_PKEY *k)
{
    int type = EVP_PKEY_get_base_id(k), bits = EVP_PKEY_get_bits(k);
    return (type == EVP_PKEY_EC && bits >= 256) || (type == EVP_PKEY_RSA && bits >= 2048);
}

static bool s_csr(tw_t *self, tw_batch_t *b, const Mh__DeviceMessage *m, const char *base,
                  json_t *req, char *err, size_t errlen)
{
    const char *pem = json_string_value(json_object_get(req, "certificateSigningRequest"));
    if (!pem)
        return s_reject(b, m, base, 400, "InvalidPayload",
                        "certificateSigningRequest (a PEM certificate request) is required"),
               true;
    BIO *bio = BIO_new_mem_buf(pem, -1);
    X509_REQ *csr = bio ? PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    EVP_PKEY *pub = csr ? X509_REQ_get_pubkey(csr) : NULL;
    bool ok = true;
    if (!csr)
        s_reject(b, m, base, 400, "InvalidCertificateSigningRequest",
                 "certificateSigningRequest is not a PEM certificate request");
    else if (!pub || X509_REQ_verify(csr, pub) != 1)
        s_reject(b, m, base, 400, "InvalidCertificateSigningRequest",
                 "the request's signature does not verify");
    else if (!s_key_ok(pub))
        s_reject(b, m, base, 400, "InvalidCertificateSigningRequest",
                 "the key must be EC (P-256 or larger) or RSA of 2048 bits or more");
    else
        ok = s_issue(self, b, m, base, pub, NULL, err, errlen);
    ERR_clear_error();
    EVP_PKEY_free(pub);
    X509_REQ_free(csr);
    return ok;
}

/* The device a template makes: its row, its first desired state, the
 * registered event. False on a database error; *exists when the id is
 * taken. */
static bool s_make_device(tw_t *self, tw_batch_t *b, json_t *made, bool *exists, char *err,
                          size_t errlen)
{
    const char *id = json_string_value(json_object_get(made, "thingName"));
    json_t *doc = tw_doc_new(json_object_get(made, "tags"), b->now);
    json_t *desired = json_object_get(made, "desired");
    bool changed;
    char why[256];
    if (json_object_size(desired))
        tw_apply_operator(doc, desired, NULL, b->now, &changed, why, sizeof why);
    char *text = tw_dumps(doc), now_s[32], version[32];
    snprintf(now_s, sizeof now_s, "%" PRId64, b->now);
    snprintf(version, sizeof version, "%" PRId64, tw_doc_version(doc));
    const char *p[] = {id, text, now_s, version};
    json_decref(doc);
    PGresult *res = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                               "INSERT INTO twin.devices (id, doc, version, created_ms)"
                               " VALUES ($1, $2::jsonb, $4::bigint, $3::bigint)"
                               " ON CONFLICT (id) DO NOTHING RETURNING id",
                               4, p, err, errlen);
    free(text);
    if (!res)
        return false;
    *exists = PQntuples(res) == 0;
    PQclear(res);
    if (!*exists) {
        Mh__DeviceRegistered ev = MH__DEVICE_REGISTERED__INIT;
        ev.device_id = (char *)id;
        tw_out_event(&b->out, "device.registered", &ev.base);
    }
    return true;
}

static bool s_register(tw_t *self, tw_batch_t *b, const Mh__DeviceMessage *m, const char *base,
                       json_t *req, char *err, size_t errlen)
{
    const char *token = json_string_value(json_object_get(req, "certificateOwnershipToken"));
    json_t *params = json_object_get(req, "parameters");
    if (!token || (params && !json_is_object(params)))
        return s_reject(b, m, base, 400, "InvalidPayload",
                        "certificateOwnershipToken (a string) is required; parameters is an"
                        " object of strings"),
               true;
    const char *pt[] = {m->shadow};
    PGresult *tpl =
        mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                   "SELECT body::text FROM twin.provisioning_templates WHERE name = $1 FOR SHARE",
                   1, pt, err, errlen);
    if (!tpl)
        return false;
    json_t *body =
        PQntuples(tpl) == 1 ? json_loads(PQgetvalue(tpl, 0, 0), JSON_DECODE_ANY, NULL) : NULL;
    PQclear(tpl);
    char why[512];
    json_t *made = NULL;
    bool ok = true;
    if (!body) {
        s_reject(b, m, base, 404, "ResourceNotFound", "no provisioning template %s", m->shadow);
        goto done;
    }
    if (!tw_template_enabled(body)) {
        s_reject(b, m, base, 403, "Forbidden", "provisioning template %s is disabled", m->shadow);
        goto done;
    }
    char now_s[32];
    snprintf(now_s, sizeof now_s, "%" PRId64, b->now);
    const char *pc[] = {token, now_s};
    PGresult *cert = mh_pg_exec(self->pg, PGRES_TUPLES_OK,
                                "SELECT id FROM twin.certificates WHERE token = $1"
                                " AND token_expires_ms > $2::bigint FOR UPDATE",
                                2, pc, err, errlen);
    if (!cert) {
        ok = false;
        goto done;
    }
    char cert_id[65];
    snprintf(cert_id, sizeof cert_id, "%s", PQntuples(cert) == 1 ? PQgetvalue(cert, 0, 0) : "");
    PQclear(cert);
    if (!*cert_id) {
        s_reject(b, m, base, 400, "InvalidCertificateOwnershipToken",
                 "the certificate ownership token is unknown, used or expired");
        goto done;
    }
    made = tw_template_apply(body, params, why, sizeof why);
    if (!made) {
        s_reject(b, m, base, 400, "InvalidParameters", "%s", why);
        goto done;
    }
    bool exists = false;
    const char *id = json_string_value(json_object_get(made, "thingName"));
    if (!s_make_device(self, b, made, &exists, err, errlen)) {
        ok = false;
        goto done;
    }
    if (exists) {
        s_reject(b, m, base, 409, "ResourceConflict",
                 "device %s already exists (delete it to provision it again)", id);
        goto done;
    }
    const char *pb[] = {cert_id, id, m->shadow, now_s};
    PGresult *res = mh_pg_exec(self->pg, PGRES_COMMAND_OK,
                               "UPDATE twin.certificates SET device_id = $2, template = $3,"
                               " registered_ms = $4::bigint, token = NULL WHERE id = $1",
                               4, pb, err, errlen);
    if (!res) {
        ok = false;
        goto done;
    }
    PQclear(res);
    s_reply(b, m, base, true,
            json_pack("{s:s,s:O}", "thingName", id, "deviceConfiguration",
                      json_object_get(made, "deviceConfiguration")));
    mh_log(MH_LOG_INFO, "fleet provisioning: device %s registered through %s (certificate %s)", id,
           m->shadow, cert_id);
done:
    json_decref(body);
    json_decref(made);
    return ok;
}

bool tw_msg_provision(tw_t *self, tw_batch_t *b, const Mh__DeviceMessage *m, char *err,
                      size_t errlen)
{
    /* the request's topic, spelled once: replies go to base/accepted|rejected */
    char base[128];
    if (m->kind == MH__DEVICE_MESSAGE__KIND__PROVISION_REGISTER)
        snprintf(base, sizeof base, "$aws/provisioning-templates/%s/provision/json", m->shadow);
    else
        snprintf(base, sizeof base, "$aws/certificates/%s/json",
                 m->kind == MH__DEVICE_MESSAGE__KIND__PROVISION_CSR ? "create-from-csr" : "create");
    if (!self->ca.key)
        return s_reject(b, m, base, 503, "ServiceUnavailable",
                        "fleet provisioning is off: twin runs without --ca-dir"),
               true;
    json_error_t jerr;
    size_t len = m->payload.len;
    while (len && m->payload.data[len - 1] == 0)
        len--; /* some SDKs send a trailing NUL */
    json_t *req =
        len ? mh_json_loadb((const char *)m->payload.data, len, 0, MH_JSON_MAX_DEPTH, &jerr)
            : json_object();
    if (!json_is_object(req)) {
        json_decref(req);
        return s_reject(b, m, base, 400, "InvalidPayload", "the payload is not a JSON object"),
               true;
    }
    bool ok = m->kind == MH__DEVICE_MESSAGE__KIND__PROVISION_CREATE
                  ? s_create(self, b, m, base, req, err, errlen)
              : m->kind == MH__DEVICE_MESSAGE__KIND__PROVISION_CSR
                  ? s_csr(self, b, m, base, req, err, errlen)
                  : s_register(self, b, m, base, req, err, errlen);
    json_decref(req);
    return ok;
}
