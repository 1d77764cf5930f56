/*
 * cold — the log's cold tier and off-site copy (README "Cold tier and
 * off-site copy", applog/FORMAT.md "Cold tier"): a target that sealed
 * segments are shipped to, verified after upload, and read back from.
 *
 * A target is one of
 *   s3://BUCKET[/PREFIX]   the S3 API over HTTP(S) with AWS Signature V4
 *                          (libcurl), path-style requests to `endpoint`
 *                          (default https://s3.REGION.amazonaws.com);
 *   file:///DIR or /DIR    a directory (another disk, an NFS mount): each
 *                          object a file, written to a temp name, fsynced,
 *                          renamed, its directory fsynced.
 * An object's key is PREFIX/<topic>-<partition>[/gen-*]/<segment name>.
 *
 * A cv_cold is used by one thread at a time. Library code: nothing is
 * printed; errors are one line in errbuf naming the target and the object.
 * Secrets (the secret key) never appear in an error.
 */
#ifndef CV_COLD_H
#define CV_COLD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "applog/applog.h"

typedef struct cv_cold cv_cold;

typedef struct cv_cold_conf {
    const char *target;           /* s3://bucket/prefix, file:///dir or /dir */
    const char *endpoint;         /* s3: http(s)://host[:port]; "" = AWS */
    const char *region;           /* s3: the SigV4 region */
    const char *credentials_file; /* s3: "" = $AWS_ACCESS_KEY_ID/.._SECRET_.. */
    const char *cache_dir;        /* where fetched segments are kept */
    const char *ca_file;          /* s3 over https: "" = the system's store */
    const char *log_dir;          /* the log it serves (NULL: not checked here) */
} cv_cold_conf;

/* Parses the target and loads the credentials (no network), and checks
 * the places (cv_cold_check_places with conf->log_dir). -EINVAL with
 * errbuf saying which key is wrong. The caller frees *ret with
 * cv_cold_free(). */
int cv_cold_open(const cv_cold_conf *conf, cv_cold **ret, char *errbuf, size_t errlen);
/* Accepts NULL; returns NULL. */
cv_cold *cv_cold_free(cv_cold *c);

/* Refuses (-EINVAL, errbuf naming both keys) a directory target that is,
 * holds or lies in `log_dir` or the cache directory, and a cache
 * directory that is or holds `log_dir` (or lies in one of its partition
 * directories): shipping removes local copies and pruning removes cache
 * files, so these must never be the same files. Paths are compared
 * resolved (realpath; a part that does not exist yet is taken as
 * written). `log_dir` may be NULL. */
int cv_cold_check_places(const cv_cold *c, const char *log_dir, char *errbuf,
                         size_t errlen);

/* What a copy (`got`, from cv_applog_cold_describe) differs in from what a
 * stub says was shipped (`want`): NULL when it is the same segment. */
const char *cv_cold_stub_mismatch(const cv_applog_cold_stub *want,
                                  const cv_applog_cold_stub *got);

/* The target as the user wrote it (no secrets in it): for messages. */
const char *cv_cold_target(const cv_cold *c);

/* Objects are named by their key in the bucket (or under the directory),
 * the target's prefix included: cv_cold_object_key makes one from a key
 * relative to the target (<topic>-<partition>/...). -ENAMETOOLONG. */
int cv_cold_object_key(const cv_cold *c, const char *rel, char *buf, size_t len);

/* Stores the file at `path` as object `key`, never over an object that is
 * there (-EEXIST: S3 If-None-Match: *, a directory target link(2)s the
 * file into place). A directory target gets its
 * marker file (<dir>/.chatvault-cold) on the first put: without it the
 * directory is taken as not there (not mounted), never as lost objects. */
int cv_cold_put(cv_cold *c, const char *key, const char *path, char *errbuf,
                size_t errlen);
/* The object's size; -ENOENT when there is no such object (the target
 * being there), -ENXIO when the target itself is not (no such bucket; a
 * directory missing or without its marker). */
int cv_cold_head(cv_cold *c, const char *key, uint64_t *ret_size, char *errbuf,
                 size_t errlen);
/* Deletes object `key` (retention: a cold-only segment that expired). 0
 * also when there was no such object; -ENXIO as cv_cold_head. */
int cv_cold_delete(cv_cold *c, const char *key, char *errbuf, size_t errlen);
/* Writes the object into the file `path` (created 0600, replaced), at most
 * `max` bytes (-EFBIG past it); -ENOENT and -ENXIO as cv_cold_head. The
 * file is written under a name of its own first (several processes may
 * fetch the same object) and renamed. */
int cv_cold_get(cv_cold *c, const char *key, const char *path, uint64_t max, char *errbuf,
                size_t errlen);

/* Ships one sealed segment <dir>/<name> as the object PREFIX/`rel`: reads
 * it whole by frame check and chain, uploads it, checks the object's size
 * (HEAD) and reads it back to check its chain hash, record count and file
 * hash against the local file; only then writes the stub <dir>/<name>.cold
 * (durably; its key is the full object key, so a reader finds it whatever
 * prefix it is configured with) and fills *ret. An object already there
 * with exactly these bytes (a pass that stopped before its stub) is taken
 * as shipped; one with other bytes is never overwritten (-EEXIST). A
 * damaged or torn segment is not shipped (-CV_ECORRUPT); a failed check is
 * -EIO. The local file is not touched. */
int cv_cold_ship(cv_cold *c, const char *dir, const char *name, const char *rel,
                 cv_applog_cold_stub *ret, char *errbuf, size_t errlen);

/* What `chatvault cold ship` asks before it removes the local copy
 * `local_path` of a shipped segment: that the object the stub names is
 * there and is the stub's segment, read back whole (its hash compared),
 * and (directory target) that it is not the local file itself. -EIO when
 * it differs, -ENOENT when it is gone, -EEXIST for the same file. */
int cv_cold_check(cv_cold *c, const cv_applog_cold_stub *st, const char *local_path,
                  char *errbuf, size_t errlen);

/* The applog fetch hook (cv_applog_cold_fetch_fn, opaque = the cv_cold):
 * a verified copy of the segment in the cache directory, at
 * <cache_dir>/<key>, fetched when the cache lacks it or holds other bytes.
 * A missing object (the target being there) or one whose bytes differ
 * from the stub, also when fetched again, is -CV_ECORRUPT (damage); an
 * unreachable target -EHOSTUNREACH, an absent one (no such bucket, a
 * directory not mounted) -ENXIO: neither is damage. Serialized
 * by a lock of its own (readers may run on several threads). */
int cv_cold_fetch(void *opaque, const char *stub_path, const cv_applog_cold_stub *st,
                  char *path, size_t pathlen, char *errbuf, size_t errlen);

/* One pass of shipping over a log directory (cold/ship.c). */
typedef enum cv_cold_event_kind {
    CV_COLD_SHIPPED,      /* uploaded, checked, stub written */
    CV_COLD_REMOVED,      /* local copy removed (past the hot window) */
    CV_COLD_WOULD_SHIP,   /* dry run */
    CV_COLD_WOULD_REMOVE, /* dry run */
} cv_cold_event_kind;
typedef struct cv_cold_event {
    cv_cold_event_kind kind;
    const char *path;                /* the local segment */
    const char *key;                 /* its object key */
    const cv_applog_cold_stub *stub; /* NULL for CV_COLD_WOULD_SHIP */
} cv_cold_event;
typedef void cv_cold_event_fn(void *opaque, const cv_cold_event *ev);

typedef struct cv_cold_ship_opts {
    const char *topic;          /* only this topic, or NULL */
    int64_t partition;          /* only this partition, or -1 */
    int64_t hot_window_s;       /* cv_cold_parse_window: -1 keeps local copies */
    bool dry_run;               /* change nothing, report what would be done */
    int64_t cache_keep_s;       /* after the pass, cv_cold_prune_cache (-1: keep all) */
    cv_cold_event_fn *on_event; /* each step, for progress; may be NULL */
    void *opaque;
    const atomic_bool *stop; /* set (by another thread) to end the pass early */
} cv_cold_ship_opts;

typedef struct cv_cold_ship_stats {
    uint64_t shipped, shipped_bytes, removed, kept;
    uint64_t cache_pruned; /* cached copies removed */
    uint64_t failed;       /* partitions whose pass stopped at a failure */
} cv_cold_ship_stats;

/* Whether a shipping pass of log_dir may put objects at the target: an
 * S3 bucket that exists, or a directory with its marker, or one without
 * it when this log has shipped nothing yet (its first ship writes the
 * marker). -ENXIO, with errbuf saying so, when the target is not there. */
int cv_cold_ready_to_ship(cv_cold *c, const char *log_dir, char *errbuf, size_t errlen);

/* Ships every sealed broker segment under `log_dir` not shipped yet (see
 * cv_cold_ship), and removes the local copy of each shipped one whose file
 * was last written more than hot_window_s ago, after checking the file
 * against its stub and the object (cv_cold_check). The active segment of
 * a directory is never touched. First cv_cold_check_places (-EINVAL). A
 * failure stops its partition (nothing after it there is shipped or
 * removed); the other partitions go on, and the pass returns the first
 * failure (one line in errbuf; ret->failed counts the partitions that
 * failed), or -ECANCELED when *stop is set. *ret counts what was done,
 * also on failure. */
int cv_cold_ship_log(cv_cold *c, const char *log_dir, const cv_cold_ship_opts *o,
                     cv_cold_ship_stats *ret, char *errbuf, size_t errlen);

/* Removes the cached copies (and leftovers of fetches) in the cache
 * directory not used for keep_s seconds (each use touches its copy); -1
 * keeps them all. A removed copy is fetched again when next read. Only a
 * directory carrying the marker written when the cache was made
 * (<cache_dir>/.chatvault-cache) is pruned, only names shaped like cache
 * copies are removed, and no directory holding a `sealed` file or a
 * *.cold stub (a log's partition directory) is entered. */
int cv_cold_prune_cache(cv_cold *c, int64_t keep_s, uint64_t *ret_removed);

/* "7d", "12h", "30m", "90s" or a plain number of seconds: the hot window
 * in seconds into *ret (0: remove a local copy as soon as it is shipped and
 * verified); "off" or "": -1, keep local copies. -EINVAL when it does not
 * parse. */
int cv_cold_parse_window(const char *s, int64_t *ret);

#endif
