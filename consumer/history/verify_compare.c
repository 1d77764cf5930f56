/*
 * verify_compare — the comparison of one topic-partition (see verify.h for
 * what counts as a difference): PostgreSQL's rows (a server-side cursor,
 * sha256(body) computed by the server) and the log's records (every log
 * directory, every generation) streamed side by side and merged by offset;
 * rows and records that do not pair up at their offset set aside and
 * matched by message id and content; the consumer groups' offsets checked
 * against the rows. Memory grows with the differences only. Reporting is
 * verify_report.c's, repairs verify_repair.c's.
 *
 * Threading: a worker's, on its vctx (its own connection and arena).
 */
#include "history/verify_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "chatvault.pb-c.h"
#include "keyring.h"
#include "pg/pgread.h"
#include "pg/pgverify.h"
#include "util.h"

/* ---- one side's view of a message ------------------------------------- */

typedef struct view {
    int64_t offset;
    const char *message_id, *channel, *sender_id, *content_type, *reply_to;
    int64_t sent_at_us;
    uint32_t revision;
    bool deleted;
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
    v->revision = row->revision;
    v->deleted = row->deleted;
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
    v->revision = m->revision;
    v->deleted = m->deleted;
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
    DIFF(a->revision != b->revision, "revision");
    DIFF(a->deleted != b->deleted, "deleted");
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
    /* The version: its revision and whether it is a tombstone. */
    unsigned char ver[5];
    cv_be32(ver, v->revision);
    ver[4] = v->deleted;
    crypto_generichash_update(&h, ver, 5);
    crypto_generichash_final(&h, out, 32);
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
    if (w->decoded) {
        view_fp(w, x->fp);
        x->revision = w->revision;
    }
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
                    cv_verify_i_emit(
                        c, CV_VERIFY_DIFFERENT, u, off, off, p[i].message_id,
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
        cv_verify_i_emit(
            c, CV_VERIFY_ONLY_PG, u, o[i].offset, o[i].offset, o[i].message_id,
            o[i].collides ? "the log holds another message at this offset, not this one"
                          : "the log has no record at this offset");
    }
    return 0;
}

/* ---- comparing one topic-partition ------------------------------------ */

/* One comparison of a topic-partition: both stores' streams, ascending by
 * offset, and what is set aside while they are merged. */
typedef struct merge {
    cv_pgread *pr;        /* NULL when PostgreSQL has no rows */
    cv_applog_reader *lr; /* every log directory's records */
    cv_pgrow row;         /* the current row, when has_pg */
    cv_applog_record rec; /* the current record, when has_log */
    bool has_pg, has_log, log_ok;
    view pv, lv;
    int64_t prev;          /* the offset compared last, -1: none */
    int64_t max_pg;        /* the highest offset of a row, -1: none */
    int64_t last_log_off;  /* the offset of the record read last */
    vec pg_left, log_left; /* cand: set aside, matched by identity */
    vec only_pg;           /* cand: rows the log holds no record of */
    vec gapv;              /* pairs of offsets: ranges neither store holds */
    /* segments retention recorded as dropped (applog/FORMAT.md
     * "Retention"): rows at their offsets await that run's deletion */
    cv_applog_expiry_candidate *expired;
    size_t nexpired;
    char lerr[512]; /* the log reader's error */
} merge;

/* A row at the offsets of a segment retention recorded as dropped while the
 * segment is still there: the run that recorded it stopped before deleting
 * the rows (it deletes them before it removes the file). Once the file is
 * gone, the rows left at those offsets are ones retention kept (a later
 * generation's, say) and are compared as any other. */
static bool expired_row(const merge *s, int64_t offset) {
    for (size_t i = 0; i < s->nexpired; i++)
        if (s->expired[i].pending && offset >= s->expired[i].e.first_offset &&
            offset <= s->expired[i].e.last_offset)
            return true;
    return false;
}

/* The generation of the directory an expiry record is in (0: the
 * partition directory; else its gen-* start). */
static int64_t dir_generation(const char *dir) {
    const char *base = strrchr(dir, '/');
    base = base ? base + 1 : dir;
    return strncmp(base, "gen-", 4) == 0 ? strtoll(base + 4, NULL, 10) : 0;
}

/* A record of the log at the offsets of a segment retention dropped from
 * its generation: one a repair directory holds (verify --repair rebuilt
 * it), expired with the rows it stood for. */
static bool expired_record(const merge *s, const cv_applog_record *rec) {
    for (size_t i = 0; i < s->nexpired; i++) {
        const char *dir = s->expired[i].dir;
        size_t dl = strlen(dir);
        if (rec->offset >= s->expired[i].e.first_offset &&
            rec->offset <= s->expired[i].e.last_offset &&
            dir_generation(dir) == rec->generation && strncmp(rec->file, dir, dl) == 0 &&
            strncmp(rec->file + dl, "/repair-", 8) == 0)
            return true;
    }
    return false;
}

/* The next log record that is not expired; cv_applog_reader_next's result. */
static int next_record(vctx *c, merge *s) {
    int r;
    while ((r = cv_applog_reader_next(s->lr, &s->rec, s->lerr, sizeof(s->lerr))) == 1 &&
           expired_record(s, &s->rec))
        c->st->expired_records++;
    return r;
}

/* Every log directory's record of segments retention dropped. */
static int load_expired(vctx *c, const unit *u, merge *s) {
    const cv_verify_conf *conf = c->conf;
    for (size_t i = 0; i < conf->nlog_dirs; i++) {
        char dir[4096];
        int r = cv_applog_partition_dir(conf->log_dirs[i], u->topic, u->partition, dir,
                                        sizeof(dir));
        cv_applog_expiry_candidate *v = NULL;
        size_t n = 0;
        if (r == 0)
            r = cv_applog_expiry_recorded(dir, conf->keys, false, &v, &n, c->err,
                                          c->errlen);
        else
            cv_errf(c->err, c->errlen, "log directory of %s-%d under %s: path too long",
                    u->topic, (int)u->partition, conf->log_dirs[i]);
        if (r < 0)
            return r;
        if (n == 0)
            continue;
        cv_applog_expiry_candidate *nv =
            realloc(s->expired, (s->nexpired + n) * sizeof(*nv));
        if (!nv) {
            cv_applog_expiry_candidates_free(v, n);
            return -ENOMEM;
        }
        s->expired = nv;
        memcpy(s->expired + s->nexpired, v, n * sizeof(*v));
        s->nexpired += n;
        free(v); /* the entries moved, their dirs with them */
    }
    return 0;
}

/* The next row of the partition (the reader walks the channel's rows of
 * every topic): sets has_pg. */
static int next_row(vctx *c, const unit *u, merge *s) {
    if (!s->pr)
        return 0;
    int r;
    while ((r = cv_pgread_next(s->pr, &s->row, c->err, c->errlen)) == 1) {
        if (strcmp(s->row.topic, u->topic) != 0)
            continue;
        if (!expired_row(s, s->row.offset))
            break;
        c->st->expired_rows++;
    }
    if (r < 0)
        return r;
    s->has_pg = r == 1;
    return 0;
}

/* The log reader stopped because the cold tier's target is unreachable
 * or not there (no such bucket, a directory not mounted): no damage, a
 * failure of the run (its error in c->err), so that --repair never moves
 * aside segments it could not read. */
static bool target_down(vctx *c, merge *s, int r) {
    if (r != -ENXIO && r != -EHOSTUNREACH && r != -ETIMEDOUT && r != -EACCES)
        return false;
    cv_errf(c->err, c->errlen, "%s", s->lerr);
    return true;
}

/* The log reader stopped on damage (s->lerr): reported, and the rest of
 * the partition is not compared. With --repair the damage is moved aside;
 * true when the partition is then to be compared again (*again). */
static bool log_damaged(vctx *c, const unit *u, merge *s, bool *again) {
    s->log_ok = false;
    c->st->log_damaged++;
    cv_verify_i_emit(c, CV_VERIFY_LOG_DAMAGED, u, -1, -1, NULL, s->lerr);
    return c->conf->repair && (*again = cv_verify_i_quarantine_damage(c, u, s->lr));
}

/* Compares what the streams hold at the lower of their two offsets, and
 * says which stream to advance. A record and a row at one offset with one
 * message id are compared field by field; anything else is set aside
 * (pg_left, log_left) and matched by identity (message id and content)
 * with the other side's at the same offset once both streams are past it,
 * then across offsets at the end: offsets are positions, and they start
 * over (see "Generations" in applog/FORMAT.md). */
static int merge_one(vctx *c, const unit *u, merge *s, bool *adv_pg, bool *adv_log) {
    cv_verify_stats *st = c->st;
    int64_t off;
    int r = 0;
    char diff[160];
    *adv_pg = *adv_log = false;
    /* Both streams are past `prev`: settle what was set aside there. */
    int64_t head = s->has_pg && (!s->has_log || s->row.offset <= s->rec.offset)
                       ? s->row.offset
                       : s->rec.offset;
    if (s->prev >= 0 && head > s->prev)
        settle(c, u, &s->pg_left, &s->log_left, s->prev);
    if (s->has_pg)
        view_from_row(&s->pv, &s->row);
    if (s->has_log && (!s->has_pg || s->rec.offset < s->row.offset)) {
        off = s->rec.offset;
        view_from_log(&s->lv, &s->rec, c->arena);
        if ((r = push_cand(&s->log_left, &s->lv, off, false, false)) < 0)
            return r;
        st->log_records++;
        *adv_log = true;
    } else if (s->has_pg && (!s->has_log || s->row.offset < s->rec.offset)) {
        off = s->row.offset;
        st->pg_rows++;
        if ((r = push_cand(&s->pg_left, &s->pv, off, true, s->last_log_off == off)) < 0)
            return r;
        *adv_pg = true;
    } else {
        off = s->row.offset;
        view_from_log(&s->lv, &s->rec, c->arena);
        st->pg_rows++;
        st->log_records++;
        if (!s->lv.decoded || !s->pv.decoded ||
            strcmp(s->pv.message_id, s->lv.message_id) == 0) {
            if (view_diff(&s->pv, &s->lv, diff, sizeof(diff))) {
                st->different++;
                cv_verify_i_emit(c, CV_VERIFY_DIFFERENT, u, off, off, s->row.message_id,
                                 diff);
            } else {
                st->matched++;
            }
        } else if ((r = push_cand(&s->pg_left, &s->pv, off, true, true)) < 0 ||
                   (r = push_cand(&s->log_left, &s->lv, off, false, false)) < 0) {
            return r;
        }
        *adv_pg = *adv_log = true;
    }
    if (*adv_log)
        s->last_log_off = off;
    if (*adv_pg)
        s->max_pg = off;
    if (s->prev >= 0 && off > s->prev + 1) {
        /* offsets of segments retention dropped are no gap */
        int64_t a = s->prev + 1, b = off - 1;
        for (bool moved = true; moved && a <= b;) {
            moved = false;
            for (size_t i = 0; i < s->nexpired; i++) {
                const cv_applog_expiry *e = &s->expired[i].e;
                if (e->first_offset <= a && a <= e->last_offset) {
                    a = e->last_offset + 1;
                    moved = true;
                }
                if (e->first_offset <= b && b <= e->last_offset) {
                    b = e->first_offset - 1;
                    moved = true;
                }
            }
        }
        int64_t *x = a <= b ? vec_push(&s->gapv) : NULL;
        if (a <= b && !x)
            return -ENOMEM;
        if (x) {
            x[0] = a;
            x[1] = b;
        }
    }
    s->prev = off;
    c->since_progress++;
    cv_verify_i_progress(c, u, false);
    return 0;
}

/* Each consumer group's next offset in chatvault.kafka_offsets against the
 * rows (max_pg: the partition's highest row). */
static int check_offsets(vctx *c, const unit *u, int64_t max_pg) {
    for (size_t i = 0; max_pg >= 0 && i < c->offsets.n; i++) {
        const groupoff *go = (const groupoff *)c->offsets.v + i;
        if (go->partition != u->partition || strcmp(go->topic, u->topic) != 0 ||
            go->next > max_pg)
            continue;
        /* Kafka's offsets may have started over (a topic re-created): the
         * rows the group's last write could see end at its newest row, the
         * partition's row persisted last at or before the group's
         * updated_at (the rows and the offsets of a batch are written in
         * one transaction, rows first). */
        int64_t newest = -1;
        int r = cv_pgverify_newest_row(c->conn, u->channel, u->topic, u->partition,
                                       go->updated_at, &newest, c->err, c->errlen);
        if (r < 0)
            return r;
        if (newest >= 0 && newest < go->next)
            continue;
        char detail[300];
        snprintf(detail, sizeof(detail),
                 "consumer group %s: next offset %" PRId64
                 " in chatvault.kafka_offsets, but rows go up to offset %" PRId64
                 " and the newest row it was written with is at offset %" PRId64,
                 go->group, go->next, max_pg, newest);
        c->st->offsets++;
        cv_verify_i_emit(c, CV_VERIFY_OFFSETS, u, go->next, max_pg, NULL, detail);
    }
    return 0;
}

/* The next log record, passing over those of erased senders (chatvault
 * erase --sender): the log keeps them, PostgreSQL does not, and neither is
 * a difference (nor anything --repair puts back). */
static int log_next(vctx *c, const unit *u, merge *s) {
    for (;;) {
        int x = next_record(c, s);
        if (x != 1 || !s->rec.value || !cv_keyring_any_sender_erased(c->conf->keys))
            return x;
        Chatvault__V1__ChatMessage *m =
            chatvault__v1__chat_message__unpack(NULL, s->rec.value_len, s->rec.value);
        bool skip =
            m && cv_keyring_sender_erased(c->conf->keys, u->channel, m->sender_id);
        if (m)
            chatvault__v1__chat_message__free_unpacked(m, NULL);
        if (!skip)
            return x;
        c->st->erased_records++;
    }
}

static int compare_unit_once(vctx *c, const unit *u, bool *again) {
    const cv_verify_conf *conf = c->conf;
    merge s = {
        .log_ok = true,
        .prev = -1,
        .max_pg = -1,
        .last_log_off = -1,
        .pg_left = {.size = sizeof(cand)},
        .log_left = {.size = sizeof(cand)},
        .only_pg = {.size = sizeof(cand)},
        .gapv = {.size = 2 * sizeof(int64_t)},
    };
    breaks bs = {.c = c, .u = u, .v = {.size = sizeof(cv_applog_break)}};
    int r = load_expired(c, u, &s);
    if (r < 0)
        goto out;
    if (u->pg_rows) {
        cv_pgread_sel sel = cv_verify_i_unit_rows(u);
        sel.digest_only = true;
        r = cv_pgread_open(c->conn, &sel, &s.pr, c->err, c->errlen);
        if (r < 0)
            goto out;
    }
    r = cv_verify_i_open_dirs_reader(c, u, &s.lr);
    if (r < 0)
        goto out;
    cv_applog_reader_on_break(s.lr, cv_verify_i_on_break, &bs);
    if ((r = next_row(c, u, &s)) < 0)
        goto out;
    r = log_next(c, u, &s);
    s.has_log = r == 1;
    if (r < 0 && target_down(c, &s, r))
        goto out;
    if (r < 0 && log_damaged(c, u, &s, again))
        goto out;
    r = 0;
    while (s.log_ok && (s.has_pg || s.has_log)) {
        bool adv_pg, adv_log;
        if ((r = merge_one(c, u, &s, &adv_pg, &adv_log)) < 0)
            break;
        if (adv_pg && (r = next_row(c, u, &s)) < 0)
            goto out;
        if (adv_log) {
            int x = log_next(c, u, &s);
            s.has_log = x == 1;
            if (x < 0 && target_down(c, &s, x)) {
                r = x;
                goto out;
            }
            if (x < 0 && log_damaged(c, u, &s, again))
                goto out;
        }
    }
    if (r == 0 && s.prev >= 0)
        settle(c, u, &s.pg_left, &s.log_left, s.prev);
    if (r == 0)
        r = match_left(c, u, &s.pg_left, &s.log_left, &s.only_pg);
    s.pr = cv_pgread_free(s.pr); /* ends the cursor's transaction */
    if ((r = check_offsets(c, u, s.max_pg)) < 0 ||
        (r = cv_verify_i_report_gaps(c, u, &s.gapv)) < 0 ||
        (r = cv_verify_i_resolve_candidates(c, u, &s.log_left)) < 0)
        goto out;
    cv_verify_i_progress(c, u, true);
    if (conf->repair && s.log_ok) {
        c->repairing = true;
        cv_verify_i_progress(c, u, true);
        r = cv_verify_i_repair_pg(c, u, &s.log_left);
        if (r == 0)
            r = cv_verify_i_repair_log_all(c, u, &s.only_pg, &bs);
        c->repairing = false;
    }
out:
    if (s.lr) {
        cv_applog_erased e;
        cv_applog_reader_erased(s.lr, &e);
        c->st->erased_segments += e.segments;
        c->st->erased_records += e.records;
    }
    cv_pgread_free(s.pr);
    cv_applog_reader_free(s.lr);
    cands_free(&s.pg_left);
    cands_free(&s.log_left);
    cands_free(&s.only_pg);
    cv_applog_expiry_candidates_free(s.expired, s.nexpired);
    free(s.gapv.v);
    free(bs.v.v);
    return r;
}

/* Compares (and repairs) one topic-partition; a repair that moved damage
 * aside compares it again, a few times at most (each round removes one
 * damaged file). */
int cv_verify_i_compare_unit(vctx *c, const unit *u) {
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
