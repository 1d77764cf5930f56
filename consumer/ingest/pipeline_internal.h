/*
 * ingest/pipeline_internal.h — private to the pipeline (ingest/pipeline*.c):
 * its state and the functions one of its files calls in another, prefixed
 * cv_pipeline_i_. The files:
 *
 *   pipeline.c            the poll and batch loop, the store thread, the
 *                         retries while a store is down, lifetime
 *   pipeline_ack.c        acks, the FIFO of acked batches, the commit
 *   pipeline_rebalance.c  partitions assigned and revoked
 *
 * Threading: all of it is the pipeline thread's but struct store_thread,
 * shared with the store thread under its mutex. Nothing outside
 * ingest/pipeline*.c includes this header; the public API is
 * ingest/pipeline.h.
 */
#ifndef CV_PIPELINE_INTERNAL_H
#define CV_PIPELINE_INTERNAL_H

#include "ingest/pipeline.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "ingest/acker.h"
#include "ingest/envelope.h"
#include "ingest/stores.h"
#include "record.h"
#include "util.h"

/* ---- the state -------------------------------------------------------- */

/* A batch whose records are stored and whose acks are on their way. */
typedef struct pending {
    struct pending *next;
    cv_ack_ticket ticket;
    rd_kafka_topic_partition_list_t *offsets; /* next offset per partition */
    bool committed;     /* by the acks' transaction: not to be committed again */
    bool given_up;      /* its acks failed: it never completes */
    cv_ack_note *notes; /* for the observer, or NULL */
    size_t nnotes;
} pending;

/* Topic names outlive the Kafka messages that carried them: the observer
 * sees them after the batch is released. A few hundred topics at most. */
typedef struct interned {
    struct interned *next;
    char name[];
} interned;

/* Records on their way through the stores. Two of these alternate: one
 * fills while the other is stored. */
typedef struct batch {
    cv_rec *recs;
    size_t n, bytes;
    int64_t started_ms;
    cv_arena *arena;                          /* the decoded messages of recs */
    rd_kafka_topic_partition_list_t *offsets; /* set when it is submitted */
    uint64_t seq;                             /* submission order, from 1 */
    /* The stores' verdict, written by the store thread. */
    int result;
    int64_t pg_us, log_us;
    char err[512];
} batch;

/* The store thread takes one batch at a time. */
typedef struct store_thread {
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    batch *job;  /* handed over, not yet taken */
    batch *done; /* written, verdict in it */
    bool quit, started;
    rd_kafka_queue_t *wake; /* the consumer's queue: a verdict ends its poll */
} store_thread;

struct cv_pipeline {
    char *group, *pattern, *prefix, *ack_topic, *dlq_topic;
    int64_t max_messages, max_bytes, max_ms, shutdown_timeout_ms;
    cv_pipeline_log_fn *log_fn;
    void *log_opaque;
    cv_pipeline_observer obs;
    interned *topics;
    int64_t last_tick_ms;
    /* Batches whose acks were produced again after failed deliveries, not
     * yet logged (see log_acks_again). */
    struct {
        int64_t batches, failures, delivered, logged_ms;
    } again;

    rd_kafka_t *consumer;
    cv_acker *acker;
    cv_stores *stores;
    cv_envelope_rules rules;
    batch bufs[2];
    batch *fill;    /* the batch being filled */
    batch *storing; /* the batch at the store thread, or NULL */
    size_t cap;
    _Atomic int64_t full_at_ms; /* when a batch last went full; 0: never */
    store_thread st;
    bool in_rebalance; /* inside rebalance_cb: do not poll the consumer */

    pending *head, **tail;
    /* The highest offset committed so far per assigned partition, and when
     * to commit them again after Kafka refused a commit (0: no refusal
     * pending). An asynchronous commit that fails (a coordinator moving)
     * is not retried by librdkafka; without this, the last batches before
     * a quiet spell would stay uncommitted until more traffic came, and be
     * re-delivered after a restart. */
    rd_kafka_topic_partition_list_t *committed_hw;
    int64_t commit_retry_ms, commit_backoff_ms;
    uint64_t seq;    /* of the last batch submitted */
    uint64_t hole;   /* the first batch given up (see the top), 0: none */
    batch *retrying; /* the batch store_retry waits with, or NULL */
    bool in_store;   /* store_retry is waiting for a store */
    bool abandon;    /* a revoke came meanwhile: give the batch up */
    volatile sig_atomic_t *stop;
    int fatal;
    char fatal_err[512];
    cv_pipeline_stats stats;
};

/* Calls the observer's `fn`, when it has one. */
#define OBSERVE(p, fn, ...)                                                              \
    do {                                                                                 \
        if ((p)->obs.fn)                                                                 \
            (p)->obs.fn((p)->obs.opaque, __VA_ARGS__);                                   \
    } while (0)

static inline bool cv_pipeline_i_stopping(const cv_pipeline *p) {
    return p->stop && *p->stop;
}

/* ---- what one file calls in another, by the file that has it --------- */

/* pipeline.c */
void cv_pipeline_i_log(cv_pipeline *p, cv_log_level level, const char *msg,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void cv_pipeline_i_set_fatal(cv_pipeline *p, const char *err);
void cv_pipeline_i_make_hole(cv_pipeline *p, const batch *b, const char *why);
void cv_pipeline_i_release_batch(batch *b);
bool cv_pipeline_i_finish_storing(cv_pipeline *p);
void cv_pipeline_i_drain(cv_pipeline *p, int64_t timeout_ms);

/* pipeline_ack.c */
void cv_pipeline_i_pending_free(pending *b);
rd_kafka_topic_partition_list_t *cv_pipeline_i_batch_offsets(const cv_rec *recs,
                                                             size_t n);
void cv_pipeline_i_log_acks_again(cv_pipeline *p, bool flush);
void cv_pipeline_i_commit_completed(cv_pipeline *p, bool async);
/* librdkafka's offset_commit_cb (served by the consumer's poll). */
void cv_pipeline_i_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                             rd_kafka_topic_partition_list_t *offsets, void *opaque);
/* Revoked partitions are no longer this consumer's to commit. */
void cv_pipeline_i_commit_forget(cv_pipeline *p,
                                 const rd_kafka_topic_partition_list_t *parts);
void cv_pipeline_i_ack_batch(cv_pipeline *p, batch *b);
void cv_pipeline_i_drain_acks(cv_pipeline *p, int64_t timeout_ms);

/* pipeline_rebalance.c */
void cv_pipeline_i_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                rd_kafka_topic_partition_list_t *parts, void *opaque);

#endif
