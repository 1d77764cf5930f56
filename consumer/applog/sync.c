/*
 * applog/sync.c — the writer's way to the disk: the table of system calls
 * that tests swap to inject faults, writing a segment's buffer, fdatasync
 * or syncfs (log.sync_method), renaming new segments into place and
 * fsyncing directories. An append is durable only once these returned
 * (FORMAT.md "Durability and recovery").
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

static int open3(const char *path, int flags, mode_t mode) {
    return open(path, flags, mode);
}

static const cv_applog_syscalls real_syscalls = {
    .open = open3,
    .pwrite = pwrite,
    .fdatasync = fdatasync,
    .fsync = fsync,
    .rename = rename,
    .ftruncate = ftruncate,
    .unlink = unlink,
    .syncfs = syncfs,
};

void cv_applog_set_syscalls(cv_applog *log, const cv_applog_syscalls *sys) {
    log->sys = sys ? *sys : real_syscalls;
#define FILL(f)                                                                          \
    do {                                                                                 \
        if (!log->sys.f)                                                                 \
            log->sys.f = real_syscalls.f;                                                \
    } while (0)
    FILL(open);
    FILL(pwrite);
    FILL(fdatasync);
    FILL(fsync);
    FILL(rename);
    FILL(ftruncate);
    FILL(unlink);
    FILL(syncfs);
#undef FILL
}

/* True when the running kernel's syncfs reports write errors (Linux 5.8:
 * the file system's error sequence, checked per open file). */
static bool syncfs_reports_errors(char *release, size_t len) {
    struct utsname u;
    if (uname(&u) < 0)
        return false;
    snprintf(release, len, "%s", u.release);
    unsigned major = 0, minor = 0;
    if (sscanf(u.release, "%u.%u", &major, &minor) != 2)
        return false;
    return major > 5 || (major == 5 && minor >= 8);
}

int cv_applog_set_sync(cv_applog *log, cv_applog_sync how, char *errbuf, size_t errlen) {
    if (how == CV_APPLOG_SYNC_SYNCFS) {
        char release[65] = "?";
        if (!syncfs_reports_errors(release, sizeof(release))) {
            cv_errf(errbuf, errlen,
                    "log %s: log.sync_method = syncfs needs Linux 5.8 or later, whose "
                    "syncfs reports write errors (this is %s); using fdatasync",
                    log->dir, release);
            return -ENOTSUP;
        }
        /* Opened once and kept: syncfs reports each write error once per
         * open file, from the time it was opened. */
        if (log->fsfd < 0) {
            log->fsfd = open(log->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (log->fsfd < 0) {
                int e = errno;
                cv_errf(errbuf, errlen, "log directory %s: cannot open: %s", log->dir,
                        strerror(e));
                return -e;
            }
        }
    }
    log->sync = how;
    log->workers_max = WORKERS_MAX;
    if (how == CV_APPLOG_SYNC_SYNCFS) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        if (cores >= 1 && (size_t)cores < WORKERS_MAX)
            log->workers_max = (size_t)cores;
    }
    return 0;
}

int cv_applog_i_sys_fsync_dir(cv_applog *log, const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = log->sys.fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return r;
}

/* Creates `dir` (an existing one is fine) and, with sync_parent, fsyncs the
 * directory it is in so that its entry is durable. */
int cv_applog_i_make_dir(cv_applog *log, const char *dir, bool sync_parent, char *errbuf,
                         size_t errlen) {
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        cv_errf(errbuf, errlen, "log directory %s: cannot create: %s", dir, strerror(e));
        return -e;
    }
    if (!sync_parent)
        return 0;
    char parent[PATH_MAX];
    snprintf(parent, sizeof(parent), "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash)
        *slash = '\0';
    int r = cv_applog_i_sys_fsync_dir(log, slash ? parent : ".");
    if (r < 0)
        cv_errf(errbuf, errlen, "log directory %s: fsync: %s", slash ? parent : ".",
                strerror(-r));
    return r;
}

static int write_all(cv_applog *log, wseg *w, char *errbuf, size_t errlen) {
    const char *path = w->tmp ? w->tmp : w->path;
    if (w->fd < 0) {
        w->fd = log->sys.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (w->fd < 0) {
            int e = errno;
            cv_errf(errbuf, errlen, "log segment %s: cannot create: %s", path,
                    strerror(e));
            return -e;
        }
    }
    size_t done = 0;
    while (done < w->buf.len) {
        ssize_t n = log->sys.pwrite(w->fd, w->buf.data + done, w->buf.len - done,
                                    (off_t)(w->wpos + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            cv_errf(errbuf, errlen,
                    "log segment %s: write at byte %" PRIu64 " failed: %s", path,
                    w->wpos + done, strerror(e));
            return -e;
        }
        done += (size_t)n;
    }
    return 0;
}

/* Renames the new segments of p into place once their bytes are durable;
 * *renamed tells whether there were any. */
static int place_new(cv_applog *log, part *p, bool *renamed) {
    for (size_t i = 0; i < p->ntouched; i++) {
        wseg *w = p->touched[i];
        if (!w->tmp)
            continue;
        if (log->sys.rename(w->tmp, w->path) < 0) {
            int r = -errno;
            snprintf(p->jerr, sizeof(p->jerr), "log segment %s: rename from %s: %s",
                     w->path, w->tmp, strerror(-r));
            return r;
        }
        free(w->tmp);
        w->tmp = NULL;
        *renamed = true;
    }
    return 0;
}

/* Writes each touched segment of p once. With fdatasync as the sync method
 * also fdatasyncs each once, renames new segments into place and fsyncs
 * the directory; with syncfs, cv_applog_append does that part for all
 * partitions at once (cv_applog_i_sync_all). */
int cv_applog_i_flush_part(cv_applog *log, part *p) {
    int r = 0;
    for (size_t i = 0; i < p->ntouched && r == 0; i++)
        r = write_all(log, p->touched[i], p->jerr, sizeof(p->jerr));
    if (log->sync == CV_APPLOG_SYNC_SYNCFS)
        return r;
    for (size_t i = 0; i < p->ntouched && r == 0; i++) {
        wseg *w = p->touched[i];
        if (log->sys.fdatasync(w->fd) < 0) {
            r = -errno;
            snprintf(p->jerr, sizeof(p->jerr),
                     "log segment %s: fdatasync up to byte %" PRIu64 " failed: %s",
                     w->tmp ? w->tmp : w->path, w->size, strerror(-r));
        }
    }
    bool renamed = false;
    if (r == 0)
        r = place_new(log, p, &renamed);
    if (r == 0 && renamed && log->sys.fsync(p->dirfd) < 0) {
        r = -errno;
        snprintf(p->jerr, sizeof(p->jerr), "log directory %s: fsync: %s", p->dir,
                 strerror(-r));
    }
    return r;
}

/* The syncfs way of making an append durable: one syncfs for the bytes of
 * every partition, then the new segments renamed into place and, when there
 * were any, one more syncfs for the renames. */
int cv_applog_i_sync_all(cv_applog *log, part **tp, size_t ntp, char *errbuf,
                         size_t errlen) {
    if (log->sys.syncfs(log->fsfd) < 0) {
        int e = errno;
        cv_errf(errbuf, errlen,
                "log directory %s: syncfs failed: %s (a write error on its file system; "
                "the batch is not durable)",
                log->dir, strerror(e));
        return -e;
    }
    bool renamed = false;
    for (size_t k = 0; k < ntp; k++) {
        part *p = tp[k];
        int r = place_new(log, p, &renamed);
        const char *err = p->jerr;
        if (r == 0 && p->late) {
            r = place_new(log, p->late, &renamed);
            err = p->late->jerr;
        }
        if (r == 0 && p->ngen) {
            r = place_new(log, p->ngen, &renamed);
            err = p->ngen->jerr;
        }
        if (r < 0) {
            cv_errf(errbuf, errlen, "%s", err);
            return r;
        }
    }
    if (renamed && log->sys.syncfs(log->fsfd) < 0) {
        int e = errno;
        cv_errf(errbuf, errlen,
                "log directory %s: syncfs after renaming new segments: %s", log->dir,
                strerror(e));
        return -e;
    }
    return 0;
}
