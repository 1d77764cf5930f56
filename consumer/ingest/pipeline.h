/*
 * pipeline — the consumer group member that takes records to durable acks:
 *
 *   poll → decode + validate → batch → stores (one PostgreSQL transaction)
 *        → produce acks → (all acks of the batch and of every batch before
 *          it delivered) → commit the Kafka offsets
 *
 * A record is acked only after the stores hold it; offsets are committed only
 * after the acks of everything below them were delivered. On a partition
 * revoke and on stop the batch in flight is finished and committed first.
 * A batch given up before it was acked (stop while the stores are down, a
 * fatal error) ends the run's storing: no batch after it is stored, acked
 * or committed, so Kafka re-delivers it and all that follows.
 * On assignment, each partition resumes from Kafka's committed offset, never
 * from chatvault.kafka_offsets (see cv_stores_check_offsets).
 */
#ifndef CV_PIPELINE_H
#define CV_PIPELINE_H

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "ingest/stores.h"
#include "keyring.h"
#include "record.h"
#include "util.h"

typedef struct cv_pipeline cv_pipeline;

/* One record whose ack was delivered. */
typedef struct cv_ack_note {
    const char *topic; /* valid for the pipeline's lifetime */
    int32_t partition;
    int64_t offset;
    int64_t sent_at_us;   /* from the message; 0 if none (rejected) */
    int64_t timestamp_ms; /* Kafka timestamp, -1 if none */
    int status;           /* CHATVAULT__V1__ACK_STATUS__* */
    uint32_t stores;      /* CV_STORE_PG | CV_STORE_LOG */
} cv_ack_note;

/* What the pipeline tells an observer (metrics); any member may be NULL.
 * store_error, store_ok and degraded come from the store thread, the rest
 * from the thread that runs the pipeline: an observer locks its state. */
typedef struct cv_pipeline_observer {
    void *opaque;
    /* A batch was decoded: rec->env says valid or rejected and why. */
    void (*consumed)(void *opaque, const cv_rec *recs, size_t n);
    /* The stores made the batch durable, taking pg_us (the transaction) and
     * log_us (append + fdatasync; 0 when the log store is off). */
    void (*stored)(void *opaque, const cv_rec *recs, size_t n, int64_t pg_us,
                   int64_t log_us);
    /* A store write failed; the pipeline retries (or degrades). */
    void (*store_error)(void *opaque, unsigned store, const char *error);
    /* A store write succeeded. */
    void (*store_ok)(void *opaque, unsigned store);
    /* Every ack of these records is delivered; their offsets are being
     * committed. */
    void (*acked)(void *opaque, const cv_ack_note *notes, size_t n);
    /* About once a second: read watermarks, assignment, positions. `ends`,
     * when not NULL, holds end offsets just asked of Kafka (while the
     * partitions are paused no fetch refreshes the cached watermarks). */
    void (*tick)(void *opaque, rd_kafka_t *consumer,
                 const rd_kafka_topic_partition_list_t *ends);
    /* ack.policy = any is running on one store (1) or back on all (0). */
    void (*degraded)(void *opaque, int on);
    /* Kafka's offsets of a partition started over; the log began a new
     * generation of it (from the store thread). */
    void (*log_generation)(void *opaque, const char *topic, int32_t partition);
    /* Log recovery cut a torn tail of `bytes` (`records` frames). */
    void (*log_torn)(void *opaque, uint64_t bytes, uint64_t records);
    /* ack.transactions = on: a batch's transaction committed after `us`
     * (every attempt included), `aborted` attempts before it. */
    void (*ack_txn)(void *opaque, int64_t us, int aborted);
} cv_pipeline_observer;

typedef void cv_pipeline_log_fn(void *opaque, cv_log_level level, const char *msg,
                                const char *kv);

typedef struct cv_pipeline_conf {
    rd_kafka_conf_t *consumer_conf; /* taken over by cv_pipeline_new */
    rd_kafka_conf_t *producer_conf; /* taken over by cv_pipeline_new */
    const char *group;              /* consumer group id */
    const char *topics_pattern;     /* regex without the leading '^' is
                                         an exact topic */
    const char *topics_prefix;
    const char *ack_topic;
    const char *dlq_topic;
    const char *pg_conninfo;
    unsigned pg_connections;    /* postgres.connections; 0 means 1 */
    const char *log_dir;        /* NULL or "": the log store is off */
    const cv_keyring *log_keys; /* must outlive the pipeline */
    uint64_t log_segment_bytes;
    cv_applog_sync log_sync;
    cv_ack_policy ack_policy;
    bool fresh_cluster; /* Kafka is new (embedded): stored
                                         offsets belong to another cluster */
    int64_t batch_max_messages;
    int64_t batch_max_bytes;
    int64_t batch_max_ms;
    int64_t max_body_bytes;
    int64_t shutdown_timeout_ms;
    cv_pipeline_log_fn *log;
    void *log_opaque;
    const cv_pipeline_observer *observer; /* may be NULL */
} cv_pipeline_conf;

/* Counters since start, for metrics and the end-of-run summary. */
typedef struct cv_pipeline_stats {
    int64_t consumed, persisted, duplicates, rejected, acked, batches;
    int64_t committed_batches;
    int64_t store_errors;
    int64_t rejected_by_reason[16];
} cv_pipeline_stats;

/* Connects to PostgreSQL (checking the schema) and creates the Kafka
 * clients. The configurations are taken over even on failure. */
int cv_pipeline_new(const cv_pipeline_conf *conf, cv_pipeline **ret_pipeline,
                    char *errbuf, size_t errlen);

/* Runs until *stop becomes non-zero, then drains: finishes the batch in
 * flight (unless the stores are down: then it is given up, see above),
 * waits (up to shutdown_timeout_ms) for the acks, commits, and leaves the
 * group. Returns 0, or a negative error with errbuf set when it
 * had to stop on a failure it cannot wait out. */
int cv_pipeline_run(cv_pipeline *p, volatile sig_atomic_t *stop, char *errbuf,
                    size_t errlen);

void cv_pipeline_get_stats(const cv_pipeline *p, cv_pipeline_stats *ret);

/* Whether the ack path was saturated (a batch went to the stores full, by
 * batch.max_messages or batch.max_bytes: more was waiting in Kafka) within
 * the last `within_ms`. Safe from any thread; for work that should yield
 * PostgreSQL to the ack path, such as the search indexer. */
bool cv_pipeline_saturated(const cv_pipeline *p, int64_t within_ms);

cv_pipeline *cv_pipeline_free(cv_pipeline *p);

#endif
