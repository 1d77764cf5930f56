/*
 * pipeline — see pipeline.h.
 *
 * Batches are written to the stores one at a time, but their acks are not
 * waited for before the next batch is read: each written batch waits in a
 * FIFO with a ticket counting its undelivered acks, and the offsets of the
 * longest prefix of fully delivered batches are committed. That keeps the
 * store busy while acks travel, without ever committing past an unacked
 * record.
 */
#include "pipeline.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acker.h"
#include "arena.h"
#include "envelope.h"
#include "stores.h"
#include "record.h"
#include "util.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define ARENA_LIMIT ((size_t)4 << 30)

/* A batch whose records are stored and whose acks are on their way. */
typedef struct pending {
    struct pending *next;
    cv_ack_ticket ticket;
    rd_kafka_topic_partition_list_t *offsets; /* next offset per partition */
    cv_ack_note *notes;                       /* for the observer, or NULL */
    size_t nnotes;
} pending;

/* Topic names outlive the Kafka messages that carried them: the observer
 * sees them after the batch is released. A few hundred topics at most. */
typedef struct interned {
    struct interned *next;
    char name[];
} interned;

struct cv_pipeline {
    char *group, *pattern, *prefix, *ack_topic, *dlq_topic;
    int64_t max_messages, max_bytes, max_ms, shutdown_timeout_ms;
    cv_pipeline_log_fn *log_fn;
    void *log_opaque;
    cv_pipeline_observer obs;
    interned *topics;
    int64_t last_tick_ms;

    rd_kafka_t *consumer;
    cv_acker *acker;
    cv_stores *stores;
    cv_envelope_rules rules;
    cv_arena *arena;

    /* The batch being filled. */
    cv_rec *recs;
    size_t n, cap, bytes;
    int64_t started_ms;

    pending *head, **tail;
    bool in_store;      /* store_batch is waiting for a store */
    bool abandon;       /* a revoke came meanwhile: give the batch up */
    volatile sig_atomic_t *stop;
    int fatal;
    char fatal_err[512];
    cv_pipeline_stats stats;
};

static void plog(cv_pipeline *p, int level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void plog(cv_pipeline *p, int level, const char *msg, const char *fmt, ...) {
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

#define OBSERVE(p, fn, ...)                                                    \
    do {                                                                       \
        if ((p)->obs.fn)                                                       \
            (p)->obs.fn((p)->obs.opaque, __VA_ARGS__);                         \
    } while (0)

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

static void pending_free(pending *b) {
    rd_kafka_topic_partition_list_destroy(b->offsets);
    free(b->notes);
    free(b);
}

static void set_fatal(cv_pipeline *p, const char *err) {
    if (!p->fatal) {
        p->fatal = 1;
        snprintf(p->fatal_err, sizeof(p->fatal_err), "%s", err);
    }
}

static bool stopping(const cv_pipeline *p) { return p->stop && *p->stop; }

/* Offsets to commit: one past the last record of each partition. Records
 * of one partition arrive in order, and usually in runs, so the last
 * partition found is tried first. */
static rd_kafka_topic_partition_list_t *batch_offsets(const cv_rec *recs, size_t n) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    rd_kafka_topic_partition_t *last = NULL;
    for (size_t i = 0; i < n; i++) {
        const cv_rec *r = &recs[i];
        if (!last || last->partition != r->partition || strcmp(last->topic, r->topic) != 0) {
            last = rd_kafka_topic_partition_list_find(l, r->topic, r->partition);
            if (!last)
                last = rd_kafka_topic_partition_list_add(l, r->topic, r->partition);
        }
        last->offset = r->offset + 1;
    }
    return l;
}

/* Commits the offsets of every completed batch at the head of the FIFO. */
static void commit_completed(cv_pipeline *p, bool async) {
    rd_kafka_topic_partition_list_t *commit = NULL;
    while (p->head && p->head->ticket.outstanding == 0) {
        pending *b = p->head;
        if (!commit)
            commit = rd_kafka_topic_partition_list_new(b->offsets->cnt);
        for (int i = 0; i < b->offsets->cnt; i++) {
            rd_kafka_topic_partition_t *src = &b->offsets->elems[i];
            rd_kafka_topic_partition_t *dst =
                rd_kafka_topic_partition_list_find(commit, src->topic, src->partition);
            if (!dst)
                dst = rd_kafka_topic_partition_list_add(commit, src->topic,
                                                        src->partition);
            if (src->offset > dst->offset)
                dst->offset = src->offset;
        }
        p->stats.acked += b->ticket.delivered;
        p->stats.committed_batches++;
        p->head = b->next;
        if (!p->head)
            p->tail = &p->head;
        if (b->notes)
            OBSERVE(p, acked, b->notes, b->nnotes);
        pending_free(b);
    }
    if (!commit)
        return;
    rd_kafka_resp_err_t err = rd_kafka_commit(p->consumer, commit, async ? 1 : 0);
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        plog(p, 2, "offset commit failed; the records will be re-delivered and "
                   "deduplicated",
             "error=\"%s\"", rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_destroy(commit);
}

static void release_batch(cv_pipeline *p) {
    for (size_t i = 0; i < p->n; i++)
        rd_kafka_message_destroy(p->recs[i].rkm);
    p->n = 0;
    p->bytes = 0;
    cv_arena_reset(p->arena);
}

static void decode_batch(cv_pipeline *p) {
    for (size_t i = 0; i < p->n; i++) {
        cv_rec *r = &p->recs[i];
        int rc = cv_envelope_decode(&p->rules, r->topic, r->rkm->payload,
                                    r->rkm->len, p->arena, &r->env);
        if (rc == -ENOMEM) {
            /* The arena's bound: treat as undecodable rather than fail the
             * batch forever. */
            r->env.reason = CV_REJECT_DECODE;
            snprintf(r->env.error, sizeof(r->env.error),
                     "record does not fit the decoder's memory bound");
        }
        if (!cv_rec_valid(r)) {
            r->status = CHATVAULT__V1__ACK_STATUS__REJECTED;
            p->stats.rejected++;
            p->stats.rejected_by_reason[r->env.reason & 15]++;
            plog(p, 2, "record rejected",
                 "topic=%s partition=%" PRId32 " offset=%" PRId64
                 " reason=%s error=\"%s\"",
                 r->topic, r->partition, r->offset,
                 cv_reject_reason_name(r->env.reason), r->env.error);
        }
    }
    OBSERVE(p, consumed, p->recs, p->n);
}

/* Keeps the consumer group membership alive while a store is down: the
 * assigned partitions are paused, so polling returns no records (librdkafka
 * drops what it had prefetched and, on resume, fetches again from the
 * position after the batch in flight). A rebalance may run inside the poll;
 * see rebalance_cb for what it does to the batch in flight. */
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

static void serve_while_waiting(cv_pipeline *p, int64_t ms) {
    int64_t until = cv_mono_ms() + ms;
    while (cv_mono_ms() < until && !stopping(p) && !p->abandon) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(p->consumer, 0);
        if (m) /* paused: only errors and events arrive */
            rd_kafka_message_destroy(m);
        cv_acker_poll(p->acker, 50);
        commit_completed(p, true);
    }
}

/* Writes the batch to the stores, waiting out store failures while the
 * acks of earlier batches keep flowing. Returns 0 when the batch is durable
 * as ack.policy asks; -ECANCELED when asked to stop, or when a rebalance
 * took the partitions away, before the stores came back. */
static int store_batch(cv_pipeline *p, rd_kafka_topic_partition_list_t *offsets) {
    char err[512];
    bool paused = false;
    int r;
    p->in_store = true;
    for (;;) {
        int64_t pg_us, log_us;
        r = cv_stores_write(p->stores, p->recs, p->n, offsets, &pg_us, &log_us,
                            err, sizeof(err));
        if (r == 0) {
            OBSERVE(p, stored, p->recs, p->n, pg_us, log_us);
            plog(p, 0, "batch stored",
                 "records=%zu pg_us=%" PRId64 " log_us=%" PRId64
                 " first_record_age_ms=%" PRId64,
                 p->n, pg_us, log_us,
                 p->recs[0].timestamp_ms >= 0
                     ? cv_now_us() / 1000 - p->recs[0].timestamp_ms
                     : (int64_t)-1);
            break;
        }
        if (r != -EAGAIN) {
            set_fatal(p, err);
            break;
        }
        p->stats.store_errors++;
        if (!paused) {
            plog(p, 2, "batch not durable; not acking, waiting for the stores",
                 "error=\"%s\"", err);
            poll_paused(p, true);
            paused = true;
        }
        int64_t wait = cv_stores_retry_ms(p->stores);
        serve_while_waiting(p, wait < 20 ? 20 : wait);
        if (stopping(p) || p->abandon) {
            r = -ECANCELED;
            break;
        }
    }
    if (paused && !p->abandon) {
        poll_paused(p, false);
        if (r == 0)
            plog(p, 1, "stores are back; acking again", NULL);
    }
    p->in_store = false;
    p->abandon = false;
    return r;
}

/* Takes the batch being filled through the stores and hands it to the
 * acker. On return the batch is empty (its records are either acked-to-be
 * or left uncommitted for re-delivery). */
static void process_batch(cv_pipeline *p) {
    if (p->n == 0)
        return;
    decode_batch(p);
    pending *b = calloc(1, sizeof(*b));
    if (!b) {
        set_fatal(p, "out of memory");
        release_batch(p);
        return;
    }
    b->offsets = batch_offsets(p->recs, p->n);
    if (store_batch(p, b->offsets) < 0) {
        /* Not stored, so not acked and not committed: Kafka re-delivers. */
        pending_free(b);
        release_batch(p);
        return;
    }
    for (size_t i = 0; i < p->n; i++) {
        int s = p->recs[i].status;
        p->stats.persisted += s == CHATVAULT__V1__ACK_STATUS__PERSISTED;
        p->stats.duplicates += s == CHATVAULT__V1__ACK_STATUS__DUPLICATE;
    }
    p->stats.batches++;
    if (p->obs.acked && (b->notes = calloc(p->n, sizeof(cv_ack_note)))) {
        b->nnotes = p->n;
        for (size_t i = 0; i < p->n; i++) {
            const cv_rec *r = &p->recs[i];
            cv_ack_note *note = &b->notes[i];
            note->topic = intern_topic(p, r->topic);
            note->partition = r->partition;
            note->offset = r->offset;
            note->sent_at_us = r->env.msg ? r->env.msg->sent_at_us : 0;
            note->timestamp_ms = r->timestamp_ms;
            note->status = r->status;
            note->stores = r->stores;
            if (!note->topic)
                b->nnotes = 0;
        }
    }
    char err[512];
    if (cv_acker_send(p->acker, p->recs, p->n, &b->ticket, err, sizeof(err)) < 0)
        set_fatal(p, err);
    /* Queued even after a failure: the acks produced so far still count,
     * and the ticket never completes, so nothing past it is committed. */
    if (p->fatal)
        b->ticket.outstanding++;
    *p->tail = b;
    p->tail = &b->next;
    release_batch(p);
}

/* Finishes the batch in flight and waits for every pending ack (up to
 * `timeout_ms`), then commits synchronously. */
static void drain_acks(cv_pipeline *p, int64_t timeout_ms);

static void drain(cv_pipeline *p, int64_t timeout_ms) {
    process_batch(p);
    drain_acks(p, timeout_ms);
}

/* Waits for every pending ack, then commits synchronously. */
static void drain_acks(cv_pipeline *p, int64_t timeout_ms) {
    int64_t deadline = cv_mono_ms() + timeout_ms;
    while (p->head && cv_mono_ms() < deadline) {
        cv_acker_poll(p->acker, 20);
        commit_completed(p, true);
    }
    commit_completed(p, false);
    if (p->head)
        plog(p, 2, "acks still undelivered after the drain timeout; their "
                   "records stay uncommitted and will be re-delivered",
             "timeout_ms=%" PRId64, timeout_ms);
}

static void assign(cv_pipeline *p, rd_kafka_topic_partition_list_t *parts) {
    char err[512];
    for (int i = 0; i < parts->cnt; i++)
        parts->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
    rd_kafka_resp_err_t kerr = rd_kafka_committed(p->consumer, parts, 10000);
    if (kerr)
        plog(p, 2, "cannot read committed offsets; resuming from PostgreSQL's",
             "error=\"%s\"", rd_kafka_err2str(kerr));
    for (int i = 0; i < parts->cnt; i++)
        if (parts->elems[i].err)
            parts->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
    if (cv_stores_resume_offsets(p->stores, parts, err, sizeof(err)) < 0)
        plog(p, 2, "cannot read chatvault.kafka_offsets; resuming from Kafka's "
                   "committed offsets",
             "error=\"%s\"", err);
    for (int i = 0; i < parts->cnt; i++)
        plog(p, 1, "partition assigned",
             "topic=%s partition=%" PRId32 " offset=%" PRId64, parts->elems[i].topic,
             parts->elems[i].partition, parts->elems[i].offset);
    if (strcmp(rd_kafka_rebalance_protocol(p->consumer), "COOPERATIVE") == 0) {
        rd_kafka_error_t *e = rd_kafka_incremental_assign(p->consumer, parts);
        if (e) {
            plog(p, 3, "incremental assign failed", "error=\"%s\"",
                 rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
        }
    } else {
        rd_kafka_assign(p->consumer, parts);
    }
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
    cv_pipeline *p = opaque;
    bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        assign(p, parts);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        if (p->in_store) {
            /* A store is down and the batch in flight is not durable: give
             * it up uncommitted; the next owner is re-delivered it. */
            plog(p, 2, "partitions revoked while a store is down; the batch in "
                       "flight is left for the next owner",
                 "count=%d", parts->cnt);
            p->abandon = true;
            drain_acks(p, p->shutdown_timeout_ms);
        } else {
            plog(p, 1, "partitions revoked; finishing the batch in flight",
                 "count=%d", parts->cnt);
            drain(p, p->shutdown_timeout_ms);
        }
    } else {
        plog(p, 3, "rebalance error", "error=\"%s\"", rd_kafka_err2str(err));
    }
    if (cooperative) {
        rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
        if (e)
            rd_kafka_error_destroy(e);
    } else {
        rd_kafka_assign(rk, NULL);
    }
}

static void stores_log(void *opaque, int level, const char *msg, const char *kv) {
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

static void stores_degraded(void *opaque, int on) {
    cv_pipeline *p = opaque;
    OBSERVE(p, degraded, on);
}

static char *xstrdup(const char *s, int *oom) {
    char *d = strdup(s ? s : "");
    if (!d)
        *oom = 1;
    return d;
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
    p->recs = calloc(p->cap, sizeof(cv_rec));
    p->arena = cv_arena_new(ARENA_LIMIT);
    if (oom || !p->recs || !p->arena) {
        snprintf(errbuf, errlen, "out of memory");
        rd_kafka_conf_destroy(cconf);
        rd_kafka_conf_destroy(pconf);
        cv_pipeline_free(p);
        return -ENOMEM;
    }

    cv_stores_conf sc = {
        .pg_conninfo = c->pg_conninfo,
        .group = p->group,
        .log_dir = c->log_dir,
        .log_keys = c->log_keys,
        .log_segment_bytes = c->log_segment_bytes,
        .policy = c->ack_policy,
        .rules = &p->rules,
        .max_batch = p->cap,
        .events = {.opaque = p,
                   .log = stores_log,
                   .store_error = stores_error,
                   .store_ok = stores_ok,
                   .degraded = stores_degraded},
    };
    r = cv_stores_open(&sc, &p->stores, errbuf, errlen);
    if (r < 0) {
        rd_kafka_conf_destroy(cconf);
        rd_kafka_conf_destroy(pconf);
        cv_pipeline_free(p);
        return r;
    }
    r = cv_acker_new(pconf, p->ack_topic, p->dlq_topic, p->prefix, &p->acker,
                     errbuf, errlen);
    if (r < 0) {
        rd_kafka_conf_destroy(cconf);
        cv_pipeline_free(p);
        return r;
    }
    char kerr[512];
    rd_kafka_conf_set_opaque(cconf, p);
    rd_kafka_conf_set_rebalance_cb(cconf, rebalance_cb);
    p->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cconf, kerr, sizeof(kerr));
    if (!p->consumer) {
        snprintf(errbuf, errlen, "kafka: cannot create the consumer: %s", kerr);
        rd_kafka_conf_destroy(cconf);
        cv_pipeline_free(p);
        return -EINVAL;
    }
    rd_kafka_poll_set_consumer(p->consumer);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, p->pattern, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(p->consumer, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (err) {
        snprintf(errbuf, errlen, "kafka: cannot subscribe to %s: %s", p->pattern,
                 rd_kafka_err2str(err));
        cv_pipeline_free(p);
        return -EINVAL;
    }
    *ret = p;
    return 0;
}

static void add_record(cv_pipeline *p, rd_kafka_message_t *m) {
    if (p->n == 0)
        p->started_ms = cv_mono_ms();
    cv_rec *r = &p->recs[p->n++];
    memset(r, 0, sizeof(*r));
    r->rkm = m;
    r->topic = rd_kafka_topic_name(m->rkt);
    r->partition = m->partition;
    r->offset = m->offset;
    rd_kafka_timestamp_type_t tstype;
    r->timestamp_ms = rd_kafka_message_timestamp(m, &tstype);
    p->bytes += m->len + m->key_len;
    p->stats.consumed++;
}

int cv_pipeline_run(cv_pipeline *p, volatile sig_atomic_t *stop, char *errbuf,
                    size_t errlen) {
    p->stop = stop;
    int64_t last_serve = cv_mono_ms();
    while (!*stop && !p->fatal) {
        int timeout = 100;
        int64_t now = cv_mono_ms();
        if (p->n) {
            int64_t left = p->started_ms + p->max_ms - now;
            timeout = left > 0 ? (int)left : 0;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(p->consumer, timeout);
        if (m && m->err) {
            if (m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART && !m->rkt)
                plog(p, 1, "no topic matches topics.pattern yet; waiting",
                     "detail=\"%s\"", rd_kafka_message_errstr(m));
            else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                plog(p, 2, "consumer error", "error=\"%s\" topic=%s",
                     rd_kafka_message_errstr(m),
                     m->rkt ? rd_kafka_topic_name(m->rkt) : "-");
            rd_kafka_message_destroy(m);
            m = NULL;
        }
        if (m)
            add_record(p, m);
        now = cv_mono_ms();
        if (p->n && (p->n >= p->cap || (int64_t)p->bytes >= p->max_bytes ||
                     now - p->started_ms >= p->max_ms || !m))
            process_batch(p);
        if (!m || now - last_serve >= 10) {
            cv_acker_poll(p->acker, 0);
            commit_completed(p, true);
            last_serve = now;
        }
        if (now - p->last_tick_ms >= 1000) {
            OBSERVE(p, tick, p->consumer);
            p->last_tick_ms = now;
        }
    }
    drain(p, p->shutdown_timeout_ms);
    rd_kafka_consumer_close(p->consumer);
    if (p->fatal) {
        snprintf(errbuf, errlen, "%s", p->fatal_err);
        return -EIO;
    }
    return 0;
}

void cv_pipeline_get_stats(const cv_pipeline *p, cv_pipeline_stats *ret) {
    *ret = p->stats;
}

cv_pipeline *cv_pipeline_free(cv_pipeline *p) {
    if (!p)
        return NULL;
    if (p->arena)
        release_batch(p);
    while (p->head) {
        pending *b = p->head;
        p->head = b->next;
        pending_free(b);
    }
    for (interned *t = p->topics, *n; t; t = n) {
        n = t->next;
        free(t);
    }
    if (p->consumer)
        rd_kafka_destroy(p->consumer);
    p->acker = cv_acker_free(p->acker, 5000);
    p->stores = cv_stores_free(p->stores);
    cv_arena_free(p->arena);
    free(p->recs);
    free(p->group);
    free(p->pattern);
    free(p->prefix);
    free(p->ack_topic);
    free(p->dlq_topic);
    free(p);
    return NULL;
}
