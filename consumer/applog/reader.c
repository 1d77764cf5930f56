/*
 * applog/reader.c — the one reader that recovery, verify, replay and
 * `log cat` share. A pdir reads one directory's segments in order and
 * checks the links between them, the seal and the bridges of repair
 * directories; a cv_applog_reader merges the directories of a partition
 * (instances, repair directories, generations) by offset, as FORMAT.md
 * "Many instances", "Repair segments" and "Generations" specify.
 */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyring.h"
#include "util.h"

/* ---- one directory of a partition ---------------------------------- */

void cv_applog_i_pdir_release(pdir *d) {
    if (d->open)
        cv_applog_i_seg_close(&d->cur);
    free(d->cur_stub);
    cv_applog_i_free_names(d->names, d->nseg);
    free(d->cold);
    free(d->dir);
    free(d->torn_file);
    free(d->seal_msg);
    free(d->dmg_file);
    free(d->expired);
    cv_buf_release(&d->plain);
    memset(d, 0, sizeof(*d));
}

/* Opens a directory; with start_offset >= 0 begins at the segment that would
 * hold it (its header's link to earlier segments is then taken on trust). */
int cv_applog_i_pdir_init(pdir *d, const char *dir, const cv_keyring *keys,
                          int64_t start_offset, char *errbuf, size_t errlen) {
    memset(d, 0, sizeof(*d));
    d->last_offset = -1;
    d->skip_below = INT64_MIN;
    d->keys = keys;
    d->repair = cv_applog_i_is_repair_dir(dir);
    /* GENERATIONS: a gen-* directory's chain starts where the one before
     * it ended (the reader sets the same again) */
    const char *base = strrchr(dir, '/');
    base = base ? base + 1 : dir;
    if (strncmp(base, GEN_PREFIX, sizeof(GEN_PREFIX) - 1) == 0)
        d->gen = strtoll(base + sizeof(GEN_PREFIX) - 1, NULL, 10);
    cv_buf_init(&d->plain, FRAME_MAX);
    d->dir = strdup(dir);
    if (!d->dir)
        return -ENOMEM;
    int r = cv_applog_i_list_names(dir, SEG_SUFFIX, &d->names, &d->nseg, errbuf, errlen);
    if (r < 0)
        return r;
    /* COLD TIER: a segment shipped and removed here is read from its copy. */
    if (!d->repair && (r = cv_applog_i_cold_merge(d, errbuf, errlen)) < 0)
        return r;
    /* RETENTION: a dropped segment is not read. */
    if (!d->repair && (r = cv_applog_i_expiry_load(d, errbuf, errlen)) < 0)
        return r;
    if (!d->repair) {
        char msg[768];
        int x = cv_applog_i_seal_read(dir, &d->sl, msg, sizeof(msg));
        /* a seal may name a segment retention dropped since */
        bool found = x == 1 && cv_applog_i_expiry_links(d, d->sl.name);
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
    char *path = NULL;
    int r = cv_applog_i_cold_path(d, d->iseg, &path, errbuf, errlen);
    if (r < 0)
        return r;
    free(d->cur_stub);
    d->cur_stub = NULL;
    if (r == 1) {
        /* a fetched copy: damage in it is named at its stub (COLD TIER) */
        char *seg_path = cv_applog_i_path_join(d->dir, d->names[d->iseg]);
        size_t l = seg_path ? strlen(seg_path) + sizeof(COLD_SUFFIX_TAIL) : 0;
        if (seg_path && (d->cur_stub = malloc(l)))
            snprintf(d->cur_stub, l, "%s" COLD_SUFFIX_TAIL, seg_path);
        free(seg_path);
        if (!d->cur_stub) {
            free(path);
            return -ENOMEM;
        }
    }
    r = cv_applog_i_seg_open(&d->cur, path, errbuf, errlen);
    if (r < 0) {
        free(path);
        return r;
    }
    seghdr *h = &d->cur.h;
    char want[NAME_DIGITS + 8];
    snprintf(want, sizeof(want), "%020" PRId64 SEG_SUFFIX, h->first_offset);
    const char *why = NULL;
    int dropped = 0;
    if (!d->repair)
        dropped = cv_applog_i_expiry_bridges(d, h, &why);
    static const unsigned char zero[DIGEST];
    if (why)
        ;
    else if (!d->any && d->iseg == 0 && d->gen == 0 && !d->repair && dropped == 0 &&
             sodium_memcmp(h->prev_chain, zero, DIGEST) != 0 &&
             !(d->owner && reader_bridged(d->owner, d, h, path)))
        why = "header links to a segment that is neither here nor recorded as dropped "
              "by retention (the directory's first segments were removed)";
    else if (strcmp(want, d->names[d->iseg]) != 0)
        why = "file name does not match the first offset in its header";
    else if (h->repair != d->repair)
        why = h->repair ? "repair segment outside a repair directory"
                        : "broker segment inside a repair directory";
    else if (d->any && (strcmp(h->topic, d->topic) != 0 || h->partition != d->partition))
        why = "header names another topic-partition than the segments "
              "before it";
    else if (d->any && h->first_offset <= d->last_offset)
        why = "first offset does not follow the previous segment";
    else if (d->any && dropped == 0 &&
             sodium_memcmp(h->prev_chain, d->chain, DIGEST) != 0 &&
             !(d->owner && !d->repair && reader_bridged(d->owner, d, h, path)))
        why = "header does not chain to the previous segment's last record "
              "(segment dropped, replaced or reordered)";
    if (why) {
        cv_errf(errbuf, errlen, "log segment %s at byte 0: %s", path, why);
        free(path);
        cv_applog_i_seg_close(&d->cur);
        return -CV_ECORRUPT;
    }
    free(path);
    d->key = NULL;
    if (d->keys) {
        d->cur_erased = false;
        d->key = NULL;
        bool data_key = h->key_id >= CV_DATAKEY_ID_MIN, rejected = false;
        if (data_key) {
            /* DATA KEYS: instances' stores may share ids; the key check
             * says which key of this id and topic it is. */
            const unsigned char *k;
            for (size_t n = 0;
                 !d->key && (k = cv_keyring_data_key(d->keys, h->key_id, h->topic, n));
                 n++) {
                unsigned char kc[16];
                cv_applog_i_key_check(kc, h->seg_id, k);
                if (sodium_memcmp(kc, h->key_check, 16) == 0)
                    d->key = k;
                else
                    rejected = true;
            }
        } else {
            d->key = cv_keyring_get(d->keys, h->key_id);
        }
        const char *et = NULL;
        if (!d->key && data_key && cv_keyring_erased_for(d->keys, h->key_id, h->topic))
            et = h->topic;
        else if (!d->key && !rejected)
            et = cv_keyring_erased(d->keys, h->key_id, NULL);
        if (rejected && !d->key && !et) {
            cv_errf(errbuf, errlen,
                    "log segment %s at byte 104: data key %" PRIu32
                    " of topic %s is not the key this segment was written with (a "
                    "store of another log directory?)",
                    d->cur.path, h->key_id, h->topic);
            cv_applog_i_seg_close(&d->cur);
            return -EKEYREJECTED;
        }
        if (et && strcmp(et, h->topic) == 0) {
            /* DATA KEYS: erased on purpose; the chain is still checked */
            d->cur_erased = true;
            d->erased_segs++;
            d->erased_bytes += d->cur.size;
        } else if (!d->key && h->key_id >= CV_DATAKEY_ID_MIN) {
            cv_errf(errbuf, errlen,
                    "log segment %s at byte 12: data key %" PRIu32
                    " of topic %s is not in the data key store of its log directory"
                    " (" CV_DATAKEYS_FILE "), or the master key that wraps it is not in"
                    " the key file%s",
                    d->cur.path, h->key_id, h->topic,
                    et ? "; it was erased, but for another topic" : "");
            cv_applog_i_seg_close(&d->cur);
            return -ENOKEY;
        } else if (!d->key) {
            cv_errf(errbuf, errlen,
                    "log segment %s at byte 12: key id %" PRIu32
                    " is not in the key file",
                    d->cur.path, h->key_id);
            cv_applog_i_seg_close(&d->cur);
            return -ENOKEY;
        }
    }
    if (d->keys && d->key) {
        unsigned char kc[16];
        cv_applog_i_key_check(kc, h->seg_id, d->key);
        if (sodium_memcmp(kc, h->key_check, 16) != 0) {
            cv_errf(errbuf, errlen,
                    "log segment %s at byte 104: key id %" PRIu32
                    " of the key file is not the key this segment was written "
                    "with (wrong key file?)",
                    d->cur.path, h->key_id);
            cv_applog_i_seg_close(&d->cur);
            return -EKEYREJECTED;
        }
        cv_applog_i_segment_subkey(d->cur.subkey, h->seg_id, d->key);
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
                                   : cv_applog_i_offsets_after(&d->cur, at);
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
int cv_applog_i_pdir_next(pdir *d, char *errbuf, size_t errlen) {
    int r = pdir_next_raw(d, errbuf, errlen);
    if ((r == -CV_ECORRUPT || r == -EBADMSG) && !d->dmg_file) {
        if (d->seal_err) {
            char p[PATH_MAX];
            snprintf(p, sizeof(p), "%s/" SEAL_FILE, d->dir);
            d->dmg_file = strdup(p);
            d->dmg_pos = 0;
        } else if (d->open) {
            d->dmg_file = strdup(d->cur_stub ? d->cur_stub : d->cur.path);
        } else if (d->iseg < d->nseg) {
            /* The segment's header or its link failed: it never opened. */
            d->dmg_file = cv_applog_i_path_join(d->dir, d->names[d->iseg]);
            if (d->dmg_file && d->cold && d->cold[d->iseg]) {
                /* only in the cold tier: its stub is what is here */
                char *stub = malloc(strlen(d->dmg_file) + sizeof(COLD_SUFFIX_TAIL));
                if (stub)
                    sprintf(stub, "%s" COLD_SUFFIX_TAIL, d->dmg_file);
                free(d->dmg_file);
                d->dmg_file = stub;
            }
            d->dmg_pos = 0;
        }
    }
    return r;
}

static int pdir_next_raw(pdir *d, char *errbuf, size_t errlen) {
    if (d->seal_err) {
        cv_errf(errbuf, errlen, "%s", d->seal_msg);
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
        int r =
            cv_applog_i_seg_next(&d->cur, key, &d->plain, &d->rec, &at, errbuf, errlen);
        if (r == 1) {
            memcpy(d->chain, d->cur.chain, DIGEST);
            d->last_offset = d->rec.offset;
            if (d->cur_erased)
                d->erased_records++;
            if (d->rec.offset < d->skip_below || (d->cur_erased && !d->keep_erased))
                continue;
            return 1;
        }
        if (r < 0) {
            /* Only the last segment of a directory, with no seal to say it
             * was closed whole, can end in an unfinished write. */
            bool last = d->iseg >= d->nseg;
            if (r == -ENOMEM)
                return r;
            if (!last || d->cur_sealed || !cv_applog_i_seg_tail_is_torn(&d->cur, at)) {
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
                cv_errf(
                    errbuf, errlen,
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
        cv_applog_i_seg_close(&d->cur);
        d->open = false;
        if (r < 0)
            return 0;
    }
}

/* ---- the reader: merging directories -------------------------------- */

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
    int r = cv_applog_i_list_repair_dirs(dir, &rep, &nrep, errbuf, errlen);
    if (r < 0)
        return r;
    if (rd->n + 1 + nrep > *cap) {
        size_t nc = (rd->n + 1 + nrep) * 2;
        pdir *nd = realloc(rd->dirs, nc * sizeof(*nd));
        if (!nd) {
            cv_applog_i_free_names(rep, nrep);
            return -ENOMEM;
        }
        memset(nd + rd->n, 0, (nc - rd->n) * sizeof(*nd));
        rd->dirs = nd;
        *cap = nc;
    }
    pdir *base = &rd->dirs[rd->n++];
    r = cv_applog_i_pdir_init(base, dir, keys, -1, errbuf, errlen);
    base->owner = rd;
    base->gen = gen;
    for (size_t k = 0; k < nrep && r == 0; k++) {
        char *path = cv_applog_i_path_join(dir, rep[k]);
        pdir *d = &rd->dirs[rd->n++];
        r = path ? cv_applog_i_pdir_init(d, path, keys, -1, errbuf, errlen) : -ENOMEM;
        d->owner = rd;
        d->gen = gen;
        free(path);
        if (r == 0)
            r = collect_bridge(rd, d, errbuf, errlen);
    }
    cv_applog_i_free_names(rep, nrep);
    return r;
}

int cv_applog_reader_open(const char *const *dirs, size_t ndirs, const cv_keyring *keys,
                          cv_applog_reader **ret, char *errbuf, size_t errlen) {
    int r = cv_applog_i_lib_init(errbuf, errlen);
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
            r = cv_applog_i_list_gen_dirs(dirs[i], &gens, &ngen, errbuf, errlen);
        for (size_t k = 0; k < ngen && r == 0; k++) {
            char *path = cv_applog_i_path_join(dirs[i], gens[k]);
            r = path ? reader_add_tree(rd, &cap, path, strtoll(gens[k] + 4, NULL, 10),
                                       keys, errbuf, errlen)
                     : -ENOMEM;
            free(path);
        }
        cv_applog_i_free_names(gens, ngen);
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
    char *path = cv_applog_i_path_join(d->dir, d->names[0]);
    if (!path)
        return -ENOMEM;
    seg s;
    int x = cv_applog_i_seg_open(&s, path, errbuf, errlen);
    free(path);
    if (x < 0)
        return x;
    if (s.h.repair && s.size > s.h.hlen && sodium_memcmp(s.h.bridge, zero, DIGEST) != 0) {
        bridge *nb = realloc(r->bridges, (r->nbridges + 1) * sizeof(*nb));
        if (!nb) {
            cv_applog_i_seg_close(&s);
            return -ENOMEM;
        }
        r->bridges = nb;
        memcpy(nb[r->nbridges].from, s.h.prev_chain, DIGEST);
        memcpy(nb[r->nbridges].to, s.h.bridge, DIGEST);
        r->nbridges++;
    }
    cv_applog_i_seg_close(&s);
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
        cv_errf(errbuf, errlen, "%s", r->errmsg);
        return r->err;
    }
    /* The record returned last is consumed now (its memory stayed valid
     * until this call). */
    for (size_t i = 0; i < r->n; i++) {
        pdir *d = &r->dirs[i];
        if (d->has)
            continue;
        int x = cv_applog_i_pdir_next(d, r->errmsg, sizeof(r->errmsg));
        if (x < 0) {
            r->err = x;
            r->dmg = d;
            cv_errf(errbuf, errlen, "%s", r->errmsg);
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
            cv_errf(errbuf, errlen, "%s", r->errmsg);
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

cv_applog_reader *cv_applog_reader_free(cv_applog_reader *r) {
    if (!r)
        return NULL;
    for (size_t i = 0; i < r->n; i++)
        cv_applog_i_pdir_release(&r->dirs[i]);
    free(r->dirs);
    free(r->bridges);
    free(r);
    return NULL;
}

void cv_applog_reader_erased(const cv_applog_reader *r, cv_applog_erased *ret) {
    memset(ret, 0, sizeof(*ret));
    for (size_t i = 0; i < r->n; i++) {
        ret->segments += r->dirs[i].erased_segs;
        ret->bytes += r->dirs[i].erased_bytes;
        ret->records += r->dirs[i].erased_records;
    }
}
