/*
 * applog — the encrypted, tamper-evident append-only log: the second store.
 *
 * One directory per Kafka topic-partition under log.dir, segment files named
 * by the first offset they hold; every record is sealed with
 * XChaCha20-Poly1305 and chained to the previous one by BLAKE2b-256. The
 * byte-level format, the recovery rules and the multi-instance layout are
 * written in applog/FORMAT.md; the code is in applog/.
 *
 * A cv_applog is used by one thread at a time. Internally an append that
 * touches several partitions runs them on worker threads (one per partition
 * touched, up to 64, started as appends need them, with all signals blocked
 * and at nice 5, joined by cv_applog_free()), so their encryption and
 * fdatasyncs overlap.
 */
#ifndef CV_APPLOG_H
#define CV_APPLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "keyring.h"

#define CV_APPLOG_DIGEST_BYTES 32
#define CV_APPLOG_WRITER_ID_BYTES 16

typedef struct cv_applog cv_applog; /* all partitions under one log.dir */

typedef struct cv_applog_entry {
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms;
    const void *value;
    size_t value_len;
    unsigned char digest[32]; /* out: the record's chain hash */
} cv_applog_entry;

/* Opens the log under `dir` (created if missing). `keys` must outlive the
 * log; new segments are sealed with its newest key, existing ones are read
 * with the key their header names. Segments roll once they would pass
 * `segment_bytes`. Partitions are opened (and recovered) lazily, on their
 * first append. The caller owns *ret and frees it with cv_applog_free(). */
int cv_applog_open(const char *dir, const cv_keyring *keys, uint64_t segment_bytes,
                   cv_applog **ret, char *errbuf, size_t errlen);

/* Compression of the records of new segments (FORMAT.md "Compression"):
 * level 0 writes version-1 segments (plaintext as it is), a zstd level in
 * CV_APPLOG_ZSTD_LEVEL_MIN..CV_APPLOG_ZSTD_LEVEL_MAX version-2 segments
 * whose records are compressed, then encrypted. Segments of either version
 * are read whatever this is set to. A level outside returns -EINVAL with
 * errbuf saying so. set_compression applies to `log` from its next append
 * on (a segment is written in one version only, so a change starts a new
 * segment). set_default_compression is process-wide: it sets the level of
 * the sessions opened after it (the broker calls it once, from its config,
 * before it opens the log); not thread-safe against a concurrent
 * cv_applog_open. */
#define CV_APPLOG_ZSTD_LEVEL_MIN 1
#define CV_APPLOG_ZSTD_LEVEL_MAX 19
int cv_applog_set_compression(cv_applog *log, int level, char *errbuf, size_t errlen);
int cv_applog_set_default_compression(int level, char *errbuf, size_t errlen);

/* Appends entries (any mix of partitions; each partition's offsets
 * ascending), then makes them durable ONCE (group commit; see
 * cv_applog_set_sync) before returning 0. An entry the log already holds
 * (the same value bytes at the same (topic, partition, offset) of the
 * partition's current generation) is not written again; its digest is the
 * held record's. A held offset arriving with other bytes is another
 * message (Kafka's offsets started over): it and the entries after it go
 * to a new generation of the partition ("Generations" in applog/FORMAT.md),
 * reported through cv_applog_set_generation_cb once durable. On failure
 * returns negative with errbuf naming the file and byte offset (or, for a
 * failed syncfs, the log directory); nothing is reported durable (the
 * bytes of this call are truncated away again).
 * A partition whose log is damaged (anywhere but in a torn tail; see
 * "Durability and recovery" in applog/FORMAT.md) fails every append with
 * -CV_ECORRUPT and an error that says what to run; each append looks at
 * it again, so a repair made meanwhile is found without a restart. An
 * entry below the partition's last offset that the log does not hold is
 * written to the session's repair directory of the partition ("Late
 * records" in applog/FORMAT.md), where the reader finds it. */
int cv_applog_append(cv_applog *log, cv_applog_entry *entries, size_t n, char *errbuf,
                     size_t errlen);

/* Opens a writer for `chatvault verify --repair`: like cv_applog_open, but
 * every partition it appends to gets a new repair directory
 * (<dir>/<topic>-<partition>/repair-<session>/) of repair segments; see
 * "Repair segments" in applog/FORMAT.md. Appends to a partition must ascend within
 * the session; they may lie below the partition's own tail. The caller
 * appends only offsets the log lacks: the reader reports an offset whose
 * bytes differ between the partition and a repair directory as damage (an
 * offset the log holds with another message goes to a new generation:
 * cv_applog_repair_new_generation). */
int cv_applog_open_repair(const char *dir, const cv_keyring *keys, uint64_t segment_bytes,
                          cv_applog **ret, char *errbuf, size_t errlen);

/* Makes this repair session's directory of topic-partition bridge a lost
 * segment (see "Repair segments" in applog/FORMAT.md): its records chain on from
 * `after_chain` (the chain hash of the partition's last record before the
 * loss) and its header names `next_prev_chain` (the link of the partition
 * segment after the loss), so the reader accepts the broken link. Both come
 * from a cv_applog_break. Call before the session's first append to that
 * partition (-EBUSY after), on a log from cv_applog_open_repair. */
int cv_applog_repair_bridge(cv_applog *log, const char *topic, int32_t partition,
                            const unsigned char *after_chain,
                            const unsigned char *next_prev_chain, char *errbuf,
                            size_t errlen);

/* Seals every partition written or recovered in this session ("Seals"
 * in applog/FORMAT.md) and closes every segment. Accepts NULL; returns NULL. */
cv_applog *cv_applog_free(cv_applog *log);

/* Called once for each torn tail that recovery cut off when a partition is
 * opened, after the cut bytes were kept in `saved_to` (beside the segment:
 * <segment>.torn-<Unix us>): the segment, the byte offset it was cut at, how
 * many bytes and frames (whole or not) were dropped, the last offset kept
 * before them, and why. Also called (pos 0, saved_to NULL) for an
 * unfinished new segment (*.tmp) that recovery removed. */
typedef struct cv_applog_torn {
    const char *file;
    uint64_t pos, dropped, records;
    const char *saved_to;
    int64_t after_offset; /* -1 when no record precedes the cut */
    const char *why;
} cv_applog_torn;
typedef void cv_applog_torn_fn(void *opaque, const cv_applog_torn *t);
void cv_applog_set_torn_cb(cv_applog *log, cv_applog_torn_fn *fn, void *opaque);

/* Called, on the thread that called cv_applog_append and after the append
 * is durable, once for each partition that started a new generation in it:
 * `offset` is the held offset that arrived with other bytes, `held_last`
 * the last offset the previous generation holds, `dir` the new generation's
 * directory. */
typedef void cv_applog_generation_fn(void *opaque, const char *topic, int32_t partition,
                                     int64_t offset, int64_t held_last, const char *dir);
void cv_applog_set_generation_cb(cv_applog *log, cv_applog_generation_fn *fn,
                                 void *opaque);

/* On a log from cv_applog_open_repair, before its first append: the
 * session writes its repair directories inside a new generation of each
 * partition (<dir>/<topic>-<partition>/gen-<session>/repair-<session>/),
 * for records whose offsets the log holds with other bytes (a previous
 * incarnation of the topic). The broker's writer never takes such a
 * generation as its own (see "Generations" in applog/FORMAT.md). */
int cv_applog_repair_new_generation(cv_applog *log, char *errbuf, size_t errlen);
/* Tells the log Kafka's committed offset of a partition (the next offset to
 * consume: every record below it was acked), before the partition's first
 * append in this session. Recovery then never takes a failing tail that
 * reaches below it for a torn write: such a partition is refused as
 * damaged, the same as damage before the tail. Without it (or with -1)
 * recovery decides by the segment alone. Returns 0 or -ENOMEM/-EINVAL. */
int cv_applog_set_committed(cv_applog *log, const char *topic, int32_t partition,
                            int64_t committed);

/* The system calls that matter for durability, swappable so tests can
 * inject faults (ENOSPC, EIO, short writes). Each has the libc signature and
 * convention (-1 with errno set on failure). */
typedef struct cv_applog_syscalls {
    int (*open)(const char *path, int flags, mode_t mode);
    ssize_t (*pwrite)(int fd, const void *buf, size_t n, off_t offset);
    int (*fdatasync)(int fd);
    int (*fsync)(int fd);
    int (*rename)(const char *from, const char *to);
    int (*ftruncate)(int fd, off_t length);
    int (*unlink)(const char *path);
    int (*syncfs)(int fd);
} cv_applog_syscalls;

/* The table `log` uses from now on; NULL restores the real system calls.
 * The table is copied; a NULL entry in it means the real call. */
void cv_applog_set_syscalls(cv_applog *log, const cv_applog_syscalls *sys);

/* How an append makes its records durable (config key log.sync_method).
 *   CV_APPLOG_SYNC_FDATASYNC  fdatasync every segment the append wrote.
 *   CV_APPLOG_SYNC_SYNCFS     one syncfs(2) of the file system holding the
 *                             log: a single journal commit and cache flush
 *                             however many partitions the append touched,
 *                             but it also writes out every other dirty file
 *                             of that file system (see "Durability and
 *                             recovery" in applog/FORMAT.md).
 * A log starts with CV_APPLOG_SYNC_FDATASYNC. CV_APPLOG_SYNC_SYNCFS needs
 * Linux 5.8 or later, the first whose syncfs reports write errors; on an
 * older kernel this returns -ENOTSUP with errbuf saying so and the log keeps
 * fdatasync. */
typedef enum cv_applog_sync {
    CV_APPLOG_SYNC_FDATASYNC,
    CV_APPLOG_SYNC_SYNCFS,
} cv_applog_sync;
int cv_applog_set_sync(cv_applog *log, cv_applog_sync how, char *errbuf, size_t errlen);

/* Positions of one partition: the last offset asked to be written
 * (requested) and the last offset made durable. Both -1 when the partition
 * holds nothing; -ENOENT when this log has not opened the partition. They
 * differ only while an append is in flight or after a failed one. */
int cv_applog_positions(const cv_applog *log, const char *topic, int32_t partition,
                        int64_t *ret_requested, int64_t *ret_durable);

/* Writes "<dir>/<topic>-<partition>" into buf; -ENAMETOOLONG if it does not
 * fit. */
int cv_applog_partition_dir(const char *dir, const char *topic, int32_t partition,
                            char *buf, size_t len);

/* Calls fn for every partition directory under `dir` (sorted by name).
 * A nonzero return from fn stops the walk and is returned. */
typedef int cv_applog_partition_fn(void *opaque, const char *path, const char *topic,
                                   int32_t partition);
int cv_applog_partitions(const char *dir, cv_applog_partition_fn *fn, void *opaque,
                         char *errbuf, size_t errlen);

/* One segment as `chatvault log list` shows it. Records are counted by
 * their frame check (CRC32C) and chain, without decrypting. The partition
 * directory's segments come first, then those of its repair directories. */
typedef struct cv_applog_segment_info {
    const char *file;
    const char *topic;
    int32_t partition;
    uint64_t bytes;
    uint32_t key_id;
    int64_t first_offset, last_offset; /* last is -1 when empty */
    uint64_t records;
    int64_t created_us;
    bool sealed; /* a later segment follows; no writer appends here */
    unsigned char writer_id[CV_APPLOG_WRITER_ID_BYTES];
    const char *writer_name; /* host name of the writing instance */
    bool repair;             /* in a repair directory (verify --repair) */
    bool damaged;            /* a frame failed its check (see torn/error) */
    bool torn;               /* ... at the very end of the last segment */
    uint64_t damaged_at;
    /* only in the cold tier: `file` is its stub, the rest what the stub
     * says (writer_id and writer_name are not known; damaged when the stub
     * does not parse). Not fetched, so not checked. */
    bool cold;
} cv_applog_segment_info;
typedef int cv_applog_segment_fn(void *opaque, const cv_applog_segment_info *si);
int cv_applog_segments(const char *partition_dir, cv_applog_segment_fn *fn, void *opaque,
                       char *errbuf, size_t errlen);

/*
 * The reader: one serves recovery, `log check`, `log cat`, verify and
 * replay. It walks the records of one topic-partition in offset order and
 * checks everything it passes: frame check, authentication, hash chain,
 * record index and position, offsets ascending, segment headers (topic,
 * partition, file name, link to the previous segment).
 *
 * It can merge several directories of the same partition (one per broker
 * instance that owned it: see "Many instances" in applog/FORMAT.md); a record held
 * by several is returned once, and an offset whose bytes differ between
 * directories is an error. The generations of a partition are merged by
 * offset too: records of several generations at one offset are all
 * returned, the older generation first (see "Generations" in applog/FORMAT.md).
 */
typedef struct cv_applog_reader cv_applog_reader;

typedef struct cv_applog_record {
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms;
    const void *value; /* NULL when the reader has no keys */
    size_t value_len;
    unsigned char digest[CV_APPLOG_DIGEST_BYTES]; /* the chain hash */
    const char *file; /* where it was read (a cold segment: its fetched copy) */
    uint64_t pos;     /* byte offset in file */
    uint32_t key_id;
    unsigned char writer_id[CV_APPLOG_WRITER_ID_BYTES];
    const char *writer_name;
    /* 0: the partition directory's own records; else the start (Unix us)
     * of the generation that holds it (see "Generations" in applog/FORMAT.md) */
    int64_t generation;
} cv_applog_record;

/* Opens a reader over `ndirs` directories of one partition, each read
 * together with the repair directories inside it. With keys NULL
 * records are checked by frame check and chain only and come back without
 * their value. A directory that does not exist holds nothing. The caller
 * owns *ret and frees it with cv_applog_reader_free(). */
int cv_applog_reader_open(const char *const *dirs, size_t ndirs, const cv_keyring *keys,
                          cv_applog_reader **ret, char *errbuf, size_t errlen);

/* Starts at `offset`: segments that end below it are not read at all (the
 * link of the first segment read to the ones before it is then not
 * checked); records below it in the segment that holds it are checked by
 * frame check and chain but neither decrypted nor returned. Call before the
 * first next(); `log check` does not call it. */
void cv_applog_reader_skip_to(cv_applog_reader *r, int64_t offset);

/* Returns 1 and fills *rec (valid until the next call), 0 at the end, or a
 * negative error with errbuf naming file and byte offset: -CV_ECORRUPT for
 * damage, -EBADMSG for a record that fails authentication, -ENOKEY for a
 * key id the key ring lacks, -EKEYREJECTED when the ring's key of that id is
 * not the one the segment was written with. After an error the reader only
 * returns the same error. */
int cv_applog_reader_next(cv_applog_reader *r, cv_applog_record *rec, char *errbuf,
                          size_t errlen);

/* A partition segment that does not chain to the one before it, where no
 * repair bridges the link: a segment between them was removed or lost. */
typedef struct cv_applog_break {
    const char *file;     /* the segment whose link is broken */
    int64_t after_offset; /* the last offset before it */
    int64_t next_offset;  /* its first offset */
    unsigned char after_chain[CV_APPLOG_DIGEST_BYTES];
    unsigned char next_prev_chain[CV_APPLOG_DIGEST_BYTES];
} cv_applog_break;
typedef void cv_applog_break_fn(void *opaque, const cv_applog_break *b);

/* With fn set, a broken link is reported to fn and reading goes on instead
 * of failing with -CV_ECORRUPT (for verify, which reports the lost range
 * and bridges it in --repair). Call before the first next(). */
void cv_applog_reader_on_break(cv_applog_reader *r, cv_applog_break_fn *fn, void *opaque);

/* A torn tail found at the end of a directory's last segment is not an
 * error (a writer crashed there or is writing there now). Returns the
 * number of such tails seen so far; with i below it, fills file and byte
 * offset of the i-th. */
size_t cv_applog_reader_torn(const cv_applog_reader *r, size_t i, const char **ret_file,
                             uint64_t *ret_pos);

/* DATA KEYS (FORMAT.md): segments sealed with a channel data key that was
 * erased are read by frame check and chain only, and their records are not
 * returned. What was so passed over so far: */
typedef struct cv_applog_erased {
    uint64_t segments, bytes, records;
} cv_applog_erased;
void cv_applog_reader_erased(const cv_applog_reader *r, cv_applog_erased *ret);

/* After cv_applog_reader_next failed for damage (-CV_ECORRUPT, -EBADMSG):
 * the file it starts in (a segment, or a partition's seal) and the byte
 * offset there (0 for a header, a broken link or a seal). False when no
 * single file holds it (two directories disagree about an offset). The
 * strings live as long as the reader. */
bool cv_applog_reader_damage(const cv_applog_reader *r, const char **ret_file,
                             uint64_t *ret_pos);

/* For `chatvault verify --repair`: takes damage out of a partition so that
 * the rest reads again and the lost records can be rebuilt. `file` (a
 * segment or a seal, as cv_applog_reader_damage names it) is renamed to
 * <file>.damaged-<Unix us> and kept as evidence (its name there goes into
 * saved_to). For a segment, the intact records before byte `pos` (a frame
 * boundary) are put back under the segment's own name: a byte-exact copy
 * of that prefix, so they still authenticate; a seal that names the
 * segment is moved aside the same way. Nothing is deleted. A reader then
 * sees the segment end at `pos`, and, when a later segment follows, a
 * broken link that repair bridges (cv_applog_repair_bridge). A cold-tier
 * stub (<segment>.cold, whose copy is lost or damaged) is moved aside the
 * same way, as a segment with no intact record. */
int cv_applog_quarantine(const char *file, uint64_t pos, char *saved_to, size_t savedlen,
                         char *errbuf, size_t errlen);

cv_applog_reader *cv_applog_reader_free(cv_applog_reader *r);

/*
 * The cold tier ("Cold tier" in applog/FORMAT.md). A sealed segment (one a
 * later segment of its directory follows) may be shipped to an off-site
 * target and then removed here; a stub file <segment>.cold beside where it
 * was stands for it and says what it holds. The reader reads such a
 * segment from a verified local copy that the process-wide fetch hook
 * makes (consumer/cold/ installs one; `chatvault` does for every command
 * when cold.target is set); without a hook such a segment fails the read
 * with -ENOENT and an error that says to set cold.target. Nothing else
 * changes for readers: the copy is checked like any segment (frame check,
 * authentication, chain, link to its neighbours, seal), and a copy that
 * cannot be had or does not match its stub fails the read as damage
 * (-CV_ECORRUPT). A record read from a copy names the copy as its `file`;
 * cv_applog_reader_damage names the stub for damage in or of a cold
 * segment, which is what cv_applog_quarantine takes. An unreachable target
 * fails the read with another negative errno (-EHOSTUNREACH, ...), not
 * damage.
 */
typedef struct cv_applog_cold_stub {
    char topic[256];
    int32_t partition;
    char name[32]; /* the segment's file name */
    uint64_t bytes, records;
    int64_t first_offset, last_offset, created_us;
    uint32_t key_id;
    unsigned char chain[CV_APPLOG_DIGEST_BYTES];     /* of its last record */
    unsigned char file_hash[CV_APPLOG_DIGEST_BYTES]; /* BLAKE2b-256 of the file */
    char key[1024]; /* the object's key under the target: <topic>-<partition>/... */
} cv_applog_cold_stub;

/* Reads a whole segment file by frame check and chain (no key) and fills
 * every field of *ret but `key`. Any failure, a torn tail too, returns
 * -CV_ECORRUPT (or -errno) with errbuf naming file and byte. */
int cv_applog_cold_describe(const char *segment_path, cv_applog_cold_stub *ret,
                            char *errbuf, size_t errlen);

/* Writes <dir>/<st->name>.cold durably (temp file, fdatasync, rename,
 * fsync of dir). */
int cv_applog_cold_stub_write(const char *dir, const cv_applog_cold_stub *st,
                              char *errbuf, size_t errlen);

/* Reads a stub; -CV_ECORRUPT when it does not parse or fails its CRC. */
int cv_applog_cold_stub_read(const char *path, cv_applog_cold_stub *ret, char *errbuf,
                             size_t errlen);

/* The fetch hook: makes a local copy of the segment `st` (read from
 * `stub_path`) stands for, checks that it is byte for byte what was
 * shipped (size and file hash), and writes the copy's path into `path`.
 * Returns 0, -CV_ECORRUPT when the copy is missing or differs (damage), or
 * another negative errno (target unreachable, ...), with errbuf set. Called
 * on the reading thread; must be thread-safe if readers run on several. */
typedef int cv_applog_cold_fetch_fn(void *opaque, const char *stub_path,
                                    const cv_applog_cold_stub *st, char *path,
                                    size_t pathlen, char *errbuf, size_t errlen);
/* Installs the hook for the whole process (NULL removes it). Not
 * thread-safe against readers running meanwhile: set it at start. */
void cv_applog_set_cold_fetch(cv_applog_cold_fetch_fn *fn, void *opaque);

/* One segment of a partition as `chatvault cold` sees it. */
typedef struct cv_applog_cold_seg {
    const char *dir;  /* the directory holding it (partition or gen-*) */
    const char *name; /* its file name */
    const char *key;  /* its object key: <topic>-<partition>[/gen-*]/<name> */
    bool local;       /* the segment file is here */
    bool stub;        /* a stub says it was shipped */
    bool last;        /* the last of its directory: never shipped */
} cv_applog_cold_seg;
typedef int cv_applog_cold_walk_fn(void *opaque, const cv_applog_cold_seg *cs);
/* Calls fn for every broker segment of a partition directory and of its
 * generations, in order (repair directories are never shipped). A nonzero
 * return from fn stops the walk and is returned. */
int cv_applog_cold_walk(const char *partition_dir, cv_applog_cold_walk_fn *fn,
                        void *opaque, char *errbuf, size_t errlen);

/*
 * Retention (FORMAT.md "Retention"): sealed segments dropped on purpose.
 * A directory's file "expired" records each one (its offsets, its
 * header's link and its last record's chain hash), authenticated with a
 * key of the key file. The reader does not read a recorded segment even
 * while its file is still there, and takes a segment that chains across
 * recorded ones as linked; a segment dropped without a record is still
 * reported missing. Record first, then remove the files.
 */
typedef struct cv_applog_expiry {
    char segment[32]; /* file name in its directory: 20 digits ".cvlog" */
    int64_t first_offset, last_offset;
    uint64_t records, bytes;
    unsigned char prev_chain[CV_APPLOG_DIGEST_BYTES]; /* its header's link */
    unsigned char last_chain[CV_APPLOG_DIGEST_BYTES]; /* its last record's */
    int64_t expired_at_us;
    uint32_t key_id; /* of the key that authenticates the record */
} cv_applog_expiry;

/* The records of `dir` (a partition or generation directory): 1 with
 * *ret (caller frees) and *ret_n, 0 when it has none. With keys NULL the
 * lines are checked by CRC only, else also authenticated; -CV_ECORRUPT
 * names the line that fails. */
int cv_applog_expiry_read(const char *dir, const cv_keyring *keys, cv_applog_expiry **ret,
                          size_t *ret_n, char *errbuf, size_t errlen);
/* Adds records (authenticated with the newest key) durably; a segment
 * already recorded is not added twice. */
int cv_applog_expiry_add(const char *dir, const cv_keyring *keys,
                         const cv_applog_expiry *add, size_t nadd, char *errbuf,
                         size_t errlen);
/* Removes the segment files the records name (those still there) and makes
 * that durable; *ret_removed: how many were there. */
int cv_applog_expiry_remove(const char *dir, const cv_applog_expiry *v, size_t n,
                            uint64_t *ret_removed, char *errbuf, size_t errlen);

/* One sealed segment as retention sees it: where it is, the record that
 * would stand for it, and what its records are. */
typedef struct cv_applog_expiry_candidate {
    char *dir; /* its directory (partition or generation) */
    cv_applog_expiry e;
    int64_t newest_ms; /* newest Kafka timestamp of its records (see untimed) */
    bool keep;         /* a record's keep callback said so */
    bool cold;         /* only in the cold tier: <dir>/<segment>.cold stands for it */
    bool untimed;      /* a record has no Kafka timestamp (newest_ms then counts
                          the file's last change) */
    char *src;         /* the file its records were read from (a cold one's
                          fetched copy); NULL for a recorded one */
    bool pending;      /* recorded as dropped, its file (or stub) still there */
} cv_applog_expiry_candidate;
/* Reads every record of the partition at `partition_dir` (with keys) and
 * returns its broker segments that are sealed (not the last of their
 * directory) and outside repair directories, oldest first; one only in the
 * cold tier is read through the fetch hook and marked cold. keep(opaque, rec) is asked of every record
 * of those; a segment is marked keep when any record is. Frees with
 * cv_applog_expiry_candidates_free. Damage is an error naming it. */
typedef bool cv_applog_expiry_keep_fn(void *opaque, const cv_applog_record *rec);
int cv_applog_expiry_candidates(const char *partition_dir, const cv_keyring *keys,
                                cv_applog_expiry_keep_fn *keep, void *opaque,
                                cv_applog_expiry_candidate **ret, size_t *ret_n,
                                char *errbuf, size_t errlen);
void cv_applog_expiry_candidates_free(cv_applog_expiry_candidate *c, size_t n);
/* The segments recorded as dropped in the partition's directories (its
 * own and its generations'); with `present` only those whose files are
 * still there (a run that stopped between recording and removing). A
 * partition directory that does not exist has none. */
int cv_applog_expiry_recorded(const char *partition_dir, const cv_keyring *keys,
                              bool present, cv_applog_expiry_candidate **ret,
                              size_t *ret_n, char *errbuf, size_t errlen);

#endif
