/*
 * applog/index.c — what the writer already holds. The in-memory index of
 * recent offsets of a partition, the records its repair
 * directories held at open, and the lookup cache that reads a segment
 * from disk to compare a re-delivered record by identity (FORMAT.md
 * "Generations").
 */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* 8 bytes per record. Trimmed to INDEX_KEEP at each batch's commit once
 * twice as many are held, so a partition holds 2 * INDEX_KEEP plus one
 * batch's records at most: with the default batch.max_messages 64-128 KiB,
 * ~32 MiB for 256 partitions. A digest beside each and 16384 kept made it
 * up to 335 MiB, which a long drain's peak RSS showed (deploy/bench/README.md
 * "Memory"). An offset below the index is looked up on disk, as before. */
int cv_applog_i_index_push(part *p, int64_t offset) {
    if (p->ilen == p->icap) {
        size_t ncap = p->icap ? p->icap * 2 : 1024;
        int64_t *no = realloc(p->ioff, ncap * sizeof(*no));
        if (!no)
            return -ENOMEM;
        p->ioff = no;
        p->icap = ncap;
    }
    p->ioff[p->ilen++] = offset;
    return 0;
}

/* Keeps the newest INDEX_KEEP entries once twice as many are held. */
void cv_applog_i_index_trim(part *p) {
    if (p->ilen < 2 * INDEX_KEEP)
        return;
    size_t drop = p->ilen - INDEX_KEEP;
    memmove(p->ioff, p->ioff + drop, INDEX_KEEP * sizeof(*p->ioff));
    p->ilen = p->dilen = INDEX_KEEP;
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

/* Reads the offsets, digests and value ids (decrypted: "already held" is by
 * identity, see GENERATIONS) the partition's repair directories hold into
 * p->hoff/p->hdig/p->hval. A repair directory that does not read to its
 * end contributes what it read: the reader reports its damage; the writer
 * only must not write a second copy. */
int cv_applog_i_load_repair_held(cv_applog *log, part *p) {
    char **names;
    size_t n;
    int r = cv_applog_i_list_repair_dirs(p->dir, &names, &n, NULL, 0);
    if (r < 0 || n == 0)
        return r == -ENOMEM ? r : 0;
    held *v = NULL;
    size_t len = 0, cap = 0;
    for (size_t i = 0; i < n && r == 0; i++) {
        char *path = cv_applog_i_path_join(p->dir, names[i]);
        pdir d;
        if (!path) {
            r = -ENOMEM;
            break;
        }
        int x = cv_applog_i_pdir_init(&d, path, log->keys, -1, NULL, 0);
        while (x == 0 && cv_applog_i_pdir_next(&d, NULL, 0) == 1) {
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
            cv_applog_i_value_id(v[len].val, d.rec.value, d.rec.value_len);
            len++;
        }
        cv_applog_i_pdir_release(&d);
        free(path);
    }
    cv_applog_i_free_names(names, n);
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

/* Index of `offset` in the ascending array `v` of n, or n if absent. */
size_t cv_applog_i_find_offset(const int64_t *v, size_t n, int64_t offset) {
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

/* Fills the disk-lookup cache with the records of the segment that would
 * hold `offset`, from `offset` on, decrypted: their identity is their value
 * (see GENERATIONS). Those before it are checked by frame check and chain
 * only: a re-delivery starts at Kafka's committed offset and goes up, so
 * only the segment's tail is decrypted. */
static int cache_segment(cv_applog *log, part *p, int64_t offset, char *errbuf,
                         size_t errlen) {
    pdir d;
    int r = cv_applog_i_pdir_init(&d, p->dir, log->keys, offset, errbuf, errlen);
    d.skip_below = offset;
    size_t seg_index = d.iseg;
    p->clen = 0;
    while (r == 0 && (r = cv_applog_i_pdir_next(&d, errbuf, errlen)) == 1 &&
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
        cv_applog_i_value_id(p->cval[p->clen], d.rec.value, d.rec.value_len);
        p->clen++;
    }
    cv_applog_i_pdir_release(&d);
    if (r < 0) {
        p->clen = 0;
        return r;
    }
    return 0;
}

/* Whether e's value is the held record's, whose value id is `val`: 1 with
 * e->digest set to the held record's `digest`, else 0. */
static int held_as(cv_applog_entry *e, const unsigned char *val,
                   const unsigned char *digest) {
    unsigned char vid[VAL_ID];
    cv_applog_i_value_id(vid, e->value, e->value_len);
    if (sodium_memcmp(vid, val, VAL_ID) != 0)
        return 0;
    memcpy(e->digest, digest, DIGEST);
    return 1;
}

/* Whether the partition holds entry e, by identity (see GENERATIONS): 1
 * with e->digest the held record's when it holds these very bytes at
 * e->offset; 0 when it holds the offset with other bytes; -ERANGE when it
 * does not hold the offset. The in-memory index says whether the offset
 * is held; the bytes are compared in the lookup cache, which reads the
 * segment holding the offset (once per segment and re-delivery). */
int cv_applog_i_lookup_held(cv_applog *log, part *p, cv_applog_entry *e, char *errbuf,
                            size_t errlen) {
    int64_t offset = e->offset;
    bool indexed = p->ilen && offset >= p->ioff[0];
    if (indexed && cv_applog_i_find_offset(p->ioff, p->ilen, offset) == p->ilen)
        goto not_held;
    p->cused = true;
    if (!p->clen || offset < p->coff[0] || offset > p->coff[p->clen - 1]) {
        int r = cache_segment(log, p, offset, errbuf, errlen);
        if (r < 0)
            return r;
    }
    size_t i = cv_applog_i_find_offset(p->coff, p->clen, offset);
    if (i == p->clen) {
        if (!indexed)
            goto not_held;
        cv_errf(errbuf, errlen,
                "log %s: offset %" PRId64
                " is in the writer's index but not in its segment",
                p->dir, offset);
        return -EIO;
    }
    return held_as(e, p->cval[i], p->cdig[i]);
not_held:
    cv_errf(errbuf, errlen,
            "log %s: offset %" PRId64 " is below the last offset %" PRId64
            " and not in the log",
            p->dir, offset, p->last);
    return -ERANGE;
}

/* Entry e at the offset of p->hoff[i] (a repair directory holds it): 1
 * with e->digest the held record's when these are its very bytes, else 0. */
int cv_applog_i_repair_held(const part *p, size_t i, cv_applog_entry *e) {
    return held_as(e, p->hval[i], p->hdig[i]);
}
