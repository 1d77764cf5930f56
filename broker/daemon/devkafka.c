/*
 * devkafka — see devkafka.h. The mock cluster needs a client handle to live
 * in; a producer that is never used serves.
 */
#include "daemon/devkafka.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>

struct cv_devkafka {
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mcluster;
};

int cv_devkafka_start(int nbrokers, cv_devkafka **ret, char *errbuf, size_t errlen) {
    char kerr[512];
    cv_devkafka *dk = calloc(1, sizeof(*dk));
    if (!dk) {
        snprintf(errbuf, errlen, "out of memory");
        return -ENOMEM;
    }
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* The host handle never talks to anything. */
    rd_kafka_conf_set(conf, "log_level", "3", NULL, 0);
    dk->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr));
    if (!dk->rk) {
        rd_kafka_conf_destroy(conf);
        snprintf(errbuf, errlen, "cannot create the mock cluster's host: %s", kerr);
        free(dk);
        return -EINVAL;
    }
    dk->mcluster = rd_kafka_mock_cluster_new(dk->rk, nbrokers);
    if (!dk->mcluster) {
        snprintf(errbuf, errlen,
                 "cannot start the mock Kafka cluster (%d brokers on loopback)",
                 nbrokers);
        rd_kafka_destroy(dk->rk);
        free(dk);
        return -EIO;
    }
    *ret = dk;
    return 0;
}

const char *cv_devkafka_bootstraps(const cv_devkafka *dk) {
    return rd_kafka_mock_cluster_bootstraps(dk->mcluster);
}

int cv_devkafka_create_topic(cv_devkafka *dk, const char *topic, int partitions,
                             char *errbuf, size_t errlen) {
    rd_kafka_resp_err_t err =
        rd_kafka_mock_topic_create(dk->mcluster, topic, partitions, 1);
    if (err) {
        snprintf(errbuf, errlen, "cannot create topic %s with %d partitions: %s", topic,
                 partitions, rd_kafka_err2str(err));
        return -EINVAL;
    }
    return 0;
}

struct rd_kafka_mock_cluster_s *cv_devkafka_mock(cv_devkafka *dk) {
    return dk->mcluster;
}

cv_devkafka *cv_devkafka_free(cv_devkafka *dk) {
    if (!dk)
        return NULL;
    rd_kafka_mock_cluster_destroy(dk->mcluster);
    rd_kafka_destroy(dk->rk);
    free(dk);
    return NULL;
}
