/*
 * history/verify_internal.h — private to verify (history/verify*.c): the
 * run's shared state, a worker's context, the units of comparison, and the
 * functions one file calls in another, prefixed cv_verify_i_. The files:
 *
 *   verify.c          the run: which topic-partitions to compare, the
 *                     workers, the counts
 *   verify_compare.c  the comparison of one topic-partition: both stores'
 *                     streams merged by offset, matching by identity, the
 *                     consumer groups' offsets
 *   verify_report.c   findings and progress to the caller, gaps, the
 *                     log's records PostgreSQL lacks, missing segments
 *   verify_repair.c   --repair: each store rebuilt from the other, damage
 *                     moved aside
 *
 * Threading: a vctx is one worker's (its connection, arena, repair stores
 * and counts); what workers share is in vshared, under its mutex, and
 * the units and offsets, read-only once the workers run. Nothing outside
 * history/ includes this header; the public API is history/verify.h.
 */
#ifndef CV_VERIFY_INTERNAL_H
#define CV_VERIFY_INTERNAL_H

#include "history/verify.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "applog/applog.h"
#include "arena.h"
#include "pg/pgread.h"
#include "pg/pgstore.h"

/* ---- the run and its units -------------------------------------------- */

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
    uint32_t revision;    /* the version, with message_id */
    unsigned char fp[32]; /* the compared fields (view_fp) */
    bool collides;        /* PostgreSQL's: the log holds its offset */
    bool done;            /* repair_pg: written */
} cand;

typedef struct vec {
    void *v;
    size_t n, cap, size;
} vec;

/* A new element at the end of x, or NULL when memory ran out. */
static inline void *vec_push(vec *x) {
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

/* Breaks seen by the reader of the partition being compared. */
typedef struct breaks {
    vctx *c;
    const unit *u;
    vec v; /* cv_applog_break, file cleared */
    bool nomem;
} breaks;

/* The selection of u's rows, every one of them, of every version (the log
 * holds every version at its own offset: so must the comparison); callers
 * narrow it. */
static inline cv_pgread_sel cv_verify_i_unit_rows(const unit *u) {
    return (cv_pgread_sel){
        .channel = u->channel,
        .history = true,
        .partition = u->partition,
        .from_offset = -1,
        .to_offset = -1,
        .since_us = -1,
        .until_us = -1,
    };
}

/* ---- what one file calls in another, by the file that has it --------- */

/* verify_compare.c */
int cv_verify_i_compare_unit(vctx *c, const unit *u);

/* verify_report.c */
void cv_verify_i_emit(vctx *c, cv_verify_kind kind, const unit *u, int64_t first,
                      int64_t last, const char *id, const char *detail);
void cv_verify_i_progress(vctx *c, const unit *u, bool force);
void cv_verify_i_on_break(void *opaque, const cv_applog_break *b);
int cv_verify_i_report_gaps(vctx *c, const unit *u, const vec *gapv);
int cv_verify_i_resolve_candidates(vctx *c, const unit *u, vec *cands);

/* verify_repair.c */
int cv_verify_i_open_dirs_reader(vctx *c, const unit *u, cv_applog_reader **ret);
bool cv_verify_i_quarantine_damage(vctx *c, const unit *u, const cv_applog_reader *lr);
int cv_verify_i_repair_pg(vctx *c, const unit *u, vec *cands);
int cv_verify_i_repair_log_all(vctx *c, const unit *u, vec *only_pg, const breaks *bs);

#endif
