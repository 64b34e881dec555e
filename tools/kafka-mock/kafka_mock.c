/* kafka-mock — librdkafka's mock cluster as a process on loopback, for tests
 * and local mode (Debian has no Kafka broker).
 *
 *   kafka-mock [BROKERS]     (default 1)
 *
 * Prints the bootstrap servers ("127.0.0.1:PORT,...") on its first line,
 * then reads commands, one per line, from stdin:
 *   down      every broker stops answering (an outage)
 *   up        they answer again
 *   topic NAME PARTITIONS   create a topic
 * and answers "ok" (or "error ...") to each. Ends on EOF or SIGTERM. The
 * data lives in memory only. */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    int nbrokers = argc > 1 ? atoi(argv[1]) : 1;
    if (nbrokers < 1 || nbrokers > 9) {
        fprintf(stderr, "usage: kafka-mock [BROKERS 1-9]\n");
        return 2;
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
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
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
