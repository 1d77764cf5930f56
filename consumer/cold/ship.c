/*
 * cold/ship.c — one pass of shipping over a log directory (README "Cold
 * tier and off-site copy"): every sealed segment not shipped yet goes to
 * the target (cv_cold_ship checks it); past the hot window the local copy
 * of a shipped one is removed, after its file is checked against its stub
 * and the object read back and compared with the stub once more. A
 * failure stops its partition; the others go on. `chatvault cold ship` runs one pass;
 * the broker runs one every cold.ship_interval.
 */
#include "cold/cold.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

typedef struct pass {
    cv_cold *cold;
    const cv_cold_ship_opts *o;
    int64_t now_s;
    cv_cold_ship_stats st;
    char *errbuf; /* the first failure */
    size_t errlen;
    int first;      /* its code, 0 for none */
    char err[1024]; /* the current partition's failure */
} pass;

static void emit(pass *p, cv_cold_event_kind kind, const char *path, const char *key,
                 const cv_applog_cold_stub *st) {
    if (!p->o->on_event)
        return;
    cv_cold_event ev = {.kind = kind, .path = path, .key = key, .stub = st};
    p->o->on_event(p->o->opaque, &ev);
}

static int maybe_remove(pass *p, const cv_applog_cold_seg *cs, const char *path,
                        const char *stub_path) {
    struct stat sb;
    if (p->o->hot_window_s < 0 || stat(path, &sb) < 0 ||
        p->now_s - (int64_t)sb.st_mtime < p->o->hot_window_s) {
        p->st.kept++;
        return 0;
    }
    char err[1024];
    cv_applog_cold_stub stub, local;
    int r = cv_applog_cold_stub_read(stub_path, &stub, err, sizeof(err));
    if (r == 0)
        r = cv_applog_cold_describe(path, &local, err, sizeof(err));
    const char *why = r == 0 ? cv_cold_stub_mismatch(&stub, &local) : NULL;
    if (why) {
        snprintf(err, sizeof(err),
                 "log segment %s differs from what its stub %s says was shipped (%s): "
                 "it changed after it was shipped; remove the stub to ship it again",
                 path, stub_path, why);
        r = -CV_ECORRUPT;
    }
    if (r == 0)
        r = cv_cold_check(p->cold, &stub, path, err, sizeof(err));
    if (r < 0) {
        cv_errf(p->err, sizeof(p->err), "%s; the local copy is kept", err);
        return r;
    }
    if (p->o->dry_run) {
        emit(p, CV_COLD_WOULD_REMOVE, path, stub.key, &stub);
        p->st.removed++;
        return 0;
    }
    if (unlink(path) < 0) {
        r = -errno;
        cv_errf(p->err, sizeof(p->err), "removing %s: %s", path, strerror(-r));
        return r;
    }
    if ((r = cv_fsync_dir(cs->dir)) < 0) {
        cv_errf(p->err, sizeof(p->err),
                "removed %s, but the fsync of its directory %s failed: %s", path, cs->dir,
                strerror(-r));
        return r;
    }
    emit(p, CV_COLD_REMOVED, path, stub.key, &stub);
    p->st.removed++;
    return 0;
}

static int on_seg(void *opaque, const cv_applog_cold_seg *cs) {
    pass *p = opaque;
    if (p->o->stop && atomic_load(p->o->stop))
        return -ECANCELED;
    if (cs->last || !cs->local)
        return 0; /* the open segment is never shipped; a cold-only one is done */
    char path[PATH_MAX], stub_path[PATH_MAX + 8];
    snprintf(path, sizeof(path), "%s/%s", cs->dir, cs->name);
    snprintf(stub_path, sizeof(stub_path), "%s.cold", path);
    if (cs->stub)
        return maybe_remove(p, cs, path, stub_path);
    if (p->o->dry_run) {
        emit(p, CV_COLD_WOULD_SHIP, path, cs->key, NULL);
        p->st.shipped++;
        return 0;
    }
    cv_applog_cold_stub st;
    int r =
        cv_cold_ship(p->cold, cs->dir, cs->name, cs->key, &st, p->err, sizeof(p->err));
    if (r < 0)
        return r;
    emit(p, CV_COLD_SHIPPED, path, cs->key, &st);
    p->st.shipped++;
    p->st.shipped_bytes += st.bytes;
    return maybe_remove(p, cs, path, stub_path);
}

static int on_partition(void *opaque, const char *path, const char *topic,
                        int32_t partition) {
    pass *p = opaque;
    if ((p->o->topic && strcmp(p->o->topic, topic) != 0) ||
        (p->o->partition >= 0 && p->o->partition != partition))
        return 0;
    p->err[0] = '\0';
    int r = cv_applog_cold_walk(path, on_seg, p, p->err, sizeof(p->err));
    if (r == -ECANCELED)
        return r;
    /* A failure ends this partition's pass, not the others': a target
     * that is down fails them all alike, a segment that changed only its
     * own partition. */
    if (r < 0) {
        p->st.failed++;
        if (!p->first) {
            p->first = r;
            cv_errf(p->errbuf, p->errlen, "%s", *p->err ? p->err : strerror(-r));
        }
    }
    return 0;
}

int cv_cold_ship_log(cv_cold *c, const char *log_dir, const cv_cold_ship_opts *o,
                     cv_cold_ship_stats *ret, char *errbuf, size_t errlen) {
    pass p = {.cold = c,
              .o = o,
              .now_s = (int64_t)time(NULL),
              .errbuf = errbuf,
              .errlen = errlen};
    if (errbuf && errlen)
        errbuf[0] = '\0';
    int r = cv_cold_check_places(c, log_dir, errbuf, errlen);
    if (r == 0)
        r = cv_cold_ready_to_ship(c, log_dir, errbuf, errlen);
    if (r == 0)
        r = cv_applog_partitions(log_dir, on_partition, &p, errbuf, errlen);
    if (r == 0 && p.first)
        r = p.first;
    if (r == 0 && !o->dry_run) /* a cache it cannot prune is no failure of the pass */
        cv_cold_prune_cache(c, o->cache_keep_s, &p.st.cache_pruned);
    if (ret)
        *ret = p.st;
    return r;
}
