/* kafka-mock — librdkafka's mock cluster as a process on loopback, for tests
 * and local mode (Debian has no Kafka broker).
 *
 *   kafka-mock [BROKERS]     (default 1)
 *   kafka-mock --listen PORT [--advertise HOST]
 *
 * Prints the bootstrap servers ("127.0.0.1:PORT,...") on its first line,
 * then reads commands, one per line, from stdin:
 *   down      every broker stops answering (an outage)
 *   up        they answer again
 *   topic NAME PARTITIONS   create a topic
 * and answers "ok" (or "error ...") to each. Ends on EOF or SIGTERM. The
 * data lives in memory only.
 *
 * With --listen (a container: docker-compose's kafka in the test stack), one
 * broker listens on every interface at PORT and advertises HOST's address
 * (default: this host's name), reads no commands and ends on SIGTERM
 * (km_listen.c says how). */
#include "km_listen.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

/* HOST's IPv4 address (this host's name when NULL); 0 on success. */
static int s_resolve(const char *host, struct in_addr *out)
{
    char name[256];
    if (!host) {
        if (gethostname(name, sizeof name) != 0)
            return -1;
        name[sizeof name - 1] = 0;
        host = name;
    }
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(host, NULL, &hints, &ai) != 0 || !ai)
        return -1;
    *out = ((struct sockaddr_in *)ai->ai_addr)->sin_addr;
    freeaddrinfo(ai);
    return 0;
}

int main(int argc, char **argv)
{
    int nbrokers = 1, listen_port = 0;
    const char *advertise = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
            listen_port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--advertise") == 0 && i + 1 < argc)
            advertise = argv[++i];
        else
            nbrokers = atoi(argv[i]);
    }
    if (nbrokers < 1 || nbrokers > 9 || listen_port < 0 || listen_port > 65535 ||
        (listen_port && nbrokers != 1)) {
        fprintf(stderr, "usage: kafka-mock [BROKERS 1-9] | --listen PORT [--advertise HOST]\n");
        return 2;
    }
    if (listen_port) {
        struct in_addr adv;
        if (s_resolve(advertise, &adv) != 0) {
            fprintf(stderr, "kafka-mock: cannot resolve %s\n", advertise ? advertise : "this host");
            return 1;
        }
        km_listen_set((uint16_t)listen_port, adv);
    }
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "kafka-mock: %s\n", err);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, nbrokers);
    if (!mc) {
        fprintf(stderr, "kafka-mock: cannot start the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);
    signal(SIGPIPE, SIG_IGN);
    if (listen_port) {
        signal(SIGTERM, s_on_signal);
        signal(SIGINT, s_on_signal);
        while (!s_stop)
            pause();
    }
    char line[256];
    while (!listen_port && fgets(line, sizeof line, stdin)) {
        char name[200];
        int parts;
        rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
        if (strncmp(line, "down", 4) == 0) {
            for (int b = 1; b <= nbrokers && !e; b++)
                e = rd_kafka_mock_broker_set_down(mc, b);
        } else if (strncmp(line, "up", 2) == 0) {
            for (int b = 1; b <= nbrokers && !e; b++)
                e = rd_kafka_mock_broker_set_up(mc, b);
        } else if (sscanf(line, "topic %199s %d", name, &parts) == 2) {
            e = rd_kafka_mock_topic_create(mc, name, parts, nbrokers < 3 ? nbrokers : 3);
        } else {
            printf("error unknown command\n");
            fflush(stdout);
            continue;
        }
        if (e)
            printf("error %s\n", rd_kafka_err2str(e));
        else
            printf("ok\n");
        fflush(stdout);
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}
