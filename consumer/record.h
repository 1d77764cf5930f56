/*
 * record — one consumed Kafka record on its way to a durable ack, as the
 * pipeline, the stores and the acker see it.
 */
#ifndef CV_RECORD_H
#define CV_RECORD_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdint.h>

#include "ingest/envelope.h"

/* Bits of DeliveryAck.stores. */
#define CV_STORE_PG 1u
#define CV_STORE_LOG 2u

#define CV_DIGEST_BYTES 32

typedef struct cv_rec {
    rd_kafka_message_t *rkm; /* owns topic, key and value bytes */
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms; /* Kafka timestamp, -1 if none */
    cv_envelope env;      /* decoded message or why it was rejected */

    /* Filled by the stores. */
    int status;      /* CHATVAULT__V1__ACK_STATUS__* */
    uint32_t stores; /* CV_STORE_* holding it durably */
    int64_t persisted_at_us;
    bool has_digest;
    unsigned char digest[CV_DIGEST_BYTES];
} cv_rec;

static inline bool cv_rec_valid(const cv_rec *r) {
    return r->env.reason == CV_REJECT_NONE;
}

#endif
