/*
 * verify_repair — verify --repair: records only in the log are written to
 * PostgreSQL through pgstore (idempotent; the consumer groups' offsets are
 * left alone), rows only in PostgreSQL are appended to repair directories
 * of the log (bridging a lost segment, or in a new generation where the log
 * holds their offset with another message), and a damaged segment is moved
 * aside for the partition to be compared again (see verify.h). Nothing is
 * deleted nor overwritten. Also the reader of a partition over every log
 * directory, which the comparison uses too.
 *
 * Threading: a worker's; the pgstore and the shared repair session it opens
 * on first use are its vctx's (store, rlog), freed when it ends.
 */
#include "history/verify_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "pg/pgread.h"
#include "record.h"

#define REPAIR_BATCH 5000   /* records per PostgreSQL repair transaction */
#define QUERY_OFFSETS 10000 /* offsets per query for rows to rebuild */
#define APPEND_MAX 65536    /* records per repair append (one fdatasync) */
#define APPEND_BYTES ((size_t)64 << 20)
#define ARENA_LIMIT ((size_t)1 << 30)
#define VALUES_LIMIT ((size_t)1 << 30)

/* The log's records of the partition, from every log directory. */
int cv_verify_i_open_dirs_reader(vctx *c, const unit *u, cv_applog_reader **ret) {
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

/* ---- a damaged log -------------------------------------------------- */

/* verify --repair on a damaged log: moves the damaged segment (or seal) the
 * reader stopped at aside, where it stays as evidence, and puts its intact
 * records back, so that the partition reads again and a new comparison
 * rebuilds the rest from PostgreSQL. True when there is something to
 * compare again. */
bool cv_verify_i_quarantine_damage(vctx *c, const unit *u, const cv_applog_reader *lr) {
    const char *file;
    uint64_t pos;
    if (!cv_applog_reader_damage(lr, &file, &pos))
        return false;
    char saved[PATH_MAX], err[768], detail[PATH_MAX * 2 + 200];
    if (cv_applog_quarantine(file, pos, saved, sizeof(saved), err, sizeof(err)) < 0) {
        cv_verify_i_emit(c, CV_VERIFY_LOG_DAMAGED, u, -1, -1, NULL, err);
        return false;
    }
    snprintf(detail, sizeof(detail),
             "repair: %s moved aside to %s (kept as evidence); its records before "
             "byte %" PRIu64 " stay, the rest is rebuilt from PostgreSQL",
             file, saved, pos);
    cv_verify_i_emit(c, CV_VERIFY_LOG_DAMAGED, u, -1, -1, NULL, detail);
    c->st->quarantined++;
    return true;
}

/* ---- records only in the log, to PostgreSQL -------------------------- */

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
int cv_verify_i_repair_pg(vctx *c, const unit *u, vec *cands) {
    cand *cv = cands->v;
    if (!cands->n)
        return 0;
    int r = 0;
    if (!c->store) {
        r = cv_pgstore_open(c->conf->pg_conninfo, "chatvault-verify", 1, &c->store,
                            c->err, c->errlen);
        if (r < 0)
            return r;
    }
    cv_applog_reader *rd = NULL;
    r = cv_verify_i_open_dirs_reader(c, u, &rd);
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

/* ---- rows only in PostgreSQL, to the log ------------------------------ */

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

/* Whether rows (in offset order) has one at `offset`. */
static bool at_offset(const cand *rows, size_t n, int64_t offset) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (rows[mid].offset < offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && rows[lo].offset == offset;
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
        cv_pgread_sel sel = cv_verify_i_unit_rows(u);
        sel.ids = ids + i;
        sel.nids = n - i < QUERY_OFFSETS ? n - i : QUERY_OFFSETS;
        cv_pgread *rd = NULL;
        r = cv_pgread_open(c->conn, &sel, &rd, c->err, c->errlen);
        cv_pgrow row;
        while (r == 0 && (r = cv_pgread_next(rd, &row, c->err, c->errlen)) == 1) {
            r = 0;
            /* By id the reader returns every version of the message:
             * only the rows at the offsets to rebuild. */
            if (strcmp(row.topic, u->topic) != 0 || !at_offset(rows, n, row.offset))
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

/* Repairs the log: rows inside a lost segment's range go to a session that
 * bridges it, rows whose offset the log holds with another message (or
 * that share an offset with another row to repair) to sessions in new
 * generations, one per row at an offset, the others to the run's shared
 * session. */
int cv_verify_i_repair_log_all(vctx *c, const unit *u, vec *only_pg, const breaks *bs) {
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
