/*
 * devkafka — librdkafka's mock cluster, listening on loopback TCP, for
 * trying chatvault and for tests. Not a real Kafka: librdkafka 2.0.2's mock
 * keeps only about 5 MiB per partition and silently drops older batches,
 * and its transactions only pretend.
 */
#ifndef CV_DEVKAFKA_H
#define CV_DEVKAFKA_H

#include <stddef.h>

typedef struct cv_devkafka cv_devkafka;

int cv_devkafka_start(int nbrokers, cv_devkafka **ret, char *errbuf, size_t errlen);
/* "127.0.0.1:port,..." — valid until cv_devkafka_free. */
const char *cv_devkafka_bootstraps(const cv_devkafka *dk);
int cv_devkafka_create_topic(cv_devkafka *dk, const char *topic, int partitions,
                             char *errbuf, size_t errlen);
/* The mock cluster handle, for fault injection by tests. */
struct rd_kafka_mock_cluster_s *cv_devkafka_mock(cv_devkafka *dk);
cv_devkafka *cv_devkafka_free(cv_devkafka *dk);

#endif
