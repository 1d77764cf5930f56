/*
 * Tests for the log's compression (consumer/applog/FORMAT.md "Compression"):
 * compressed round trip, a log of uncompressed and compressed segments read
 * as one, and damage in a compressed segment (a flipped format version, a
 * changed ciphertext, an encoded plaintext that lies about its length or
 * encoding) reported as damage with file and byte, never as a torn tail.
 * The lying records are sealed with the segment's real key, so only the
 * decoder's own checks can catch them.
 */
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "applog/applog.h"
#include "keyring.h"
#include "tap.h"
#include "util.h"

#define TOPIC "chat.general"
#define N_REC 3000
#define PT_MAX_TEST ((64u << 20) - 32 - 16 - 5) /* FORMAT.md: U's upper limit */

static char root[256];
static cv_keyring *kr;

static void die(const char *what) {
    perror(what);
    exit(2);
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

static uint32_t rd32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* CRC32C as FORMAT.md uses it (bitwise: a test needs no speed). */
static uint32_t crc32c(const unsigned char *p, size_t n) {
    uint32_t c = 0xffffffffu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return c ^ 0xffffffffu;
}

/* A chat line for an offset: compressible text, as chat is. */
static size_t make_value(int64_t o, char *v, size_t cap) {
    static const char *who[] = {"alice", "bob", "carol", "dmitri", "eun-ji"};
    static const char *what[] = {"the deploy is green again",
                                 "can someone review https://git.example.org/cv/pull/",
                                 "lunch at noon? the usual place",
                                 "I pushed the fix, the tests pass on my machine"};
    return (size_t)snprintf(v, cap, "%s: %s %" PRId64 " — %s; %s", who[o % 5],
                            what[o % 4], o, what[(o / 4) % 4], who[(o / 5) % 5]);
}

static int append_range(cv_applog *log, int64_t from, int64_t to, char *err,
                        size_t errlen) {
    static char vals[100][256];
    cv_applog_entry ents[100];
    for (int64_t o = from; o < to;) {
        size_t n = 0;
        for (; n < 100 && o < to; n++, o++) {
            size_t len = make_value(o, vals[n], sizeof(vals[n]));
            ents[n] = (cv_applog_entry){.topic = TOPIC,
                                        .partition = 0,
                                        .offset = o,
                                        .timestamp_ms = 1700000000000 + o,
                                        .value = vals[n],
                                        .value_len = len};
        }
        int r = cv_applog_append(log, ents, n, err, errlen);
        if (r < 0)
            return r;
    }
    return 0;
}

typedef struct seen {
    int64_t count, bad;
    int err;
    char errmsg[1024];
    const char *file;
    uint64_t pos;
    bool damage;
    size_t torn;
} seen;

static seen read_dir(const char *dir) {
    seen s = {0};
    cv_applog_reader *rd = NULL;
    s.err = cv_applog_reader_open(&dir, 1, kr, &rd, s.errmsg, sizeof(s.errmsg));
    if (s.err < 0)
        return s;
    cv_applog_record rec;
    char want[256];
    int64_t next = 0;
    int r;
    while ((r = cv_applog_reader_next(rd, &rec, s.errmsg, sizeof(s.errmsg))) == 1) {
        size_t len = make_value(rec.offset, want, sizeof(want));
        if (rec.offset != next++ || rec.value_len != len ||
            memcmp(rec.value, want, len) != 0 ||
            rec.timestamp_ms != 1700000000000 + rec.offset)
            s.bad++;
        s.count++;
    }
    s.err = r;
    if (r < 0) {
        s.damage = cv_applog_reader_damage(rd, &s.file, &s.pos);
        if (s.file)
            s.file = strdup(s.file);
    }
    s.torn = cv_applog_reader_torn(rd, 0, NULL, NULL);
    cv_applog_reader_free(rd);
    return s;
}

/* The segment files of dir, sorted, into names (at most 16). */
static size_t segments(const char *dir, char names[][700]) {
    char cmd[800];
    snprintf(cmd, sizeof(cmd), "ls '%s' | grep '\\.cvlog$' | sort", dir);
    FILE *f = popen(cmd, "r");
    size_t n = 0;
    char line[256];
    while (f && n < 16 && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        snprintf(names[n++], 700, "%s/%s", dir, line);
    }
    if (f)
        pclose(f);
    return n;
}

static unsigned version_of(const char *path) {
    size_t n;
    unsigned char *p = slurp(path, &n);
    unsigned v = n >= 10 ? (unsigned)(p[8] << 8 | p[9]) : 0;
    free(p);
    return v;
}

static uint64_t dir_bytes(const char *dir) {
    char names[16][700];
    size_t n = segments(dir, names);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0)
            sum += (uint64_t)st.st_size;
    }
    return sum;
}

static const char *write_log(const char *name, int level, char *logdir, size_t cap) {
    char err[1024];
    snprintf(logdir, cap, "%s/%s", root, name);
    cv_applog *log = NULL;
    if (cv_applog_open(logdir, kr, 1u << 20, &log, err, sizeof(err)) < 0 ||
        cv_applog_set_compression(log, level, err, sizeof(err)) < 0 ||
        append_range(log, 0, N_REC, err, sizeof(err)) < 0) {
        printf("# %s\n", err);
        exit(1);
    }
    cv_applog_free(log);
    static char pd[4][700];
    static int k;
    char *p = pd[k++ % 4];
    cv_applog_partition_dir(logdir, TOPIC, 0, p, 700);
    return p;
}

static void test_round_trip(void) {
    char a[600], b[600], err[256];
    const char *plain = write_log("plain", 0, a, sizeof(a));
    const char *z = write_log("zstd", 3, b, sizeof(b));
    char names[16][700];
    tap_ok(segments(plain, names) >= 1 && version_of(names[0]) == 1,
           "compression off writes format version 1 segments");
    tap_ok(segments(z, names) >= 1 && version_of(names[0]) == 2,
           "compression on writes format version 2 segments");
    seen s = read_dir(z);
    TAP_IS_INT(s.err, 0, "a compressed log reads to its end");
    if (s.err)
        printf("# %s\n", s.errmsg);
    tap_ok(s.count == N_REC && s.bad == 0,
           "every compressed record reads back as written");
    uint64_t pb = dir_bytes(plain), zb = dir_bytes(z);
    tap_ok(zb < pb, "the compressed log is smaller (%" PRIu64 " vs %" PRIu64 " bytes)",
           zb, pb);
    cv_applog *log = NULL;
    cv_applog_open(b, kr, 1u << 20, &log, err, sizeof(err));
    TAP_IS_INT(cv_applog_set_compression(log, 20, err, sizeof(err)), -EINVAL,
               "a zstd level above 19 is refused");
    TAP_IS_INT(cv_applog_set_compression(log, -1, err, sizeof(err)), -EINVAL,
               "a negative level is refused");
    cv_applog_free(log);
}

static void test_mixed(void) {
    char logdir[600], err[1024];
    snprintf(logdir, sizeof(logdir), "%s/mixed", root);
    int levels[] = {0, 3, 0, 19};
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        cv_applog *log = NULL;
        ok +=
            cv_applog_open(logdir, kr, 1u << 20, &log, err, sizeof(err)) == 0 &&
            cv_applog_set_compression(log, levels[i], err, sizeof(err)) == 0 &&
            append_range(log, i * N_REC / 4, (i + 1) * N_REC / 4, err, sizeof(err)) == 0;
        cv_applog_free(log);
    }
    TAP_IS_INT(ok, 4,
               "four sessions: off, zstd 3, off, zstd 19 (each recovers the last)");
    char pd[700], names[16][700];
    cv_applog_partition_dir(logdir, TOPIC, 0, pd, sizeof(pd));
    size_t n = segments(pd, names);
    tap_ok(n == 4 && version_of(names[0]) == 1 && version_of(names[1]) == 2 &&
               version_of(names[2]) == 1 && version_of(names[3]) == 2,
           "segments alternate version 1 and 2");
    seen s = read_dir(pd);
    TAP_IS_INT(s.err, 0, "the mixed log reads as one");
    tap_ok(s.count == N_REC && s.bad == 0, "all records of both versions, in order");
}

/* Copies the compressed log into a directory of its own and returns the
 * path of its first segment. */
static const char *fresh_copy(const char *name, char *pd, size_t cap) {
    char logdir[600];
    const char *src = write_log(name, 3, logdir, sizeof(logdir));
    snprintf(pd, cap, "%s", src);
    static char seg[700];
    char names[16][700];
    if (segments(pd, names) < 1)
        die("no segment");
    snprintf(seg, sizeof(seg), "%s", names[0]);
    return seg;
}

/* Walks the frames of the segment in p to record `target` (0-based);
 * returns its position and fills prev with the chain hash before it. */
static size_t find_frame(const unsigned char *p, size_t n, uint64_t target,
                         unsigned char *prev) {
    size_t pos = (size_t)(p[10] << 8 | p[11]);
    memcpy(prev, p + 64, 32);
    for (uint64_t i = 0; i < target && pos < n; i++) {
        uint32_t len = rd32(p + pos + 8);
        crypto_generichash_state st;
        crypto_generichash_init(&st, NULL, 0, 32);
        crypto_generichash_update(&st, prev, 32);
        crypto_generichash_update(&st, p + pos, len);
        crypto_generichash_final(&st, prev, 32);
        pos += len;
    }
    return pos;
}

/* Decrypts record `target` of the segment at path, lets edit change its
 * encoded plaintext, and seals it again with the real key, AD and nonce
 * (and a right CRC): a record that authenticates but lies. Returns its byte
 * position. */
static size_t reseal(const char *path, uint64_t target,
                     void (*edit)(unsigned char *, size_t)) {
    size_t n;
    unsigned char *p = slurp(path, &n);
    unsigned char prev[32], hh[32], subkey[32], ad[96], nonce[12] = {0};
    size_t hl = (size_t)(p[10] << 8 | p[11]);
    size_t pos = find_frame(p, n, target, prev);
    unsigned char *f = p + pos;
    uint32_t len = rd32(f + 8);
    size_t plen = len - 32 - 16;
    crypto_generichash(hh, 32, p, hl, NULL, 0);
    crypto_core_hchacha20(subkey, p + 16, cv_keyring_get(kr, rd32(p + 12)), NULL);
    memcpy(ad, hh, 32);
    memcpy(ad + 32, f + 8, 24);
    for (int i = 0; i < 8; i++)
        ad[56 + i] = (unsigned char)(pos >> (56 - 8 * i));
    memcpy(ad + 64, prev, 32);
    memcpy(nonce + 4, f + 16, 8);
    unsigned char *pt = malloc(plen);
    if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(
            pt, NULL, f + 32, plen, f + 32 + plen, ad, sizeof(ad), nonce, subkey) != 0)
        die("test: decrypt");
    tap_ok(pt[0] == 1, "record %" PRIu64 " is stored compressed (encoding 1)", target);
    edit(pt, plen);
    crypto_aead_chacha20poly1305_ietf_encrypt_detached(
        f + 32, f + 32 + plen, NULL, pt, plen, ad, sizeof(ad), NULL, nonce, subkey);
    uint32_t c = crc32c(f + 8, len - 8);
    f[4] = (unsigned char)(c >> 24), f[5] = (unsigned char)(c >> 16);
    f[6] = (unsigned char)(c >> 8), f[7] = (unsigned char)c;
    spit(path, p, n);
    free(pt);
    free(p);
    return pos;
}

static void edit_over_limit(unsigned char *pt, size_t n) {
    uint32_t u = PT_MAX_TEST + 1;
    pt[1] = (unsigned char)(u >> 24), pt[2] = (unsigned char)(u >> 16);
    pt[3] = (unsigned char)(u >> 8), pt[4] = (unsigned char)u;
}

static void edit_longer(unsigned char *pt, size_t n) {
    uint32_t u = rd32(pt + 1) + 1;
    pt[1] = (unsigned char)(u >> 24), pt[2] = (unsigned char)(u >> 16);
    pt[3] = (unsigned char)(u >> 8), pt[4] = (unsigned char)u;
}

static void edit_encoding(unsigned char *pt, size_t n) {
    pt[0] = 0; /* "stored": the zstd bytes would be taken as plaintext */
}

static void edit_zstd_magic(unsigned char *pt, size_t n) {
    pt[5] ^= 0xff; /* the zstd frame's magic: no frame, no declared length */
}

static void expect_damage(const char *what, const char *pd, const char *seg, size_t pos,
                          int err, const char *phrase) {
    seen s = read_dir(pd);
    TAP_IS_INT(s.err, err, what);
    char at[64];
    snprintf(at, sizeof(at), "at byte %zu", pos);
    tap_ok(strstr(s.errmsg, seg) && strstr(s.errmsg, at) && strstr(s.errmsg, phrase),
           "  the error names file, byte and '%s'", phrase);
    if (!strstr(s.errmsg, phrase) || !strstr(s.errmsg, at))
        printf("# got: %s\n", s.errmsg);
    tap_ok(s.damage && s.file && strcmp(s.file, seg) == 0 && s.pos == pos && s.torn == 0,
           "  it is damage at that place, not a torn tail");
    free((void *)s.file);
}

/* The last record of the log: in the last batch of the last segment, where
 * a torn tail could be, so a failure there must be told apart from one. */
#define LAST (N_REC - 1)

static void test_damage(void) {
    char pd[700];
    const char *seg;
    size_t pos;

    seg = fresh_copy("d-version", pd, sizeof(pd));
    {
        size_t n;
        unsigned char *p = slurp(seg, &n);
        size_t hl = (size_t)(p[10] << 8 | p[11]);
        p[9] = 1; /* claim version 1: uncompressed */
        uint32_t c = crc32c(p, hl - 4);
        p[hl - 4] = (unsigned char)(c >> 24), p[hl - 3] = (unsigned char)(c >> 16);
        p[hl - 2] = (unsigned char)(c >> 8), p[hl - 1] = (unsigned char)c;
        spit(seg, p, n);
        free(p);
        expect_damage(
            "a compressed segment relabelled version 1 (header CRC fixed) fails", pd, seg,
            hl, -EBADMSG, "fails authentication");
    }

    seg = fresh_copy("d-flip", pd, sizeof(pd));
    {
        size_t n;
        unsigned char *p = slurp(seg, &n);
        unsigned char prev[32];
        pos = find_frame(p, n, LAST, prev);
        p[pos + 40] ^= 1; /* ciphertext of the last record */
        uint32_t c = crc32c(p + pos + 8, rd32(p + pos + 8) - 8);
        p[pos + 4] = (unsigned char)(c >> 24), p[pos + 5] = (unsigned char)(c >> 16);
        p[pos + 6] = (unsigned char)(c >> 8), p[pos + 7] = (unsigned char)c;
        spit(seg, p, n);
        free(p);
        expect_damage("a flipped bit in a compressed record (CRC fixed) fails", pd, seg,
                      pos, -EBADMSG, "fails authentication");
    }

    seg = fresh_copy("d-limit", pd, sizeof(pd));
    pos = reseal(seg, LAST, edit_over_limit);
    expect_damage("a record declaring a plaintext over the limit is refused", pd, seg,
                  pos, -CV_ECORRUPT, "over the limit");

    seg = fresh_copy("d-longer", pd, sizeof(pd));
    pos = reseal(seg, LAST, edit_longer);
    expect_damage("a record declaring another length than its zstd frame is refused", pd,
                  seg, pos, -CV_ECORRUPT, "does not declare its length");

    seg = fresh_copy("d-enc", pd, sizeof(pd));
    pos = reseal(seg, LAST, edit_encoding);
    expect_damage("a compressed record relabelled stored is refused", pd, seg, pos,
                  -CV_ECORRUPT, "length does not match");

    seg = fresh_copy("d-zmagic", pd, sizeof(pd));
    pos = reseal(seg, LAST, edit_zstd_magic);
    expect_damage("a record whose zstd frame is not one is refused", pd, seg, pos,
                  -CV_ECORRUPT, "does not declare its length");
}

int main(void) {
    snprintf(root, sizeof(root), "/tmp/cv-test-compress-XXXXXX");
    if (!mkdtemp(root))
        die("mkdtemp");
    char err[512], kf[600];
    uint32_t id;
    snprintf(kf, sizeof(kf), "%s/log.key", root);
    if (cv_keyring_generate(kf, &id, err, sizeof(err)) ||
        cv_keyring_load(kf, &kr, err, sizeof(err)))
        die(err);
    test_round_trip();
    test_mixed();
    test_damage();
    cv_keyring_free(kr);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    if (system(cmd) != 0)
        return 1;
    return tap_done();
}
