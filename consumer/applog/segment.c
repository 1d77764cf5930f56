/*
 * applog/segment.c — reading one segment file: maps it, decodes its header
 * and returns its records one by one with every check of FORMAT.md
 * ("Record frame"): frame CRC, record index, batch order, ascending
 * offsets, authentication and the chain; a version-2 segment's records are
 * then decoded ("Compression"). Whether a failure is a torn tail
 * or damage is for the caller to decide (reader.c, with recovery.c).
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "util.h"

void cv_applog_i_seg_close(seg *s) {
    if (s->map && s->size)
        munmap(s->map, s->size);
    free(s->path);
    if (s->enc.data)
        sodium_memzero(s->enc.data, s->enc.cap);
    cv_buf_release(&s->enc);
    ZSTD_freeDCtx(s->dctx);
    sodium_memzero(s->subkey, sizeof(s->subkey));
    memset(s, 0, sizeof(*s));
}

/* Maps the file and decodes its header. On error fills errbuf. */
int cv_applog_i_seg_open(seg *s, const char *path, char *errbuf, size_t errlen) {
    memset(s, 0, sizeof(*s));
    s->last_offset = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        cv_errf(errbuf, errlen, "log segment %s: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        cv_errf(errbuf, errlen, "log segment %s: %s", path, strerror(e));
        return -e;
    }
    s->size = (size_t)st.st_size;
    if (s->size) {
        void *m = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            cv_errf(errbuf, errlen, "log segment %s: mmap: %s", path, strerror(e));
            return -e;
        }
        s->map = m;
    }
    close(fd);
    s->path = strdup(path);
    if (!s->path) {
        cv_applog_i_seg_close(s);
        return -ENOMEM;
    }
    const char *why = cv_applog_i_hdr_decode(s->map, s->size, &s->h);
    if (why) {
        cv_errf(errbuf, errlen, "log segment %s at byte 0: %s", path, why);
        cv_applog_i_seg_close(s);
        return -CV_ECORRUPT;
    }
    s->pos = s->h.hlen;
    memcpy(s->chain, s->h.prev_chain, DIGEST);
    cv_buf_init(&s->enc, FRAME_MAX);
    return 0;
}

/* Reads the next record. key NULL: no decryption. plain receives the
 * plaintext. Returns 1, 0 at the end, or -CV_ECORRUPT / -EBADMSG with
 * errbuf set and *ret_at the failing position. */
int cv_applog_i_seg_next(seg *s, const unsigned char *key, cv_buf *plain, rawrec *out,
                         uint64_t *ret_at, char *errbuf, size_t errlen) {
    if (s->pos == s->size)
        return 0;
    *ret_at = s->pos;
    uint32_t len;
    const char *why = cv_applog_i_frame_check(s->map, s->size, s->pos, &len);
    if (why) {
        cv_errf(errbuf, errlen, "log segment %s at byte %zu: %s", s->path, s->pos, why);
        return -CV_ECORRUPT;
    }
    const unsigned char *f = s->map + s->pos;
    uint32_t batch = rd32(f + 12);
    uint64_t index = rd64(f + 16);
    int64_t offset = (int64_t)rd64(f + 24);
    if (index != s->index) {
        cv_errf(errbuf, errlen,
                "log segment %s at byte %zu: record index %" PRIu64 " where %" PRIu64
                " was expected (record dropped or moved)",
                s->path, s->pos, index, s->index);
        return -CV_ECORRUPT;
    }
    if (batch < s->batch || batch == 0 || (s->batch == 0 && batch != 1)) {
        cv_errf(errbuf, errlen,
                "log segment %s at byte %zu: batch number %" PRIu32 " out of order",
                s->path, s->pos, batch);
        return -CV_ECORRUPT;
    }
    if (s->index == 0 ? offset != s->h.first_offset : offset <= s->last_offset) {
        cv_errf(errbuf, errlen,
                "log segment %s at byte %zu: offset %" PRId64
                " does not follow offset %" PRId64,
                s->path, s->pos, offset, s->last_offset);
        return -CV_ECORRUPT;
    }
    out->value = NULL;
    out->value_len = 0;
    out->timestamp_ms = -1;
    out->partition = s->h.partition;
    if (key) {
        unsigned char ad[AD_BYTES], nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES];
        cv_applog_i_build_ad(ad, s->h.hash, f, s->pos, s->chain);
        cv_applog_i_build_nonce(nonce, index);
        size_t plen = len - FRAME_HDR - TAG_BYTES;
        /* A version-2 record decrypts to its encoded plaintext (COMPRESSION). */
        cv_buf *into = s->h.version == HDR_VERSION_Z ? &s->enc : plain;
        into->len = 0;
        int r = cv_buf_reserve(into, plen);
        if (r < 0)
            return r;
        if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(
                into->data, NULL, f + FRAME_HDR, plen, f + len - TAG_BYTES, ad,
                sizeof(ad), nonce, key) != 0) {
            cv_errf(errbuf, errlen,
                    "log segment %s at byte %zu: record fails authentication "
                    "(changed, moved or reordered, or wrong key)",
                    s->path, s->pos);
            return -EBADMSG;
        }
        into->len = plen;
        if (into == &s->enc) {
            why = cv_applog_i_decode_plain(s->enc.data, plen, &s->dctx, plain, &r);
            if (r < 0)
                return r;
            if (why) {
                cv_errf(errbuf, errlen,
                        "log segment %s at byte %zu: offset %" PRId64 ": %s", s->path,
                        s->pos, offset, why);
                return -CV_ECORRUPT;
            }
            plen = plain->len;
        }
        const unsigned char *p = plain->data;
        size_t tl = rd16(p + 20);
        if (PT_FIXED + tl > plen || (int64_t)rd64(p) != offset ||
            (int32_t)rd32(p + 16) != s->h.partition || tl != s->h.topic_len ||
            memcmp(p + PT_FIXED, s->h.topic, tl) != 0) {
            cv_errf(errbuf, errlen,
                    "log segment %s at byte %zu: record coordinates do not match "
                    "its frame and segment header",
                    s->path, s->pos);
            return -CV_ECORRUPT;
        }
        out->timestamp_ms = (int64_t)rd64(p + 8);
        out->value = p + PT_FIXED + tl;
        out->value_len = plen - PT_FIXED - tl;
    }
    cv_applog_i_chain_next(s->chain, s->chain, f, len);
    memcpy(out->digest, s->chain, DIGEST);
    out->offset = offset;
    out->pos = s->pos;
    out->frame = f;
    out->frame_len = len;
    s->last_pos = s->pos;
    s->last_offset = offset;
    s->batch = batch;
    s->index++;
    s->pos += len;
    return 1;
}
