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
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
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

static void write_log_to(const char *dir, int32_t partition) {
    char err[512];
    for (int session = 0; session < 3; session++) {
        cv_applog *log = NULL;
        if (cv_applog_open(dir, kr, 8192, &log, err, sizeof(err)) < 0) {
            printf("# %s\n", err);
            die("cv_applog_open");
        }
        for (int64_t o = session * (N_REC / 3); o < (session + 1) * (N_REC / 3); o++) {
            char v[128];
            int n =
                snprintf(v, sizeof(v), "message %" PRId64 " of the cold tier test", o);
            cv_applog_entry e = {TOPIC, partition, o,  1700000000000 + o,
                                 v,     (size_t)n, {0}};
            if (cv_applog_append(log, &e, 1, err, sizeof(err)) < 0)
                die("cv_applog_append");
        }
        cv_applog_free(log);
    }
}

static void write_log(void) {
    write_log_to(logdir, 0);
}

/* Reads the partition; returns the records read, *ret_err the error. */
static int64_t read_dir(const char *dir, int *ret_err, char *err, size_t errlen) {
    const char *dirs[] = {dir};
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

static int64_t read_all(int *ret_err, char *err, size_t errlen) {
    return read_dir(pdir, ret_err, err, errlen);
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

/* ---- the removal path, the places, an absent target ---------------------- */

static int count_suffix(const char *dir, const char *suffix) {
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "ls -1 '%s' 2>/dev/null | grep -c -- '%s$'", dir, suffix);
    FILE *f = popen(cmd, "r");
    int n = -1;
    if (!f || fscanf(f, "%d", &n) != 1)
        n = -1;
    if (f)
        pclose(f);
    return n;
}

static void flip_byte(const char *path, long at) {
    FILE *f = fopen(path, "r+");
    if (!f)
        die(path);
    fseek(f, at, SEEK_SET);
    int ch = fgetc(f);
    fseek(f, at, SEEK_SET);
    fputc(ch ^ 1, f);
    fclose(f);
}

static void make_old(const char *path) {
    struct timespec ts[2] = {{.tv_sec = time(NULL) - 7200},
                             {.tv_sec = time(NULL) - 7200}};
    utimensat(AT_FDCWD, path, ts, 0);
}

static void touch(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f)
        die(path);
    fputs("x\n", f);
    fclose(f);
    make_old(path);
}

static void test_places(const char *L, const char *R, const char *C) {
    char err[1024], t[700], p0[700];
    cv_cold *x = NULL;
    snprintf(t, sizeof(t), "file://%s", L);
    cv_cold_conf same = {.target = t, .cache_dir = C, .log_dir = L};
    tap_ok(cv_cold_open(&same, &x, err, sizeof(err)) == -EINVAL && strstr(err, "log.dir"),
           "a file target that is log.dir is refused: %s", err);
    snprintf(t, sizeof(t), "file://%s/" TOPIC "-0/", L);
    tap_ok(cv_cold_open(&same, &x, err, sizeof(err)) == -EINVAL,
           "a file target inside log.dir is refused");
    snprintf(t, sizeof(t), "file://%s", R);
    cv_cold_conf cl = {.target = t, .cache_dir = L, .log_dir = L};
    tap_ok(cv_cold_open(&cl, &x, err, sizeof(err)) == -EINVAL &&
               strstr(err, "cold.cache_dir"),
           "cold.cache_dir = log.dir is refused: %s", err);
    snprintf(p0, sizeof(p0), "%s/" TOPIC "-0", L);
    cl.cache_dir = p0;
    TAP_IS_INT(cv_cold_open(&cl, &x, err, sizeof(err)), -EINVAL,
               "a cache inside a partition directory is refused");
    cl.cache_dir = R;
    TAP_IS_INT(cv_cold_open(&cl, &x, err, sizeof(err)), -EINVAL,
               "a cache that is the target is refused");
    char dflt[700];
    snprintf(dflt, sizeof(dflt), "%s/.cold-cache", L);
    cl.cache_dir = dflt;
    TAP_IS_INT(cv_cold_open(&cl, &x, err, sizeof(err)), 0,
               "the default cache <log.dir>/.cold-cache is fine");
    x = cv_cold_free(x);

    /* Opened without log.dir: the pass checks the directory it ships. */
    snprintf(t, sizeof(t), "file://%s", L);
    cv_cold_conf nolog = {.target = t, .cache_dir = C};
    TAP_IS_INT(cv_cold_open(&nolog, &x, err, sizeof(err)), 0, "opens without log_dir");
    int before = count_suffix(p0, ".cvlog");
    cv_cold_ship_opts so = {.partition = -1, .hot_window_s = 0, .cache_keep_s = 0};
    cv_cold_ship_stats ss;
    tap_ok(cv_cold_ship_log(x, L, &so, &ss, err, sizeof(err)) == -EINVAL &&
               count_suffix(p0, ".cvlog") == before && count_suffix(p0, ".cold") == 0,
           "a pass to a target that is the log directory removes nothing: %s", err);
    x = cv_cold_free(x);
    nolog.target = "/nonexistent-target";
    nolog.cache_dir = L;
    TAP_IS_INT(cv_cold_open(&nolog, &x, err, sizeof(err)), 0, "opens (cache = log)");
    tap_ok(cv_cold_ship_log(x, L, &so, &ss, err, sizeof(err)) == -EINVAL &&
               count_suffix(p0, ".cvlog") == before,
           "a pass with cold.cache_dir = log.dir prunes nothing: %s", err);
    uint64_t pruned = 9;
    cv_cold_prune_cache(x, 0, &pruned);
    tap_ok(pruned == 0 && count_suffix(p0, ".cvlog") == before,
           "a cache without its marker is never pruned");
    x = cv_cold_free(x);
}

/* Two fetchers (as two processes would be: a cv_cold each) of one object
 * into one cache, the cache copy removed between rounds. */
typedef struct racer {
    cv_cold *c;
    const char *stub, *cache_copy;
    cv_applog_cold_stub st;
    int failures;
    char err[1024];
} racer;

static void *race(void *arg) {
    racer *x = arg;
    for (int i = 0; i < 40; i++) {
        char got[1024];
        unlink(x->cache_copy);
        if (cv_cold_fetch(x->c, x->stub, &x->st, got, sizeof(got), x->err,
                          sizeof(x->err)) < 0)
            x->failures++;
    }
    return NULL;
}

static void test_removal(void) {
    char err[1024], L[400], R[400], C[400], P0[500], P1[500], t[500];
    snprintf(L, sizeof(L), "%s/rlog", root);
    snprintf(R, sizeof(R), "%s/rremote", root);
    snprintf(C, sizeof(C), "%s/rcache", root);
    snprintf(P0, sizeof(P0), "%s/" TOPIC "-0", L);
    snprintf(P1, sizeof(P1), "%s/" TOPIC "-1", L);
    write_log_to(L, 0);
    write_log_to(L, 1);
    int n0 = count_suffix(P0, ".cvlog"), n1 = count_suffix(P1, ".cvlog");
    tap_ok(n0 >= 4 && n1 >= 4, "two partitions of %d and %d segments", n0, n1);
    test_places(L, R, C);

    segs s = {0};
    cv_applog_cold_walk(P0, collect, &s, err, sizeof(err));
    cv_cold *c = NULL;
    snprintf(t, sizeof(t), "file://%s", R);
    cv_cold_conf conf = {.target = t, .cache_dir = C, .log_dir = L};
    TAP_IS_INT(cv_cold_open(&conf, &c, err, sizeof(err)), 0, "the target opens");

    cv_cold_ship_opts so = {.partition = -1, .hot_window_s = 0, .cache_keep_s = -1};
    cv_cold_ship_stats ss = {0};
    so.dry_run = true;
    tap_ok(cv_cold_ship_log(c, L, &so, &ss, err, sizeof(err)) == 0 &&
               ss.shipped == (uint64_t)(n0 + n1 - 2) &&
               count_suffix(P0, ".cvlog") == n0 && count_suffix(P0, ".cold") == 0 &&
               access(R, F_OK) != 0,
           "a dry run ships and removes nothing");
    so.dry_run = false;
    so.hot_window_s = 3600;
    tap_ok(cv_cold_ship_log(c, L, &so, &ss, err, sizeof(err)) == 0 &&
               ss.shipped == (uint64_t)(n0 + n1 - 2) && ss.removed == 0 &&
               count_suffix(P0, ".cvlog") == n0 && count_suffix(P0, ".cold") == n0 - 1,
           "inside the hot window every segment ships and every local copy is kept: %s",
           err);
    char mark[500];
    snprintf(mark, sizeof(mark), "%s/.chatvault-cold", R);
    tap_ok(access(mark, F_OK) == 0, "the first ship writes the target's marker");

    /* The object changed (same size) since the ship: the local copy stays;
     * the failure stops partition 0 only. */
    char obj0[700], loc0[700], obj1[700];
    snprintf(obj0, sizeof(obj0), "%s/" TOPIC "-0/%s", R, s.name[0]);
    snprintf(obj1, sizeof(obj1), "%s/" TOPIC "-0/%s", R, s.name[1]);
    snprintf(loc0, sizeof(loc0), "%s/%s", P0, s.name[0]);
    flip_byte(obj0, 300);
    so.hot_window_s = 0;
    int r = cv_cold_ship_log(c, L, &so, &ss, err, sizeof(err));
    tap_ok(r == -EIO && strstr(err, "not what its stub says") &&
               access(loc0, F_OK) == 0 && count_suffix(P0, ".cvlog") == n0,
           "an object changed since its ship keeps every local copy of its partition: %s",
           err);
    tap_ok(ss.failed == 1 && count_suffix(P1, ".cvlog") == 1 &&
               ss.removed == (uint64_t)n1 - 1,
           "the other partition's pass goes on and removes its shipped copies");
    flip_byte(obj0, 300);

    /* The local copy differs from its stub: refused, kept. */
    flip_byte(loc0, 300);
    r = cv_cold_ship_log(c, L, &so, &ss, err, sizeof(err));
    tap_ok(r < 0 && access(loc0, F_OK) == 0 && strstr(err, "kept"),
           "a local copy that differs from its stub is kept: %s", err);
    flip_byte(loc0, 300);

    /* The object is gone, the target there: the local copy is kept. */
    char away[800];
    snprintf(away, sizeof(away), "%s.away", obj0);
    rename(obj0, away);
    r = cv_cold_ship_log(c, L, &so, &ss, err, sizeof(err));
    tap_ok(r == -ENOENT && access(loc0, F_OK) == 0,
           "an object gone from the target keeps the local copy: %s", err);
    rename(away, obj0);

    r = cv_cold_ship_log(c, L, &so, &ss, err, sizeof(err));
    char last[700], last_stub[720];
    snprintf(last, sizeof(last), "%s/%s", P0, s.name[s.n - 1]);
    snprintf(last_stub, sizeof(last_stub), "%s.cold", last);
    tap_ok(r == 0 && count_suffix(P0, ".cvlog") == 1 && access(last, F_OK) == 0 &&
               access(last_stub, F_OK) != 0,
           "past the hot window the shipped copies go; the last segment, never shipped, "
           "stays: %s",
           r ? err : "");

    /* An absent target (not mounted, marker gone) is not damage. */
    cv_applog_set_cold_fetch(cv_cold_fetch, c);
    char gone[500];
    snprintf(gone, sizeof(gone), "%s.unmounted", R);
    rename(R, gone);
    int64_t n = read_dir(P0, &r, err, sizeof(err));
    tap_ok(r == -ENXIO && strstr(err, "not there"),
           "a missing target directory is -ENXIO, not damage: %s", err);
    mkdir(R, 0700); /* an empty mount point: no marker, no objects */
    n = read_dir(P0, &r, err, sizeof(err));
    tap_ok(r == -ENXIO && strstr(err, ".chatvault-cold"),
           "an empty target directory without its marker is -ENXIO, not damage: %s", err);
    rmdir(R);
    rename(gone, R);
    /* A leftover at the old fixed temp name does not get in the way. */
    char oldtmp[800];
    snprintf(oldtmp, sizeof(oldtmp), "%s/" TOPIC "-0/%s.tmp", C, s.name[0]);
    mkdir(oldtmp, 0700);
    n = read_dir(P0, &r, err, sizeof(err));
    tap_ok(r == 0 && n == N_REC,
           "with the target back every record reads (%" PRId64 ") %s", n, r ? err : "");
    rmdir(oldtmp);
    /* The object gone while the target is there: damage. */
    snprintf(obj1, sizeof(obj1), "%s/" TOPIC "-0/%s", C, s.name[1]);
    unlink(obj1);
    snprintf(obj1, sizeof(obj1), "%s/" TOPIC "-0/%s", R, s.name[1]);
    unlink(obj1);
    n = read_dir(P0, &r, err, sizeof(err));
    TAP_IS_INT(r, -CV_ECORRUPT, "an object missing from a present target is damage");
    cv_applog_set_cold_fetch(NULL, NULL);

    /* Two fetches of one object at once never see each other's bytes. */
    {
        racer a = {0}, b = {0};
        char stubp[700], copy[800];
        snprintf(stubp, sizeof(stubp), "%s/%s.cold", P0, s.name[0]);
        snprintf(copy, sizeof(copy), "%s/" TOPIC "-0/%s", C, s.name[0]);
        cv_applog_cold_stub_read(stubp, &a.st, err, sizeof(err));
        b.st = a.st;
        a.stub = b.stub = stubp;
        a.cache_copy = b.cache_copy = copy;
        a.c = c;
        cv_cold_open(&conf, &b.c, err, sizeof(err));
        pthread_t ta, tb;
        pthread_create(&ta, NULL, race, &a);
        pthread_create(&tb, NULL, race, &b);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        tap_ok(a.failures == 0 && b.failures == 0,
               "two fetchers of one object into one cache: no false damage (%d, %d) %s",
               a.failures, b.failures, a.failures ? a.err : b.err);
        cv_cold_free(b.c);
    }

    /* The object at a key holds another segment (the segment changed after
     * its ship, or another log): re-shipping says so, and overwrites
     * nothing. */
    {
        char o2[700], o3[700], st2[700], k[200];
        snprintf(o2, sizeof(o2), "%s/" TOPIC "-1/%s", R, s.name[1]);
        snprintf(o3, sizeof(o3), "%s/" TOPIC "-1/%s", R, s.name[2]);
        snprintf(st2, sizeof(st2), "%s/%s.cold", P1, s.name[1]);
        char loc[700];
        snprintf(loc, sizeof(loc), "%s/%s", P1, s.name[1]);
        /* bring the local copy back from the object, then swap the object */
        char cmd[4000];
        snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && cp '%s' '%s' && rm -f '%s'", o2, loc,
                 o3, o2, st2);
        if (system(cmd) != 0)
            die("cp");
        snprintf(k, sizeof(k), TOPIC "-1/%s", s.name[1]);
        cv_applog_cold_stub st;
        tap_ok(cv_cold_ship(c, P1, s.name[1], k, &st, err, sizeof(err)) == -EEXIST &&
                   strstr(err, "changed after it was shipped") &&
                   strstr(err, "not overwritten") && access(st2, F_OK) != 0,
               "an object holding other bytes: -EEXIST saying what happened: %s", err);
    }

    /* A put never overwrites an object. */
    {
        char k[200], o2[700];
        struct stat before, after;
        snprintf(k, sizeof(k), TOPIC "-0/%s", s.name[2]);
        snprintf(o2, sizeof(o2), "%s/%s", R, k);
        stat(o2, &before);
        TAP_IS_INT(cv_cold_put(c, k, last, err, sizeof(err)), -EEXIST,
                   "a put onto an object that is there is -EEXIST");
        stat(o2, &after);
        tap_ok(before.st_ino == after.st_ino && before.st_size == after.st_size,
               "and the object is untouched");
    }

    /* Pruning: only cache copies, never a log's directory. */
    char f[800], sub[700];
    snprintf(f, sizeof(f), "%s/.chatvault-cache", C);
    tap_ok(access(f, F_OK) == 0, "the cache carries its marker");
    snprintf(f, sizeof(f), "%s/notes.txt", C);
    touch(f);
    snprintf(sub, sizeof(sub), "%s/alog", C);
    mkdir(sub, 0700);
    snprintf(f, sizeof(f), "%s/00000000000000000000.cvlog", sub);
    touch(f);
    snprintf(f, sizeof(f), "%s/sealed", sub);
    touch(f);
    snprintf(f, sizeof(f), "%s/" TOPIC "-0/%s", C, s.name[2]);
    make_old(f);
    uint64_t pruned = 0;
    cv_cold_prune_cache(c, 3600, &pruned);
    snprintf(sub, sizeof(sub), "%s/alog/00000000000000000000.cvlog", C);
    char notes[700];
    snprintf(notes, sizeof(notes), "%s/notes.txt", C);
    tap_ok(pruned == 1 && access(f, F_OK) != 0 && access(sub, F_OK) == 0 &&
               access(notes, F_OK) == 0,
           "prune removes the old cache copy (%" PRIu64 ") and leaves other files and a "
           "sealed directory alone",
           pruned);
    cv_cold_free(c);
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

    /* Ship every sealed one and remove the local copies through a pass,
     * read it all back. */
    {
        cv_cold_ship_opts so = {.partition = -1, .hot_window_s = 0, .cache_keep_s = -1};
        cv_cold_ship_stats ss = {0};
        int pr = cv_cold_ship_log(c, logdir, &so, &ss, err, sizeof(err));
        tap_ok(pr == 0 && ss.shipped == (uint64_t)s.n - 2 &&
                   ss.removed == (uint64_t)s.n - 1,
               "a pass ships the rest and removes every sealed local copy (%d: %s)", pr,
               pr ? err : "");
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
    test_removal();
    cv_keyring_free(kr);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    if (tap_failed == 0 && system(cmd) != 0)
        printf("# could not remove %s\n", root);
    printf("1..%d\n", tap_n);
    return tap_failed ? 1 : 0;
}
