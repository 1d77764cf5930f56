/*
 * pipeline_ack — the ack and commit side of the pipeline (see the top of
 * pipeline.c): a stored batch's acks are produced (or, with
 * ack.transactions = on, produced and its offsets committed in one Kafka
 * transaction) and the batch waits in the FIFO, a ticket counting its
 * undelivered acks; the offsets of the longest prefix of fully delivered
 * batches are committed, so nothing is committed past an unacked record.
 *
 * Threading: the pipeline thread's (the acker's delivery reports arrive
 * in cv_acker_poll, on this thread).
 */
#include "ingest/pipeline_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/acker.h"
#include "record.h"
#include "util.h"

#define ACKS_AGAIN_LOG_MS 10000
/* First and longest pause between attempts of an aborted ack transaction. */
#define TXN_RETRY_MS 500
#define TXN_RETRY_MAX_MS 5000
/* How soon a commit Kafka refused goes again (committed_hw), doubling up
 * to the most while refusals go on. */
#define COMMIT_RETRY_MS 1000
#define COMMIT_RETRY_MAX_MS 30000

static const char *intern_topic(cv_pipeline *p, const char *name) {
    for (interned *t = p->topics; t; t = t->next)
        if (strcmp(t->name, name) == 0)
            return t->name;
    size_t n = strlen(name) + 1;
    interned *t = malloc(sizeof(*t) + n);
    if (!t)
        return NULL;
    memcpy(t->name, name, n);
    t->next = p->topics;
    p->topics = t;
    return t->name;
}

void cv_pipeline_i_pending_free(pending *b) {
    rd_kafka_topic_partition_list_destroy(b->offsets);
    free(b->notes);
    free(b);
}

/* Offsets to commit: one past the last record of each partition. Records
 * of one partition arrive in order, and usually in runs, so the last
 * partition found is tried first. */
rd_kafka_topic_partition_list_t *cv_pipeline_i_batch_offsets(const cv_rec *recs,
                                                             size_t n) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    rd_kafka_topic_partition_t *last = NULL;
    for (size_t i = 0; i < n; i++) {
        const cv_rec *r = &recs[i];
        if (!last || last->partition != r->partition ||
            strcmp(last->topic, r->topic) != 0) {
            last = rd_kafka_topic_partition_list_find(l, r->topic, r->partition);
            if (!last)
                last = rd_kafka_topic_partition_list_add(l, r->topic, r->partition);
        }
        last->offset = r->offset + 1;
    }
    return l;
}

/* Logs the batches whose acks had to be produced again: the first at once,
 * then one line per ACKS_AGAIN_LOG_MS for all that came meanwhile (while the
 * ack topic is unreachable, that is every batch), and what is left when
 * `flush`. */
void cv_pipeline_i_log_acks_again(cv_pipeline *p, bool flush) {
    if (!p->again.batches)
        return;
    int64_t now = cv_mono_ms();
    if (!flush && p->again.logged_ms && now - p->again.logged_ms < ACKS_AGAIN_LOG_MS)
        return;
    cv_pipeline_i_log(p, CV_LOG_WARN, "acks were produced again after failed deliveries",
                      "batches=%" PRId64 " failures=%" PRId64 " delivered=%" PRId64
                      " note=\"receivers may see these acks twice\"",
                      p->again.batches, p->again.failures, p->again.delivered);
    p->again.batches = p->again.failures = p->again.delivered = 0;
    p->again.logged_ms = now;
}

/* Kafka refused a commit: the high-water mark goes again after a pause
 * that doubles while refusals go on (1 s to 30 s), so a coordinator that
 * stays away costs a line per pause, not a line a second. */
static void commit_refused(cv_pipeline *p, rd_kafka_resp_err_t err) {
    p->commit_backoff_ms =
        p->commit_backoff_ms ? p->commit_backoff_ms * 2 : COMMIT_RETRY_MS;
    if (p->commit_backoff_ms > COMMIT_RETRY_MAX_MS)
        p->commit_backoff_ms = COMMIT_RETRY_MAX_MS;
    p->commit_retry_ms = cv_mono_ms() + p->commit_backoff_ms;
    cv_pipeline_i_log(p, CV_LOG_WARN,
                      "offset commit refused; it goes again, and meanwhile a restart "
                      "would re-deliver (and deduplicate) the records past it",
                      "error=\"%s\" retry_in_ms=%" PRId64, rd_kafka_err2str(err),
                      p->commit_backoff_ms);
}

/* Folds a commit into the high-water mark of committed offsets. */
static void remember_committed(cv_pipeline *p,
                               const rd_kafka_topic_partition_list_t *commit) {
    if (!p->committed_hw && !(p->committed_hw = rd_kafka_topic_partition_list_new(16)))
        return;
    for (int i = 0; i < commit->cnt; i++) {
        const rd_kafka_topic_partition_t *src = &commit->elems[i];
        rd_kafka_topic_partition_t *dst = rd_kafka_topic_partition_list_find(
            p->committed_hw, src->topic, src->partition);
        if (!dst)
            dst = rd_kafka_topic_partition_list_add(p->committed_hw, src->topic,
                                                    src->partition);
        if (src->offset > dst->offset)
            dst->offset = src->offset;
    }
}

/* Commits the offsets of every completed batch at the head of the FIFO,
 * and again those of a commit Kafka refused (see committed_hw). */
void cv_pipeline_i_commit_completed(cv_pipeline *p, bool async) {
    rd_kafka_topic_partition_list_t *commit = NULL;
    while (p->head && p->head->ticket.outstanding == 0) {
        pending *b = p->head;
        if (!commit && !b->committed)
            commit = rd_kafka_topic_partition_list_new(b->offsets->cnt);
        for (int i = 0; !b->committed && i < b->offsets->cnt; i++) {
            rd_kafka_topic_partition_t *src = &b->offsets->elems[i];
            rd_kafka_topic_partition_t *dst =
                rd_kafka_topic_partition_list_find(commit, src->topic, src->partition);
            if (!dst)
                dst =
                    rd_kafka_topic_partition_list_add(commit, src->topic, src->partition);
            if (src->offset > dst->offset)
                dst->offset = src->offset;
        }
        p->stats.acked += b->ticket.delivered;
        p->stats.committed_batches++;
        if (b->ticket.failures > 0 && !b->committed) {
            p->again.batches++;
            p->again.failures += b->ticket.failures;
            p->again.delivered += b->ticket.delivered;
        }
        p->head = b->next;
        if (!p->head)
            p->tail = &p->head;
        if (b->notes)
            OBSERVE(p, acked, b->notes, b->nnotes);
        cv_pipeline_i_pending_free(b);
    }
    cv_pipeline_i_log_acks_again(p, false);
    if (commit)
        remember_committed(p, commit);
    /* After a refused commit the whole high-water mark goes: it holds what
     * this commit holds, and what the refused one did. */
    int64_t now = cv_mono_ms();
    bool retry = p->commit_retry_ms && p->committed_hw && p->committed_hw->cnt &&
                 (!async || now >= p->commit_retry_ms);
    if (retry) {
        p->commit_retry_ms = 0;
        cv_pipeline_i_log(p, CV_LOG_INFO, "offset commit again after a refusal",
                          "partitions=%d", p->committed_hw->cnt);
    }
    if (commit || retry) {
        rd_kafka_resp_err_t err =
            rd_kafka_commit(p->consumer, retry ? p->committed_hw : commit, async ? 1 : 0);
        if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
            commit_refused(p, err);
    }
    if (commit)
        rd_kafka_topic_partition_list_destroy(commit);
}

void cv_pipeline_i_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                             rd_kafka_topic_partition_list_t *offsets, void *opaque) {
    cv_pipeline *p = opaque;
    (void)rk, (void)offsets;
    if (!err)
        p->commit_backoff_ms = 0;
    else if (err != RD_KAFKA_RESP_ERR__NO_OFFSET && !p->commit_retry_ms)
        commit_refused(p, err);
}

void cv_pipeline_i_commit_forget(cv_pipeline *p,
                                 const rd_kafka_topic_partition_list_t *parts) {
    for (int i = 0; i < parts->cnt; i++) {
        const char *t = parts->elems[i].topic;
        int32_t part = parts->elems[i].partition;
        if (p->committed_hw)
            rd_kafka_topic_partition_list_del(p->committed_hw, t, part);
        /* batches whose acks come after the revoke's drain gave up on them:
         * their offsets of these partitions are the next owner's now */
        for (pending *b = p->head; b; b = b->next)
            if (b->offsets)
                rd_kafka_topic_partition_list_del(b->offsets, t, part);
    }
    if (!p->committed_hw || !p->committed_hw->cnt)
        p->commit_retry_ms = 0;
}

/* Whether the last failure of the acks' transaction says this consumer's
 * group membership is over: a rebalance it has not served yet. Trying
 * again cannot succeed without serving it, and serving it here would
 * complete later batches before this one. */
static bool group_moved_on(cv_pipeline *p) {
    switch (cv_acker_last_error(p->acker)) {
    case RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION:
    case RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID:
    case RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID:
    case RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS:
        return true;
    default:
        return false;
    }
}

/* ack.transactions = on: produces the batch's acks and commits its offsets
 * in one transaction, trying again after an abort until it commits. Only
 * the producer is served meanwhile (Kafka's heartbeats go on in librdkafka's
 * own thread). 0: committed; -ECANCELED: asked to stop first; -EIO: the
 * producer failed for good, or the group moved on. */
static int ack_batch_txn(cv_pipeline *p, const batch *b, pending *pb, char *err,
                         size_t errlen) {
    int64_t pause = TXN_RETRY_MS, start_us = cv_mono_us();
    for (int attempt = 1;; attempt++) {
        int r = cv_acker_send_txn(p->acker, p->consumer, b->recs, b->n, pb->offsets,
                                  &pb->ticket, err, errlen);
        if (r == 0) {
            pb->committed = true;
            OBSERVE(p, ack_txn, cv_mono_us() - start_us, attempt - 1);
            if (attempt > 1)
                cv_pipeline_i_log(p, CV_LOG_INFO, "ack transaction committed",
                                  "attempts=%d records=%zu", attempt, b->n);
            return 0;
        }
        if (r != -EAGAIN)
            return r;
        pb->ticket.failures++;
        if (group_moved_on(p)) {
            size_t used = strlen(err);
            snprintf(err + used, errlen - used,
                     "; the consumer group moved on meanwhile, so the batch is left "
                     "for its next owner");
            return -EIO;
        }
        /* The first abort at once, then one line in ten: Kafka may be away
         * for long. */
        if (attempt % 10 == 1)
            cv_pipeline_i_log(
                p, CV_LOG_WARN,
                "ack transaction aborted; read_committed readers see none of its "
                "acks, and they are produced again",
                "attempt=%d records=%zu error=\"%s\"", attempt, b->n, err);
        int64_t until = cv_mono_ms() + pause;
        while (cv_mono_ms() < until && !cv_pipeline_i_stopping(p))
            cv_acker_poll(p->acker, 50);
        if (cv_pipeline_i_stopping(p))
            return -ECANCELED;
        pause = pause * 2 > TXN_RETRY_MAX_MS ? TXN_RETRY_MAX_MS : pause * 2;
    }
}

/* A durable batch: count it, produce its acks, queue it for the commit. */
void cv_pipeline_i_ack_batch(cv_pipeline *p, batch *b) {
    OBSERVE(p, stored, b->recs, b->n, b->pg_us, b->log_us);
    cv_pipeline_i_log(
        p, CV_LOG_DEBUG, "batch stored",
        "records=%zu pg_us=%" PRId64 " log_us=%" PRId64 " first_record_age_ms=%" PRId64,
        b->n, b->pg_us, b->log_us,
        b->recs[0].timestamp_ms >= 0 ? cv_now_us() / 1000 - b->recs[0].timestamp_ms
                                     : (int64_t)-1);
    pending *pb = calloc(1, sizeof(*pb));
    if (!pb) {
        /* Not queued, so nothing would hold the commit below it. */
        cv_pipeline_i_set_fatal(p, "out of memory queueing a stored batch for its acks");
        cv_pipeline_i_make_hole(p, b, p->fatal_err);
        return;
    }
    pb->offsets = b->offsets;
    b->offsets = NULL;
    for (size_t i = 0; i < b->n; i++) {
        int s = b->recs[i].status;
        p->stats.persisted += s == CHATVAULT__V1__ACK_STATUS__PERSISTED;
        p->stats.duplicates += s == CHATVAULT__V1__ACK_STATUS__DUPLICATE;
    }
    p->stats.batches++;
    if (p->obs.acked && (pb->notes = calloc(b->n, sizeof(cv_ack_note)))) {
        pb->nnotes = b->n;
        for (size_t i = 0; i < b->n; i++) {
            const cv_rec *r = &b->recs[i];
            cv_ack_note *note = &pb->notes[i];
            note->topic = intern_topic(p, r->topic);
            note->partition = r->partition;
            note->offset = r->offset;
            note->sent_at_us = r->env.msg ? r->env.msg->sent_at_us : 0;
            note->timestamp_ms = r->timestamp_ms;
            note->status = r->status;
            note->stores = r->stores;
            if (!note->topic)
                pb->nnotes = 0;
        }
    }
    char err[512];
    int r = cv_acker_transactional(p->acker)
                ? ack_batch_txn(p, b, pb, err, sizeof(err))
                : cv_acker_send(p->acker, b->recs, b->n, &pb->ticket, err, sizeof(err));
    if (r == -ECANCELED) {
        cv_pipeline_i_make_hole(p, b,
                                "stopping while the acks' transaction was tried again");
    } else if (r < 0) {
        cv_pipeline_i_set_fatal(p, err);
        cv_pipeline_i_make_hole(p, b, err);
    }
    /* Queued even after a failure: the acks produced so far still count,
     * and the ticket never completes, so nothing past it is committed. */
    if (r < 0 || p->fatal) {
        pb->ticket.outstanding++;
        pb->given_up = true;
    }
    *p->tail = pb;
    p->tail = &pb->next;
}

/* Waits for every pending ack, then commits synchronously. */
void cv_pipeline_i_drain_acks(cv_pipeline *p, int64_t timeout_ms) {
    int64_t deadline = cv_mono_ms() + timeout_ms;
    while (p->head && !p->head->given_up && cv_mono_ms() < deadline) {
        cv_acker_poll(p->acker, 20);
        cv_pipeline_i_commit_completed(p, true);
    }
    cv_pipeline_i_commit_completed(p, false);
    if (p->head && !p->head->given_up) /* a given-up one was logged already */
        cv_pipeline_i_log(p, CV_LOG_WARN,
                          "acks still undelivered after the drain timeout; their "
                          "records stay uncommitted and will be re-delivered",
                          "timeout_ms=%" PRId64, timeout_ms);
}
