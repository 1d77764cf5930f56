/*
 * applog/format.c — the bytes of the log: CRC32C, the segment header's
 * encoding, the record frame's cheap check, the cipher's nonce and
 * additional data, the chain hash, the key check, the value id and the
 * decoding of a compressed record. No file I/O here. The layouts are in
 * FORMAT.md ("Segment header", "Record frame", "Compression").
 */
#include "internal.h"

#include <errno.h>
#include <sodium.h>

#include <stdio.h>
#include <string.h>
#include <zstd.h>

#include "util.h"

static uint32_t crc_table[8][256];

static void crc_init_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] =
                (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

static uint32_t crc32c_sw(const unsigned char *p, size_t n) {
    uint32_t c = 0xffffffffu;
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
            crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
            crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
            crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(const unsigned char *p,
                                                            size_t n) {
    uint64_t c = 0xffffffffu;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32 ^ 0xffffffffu;
}
#define HAVE_CRC_HW 1
#endif

static uint32_t (*crc32c_fn)(const unsigned char *, size_t);

static void crc_setup(void) {
    if (crc32c_fn)
        return;
    crc_init_table();
#ifdef HAVE_CRC_HW
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) {
        crc32c_fn = crc32c_hw;
        return;
    }
#endif
    crc32c_fn = crc32c_sw;
}

const char *cv_applog_i_crc_line(const char *text, size_t len, char *line, size_t cap,
                                 const char *notline, const char *badcrc) {
    if (len == 0 || len >= cap || text[len - 1] != '\n' || memchr(text, 0, len))
        return notline;
    memcpy(line, text, len - 1);
    line[len - 1] = '\0';
    char *sp = strrchr(line, ' ');
    unsigned crc;
    if (!sp)
        return notline;
    if (sscanf(sp + 1, "%8x", &crc) != 1 || strlen(sp + 1) != 8 ||
        cv_applog_i_crc32c(line, (size_t)(sp - line)) != crc)
        return badcrc;
    *sp = '\0';
    return NULL;
}

uint32_t cv_applog_i_crc32c(const void *p, size_t n) {
    return crc32c_fn((const unsigned char *)p, n);
}

int cv_applog_i_lib_init(char *errbuf, size_t errlen) {
    if (sodium_init() < 0) {
        cv_errf(errbuf, errlen, "libsodium failed to initialise");
        return -EIO;
    }
    crc_setup();
    return 0;
}

/* Encodes h into out (HDR_MAX bytes); returns the length. Fills h->hash. */
size_t cv_applog_i_hdr_encode(seghdr *h, unsigned char *out) {
    size_t nlen = strlen(h->writer_name);
    size_t extra = h->repair ? DIGEST : 0;
    size_t hl = HDR_FIXED + h->topic_len + nlen + extra + 4;
    memcpy(out, h->repair ? HDR_MAGIC_REPAIR : HDR_MAGIC, 8);
    cv_be16(out + 8, h->version ? h->version : HDR_VERSION);
    cv_be16(out + 10, (uint16_t)hl);
    cv_be32(out + 12, h->key_id);
    memcpy(out + 16, h->seg_id, 16);
    memcpy(out + 32, h->writer_id, 16);
    cv_be64(out + 48, (uint64_t)h->first_offset);
    cv_be64(out + 56, (uint64_t)h->created_us);
    memcpy(out + 64, h->prev_chain, DIGEST);
    cv_be32(out + 96, (uint32_t)h->partition);
    cv_be16(out + 100, (uint16_t)h->topic_len);
    cv_be16(out + 102, (uint16_t)nlen);
    memcpy(out + 104, h->key_check, 16);
    memcpy(out + HDR_FIXED, h->topic, h->topic_len);
    memcpy(out + HDR_FIXED + h->topic_len, h->writer_name, nlen);
    if (extra)
        memcpy(out + HDR_FIXED + h->topic_len + nlen, h->bridge, DIGEST);
    cv_be32(out + hl - 4, cv_applog_i_crc32c(out, hl - 4));
    h->hlen = (uint16_t)hl;
    crypto_generichash(h->hash, DIGEST, out, hl, NULL, 0);
    return hl;
}

/* Decodes a header; returns NULL or what is wrong. */
const char *cv_applog_i_hdr_decode(const unsigned char *p, size_t size, seghdr *h) {
    if (size < HDR_FIXED + 4)
        return "file is shorter than a segment header";
    if (memcmp(p, HDR_MAGIC, 8) != 0 && memcmp(p, HDR_MAGIC_REPAIR, 8) != 0)
        return "not a chatvault log segment (bad magic)";
    uint16_t version = rd16(p + 8);
    if (version != HDR_VERSION && version != HDR_VERSION_Z)
        return "unknown segment format version";
    size_t hl = rd16(p + 10);
    size_t tl = rd16(p + 100), nl = rd16(p + 102);
    bool repair = memcmp(p, HDR_MAGIC_REPAIR, 8) == 0;
    size_t extra = repair ? DIGEST : 0;
    if (hl != HDR_FIXED + tl + nl + extra + 4 || tl == 0 || tl > 255 ||
        nl > WRITER_NAME_MAX || hl > size)
        return "bad segment header length";
    if (cv_applog_i_crc32c(p, hl - 4) != rd32(p + hl - 4))
        return "segment header CRC mismatch";
    h->version = version;
    h->hlen = (uint16_t)hl;
    h->repair = memcmp(p, HDR_MAGIC_REPAIR, 8) == 0;
    h->key_id = rd32(p + 12);
    memcpy(h->seg_id, p + 16, 16);
    memcpy(h->writer_id, p + 32, 16);
    h->first_offset = (int64_t)rd64(p + 48);
    h->created_us = (int64_t)rd64(p + 56);
    memcpy(h->prev_chain, p + 64, DIGEST);
    h->partition = (int32_t)rd32(p + 96);
    memcpy(h->key_check, p + 104, 16);
    h->topic_len = tl;
    memcpy(h->topic, p + HDR_FIXED, tl);
    h->topic[tl] = '\0';
    memcpy(h->writer_name, p + HDR_FIXED + tl, nl);
    h->writer_name[nl] = '\0';
    memset(h->bridge, 0, DIGEST);
    if (extra)
        memcpy(h->bridge, p + HDR_FIXED + tl + nl, DIGEST);
    crypto_generichash(h->hash, DIGEST, p, hl, NULL, 0);
    return NULL;
}

void cv_applog_i_build_ad(unsigned char *ad, const unsigned char *hh,
                          const unsigned char *frame, uint64_t pos,
                          const unsigned char *prev) {
    memcpy(ad, hh, DIGEST);
    memcpy(ad + 32, frame + 8, 24);
    cv_be64(ad + 56, pos);
    memcpy(ad + 64, prev, DIGEST);
}

/* XChaCha20-Poly1305 with nonce N = segment id (16) || index (8) is, by
 * its definition, ChaCha20-Poly1305-IETF under the subkey
 * HChaCha20(key, segment id) with nonce 0 (4) || index (8). The subkey is
 * the same for a whole segment, so it is derived once per segment instead
 * of once per record. */
void cv_applog_i_segment_subkey(unsigned char *subkey, const unsigned char *seg_id,
                                const unsigned char *key) {
    crypto_core_hchacha20(subkey, seg_id, key, NULL);
}

void cv_applog_i_build_nonce(unsigned char *nonce, uint64_t index) {
    memset(nonce, 0, 4);
    cv_be64(nonce + 4, index);
}

void cv_applog_i_key_check(unsigned char *out, const unsigned char *seg_id,
                           const unsigned char *key) {
    crypto_generichash_state st;
    crypto_generichash_init(&st, key, CV_KEY_BYTES, 16);
    crypto_generichash_update(&st, (const unsigned char *)KEYCHECK_CONTEXT,
                              sizeof(KEYCHECK_CONTEXT) - 1);
    crypto_generichash_update(&st, seg_id, 16);
    crypto_generichash_final(&st, out, 16);
}

void cv_applog_i_chain_next(unsigned char *out, const unsigned char *prev,
                            const unsigned char *frame, size_t len) {
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, DIGEST);
    crypto_generichash_update(&st, prev, DIGEST);
    crypto_generichash_update(&st, frame, len);
    crypto_generichash_final(&st, out, DIGEST);
}

/* Checks magic, length and CRC of the frame at pos; returns NULL or why. */
const char *cv_applog_i_frame_check(const unsigned char *map, size_t size, size_t pos,
                                    uint32_t *ret_len) {
    if (size - pos < FRAME_HDR)
        return "short frame (file ends inside a frame header)";
    const unsigned char *f = map + pos;
    if (memcmp(f, FRAME_MAGIC, 4) != 0)
        return "bad frame magic";
    uint32_t len = rd32(f + 8);
    if (len < FRAME_MIN || len > FRAME_MAX)
        return "bad frame length";
    if (len > size - pos)
        return "short frame (file ends inside the frame)";
    if (cv_applog_i_crc32c(f + 8, len - 8) != rd32(f + 4))
        return "frame CRC mismatch";
    *ret_len = len;
    return NULL;
}

void cv_applog_i_value_id(unsigned char *out, const void *value, size_t len) {
    crypto_generichash(out, VAL_ID, value, len, NULL, 0);
}

/* COMPRESSION: decodes a version-2 record's encoded plaintext (n bytes,
 * authenticated already) into plain. *dctx is made on first use and is the
 * caller's to free (ZSTD_freeDCtx). Returns what is wrong (the record is
 * damage), or NULL: decoded when *ret_r is 0, else *ret_r is -ENOMEM. The length the record declares is checked against
 * PT_MAX before anything is allocated, and the zstd frame must declare that
 * length too and decompress to exactly it. */
const char *cv_applog_i_decode_plain(const unsigned char *enc, size_t n, ZSTD_DCtx **dctx,
                                     cv_buf *plain, int *ret_r) {
    *ret_r = 0;
    if (n < ENC_HDR)
        return "encoded record shorter than its encoding header";
    unsigned kind = enc[0];
    uint32_t u = rd32(enc + 1);
    if (kind != ENC_STORED && kind != ENC_ZSTD)
        return "unknown record encoding";
    if (u > PT_MAX)
        return "record declares a plaintext over the limit";
    if (kind == ENC_STORED && u != n - ENC_HDR)
        return "stored record's length does not match its frame";
    plain->len = 0;
    int r = cv_buf_reserve(plain, u ? u : 1);
    if (r < 0) {
        *ret_r = r;
        return NULL;
    }
    if (kind == ENC_STORED) {
        memcpy(plain->data, enc + ENC_HDR, u);
        plain->len = u;
        return NULL;
    }
    const unsigned char *z = enc + ENC_HDR;
    size_t zn = n - ENC_HDR;
    unsigned long long fcs = ZSTD_getFrameContentSize(z, zn);
    if (fcs != (unsigned long long)u)
        return "compressed record's zstd frame does not declare its length";
    if (!*dctx && !(*dctx = ZSTD_createDCtx())) {
        *ret_r = -ENOMEM;
        return NULL;
    }
    size_t got = ZSTD_decompressDCtx(*dctx, plain->data, u, z, zn);
    if (ZSTD_isError(got))
        return "compressed record does not decompress";
    if (got != u)
        return "compressed record decompresses to another length than it declares";
    plain->len = u;
    return NULL;
}
