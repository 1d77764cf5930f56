/*
 * applog — the encrypted, tamper-evident append-only log. Its format (byte
 * layouts of segments and frames, cipher and chain), the durability and
 * recovery rules, seals, repair segments and generations are specified in
 * FORMAT.md beside this file; the section names in capitals in the comments
 * below (LAYOUT, SEALS, GENERATIONS, ...) are its headings.
 */
#include "applog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "util.h"

#define HDR_MAGIC "CVAPLOG\n"
#define HDR_MAGIC_REPAIR "CVAPLOGR"
#define REPAIR_PREFIX "repair-"
#define GEN_PREFIX "gen-"
#define VAL_ID 16 /* BLAKE2b-128 of a value: identity in the lookup cache */
#define HDR_VERSION 1
#define HDR_FIXED 120
#define KEYCHECK_CONTEXT "chatvault log key check"
#define HDR_MAX (HDR_FIXED + 255 + 64 + DIGEST + 4)
#define FRAME_MAGIC "CVR\x01"
#define FRAME_HDR 32
#define TAG_BYTES crypto_aead_xchacha20poly1305_ietf_ABYTES
#define PT_FIXED 22
#define FRAME_MIN (FRAME_HDR + PT_FIXED + 1 + TAG_BYTES)
#define FRAME_MAX (64u << 20)
#define AD_BYTES 96
#define DIGEST 32
#define SEG_SUFFIX ".cvlog"
#define TMP_SUFFIX ".tmp"
#define NAME_DIGITS 20
#define INDEX_KEEP 16384 /* recent (offset, digest) pairs kept per partition */
#define BUF_LIMIT (1u << 30)
#define WRITER_NAME_MAX 64
#define WORKERS_MAX 64              /* threads that write partitions in parallel */
#define SPARE_MAX (WORKERS_MAX + 2) /* segment buffers kept between jobs */
#define SPARE_BYTES_MAX (16u << 20) /* larger ones go back to the system */
#define WORKER_STACK (256u << 10)
#define WORKER_NICE 5
#define SEAL_FILE "sealed"
#define SEAL_MAGIC "cvseal1"
#define SEAL_MAX 256
#define ZERO_RUN 32 /* zero bytes that only a block never written leaves */
#define TORN_SUFFIX ".torn-"

/* ---- small helpers ---------------------------------------------------- */

static void errf(char *errbuf, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void errf(char *errbuf, size_t errlen, const char *fmt, ...) {
    if (!errbuf || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
}

static uint16_t rd16(const unsigned char *p) {
    return (uint16_t)((p[0] << 8) | p[1]);
}
static uint32_t rd32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static uint64_t rd64(const unsigned char *p) {
    return ((uint64_t)rd32(p) << 32) | rd32(p + 4);
}

/* ---- CRC32C (Castagnoli) ---------------------------------------------- */

static uint32_t crc_table[8][256];

static void crc_init_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] =
                (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

static uint32_t crc32c_sw(const unsigned char *p, size_t n) {
    uint32_t c = 0xffffffffu;
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
            crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
            crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
            crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(const unsigned char *p,
                                                            size_t n) {
    uint64_t c = 0xffffffffu;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32 ^ 0xffffffffu;
}
#define HAVE_CRC_HW 1
#endif

static uint32_t (*crc32c_fn)(const unsigned char *, size_t);

static void crc_setup(void) {
    if (crc32c_fn)
        return;
    crc_init_table();
#ifdef HAVE_CRC_HW
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) {
        crc32c_fn = crc32c_hw;
        return;
    }
#endif
    crc32c_fn = crc32c_sw;
}

static uint32_t crc32c(const void *p, size_t n) {
    return crc32c_fn((const unsigned char *)p, n);
}

static int lib_init(char *errbuf, size_t errlen) {
    if (sodium_init() < 0) {
        errf(errbuf, errlen, "libsodium failed to initialise");
        return -EIO;
    }
    crc_setup();
    return 0;
}

/* ---- segment header --------------------------------------------------- */

typedef struct seghdr {
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

/* Encodes h into out (HDR_MAX bytes); returns the length. Fills h->hash. */
static size_t hdr_encode(seghdr *h, unsigned char *out) {
    size_t nlen = strlen(h->writer_name);
    size_t extra = h->repair ? DIGEST : 0;
    size_t hl = HDR_FIXED + h->topic_len + nlen + extra + 4;
    memcpy(out, h->repair ? HDR_MAGIC_REPAIR : HDR_MAGIC, 8);
    cv_be16(out + 8, HDR_VERSION);
    cv_be16(out + 10, (uint16_t)hl);
    cv_be32(out + 12, h->key_id);
    memcpy(out + 16, h->seg_id, 16);
    memcpy(out + 32, h->writer_id, 16);
    cv_be64(out + 48, (uint64_t)h->first_offset);
    cv_be64(out + 56, (uint64_t)h->created_us);
    memcpy(out + 64, h->prev_chain, DIGEST);
    cv_be32(out + 96, (uint32_t)h->partition);
    cv_be16(out + 100, (uint16_t)h->topic_len);
    cv_be16(out + 102, (uint16_t)nlen);
    memcpy(out + 104, h->key_check, 16);
    memcpy(out + HDR_FIXED, h->topic, h->topic_len);
    memcpy(out + HDR_FIXED + h->topic_len, h->writer_name, nlen);
    if (extra)
        memcpy(out + HDR_FIXED + h->topic_len + nlen, h->bridge, DIGEST);
    cv_be32(out + hl - 4, crc32c(out, hl - 4));
    h->hlen = (uint16_t)hl;
    crypto_generichash(h->hash, DIGEST, out, hl, NULL, 0);
    return hl;
}

/* Decodes a header; returns NULL or what is wrong. */
static const char *hdr_decode(const unsigned char *p, size_t size, seghdr *h) {
    if (size < HDR_FIXED + 4)
        return "file is shorter than a segment header";
    if (memcmp(p, HDR_MAGIC, 8) != 0 && memcmp(p, HDR_MAGIC_REPAIR, 8) != 0)
        return "not a chatvault log segment (bad magic)";
    if (rd16(p + 8) != HDR_VERSION)
        return "unknown segment format version";
    size_t hl = rd16(p + 10);
    size_t tl = rd16(p + 100), nl = rd16(p + 102);
    bool repair = memcmp(p, HDR_MAGIC_REPAIR, 8) == 0;
    size_t extra = repair ? DIGEST : 0;
    if (hl != HDR_FIXED + tl + nl + extra + 4 || tl == 0 || tl > 255 ||
        nl > WRITER_NAME_MAX || hl > size)
        return "bad segment header length";
    if (crc32c(p, hl - 4) != rd32(p + hl - 4))
        return "segment header CRC mismatch";
    h->hlen = (uint16_t)hl;
    h->repair = memcmp(p, HDR_MAGIC_REPAIR, 8) == 0;
    h->key_id = rd32(p + 12);
    memcpy(h->seg_id, p + 16, 16);
    memcpy(h->writer_id, p + 32, 16);
    h->first_offset = (int64_t)rd64(p + 48);
    h->created_us = (int64_t)rd64(p + 56);
    memcpy(h->prev_chain, p + 64, DIGEST);
    h->partition = (int32_t)rd32(p + 96);
    memcpy(h->key_check, p + 104, 16);
    h->topic_len = tl;
    memcpy(h->topic, p + HDR_FIXED, tl);
    h->topic[tl] = '\0';
    memcpy(h->writer_name, p + HDR_FIXED + tl, nl);
    h->writer_name[nl] = '\0';
    memset(h->bridge, 0, DIGEST);
    if (extra)
        memcpy(h->bridge, p + HDR_FIXED + tl + nl, DIGEST);
    crypto_generichash(h->hash, DIGEST, p, hl, NULL, 0);
    return NULL;
}

static void build_ad(unsigned char *ad, const unsigned char *hh,
                     const unsigned char *frame, uint64_t pos,
                     const unsigned char *prev) {
    memcpy(ad, hh, DIGEST);
    memcpy(ad + 32, frame + 8, 24);
    cv_be64(ad + 56, pos);
    memcpy(ad + 64, prev, DIGEST);
}

/* XChaCha20-Poly1305 with nonce N = segment id (16) || index (8) is, by
 * its definition, ChaCha20-Poly1305-IETF under the subkey
 * HChaCha20(key, segment id) with nonce 0 (4) || index (8). The subkey is
 * the same for a whole segment, so it is derived once per segment instead
 * of once per record. */
static void segment_subkey(unsigned char *subkey, const unsigned char *seg_id,
                           const unsigned char *key) {
    crypto_core_hchacha20(subkey, seg_id, key, NULL);
}

static void build_nonce(unsigned char *nonce, uint64_t index) {
    memset(nonce, 0, 4);
    cv_be64(nonce + 4, index);
}

static void key_check(unsigned char *out, const unsigned char *seg_id,
                      const unsigned char *key) {
    crypto_generichash_state st;
    crypto_generichash_init(&st, key, CV_KEY_BYTES, 16);
    crypto_generichash_update(&st, (const unsigned char *)KEYCHECK_CONTEXT,
                              sizeof(KEYCHECK_CONTEXT) - 1);
    crypto_generichash_update(&st, seg_id, 16);
    crypto_generichash_final(&st, out, 16);
}

static void chain_next(unsigned char *out, const unsigned char *prev,
                       const unsigned char *frame, size_t len) {
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, DIGEST);
    crypto_generichash_update(&st, prev, DIGEST);
    crypto_generichash_update(&st, frame, len);
    crypto_generichash_final(&st, out, DIGEST);
}

/* Checks magic, length and CRC of the frame at pos; returns NULL or why. */
static const char *frame_check(const unsigned char *map, size_t size, size_t pos,
                               uint32_t *ret_len) {
    if (size - pos < FRAME_HDR)
        return "short frame (file ends inside a frame header)";
    const unsigned char *f = map + pos;
    if (memcmp(f, FRAME_MAGIC, 4) != 0)
        return "bad frame magic";
    uint32_t len = rd32(f + 8);
    if (len < FRAME_MIN || len > FRAME_MAX)
        return "bad frame length";
    if (len > size - pos)
        return "short frame (file ends inside the frame)";
    if (crc32c(f + 8, len - 8) != rd32(f + 4))
        return "frame CRC mismatch";
    *ret_len = len;
    return NULL;
}

/* ---- seals ------------------------------------------------------------ */

/* What a partition directory's seal file says of its last segment at a
 * clean close (see SEALS in FORMAT.md). */
typedef struct seal {
    char name[NAME_DIGITS + 8]; /* segment file name */
    uint64_t bytes, records;
    int64_t last_offset;
    unsigned char chain[DIGEST];
} seal;

/* The seal file's one line: SEAL_MAGIC name bytes records last chain crc. */
static size_t seal_format(const seal *sl, char *buf, size_t len) {
    char hx[2 * DIGEST + 1];
    sodium_bin2hex(hx, sizeof(hx), sl->chain, DIGEST);
    int n = snprintf(buf, len, SEAL_MAGIC " %s %" PRIu64 " %" PRIu64 " %" PRId64 " %s",
                     sl->name, sl->bytes, sl->records, sl->last_offset, hx);
    uint32_t c = crc32c(buf, (size_t)n);
    n += snprintf(buf + n, len - (size_t)n, " %08" PRIx32 "\n", c);
    return (size_t)n;
}

static bool is_seg_name(const char *n, const char *suffix);

/* Parses a seal line; returns NULL or what is wrong with it. */
static const char *seal_parse(const char *text, size_t len, seal *sl) {
    if (len == 0 || len >= SEAL_MAX || text[len - 1] != '\n' || memchr(text, 0, len))
        return "not a seal line";
    char line[SEAL_MAX];
    memcpy(line, text, len - 1);
    line[len - 1] = '\0';
    char *sp = strrchr(line, ' ');
    if (!sp)
        return "not a seal line";
    unsigned crc;
    if (sscanf(sp + 1, "%8x", &crc) != 1 || strlen(sp + 1) != 8 ||
        crc32c(line, (size_t)(sp - line)) != crc)
        return "seal check (CRC32C) mismatch";
    *sp = '\0';
    char name[64], hx[2 * DIGEST + 2];
    uint64_t bytes, records;
    int64_t last;
    int used = 0;
    if (sscanf(line, SEAL_MAGIC " %63s %" SCNu64 " %" SCNu64 " %" SCNd64 " %65s%n", name,
               &bytes, &records, &last, hx, &used) != 5 ||
        (size_t)used != strlen(line) || !is_seg_name(name, SEG_SUFFIX) ||
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
static int seal_read(const char *dir, seal *sl, char *errbuf, size_t errlen) {
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/" SEAL_FILE, dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        int e = errno;
        errf(errbuf, errlen, "log seal %s: %s", path, strerror(e));
        return -e;
    }
    char buf[SEAL_MAX];
    ssize_t n = read(fd, buf, sizeof(buf));
    int e = errno;
    close(fd);
    if (n < 0) {
        errf(errbuf, errlen, "log seal %s: %s", path, strerror(e));
        return -e;
    }
    const char *why = seal_parse(buf, (size_t)n, sl);
    if (why) {
        errf(errbuf, errlen,
             "log seal %s: %s (damaged; the partition's last segment cannot be "
             "checked against it)",
             path, why);
        return -CV_ECORRUPT;
    }
    return 1;
}

/* ---- reading one segment ---------------------------------------------- */

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
} seg;

static void seg_close(seg *s) {
    if (s->map && s->size)
        munmap(s->map, s->size);
    free(s->path);
    sodium_memzero(s->subkey, sizeof(s->subkey));
    memset(s, 0, sizeof(*s));
}

/* Maps the file and decodes its header. On error fills errbuf. */
static int seg_open(seg *s, const char *path, char *errbuf, size_t errlen) {
    memset(s, 0, sizeof(*s));
    s->last_offset = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        errf(errbuf, errlen, "log segment %s: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        errf(errbuf, errlen, "log segment %s: %s", path, strerror(e));
        return -e;
    }
    s->size = (size_t)st.st_size;
    if (s->size) {
        void *m = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            errf(errbuf, errlen, "log segment %s: mmap: %s", path, strerror(e));
            return -e;
        }
        s->map = m;
    }
    close(fd);
    s->path = strdup(path);
    if (!s->path) {
        seg_close(s);
        return -ENOMEM;
    }
    const char *why = hdr_decode(s->map, s->size, &s->h);
    if (why) {
        errf(errbuf, errlen, "log segment %s at byte 0: %s", path, why);
        seg_close(s);
        return -CV_ECORRUPT;
    }
    s->pos = s->h.hlen;
    memcpy(s->chain, s->h.prev_chain, DIGEST);
    return 0;
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

/* After a failure at `at` in the last segment of a directory, which no seal
 * covers: is it a torn tail (see DURABILITY AND RECOVERY)? Only the last
 * batch can be unfinished: each append is durable before the next one
 * writes. So the failure must look unwritten, lie past batch 1 (made
 * atomic by the rename), and no frame after it may pass its CRC with a
 * batch number that shows the failure to be inside an earlier, durable
 * batch: one above (last good batch + 1), or frames of both the last good
 * batch and the one after it (the failure then lies inside the former). */
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
        if (!frame_check(s->map, s->size, at, &len)) {
            *q = at;
            return true;
        }
        at++;
    }
    return false;
}

static bool seg_tail_is_torn(const seg *s, size_t at) {
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
static int64_t offsets_after(const seg *s, size_t at) {
    int64_t hi = -1;
    for (size_t q = at; next_good_frame(s, &q);)
        if ((int64_t)rd64(s->map + q + 24) > hi)
            hi = (int64_t)rd64(s->map + q + 24);
    return hi;
}

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

enum { NEXT_DAMAGE = 1, NEXT_AUTH, NEXT_NOKEY };

/* Reads the next record. key NULL: no decryption. plain receives the
 * plaintext. Returns 1, 0 at the end, or -CV_ECORRUPT / -EBADMSG with
 * errbuf set and *ret_at the failing position. */
static int seg_next(seg *s, const unsigned char *key, cv_buf *plain, rawrec *out,
                    uint64_t *ret_at, char *errbuf, size_t errlen) {
    if (s->pos == s->size)
        return 0;
    *ret_at = s->pos;
    uint32_t len;
    const char *why = frame_check(s->map, s->size, s->pos, &len);
    if (why) {
        errf(errbuf, errlen, "log segment %s at byte %zu: %s", s->path, s->pos, why);
        return -CV_ECORRUPT;
    }
    const unsigned char *f = s->map + s->pos;
    uint32_t batch = rd32(f + 12);
    uint64_t index = rd64(f + 16);
    int64_t offset = (int64_t)rd64(f + 24);
    if (index != s->index) {
        errf(errbuf, errlen,
             "log segment %s at byte %zu: record index %" PRIu64 " where %" PRIu64
             " was expected (record dropped or moved)",
             s->path, s->pos, index, s->index);
        return -CV_ECORRUPT;
    }
    if (batch < s->batch || batch == 0 || (s->batch == 0 && batch != 1)) {
        errf(errbuf, errlen,
             "log segment %s at byte %zu: batch number %" PRIu32 " out of order", s->path,
             s->pos, batch);
        return -CV_ECORRUPT;
    }
    if (s->index == 0 ? offset != s->h.first_offset : offset <= s->last_offset) {
        errf(errbuf, errlen,
             "log segment %s at byte %zu: offset %" PRId64
             " does not follow offset %" PRId64,
             s->path, s->pos, offset, s->last_offset);
        return -CV_ECORRUPT;
    }
    out->value = NULL;
    out->value_len = 0;
    out->timestamp_ms = -1;
    out->partition = s->h.partition;
    if (key) {
        unsigned char ad[AD_BYTES], nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES];
        build_ad(ad, s->h.hash, f, s->pos, s->chain);
        build_nonce(nonce, index);
        size_t plen = len - FRAME_HDR - TAG_BYTES;
        plain->len = 0;
        int r = cv_buf_reserve(plain, plen);
        if (r < 0)
            return r;
        if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(
                plain->data, NULL, f + FRAME_HDR, plen, f + len - TAG_BYTES, ad,
                sizeof(ad), nonce, key) != 0) {
            errf(errbuf, errlen,
                 "log segment %s at byte %zu: record fails authentication "
                 "(changed, moved or reordered, or wrong key)",
                 s->path, s->pos);
            return -EBADMSG;
        }
        plain->len = plen;
        const unsigned char *p = plain->data;
        size_t tl = rd16(p + 20);
        if (PT_FIXED + tl > plen || (int64_t)rd64(p) != offset ||
            (int32_t)rd32(p + 16) != s->h.partition || tl != s->h.topic_len ||
            memcmp(p + PT_FIXED, s->h.topic, tl) != 0) {
            errf(errbuf, errlen,
                 "log segment %s at byte %zu: record coordinates do not match "
                 "its frame and segment header",
                 s->path, s->pos);
            return -CV_ECORRUPT;
        }
        out->timestamp_ms = (int64_t)rd64(p + 8);
        out->value = p + PT_FIXED + tl;
        out->value_len = plen - PT_FIXED - tl;
    }
    chain_next(s->chain, s->chain, f, len);
    memcpy(out->digest, s->chain, DIGEST);
    out->offset = offset;
    out->pos = s->pos;
    out->frame = f;
    out->frame_len = len;
    s->last_pos = s->pos;
    s->last_offset = offset;
    s->batch = batch;
    s->index++;
    s->pos += len;
    return 1;
}

/* ---- listing a partition directory ------------------------------------ */

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_seg_name(const char *n, const char *suffix) {
    size_t l = strlen(n), sl = strlen(suffix);
    if (l != NAME_DIGITS + sl || strcmp(n + NAME_DIGITS, suffix) != 0)
        return false;
    for (int i = 0; i < NAME_DIGITS; i++)
        if (n[i] < '0' || n[i] > '9')
            return false;
    return true;
}

static void free_names(char **names, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* Sorted names of the entries of dir that keep(name, arg) accepts. A
 * missing directory holds none; so does a path that is not a directory when
 * notdir_ok. */
static int list_sorted(const char *dir, bool notdir_ok,
                       bool (*keep)(const char *name, const char *arg), const char *arg,
                       char ***ret, size_t *ret_n, char *errbuf, size_t errlen) {
    *ret = NULL;
    *ret_n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT || (notdir_ok && errno == ENOTDIR))
            return 0;
        int e = errno;
        errf(errbuf, errlen, "log directory %s: %s", dir, strerror(e));
        return -e;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!keep(de->d_name, arg))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nn = realloc(names, cap * sizeof(*nn));
            if (!nn)
                goto nomem;
            names = nn;
        }
        if (!(names[n] = strdup(de->d_name)))
            goto nomem;
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof(*names), name_cmp);
    *ret = names;
    *ret_n = n;
    return 0;
nomem:
    closedir(d);
    free_names(names, n);
    return -ENOMEM;
}

/* Sorted names of the files in dir ending in suffix (segment-named). */
static int list_names(const char *dir, const char *suffix, char ***ret, size_t *ret_n,
                      char *errbuf, size_t errlen) {
    return list_sorted(dir, false, is_seg_name, suffix, ret, ret_n, errbuf, errlen);
}

static char *path_join(const char *dir, const char *name) {
    size_t l = strlen(dir) + strlen(name) + 2;
    char *p = malloc(l);
    if (p)
        snprintf(p, l, "%s/%s", dir, name);
    return p;
}

/* "repair-" and 20 digits: no partition directory is named like that (a
 * partition number has at most 10 digits). */
static bool is_repair_name(const char *n) {
    size_t pl = sizeof(REPAIR_PREFIX) - 1;
    if (strlen(n) != pl + NAME_DIGITS || strncmp(n, REPAIR_PREFIX, pl) != 0)
        return false;
    return strspn(n + pl, "0123456789") == NAME_DIGITS;
}

static bool is_repair_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    return is_repair_name(slash ? slash + 1 : path);
}

static bool repair_name_keep(const char *n, const char *unused) {
    (void)unused;
    return is_repair_name(n);
}

/* Sorted names of the repair directories inside a partition directory. */
static int list_repair_dirs(const char *dir, char ***ret, size_t *ret_n, char *errbuf,
                            size_t errlen) {
    return list_sorted(dir, true, repair_name_keep, NULL, ret, ret_n, errbuf, errlen);
}

/* "gen-" and 20 digits (see GENERATIONS); sorted by name is oldest first. */
static bool is_gen_name(const char *n, const char *unused) {
    (void)unused;
    size_t pl = sizeof(GEN_PREFIX) - 1;
    return strlen(n) == pl + NAME_DIGITS && strncmp(n, GEN_PREFIX, pl) == 0 &&
           strspn(n + pl, "0123456789") == NAME_DIGITS;
}

/* Sorted names of the generation directories inside a partition directory. */
static int list_gen_dirs(const char *dir, char ***ret, size_t *ret_n, char *errbuf,
                         size_t errlen) {
    return list_sorted(dir, true, is_gen_name, NULL, ret, ret_n, errbuf, errlen);
}

/* ---- one directory of a partition ------------------------------------- */

struct cv_applog_reader;

typedef struct pdir {
    struct cv_applog_reader *owner; /* the reader it belongs to, if any */
    char *dir;
    char **names;
    size_t nseg, iseg;
    seg cur;
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
    int seal_err; /* reported by the first pdir_next */
    char *seal_msg;
    /* where the error pdir_next returned starts, when one file holds it */
    char *dmg_file;
    uint64_t dmg_pos;
    /* where the directory's last segment read so far ended */
    uint64_t end_records, end_bytes;
    /* lookahead for merging */
    bool has;
    rawrec rec;
} pdir;

static void pdir_release(pdir *d) {
    if (d->open)
        seg_close(&d->cur);
    free_names(d->names, d->nseg);
    free(d->dir);
    free(d->torn_file);
    free(d->seal_msg);
    free(d->dmg_file);
    cv_buf_release(&d->plain);
    memset(d, 0, sizeof(*d));
}

/* Opens a directory; with start_offset >= 0 begins at the segment that would
 * hold it (its header's link to earlier segments is then taken on trust). */
static int pdir_init(pdir *d, const char *dir, const cv_keyring *keys,
                     int64_t start_offset, char *errbuf, size_t errlen) {
    memset(d, 0, sizeof(*d));
    d->last_offset = -1;
    d->skip_below = INT64_MIN;
    d->keys = keys;
    d->repair = is_repair_dir(dir);
    cv_buf_init(&d->plain, FRAME_MAX);
    d->dir = strdup(dir);
    if (!d->dir)
        return -ENOMEM;
    int r = list_names(dir, SEG_SUFFIX, &d->names, &d->nseg, errbuf, errlen);
    if (r < 0)
        return r;
    if (!d->repair) {
        char msg[768];
        int x = seal_read(dir, &d->sl, msg, sizeof(msg));
        bool found = false;
        for (size_t i = 0; x == 1 && i < d->nseg && !found; i++)
            found = strcmp(d->names[i], d->sl.name) == 0;
        if (x == 1 && !found) {
            snprintf(msg, sizeof(msg),
                     "log segment %s/%s at byte 0: missing, but the partition's seal "
                     "names it as its last segment at a clean stop (%" PRIu64
                     " records up to offset %" PRId64 " deleted or moved)",
                     dir, d->sl.name, d->sl.records, d->sl.last_offset);
            x = -CV_ECORRUPT;
        }
        if (x == -ENOMEM)
            return x;
        if (x < 0) {
            d->seal_err = x;
            if (!(d->seal_msg = strdup(msg)))
                return -ENOMEM;
        }
        d->has_seal = x == 1;
    }
    if (start_offset >= 0)
        while (d->iseg + 1 < d->nseg &&
               strtoll(d->names[d->iseg + 1], NULL, 10) <= start_offset)
            d->iseg++;
    return 0;
}

static bool reader_bridged(struct cv_applog_reader *r, const pdir *d, const seghdr *h,
                           const char *path);

static int pdir_open_next_seg(pdir *d, char *errbuf, size_t errlen) {
    char *path = path_join(d->dir, d->names[d->iseg]);
    if (!path)
        return -ENOMEM;
    int r = seg_open(&d->cur, path, errbuf, errlen);
    if (r < 0) {
        free(path);
        return r;
    }
    seghdr *h = &d->cur.h;
    char want[NAME_DIGITS + 8];
    snprintf(want, sizeof(want), "%020" PRId64 SEG_SUFFIX, h->first_offset);
    const char *why = NULL;
    if (strcmp(want, d->names[d->iseg]) != 0)
        why = "file name does not match the first offset in its header";
    else if (h->repair != d->repair)
        why = h->repair ? "repair segment outside a repair directory"
                        : "broker segment inside a repair directory";
    else if (d->any && (strcmp(h->topic, d->topic) != 0 || h->partition != d->partition))
        why = "header names another topic-partition than the segments "
              "before it";
    else if (d->any && h->first_offset <= d->last_offset)
        why = "first offset does not follow the previous segment";
    else if (d->any && sodium_memcmp(h->prev_chain, d->chain, DIGEST) != 0 &&
             !(d->owner && !d->repair && reader_bridged(d->owner, d, h, path)))
        why = "header does not chain to the previous segment's last record "
              "(segment dropped, replaced or reordered)";
    if (why) {
        errf(errbuf, errlen, "log segment %s at byte 0: %s", path, why);
        free(path);
        seg_close(&d->cur);
        return -CV_ECORRUPT;
    }
    free(path);
    d->key = NULL;
    if (d->keys) {
        d->key = cv_keyring_get(d->keys, h->key_id);
        if (!d->key) {
            errf(errbuf, errlen,
                 "log segment %s at byte 12: key id %" PRIu32 " is not in the key file",
                 d->cur.path, h->key_id);
            seg_close(&d->cur);
            return -ENOKEY;
        }
        unsigned char kc[16];
        key_check(kc, h->seg_id, d->key);
        if (sodium_memcmp(kc, h->key_check, 16) != 0) {
            errf(errbuf, errlen,
                 "log segment %s at byte 104: key id %" PRIu32
                 " of the key file is not the key this segment was written "
                 "with (wrong key file?)",
                 d->cur.path, h->key_id);
            seg_close(&d->cur);
            return -EKEYREJECTED;
        }
        segment_subkey(d->cur.subkey, h->seg_id, d->key);
    }
    if (!d->any) {
        memcpy(d->topic, h->topic, h->topic_len + 1);
        d->partition = h->partition;
    }
    d->cur_sealed = d->has_seal && strcmp(d->names[d->iseg], d->sl.name) == 0;
    d->open = true;
    d->any = true;
    d->iseg++;
    return 0;
}

/* A segment that ended (at its end, or at a torn tail) where its seal says
 * otherwise: NULL or what differs. */
static const char *seal_mismatch(const pdir *d) {
    const seg *s = &d->cur;
    if (s->pos != d->sl.bytes)
        return s->pos < d->sl.bytes ? "is shorter than its seal says (truncated)"
                                    : "is longer than its seal says (appended to)";
    if (s->index != d->sl.records || s->last_offset != d->sl.last_offset ||
        sodium_memcmp(s->chain, d->sl.chain, DIGEST) != 0)
        return "does not end with the records its seal names (rewritten)";
    return NULL;
}

/* Adds to a damage error how far it reaches: which Kafka offsets of the
 * partition are behind it. */
static void damage_reach(const pdir *d, uint64_t at, char *errbuf, size_t errlen) {
    if (!errbuf || !errlen)
        return;
    size_t l = strlen(errbuf);
    if (l + 1 >= errlen)
        return;
    int64_t hi = d->iseg < d->nseg ? strtoll(d->names[d->iseg], NULL, 10) - 1
                                   : offsets_after(&d->cur, at);
    if (d->cur.last_offset >= 0)
        snprintf(errbuf + l, errlen - l,
                 "; the records after offset %" PRId64 " in this segment are unreadable",
                 d->cur.last_offset);
    else
        snprintf(errbuf + l, errlen - l, "; no record of this segment is readable");
    l = strlen(errbuf);
    if (hi > d->cur.last_offset && l + 1 < errlen)
        snprintf(errbuf + l, errlen - l, " (Kafka offsets up to %" PRId64 ")", hi);
}

static int pdir_next_raw(pdir *d, char *errbuf, size_t errlen);

/* Next record of the directory into d->rec. 1, 0 at the end, or error
 * (with d->dmg_file and d->dmg_pos set for damage in one file). */
static int pdir_next(pdir *d, char *errbuf, size_t errlen) {
    int r = pdir_next_raw(d, errbuf, errlen);
    if ((r == -CV_ECORRUPT || r == -EBADMSG) && !d->dmg_file) {
        if (d->seal_err) {
            char p[PATH_MAX];
            snprintf(p, sizeof(p), "%s/" SEAL_FILE, d->dir);
            d->dmg_file = strdup(p);
            d->dmg_pos = 0;
        } else if (d->open) {
            d->dmg_file = strdup(d->cur.path);
        } else if (d->iseg < d->nseg) {
            /* The segment's header or its link failed: it never opened. */
            d->dmg_file = path_join(d->dir, d->names[d->iseg]);
            d->dmg_pos = 0;
        }
    }
    return r;
}

static int pdir_next_raw(pdir *d, char *errbuf, size_t errlen) {
    if (d->seal_err) {
        errf(errbuf, errlen, "%s", d->seal_msg);
        return d->seal_err;
    }
    for (;;) {
        if (!d->open) {
            if (d->iseg >= d->nseg)
                return 0;
            int r = pdir_open_next_seg(d, errbuf, errlen);
            if (r < 0)
                return r;
        }
        uint64_t at = 0;
        const unsigned char *key = NULL;
        /* Decrypt what is returned; below skip_below frame check + chain. */
        if (d->key && d->cur.pos < d->cur.size && d->cur.size - d->cur.pos >= FRAME_HDR &&
            (int64_t)rd64(d->cur.map + d->cur.pos + 24) >= d->skip_below)
            key = d->cur.subkey;
        int r = seg_next(&d->cur, key, &d->plain, &d->rec, &at, errbuf, errlen);
        if (r == 1) {
            memcpy(d->chain, d->cur.chain, DIGEST);
            d->last_offset = d->rec.offset;
            if (d->rec.offset < d->skip_below)
                continue;
            return 1;
        }
        if (r < 0) {
            /* Only the last segment of a directory, with no seal to say it
             * was closed whole, can end in an unfinished write. */
            bool last = d->iseg >= d->nseg;
            if (r == -ENOMEM)
                return r;
            if (!last || d->cur_sealed || !seg_tail_is_torn(&d->cur, at)) {
                d->dmg_pos = at;
                if (d->cur_sealed && errbuf && errlen) {
                    size_t l = strlen(errbuf);
                    if (l + 1 < errlen)
                        snprintf(errbuf + l, errlen - l,
                                 " (the segment was sealed at a clean stop: not a "
                                 "crash's torn write)");
                }
                damage_reach(d, at, errbuf, errlen);
                return r;
            }
            d->torn = true;
            d->torn_pos = at;
            d->torn_file = strdup(d->cur.path);
            if (!d->torn_file)
                return -ENOMEM;
        } else if (d->cur_sealed) {
            const char *why = seal_mismatch(d);
            if (why) {
                d->dmg_pos = d->cur.pos;
                errf(errbuf, errlen,
                     "log segment %s at byte %zu: %s: the seal written at a clean stop "
                     "says %" PRIu64 " bytes, %" PRIu64 " records up to offset %" PRId64,
                     d->cur.path, d->cur.pos, why, d->sl.bytes, d->sl.records,
                     d->sl.last_offset);
                return -CV_ECORRUPT;
            }
        }
        d->end_records = d->cur.index;
        d->end_bytes = d->cur.pos;
        memcpy(d->chain, d->cur.chain, DIGEST);
        seg_close(&d->cur);
        d->open = false;
        if (r < 0)
            return 0;
    }
}

/* ---- the reader: merging directories ---------------------------------- */

typedef struct bridge {
    unsigned char from[DIGEST], to[DIGEST];
} bridge;

struct cv_applog_reader {
    pdir *dirs;
    size_t n;
    bridge *bridges; /* named by the first segments of repair directories */
    size_t nbridges;
    cv_applog_break_fn *on_break;
    void *break_opaque;
    bool started;
    int err;
    char errmsg[512];
    size_t last; /* dir whose record was returned last */
    bool has_last;
    const pdir *dmg; /* the directory whose damage ended the reading */
};

static int collect_bridge(cv_applog_reader *r, const pdir *d, char *errbuf,
                          size_t errlen);

/* Adds a reader directory for `dir` (of generation `gen`) and one for each
 * repair directory inside it. */
static int reader_add_tree(cv_applog_reader *rd, size_t *cap, const char *dir,
                           int64_t gen, const cv_keyring *keys, char *errbuf,
                           size_t errlen) {
    char **rep = NULL;
    size_t nrep = 0;
    int r = list_repair_dirs(dir, &rep, &nrep, errbuf, errlen);
    if (r < 0)
        return r;
    if (rd->n + 1 + nrep > *cap) {
        size_t nc = (rd->n + 1 + nrep) * 2;
        pdir *nd = realloc(rd->dirs, nc * sizeof(*nd));
        if (!nd) {
            free_names(rep, nrep);
            return -ENOMEM;
        }
        memset(nd + rd->n, 0, (nc - rd->n) * sizeof(*nd));
        rd->dirs = nd;
        *cap = nc;
    }
    pdir *base = &rd->dirs[rd->n++];
    r = pdir_init(base, dir, keys, -1, errbuf, errlen);
    base->owner = rd;
    base->gen = gen;
    for (size_t k = 0; k < nrep && r == 0; k++) {
        char *path = path_join(dir, rep[k]);
        pdir *d = &rd->dirs[rd->n++];
        r = path ? pdir_init(d, path, keys, -1, errbuf, errlen) : -ENOMEM;
        d->owner = rd;
        d->gen = gen;
        free(path);
        if (r == 0)
            r = collect_bridge(rd, d, errbuf, errlen);
    }
    free_names(rep, nrep);
    return r;
}

int cv_applog_reader_open(const char *const *dirs, size_t ndirs, const cv_keyring *keys,
                          cv_applog_reader **ret, char *errbuf, size_t errlen) {
    int r = lib_init(errbuf, errlen);
    if (r < 0)
        return r;
    cv_applog_reader *rd = calloc(1, sizeof(*rd));
    if (!rd)
        return -ENOMEM;
    size_t cap = 0;
    /* Every directory is read with its generations and the repair
     * directories inside each. */
    for (size_t i = 0; i < ndirs && r == 0; i++) {
        r = reader_add_tree(rd, &cap, dirs[i], 0, keys, errbuf, errlen);
        char **gens = NULL;
        size_t ngen = 0;
        if (r == 0)
            r = list_gen_dirs(dirs[i], &gens, &ngen, errbuf, errlen);
        for (size_t k = 0; k < ngen && r == 0; k++) {
            char *path = path_join(dirs[i], gens[k]);
            r = path ? reader_add_tree(rd, &cap, path, strtoll(gens[k] + 4, NULL, 10),
                                       keys, errbuf, errlen)
                     : -ENOMEM;
            free(path);
        }
        free_names(gens, ngen);
    }
    if (r < 0) {
        cv_applog_reader_free(rd);
        return r;
    }
    *ret = rd;
    return 0;
}

static bool reader_bridged(struct cv_applog_reader *r, const pdir *d, const seghdr *h,
                           const char *path) {
    for (size_t i = 0; i < r->nbridges; i++)
        if (sodium_memcmp(r->bridges[i].from, d->chain, DIGEST) == 0 &&
            sodium_memcmp(r->bridges[i].to, h->prev_chain, DIGEST) == 0)
            return true;
    if (!r->on_break)
        return false;
    cv_applog_break b = {
        .file = path,
        .after_offset = d->last_offset,
        .next_offset = h->first_offset,
    };
    memcpy(b.after_chain, d->chain, DIGEST);
    memcpy(b.next_prev_chain, h->prev_chain, DIGEST);
    r->on_break(r->break_opaque, &b);
    return true;
}

void cv_applog_reader_on_break(cv_applog_reader *r, cv_applog_break_fn *fn,
                               void *opaque) {
    r->on_break = fn;
    r->break_opaque = opaque;
}

/* Adds the bridge named by the first segment of repair directory d. */
static int collect_bridge(cv_applog_reader *r, const pdir *d, char *errbuf,
                          size_t errlen) {
    static const unsigned char zero[DIGEST];
    if (!d->nseg)
        return 0;
    char *path = path_join(d->dir, d->names[0]);
    if (!path)
        return -ENOMEM;
    seg s;
    int x = seg_open(&s, path, errbuf, errlen);
    free(path);
    if (x < 0)
        return x;
    if (s.h.repair && s.size > s.h.hlen && sodium_memcmp(s.h.bridge, zero, DIGEST) != 0) {
        bridge *nb = realloc(r->bridges, (r->nbridges + 1) * sizeof(*nb));
        if (!nb) {
            seg_close(&s);
            return -ENOMEM;
        }
        r->bridges = nb;
        memcpy(nb[r->nbridges].from, s.h.prev_chain, DIGEST);
        memcpy(nb[r->nbridges].to, s.h.bridge, DIGEST);
        r->nbridges++;
    }
    seg_close(&s);
    return 0;
}

void cv_applog_reader_skip_to(cv_applog_reader *r, int64_t offset) {
    for (size_t i = 0; i < r->n; i++) {
        pdir *d = &r->dirs[i];
        d->skip_below = offset;
        if (d->open || d->any)
            continue; /* already reading: only decryption is skipped */
        /* Segments wholly below `offset` are not read at all. */
        while (d->iseg + 1 < d->nseg &&
               strtoll(d->names[d->iseg + 1], NULL, 10) <= offset)
            d->iseg++;
    }
}

static void fill_record(const pdir *d, cv_applog_record *rec) {
    const seg *s = &d->cur;
    rec->topic = d->topic;
    rec->partition = d->partition;
    rec->offset = d->rec.offset;
    rec->timestamp_ms = d->rec.timestamp_ms;
    rec->value = d->rec.value;
    rec->value_len = d->rec.value_len;
    memcpy(rec->digest, d->rec.digest, DIGEST);
    rec->file = s->path;
    rec->pos = d->rec.pos;
    rec->key_id = s->h.key_id;
    memcpy(rec->writer_id, s->h.writer_id, 16);
    rec->writer_name = s->h.writer_name;
    rec->generation = d->gen;
}

int cv_applog_reader_next(cv_applog_reader *r, cv_applog_record *rec, char *errbuf,
                          size_t errlen) {
    if (r->err) {
        errf(errbuf, errlen, "%s", r->errmsg);
        return r->err;
    }
    /* The record returned last is consumed now (its memory stayed valid
     * until this call). */
    for (size_t i = 0; i < r->n; i++) {
        pdir *d = &r->dirs[i];
        if (d->has)
            continue;
        int x = pdir_next(d, r->errmsg, sizeof(r->errmsg));
        if (x < 0) {
            r->err = x;
            r->dmg = d;
            errf(errbuf, errlen, "%s", r->errmsg);
            return x;
        }
        d->has = x == 1;
    }
    /* The lowest offset; at one offset, the oldest generation. */
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < r->n; i++)
        if (r->dirs[i].has &&
            (best == SIZE_MAX || r->dirs[i].rec.offset < r->dirs[best].rec.offset ||
             (r->dirs[i].rec.offset == r->dirs[best].rec.offset &&
              r->dirs[i].gen < r->dirs[best].gen)))
            best = i;
    if (best == SIZE_MAX)
        return 0;
    pdir *b = &r->dirs[best];
    for (size_t i = 0; i < r->n; i++) {
        pdir *d = &r->dirs[i];
        if (i == best || !d->has || d->rec.offset != b->rec.offset || d->gen != b->gen)
            continue; /* another generation's record is another record */
        if (strcmp(d->topic, b->topic) != 0 || d->partition != b->partition) {
            snprintf(r->errmsg, sizeof(r->errmsg),
                     "log directories %s and %s hold different "
                     "topic-partitions",
                     b->dir, d->dir);
            r->err = -CV_ECORRUPT;
        } else if (b->rec.value && d->rec.value &&
                   (b->rec.value_len != d->rec.value_len ||
                    memcmp(b->rec.value, d->rec.value, b->rec.value_len) != 0)) {
            snprintf(r->errmsg, sizeof(r->errmsg),
                     "offset %" PRId64 " differs between log segment %s at "
                     "byte %" PRIu64 " and log segment %s at byte %" PRIu64,
                     b->rec.offset, b->cur.path, b->rec.pos, d->cur.path, d->rec.pos);
            r->err = -CV_ECORRUPT;
        }
        if (r->err) {
            errf(errbuf, errlen, "%s", r->errmsg);
            return r->err;
        }
        d->has = false; /* the same record: returned once */
    }
    fill_record(b, rec);
    b->has = false;
    return 1;
}

size_t cv_applog_reader_torn(const cv_applog_reader *r, size_t i, const char **ret_file,
                             uint64_t *ret_pos) {
    size_t n = 0;
    for (size_t k = 0; k < r->n; k++) {
        if (!r->dirs[k].torn)
            continue;
        if (n == i) {
            if (ret_file)
                *ret_file = r->dirs[k].torn_file;
            if (ret_pos)
                *ret_pos = r->dirs[k].torn_pos;
        }
        n++;
    }
    return n;
}

bool cv_applog_reader_damage(const cv_applog_reader *r, const char **ret_file,
                             uint64_t *ret_pos) {
    if (!r->dmg || !r->dmg->dmg_file)
        return false;
    *ret_file = r->dmg->dmg_file;
    *ret_pos = r->dmg->dmg_pos;
    return true;
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
    int r = lib_init(errbuf, errlen);
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
    if (!is_seal && !is_seg_name(name, SEG_SUFFIX)) {
        errf(errbuf, errlen, "log file %s is neither a segment nor a seal", file);
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
    if (!is_seal) {
        seg s;
        if (seg_open(&s, file, NULL, 0) == 0) {
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
                    errf(errbuf, errlen, "log segment %s: cannot write %s: %s", file, tmp,
                         strerror(errno));
                }
                if (fd >= 0)
                    close(fd);
                prefix = r == 0;
            }
            seg_close(&s);
        }
        if (r < 0) {
            unlink(tmp);
            return r;
        }
    }
    if ((r = move_aside(file, ".damaged-", saved_to, savedlen)) < 0) {
        errf(errbuf, errlen, "log file %s: cannot move it aside: %s", file, strerror(-r));
        unlink(tmp);
        return r;
    }
    if (prefix && rename(tmp, file) < 0) {
        r = -errno;
        errf(errbuf, errlen,
             "log segment %s: cannot put its intact records back from %s: %s", file, tmp,
             strerror(-r));
        return r;
    }
    /* A seal naming the segment no longer describes it. */
    if (!is_seal) {
        seal sl;
        char sp[PATH_MAX + 16];
        snprintf(sp, sizeof(sp), "%s/" SEAL_FILE, dir);
        if (seal_read(dir, &sl, NULL, 0) == 1 && strcmp(sl.name, name) == 0 &&
            (r = move_aside(sp, ".damaged-", NULL, 0)) < 0) {
            errf(errbuf, errlen, "log seal %s: cannot move it aside: %s", sp,
                 strerror(-r));
            return r;
        }
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0) {
        r = -errno;
        errf(errbuf, errlen, "log directory %s: fsync: %s", dir, strerror(-r));
    }
    if (dfd >= 0)
        close(dfd);
    return r;
}

cv_applog_reader *cv_applog_reader_free(cv_applog_reader *r) {
    if (!r)
        return NULL;
    for (size_t i = 0; i < r->n; i++)
        pdir_release(&r->dirs[i]);
    free(r->dirs);
    free(r->bridges);
    free(r);
    return NULL;
}

/* ---- listing ---------------------------------------------------------- */

int cv_applog_partition_dir(const char *dir, const char *topic, int32_t partition,
                            char *buf, size_t len) {
    int n = snprintf(buf, len, "%s/%s-%" PRId32, dir, topic, partition);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int str_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int cv_applog_partitions(const char *dir, cv_applog_partition_fn *fn, void *opaque,
                         char *errbuf, size_t errlen) {
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        errf(errbuf, errlen, "log directory %s: %s", dir, strerror(e));
        return -e;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    int r = 0;
    while ((de = readdir(d))) {
        const char *dash = strrchr(de->d_name, '-');
        if (!dash || dash == de->d_name || !dash[1] ||
            strspn(dash + 1, "0123456789") != strlen(dash + 1))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nn = realloc(names, cap * sizeof(*nn));
            if (!nn) {
                r = -ENOMEM;
                goto out;
            }
            names = nn;
        }
        if (!(names[n] = strdup(de->d_name))) {
            r = -ENOMEM;
            goto out;
        }
        n++;
    }
    if (n)
        qsort(names, n, sizeof(*names), str_cmp);
    for (size_t i = 0; i < n && r == 0; i++) {
        char *path = path_join(dir, names[i]);
        if (!path) {
            r = -ENOMEM;
            break;
        }
        char *dash = strrchr(names[i], '-');
        *dash = '\0';
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            r = fn(opaque, path, names[i], (int32_t)strtol(dash + 1, NULL, 10));
        free(path);
    }
out:
    closedir(d);
    free_names(names, n);
    return r;
}

/* The segments of one directory (a partition's or a repair one). */
static int segments_of(const char *dir, bool repair, cv_applog_segment_fn *fn,
                       void *opaque, char *errbuf, size_t errlen) {
    char **names;
    size_t n;
    int r = list_names(dir, SEG_SUFFIX, &names, &n, errbuf, errlen);
    if (r < 0)
        return r;
    cv_buf none;
    cv_buf_init(&none, 0);
    for (size_t i = 0; i < n && r == 0; i++) {
        char *path = path_join(dir, names[i]);
        if (!path) {
            r = -ENOMEM;
            break;
        }
        seg s;
        r = seg_open(&s, path, errbuf, errlen);
        free(path);
        if (r < 0)
            break;
        cv_applog_segment_info si = {
            .file = s.path,
            .topic = s.h.topic,
            .partition = s.h.partition,
            .bytes = s.size,
            .key_id = s.h.key_id,
            .first_offset = s.h.first_offset,
            .last_offset = -1,
            .created_us = s.h.created_us,
            .sealed = i + 1 < n,
            .writer_name = s.h.writer_name,
            .repair = repair,
        };
        memcpy(si.writer_id, s.h.writer_id, 16);
        rawrec rr;
        uint64_t at = 0;
        int x;
        char ignored[8];
        while ((x = seg_next(&s, NULL, &none, &rr, &at, ignored, sizeof(ignored))) == 1)
            ;
        if (x < 0) {
            si.damaged = true;
            si.damaged_at = at;
            si.torn = i + 1 == n && seg_tail_is_torn(&s, at);
        }
        if (s.h.repair != repair) {
            si.damaged = true;
            si.torn = false;
            si.damaged_at = 0;
        }
        si.records = s.index;
        si.last_offset = s.last_offset;
        r = fn(opaque, &si);
        seg_close(&s);
    }
    free_names(names, n);
    return r;
}

int cv_applog_segments(const char *partition_dir, cv_applog_segment_fn *fn, void *opaque,
                       char *errbuf, size_t errlen) {
    int r = lib_init(errbuf, errlen);
    if (r < 0)
        return r;
    r = segments_of(partition_dir, false, fn, opaque, errbuf, errlen);
    char **reps = NULL;
    size_t nrep = 0;
    if (r == 0)
        r = list_repair_dirs(partition_dir, &reps, &nrep, errbuf, errlen);
    for (size_t i = 0; i < nrep && r == 0; i++) {
        char *path = path_join(partition_dir, reps[i]);
        r = path ? segments_of(path, true, fn, opaque, errbuf, errlen) : -ENOMEM;
        free(path);
    }
    free_names(reps, nrep);
    /* Then each generation's, as a partition directory of its own. */
    char **gens = NULL;
    size_t ngen = 0;
    if (r == 0 &&
        !is_gen_name(strrchr(partition_dir, '/') ? strrchr(partition_dir, '/') + 1
                                                 : partition_dir,
                     NULL))
        r = list_gen_dirs(partition_dir, &gens, &ngen, errbuf, errlen);
    for (size_t i = 0; i < ngen && r == 0; i++) {
        char *path = path_join(partition_dir, gens[i]);
        r = path ? cv_applog_segments(path, fn, opaque, errbuf, errlen) : -ENOMEM;
        free(path);
    }
    free_names(gens, ngen);
    return r;
}

/* ---- the writer ------------------------------------------------------- */

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

typedef struct part {
    char *topic;
    int32_t partition;
    char *dir;
    int dirfd;
    int state; /* 0 not opened, 1 ready, <0 refused with err */
    char *err;
    bool recheck; /* refused for what recovery found: opened again next time */
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
    /* recent (offset, digest), ascending */
    int64_t *ioff;
    unsigned char (*idig)[DIGEST];
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

struct cv_applog {
    char *dir;
    const cv_keyring *keys;
    uint32_t key_id;
    const unsigned char *key;
    uint64_t segment_bytes;
    unsigned char writer_id[16];
    char writer_name[WRITER_NAME_MAX + 1];
    cv_applog_syscalls sys;
    cv_applog_sync sync;
    int fsfd;           /* the log directory, for syncfs; -1 until needed */
    bool dir_unsynced;  /* partitions were opened since log.dir last synced */
    size_t workers_max; /* pool limit for the sync method (see pool_grow) */
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
    /* Segment buffers between jobs (see buf_take). */
    pthread_mutex_t spare_mu;
    cv_buf spare[SPARE_MAX];
    size_t nspare;
};

static wseg *wseg_free(wseg *w) {
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

static void part_free(part *p) {
    if (p->dcur != p->cur)
        wseg_free(p->cur);
    wseg_free(p->dcur);
    if (p->dirfd >= 0)
        close(p->dirfd);
    free(p->topic);
    free(p->dir);
    free(p->err);
    free(p->ioff);
    free(p->idig);
    free(p->coff);
    free(p->cdig);
    free(p->cval);
    free(p->hoff);
    free(p->hdig);
    free(p->hval);
    free(p->touched);
    free(p->jidx);
    if (p->late)
        part_free(p->late);
    if (p->ngen)
        part_free(p->ngen);
    free(p);
}

static void pool_stop(cv_applog *log);

/* Writes the seal of a broker partition this session holds in a known
 * state (see SEALS): <dir>/sealed.tmp, made durable, renamed into place,
 * the directory fsynced. A failure only leaves that partition unsealed,
 * as after a crash. */
static void seal_part(cv_applog *log, part *p) {
    if (p->repair || p->state != 1 || p->dirfd < 0 || p->dlast < 0)
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
static void seal_all(cv_applog *log) {
    for (part *p = log->parts; p; p = p->next)
        seal_part(log, p);
}

cv_applog *cv_applog_free(cv_applog *log) {
    if (!log)
        return NULL;
    pool_stop(log);
    seal_all(log);
    while (log->parts) {
        part *p = log->parts;
        log->parts = p->next;
        part_free(p);
    }
    free(log->buckets);
    if (log->fsfd >= 0)
        close(log->fsfd);
    while (log->nspare)
        cv_buf_release(&log->spare[--log->nspare]);
    pthread_mutex_destroy(&log->spare_mu);
    free(log->dir);
    free(log);
    return NULL;
}

void cv_applog_set_torn_cb(cv_applog *log, cv_applog_torn_fn *fn, void *opaque) {
    log->torn_fn = fn;
    log->torn_opaque = opaque;
}

void cv_applog_set_generation_cb(cv_applog *log, cv_applog_generation_fn *fn,
                                 void *opaque) {
    log->gen_fn = fn;
    log->gen_opaque = opaque;
}

int cv_applog_repair_new_generation(cv_applog *log, char *errbuf, size_t errlen) {
    if (!log->repair || log->parts) {
        errf(errbuf, errlen,
             "log %s: only a repair session, before its first append, writes a new "
             "generation",
             log->dir);
        return -EINVAL;
    }
    log->repair_gen = true;
    return 0;
}

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
            errf(errbuf, errlen,
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
                errf(errbuf, errlen, "log directory %s: cannot open: %s", log->dir,
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

static int sys_fsync_dir(cv_applog *log, const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = log->sys.fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return r;
}

int cv_applog_open(const char *dir, const cv_keyring *keys, uint64_t segment_bytes,
                   cv_applog **ret, char *errbuf, size_t errlen) {
    int r = lib_init(errbuf, errlen);
    if (r < 0)
        return r;
    if (!keys || !cv_keyring_count(keys)) {
        errf(errbuf, errlen, "log %s: no key to seal segments with", dir);
        return -ENOKEY;
    }
    if (segment_bytes < 4096) {
        errf(errbuf, errlen,
             "log %s: segment size %" PRIu64 " is below the minimum of 4096 bytes", dir,
             segment_bytes);
        return -EINVAL;
    }
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        errf(errbuf, errlen, "log directory %s: cannot create: %s", dir, strerror(e));
        return -e;
    }
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        errf(errbuf, errlen, "log directory %s is not a directory", dir);
        return -ENOTDIR;
    }
    cv_applog *log = calloc(1, sizeof(*log));
    if (!log || !(log->dir = strdup(dir))) {
        free(log);
        return -ENOMEM;
    }
    if (pthread_mutex_init(&log->spare_mu, NULL) != 0) {
        free(log->dir);
        free(log);
        return -ENOMEM;
    }
    log->keys = keys;
    log->key_id = cv_keyring_newest(keys);
    log->key = cv_keyring_get(keys, log->key_id);
    log->segment_bytes = segment_bytes;
    log->sys = real_syscalls;
    log->fsfd = -1;
    log->workers_max = WORKERS_MAX;
    randombytes_buf(log->writer_id, sizeof(log->writer_id));
    log->repair_session = cv_now_us();
    if (gethostname(log->writer_name, sizeof(log->writer_name)) < 0)
        log->writer_name[0] = '\0';
    log->writer_name[WRITER_NAME_MAX] = '\0';
    *ret = log;
    return 0;
}

int cv_applog_open_repair(const char *dir, const cv_keyring *keys, uint64_t segment_bytes,
                          cv_applog **ret, char *errbuf, size_t errlen) {
    cv_applog *log;
    int r = cv_applog_open(dir, keys, segment_bytes, &log, errbuf, errlen);
    if (r < 0)
        return r;
    /* Sessions of one process get distinct directories. */
    static int64_t last_session;
    log->repair = true;
    if (log->repair_session <= last_session)
        log->repair_session = last_session + 1;
    last_session = log->repair_session;
    *ret = log;
    return 0;
}

static int get_part(cv_applog *log, const char *topic, int32_t partition, part **ret,
                    char *errbuf, size_t errlen);

int cv_applog_repair_bridge(cv_applog *log, const char *topic, int32_t partition,
                            const unsigned char *after_chain,
                            const unsigned char *next_prev_chain, char *errbuf,
                            size_t errlen) {
    if (!log->repair) {
        errf(errbuf, errlen, "log %s: only a repair session bridges", log->dir);
        return -EINVAL;
    }
    part *p;
    int r = get_part(log, topic, partition, &p, errbuf, errlen);
    if (r < 0)
        return r;
    if (p->last >= 0 || p->cur) {
        errf(errbuf, errlen,
             "log %s: a bridge must come before the session's first record", p->dir);
        return -EBUSY;
    }
    memcpy(p->chain, after_chain, DIGEST);
    memcpy(p->dchain, after_chain, DIGEST);
    memcpy(p->bridge, next_prev_chain, DIGEST);
    return 0;
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

static part *find_part(const cv_applog *log, const char *topic, int32_t partition) {
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

static int index_push(part *p, int64_t offset, const unsigned char *digest) {
    if (p->ilen == p->icap) {
        size_t ncap = p->icap ? p->icap * 2 : 1024;
        int64_t *no = realloc(p->ioff, ncap * sizeof(*no));
        if (!no)
            return -ENOMEM;
        p->ioff = no;
        unsigned char(*nd)[DIGEST] = realloc(p->idig, ncap * sizeof(*nd));
        if (!nd)
            return -ENOMEM;
        p->idig = nd;
        p->icap = ncap;
    }
    p->ioff[p->ilen] = offset;
    memcpy(p->idig[p->ilen], digest, DIGEST);
    p->ilen++;
    return 0;
}

/* Keeps the newest INDEX_KEEP entries once twice as many are held. */
static void index_trim(part *p) {
    if (p->ilen < 2 * INDEX_KEEP)
        return;
    size_t drop = p->ilen - INDEX_KEEP;
    memmove(p->ioff, p->ioff + drop, INDEX_KEEP * sizeof(*p->ioff));
    memmove(p->idig, p->idig + drop, INDEX_KEEP * sizeof(*p->idig));
    p->ilen = p->dilen = INDEX_KEEP;
}

static void part_refuse(part *p, int err, const char *msg) {
    p->state = err;
    free(p->err);
    p->err = strdup(msg);
}

typedef struct held {
    int64_t offset;
    unsigned char digest[DIGEST];
    unsigned char val[VAL_ID];
} held;

static int held_cmp(const void *a, const void *b) {
    int64_t x = ((const held *)a)->offset, y = ((const held *)b)->offset;
    return x < y ? -1 : x > y;
}

static void value_id(unsigned char *out, const void *value, size_t len);

/* Reads the offsets, digests and value ids (decrypted: "already held" is by
 * identity, see GENERATIONS) the partition's repair directories hold into
 * p->hoff/p->hdig/p->hval. A repair directory that does not read to its
 * end contributes what it read: the reader reports its damage; the writer
 * only must not write a second copy. */
static int load_repair_held(cv_applog *log, part *p) {
    char **names;
    size_t n;
    int r = list_repair_dirs(p->dir, &names, &n, NULL, 0);
    if (r < 0 || n == 0)
        return r == -ENOMEM ? r : 0;
    held *v = NULL;
    size_t len = 0, cap = 0;
    for (size_t i = 0; i < n && r == 0; i++) {
        char *path = path_join(p->dir, names[i]);
        pdir d;
        if (!path) {
            r = -ENOMEM;
            break;
        }
        int x = pdir_init(&d, path, log->keys, -1, NULL, 0);
        while (x == 0 && pdir_next(&d, NULL, 0) == 1) {
            if (len == cap) {
                cap = cap ? cap * 2 : 256;
                held *nv = realloc(v, cap * sizeof(*nv));
                if (!nv) {
                    r = -ENOMEM;
                    break;
                }
                v = nv;
            }
            v[len].offset = d.rec.offset;
            memcpy(v[len].digest, d.rec.digest, DIGEST);
            value_id(v[len].val, d.rec.value, d.rec.value_len);
            len++;
        }
        pdir_release(&d);
        free(path);
    }
    free_names(names, n);
    if (r == 0 && len) {
        qsort(v, len, sizeof(*v), held_cmp);
        p->hoff = malloc(len * sizeof(*p->hoff));
        p->hdig = malloc(len * sizeof(*p->hdig));
        p->hval = malloc(len * sizeof(*p->hval));
        if (!p->hoff || !p->hdig || !p->hval)
            r = -ENOMEM;
        for (size_t i = 0; r == 0 && i < len; i++) {
            p->hoff[i] = v[i].offset;
            memcpy(p->hdig[i], v[i].digest, DIGEST);
            memcpy(p->hval[i], v[i].val, VAL_ID);
        }
        p->hlen = r == 0 ? len : 0;
    }
    free(v);
    return r;
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
        errf(errbuf, errlen, "log segment %s: cannot open to cut its torn tail: %s",
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
        errf(errbuf, errlen, "log segment %s: cannot read its torn tail: %s",
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
        errf(errbuf, errlen, "log segment %s: cannot keep its torn tail in %s: %s",
             d->torn_file, side, strerror(-r));
        if (sfd >= 0)
            close(sfd);
        goto out;
    }
    close(sfd);
    if (log->sys.ftruncate(fd, (off_t)d->torn_pos) < 0 || log->sys.fsync(fd) < 0) {
        r = -errno;
        errf(errbuf, errlen,
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

/* Opens a partition: directory, stray temp files, recovery of the last
 * segment. On damage the partition is refused (state < 0). */
static int part_open(cv_applog *log, part *p, char *errbuf, size_t errlen) {
    char msg[768];
    if (p->repair) {
        /* The partition directory the repair directory lives in. */
        char parent[PATH_MAX];
        if (cv_applog_partition_dir(log->dir, p->topic, p->partition, parent,
                                    sizeof(parent)) < 0)
            return -ENAMETOOLONG;
        if (mkdir(parent, 0700) < 0 && errno != EEXIST) {
            int e = errno;
            errf(errbuf, errlen, "log directory %s: cannot create: %s", parent,
                 strerror(e));
            return -e;
        }
        if (mkdir(p->dir, 0700) < 0 && errno != EEXIST) {
            int e = errno;
            errf(errbuf, errlen, "log directory %s: cannot create: %s", p->dir,
                 strerror(e));
            return -e;
        }
        int rr = sys_fsync_dir(log, parent);
        if (rr < 0) {
            errf(errbuf, errlen, "log directory %s: fsync: %s", parent, strerror(-rr));
            return rr;
        }
    }
    if (mkdir(p->dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        errf(errbuf, errlen, "log directory %s: cannot create: %s", p->dir, strerror(e));
        return -e;
    }
    /* The partition directory's entry in log.dir must be durable before
     * anything in it is reported so. A repair directory's is made so here;
     * a broker partition's by the append that opened it (see LAYOUT), once
     * for all the partitions it opened: a new broker opens hundreds in its
     * first batches, and each fsync of log.dir is a journal commit. */
    int r;
    if (p->repair) {
        if ((r = sys_fsync_dir(log, log->dir)) < 0) {
            errf(errbuf, errlen, "log directory %s: fsync: %s", log->dir, strerror(-r));
            return r;
        }
    } else {
        log->dir_unsynced = true;
    }
    p->dirfd = open(p->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (p->dirfd < 0) {
        int e = errno;
        errf(errbuf, errlen, "log directory %s: %s", p->dir, strerror(e));
        return -e;
    }
    /* Unfinished new segments: their batch was never reported durable. */
    char **tmps;
    size_t ntmp;
    char tsuffix[16];
    snprintf(tsuffix, sizeof(tsuffix), "%s%s", SEG_SUFFIX, TMP_SUFFIX);
    r = list_names(p->dir, tsuffix, &tmps, &ntmp, errbuf, errlen);
    if (r < 0)
        return r;
    for (size_t i = 0; i < ntmp; i++) {
        char *path = path_join(p->dir, tmps[i]);
        struct stat st;
        if (!path || stat(path, &st) < 0 || log->sys.unlink(path) < 0) {
            r = path ? -errno : -ENOMEM;
            errf(errbuf, errlen, "log segment %s: cannot remove: %s",
                 path ? path : tmps[i], strerror(-r));
            free(path);
            free_names(tmps, ntmp);
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
    free_names(tmps, ntmp);
    if (ntmp && log->sys.fsync(p->dirfd) < 0) {
        r = -errno;
        errf(errbuf, errlen, "log directory %s: fsync: %s", p->dir, strerror(-r));
        return r;
    }

    memset(p->chain, 0, DIGEST);
    p->last = -1;
    pdir d;
    r = pdir_init(&d, p->dir, log->keys, INT64_MAX, errbuf, errlen);
    if (r < 0) {
        pdir_release(&d);
        return r;
    }
    if (d.nseg) {
        for (;;) {
            r = pdir_next(&d, msg, sizeof(msg));
            if (r <= 0)
                break;
            if ((r = index_push(p, d.rec.offset, d.rec.digest)) < 0)
                break;
        }
        if (r == -ENOMEM) {
            pdir_release(&d);
            return r;
        }
        if (r < 0) {
            char full[1024];
            snprintf(full, sizeof(full),
                     "%s; the partition is not written until this is "
                     "resolved: `chatvault log check` shows it, `chatvault verify "
                     "--repair` mends it",
                     msg);
            part_refuse(p, r == -ENOKEY || r == -EKEYREJECTED ? r : -CV_ECORRUPT, full);
            p->recheck = true;
            pdir_release(&d);
            errf(errbuf, errlen, "%s", full);
            return p->state;
        }
        if (d.torn && p->committed > d.last_offset + 1) {
            /* An unfinished write is never acked; these records were. */
            char full[1024];
            snprintf(full, sizeof(full),
                     "log segment %s at byte %" PRIu64 ": the tail after offset %" PRId64
                     " fails its check, but Kafka's committed offset %" PRId64
                     " says records up to offset %" PRId64
                     " were acked: damage, not a torn write, so it is not cut; the "
                     "partition is not written until it is repaired: run `chatvault "
                     "verify --repair`",
                     d.torn_file, d.torn_pos, d.last_offset, p->committed,
                     p->committed - 1);
            part_refuse(p, -CV_ECORRUPT, full);
            p->recheck = true;
            pdir_release(&d);
            errf(errbuf, errlen, "%s", full);
            return p->state;
        }
        if (d.torn) {
            if ((r = cut_torn(log, p, &d, errbuf, errlen)) < 0) {
                pdir_release(&d);
                return r;
            }
        } else {
            /* What recovery read may still be only in the page cache (a
             * crashed writer's last batch): make it durable before the
             * offsets it holds are treated as held. */
            char *last = path_join(p->dir, d.names[d.nseg - 1]);
            int fd = last ? log->sys.open(last, O_WRONLY | O_CLOEXEC, 0) : -1;
            if (fd < 0 || log->sys.fdatasync(fd) < 0) {
                r = last ? -errno : -ENOMEM;
                errf(errbuf, errlen, "log segment %s: fdatasync: %s",
                     last ? last : p->dir, strerror(-r));
                if (fd >= 0)
                    close(fd);
                free(last);
                pdir_release(&d);
                return r;
            }
            close(fd);
            free(last);
        }
        snprintf(p->rseg, sizeof(p->rseg), "%s", d.names[d.nseg - 1]);
        p->rbytes = d.end_bytes;
        p->rrecords = d.end_records;
        memcpy(p->chain, d.chain, DIGEST);
        p->last = d.last_offset;
    }
    pdir_release(&d);
    if (!p->repair && (r = load_repair_held(log, p)) < 0)
        return r;
    memcpy(p->dchain, p->chain, DIGEST);
    p->dlast = p->last;
    p->dilen = p->ilen;
    p->state = 1;
    return 0;
}

/* Creates `dir` (an existing one is fine) and, with sync_parent, fsyncs the
 * directory it is in so that its entry is durable. */
static int make_dir(cv_applog *log, const char *dir, bool sync_parent, char *errbuf,
                    size_t errlen) {
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        errf(errbuf, errlen, "log directory %s: cannot create: %s", dir, strerror(e));
        return -e;
    }
    if (!sync_parent)
        return 0;
    char parent[PATH_MAX];
    snprintf(parent, sizeof(parent), "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash)
        *slash = '\0';
    int r = sys_fsync_dir(log, slash ? parent : ".");
    if (r < 0)
        errf(errbuf, errlen, "log directory %s: fsync: %s", slash ? parent : ".",
             strerror(-r));
    return r;
}

/* True when the directory holds a segment (or an unfinished one) of its
 * own: a generation the broker's writer wrote. */
static bool holds_segments(const char *dir) {
    char **names = NULL;
    size_t n = 0;
    char tsuffix[16], ignored[8];
    snprintf(tsuffix, sizeof(tsuffix), "%s%s", SEG_SUFFIX, TMP_SUFFIX);
    if (list_names(dir, SEG_SUFFIX, &names, &n, ignored, sizeof(ignored)) == 0 && !n)
        list_names(dir, tsuffix, &names, &n, ignored, sizeof(ignored));
    free_names(names, n);
    return n > 0;
}

/* Points p->dir (the partition directory, with room for `dl`) at the
 * partition's current generation: the newest gen-* directory holding
 * segments of its own, else the partition directory (see GENERATIONS). */
static int writer_gen(part *p, size_t dl, char *errbuf, size_t errlen) {
    char **gens = NULL;
    size_t n = 0;
    int r = list_gen_dirs(p->dir, &gens, &n, errbuf, errlen);
    if (r < 0)
        return r;
    for (size_t i = n; i-- > 0;) {
        char *path = path_join(p->dir, gens[i]);
        if (!path) {
            r = -ENOMEM;
            break;
        }
        bool own = holds_segments(path);
        free(path);
        if (own) {
            size_t l = strlen(p->dir);
            snprintf(p->dir + l, dl - l, "/%s", gens[i]);
            p->gen = strtoll(gens[i] + sizeof(GEN_PREFIX) - 1, NULL, 10);
            break;
        }
    }
    free_names(gens, n);
    return r;
}

/* A repair session of cv_applog_repair_new_generation: p->dir (the
 * partition directory) becomes a new generation named by the session. */
static int repair_gen_dir(cv_applog *log, part *p, size_t dl, char *errbuf,
                          size_t errlen) {
    int r = make_dir(log, p->dir, true, errbuf, errlen);
    if (r < 0)
        return r;
    size_t l = strlen(p->dir);
    snprintf(p->dir + l, dl - l, "/" GEN_PREFIX "%020" PRId64, log->repair_session);
    p->gen = log->repair_session;
    return make_dir(log, p->dir, true, errbuf, errlen);
}

static int find_or_open_part(cv_applog *log, const char *topic, int32_t partition,
                             bool open_now, part **ret, char *errbuf, size_t errlen) {
    part *p = find_part(log, topic, partition);
    if (!p) {
        size_t tl = strlen(topic);
        if (tl == 0 || tl > 255 || strchr(topic, '/') || topic[0] == '.' ||
            partition < 0) {
            errf(errbuf, errlen, "log: invalid topic-partition \"%s\"-%" PRId32, topic,
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
            part_free(p);
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
            part_free(p);
            return r;
        }
        if (log->repair) {
            size_t l = strlen(p->dir);
            snprintf(p->dir + l, dl - l, "/" REPAIR_PREFIX "%020" PRId64,
                     log->repair_session);
        }
        if (log->repair_gen && (r = make_dir(log, p->dir, true, errbuf, errlen)) < 0) {
            part_free(p);
            return r;
        }
        if (add_part(log, p) < 0) {
            part_free(p);
            return -ENOMEM;
        }
    }
    if (p->state < 0 && p->recheck && open_now) {
        /* Refused for what recovery found, before anything was written:
         * look again (`chatvault verify --repair` may have mended it). */
        if (p->dirfd >= 0)
            close(p->dirfd);
        p->dirfd = -1;
        p->ilen = p->dilen = 0;
        free(p->hoff);
        free(p->hdig);
        free(p->hval);
        p->hoff = NULL;
        p->hdig = NULL;
        p->hval = NULL;
        p->hlen = 0;
        p->recheck = false;
        p->state = 0;
    }
    if (p->state == 0 && !open_now) {
        *ret = p;
        return 0;
    }
    if (p->state == 0) {
        int r = part_open(log, p, errbuf, errlen);
        if (r < 0 && p->state == 0) {
            /* Not refused for damage: retried on the next append. */
            if (p->dirfd >= 0)
                close(p->dirfd);
            p->dirfd = -1;
            p->ilen = p->dilen = 0;
            return r;
        }
    }
    if (p->state < 0) {
        errf(errbuf, errlen, "%s", p->err);
        return p->state;
    }
    *ret = p;
    return 0;
}

static int get_part(cv_applog *log, const char *topic, int32_t partition, part **ret,
                    char *errbuf, size_t errlen) {
    return find_or_open_part(log, topic, partition, true, ret, errbuf, errlen);
}

int cv_applog_set_committed(cv_applog *log, const char *topic, int32_t partition,
                            int64_t committed) {
    part *p = find_part(log, topic, partition);
    char err[256];
    int r = p ? 0 : find_or_open_part(log, topic, partition, false, &p, err, sizeof(err));
    if (r == 0)
        p->committed = committed;
    return r;
}

/* Index of `offset` in the ascending array `v` of n, or n if absent. */
static size_t find_offset(const int64_t *v, size_t n, int64_t offset) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && v[lo] == offset ? lo : n;
}

static void value_id(unsigned char *out, const void *value, size_t len) {
    crypto_generichash(out, VAL_ID, value, len, NULL, 0);
}

/* Fills the disk-lookup cache with the records of the segment that would
 * hold `offset`, from `offset` on, decrypted: their identity is their value
 * (see GENERATIONS). Those before it are checked by frame check and chain
 * only: a re-delivery starts at Kafka's committed offset and goes up, so
 * only the segment's tail is decrypted. */
static int cache_segment(cv_applog *log, part *p, int64_t offset, char *errbuf,
                         size_t errlen) {
    pdir d;
    int r = pdir_init(&d, p->dir, log->keys, offset, errbuf, errlen);
    d.skip_below = offset;
    size_t seg_index = d.iseg;
    p->clen = 0;
    while (r == 0 && (r = pdir_next(&d, errbuf, errlen)) == 1 &&
           d.iseg == seg_index + 1) {
        r = 0;
        if (p->clen == p->ccap) {
            size_t ncap = p->ccap ? p->ccap * 2 : 1024;
            int64_t *no = realloc(p->coff, ncap * sizeof(*no));
            if (!no) {
                r = -ENOMEM;
                break;
            }
            p->coff = no;
            unsigned char(*nd)[DIGEST] = realloc(p->cdig, ncap * sizeof(*nd));
            if (!nd) {
                r = -ENOMEM;
                break;
            }
            p->cdig = nd;
            unsigned char(*nv)[VAL_ID] = realloc(p->cval, ncap * sizeof(*nv));
            if (!nv) {
                r = -ENOMEM;
                break;
            }
            p->cval = nv;
            p->ccap = ncap;
        }
        p->coff[p->clen] = d.rec.offset;
        memcpy(p->cdig[p->clen], d.rec.digest, DIGEST);
        value_id(p->cval[p->clen], d.rec.value, d.rec.value_len);
        p->clen++;
    }
    pdir_release(&d);
    if (r < 0) {
        p->clen = 0;
        return r;
    }
    return 0;
}

/* Whether the partition holds entry e, by identity (see GENERATIONS): 1
 * with e->digest the held record's when it holds these very bytes at
 * e->offset; 0 when it holds the offset with other bytes; -ERANGE when it
 * does not hold the offset. The in-memory index says whether the offset
 * is held; the bytes are compared in the lookup cache, which reads the
 * segment holding the offset (once per segment and re-delivery). */
static int lookup_held(cv_applog *log, part *p, cv_applog_entry *e, char *errbuf,
                       size_t errlen) {
    int64_t offset = e->offset;
    bool indexed = p->ilen && offset >= p->ioff[0];
    if (indexed && find_offset(p->ioff, p->ilen, offset) == p->ilen)
        goto not_held;
    p->cused = true;
    if (!p->clen || offset < p->coff[0] || offset > p->coff[p->clen - 1]) {
        int r = cache_segment(log, p, offset, errbuf, errlen);
        if (r < 0)
            return r;
    }
    size_t i = find_offset(p->coff, p->clen, offset);
    if (i == p->clen) {
        if (!indexed)
            goto not_held;
        errf(errbuf, errlen,
             "log %s: offset %" PRId64 " is in the writer's index but not in its segment",
             p->dir, offset);
        return -EIO;
    }
    unsigned char vid[VAL_ID];
    value_id(vid, e->value, e->value_len);
    if (sodium_memcmp(vid, p->cval[i], VAL_ID) != 0)
        return 0;
    memcpy(e->digest, p->cdig[i], DIGEST);
    return 1;
not_held:
    errf(errbuf, errlen,
         "log %s: offset %" PRId64 " is below the last offset %" PRId64
         " and not in the log",
         p->dir, offset, p->last);
    return -ERANGE;
}

/* Entry e at the offset of p->hoff[i] (a repair directory holds it): 1
 * with e->digest the held record's when these are its very bytes, else 0. */
static int repair_held(const part *p, size_t i, cv_applog_entry *e) {
    unsigned char vid[VAL_ID];
    value_id(vid, e->value, e->value_len);
    if (sodium_memcmp(vid, p->hval[i], VAL_ID) != 0)
        return 0;
    memcpy(e->digest, p->hdig[i], DIGEST);
    return 1;
}

/* The new generation of p that this append writes from the entry at
 * `offset` on, created (empty, its entry durable) on first use. Its chain
 * starts at p's chain (see GENERATIONS). Runs on p's worker. */
static int gen_part(cv_applog *log, part *p, int64_t offset, part **ret) {
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
    if ((r = sys_fsync_dir(log, base)) < 0) {
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
    g->state = 1;
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
    part_free(g);
    return r;
}

static void commit(part *p);

/* After a durable append that started a new generation of p: the new
 * generation becomes p (the slot in the log's list and hash table keeps
 * its place), the old one is closed, and the start is reported. */
static void gen_adopt(cv_applog *log, part *p) {
    part *g = p->ngen;
    commit(g);
    int64_t at = p->regress_at, held_last = p->regress_held;
    part old = *p;
    *p = *g;
    p->next = old.next;
    p->hnext = old.hnext;
    p->hash = old.hash;
    p->jidx = old.jidx;
    p->njidx = old.njidx;
    p->jcap = old.jcap;
    p->jr = old.jr;
    p->touched_part = old.touched_part;
    p->committed = old.committed;
    p->ngen = NULL;
    *g = old;
    g->ngen = NULL;
    g->jidx = NULL;
    seal_part(log, g); /* no session writes the old generation again */
    part_free(g);
    if (log->gen_fn)
        log->gen_fn(log->gen_opaque, p->topic, p->partition, at, held_last, p->dir);
}

/* A segment's buffer holds its frames only from the first encode of an
 * append to the write at the end of the same job. Each job gives its
 * buffers back (buf_give) and the next job, of whatever partition, takes
 * them: the log keeps about one buffer per worker rather than one, as large
 * as the most it ever took in one batch, per partition it has written. */
static void buf_take(cv_applog *log, cv_buf *b) {
    if (b->cap)
        return;
    pthread_mutex_lock(&log->spare_mu);
    if (log->nspare)
        *b = log->spare[--log->nspare];
    pthread_mutex_unlock(&log->spare_mu);
    b->len = 0;
}

static void buf_give(cv_applog *log, cv_buf *b) {
    if (!b->cap)
        return;
    b->len = 0;
    pthread_mutex_lock(&log->spare_mu);
    bool kept = b->cap <= SPARE_BYTES_MAX && log->nspare < SPARE_MAX;
    if (kept)
        log->spare[log->nspare++] = *b;
    pthread_mutex_unlock(&log->spare_mu);
    if (!kept)
        cv_buf_release(b);
    cv_buf_init(b, BUF_LIMIT);
}

static int touch(part *p, wseg *w) {
    if (w->in_batch)
        return 0;
    if (p->ntouched == p->tcap) {
        size_t ncap = p->tcap ? p->tcap * 2 : 4;
        wseg **nt = realloc(p->touched, ncap * sizeof(*nt));
        if (!nt)
            return -ENOMEM;
        p->touched = nt;
        p->tcap = ncap;
    }
    w->in_batch = true;
    w->wpos = w->size;
    w->batch++;
    p->touched[p->ntouched++] = w;
    return 0;
}

/* Starts a new segment for `first_offset` (in memory: written at commit). */
static int new_segment(cv_applog *log, part *p, int64_t first_offset) {
    wseg *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->fd = -1;
    cv_buf_init(&w->buf, BUF_LIMIT);
    seghdr *h = &w->h;
    h->key_id = log->key_id;
    h->repair = p->repair;
    if (p->repair)
        memcpy(h->bridge, p->bridge, DIGEST);
    randombytes_buf(h->seg_id, sizeof(h->seg_id));
    memcpy(h->writer_id, log->writer_id, 16);
    h->first_offset = first_offset;
    h->created_us = cv_now_us();
    memcpy(h->prev_chain, p->chain, DIGEST);
    key_check(h->key_check, h->seg_id, log->key);
    segment_subkey(w->subkey, h->seg_id, log->key);
    h->partition = p->partition;
    h->topic_len = strlen(p->topic);
    memcpy(h->topic, p->topic, h->topic_len + 1);
    snprintf(h->writer_name, sizeof(h->writer_name), "%s", log->writer_name);
    char name[NAME_DIGITS + 16];
    snprintf(name, sizeof(name), "%020" PRId64 SEG_SUFFIX, first_offset);
    w->path = path_join(p->dir, name);
    w->tmp = w->path ? malloc(strlen(w->path) + sizeof(TMP_SUFFIX)) : NULL;
    if (!w->tmp) {
        wseg_free(w);
        return -ENOMEM;
    }
    sprintf(w->tmp, "%s%s", w->path, TMP_SUFFIX);
    int r = touch(p, w);
    if (r == 0) {
        buf_take(log, &w->buf);
        r = cv_buf_reserve(&w->buf, HDR_MAX);
    }
    if (r < 0) {
        if (w->in_batch)
            p->ntouched--;
        wseg_free(w);
        return r;
    }
    size_t hl = hdr_encode(h, w->buf.data);
    w->buf.len = hl;
    w->size = hl;
    p->cur = w;
    return 0;
}

/* Encodes one entry into the partition's current segment buffer. */
static int encode(cv_applog *log, part *p, cv_applog_entry *e) {
    size_t tl = strlen(p->topic);
    size_t plen = PT_FIXED + tl + e->value_len;
    size_t len = FRAME_HDR + plen + TAG_BYTES;
    if (len > FRAME_MAX)
        return -EMSGSIZE;
    if (!p->cur || (p->cur->nrec > 0 && p->cur->size + len > log->segment_bytes)) {
        int r = new_segment(log, p, e->offset);
        if (r < 0)
            return r;
    }
    wseg *w = p->cur;
    int r = touch(p, w);
    if (r < 0)
        return r;
    buf_take(log, &w->buf);
    if ((r = cv_buf_reserve(&w->buf, len)) < 0)
        return r;
    unsigned char *f = w->buf.data + w->buf.len;
    uint64_t pos = w->size;
    memcpy(f, FRAME_MAGIC, 4);
    cv_be32(f + 8, (uint32_t)len);
    cv_be32(f + 12, w->batch);
    cv_be64(f + 16, w->nrec);
    cv_be64(f + 24, (uint64_t)e->offset);
    unsigned char *pt = f + FRAME_HDR;
    cv_be64(pt, (uint64_t)e->offset);
    cv_be64(pt + 8, (uint64_t)e->timestamp_ms);
    cv_be32(pt + 16, (uint32_t)p->partition);
    cv_be16(pt + 20, (uint16_t)tl);
    memcpy(pt + PT_FIXED, p->topic, tl);
    if (e->value_len)
        memcpy(pt + PT_FIXED + tl, e->value, e->value_len);
    unsigned char ad[AD_BYTES], nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES];
    build_ad(ad, w->h.hash, f, pos, p->chain);
    build_nonce(nonce, w->nrec);
    crypto_aead_chacha20poly1305_ietf_encrypt_detached(
        pt, f + FRAME_HDR + plen, NULL, pt, plen, ad, sizeof(ad), NULL, nonce, w->subkey);
    cv_be32(f + 4, crc32c(f + 8, len - 8));
    chain_next(p->chain, p->chain, f, len);
    memcpy(e->digest, p->chain, DIGEST);
    if ((r = index_push(p, e->offset, p->chain)) < 0)
        return r;
    w->buf.len += len;
    w->size += len;
    w->nrec++;
    p->last = e->offset;
    return 0;
}

static int write_all(cv_applog *log, wseg *w, char *errbuf, size_t errlen) {
    const char *path = w->tmp ? w->tmp : w->path;
    if (w->fd < 0) {
        w->fd = log->sys.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (w->fd < 0) {
            int e = errno;
            errf(errbuf, errlen, "log segment %s: cannot create: %s", path, strerror(e));
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
            errf(errbuf, errlen, "log segment %s: write at byte %" PRIu64 " failed: %s",
                 path, w->wpos + done, strerror(e));
            return -e;
        }
        done += (size_t)n;
    }
    return 0;
}

/* Undoes everything the current append did to p: truncates back to the
 * durable size, removes new segments. Returns <0 if that failed too (the
 * partition is then refused: its files are in an unknown state). */
static int rollback(cv_applog *log, part *p) {
    if (p->late && p->late->state == 1)
        rollback(log, p->late);
    int bad = 0;
    if (p->ngen) {
        /* Nothing of the new generation was durable: it goes again. */
        part *g = p->ngen;
        p->ngen = NULL;
        bad = rollback(log, g);
        if (bad == 0)
            rmdir(g->dir);
        part_free(g);
    }
    bool unlinked = false;
    for (size_t i = 0; i < p->ntouched; i++) {
        wseg *w = p->touched[i];
        w->in_batch = false;
        if (w == p->dcur) {
            if (w->size != w->dsize && w->fd >= 0 &&
                log->sys.ftruncate(w->fd, (off_t)w->dsize) < 0)
                bad = -errno;
            w->size = w->dsize;
            w->nrec = w->dnrec;
            w->batch = w->dbatch;
            continue;
        }
        if (w->fd >= 0) {
            if (log->sys.unlink(w->tmp ? w->tmp : w->path) < 0 && errno != ENOENT)
                bad = -errno;
            unlinked = true;
        }
        if (w == p->cur)
            p->cur = NULL;
        wseg_free(w);
    }
    p->ntouched = 0;
    if (unlinked && log->sys.fsync(p->dirfd) < 0)
        bad = -errno;
    p->cur = p->dcur;
    memcpy(p->chain, p->dchain, DIGEST);
    p->last = p->dlast;
    p->ilen = p->dilen;
    if (bad < 0) {
        char msg[512];
        snprintf(msg, sizeof(msg),
                 "log %s: could not undo a failed append (%s); restart the "
                 "broker so recovery rescans the partition",
                 p->dir, strerror(-bad));
        part_refuse(p, bad, msg);
    }
    return bad;
}

static void commit(part *p) {
    if (p->late && p->late->state == 1)
        commit(p->late);
    bool dcur_touched = false;
    for (size_t i = 0; i < p->ntouched; i++) {
        wseg *w = p->touched[i];
        if (w == p->dcur)
            dcur_touched = true;
        w->in_batch = false;
        w->dsize = w->size;
        w->dnrec = w->nrec;
        w->dbatch = w->batch;
        if (w != p->cur)
            wseg_free(w); /* rolled away from: sealed */
    }
    if (p->dcur && p->dcur != p->cur && !dcur_touched)
        wseg_free(p->dcur);
    p->ntouched = 0;
    p->dcur = p->cur;
    memcpy(p->dchain, p->chain, DIGEST);
    p->dlast = p->last;
    index_trim(p);
    p->dilen = p->ilen;
    if (!p->cused && p->ccap) {
        free(p->coff);
        free(p->cdig);
        p->coff = NULL;
        p->cdig = NULL;
        p->clen = p->ccap = 0;
    }
    p->cused = false;
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
 * partitions at once (sync_all). */
static int flush_part(cv_applog *log, part *p) {
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

/* The partition's repair directory of this session, for late records: a
 * record below the tail that the partition does not hold cannot go into
 * the chain, so it goes beside it (see LATE RECORDS). */
static int late_part(cv_applog *log, part *p, part **ret) {
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
    if (l->state == 0) {
        int r = part_open(log, l, p->jerr, sizeof(p->jerr));
        if (r < 0 && l->state == 0) {
            if (l->dirfd >= 0)
                close(l->dirfd);
            l->dirfd = -1;
            l->ilen = l->dilen = 0;
            return r;
        }
    }
    if (l->state < 0) {
        snprintf(p->jerr, sizeof(p->jerr), "%s", l->err);
        return l->state;
    }
    *ret = l;
    return 0;
}

/* Everything one append does to one partition: encode its entries, then
 * flush_part. Touches only p (and the files of p), so partitions run in
 * parallel. Result in p->jr / p->jerr. */
static void part_job(cv_applog *log, part *p) {
    int r = 0;
    for (size_t k = 0; k < p->njidx && r == 0; k++) {
        cv_applog_entry *e = &log->entries[p->jidx[k]];
        part *into = p->ngen ? p->ngen : p;
        if (!p->ngen) {
            int h = 2; /* 2: not held, write it into `into` */
            size_t hi;
            if (p->hlen && (hi = find_offset(p->hoff, p->hlen, e->offset)) < p->hlen) {
                h = repair_held(p, hi, e); /* rebuilt there by a repair */
            } else if (e->offset <= p->last) {
                h = lookup_held(log, p, e, p->jerr, sizeof(p->jerr));
                if (h == -ERANGE && !p->repair) {
                    /* A late record (not held, below the tail). */
                    if ((r = late_part(log, p, &into)) < 0)
                        continue;
                    if (e->offset <= into->last)
                        h = lookup_held(log, into, e, p->jerr, sizeof(p->jerr));
                    else
                        h = 2;
                }
            }
            if (h == 1)
                continue; /* already held: these very bytes */
            if (h == 0 && !p->repair) {
                /* Another message at a held offset: Kafka's offsets started
                 * over. It and the rest go to a new generation. */
                if ((r = gen_part(log, p, e->offset, &into)) < 0)
                    continue;
            } else if (h != 2) {
                if (h == 0)
                    snprintf(p->jerr, sizeof(p->jerr),
                             "log %s: offset %" PRId64 " is held with other bytes",
                             p->dir, e->offset);
                r = h == 0 ? -EEXIST : h; /* late records ascend too */
                continue;
            }
        }
        if ((r = encode(log, into, e)) < 0)
            snprintf(p->jerr, sizeof(p->jerr),
                     "log %s: cannot encode offset %" PRId64 ": %s", into->dir, e->offset,
                     r == -EMSGSIZE ? "record too large" : strerror(-r));
    }
    if (r == 0)
        r = flush_part(log, p);
    if (r == 0 && p->late && p->late->ntouched) {
        r = flush_part(log, p->late);
        if (r < 0)
            memcpy(p->jerr, p->late->jerr, sizeof(p->jerr));
    }
    if (r == 0 && p->ngen && p->ngen->ntouched) {
        r = flush_part(log, p->ngen);
        if (r < 0)
            memcpy(p->jerr, p->ngen->jerr, sizeof(p->jerr));
    }
    /* Written or failed, the frames are not needed again: a failed append
     * is undone from the files' durable sizes and re-encoded if retried. */
    for (size_t i = 0; i < p->ntouched; i++)
        buf_give(log, &p->touched[i]->buf);
    for (size_t i = 0; p->late && i < p->late->ntouched; i++)
        buf_give(log, &p->late->touched[i]->buf);
    for (size_t i = 0; p->ngen && i < p->ngen->ntouched; i++)
        buf_give(log, &p->ngen->touched[i]->buf);
    p->jr = r;
}

/* Takes and runs jobs until none is left; called with log->mu held. */
static void run_jobs_locked(cv_applog *log) {
    while (log->next_job < log->njobs) {
        part *p = log->jobs[log->next_job++];
        pthread_mutex_unlock(&log->mu);
        part_job(log, p);
        pthread_mutex_lock(&log->mu);
        if (++log->jobs_done == log->njobs)
            pthread_cond_signal(&log->done_cv);
    }
}

static void *worker(void *arg) {
    cv_applog *log = arg;
    /* The workers yield the CPU to the rest of the process (and to a
     * PostgreSQL on the same machine): a batch's log append normally ends
     * well inside the PostgreSQL transaction it runs beside, so it has time
     * to spare, and a store that waits for CPU slows every ack. */
    pthread_setname_np(pthread_self(), "cv-log-worker");
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), WORKER_NICE);
    pthread_mutex_lock(&log->mu);
    while (!log->stop) {
        run_jobs_locked(log);
        if (!log->stop)
            pthread_cond_wait(&log->work_cv, &log->mu);
    }
    pthread_mutex_unlock(&log->mu);
    return NULL;
}

/* Grows the pool to min(want, log->workers_max) workers. Without any, jobs run
 * on the caller. How many help depends on the sync method:
 *  - fdatasync: a job mostly waits for its fdatasyncs, and fdatasyncs that
 *    wait at the same time share journal commits and cache flushes (ext4's
 *    jbd2 commits once for every waiter of a transaction), so the pool
 *    grows with the partitions an append touches, not with the cores.
 *  - syncfs: a job only encodes and copies, which is CPU work. More workers
 *    than cores would only crowd out the rest of the machine: the nice
 *    level is per thread, so 64 runnable workers at nice 5 outweigh a
 *    PostgreSQL backend at nice 0 by 20 to 1. The pool stops at the
 *    number of cores, counted once by cv_applog_set_sync. */
static void pool_grow(cv_applog *log, size_t want) {
    if (want > log->workers_max)
        want = log->workers_max;
    if (!log->pool_up) {
        if (pthread_mutex_init(&log->mu, NULL) != 0)
            return;
        if (pthread_cond_init(&log->work_cv, NULL) != 0) {
            pthread_mutex_destroy(&log->mu);
            return;
        }
        if (pthread_cond_init(&log->done_cv, NULL) != 0) {
            pthread_cond_destroy(&log->work_cv);
            pthread_mutex_destroy(&log->mu);
            return;
        }
        log->th = calloc(WORKERS_MAX, sizeof(*log->th));
        if (!log->th) {
            pthread_cond_destroy(&log->done_cv);
            pthread_cond_destroy(&log->work_cv);
            pthread_mutex_destroy(&log->mu);
            return;
        }
        log->pool_up = true;
    }
    if (log->nth >= want)
        return;
    /* Workers take no signals: those stay with the application's threads.
     * They need little stack. */
    pthread_attr_t attr;
    bool attr_ok = pthread_attr_init(&attr) == 0;
    if (attr_ok)
        pthread_attr_setstacksize(&attr, WORKER_STACK);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (log->nth < want &&
           pthread_create(&log->th[log->nth], attr_ok ? &attr : NULL, worker, log) == 0)
        log->nth++;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (attr_ok)
        pthread_attr_destroy(&attr);
}

static void pool_stop(cv_applog *log) {
    if (!log->pool_up)
        return;
    pthread_mutex_lock(&log->mu);
    log->stop = true;
    pthread_cond_broadcast(&log->work_cv);
    pthread_mutex_unlock(&log->mu);
    for (size_t i = 0; i < log->nth; i++)
        pthread_join(log->th[i], NULL);
    free(log->th);
    free(log->jobs);
    pthread_cond_destroy(&log->done_cv);
    pthread_cond_destroy(&log->work_cv);
    pthread_mutex_destroy(&log->mu);
    log->pool_up = false;
}

/* Runs part_job for every partition of tp: on the workers when there are
 * several, on the caller for one. */
static void run_parts(cv_applog *log, part **tp, size_t ntp) {
    if (ntp > 1)
        pool_grow(log, ntp);
    if (ntp == 1 || log->nth == 0) {
        for (size_t k = 0; k < ntp; k++)
            part_job(log, tp[k]);
        return;
    }
    pthread_mutex_lock(&log->mu);
    log->jobs = tp;
    log->njobs = ntp;
    log->next_job = log->jobs_done = 0;
    pthread_cond_broadcast(&log->work_cv);
    while (log->jobs_done < log->njobs)
        pthread_cond_wait(&log->done_cv, &log->mu);
    log->jobs = NULL;
    log->njobs = log->next_job = log->jobs_done = 0;
    pthread_mutex_unlock(&log->mu);
}

/* The syncfs way of making an append durable: one syncfs for the bytes of
 * every partition, then the new segments renamed into place and, when there
 * were any, one more syncfs for the renames. */
static int sync_all(cv_applog *log, part **tp, size_t ntp, char *errbuf, size_t errlen) {
    if (log->sys.syncfs(log->fsfd) < 0) {
        int e = errno;
        errf(errbuf, errlen,
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
            errf(errbuf, errlen, "%s", err);
            return r;
        }
    }
    if (renamed && log->sys.syncfs(log->fsfd) < 0) {
        int e = errno;
        errf(errbuf, errlen, "log directory %s: syncfs after renaming new segments: %s",
             log->dir, strerror(e));
        return -e;
    }
    return 0;
}

int cv_applog_append(cv_applog *log, cv_applog_entry *entries, size_t n, char *errbuf,
                     size_t errlen) {
    int r = 0;
    part **tp = NULL;
    size_t ntp = 0, tpcap = 0;
    /* Group the entries by partition (opening partitions on the way). */
    for (size_t i = 0; i < n; i++) {
        cv_applog_entry *e = &entries[i];
        part *p = NULL;
        if ((r = get_part(log, e->topic, e->partition, &p, errbuf, errlen)) < 0)
            goto fail;
        if (!p->touched_part) {
            if (ntp == tpcap) {
                tpcap = tpcap ? tpcap * 2 : 8;
                part **ntpv = realloc(tp, tpcap * sizeof(*ntpv));
                if (!ntpv) {
                    r = -ENOMEM;
                    goto fail;
                }
                tp = ntpv;
            }
            tp[ntp++] = p;
            p->touched_part = true;
            p->njidx = 0;
        }
        if (p->njidx == p->jcap) {
            size_t ncap = p->jcap ? p->jcap * 2 : 64;
            size_t *nj = realloc(p->jidx, ncap * sizeof(*nj));
            if (!nj) {
                r = -ENOMEM;
                goto fail;
            }
            p->jidx = nj;
            p->jcap = ncap;
        }
        p->jidx[p->njidx++] = i;
    }
    if (log->dir_unsynced && log->sync == CV_APPLOG_SYNC_FDATASYNC) {
        if ((r = sys_fsync_dir(log, log->dir)) < 0) {
            errf(errbuf, errlen, "log directory %s: fsync: %s", log->dir, strerror(-r));
            goto fail;
        }
        log->dir_unsynced = false;
    }
    log->entries = entries;
    run_parts(log, tp, ntp);
    log->entries = NULL;
    for (size_t k = 0; k < ntp; k++)
        if (tp[k]->jr < 0) {
            r = tp[k]->jr;
            errf(errbuf, errlen, "%s", tp[k]->jerr);
            goto fail;
        }
    if (log->sync == CV_APPLOG_SYNC_SYNCFS) {
        if ((r = sync_all(log, tp, ntp, errbuf, errlen)) < 0)
            goto fail;
        log->dir_unsynced = false; /* the syncfs covered log.dir's entries */
    }
    for (size_t k = 0; k < ntp; k++) {
        commit(tp[k]);
        if (tp[k]->ngen)
            gen_adopt(log, tp[k]);
        tp[k]->touched_part = false;
    }
    free(tp);
    return 0;

fail:
    for (size_t k = 0; k < ntp; k++) {
        rollback(log, tp[k]);
        tp[k]->touched_part = false;
    }
    free(tp);
    return r < 0 ? r : -EIO;
}

int cv_applog_positions(const cv_applog *log, const char *topic, int32_t partition,
                        int64_t *ret_requested, int64_t *ret_durable) {
    const part *p = find_part(log, topic, partition);
    if (!p || p->state != 1)
        return -ENOENT;
    *ret_requested = p->last;
    *ret_durable = p->dlast;
    return 0;
}
