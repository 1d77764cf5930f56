/*
 * applog/expiry.c — sealed segments dropped by retention (FORMAT.md
 * "Retention"): the record of them that stays in their directory, the
 * reader's use of it (a segment that chains across dropped ones is not a
 * missing segment), and finding which sealed segments a retention rule
 * lets go.
 *
 * The record is the file <dir>/expired, one line per dropped segment,
 * rewritten whole (temp file, fdatasync, rename, fsync of the directory)
 * before any segment it names is removed. Each line is authenticated with
 * a key of the key file, so a line cannot be added to hide a deletion by
 * someone without the keys; the CRC32C at its end tells damage apart from
 * forgery when the keys are not at hand.
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
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define EXPIRY_FILE "expired"
#define EXPIRY_MAGIC "cvexp1"
#define EXPIRY_LINE_MAX 512
#define EXPIRY_MAC 32
#define EXPIRY_MAC_CONTEXT "chatvault log expiry record"

/* MAC = BLAKE2b-256 keyed with the key, over the context string and the
 * line's fields before the MAC. */
/* The directory a record belongs to, as the MAC binds it: "<topic>-<partition>"
 * or "<topic>-<partition>/gen-<start>", so a record moved to another
 * partition or generation does not authenticate there. */
static void expiry_scope(const char *dir, char *buf, size_t len) {
    size_t l = strlen(dir);
    while (l > 1 && dir[l - 1] == '/')
        l--;
    const char *end = dir + l, *p = end;
    while (p > dir && p[-1] != '/')
        p--;
    if (strncmp(p, GEN_PREFIX, sizeof(GEN_PREFIX) - 1) == 0 && p > dir) {
        const char *q = p - 1;
        while (q > dir && q[-1] != '/')
            q--;
        p = q;
    }
    snprintf(buf, len, "%.*s", (int)(end - p), p);
}

static void expiry_mac(unsigned char *out, const unsigned char *key, const char *scope,
                       const char *fields, size_t len) {
    crypto_generichash_state st;
    crypto_generichash_init(&st, key, CV_KEY_BYTES, EXPIRY_MAC);
    crypto_generichash_update(&st, (const unsigned char *)EXPIRY_MAC_CONTEXT,
                              sizeof(EXPIRY_MAC_CONTEXT));
    crypto_generichash_update(&st, (const unsigned char *)scope, strlen(scope) + 1);
    crypto_generichash_update(&st, (const unsigned char *)fields, len);
    crypto_generichash_final(&st, out, EXPIRY_MAC);
}

/* The fields of a line, without MAC and CRC. */
static int expiry_fields(const cv_applog_expiry *e, char *buf, size_t len) {
    char prev[2 * DIGEST + 1], last[2 * DIGEST + 1];
    sodium_bin2hex(prev, sizeof(prev), e->prev_chain, DIGEST);
    sodium_bin2hex(last, sizeof(last), e->last_chain, DIGEST);
    return snprintf(buf, len,
                    EXPIRY_MAGIC " %s %" PRId64 " %" PRId64 " %" PRIu64 " %" PRIu64
                                 " %s %s %" PRId64 " %" PRIu32,
                    e->segment, e->first_offset, e->last_offset, e->records, e->bytes,
                    prev, last, e->expired_at_us, e->key_id);
}

static int expiry_format(const cv_applog_expiry *e, const unsigned char *key,
                         const char *scope, char *buf, size_t len) {
    int n = expiry_fields(e, buf, len);
    if (n < 0 || (size_t)n + 2 * EXPIRY_MAC + 12 >= len)
        return -ENAMETOOLONG;
    unsigned char mac[EXPIRY_MAC];
    expiry_mac(mac, key, scope, buf, (size_t)n);
    buf[n++] = ' ';
    sodium_bin2hex(buf + n, len - (size_t)n, mac, EXPIRY_MAC);
    n += 2 * EXPIRY_MAC;
    uint32_t c = cv_applog_i_crc32c(buf, (size_t)n);
    n += snprintf(buf + n, len - (size_t)n, " %08" PRIx32 "\n", c);
    return n;
}

/* Parses one line (with its newline) into *e; NULL or what is wrong. */
static const char *expiry_parse(const char *text, size_t len, const cv_keyring *keys,
                                const char *scope, cv_applog_expiry *e) {
    char line[EXPIRY_LINE_MAX];
    const char *bad =
        cv_applog_i_crc_line(text, len, line, sizeof(line), "not an expiry line",
                             "expiry line check (CRC32C) mismatch");
    if (bad)
        return bad;
    char *sp = strrchr(line, ' ');
    if (!sp)
        return "malformed expiry line";
    char machx[2 * EXPIRY_MAC + 2];
    snprintf(machx, sizeof(machx), "%s", sp + 1);
    *sp = '\0';
    char name[32], prev[2 * DIGEST + 2], last[2 * DIGEST + 2];
    int used = 0;
    memset(e, 0, sizeof(*e));
    if (sscanf(line,
               EXPIRY_MAGIC " %31s %" SCNd64 " %" SCNd64 " %" SCNu64 " %" SCNu64
                            " %65s %65s %" SCNd64 " %" SCNu32 "%n",
               name, &e->first_offset, &e->last_offset, &e->records, &e->bytes, prev,
               last, &e->expired_at_us, &e->key_id, &used) != 9 ||
        (size_t)used != strlen(line) || !cv_applog_i_is_seg_name(name, SEG_SUFFIX) ||
        strlen(prev) != 2 * DIGEST || strlen(last) != 2 * DIGEST ||
        strlen(machx) != 2 * EXPIRY_MAC ||
        sodium_hex2bin(e->prev_chain, DIGEST, prev, 2 * DIGEST, NULL, NULL, NULL) != 0 ||
        sodium_hex2bin(e->last_chain, DIGEST, last, 2 * DIGEST, NULL, NULL, NULL) != 0)
        return "malformed expiry line";
    snprintf(e->segment, sizeof(e->segment), "%s", name);
    if (!keys)
        return NULL;
    const unsigned char *key = cv_keyring_get(keys, e->key_id);
    if (!key)
        return "its key id is not in the key file";
    unsigned char want[EXPIRY_MAC], got[EXPIRY_MAC];
    expiry_mac(want, key, scope, line, strlen(line));
    if (sodium_hex2bin(got, sizeof(got), machx, 2 * EXPIRY_MAC, NULL, NULL, NULL) != 0 ||
        sodium_memcmp(want, got, EXPIRY_MAC) != 0)
        return "not authentic (its MAC does not match: written without the key file, or "
               "changed)";
    return NULL;
}

int cv_applog_expiry_read(const char *dir, const cv_keyring *keys, cv_applog_expiry **ret,
                          size_t *ret_n, char *errbuf, size_t errlen) {
    *ret = NULL;
    *ret_n = 0;
    int r = cv_applog_i_lib_init(errbuf, errlen);
    if (r < 0)
        return r;
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/" EXPIRY_FILE, dir) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    struct stat st;
    if (stat(path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        int e = errno;
        cv_errf(errbuf, errlen, "log expiry record %s: %s", path, strerror(e));
        return -e;
    }
    char *text;
    size_t len;
    r = cv_read_file(path, "log expiry record", (size_t)st.st_size, false, &text, &len,
                     errbuf, errlen);
    if (r < 0)
        return r;
    char scope[600];
    expiry_scope(dir, scope, sizeof(scope));
    cv_applog_expiry *v = NULL;
    size_t n = 0, cap = 0, lineno = 0;
    for (size_t at = 0; at < len && r >= 0;) {
        const char *nl = memchr(text + at, '\n', len - at);
        size_t l = nl ? (size_t)(nl - (text + at)) + 1 : len - at;
        lineno++;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 16;
            cv_applog_expiry *nv = realloc(v, nc * sizeof(*v));
            if (!nv) {
                r = -ENOMEM;
                break;
            }
            v = nv;
            cap = nc;
        }
        const char *why = expiry_parse(text + at, l, keys, scope, &v[n]);
        if (why) {
            cv_errf(errbuf, errlen, "log expiry record %s line %zu: %s", path, lineno,
                    why);
            r = -CV_ECORRUPT;
            break;
        }
        n++;
        at += l;
    }
    free(text);
    if (r < 0) {
        free(v);
        return r;
    }
    *ret = v;
    *ret_n = n;
    return 1;
}

static bool listed(const cv_applog_expiry *v, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].segment, name) == 0)
            return true;
    return false;
}

int cv_applog_expiry_add(const char *dir, const cv_keyring *keys,
                         const cv_applog_expiry *add, size_t nadd, char *errbuf,
                         size_t errlen) {
    cv_applog_expiry *old;
    size_t nold;
    int r = cv_applog_expiry_read(dir, keys, &old, &nold, errbuf, errlen);
    if (r < 0)
        return r;
    char scope[600];
    expiry_scope(dir, scope, sizeof(scope));
    uint32_t kid = cv_keyring_newest(keys);
    const unsigned char *key = cv_keyring_get(keys, kid);
    size_t total = nold + nadd, used = 0;
    char *buf = malloc(total * EXPIRY_LINE_MAX + 1);
    if (!buf) {
        free(old);
        return -ENOMEM;
    }
    /* Old lines keep the key that wrote them: they are rewritten as read. */
    for (size_t i = 0; i < total && r >= 0; i++) {
        cv_applog_expiry e = i < nold ? old[i] : add[i - nold];
        if (i >= nold) {
            if (listed(old, nold, e.segment) || listed(add, i - nold, e.segment))
                continue;
            e.key_id = kid;
        }
        const unsigned char *k = i < nold ? cv_keyring_get(keys, e.key_id) : key;
        int n = expiry_format(&e, k, scope, buf + used, EXPIRY_LINE_MAX);
        if (n < 0)
            r = n;
        else
            used += (size_t)n;
    }
    free(old);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/" EXPIRY_FILE, dir);
    if (r >= 0)
        r = cv_replace_file(path, buf, used, "log expiry record", errbuf, errlen);
    else
        cv_errf(errbuf, errlen, "log expiry record %s: %s", path, strerror(-r));
    free(buf);
    return r < 0 ? r : 0;
}

int cv_applog_expiry_remove(const char *dir, const cv_applog_expiry *v, size_t n,
                            uint64_t *ret_removed, char *errbuf, size_t errlen) {
    uint64_t removed = 0;
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", dir, v[i].segment);
        if (unlink(path) == 0)
            removed++;
        else if (errno != ENOENT) {
            int e = errno;
            cv_errf(errbuf, errlen, "removing expired log segment %s: %s", path,
                    strerror(e));
            return -e;
        }
    }
    if (ret_removed)
        *ret_removed = removed;
    if (removed == 0)
        return 0;
    int r = cv_fsync_dir(dir);
    if (r < 0)
        cv_errf(errbuf, errlen, "fsync of log directory %s: %s", dir, strerror(-r));
    return r;
}

/* ---- the reader's side ------------------------------------------------ */

/* A recorded segment whose file is still there (a run that stopped before
 * removing it) must be the one recorded: a stale or moved record must not
 * hide another segment. */
static int check_still_there(const pdir *d, const char *name, char *errbuf,
                             size_t errlen) {
    const cv_applog_expiry *e = NULL;
    for (size_t i = 0; i < d->nexpired && !e; i++)
        if (strcmp(d->expired[i].segment, name) == 0)
            e = &d->expired[i];
    char *path = cv_applog_i_path_join(d->dir, name);
    if (!path)
        return -ENOMEM;
    seg s;
    memset(&s, 0, sizeof(s));
    int r = access(path, F_OK) == 0 ? cv_applog_i_seg_open(&s, path, errbuf, errlen) : 1;
    if (r == 0) {
        if (s.h.first_offset != e->first_offset ||
            sodium_memcmp(s.h.prev_chain, e->prev_chain, DIGEST) != 0) {
            cv_errf(
                errbuf, errlen,
                "log segment %s at byte 0: the expiry record names it as dropped, but "
                "its header is another segment's (a stale or moved record)",
                path);
            r = -CV_ECORRUPT;
        }
        cv_applog_i_seg_close(&s);
    }
    free(path);
    return r < 0 ? r : 0;
}

int cv_applog_i_expiry_load(pdir *d, char *errbuf, size_t errlen) {
    int r =
        cv_applog_expiry_read(d->dir, d->keys, &d->expired, &d->nexpired, errbuf, errlen);
    if (r <= 0)
        return r;
    /* A segment retention dropped is not read, even while its file is
     * still there (retention records first, removes after). */
    size_t k = 0;
    for (size_t i = 0; i < d->nseg; i++) {
        if (listed(d->expired, d->nexpired, d->names[i])) {
            if ((r = check_still_there(d, d->names[i], errbuf, errlen)) < 0) {
                for (size_t j = i; j < d->nseg; j++)
                    d->names[k++] = d->names[j];
                d->nseg = k;
                return r;
            }
            free(d->names[i]);
            continue;
        }
        if (d->cold)
            d->cold[k] = d->cold[i];
        d->names[k++] = d->names[i];
    }
    d->nseg = k;
    return 0;
}

bool cv_applog_i_expiry_links(const pdir *d, const char *name) {
    for (size_t i = 0; i < d->nexpired; i++)
        if (strcmp(d->expired[i].segment, name) == 0)
            return true;
    return false;
}

/* No recorded segment of the directory starts below `first`. */
static bool oldest(const pdir *d, int64_t first) {
    for (size_t i = 0; i < d->nexpired; i++)
        if (d->expired[i].first_offset < first)
            return false;
    return true;
}

int cv_applog_i_expiry_bridges(const pdir *d, const seghdr *h, const char **why) {
    static const unsigned char zero[DIGEST];
    /* Walk back from the segment's link over dropped segments, each of
     * which must chain to the one before it, to where the directory's
     * reading stands, or, for its first segment, to the directory's start
     * or to history before the oldest dropped segment recorded. */
    const unsigned char *want = h->prev_chain;
    int64_t below = h->first_offset;
    size_t steps = 0;
    *why = NULL;
    for (;;) {
        if (d->any && sodium_memcmp(want, d->chain, DIGEST) == 0)
            return steps > 0;
        const cv_applog_expiry *e = NULL;
        for (size_t i = 0; i < d->nexpired && !e; i++)
            if (sodium_memcmp(d->expired[i].last_chain, want, DIGEST) == 0 &&
                d->expired[i].last_offset < below)
                e = &d->expired[i];
        if (!e) {
            if (steps == 0)
                return 0;
            /* The first segment read: a reading that skipped to a later
             * segment takes the link on trust; a generation's chain may
             * start before its oldest recorded segment. The partition
             * directory's chain starts at zeros (see above). */
            if (!d->any && (d->iseg > 0 || (d->gen != 0 && oldest(d, below))))
                return 1;
            *why = d->any
                       ? "header chains to segments retention dropped, but they do not "
                         "chain back to the segment before it (segment dropped, "
                         "replaced or reordered)"
                       : "header chains to segments retention dropped, but they do not "
                         "chain back to the directory's start (a segment between them "
                         "was removed)";
            return -1;
        }
        if (++steps > d->nexpired) {
            *why = "the expiry record's links form a loop (damaged)";
            return -1;
        }
        want = e->prev_chain;
        below = e->first_offset;
        if (!d->any && sodium_memcmp(want, zero, DIGEST) == 0)
            return 1;
    }
}

/* ---- what retention may drop ------------------------------------------ */

void cv_applog_expiry_candidates_free(cv_applog_expiry_candidate *c, size_t n) {
    for (size_t i = 0; c && i < n; i++) {
        free(c[i].dir);
        free(c[i].src);
    }
    free(c);
}

static bool exists(const char *dir, const char *name, const char *suffix) {
    char p[PATH_MAX];
    int l = snprintf(p, sizeof(p), "%s/%s%s", dir, name, suffix);
    return l > 0 && (size_t)l < sizeof(p) && access(p, F_OK) == 0;
}

static bool in_repair_dir(const char *file) {
    char d[PATH_MAX];
    snprintf(d, sizeof(d), "%s", file);
    char *slash = strrchr(d, '/');
    if (slash)
        *slash = '\0';
    return slash && cv_applog_i_is_repair_dir(d);
}

/* The directory of a record read from a fetched cold-tier copy: its
 * generation's, when a stub there stands for a segment of that name. */
static char *cold_dir_of(const char *partition_dir, const cv_applog_record *rec,
                         const char *name) {
    char d[PATH_MAX];
    int l = rec->generation ? snprintf(d, sizeof(d), "%s/" GEN_PREFIX "%020" PRId64,
                                       partition_dir, rec->generation)
                            : snprintf(d, sizeof(d), "%s", partition_dir);
    if (l < 0 || (size_t)l >= sizeof(d) || !exists(d, name, COLD_SUFFIX_TAIL) ||
        exists(d, name, ""))
        return NULL;
    return strdup(d);
}

/* The directory of `file` when it is the partition directory or one of its
 * generations (not a repair directory, not a cold-tier cache), else NULL. */
static char *chain_dir_of(const char *partition_dir, const char *file) {
    const char *slash = strrchr(file, '/');
    if (!slash)
        return NULL;
    size_t dl = (size_t)(slash - file), pl = strlen(partition_dir);
    while (pl > 1 && partition_dir[pl - 1] == '/')
        pl--;
    if (dl < pl || strncmp(file, partition_dir, pl) != 0)
        return NULL;
    const char *rest = file + pl; /* "" or "/gen-..." before the slash */
    if (dl != pl) {
        size_t gl = sizeof(GEN_PREFIX) - 1;
        if (rest[0] != '/' || dl - pl != 1 + gl + NAME_DIGITS ||
            strncmp(rest + 1, GEN_PREFIX, gl) != 0)
            return NULL;
    }
    char *d = malloc(dl + 1);
    if (d) {
        memcpy(d, file, dl);
        d[dl] = '\0';
    }
    return d;
}

static bool is_file(const cv_applog_expiry_candidate *c, const char *file) {
    return c->src && strcmp(c->src, file) == 0;
}

/* Fills what the header says: link, first offset, size, created. */
static int describe_header(cv_applog_expiry_candidate *c, int64_t *created_us,
                           int64_t *mtime_ms, char *errbuf, size_t errlen) {
    seg s;
    memset(&s, 0, sizeof(s));
    int r = cv_applog_i_seg_open(&s, c->src, errbuf, errlen);
    if (r < 0)
        return r;
    memcpy(c->e.prev_chain, s.h.prev_chain, DIGEST);
    c->e.first_offset = s.h.first_offset;
    c->e.bytes = s.size;
    *created_us = s.h.created_us;
    cv_applog_i_seg_close(&s);
    struct stat st;
    *mtime_ms = stat(c->src, &st) == 0
                    ? (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000
                    : INT64_MAX;
    return 0;
}

/* The last segment name of the partition directory and of each of its
 * generations, taken before reading: every segment named below it was
 * sealed then, so what the read finds of it is all it will ever hold. */
typedef struct last_seg {
    char *dir;
    char name[NAME_DIGITS + 8];
} last_seg;

static int snapshot_last(const char *partition_dir, last_seg **ret, size_t *ret_n,
                         char *errbuf, size_t errlen) {
    char **gens = NULL;
    size_t ngen = 0;
    *ret = NULL;
    *ret_n = 0;
    int r = cv_applog_i_list_gen_dirs(partition_dir, &gens, &ngen, errbuf, errlen);
    last_seg *v = r == 0 ? calloc(ngen + 1, sizeof(*v)) : NULL;
    if (r == 0 && !v)
        r = -ENOMEM;
    for (size_t i = 0; r == 0 && i <= ngen; i++) {
        v[i].dir = i == 0 ? strdup(partition_dir)
                          : cv_applog_i_path_join(partition_dir, gens[i - 1]);
        char **names = NULL;
        size_t nn = 0;
        r = v[i].dir ? cv_applog_i_list_names(v[i].dir, SEG_SUFFIX, &names, &nn, errbuf,
                                              errlen)
                     : -ENOMEM;
        if (r == 0 && nn)
            snprintf(v[i].name, sizeof(v[i].name), "%s", names[nn - 1]);
        cv_applog_i_free_names(names, nn);
        *ret_n = i + 1;
    }
    cv_applog_i_free_names(gens, ngen);
    *ret = v;
    return r;
}

static void free_last(last_seg *v, size_t n) {
    for (size_t i = 0; v && i < n; i++)
        free(v[i].dir);
    free(v);
}

/* Sealed when the read began: its directory had a later segment then. */
static bool sealed_before(const last_seg *v, size_t n, const char *dir,
                          const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].dir, dir) == 0)
            return v[i].name[0] && strcmp(name, v[i].name) < 0;
    return false;
}

int cv_applog_expiry_candidates(const char *partition_dir, const cv_keyring *keys,
                                cv_applog_expiry_keep_fn *keep, void *opaque,
                                cv_applog_expiry_candidate **ret, size_t *ret_n,
                                char *errbuf, size_t errlen) {
    *ret = NULL;
    *ret_n = 0;
    last_seg *lasts;
    size_t nlasts;
    int r = snapshot_last(partition_dir, &lasts, &nlasts, errbuf, errlen);
    const char *dirs[1] = {partition_dir};
    cv_applog_reader *rd = NULL;
    if (r == 0)
        r = cv_applog_reader_open(dirs, 1, keys, &rd, errbuf, errlen);
    if (r < 0) {
        free_last(lasts, nlasts);
        return r;
    }
    cv_applog_expiry_candidate *v = NULL;
    size_t n = 0, cap = 0;
    cv_applog_record rec;
    while ((r = cv_applog_reader_next(rd, &rec, errbuf, errlen)) == 1) {
        const char *name = strrchr(rec.file, '/');
        name = name ? name + 1 : rec.file;
        size_t i = n;
        while (i > 0 && !is_file(&v[i - 1], rec.file))
            i--;
        if (i == 0) {
            char *dir = chain_dir_of(partition_dir, rec.file);
            bool cold = !dir && !in_repair_dir(rec.file) &&
                        (dir = cold_dir_of(partition_dir, &rec, name));
            char *src = dir ? strdup(rec.file) : NULL;
            if (!src || strlen(name) >= sizeof(v->e.segment)) {
                free(dir);
                free(src);
                continue; /* a repair directory's */
            }
            if (n == cap) {
                size_t nc = cap ? 2 * cap : 16;
                cv_applog_expiry_candidate *nv = realloc(v, nc * sizeof(*v));
                if (!nv) {
                    free(dir);
                    free(src);
                    r = -ENOMEM;
                    break;
                }
                v = nv;
                cap = nc;
            }
            memset(&v[n], 0, sizeof(v[n]));
            v[n].dir = dir;
            v[n].src = src;
            v[n].cold = cold;
            snprintf(v[n].e.segment, sizeof(v[n].e.segment), "%s", name);
            v[n].newest_ms = INT64_MIN;
            i = ++n;
        }
        cv_applog_expiry_candidate *c = &v[i - 1];
        c->e.records++;
        c->e.last_offset = rec.offset;
        memcpy(c->e.last_chain, rec.digest, DIGEST);
        if (rec.timestamp_ms > c->newest_ms)
            c->newest_ms = rec.timestamp_ms;
        if (rec.timestamp_ms < 0)
            c->untimed = true;
        if (!c->keep && keep && keep(opaque, &rec))
            c->keep = true;
    }
    cv_applog_reader_free(rd);
    /* Not the last segment of its directory when the read began: a writer
     * may append to that one, and the next segment's link is what the chain
     * continues from. */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool sealed = r == 0 && sealed_before(lasts, nlasts, v[i].dir, v[i].e.segment);
        int64_t created_us = 0, mtime_ms = 0;
        if (sealed)
            r = describe_header(&v[i], &created_us, &mtime_ms, errbuf, errlen);
        if (r < 0 || !sealed) {
            free(v[i].dir);
            free(v[i].src);
            continue;
        }
        /* A record without a Kafka timestamp was written before the file
         * was last changed: that is its age. */
        if (v[i].untimed && mtime_ms > v[i].newest_ms)
            v[i].newest_ms = mtime_ms;
        if (v[i].newest_ms < 0)
            v[i].newest_ms = created_us / 1000;
        v[k++] = v[i];
    }
    free_last(lasts, nlasts);
    if (r < 0) {
        cv_applog_expiry_candidates_free(v, k);
        return r;
    }
    *ret = v;
    *ret_n = k;
    return 0;
}

/* The recorded segments of one directory (only those whose files are
 * still there, with `present`). */
static int recorded_in(const char *dir, const cv_keyring *keys, bool present,
                       cv_applog_expiry_candidate **v, size_t *n, char *errbuf,
                       size_t errlen) {
    cv_applog_expiry *e;
    size_t ne;
    int r = cv_applog_expiry_read(dir, keys, &e, &ne, errbuf, errlen);
    if (r <= 0)
        return r;
    for (size_t i = 0; i < ne && r >= 0; i++) {
        bool local = exists(dir, e[i].segment, "");
        bool cold = !local && exists(dir, e[i].segment, COLD_SUFFIX_TAIL);
        if (present && !local && !cold)
            continue;
        cv_applog_expiry_candidate *nv = realloc(*v, (*n + 1) * sizeof(**v));
        char *d = nv ? strdup(dir) : NULL;
        if (nv)
            *v = nv;
        if (!d) {
            r = -ENOMEM;
            break;
        }
        (*v)[(*n)++] = (cv_applog_expiry_candidate){
            .dir = d, .e = e[i], .newest_ms = -1, .cold = cold, .pending = local || cold};
    }
    free(e);
    return r < 0 ? r : 0;
}

int cv_applog_expiry_recorded(const char *partition_dir, const cv_keyring *keys,
                              bool present, cv_applog_expiry_candidate **ret,
                              size_t *ret_n, char *errbuf, size_t errlen) {
    *ret = NULL;
    *ret_n = 0;
    char **gens = NULL;
    size_t ngen = 0;
    int r = recorded_in(partition_dir, keys, present, ret, ret_n, errbuf, errlen);
    if (r == 0)
        r = cv_applog_i_list_gen_dirs(partition_dir, &gens, &ngen, errbuf, errlen);
    for (size_t i = 0; i < ngen && r == 0; i++) {
        char *path = cv_applog_i_path_join(partition_dir, gens[i]);
        r = path ? recorded_in(path, keys, present, ret, ret_n, errbuf, errlen) : -ENOMEM;
        free(path);
    }
    cv_applog_i_free_names(gens, ngen);
    if (r < 0) {
        cv_applog_expiry_candidates_free(*ret, *ret_n);
        *ret = NULL;
        *ret_n = 0;
    }
    return r;
}
