/*
 * fuzz_applog — libFuzzer target for the log reader and crash recovery.
 *
 * Every input is written as the only segment of a partition directory (named
 * by the first offset its header claims, so the name check passes) and then
 * read three ways: by the reader with the key (frame check, authentication,
 * chain), by the segment lister without it, and by a writer that opens the
 * partition (recovery: torn-tail scan and truncation) and appends one
 * record. The contract checked: no crash, offsets ascend, every error names
 * the segment file, after a successful append the reader accepts the
 * whole directory, and recovery never cuts what the reader called damage:
 * where the reader stopped on an error the segment is left byte for byte
 * and the append fails; where it saw a torn tail, a successful append cut
 * the segment exactly there. Every input is run a second time with a seal
 * naming the segment at its full size (a clean stop): the reader must then
 * never see a torn tail. Seeds (tests/fuzz/corpus/applog/) are real segments
 * sealed with the fixed key below. Build with -Dfuzz=true (clang); run
 * tests/fuzz/run.sh.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "applog/applog.h"
#include "keyring.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The key the seed segments were written with (key id 1). */
#define FUZZ_KEY_LINE                                                                    \
    "key 1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"

static char root[64], logdir[128], partdir[192];
static cv_keyring *keys;

static void setup(void) {
    snprintf(root, sizeof(root), "/tmp/cv-fuzz-applog-XXXXXX");
    if (!mkdtemp(root))
        abort();
    char kf[128];
    snprintf(kf, sizeof(kf), "%s/log.key", root);
    int fd = open(kf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, FUZZ_KEY_LINE, strlen(FUZZ_KEY_LINE)) < 0)
        abort();
    close(fd);
    char err[512];
    if (cv_keyring_load(kf, &keys, err, sizeof(err)) < 0)
        abort();
    snprintf(logdir, sizeof(logdir), "%s/log", root);
    snprintf(partdir, sizeof(partdir), "%s/chat.fuzz-0", logdir);
}

static void clear_partition(void) {
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", partdir);
    if (system(cmd) != 0)
        abort();
    mkdir(logdir, 0700);
    mkdir(partdir, 0700);
}

static int count_segment(void *opaque, const cv_applog_segment_info *si) {
    (*(uint64_t *)opaque) += si->records;
    return 0;
}

/* Reads the directory; returns the last offset (or -1; -2 after an error),
 * aborts on a broken contract. *ret_torn: the byte a torn tail starts at,
 * or UINT64_MAX. */
static int64_t read_dir(bool must_be_clean, uint64_t *ret_torn) {
    const char *dirs[] = {partdir};
    cv_applog_reader *rd = NULL;
    char err[1024];
    int64_t last = -1;
    if (cv_applog_reader_open(dirs, 1, keys, &rd, err, sizeof(err)) < 0)
        abort();
    cv_applog_record rec;
    int r;
    while ((r = cv_applog_reader_next(rd, &rec, err, sizeof(err))) == 1) {
        if (rec.offset <= last)
            abort();
        last = rec.offset;
    }
    if (r < 0 && (!strstr(err, partdir) || strchr(err, '\n')))
        abort();
    if (r < 0 && must_be_clean)
        abort();
    uint64_t torn = UINT64_MAX;
    if (cv_applog_reader_torn(rd, 0, NULL, NULL))
        cv_applog_reader_torn(rd, 0, NULL, &torn);
    if (ret_torn)
        *ret_torn = torn;
    cv_applog_reader_free(rd);
    return r < 0 ? -2 : last;
}

/* A seal naming the segment at its full size; the chain and counts in it
 * are left as the input makes them, so it may well not match. */
static void write_seal(const char *name, size_t size) {
    char line[200], path[256];
    int n = snprintf(line, sizeof(line),
                     "cvseal1 %s %zu 0 -1 "
                     "0000000000000000000000000000000000000000000000000000000000000000",
                     name, size);
    /* CRC32C of the line, bitwise (the test does not trust the module). */
    uint32_t c = 0xffffffffu;
    for (int i = 0; i < n; i++) {
        c ^= (unsigned char)line[i];
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    snprintf(line + n, sizeof(line) - (size_t)n, " %08x\n", c ^ 0xffffffffu);
    snprintf(path, sizeof(path), "%s/sealed", partdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, line, strlen(line)) < 0)
        abort();
    close(fd);
}

static void run_one(const uint8_t *data, size_t size, bool sealed) {
    clear_partition();
    uint64_t first = 0;
    if (size >= 56) {
        for (int i = 48; i < 56; i++)
            first = first << 8 | data[i];
        if (first > INT64_MAX)
            first = 0;
    }
    char seg[256], name[64];
    snprintf(name, sizeof(name), "%020" PRIu64 ".cvlog", first);
    snprintf(seg, sizeof(seg), "%s/%s", partdir, name);
    int fd = open(seg, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size))
        abort();
    close(fd);
    if (sealed)
        write_seal(name, size);

    uint64_t torn;
    bool damaged = read_dir(false, &torn) == -2;
    if (sealed && torn != UINT64_MAX)
        abort(); /* a sealed segment never has a torn tail */
    uint64_t records = 0;
    char err[1024];
    cv_applog_segments(partdir, count_segment, &records, err, sizeof(err));

    cv_applog *log = NULL;
    if (cv_applog_open(logdir, keys, 1u << 20, &log, err, sizeof(err)) < 0)
        abort();
    static const char value[] = "fuzz";
    cv_applog_entry e = {"chat.fuzz", 0, INT64_MAX - 1, 0, value, sizeof(value) - 1, {0}};
    int r = cv_applog_append(log, &e, 1, err, sizeof(err));
    cv_applog_free(log);
    if (r == 0 && read_dir(true, NULL) != INT64_MAX - 1)
        abort();
    if (r < 0 && strchr(err, '\n'))
        abort();
    struct stat st;
    if (stat(seg, &st) < 0) {
        if (!(size == 0 || errno == ENOENT))
            abort();
        return;
    }
    /* Damage is never cut; a torn tail is cut where the reader saw it. */
    if (damaged && (uint64_t)st.st_size != size)
        abort();
    if (damaged && r == 0)
        abort();
    if (!damaged && torn != UINT64_MAX && r == 0 && (uint64_t)st.st_size != torn)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!keys)
        setup();
    run_one(data, size, false);
    run_one(data, size, true);
    return 0;
}
