/*
 * pipeline — see pipeline.h. This file is the poll and batch loop: it
 * fills a batch from the consumer, decodes it, hands it to the store
 * thread and takes the verdict, retries while a store is down, and owns
 * the pipeline's lifetime. The acks and the commit are pipeline_ack.c's,
 * partition assignment and revocation pipeline_rebalance.c's; what they
 * share is in pipeline_internal.h.
 *
 * Threading: everything here runs on the thread that calls
 * cv_pipeline_run, except store_main, the store thread, which touches only
 * the batch it was handed (under store_thread.mu) and the stores.
 *
 * Three stages overlap. The stores write one batch on their own thread
 * while this thread polls, decodes and fills the next; a written batch's
 * acks are produced and the batch waits in a FIFO with a ticket counting
 * its undelivered acks, and the offsets of the longest prefix of fully
 * delivered batches are committed. Batches enter the stores, and leave
 * them, in consumption order, so nothing is ever committed past an unacked
 * record. Retries after a store failure run on this thread, with the
 * partitions paused.
 *
 * Batches are numbered in that order. The first one this process gives up
 * without making it durable (stop asked for during its retries, a fatal
 * store error, out of memory) or without producing all its acks is
 * remembered as a hole: no batch numbered from it on is stored, acked or
 * committed, whatever becomes of the stores, so Kafka re-delivers the hole
 * and everything after it to the next consumer. The batches before it keep
 * their acks and their commit. A revoke that gives the batches in flight up
 * leaves no hole: their partitions are gone, and a later assignment starts
 * from Kafka's committed offset again.
 */
#include "ingest/pipeline_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "ingest/acker.h"
#include "ingest/envelope.h"
#include "ingest/stores.h"
#include "record.h"
#include "util.h"

#define KAFKA_START_TIMEOUT_MS 10000
/* Decoding takes at most ~20 times a record's wire size (a map of tiny
 * attributes is the worst case), so this bound is never what stops a
 * batch that batch.max_bytes admitted. */
#define ARENA_LIMIT(max_bytes) ((size_t)(max_bytes)*32 + ((size_t)64 << 20))

void cv_pipeline_i_log(cv_pipeline *p, cv_log_level level, const char *msg,
                       const char *fmt, ...) {
    if (!p->log_fn)
        return;
    char kv[1024] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(kv, sizeof(kv), fmt, ap);
        va_end(ap);
    }
    p->log_fn(p->log_opaque, level, msg, kv);
}

void cv_pipeline_i_set_fatal(cv_pipeline *p, const char *err) {
    if (!p->fatal) {
        p->fatal = 1;
        snprintf(p->fatal_err, sizeof(p->fatal_err), "%s", err);
    }
}

/* True when `b` comes at or after the hole: it must not be stored, acked
 * or committed. */
static bool past_hole(const cv_pipeline *p, const batch *b) {
    return p->hole && b->seq >= p->hole;
}

/* Gives `b` up: from it on, nothing is stored, acked or committed. */
void cv_pipeline_i_make_hole(cv_pipeline *p, const batch *b, const char *why) {
    if (p->hole && p->hole <= b->seq)
        return;
    p->hole = b->seq;
    if (b->n == 0)
        return;
    cv_pipeline_i_log(
        p, CV_LOG_WARN,
        "a batch was given up before it was acked; nothing after it is stored, "
        "acked or committed, and Kafka re-delivers it after a restart",
        "reason=\"%s\" records=%zu first=%s/%" PRId32 "@%" PRId64, why, b->n,
        b->recs[0].topic, b->recs[0].partition, b->recs[0].offset);
}

void cv_pipeline_i_release_batch(batch *b) {
    for (size_t i = 0; i < b->n; i++)
        rd_kafka_message_destroy(b->recs[i].rkm);
    b->n = 0;
    b->bytes = 0;
    if (b->offsets)
        rd_kafka_topic_partition_list_destroy(b->offsets);
    b->offsets = NULL;
    cv_arena_reset(b->arena);
}

/* Decodes the batch. -ENOMEM when memory ran out: a valid record must not
 * be rejected for that, so the batch is given up (uncommitted) instead.
 * The arena's bound is far above what batch.max_bytes lets a batch need
 * (see ARENA_LIMIT), so only a real allocation failure gets here. */
static int decode_batch(cv_pipeline *p, batch *b) {
    for (size_t i = 0; i < b->n; i++) {
        cv_rec *r = &b->recs[i];
        int rc = cv_envelope_decode(&p->rules, r->topic, r->rkm->payload, r->rkm->len,
                                    b->arena, &r->env);
        if (rc == -ENOMEM)
            return rc;
        if (!cv_rec_valid(r)) {
            r->status = CHATVAULT__V1__ACK_STATUS__REJECTED;
            p->stats.rejected++;
            p->stats.rejected_by_reason[r->env.reason & 15]++;
            cv_pipeline_i_log(p, CV_LOG_WARN, "record rejected",
                              "topic=%s partition=%" PRId32 " offset=%" PRId64
                              " reason=%s error=\"%s\"",
                              r->topic, r->partition, r->offset,
                              cv_reject_reason_name(r->env.reason), r->env.error);
        }
    }
    OBSERVE(p, consumed, b->recs, b->n);
    return 0;
}

/* The store thread: writes each batch it is handed and posts the verdict. */
static void *store_main(void *arg) {
    cv_pipeline *p = arg;
    store_thread *t = &p->st;
    pthread_setname_np(pthread_self(), "cv-store");
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->job && !t->quit)
            pthread_cond_wait(&t->cv, &t->mu);
        if (t->quit)
            break;
        batch *b = t->job;
        t->job = NULL;
        pthread_mutex_unlock(&t->mu);
        b->result = cv_stores_write(p->stores, b->recs, b->n, b->offsets, &b->pg_us,
                                    &b->log_us, b->err, sizeof(b->err));
        pthread_mutex_lock(&t->mu);
        t->done = b;
        pthread_cond_broadcast(&t->cv);
        /* The pipeline thread may be inside a consumer poll: end it, so
         * the batch's acks go out now rather than when a record arrives or
         * the poll times out. */
        if (t->wake)
            rd_kafka_queue_yield(t->wake);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* Whether the store thread's verdict on p->storing is in (a look: it stays
 * for store_wait). */
static bool store_ready(cv_pipeline *p) {
    pthread_mutex_lock(&p->st.mu);
    bool ready = p->st.done != NULL;
    pthread_mutex_unlock(&p->st.mu);
    return ready;
}

/* Waits up to `ms` for the store thread's verdict on p->storing; NULL if
 * none yet. */
static batch *store_wait(cv_pipeline *p, int ms) {
    store_thread *t = &p->st;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += (long)ms * 1000000;
    until.tv_sec += until.tv_nsec / 1000000000;
    until.tv_nsec %= 1000000000;
    pthread_mutex_lock(&t->mu);
    while (!t->done && ms > 0 &&
           pthread_cond_timedwait(&t->cv, &t->mu, &until) != ETIMEDOUT)
        ;
    batch *b = t->done;
    t->done = NULL;
    pthread_mutex_unlock(&t->mu);
    if (b)
        p->storing = NULL;
    return b;
}

/* Keeps the consumer group membership alive while a store is down: the
 * assigned partitions are paused, so polling returns no records (librdkafka
 * drops what it had prefetched and, on resume, fetches again from the
 * position after the last record it returned). A rebalance may run inside
 * the poll; see rebalance_cb for what it does to the batches in flight. */
static void poll_paused(cv_pipeline *p, bool pause) {
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (rd_kafka_assignment(p->consumer, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    if (pause)
        rd_kafka_pause_partitions(p->consumer, parts);
    else
        rd_kafka_resume_partitions(p->consumer, parts);
    rd_kafka_topic_partition_list_destroy(parts);
}

/* The observer's tick while the partitions are paused: no fetch brings
 * news of where they end, so the lag would stand still while messages pile
 * up in Kafka. Asks for the ends (one ListOffsets per leader, timestamp -1
 * meaning the latest) and hands them over, about once a second. It blocks
 * this thread up to 200 ms, and librdkafka answers for all partitions or
 * none: a tick without them reads the cached watermarks, as outside a pause. */
static void tick_paused(cv_pipeline *p) {
    int64_t now = cv_mono_ms();
    if (!p->obs.tick || now - p->last_tick_ms < 1000)
        return;
    p->last_tick_ms = now;
    rd_kafka_topic_partition_list_t *ends = NULL;
    if (rd_kafka_assignment(p->consumer, &ends) != RD_KAFKA_RESP_ERR_NO_ERROR || !ends)
        return;
    for (int i = 0; i < ends->cnt; i++)
        ends->elems[i].offset = -1;
    bool ok = ends->cnt > 0 && rd_kafka_offsets_for_times(p->consumer, ends, 200) ==
                                   RD_KAFKA_RESP_ERR_NO_ERROR;
    p->obs.tick(p->obs.opaque, p->consumer, ok ? ends : NULL);
    rd_kafka_topic_partition_list_destroy(ends);
}

static void serve_while_waiting(cv_pipeline *p, int64_t ms) {
    int64_t until = cv_mono_ms() + ms;
    while (cv_mono_ms() < until && !cv_pipeline_i_stopping(p) && !p->abandon) {
        if (!p->in_rebalance) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(p->consumer, 0);
            if (m) /* paused: only errors and events arrive */
                rd_kafka_message_destroy(m);
            tick_paused(p);
        }
        cv_acker_poll(p->acker, 50);
        cv_pipeline_i_commit_completed(p, true);
    }
}

/* Writes a batch the first attempt could not make durable, on this thread,
 * waiting out the stores with the partitions paused while the acks of
 * earlier batches keep flowing. Returns 0 when durable; -ECANCELED when
 * asked to stop, or when a rebalance took the partitions away, first. */
static int store_retry(cv_pipeline *p, batch *b) {
    bool paused = false;
    int r = b->result;
    p->in_store = true;
    p->retrying = b;
    cv_pipeline_i_log(p, CV_LOG_WARN,
                      "batch not durable; not acking, waiting for the stores",
                      "error=\"%s\"", b->err);
    while (r == -EAGAIN) {
        p->stats.store_errors++;
        if (!paused) {
            poll_paused(p, true);
            paused = true;
        }
        int64_t wait = cv_stores_retry_ms(p->stores);
        serve_while_waiting(p, wait < 20 ? 20 : wait);
        if (cv_pipeline_i_stopping(p) || p->abandon) {
            r = -ECANCELED;
            break;
        }
        r = cv_stores_write(p->stores, b->recs, b->n, b->offsets, &b->pg_us, &b->log_us,
                            b->err, sizeof(b->err));
    }
    if (r != 0 && r != -ECANCELED)
        cv_pipeline_i_set_fatal(p, b->err);
    if (paused && !p->abandon) {
        poll_paused(p, false);
        if (r == 0)
            cv_pipeline_i_log(p, CV_LOG_INFO, "stores are back; acking again", NULL);
    }
    p->in_store = false;
    p->retrying = NULL;
    return r;
}

/* Takes the batch the store thread finished the rest of the way: acks when
 * it is durable, retries when it is not yet, and gives it up, leaving a
 * hole, when it cannot be made durable. A batch past the hole is given up
 * even when it is durable: acking it would let its commit pass the hole.
 * Returns true when a revoke made it give the batch up (the next one must
 * go too). */
static bool complete_stored(cv_pipeline *p, batch *b) {
    bool abandoned = false;
    if (past_hole(p, b)) {
        cv_pipeline_i_log(p, CV_LOG_INFO, "batch after a given-up one not acked",
                          "records=%zu durable=%s", b->n, b->result == 0 ? "yes" : "no");
        cv_pipeline_i_release_batch(b);
        return false;
    }
    if (b->result == -EAGAIN)
        b->result = store_retry(p, b);
    if (b->result == 0) {
        cv_pipeline_i_ack_batch(p, b);
    } else if (b->result == -ECANCELED && p->abandon) {
        abandoned = true;
    } else {
        if (b->result != -ECANCELED)
            cv_pipeline_i_set_fatal(p, b->err);
        cv_pipeline_i_make_hole(p, b, b->result == -ECANCELED ? "stopping" : b->err);
    }
    p->abandon = false;
    /* Not stored means not acked and not committed: Kafka re-delivers. */
    cv_pipeline_i_release_batch(b);
    return abandoned;
}

/* Waits for the verdict on the batch at the store thread, acks of earlier
 * batches flowing meanwhile. */
static batch *wait_stored(cv_pipeline *p) {
    batch *b;
    while (!(b = store_wait(p, 20))) {
        cv_acker_poll(p->acker, 0);
        cv_pipeline_i_commit_completed(p, true);
    }
    return b;
}

/* Waits for the batch at the store thread and completes it. */
bool cv_pipeline_i_finish_storing(cv_pipeline *p) {
    if (!p->storing)
        return false;
    return complete_stored(p, wait_stored(p));
}

/* Gives a decoded batch to the store thread; the other buffer fills. */
static void hand_over(cv_pipeline *p, batch *b) {
    b->result = 0;
    store_thread *t = &p->st;
    pthread_mutex_lock(&t->mu);
    t->job = b;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    p->storing = b;
    p->fill = b == &p->bufs[0] ? &p->bufs[1] : &p->bufs[0];
}

/* Hands the filled batch to the store thread once the one before it is
 * durable, so batches enter and leave the stores in order, and starts a new
 * one. The batch is decoded while the one before it is still being
 * written, and when that one is durable the stores take this one at once
 * and the acks of that one are produced meanwhile: the stores (PostgreSQL's
 * backend above all) do not wait for this thread between batches. */
static void submit_fill(cv_pipeline *p) {
    batch *b = p->fill;
    if (b->n == 0)
        return;
    b->seq = ++p->seq;
    if (b->n >= p->cap || (int64_t)b->bytes >= p->max_bytes)
        atomic_store_explicit(&p->full_at_ms, cv_mono_ms(), memory_order_relaxed);
    if (past_hole(p, b)) {
        cv_pipeline_i_release_batch(b);
        return;
    }
    if (decode_batch(p, b) < 0) {
        cv_pipeline_i_set_fatal(p, "out of memory decoding a batch; its records stay "
                                   "uncommitted and are re-delivered after a restart");
        cv_pipeline_i_make_hole(p, b, p->fatal_err);
        cv_pipeline_i_release_batch(b);
        return;
    }
    b->offsets = cv_pipeline_i_batch_offsets(b->recs, b->n);
    if (p->storing) {
        batch *prev = wait_stored(p);
        if (prev->result == 0) {
            hand_over(p, b);
            complete_stored(p, prev);
            return;
        }
        /* Not durable yet: retried here first; a revoke meanwhile gives
         * up this batch too, and so does a hole left by the one before. */
        if (complete_stored(p, prev) || past_hole(p, b)) {
            cv_pipeline_i_release_batch(b);
            return;
        }
    }
    hand_over(p, b);
}

/* Finishes every batch in flight (or, after a revoke that found the stores
 * down, gives them up) and waits for every pending ack (up to
 * `timeout_ms`), then commits synchronously. */
void cv_pipeline_i_drain(cv_pipeline *p, int64_t timeout_ms) {
    submit_fill(p);
    cv_pipeline_i_finish_storing(p);
    cv_pipeline_i_drain_acks(p, timeout_ms);
}

static void stores_log(void *opaque, cv_log_level level, const char *msg,
                       const char *kv) {
    cv_pipeline *p = opaque;
    if (p->log_fn)
        p->log_fn(p->log_opaque, level, msg, kv);
}

static void stores_error(void *opaque, unsigned store, const char *error) {
    cv_pipeline *p = opaque;
    OBSERVE(p, store_error, store, error);
}

static void stores_ok(void *opaque, unsigned store) {
    cv_pipeline *p = opaque;
    OBSERVE(p, store_ok, store);
}

static void stores_torn(void *opaque, uint64_t bytes, uint64_t records) {
    cv_pipeline *p = opaque;
    OBSERVE(p, log_torn, bytes, records);
}

static void stores_degraded(void *opaque, int on) {
    cv_pipeline *p = opaque;
    OBSERVE(p, degraded, on);
}

static void stores_log_generation(void *opaque, const char *topic, int32_t partition) {
    cv_pipeline *p = opaque;
    OBSERVE(p, log_generation, topic, partition);
}

static char *xstrdup(const char *s, int *oom) {
    char *d = strdup(s ? s : "");
    if (!d)
        *oom = 1;
    return d;
}

/* Creates the consumer (it takes cconf over; on failure cconf is gone
 * too), checks that Kafka answers, starts the store thread and subscribes.
 * On failure p is left for cv_pipeline_free. */
static int start_consumer(cv_pipeline *p, rd_kafka_conf_t *cconf, char *errbuf,
                          size_t errlen) {
    char kerr[512], bootstrap[512] = "?";
    size_t blen = sizeof(bootstrap);
    rd_kafka_conf_get(cconf, "bootstrap.servers", bootstrap, &blen);
    rd_kafka_conf_set_opaque(cconf, p);
    rd_kafka_conf_set_rebalance_cb(cconf, cv_pipeline_i_rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(cconf, cv_pipeline_i_commit_cb);
    p->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cconf, kerr, sizeof(kerr));
    if (!p->consumer) {
        snprintf(errbuf, errlen, "kafka: cannot create the consumer: %s", kerr);
        rd_kafka_conf_destroy(cconf);
        return -EINVAL;
    }
    rd_kafka_poll_set_consumer(p->consumer);
    /* librdkafka connects lazily and retries forever: ask once, so that a
     * wrong or dead address is a clear error at start, not a silent wait. */
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t merr =
        rd_kafka_metadata(p->consumer, 1, NULL, &md, KAFKA_START_TIMEOUT_MS);
    if (md)
        rd_kafka_metadata_destroy(md);
    if (merr) {
        snprintf(errbuf, errlen,
                 "kafka: cannot reach %s (kafka.bootstrap.servers) within %d s: %s",
                 bootstrap, KAFKA_START_TIMEOUT_MS / 1000, rd_kafka_err2str(merr));
        return -EHOSTUNREACH;
    }
    pthread_mutex_init(&p->st.mu, NULL);
    pthread_cond_init(&p->st.cv, NULL);
    p->st.wake = rd_kafka_queue_get_consumer(p->consumer);
    if (pthread_create(&p->st.tid, NULL, store_main, p) != 0) {
        snprintf(errbuf, errlen, "cannot start the store thread");
        return -EAGAIN;
    }
    p->st.started = true;
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, p->pattern, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(p->consumer, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (err) {
        snprintf(errbuf, errlen, "kafka: cannot subscribe to %s: %s", p->pattern,
                 rd_kafka_err2str(err));
        return -EINVAL;
    }
    return 0;
}

int cv_pipeline_new(const cv_pipeline_conf *c, cv_pipeline **ret, char *errbuf,
                    size_t errlen) {
    rd_kafka_conf_t *cconf = c->consumer_conf, *pconf = c->producer_conf;
    int oom = 0, r;
    cv_pipeline *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(errbuf, errlen, "out of memory");
        rd_kafka_conf_destroy(cconf);
        rd_kafka_conf_destroy(pconf);
        return -ENOMEM;
    }
    atomic_init(&p->full_at_ms, 0);
    p->group = xstrdup(c->group, &oom);
    p->pattern = xstrdup(c->topics_pattern, &oom);
    p->prefix = xstrdup(c->topics_prefix, &oom);
    p->ack_topic = xstrdup(c->ack_topic, &oom);
    p->dlq_topic = xstrdup(c->dlq_topic, &oom);
    p->max_messages = c->batch_max_messages;
    p->max_bytes = c->batch_max_bytes;
    p->max_ms = c->batch_max_ms;
    p->shutdown_timeout_ms = c->shutdown_timeout_ms;
    p->log_fn = c->log;
    p->log_opaque = c->log_opaque;
    if (c->observer)
        p->obs = *c->observer;
    p->tail = &p->head;
    p->rules.topic_prefix = p->prefix;
    p->rules.max_body_bytes = (size_t)c->max_body_bytes;
    p->rules.ack_topic = p->ack_topic;
    p->rules.dlq_topic = p->dlq_topic;
    p->cap = (size_t)p->max_messages;
    for (int i = 0; i < 2; i++) {
        p->bufs[i].recs = calloc(p->cap, sizeof(cv_rec));
        p->bufs[i].arena = cv_arena_new(ARENA_LIMIT(p->max_bytes));
        if (!p->bufs[i].recs || !p->bufs[i].arena)
            oom = 1;
    }
    p->fill = &p->bufs[0];
    if (oom) {
        snprintf(errbuf, errlen, "out of memory");
        rd_kafka_conf_destroy(cconf);
        rd_kafka_conf_destroy(pconf);
        cv_pipeline_free(p);
        return -ENOMEM;
    }

    cv_stores_conf sc = {
        .pg_conninfo = c->pg_conninfo,
        .pg_connections = c->pg_connections ? c->pg_connections : 1,
        .group = p->group,
        .log_dir = c->log_dir,
        .log_keys = c->log_keys,
        .log_segment_bytes = c->log_segment_bytes,
        .log_sync = c->log_sync,
        .policy = c->ack_policy,
        .offsets_comparable = !c->fresh_cluster,
        .rules = &p->rules,
        .max_batch = p->cap,
        .events = {.opaque = p,
                   .log = stores_log,
                   .store_error = stores_error,
                   .store_ok = stores_ok,
                   .degraded = stores_degraded,
                   .log_generation = stores_log_generation,
                   .log_torn = stores_torn},
    };
    r = cv_stores_open(&sc, &p->stores, errbuf, errlen);
    if (r < 0) {
        rd_kafka_conf_destroy(cconf);
        rd_kafka_conf_destroy(pconf);
        cv_pipeline_free(p);
        return r;
    }
    r = cv_acker_new(pconf, p->ack_topic, p->dlq_topic, p->prefix, &p->acker, errbuf,
                     errlen);
    if (r < 0) {
        rd_kafka_conf_destroy(cconf);
        cv_pipeline_free(p);
        return r;
    }
    r = start_consumer(p, cconf, errbuf, errlen);
    if (r < 0) {
        cv_pipeline_free(p);
        return r;
    }
    *ret = p;
    return 0;
}

static void add_record(cv_pipeline *p, rd_kafka_message_t *m) {
    batch *b = p->fill;
    if (b->n == 0)
        b->started_ms = cv_mono_ms();
    cv_rec *r = &b->recs[b->n++];
    memset(r, 0, sizeof(*r));
    r->rkm = m;
    r->topic = rd_kafka_topic_name(m->rkt);
    r->partition = m->partition;
    r->offset = m->offset;
    rd_kafka_timestamp_type_t tstype;
    r->timestamp_ms = rd_kafka_message_timestamp(m, &tstype);
    b->bytes += m->len + m->key_len;
    p->stats.consumed++;
}

int cv_pipeline_run(cv_pipeline *p, volatile sig_atomic_t *stop, char *errbuf,
                    size_t errlen) {
    p->stop = stop;
    cv_pipeline_i_log(
        p, CV_LOG_INFO,
        "waiting for the consumer group to assign partitions (a first join takes a "
        "few seconds; each assignment is logged)",
        "group=%s", p->group);
    int64_t last_serve = cv_mono_ms();
    while (!*stop && !p->fatal) {
        batch *f = p->fill;
        int timeout = p->storing ? 5 : 100;
        int64_t now = cv_mono_ms();
        if (f->n && !p->storing) {
            /* The stores are idle: wait for more only until it is due. */
            int64_t left = f->started_ms + p->max_ms - now;
            timeout = left < timeout ? (left > 0 ? (int)left : 0) : timeout;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(p->consumer, timeout);
        if (m && m->err) {
            if (m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                cv_pipeline_i_log(p, CV_LOG_INFO,
                                  "no topic matches topics.pattern yet; waiting",
                                  "detail=\"%s\"", rd_kafka_message_errstr(m));
            else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                cv_pipeline_i_log(p, CV_LOG_WARN, "consumer error",
                                  "error=\"%s\" topic=%s", rd_kafka_message_errstr(m),
                                  m->rkt ? rd_kafka_topic_name(m->rkt) : "-");
            rd_kafka_message_destroy(m);
            m = NULL;
        }
        if (m)
            add_record(p, m);
        now = cv_mono_ms();
        /* A batch is due when it is full, or when nothing more is waiting
         * (the poll came back empty) or batch.max_ms has passed. A full one
         * goes to the stores as soon as they are free; a due one when they
         * are idle, and meanwhile it keeps filling. */
        f = p->fill;
        bool full = f->n >= p->cap || (int64_t)f->bytes >= p->max_bytes;
        bool due =
            f->n && (full || !m || (p->max_ms > 0 && now - f->started_ms >= p->max_ms));
        if (p->storing && store_ready(p)) {
            /* The batch at the stores is done (its verdict ended the poll
             * above): hand the due one over first, so the stores do not
             * wait while that one's acks are produced; otherwise ack it now
             * rather than when the next one is ready, or a quiet channel
             * waits for a busy one. */
            if (due) {
                submit_fill(p);
            } else {
                batch *done = store_wait(p, 0);
                if (done && complete_stored(p, done))
                    cv_pipeline_i_release_batch(p->fill);
            }
        } else if (due && (full || !p->storing)) {
            submit_fill(p);
        }
        if (!m || now - last_serve >= 10) {
            cv_acker_poll(p->acker, 0);
            cv_pipeline_i_commit_completed(p, true);
            last_serve = now;
        }
        if (now - p->last_tick_ms >= 1000) {
            OBSERVE(p, tick, p->consumer, NULL);
            p->last_tick_ms = now;
        }
    }
    cv_pipeline_i_drain(p, p->shutdown_timeout_ms);
    cv_pipeline_i_log_acks_again(p, true);
    rd_kafka_consumer_close(p->consumer);
    if (p->fatal) {
        snprintf(errbuf, errlen, "%s", p->fatal_err);
        return -EIO;
    }
    return 0;
}

bool cv_pipeline_saturated(const cv_pipeline *p, int64_t within_ms) {
    int64_t at = atomic_load_explicit(&p->full_at_ms, memory_order_relaxed);
    return at > 0 && cv_mono_ms() - at <= within_ms;
}

void cv_pipeline_get_stats(const cv_pipeline *p, cv_pipeline_stats *ret) {
    *ret = p->stats;
}

cv_pipeline *cv_pipeline_free(cv_pipeline *p) {
    if (!p)
        return NULL;
    if (p->st.started) {
        cv_pipeline_i_finish_storing(p);
        pthread_mutex_lock(&p->st.mu);
        p->st.quit = true;
        pthread_cond_broadcast(&p->st.cv);
        pthread_mutex_unlock(&p->st.mu);
        pthread_join(p->st.tid, NULL);
        pthread_mutex_destroy(&p->st.mu);
        pthread_cond_destroy(&p->st.cv);
    }
    if (p->st.wake)
        rd_kafka_queue_destroy(p->st.wake);
    for (int i = 0; i < 2; i++)
        if (p->bufs[i].arena)
            cv_pipeline_i_release_batch(&p->bufs[i]);
    while (p->head) {
        pending *b = p->head;
        p->head = b->next;
        cv_pipeline_i_pending_free(b);
    }
    for (interned *t = p->topics, *n; t; t = n) {
        n = t->next;
        free(t);
    }
    if (p->consumer)
        rd_kafka_destroy(p->consumer);
    if (p->committed_hw)
        rd_kafka_topic_partition_list_destroy(p->committed_hw);
    p->acker = cv_acker_free(p->acker, 5000);
    p->stores = cv_stores_free(p->stores);
    for (int i = 0; i < 2; i++) {
        cv_arena_free(p->bufs[i].arena);
        free(p->bufs[i].recs);
    }
    free(p->group);
    free(p->pattern);
    free(p->prefix);
    free(p->ack_topic);
    free(p->dlq_topic);
    free(p);
    return NULL;
}
