/*
 * stores — see stores.h.
 */
#include "ingest/stores.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "pg/pgstore.h"
#include "util.h"

#define RETRY_MIN_MS 200
#define RETRY_MAX_MS 5000

/* A partition whose records from `from` on (up to `until`, exclusive, when
 * known; -1 otherwise) are in the log but not in PostgreSQL. */
typedef struct behind {
    struct behind *next;
    int32_t partition;
    int64_t from, until;
    char topic[];
} behind;

/* Health of one store. */
typedef struct health {
    bool down;
    int64_t retry_at_ms;
    int64_t backoff_ms;
} health;

struct cv_stores {
    cv_pgstore *pg;
    cv_applog *log;
    char *log_dir;
    const cv_keyring *keys;
    cv_ack_policy policy;
    bool offsets_comparable;
    cv_envelope_rules rules;
    size_t max_batch;
    cv_stores_events ev;

    health pg_health, log_health;
    bool degraded;
    behind *behind;
    /* Kafka's committed offsets of partitions assigned while PostgreSQL
     * could not be asked for its own; compared once it answers. */
    rd_kafka_topic_partition_list_t *unchecked;

    cv_applog_entry *entries;
    cv_rec *fill; /* records read back from the log for backfill */
    cv_arena *fill_arena;
};

static void slog(cv_stores *st, cv_log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void slog(cv_stores *st, cv_log_level level, const char *msg, const char *fmt,
                 ...) {
    if (!st->ev.log)
        return;
    char kv[1024] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(kv, sizeof(kv), fmt, ap);
        va_end(ap);
    }
    st->ev.log(st->ev.opaque, level, msg, kv);
}

static void torn_cb(void *opaque, const cv_applog_torn *t) {
    cv_stores *st = opaque;
    if (!t->saved_to) {
        slog(st, CV_LOG_WARN,
             "log recovery removed an unfinished new segment; it was never acked",
             "file=%s dropped_bytes=%" PRIu64, t->file, t->dropped);
        return;
    }
    slog(st, CV_LOG_WARN,
         "log recovery cut a torn tail (an unfinished write, never acked); records "
         "before it are intact and Kafka delivers the rest again",
         "file=%s byte=%" PRIu64 " after_offset=%" PRId64 " dropped_bytes=%" PRIu64
         " dropped_records=%" PRIu64 " kept_in=%s",
         t->file, t->pos, t->after_offset, t->dropped, t->records, t->saved_to);
    if (st->ev.log_torn)
        st->ev.log_torn(st->ev.opaque, t->dropped, t->records);
}

static void generation_cb(void *opaque, const char *topic, int32_t partition,
                          int64_t offset, int64_t held_last, const char *dir) {
    cv_stores *st = opaque;
    slog(st, CV_LOG_WARN,
         "kafka offsets started over: a held offset came with another message; the log "
         "keeps every record it holds and stores the new ones in a new generation",
         "topic=%s partition=%" PRId32 " offset=%" PRId64 " expected_offset=%" PRId64
         " held_last_offset=%" PRId64 " generation_dir=%s",
         topic, partition, offset, held_last + 1, held_last, dir);
    if (st->ev.log_generation)
        st->ev.log_generation(st->ev.opaque, topic, partition);
}

int cv_stores_open(const cv_stores_conf *c, cv_stores **ret, char *errbuf,
                   size_t errlen) {
    cv_stores *st = calloc(1, sizeof(*st));
    if (!st) {
        snprintf(errbuf, errlen, "out of memory");
        return -ENOMEM;
    }
    st->policy = c->policy;
    st->offsets_comparable = c->offsets_comparable;
    st->rules = *c->rules;
    st->max_batch = c->max_batch;
    st->ev = c->events;
    st->keys = c->log_keys;
    st->pg_health.backoff_ms = st->log_health.backoff_ms = RETRY_MIN_MS;
    int r = cv_pgstore_open(c->pg_conninfo, c->group, c->pg_connections, &st->pg, errbuf,
                            errlen);
    if (r < 0)
        goto fail;
    if (c->log_dir && *c->log_dir) {
        st->log_dir = strdup(c->log_dir);
        st->entries = calloc(c->max_batch, sizeof(cv_applog_entry));
        st->fill = calloc(c->max_batch, sizeof(cv_rec));
        st->fill_arena = cv_arena_new((size_t)4 << 30);
        if (!st->log_dir || !st->entries || !st->fill || !st->fill_arena) {
            snprintf(errbuf, errlen, "out of memory");
            r = -ENOMEM;
            goto fail;
        }
        r = cv_applog_open(c->log_dir, c->log_keys, c->log_segment_bytes, &st->log,
                           errbuf, errlen);
        if (r < 0)
            goto fail;
        cv_applog_set_torn_cb(st->log, torn_cb, st);
        cv_applog_set_generation_cb(st->log, generation_cb, st);
        char why[512];
        if (cv_applog_set_sync(st->log, c->log_sync, why, sizeof(why)) < 0)
            slog(st, CV_LOG_WARN, "the log falls back to fdatasync", "error=\"%s\"", why);
    }
    *ret = st;
    return 0;
fail:
    cv_stores_free(st);
    return r;
}

cv_stores *cv_stores_free(cv_stores *st) {
    if (!st)
        return NULL;
    cv_pgstore_free(st->pg);
    cv_applog_free(st->log);
    for (behind *b = st->behind, *n; b; b = n) {
        n = b->next;
        free(b);
    }
    if (st->unchecked)
        rd_kafka_topic_partition_list_destroy(st->unchecked);
    free(st->log_dir);
    free(st->entries);
    free(st->fill);
    cv_arena_free(st->fill_arena);
    free(st);
    return NULL;
}

bool cv_stores_degraded(const cv_stores *st) {
    return st->degraded;
}
bool cv_stores_has_log(const cv_stores *st) {
    return st->log != NULL;
}

int64_t cv_stores_retry_ms(const cv_stores *st) {
    int64_t now = cv_mono_ms(), wait = 0;
    const health *hs[2] = {&st->pg_health, &st->log_health};
    for (int i = 0; i < 2; i++)
        if (hs[i]->down && hs[i]->retry_at_ms - now > wait)
            wait = hs[i]->retry_at_ms - now;
    return wait;
}

static bool due(const health *h) {
    return !h->down || cv_mono_ms() >= h->retry_at_ms;
}

static void mark_ok(cv_stores *st, health *h, unsigned store, const char *name) {
    if (h->down)
        slog(st, CV_LOG_INFO, "store recovered", "store=%s", name);
    h->down = false;
    h->backoff_ms = RETRY_MIN_MS;
    if (st->ev.store_ok)
        st->ev.store_ok(st->ev.opaque, store);
}

static void mark_failed(cv_stores *st, health *h, unsigned store, const char *name,
                        const char *err) {
    h->down = true;
    h->retry_at_ms = cv_mono_ms() + h->backoff_ms;
    slog(st, CV_LOG_WARN, "store write failed",
         "store=%s error=\"%s\" retry_in=%" PRId64 "ms policy=%s", name, err,
         h->backoff_ms, st->policy == CV_ACK_POLICY_ALL ? "all" : "any");
    h->backoff_ms = h->backoff_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : h->backoff_ms * 2;
    if (st->ev.store_error)
        st->ev.store_error(st->ev.opaque, store, err);
}

static void set_degraded(cv_stores *st, bool on) {
    if (st->degraded == on)
        return;
    st->degraded = on;
    slog(st, on ? CV_LOG_WARN : CV_LOG_INFO,
         on ? "degraded: acking with one store (ack.policy = any)"
            : "both stores hold new batches again",
         NULL);
    if (st->ev.degraded)
        st->ev.degraded(st->ev.opaque, on);
}

static int add_behind(cv_stores *st, const char *topic, int32_t partition, int64_t from,
                      int64_t until) {
    for (behind *b = st->behind; b; b = b->next)
        if (b->partition == partition && strcmp(b->topic, topic) == 0) {
            /* One range covering both. */
            if (from < b->from)
                b->from = from;
            b->until = b->until < 0 || until < 0 ? -1
                       : until > b->until        ? until
                                                 : b->until;
            return 0;
        }
    size_t len = strlen(topic) + 1;
    behind *b = malloc(sizeof(*b) + len);
    if (!b)
        return -ENOMEM;
    memcpy(b->topic, topic, len);
    b->partition = partition;
    b->from = from;
    b->until = until;
    b->next = NULL;
    behind **tail = &st->behind;
    while (*tail)
        tail = &(*tail)->next;
    *tail = b;
    return 0;
}

static int compare_offsets(cv_stores *st, rd_kafka_topic_partition_list_t *parts,
                           char *errbuf, size_t errlen);

/* Writes one chunk of records read back from the log to PostgreSQL. */
static int backfill_chunk(cv_stores *st, const behind *b, size_t k, char *errbuf,
                          size_t errlen) {
    rd_kafka_topic_partition_list_t *next = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(next, b->topic, b->partition)->offset =
        st->fill[k - 1].offset + 1;
    int r = cv_pgstore_write(st->pg, st->fill, k, next, errbuf, errlen);
    rd_kafka_topic_partition_list_destroy(next);
    cv_arena_reset(st->fill_arena);
    return r;
}

/* Copies into PostgreSQL what the log holds of one partition from b->from
 * on, in offset order and in chunks; b->from advances with each commit. */
static int backfill_partition(cv_stores *st, behind *b, char *errbuf, size_t errlen) {
    char dir[PATH_MAX];
    int r =
        cv_applog_partition_dir(st->log_dir, b->topic, b->partition, dir, sizeof(dir));
    if (r < 0) {
        snprintf(errbuf, errlen, "log: partition directory name too long");
        return r;
    }
    const char *dirs[1] = {dir};
    cv_applog_reader *rd = NULL;
    r = cv_applog_reader_open(dirs, 1, st->keys, &rd, errbuf, errlen);
    if (r < 0)
        return r;
    cv_applog_reader_skip_to(rd, b->from);
    size_t k = 0;
    int64_t copied = 0, first = -1, last = -1, want_from = b->from;
    cv_applog_record rec;
    while ((r = cv_applog_reader_next(rd, &rec, errbuf, errlen)) == 1) {
        if (rec.offset < b->from)
            continue;
        if (b->until >= 0 && rec.offset >= b->until) {
            r = 0; /* Kafka re-delivers these anyway */
            break;
        }
        if (first < 0)
            first = rec.offset;
        last = rec.offset;
        cv_rec *f = &st->fill[k];
        memset(f, 0, sizeof(*f));
        f->topic = b->topic;
        f->partition = b->partition;
        f->offset = rec.offset;
        f->timestamp_ms = rec.timestamp_ms;
        if (cv_envelope_decode(&st->rules, b->topic, rec.value, rec.value_len,
                               st->fill_arena, &f->env) < 0) {
            slog(st, CV_LOG_WARN, "backfill skips a log record that does not validate",
                 "topic=%s partition=%" PRId32 " offset=%" PRId64 " error=\"%s\"",
                 b->topic, b->partition, rec.offset, f->env.error);
            continue;
        }
        if (++k == st->max_batch) {
            r = backfill_chunk(st, b, k, errbuf, errlen);
            if (r < 0)
                break;
            b->from = st->fill[k - 1].offset + 1;
            copied += (int64_t)k;
            k = 0;
        }
    }
    if (r == 0 && k > 0) {
        r = backfill_chunk(st, b, k, errbuf, errlen);
        if (r == 0) {
            b->from = st->fill[k - 1].offset + 1;
            copied += (int64_t)k;
        }
    }
    cv_arena_reset(st->fill_arena);
    cv_applog_reader_free(rd);
    /* What this instance's log lacks of the range may be in another
     * instance's log (the partition moved while PostgreSQL was away): say
     * so rather than leave PostgreSQL short in silence. Offsets of rejected
     * records are missing from both stores, so this may also name those. */
    if (r == 0 &&
        (first < 0 || first > want_from || (b->until >= 0 && last < b->until - 1)))
        slog(st, CV_LOG_WARN,
             "postgres misses records this instance's log does not "
             "hold (another instance may have written them); run "
             "`chatvault verify --repair` with every instance's log "
             "directory (--log-dir)",
             "topic=%s partition=%" PRId32 " from_offset=%" PRId64 " acked_up_to=%" PRId64
             " backfilled_first=%" PRId64 " backfilled_last=%" PRId64,
             b->topic, b->partition, want_from,
             b->until >= 0 ? b->until - 1 : (int64_t)-1, first, last);
    if (copied > 0 || r == 0)
        slog(st, CV_LOG_INFO,
             r == 0 ? "postgres backfilled from the log"
                    : "postgres backfill interrupted",
             "topic=%s partition=%" PRId32 " records=%" PRId64 " next_offset=%" PRId64,
             b->topic, b->partition, copied, b->from);
    return r;
}

static int backfill(cv_stores *st, char *errbuf, size_t errlen) {
    while (st->behind) {
        behind *b = st->behind;
        int r = backfill_partition(st, b, errbuf, errlen);
        if (r < 0)
            return r;
        st->behind = b->next;
        free(b);
    }
    return 0;
}

/* Brings PostgreSQL up to what the log holds before it takes new batches:
 * compares offsets left unchecked at assignment, then backfills. Runs
 * before the batch's log append starts, so the log is not read and written
 * at once. */
static int pg_catch_up(cv_stores *st, char *errbuf, size_t errlen) {
    if (st->unchecked) {
        int r = compare_offsets(st, st->unchecked, errbuf, errlen);
        if (r < 0)
            return r;
        rd_kafka_topic_partition_list_destroy(st->unchecked);
        st->unchecked = NULL;
    }
    return backfill(st, errbuf, errlen);
}

/* The log append of one batch, run on its own thread while PostgreSQL
 * takes the same batch: the two stores' latencies overlap instead of
 * adding up. The worker touches only st->entries and the log. */
typedef struct log_job {
    cv_stores *st;
    size_t k;
    int r;
    int64_t us;
    char err[512];
} log_job;

static void *log_worker(void *arg) {
    log_job *j = arg;
    pthread_setname_np(pthread_self(), "cv-log-append");
    int64_t t0 = cv_now_us();
    j->r = cv_applog_append(j->st->log, j->st->entries, j->k, j->err, sizeof(j->err));
    j->us = cv_now_us() - t0;
    return NULL;
}

/* Every valid record goes to the log, in batch order. */
static size_t build_entries(cv_stores *st, const cv_rec *recs, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const cv_rec *r = &recs[i];
        if (!cv_rec_valid(r))
            continue;
        cv_applog_entry *e = &st->entries[k++];
        e->topic = r->topic;
        e->partition = r->partition;
        e->offset = r->offset;
        e->timestamp_ms = r->timestamp_ms;
        e->value = r->rkm ? r->rkm->payload : NULL;
        e->value_len = r->rkm ? r->rkm->len : 0;
    }
    return k;
}

static void take_digests(cv_stores *st, cv_rec *recs, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        cv_rec *r = &recs[i];
        if (!cv_rec_valid(r))
            continue;
        memcpy(r->digest, st->entries[k++].digest, CV_DIGEST_BYTES);
        r->has_digest = true;
        r->stores |= CV_STORE_LOG;
    }
}

int cv_stores_write(cv_stores *st, cv_rec *recs, size_t n,
                    const rd_kafka_topic_partition_list_t *next, int64_t *ret_pg_us,
                    int64_t *ret_log_us, char *errbuf, size_t errlen) {
    char err[512];
    bool pg_done = false, log_done = st->log == NULL, schema_err = false;
    int64_t pg_us = 0;
    int r;
    errbuf[0] = '\0';

    bool pg_due = due(&st->pg_health);
    if (pg_due && st->log && (st->unchecked || st->behind)) {
        int64_t t0 = cv_now_us();
        r = pg_catch_up(st, err, sizeof(err));
        pg_us = cv_now_us() - t0;
        if (r < 0) {
            mark_failed(st, &st->pg_health, CV_STORE_PG, "postgres", err);
            snprintf(errbuf, errlen, "%s", err);
            pg_due = false;
        }
    }

    log_job job = {.st = st};
    pthread_t worker;
    bool log_running = false;
    if (!log_done && due(&st->log_health)) {
        job.k = build_entries(st, recs, n);
        if (job.k == 0) {
            log_done = true;
        } else if (pthread_create(&worker, NULL, log_worker, &job) == 0) {
            log_running = true;
        } else {
            log_worker(&job); /* no thread to be had: append here */
        }
    }
    if (pg_due) {
        int64_t t0 = cv_now_us();
        r = cv_pgstore_write(st->pg, recs, n, next, err, sizeof(err));
        pg_us += cv_now_us() - t0;
        if (r == 0) {
            pg_done = true;
            mark_ok(st, &st->pg_health, CV_STORE_PG, "postgres");
        } else if (r == -CV_ESCHEMA) {
            schema_err = true;
        } else {
            mark_failed(st, &st->pg_health, CV_STORE_PG, "postgres", err);
        }
        if (r < 0)
            snprintf(errbuf, errlen, "%s", err);
    }
    if (log_running)
        pthread_join(worker, NULL);
    if (job.k > 0) {
        if (job.r == 0) {
            log_done = true;
            take_digests(st, recs, n);
            mark_ok(st, &st->log_health, CV_STORE_LOG, "log");
        } else {
            mark_failed(st, &st->log_health, CV_STORE_LOG, "log", job.err);
            if (pg_done || !errbuf[0])
                snprintf(errbuf, errlen, "%s", job.err);
        }
    }
    *ret_pg_us = pg_us;
    *ret_log_us = job.us;
    if (schema_err)
        return -CV_ESCHEMA; /* retrying cannot fix a schema mismatch */

    if (pg_done && log_done) {
        set_degraded(st, false);
        return 0;
    }
    if (st->policy == CV_ACK_POLICY_ANY && (pg_done || log_done)) {
        int64_t now = cv_now_us();
        for (size_t i = 0; i < n; i++) {
            cv_rec *rec = &recs[i];
            if (!cv_rec_valid(rec))
                continue;
            if (!pg_done || rec->status == CHATVAULT__V1__ACK_STATUS__PERSISTED)
                rec->status = CHATVAULT__V1__ACK_STATUS__DEGRADED;
            if (!pg_done)
                rec->persisted_at_us = now;
        }
        if (!pg_done) {
            /* PostgreSQL misses these: backfill them from the log. */
            for (size_t i = 0; i < n; i++)
                if (cv_rec_valid(&recs[i]) &&
                    add_behind(st, recs[i].topic, recs[i].partition, recs[i].offset, -1) <
                        0)
                    return -ENOMEM;
        } else {
            slog(st, CV_LOG_WARN,
                 "log misses records that PostgreSQL holds; run "
                 "`chatvault verify --repair` once the log is back",
                 "partitions=%d first=%s/%" PRId32 "@%" PRId64, next->cnt,
                 next->elems[0].topic, next->elems[0].partition,
                 next->elems[0].offset - 1);
        }
        set_degraded(st, true);
        return 0;
    }
    return -EAGAIN;
}

/* Compares PostgreSQL's next offsets with Kafka's committed ones (in
 * `parts`); where PostgreSQL is behind, queues the gap for backfill. */
static int compare_offsets(cv_stores *st, rd_kafka_topic_partition_list_t *parts,
                           char *errbuf, size_t errlen) {
    rd_kafka_topic_partition_list_t *pg = rd_kafka_topic_partition_list_copy(parts);
    int r = cv_pgstore_read_offsets(st->pg, pg, errbuf, errlen);
    for (int i = 0; r == 0 && i < parts->cnt; i++) {
        rd_kafka_topic_partition_t *k = &parts->elems[i];
        int64_t g = pg->elems[i].offset;
        if (g < 0)
            continue;
        /* Where Kafka has no offset, consumption starts at the beginning
         * (auto.offset.reset), never at PostgreSQL's: PostgreSQL commits
         * before the acks go out, so its offset may be past records whose
         * acks never did (a broker killed right after its COMMIT). */
        if (k->offset >= 0 && g < k->offset && st->log) {
            slog(st, CV_LOG_INFO,
                 "postgres is behind the acked offset; backfilling from the log",
                 "topic=%s partition=%" PRId32 " postgres_next=%" PRId64
                 " kafka_committed=%" PRId64,
                 k->topic, k->partition, g, k->offset);
            if (add_behind(st, k->topic, k->partition, g, k->offset) < 0)
                r = -ENOMEM;
        }
    }
    rd_kafka_topic_partition_list_destroy(pg);
    return r;
}

int cv_stores_check_offsets(cv_stores *st, rd_kafka_topic_partition_list_t *parts,
                            char *errbuf, size_t errlen) {
    for (int i = 0; st->log && i < parts->cnt; i++)
        if (parts->elems[i].offset >= 0 &&
            cv_applog_set_committed(st->log, parts->elems[i].topic,
                                    parts->elems[i].partition,
                                    parts->elems[i].offset) == -ENOMEM) {
            snprintf(errbuf, errlen, "out of memory");
            return -ENOMEM;
        }
    if (!st->offsets_comparable)
        return 0;
    int r = compare_offsets(st, parts, errbuf, errlen);
    if (r < 0 && r != -ENOMEM && st->log) {
        /* PostgreSQL cannot say where it is: compare when it can. */
        if (!st->unchecked)
            st->unchecked = rd_kafka_topic_partition_list_new(parts->cnt);
        for (int i = 0; i < parts->cnt; i++)
            if (parts->elems[i].offset >= 0)
                rd_kafka_topic_partition_list_add(st->unchecked, parts->elems[i].topic,
                                                  parts->elems[i].partition)
                    ->offset = parts->elems[i].offset;
    }
    return r;
}
