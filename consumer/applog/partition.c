/*
 * applog/partition.c — the writer's partitions: the table that finds one
 * by (topic, partition), opening one (its directory, its current
 * generation, recovery of its last segment), and the partitions an append
 * adds beside one: the repair directory for late records and a new
 * generation (FORMAT.md "Late records", "Generations").
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

wseg *cv_applog_i_wseg_free(wseg *w) {
    if (!w)
        return NULL;
    if (w->fd >= 0)
        close(w->fd);
    free(w->path);
    free(w->tmp);
    cv_buf_release(&w->buf);
    sodium_memzero(w->subkey, sizeof(w->subkey));
    free(w);
    return NULL;
}

void cv_applog_i_part_free(part *p) {
    if (p->dcur != p->cur)
        cv_applog_i_wseg_free(p->cur);
    cv_applog_i_wseg_free(p->dcur);
    if (p->dirfd >= 0)
        close(p->dirfd);
    free(p->topic);
    free(p->dir);
    free(p->err);
    free(p->ioff);
    free(p->coff);
    free(p->cdig);
    free(p->cval);
    free(p->hoff);
    free(p->hdig);
    free(p->hval);
    free(p->touched);
    free(p->jidx);
    if (p->late)
        cv_applog_i_part_free(p->late);
    if (p->ngen)
        cv_applog_i_part_free(p->ngen);
    free(p);
}

/* FNV-1a over the topic's bytes and the partition's four. */
static uint64_t part_hash(const char *topic, int32_t partition) {
    uint64_t h = 0xcbf29ce484222325u;
    for (const unsigned char *c = (const unsigned char *)topic; *c; c++)
        h = (h ^ *c) * 0x100000001b3u;
    for (int i = 0; i < 4; i++)
        h = (h ^ (((uint32_t)partition >> (8 * i)) & 0xff)) * 0x100000001b3u;
    return h;
}

part *cv_applog_i_find_part(const cv_applog *log, const char *topic, int32_t partition) {
    if (!log->nbuckets)
        return NULL;
    uint64_t h = part_hash(topic, partition);
    for (part *p = log->buckets[h & (log->nbuckets - 1)]; p; p = p->hnext)
        if (p->hash == h && p->partition == partition && strcmp(p->topic, topic) == 0)
            return p;
    return NULL;
}

/* Adds a new partition to the list and the hash table, which doubles
 * whenever it holds more partitions than buckets. */
static int add_part(cv_applog *log, part *p) {
    if (log->nparts >= log->nbuckets) {
        size_t nb = log->nbuckets ? log->nbuckets * 2 : 64;
        part **b = calloc(nb, sizeof(*b));
        if (!b)
            return -ENOMEM;
        for (part *q = log->parts; q; q = q->next) {
            q->hnext = b[q->hash & (nb - 1)];
            b[q->hash & (nb - 1)] = q;
        }
        free(log->buckets);
        log->buckets = b;
        log->nbuckets = nb;
    }
    p->hash = part_hash(p->topic, p->partition);
    p->hnext = log->buckets[p->hash & (log->nbuckets - 1)];
    log->buckets[p->hash & (log->nbuckets - 1)] = p;
    p->next = log->parts;
    log->parts = p;
    log->nparts++;
    return 0;
}

void cv_applog_i_part_refuse(part *p, int err, const char *msg) {
    p->state = PART_REFUSED;
    p->refuse_err = err;
    free(p->err);
    p->err = strdup(msg);
}

/* Creates the directory p is written in (and, for a repair directory, the
 * partition directory it lives in) and opens it as p->dirfd. */
static int part_open_dir(cv_applog *log, part *p, char *errbuf, size_t errlen) {
    if (p->repair) {
        /* The partition directory the repair directory lives in. */
        char parent[PATH_MAX];
        if (cv_applog_partition_dir(log->dir, p->topic, p->partition, parent,
                                    sizeof(parent)) < 0)
            return -ENAMETOOLONG;
        if (mkdir(parent, 0700) < 0 && errno != EEXIST) {
            int e = errno;
            cv_errf(errbuf, errlen, "log directory %s: cannot create: %s", parent,
                    strerror(e));
            return -e;
        }
        if (mkdir(p->dir, 0700) < 0 && errno != EEXIST) {
            int e = errno;
            cv_errf(errbuf, errlen, "log directory %s: cannot create: %s", p->dir,
                    strerror(e));
            return -e;
        }
        int rr = cv_applog_i_sys_fsync_dir(log, parent);
        if (rr < 0) {
            cv_errf(errbuf, errlen, "log directory %s: fsync: %s", parent, strerror(-rr));
            return rr;
        }
    }
    if (mkdir(p->dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        cv_errf(errbuf, errlen, "log directory %s: cannot create: %s", p->dir,
                strerror(e));
        return -e;
    }
    /* The partition directory's entry in log.dir must be durable before
     * anything in it is reported so. A repair directory's is made so here;
     * a broker partition's by the append that opened it (see LAYOUT), once
     * for all the partitions it opened: a new broker opens hundreds in its
     * first batches, and each fsync of log.dir is a journal commit. */
    int r;
    if (p->repair) {
        if ((r = cv_applog_i_sys_fsync_dir(log, log->dir)) < 0) {
            cv_errf(errbuf, errlen, "log directory %s: fsync: %s", log->dir,
                    strerror(-r));
            return r;
        }
    } else {
        log->dir_unsynced = true;
    }
    p->dirfd = open(p->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (p->dirfd < 0) {
        int e = errno;
        cv_errf(errbuf, errlen, "log directory %s: %s", p->dir, strerror(e));
        return -e;
    }
    return 0;
}

/* Undoes what an unfinished or superseded part_open left (the directory's
 * descriptor, the index it read) so that the next one starts afresh. */
static void part_unopen(part *p) {
    if (p->dirfd >= 0)
        close(p->dirfd);
    p->dirfd = -1;
    p->ilen = p->dilen = 0;
}

/* Opens a partition: directory, stray temp files, recovery of the last
 * segment. On damage the partition is refused (PART_REFUSED). */
static int part_open(cv_applog *log, part *p, char *errbuf, size_t errlen) {
    int r = part_open_dir(log, p, errbuf, errlen);
    if (r < 0 || (r = cv_applog_i_remove_unfinished(log, p, errbuf, errlen)) < 0 ||
        (r = cv_applog_i_recover_last_segment(log, p, errbuf, errlen)) < 0)
        return r;
    if (!p->repair && (r = cv_applog_i_load_repair_held(log, p)) < 0)
        return r;
    memcpy(p->dchain, p->chain, DIGEST);
    p->dlast = p->last;
    p->dilen = p->ilen;
    p->state = PART_READY;
    return 0;
}

/* Points p->dir (the partition directory, with room for `dl`) at the
 * partition's current generation: the newest gen-* directory holding
 * segments of its own, else the partition directory (see GENERATIONS). */
static int writer_gen(part *p, size_t dl, char *errbuf, size_t errlen) {
    char **gens = NULL;
    size_t n = 0;
    int r = cv_applog_i_list_gen_dirs(p->dir, &gens, &n, errbuf, errlen);
    if (r < 0)
        return r;
    for (size_t i = n; i-- > 0;) {
        char *path = cv_applog_i_path_join(p->dir, gens[i]);
        if (!path) {
            r = -ENOMEM;
            break;
        }
        bool own = cv_applog_i_holds_segments(path);
        free(path);
        if (own) {
            size_t l = strlen(p->dir);
            snprintf(p->dir + l, dl - l, "/%s", gens[i]);
            p->gen = strtoll(gens[i] + sizeof(GEN_PREFIX) - 1, NULL, 10);
            break;
        }
    }
    cv_applog_i_free_names(gens, n);
    return r;
}

/* A repair session of cv_applog_repair_new_generation: p->dir (the
 * partition directory) becomes a new generation named by the session. */
static int repair_gen_dir(cv_applog *log, part *p, size_t dl, char *errbuf,
                          size_t errlen) {
    int r = cv_applog_i_make_dir(log, p->dir, true, errbuf, errlen);
    if (r < 0)
        return r;
    size_t l = strlen(p->dir);
    snprintf(p->dir + l, dl - l, "/" GEN_PREFIX "%020" PRId64, log->repair_session);
    p->gen = log->repair_session;
    return cv_applog_i_make_dir(log, p->dir, true, errbuf, errlen);
}

static int find_or_open_part(cv_applog *log, const char *topic, int32_t partition,
                             bool open_now, part **ret, char *errbuf, size_t errlen) {
    part *p = cv_applog_i_find_part(log, topic, partition);
    if (!p) {
        size_t tl = strlen(topic);
        if (tl == 0 || tl > 255 || strchr(topic, '/') || topic[0] == '.' ||
            partition < 0) {
            cv_errf(errbuf, errlen, "log: invalid topic-partition \"%s\"-%" PRId32, topic,
                    partition);
            return -EINVAL;
        }
        p = calloc(1, sizeof(*p));
        if (!p || !(p->topic = strdup(topic))) {
            free(p);
            return -ENOMEM;
        }
        p->partition = partition;
        p->dirfd = -1;
        p->committed = -1;
        size_t dl = strlen(log->dir) + tl + 16 + sizeof(GEN_PREFIX) +
                    sizeof(REPAIR_PREFIX) + 2 * NAME_DIGITS + 2;
        if (!(p->dir = malloc(dl))) {
            cv_applog_i_part_free(p);
            return -ENOMEM;
        }
        cv_applog_partition_dir(log->dir, topic, partition, p->dir, dl);
        p->repair = log->repair;
        int r = 0;
        if (log->repair && log->repair_gen)
            r = repair_gen_dir(log, p, dl, errbuf, errlen);
        else if (!log->repair)
            r = writer_gen(p, dl, errbuf, errlen);
        if (r < 0) {
            cv_applog_i_part_free(p);
            return r;
        }
        if (log->repair) {
            size_t l = strlen(p->dir);
            snprintf(p->dir + l, dl - l, "/" REPAIR_PREFIX "%020" PRId64,
                     log->repair_session);
        }
        if (log->repair_gen &&
            (r = cv_applog_i_make_dir(log, p->dir, true, errbuf, errlen)) < 0) {
            cv_applog_i_part_free(p);
            return r;
        }
        if (add_part(log, p) < 0) {
            cv_applog_i_part_free(p);
            return -ENOMEM;
        }
    }
    if (p->state == PART_REFUSED && p->recheck && open_now) {
        /* Refused for what recovery found, before anything was written:
         * look again (`chatvault verify --repair` may have mended it). */
        part_unopen(p);
        free(p->hoff);
        free(p->hdig);
        free(p->hval);
        p->hoff = NULL;
        p->hdig = NULL;
        p->hval = NULL;
        p->hlen = 0;
        p->recheck = false;
        p->state = PART_UNOPENED;
        p->refuse_err = 0;
    }
    if (p->state == PART_UNOPENED && !open_now) {
        *ret = p;
        return 0;
    }
    if (p->state == PART_UNOPENED) {
        int r = part_open(log, p, errbuf, errlen);
        if (r < 0 && p->state == PART_UNOPENED) {
            /* Not refused for damage: retried on the next append. */
            part_unopen(p);
            return r;
        }
    }
    if (p->state == PART_REFUSED) {
        cv_errf(errbuf, errlen, "%s", p->err);
        return p->refuse_err;
    }
    *ret = p;
    return 0;
}

int cv_applog_i_get_part(cv_applog *log, const char *topic, int32_t partition, part **ret,
                         char *errbuf, size_t errlen) {
    return find_or_open_part(log, topic, partition, true, ret, errbuf, errlen);
}

int cv_applog_set_committed(cv_applog *log, const char *topic, int32_t partition,
                            int64_t committed) {
    part *p = cv_applog_i_find_part(log, topic, partition);
    char err[256];
    int r = p ? 0 : find_or_open_part(log, topic, partition, false, &p, err, sizeof(err));
    if (r == 0)
        p->committed = committed;
    return r;
}

int cv_applog_repair_bridge(cv_applog *log, const char *topic, int32_t partition,
                            const unsigned char *after_chain,
                            const unsigned char *next_prev_chain, char *errbuf,
                            size_t errlen) {
    if (!log->repair) {
        cv_errf(errbuf, errlen, "log %s: only a repair session bridges", log->dir);
        return -EINVAL;
    }
    part *p;
    int r = cv_applog_i_get_part(log, topic, partition, &p, errbuf, errlen);
    if (r < 0)
        return r;
    if (p->last >= 0 || p->cur) {
        cv_errf(errbuf, errlen,
                "log %s: a bridge must come before the session's first record", p->dir);
        return -EBUSY;
    }
    memcpy(p->chain, after_chain, DIGEST);
    memcpy(p->dchain, after_chain, DIGEST);
    memcpy(p->bridge, next_prev_chain, DIGEST);
    return 0;
}

/* The new generation of p that this append writes from the entry at
 * `offset` on, created (empty, its entry durable) on first use. Its chain
 * starts at p's chain (see GENERATIONS). Runs on p's worker. */
int cv_applog_i_gen_part(cv_applog *log, part *p, int64_t offset, part **ret) {
    if (p->ngen) {
        *ret = p->ngen;
        return 0;
    }
    char base[PATH_MAX];
    if (cv_applog_partition_dir(log->dir, p->topic, p->partition, base, sizeof(base)) <
        0) {
        snprintf(p->jerr, sizeof(p->jerr), "log %s: partition directory name too long",
                 log->dir);
        return -ENAMETOOLONG;
    }
    part *g = calloc(1, sizeof(*g));
    size_t dl = strlen(base) + sizeof(GEN_PREFIX) + NAME_DIGITS + 2;
    if (!g || !(g->topic = strdup(p->topic)) || !(g->dir = malloc(dl))) {
        if (g)
            free(g->topic);
        free(g);
        return -ENOMEM;
    }
    g->partition = p->partition;
    g->dirfd = -1;
    int64_t start = cv_now_us();
    if (start <= p->gen)
        start = p->gen + 1;
    int r = 0;
    for (;; start++) {
        snprintf(g->dir, dl, "%s/" GEN_PREFIX "%020" PRId64, base, start);
        if (mkdir(g->dir, 0700) == 0)
            break;
        if (errno != EEXIST) {
            r = -errno;
            snprintf(p->jerr, sizeof(p->jerr), "log directory %s: cannot create: %s",
                     g->dir, strerror(-r));
            goto fail;
        }
    }
    g->gen = start;
    if ((r = cv_applog_i_sys_fsync_dir(log, base)) < 0) {
        snprintf(p->jerr, sizeof(p->jerr), "log directory %s: fsync: %s", base,
                 strerror(-r));
        goto fail;
    }
    g->dirfd = open(g->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (g->dirfd < 0) {
        r = -errno;
        snprintf(p->jerr, sizeof(p->jerr), "log directory %s: %s", g->dir, strerror(-r));
        goto fail;
    }
    g->state = PART_READY;
    g->last = g->dlast = -1;
    memcpy(g->chain, p->chain, DIGEST);
    memcpy(g->dchain, p->chain, DIGEST);
    p->ngen = g;
    p->regress_at = offset;
    p->regress_held = p->last;
    *ret = g;
    return 0;
fail:
    rmdir(g->dir);
    cv_applog_i_part_free(g);
    return r;
}

/* The partition's repair directory of this session, for late records: a
 * record below the tail that the partition does not hold cannot go into
 * the chain, so it goes beside it (see LATE RECORDS). */
int cv_applog_i_late_part(cv_applog *log, part *p, part **ret) {
    if (!p->late) {
        part *l = calloc(1, sizeof(*l));
        size_t dl = strlen(p->dir) + sizeof(REPAIR_PREFIX) + NAME_DIGITS + 2;
        if (!l || !(l->topic = strdup(p->topic)) || !(l->dir = malloc(dl))) {
            if (l)
                free(l->topic);
            free(l);
            return -ENOMEM;
        }
        snprintf(l->dir, dl, "%s/" REPAIR_PREFIX "%020" PRId64, p->dir,
                 log->repair_session);
        l->partition = p->partition;
        l->dirfd = -1;
        l->repair = true;
        p->late = l;
    }
    part *l = p->late;
    if (l->state == PART_UNOPENED) {
        int r = part_open(log, l, p->jerr, sizeof(p->jerr));
        if (r < 0 && l->state == PART_UNOPENED) {
            part_unopen(l);
            return r;
        }
    }
    if (l->state == PART_REFUSED) {
        snprintf(p->jerr, sizeof(p->jerr), "%s", l->err);
        return l->refuse_err;
    }
    *ret = l;
    return 0;
}
