/*
 * applog — the encrypted, tamper-evident append-only log. Its format (byte
 * layouts of segments and frames, cipher and chain), the durability and
 * recovery rules, seals, repair segments and generations are specified in
 * FORMAT.md beside this file; the section names in capitals in the
 * comments of this folder (LAYOUT, SEALS, GENERATIONS, ...) are its
 * headings, and its last section maps the files.
 *
 * applog/writer.c — the writer session: cv_applog_open and _free, its
 * callbacks, and cv_applog_append: group the entries by partition, encode
 * them into segment buffers (on the pool's workers), make them durable
 * once, then commit the durable state or roll every partition back.
 */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "keyring.h"
#include "util.h"

/* See cv_applog_set_default_compression. */
static int default_zlevel;

static int check_zlevel(int level, char *errbuf, size_t errlen) {
    if (level != 0 &&
        (level < CV_APPLOG_ZSTD_LEVEL_MIN || level > CV_APPLOG_ZSTD_LEVEL_MAX)) {
        cv_errf(errbuf, errlen, "zstd level %d is outside %d..%d (0: off)", level,
                CV_APPLOG_ZSTD_LEVEL_MIN, CV_APPLOG_ZSTD_LEVEL_MAX);
        return -EINVAL;
    }
    return 0;
}

int cv_applog_set_default_compression(int level, char *errbuf, size_t errlen) {
    int r = check_zlevel(level, errbuf, errlen);
    if (r == 0)
        default_zlevel = level;
    return r;
}

int cv_applog_set_compression(cv_applog *log, int level, char *errbuf, size_t errlen) {
    int r = check_zlevel(level, errbuf, errlen);
    if (r == 0)
        log->zlevel = level;
    return r;
}

int cv_applog_open(const char *dir, const cv_keyring *keys, uint64_t segment_bytes,
                   cv_applog **ret, char *errbuf, size_t errlen) {
    int r = cv_applog_i_lib_init(errbuf, errlen);
    if (r < 0)
        return r;
    if (!keys || !cv_keyring_count(keys)) {
        cv_errf(errbuf, errlen, "log %s: no key to seal segments with", dir);
        return -ENOKEY;
    }
    if (segment_bytes < 4096) {
        cv_errf(errbuf, errlen,
                "log %s: segment size %" PRIu64 " is below the minimum of 4096 bytes",
                dir, segment_bytes);
        return -EINVAL;
    }
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        cv_errf(errbuf, errlen, "log directory %s: cannot create: %s", dir, strerror(e));
        return -e;
    }
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        cv_errf(errbuf, errlen, "log directory %s is not a directory", dir);
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
    log->dk = cv_keyring_data_keys(keys, dir);
    if (log->dk && (r = cv_datakeys_lock_writer(log->dk, errbuf, errlen)) < 0) {
        pthread_mutex_destroy(&log->spare_mu);
        free(log->dir);
        free(log);
        return r;
    }
    log->segment_bytes = segment_bytes;
    log->zlevel = default_zlevel;
    cv_applog_set_syscalls(log, NULL);
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

cv_applog *cv_applog_free(cv_applog *log) {
    if (!log)
        return NULL;
    cv_applog_i_pool_stop(log);
    cv_applog_i_seal_all(log);
    while (log->parts) {
        part *p = log->parts;
        log->parts = p->next;
        cv_applog_i_part_free(p);
    }
    free(log->buckets);
    if (log->fsfd >= 0)
        close(log->fsfd);
    while (log->nspare)
        cv_buf_release(&log->spare[--log->nspare]);
    cv_applog_i_zwork_free_all(log);
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
        cv_errf(errbuf, errlen,
                "log %s: only a repair session, before its first append, writes a new "
                "generation",
                log->dir);
        return -EINVAL;
    }
    log->repair_gen = true;
    return 0;
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
static int new_segment(cv_applog *log, part *p, int64_t first_offset, uint16_t version) {
    wseg *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->fd = -1;
    cv_buf_init(&w->buf, BUF_LIMIT);
    seghdr *h = &w->h;
    h->version = version;
    h->key_id = log->key_id;
    const unsigned char *key = log->key;
    if (log->dk) {
        /* DATA KEYS: the segment is sealed with its channel's key, made
         * durable before the segment is written. */
        int x = cv_datakeys_current(log->dk, p->topic, &h->key_id, &key, p->jerr,
                                    sizeof(p->jerr));
        if (x < 0) {
            free(w);
            return -ENOKEY;
        }
    }
    h->repair = p->repair;
    if (p->repair)
        memcpy(h->bridge, p->bridge, DIGEST);
    randombytes_buf(h->seg_id, sizeof(h->seg_id));
    memcpy(h->writer_id, log->writer_id, 16);
    h->first_offset = first_offset;
    h->created_us = cv_now_us();
    memcpy(h->prev_chain, p->chain, DIGEST);
    cv_applog_i_key_check(h->key_check, h->seg_id, key);
    cv_applog_i_segment_subkey(w->subkey, h->seg_id, key);
    h->partition = p->partition;
    h->topic_len = strlen(p->topic);
    memcpy(h->topic, p->topic, h->topic_len + 1);
    snprintf(h->writer_name, sizeof(h->writer_name), "%s", log->writer_name);
    char name[NAME_DIGITS + 16];
    snprintf(name, sizeof(name), "%020" PRId64 SEG_SUFFIX, first_offset);
    w->path = cv_applog_i_path_join(p->dir, name);
    w->tmp = w->path ? malloc(strlen(w->path) + sizeof(TMP_SUFFIX)) : NULL;
    if (!w->tmp) {
        cv_applog_i_wseg_free(w);
        return -ENOMEM;
    }
    sprintf(w->tmp, "%s%s", w->path, TMP_SUFFIX);
    int r = touch(p, w);
    if (r == 0) {
        cv_applog_i_buf_take(log, &w->buf);
        r = cv_buf_reserve(&w->buf, HDR_MAX);
    }
    if (r < 0) {
        if (w->in_batch)
            p->ntouched--;
        cv_applog_i_wseg_free(w);
        return r;
    }
    size_t hl = cv_applog_i_hdr_encode(h, w->buf.data);
    w->buf.len = hl;
    w->size = hl;
    p->cur = w;
    return 0;
}

/* Writes the plaintext of e (PT_FIXED + tl + value) at pt. */
static void put_plain(unsigned char *pt, const part *p, size_t tl,
                      const cv_applog_entry *e) {
    cv_be64(pt, (uint64_t)e->offset);
    cv_be64(pt + 8, (uint64_t)e->timestamp_ms);
    cv_be32(pt + 16, (uint32_t)p->partition);
    cv_be16(pt + 20, (uint16_t)tl);
    memcpy(pt + PT_FIXED, p->topic, tl);
    if (e->value_len)
        memcpy(pt + PT_FIXED + tl, e->value, e->value_len);
}

/* COMPRESSION: the encoded plaintext of e into z->z: zstd when that is
 * shorter, else the plaintext stored. */
static int encode_plain(zwork *z, const part *p, size_t tl, const cv_applog_entry *e) {
    size_t plen = PT_FIXED + tl + e->value_len;
    if (plen > PT_MAX)
        return -EMSGSIZE;
    z->pt.len = z->z.len = 0;
    int r = cv_buf_reserve(&z->pt, plen);
    if (r == 0)
        r = cv_buf_reserve(&z->z, ENC_HDR + ZSTD_compressBound(plen));
    if (r < 0)
        return r;
    put_plain(z->pt.data, p, tl, e);
    size_t zn = ZSTD_compress2(z->cc, z->z.data + ENC_HDR, ZSTD_compressBound(plen),
                               z->pt.data, plen);
    unsigned char kind = ENC_ZSTD;
    /* zstd only when it saves bytes, and never below the shortest frame
     * FRAME_MIN (the frame check refuses shorter ones). */
    if (ZSTD_isError(zn) || ENC_HDR + zn >= plen || ENC_HDR + zn < PT_FIXED + 1) {
        kind = ENC_STORED;
        memcpy(z->z.data + ENC_HDR, z->pt.data, plen);
        zn = plen;
    }
    z->z.data[0] = kind;
    cv_be32(z->z.data + 1, (uint32_t)plen);
    z->z.len = ENC_HDR + zn;
    return 0;
}

/* Encodes one entry into the partition's current segment buffer; z set:
 * compressed, in a version-2 segment (COMPRESSION). */
static int encode(cv_applog *log, part *p, cv_applog_entry *e, zwork *z) {
    size_t tl = strlen(p->topic);
    size_t plen = PT_FIXED + tl + e->value_len;
    if (z) {
        int r = encode_plain(z, p, tl, e);
        if (r < 0)
            return r;
        plen = z->z.len;
    }
    size_t len = FRAME_HDR + plen + TAG_BYTES;
    if (len > FRAME_MAX)
        return -EMSGSIZE;
    uint16_t version = z ? HDR_VERSION_Z : HDR_VERSION;
    if (!p->cur || (p->cur->nrec > 0 && p->cur->size + len > log->segment_bytes) ||
        p->cur->h.version != version) {
        int r = new_segment(log, p, e->offset, version);
        if (r < 0)
            return r;
    }
    wseg *w = p->cur;
    int r = touch(p, w);
    if (r < 0)
        return r;
    cv_applog_i_buf_take(log, &w->buf);
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
    if (z)
        memcpy(pt, z->z.data, plen);
    else
        put_plain(pt, p, tl, e);
    unsigned char ad[AD_BYTES], nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES];
    cv_applog_i_build_ad(ad, w->h.hash, f, pos, p->chain);
    cv_applog_i_build_nonce(nonce, w->nrec);
    crypto_aead_chacha20poly1305_ietf_encrypt_detached(
        pt, f + FRAME_HDR + plen, NULL, pt, plen, ad, sizeof(ad), NULL, nonce, w->subkey);
    cv_be32(f + 4, cv_applog_i_crc32c(f + 8, len - 8));
    cv_applog_i_chain_next(p->chain, p->chain, f, len);
    memcpy(e->digest, p->chain, DIGEST);
    if ((r = cv_applog_i_index_push(p, e->offset)) < 0)
        return r;
    w->buf.len += len;
    w->size += len;
    w->nrec++;
    p->last = e->offset;
    return 0;
}

/* Everything one append does to one partition: encode its entries, then
 * cv_applog_i_flush_part (sync.c). Touches only p (and the files of p), so
 * partitions run in parallel (on pool.c's workers). Result in p->jr /
 * p->jerr. */
void cv_applog_i_part_job(cv_applog *log, part *p) {
    int r = 0;
    zwork *z = NULL;
    if (log->zlevel && !(z = cv_applog_i_zwork_take(log))) {
        snprintf(p->jerr, sizeof(p->jerr), "log %s: no memory to compress with", p->dir);
        r = -ENOMEM;
    }
    for (size_t k = 0; k < p->njidx && r == 0; k++) {
        cv_applog_entry *e = &log->entries[p->jidx[k]];
        part *into = p->ngen ? p->ngen : p;
        if (!p->ngen) {
            int h = 2; /* 2: not held, write it into `into` */
            size_t hi;
            if (p->hlen &&
                (hi = cv_applog_i_find_offset(p->hoff, p->hlen, e->offset)) < p->hlen) {
                h = cv_applog_i_repair_held(p, hi, e); /* rebuilt there by a repair */
            } else if (e->offset <= p->last) {
                h = cv_applog_i_lookup_held(log, p, e, p->jerr, sizeof(p->jerr));
                if (h == -ERANGE && !p->repair) {
                    /* A late record (not held, below the tail). */
                    if ((r = cv_applog_i_late_part(log, p, &into)) < 0)
                        continue;
                    if (e->offset <= into->last)
                        h = cv_applog_i_lookup_held(log, into, e, p->jerr,
                                                    sizeof(p->jerr));
                    else
                        h = 2;
                }
            }
            if (h == 1)
                continue; /* already held: these very bytes */
            if (h == 0 && !p->repair) {
                /* Another message at a held offset: Kafka's offsets started
                 * over. It and the rest go to a new generation. */
                if ((r = cv_applog_i_gen_part(log, p, e->offset, &into)) < 0)
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
        if ((r = encode(log, into, e, z)) < 0 && r != -ENOKEY)
            snprintf(p->jerr, sizeof(p->jerr),
                     "log %s: cannot encode offset %" PRId64 ": %s", into->dir, e->offset,
                     r == -EMSGSIZE ? "record too large" : strerror(-r));
    }
    cv_applog_i_zwork_give(log, z);
    if (r == 0)
        r = cv_applog_i_flush_part(log, p);
    if (r == 0 && p->late && p->late->ntouched) {
        r = cv_applog_i_flush_part(log, p->late);
        if (r < 0)
            memcpy(p->jerr, p->late->jerr, sizeof(p->jerr));
    }
    if (r == 0 && p->ngen && p->ngen->ntouched) {
        r = cv_applog_i_flush_part(log, p->ngen);
        if (r < 0)
            memcpy(p->jerr, p->ngen->jerr, sizeof(p->jerr));
    }
    /* Written or failed, the frames are not needed again: a failed append
     * is undone from the files' durable sizes and re-encoded if retried. */
    for (size_t i = 0; i < p->ntouched; i++)
        cv_applog_i_buf_give(log, &p->touched[i]->buf);
    for (size_t i = 0; p->late && i < p->late->ntouched; i++)
        cv_applog_i_buf_give(log, &p->late->touched[i]->buf);
    for (size_t i = 0; p->ngen && i < p->ngen->ntouched; i++)
        cv_applog_i_buf_give(log, &p->ngen->touched[i]->buf);
    p->jr = r;
}

static void commit(part *p) {
    if (p->late && p->late->state == PART_READY)
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
            cv_applog_i_wseg_free(w); /* rolled away from: sealed */
    }
    if (p->dcur && p->dcur != p->cur && !dcur_touched)
        cv_applog_i_wseg_free(p->dcur);
    p->ntouched = 0;
    p->dcur = p->cur;
    memcpy(p->dchain, p->chain, DIGEST);
    p->dlast = p->last;
    cv_applog_i_index_trim(p);
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

/* Undoes everything the current append did to p: truncates back to the
 * durable size, removes new segments. Returns <0 if that failed too (the
 * partition is then refused: its files are in an unknown state). */
static int rollback(cv_applog *log, part *p) {
    if (p->late && p->late->state == PART_READY)
        rollback(log, p->late);
    int bad = 0;
    if (p->ngen) {
        /* Nothing of the new generation was durable: it goes again. */
        part *g = p->ngen;
        p->ngen = NULL;
        bad = rollback(log, g);
        if (bad == 0)
            rmdir(g->dir);
        cv_applog_i_part_free(g);
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
        cv_applog_i_wseg_free(w);
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
        cv_applog_i_part_refuse(p, bad, msg);
    }
    return bad;
}

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
    cv_applog_i_seal_part(log, g); /* no session writes the old generation again */
    cv_applog_i_part_free(g);
    if (log->gen_fn)
        log->gen_fn(log->gen_opaque, p->topic, p->partition, at, held_last, p->dir);
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
        if ((r = cv_applog_i_get_part(log, e->topic, e->partition, &p, errbuf, errlen)) <
            0)
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
        if ((r = cv_applog_i_sys_fsync_dir(log, log->dir)) < 0) {
            cv_errf(errbuf, errlen, "log directory %s: fsync: %s", log->dir,
                    strerror(-r));
            goto fail;
        }
        log->dir_unsynced = false;
    }
    log->entries = entries;
    cv_applog_i_run_parts(log, tp, ntp);
    log->entries = NULL;
    for (size_t k = 0; k < ntp; k++)
        if (tp[k]->jr < 0) {
            r = tp[k]->jr;
            cv_errf(errbuf, errlen, "%s", tp[k]->jerr);
            goto fail;
        }
    if (log->sync == CV_APPLOG_SYNC_SYNCFS) {
        if ((r = cv_applog_i_sync_all(log, tp, ntp, errbuf, errlen)) < 0)
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
    const part *p = cv_applog_i_find_part(log, topic, partition);
    if (!p || p->state != PART_READY)
        return -ENOENT;
    *ret_requested = p->last;
    *ret_durable = p->dlast;
    return 0;
}
