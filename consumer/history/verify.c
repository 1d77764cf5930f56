/*
 * verify — see verify.h. This file holds the run: the topic-partitions to
 * compare (those PostgreSQL holds rows of and those the log directories
 * hold, folded into one list), the consumer groups' offsets, the worker
 * threads that take the partitions one at a time, and the counts. The
 * comparison of one partition is verify_compare.c's; verify_internal.h
 * lists the files.
 *
 * Threading: cv_verify_run reads the lists on its own connection, then
 * starts conf->jobs workers, each with its own connection, and joins them.
 */
#include "history/verify_internal.h"

#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "pg/pgmigrate.h"
#include "pg/pgverify.h"
#include "util.h"

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

/* ---- the workers ------------------------------------------------------ */

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
    to->expired_rows += s->expired_rows;
    to->expired_records += s->expired_records;
    to->erased_segments += s->erased_segments;
    to->erased_records += s->erased_records;
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
        r = cv_verify_i_compare_unit(c, u);
        if (r == 0) {
            w->st.partitions++;
            pthread_mutex_lock(&sh->mu);
            sh->prog.partitions_done++;
            pthread_mutex_unlock(&sh->mu);
            cv_verify_i_progress(c, u, true);
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
