/*
 * applog/cold.c — segments that live in the cold tier (FORMAT.md "Cold
 * tier"): the stub file that stands for a shipped segment, describing a
 * sealed segment by frame check and chain (what shipping and fetching
 * compare), the process-wide fetch hook the reader calls for a segment
 * that is only in the cold tier, and the walk over a partition's segments
 * that `chatvault cold` uses. Moving bytes to and from a target is not
 * here: consumer/cold/ does that and installs the hook.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static cv_applog_cold_fetch_fn *fetch_fn;
static void *fetch_opaque;

void cv_applog_set_cold_fetch(cv_applog_cold_fetch_fn *fn, void *opaque) {
    fetch_fn = fn;
    fetch_opaque = opaque;
}

/* The stub's one line (COLD TIER): magic, the fields, CRC32C of the text
 * before the CRC. */
static size_t stub_format(const cv_applog_cold_stub *st, char *buf, size_t len) {
    char ch[2 * DIGEST + 1], fh[2 * DIGEST + 1];
    sodium_bin2hex(ch, sizeof(ch), st->chain, DIGEST);
    sodium_bin2hex(fh, sizeof(fh), st->file_hash, DIGEST);
    int n = snprintf(buf, len,
                     COLD_MAGIC " %s %" PRId32 " %s %" PRIu64 " %" PRIu64 " %" PRId64
                                " %" PRId64 " %" PRId64 " %" PRIu32 " %s %s %s",
                     st->topic, st->partition, st->name, st->bytes, st->records,
                     st->first_offset, st->last_offset, st->created_us, st->key_id, ch,
                     fh, st->key);
    if (n < 0 || (size_t)n + 10 >= len)
        return 0;
    uint32_t c = cv_applog_i_crc32c(buf, (size_t)n);
    n += snprintf(buf + n, len - (size_t)n, " %08" PRIx32 "\n", c);
    return (size_t)n;
}

static bool key_ok(const char *k) {
    size_t n = strlen(k);
    if (!n || k[0] == '/' || strstr(k, ".."))
        return false;
    return strspn(k,
                  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/") ==
           n;
}

static const char *stub_parse(const char *text, size_t len, cv_applog_cold_stub *st) {
    char line[COLD_STUB_MAX];
    const char *bad =
        cv_applog_i_crc_line(text, len, line, sizeof(line), "not a cold-tier stub line",
                             "stub check (CRC32C) mismatch");
    if (bad)
        return bad;
    memset(st, 0, sizeof(*st));
    char ch[2 * DIGEST + 2], fh[2 * DIGEST + 2];
    int used = 0;
    if (sscanf(line,
               COLD_MAGIC " %255s %" SCNd32 " %31s %" SCNu64 " %" SCNu64 " %" SCNd64
                          " %" SCNd64 " %" SCNd64 " %" SCNu32 " %65s %65s %1023s%n",
               st->topic, &st->partition, st->name, &st->bytes, &st->records,
               &st->first_offset, &st->last_offset, &st->created_us, &st->key_id, ch, fh,
               st->key, &used) != 12 ||
        (size_t)used != strlen(line) || !cv_applog_i_is_seg_name(st->name, SEG_SUFFIX) ||
        strlen(ch) != 2 * DIGEST || strlen(fh) != 2 * DIGEST || !key_ok(st->key))
        return "malformed cold-tier stub line";
    if (sodium_hex2bin(st->chain, DIGEST, ch, 2 * DIGEST, NULL, NULL, NULL) != 0 ||
        sodium_hex2bin(st->file_hash, DIGEST, fh, 2 * DIGEST, NULL, NULL, NULL) != 0)
        return "malformed hash in cold-tier stub line";
    return NULL;
}

int cv_applog_cold_stub_read(const char *path, cv_applog_cold_stub *ret, char *errbuf,
                             size_t errlen) {
    int r = cv_applog_i_lib_init(errbuf, errlen);
    if (r < 0)
        return r;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        cv_errf(errbuf, errlen, "cold-tier stub %s: %s", path, strerror(e));
        return -e;
    }
    char buf[COLD_STUB_MAX];
    ssize_t n = read(fd, buf, sizeof(buf));
    int e = errno;
    close(fd);
    if (n < 0) {
        cv_errf(errbuf, errlen, "cold-tier stub %s: %s", path, strerror(e));
        return -e;
    }
    cv_applog_cold_stub st;
    const char *why = stub_parse(buf, (size_t)n, &st);
    if (why) {
        cv_errf(errbuf, errlen, "cold-tier stub %s at byte 0: %s (damaged)", path, why);
        return -CV_ECORRUPT;
    }
    *ret = st;
    return 0;
}

int cv_applog_cold_stub_write(const char *dir, const cv_applog_cold_stub *st,
                              char *errbuf, size_t errlen) {
    int r = cv_applog_i_lib_init(errbuf, errlen);
    if (r < 0)
        return r;
    char line[COLD_STUB_MAX], path[PATH_MAX];
    size_t n = stub_format(st, line, sizeof(line));
    if (!n || !key_ok(st->key)) {
        cv_errf(errbuf, errlen, "cold-tier stub for %s/%s: object key \"%s\" not usable",
                dir, st->name, st->key);
        return -EINVAL;
    }
    int pl = snprintf(path, sizeof(path), "%s/%s" COLD_SUFFIX_TAIL, dir, st->name);
    if (pl < 0 || (size_t)pl >= sizeof(path)) {
        cv_errf(errbuf, errlen, "cold-tier stub in %s: path too long", dir);
        return -ENAMETOOLONG;
    }
    return cv_replace_file(path, line, n, "cold-tier stub", errbuf, errlen);
}

int cv_applog_cold_describe(const char *path, cv_applog_cold_stub *ret, char *errbuf,
                            size_t errlen) {
    int r = cv_applog_i_lib_init(errbuf, errlen);
    if (r < 0)
        return r;
    seg s;
    r = cv_applog_i_seg_open(&s, path, errbuf, errlen);
    if (r < 0)
        return r;
    cv_buf none;
    cv_buf_init(&none, 0);
    rawrec rr;
    uint64_t at = 0;
    while ((r = cv_applog_i_seg_next(&s, NULL, &none, &rr, &at, errbuf, errlen)) == 1)
        ;
    if (r < 0) {
        cv_applog_i_seg_close(&s);
        return r;
    }
    cv_applog_cold_stub st;
    memset(&st, 0, sizeof(st));
    const char *slash = strrchr(path, '/');
    snprintf(st.name, sizeof(st.name), "%s", slash ? slash + 1 : path);
    snprintf(st.topic, sizeof(st.topic), "%s", s.h.topic);
    st.partition = s.h.partition;
    st.bytes = s.size;
    st.records = s.index;
    st.first_offset = s.h.first_offset;
    st.last_offset = s.last_offset;
    st.created_us = s.h.created_us;
    st.key_id = s.h.key_id;
    memcpy(st.chain, s.chain, DIGEST);
    crypto_generichash(st.file_hash, DIGEST, s.map, s.size, NULL, 0);
    cv_applog_i_seg_close(&s);
    *ret = st;
    return 0;
}

/* The file the reader reads for segment i of d: the local segment (0), or,
 * for a segment only in the cold tier, the verified copy the fetch hook
 * makes (1). A local segment removed since the listing (`chatvault cold
 * ship` removing it beside a running reader) is taken from its stub. */
int cv_applog_i_cold_path(const pdir *d, size_t i, char **ret, char *errbuf,
                          size_t errlen) {
    char *path = cv_applog_i_path_join(d->dir, d->names[i]);
    if (!path)
        return -ENOMEM;
    if (!d->cold || !d->cold[i]) {
        if (access(path, F_OK) == 0 || errno != ENOENT) {
            *ret = path;
            return 0;
        }
    }
    char stub[PATH_MAX];
    snprintf(stub, sizeof(stub), "%s" COLD_SUFFIX_TAIL, path);
    if ((!d->cold || !d->cold[i]) && access(stub, F_OK) != 0) {
        *ret = path; /* gone without a stub: seg_open reports it */
        return 0;
    }
    free(path);
    cv_applog_cold_stub st;
    int r = cv_applog_cold_stub_read(stub, &st, errbuf, errlen);
    if (r < 0)
        return r;
    if (strcmp(st.name, d->names[i]) != 0) {
        cv_errf(errbuf, errlen, "cold-tier stub %s at byte 0: names segment %s (damaged)",
                stub, st.name);
        return -CV_ECORRUPT;
    }
    if (!fetch_fn) {
        cv_errf(errbuf, errlen,
                "log segment %s/%s: only in the cold tier (object %s) and no cold "
                "target is configured to read it from (set cold.target)",
                d->dir, d->names[i], st.key);
        return -ENOENT;
    }
    char local[PATH_MAX];
    r = fetch_fn(fetch_opaque, stub, &st, local, sizeof(local), errbuf, errlen);
    if (r < 0)
        return r;
    if (!(*ret = strdup(local)))
        return -ENOMEM;
    return 1;
}

/* Merges a directory's cold-only segments (a stub without a local file)
 * into its sorted listing of segment names; d->cold[i] marks them. */
int cv_applog_i_cold_merge(pdir *d, char *errbuf, size_t errlen) {
    char **stubs = NULL;
    size_t nstub = 0;
    int r = cv_applog_i_list_names(d->dir, COLD_SUFFIX, &stubs, &nstub, errbuf, errlen);
    if (r < 0 || !nstub) {
        cv_applog_i_free_names(stubs, nstub);
        return r;
    }
    size_t cap = d->nseg + nstub;
    char **names = calloc(cap, sizeof(*names));
    unsigned char *cold = calloc(cap, 1);
    if (!names || !cold) {
        free(names);
        free(cold);
        cv_applog_i_free_names(stubs, nstub);
        return -ENOMEM;
    }
    size_t n = 0, a = 0, b = 0;
    while (a < d->nseg || b < nstub) {
        /* a stub name is the segment name and the tail: compare the digits */
        int c = a == d->nseg ? 1
                : b == nstub ? -1
                             : strncmp(d->names[a], stubs[b], NAME_DIGITS);
        if (c <= 0) {
            names[n++] = d->names[a++];
            if (c == 0)
                free(stubs[b++]); /* local copy still there: read it */
        } else {
            stubs[b][NAME_DIGITS + sizeof(SEG_SUFFIX) - 1] = '\0';
            cold[n] = 1;
            names[n++] = stubs[b++];
        }
    }
    free(stubs);
    free(d->names);
    d->names = names;
    d->nseg = n;
    d->cold = cold;
    return 0;
}

/* ---- the walk `chatvault cold` uses ------------------------------------ */

static int walk_dir(const char *dir, const char *rel, cv_applog_cold_walk_fn *fn,
                    void *opaque, char *errbuf, size_t errlen) {
    pdir d;
    memset(&d, 0, sizeof(d));
    d.dir = strdup(dir);
    if (!d.dir)
        return -ENOMEM;
    int r = cv_applog_i_list_names(dir, SEG_SUFFIX, &d.names, &d.nseg, errbuf, errlen);
    if (r == 0)
        r = cv_applog_i_cold_merge(&d, errbuf, errlen);
    if (r == 0) /* RETENTION: a dropped segment is not shipped */
        r = cv_applog_i_expiry_load(&d, errbuf, errlen);
    free(d.expired);
    for (size_t i = 0; i < d.nseg && r == 0; i++) {
        char key[PATH_MAX];
        snprintf(key, sizeof(key), "%s/%s", rel, d.names[i]);
        cv_applog_cold_seg cs = {
            .dir = dir,
            .name = d.names[i],
            .key = key,
            .local = !(d.cold && d.cold[i]),
            .last = i + 1 == d.nseg,
        };
        char stub[PATH_MAX];
        snprintf(stub, sizeof(stub), "%s/%s" COLD_SUFFIX_TAIL, dir, d.names[i]);
        cs.stub = !cs.local || access(stub, F_OK) == 0;
        r = fn(opaque, &cs);
    }
    cv_applog_i_free_names(d.names, d.nseg);
    free(d.cold);
    free(d.dir);
    return r;
}

int cv_applog_cold_walk(const char *partition_dir, cv_applog_cold_walk_fn *fn,
                        void *opaque, char *errbuf, size_t errlen) {
    const char *slash = strrchr(partition_dir, '/');
    const char *base = slash ? slash + 1 : partition_dir;
    int r = walk_dir(partition_dir, base, fn, opaque, errbuf, errlen);
    char **gens = NULL;
    size_t ngen = 0;
    if (r == 0)
        r = cv_applog_i_list_gen_dirs(partition_dir, &gens, &ngen, errbuf, errlen);
    for (size_t i = 0; i < ngen && r == 0; i++) {
        char *path = cv_applog_i_path_join(partition_dir, gens[i]);
        char rel[PATH_MAX];
        snprintf(rel, sizeof(rel), "%s/%s", base, gens[i]);
        r = path ? walk_dir(path, rel, fn, opaque, errbuf, errlen) : -ENOMEM;
        free(path);
    }
    cv_applog_i_free_names(gens, ngen);
    return r;
}
