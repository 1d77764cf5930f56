/*
 * chatvault export / import — the data-migration interface: a channel's
 * history (any selection) out of one site as JSON Lines, and into another
 * site's PostgreSQL.
 *
 * The file: one JSON object per message, in (channel, partition, offset)
 * order,
 *   {"channel":"c","message_id":"m","topic":"chat.c","partition":0,
 *    "offset":42,"kafka_timestamp_ms":...,"sender_id":"s","sent_at_us":...,
 *    "content_type":"text/plain","attributes":{"k":"v"},"reply_to":"",
 *    "persisted_at_us":...,"body_encoding":"utf-8","body":"hello"}
 * plus "revision":N and "deleted":true on a version that has them (README
 * "Edits and deletes"); without --history only each message's latest
 * version is exported (from PostgreSQL; the log has every version).
 * where body_encoding is "utf-8" when the body is valid UTF-8 without NUL
 * bytes and content_type is textual (text/..., or JSON or XML), else
 * "base64"; kafka_timestamp_ms and persisted_at_us are null when unknown
 * (the log keeps no store time). The last line is the manifest:
 *   {"manifest":{"format":"chatvault-export-1","count":N,
 *    "digest":"sha256:<hex of SHA-256 over every byte before this line>",
 *    "exported_at_us":...}}
 * With --compress zstd the file is one zstd stream (RFC 8878) of exactly
 * these bytes (`zstd -d` gives the export back; digest and count are over
 * the uncompressed lines). Import reads the uncompressed file only, and
 * says so when it is given a zstd stream.
 * Import reads the file twice: first it checks every line parses, the count
 * and the digest, and refuses the file on any mismatch before writing
 * anything; then it loads through the broker's own PostgreSQL write path
 * (consumer/pg/pgstore.h), in batches, idempotently: a message already there
 * (same channel and message id) is not written again, so importing twice
 * is harmless. Kafka coordinates are kept; chatvault.kafka_offsets is not
 * touched (no consumer group of the importing site has read anything);
 * persisted_at is the import time.
 */
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#include "access.h"
#include "arena.h"
#include "chatvault.pb-c.h"
#include "cli.h"
#include "ingest/envelope.h"
#include "json.h"
#include "keyring.h"
#include "msgsource.h"
#include "pg/pgstore.h"
#include "progress.h"
#include "record.h"
#include "select.h"
#include "util.h"

#define FORMAT "chatvault-export-1"
#define LINE_MAX_BYTES ((size_t)256 << 20)
#define IMPORT_BATCH 1000

static bool textual(const char *ct) {
    return strncmp(ct, "text/", 5) == 0 || strstr(ct, "json") || strstr(ct, "xml");
}

static int put_str(cv_buf *b, const char *key, const char *v) {
    int r = cv_buf_printf(b, ",\"%s\":", key);
    return r < 0 ? r : cv_buf_json_string(b, v, strlen(v));
}

static int export_line(cv_buf *b, const cv_msg *m) {
    int r = cv_buf_append(b, "{\"channel\":", 11);
    if (r == 0)
        r = cv_buf_json_string(b, m->channel, strlen(m->channel));
    if (r == 0)
        r = put_str(b, "message_id", m->message_id);
    if (r == 0)
        r = put_str(b, "topic", m->topic);
    if (r == 0)
        r = cv_buf_printf(b, ",\"partition\":%" PRId32 ",\"offset\":%" PRId64,
                          m->partition, m->offset);
    if (r == 0)
        r = m->timestamp_ms >= 0
                ? cv_buf_printf(b, ",\"kafka_timestamp_ms\":%" PRId64, m->timestamp_ms)
                : cv_buf_printf(b, ",\"kafka_timestamp_ms\":null");
    if (r == 0)
        r = put_str(b, "sender_id", m->sender_id);
    if (r == 0)
        r = cv_buf_printf(b, ",\"sent_at_us\":%" PRId64, m->sent_at_us);
    if (r == 0)
        r = put_str(b, "content_type", m->content_type);
    if (r == 0)
        r = cv_buf_append(b, ",\"attributes\":{", 15);
    for (size_t i = 0; r == 0 && i < m->nattrs; i++) {
        if (i)
            r = cv_buf_append(b, ",", 1);
        if (r == 0)
            r = cv_buf_json_string(b, m->attrs[2 * i], strlen(m->attrs[2 * i]));
        if (r == 0)
            r = cv_buf_append(b, ":", 1);
        if (r == 0)
            r = cv_buf_json_string(b, m->attrs[2 * i + 1], strlen(m->attrs[2 * i + 1]));
    }
    if (r == 0)
        r = cv_buf_append(b, "}", 1);
    if (r == 0)
        r = put_str(b, "reply_to", m->reply_to);
    /* Versions: only when set, so an export of originals reads as before. */
    if (r == 0 && m->revision)
        r = cv_buf_printf(b, ",\"revision\":%" PRIu32, m->revision);
    if (r == 0 && m->deleted)
        r = cv_buf_printf(b, ",\"deleted\":true");
    if (r == 0)
        r = m->persisted_at_us >= 0
                ? cv_buf_printf(b, ",\"persisted_at_us\":%" PRId64, m->persisted_at_us)
                : cv_buf_printf(b, ",\"persisted_at_us\":null");
    bool text = textual(m->content_type) && !memchr(m->body, 0, m->body_len) &&
                cv_utf8_valid((const char *)m->body, m->body_len);
    if (r == 0)
        r = cv_buf_printf(
            b, ",\"body_encoding\":\"%s\",\"body\":", text ? "utf-8" : "base64");
    if (r == 0) {
        if (text) {
            r = cv_buf_json_string(b, (const char *)m->body, m->body_len);
        } else {
            r = cv_buf_append(b, "\"", 1);
            if (r == 0)
                r = cv_buf_base64(b, m->body, m->body_len);
            if (r == 0)
                r = cv_buf_append(b, "\"", 1);
        }
    }
    if (r == 0)
        r = cv_buf_append(b, "}\n", 2);
    return r;
}

typedef struct export_opts {
    cv_src_mode mode;
    const char *output;
    bool quiet;
    bool zstd;
    int64_t zlevel;
    cv_cli_log_dirs ld;
    cv_select sel;
} export_opts;

static int compress_opt(const cv_cli_opt *opt, void *dest, const char *cmd,
                        const char *value) {
    bool *zstd = dest;
    if (strcmp(value, "zstd") == 0 || strcmp(value, "off") == 0) {
        *zstd = value[0] == 'z';
        return 0;
    }
    cv_error(cmd, "--compress is off or zstd, not '%s'", value);
    return -1;
}

static const cv_cli_opt export_opts_table[] = {
    CV_OPT_CALL_AT("source", 0, "pg|log|auto",
                   "where messages come from (default auto, as replay)", export_opts,
                   mode, cv_src_mode_opt, 0),
    CV_OPT_STR("output", 'o', "FILE",
               "write to FILE (replaced when complete) instead of stdout", export_opts,
               output),
    CV_OPT_LIST("log-dir", 0, "DIR",
                "read this log directory instead of log.dir (repeatable)", export_opts,
                ld.dir, ld.n),
    CV_OPT_CALL_AT("compress", 0, "off|zstd",
                   "zstd: write one zstd stream of the export (name the file .zst; "
                   "zstd -d gives the JSON Lines back); default off",
                   export_opts, zstd, compress_opt, 0),
    CV_OPT_INT("compress-level", 0, "N", "zstd level, 1 (fastest) to 19 (default 3)",
               export_opts, zlevel, 1, 19),
    CV_OPT_FLAG("history", 0,
                "every version of an edited or deleted message, not only its latest "
                "(PostgreSQL; the log always has every version)",
                export_opts, sel.history),
    CV_OPT_FLAG("quiet", 0, "no progress display", export_opts, quiet),
    CV_OPT_END,
};

static const cv_cli_group export_selection = {CV_SELECT_TITLE, cv_select_opts,
                                              offsetof(export_opts, sel)};

static const cv_cli_spec export_spec = {
    .name = "export",
    .usage = "export [-c FILE] [--set key=value]... [selection] [--source pg|log|auto]\n"
             "                        [--output FILE] [--compress off|zstd]",
    .about = "Writes the selected messages as JSON Lines, one object per message, and "
             "a\nlast line with a manifest (count and SHA-256 digest of the lines "
             "before it).\nThe body is text when it is valid UTF-8 and content_type is "
             "textual, else\nbase64 (\"body_encoding\"). `chatvault import` loads the "
             "file into another\ndatabase.\n",
    .opts = export_opts_table,
    .group = &export_selection,
};

/* The log's keys (or, in auto mode, a warning and PostgreSQL alone) and
 * the message source. Returns CV_EXIT_OK or the exit code after the
 * error. */
static int export_open(export_opts *o, const cv_config *cfg, cv_keyring **keys,
                       cv_src **src) {
    char err[1024];
    cv_cli_default_log_dir(&o->ld, cfg);
    if (o->mode != CV_SRC_PG && o->ld.n &&
        cv_cli_load_keys(cfg, &o->ld, keys, err, sizeof(err)) < 0) {
        if (o->mode == CV_SRC_LOG) {
            cv_error("export", "%s (log.key_file)", err);
            return CV_EXIT_FAILURE;
        }
        cv_log(CV_LOG_WARN, "log unreadable: exporting from PostgreSQL only",
               "error=\"%s\"", err);
        o->ld.n = 0;
    }
    cv_src_conf sc = {
        .mode = o->mode,
        .pg_conninfo = cv_access_conninfo(cfg, CV_PG_READER),
        .pg_conninfo_key = cv_access_conninfo_key(cfg, CV_PG_READER),
        .log_dirs = o->ld.dir,
        .nlog_dirs = o->mode == CV_SRC_PG ? 0 : o->ld.n,
        .keys = *keys,
        .topic_prefix = cv_config_str(cfg, "topics.prefix"),
        .sel = &o->sel,
    };
    char pgerr[512] = "";
    if (cv_src_open(&sc, src, pgerr, sizeof(pgerr), err, sizeof(err)) < 0) {
        cv_error("export", "%s", err);
        return CV_EXIT_FAILURE;
    }
    if (*pgerr)
        cv_log(CV_LOG_WARN, "postgres unavailable: exporting from the log",
               "error=\"%s\"", pgerr);
    return CV_EXIT_OK;
}

/* The file being written: --output's temporary file, or stdout; with
 * --compress zstd through a zstd stream. */
typedef struct export_file {
    const char *output; /* NULL: stdout */
    char *tmp;
    FILE *out;
    ZSTD_CCtx *zc; /* NULL: uncompressed */
    unsigned char *zbuf;
    size_t zcap;
} export_file;

static const char *export_name(const export_file *f) {
    return f->output ? f->tmp : "stdout";
}

/* Writes n bytes (compressed when f->zc; end: the stream's last bytes).
 * 0, or -1 after the error. */
static int export_put(export_file *f, const void *p, size_t n, bool end) {
    if (!f->zc) {
        if (fwrite(p, 1, n, f->out) == n)
            return 0;
        cv_error("export", "%s: %s", export_name(f), strerror(errno));
        return -1;
    }
    ZSTD_inBuffer in = {p, n, 0};
    size_t left;
    do {
        ZSTD_outBuffer ob = {f->zbuf, f->zcap, 0};
        left = ZSTD_compressStream2(f->zc, &ob, &in, end ? ZSTD_e_end : ZSTD_e_continue);
        if (ZSTD_isError(left)) {
            cv_error("export", "%s: zstd: %s", export_name(f), ZSTD_getErrorName(left));
            return -1;
        }
        if (ob.pos && fwrite(f->zbuf, 1, ob.pos, f->out) != ob.pos) {
            cv_error("export", "%s: %s", export_name(f), strerror(errno));
            return -1;
        }
    } while (in.pos < in.size || (end && left));
    return 0;
}

/* Writes every message and the manifest; hex receives the digest. 0, or
 * -1 after the error. */
static int export_lines(cv_src *src, export_file *f, bool quiet, uint64_t *ret_count,
                        uint64_t *ret_from_log, char *hex, size_t hexlen) {
    char err[1024];
    cv_buf line;
    cv_buf_init(&line, LINE_MAX_BYTES);
    crypto_hash_sha256_state hs;
    crypto_hash_sha256_init(&hs);
    cv_progress prog;
    cv_progress_init(&prog, "export", !quiet);
    uint64_t count = 0, from_log = 0;
    cv_msg m;
    int r;
    while ((r = cv_src_next(src, &m, err, sizeof(err))) == 1) {
        line.len = 0;
        if (export_line(&line, &m) < 0) {
            cv_error("export", "message %s of channel %s does not fit in a line",
                     m.message_id, m.channel);
            goto fail;
        }
        crypto_hash_sha256_update(&hs, line.data, line.len);
        if (export_put(f, line.data, line.len, false) < 0)
            goto fail;
        count++;
        from_log += m.from_log;
        cv_progress_update(&prog, count, 0, m.channel);
    }
    cv_progress_end(&prog);
    if (r < 0) {
        cv_error("export", "%s", err);
        goto fail;
    }
    unsigned char dg[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&hs, dg);
    sodium_bin2hex(hex, hexlen, dg, sizeof(dg));
    char mf[512];
    int ml = snprintf(mf, sizeof(mf),
                      "{\"manifest\":{\"format\":\"" FORMAT "\",\"count\":%" PRIu64
                      ",\"digest\":\"sha256:%s\",\"exported_at_us\":%" PRId64 "}}\n",
                      count, hex, cv_now_us());
    if (export_put(f, mf, (size_t)ml, true) < 0)
        goto fail;
    cv_buf_release(&line);
    *ret_count = count;
    *ret_from_log = from_log;
    return 0;
fail:
    cv_buf_release(&line);
    return -1;
}

/* Makes the file durable and, with --output, puts it in place. */
static int export_finish(export_file *f) {
    if (fflush(f->out) != 0 || (f->output && (fsync(fileno(f->out)) != 0))) {
        cv_error("export", "%s: %s", export_name(f), strerror(errno));
        return -1;
    }
    if (f->output) {
        int e = fclose(f->out);
        f->out = NULL;
        if (e != 0 || rename(f->tmp, f->output) != 0) {
            cv_error("export", "%s: %s", f->output, strerror(errno));
            return -1;
        }
    }
    return 0;
}

int cv_cmd_export(int argc, char **argv) {
    export_opts o = {.mode = CV_SRC_AUTO, .zlevel = 3};
    cv_select_init(&o.sel);
    cv_cli cli;
    cv_config *cfg = NULL;
    cv_keyring *keys = NULL;
    cv_src *src = NULL;
    export_file f = {0};
    int rc = cv_cli_parse(&export_spec, argc, argv, &o, &cli);
    if (rc != CV_CLI_RUN)
        goto out;
    rc = CV_EXIT_USAGE;
    if (cv_select_check(&o.sel, "export") < 0 || !(cfg = cv_cli_load_config(&cli.config)))
        goto out;
    cv_audit_begin(cfg, CV_PG_READER, "export", argc, argv);
    if ((rc = export_open(&o, cfg, &keys, &src)) != CV_EXIT_OK)
        goto out;
    rc = CV_EXIT_FAILURE;
    f.output = o.output;
    if (f.output) {
        size_t l = strlen(f.output) + 8;
        if (!(f.tmp = malloc(l)))
            goto out;
        snprintf(f.tmp, l, "%s.tmp", f.output);
        if (!(f.out = fopen(f.tmp, "w"))) {
            cv_error("export", "%s: %s", f.tmp, strerror(errno));
            goto out;
        }
    } else {
        f.out = stdout;
    }
    if (o.zstd) {
        f.zcap = ZSTD_CStreamOutSize();
        if (!(f.zc = ZSTD_createCCtx()) || !(f.zbuf = malloc(f.zcap)) ||
            ZSTD_isError(
                ZSTD_CCtx_setParameter(f.zc, ZSTD_c_compressionLevel, (int)o.zlevel)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(f.zc, ZSTD_c_checksumFlag, 1))) {
            cv_error("export", "cannot set up zstd (level %" PRId64 ")", o.zlevel);
            goto out;
        }
    }
    uint64_t count, from_log;
    char dhex[2 * crypto_hash_sha256_BYTES + 1];
    if (export_lines(src, &f, o.quiet, &count, &from_log, dhex, sizeof(dhex)) < 0 ||
        export_finish(&f) < 0)
        goto out;
    cv_log(CV_LOG_INFO, "export done",
           "messages=%" PRIu64 " from_postgres=%" PRIu64 " from_log=%" PRIu64
           " digest=sha256:%s output=\"%s\"",
           count, count - from_log, from_log, dhex, f.output ? f.output : "-");
    cv_audit_count("messages", (int64_t)count);
    cv_audit_count("from_log", (int64_t)from_log);
    rc = CV_EXIT_OK;
out:
    if (f.out && f.out != stdout) {
        fclose(f.out);
        unlink(f.tmp);
    }
    free(f.tmp);
    ZSTD_freeCCtx(f.zc);
    free(f.zbuf);
    cv_src_free(src);
    cv_keyring_free(keys);
    cv_config_free(cfg);
    cv_select_release(&o.sel);
    return rc;
}

/* ---- import ----------------------------------------------------------- */

typedef struct ibatch {
    cv_rec recs[IMPORT_BATCH];
    size_t n;
    cv_arena *arena;
    cv_buf packed;
    uint64_t loaded, duplicates, rejected;
} ibatch;

static const char *jstr(const json_t *o, const char *k) {
    return cv_json_str(o, k, NULL);
}

/* One message object into the next record of the batch: rebuilt as the
 * ChatMessage it was and validated as the broker validates. */
static int import_one(ibatch *b, const cv_envelope_rules *rules, const json_t *o,
                      char *err, size_t errlen) {
    const char *ch = jstr(o, "channel"), *id = jstr(o, "message_id"),
               *topic = jstr(o, "topic"), *enc = jstr(o, "body_encoding"),
               *body = jstr(o, "body");
    const json_t *attrs = json_object_get(o, "attributes");
    if (!ch || !id || !topic || !enc || !body || !json_is_object(attrs)) {
        snprintf(err, errlen,
                 "a message lacks channel, message_id, topic, "
                 "attributes or body");
        return -EINVAL;
    }
    size_t blen = strlen(body);
    unsigned char *bin = NULL;
    if (strcmp(enc, "base64") == 0) {
        size_t cap = blen / 4 * 3 + 3, got = 0;
        bin = cv_arena_alloc(b->arena, cap ? cap : 1);
        if (!bin)
            return -ENOMEM;
        if (sodium_base642bin(bin, cap, body, blen, NULL, &got, NULL,
                              sodium_base64_VARIANT_ORIGINAL) != 0) {
            snprintf(err, errlen, "message %s: body is not base64", id);
            return -EINVAL;
        }
        blen = got;
    } else if (strcmp(enc, "utf-8") == 0) {
        bin = (unsigned char *)body;
    } else {
        snprintf(err, errlen, "message %s: unknown body_encoding \"%s\"", id, enc);
        return -EINVAL;
    }
    Chatvault__V1__ChatMessage m = CHATVAULT__V1__CHAT_MESSAGE__INIT;
    m.message_id = (char *)id;
    m.channel = (char *)ch;
    m.sender_id = (char *)cv_json_str(o, "sender_id", "");
    m.sent_at_us = cv_json_int(o, "sent_at_us", 0);
    m.body.data = bin;
    m.body.len = blen;
    m.content_type = (char *)cv_json_str(o, "content_type", "");
    m.reply_to = (char *)cv_json_str(o, "reply_to", "");
    int64_t rev = cv_json_int(o, "revision", 0);
    if (rev < 0 || rev > UINT32_MAX) {
        snprintf(err, errlen, "message %s: revision %" PRId64 " is not 0..%" PRIu32, id,
                 rev, UINT32_MAX);
        return -EINVAL;
    }
    m.revision = (uint32_t)rev;
    m.deleted = cv_json_bool(o, "deleted", false);
    size_t na = json_object_size(attrs);
    Chatvault__V1__ChatMessage__AttributesEntry *ents =
        na ? cv_arena_alloc(b->arena, na * sizeof(*ents)) : NULL;
    Chatvault__V1__ChatMessage__AttributesEntry **ptrs =
        na ? cv_arena_alloc(b->arena, na * sizeof(*ptrs)) : NULL;
    if (na && (!ents || !ptrs))
        return -ENOMEM;
    size_t i = 0;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)attrs, key, val) {
        chatvault__v1__chat_message__attributes_entry__init(&ents[i]);
        ents[i].key = (char *)key;
        ents[i].value = (char *)(json_is_string(val) ? json_string_value(val) : "");
        ptrs[i] = &ents[i];
        i++;
    }
    m.n_attributes = na;
    m.attributes = ptrs;
    size_t need = chatvault__v1__chat_message__get_packed_size(&m);
    b->packed.len = 0;
    if (cv_buf_reserve(&b->packed, need) < 0)
        return -ENOMEM;
    chatvault__v1__chat_message__pack(&m, b->packed.data);
    cv_rec *rec = &b->recs[b->n];
    memset(rec, 0, sizeof(*rec));
    char *tcopy = cv_arena_alloc(b->arena, strlen(topic) + 1);
    if (!tcopy)
        return -ENOMEM;
    strcpy(tcopy, topic);
    rec->topic = tcopy;
    int64_t part = cv_json_int(o, "partition", -1);
    rec->partition = part >= 0 && part <= INT32_MAX ? (int32_t)part : -1;
    rec->offset = cv_json_int(o, "offset", -1);
    rec->timestamp_ms = cv_json_int(o, "kafka_timestamp_ms", -1);
    int r = cv_envelope_decode(rules, tcopy, b->packed.data, need, b->arena, &rec->env);
    if (r == -ENOMEM)
        return r;
    if (r < 0 || rec->partition < 0 || rec->offset < 0) {
        snprintf(err, errlen, "message %s of channel %s: %s", id, ch,
                 r < 0 ? rec->env.error : "no Kafka partition or offset");
        return -CV_EREJECT;
    }
    b->n++;
    return 0;
}

static int import_flush(ibatch *b, cv_pgstore *store, char *err, size_t errlen) {
    if (!b->n)
        return 0;
    rd_kafka_topic_partition_list_t *none = rd_kafka_topic_partition_list_new(0);
    if (!none)
        return -ENOMEM;
    int r = cv_pgstore_write(store, b->recs, b->n, none, err, errlen);
    rd_kafka_topic_partition_list_destroy(none);
    if (r < 0)
        return r;
    for (size_t i = 0; i < b->n; i++) {
        if (b->recs[i].status == CHATVAULT__V1__ACK_STATUS__PERSISTED)
            b->loaded++;
        else
            b->duplicates++;
    }
    b->n = 0;
    cv_arena_reset(b->arena);
    return 0;
}

/* The magic number that starts a zstd frame (RFC 8878), little-endian. */
static bool rd_zstd_magic(const unsigned char *p) {
    return p[0] == 0x28 && p[1] == 0xb5 && p[2] == 0x2f && p[3] == 0xfd;
}

/* Reads FILE; with store NULL only checks (parse, count, digest), else
 * loads. Returns 0 or an exit code. */
static int import_pass(const char *path, cv_pgstore *store,
                       const cv_envelope_rules *rules, ibatch *b, uint64_t *ret_count,
                       cv_progress *prog) {
    FILE *f = fopen(path, "r");
    if (!f) {
        cv_error("import", "%s: %s", path, strerror(errno));
        return CV_EXIT_FAILURE;
    }
    unsigned char magic[4];
    if (fread(magic, 1, 4, f) == 4 && rd_zstd_magic(magic)) {
        fclose(f);
        cv_error("import",
                 "%s is zstd-compressed (chatvault export --compress zstd): "
                 "decompress it first, zstd -d %s",
                 path, path);
        return CV_EXIT_USAGE;
    }
    rewind(f);
    char *line = NULL, err[1024];
    size_t cap = 0;
    ssize_t n;
    uint64_t count = 0, lineno = 0;
    bool manifest = false;
    int rc = CV_EXIT_FAILURE;
    crypto_hash_sha256_state hs;
    crypto_hash_sha256_init(&hs);
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (manifest) {
            cv_error("import", "%s line %" PRIu64 ": data after the manifest", path,
                     lineno);
            goto out;
        }
        if ((size_t)n > LINE_MAX_BYTES) {
            cv_error("import", "%s line %" PRIu64 ": longer than %zu bytes", path, lineno,
                     LINE_MAX_BYTES);
            goto out;
        }
        json_t *o = NULL;
        if (cv_json_parse(line, (size_t)n, &o, err, sizeof(err)) < 0 ||
            !json_is_object(o)) {
            cv_error("import", "%s line %" PRIu64 ": %s", path, lineno,
                     o ? "not a JSON object" : err);
            json_decref(o);
            goto out;
        }
        const json_t *mf = json_object_get(o, "manifest");
        if (mf) {
            manifest = true;
            unsigned char dg[crypto_hash_sha256_BYTES];
            char want[16 + 2 * sizeof(dg)];
            crypto_hash_sha256_final(&hs, dg);
            memcpy(want, "sha256:", 7);
            sodium_bin2hex(want + 7, sizeof(want) - 7, dg, sizeof(dg));
            const char *fmt = jstr(mf, "format"), *digest = jstr(mf, "digest");
            int64_t mc = cv_json_int(mf, "count", -1);
            if (!fmt || strcmp(fmt, FORMAT) != 0) {
                cv_error("import", "%s: the manifest's format is not " FORMAT, path);
            } else if (mc < 0 || (uint64_t)mc != count) {
                cv_error("import",
                         "%s: the manifest says %" PRId64 " messages, the "
                         "file holds %" PRIu64 " (truncated or "
                         "edited)",
                         path, mc, count);
            } else if (!digest || strcmp(digest, want) != 0) {
                cv_error("import",
                         "%s: the digest of the file is %s, the "
                         "manifest says %s (changed since export)",
                         path, want, digest ? digest : "nothing");
            } else {
                rc = 0;
            }
            json_decref(o);
            if (rc)
                goto out;
            rc = CV_EXIT_FAILURE;
            continue;
        }
        crypto_hash_sha256_update(&hs, (const unsigned char *)line, (size_t)n);
        count++;
        if (store) {
            int r = import_one(b, rules, o, err, sizeof(err));
            if (r == -CV_EREJECT) {
                if (!b->rejected++)
                    cv_log(CV_LOG_WARN, "message not imported",
                           "line=%" PRIu64 " error=\"%s\"", lineno, err);
            } else if (r < 0) {
                cv_error("import", "%s line %" PRIu64 ": %s", path, lineno,
                         r == -ENOMEM ? "out of memory" : err);
                json_decref(o);
                goto out;
            }
            if (b->n == IMPORT_BATCH &&
                (r = import_flush(b, store, err, sizeof(err))) < 0) {
                cv_error("import", "%s", err);
                json_decref(o);
                goto out;
            }
            cv_progress_update(prog, count, *ret_count, "loading");
        }
        json_decref(o);
    }
    if (!manifest) {
        cv_error("import", "%s: no manifest line at the end (truncated?)", path);
        goto out;
    }
    if (store) {
        int r = import_flush(b, store, err, sizeof(err));
        if (r < 0) {
            cv_error("import", "%s", err);
            goto out;
        }
    }
    *ret_count = count;
    rc = 0;
out:
    free(line);
    fclose(f);
    return rc;
}

typedef struct import_opts {
    bool quiet;
} import_opts;

static const cv_cli_opt import_opts_table[] = {
    CV_OPT_FLAG("quiet", 0, "no progress display", import_opts, quiet),
    CV_OPT_END,
};

static const cv_cli_spec import_spec = {
    .name = "import",
    .usage = "import [-c FILE] [--set key=value]... [--quiet] EXPORT_FILE",
    .about =
        "Loads a file written by `chatvault export` into the PostgreSQL of\n"
        "postgres.admin_conninfo (empty: postgres.conninfo). The manifest (count and\n"
        "digest) is checked before anything is written; a file that does not match it\n"
        "is refused. Messages are validated as the broker validates them and written\n"
        "through its own write path, idempotently: a message already stored is not\n"
        "written again, so importing twice is harmless. Kafka coordinates are kept;\n"
        "chatvault.kafka_offsets is left alone. Exit 1 when a message was not "
        "imported.\n",
    .opts = import_opts_table,
    .epilog = "To check an imported database, run `chatvault verify --channel C` with "
              "it\nand the log of the site the export came from.\n",
    .max_args = -1,
};

int cv_cmd_import(int argc, char **argv) {
    import_opts o = {0};
    cv_cli cli;
    cv_config *cfg = NULL;
    cv_pgstore *store = NULL;
    ibatch *b = NULL;
    int rc = cv_cli_parse(&import_spec, argc, argv, &o, &cli);
    if (rc != CV_CLI_RUN)
        goto out;
    rc = CV_EXIT_USAGE;
    if (cli.nargs != 1) {
        cv_error("import", "give exactly one export file");
        goto out;
    }
    const char *path = cli.args[0];
    if (!(cfg = cv_cli_load_config(&cli.config)))
        goto out;
    cv_audit_begin(cfg, CV_PG_ADMIN, "import", argc, argv);
    rc = CV_EXIT_FAILURE;
    if (sodium_init() < 0)
        goto out;
    if (!(b = calloc(1, sizeof(*b))) || !(b->arena = cv_arena_new((size_t)1 << 30)))
        goto out;
    cv_buf_init(&b->packed, (size_t)1 << 30);
    cv_envelope_rules rules = cv_cli_envelope_rules(cfg);
    uint64_t count = 0;
    cv_progress prog;
    cv_progress_init(&prog, "import", !o.quiet);
    if ((rc = import_pass(path, NULL, &rules, b, &count, &prog)) != 0)
        goto out;
    rc = CV_EXIT_FAILURE;
    char err[1024];
    if (cv_pgstore_open(cv_access_conninfo(cfg, CV_PG_ADMIN), "chatvault-import", 1,
                        &store, err, sizeof(err)) < 0) {
        cv_error("import", "%s (%s)", err, cv_access_conninfo_key(cfg, CV_PG_ADMIN));
        goto out;
    }
    if ((rc = import_pass(path, store, &rules, b, &count, &prog)) != 0)
        goto out;
    cv_progress_end(&prog);
    cv_log(b->rejected ? CV_LOG_ERROR : CV_LOG_INFO, "import done",
           "messages=%" PRIu64 " stored=%" PRIu64 " duplicates=%" PRIu64
           " rejected=%" PRIu64,
           count, b->loaded, b->duplicates, b->rejected);
    cv_audit_count("messages", (int64_t)count);
    cv_audit_count("stored", (int64_t)b->loaded);
    cv_audit_count("duplicates", (int64_t)b->duplicates);
    cv_audit_count("rejected", (int64_t)b->rejected);
    rc = b->rejected ? CV_EXIT_FAILURE : CV_EXIT_OK;
out:
    if (b) {
        cv_arena_free(b->arena);
        cv_buf_release(&b->packed);
        free(b);
    }
    cv_pgstore_free(store);
    cv_config_free(cfg);
    return rc;
}
