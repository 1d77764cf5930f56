/*
 * probe — the end-to-end canary (probe.interval_ms). Every interval the
 * broker publishes one ChatMessage to the reserved channel "_probe" (topic
 * <topics.prefix>_probe) through Kafka, like any sender would. The pipeline
 * consumes, stores and acks it like any message, and cv_metrics (given the
 * same channel as probe_channel) measures publish → delivered ack of those
 * records as chatvault_probe_latency_seconds: the whole durable path, not a
 * ping. Probe messages are real rows in chatvault.messages (one per
 * interval); the topic must exist or be auto-created.
 *
 * The probe runs its own producer in its own thread.
 */
#ifndef CV_PROBE_H
#define CV_PROBE_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "obs/metrics.h"

#define CV_PROBE_CHANNEL "_probe"

typedef struct cv_probe cv_probe;

typedef struct cv_probe_conf {
    rd_kafka_conf_t *producer_conf; /* taken over by cv_probe_start, even on failure */
    const char *topic;              /* <topics.prefix>_probe */
    const char *channel;            /* CV_PROBE_CHANNEL */
    int64_t interval_ms;            /* > 0 */
    cv_metrics *metrics;            /* told of every probe sent; may be NULL */
} cv_probe_conf;

/* Starts the probe thread. Returns 0 or a negative errno with errbuf set. */
int cv_probe_start(const cv_probe_conf *conf, cv_probe **ret_probe, char *errbuf,
                   size_t errlen);

/* Stops the thread, flushes what is in flight (up to 2 s), frees. Accepts
 * NULL; returns NULL. */
cv_probe *cv_probe_stop(cv_probe *p);

#endif
