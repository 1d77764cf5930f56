/*
 * applog/catalog.c — what is on disk and how it is named (FORMAT.md
 * "Layout"): segment, repair and generation directory names, sorted
 * directory listings, and the public listing of partitions and segments
 * that `chatvault log` shows.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util.h"

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

bool cv_applog_i_is_seg_name(const char *n, const char *suffix) {
    size_t l = strlen(n), sl = strlen(suffix);
    if (l != NAME_DIGITS + sl || strcmp(n + NAME_DIGITS, suffix) != 0)
        return false;
    for (int i = 0; i < NAME_DIGITS; i++)
        if (n[i] < '0' || n[i] > '9')
            return false;
    return true;
}

void cv_applog_i_free_names(char **names, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

enum {
    LIST_MISSING_OK = 1, /* a missing directory holds nothing */
    LIST_NOTDIR_OK = 2,  /* so does a path that is not a directory */
};

/* Sorted names of the entries of dir that keep(name, arg) accepts; `flags`
 * (LIST_*) say which directories that cannot be opened hold none. */
static int list_sorted(const char *dir, unsigned flags,
                       bool (*keep)(const char *name, const char *arg), const char *arg,
                       char ***ret, size_t *ret_n, char *errbuf, size_t errlen) {
    *ret = NULL;
    *ret_n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if ((errno == ENOENT && (flags & LIST_MISSING_OK)) ||
            (errno == ENOTDIR && (flags & LIST_NOTDIR_OK)))
            return 0;
        int e = errno;
        cv_errf(errbuf, errlen, "log directory %s: %s", dir, strerror(e));
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
    cv_applog_i_free_names(names, n);
    return -ENOMEM;
}

/* Sorted names of the files in dir ending in suffix (segment-named). */
int cv_applog_i_list_names(const char *dir, const char *suffix, char ***ret,
                           size_t *ret_n, char *errbuf, size_t errlen) {
    return list_sorted(dir, LIST_MISSING_OK, cv_applog_i_is_seg_name, suffix, ret, ret_n,
                       errbuf, errlen);
}

char *cv_applog_i_path_join(const char *dir, const char *name) {
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

bool cv_applog_i_is_repair_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    return is_repair_name(slash ? slash + 1 : path);
}

static bool repair_name_keep(const char *n, const char *unused) {
    (void)unused;
    return is_repair_name(n);
}

/* Sorted names of the repair directories inside a partition directory. */
int cv_applog_i_list_repair_dirs(const char *dir, char ***ret, size_t *ret_n,
                                 char *errbuf, size_t errlen) {
    return list_sorted(dir, LIST_MISSING_OK | LIST_NOTDIR_OK, repair_name_keep, NULL, ret,
                       ret_n, errbuf, errlen);
}

/* "gen-" and 20 digits (see GENERATIONS); sorted by name is oldest first. */
static bool is_gen_name(const char *n, const char *unused) {
    (void)unused;
    size_t pl = sizeof(GEN_PREFIX) - 1;
    return strlen(n) == pl + NAME_DIGITS && strncmp(n, GEN_PREFIX, pl) == 0 &&
           strspn(n + pl, "0123456789") == NAME_DIGITS;
}

/* Sorted names of the generation directories inside a partition directory. */
int cv_applog_i_list_gen_dirs(const char *dir, char ***ret, size_t *ret_n, char *errbuf,
                              size_t errlen) {
    return list_sorted(dir, LIST_MISSING_OK | LIST_NOTDIR_OK, is_gen_name, NULL, ret,
                       ret_n, errbuf, errlen);
}

int cv_applog_partition_dir(const char *dir, const char *topic, int32_t partition,
                            char *buf, size_t len) {
    int n = snprintf(buf, len, "%s/%s-%" PRId32, dir, topic, partition);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* "<topic>-<partition>": a partition directory's name (LAYOUT). */
static bool is_partition_name(const char *n, const char *unused) {
    (void)unused;
    const char *dash = strrchr(n, '-');
    return dash && dash != n && dash[1] &&
           strspn(dash + 1, "0123456789") == strlen(dash + 1);
}

int cv_applog_partitions(const char *dir, cv_applog_partition_fn *fn, void *opaque,
                         char *errbuf, size_t errlen) {
    char **names;
    size_t n;
    int r = list_sorted(dir, 0, is_partition_name, NULL, &names, &n, errbuf, errlen);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n && r == 0; i++) {
        char *path = cv_applog_i_path_join(dir, names[i]);
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
    cv_applog_i_free_names(names, n);
    return r;
}

/* A segment only in the cold tier, as its stub <path>.cold describes it. */
static int cold_info(const char *path, bool repair, cv_applog_segment_fn *fn,
                     void *opaque, char *errbuf, size_t errlen) {
    size_t l = strlen(path) + sizeof(COLD_SUFFIX_TAIL);
    char *stub = malloc(l);
    if (!stub)
        return -ENOMEM;
    snprintf(stub, l, "%s" COLD_SUFFIX_TAIL, path);
    cv_applog_cold_stub st;
    int r = cv_applog_cold_stub_read(stub, &st, errbuf, errlen);
    cv_applog_segment_info si = {
        .file = stub,
        .topic = st.topic,
        .partition = st.partition,
        .sealed = true,
        .writer_name = "",
        .repair = repair,
        .cold = true,
    };
    if (r == 0) {
        si.bytes = st.bytes;
        si.key_id = st.key_id;
        si.first_offset = st.first_offset;
        si.last_offset = st.last_offset;
        si.records = st.records;
        si.created_us = st.created_us;
    } else if (r == -CV_ECORRUPT) {
        si.topic = "";
        si.first_offset = strtoll(strrchr(path, '/') + 1, NULL, 10);
        si.last_offset = -1;
        si.damaged = true;
        r = 0;
    }
    if (r == 0)
        r = fn(opaque, &si);
    free(stub);
    return r;
}

/* The segments of one directory (a partition's or a repair one). */
static int segments_of(const char *dir, bool repair, cv_applog_segment_fn *fn,
                       void *opaque, char *errbuf, size_t errlen) {
    char **names;
    size_t n;
    pdir d; /* only for its listing with cold-only segments merged in */
    memset(&d, 0, sizeof(d));
    d.dir = (char *)dir;
    int r = cv_applog_i_list_names(dir, SEG_SUFFIX, &d.names, &d.nseg, errbuf, errlen);
    if (r == 0 && !repair)
        r = cv_applog_i_cold_merge(&d, errbuf, errlen);
    if (r == 0 && !repair) /* RETENTION: a dropped segment is not listed */
        r = cv_applog_i_expiry_load(&d, errbuf, errlen);
    free(d.expired);
    if (r < 0) {
        cv_applog_i_free_names(d.names, d.nseg);
        free(d.cold);
        return r;
    }
    names = d.names;
    n = d.nseg;
    cv_buf none;
    cv_buf_init(&none, 0);
    for (size_t i = 0; i < n && r == 0; i++) {
        char *path = cv_applog_i_path_join(dir, names[i]);
        if (!path) {
            r = -ENOMEM;
            break;
        }
        if (d.cold && d.cold[i]) {
            /* COLD TIER: what its stub says, without fetching it */
            r = cold_info(path, repair, fn, opaque, errbuf, errlen);
            free(path);
            continue;
        }
        seg s;
        r = cv_applog_i_seg_open(&s, path, errbuf, errlen);
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
        while ((x = cv_applog_i_seg_next(&s, NULL, &none, &rr, &at, ignored,
                                         sizeof(ignored))) == 1)
            ;
        if (x < 0) {
            si.damaged = true;
            si.damaged_at = at;
            si.torn = i + 1 == n && cv_applog_i_seg_tail_is_torn(&s, at);
        }
        if (s.h.repair != repair) {
            si.damaged = true;
            si.torn = false;
            si.damaged_at = 0;
        }
        si.records = s.index;
        si.last_offset = s.last_offset;
        r = fn(opaque, &si);
        cv_applog_i_seg_close(&s);
    }
    cv_applog_i_free_names(names, n);
    free(d.cold);
    return r;
}

int cv_applog_segments(const char *partition_dir, cv_applog_segment_fn *fn, void *opaque,
                       char *errbuf, size_t errlen) {
    int r = cv_applog_i_lib_init(errbuf, errlen);
    if (r < 0)
        return r;
    r = segments_of(partition_dir, false, fn, opaque, errbuf, errlen);
    char **reps = NULL;
    size_t nrep = 0;
    if (r == 0)
        r = cv_applog_i_list_repair_dirs(partition_dir, &reps, &nrep, errbuf, errlen);
    for (size_t i = 0; i < nrep && r == 0; i++) {
        char *path = cv_applog_i_path_join(partition_dir, reps[i]);
        r = path ? segments_of(path, true, fn, opaque, errbuf, errlen) : -ENOMEM;
        free(path);
    }
    cv_applog_i_free_names(reps, nrep);
    /* Then each generation's, as a partition directory of its own. */
    char **gens = NULL;
    size_t ngen = 0;
    if (r == 0 &&
        !is_gen_name(strrchr(partition_dir, '/') ? strrchr(partition_dir, '/') + 1
                                                 : partition_dir,
                     NULL))
        r = cv_applog_i_list_gen_dirs(partition_dir, &gens, &ngen, errbuf, errlen);
    for (size_t i = 0; i < ngen && r == 0; i++) {
        char *path = cv_applog_i_path_join(partition_dir, gens[i]);
        r = path ? cv_applog_segments(path, fn, opaque, errbuf, errlen) : -ENOMEM;
        free(path);
    }
    cv_applog_i_free_names(gens, ngen);
    return r;
}

/* True when the directory holds a segment (or an unfinished one) of its
 * own: a generation the broker's writer wrote. */
bool cv_applog_i_holds_segments(const char *dir) {
    char **names = NULL;
    size_t n = 0;
    char tsuffix[16], ignored[8];
    snprintf(tsuffix, sizeof(tsuffix), "%s%s", SEG_SUFFIX, TMP_SUFFIX);
    if (cv_applog_i_list_names(dir, SEG_SUFFIX, &names, &n, ignored, sizeof(ignored)) ==
            0 &&
        !n)
        cv_applog_i_list_names(dir, tsuffix, &names, &n, ignored, sizeof(ignored));
    cv_applog_i_free_names(names, n);
    return n > 0;
}
