/*
 * verify — see verify.h.
 */
#include "history/verify.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "applog/applog.h"
#include "arena.h"
#include "pg/pgmigrate.h"
#include "pg/pgread.h"
#include "pg/pgstore.h"
#include "pg/pgverify.h"
#include "record.h"
#include "util.h"

#define LOOKUP_BATCH 1000   /* message ids per duplicate lookup */
#define REPAIR_BATCH 5000   /* records per PostgreSQL repair transaction */
#define QUERY_OFFSETS 10000 /* offsets per query for rows to rebuild */
#define APPEND_MAX 65536    /* records per repair append (one fdatasync) */
#define APPEND_BYTES ((size_t)64 << 20)
#define PROGRESS_EVERY 8192 /* offsets between progress calls */
#define ARENA_LIMIT ((size_t)1 << 30)
#define VALUES_LIMIT ((size_t)1 << 30)

static const char *const kind_names[] = {
    [CV_VERIFY_ONLY_PG] = "only_in_postgres",
    [CV_VERIFY_ONLY_LOG] = "only_in_log",
    [CV_VERIFY_DIFFERENT] = "different",
    [CV_VERIFY_OFFSETS] = "kafka_offsets",
    [CV_VERIFY_LOG_DAMAGED] = "log_damaged",
    [CV_VERIFY_SEGMENT_MISSING] = "log_segment_missing",
    [CV_VERIFY_GAP] = "gap",
};

const char *cv_verify_kind_name(cv_verify_kind k) {
    return k >= CV_VERIFY_ONLY_PG && k <= CV_VERIFY_GAP ? kind_names[k] : "unknown";
}

uint64_t cv_verify_differences(const cv_verify_stats *s) {
    return s->only_pg + s->only_log + s->different + s->offsets + s->log_damaged +
           s->segments_missing;
}

/* ---- the topic-partitions to compare ---------------------------------- */

typedef struct unit {
    char *topic, *channel;
    int32_t partition;
    uint64_t pg_rows; /* 0 when PostgreSQL has none */
} unit;

typedef struct groupoff {
    char *group, *topic;
    int32_t partition;
    int64_t next;
    char *updated_at; /* as PostgreSQL prints it */
} groupoff;

/* A record of one store not (yet) matched with one of the other. */
typedef struct cand {
    int64_t offset;
    char *message_id;     /* NULL when the value did not decode */
    unsigned char fp[32]; /* the compared fields (view_fp) */
    bool collides;        /* PostgreSQL's: the log holds its offset */
    bool done;            /* repair_pg: written */
} cand;

typedef struct vec {
    void *v;
    size_t n, cap, size;
} vec;

static void *vec_push(vec *x) {
    if (x->n == x->cap) {
        size_t nc = x->cap ? x->cap * 2 : 64;
        void *nv = realloc(x->v, nc * x->size);
        if (!nv)
            return NULL;
        x->v = nv;
        x->cap = nc;
    }
    return (char *)x->v + x->size * x->n++;
}

/* What the workers share; everything else of a vctx is the worker's. */
typedef struct vshared {
    pthread_mutex_t mu; /* guards the callbacks, prog and the fields below */
    cv_verify_progress prog;
    size_t next_unit;
    int err; /* the first worker error */
    char errmsg[1024];
} vshared;

typedef struct vctx {
    const cv_verify_conf *conf;
    vshared *sh;
    cv_verify_stats *st;
    PGconn *conn;
    vec units;   /* unit (shared, read-only once workers run) */
    vec offsets; /* groupoff (likewise) */
    bool repairing;
    uint64_t since_progress;
    cv_arena *arena;
    cv_pgstore *store; /* repair: opened on first use */
    cv_applog *rlog;   /* repair: opened on first use */
    char *err;
    size_t errlen;
} vctx;

static int unit_cmp(const void *a, const void *b) {
    const unit *x = a, *y = b;
    int c = strcmp(x->topic, y->topic);
    return c ? c : (x->partition > y->partition) - (x->partition < y->partition);
}

static bool want(const vctx *c, const char *channel, int32_t partition) {
    const cv_verify_conf *conf = c->conf;
    if (conf->partition >= 0 && partition != conf->partition)
        return false;
    return !conf->want_channel || conf->want_channel(conf->opaque, channel);
}

static int add_unit(vctx *c, const char *topic, const char *channel, int32_t partition,
                    uint64_t rows) {
    unit *u = vec_push(&c->units);
    if (!u)
        return -ENOMEM;
    memset(u, 0, sizeof(*u));
    u->topic = strdup(topic);
    u->channel = strdup(channel);
    u->partition = partition;
    u->pg_rows = rows;
    return u->topic && u->channel ? 0 : -ENOMEM;
}

static int add_pg_partition(void *opaque, const char *channel, const char *topic,
                            int32_t partition, uint64_t rows) {
    vctx *c = opaque;
    return want(c, channel, partition) ? add_unit(c, topic, channel, partition, rows) : 0;
}

static int load_pg_units(vctx *c) {
    int r = cv_pgverify_partitions(c->conn, add_pg_partition, c, c->err, c->errlen);
    if (r == -ENOMEM)
        snprintf(c->err, c->errlen, "out of memory");
    return r;
}

static int add_log_partition(void *opaque, const char *path, const char *topic,
                             int32_t partition) {
    (void)path;
    vctx *c = opaque;
    const char *channel = cv_envelope_topic_channel(c->conf->rules, topic);
    if (!channel)
        channel = topic;
    if (!want(c, channel, partition))
        return 0;
    return add_unit(c, topic, channel, partition, 0);
}

/* Sorts the units and folds those found in both stores into one. */
static void fold_units(vctx *c) {
    unit *u = c->units.v;
    if (c->units.n)
        qsort(u, c->units.n, sizeof(*u), unit_cmp);
    size_t w = 0;
    for (size_t i = 0; i < c->units.n; i++) {
        if (w && unit_cmp(&u[w - 1], &u[i]) == 0) {
            if (u[i].pg_rows) {
                free(u[w - 1].channel);
                u[w - 1].channel = u[i].channel;
                u[w - 1].pg_rows = u[i].pg_rows;
            } else {
                free(u[i].channel);
            }
            free(u[i].topic);
            continue;
        }
        u[w++] = u[i];
    }
    c->units.n = w;
}

static int add_group_offset(void *opaque, const cv_pgverify_offset *o) {
    vctx *c = opaque;
    groupoff *g = vec_push(&c->offsets);
    if (!g)
        return -ENOMEM;
    g->group = strdup(o->group);
    g->topic = strdup(o->topic);
    g->partition = o->partition;
    g->next = o->next;
    g->updated_at = strdup(o->updated_at);
    return g->group && g->topic && g->updated_at ? 0 : -ENOMEM;
}

static int load_group_offsets(vctx *c) {
    int r = cv_pgverify_offsets(c->conn, add_group_offset, c, c->err, c->errlen);
    if (r == -ENOMEM)
        snprintf(c->err, c->errlen, "out of memory");
    return r;
}

/* ---- one side's view of a message ------------------------------------- */

typedef struct view {
    int64_t offset;
    const char *message_id, *channel, *sender_id, *content_type, *reply_to;
    int64_t sent_at_us;
    unsigned char body_sha[32];
    bool decoded;
} view;

static void view_from_row(view *v, const cv_pgrow *row) {
    v->offset = row->offset;
    v->message_id = row->message_id;
    v->channel = row->channel;
    v->sender_id = row->sender_id;
    v->content_type = row->content_type;
    v->reply_to = row->reply_to;
    v->sent_at_us = row->sent_at_us;
    v->decoded = row->body_len == 32;
    if (v->decoded)
        memcpy(v->body_sha, row->body, 32);
}

static void view_from_log(view *v, const cv_applog_record *rec, cv_arena *arena) {
    cv_arena_reset(arena);
    v->offset = rec->offset;
    Chatvault__V1__ChatMessage *m = chatvault__v1__chat_message__unpack(
        cv_arena_protobuf(arena), rec->value_len, rec->value);
    v->decoded = m != NULL;
    if (!m)
        return;
    v->message_id = m->message_id;
    v->channel = m->channel;
    v->sender_id = m->sender_id;
    v->content_type = m->content_type;
    v->reply_to = m->reply_to;
    v->sent_at_us = m->sent_at_us;
    crypto_hash_sha256(v->body_sha,
                       m->body.data ? m->body.data : (const unsigned char *)"",
                       m->body.len);
}

/* Names the fields that differ into buf; false when none do. */
static bool view_diff(const view *a, const view *b, char *buf, size_t len) {
    buf[0] = '\0';
    size_t n = 0;
#define DIFF(cond, name)                                                                 \
    do {                                                                                 \
        if (cond && n < len)                                                             \
            n += (size_t)snprintf(buf + n, len - n, "%s%s", n ? "," : "", name);         \
    } while (0)
    if (!a->decoded || !b->decoded) {
        snprintf(buf, len, "%s",
                 !b->decoded ? "log value does not decode" : "row has no body digest");
        return true;
    }
    DIFF(strcmp(a->message_id, b->message_id) != 0, "message_id");
    DIFF(strcmp(a->channel, b->channel) != 0, "channel");
    DIFF(strcmp(a->sender_id, b->sender_id) != 0, "sender_id");
    DIFF(a->sent_at_us != b->sent_at_us, "sent_at_us");
    DIFF(strcmp(a->content_type, b->content_type) != 0, "content_type");
    DIFF(strcmp(a->reply_to, b->reply_to) != 0, "reply_to");
    DIFF(memcmp(a->body_sha, b->body_sha, 32) != 0, "body");
#undef DIFF
    return buf[0] != '\0';
}

/* A message's identity as verify compares it: BLAKE2b-256 of the fields
 * view_diff compares. */
static void view_fp(const view *v, unsigned char *out) {
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    const char *f[5] = {v->message_id, v->channel, v->sender_id, v->content_type,
                        v->reply_to};
    for (int i = 0; i < 5; i++)
        crypto_generichash_update(&h, (const unsigned char *)(f[i] ? f[i] : ""),
                                  strlen(f[i] ? f[i] : "") + 1);
    unsigned char sent[8];
    cv_be64(sent, (uint64_t)v->sent_at_us);
    crypto_generichash_update(&h, sent, 8);
    crypto_generichash_update(&h, v->body_sha, 32);
    crypto_generichash_final(&h, out, 32);
}

static void emit(vctx *c, cv_verify_kind kind, const unit *u, int64_t first, int64_t last,
                 const char *id, const char *detail) {
    if (!c->conf->finding)
        return;
    cv_verify_finding f = {
        .kind = kind,
        .channel = u->channel,
        .topic = u->topic,
        .partition = u->partition,
        .offset = first,
        .last_offset = last,
        .message_id = id,
        .detail = detail,
    };
    pthread_mutex_lock(&c->sh->mu);
    c->conf->finding(c->conf->opaque, &f);
    pthread_mutex_unlock(&c->sh->mu);
}

static void progress(vctx *c, const unit *u, bool force) {
    if (!force && c->since_progress < PROGRESS_EVERY)
        return;
    pthread_mutex_lock(&c->sh->mu);
    cv_verify_progress *p = &c->sh->prog;
    p->messages_done += c->since_progress;
    c->since_progress = 0;
    if (c->conf->progress) {
        p->topic = u->topic;
        p->partition = u->partition;
        p->repairing = c->repairing;
        c->conf->progress(c->conf->opaque, p);
    }
    pthread_mutex_unlock(&c->sh->mu);
}

/* ---- gaps ------------------------------------------------------------- */

typedef struct gaps {
    bool loaded;
    int64_t *rej; /* offsets in chatvault.rejected, ascending */
    size_t nrej;
} gaps;

static int load_rejected(vctx *c, const unit *u, gaps *g) {
    int r = cv_pgverify_rejected(c->conn, u->topic, u->partition, &g->rej, &g->nrej,
                                 c->err, c->errlen);
    if (r == 0)
        g->loaded = true;
    return r;
}

/* Reports [first, last] minus the rejected offsets in it. The rejected
 * list is read on the first gap only (after the partition's cursor is
 * closed: see compare_unit). */
static void report_gap(vctx *c, const unit *u, const gaps *g, int64_t first,
                       int64_t last) {
    int64_t from = first;
    size_t lo = 0, hi = g->nrej;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g->rej[mid] < first)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < g->nrej && g->rej[i] <= last; i++) {
        if (g->rej[i] > from) {
            c->st->gaps++;
            c->st->gap_offsets += (uint64_t)(g->rej[i] - from);
            emit(c, CV_VERIFY_GAP, u, from, g->rej[i] - 1, NULL,
                 "neither store holds these offsets and chatvault.rejected "
                 "does not explain them");
        }
        from = g->rej[i] + 1;
    }
    if (from <= last) {
        c->st->gaps++;
        c->st->gap_offsets += (uint64_t)(last - from + 1);
        emit(c, CV_VERIFY_GAP, u, from, last, NULL,
             "neither store holds these offsets and chatvault.rejected "
             "does not explain them");
    }
}

/* ---- only in the log: duplicates or missing --------------------------- */

/* Splits the candidates into duplicates (PostgreSQL holds their id from
 * another offset) and records PostgreSQL lacks, which are reported and kept
 * in *cands (duplicates are removed). */
static int resolve_candidates(vctx *c, const unit *u, vec *cands) {
    cand *cv = cands->v;
    size_t keep = 0;
    const char *ids[LOOKUP_BATCH];
    bool held[LOOKUP_BATCH];
    for (size_t i = 0; i < cands->n; i += LOOKUP_BATCH) {
        size_t n = cands->n - i < LOOKUP_BATCH ? cands->n - i : LOOKUP_BATCH;
        size_t nid = 0;
        for (size_t k = i; k < i + n; k++)
            if (cv[k].message_id)
                ids[nid++] = cv[k].message_id;
        int r =
            cv_pgverify_held_ids(c->conn, u->channel, ids, nid, held, c->err, c->errlen);
        if (r < 0)
            return r;
        nid = 0;
        for (size_t k = i; k < i + n; k++) {
            const char *id = cv[k].message_id;
            if (id && held[nid++]) {
                c->st->duplicates++;
                free(cv[k].message_id);
                continue;
            }
            c->st->only_log++;
            emit(c, CV_VERIFY_ONLY_LOG, u, cv[k].offset, cv[k].offset, id ? id : "",
                 id ? "PostgreSQL has no row for this record"
                    : "PostgreSQL has no row; the log value does not decode");
            cv[keep++] = cv[k];
        }
    }
    cands->n = keep;
    return 0;
}

/* ---- repair ----------------------------------------------------------- */

static int open_dirs_reader(vctx *c, const unit *u, cv_applog_reader **ret) {
    const cv_verify_conf *conf = c->conf;
    char **paths = calloc(conf->nlog_dirs ? conf->nlog_dirs : 1, sizeof(*paths));
    if (!paths)
        return -ENOMEM;
    int r = 0;
    for (size_t i = 0; r == 0 && i < conf->nlog_dirs; i++) {
        size_t l = strlen(conf->log_dirs[i]) + strlen(u->topic) + 16;
        paths[i] = malloc(l);
        r = paths[i] ? cv_applog_partition_dir(conf->log_dirs[i], u->topic, u->partition,
                                               paths[i], l)
                     : -ENOMEM;
    }
    if (r == 0)
        r = cv_applog_reader_open((const char *const *)paths, conf->nlog_dirs, conf->keys,
                                  ret, c->err, c->errlen);
    for (size_t i = 0; i < conf->nlog_dirs; i++)
        free(paths[i]);
    free(paths);
    return r;
}

static void ignore_break(void *opaque, const cv_applog_break *b) {
    (void)opaque;
    (void)b;
}

static int flush_pg(vctx *c, cv_rec *recs, size_t n) {
    if (!n)
        return 0;
    rd_kafka_topic_partition_list_t *none = rd_kafka_topic_partition_list_new(0);
    if (!none)
        return -ENOMEM;
    int r = cv_pgstore_write(c->store, recs, n, none, c->err, c->errlen);
    rd_kafka_topic_partition_list_destroy(none);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        if (recs[i].status == CHATVAULT__V1__ACK_STATUS__PERSISTED)
            c->st->repaired_pg++;
        else
            c->st->duplicates++;
    }
    return 0;
}

/* Writes the candidates (log records, by offset and message id) to
 * PostgreSQL. */
static int repair_pg(vctx *c, const unit *u, vec *cands) {
    cand *cv = cands->v;
    if (!cands->n)
        return 0;
    int r = 0;
    if (!c->store) {
        r = cv_pgstore_open(c->conf->pg_conninfo, "chatvault-verify", &c->store, c->err,
                            c->errlen);
        if (r < 0)
            return r;
    }
    cv_applog_reader *rd = NULL;
    r = open_dirs_reader(c, u, &rd);
    if (r < 0)
        return r;
    cv_applog_reader_on_break(rd, ignore_break, NULL); /* reported already */
    cv_applog_reader_skip_to(rd, cv[0].offset);
    cv_arena *arena = cv_arena_new(ARENA_LIMIT);
    cv_rec *recs = calloc(REPAIR_BATCH, sizeof(*recs));
    if (!arena || !recs) {
        r = -ENOMEM;
        goto out;
    }
    size_t n = 0, k = 0;
    cv_applog_record rec;
    while (k < cands->n &&
           (r = cv_applog_reader_next(rd, &rec, c->err, c->errlen)) == 1) {
        r = 0;
        while (k < cands->n && cv[k].offset < rec.offset)
            k++;
        if (k == cands->n || cv[k].offset != rec.offset)
            continue;
        cv_rec *x = &recs[n];
        memset(x, 0, sizeof(*x));
        x->topic = u->topic;
        x->partition = u->partition;
        x->offset = rec.offset;
        x->timestamp_ms = rec.timestamp_ms;
        int d = cv_envelope_decode(c->conf->rules, u->topic, rec.value, rec.value_len,
                                   arena, &x->env);
        if (d == -ENOMEM) {
            /* The arena is full: write what it holds, then decode again. */
            if ((r = flush_pg(c, recs, n)) < 0)
                break;
            cv_arena_reset(arena);
            recs[0] = *x;
            x = &recs[0];
            n = 0;
            d = cv_envelope_decode(c->conf->rules, u->topic, rec.value, rec.value_len,
                                   arena, &x->env);
        }
        /* Which candidate at this offset (records of several generations
         * may share it): the one of this message id. */
        const char *id = cv_envelope_message_id(&x->env);
        size_t j = k;
        while (j < cands->n && cv[j].offset == rec.offset &&
               (cv[j].done || (cv[j].message_id ? !id || strcmp(cv[j].message_id, id) != 0
                                                : id != NULL)))
            j++;
        if (j == cands->n || cv[j].offset != rec.offset)
            continue;
        cv[j].done = true;
        if (d < 0) {
            c->st->repair_skipped++;
            continue;
        }
        if (++n == REPAIR_BATCH) {
            if ((r = flush_pg(c, recs, n)) < 0)
                break;
            cv_arena_reset(arena);
            n = 0;
        }
    }
    if (r >= 0)
        r = flush_pg(c, recs, n);
out:
    free(recs);
    cv_arena_free(arena);
    cv_applog_reader_free(rd);
    if (r == -ENOMEM)
        snprintf(c->err, c->errlen, "out of memory");
    return r < 0 ? r : 0;
}

/* Appends the buffered values (ents[i].value at vals + at[i]). */
static int append_values(vctx *c, cv_applog *log, cv_applog_entry *ents, const size_t *at,
                         size_t ne, cv_buf *vals) {
    for (size_t k = 0; k < ne; k++)
        ents[k].value = vals->data + at[k];
    int r = cv_applog_append(log, ents, ne, c->err, c->errlen);
    if (r == 0)
        c->st->repaired_log += ne;
    vals->len = 0;
    return r;
}

/* Appends the rows `rows` (by message id, in offset order, one per offset)
 * to a repair directory of the log: the run's shared session, with `brk` a
 * session of its own that bridges it, with new_gen a session of its own in
 * a new generation (for rows whose offsets the log holds with other
 * messages). */
static int repair_log(vctx *c, const unit *u, const cand *rows, size_t n,
                      const cv_applog_break *brk, bool new_gen) {
    if (!n)
        return 0;
    int r;
    cv_applog *own = NULL, *log;
    const char **ids = calloc(n, sizeof(*ids));
    if (!ids) {
        snprintf(c->err, c->errlen, "out of memory");
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        ids[i] = rows[i].message_id;
    if (brk || new_gen) {
        r = cv_applog_open_repair(c->conf->log_dirs[0], c->conf->keys,
                                  c->conf->log_segment_bytes, &own, c->err, c->errlen);
        if (r == 0 && brk)
            r = cv_applog_repair_bridge(own, u->topic, u->partition, brk->after_chain,
                                        brk->next_prev_chain, c->err, c->errlen);
        if (r == 0 && new_gen)
            r = cv_applog_repair_new_generation(own, c->err, c->errlen);
        if (r < 0) {
            cv_applog_free(own);
            free(ids);
            return r;
        }
        log = own;
    } else {
        if (!c->rlog) {
            r = cv_applog_open_repair(c->conf->log_dirs[0], c->conf->keys,
                                      c->conf->log_segment_bytes, &c->rlog, c->err,
                                      c->errlen);
            if (r < 0) {
                free(ids);
                return r;
            }
        }
        log = c->rlog;
    }
    cv_buf vals, one;
    cv_buf_init(&vals, VALUES_LIMIT);
    cv_buf_init(&one, VALUES_LIMIT);
    cv_applog_entry *ents = calloc(APPEND_MAX, sizeof(*ents));
    size_t *at = calloc(APPEND_MAX, sizeof(*at));
    size_t ne = 0;
    r = ents && at ? 0 : -ENOMEM;
    for (size_t i = 0; r == 0 && i < n; i += QUERY_OFFSETS) {
        cv_pgread_sel sel = {
            .channel = u->channel,
            .partition = u->partition,
            .from_offset = -1,
            .to_offset = -1,
            .since_us = -1,
            .until_us = -1,
            .ids = ids + i,
            .nids = n - i < QUERY_OFFSETS ? n - i : QUERY_OFFSETS,
        };
        cv_pgread *rd = NULL;
        r = cv_pgread_open(c->conn, &sel, &rd, c->err, c->errlen);
        cv_pgrow row;
        while (r == 0 && (r = cv_pgread_next(rd, &row, c->err, c->errlen)) == 1) {
            r = 0;
            if (strcmp(row.topic, u->topic) != 0)
                continue;
            if ((r = cv_pgrow_pack(&row, &one)) < 0)
                break;
            /* One group commit (one fdatasync) per APPEND_MAX records or
             * APPEND_BYTES of values. */
            if (ne == APPEND_MAX || (ne && vals.len + one.len > APPEND_BYTES)) {
                if ((r = append_values(c, log, ents, at, ne, &vals)) < 0)
                    break;
                ne = 0;
            }
            at[ne] = vals.len;
            if ((r = cv_buf_append(&vals, one.data, one.len)) < 0)
                break;
            ents[ne++] = (cv_applog_entry){
                .topic = u->topic,
                .partition = u->partition,
                .offset = row.offset,
                .timestamp_ms = row.timestamp_ms,
                .value_len = one.len,
            };
        }
        cv_pgread_free(rd);
    }
    if (r == 0 && ne)
        r = append_values(c, log, ents, at, ne, &vals);
    if (r == -ENOMEM || r == -ENOBUFS)
        snprintf(c->err, c->errlen, "out of memory rebuilding log records");
    free(ents);
    free(at);
    free(ids);
    cv_buf_release(&vals);
    cv_buf_release(&one);
    cv_applog_free(own);
    return r;
}

/* Breaks seen by the reader of the partition being compared. */
typedef struct breaks {
    vctx *c;
    const unit *u;
    vec v; /* cv_applog_break, file cleared */
    bool nomem;
} breaks;

static void on_break(void *opaque, const cv_applog_break *b) {
    breaks *bs = opaque;
    char detail[600];
    snprintf(detail, sizeof(detail),
             "log segment %s does not chain to offset %" PRId64
             ": the segment(s) between were removed or lost",
             b->file, b->after_offset);
    bs->c->st->segments_missing++;
    emit(bs->c, CV_VERIFY_SEGMENT_MISSING, bs->u, b->after_offset + 1, b->next_offset - 1,
         NULL, detail);
    cv_applog_break *x = vec_push(&bs->v);
    if (!x) {
        bs->nomem = true;
        return;
    }
    *x = *b;
    x->file = NULL;
}

/* Repairs the log: rows inside a lost segment's range go to a session that
 * bridges it, rows whose offset the log holds with another message (or
 * that share an offset with another row to repair) to sessions in new
 * generations, one per row at an offset, the others to the run's shared
 * session. */
static int repair_log_all(vctx *c, const unit *u, vec *only_pg, const breaks *bs) {
    cand *all = only_pg->v;
    size_t n = only_pg->n;
    cand *plain = calloc(n ? n : 1, sizeof(*plain));
    cand *gen = calloc(n ? n : 1, sizeof(*gen));
    size_t np = 0, ng = 0;
    int r = plain && gen ? 0 : -ENOMEM;
    for (size_t i = 0; r == 0 && i < n; i++) {
        if (all[i].collides || (i > 0 && all[i - 1].offset == all[i].offset))
            gen[ng++] = all[i];
        else
            plain[np++] = all[i];
    }
    const cv_applog_break *b = bs->v.v;
    size_t i = 0;
    for (size_t k = 0; r == 0 && k < bs->v.n; k++) {
        size_t from = i;
        while (i < np && plain[i].offset <= b[k].after_offset)
            i++;
        r = repair_log(c, u, plain + from, i - from, NULL, false);
        from = i;
        while (i < np && plain[i].offset < b[k].next_offset)
            i++;
        if (r == 0)
            r = repair_log(c, u, plain + from, i - from, &b[k], false);
    }
    if (r == 0)
        r = repair_log(c, u, plain + i, np - i, NULL, false);
    /* New generations, a round each: the first row of each offset left. */
    while (r == 0 && ng) {
        size_t nr = 0, nl = 0;
        for (size_t k = 0; k < ng; k++) {
            if (nr && plain[nr - 1].offset == gen[k].offset)
                gen[nl++] = gen[k];
            else
                plain[nr++] = gen[k];
        }
        r = repair_log(c, u, plain, nr, NULL, true);
        ng = nl;
    }
    if (r == -ENOMEM)
        snprintf(c->err, c->errlen, "out of memory");
    free(plain);
    free(gen);
    return r;
}

/* ---- matching by identity --------------------------------------------- */

static void cands_free(vec *v) {
    for (size_t i = 0; i < v->n; i++)
        free(((cand *)v->v)[i].message_id);
    free(v->v);
    v->v = NULL;
    v->n = v->cap = 0;
}

/* Sets a row (is_row) or a log record aside. A row always has its message
 * id; a record whose value does not decode has none and matches nothing. */
static int push_cand(vec *v, const view *w, int64_t offset, bool is_row, bool collides) {
    cand *x = vec_push(v);
    if (!x)
        return -ENOMEM;
    memset(x, 0, sizeof(*x));
    x->offset = offset;
    x->collides = collides;
    if (!w->decoded && !is_row)
        return 0;
    if (w->decoded)
        view_fp(w, x->fp);
    return (x->message_id = strdup(w->message_id)) ? 0 : -ENOMEM;
}

/* Drops the entries marked done from v[from..). */
static void cands_compact(vec *v, size_t from) {
    cand *x = v->v;
    size_t w = from;
    for (size_t i = from; i < v->n; i++) {
        if (x[i].done) {
            free(x[i].message_id);
            continue;
        }
        x[w++] = x[i];
    }
    v->n = w;
}

static bool same_id(const cand *a, const cand *b) {
    return a->message_id && b->message_id && strcmp(a->message_id, b->message_id) == 0;
}

/* Matches the rows and records set aside at offset `off` (the tails of the
 * two lists) by message id: the same content is a match, other content
 * with the same id is "different"; the rest stays set aside. */
static void settle(vctx *c, const unit *u, vec *pl, vec *ll, int64_t off) {
    cand *p = pl->v, *l = ll->v;
    size_t ps = pl->n, ls = ll->n;
    while (ps > 0 && p[ps - 1].offset == off)
        ps--;
    while (ls > 0 && l[ls - 1].offset == off)
        ls--;
    if (ps == pl->n || ls == ll->n)
        return;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = ps; i < pl->n; i++)
            for (size_t j = ls; !p[i].done && j < ll->n; j++) {
                if (l[j].done || !same_id(&p[i], &l[j]) ||
                    (pass == 0 && memcmp(p[i].fp, l[j].fp, 32) != 0))
                    continue;
                p[i].done = l[j].done = true;
                if (pass == 0) {
                    c->st->matched++;
                } else {
                    c->st->different++;
                    emit(c, CV_VERIFY_DIFFERENT, u, off, off, p[i].message_id,
                         "the log record of this message id at this offset has other "
                         "content");
                }
            }
    cands_compact(pl, ps);
    cands_compact(ll, ls);
}

static int cand_id_cmp(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (!x->message_id || !y->message_id) {
        if (x->message_id || y->message_id)
            return x->message_id ? 1 : -1;
    } else {
        int k = strcmp(x->message_id, y->message_id);
        if (k)
            return k;
    }
    return (x->offset > y->offset) - (x->offset < y->offset);
}

static int cand_offset_cmp(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->offset != y->offset)
        return (x->offset > y->offset) - (x->offset < y->offset);
    if (!x->message_id || !y->message_id)
        return (x->message_id != NULL) - (y->message_id != NULL);
    return strcmp(x->message_id, y->message_id);
}

/* What is still set aside after the stream: a row and a record of one
 * message id and content at different offsets are the same message; the
 * other rows go to *only_pg (reported), the other records stay in *ll for
 * resolve_candidates. Both end in offset order. */
static int match_left(vctx *c, const unit *u, vec *pl, vec *ll, vec *only_pg) {
    cand *p = pl->v, *l = ll->v;
    if (pl->n)
        qsort(p, pl->n, sizeof(*p), cand_id_cmp);
    if (ll->n)
        qsort(l, ll->n, sizeof(*l), cand_id_cmp);
    size_t j = 0;
    for (size_t i = 0; i < pl->n; i++) {
        while (j < ll->n && cand_id_cmp(&l[j], &p[i]) < 0 && !same_id(&l[j], &p[i]))
            j++;
        for (size_t k = j; k < ll->n && same_id(&l[k], &p[i]); k++)
            if (!l[k].done && memcmp(l[k].fp, p[i].fp, 32) == 0) {
                l[k].done = p[i].done = true;
                c->st->matched++;
                break;
            }
    }
    cands_compact(ll, 0);
    if (ll->n)
        qsort(ll->v, ll->n, sizeof(cand), cand_offset_cmp);
    for (size_t i = 0; i < pl->n; i++) {
        if (p[i].done)
            continue;
        cand *x = vec_push(only_pg);
        if (!x)
            return -ENOMEM;
        *x = p[i];
        p[i].message_id = NULL;
        p[i].done = true;
    }
    cands_compact(pl, 0);
    cand *o = only_pg->v;
    if (only_pg->n)
        qsort(o, only_pg->n, sizeof(*o), cand_offset_cmp);
    for (size_t i = 0; i < only_pg->n; i++) {
        c->st->only_pg++;
        emit(c, CV_VERIFY_ONLY_PG, u, o[i].offset, o[i].offset, o[i].message_id,
             o[i].collides ? "the log holds another message at this offset, not this one"
                           : "the log has no record at this offset");
    }
    return 0;
}

/* ---- comparing one topic-partition ------------------------------------ */

/* verify --repair on a damaged log: moves the damaged segment (or seal) the
 * reader stopped at aside, where it stays as evidence, and puts its intact
 * records back, so that the partition reads again and a new comparison
 * rebuilds the rest from PostgreSQL. True when there is something to
 * compare again. */
static bool quarantine_damage(vctx *c, const unit *u, const cv_applog_reader *lr) {
    const char *file;
    uint64_t pos;
    if (!cv_applog_reader_damage(lr, &file, &pos))
        return false;
    char saved[PATH_MAX], err[768], detail[PATH_MAX * 2 + 200];
    if (cv_applog_quarantine(file, pos, saved, sizeof(saved), err, sizeof(err)) < 0) {
        emit(c, CV_VERIFY_LOG_DAMAGED, u, -1, -1, NULL, err);
        return false;
    }
    snprintf(detail, sizeof(detail),
             "repair: %s moved aside to %s (kept as evidence); its records before "
             "byte %" PRIu64 " stay, the rest is rebuilt from PostgreSQL",
             file, saved, pos);
    emit(c, CV_VERIFY_LOG_DAMAGED, u, -1, -1, NULL, detail);
    c->st->quarantined++;
    return true;
}

static int compare_unit_once(vctx *c, const unit *u, bool *again);

/* Compares (and repairs) one topic-partition; a repair that moved damage
 * aside compares it again, a few times at most (each round removes one
 * damaged file). */
static int compare_unit(vctx *c, const unit *u) {
    for (int round = 0;; round++) {
        cv_verify_stats before = *c->st;
        bool again = false;
        int r = compare_unit_once(c, u, &again);
        if (r < 0 || !again || round == 16)
            return r;
        /* The next round counts the partition afresh. */
        uint64_t damaged = c->st->log_damaged, quarantined = c->st->quarantined;
        *c->st = before;
        c->st->log_damaged = damaged;
        c->st->quarantined = quarantined;
    }
}

static int compare_unit_once(vctx *c, const unit *u, bool *again) {
    const cv_verify_conf *conf = c->conf;
    cv_verify_stats *st = c->st;
    cv_pgread *pr = NULL;
    cv_applog_reader *lr = NULL;
    vec only_pg = {.size = sizeof(cand)};
    vec pg_left = {.size = sizeof(cand)}, log_left = {.size = sizeof(cand)};
    vec gapv = {.size = 2 * sizeof(int64_t)};
    gaps g = {0};
    breaks bs = {.v = {.size = sizeof(cv_applog_break)}};
    int r = 0;
    if (u->pg_rows) {
        cv_pgread_sel sel = {
            .channel = u->channel,
            .partition = u->partition,
            .from_offset = -1,
            .to_offset = -1,
            .since_us = -1,
            .until_us = -1,
            .digest_only = true,
        };
        r = cv_pgread_open(c->conn, &sel, &pr, c->err, c->errlen);
        if (r < 0)
            goto out;
    }
    r = open_dirs_reader(c, u, &lr);
    if (r < 0)
        goto out;
    bs.c = c;
    bs.u = u;
    cv_applog_reader_on_break(lr, on_break, &bs);

    cv_pgrow row;
    cv_applog_record rec;
    view pv = {0}, lv = {0};
    bool has_pg = false, has_log = false, log_ok = true;
    int64_t prev = -1, max_pg = -1;
    char diff[160], lerr[512];
    if (pr) {
        while ((r = cv_pgread_next(pr, &row, c->err, c->errlen)) == 1 &&
               strcmp(row.topic, u->topic) != 0)
            ;
        if (r < 0)
            goto out;
        has_pg = r == 1;
    }
    r = cv_applog_reader_next(lr, &rec, lerr, sizeof(lerr));
    has_log = r == 1;
    if (r < 0) {
        log_ok = false;
        st->log_damaged++;
        emit(c, CV_VERIFY_LOG_DAMAGED, u, -1, -1, NULL, lerr);
        if (conf->repair && (*again = quarantine_damage(c, u, lr)))
            goto out;
    }
    r = 0;
    /* Both streams ascend by offset. A record and a row at one offset with
     * one message id are compared field by field; anything else is set
     * aside (pg_left, log_left) and matched by identity (message id and
     * content) with the other side's at the same offset once both streams
     * are past it, then across offsets at the end: offsets are positions,
     * and they start over (see "Generations" in applog/FORMAT.md). */
    int64_t last_log_off = -1;
    while (log_ok && (has_pg || has_log)) {
        int64_t off;
        bool adv_pg = false, adv_log = false;
        /* Both streams are past `prev`: settle what was set aside there. */
        int64_t head =
            has_pg && (!has_log || row.offset <= rec.offset) ? row.offset : rec.offset;
        if (prev >= 0 && head > prev)
            settle(c, u, &pg_left, &log_left, prev);
        if (has_pg)
            view_from_row(&pv, &row);
        if (has_log && (!has_pg || rec.offset < row.offset)) {
            off = rec.offset;
            view_from_log(&lv, &rec, c->arena);
            if ((r = push_cand(&log_left, &lv, off, false, false)) < 0)
                break;
            st->log_records++;
            adv_log = true;
        } else if (has_pg && (!has_log || row.offset < rec.offset)) {
            off = row.offset;
            st->pg_rows++;
            if ((r = push_cand(&pg_left, &pv, off, true, last_log_off == off)) < 0)
                break;
            adv_pg = true;
        } else {
            off = row.offset;
            view_from_log(&lv, &rec, c->arena);
            st->pg_rows++;
            st->log_records++;
            if (!lv.decoded || !pv.decoded || strcmp(pv.message_id, lv.message_id) == 0) {
                if (view_diff(&pv, &lv, diff, sizeof(diff))) {
                    st->different++;
                    emit(c, CV_VERIFY_DIFFERENT, u, off, off, row.message_id, diff);
                } else {
                    st->matched++;
                }
            } else if ((r = push_cand(&pg_left, &pv, off, true, true)) < 0 ||
                       (r = push_cand(&log_left, &lv, off, false, false)) < 0) {
                break;
            }
            adv_pg = adv_log = true;
        }
        if (adv_log)
            last_log_off = off;
        if (adv_pg)
            max_pg = off;
        if (prev >= 0 && off > prev + 1) {
            int64_t *x = vec_push(&gapv);
            if (!x) {
                r = -ENOMEM;
                break;
            }
            x[0] = prev + 1;
            x[1] = off - 1;
        }
        prev = off;
        c->since_progress++;
        progress(c, u, false);
        if (adv_pg) {
            while ((r = cv_pgread_next(pr, &row, c->err, c->errlen)) == 1 &&
                   strcmp(row.topic, u->topic) != 0)
                ;
            if (r < 0)
                goto out;
            has_pg = r == 1;
            r = 0;
        }
        if (adv_log) {
            int x = cv_applog_reader_next(lr, &rec, lerr, sizeof(lerr));
            has_log = x == 1;
            if (x < 0) {
                log_ok = false;
                st->log_damaged++;
                emit(c, CV_VERIFY_LOG_DAMAGED, u, -1, -1, NULL, lerr);
                if (conf->repair && (*again = quarantine_damage(c, u, lr)))
                    goto out;
            }
        }
    }
    if (r == 0 && prev >= 0)
        settle(c, u, &pg_left, &log_left, prev);
    if (r == 0)
        r = match_left(c, u, &pg_left, &log_left, &only_pg);
    pr = cv_pgread_free(pr); /* ends the cursor's transaction */

    /* Offsets of the consumer groups against the rows. */
    for (size_t i = 0; max_pg >= 0 && i < c->offsets.n; i++) {
        const groupoff *go = (const groupoff *)c->offsets.v + i;
        if (go->partition != u->partition || strcmp(go->topic, u->topic) != 0 ||
            go->next > max_pg)
            continue;
        /* Kafka's offsets may have started over (a topic re-created): the
         * rows the group's last write could see end at its newest row. */
        int64_t newest = -1;
        /* The offset of the partition's row persisted last at or before the
         * group's updated_at: the rows and the offsets of a batch are
         * written in one transaction, rows first. */
        if ((r = cv_pgverify_newest_row(c->conn, u->channel, u->topic, u->partition,
                                        go->updated_at, &newest, c->err, c->errlen)) < 0)
            goto out;
        if (newest >= 0 && newest < go->next)
            continue;
        char detail[300];
        snprintf(detail, sizeof(detail),
                 "consumer group %s: next offset %" PRId64
                 " in chatvault.kafka_offsets, but rows go up to offset %" PRId64
                 " and the newest row it was written with is at offset %" PRId64,
                 go->group, go->next, max_pg, newest);
        st->offsets++;
        emit(c, CV_VERIFY_OFFSETS, u, go->next, max_pg, NULL, detail);
    }
    if (gapv.n) {
        if ((r = load_rejected(c, u, &g)) < 0)
            goto out;
        for (size_t i = 0; i < gapv.n; i++) {
            const int64_t *x = (const int64_t *)gapv.v + 2 * i;
            report_gap(c, u, &g, x[0], x[1]);
        }
    }
    if ((r = resolve_candidates(c, u, &log_left)) < 0)
        goto out;
    progress(c, u, true);
    if (conf->repair && log_ok) {
        c->repairing = true;
        progress(c, u, true);
        r = repair_pg(c, u, &log_left);
        if (r == 0)
            r = repair_log_all(c, u, &only_pg, &bs);
        c->repairing = false;
    }
out:
    cv_pgread_free(pr);
    cv_applog_reader_free(lr);
    cands_free(&pg_left);
    cands_free(&log_left);
    cands_free(&only_pg);
    free(gapv.v);
    free(g.rej);
    free(bs.v.v);
    return r;
}

static void add_stats(cv_verify_stats *to, const cv_verify_stats *s) {
    to->partitions += s->partitions;
    to->pg_rows += s->pg_rows;
    to->log_records += s->log_records;
    to->matched += s->matched;
    to->only_pg += s->only_pg;
    to->only_log += s->only_log;
    to->different += s->different;
    to->offsets += s->offsets;
    to->log_damaged += s->log_damaged;
    to->segments_missing += s->segments_missing;
    to->duplicates += s->duplicates;
    to->gaps += s->gaps;
    to->gap_offsets += s->gap_offsets;
    to->repaired_pg += s->repaired_pg;
    to->repaired_log += s->repaired_log;
    to->quarantined += s->quarantined;
    to->repair_skipped += s->repair_skipped;
}

/* A worker: its own connection, arena, repair stores and counts; takes
 * the next partition until none is left or a worker failed. */
typedef struct worker {
    vctx c;
    cv_verify_stats st;
    char err[1024];
    pthread_t th;
    bool started;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    pthread_setname_np(pthread_self(), "cv-verify");
    vctx *c = &w->c;
    vshared *sh = c->sh;
    int r = 0;
    c->conn = cv_pg_connect(c->conf->pg_conninfo, w->err, sizeof(w->err));
    c->arena = cv_arena_new((size_t)256 << 20);
    if (!c->conn)
        r = -CV_ESTORE;
    else if (!c->arena)
        r = -ENOMEM;
    for (;;) {
        pthread_mutex_lock(&sh->mu);
        size_t i = sh->next_unit++;
        if (r < 0 && !sh->err) {
            sh->err = r;
            snprintf(sh->errmsg, sizeof(sh->errmsg), "%s",
                     r == -ENOMEM ? "out of memory" : w->err);
        }
        bool stop = sh->err != 0 || i >= c->units.n;
        pthread_mutex_unlock(&sh->mu);
        if (stop)
            break;
        const unit *u = (const unit *)c->units.v + i;
        r = compare_unit(c, u);
        if (r == 0) {
            w->st.partitions++;
            pthread_mutex_lock(&sh->mu);
            sh->prog.partitions_done++;
            pthread_mutex_unlock(&sh->mu);
            progress(c, u, true);
        }
    }
    c->store = cv_pgstore_free(c->store);
    c->rlog = cv_applog_free(c->rlog);
    c->arena = cv_arena_free(c->arena);
    if (c->conn)
        PQfinish(c->conn);
    c->conn = NULL;
    return NULL;
}

int cv_verify_run(const cv_verify_conf *conf, cv_verify_stats *ret_stats, char *errbuf,
                  size_t errlen) {
    cv_verify_stats st = {0};
    vshared sh = {0};
    pthread_mutex_init(&sh.mu, NULL);
    vctx c = {
        .conf = conf,
        .sh = &sh,
        .st = &st,
        .units = {.size = sizeof(unit)},
        .offsets = {.size = sizeof(groupoff)},
        .err = errbuf,
        .errlen = errlen,
    };
    size_t njobs = conf->jobs ? conf->jobs : 2;
    worker *ws = NULL;
    int r = 0;
    if (sodium_init() < 0) {
        snprintf(errbuf, errlen, "libsodium failed to initialise");
        r = -EIO;
        goto out;
    }
    if (!conf->keys || conf->nlog_dirs == 0) {
        snprintf(errbuf, errlen, "verify needs log.dir and log.key_file");
        r = -EINVAL;
        goto out;
    }
    c.conn = cv_pg_connect(conf->pg_conninfo, errbuf, errlen);
    if (!c.conn) {
        r = -CV_ESTORE;
        goto out;
    }
    if ((r = cv_pgmigrate_check(c.conn, errbuf, errlen)) < 0)
        goto out;
    if ((r = load_pg_units(&c)) < 0)
        goto out;
    for (size_t i = 0; i < conf->nlog_dirs; i++) {
        char perr[512];
        r = cv_applog_partitions(conf->log_dirs[i], add_log_partition, &c, perr,
                                 sizeof(perr));
        if (r == -ENOENT) {
            r = 0; /* no log directory yet: the log holds nothing */
        } else if (r < 0) {
            snprintf(errbuf, errlen, "%s", r == -ENOMEM ? "out of memory" : perr);
            goto out;
        }
    }
    fold_units(&c);
    if ((r = load_group_offsets(&c)) < 0)
        goto out;
    PQfinish(c.conn);
    c.conn = NULL;
    sh.prog.partitions_total = c.units.n;
    for (size_t i = 0; i < c.units.n; i++)
        sh.prog.messages_total += ((unit *)c.units.v)[i].pg_rows;
    if (njobs > c.units.n)
        njobs = c.units.n ? c.units.n : 1;
    if (!(ws = calloc(njobs, sizeof(*ws)))) {
        r = -ENOMEM;
        snprintf(errbuf, errlen, "out of memory");
        goto out;
    }
    for (size_t k = 0; k < njobs; k++) {
        ws[k].c = c;
        ws[k].c.st = &ws[k].st;
        ws[k].c.err = ws[k].err;
        ws[k].c.errlen = sizeof(ws[k].err);
        if (pthread_create(&ws[k].th, NULL, work, &ws[k]) != 0) {
            pthread_mutex_lock(&sh.mu);
            if (!sh.err) {
                sh.err = -EAGAIN;
                snprintf(sh.errmsg, sizeof(sh.errmsg), "cannot start a verify thread");
            }
            pthread_mutex_unlock(&sh.mu);
            break;
        }
        ws[k].started = true;
    }
    for (size_t k = 0; k < njobs; k++) {
        if (ws[k].started)
            pthread_join(ws[k].th, NULL);
        add_stats(&st, &ws[k].st);
    }
    if (sh.err) {
        r = sh.err;
        snprintf(errbuf, errlen, "%s", sh.errmsg);
    }
out:
    free(ws);
    for (size_t i = 0; i < c.units.n; i++) {
        free(((unit *)c.units.v)[i].topic);
        free(((unit *)c.units.v)[i].channel);
    }
    free(c.units.v);
    for (size_t i = 0; i < c.offsets.n; i++) {
        free(((groupoff *)c.offsets.v)[i].group);
        free(((groupoff *)c.offsets.v)[i].topic);
        free(((groupoff *)c.offsets.v)[i].updated_at);
    }
    free(c.offsets.v);
    if (c.conn)
        PQfinish(c.conn);
    pthread_mutex_destroy(&sh.mu);
    *ret_stats = st;
    return r;
}
