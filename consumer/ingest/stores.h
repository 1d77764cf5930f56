/*
 * stores — the two stores behind one batch: PostgreSQL (pgstore) and the
 * encrypted log (applog), and the ack policy between them.
 *
 * ack.policy = all: a batch is durable when PostgreSQL committed it AND the
 *   log fdatasync'ed it. Until both succeed, nothing is acked.
 * ack.policy = any: a batch is durable when at least one of them holds it.
 *   Records held by one store only are acked DEGRADED (stores says which).
 *   PostgreSQL that missed batches is backfilled from the log, in order,
 *   before it takes new ones; a log that missed batches is reported (the
 *   gap is what `chatvault verify --repair` fills).
 *
 * The log receives every valid record of the batch (a DUPLICATE too: the
 * log is the record of what was consumed, by Kafka coordinates and, when
 * Kafka's offsets start over, by generation; PostgreSQL holds one row per
 * message id). Both stores are written at the
 * same time, the log on a second thread, so their latencies overlap.
 *
 * A store that failed is tried again after a capped, growing pause rather
 * than on every batch.
 */
#ifndef CV_STORES_H
#define CV_STORES_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdint.h>

#include "applog/applog.h"
#include "ingest/envelope.h"
#include "keyring.h"
#include "record.h"
#include "util.h"

typedef enum { CV_ACK_POLICY_ALL = 0, CV_ACK_POLICY_ANY = 1 } cv_ack_policy;

typedef struct cv_stores cv_stores;

/* Events for logging and metrics; any member may be NULL. */
typedef struct cv_stores_events {
    void *opaque;
    void (*log)(void *opaque, cv_log_level level, const char *msg, const char *kv);
    void (*store_error)(void *opaque, unsigned store, const char *error);
    void (*store_ok)(void *opaque, unsigned store);
    void (*degraded)(void *opaque, int on);
    /* Kafka's offsets of a partition started over: the log keeps what it
     * holds and stores the new records in a new generation (see
     * "Generations" in applog/FORMAT.md). From the store thread. */
    void (*log_generation)(void *opaque, const char *topic, int32_t partition);
    /* Recovery cut a torn tail of `bytes` (`records` frames) off the log. */
    void (*log_torn)(void *opaque, uint64_t bytes, uint64_t records);
} cv_stores_events;

typedef struct cv_stores_conf {
    const char *pg_conninfo;
    unsigned pg_connections; /* postgres.connections */
    const char *group;
    const char *log_dir;        /* NULL or "": the log store is off */
    const cv_keyring *log_keys; /* must outlive the stores */
    uint64_t log_segment_bytes;
    cv_applog_sync log_sync;
    cv_ack_policy policy;
    /* False when the Kafka cluster is not the one the stored offsets were
     * taken from (the embedded cluster is new at every start): then
     * chatvault.kafka_offsets is neither resumed from nor compared. */
    bool offsets_comparable;
    const cv_envelope_rules *rules; /* to decode records read back from the log */
    size_t max_batch;
    cv_stores_events events;
} cv_stores_conf;

int cv_stores_open(const cv_stores_conf *conf, cv_stores **ret, char *errbuf,
                   size_t errlen);
cv_stores *cv_stores_free(cv_stores *st);

/* Makes the batch durable as the policy asks. Returns 0 when it is (every
 * valid record has status, stores and persisted_at_us set; digest when the
 * log holds it), -EAGAIN when it is not yet (try again after
 * cv_stores_retry_ms), or another negative error that retrying cannot fix
 * (-CV_ESCHEMA). `next_offsets`: per partition, the offset after its last
 * record in the batch. `ret_pg_us`/`ret_log_us` receive the time each
 * store took. */
int cv_stores_write(cv_stores *st, cv_rec *recs, size_t n,
                    const rd_kafka_topic_partition_list_t *next_offsets,
                    int64_t *ret_pg_us, int64_t *ret_log_us, char *errbuf, size_t errlen);

/* Milliseconds until a failed store is due to be tried again (0 if none). */
int64_t cv_stores_retry_ms(const cv_stores *st);

/* On assignment, with Kafka's committed offset of each partition in
 * .offset (or RD_KAFKA_OFFSET_INVALID); .offset is not changed. The log
 * is told each committed offset: it never cuts a tail below one (see
 * cv_applog_set_committed). Consumption consumption
 * resumes there, never at chatvault.kafka_offsets, because PostgreSQL
 * commits before the acks go out and Kafka's commit follows them, so
 * resuming from PostgreSQL would skip stored records whose acks were lost
 * in a crash. Where PostgreSQL is behind Kafka (acks went out while it was
 * away), the gap is queued for backfill from the log; when PostgreSQL
 * cannot be asked now, it is asked before its next write (and this returns
 * the error). */
int cv_stores_check_offsets(cv_stores *st, rd_kafka_topic_partition_list_t *parts,
                            char *errbuf, size_t errlen);

bool cv_stores_degraded(const cv_stores *st);
bool cv_stores_has_log(const cv_stores *st);

#endif
