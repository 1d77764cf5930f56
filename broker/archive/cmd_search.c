/*
 * chatvault search — find messages in the archive by channel (name or shell
 * pattern), sender, time range, message id and the words of text bodies,
 * newest first, a page at a time.
 *
 * From PostgreSQL (the default) it reads chatvault.search_docs, which the
 * broker's indexer fills off the ack path (daemon/indexer.h), joined to
 * chatvault.messages (consumer/pg/pgsearch.h); --text is PostgreSQL full
 * text search (websearch_to_tsquery of search.language). With --from-log it
 * reads the encrypted log instead (for ranges PostgreSQL no longer holds):
 * every selected record is decrypted and checked, and --text matches when
 * every word of the query is a word of the body (ASCII letters compared
 * without case; a -word must not be one).
 *
 * Pages: results are ordered by (sent_at_us, channel, message_id),
 * newest first; a full page ends with the cursor of its last result, and
 * --before CURSOR gives the page after it. The cursor is a position in
 * that order, not a row number, so messages stored meanwhile neither
 * shift nor repeat the pages after it (newer ones appear on page 1).
 *
 * Output: a table, or JSON Lines (--format jsonl) with one object per
 * result, then {"next_before": CURSOR} after a full page. Each result
 * says where it is held: postgres (PostgreSQL holds the row) and log (the
 * log holds the record at its Kafka position: checked with --check-log,
 * one partition read up to that offset per result, else "not checked").
 *
 * --reindex rebuilds search_docs from chatvault.messages (as the admin
 * role), for an archive that predates schema version 3 or a change of
 * search.language; --status shows the indexer's watermark and lag.
 */
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "access.h"
#include "applog/applog.h"
#include "chatvault.pb-c.h"
#include "cli.h"
#include "keyring.h"
#include "msgsource.h"
#include "pg/pgmigrate.h"
#include "pg/pgsearch.h"
#include "progress.h"
#include "searchfmt.h"
#include "select.h"
#include "util.h"

#define REINDEX_ROWS 5000
#define WORDS_MAX 32

/* ---- words, for --from-log ------------------------------------------- */

typedef struct words {
    char *w[WORDS_MAX];
    bool neg[WORDS_MAX];
    size_t n;
    char *store;
} words;

static bool word_char(unsigned char c) {
    return c >= 0x80 || (c >= '0' && c <= '9') ||
           ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
}

/* The query's words: runs of letters, digits and non-ASCII bytes; one
 * right after a '-' that starts a term must not occur. */
static int words_parse(const char *q, words *ws) {
    memset(ws, 0, sizeof(*ws));
    if (!(ws->store = strdup(q)))
        return -ENOMEM;
    char *p = ws->store;
    while (*p) {
        bool neg = false;
        if (*p == '-' && (p == ws->store || !word_char((unsigned char)p[-1])))
            neg = true;
        if (!word_char((unsigned char)*p)) {
            p++;
            if (neg && word_char((unsigned char)*p)) {
                char *s = p;
                while (word_char((unsigned char)*p))
                    p++;
                if (ws->n == WORDS_MAX)
                    return -E2BIG;
                ws->neg[ws->n] = true;
                ws->w[ws->n++] = s;
                if (*p)
                    *p++ = '\0';
            }
            continue;
        }
        char *s = p;
        while (word_char((unsigned char)*p))
            p++;
        if (ws->n == WORDS_MAX)
            return -E2BIG;
        ws->w[ws->n++] = s;
        if (*p)
            *p++ = '\0';
    }
    return 0;
}

static bool has_word(const unsigned char *b, size_t len, const char *w) {
    size_t wl = strlen(w);
    for (size_t i = 0; i + wl <= len; i++) {
        if (i > 0 && word_char(b[i - 1]))
            continue;
        size_t k = 0;
        while (k < wl &&
               (b[i + k] == (unsigned char)w[k] ||
                (b[i + k] < 0x80 && ((b[i + k] | 0x20) == ((unsigned)w[k] | 0x20)) &&
                 ((b[i + k] | 0x20) >= 'a' && (b[i + k] | 0x20) <= 'z'))))
            k++;
        if (k == wl && (i + wl == len || !word_char(b[i + wl])))
            return true;
    }
    return false;
}

static bool words_match(const words *ws, const unsigned char *b, size_t len) {
    for (size_t i = 0; i < ws->n; i++)
        if (has_word(b, len, ws->w[i]) == ws->neg[i])
            return false;
    return true;
}

/* ---- output ----------------------------------------------------------- */

/* The first CHARS characters of a text body, whole characters only. */
static char *text_head(const unsigned char *b, size_t len, int chars) {
    size_t i = 0;
    for (int c = 0; i < len && c < chars; c++) {
        size_t l = cv_utf8_char_len((const char *)b + i, len - i);
        if (!l)
            break;
        i += l;
    }
    char *s = malloc(i + 1);
    if (s) {
        memcpy(s, b, i);
        s[i] = '\0';
    }
    return s;
}

static const char *presence(int v) {
    return v > 0 ? "yes" : v == 0 ? "no" : "-";
}

static void print_table_header(void) {
    printf("%-24s  %-12s  %-10s  %-20s  %-22s  %-3s  %-3s  %s\n", "SENT (UTC)", "CHANNEL",
           "SENDER", "MESSAGE ID", "TOPIC/PARTITION@OFFSET", "PG", "LOG", "EXCERPT");
}

static void print_table_row(const cv_search_hit *h) {
    char t[48], pos[320];
    cv_search_time(h->sent_at_us, t, sizeof(t));
    snprintf(pos, sizeof(pos), "%s/%" PRId32 "@%" PRId64, h->topic, h->partition,
             h->offset);
    printf("%-24s  %-12s  %-10s  %-20s  %-22s  %-3s  %-3s  ", t, h->channel, h->sender_id,
           h->message_id, pos, presence(h->pg), presence(h->log));
    if (h->excerpt) {
        for (const char *p = h->excerpt; *p; p++)
            putchar(*p == '\n' || *p == '\r' || *p == '\t' ? ' ' : *p);
        putchar('\n');
    } else {
        printf("(%" PRId64 " bytes of %s)\n", h->body_len,
               *h->content_type ? h->content_type : "no content type");
    }
}

static int print_jsonl_row(const cv_search_hit *h, cv_buf *b) {
    b->len = 0;
    int r = cv_search_hit_json(b, h);
    if (r == 0)
        r = cv_buf_append(b, "\n", 1);
    if (r == 0)
        fwrite(b->data, 1, b->len, stdout);
    return r;
}

/* ---- the log ---------------------------------------------------------- */

/* Whether the log holds message H at its Kafka position: reads its
 * partition (in every log directory) up to that offset. 1, 0, or -1 with
 * err set when the log cannot be read there. */
static int log_holds(const cv_cli_log_dirs *ld, const cv_keyring *keys,
                     const cv_search_hit *h, char *err, size_t errlen) {
    char paths[CV_CLI_MAX_LOG_DIRS][4096];
    const char *pp[CV_CLI_MAX_LOG_DIRS];
    for (size_t i = 0; i < ld->n; i++) {
        if (cv_applog_partition_dir(ld->dir[i], h->topic, h->partition, paths[i],
                                    sizeof(paths[i])) < 0) {
            cv_errf(err, errlen, "%s: path too long", ld->dir[i]);
            return -1;
        }
        pp[i] = paths[i];
    }
    cv_applog_reader *rd = NULL;
    if (cv_applog_reader_open(pp, ld->n, keys, &rd, err, errlen) < 0)
        return -1;
    cv_applog_reader_skip_to(rd, h->offset);
    int found = 0, r;
    cv_applog_record rec;
    while ((r = cv_applog_reader_next(rd, &rec, err, errlen)) == 1 &&
           rec.offset == h->offset) {
        Chatvault__V1__ChatMessage *m =
            chatvault__v1__chat_message__unpack(NULL, rec.value_len, rec.value);
        if (m && m->message_id && strcmp(m->message_id, h->message_id) == 0)
            found = 1;
        if (m)
            chatvault__v1__chat_message__free_unpacked(m, NULL);
        if (found)
            break;
    }
    cv_applog_reader_free(rd);
    return r < 0 ? -1 : found;
}

/* ---- the command ------------------------------------------------------ */

typedef struct search_opts {
    cv_select sel; /* --channel, --since, --until */
    const char *sender, *id, *text, *before;
    int64_t limit;
    bool jsonl, from_log, check_log, reindex, status, quiet;
    cv_cli_log_dirs ld;
} search_opts;

static int format_opt(const cv_cli_opt *opt, void *dest, const char *cmd,
                      const char *value) {
    bool *jsonl = dest;
    if (strcmp(value, "jsonl") == 0 || strcmp(value, "table") == 0) {
        *jsonl = value[0] == 'j';
        return 0;
    }
    cv_error(cmd, "--format: \"%s\" is neither table nor jsonl", value);
    return -1;
}

static const cv_cli_opt search_conditions[] = {
    CV_OPT_CALL_AT("channel", 0, "C",
                   "a channel, or a shell pattern (\"eu-*\"); repeatable", search_opts,
                   sel, cv_select_cli_opt, CV_SEL_CHANNEL),
    CV_OPT_STR("sender", 0, "S", "sent by S (sender_id)", search_opts, sender),
    CV_OPT_CALL_AT(
        "since", 0, "TIME",
        "sent from TIME (inclusive): RFC 3339 with Z or +HH:MM, a date, a duration ago "
        "(90s, 15m, 2h, 7d) or Unix ms",
        search_opts, sel, cv_select_cli_opt, CV_SEL_SINCE),
    CV_OPT_CALL_AT("until", 0, "TIME", "sent before TIME (exclusive), same forms",
                   search_opts, sel, cv_select_cli_opt, CV_SEL_UNTIL),
    CV_OPT_STR("id", 0, "ID", "the message with this message id", search_opts, id),
    CV_OPT_STR("text", 0, "WORDS",
               "text bodies with these words (PostgreSQL websearch syntax: words, \"a "
               "phrase\", -not, or; search.language decides what a word is)",
               search_opts, text),
    CV_OPT_END,
};

static const cv_cli_opt search_opts_table[] = {
    CV_OPT_INT("limit", 0, "N", "results per page (default 50, at most 10000)",
               search_opts, limit, 1, CV_SEARCH_LIMIT_MAX),
    CV_OPT_STR("before", 0, "CURSOR", "the page after the one that printed CURSOR",
               search_opts, before),
    CV_OPT_CALL_AT("format", 0, "F",
                   "table (default) or jsonl: one JSON object per result", search_opts,
                   jsonl, format_opt, 0),
    CV_OPT_FLAG("from-log", 0,
                "search the encrypted log instead of PostgreSQL (for ranges PostgreSQL "
                "no longer holds); --text then matches bodies holding every word (ASCII "
                "letters without case)",
                search_opts, from_log),
    CV_OPT_LIST("log-dir", 0, "DIR",
                "read this log directory instead of log.dir (repeatable)", search_opts,
                ld.dir, ld.n),
    CV_OPT_FLAG("check-log", 0,
                "say whether the log holds each result (reads its partition up to the "
                "result's offset)",
                search_opts, check_log),
    CV_OPT_FLAG("reindex", 0,
                "rebuild the search documents from chatvault.messages "
                "(postgres.admin_conninfo), with progress",
                search_opts, reindex),
    CV_OPT_FLAG("status", 0, "the indexer's watermark, lag and document count",
                search_opts, status),
    CV_OPT_FLAG("quiet", 0, "no progress display", search_opts, quiet),
    CV_OPT_END,
};

static const cv_cli_group search_group = {"conditions (every one given applies)",
                                          search_conditions, 0};

static const cv_cli_spec search_spec = {
    .name = "search",
    .usage =
        "search [-c FILE] [--set key=value]... [conditions]\n"
        "                        [--limit N] [--before CURSOR] [--format table|jsonl]\n"
        "                        [--from-log [--log-dir DIR]...] [--check-log]\n"
        "       chatvault search --reindex [--quiet]\n"
        "       chatvault search --status",
    .about = "Finds stored messages, newest first, a page at a time. Every condition "
             "given\napplies; the last line of a full page is the cursor of the next "
             "one.\n",
    .opts = search_opts_table,
    .group = &search_group,
    .max_args = 0,
};

/* A page keeps the LIMIT newest hits older than the cursor: a bounded set. */
static bool top_wants(const cv_search_page *t, const cv_search_cursor *c, int64_t at,
                      const char *ch, const char *id, size_t *ret_slot) {
    if (c->set &&
        cv_search_key_cmp(at, ch, id, c->sent_at_us, c->channel, c->message_id) >= 0)
        return false;
    if (t->n < t->cap) {
        *ret_slot = t->n;
        return true;
    }
    size_t min = 0;
    for (size_t i = 1; i < t->n; i++)
        if (cv_search_key_cmp(t->h[i].sent_at_us, t->h[i].channel, t->h[i].message_id,
                              t->h[min].sent_at_us, t->h[min].channel,
                              t->h[min].message_id) < 0)
            min = i;
    if (cv_search_key_cmp(at, ch, id, t->h[min].sent_at_us, t->h[min].channel,
                          t->h[min].message_id) <= 0)
        return false;
    *ret_slot = min;
    return true;
}

static int hit_order(const void *a, const void *b) {
    const cv_search_hit *x = a, *y = b;
    return -cv_search_key_cmp(x->sent_at_us, x->channel, x->message_id, y->sent_at_us,
                              y->channel, y->message_id);
}

static int search_log(search_opts *o, const cv_config *cfg, const cv_search_cursor *cur,
                      cv_search_page *t, uint64_t *ret_scanned) {
    char err[1024];
    cv_keyring *keys = NULL;
    cv_src *src = NULL;
    words ws = {0};
    int rc = CV_EXIT_FAILURE;
    if (!o->ld.n) {
        cv_error("search", "--from-log: no log directory (log.dir is empty; give "
                           "--log-dir)");
        return CV_EXIT_USAGE;
    }
    if (o->text && words_parse(o->text, &ws) < 0) {
        cv_error("search", "--text: more than %d words", WORDS_MAX);
        free(ws.store);
        return CV_EXIT_USAGE;
    }
    if (cv_cli_load_keys(cfg, &o->ld, &keys, err, sizeof(err)) < 0) {
        cv_error("search", "%s (log.key_file)", err);
        goto out;
    }
    cv_src_conf sc = {.mode = CV_SRC_LOG,
                      .log_dirs = o->ld.dir,
                      .nlog_dirs = o->ld.n,
                      .keys = keys,
                      .topic_prefix = cv_config_str(cfg, "topics.prefix"),
                      .sel = &o->sel};
    if (cv_src_open(&sc, &src, NULL, 0, err, sizeof(err)) < 0) {
        cv_error("search", "%s", err);
        goto out;
    }
    cv_progress prog;
    cv_progress_init(&prog, "search", !o->quiet);
    cv_msg m;
    int r;
    uint64_t scanned = 0;
    while ((r = cv_src_next(src, &m, err, sizeof(err))) == 1) {
        cv_progress_update(&prog, ++scanned, 0, m.channel);
        if ((o->sender && strcmp(m.sender_id, o->sender) != 0) ||
            (o->id && strcmp(m.message_id, o->id) != 0))
            continue;
        bool text = cv_pgsearch_textual(m.content_type) &&
                    cv_utf8_valid((const char *)m.body, m.body_len);
        if (o->text && (!text || !words_match(&ws, m.body, m.body_len)))
            continue;
        size_t slot;
        if (!top_wants(t, cur, m.sent_at_us, m.channel, m.message_id, &slot))
            continue;
        if (slot < t->n)
            cv_search_hit_release(&t->h[slot]);
        else
            t->n++;
        cv_search_hit *h = &t->h[slot];
        char *ex = text ? text_head(m.body, m.body_len, CV_SEARCH_EXCERPT_CHARS) : NULL;
        int e = cv_search_hit_set(h, m.channel, m.message_id, m.sender_id, m.topic,
                                  m.content_type, ex);
        free(ex);
        if (e < 0) {
            cv_error("search", "out of memory");
            goto out;
        }
        h->partition = m.partition;
        h->offset = m.offset;
        h->sent_at_us = m.sent_at_us;
        h->body_len = (int64_t)m.body_len;
        h->revision = m.revision;
        h->deleted = m.deleted;
        h->pg = -1;
        h->log = 1;
    }
    cv_progress_end(&prog);
    if (r < 0) {
        cv_error("search", "%s", err);
        goto out;
    }
    *ret_scanned = scanned;
    rc = CV_EXIT_OK;
out:
    free(ws.store);
    cv_src_free(src);
    cv_keyring_free(keys);
    return rc;
}

static int search_pg(search_opts *o, const cv_config *cfg, const cv_search_cursor *cur,
                     cv_search_page *t) {
    char err[1024];
    PGconn *conn = cv_pg_connect(cv_access_conninfo(cfg, CV_PG_READER), err, sizeof(err));
    if (!conn || cv_pgmigrate_check(conn, err, sizeof(err)) < 0) {
        cv_error("search", "%s (%s)", err, cv_access_conninfo_key(cfg, CV_PG_READER));
        if (conn)
            PQfinish(conn);
        return CV_EXIT_FAILURE;
    }
    cv_pgsearch_query q = {.channels = o->sel.channels,
                           .nchannels = o->sel.nchannels,
                           .sender = o->sender,
                           .message_id = o->id,
                           .text = o->text,
                           .language = cv_config_str(cfg, "search.language"),
                           .since_us = o->sel.since_us,
                           .until_us = o->sel.until_us,
                           .has_cursor = cur->set,
                           .cursor_sent_at_us = cur->sent_at_us,
                           .cursor_channel = cur->channel,
                           .cursor_message_id = cur->message_id,
                           .excerpt_chars = CV_SEARCH_EXCERPT_CHARS};
    int r = cv_search_page_pg(conn, &q, t, err, sizeof(err));
    PQfinish(conn);
    if (r < 0) {
        cv_error("search", "%s", err);
        return r == -EINVAL ? CV_EXIT_USAGE : CV_EXIT_FAILURE;
    }
    return CV_EXIT_OK;
}

/* The PostgreSQL column of results from the log: one probe per result. A
 * PostgreSQL that cannot be reached leaves it "not checked". */
static void check_pg(const cv_config *cfg, cv_search_page *t) {
    if (!t->n)
        return;
    char err[512];
    PGconn *conn =
        cv_pg_connect_timeout(cv_access_conninfo(cfg, CV_PG_READER), 5, err, sizeof(err));
    const char **chs = calloc(t->n, sizeof(*chs)), **ids = calloc(t->n, sizeof(*ids));
    bool *present = calloc(t->n, sizeof(*present));
    if (conn && chs && ids && present) {
        for (size_t i = 0; i < t->n; i++)
            chs[i] = t->h[i].channel, ids[i] = t->h[i].message_id;
        if (cv_pgsearch_present(conn, chs, ids, t->n, present, err, sizeof(err)) == 0)
            for (size_t i = 0; i < t->n; i++)
                t->h[i].pg = present[i];
        else
            cv_log(CV_LOG_WARN, "postgres not checked", "error=\"%s\"", err);
    } else if (!conn) {
        cv_log(CV_LOG_WARN, "postgres unavailable: its column is not checked",
               "error=\"%s\"", err);
    }
    if (conn)
        PQfinish(conn);
    free(chs);
    free(ids);
    free(present);
}

static int reindex(const search_opts *o, const cv_config *cfg) {
    char err[1024];
    PGconn *conn = cv_pg_connect(cv_access_conninfo(cfg, CV_PG_ADMIN), err, sizeof(err));
    if (!conn || cv_pgmigrate_check(conn, err, sizeof(err)) < 0) {
        cv_error("search", "%s (%s)", err, cv_access_conninfo_key(cfg, CV_PG_ADMIN));
        if (conn)
            PQfinish(conn);
        return CV_EXIT_FAILURE;
    }
    int rc = CV_EXIT_FAILURE;
    int64_t total = 0, t0 = cv_mono_ms();
    if (cv_pgsearch_reindex_begin(conn, &total, err, sizeof(err)) < 0) {
        cv_error("search", "%s", err);
        goto out;
    }
    const char *lang = cv_config_str(cfg, "search.language");
    char channel[256] = "", id[512] = "";
    uint64_t done = 0;
    size_t n;
    cv_progress prog;
    cv_progress_init(&prog, "search --reindex", !o->quiet);
    do {
        if (cv_pgsearch_reindex_step(conn, lang, REINDEX_ROWS, channel, sizeof(channel),
                                     id, sizeof(id), &n, err, sizeof(err)) < 0) {
            cv_progress_end(&prog);
            cv_error("search", "%s (indexed %" PRIu64 " of %" PRId64 ")", err, done,
                     total);
            goto out;
        }
        done += n;
        cv_progress_update(&prog, done, (uint64_t)total, channel);
    } while (n);
    cv_progress_end(&prog);
    int64_t ms = cv_mono_ms() - t0;
    cv_log(CV_LOG_INFO, "search reindex done",
           "documents=%" PRIu64 " seconds=%.1f rows_per_s=%.0f language=%s", done,
           (double)ms / 1000, ms ? (double)done * 1000 / (double)ms : 0.0, lang);
    cv_audit_count("documents", (int64_t)done);
    rc = CV_EXIT_OK;
out:
    PQfinish(conn);
    return rc;
}

static int status(const cv_config *cfg) {
    char err[1024];
    PGconn *conn = cv_pg_connect(cv_access_conninfo(cfg, CV_PG_READER), err, sizeof(err));
    int64_t wm, docs, behind;
    if (!conn || cv_pgsearch_state(conn, &wm, &docs, &behind, err, sizeof(err)) < 0) {
        cv_error("search", "%s (%s)", err, cv_access_conninfo_key(cfg, CV_PG_READER));
        if (conn)
            PQfinish(conn);
        return CV_EXIT_FAILURE;
    }
    PQfinish(conn);
    char t[48] = "never";
    if (wm != INT64_MIN)
        cv_search_time(wm, t, sizeof(t));
    printf("documents  %" PRId64 "\n", docs);
    printf("watermark  %s (what was stored before it is indexed)\n", t);
    printf("behind     %" PRId64 " messages stored after it, not indexed yet\n", behind);
    return CV_EXIT_OK;
}

/* --check-log: whether the log holds each hit. 0, or -1 after the error. */
static int check_log(search_opts *o, const cv_config *cfg, cv_search_page *t) {
    char err[1024];
    cv_keyring *keys = NULL;
    if (!o->ld.n) {
        cv_error("search", "--check-log: no log directory (log.dir is empty)");
        return -1;
    }
    if (cv_cli_load_keys(cfg, &o->ld, &keys, err, sizeof(err)) < 0) {
        cv_error("search", "%s (log.key_file)", err);
        return -1;
    }
    for (size_t i = 0; i < t->n; i++) {
        t->h[i].log = log_holds(&o->ld, keys, &t->h[i], err, sizeof(err));
        if (t->h[i].log < 0)
            cv_log(CV_LOG_WARN, "log not readable for a result",
                   "channel=%s message_id=\"%s\" error=\"%s\"", t->h[i].channel,
                   t->h[i].message_id, err);
    }
    cv_keyring_free(keys);
    return 0;
}

/* The page as a table or JSON Lines, and the next page's cursor. 0, or -1
 * after the error. */
static int print_page(const search_opts *o, const cv_search_page *t) {
    cv_buf line;
    cv_buf_init(&line, (size_t)16 << 20);
    int rc = -1;
    if (!o->jsonl)
        print_table_header();
    for (size_t i = 0; i < t->n; i++) {
        if (!o->jsonl)
            print_table_row(&t->h[i]);
        else if (print_jsonl_row(&t->h[i], &line) < 0) {
            cv_error("search", "a result does not fit in a line");
            goto out;
        }
    }
    char next[2 * CV_SEARCH_CURSOR_MAX];
    if (t->full && cv_search_cursor_encode(&t->last, next, sizeof(next)) == 0) {
        if (o->jsonl)
            printf("{\"next_before\":\"%s\"}\n", next);
        else
            printf("next page: --before %s\n", next);
    }
    if (fflush(stdout) != 0) {
        cv_error("search", "stdout: %s", strerror(errno));
        goto out;
    }
    rc = 0;
out:
    cv_buf_release(&line);
    return rc;
}

/* One page of results: from PostgreSQL or the log, ordered, checked
 * against the other store as asked, printed. */
static int search(search_opts *o, const cv_config *cfg, const cv_search_cursor *cur) {
    cv_search_page t;
    if (sodium_init() < 0 || cv_search_page_init(&t, (size_t)o->limit) < 0)
        return CV_EXIT_FAILURE;
    cv_cli_default_log_dir(&o->ld, cfg);
    uint64_t scanned = 0;
    int rc =
        o->from_log ? search_log(o, cfg, cur, &t, &scanned) : search_pg(o, cfg, cur, &t);
    if (rc != CV_EXIT_OK)
        goto out;
    rc = CV_EXIT_FAILURE;
    qsort(t.h, t.n, sizeof(*t.h), hit_order);
    if (o->from_log) {
        check_pg(cfg, &t);
        t.full = t.n == t.cap;
        if (t.full && (!(t.last.channel = strdup(t.h[t.n - 1].channel)) ||
                       !(t.last.message_id = strdup(t.h[t.n - 1].message_id))))
            goto out;
        t.last.sent_at_us = t.n ? t.h[t.n - 1].sent_at_us : 0;
    }
    if (o->check_log && !o->from_log && check_log(o, cfg, &t) < 0)
        goto out;
    if (print_page(o, &t) < 0)
        goto out;
    cv_audit_count("results", (int64_t)t.n);
    if (o->from_log)
        cv_audit_count("log_records_read", (int64_t)scanned);
    rc = CV_EXIT_OK;
out:
    cv_search_page_release(&t);
    return rc;
}

int cv_cmd_search(int argc, char **argv) {
    search_opts o = {.limit = 50};
    cv_select_init(&o.sel);
    cv_search_cursor cur = {0};
    cv_cli cli;
    cv_config *cfg = NULL;
    int rc = cv_cli_parse(&search_spec, argc, argv, &o, &cli);
    if (rc != CV_CLI_RUN)
        goto out;
    rc = CV_EXIT_USAGE;
    if (cv_select_check(&o.sel, "search") < 0)
        goto out;
    if (o.before && cv_search_cursor_decode(o.before, &cur) < 0) {
        cv_error("search", "--before: \"%s\" is not a cursor printed by chatvault search",
                 o.before);
        goto out;
    }
    if (o.text && !*o.text) {
        cv_error("search", "--text: give at least one word");
        goto out;
    }
    if (!(cfg = cv_cli_load_config(&cli.config)))
        goto out;
    if (o.status) {
        rc = status(cfg);
    } else if (o.reindex) {
        cv_audit_begin(cfg, CV_PG_ADMIN, "search --reindex", argc, argv);
        rc = reindex(&o, cfg);
    } else {
        cv_audit_begin(cfg, CV_PG_READER, "search", argc, argv);
        rc = search(&o, cfg, &cur);
    }
out:
    cv_config_free(cfg);
    cv_select_release(&o.sel);
    return rc;
}
