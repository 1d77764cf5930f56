/*
 * applog/recovery.c — what a crash leaves and what damage is. Seals
 * (FORMAT.md "Seals"): their line, reading them, writing them at a clean
 * close. The torn-tail rules of "Durability and recovery": a failure that
 * looks unwritten, in the last batch of an unsealed last segment, and how
 * far damage reaches. Cutting a torn tail (kept in a side file first), and
 * cv_applog_quarantine, which moves damage aside for `verify --repair`.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* The seal file's one line: SEAL_MAGIC name bytes records last chain crc. */
static size_t seal_format(const seal *sl, char *buf, size_t len) {
    char hx[2 * DIGEST + 1];
    sodium_bin2hex(hx, sizeof(hx), sl->chain, DIGEST);
    int n = snprintf(buf, len, SEAL_MAGIC " %s %" PRIu64 " %" PRIu64 " %" PRId64 " %s",
                     sl->name, sl->bytes, sl->records, sl->last_offset, hx);
    uint32_t c = cv_applog_i_crc32c(buf, (size_t)n);
    n += snprintf(buf + n, len - (size_t)n, " %08" PRIx32 "\n", c);
    return (size_t)n;
}

/* Parses a seal line; returns NULL or what is wrong with it. */
static const char *seal_parse(const char *text, size_t len, seal *sl) {
    char line[SEAL_MAX];
    const char *bad = cv_applog_i_crc_line(
        text, len, line, sizeof(line), "not a seal line", "seal check (CRC32C) mismatch");
    if (bad)
        return bad;
    char name[64], hx[2 * DIGEST + 2];
    uint64_t bytes, records;
    int64_t last;
    int used = 0;
    if (sscanf(line, SEAL_MAGIC " %63s %" SCNu64 " %" SCNu64 " %" SCNd64 " %65s%n", name,
               &bytes, &records, &last, hx, &used) != 5 ||
        (size_t)used != strlen(line) || !cv_applog_i_is_seg_name(name, SEG_SUFFIX) ||
        strlen(hx) != 2 * DIGEST ||
        sodium_hex2bin(sl->chain, DIGEST, hx, 2 * DIGEST, NULL, NULL, NULL) != 0)
        return "malformed seal line";
    memcpy(sl->name, name, strlen(name) + 1); /* a segment name: it fits */
    sl->bytes = bytes;
    sl->records = records;
    sl->last_offset = last;
    return NULL;
}

/* Reads <dir>/sealed: 1 with *sl filled, 0 when there is none, or
 * -CV_ECORRUPT / -errno with errbuf set. */
int cv_applog_i_seal_read(const char *dir, seal *sl, char *errbuf, size_t errlen) {
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/" SEAL_FILE, dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        int e = errno;
        cv_errf(errbuf, errlen, "log seal %s: %s", path, strerror(e));
        return -e;
    }
    char buf[SEAL_MAX];
    ssize_t n = read(fd, buf, sizeof(buf));
    int e = errno;
    close(fd);
    if (n < 0) {
        cv_errf(errbuf, errlen, "log seal %s: %s", path, strerror(e));
        return -e;
    }
    const char *why = seal_parse(buf, (size_t)n, sl);
    if (why) {
        cv_errf(errbuf, errlen,
                "log seal %s: %s (damaged; the partition's last segment cannot be "
                "checked against it)",
                path, why);
        return -CV_ECORRUPT;
    }
    return 1;
}

/* Writes the seal of a broker partition this session holds in a known
 * state (see SEALS): <dir>/sealed.tmp, made durable, renamed into place,
 * the directory fsynced. A failure only leaves that partition unsealed,
 * as after a crash. */
void cv_applog_i_seal_part(cv_applog *log, part *p) {
    if (p->repair || p->state != PART_READY || p->dirfd < 0 || p->dlast < 0)
        return;
    seal sl = {.last_offset = p->dlast};
    if (p->dcur) {
        const char *slash = strrchr(p->dcur->path, '/');
        snprintf(sl.name, sizeof(sl.name), "%s", slash ? slash + 1 : p->dcur->path);
        sl.bytes = p->dcur->dsize;
        sl.records = p->dcur->dnrec;
    } else if (p->rseg[0]) {
        snprintf(sl.name, sizeof(sl.name), "%s", p->rseg);
        sl.bytes = p->rbytes;
        sl.records = p->rrecords;
    } else {
        return;
    }
    memcpy(sl.chain, p->dchain, DIGEST);
    char line[SEAL_MAX], tmp[PATH_MAX], path[PATH_MAX];
    size_t n = seal_format(&sl, line, sizeof(line));
    snprintf(tmp, sizeof(tmp), "%s/" SEAL_FILE TMP_SUFFIX, p->dir);
    snprintf(path, sizeof(path), "%s/" SEAL_FILE, p->dir);
    int fd = log->sys.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    bool ok =
        log->sys.pwrite(fd, line, n, 0) == (ssize_t)n && log->sys.fdatasync(fd) == 0;
    close(fd);
    if (!ok || log->sys.rename(tmp, path) < 0) {
        log->sys.unlink(tmp);
        return;
    }
    log->sys.fsync(p->dirfd);
}

/* Seals every partition at a clean close. */
void cv_applog_i_seal_all(cv_applog *log) {
    for (part *p = log->parts; p; p = p->next)
        cv_applog_i_seal_part(log, p);
}

/* Does the failing frame at `at` look like a write that never finished: the
 * file ends inside it, or it holds a run of ZERO_RUN zero bytes (a block the
 * file was extended by but that never reached the disk)? A bit flip, an
 * edit or any other change of bytes that were written whole does not. The
 * frame header's own fields never hold more than 7 zero bytes in a row
 * and a ciphertext holds 32 with probability 2^-256. */
static bool looks_unwritten(const seg *s, size_t at) {
    if (s->size - at < FRAME_HDR)
        return true;
    const unsigned char *f = s->map + at;
    uint32_t len = rd32(f + 8);
    size_t end;
    if (memcmp(f, FRAME_MAGIC, 4) == 0 && len >= FRAME_MIN && len <= FRAME_MAX) {
        if (len > s->size - at)
            return true;
        end = at + len;
    } else {
        end = s->size - at > 4096 ? at + 4096 : s->size;
    }
    size_t run = 0;
    for (size_t i = at; i < end; i++)
        if ((run = s->map[i] ? 0 : run + 1) >= ZERO_RUN)
            return true;
    return false;
}

/* The next frame after position *q that passes its frame check: true with
 * *q at it, false when none is left. Start with *q at the failing frame. */
static bool next_good_frame(const seg *s, size_t *q) {
    size_t at = *q + 1;
    while (at + FRAME_HDR <= s->size) {
        const unsigned char *m = memmem(s->map + at, s->size - at, FRAME_MAGIC, 4);
        if (!m)
            return false;
        at = (size_t)(m - s->map);
        uint32_t len;
        if (!cv_applog_i_frame_check(s->map, s->size, at, &len)) {
            *q = at;
            return true;
        }
        at++;
    }
    return false;
}

/* After a failure at `at` in the last segment of a directory, which no seal
 * covers: is it a torn tail (see DURABILITY AND RECOVERY)? Only the last
 * batch can be unfinished: each append is durable before the next one
 * writes. So the failure must look unwritten, lie past batch 1 (made
 * atomic by the rename), and no frame after it may pass its CRC with a
 * batch number that shows the failure to be inside an earlier, durable
 * batch: one above (last good batch + 1), or frames of both the last good
 * batch and the one after it (the failure then lies inside the former). */
bool cv_applog_i_seg_tail_is_torn(const seg *s, size_t at) {
    if (s->batch == 0)
        return false; /* batch 1 is made atomic by the rename */
    if (!looks_unwritten(s, at))
        return false;
    bool same = false, next = false;
    for (size_t q = at; next_good_frame(s, &q);) {
        uint32_t b = rd32(s->map + q + 12);
        if (b > s->batch + 1 || b < s->batch)
            return false;
        same |= b == s->batch;
        next |= b == s->batch + 1;
        if (same && next)
            return false;
    }
    return true;
}

/* The highest Kafka offset a frame after `at` names that passes its frame
 * check, or -1: how far the damage at `at` reaches, for the error. */
int64_t cv_applog_i_offsets_after(const seg *s, size_t at) {
    int64_t hi = -1;
    for (size_t q = at; next_good_frame(s, &q);)
        if ((int64_t)rd64(s->map + q + 24) > hi)
            hi = (int64_t)rd64(s->map + q + 24);
    return hi;
}

/* Cuts the torn tail recovery found in d: copies the bytes first to a side
 * file beside the segment (<segment>.torn-<Unix us>, made durable), then
 * truncates the segment at the torn frame, and reports both. */
static int cut_torn(cv_applog *log, part *p, const pdir *d, char *errbuf, size_t errlen) {
    int r = 0;
    char side[PATH_MAX];
    snprintf(side, sizeof(side), "%s" TORN_SUFFIX "%" PRId64, d->torn_file, cv_now_us());
    int fd = log->sys.open(d->torn_file, O_RDWR | O_CLOEXEC, 0);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        r = -errno;
        cv_errf(errbuf, errlen, "log segment %s: cannot open to cut its torn tail: %s",
                d->torn_file, strerror(-r));
        goto out;
    }
    uint64_t size = (uint64_t)st.st_size, dropped = size - d->torn_pos, frames = 0;
    unsigned char *tail = dropped ? malloc(dropped) : NULL;
    if (dropped && !tail) {
        r = -ENOMEM;
        goto out;
    }
    if (dropped && pread(fd, tail, dropped, (off_t)d->torn_pos) != (ssize_t)dropped) {
        r = errno ? -errno : -EIO;
        cv_errf(errbuf, errlen, "log segment %s: cannot read its torn tail: %s",
                d->torn_file, strerror(-r));
        free(tail);
        goto out;
    }
    for (uint64_t q = 0; q + 4 <= dropped; q++)
        frames += memcmp(tail + q, FRAME_MAGIC, 4) == 0;
    int sfd = log->sys.open(side, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    size_t done = 0;
    while (sfd >= 0 && done < dropped) {
        ssize_t n = log->sys.pwrite(sfd, tail + done, dropped - done, (off_t)done);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            break;
        }
        done += (size_t)n;
    }
    free(tail);
    if (sfd < 0 || done != dropped || log->sys.fdatasync(sfd) < 0 ||
        log->sys.fsync(p->dirfd) < 0) {
        r = errno ? -errno : -EIO;
        cv_errf(errbuf, errlen, "log segment %s: cannot keep its torn tail in %s: %s",
                d->torn_file, side, strerror(-r));
        if (sfd >= 0)
            close(sfd);
        goto out;
    }
    close(sfd);
    if (log->sys.ftruncate(fd, (off_t)d->torn_pos) < 0 || log->sys.fsync(fd) < 0) {
        r = -errno;
        cv_errf(errbuf, errlen,
                "log segment %s: cannot truncate torn tail at byte %" PRIu64 ": %s",
                d->torn_file, d->torn_pos, strerror(-r));
        goto out;
    }
    if (log->torn_fn) {
        cv_applog_torn t = {
            .file = d->torn_file,
            .pos = d->torn_pos,
            .dropped = dropped,
            .records = frames ? frames : 1,
            .saved_to = side,
            .after_offset = d->last_offset,
            .why = "torn tail of an unfinished write cut",
        };
        log->torn_fn(log->torn_opaque, &t);
    }
out:
    if (fd >= 0)
        close(fd);
    return r;
}

/* Removes the unfinished new segments (<segment>.tmp) a crash left in p's
 * directory: their batch was never reported durable (see LAYOUT). Each
 * removal is reported to the torn callback. */
int cv_applog_i_remove_unfinished(cv_applog *log, part *p, char *errbuf, size_t errlen) {
    char **tmps;
    size_t ntmp;
    char tsuffix[16];
    snprintf(tsuffix, sizeof(tsuffix), "%s%s", SEG_SUFFIX, TMP_SUFFIX);
    int r = cv_applog_i_list_names(p->dir, tsuffix, &tmps, &ntmp, errbuf, errlen);
    if (r < 0)
        return r;
    for (size_t i = 0; i < ntmp; i++) {
        char *path = cv_applog_i_path_join(p->dir, tmps[i]);
        struct stat st;
        if (!path || stat(path, &st) < 0 || log->sys.unlink(path) < 0) {
            r = path ? -errno : -ENOMEM;
            cv_errf(errbuf, errlen, "log segment %s: cannot remove: %s",
                    path ? path : tmps[i], strerror(-r));
            free(path);
            cv_applog_i_free_names(tmps, ntmp);
            return r;
        }
        if (log->torn_fn) {
            cv_applog_torn t = {
                .file = path,
                .dropped = (uint64_t)st.st_size,
                .after_offset = -1,
                .why = "unfinished new segment removed",
            };
            log->torn_fn(log->torn_opaque, &t);
        }
        free(path);
    }
    cv_applog_i_free_names(tmps, ntmp);
    if (ntmp && log->sys.fsync(p->dirfd) < 0) {
        r = -errno;
        cv_errf(errbuf, errlen, "log directory %s: fsync: %s", p->dir, strerror(-r));
        return r;
    }
    return 0;
}

/* What recovery read may still be only in the page cache (a crashed
 * writer's last batch): the directory's last segment is made durable
 * before the offsets it holds are treated as held. */
static int sync_last_segment(cv_applog *log, part *p, const pdir *d, char *errbuf,
                             size_t errlen) {
    if (d->cold && d->cold[d->nseg - 1])
        return 0; /* COLD TIER: shipped only after it was read whole and durable */
    char *last = cv_applog_i_path_join(p->dir, d->names[d->nseg - 1]);
    int fd = last ? log->sys.open(last, O_WRONLY | O_CLOEXEC, 0) : -1;
    if (fd < 0 || log->sys.fdatasync(fd) < 0) {
        int r = last ? -errno : -ENOMEM;
        cv_errf(errbuf, errlen, "log segment %s: fdatasync: %s", last ? last : p->dir,
                strerror(-r));
        if (fd >= 0)
            close(fd);
        free(last);
        return r;
    }
    close(fd);
    free(last);
    return 0;
}

/* Refuses p for what recovery found (`why` says what, and what to run);
 * each later append looks at it again. Returns err. */
static int refuse(part *p, int err, const char *why, char *errbuf, size_t errlen) {
    cv_applog_i_part_refuse(p, err, why);
    p->recheck = true;
    cv_errf(errbuf, errlen, "%s", why);
    return p->refuse_err;
}

/* Scans the last segment of p's directory with the reader (see DURABILITY
 * AND RECOVERY): fills p's index, chain and last offset and what the seal
 * at a clean close names; cuts a torn tail, or refuses the partition for
 * damage (PART_REFUSED, its error returned). */
int cv_applog_i_recover_last_segment(cv_applog *log, part *p, char *errbuf,
                                     size_t errlen) {
    char msg[768];
    memset(p->chain, 0, DIGEST);
    p->last = -1;
    pdir d;
    int r = cv_applog_i_pdir_init(&d, p->dir, log->keys, INT64_MAX, errbuf, errlen);
    d.keep_erased = true; /* DATA KEYS: an erased tail still has its offsets */
    if (r < 0 || !d.nseg) {
        cv_applog_i_pdir_release(&d);
        return r;
    }
    for (;;) {
        r = cv_applog_i_pdir_next(&d, msg, sizeof(msg));
        if (r <= 0)
            break;
        if ((r = cv_applog_i_index_push(p, d.rec.offset)) < 0)
            break;
    }
    if (r < 0 && r != -ENOMEM) {
        char full[1024];
        snprintf(full, sizeof(full),
                 "%s; the partition is not written until this is "
                 "resolved: `chatvault log check` shows it, `chatvault verify "
                 "--repair` mends it",
                 msg);
        r = refuse(p, r == -ENOKEY || r == -EKEYREJECTED ? r : -CV_ECORRUPT, full, errbuf,
                   errlen);
    } else if (r == 0 && d.torn && p->committed > d.last_offset + 1) {
        /* An unfinished write is never acked; these records were. */
        char full[1024];
        snprintf(full, sizeof(full),
                 "log segment %s at byte %" PRIu64 ": the tail after offset %" PRId64
                 " fails its check, but Kafka's committed offset %" PRId64
                 " says records up to offset %" PRId64
                 " were acked: damage, not a torn write, so it is not cut; the "
                 "partition is not written until it is repaired: run `chatvault "
                 "verify --repair`",
                 d.torn_file, d.torn_pos, d.last_offset, p->committed, p->committed - 1);
        r = refuse(p, -CV_ECORRUPT, full, errbuf, errlen);
    } else if (r == 0) {
        r = d.torn ? cut_torn(log, p, &d, errbuf, errlen)
                   : sync_last_segment(log, p, &d, errbuf, errlen);
    }
    if (r == 0) {
        snprintf(p->rseg, sizeof(p->rseg), "%s", d.names[d.nseg - 1]);
        p->rbytes = d.end_bytes;
        p->rrecords = d.end_records;
        memcpy(p->chain, d.chain, DIGEST);
        p->last = d.last_offset;
    }
    cv_applog_i_pdir_release(&d);
    return r;
}

/* Renames `path` to <path><suffix><Unix us> in the same directory. */
static int move_aside(const char *path, const char *suffix, char *saved,
                      size_t savedlen) {
    char to[PATH_MAX];
    snprintf(to, sizeof(to), "%s%s%" PRId64, path, suffix, cv_now_us());
    if (rename(path, to) < 0)
        return -errno;
    if (saved && savedlen)
        snprintf(saved, savedlen, "%s", to);
    return 0;
}

int cv_applog_quarantine(const char *file, uint64_t pos, char *saved_to, size_t savedlen,
                         char *errbuf, size_t errlen) {
    int r = cv_applog_i_lib_init(errbuf, errlen);
    if (r < 0)
        return r;
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", file);
    char *slash = strrchr(dir, '/');
    const char *name = slash ? slash + 1 : file;
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof(dir), ".");
    bool is_seal = strcmp(name, SEAL_FILE) == 0;
    /* COLD TIER: a stub whose copy is lost or damaged is moved aside like a
     * segment with no intact record; the seal is matched by segment name. */
    bool is_stub = cv_applog_i_is_seg_name(name, COLD_SUFFIX);
    char seg_name[NAME_DIGITS + sizeof(SEG_SUFFIX)];
    snprintf(seg_name, sizeof(seg_name), "%.*s", NAME_DIGITS + (int)strlen(SEG_SUFFIX),
             name);
    if (!is_seal && !is_stub && !cv_applog_i_is_seg_name(name, SEG_SUFFIX)) {
        cv_errf(errbuf, errlen, "log file %s is neither a segment nor a seal", file);
        return -EINVAL;
    }
    /* The records before the damage, copied under the segment's name: the
     * same header and positions, so they authenticate as before. */
    /* Not "<segment>.tmp": broker recovery deletes those as unfinished new
     * segments, and these records were acked. A crash before the rename
     * below leaves the copy beside the evidence, for the next repair. */
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s.restoring", file);
    bool prefix = false;
    if (!is_seal && !is_stub) {
        seg s;
        if (cv_applog_i_seg_open(&s, file, NULL, 0) == 0) {
            if (pos > s.h.hlen && pos <= s.size) {
                int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                size_t done = 0;
                while (fd >= 0 && done < pos) {
                    ssize_t n = write(fd, s.map + done, pos - done);
                    if (n <= 0 && !(n < 0 && errno == EINTR))
                        break;
                    done += n > 0 ? (size_t)n : 0;
                }
                if (fd < 0 || done != pos || fdatasync(fd) < 0) {
                    r = -errno;
                    cv_errf(errbuf, errlen, "log segment %s: cannot write %s: %s", file,
                            tmp, strerror(errno));
                }
                if (fd >= 0)
                    close(fd);
                prefix = r == 0;
            }
            cv_applog_i_seg_close(&s);
        }
        if (r < 0) {
            unlink(tmp);
            return r;
        }
    }
    if ((r = move_aside(file, ".damaged-", saved_to, savedlen)) < 0) {
        cv_errf(errbuf, errlen, "log file %s: cannot move it aside: %s", file,
                strerror(-r));
        unlink(tmp);
        return r;
    }
    if (prefix && rename(tmp, file) < 0) {
        r = -errno;
        cv_errf(errbuf, errlen,
                "log segment %s: cannot put its intact records back from %s: %s", file,
                tmp, strerror(-r));
        return r;
    }
    /* A seal naming the segment no longer describes it. */
    if (!is_seal) {
        seal sl;
        char sp[PATH_MAX + 16];
        snprintf(sp, sizeof(sp), "%s/" SEAL_FILE, dir);
        if (cv_applog_i_seal_read(dir, &sl, NULL, 0) == 1 &&
            strcmp(sl.name, seg_name) == 0 &&
            (r = move_aside(sp, ".damaged-", NULL, 0)) < 0) {
            cv_errf(errbuf, errlen, "log seal %s: cannot move it aside: %s", sp,
                    strerror(-r));
            return r;
        }
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0) {
        r = -errno;
        cv_errf(errbuf, errlen, "log directory %s: fsync: %s", dir, strerror(-r));
    }
    if (dfd >= 0)
        close(dfd);
    return r;
}
