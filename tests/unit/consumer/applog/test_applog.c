/*
 * Tests for consumer/applog/ (the log) on real files with real fsync: round trip
 * across segments and a key rotation, re-appends, crash recovery at every
 * byte of a torn record, corruption detection with file and offset,
 * injected faults, merging the directories of several instances, and a
 * timing of group-committed appends.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "applog/applog.h"
#include "keyring.h"
#include "tap.h"
#include "util.h"

#define TOPIC "chat.general"
#define VALUE_LEN 256

static char root[256];

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void sh(const char *fmt, const char *a, const char *b) {
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), fmt, a, b);
    if (system(cmd) != 0) {
        fprintf(stderr, "command failed: %s\n", cmd);
        exit(2);
    }
}

static char *path2(const char *a, const char *b) {
    static char bufs[8][600];
    static int k;
    char *p = bufs[k++ % 8];
    snprintf(p, 600, "%s/%s", a, b);
    return p;
}

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        die(path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc((size_t)n + 1);
    if (!p || fread(p, 1, (size_t)n, f) != (size_t)n)
        die(path);
    fclose(f);
    *len = (size_t)n;
    return p;
}

static void spit(const char *path, const unsigned char *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
        die(path);
}

/* Under CV_TEST_APPLOG_ZSTD values are compressible (3 bits a byte), so
 * that zstd, not the stored encoding, carries the records. */
static bool compressible;

/* Deterministic value bytes for an offset. */
static void make_value(int64_t offset, unsigned char *v, size_t n) {
    uint64_t x = (uint64_t)offset * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        v[i] = compressible ? (unsigned char)('a' + (x & 7)) : (unsigned char)x;
    }
}

/* Appends offsets [from, to) of one partition in batches of `batch`,
 * storing digests in dig[offset] when dig is not NULL. */
static int append_range(cv_applog *log, int32_t partition, int64_t from, int64_t to,
                        size_t batch, unsigned char (*dig)[32], char *err,
                        size_t errlen) {
    static unsigned char vals[1000][VALUE_LEN];
    static cv_applog_entry ents[1000];
    if (batch > 1000)
        batch = 1000;
    for (int64_t o = from; o < to;) {
        size_t n = 0;
        for (; n < batch && o < to; n++, o++) {
            make_value(o, vals[n], VALUE_LEN);
            ents[n] = (cv_applog_entry){.topic = TOPIC,
                                        .partition = partition,
                                        .offset = o,
                                        .timestamp_ms = 1700000000000 + o,
                                        .value = vals[n],
                                        .value_len = VALUE_LEN};
        }
        int r = cv_applog_append(log, ents, n, err, errlen);
        if (r < 0)
            return r;
        if (dig)
            for (size_t i = 0; i < n; i++)
                memcpy(dig[ents[i].offset], ents[i].digest, 32);
    }
    return 0;
}

typedef struct seen {
    int64_t count, bad_value, bad_digest, out_of_order;
    int64_t last;
    int err;
    char errmsg[512];
    char file[512];
    uint64_t pos;
} seen;

/* Reads every record of the given partition directories and checks values
 * (and digests against dig when given). */
static seen read_all(const char *const *dirs, size_t n, const cv_keyring *kr,
                     unsigned char (*dig)[32]) {
    seen s = {.last = -1};
    cv_applog_reader *rd = NULL;
    s.err = cv_applog_reader_open(dirs, n, kr, &rd, s.errmsg, sizeof(s.errmsg));
    if (s.err < 0)
        return s;
    cv_applog_record rec;
    unsigned char want[VALUE_LEN];
    int r;
    while ((r = cv_applog_reader_next(rd, &rec, s.errmsg, sizeof(s.errmsg))) == 1) {
        s.count++;
        if (rec.offset <= s.last)
            s.out_of_order++;
        s.last = rec.offset;
        make_value(rec.offset, want, VALUE_LEN);
        if (kr &&
            (rec.value_len != VALUE_LEN || memcmp(rec.value, want, VALUE_LEN) != 0 ||
             rec.timestamp_ms != 1700000000000 + rec.offset ||
             strcmp(rec.topic, TOPIC) != 0))
            s.bad_value++;
        if (dig && memcmp(dig[rec.offset], rec.digest, 32) != 0)
            s.bad_digest++;
    }
    s.err = r;
    cv_applog_reader_free(rd);
    return s;
}

static const char *pdir(const char *logdir, int32_t partition) {
    static char bufs[4][600];
    static int k;
    char *p = bufs[k++ % 4];
    cv_applog_partition_dir(logdir, TOPIC, partition, p, 600);
    return p;
}

/* How many entries of dir match the grep pattern. */
static int count_named(const char *dir, const char *pattern) {
    char cmd[800];
    snprintf(cmd, sizeof(cmd), "ls '%s' | grep -c -- '%s'", dir, pattern);
    FILE *f = popen(cmd, "r");
    int n = 0;
    if (!f || fscanf(f, "%d", &n) != 1)
        n = -1;
    if (f)
        pclose(f);
    return n;
}

static int count_segments(const char *dir) {
    return count_named(dir, "\\.cvlog$");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- round trip, rotation, re-append --------------------------------- */

#define N_ROUND 100000
static unsigned char digests[N_ROUND + 100][32];

static void test_round_trip(void) {
    char err[1024];
    char keyfile[600];
    snprintf(keyfile, sizeof(keyfile), "%s/%s", root, "rt.key");
    char logdir[600];
    snprintf(logdir, sizeof(logdir), "%s/%s", root, "rt");
    uint32_t id;
    cv_keyring *kr = NULL;
    cv_applog *log = NULL;
    cv_keyring_generate(keyfile, &id, err, sizeof(err));
    cv_keyring_load(keyfile, &kr, err, sizeof(err));
    TAP_IS_INT(cv_applog_open(logdir, kr, 4u << 20, &log, err, sizeof(err)), 0,
               "open a log");
    double t0 = now_s();
    int r = append_range(log, 0, 0, N_ROUND / 2, 1000, digests, err, sizeof(err));
    double t1 = now_s();
    TAP_IS_INT(r, 0, "append 50,000 records with key 1");
    if (r < 0)
        printf("# %s\n", err);
    printf("# append throughput: %.0f records/s (%d B values, one fdatasync "
           "per 1000 records, 4 MiB segments)\n",
           (N_ROUND / 2) / (t1 - t0), VALUE_LEN);
    int64_t req, dur;
    TAP_IS_INT(cv_applog_positions(log, TOPIC, 0, &req, &dur), 0,
               "positions of an open partition");
    tap_ok(req == N_ROUND / 2 - 1 && dur == req,
           "requested and durable positions agree after success");
    log = cv_applog_free(log);
    kr = cv_keyring_free(kr);

    TAP_IS_INT(cv_keyring_generate(keyfile, &id, err, sizeof(err)), 0,
               "rotate: add key 2");
    cv_keyring_load(keyfile, &kr, err, sizeof(err));
    cv_applog_open(logdir, kr, 4u << 20, &log, err, sizeof(err));
    r = append_range(log, 0, N_ROUND / 2, N_ROUND, 1000, digests, err, sizeof(err));
    TAP_IS_INT(r, 0, "append 50,000 more records with key 2 (new session)");

    const char *d0 = pdir(logdir, 0);
    int nseg = count_segments(d0);
    tap_ok(nseg >= 6, "the records span several segments (%d)", nseg);
    seen s = read_all(&d0, 1, kr, digests);
    TAP_IS_INT(s.err, 0, "the reader reaches the end without error");
    if (s.err)
        printf("# %s\n", s.errmsg);
    TAP_IS_INT(s.count, N_ROUND, "the reader returns all 100,000 records");
    TAP_IS_INT(s.bad_value + s.bad_digest + s.out_of_order, 0,
               "values, timestamps and digests match, offsets ascend");

    /* Re-append: 10 held offsets and 10 new ones; plus an old held offset
     * that is no longer in memory (looked up on disk). */
    cv_applog_entry ents[21];
    unsigned char vals[21][VALUE_LEN];
    for (int i = 0; i < 20; i++) {
        int64_t o = N_ROUND - 10 + i;
        make_value(o, vals[i], VALUE_LEN);
        ents[i] =
            (cv_applog_entry){TOPIC, 0, o, 1700000000000 + o, vals[i], VALUE_LEN, {0}};
    }
    r = cv_applog_append(log, ents, 20, err, sizeof(err));
    TAP_IS_INT(r, 0, "re-append 10 held and 10 new offsets");
    int same = 0;
    for (int i = 0; i < 10; i++)
        same += memcmp(ents[i].digest, digests[N_ROUND - 10 + i], 32) == 0;
    TAP_IS_INT(same, 10, "held offsets return their original digests");
    for (int i = 10; i < 20; i++)
        memcpy(digests[N_ROUND - 10 + i], ents[i].digest, 32);
    make_value(5, vals[20], VALUE_LEN);
    ents[20] = (cv_applog_entry){TOPIC, 0, 5, 1700000000005, vals[20], VALUE_LEN, {0}};
    r = cv_applog_append(log, &ents[20], 1, err, sizeof(err));
    tap_ok(r == 0 && memcmp(ents[20].digest, digests[5], 32) == 0,
           "an old offset found on disk is a no-op with its digest");
    /* A re-delivery of 3,000 records far below the in-memory index: one
     * read of their segment, the original digests, nothing written. */
    static unsigned char redig[N_ROUND + 100][32];
    double t2 = now_s();
    r = append_range(log, 0, 1000, 4000, 1000, redig, err, sizeof(err));
    double t3 = now_s();
    tap_ok(r == 0 && memcmp(redig + 1000, digests + 1000, 3000 * 32) == 0,
           "re-delivering 3,000 old offsets returns their digests (%.3f s)", t3 - t2);
    s = read_all(&d0, 1, kr, digests);
    tap_ok(s.err == 0 && s.count == N_ROUND + 10 && s.bad_digest == 0,
           "the reader sees each record once after re-appends (%" PRId64 ")", s.count);

    {
        cv_applog_reader *rd = NULL;
        cv_applog_reader_open(&d0, 1, kr, &rd, err, sizeof(err));
        cv_applog_reader_skip_to(rd, 77777);
        cv_applog_record rec;
        int64_t n = 0, firsto = -1;
        while (cv_applog_reader_next(rd, &rec, err, sizeof(err)) == 1)
            if (!n++)
                firsto = rec.offset;
        cv_applog_reader_free(rd);
        tap_ok(firsto == 77777 && n == N_ROUND + 10 - 77777,
               "skip_to(77777) starts there (%" PRId64 " records from %" PRId64 ")", n,
               firsto);
    }

    cv_keyring *k1only = NULL;
    char k1[512];
    snprintf(k1, sizeof(k1), "%s/k1.key", root);
    size_t kl;
    unsigned char *kt = slurp(keyfile, &kl);
    char *second = strstr((char *)kt, "\nkey 2 ");
    second[1] = '\0';
    int fd = open(k1, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (write(fd, kt, strlen((char *)kt)) < 0)
        die(k1);
    close(fd);
    free(kt);
    cv_keyring_load(k1, &k1only, err, sizeof(err));
    s = read_all(&d0, 1, k1only, NULL);
    tap_ok(s.err == -ENOKEY && strstr(s.errmsg, "key id 2") && strstr(s.errmsg, ".cvlog"),
           "a key ring without the newer key: %s", s.errmsg);
    cv_keyring_free(k1only);
    log = cv_applog_free(log);
    cv_keyring_free(kr);
}

/* ---- a small log for crash and corruption tests ----------------------- */

static cv_keyring *small_kr;

/* Builds `logdir` with `nseg` sessions (one segment each), each of `nbatch`
 * batches of 10 records. Returns the next offset. */
static int64_t build_small(const char *logdir, int nsess, int nbatch) {
    char err[1024];
    int64_t o = 0;
    for (int s = 0; s < nsess; s++) {
        cv_applog *log = NULL;
        if (cv_applog_open(logdir, small_kr, 1u << 20, &log, err, sizeof(err)))
            die(err);
        for (int b = 0; b < nbatch; b++, o += 10)
            if (append_range(log, 0, o, o + 10, 10, NULL, err, sizeof(err)))
                die(err);
        cv_applog_free(log);
    }
    return o;
}

typedef struct recpos {
    char file[512];
    uint64_t pos, len;
    int64_t offset;
} recpos;

/* Positions of every record (from a pristine log). */
static size_t positions(const char *dir, recpos *out, size_t max) {
    cv_applog_reader *rd;
    char err[512];
    if (cv_applog_reader_open(&dir, 1, small_kr, &rd, err, sizeof(err)))
        die(err);
    cv_applog_record rec;
    size_t n = 0;
    while (n < max && cv_applog_reader_next(rd, &rec, err, sizeof(err)) == 1) {
        snprintf(out[n].file, sizeof(out[n].file), "%s", rec.file);
        out[n].pos = rec.pos;
        out[n].offset = rec.offset;
        if (n && strcmp(out[n - 1].file, rec.file) == 0)
            out[n - 1].len = rec.pos - out[n - 1].pos;
        n++;
    }
    cv_applog_reader_free(rd);
    for (size_t i = 0; i < n; i++)
        if (i + 1 == n || strcmp(out[i].file, out[i + 1].file) != 0) {
            struct stat st;
            stat(out[i].file, &st);
            out[i].len = (uint64_t)st.st_size - out[i].pos;
        }
    return n;
}

typedef struct torn_seen {
    int calls;
    uint64_t pos;
    char file[512];
} torn_seen;

static void on_torn(void *opaque, const cv_applog_torn *tt) {
    torn_seen *t = opaque;
    t->calls++;
    t->pos = tt->pos;
    snprintf(t->file, sizeof(t->file), "%s", tt->file);
}

/* A crash writes no seal: without it the copy looks like a crashed log. */
static void unseal(const char *dir, int32_t partition) {
    char p[700];
    snprintf(p, sizeof(p), "%s/sealed", pdir(dir, partition));
    if (unlink(p) < 0 && errno != ENOENT)
        die(p);
}

static void test_crash_recovery(void) {
    char err[1024];
    char base[600];
    snprintf(base, sizeof(base), "%s/%s", root, "crash-base");
    char work[600];
    snprintf(work, sizeof(work), "%s/%s", root, "crash");
    int64_t next = build_small(base, 1, 5); /* one segment, batches 1..5 */
    static recpos rp[64];
    size_t n = positions(pdir(base, 0), rp, 64);
    recpos last = rp[n - 1];
    const char *segname = strrchr(last.file, '/') + 1;
    size_t flen;
    unsigned char *full = slurp(last.file, &flen);
    int failures = 0, torn_ok = 0;
    for (uint64_t cut = last.pos + 1; cut < flen; cut++) {
        char cmd[2048];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -a '%s' '%s'", work, base, work);
        if (system(cmd) != 0)
            die("cp");
        unseal(work, 0);
        char seg[700];
        snprintf(seg, sizeof(seg), "%s/%s", pdir(work, 0), segname);
        spit(seg, full, cut);
        cv_applog *log = NULL;
        torn_seen t = {0};
        cv_applog_open(work, small_kr, 1u << 20, &log, err, sizeof(err));
        cv_applog_set_torn_cb(log, on_torn, &t);
        /* Re-deliver the torn record and one more: both must be written. */
        int r = append_range(log, 0, next - 1, next + 1, 10, NULL, err, sizeof(err));
        cv_applog_free(log);
        if (t.calls == 1 && t.pos == last.pos && strcmp(t.file, seg) == 0)
            torn_ok++;
        const char *d = pdir(work, 0);
        seen s = read_all(&d, 1, small_kr, NULL);
        if (r != 0 || s.err != 0 || s.count != next + 1 || s.bad_value) {
            if (!failures++)
                printf("# cut at %" PRIu64 ": r=%d %s / %s count=%" PRId64 "\n", cut, r,
                       err, s.errmsg, s.count);
        }
        if (count_segments(d) != 2 && !failures++)
            printf("# cut at %" PRIu64 ": writing did not continue in a new "
                   "segment\n",
                   cut);
    }
    uint64_t cuts = flen - last.pos - 1;
    TAP_IS_INT(failures, 0,
               "torn at every byte of the last record: recovery keeps all "
               "before it, appends continue in a new segment");
    TAP_IS_INT(torn_ok, (long long)cuts,
               "each torn tail is reported with file and byte offset");

    /* Zeros after the last record (a file extended but not written). */
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -a '%s' '%s'", work, base, work);
    if (system(cmd) != 0)
        die("cp");
    unseal(work, 0);
    unsigned char *ext = calloc(1, flen + 4096);
    memcpy(ext, full, flen);
    spit(path2(pdir(work, 0), segname), ext, flen + 4096);
    cv_applog *log = NULL;
    torn_seen t = {0};
    cv_applog_open(work, small_kr, 1u << 20, &log, err, sizeof(err));
    cv_applog_set_torn_cb(log, on_torn, &t);
    int r = append_range(log, 0, next, next + 1, 10, NULL, err, sizeof(err));
    cv_applog_free(log);
    tap_ok(r == 0 && t.calls == 1 && t.pos == flen,
           "zeros after the last record are cut at byte %zu", flen);
    free(ext);
    free(full);
}

/* ---- corruption ------------------------------------------------------- */

static recpos crp[200];
static size_t ncrp;

static void fresh_copy(const char *base, const char *work) {
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -a '%s' '%s'", work, base, work);
    if (system(cmd) != 0)
        die("cp");
}

/* The copy of record i's file in work. */
static char *work_file(const char *work, size_t i) {
    return path2(pdir(work, 0), strrchr(crp[i].file, '/') + 1);
}

static void expect_error(const char *work, const char *name, size_t rec_i,
                         uint64_t pos_override, const char *what) {
    const char *d = pdir(work, 0);
    seen s = read_all(&d, 1, small_kr, NULL);
    char want_file[600];
    snprintf(want_file, sizeof(want_file), "%s", work_file(work, rec_i));
    char want_at[64];
    snprintf(want_at, sizeof(want_at), "at byte %" PRIu64 ":",
             pos_override != UINT64_MAX ? pos_override : crp[rec_i].pos);
    tap_ok(s.err < 0 && strstr(s.errmsg, want_file) && strstr(s.errmsg, want_at) &&
               (!what || strstr(s.errmsg, what)),
           "%s is detected with file and offset: %s", name, s.errmsg);
    if (!(s.err < 0 && strstr(s.errmsg, want_file) && strstr(s.errmsg, want_at)))
        printf("#   wanted %s %s\n", want_file, want_at);
}

static void crc_fix(unsigned char *frame) {
    uint32_t len = ((uint32_t)frame[8] << 24) | ((uint32_t)frame[9] << 16) |
                   ((uint32_t)frame[10] << 8) | frame[11];
    /* CRC32C, bitwise: the test does not trust the module's table. */
    uint32_t c = 0xffffffffu;
    for (uint32_t i = 8; i < len; i++) {
        c ^= frame[i];
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    cv_be32(frame + 4, c ^ 0xffffffffu);
}

static void test_corruption(void) {
    char err[1024];
    char base[600];
    snprintf(base, sizeof(base), "%s/%s", root, "bad-base");
    char work[600];
    snprintf(work, sizeof(work), "%s/%s", root, "bad");
    build_small(base, 3, 5); /* 3 segments x 5 batches x 10 records */
    ncrp = positions(pdir(base, 0), crp, 200);
    TAP_IS_INT(ncrp, 150, "corruption base log holds 150 records");
    size_t len;
    unsigned char *f;

    /* Record 12 is in segment 1, batch 2. */
    fresh_copy(base, work);
    f = slurp(work_file(work, 12), &len);
    f[crp[12].pos + 40] ^= 0x01;
    spit(work_file(work, 12), f, len);
    free(f);
    expect_error(work, "a flipped byte", 12, UINT64_MAX, "CRC");
    {
        const char *d = pdir(work, 0);
        cv_applog_reader *rd = NULL;
        cv_applog_reader_open(&d, 1, small_kr, &rd, err, sizeof(err));
        cv_applog_reader_skip_to(rd, 100);
        cv_applog_record rec;
        int n = 0, r;
        while ((r = cv_applog_reader_next(rd, &rec, err, sizeof(err))) == 1)
            n++;
        cv_applog_reader_free(rd);
        tap_ok(r == 0 && n == 50, "skip_to does not read segments below its offset (%d)",
               n);
    }

    fresh_copy(base, work);
    f = slurp(work_file(work, 12), &len);
    f[crp[12].pos + 40] ^= 0x01;
    crc_fix(f + crp[12].pos);
    spit(work_file(work, 12), f, len);
    free(f);
    expect_error(work, "a flipped byte with its CRC recomputed", 12, UINT64_MAX,
                 "authentication");

    /* Delete record 12. */
    fresh_copy(base, work);
    f = slurp(work_file(work, 12), &len);
    memmove(f + crp[12].pos, f + crp[12].pos + crp[12].len,
            len - crp[12].pos - crp[12].len);
    spit(work_file(work, 12), f, len - crp[12].len);
    free(f);
    expect_error(work, "a deleted record", 12, UINT64_MAX, NULL);

    /* Swap records 12 and 13 (adjacent; compressed ones differ in length). */
    fresh_copy(base, work);
    f = slurp(work_file(work, 12), &len);
    unsigned char t12[2048], t13[2048];
    memcpy(t12, f + crp[12].pos, crp[12].len);
    memcpy(t13, f + crp[13].pos, crp[13].len);
    memcpy(f + crp[12].pos, t13, crp[13].len);
    memcpy(f + crp[12].pos + crp[13].len, t12, crp[12].len);
    spit(work_file(work, 12), f, len);
    free(f);
    expect_error(work, "swapped records", 12, UINT64_MAX, NULL);

    /* Record 62 (segment 2) overwritten by record 12 (segment 1, same
     * index within its segment): right index, wrong segment. */
    fresh_copy(base, work);
    size_t l1;
    unsigned char *f1 = slurp(work_file(work, 12), &l1);
    f = slurp(work_file(work, 62), &len);
    memcpy(f + crp[62].pos, f1 + crp[12].pos, crp[12].len);
    spit(work_file(work, 62), f, len);
    free(f);
    expect_error(work, "a record copied from another segment", 62, UINT64_MAX, NULL);
    /* ... and the same with its offset field made to fit (CRC fixed): only
     * the authentication can tell. */
    fresh_copy(base, work);
    f = slurp(work_file(work, 62), &len);
    memcpy(f + crp[62].pos, f1 + crp[12].pos, crp[12].len);
    cv_be64(f + crp[62].pos + 24, (uint64_t)crp[62].offset);
    crc_fix(f + crp[62].pos);
    spit(work_file(work, 62), f, len);
    free(f);
    free(f1);
    expect_error(work, "a copied record with a forged offset", 62, UINT64_MAX,
                 "authentication");

    /* Drop the whole middle segment: the third no longer chains. */
    fresh_copy(base, work);
    unlink(work_file(work, 60));
    expect_error(work, "a dropped segment", 100, 0, "chain");

    /* The writer refuses a partition damaged before its tail. */
    fresh_copy(base, work);
    f = slurp(work_file(work, 112), &len);
    f[crp[112].pos + 50] ^= 0x80;
    spit(work_file(work, 112), f, len);
    free(f);
    cv_applog *log = NULL;
    cv_applog_open(work, small_kr, 1u << 20, &log, err, sizeof(err));
    int r = append_range(log, 0, 150, 151, 1, NULL, err, sizeof(err));
    char at[64];
    snprintf(at, sizeof(at), "at byte %" PRIu64, crp[112].pos);
    tap_ok(r == -CV_ECORRUPT && strstr(err, work_file(work, 112)) && strstr(err, at) &&
               strstr(err, "chatvault log check"),
           "append refuses a partition damaged before its tail: %s", err);
    r = append_range(log, 0, 150, 151, 1, NULL, err, sizeof(err));
    tap_ok(r == -CV_ECORRUPT, "... and keeps refusing it");
    cv_applog_free(log);

    /* Wrong key: same id, other bytes. */
    fresh_copy(base, work);
    char kf[600];
    snprintf(kf, sizeof(kf), "%s/%s", root, "other.key");
    uint32_t id;
    cv_keyring *other = NULL;
    cv_keyring_generate(kf, &id, err, sizeof(err));
    cv_keyring_load(kf, &other, err, sizeof(err));
    const char *d = pdir(work, 0);
    seen s = read_all(&d, 1, other, NULL);
    tap_ok(s.err == -EKEYREJECTED && strstr(s.errmsg, "wrong key") &&
               strstr(s.errmsg, work_file(work, 0)),
           "a wrong key is told apart from damage: %s", s.errmsg);
    cv_keyring_free(other);
    s = read_all(&d, 1, NULL, NULL);
    TAP_IS_INT(s.count, 150, "without keys the chain is still checked in full");
}

/* ---- faults ----------------------------------------------------------- */

enum { F_NONE, F_WRITE_ENOSPC, F_SHORT_THEN_ENOSPC, F_SYNC_EIO };
static int fault;

static ssize_t f_pwrite(int fd, const void *buf, size_t n, off_t off) {
    if (fault == F_WRITE_ENOSPC) {
        errno = ENOSPC;
        return -1;
    }
    if (fault == F_SHORT_THEN_ENOSPC) {
        fault = F_WRITE_ENOSPC;
        return pwrite(fd, buf, n / 2, off);
    }
    return pwrite(fd, buf, n, off);
}

static int f_fdatasync(int fd) {
    if (fault == F_SYNC_EIO) {
        errno = EIO;
        return -1;
    }
    return fdatasync(fd);
}

static int f_syncfs(int fd) {
    if (fault == F_SYNC_EIO) {
        errno = EIO;
        return -1;
    }
    return syncfs(fd);
}

static int f_open(const char *p, int flags, mode_t mode) {
    return open(p, flags, mode);
}

static struct stat fsync_dir; /* the directory whose fsyncs f_fsync counts */
static int fsyncs;

/* Counts (and under F_SYNC_EIO fails) the fsyncs of fsync_dir; any other
 * file's fsync is passed through. */
static int f_fsync(int fd) {
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_dev == fsync_dir.st_dev &&
        st.st_ino == fsync_dir.st_ino) {
        fsyncs++;
        if (fault == F_SYNC_EIO) {
            errno = EIO;
            return -1;
        }
    }
    return fsync(fd);
}

/* The directories of the partitions an append opens are made durable by
 * one fsync of log.dir, not one each (fdatasync), or by the append's own
 * syncfs (syncfs); when that fsync fails, the append fails naming log.dir
 * and reports nothing durable. */
/* ---- damage is never taken for a torn tail ----------------------------- */

static bool same_file(const char *a, const unsigned char *want, size_t wlen) {
    size_t l;
    unsigned char *f = slurp(a, &l);
    bool same = l == wlen && memcmp(f, want, l) == 0;
    free(f);
    return same;
}

/* One damage case: `work` (already damaged) is read by the reader (what
 * `log check` does) and then opened by a writer that appends the next
 * offset (what a broker start does). Damage must be reported by both,
 * with the segment file and byte, and leave the file as it was; a torn
 * tail (torn_at != UINT64_MAX) must be cut at torn_at with the cut bytes
 * kept beside it and writing going on. A writer reads only the last
 * segment: damage before it (older) is left untouched and written past,
 * and found by the reader. */
#define OLDER UINT64_MAX - 1
static void expect_damage(const char *work, const char *file, uint64_t at,
                          uint64_t torn_at, int64_t committed, const char *name) {
    char err[1024];
    const char *d = pdir(work, 0);
    size_t flen;
    unsigned char *before = slurp(file, &flen);
    seen s = read_all(&d, 1, small_kr, NULL);
    cv_applog *log = NULL;
    torn_seen t = {0};
    cv_applog_open(work, small_kr, 1u << 20, &log, err, sizeof(err));
    cv_applog_set_torn_cb(log, on_torn, &t);
    if (committed >= 0)
        cv_applog_set_committed(log, TOPIC, 0, committed);
    int r = append_range(log, 0, 1000, 1001, 1, NULL, err, sizeof(err));
    cv_applog_free(log);
    char at_s[64];
    snprintf(at_s, sizeof(at_s), "at byte %" PRIu64, at);
    if (torn_at == OLDER) {
        tap_ok(s.err < 0 && strstr(s.errmsg, file) && strstr(s.errmsg, at_s),
               "%s: the reader reports damage with file and byte: %s", name, s.errmsg);
        tap_ok(r == 0 && same_file(file, before, flen) && t.calls == 0,
               "%s: a writer, which reads only the last segment, leaves it as it "
               "was (%s)",
               name, r ? err : "ok");
    } else if (torn_at == UINT64_MAX) {
        if (committed >= 0)
            tap_ok(s.err == 0,
                   "%s: offline, without the committed offset, the reader "
                   "can only take it for a torn tail",
                   name);
        else
            tap_ok(s.err < 0 && strstr(s.errmsg, file) && strstr(s.errmsg, at_s),
                   "%s: the reader reports damage with file and byte: %s", name,
                   s.errmsg);
        tap_ok(r == -CV_ECORRUPT && strstr(err, file) && strstr(err, "verify --repair"),
               "%s: the writer refuses the partition: %s", name, err);
        tap_ok(same_file(file, before, flen) && t.calls == 0 &&
                   count_named(d, "torn-") == 0,
               "%s: nothing is cut or deleted", name);
    } else {
        tap_ok(s.err == 0, "%s: the reader takes it for a torn tail (%s)", name,
               s.errmsg);
        size_t nl;
        unsigned char *now = slurp(file, &nl);
        tap_ok(r == 0 && t.calls == 1 && t.pos == torn_at && nl == torn_at &&
                   memcmp(now, before, nl) == 0 && count_named(d, "torn-") == 1,
               "%s: the writer cuts it at byte %" PRIu64 ", keeps the bytes aside "
               "and writes on (%s)",
               name, torn_at, r ? err : "ok");
        free(now);
    }
    free(before);
}

static void test_damage_places(void) {
    char base[600], work[600];
    snprintf(base, sizeof(base), "%s/%s", root, "dmg-base");
    snprintf(work, sizeof(work), "%s/%s", root, "dmg");
    build_small(base, 3, 5); /* 3 segments x 5 batches x 10 records */
    ncrp = positions(pdir(base, 0), crp, 200);
    struct stat st;
    tap_ok(stat(path2(pdir(base, 0), "sealed"), &st) == 0,
           "a clean close leaves the partition's seal");
    const char *last = work_file(work, 149);
    size_t len;
    unsigned char *f;
    for (int crash = 0; crash < 2; crash++) {
        const char *how = crash ? "after a crash" : "after a clean stop";
        char name[160];
        /* The segment header of the last segment. */
        fresh_copy(base, work);
        if (crash)
            unseal(work, 0);
        f = slurp(last, &len);
        f[20] ^= 0x10;
        spit(last, f, len);
        free(f);
        snprintf(name, sizeof(name), "segment header, %s", how);
        expect_damage(work, last, 0, UINT64_MAX, -1, name);
        /* Record 101: batch 1 of the last segment; 125: a middle batch;
         * 145: the last batch; 12: a sealed older segment. */
        static const size_t recs[] = {101, 125, 145, 12};
        static const char *const where[] = {"first batch", "a middle batch",
                                            "the last batch", "an older segment"};
        for (size_t k = 0; k < 4; k++) {
            fresh_copy(base, work);
            if (crash)
                unseal(work, 0);
            const char *file = work_file(work, recs[k]);
            f = slurp(file, &len);
            f[crp[recs[k]].pos + 40] ^= 0x01;
            spit(file, f, len);
            free(f);
            snprintf(name, sizeof(name), "a flipped bit in %s, %s", where[k], how);
            expect_damage(work, file, crp[recs[k]].pos, k == 3 ? OLDER : UINT64_MAX, -1,
                          name);
        }
        /* The last byte of the file (the last record's tag). */
        fresh_copy(base, work);
        if (crash)
            unseal(work, 0);
        f = slurp(last, &len);
        f[len - 1] ^= 0x80;
        spit(last, f, len);
        free(f);
        snprintf(name, sizeof(name), "the last byte, %s", how);
        expect_damage(work, last, crp[149].pos, UINT64_MAX, -1, name);
        /* A file cut inside its last record: a crash's unfinished write,
         * unless a seal says the segment was whole. */
        fresh_copy(base, work);
        if (crash)
            unseal(work, 0);
        f = slurp(last, &len);
        spit(last, f, len - 10);
        free(f);
        snprintf(name, sizeof(name), "a file cut inside its last record, %s", how);
        expect_damage(work, last, crp[149].pos, crash ? crp[149].pos : UINT64_MAX, -1,
                      name);
        /* A file cut at a record boundary inside a sealed segment. */
        if (!crash) {
            fresh_copy(base, work);
            f = slurp(last, &len);
            spit(last, f, crp[140].pos);
            free(f);
            expect_damage(work, last, crp[140].pos, UINT64_MAX, -1,
                          "a file cut at a record boundary, after a clean stop");
        }
        /* The middle segment removed. */
        fresh_copy(base, work);
        if (crash)
            unseal(work, 0);
        if (unlink(work_file(work, 75)) < 0)
            die("unlink");
        snprintf(name, sizeof(name), "a missing middle segment, %s", how);
        expect_damage(work, last, 0, OLDER, -1, name);
    }
    /* The last segment removed after a clean stop: its seal names it. */
    fresh_copy(base, work);
    if (unlink(last) < 0)
        die("unlink");
    {
        const char *d = pdir(work, 0);
        seen s = read_all(&d, 1, small_kr, NULL);
        tap_ok(s.err == -CV_ECORRUPT && strstr(s.errmsg, "missing"),
               "a missing last segment named by the seal is damage: %s", s.errmsg);
    }
    /* Kafka's committed offset is an anchor: a tail that looks torn but
     * reaches below it was acked, and is not cut. */
    fresh_copy(base, work);
    unseal(work, 0);
    f = slurp(last, &len);
    spit(last, f, len - 10);
    free(f);
    expect_damage(work, last, crp[149].pos, UINT64_MAX, 150,
                  "a torn-looking tail below the committed offset");
    fresh_copy(base, work);
    unseal(work, 0);
    f = slurp(last, &len);
    spit(last, f, len - 10);
    expect_damage(work, last, crp[149].pos, crp[149].pos, 149,
                  "a torn tail at the committed offset");
    /* A refused partition is looked at again by the next append: mend the
     * file and the same log writes on. */
    fresh_copy(base, work);
    unseal(work, 0);
    unsigned char *good = slurp(last, &len);
    spit(last, good, len - 10);
    {
        char err[1024];
        cv_applog *log = NULL;
        cv_applog_open(work, small_kr, 1u << 20, &log, err, sizeof(err));
        cv_applog_set_committed(log, TOPIC, 0, 150);
        int r1 = append_range(log, 0, 1000, 1001, 1, NULL, err, sizeof(err));
        spit(last, good, len);
        int r2 = append_range(log, 0, 1000, 1001, 1, NULL, err, sizeof(err));
        cv_applog_free(log);
        tap_ok(r1 == -CV_ECORRUPT && r2 == 0,
               "a refused partition writes again once mended (%d, %d: %s)", r1, r2,
               r2 ? err : "ok");
    }
    free(good);
    free(f);
}

/* The reported case: 25 records in 5 batches of 5, one segment, a crash
 * (no seal), one bit flipped in record 17 (batch 4): records 17-24 were
 * acked and must not be cut. */
static void test_damage_reported(void) {
    char base[600], work[600], err[1024];
    snprintf(base, sizeof(base), "%s/%s", root, "rep-base");
    snprintf(work, sizeof(work), "%s/%s", root, "rep");
    cv_applog *log = NULL;
    if (cv_applog_open(base, small_kr, 1u << 20, &log, err, sizeof(err)) ||
        append_range(log, 0, 0, 25, 5, NULL, err, sizeof(err)))
        die(err);
    cv_applog_free(log);
    ncrp = positions(pdir(base, 0), crp, 200);
    fresh_copy(base, work);
    unseal(work, 0);
    const char *file = work_file(work, 17);
    size_t len;
    unsigned char *f = slurp(file, &len);
    f[crp[17].pos + 50] ^= 0x04;
    spit(file, f, len);
    free(f);
    expect_damage(work, file, crp[17].pos, UINT64_MAX, -1,
                  "a bit flipped in record 17 of 25 (batch 4 of 5) after a crash");
}

static void test_dir_sync(cv_applog_sync how) {
    bool fs = how == CV_APPLOG_SYNC_SYNCFS;
    const char *m = fs ? "syncfs" : "fdatasync";
    char err[1024], logdir[600];
    snprintf(logdir, sizeof(logdir), "%s/dirsync-%s", root, m);
    cv_applog *log = NULL;
    cv_applog_open(logdir, small_kr, 64u << 20, &log, err, sizeof(err));
    cv_applog_set_sync(log, how, err, sizeof(err));
    if (stat(logdir, &fsync_dir) < 0)
        die("stat log.dir");
    cv_applog_syscalls sys = {.fsync = f_fsync};
    cv_applog_set_syscalls(log, &sys);
    static unsigned char v[VALUE_LEN];
    static cv_applog_entry ents[50];
    make_value(0, v, VALUE_LEN);
    for (int i = 0; i < 50; i++)
        ents[i] = (cv_applog_entry){TOPIC, 100 + i, 0, 0, v, VALUE_LEN, {0}};
    int r;
    if (!fs) {
        fault = F_SYNC_EIO;
        r = cv_applog_append(log, ents, 50, err, sizeof(err));
        fault = F_NONE;
        int64_t req = 0, dur = 0;
        cv_applog_positions(log, TOPIC, 100, &req, &dur);
        tap_ok(r < 0 && strstr(err, logdir) && strstr(err, "fsync") && req == -1 &&
                   dur == -1,
               "a failed fsync of log.dir fails the append, nothing durable: %s", err);
    }
    fsyncs = 0;
    r = cv_applog_append(log, ents, 50, err, sizeof(err));
    tap_ok(r == 0 && fsyncs == (fs ? 0 : 1),
           "%s: an append that opens 50 partitions fsyncs log.dir %s (%d fsyncs)", m,
           fs ? "not at all: its syncfs covers it" : "once", fsyncs);
    fsyncs = 0;
    for (int i = 0; i < 50; i++)
        ents[i].offset = 1;
    r = cv_applog_append(log, ents, 50, err, sizeof(err));
    tap_ok(fsyncs == 0, "%s: the next append to them fsyncs log.dir no more (%d)", m,
           fsyncs);
    cv_applog_free(log);
    const char *d = pdir(logdir, 149);
    seen s = read_all(&d, 1, small_kr, NULL);
    tap_ok(r == 0 && s.err == 0 && s.count == 2, "%s: and their records are there", m);
}

/* Write and sync faults under one sync method: a failed append leaves
 * nothing that could pass for durable, and the same append succeeds once
 * the fault clears. */
static void test_faults(cv_applog_sync how) {
    bool fs = how == CV_APPLOG_SYNC_SYNCFS;
    char err[1024];
    char logdir[600];
    snprintf(logdir, sizeof(logdir), "%s/faults-%s", root, fs ? "syncfs" : "fdatasync");
    cv_applog *log = NULL;
    cv_applog_open(logdir, small_kr, 64 << 10, &log, err, sizeof(err));
    int r = cv_applog_set_sync(log, how, err, sizeof(err));
    tap_ok(r == 0, "log.sync_method %s is available: %s", fs ? "syncfs" : "fdatasync",
           r == 0 ? "yes" : err);
    cv_applog_syscalls sys = {
        .open = f_open, .pwrite = f_pwrite, .fdatasync = f_fdatasync, .syncfs = f_syncfs};
    cv_applog_set_syscalls(log, &sys);
    append_range(log, 0, 0, 100, 100, NULL, err, sizeof(err));
    const char *d = pdir(logdir, 0);
    /* A write error names the file and byte; so does a failed fdatasync. A
     * failed syncfs is about the whole file system: it names the log. */
    const struct {
        int f;
        const char *name, *want, *where;
    } cases[] = {
        {F_WRITE_ENOSPC, "ENOSPC on write", "No space left", "byte"},
        {F_SHORT_THEN_ENOSPC, "a short write then ENOSPC", "No space left", "byte"},
        {F_SYNC_EIO, fs ? "EIO on syncfs" : "EIO on fdatasync", "Input/output error",
         fs ? "syncfs" : "byte"},
    };
    int64_t next = 100;
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        /* 300 records of 64 KiB segments: the batch also rolls segments. */
        fault = cases[c].f;
        r = append_range(log, 0, next, next + 300, 300, NULL, err, sizeof(err));
        tap_ok(r < 0 && strstr(err, fs && cases[c].f == F_SYNC_EIO ? logdir : ".cvlog") &&
                   strstr(err, cases[c].where) && strstr(err, cases[c].want),
               "%s: append fails naming where: %s", cases[c].name, err);
        int64_t req = 0, dur = 0;
        cv_applog_positions(log, TOPIC, 0, &req, &dur);
        tap_ok(dur == next - 1 && req == dur,
               "%s: nothing is reported durable (durable %" PRId64 ")", cases[c].name,
               dur);
        seen s = read_all(&d, 1, small_kr, NULL);
        tap_ok(s.err == 0 && s.count == next,
               "%s: the files hold only the durable records (%" PRId64 ")", cases[c].name,
               s.count);
        fault = F_NONE;
        r = append_range(log, 0, next, next + 300, 300, NULL, err, sizeof(err));
        next += 300;
        s = read_all(&d, 1, small_kr, NULL);
        tap_ok(r == 0 && s.err == 0 && s.count == next && !s.bad_value,
               "%s: the same append succeeds after the fault clears", cases[c].name);
    }
    /* A batch over two partitions where the syncs fail: neither keeps
     * anything of it. */
    cv_applog_entry two[2];
    unsigned char v2[2][VALUE_LEN];
    make_value(next, v2[0], VALUE_LEN);
    make_value(0, v2[1], VALUE_LEN);
    two[0] =
        (cv_applog_entry){TOPIC, 0, next, 1700000000000 + next, v2[0], VALUE_LEN, {0}};
    two[1] = (cv_applog_entry){TOPIC, 1, 0, 1700000000000, v2[1], VALUE_LEN, {0}};
    fault = F_SYNC_EIO;
    int r2 = cv_applog_append(log, two, 2, err, sizeof(err));
    fault = F_NONE;
    int64_t req0, dur0, req1, dur1;
    cv_applog_positions(log, TOPIC, 0, &req0, &dur0);
    cv_applog_positions(log, TOPIC, 1, &req1, &dur1);
    tap_ok(r2 < 0 && dur0 == next - 1 && req0 == dur0 && dur1 == -1 && req1 == -1,
           "a failed batch over two partitions leaves neither advanced");
    r2 = cv_applog_append(log, two, 2, err, sizeof(err));
    next++;
    const char *d1 = pdir(logdir, 1);
    seen s1 = read_all(&d1, 1, small_kr, NULL);
    tap_ok(r2 == 0 && s1.err == 0 && s1.count == 1,
           "... and the retried batch writes both");
    cv_applog_free(log);
    /* A new session over the same directory recovers cleanly. */
    cv_applog_open(logdir, small_kr, 64 << 10, &log, err, sizeof(err));
    torn_seen t = {0};
    cv_applog_set_torn_cb(log, on_torn, &t);
    r = append_range(log, 0, next, next + 1, 1, NULL, err, sizeof(err));
    tap_ok(r == 0 && t.calls == 0, "reopen after faults finds no torn tail");
    cv_applog_free(log);
}

/* ---- many instances --------------------------------------------------- */

static void test_merge(void) {
    char err[1024];
    char a[600];
    snprintf(a, sizeof(a), "%s/%s", root, "inst-a");
    char b[600];
    snprintf(b, sizeof(b), "%s/%s", root, "inst-b");
    cv_applog *la = NULL, *lb = NULL;
    cv_applog_open(a, small_kr, 1 << 20, &la, err, sizeof(err));
    cv_applog_open(b, small_kr, 1 << 20, &lb, err, sizeof(err));
    /* The partition was on instance a, moved to b, which re-received 40..59
     * (a crashed before committing them), then moved back to a. */
    append_range(la, 3, 0, 60, 20, NULL, err, sizeof(err));
    append_range(lb, 3, 40, 100, 20, NULL, err, sizeof(err));
    append_range(la, 3, 100, 120, 20, NULL, err, sizeof(err));
    cv_applog_free(la);
    cv_applog_free(lb);
    const char *dirs[] = {pdir(a, 3), pdir(b, 3)};
    seen s = read_all(dirs, 2, small_kr, NULL);
    tap_ok(s.err == 0 && s.count == 120 && s.out_of_order == 0 && !s.bad_value,
           "merging two instances' directories yields offsets 0..119 once "
           "(%" PRId64 ")",
           s.count);
    cv_applog_reader *rd;
    cv_applog_reader_open(dirs, 2, small_kr, &rd, err, sizeof(err));
    cv_applog_record rec;
    unsigned char wa[16] = {0}, wb[16] = {0};
    while (cv_applog_reader_next(rd, &rec, err, sizeof(err)) == 1) {
        if (rec.offset == 0)
            memcpy(wa, rec.writer_id, 16);
        if (rec.offset == 80)
            memcpy(wb, rec.writer_id, 16);
    }
    cv_applog_reader_free(rd);
    tap_ok(memcmp(wa, wb, 16) != 0,
           "records carry the writer id of the instance that wrote them");

    /* A conflicting value at an overlapping offset is damage. */
    char c[600];
    snprintf(c, sizeof(c), "%s/%s", root, "inst-c");
    cv_applog *lc = NULL;
    cv_applog_open(c, small_kr, 1 << 20, &lc, err, sizeof(err));
    unsigned char v[VALUE_LEN] = {0};
    cv_applog_entry e = {TOPIC, 3, 50, 1700000000050, v, VALUE_LEN, {0}};
    cv_applog_append(lc, &e, 1, err, sizeof(err));
    cv_applog_free(lc);
    const char *dirs3[] = {pdir(a, 3), pdir(c, 3)};
    s = read_all(dirs3, 2, small_kr, NULL);
    tap_ok(s.err == -CV_ECORRUPT && strstr(s.errmsg, "offset 50 differs"),
           "an offset whose bytes differ between instances is reported: %s", s.errmsg);
}

/* A writer process killed with SIGKILL in the middle of its appends: every
 * offset it was told is durable is there after reopening, re-delivery from
 * there adds no duplicates, and appends continue. */
static void test_kill9(void) {
    char err[1024], logdir[600];
    snprintf(logdir, sizeof(logdir), "%s/kill9", root);
    int pfd[2];
    if (pipe(pfd) < 0)
        die("pipe");
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(pfd[0]);
        cv_applog *log = NULL;
        if (cv_applog_open(logdir, small_kr, 256u << 10, &log, err, sizeof(err)) < 0)
            _exit(1);
        for (int64_t o = 0;; o += 100) {
            if (append_range(log, 0, o, o + 100, 100, NULL, err, sizeof(err)) < 0)
                _exit(1);
            int64_t durable = o + 99;
            if (write(pfd[1], &durable, sizeof(durable)) != sizeof(durable))
                _exit(1);
        }
    }
    close(pfd[1]);
    int64_t durable = -1, x;
    int reports = 0;
    while (reports < 30 && read(pfd[0], &x, sizeof(x)) == sizeof(x))
        durable = x, reports++;
    kill(pid, SIGKILL);
    while (read(pfd[0], &x, sizeof(x)) == sizeof(x))
        durable = x; /* reported after its fdatasync: durable too */
    close(pfd[0]);
    int status;
    waitpid(pid, &status, 0);
    tap_ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && durable >= 0,
           "a writer killed with SIGKILL after %" PRId64 " durable offsets", durable + 1);
    /* Kafka re-delivers from the committed offset: durable + 1. */
    cv_applog *log = NULL;
    cv_applog_open(logdir, small_kr, 256u << 10, &log, err, sizeof(err));
    torn_seen t = {0};
    cv_applog_set_torn_cb(log, on_torn, &t);
    int r = append_range(log, 0, durable + 1, durable + 301, 100, NULL, err, sizeof(err));
    cv_applog_free(log);
    const char *d = pdir(logdir, 0);
    seen s = read_all(&d, 1, small_kr, NULL);
    tap_ok(r == 0 && s.err == 0 && s.count == durable + 301 && s.out_of_order == 0 &&
               s.bad_value == 0,
           "after the restart the log holds offsets 0..%" PRId64 " exactly once (%" PRId64
           " records, torn tails cut: %d)",
           durable + 300, s.count, t.calls);
}

static int count_repair(void *opaque, const cv_applog_segment_info *si) {
    int *c = opaque;
    c[0]++;
    if (si->repair && !si->damaged && si->first_offset == 10 && si->last_offset == 19 &&
        si->records == 10)
        c[1]++;
    return 0;
}

/* verify --repair's writer: records the log lacks go to a repair directory
 * inside the partition, which the reader merges and the broker ignores. */
static void test_repair(void) {
    char err[1024], logdir[600];
    snprintf(logdir, sizeof(logdir), "%s/repair", root);
    cv_applog *log = NULL;
    cv_applog_open(logdir, small_kr, 1 << 20, &log, err, sizeof(err));
    append_range(log, 5, 0, 10, 10, NULL, err, sizeof(err));
    append_range(log, 5, 20, 30, 10, NULL, err, sizeof(err));
    cv_applog_free(log);
    cv_applog_open_repair(logdir, small_kr, 1 << 20, &log, err, sizeof(err));
    int r = append_range(log, 5, 10, 20, 5, NULL, err, sizeof(err));
    cv_applog_free(log);
    TAP_IS_INT(r, 0, "a repair writer appends offsets behind the tail");
    const char *d = pdir(logdir, 5);
    seen s = read_all(&d, 1, small_kr, NULL);
    tap_ok(s.err == 0 && s.count == 30 && s.out_of_order == 0 && !s.bad_value,
           "the reader merges the repair directory (%" PRId64 " records)", s.count);
    int c[2] = {0, 0};
    cv_applog_segments(d, count_repair, c, err, sizeof(err));
    tap_ok(c[0] == 2 && c[1] == 1, "the segment list shows the repair segment as one");
    cv_applog_open(logdir, small_kr, 1 << 20, &log, err, sizeof(err));
    r = append_range(log, 5, 25, 35, 10, NULL, err, sizeof(err));
    cv_applog_free(log);
    s = read_all(&d, 1, small_kr, NULL);
    tap_ok(r == 0 && s.err == 0 && s.count == 35,
           "the broker's writer continues the partition beside it");
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "cp '%s'/repair-*/00000000000000000010.cvlog '%s'/", d, d);
    if (system(cmd) != 0)
        die("cp");
    s = read_all(&d, 1, small_kr, NULL);
    tap_ok(s.err == -CV_ECORRUPT &&
               strstr(s.errmsg, "repair segment outside a repair directory"),
           "a repair segment among the broker's is damage: %s", s.errmsg);
}

/* A record below the tail that the partition lacks (rejected on an earlier
 * delivery, valid now) is written beside the chain, in the session's repair
 * directory, and read back with the partition. */
static void test_late(void) {
    char err[1024], logdir[600];
    snprintf(logdir, sizeof(logdir), "%s/late", root);
    static unsigned char dig[40][32];
    cv_applog *log = NULL;
    cv_applog_open(logdir, small_kr, 1 << 20, &log, err, sizeof(err));
    append_range(log, 6, 0, 10, 10, NULL, err, sizeof(err));
    append_range(log, 6, 12, 30, 10, NULL, err, sizeof(err));
    int r = append_range(log, 6, 10, 12, 10, dig, err, sizeof(err));
    TAP_IS_INT(r, 0, "late offsets 10 and 11 are accepted");
    if (r)
        printf("# %s\n", err);
    unsigned char again[2][32];
    memcpy(again, dig + 10, sizeof(again));
    r = append_range(log, 6, 10, 12, 10, dig, err, sizeof(err));
    tap_ok(r == 0 && memcmp(again, dig + 10, sizeof(again)) == 0,
           "re-appending them is a no-op with the same digests");
    r = append_range(log, 6, 30, 31, 10, NULL, err, sizeof(err));
    cv_applog_free(log);
    const char *d = pdir(logdir, 6);
    seen s = read_all(&d, 1, small_kr, NULL);
    tap_ok(r == 0 && s.err == 0 && s.count == 31 && s.out_of_order == 0 && !s.bad_value,
           "the reader returns 0..30 with the late records in place (%" PRId64 ")",
           s.count);
    int c[2] = {0, 0};
    cv_applog_segments(d, count_repair, c, err, sizeof(err));
    TAP_IS_INT(c[0], 2, "one partition segment and one repair segment");
}

/* ---- generations: identity, not position ------------------------------ */

typedef struct gen_seen {
    int calls;
    int64_t offset, held_last;
    char dir[600];
} gen_seen;

static void on_generation(void *opaque, const char *topic, int32_t partition,
                          int64_t offset, int64_t held_last, const char *dir) {
    (void)topic;
    (void)partition;
    gen_seen *g = opaque;
    g->calls++;
    g->offset = offset;
    g->held_last = held_last;
    snprintf(g->dir, sizeof(g->dir), "%s", dir);
}

/* Appends offsets [from, to) whose values are those of offset + salt. */
static int append_salted(cv_applog *log, int32_t partition, int64_t from, int64_t to,
                         int64_t salt, unsigned char (*dig)[32], char *err,
                         size_t errlen) {
    static unsigned char vals[64][VALUE_LEN];
    static cv_applog_entry ents[64];
    size_t n = 0;
    for (int64_t o = from; o < to && n < 64; o++, n++) {
        make_value(o + salt, vals[n], VALUE_LEN);
        ents[n] = (cv_applog_entry){.topic = TOPIC,
                                    .partition = partition,
                                    .offset = o,
                                    .timestamp_ms = 1700000000000 + o,
                                    .value = vals[n],
                                    .value_len = VALUE_LEN};
    }
    int r = cv_applog_append(log, ents, n, err, errlen);
    for (size_t i = 0; r == 0 && dig && i < n; i++)
        memcpy(dig[ents[i].offset - from], ents[i].digest, 32);
    return r;
}

/* Reads a partition: records of generation 0 must hold the values of their
 * offset, those of a later generation the values of offset + salt. */
typedef struct gen_read {
    int err;
    char errmsg[512];
    int64_t gen0, later, bad, generations;
    int64_t last_gen;
} gen_read;

static gen_read read_gens(const char *dir, int64_t salt) {
    gen_read g = {.last_gen = -1};
    cv_applog_reader *rd = NULL;
    g.err = cv_applog_reader_open(&dir, 1, small_kr, &rd, g.errmsg, sizeof(g.errmsg));
    if (g.err < 0)
        return g;
    cv_applog_record rec;
    unsigned char want[VALUE_LEN];
    int r;
    while ((r = cv_applog_reader_next(rd, &rec, g.errmsg, sizeof(g.errmsg))) == 1) {
        make_value(rec.offset + (rec.generation ? salt : 0), want, VALUE_LEN);
        if (rec.value_len != VALUE_LEN || memcmp(rec.value, want, VALUE_LEN) != 0)
            g.bad++;
        if (rec.generation)
            g.later++;
        else
            g.gen0++;
        if (rec.generation != g.last_gen) {
            g.generations += rec.generation > g.last_gen;
            g.last_gen = rec.generation > g.last_gen ? rec.generation : g.last_gen;
        }
    }
    g.err = r;
    cv_applog_reader_free(rd);
    return g;
}

static int count_gen_dirs(const char *dir) {
    return count_named(dir, "^gen-");
}

/* Kafka's offsets start over (a topic re-created, a mock cluster
 * restarted): a held offset arriving with other bytes is a new message. It
 * goes to a new generation of the partition; nothing old is lost, and an
 * exact re-delivery is still "already held". */
static void test_generations(void) {
    char err[1024], logdir[600];
    snprintf(logdir, sizeof(logdir), "%s/gen", root);
    const int64_t salt = 100000;
    static unsigned char old[10][32], dig[10][32], dig2[10][32];
    gen_seen gs = {0};
    cv_applog *log = NULL;
    cv_applog_open(logdir, small_kr, 1 << 20, &log, err, sizeof(err));
    cv_applog_set_generation_cb(log, on_generation, &gs);
    int r = append_salted(log, 7, 0, 10, 0, old, err, sizeof(err));
    TAP_IS_INT(r, 0, "generation 0 holds offsets 0..9");
    r = append_salted(log, 7, 2, 6, 0, dig, err, sizeof(err));
    tap_ok(r == 0 && memcmp(dig, old + 2, 4 * 32) == 0 && gs.calls == 0,
           "an exact re-delivery is already held and gets the held digests");
    const char *d = pdir(logdir, 7);
    TAP_IS_INT(count_gen_dirs(d), 0, "... and starts no generation");
    r = append_salted(log, 7, 0, 6, salt, dig, err, sizeof(err));
    if (r)
        printf("# %s\n", err);
    tap_ok(r == 0 && gs.calls == 1 && gs.offset == 0 && gs.held_last == 9 &&
               strstr(gs.dir, "/gen-") != NULL,
           "held offsets with other bytes start a new generation, reported once "
           "(offset %" PRId64 ", held up to %" PRId64 ", %s)",
           gs.offset, gs.held_last, gs.dir);
    int differ = 0;
    for (int i = 0; i < 6; i++)
        differ += memcmp(dig[i], old[i], 32) != 0;
    TAP_IS_INT(differ, 6, "the new records get digests of their own");
    TAP_IS_INT(count_gen_dirs(d), 1, "one generation directory");
    gen_read g = read_gens(d, salt);
    tap_ok(g.err == 0 && g.gen0 == 10 && g.later == 6 && g.bad == 0,
           "the reader returns all 10 old records and the 6 new ones (%" PRId64
           " + %" PRId64 ", %" PRId64 " bad): %s",
           g.gen0, g.later, g.bad, g.err ? g.errmsg : "ok");
    r = append_salted(log, 7, 3, 6, salt, dig2, err, sizeof(err));
    tap_ok(r == 0 && memcmp(dig2, dig + 3, 3 * 32) == 0 && gs.calls == 1,
           "re-delivering the new records is a no-op within the new generation");
    cv_applog_free(log);

    /* A new session continues the newest generation. */
    memset(&gs, 0, sizeof(gs));
    cv_applog_open(logdir, small_kr, 1 << 20, &log, err, sizeof(err));
    cv_applog_set_generation_cb(log, on_generation, &gs);
    r = append_salted(log, 7, 4, 6, salt, dig2, err, sizeof(err));
    tap_ok(r == 0 && memcmp(dig2, dig + 4, 2 * 32) == 0 && gs.calls == 0,
           "after a restart the newest generation is the one held against");
    r = append_salted(log, 7, 6, 8, salt, NULL, err, sizeof(err));
    TAP_IS_INT(r, 0, "new offsets continue the new generation");
    r = append_salted(log, 7, 0, 3, 2 * salt, NULL, err, sizeof(err));
    tap_ok(r == 0 && gs.calls == 1, "a second regression starts a third generation");
    cv_applog_free(log);
    TAP_IS_INT(count_gen_dirs(d), 2, "two generation directories");
    cv_applog_reader *rd = NULL;
    int64_t n = 0, gens[3] = {-1, -1, -1};
    int ng = 0;
    cv_applog_reader_open(&d, 1, small_kr, &rd, err, sizeof(err));
    cv_applog_record rec;
    while ((r = cv_applog_reader_next(rd, &rec, err, sizeof(err))) == 1) {
        n++;
        bool known = false;
        for (int i = 0; i < ng; i++)
            known |= gens[i] == rec.generation;
        if (!known && ng < 3)
            gens[ng++] = rec.generation;
    }
    cv_applog_reader_free(rd);
    tap_ok(r == 0 && n == 10 + 8 + 3 && ng == 3,
           "every record of the three generations is read (%" PRId64 " records, %d "
           "generations)",
           n, ng);
}

/* Records that `verify --repair` rebuilt into a repair directory are held
 * by identity too: the same bytes again are held, other bytes at one of
 * their offsets start a new generation. The generation left behind is
 * sealed and the log checks clean. */
static void test_generation_repair_held(void) {
    char err[1024], logdir[600];
    snprintf(logdir, sizeof(logdir), "%s/genrep", root);
    static unsigned char rebuilt[5][32], dig[5][32];
    gen_seen gs = {0};
    cv_applog *log = NULL;
    cv_applog_open(logdir, small_kr, 1 << 20, &log, err, sizeof(err));
    append_salted(log, 9, 0, 10, 0, NULL, err, sizeof(err));
    append_salted(log, 9, 20, 30, 0, NULL, err, sizeof(err));
    cv_applog_free(log);
    cv_applog_open_repair(logdir, small_kr, 1 << 20, &log, err, sizeof(err));
    int r = append_salted(log, 9, 10, 15, 0, rebuilt, err, sizeof(err));
    cv_applog_free(log);
    TAP_IS_INT(r, 0, "a repair rebuilt offsets 10..14");
    /* As after a crash: no seal; the generation left must get one. */
    const char *d = pdir(logdir, 9);
    unlink(path2(d, "sealed"));
    cv_applog_open(logdir, small_kr, 1 << 20, &log, err, sizeof(err));
    cv_applog_set_generation_cb(log, on_generation, &gs);
    r = append_salted(log, 9, 10, 15, 0, dig, err, sizeof(err));
    tap_ok(r == 0 && memcmp(dig, rebuilt, sizeof(dig)) == 0 && gs.calls == 0,
           "their exact re-delivery is held with the rebuilt digests");
    r = append_salted(log, 9, 12, 14, 7777, NULL, err, sizeof(err));
    if (r)
        printf("# %s\n", err);
    tap_ok(r == 0 && gs.calls == 1 && gs.offset == 12,
           "another message at a rebuilt offset starts a new generation (at %" PRId64 ")",
           gs.offset);
    struct stat st;
    tap_ok(stat(path2(d, "sealed"), &st) == 0,
           "the generation left behind is sealed at once, as no session writes it again");
    cv_applog_free(log);
    int64_t n = 0, later = 0;
    cv_applog_reader *rd = NULL;
    cv_applog_reader_open(&d, 1, small_kr, &rd, err, sizeof(err));
    cv_applog_record rec;
    while ((r = cv_applog_reader_next(rd, &rec, err, sizeof(err))) == 1) {
        n++;
        later += rec.generation != 0;
    }
    cv_applog_reader_free(rd);
    tap_ok(r == 0 && n == 25 + 2 && later == 2,
           "the reader returns 25 old records and the 2 new ones (%" PRId64 ", %" PRId64
           " new): %s",
           n, later, r ? err : "ok");
}

/* Group commit over 8 partitions: their encoding and fdatasyncs overlap. */
static void test_throughput_partitions(void) {
    char err[1024], logdir[600];
    snprintf(logdir, sizeof(logdir), "%s/tp", root);
    cv_applog *log = NULL;
    cv_applog_open(logdir, small_kr, 64u << 20, &log, err, sizeof(err));
    static unsigned char v[VALUE_LEN];
    static cv_applog_entry ents[1000];
    make_value(0, v, VALUE_LEN);
    const int nparts = 8, total = 100000;
    int r = 0;
    double t0 = now_s();
    for (int b = 0; b < total / 1000 && r == 0; b++) {
        for (int i = 0; i < 1000; i++)
            ents[i] = (cv_applog_entry){
                TOPIC, i % nparts, (int64_t)b * 125 + i / nparts, 0, v, VALUE_LEN, {0}};
        r = cv_applog_append(log, ents, 1000, err, sizeof(err));
    }
    double t1 = now_s();
    cv_applog_free(log);
    TAP_IS_INT(r, 0, "append 100,000 records over 8 partitions");
    printf("# append throughput: %.0f records/s (%d B values, 8 partitions, "
           "1000 records and 8 fdatasyncs per append)\n",
           total / (t1 - t0), VALUE_LEN);
    int64_t sum = 0;
    for (int p = 0; p < nparts; p++) {
        const char *d = pdir(logdir, p);
        seen s = read_all(&d, 1, small_kr, NULL);
        sum += s.err == 0 ? s.count : 0;
    }
    TAP_IS_INT(sum, total, "the reader returns every record of the 8 partitions");
}

/* Three topics with the same 100 partition numbers: each record reaches
 * its own (topic, partition) as the writer's partition table grows, a
 * re-delivery of a whole batch stays a no-op, and each directory holds
 * its partition's records only. */
static void test_many_partitions(void) {
    static const char *topics[3] = {"chat.a", "chat.b", "chat.ab"};
    enum { NPART = 100, NREC = 3 * NPART };
    char err[1024], logdir[600];
    snprintf(logdir, sizeof(logdir), "%s/many", root);
    cv_applog *log = NULL;
    cv_applog_open(logdir, small_kr, 64u << 20, &log, err, sizeof(err));
    static unsigned char v[VALUE_LEN];
    static cv_applog_entry ents[2 * NREC];
    make_value(0, v, VALUE_LEN);
    int r = 0;
    for (int round = 0; round < 2 && r == 0; round++) {
        /* round 1: offset 0 again (re-delivery), then offset 1 */
        size_t n = 0;
        for (int o = 0; o <= round; o++)
            for (int i = 0; i < NREC; i++)
                ents[n++] =
                    (cv_applog_entry){topics[i % 3], i / 3, o, 0, v, VALUE_LEN, {0}};
        r = cv_applog_append(log, ents, n, err, sizeof(err));
    }
    TAP_IS_INT(r, 0, "append to 300 partitions of 3 topics, then again with one more");
    int at_one = 0;
    for (int i = 0; i < NREC; i++) {
        int64_t req = -1, dur = -1;
        at_one += cv_applog_positions(log, topics[i % 3], i / 3, &req, &dur) == 0 &&
                  req == 1 && dur == 1;
    }
    TAP_IS_INT(at_one, NREC, "every partition's last durable offset is 1");
    cv_applog_free(log);
    int two = 0;
    for (int i = 0; i < NREC; i++) {
        char d[600];
        cv_applog_partition_dir(logdir, topics[i % 3], i / 3, d, sizeof(d));
        const char *dirs[1] = {d};
        seen s = read_all(dirs, 1, small_kr, NULL);
        two += s.err == 0 && s.count == 2 && s.last == 1;
    }
    TAP_IS_INT(two, NREC, "every partition's directory holds offsets 0 and 1 only");
}

int main(void) {
    snprintf(root, sizeof(root), "/tmp/cv-test-applog-XXXXXX");
    if (!mkdtemp(root))
        die("mkdtemp");
    char err[512];
    uint32_t id;
    char kf[600];
    snprintf(kf, sizeof(kf), "%s/%s", root, "small.key");
    if (cv_keyring_generate(kf, &id, err, sizeof(err)) ||
        cv_keyring_load(kf, &small_kr, err, sizeof(err)))
        die(err);
    /* CV_TEST_APPLOG_ZSTD=LEVEL: every writer compresses (the applog_zstd
     * test runs the whole file so, over version-2 segments). */
    const char *zl = getenv("CV_TEST_APPLOG_ZSTD");
    if (zl && cv_applog_set_default_compression(atoi(zl), err, sizeof(err)) < 0)
        die(err);
    compressible = zl != NULL;
    tap_ok(cv_applog_free(NULL) == NULL && cv_applog_reader_free(NULL) == NULL,
           "free functions accept NULL");
    test_round_trip();
    test_crash_recovery();
    test_corruption();
    test_damage_places();
    test_damage_reported();
    test_faults(CV_APPLOG_SYNC_FDATASYNC);
    test_faults(CV_APPLOG_SYNC_SYNCFS);
    test_merge();
    test_kill9();
    test_repair();
    test_late();
    test_generations();
    test_generation_repair_held();
    test_throughput_partitions();
    test_many_partitions();
    test_dir_sync(CV_APPLOG_SYNC_FDATASYNC);
    test_dir_sync(CV_APPLOG_SYNC_SYNCFS);
    cv_keyring_free(small_kr);
    sh("rm -rf '%s'%s", root, "");
    return tap_done();
}
