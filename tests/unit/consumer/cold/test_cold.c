/*
 * Tests for the cold tier (consumer/cold/, consumer/applog/cold.c;
 * FORMAT.md "Cold tier") with a directory target, so no server is needed
 * (tests/integration/test_cold.py runs the same against S3): the stub's
 * line and its CRC, the hot window's syntax, shipping only sealed
 * segments, refusing a damaged one, reading every record back once the
 * local copies are gone, and a changed or lost copy reported as damage at
 * the stub, never skipped.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "applog/applog.h"
#include "cold/cold.h"
#include "keyring.h"
#include "tap.h"
#include "util.h"

#define TOPIC "chat.cold"
#define N_REC 600

static char root[256], logdir[300], pdir[400], remote[300], cache[300];
static cv_keyring *kr;

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void write_log(void) {
    char err[512];
    for (int session = 0; session < 3; session++) {
        cv_applog *log = NULL;
        if (cv_applog_open(logdir, kr, 8192, &log, err, sizeof(err)) < 0) {
            printf("# %s\n", err);
            die("cv_applog_open");
        }
        for (int64_t o = session * (N_REC / 3); o < (session + 1) * (N_REC / 3); o++) {
            char v[128];
            int n =
                snprintf(v, sizeof(v), "message %" PRId64 " of the cold tier test", o);
            cv_applog_entry e = {TOPIC, 0, o, 1700000000000 + o, v, (size_t)n, {0}};
            if (cv_applog_append(log, &e, 1, err, sizeof(err)) < 0)
                die("cv_applog_append");
        }
        cv_applog_free(log);
    }
}

/* Reads the partition; returns the records read, *ret_err the error. */
static int64_t read_all(int *ret_err, char *err, size_t errlen) {
    const char *dirs[] = {pdir};
    cv_applog_reader *rd = NULL;
    int r = cv_applog_reader_open(dirs, 1, kr, &rd, err, errlen);
    int64_t n = 0;
    cv_applog_record rec;
    if (r == 0) {
        while ((r = cv_applog_reader_next(rd, &rec, err, errlen)) == 1)
            n++;
    }
    *ret_err = r;
    cv_applog_reader_free(rd);
    return n;
}

typedef struct segs {
    char name[64][32];
    bool last[64], local[64], stub[64];
    int n;
} segs;

static int collect(void *opaque, const cv_applog_cold_seg *cs) {
    segs *s = opaque;
    if (s->n < 64) {
        snprintf(s->name[s->n], sizeof(s->name[0]), "%s", cs->name);
        s->last[s->n] = cs->last;
        s->local[s->n] = cs->local;
        s->stub[s->n] = cs->stub;
        s->n++;
    }
    return 0;
}

static void test_window(void) {
    int64_t s = 0;
    TAP_IS_INT(cv_cold_parse_window("7d", &s), 0, "hot window 7d parses");
    TAP_IS_INT(s, 7 * 86400, "7d is a week in seconds");
    cv_cold_parse_window("12h", &s);
    TAP_IS_INT(s, 12 * 3600, "12h");
    cv_cold_parse_window("0", &s);
    TAP_IS_INT(s, 0, "0: at once");
    cv_cold_parse_window("off", &s);
    TAP_IS_INT(s, -1, "off: keep local copies");
    TAP_IS_INT(cv_cold_parse_window("7w", &s), -EINVAL, "7w is refused");
    TAP_IS_INT(cv_cold_parse_window("-1d", &s), -EINVAL, "a negative window is refused");
}

static void test_targets(void) {
    char err[512];
    cv_cold *c = NULL;
    cv_cold_conf bad = {.target = "s3://Bad_Bucket/x", .cache_dir = cache};
    tap_ok(cv_cold_open(&bad, &c, err, sizeof(err)) == -EINVAL && strstr(err, "bucket"),
           "a bad bucket name is refused: %s", err);
    cv_cold_conf rel = {.target = "relative/dir", .cache_dir = cache};
    TAP_IS_INT(cv_cold_open(&rel, &c, err, sizeof(err)), -EINVAL,
               "a relative directory target is refused");
    unsetenv("AWS_ACCESS_KEY_ID");
    cv_cold_conf nocred = {.target = "s3://bucket/p", .cache_dir = cache};
    tap_ok(cv_cold_open(&nocred, &c, err, sizeof(err)) == -EINVAL &&
               strstr(err, "credentials"),
           "an s3 target without credentials is refused: %s", err);
}

int main(void) {
    char err[1024];
    snprintf(root, sizeof(root), "/tmp/cv-test-cold-XXXXXX");
    if (!mkdtemp(root))
        die("mkdtemp");
    snprintf(logdir, sizeof(logdir), "%s/log", root);
    snprintf(pdir, sizeof(pdir), "%s/" TOPIC "-0", logdir);
    snprintf(remote, sizeof(remote), "%s/remote", root);
    snprintf(cache, sizeof(cache), "%s/cache", root);
    char kf[300];
    snprintf(kf, sizeof(kf), "%s/log.key", root);
    uint32_t id;
    if (cv_keyring_generate(kf, &id, err, sizeof(err)) ||
        cv_keyring_load(kf, &kr, err, sizeof(err)))
        die("key");

    test_window();
    test_targets();
    write_log();

    segs s = {0};
    cv_applog_cold_walk(pdir, collect, &s, err, sizeof(err));
    tap_ok(s.n >= 4 && s.last[s.n - 1] && !s.last[0],
           "the walk sees %d segments, the last "
           "one marked last",
           s.n);

    cv_cold *c = NULL;
    char target[320];
    snprintf(target, sizeof(target), "file://%s", remote);
    cv_cold_conf conf = {.target = target, .cache_dir = cache};
    TAP_IS_INT(cv_cold_open(&conf, &c, err, sizeof(err)), 0, "a directory target opens");

    /* The stub: written after the checks, read back, its CRC checked. */
    cv_applog_cold_stub st;
    char key[128], path[600], stub[640];
    snprintf(key, sizeof(key), TOPIC "-0/%s", s.name[0]);
    TAP_IS_INT(cv_cold_ship(c, pdir, s.name[0], key, &st, err, sizeof(err)), 0,
               "the first segment ships");
    snprintf(stub, sizeof(stub), "%s/%s.cold", pdir, s.name[0]);
    cv_applog_cold_stub back;
    TAP_IS_INT(cv_applog_cold_stub_read(stub, &back, err, sizeof(err)), 0,
               "its stub reads back");
    tap_ok(back.bytes == st.bytes && back.records == st.records &&
               back.last_offset == st.last_offset && strcmp(back.key, key) == 0 &&
               memcmp(back.chain, st.chain, 32) == 0 &&
               memcmp(back.file_hash, st.file_hash, 32) == 0 && back.first_offset == 0,
           "the stub holds what was shipped");
    {
        FILE *f = fopen(stub, "r+");
        char line[2048];
        size_t n = fread(line, 1, sizeof(line), f);
        line[strlen("cvcold1 chat.cold 0 ")] ^= 1;
        rewind(f);
        fwrite(line, 1, n, f);
        fclose(f);
        TAP_IS_INT(cv_applog_cold_stub_read(stub, &back, err, sizeof(err)), -CV_ECORRUPT,
                   "a changed stub fails its CRC");
        TAP_IS_INT(cv_applog_cold_stub_write(pdir, &st, err, sizeof(err)), 0,
                   "the stub is written again");
    }

    /* A damaged segment is not shipped. */
    snprintf(path, sizeof(path), "%s/%s", pdir, s.name[1]);
    struct stat sb;
    stat(path, &sb);
    {
        FILE *f = fopen(path, "r+");
        fseek(f, sb.st_size / 2, SEEK_SET);
        int ch = fgetc(f);
        fseek(f, sb.st_size / 2, SEEK_SET);
        fputc(ch ^ 0x40, f);
        fclose(f);
        snprintf(key, sizeof(key), TOPIC "-0/%s", s.name[1]);
        TAP_IS_INT(cv_cold_ship(c, pdir, s.name[1], key, &st, err, sizeof(err)),
                   -CV_ECORRUPT, "a damaged segment is not shipped");
        snprintf(stub, sizeof(stub), "%s.cold", path);
        tap_ok(access(stub, F_OK) != 0, "and gets no stub");
        f = fopen(path, "r+");
        fseek(f, sb.st_size / 2, SEEK_SET);
        fputc(ch, f);
        fclose(f);
    }

    /* Ship every sealed one, remove the local copies, read it all back. */
    for (int i = 1; i < s.n - 1; i++) {
        snprintf(key, sizeof(key), TOPIC "-0/%s", s.name[i]);
        if (cv_cold_ship(c, pdir, s.name[i], key, &st, err, sizeof(err)) < 0)
            printf("# %s\n", err);
    }
    for (int i = 0; i < s.n - 1; i++) {
        snprintf(path, sizeof(path), "%s/%s", pdir, s.name[i]);
        unlink(path);
    }
    int r;
    cv_applog_set_cold_fetch(NULL, NULL);
    int64_t n = read_all(&r, err, sizeof(err));
    tap_ok(r == -ENOENT && strstr(err, "cold.target"),
           "without a fetch hook a cold segment fails the read: %s", err);
    cv_applog_set_cold_fetch(cv_cold_fetch, c);
    n = read_all(&r, err, sizeof(err));
    TAP_IS_INT(r, 0, "with the hook the reader reads to the end");
    if (r)
        printf("# %s\n", err);
    TAP_IS_INT(n, N_REC, "every record is read back");

    segs s2 = {0};
    cv_applog_cold_walk(pdir, collect, &s2, err, sizeof(err));
    tap_ok(s2.n == s.n && !s2.local[0] && s2.stub[0] && s2.local[s2.n - 1],
           "the walk shows the shipped segments as cold-only, the last as local");

    /* A changed copy in the target: damage at the stub. */
    char victim[600];
    snprintf(victim, sizeof(victim), "%s/" TOPIC "-0/%s", remote, s.name[2]);
    snprintf(path, sizeof(path), "%s/" TOPIC "-0/%s", cache, s.name[2]);
    unlink(path);
    {
        FILE *f = fopen(victim, "r+");
        fseek(f, 200, SEEK_SET);
        int ch = fgetc(f);
        fseek(f, 200, SEEK_SET);
        fputc(ch ^ 1, f);
        fclose(f);
    }
    n = read_all(&r, err, sizeof(err));
    tap_ok(r == -CV_ECORRUPT && strstr(err, "not what was shipped"),
           "a changed cold copy is damage: %s", err);
    {
        const char *dirs[] = {pdir};
        cv_applog_reader *rd = NULL;
        cv_applog_record rec;
        cv_applog_reader_open(dirs, 1, kr, &rd, err, sizeof(err));
        while (cv_applog_reader_next(rd, &rec, err, sizeof(err)) == 1)
            ;
        const char *file = NULL;
        uint64_t pos = 1;
        bool one = cv_applog_reader_damage(rd, &file, &pos);
        snprintf(stub, sizeof(stub), "%s/%s.cold", pdir, s.name[2]);
        tap_ok(one && file && strcmp(file, stub) == 0 && pos == 0,
               "the damage is named at the stub, byte 0 (%s)", file ? file : "-");
        cv_applog_reader_free(rd);
    }
    unlink(victim);
    n = read_all(&r, err, sizeof(err));
    tap_ok(r == -CV_ECORRUPT && strstr(err, s.name[2]), "a lost cold copy is damage: %s",
           err);

    cv_applog_set_cold_fetch(NULL, NULL);
    cv_cold_free(c);
    cv_keyring_free(kr);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    if (tap_failed == 0 && system(cmd) != 0)
        printf("# could not remove %s\n", root);
    printf("1..%d\n", tap_n);
    return tap_failed ? 1 : 0;
}
