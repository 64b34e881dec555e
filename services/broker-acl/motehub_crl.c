#include "motehub_crl.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static struct {
    struct timespec mtime;
    off_t size;
    time_t next_update;
} s_crl;

static time_t s_read(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    X509_CRL *crl = PEM_read_X509_CRL(f, NULL, NULL, NULL);
    fclose(f);
    if (!crl)
        return 0;
    const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
    struct tm tm;
    time_t t = 0;
    memset(&tm, 0, sizeof tm);
    if (next && ASN1_TIME_to_tm(next, &tm) == 1)
        t = timegm(&tm);
    X509_CRL_free(crl);
    return t;
}

time_t crl_next_update(const char *path)
{
    struct stat st;
    if (!path || !*path || stat(path, &st) != 0)
        return s_crl.next_update = 0;
    if (st.st_mtim.tv_sec != s_crl.mtime.tv_sec || st.st_mtim.tv_nsec != s_crl.mtime.tv_nsec ||
        st.st_size != s_crl.size) {
        s_crl.mtime = st.st_mtim;
        s_crl.size = st.st_size;
        s_crl.next_update = s_read(path);
    }
    return s_crl.next_update;
}
