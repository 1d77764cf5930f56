/*
 * chatvault dev-kafka — a standalone mock Kafka cluster on loopback, for
 * trying chatvault and for tests.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <poll.h>

#include "cli.h"
#include "daemon/devkafka.h"

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
    (void)sig, stop = 1;
}

/* One fault-injection command from --control; answers on stdout. */
static void control_command(cv_devkafka *dk, char *line) {
    rd_kafka_mock_cluster_t *mc = cv_devkafka_mock(dk);
    char cmd[64], name[256];
    int a, b, c;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    line[strcspn(line, "\r\n")] = '\0';
    if (sscanf(line, "broker-down %d", &a) == 1) {
        err = rd_kafka_mock_broker_set_down(mc, a);
    } else if (sscanf(line, "broker-up %d", &a) == 1) {
        err = rd_kafka_mock_broker_set_up(mc, a);
    } else if (sscanf(line, "broker-rtt %d %d", &a, &b) == 2) {
        err = rd_kafka_mock_broker_set_rtt(mc, a, b);
    } else if (sscanf(line, "request-errors %d %d %d", &a, &b, &c) == 3 && b > 0 &&
               b <= 1000) {
        rd_kafka_resp_err_t errs[1000];
        for (int i = 0; i < b; i++)
            errs[i] = (rd_kafka_resp_err_t)c;
        rd_kafka_mock_push_request_errors_array(mc, (int16_t)a, (size_t)b, errs);
    } else if (sscanf(line, "leader %255s %d %d", name, &a, &b) == 3) {
        err = rd_kafka_mock_partition_set_leader(mc, name, a, b);
    } else if (sscanf(line, "topic %255s %d", name, &a) == 2) {
        err = rd_kafka_mock_topic_create(mc, name, a, 1);
    } else {
        if (sscanf(line, "%63s", cmd) != 1)
            return; /* blank line */
        printf("error: unknown command \"%s\"\n", line);
        fflush(stdout);
        return;
    }
    if (err)
        printf("error: %s\n", rd_kafka_err2str(err));
    else
        printf("ok\n");
    fflush(stdout);
    cv_log(CV_LOG_INFO, "fault injected", "command=\"%s\" result=%s", line,
           err ? rd_kafka_err2str(err) : "ok");
}

typedef struct devkafka_opts {
    int64_t brokers, partitions;
    const char *topics[256];
    size_t ntopics;
    bool control;
} devkafka_opts;

static const cv_cli_opt opts[] = {
    CV_OPT_INT("brokers", 'b', "N", "brokers in the cluster (default 1)", devkafka_opts,
               brokers, 1, 16),
    CV_OPT_INT("partitions", 'p', "N",
               "partitions of each --topic without its own count, and of chatvault.acks "
               "/ chatvault.dlq (default 4)",
               devkafka_opts, partitions, 1, 10000),
    CV_OPT_LIST("topic", 't', "NAME[:P]",
                "create a topic up front (repeatable); topics a client asks for are "
                "otherwise auto-created with the mock's default partition count",
                devkafka_opts, topics, ntopics),
    CV_OPT_FLAG("control", 0,
                "read fault-injection commands from stdin, one per line, answering "
                "\"ok\" or \"error: ...\" on stdout:\n"
                "  broker-down ID | broker-up ID\n"
                "  broker-rtt ID MS\n"
                "  request-errors APIKEY COUNT ERRCODE   (e.g. 0 5 6 = Produce fails 5 "
                "times with NOT_LEADER_FOR_PARTITION)\n"
                "  leader TOPIC PARTITION BROKER_ID\n"
                "  topic NAME PARTITIONS",
                devkafka_opts, control),
    CV_OPT_END,
};

static const cv_cli_spec spec = {
    .name = "dev-kafka",
    .usage = "dev-kafka [--brokers N] [--partitions N] [--topic NAME[:PARTITIONS]]...\n"
             "                 [--control]",
    .about = "Runs librdkafka's mock Kafka cluster on loopback TCP, prints its bootstrap "
             "servers\non the first line of stdout and runs until killed "
             "(SIGINT/SIGTERM).\n",
    .opts = opts,
    .epilog = "NOT a real Kafka. Known limits of librdkafka 2.0.2's mock cluster, "
              "measured:\nit keeps only about 5 MiB per partition and silently drops "
              "older batches, so\ngive topics enough partitions for the volume you send; "
              "its transactions only\npretend. Use it to try chatvault and in tests, "
              "never for data you keep.\n",
    .no_config = true,
};

/* Creates the ack and dead-letter topics and every --topic. */
static int create_topics(cv_devkafka *dk, const devkafka_opts *o) {
    char err[512];
    const char *defaults[] = {"chatvault.acks", "chatvault.dlq"};
    for (int i = 0; i < 2; i++)
        if (cv_devkafka_create_topic(dk, defaults[i], (int)o->partitions, err,
                                     sizeof(err)) < 0)
            goto fail;
    for (size_t i = 0; i < o->ntopics; i++) {
        char name[300];
        snprintf(name, sizeof(name), "%s", o->topics[i]);
        int parts = (int)o->partitions;
        char *colon = strrchr(name, ':');
        if (colon) {
            *colon = '\0';
            parts = atoi(colon + 1);
            if (parts < 1) {
                cv_error("dev-kafka", "--topic %s: bad partition count", o->topics[i]);
                return CV_EXIT_USAGE;
            }
        }
        if (cv_devkafka_create_topic(dk, name, parts, err, sizeof(err)) < 0)
            goto fail;
    }
    return CV_EXIT_OK;
fail:
    cv_error("dev-kafka", "%s", err);
    return CV_EXIT_FAILURE;
}

int cv_cmd_dev_kafka(int argc, char **argv) {
    devkafka_opts o = {.brokers = 1, .partitions = 4};
    cv_cli cli;
    int rc = cv_cli_parse(&spec, argc, argv, &o, &cli);
    if (rc != CV_CLI_RUN)
        return rc;
    char err[512];
    cv_devkafka *dk = NULL;
    if (cv_devkafka_start((int)o.brokers, &dk, err, sizeof(err)) < 0) {
        cv_error("dev-kafka", "%s", err);
        return CV_EXIT_FAILURE;
    }
    if ((rc = create_topics(dk, &o)) != CV_EXIT_OK) {
        cv_devkafka_free(dk);
        return rc;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    printf("%s\n", cv_devkafka_bootstraps(dk));
    fflush(stdout);
    cv_log(CV_LOG_INFO, "mock kafka cluster running",
           "bootstrap=%s brokers=%d partitions=%d limit=\"about 5 MiB per "
           "partition; older batches are dropped\"",
           cv_devkafka_bootstraps(dk), (int)o.brokers, (int)o.partitions);
    if (o.control) {
        char line[512];
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        while (!stop) {
            if (poll(&pfd, 1, 200) <= 0)
                continue;
            if (!fgets(line, sizeof(line), stdin))
                break; /* stdin closed: keep running until killed */
            control_command(dk, line);
        }
    }
    while (!stop)
        pause();
    cv_devkafka_free(dk);
    return CV_EXIT_OK;
}
