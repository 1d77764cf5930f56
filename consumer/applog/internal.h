/*
 * applog/internal.h — private to consumer/applog/: the constants of the
 * format (FORMAT.md), the structs its files share, and the functions one
 * file calls in another, prefixed cv_applog_i_ (the module's prefix, and
 * "internal"). Nothing outside this folder includes it; the public API is
 * consumer/applog/applog.h. What each function does is said where it is defined.
 */
#ifndef CV_APPLOG_INTERNAL_H
#define CV_APPLOG_INTERNAL_H

#include "applog.h"

#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "datakeys.h"
#include "util.h"

/* ---- the format (FORMAT.md) ----------------------------------------- */

#define HDR_MAGIC "CVAPLOG\n"
#define HDR_MAGIC_REPAIR "CVAPLOGR"
#define HDR_VERSION 1   /* records hold their plaintext as it is */
#define HDR_VERSION_Z 2 /* records hold an encoded plaintext (COMPRESSION) */
#define HDR_FIXED 120
#define HDR_MAX (HDR_FIXED + 255 + 64 + DIGEST + 4)
#define KEYCHECK_CONTEXT "chatvault log key check"
#define FRAME_MAGIC "CVR\x01"
#define FRAME_HDR 32
#define TAG_BYTES crypto_aead_xchacha20poly1305_ietf_ABYTES
#define PT_FIXED 22
#define FRAME_MIN (FRAME_HDR + PT_FIXED + 1 + TAG_BYTES)
#define FRAME_MAX (64u << 20)
#define AD_BYTES 96
/* COMPRESSION: a version-2 record's encoded plaintext starts with the
 * encoding (1) and the plaintext's length U (4). */
#define ENC_HDR 5
#define ENC_STORED 0
#define ENC_ZSTD 1
#define PT_MAX (FRAME_MAX - FRAME_HDR - TAG_BYTES - ENC_HDR) /* U's upper limit */
#define DIGEST 32
#define VAL_ID 16 /* BLAKE2b-128 of a value: identity in the lookup cache */
#define WRITER_NAME_MAX 64
#define ZERO_RUN 32 /* zero bytes that only a block never written leaves */

/* Names on disk (LAYOUT, SEALS, REPAIR SEGMENTS, GENERATIONS). */
#define SEG_SUFFIX ".cvlog"
#define TMP_SUFFIX ".tmp"
#define NAME_DIGITS 20
#define REPAIR_PREFIX "repair-"
#define GEN_PREFIX "gen-"
#define SEAL_FILE "sealed"
#define SEAL_MAGIC "cvseal1"
#define SEAL_MAX 256
#define TORN_SUFFIX ".torn-"
/* COLD TIER: <name>.cvlog.cold stands for a segment shipped off-site. */
#define COLD_SUFFIX_TAIL ".cold"
#define COLD_SUFFIX SEG_SUFFIX COLD_SUFFIX_TAIL
#define COLD_MAGIC "cvcold1"
#define COLD_STUB_MAX 2048

/* The writer's limits. */
#define INDEX_KEEP 4096 /* recent offsets kept per partition */
#define BUF_LIMIT (1u << 30)
#define WORKERS_MAX 64              /* threads that write partitions in parallel */
#define SPARE_MAX (WORKERS_MAX + 2) /* segment buffers kept between jobs */
#define SPARE_BYTES_MAX (16u << 20) /* larger ones go back to the system */
#define WORKER_STACK (256u << 10)
#define WORKER_NICE 5

/* Big-endian readers (util.h has the writers, cv_be16/32/64). */
static inline uint16_t rd16(const unsigned char *p) {
    return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t rd32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t rd64(const unsigned char *p) {
    return ((uint64_t)rd32(p) << 32) | rd32(p + 4);
}

/* ---- reading: segments and directories -------------------------------- */

/* A segment header, decoded (format.c). */
typedef struct seghdr {
    uint16_t version; /* HDR_VERSION or HDR_VERSION_Z */
    uint16_t hlen;
    uint32_t key_id;
    unsigned char seg_id[16], writer_id[16];
    int64_t first_offset, created_us;
    unsigned char prev_chain[DIGEST];
    unsigned char key_check[16];
    int32_t partition;
    char topic[256];
    size_t topic_len;
    char writer_name[WRITER_NAME_MAX + 1];
    unsigned char hash[DIGEST];   /* HH */
    bool repair;                  /* magic HDR_MAGIC_REPAIR */
    unsigned char bridge[DIGEST]; /* repair segments only */
} seghdr;

/* What a partition directory's seal file says of its last segment at a
 * clean close (see SEALS in FORMAT.md). */
typedef struct seal {
    char name[NAME_DIGITS + 8]; /* segment file name */
    uint64_t bytes, records;
    int64_t last_offset;
    unsigned char chain[DIGEST];
} seal;

/* One segment file being read, mapped (segment.c). */
typedef struct seg {
    char *path;
    unsigned char *map;
    size_t size;
    seghdr h;
    size_t pos;     /* next frame */
    uint64_t index; /* next record index */
    uint32_t batch; /* batch of the last good frame; 0 before the first */
    unsigned char chain[DIGEST];
    int64_t last_offset;
    uint64_t last_pos;                  /* position of the last good frame */
    unsigned char subkey[CV_KEY_BYTES]; /* set by the caller that decrypts */
    cv_buf enc;                         /* a version-2 record's encoded plaintext */
    struct ZSTD_DCtx_s *dctx;           /* made on the first compressed record */
} seg;

/* A record as read from a segment, before merging. */
typedef struct rawrec {
    int64_t offset, timestamp_ms;
    int32_t partition;
    const unsigned char *value;
    size_t value_len;
    unsigned char digest[DIGEST];
    uint64_t pos;
    const unsigned char *frame;
    uint32_t frame_len;
} rawrec;

/* One directory of a partition being read, segment after segment
 * (reader.c). */
typedef struct pdir {
    struct cv_applog_reader *owner; /* the reader it belongs to, if any */
    char *dir;
    char **names;
    size_t nseg, iseg;
    unsigned char *cold; /* NULL, or per name: only in the cold tier (a stub) */
    seg cur;
    char *cur_stub; /* the open segment is a fetched cold copy: its stub */
    bool open;
    bool any;    /* a segment was read: chain/last_offset/topic are set */
    bool repair; /* a repair directory: its segments must be repair ones */
    int64_t gen; /* its generation: 0, or the start of its gen-* directory */
    unsigned char chain[DIGEST];
    int64_t last_offset;
    char topic[256];
    int32_t partition;
    const cv_keyring *keys;
    const unsigned char *key;
    /* DATA KEYS: the open segment's key was erased; its records are read
     * by frame check and chain only and not returned, unless keep_erased
     * (then returned without a value) */
    bool cur_erased, keep_erased;
    uint64_t erased_segs, erased_bytes, erased_records;
    int64_t skip_below;
    cv_buf plain;
    /* torn tail seen */
    bool torn;
    char *torn_file;
    uint64_t torn_pos;
    /* the seal of a partition directory (see SEALS); cur_sealed: the open
     * segment is the one it names */
    bool has_seal, cur_sealed;
    seal sl;
    /* segments retention dropped from this directory (RETENTION) */
    cv_applog_expiry *expired;
    size_t nexpired;
    int seal_err; /* reported by the first cv_applog_i_pdir_next */
    char *seal_msg;
    /* where the error cv_applog_i_pdir_next returned starts, when one file holds it */
    char *dmg_file;
    uint64_t dmg_pos;
    /* where the directory's last segment read so far ended */
    uint64_t end_records, end_bytes;
    /* lookahead for merging */
    bool has;
    rawrec rec;
} pdir;

/* ---- writing: segments, partitions, the log --------------------------- */

/* A segment being written. "d" fields are the durable state. */
typedef struct wseg {
    char *path, *tmp; /* tmp is set while the file is not yet renamed */
    int fd;
    seghdr h;
    uint64_t size, dsize;
    uint64_t nrec, dnrec;
    uint32_t batch, dbatch;
    cv_buf buf;    /* this append's bytes */
    uint64_t wpos; /* file position of buf.data[0] */
    bool in_batch; /* touched by the current append */
    unsigned char subkey[CV_KEY_BYTES];
} wseg;

/* Where a partition's directory stands (part.state). A part is calloc'ed:
 * PART_UNOPENED is 0. */
typedef enum part_state {
    PART_UNOPENED = 0, /* not opened yet, or to be opened again */
    PART_READY,        /* opened and recovered: appends go ahead */
    PART_REFUSED,      /* refused (cv_applog_i_part_refuse): appends fail with
                          part.refuse_err, part.err says why */
} part_state;

/* One directory the writer writes (partition.c): a broker partition (or
 * its current generation), a repair directory, or one beside a partition
 * for its late records or a new generation. */
typedef struct part {
    char *topic;
    int32_t partition;
    char *dir;
    int dirfd;
    part_state state;
    int refuse_err; /* PART_REFUSED: a negative errno or -CV_E* */
    char *err;      /* PART_REFUSED: the message */
    bool recheck;   /* refused for what recovery found: opened again next time */
    /* Kafka's committed offset (records below it were acked), -1 unknown:
     * recovery never cuts a tail that reaches below it */
    int64_t committed;
    /* the last segment on disk as recovery left it (until this session
     * writes one), for the seal at a clean close */
    char rseg[NAME_DIGITS + 8];
    uint64_t rbytes, rrecords;
    /* (offset, digest) of what the partition's repair directories held at
     * open, ascending: a re-delivered record that `chatvault verify
     * --repair` rebuilt there is held, not written a second time */
    int64_t *hoff;
    unsigned char (*hdig)[DIGEST];
    unsigned char (*hval)[VAL_ID]; /* their value ids (see GENERATIONS) */
    size_t hlen;
    wseg *cur, *dcur;
    wseg **touched; /* segments the current append writes to */
    size_t ntouched, tcap;
    bool touched_part;
    bool repair;       /* writes a repair directory (HDR_MAGIC_REPAIR) */
    struct part *late; /* the broker's repair directory for late records */
    int64_t gen;       /* the generation written: 0 or its gen-* start */
    struct part *ngen; /* the generation this append starts (GENERATIONS) */
    int64_t regress_at, regress_held; /* what started ngen, for the report */
    /* this append's work for the partition (run by one thread) */
    size_t *jidx; /* indexes into the entries */
    size_t njidx, jcap;
    int jr;
    char jerr[768];
    unsigned char chain[DIGEST], dchain[DIGEST];
    unsigned char bridge[DIGEST]; /* repair: see REPAIR SEGMENTS */
    int64_t last, dlast;
    /* recent offsets held, ascending (whether an offset is held; the bytes
     * are compared in the lookup cache below) */
    int64_t *ioff;
    size_t ilen, dilen, icap;
    /* (offset, digest, value id) of the segment last looked up on disk, so
     * a re-delivery reads that segment once */
    int64_t *coff;
    unsigned char (*cdig)[DIGEST];
    unsigned char (*cval)[VAL_ID];
    size_t clen, ccap;
    bool cused;         /* looked up during the current append */
    struct part *next;  /* every partition of the log */
    struct part *hnext; /* the next in its hash bucket */
    uint64_t hash;      /* part_hash(topic, partition) */
} part;

/* What one job needs to compress records (COMPRESSION): a zstd context
 * and the plaintext and compressed bytes of the record being encoded. */
typedef struct zwork {
    struct ZSTD_CCtx_s *cc;
    cv_buf pt, z;
} zwork;

/* A writer session (writer.c). */
struct cv_applog {
    char *dir;
    const cv_keyring *keys;
    uint32_t key_id;
    const unsigned char *key;
    struct cv_datakeys *dk; /* DATA KEYS: the channels' keys, or NULL */
    uint64_t segment_bytes;
    int zlevel; /* zstd level of new segments; 0: version-1 segments */
    unsigned char writer_id[16];
    char writer_name[WRITER_NAME_MAX + 1];
    cv_applog_syscalls sys;
    cv_applog_sync sync;
    int fsfd;           /* the log directory, for syncfs; -1 until needed */
    bool dir_unsynced;  /* partitions were opened since log.dir last synced */
    size_t workers_max; /* pool limit for the sync method (see pool_grow, pool.c) */
    cv_applog_torn_fn *torn_fn;
    void *torn_opaque;
    cv_applog_generation_fn *gen_fn;
    void *gen_opaque;
    bool repair_gen;        /* repair directories in a new generation */
    bool repair;            /* cv_applog_open_repair: repair directories */
    int64_t repair_session; /* their name: the session's start, Unix us */
    part *parts;
    /* The same partitions by (topic, partition): a batch looks one up per
     * record, and a broker holds hundreds. */
    part **buckets;
    size_t nbuckets, nparts;
    /* Workers that run the partitions of one append in parallel: their
     * encoding and, above all, their fdatasyncs overlap. */
    pthread_t *th;
    size_t nth;
    bool pool_up, stop;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    part **jobs;
    size_t njobs, next_job, jobs_done;
    cv_applog_entry *entries;
    /* Segment buffers between jobs (see cv_applog_i_buf_take). */
    pthread_mutex_t spare_mu;
    cv_buf spare[SPARE_MAX];
    size_t nspare;
    /* Compression contexts between jobs (see cv_applog_i_zwork_take). */
    struct zwork *zspare[SPARE_MAX];
    size_t nzspare;
};

/* ---- what one file calls in another, by the file that has it --------- */

/* format.c: the bytes */

uint32_t cv_applog_i_crc32c(const void *p, size_t n);
/* A checked one-line file (a seal, a cold-tier stub): "<fields> <CRC32C of
 * the fields, 8 hex digits>\n", shorter than cap. Copies the fields into
 * line (cap bytes, NUL-terminated) and returns NULL, or notline when it is
 * no such line, badcrc when the check fails. */
const char *cv_applog_i_crc_line(const char *text, size_t len, char *line, size_t cap,
                                 const char *notline, const char *badcrc);
int cv_applog_i_lib_init(char *errbuf, size_t errlen);
size_t cv_applog_i_hdr_encode(seghdr *h, unsigned char *out);
const char *cv_applog_i_hdr_decode(const unsigned char *p, size_t size, seghdr *h);
void cv_applog_i_build_ad(unsigned char *ad, const unsigned char *hh,
                          const unsigned char *frame, uint64_t pos,
                          const unsigned char *prev);
void cv_applog_i_segment_subkey(unsigned char *subkey, const unsigned char *seg_id,
                                const unsigned char *key);
void cv_applog_i_build_nonce(unsigned char *nonce, uint64_t index);
void cv_applog_i_key_check(unsigned char *out, const unsigned char *seg_id,
                           const unsigned char *key);
void cv_applog_i_chain_next(unsigned char *out, const unsigned char *prev,
                            const unsigned char *frame, size_t len);
const char *cv_applog_i_frame_check(const unsigned char *map, size_t size, size_t pos,
                                    uint32_t *ret_len);
void cv_applog_i_value_id(unsigned char *out, const void *value, size_t len);
const char *cv_applog_i_decode_plain(const unsigned char *enc, size_t n,
                                     struct ZSTD_DCtx_s **dctx, cv_buf *plain,
                                     int *ret_r);

/* segment.c: reading one segment */

void cv_applog_i_seg_close(seg *s);
int cv_applog_i_seg_open(seg *s, const char *path, char *errbuf, size_t errlen);
int cv_applog_i_seg_next(seg *s, const unsigned char *key, cv_buf *plain, rawrec *out,
                         uint64_t *ret_at, char *errbuf, size_t errlen);

/* catalog.c: names and listings */

bool cv_applog_i_is_seg_name(const char *n, const char *suffix);
void cv_applog_i_free_names(char **names, size_t n);
int cv_applog_i_list_names(const char *dir, const char *suffix, char ***ret,
                           size_t *ret_n, char *errbuf, size_t errlen);
char *cv_applog_i_path_join(const char *dir, const char *name);
bool cv_applog_i_is_repair_dir(const char *path);
int cv_applog_i_list_repair_dirs(const char *dir, char ***ret, size_t *ret_n,
                                 char *errbuf, size_t errlen);
int cv_applog_i_list_gen_dirs(const char *dir, char ***ret, size_t *ret_n, char *errbuf,
                              size_t errlen);
bool cv_applog_i_holds_segments(const char *dir);

/* reader.c: one directory, read */

void cv_applog_i_pdir_release(pdir *d);
int cv_applog_i_pdir_init(pdir *d, const char *dir, const cv_keyring *keys,
                          int64_t start_offset, char *errbuf, size_t errlen);
int cv_applog_i_pdir_next(pdir *d, char *errbuf, size_t errlen);

/* recovery.c: seals, torn tails */

int cv_applog_i_seal_read(const char *dir, seal *sl, char *errbuf, size_t errlen);

/* expiry.c: segments retention dropped (RETENTION) */
int cv_applog_i_expiry_load(pdir *d, char *errbuf, size_t errlen);
bool cv_applog_i_expiry_links(const pdir *d, const char *name);
int cv_applog_i_expiry_bridges(const pdir *d, const seghdr *h, const char **why);

/* cold.c */
int cv_applog_i_cold_merge(pdir *d, char *errbuf, size_t errlen);
int cv_applog_i_cold_path(const pdir *d, size_t i, char **ret, char *errbuf,
                          size_t errlen);
bool cv_applog_i_seg_tail_is_torn(const seg *s, size_t at);
int64_t cv_applog_i_offsets_after(const seg *s, size_t at);
void cv_applog_i_seal_part(cv_applog *log, part *p);
void cv_applog_i_seal_all(cv_applog *log);
int cv_applog_i_remove_unfinished(cv_applog *log, part *p, char *errbuf, size_t errlen);
int cv_applog_i_recover_last_segment(cv_applog *log, part *p, char *errbuf,
                                     size_t errlen);

/* sync.c: the way to the disk */

int cv_applog_i_sys_fsync_dir(cv_applog *log, const char *dir);
int cv_applog_i_make_dir(cv_applog *log, const char *dir, bool sync_parent, char *errbuf,
                         size_t errlen);
int cv_applog_i_flush_part(cv_applog *log, part *p);
int cv_applog_i_sync_all(cv_applog *log, part **tp, size_t ntp, char *errbuf,
                         size_t errlen);

/* partition.c: the writer's partitions */

wseg *cv_applog_i_wseg_free(wseg *w);
void cv_applog_i_part_free(part *p);
part *cv_applog_i_find_part(const cv_applog *log, const char *topic, int32_t partition);
void cv_applog_i_part_refuse(part *p, int err, const char *msg);
int cv_applog_i_get_part(cv_applog *log, const char *topic, int32_t partition, part **ret,
                         char *errbuf, size_t errlen);
int cv_applog_i_gen_part(cv_applog *log, part *p, int64_t offset, part **ret);
int cv_applog_i_late_part(cv_applog *log, part *p, part **ret);

/* index.c: what the writer holds */

int cv_applog_i_index_push(part *p, int64_t offset);
void cv_applog_i_index_trim(part *p);
int cv_applog_i_load_repair_held(cv_applog *log, part *p);
size_t cv_applog_i_find_offset(const int64_t *v, size_t n, int64_t offset);
int cv_applog_i_lookup_held(cv_applog *log, part *p, cv_applog_entry *e, char *errbuf,
                            size_t errlen);
int cv_applog_i_repair_held(const part *p, size_t i, cv_applog_entry *e);

/* pool.c: workers and buffers */

void cv_applog_i_buf_take(cv_applog *log, cv_buf *b);
void cv_applog_i_buf_give(cv_applog *log, cv_buf *b);
struct zwork *cv_applog_i_zwork_take(cv_applog *log);
void cv_applog_i_zwork_give(cv_applog *log, struct zwork *z);
void cv_applog_i_zwork_free_all(cv_applog *log);
void cv_applog_i_pool_stop(cv_applog *log);
void cv_applog_i_run_parts(cv_applog *log, part **tp, size_t ntp);

/* writer.c: the session */

void cv_applog_i_part_job(cv_applog *log, part *p);

#endif
