#include "mh_curve.h"

#include "mh_log.h"

#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static struct {
    bool on;
    zcert_t *server; /* public, plus secret when this process serves */
    zcert_t *client;
    zactor_t *auth;
} s_curve;

int mh_curve_init(const char *dir, const char *client_name)
{
    if (!dir || !*dir)
        return 0;
    if (!zsys_has_curve()) {
        mh_error("CURVE requested but this libzmq has no CURVE support");
        return -1;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/server.key", dir);
    s_curve.server = zcert_load(path);
    snprintf(path, sizeof path, "%s/%s.key_secret", dir, client_name);
    s_curve.client = zcert_load(path);
    if (!s_curve.server || !s_curve.client) {
        mh_error("CURVE keys missing in %s (server.key and %s.key_secret; make them with "
                 "motectl curve keygen --out %s)",
                 dir, client_name, dir);
        mh_curve_shutdown();
        return -1;
    }
    /* zcert_load reads server.key_secret when it exists: a zero secret key
     * means this process only connects. */
    static const byte zero[32] = {0};
    if (memcmp(zcert_secret_key(s_curve.server), zero, 32) != 0) {
        snprintf(path, sizeof path, "%s/clients", dir);
        s_curve.auth = zactor_new(zauth, NULL);
        if (!s_curve.auth || zstr_sendx(s_curve.auth, "CURVE", path, NULL) != 0 ||
            zsock_wait(s_curve.auth) != 0) {
            mh_error("cannot start the CURVE authenticator");
            mh_curve_shutdown();
            return -1;
        }
    }
    s_curve.on = true;
    mh_info("CURVE on (keys in %s, client key %s%s)", dir, client_name,
            s_curve.auth ? ", serving with the allow-list in clients/" : "");
    return 0;
}

static int s_server(zsock_t *sock)
{
    if (!s_curve.on)
        return 0;
    if (!s_curve.auth) {
        mh_error("a socket must serve CURVE but server.key_secret is missing");
        return -1;
    }
    zcert_apply(s_curve.server, sock);
    zsock_set_curve_server(sock, 1);
    zsock_set_zap_domain(sock, "motehub");
    return 0;
}

int mh_curve_client(zsock_t *sock)
{
    if (!s_curve.on)
        return 0;
    zcert_apply(s_curve.client, sock);
    zsock_set_curve_serverkey(sock, zcert_public_txt(s_curve.server));
    return 0;
}

int mh_curve_bind(zsock_t *sock, const char *endpoint)
{
    if (s_server(sock) < 0)
        return -1;
    return zsock_bind(sock, "%s", endpoint);
}

void mh_curve_shutdown(void)
{
    zactor_destroy(&s_curve.auth);
    zcert_destroy(&s_curve.server);
    zcert_destroy(&s_curve.client);
    s_curve.on = false;
}

static int s_save(zcert_t *cert, const char *path, bool secret)
{
    int rc = secret ? zcert_save_secret(cert, path) : zcert_save_public(cert, path);
    if (rc == 0 && secret)
        chmod(path, 0600);
    return rc;
}

int mh_curve_keygen(const char *dir, const char *const *names, size_t n)
{
    char path[4200], pub[4200];
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return -1;
    snprintf(path, sizeof path, "%s/clients", dir);
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return -1;
    snprintf(path, sizeof path, "%s/server.key_secret", dir);
    if (access(path, F_OK) != 0) {
        zcert_t *c = zcert_new();
        zcert_set_meta(c, "name", "motehub services");
        snprintf(pub, sizeof pub, "%s/server.key", dir);
        int rc = c ? s_save(c, path, true) | s_save(c, pub, false) : -1;
        zcert_destroy(&c);
        if (rc != 0)
            return -1;
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s.key_secret", dir, names[i]);
        if (access(path, F_OK) == 0)
            continue;
        zcert_t *c = zcert_new();
        if (!c)
            return -1;
        zcert_set_meta(c, "name", "%s", names[i]);
        snprintf(pub, sizeof pub, "%s/clients/%s.key", dir, names[i]);
        int rc = s_save(c, path, true) | s_save(c, pub, false);
        zcert_destroy(&c);
        if (rc != 0)
            return -1;
    }
    return 0;
}
