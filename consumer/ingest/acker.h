/*
 * acker — produces one DeliveryAck per record (and, for a rejected record,
 * its original bytes to the dead-letter topic) through an idempotent
 * producer, and tells the pipeline when every record of a batch has been
 * delivered, so that the batch's offsets may be committed.
 *
 * A delivery that fails is produced again after a pause; a batch is complete
 * only when all of its records were delivered.
 *
 * A transactional acker (ack.transactions = on) instead produces a batch's
 * acks and commits the batch's consumed offsets in one Kafka transaction
 * (cv_acker_send_txn): a read_committed reader sees each ack once, and a
 * crash between the acks and the commit rolls both back together. Failed
 * deliveries are not produced again one by one there; the transaction is
 * aborted and the batch produced again as a whole.
 */
#ifndef CV_ACKER_H
#define CV_ACKER_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
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

/* `conf` is taken over (also on failure). When it sets transactional.id
 * the acker is transactional: its transactions are initialised here, which
 * aborts any its predecessor of the same id left open. */
int cv_acker_new(rd_kafka_conf_t *conf, const char *ack_topic, const char *dlq_topic,
                 const char *topic_prefix, cv_acker **ret_acker, char *errbuf,
                 size_t errlen);

/* True for a transactional acker. */
bool cv_acker_transactional(const cv_acker *acker);
/* Flushes what it can within `timeout_ms`, then frees. Accepts NULL. */
cv_acker *cv_acker_free(cv_acker *acker, int timeout_ms);

/* Produces the acks (and DLQ records) of `recs`, counting them into
 * `ticket`. Records must have their status set. Never blocks for long: when
 * the local queue is full it serves delivery reports and tries again. */
int cv_acker_send(cv_acker *acker, const cv_rec *recs, size_t n, cv_ack_ticket *ticket,
                  char *errbuf, size_t errlen);

/* Transactional acker only: produces the acks of `recs` and commits
 * `offsets` (the next offset of each partition, as the consumer would
 * commit them) for `consumer`'s group in one transaction, and waits for it.
 * On return 0 every ack is delivered and the offsets are committed, and
 * `ticket` says so. -EAGAIN: the transaction was aborted (nothing of it is
 * visible to read_committed readers) and may be tried again; -EIO: the
 * producer failed for good (fenced by another instance with the same
 * transactional.id, say) and the acker is unusable. */
int cv_acker_send_txn(cv_acker *acker, rd_kafka_t *consumer, const cv_rec *recs, size_t n,
                      const rd_kafka_topic_partition_list_t *offsets,
                      cv_ack_ticket *ticket, char *errbuf, size_t errlen);

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
