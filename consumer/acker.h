/*
 * acker — produces one DeliveryAck per record (and, for a rejected record,
 * its original bytes to the dead-letter topic) through an idempotent
 * producer, and tells the pipeline when every record of a batch has been
 * delivered, so that the batch's offsets may be committed.
 *
 * A delivery that fails is produced again after a pause; a batch is complete
 * only when all of its records were delivered.
 */
#ifndef CV_ACKER_H
#define CV_ACKER_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "record.h"

typedef struct cv_acker cv_acker;

/* Counts what one batch still waits for. The pipeline owns it; the acker
 * decrements `outstanding` as delivery reports arrive. */
typedef struct cv_ack_ticket {
    int64_t outstanding;
    int64_t delivered;
    int64_t failures; /* deliveries that failed and were retried */
} cv_ack_ticket;

/* `conf` is taken over (also on failure). */
int cv_acker_new(rd_kafka_conf_t *conf, const char *ack_topic, const char *dlq_topic,
                 const char *topic_prefix, cv_acker **ret_acker, char *errbuf,
                 size_t errlen);
/* Flushes what it can within `timeout_ms`, then frees. Accepts NULL. */
cv_acker *cv_acker_free(cv_acker *acker, int timeout_ms);

/* Produces the acks (and DLQ records) of `recs`, counting them into
 * `ticket`. Records must have their status set. Never blocks for long: when
 * the local queue is full it serves delivery reports and tries again. */
int cv_acker_send(cv_acker *acker, const cv_rec *recs, size_t n, cv_ack_ticket *ticket,
                  char *errbuf, size_t errlen);

/* Serves delivery reports and re-produces failed deliveries whose pause
 * has passed. Waits at most `timeout_ms`. */
void cv_acker_poll(cv_acker *acker, int timeout_ms);

/* Produces any message with the acker's producer (used by `send`-style
 * tools that share it). */
rd_kafka_t *cv_acker_handle(cv_acker *acker);

/* The last delivery error, for health reporting (RD_KAFKA_RESP_ERR_NO_ERROR
 * once deliveries succeed again). */
rd_kafka_resp_err_t cv_acker_last_error(const cv_acker *acker);

/* How many times the producer was replaced after a fatal error. */
int64_t cv_acker_restarts(const cv_acker *acker);

/* Encodes the DeliveryAck of `rec` into `buf`; returns its length, or 0 if
 * it does not fit. */
size_t cv_acker_encode(const cv_rec *rec, unsigned char *buf, size_t cap);

#endif
