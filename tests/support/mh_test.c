#include "mh_test.h"
#include "mh_http_client.h"
#include "mh_metrics.h"

#include <sys/prctl.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int64_t mht_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void mht_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int mht_free_port(void)
{
    /* Ports handed out in this process are remembered, so two calls never
     * return the same one before either is bound. */
    static int used[256], nused;
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof sa;
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
            getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
            close(fd);
            continue;
        }
        close(fd);
        int port = ntohs(sa.sin_port), dup = 0;
        for (int i = 0; i < nused; i++)
            dup |= used[i] == port;
        if (dup)
            continue;
        if (nused < 256)
            used[nused++] = port;
        return port;
    }
    fail_msg("no free port");
    return -1;
}

static char s_artifacts[512];

const char *mht_artifacts(void)
{
    if (!*s_artifacts) {
        const char *base = getenv("MH_TEST_ARTIFACTS");
        char exe[256] = "test";
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) {
            exe[n] = 0;
            char *slash = strrchr(exe, '/');
            memmove(exe, slash ? slash + 1 : exe, strlen(slash ? slash + 1 : exe) + 1);
        }
        snprintf(s_artifacts, sizeof s_artifacts, "%s/%s", base ? base : "/tmp/motehub-tests", exe);
        char cmd[600];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", s_artifacts);
        if (system(cmd) != 0)
            fail_msg("cannot create %s", s_artifacts);
        chmod(s_artifacts, 0777);
    }
    return s_artifacts;
}

const char *mht_build_path(const char *rel, char *buf, size_t len)
{
    const char *root = getenv("MH_BUILD_ROOT");
    snprintf(buf, len, "%s/%s", root ? root : ".", rel);
    return buf;
}

/* Every child is remembered, so a test that fails half-way (cmocka jumps
 * out of it) still leaves no process behind when the program exits. */
static pid_t s_children[256];
static int s_nchildren;

static void s_kill_children(void)
{
    for (int i = 0; i < s_nchildren; i++)
        if (mht_alive(s_children[i])) {
            kill(s_children[i], SIGKILL);
            waitpid(s_children[i], NULL, 0);
        }
}

pid_t mht_spawn(const char *name, char *const argv[])
{
    if (s_nchildren == 0)
        atexit(s_kill_children);
    char log[700];
    snprintf(log, sizeof log, "%s/%s.log", mht_artifacts(), name);
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* A test (or fuzzer) that dies without its atexit handlers — an
         * abort, a sanitizer report — takes its daemons with it, instead of
         * leaving them to load the machine for the rest of the run. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        setpgid(0, 0);
        execvp(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (s_nchildren < 256)
        s_children[s_nchildren++] = pid;
    return pid;
}

bool mht_alive(pid_t pid)
{
    int status;
    return pid > 0 && waitpid(pid, &status, WNOHANG) == 0;
}

int mht_stop(pid_t pid, int sig, int timeout_ms)
{
    if (pid <= 0)
        return -1;
    kill(pid, sig);
    int64_t deadline = mht_now_ms() + timeout_ms;
    int status;
    while (mht_now_ms() < deadline) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0)
            return -1;
        mht_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

static bool s_port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

/* Runs mosquitto with `conf` (its log: artifacts/<name>.log) and waits
 * until it listens on b->port. */
static void s_broker_run(mht_broker_t *b, char *conf, const char *name)
{
    char *argv[] = {"mosquitto", "-c", conf, NULL};
    b->pid = mht_spawn(name, argv);
    int64_t deadline = mht_now_ms() + 10000;
    while (!s_port_open(b->port)) {
        if (mht_now_ms() > deadline || !mht_alive(b->pid))
            fail_msg("mosquitto did not start on port %d (see %s)", b->port, mht_artifacts());
        mht_sleep_ms(10);
    }
}

void mht_broker_start(mht_broker_t *b)
{
    b->port = mht_free_port();
    snprintf(b->url, sizeof b->url, "tcp://127.0.0.1:%d", b->port);
    char conf[700];
    snprintf(conf, sizeof conf, "%s/mosquitto-%d.conf", mht_artifacts(), b->port);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    /* the broker plugin as deployed (presence listed every second) */
    char plugin[512];
    fprintf(f, "plugin %s\nplugin_opt_anonymous allow\nplugin_opt_presence_interval 1\n",
            mht_build_path("services/broker-acl/motehub_acl.so", plugin, sizeof plugin));
    fprintf(f,
            "listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n",
            b->port);
    if (getuid() == 0)
        fprintf(f, "user root\n");
    fclose(f);
    s_broker_run(b, conf, "mosquitto");
}

void mht_broker_start_tls(mht_broker_t *b, const char *certs)
{
    b->port = mht_free_port();
    snprintf(b->url, sizeof b->url, "ssl://127.0.0.1:%d", b->port);
    snprintf(b->certs, sizeof b->certs, "%s", certs);
    char conf[700], plugin[512];
    snprintf(conf, sizeof conf, "%s/mosquitto-tls-%d.conf", mht_artifacts(), b->port);
    mht_build_path("services/broker-acl/motehub_acl.so", plugin, sizeof plugin);
    if (mht_shell("'%s/deploy/mosquitto/mosquitto-conf.sh' --certs '%s' --plugin '%s' "
                  "--tls-port %d --tls-bind 127.0.0.1 --log-notice %s %s%s%s > '%s'",
                  getenv("MH_SOURCE_ROOT") ? getenv("MH_SOURCE_ROOT") : ".", certs, plugin, b->port,
                  getuid() == 0 ? "--root" : "", b->pg[0] ? "--pg '" : "", b->pg,
                  b->pg[0] ? "'" : "", conf) != 0)
        fail_msg("deploy/mosquitto/mosquitto-conf.sh failed");
    char name[64];
    snprintf(name, sizeof name, "mosquitto-tls-%d", b->port);
    s_broker_run(b, conf, name);
}

void mht_broker_reload(mht_broker_t *b)
{
    kill(b->pid, SIGHUP);
    mht_sleep_ms(300);
}

int mht_motectl(const char *fmt, ...)
{
    char args[4096], bin[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    mht_build_path("tools/motectl/motectl", bin, sizeof bin);
    int st = mht_shell("'%s' >&2 %s", bin, args); /* stdout is the TAP stream */
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void mht_kafka_start(mht_kafka_t *k)
{
    int to[2], from[2];
    assert_int_equal(pipe(to), 0);
    assert_int_equal(pipe(from), 0);
    char bin[512];
    mht_build_path("tools/kafka-mock/kafka-mock", bin, sizeof bin);
    k->pid = fork();
    assert_true(k->pid >= 0);
    if (k->pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        char log[700];
        snprintf(log, sizeof log, "%s/kafka-mock.log", mht_artifacts());
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0)
            dup2(fd, 2);
        close(to[1]);
        close(from[0]);
        execl(bin, "kafka-mock", "1", (char *)NULL);
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    k->in = to[1];
    k->out = from[0];
    size_t n = 0;
    while (n < sizeof k->bootstrap - 1 && read(k->out, k->bootstrap + n, 1) == 1 &&
           k->bootstrap[n] != '\n')
        n++;
    k->bootstrap[n] = 0;
    if (n == 0)
        fail_msg("kafka-mock did not start (see %s/kafka-mock.log)", mht_artifacts());
}

void mht_kafka_cmd(mht_kafka_t *k, const char *cmd)
{
    char line[300], reply[300];
    snprintf(line, sizeof line, "%s\n", cmd);
    assert_true(write(k->in, line, strlen(line)) == (ssize_t)strlen(line));
    size_t n = 0;
    while (n < sizeof reply - 1 && read(k->out, reply + n, 1) == 1 && reply[n] != '\n')
        n++;
    reply[n] = 0;
    if (strcmp(reply, "ok") != 0)
        fail_msg("kafka-mock %s: %s", cmd, reply);
}

void mht_kafka_stop(mht_kafka_t *k)
{
    close(k->in);
    close(k->out);
    mht_stop(k->pid, SIGTERM, 5000);
    k->pid = 0;
}

void mht_broker_restart(mht_broker_t *b)
{
    mht_stop(b->pid, SIGTERM, 5000);
    char conf[700];
    snprintf(conf, sizeof conf, "%s/mosquitto-%d.conf", mht_artifacts(), b->port);
    s_broker_run(b, conf, "mosquitto-restarted");
}

void mht_broker_stop(mht_broker_t *b)
{
    mht_stop(b->pid, SIGTERM, 5000);
    b->pid = 0;
}

/* ---- PostgreSQL ---- */

static char s_pg_base[256];
static char s_pg_dir[600];
static int s_pg_port;
static bool s_pg_own;

static void s_pg_cluster_stop(void)
{
    char cmd[900];
    snprintf(cmd, sizeof cmd, "'%s/tests/lib/pg-cluster.sh' stop '%s'",
             getenv("MH_SOURCE_ROOT") ? getenv("MH_SOURCE_ROOT") : ".", s_pg_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "stopping the test cluster failed\n");
}

/* The suite's cluster comes from tests/run.sh (MH_TEST_PG); a test run on
 * its own starts a private one and stops it at exit. */
static const char *s_pg_cluster(void)
{
    if (*s_pg_base)
        return s_pg_base;
    const char *env = getenv("MH_TEST_PG");
    if (env && *env && !s_pg_own) {
        snprintf(s_pg_base, sizeof s_pg_base, "%s", env);
        return s_pg_base;
    }
    int port = s_pg_port = mht_free_port();
    snprintf(s_pg_dir, sizeof s_pg_dir, "%s/pg-%d", mht_artifacts(), port);
    char cmd[900];
    snprintf(cmd, sizeof cmd, "'%s/tests/lib/pg-cluster.sh' start '%s' %d",
             getenv("MH_SOURCE_ROOT") ? getenv("MH_SOURCE_ROOT") : ".", s_pg_dir, port);
    if (system(cmd) != 0)
        fail_msg("cannot start PostgreSQL: %s", cmd);
    atexit(s_pg_cluster_stop);
    snprintf(s_pg_base, sizeof s_pg_base, "host=127.0.0.1 port=%d user=postgres", port);
    return s_pg_base;
}

void mht_pg_private(void)
{
    s_pg_own = true;
}

void mht_pg_restart(void)
{
    if (!s_pg_own || !*s_pg_dir)
        fail_msg("mht_pg_restart needs mht_pg_private before the first database");
    const char *src = getenv("MH_SOURCE_ROOT") ? getenv("MH_SOURCE_ROOT") : ".";
    if (mht_shell(
            "'%s/tests/lib/pg-cluster.sh' stop '%s' && '%s/tests/lib/pg-cluster.sh' start '%s' %d",
            src, s_pg_dir, src, s_pg_dir, s_pg_port) != 0)
        fail_msg("restarting PostgreSQL failed");
}

void mht_db_create(mht_db_t *db)
{
    static int seq;
    const char *base = s_pg_cluster();
    snprintf(db->name, sizeof db->name, "t_%d_%d_%ld", (int)getpid(), ++seq, (long)time(NULL));
    char url[512];
    snprintf(url, sizeof url, "%s dbname=postgres", base);
    PGconn *admin = PQconnectdb(url);
    if (PQstatus(admin) != CONNECTION_OK)
        fail_msg("cannot connect to the test cluster: %s", PQerrorMessage(admin));
    char sql[128];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", db->name); /* name made above, not input */
    PGresult *r = PQexec(admin, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        fail_msg("CREATE DATABASE: %s", PQerrorMessage(admin));
    PQclear(r);
    PQfinish(admin);
    snprintf(db->url, sizeof db->url, "%s dbname=%s", base, db->name);
    db->conn = PQconnectdb(db->url);
    if (PQstatus(db->conn) != CONNECTION_OK)
        fail_msg("cannot connect to %s: %s", db->name, PQerrorMessage(db->conn));
    PQclear(PQexec(db->conn, "SET TIME ZONE 'UTC'"));
}

void mht_db_drop(mht_db_t *db)
{
    if (db->conn)
        PQfinish(db->conn);
    db->conn = NULL;
    char url[512], sql[128];
    snprintf(url, sizeof url, "%s dbname=postgres", s_pg_cluster());
    PGconn *admin = PQconnectdb(url);
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", db->name);
    PQclear(PQexec(admin, sql));
    PQfinish(admin);
}

/* Runs `sql`; when PostgreSQL was restarted under the test (the connection
 * is gone), connects again (for up to 10 s) and runs it once more. */
static PGresult *s_exec(mht_db_t *db, const char *sql)
{
    PGresult *r = PQexec(db->conn, sql);
    if (PQstatus(db->conn) != CONNECTION_BAD)
        return r;
    PQclear(r);
    for (int i = 0; i < 100 && (PQreset(db->conn), PQstatus(db->conn) != CONNECTION_OK); i++)
        mht_sleep_ms(100);
    return PQexec(db->conn, sql);
}

double mht_db_num(mht_db_t *db, const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    PGresult *r = s_exec(db, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
        PQclear(r);
        fail_msg("query failed: %s: %s", sql, msg);
    }
    double v = PQgetisnull(r, 0, 0) ? NAN : strtod(PQgetvalue(r, 0, 0), NULL);
    PQclear(r);
    return v;
}

double mht_db_wait_num(mht_db_t *db, const char *sql, double want, int timeout_ms)
{
    int64_t deadline = mht_now_ms() + timeout_ms;
    double v;
    for (;;) {
        PGresult *r = s_exec(db, sql);
        v = NAN;
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
            v = strtod(PQgetvalue(r, 0, 0), NULL);
        PQclear(r);
        if (v == want || mht_now_ms() > deadline)
            return v;
        mht_sleep_ms(50);
    }
}

/* ---- HTTP ---- */

int mht_http_get(int port, const char *path, char **body)
{
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    mh_http_resp_t resp;
    mh_http_request(&(mh_http_req_t){.url = url, .timeout_ms = 5000}, &resp);
    if (body)
        *body = resp.body;
    else
        free(resp.body);
    return (int)resp.status;
}

double mht_metric(int http_port, const char *name, const char *labels)
{
    char *body = NULL;
    double v = NAN;
    if (mht_http_get(http_port, "/metrics", &body) == 200 &&
        mh_metrics_text_value(body, name, labels, &v) < 0)
        v = NAN;
    free(body);
    return v;
}

bool mht_wait_ready(int http_port, int timeout_ms)
{
    int64_t deadline = mht_now_ms() + timeout_ms;
    while (mht_now_ms() < deadline) {
        if (mht_http_get(http_port, "/readyz", NULL) == 200)
            return true;
        mht_sleep_ms(50);
    }
    return false;
}

double mht_wait_metric(int http_port, const char *name, const char *labels, double at_least,
                       int timeout_ms)
{
    int64_t deadline = mht_now_ms() + timeout_ms;
    double v = mht_metric(http_port, name, labels);
    while (!(v >= at_least) && mht_now_ms() < deadline) {
        mht_sleep_ms(50);
        v = mht_metric(http_port, name, labels);
    }
    return v;
}

/* ---- motesim ---- */

pid_t mht_motesim_start(const char *name, const char *mqtt_url, const char *twin_rpc,
                        const char *prefix, int devices, const char *const *args)
{
    char bin[600], a_url[300], a_pre[128], a_n[32], a_reg[300];
    snprintf(a_url, sizeof a_url, "--mqtt-url=%s", mqtt_url);
    snprintf(a_pre, sizeof a_pre, "--prefix=%s", prefix);
    snprintf(a_n, sizeof a_n, "--devices=%d", devices);
    snprintf(a_reg, sizeof a_reg, "--register=%s", twin_rpc);
    char *argv[24] = {(char *)mht_build_path("tools/motesim/motesim", bin, sizeof bin), a_url,
                      a_pre, a_n, a_reg};
    int argc = 5;
    for (const char *const *a = args; a && *a && argc < 21; a++)
        argv[argc++] = (char *)*a;
    argv[argc] = NULL;
    return mht_spawn(name, argv);
}

void mht_fleet_wait_online(mht_db_t *db, const char *prefix, int n, const char *firmware)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM twin.devices WHERE id LIKE '%s-%%' AND firmware = '%s'"
             " AND online",
             prefix, firmware);
    double got = mht_db_wait_num(db, sql, n, 30000);
    if (got != n)
        fail_msg("only %.0f of %d %s devices came online on %s", got, n, prefix, firmware);
}

/* ---- services ---- */

static void s_args_extra(char **argv, int *argc, const char *const *extra)
{
    for (; extra && *extra; extra++)
        argv[(*argc)++] = (char *)*extra;
    argv[*argc] = NULL;
}

void mht_ingest_start(mht_service_t *s, const char *name, const mht_db_t *db, int port,
                      const char *const *extra)
{
    static char bin[512];
    char a_http[64], a_bind[64], a_ev[64], a_pg[600], a_rpc[96];
    if (!s->http_port)
        s->http_port = mht_free_port();
    if (!s->rpc_port)
        s->rpc_port = mht_free_port();
    snprintf(s->rpc_endpoint, sizeof s->rpc_endpoint, "tcp://127.0.0.1:%d", s->rpc_port);
    snprintf(a_rpc, sizeof a_rpc, "--rpc-bind=%s", s->rpc_endpoint);
    s->port = port ? port : mht_free_port();
    if (!s->events_port)
        s->events_port = mht_free_port();
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(s->endpoint, sizeof s->endpoint, "tcp://127.0.0.1:%d", s->port);
    snprintf(a_http, sizeof a_http, "--http-listen=127.0.0.1:%d", s->http_port);
    snprintf(a_bind, sizeof a_bind, "--bind=tcp://127.0.0.1:%d", s->port);
    snprintf(a_ev, sizeof a_ev, "--events-bind=tcp://127.0.0.1:%d", s->events_port);
    snprintf(a_pg, sizeof a_pg, "--pg-url=%s", db->url);
    char *argv[32] = {(char *)mht_build_path("services/ingest/motehub-ingest", bin, sizeof bin),
                      a_http,
                      a_bind,
                      a_ev,
                      a_pg,
                      "--rollup-interval=200ms",
                      "--rollup-grace=0s",
                      a_rpc};
    int argc = 8;
    s_args_extra(argv, &argc, extra);
    s->pid = mht_spawn(name, argv);
    if (!mht_wait_ready(s->http_port, 20000))
        fail_msg("%s did not become ready (see %s/%s.log)", name, mht_artifacts(), name);
}

void mht_gateway_start(mht_service_t *s, const char *name, const mht_broker_t *b,
                       const char *ingest_endpoint, const char *const *extra)
{
    static char bin[512];
    char a_http[64], a_mqtt[96], a_ing[128], a_ev[64];
    s->http_port = mht_free_port();
    s->events_port = mht_free_port();
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(a_http, sizeof a_http, "--http-listen=127.0.0.1:%d", s->http_port);
    snprintf(a_mqtt, sizeof a_mqtt, "--mqtt-url=%s", b->url);
    snprintf(a_ing, sizeof a_ing, "--ingest-endpoint=%s", ingest_endpoint);
    snprintf(a_ev, sizeof a_ev, "--events-bind=tcp://127.0.0.1:%d", s->events_port);
    /* Telemetry tests run without twin; twin tests override these. */
    char *argv[40] = {(char *)mht_build_path("services/gateway/motehub-gateway", bin, sizeof bin),
                      a_http,
                      a_mqtt,
                      a_ing,
                      a_ev,
                      "--check-registered=false",
                      "--twin-endpoint=",
                      "--downlink-bind=",
                      "--ota-endpoint="};
    int argc = 9;
    char a_ca[600], a_cert[600], a_key[600];
    if (b->certs[0]) {
        snprintf(a_ca, sizeof a_ca, "--mqtt-ca=%s/ca.crt", b->certs);
        snprintf(a_cert, sizeof a_cert, "--mqtt-cert=%s/gateway.crt", b->certs);
        snprintf(a_key, sizeof a_key, "--mqtt-key=%s/gateway.key", b->certs);
        argv[argc++] = a_ca;
        argv[argc++] = a_cert;
        argv[argc++] = a_key;
    }
    s_args_extra(argv, &argc, extra);
    s->pid = mht_spawn(name, argv);
    if (!mht_wait_ready(s->http_port, 20000))
        fail_msg("%s did not become ready (see %s/%s.log)", name, mht_artifacts(), name);
}

int mht_mosquitto_pub(const mht_broker_t *b, const char *version, const char *topic,
                      const char *payload, int qos)
{
    char port[16], q[4];
    snprintf(port, sizeof port, "%d", b->port);
    snprintf(q, sizeof q, "%d", qos);
    /* The kernel limits one argument to 128 KiB: larger payloads go by file. */
    char file[700];
    const char *how = "-m", *what = payload;
    if (strlen(payload) > 64 * 1024) {
        snprintf(file, sizeof file, "%s/payload-%d.bin", mht_artifacts(), (int)getpid());
        FILE *f = fopen(file, "wb");
        if (!f)
            return -1;
        fwrite(payload, 1, strlen(payload), f);
        fclose(f);
        how = "-f";
        what = file;
    }
    char *argv[] = {"mosquitto_pub", "-h", "127.0.0.1", "-p", port,          "-V",
                    (char *)version, "-q", q,           "-t", (char *)topic, (char *)how,
                    (char *)what,    "-i", "mht-pub",   NULL};
    pid_t pid = mht_spawn("mosquitto_pub", argv);
    int status;
    int64_t deadline = mht_now_ms() + 10000;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (mht_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        mht_sleep_ms(5);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Twin and ota take the same settings: HTTP, a PULL, an RPC ROUTER, an
 * event PUB, the database and the gateways' downlink; `own` are the
 * service's further flags. Ports left 0 in *s are picked free. */
static void s_rpc_service_start(mht_service_t *s, const char *name, const char *rel_bin,
                                const mht_db_t *db, const char *downlink_endpoint,
                                const char *const *own, const char *const *extra)
{
    static char bin[512];
    char a_http[64], a_bind[96], a_rpc[96], a_ev[96], a_pg[600], a_dl[160];
    if (!s->http_port)
        s->http_port = mht_free_port();
    if (!s->port)
        s->port = mht_free_port();
    if (!s->rpc_port)
        s->rpc_port = mht_free_port();
    if (!s->events_port)
        s->events_port = mht_free_port();
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(s->endpoint, sizeof s->endpoint, "tcp://127.0.0.1:%d", s->port);
    snprintf(s->rpc_endpoint, sizeof s->rpc_endpoint, "tcp://127.0.0.1:%d", s->rpc_port);
    snprintf(s->events_endpoint, sizeof s->events_endpoint, "tcp://127.0.0.1:%d", s->events_port);
    snprintf(a_http, sizeof a_http, "--http-listen=127.0.0.1:%d", s->http_port);
    snprintf(a_bind, sizeof a_bind, "--bind=%s", s->endpoint);
    snprintf(a_rpc, sizeof a_rpc, "--rpc-bind=%s", s->rpc_endpoint);
    snprintf(a_ev, sizeof a_ev, "--events-bind=%s", s->events_endpoint);
    snprintf(a_pg, sizeof a_pg, "--pg-url=%s", db->url);
    snprintf(a_dl, sizeof a_dl, "--downlink-endpoint=%s", downlink_endpoint);
    char *argv[40] = {
        (char *)mht_build_path(rel_bin, bin, sizeof bin), a_http, a_bind, a_rpc, a_ev, a_pg, a_dl};
    int argc = 7;
    s_args_extra(argv, &argc, own);
    s_args_extra(argv, &argc, extra);
    s->pid = mht_spawn(name, argv);
    if (!mht_wait_ready(s->http_port, 20000))
        fail_msg("%s did not become ready (see %s/%s.log)", name, mht_artifacts(), name);
}

void mht_twin_start(mht_service_t *s, const char *name, const mht_db_t *db,
                    const char *downlink_endpoint, const char *const *extra)
{
    const char *own[] = {"--sweep-interval=100ms", NULL};
    s_rpc_service_start(s, name, "services/twin/motehub-twin", db, downlink_endpoint, own, extra);
}

void mht_ota_start(mht_service_t *s, const char *name, const mht_db_t *db,
                   const char *downlink_endpoint, const mht_service_t *twin,
                   const char *signing_key, const char *const *extra)
{
    char a_url[96], a_trpc[128], a_tev[128], a_key[600];
    if (!s->http_port)
        s->http_port = mht_free_port();
    snprintf(a_url, sizeof a_url, "--public-url=http://127.0.0.1:%d", s->http_port);
    snprintf(a_trpc, sizeof a_trpc, "--twin-rpc-endpoint=%s", twin->rpc_endpoint);
    snprintf(a_tev, sizeof a_tev, "--twin-events-endpoint=%s", twin->events_endpoint);
    snprintf(a_key, sizeof a_key, "--signing-key=%s", signing_key);
    const char *own[] = {a_url, a_trpc, a_tev, a_key, "--tick=100ms", NULL};
    s_rpc_service_start(s, name, "services/ota/motehub-ota", db, downlink_endpoint, own, extra);
}

int mht_shell(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

void mht_fleet_start(mht_service_t *s, const char *name, const mht_db_t *db,
                     const mht_service_t *twin, const mht_service_t *ota,
                     const mht_service_t *ingest, const mht_service_t *gateway,
                     const char *const *extra, char token[128])
{
    static char bin[512];
    char a_pg[600], a_listen[64], a_http[64], a_twin[128], a_ota[128], a_ing[128], a_tev[128],
        a_oev[128], a_gev[128];
    mht_build_path("services/fleet-stats/motehub-fleet-stats", bin, sizeof bin);
    snprintf(a_pg, sizeof a_pg, "--pg-url=%s", db->url);
    if (token)
        mht_api_token(db, "ci", token);
    if (!s->port)
        s->port = mht_free_port();
    if (!s->http_port)
        s->http_port = mht_free_port();
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(a_listen, sizeof a_listen, "--api-listen=127.0.0.1:%d", s->port);
    snprintf(a_http, sizeof a_http, "--http-listen=127.0.0.1:%d", s->http_port);
    const char *none = "tcp://127.0.0.1:1";
    snprintf(a_twin, sizeof a_twin, "--twin-rpc-endpoint=%s", twin ? twin->rpc_endpoint : none);
    snprintf(a_ota, sizeof a_ota, "--ota-rpc-endpoint=%s", ota ? ota->rpc_endpoint : none);
    snprintf(a_ing, sizeof a_ing, "--ingest-rpc-endpoint=%s", ingest ? ingest->rpc_endpoint : none);
    snprintf(a_tev, sizeof a_tev, "--twin-events-endpoint=%s", twin ? twin->events_endpoint : none);
    snprintf(a_oev, sizeof a_oev, "--ota-events-endpoint=%s", ota ? ota->events_endpoint : none);
    if (gateway)
        snprintf(a_gev, sizeof a_gev, "--gateway-events-endpoint=tcp://127.0.0.1:%d",
                 gateway->events_port);
    else
        snprintf(a_gev, sizeof a_gev, "--gateway-events-endpoint=%s", none);
    char *argv[40] = {bin,   a_pg,  a_listen,           a_http, a_twin, a_ota, a_ing, a_tev,
                      a_oev, a_gev, "--live-resync=30s"};
    int argc = 11;
    s_args_extra(argv, &argc, extra);
    s->pid = mht_spawn(name, argv);
    if (!mht_wait_ready(s->http_port, 30000))
        fail_msg("%s did not become ready (see %s/%s.log)", name, mht_artifacts(), name);
}

void mht_gateway_for_twin(mht_service_t *s, const char *name, const mht_broker_t *b,
                          const mht_service_t *ingest, const mht_service_t *twin,
                          const char *downlink, int ota_port)
{
    char a_twin[100], a_rpc[100], a_ev[100], a_dl[100], a_ota[100];
    snprintf(a_twin, sizeof a_twin, "--twin-endpoint=%s", twin->endpoint);
    snprintf(a_rpc, sizeof a_rpc, "--twin-rpc-endpoint=%s", twin->rpc_endpoint);
    snprintf(a_ev, sizeof a_ev, "--twin-events-endpoint=%s", twin->events_endpoint);
    snprintf(a_dl, sizeof a_dl, "--downlink-bind=%s", downlink);
    if (ota_port)
        snprintf(a_ota, sizeof a_ota, "--ota-endpoint=tcp://127.0.0.1:%d", ota_port);
    else
        snprintf(a_ota, sizeof a_ota, "--ota-endpoint=");
    const char *extra[] = {"--check-registered=true", a_twin, a_rpc, a_ev, a_dl, a_ota, NULL};
    mht_gateway_start(s, name, b, ingest->endpoint, extra);
}

void mht_signing_key(char *key, size_t keylen, char *pub, size_t publen)
{
    snprintf(key, keylen, "%s/fleet-signing.pem", mht_artifacts());
    snprintf(pub, publen, "%s/fleet-signing.pub.pem", mht_artifacts());
    if (mht_shell("openssl genpkey -algorithm ed25519 -out '%s' 2>/dev/null && "
                  "openssl pkey -in '%s' -pubout -out '%s' 2>/dev/null",
                  key, key, pub) != 0)
        fail_msg("cannot make a signing key with openssl");
}

void mht_api_token(const mht_db_t *db, const char *name, char token[128])
{
    char bin[512], cmd[2048], out[200] = "";
    mht_build_path("services/fleet-stats/motehub-fleet-stats", bin, sizeof bin);
    snprintf(cmd, sizeof cmd, "'%s' create-token '%s' '--pg-url=%s'", bin, name, db->url);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(out, sizeof out, p));
    assert_int_equal(pclose(p), 0);
    sscanf(out, "%127s", token);
    assert_true(strncmp(token, "mht_", 4) == 0);
}

void mht_backends_start(mht_backends_t *b)
{
    mht_db_create(&b->db);
    mht_twin_start(&b->twin, "twin", &b->db, "tcp://127.0.0.1:1", NULL);
    char key[600], pub[600];
    mht_signing_key(key, sizeof key, pub, sizeof pub);
    mht_ota_start(&b->ota, "ota", &b->db, "tcp://127.0.0.1:1", &b->twin, key, NULL);
    mht_ingest_start(&b->ingest, "ingest", &b->db, 0, NULL);
}

bool mht_backends_stop(mht_backends_t *b)
{
    mht_stop(b->ingest.pid, SIGTERM, 20000);
    int so = mht_stop(b->ota.pid, SIGTERM, 20000);
    int st = mht_stop(b->twin.pid, SIGTERM, 20000);
    mht_db_drop(&b->db);
    if (WIFEXITED(st) && !WEXITSTATUS(st) && WIFEXITED(so) && !WEXITSTATUS(so))
        return true;
    fprintf(stderr, "a daemon did not exit cleanly (twin %d, ota %d)\n", st, so);
    return false;
}

void mht_platform_start(mht_platform_t *p)
{
    mht_db_create(&p->db);
    if (p->broker.certs[0]) {
        char certs[sizeof p->broker.certs];
        snprintf(certs, sizeof certs, "%s", p->broker.certs);
        snprintf(p->broker.pg, sizeof p->broker.pg, "%s", p->db.url);
        mht_broker_start_tls(&p->broker, certs);
    } else
        mht_broker_start(&p->broker);
    mht_ingest_start(&p->ingest, "ingest", &p->db, 0, NULL);
    snprintf(p->downlink, sizeof p->downlink, "tcp://127.0.0.1:%d", mht_free_port());
    char ca_arg[720];
    snprintf(ca_arg, sizeof ca_arg, "--ca-dir=%s", p->ca_dir);
    const char *twin_extra[] = {ca_arg, NULL};
    mht_twin_start(&p->twin, "twin", &p->db, p->downlink, p->ca_dir[0] ? twin_extra : NULL);
    char key[700], pub[700];
    mht_signing_key(key, sizeof key, pub, sizeof pub);
    mht_ota_start(&p->ota, "ota", &p->db, p->downlink, &p->twin, key, NULL);
    mht_gateway_for_twin(&p->gateway, "gateway", &p->broker, &p->ingest, &p->twin, p->downlink,
                         p->ota.port);
    mht_fleet_start(&p->fleet, "fleet-stats", &p->db, &p->twin, &p->ota, &p->ingest, &p->gateway,
                    NULL, p->token);
}

bool mht_platform_stop(mht_platform_t *p)
{
    bool clean = true;
    mht_service_t *all[] = {&p->fleet, &p->gateway, &p->ota, &p->twin, &p->ingest};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        int st = mht_stop(all[i]->pid, SIGTERM, 20000);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "%s did not exit cleanly (%d)\n", all[i]->name, st);
            clean = false;
        }
    }
    mht_broker_stop(&p->broker);
    mht_db_drop(&p->db);
    return clean;
}

mht_platform_t mht_platform;

int mht_platform_setup(void **state)
{
    (void)state;
    mht_platform_start(&mht_platform);
    return 0;
}

int mht_platform_teardown(void **state)
{
    (void)state;
    return mht_platform_stop(&mht_platform) ? 0 : -1;
}

void mht_register_devices(const char *twin_rpc, const char *prefix, int n)
{
    char bin[600];
    assert_int_equal(mht_shell("%s --register=%s --register-only=true --prefix=%s --devices=%d"
                               " >> %s/register.log 2>&1",
                               mht_build_path("tools/motesim/motesim", bin, sizeof bin), twin_rpc,
                               prefix, n, mht_artifacts()),
                     0);
}
