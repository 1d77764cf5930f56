/*
 * verify_report — what verify tells its caller: findings (conf->finding)
 * and progress (conf->progress), under the run's lock; the gaps neither
 * store holds nor chatvault.rejected explains; the log's records
 * PostgreSQL has no row for, told apart from duplicates; log segments that
 * do not chain (the reader's break callback). The kinds are defined in
 * verify.h.
 *
 * Threading: called from the workers, each with its own vctx; the
 * callbacks to the caller are serialised by vshared.mu.
 */
#include "history/verify_internal.h"

#include <inttypes.h>
#include <stdio.h>

#include "pg/pgverify.h"

#define LOOKUP_BATCH 1000   /* message ids per duplicate lookup */
#define PROGRESS_EVERY 8192 /* offsets between progress calls */

/* ---- to the caller ---------------------------------------------------- */

void cv_verify_i_emit(vctx *c, cv_verify_kind kind, const unit *u, int64_t first,
                      int64_t last, const char *id, const char *detail) {
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

void cv_verify_i_progress(vctx *c, const unit *u, bool force) {
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

/* Reports [first, last] minus the rejected offsets in it. */
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
            cv_verify_i_emit(c, CV_VERIFY_GAP, u, from, g->rej[i] - 1, NULL,
                             "neither store holds these offsets and chatvault.rejected "
                             "does not explain them");
        }
        from = g->rej[i] + 1;
    }
    if (from <= last) {
        c->st->gaps++;
        c->st->gap_offsets += (uint64_t)(last - from + 1);
        cv_verify_i_emit(c, CV_VERIFY_GAP, u, from, last, NULL,
                         "neither store holds these offsets and chatvault.rejected "
                         "does not explain them");
    }
}

/* Reports the gaps the comparison found (gapv: pairs of first and last
 * offset), minus what chatvault.rejected explains; that list is read only
 * when there is a gap, after the partition's cursor is closed. */
int cv_verify_i_report_gaps(vctx *c, const unit *u, const vec *gapv) {
    gaps g = {0};
    int r = 0;
    if (gapv->n && (r = load_rejected(c, u, &g)) == 0)
        for (size_t i = 0; i < gapv->n; i++) {
            const int64_t *x = (const int64_t *)gapv->v + 2 * i;
            report_gap(c, u, &g, x[0], x[1]);
        }
    free(g.rej);
    return r;
}

/* ---- only in the log: duplicates or missing --------------------------- */

/* Splits the candidates into duplicates (PostgreSQL holds their version,
 * message id and revision, from another offset) and records PostgreSQL lacks, which are reported and kept
 * in *cands (duplicates are removed). */
int cv_verify_i_resolve_candidates(vctx *c, const unit *u, vec *cands) {
    cand *cv = cands->v;
    size_t keep = 0;
    const char *ids[LOOKUP_BATCH];
    uint32_t revs[LOOKUP_BATCH];
    bool held[LOOKUP_BATCH];
    for (size_t i = 0; i < cands->n; i += LOOKUP_BATCH) {
        size_t n = cands->n - i < LOOKUP_BATCH ? cands->n - i : LOOKUP_BATCH;
        size_t nid = 0;
        for (size_t k = i; k < i + n; k++)
            if (cv[k].message_id) {
                revs[nid] = cv[k].revision;
                ids[nid++] = cv[k].message_id;
            }
        int r = cv_pgverify_held_ids(c->conn, u->channel, ids, revs, nid, held, c->err,
                                     c->errlen);
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
            cv_verify_i_emit(c, CV_VERIFY_ONLY_LOG, u, cv[k].offset, cv[k].offset,
                             id ? id : "",
                             id ? "PostgreSQL has no row for this record"
                                : "PostgreSQL has no row; the log value does not decode");
            cv[keep++] = cv[k];
        }
    }
    cands->n = keep;
    return 0;
}

/* ---- breaks in the log's chain ---------------------------------------- */

void cv_verify_i_on_break(void *opaque, const cv_applog_break *b) {
    breaks *bs = opaque;
    char detail[600];
    snprintf(detail, sizeof(detail),
             "log segment %s does not chain to offset %" PRId64
             ": the segment(s) between were removed or lost",
             b->file, b->after_offset);
    bs->c->st->segments_missing++;
    cv_verify_i_emit(bs->c, CV_VERIFY_SEGMENT_MISSING, bs->u, b->after_offset + 1,
                     b->next_offset - 1, NULL, detail);
    cv_applog_break *x = vec_push(&bs->v);
    if (!x) {
        bs->nomem = true;
        return;
    }
    *x = *b;
    x->file = NULL;
}
