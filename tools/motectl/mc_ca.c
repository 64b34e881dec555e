/* motectl ca — the fleet's certificate authority, with OpenSSL.
 *
 * The CA lives in a directory outside the repository (--ca-dir, else
 * $MOTEHUB_CA_DIR, else ~/.motehub/ca):
 *   ca.key      the CA's private key (P-256, mode 0600) — keep it offline
 *   ca.crt      the CA certificate every broker and device trusts
 *   index.tsv   one line per certificate issued: status (V valid, R
 *               revoked), serial (hex), notAfter and revocation time (Unix
 *               seconds), CN
 *   crl.pem     the revocation list, rewritten by `revoke` and `crl`
 *   crlnumber   the CRL's sequence number
 * Device certificates carry CN = device id (1-64 of A-Z a-z 0-9 . _ -),
 * clientAuth only; service certificates CN = motehub:NAME (a name no device
 * id can take), claim certificates CN = claim:NAME (fleet provisioning
 * only; twin issues the devices' own, CN cert:<certificateId>), server
 * certificates serverAuth with subjectAltNames. The directory and its locking:
 * mh_ca.h. */
#include "mc_ca.h"

#include "mh_ca.h"
#include "mh_ids.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *s_usage =
    "usage: motectl ca COMMAND [--ca-dir DIR] ...\n"
    "  ca init [--cn NAME] [--days 3650]          create the fleet CA (once)\n"
    "  ca issue ID... [--out DIR] [--days 825] [--not-before T] [--not-after T]\n"
    "  ca issue --prefix P --count N [--out DIR] [--skip-existing]\n"
    "                                             a fleet: P-0000 ... (motesim's ids)\n"
    "  ca issue --service NAME [--out DIR]        CN motehub:NAME (gateway, ...)\n"
    "  ca issue --server NAME [--san DNS|IP]...   a broker's certificate\n"
    "  ca issue --claim NAME [--out DIR]          a claim certificate (CN claim:NAME):\n"
    "                                             fleet provisioning only\n"
    "  ca sign CSR-FILE [--out FILE] [--days 825] sign a device's request (its key\n"
    "                                             never leaves the device)\n"
    "  ca revoke ID|SERIAL                        revoke, and write crl.pem\n"
    "  ca crl [--days 30]                         write crl.pem again (before it expires)\n"
    "  ca list\n"
    "T is RFC 3339 (2030-01-01T00:00:00Z). Files: OUT/ID.crt, OUT/ID.key (0600).\n"
    "The CA directory is --ca-dir, $MOTEHUB_CA_DIR, or ~/.motehub/ca.\n";

static int s_fail(const char *what)
{
    unsigned long e = ERR_get_error();
    fprintf(stderr, "motectl ca: %s%s%s\n", what, e ? ": " : "",
            e ? ERR_reason_error_string(e) : "");
    return 1;
}

bool mc_valid_device_id(const char *id)
{
    return mh_device_id_valid(id, strlen(id));
}

static int s_say(mh_ca_t *ca)
{
    fprintf(stderr, "motectl ca: %s\n", ca->err);
    return -1;
}

static int s_load(mh_ca_t *ca)
{
    return mh_ca_load(ca) < 0 ? s_say(ca) : 0;
}

static int s_write_pem(mh_ca_t *ca, const char *path, mode_t mode, int (*write)(BIO *, void *),
                       void *obj)
{
    return mh_ca_write_pem(ca, path, mode, write, obj) < 0 ? s_say(ca) : 0;
}

static FILE *s_index_lock(mh_ca_t *ca, const char *mode)
{
    FILE *f = mh_ca_index_lock(ca, mode);
    if (!f)
        s_say(ca);
    return f;
}

static X509 *s_make_cert(mh_ca_t *ca, EVP_PKEY *pub, EVP_PKEY *signer, const char *cn,
                         mh_ca_kind_t kind, time_t not_before, time_t not_after, const char *san,
                         char *serial, size_t serial_len)
{
    X509 *x =
        mh_ca_make_cert(ca, pub, signer, cn, kind, not_before, not_after, san, serial, serial_len);
    if (!x)
        s_say(ca);
    return x;
}

/* RFC 3339 UTC ("2030-01-01T00:00:00Z") → Unix seconds; -1 if malformed. */
static time_t s_parse_time(const char *t)
{
    struct tm tm = {0};
    const char *end = strptime(t, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!end || (strcmp(end, "Z") != 0 && strcmp(end, "+00:00") != 0))
        return -1;
    return timegm(&tm);
}

static int s_crl(mh_ca_t *ca, int days);

static int s_init(mh_ca_t *ca, const char *cn, int days)
{
    if (access(ca->key_path, F_OK) == 0) {
        fprintf(stderr, "motectl ca: a CA already exists in %s\n", ca->dir);
        return 1;
    }
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", ca->dir);
    for (char *p = parent + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            mkdir(parent, 0700);
            *p = '/';
        }
    if (mkdir(ca->dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "motectl ca: %s: %s\n", ca->dir, strerror(errno));
        return 1;
    }
    ca->key = EVP_EC_gen("P-256");
    if (!ca->key)
        return s_fail("cannot make a key");
    char serial[64];
    time_t now = time(NULL);
    ca->crt = s_make_cert(ca, ca->key, ca->key, cn, MH_CA_ROOT, now - 300,
                          now + (time_t)days * 86400, NULL, serial, sizeof serial);
    if (!ca->crt || s_write_pem(ca, ca->key_path, 0600, mh_ca_pem_key, ca->key) < 0 ||
        s_write_pem(ca, ca->crt_path, 0644, mh_ca_pem_crt, ca->crt) < 0)
        return 1;
    FILE *f = s_index_lock(ca, "a");
    if (f)
        fclose(f);
    printf("CA \"%s\" created in %s (valid %d days); devices and brokers trust %s\n", cn, ca->dir,
           days, ca->crt_path);
    return s_crl(ca, 30); /* brokers that honour a CRL need one from the start */
}

typedef struct {
    const char *out;
    int days;
    time_t not_before, not_after;
    bool skip_existing, quiet;
} s_issue_opts_t;

/* Issues one certificate and key pair for `cn` into OUT/FILE.crt/.key and
 * records it. */
static int s_issue_one(mh_ca_t *ca, FILE *index, const s_issue_opts_t *o, const char *cn,
                       const char *file, mh_ca_kind_t kind, const char *san)
{
    char crt_path[4200], key_path[4200];
    snprintf(crt_path, sizeof crt_path, "%s/%s.crt", o->out, file);
    snprintf(key_path, sizeof key_path, "%s/%s.key", o->out, file);
    if (o->skip_existing && access(crt_path, F_OK) == 0 && access(key_path, F_OK) == 0)
        return 0;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    if (!key)
        return s_fail("cannot make a key");
    char serial[64];
    time_t now = time(NULL);
    time_t nb = o->not_before ? o->not_before : now - 300;
    time_t na = o->not_after ? o->not_after : now + (time_t)o->days * 86400;
    X509 *x = s_make_cert(ca, key, ca->key, cn, kind, nb, na, san, serial, sizeof serial);
    int rc = x && s_write_pem(ca, key_path, 0600, mh_ca_pem_key, key) == 0 &&
                     s_write_pem(ca, crt_path, 0644, mh_ca_pem_crt, x) == 0
                 ? 0
                 : 1;
    if (rc == 0) {
        char line[512];
        fputs(mh_ca_format_entry(line, sizeof line, 'V', serial, (long long)na, 0, cn), index);
        if (!o->quiet)
            printf("%s\t%s\t%s\n", cn, serial, crt_path);
    }
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}

/* The CA certificate next to the issued ones, for devices to trust. */
static void s_copy_ca(mh_ca_t *ca, const char *out)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/ca.crt", out);
    s_write_pem(ca, path, 0644, mh_ca_pem_crt, ca->crt);
}

static int s_issue(mh_ca_t *ca, int argc, char **argv)
{
    static const struct option lo[] = {
        {"out", required_argument, NULL, 'o'},        {"days", required_argument, NULL, 'd'},
        {"not-before", required_argument, NULL, 'b'}, {"not-after", required_argument, NULL, 'a'},
        {"prefix", required_argument, NULL, 'p'},     {"count", required_argument, NULL, 'n'},
        {"skip-existing", no_argument, NULL, 'k'},    {"service", required_argument, NULL, 's'},
        {"server", required_argument, NULL, 'S'},     {"san", required_argument, NULL, 'A'},
        {"claim", required_argument, NULL, 'c'},      {NULL, 0, NULL, 0}};
    s_issue_opts_t o = {.out = ".", .days = 825};
    const char *prefix = NULL, *service = NULL, *server = NULL, *claim = NULL;
    long count = -1;
    char san[2048] = "";
    int c;
    optind = 0; /* GNU getopt: start afresh, permuting */
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'o':
            o.out = optarg;
            break;
        case 'd':
            o.days = atoi(optarg);
            break;
        case 'b':
        case 'a': {
            time_t t = s_parse_time(optarg);
            if (t < 0) {
                fprintf(stderr, "motectl ca: %s is not an RFC 3339 UTC time\n", optarg);
                return 2;
            }
            *(c == 'b' ? &o.not_before : &o.not_after) = t;
            break;
        }
        case 'p':
            prefix = optarg;
            break;
        case 'n':
            count = strtol(optarg, NULL, 10);
            break;
        case 'k':
            o.skip_existing = true;
            break;
        case 's':
            service = optarg;
            break;
        case 'c':
            claim = optarg;
            break;
        case 'S':
            server = optarg;
            break;
        case 'A': {
            size_t l = strlen(san);
            bool ip = strspn(optarg, "0123456789.:") == strlen(optarg);
            snprintf(san + l, sizeof san - l, "%s%s:%s", l ? "," : "", ip ? "IP" : "DNS", optarg);
            break;
        }
        default:
            fputs(s_usage, stderr);
            return 2;
        }
    }
    int nids = argc - optind;
    if (o.days < 1 || (!!prefix != (count >= 0)) ||
        (nids == 0 && !prefix && !service && !server && !claim) ||
        (nids && (prefix || service || server || claim))) {
        fputs(s_usage, stderr);
        return 2;
    }
    for (int i = optind; i < argc; i++)
        if (!mc_valid_device_id(argv[i])) {
            fprintf(stderr, "motectl ca: \"%s\" is not a device id (1-64 of A-Z a-z 0-9 . _ -)\n",
                    argv[i]);
            return 2;
        }
    if (prefix && (!mc_valid_device_id(prefix) || strlen(prefix) > 50 || count > 10000000)) {
        fprintf(stderr, "motectl ca: bad --prefix or --count\n");
        return 2;
    }
    if (claim && (!mc_valid_device_id(claim) || strlen(claim) > 56)) {
        fprintf(stderr, "motectl ca: bad claim name \"%s\"\n", claim);
        return 2;
    }
    if (service && !mc_valid_device_id(service)) {
        fprintf(stderr, "motectl ca: bad service name \"%s\"\n", service);
        return 2;
    }
    if (mkdir(o.out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "motectl ca: %s: %s\n", o.out, strerror(errno));
        return 1;
    }
    if (s_load(ca) < 0)
        return 1;
    FILE *index = s_index_lock(ca, "a");
    if (!index)
        return 1;
    int rc = 0;
    o.quiet = prefix && count > 20;
    for (int i = optind; i < argc && !rc; i++)
        rc = s_issue_one(ca, index, &o, argv[i], argv[i], MH_CA_DEVICE, NULL);
    for (long i = 0; prefix && i < count && !rc; i++) {
        char id[80];
        snprintf(id, sizeof id, "%s-%04ld", prefix, i);
        rc = s_issue_one(ca, index, &o, id, id, MH_CA_DEVICE, NULL);
    }
    if (service) {
        char cn[128];
        snprintf(cn, sizeof cn, "motehub:%s", service);
        rc = s_issue_one(ca, index, &o, cn, service, MH_CA_SERVICE, NULL);
    }
    if (claim) {
        char cn[128];
        snprintf(cn, sizeof cn, "claim:%s", claim);
        rc = s_issue_one(ca, index, &o, cn, claim, MH_CA_DEVICE, NULL);
    }
    if (server) {
        if (!*san)
            snprintf(san, sizeof san, "DNS:%s", server);
        rc = s_issue_one(ca, index, &o, server, server, MH_CA_SERVER, san);
    }
    fclose(index);
    if (!rc)
        s_copy_ca(ca, o.out);
    if (!rc && o.quiet)
        printf("%ld device certificates in %s (%s-0000 ...)\n", count, o.out, prefix);
    return rc;
}

static int s_sign(mh_ca_t *ca, int argc, char **argv)
{
    static const struct option lo[] = {{"out", required_argument, NULL, 'o'},
                                       {"days", required_argument, NULL, 'd'},
                                       {NULL, 0, NULL, 0}};
    const char *out = NULL;
    int days = 825, c;
    optind = 0; /* GNU getopt: start afresh, permuting */
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == 'o')
            out = optarg;
        else if (c == 'd')
            days = atoi(optarg);
        else {
            fputs(s_usage, stderr);
            return 2;
        }
    }
    if (argc - optind != 1 || days < 1) {
        fputs(s_usage, stderr);
        return 2;
    }
    FILE *f = fopen(argv[optind], "r");
    if (!f) {
        fprintf(stderr, "motectl ca: %s: %s\n", argv[optind], strerror(errno));
        return 1;
    }
    X509_REQ *req = PEM_read_X509_REQ(f, NULL, NULL, NULL);
    fclose(f);
    if (!req)
        return s_fail("not a PEM certificate request");
    EVP_PKEY *pub = X509_REQ_get_pubkey(req);
    int rc = 1;
    char cn[256] = "";
    if (!pub || X509_REQ_verify(req, pub) != 1) {
        s_fail("the request's signature does not verify");
        goto done;
    }
    X509_NAME_get_text_by_NID(X509_REQ_get_subject_name(req), NID_commonName, cn, sizeof cn);
    if (!mc_valid_device_id(cn)) {
        fprintf(stderr, "motectl ca: the request's CN \"%s\" is not a device id\n", cn);
        rc = 2;
        goto done;
    }
    if (s_load(ca) < 0)
        goto done;
    char serial[64];
    time_t now = time(NULL), not_after = now + (time_t)days * 86400;
    /* Only the CN is taken from the request; the CA sets every extension. */
    X509 *x = s_make_cert(ca, pub, ca->key, cn, MH_CA_DEVICE, now - 300, not_after, NULL, serial,
                          sizeof serial);
    if (!x)
        goto done;
    FILE *index = s_index_lock(ca, "a");
    if (index) {
        if (out ? s_write_pem(ca, out, 0644, mh_ca_pem_crt, x) == 0
                : PEM_write_X509(stdout, x) == 1) {
            char line[512];
            fputs(mh_ca_format_entry(line, sizeof line, 'V', serial, (long long)not_after, 0, cn),
                  index);
            if (out)
                printf("%s\t%s\t%s\n", cn, serial, out);
            rc = 0;
        }
        fclose(index);
    }
    X509_free(x);
done:
    EVP_PKEY_free(pub);
    X509_REQ_free(req);
    return rc;
}

static int s_revoke(mh_ca_t *ca, const char *what)
{
    if (s_load(ca) < 0)
        return 1;
    FILE *f = s_index_lock(ca, "r+");
    if (!f)
        return 1;
    /* Read everything, mark, write back in place under the lock. */
    char *all = NULL;
    size_t cap = 0, len = 0;
    char line[512];
    int n = 0;
    time_t now = time(NULL);
    while (fgets(line, sizeof line, f)) {
        mh_ca_entry_t e;
        if (mh_ca_parse_entry(line, &e) && e.status == 'V' &&
            (strcmp(e.cn, what) == 0 || strcasecmp(e.serial, what) == 0)) {
            mh_ca_format_entry(line, sizeof line, 'R', e.serial, e.not_after, (long long)now, e.cn);
            n++;
        }
        size_t l = strlen(line);
        if (len + l + 1 > cap) {
            char *bigger = realloc(all, (cap + l + 1) * 2);
            if (!bigger) {
                free(all);
                fclose(f);
                return s_fail("out of memory");
            }
            all = bigger;
            cap = (cap + l + 1) * 2;
        }
        memcpy(all + len, line, l + 1);
        len += l;
    }
    int rc = 0;
    if (n == 0) {
        fprintf(stderr, "motectl ca: no valid certificate for \"%s\"\n", what);
        rc = 1;
    } else {
        rewind(f);
        if (ftruncate(fileno(f), 0) != 0 || fwrite(all, 1, len, f) != len || fflush(f) != 0)
            rc = s_fail("cannot rewrite index.tsv");
    }
    free(all);
    fclose(f);
    if (rc == 0) {
        printf("revoked %d certificate%s of %s\n", n, n == 1 ? "" : "s", what);
        rc = s_crl(ca, 30);
    }
    return rc;
}

static int s_crl(mh_ca_t *ca, int days)
{
    if (!ca->key && s_load(ca) < 0)
        return 1;
    X509_CRL *crl = X509_CRL_new();
    long number = 1;
    FILE *nf = fopen(ca->crlnum_path, "r");
    if (nf) {
        if (fscanf(nf, "%ld", &number) != 1)
            number = 1;
        fclose(nf);
    }
    time_t now = time(NULL);
    ASN1_TIME *t = ASN1_TIME_new();
    int ok = crl && t && X509_CRL_set_version(crl, 1) &&
             X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca->crt)) &&
             ASN1_TIME_set(t, now) && X509_CRL_set1_lastUpdate(crl, t) &&
             ASN1_TIME_set(t, now + (time_t)days * 86400) && X509_CRL_set1_nextUpdate(crl, t);
    FILE *f = ok ? s_index_lock(ca, "r") : NULL;
    int revoked = 0;
    char line[512];
    while (ok && f && fgets(line, sizeof line, f)) {
        mh_ca_entry_t e;
        if (!mh_ca_parse_entry(line, &e) || e.status != 'R')
            continue;
        X509_REVOKED *r = X509_REVOKED_new();
        BIGNUM *bn = NULL;
        ASN1_INTEGER *serial = NULL;
        ASN1_TIME *when = ASN1_TIME_new();
        ok = r && when && BN_hex2bn(&bn, e.serial) && (serial = BN_to_ASN1_INTEGER(bn, NULL)) &&
             X509_REVOKED_set_serialNumber(r, serial) && ASN1_TIME_set(when, e.revoked) &&
             X509_REVOKED_set_revocationDate(r, when) && X509_CRL_add0_revoked(crl, r);
        if (!ok)
            X509_REVOKED_free(r);
        ASN1_INTEGER_free(serial);
        ASN1_TIME_free(when);
        BN_free(bn);
        revoked++;
    }
    if (f)
        fclose(f);
    ASN1_INTEGER *num = ASN1_INTEGER_new();
    ok = ok && f && num && ASN1_INTEGER_set(num, number) &&
         X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0) && X509_CRL_sort(crl) &&
         X509_CRL_sign(crl, ca->key, EVP_sha256());
    ASN1_INTEGER_free(num);
    ASN1_TIME_free(t);
    int rc = 1;
    if (!ok)
        s_fail("cannot make the CRL");
    else if (s_write_pem(ca, ca->crl_path, 0644, mh_ca_pem_crl, crl) == 0) {
        nf = fopen(ca->crlnum_path, "w");
        if (nf) {
            fprintf(nf, "%ld\n", number + 1);
            fclose(nf);
        }
        printf("CRL #%ld with %d revoked certificate%s in %s (next update in %d days; brokers "
               "read it when they start or reload)\n",
               number, revoked, revoked == 1 ? "" : "s", ca->crl_path, days);
        rc = 0;
    }
    X509_CRL_free(crl);
    return rc;
}

static int s_list(mh_ca_t *ca)
{
    FILE *f = fopen(ca->index_path, "r");
    if (!f) {
        fprintf(stderr, "motectl ca: no CA in %s\n", ca->dir);
        return 1;
    }
    char line[512];
    time_t now = time(NULL);
    printf("%-8s %-34s %-20s %s\n", "STATUS", "SERIAL", "EXPIRES", "CN");
    while (fgets(line, sizeof line, f)) {
        mh_ca_entry_t e;
        if (!mh_ca_parse_entry(line, &e))
            continue;
        char when[32];
        time_t na = (time_t)e.not_after;
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&na));
        printf("%-8s %-34s %-20s %s\n",
               e.status == 'R' ? "revoked" : (na < now ? "expired" : "valid"), e.serial, when,
               e.cn);
    }
    fclose(f);
    return 0;
}

int mc_ca_main(int argc, char **argv)
{
    /* --ca-dir DIR anywhere after "ca" */
    const char *dir = getenv("MOTEHUB_CA_DIR");
    char home_dir[4096];
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--ca-dir") == 0 && i + 1 < argc) {
            dir = argv[i + 1];
            memmove(argv + i, argv + i + 2, (size_t)(argc - i - 2) * sizeof *argv);
            argc -= 2;
            i--;
        }
    if (!dir || !*dir) {
        const char *home = getenv("HOME");
        snprintf(home_dir, sizeof home_dir, "%s/.motehub/ca", home ? home : ".");
        dir = home_dir;
    }
    if (argc < 1 || strcmp(argv[0], "--help") == 0) {
        fputs(s_usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    mh_ca_t ca = {0};
    mh_ca_paths(&ca, dir);
    const char *cmd = argv[0];
    int rc;
    if (strcmp(cmd, "init") == 0) {
        const char *cn = "Motehub fleet CA";
        int days = 3650;
        for (int i = 1; i + 1 < argc; i += 2) {
            if (strcmp(argv[i], "--cn") == 0)
                cn = argv[i + 1];
            else if (strcmp(argv[i], "--days") == 0)
                days = atoi(argv[i + 1]);
        }
        rc = days > 0 ? s_init(&ca, cn, days) : 2;
    } else if (strcmp(cmd, "issue") == 0)
        rc = s_issue(&ca, argc, argv);
    else if (strcmp(cmd, "sign") == 0)
        rc = s_sign(&ca, argc, argv);
    else if (strcmp(cmd, "revoke") == 0 && argc == 2)
        rc = s_revoke(&ca, argv[1]);
    else if (strcmp(cmd, "crl") == 0) {
        int days = argc == 3 && strcmp(argv[1], "--days") == 0 ? atoi(argv[2]) : 30;
        rc = days > 0 && (argc == 1 || argc == 3) ? s_crl(&ca, days) : 2;
    } else if (strcmp(cmd, "list") == 0)
        rc = s_list(&ca);
    else
        rc = 2;
    if (rc == 2)
        fputs(s_usage, stderr);
    mh_ca_unload(&ca);
    return rc;
}
