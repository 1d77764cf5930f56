/*
 * pgsearch — see pgsearch.h.
 *
 * The indexer reads rows in binary format (bodies arrive as bytes, checked
 * for text here, in C, where a body that is not UTF-8 is a NULL document
 * and not an error that would stop the pass) and writes a pass's documents
 * with one INSERT … SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING, so
 * reading a row again is harmless.
 */
#include "pg/pgsearch.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg/internal.h"
#include "util.h"

#define SQL_LIMIT ((size_t)1 << 20)
#define ARRAY_LIMIT ((size_t)1 << 30)
/* Bodies of one pass's INSERT: a pass stops adding rows past this many
 * bytes of text (the rest are read again by the next pass). */
#define PASS_TEXT_BYTES ((size_t)16 << 20)

static void rollback(PGconn *conn) {
    if (PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE) {
        PGresult *res = PQexec(conn, "ROLLBACK");
        PQclear(res);
    }
}

bool cv_pgsearch_textual(const char *ct) {
    return strncmp(ct, "text/", 5) == 0 || strstr(ct, "json") != NULL;
}

static int64_t get_i64(const PGresult *res, int row, int col) {
    const unsigned char *p = (const unsigned char *)PQgetvalue(res, row, col);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v;
}

/* How many leading bytes of BODY are indexed: its first
 * CV_PGSEARCH_TEXT_MAX bytes cut back to a whole character, when they are
 * valid UTF-8; -1 when the body is not text. TOTAL is the body's whole
 * length (BODY may hold only its head). */
static int text_len(const char *ct, const char *body, size_t len, int64_t total) {
    if (!cv_pgsearch_textual(ct))
        return -1;
    if (total > (int64_t)len || len > CV_PGSEARCH_TEXT_MAX) {
        /* a head: drop a character cut in two */
        if (len > CV_PGSEARCH_TEXT_MAX)
            len = CV_PGSEARCH_TEXT_MAX;
        size_t back = 0;
        while (back < 3 && back < len &&
               ((unsigned char)body[len - 1 - back] & 0xc0) == 0x80)
            back++;
        if (back < len && ((unsigned char)body[len - 1 - back] & 0xc0) == 0xc0)
            len -= back + 1;
    }
    return cv_utf8_valid(body, len) ? (int)len : -1;
}

/* Appends one element of a text[] literal: NULL, or S[0..len) quoted. */
static int array_elem(cv_buf *b, const char *s, size_t len) {
    int r = cv_buf_append(b, b->len > 1 ? "," : "", b->len > 1 ? 1 : 0);
    if (r < 0)
        return r;
    if (!s)
        return cv_buf_append(b, "NULL", 4);
    if ((r = cv_buf_reserve(b, 2 * len + 2)) < 0)
        return r;
    unsigned char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\')
            *o++ = '\\';
        *o++ = (unsigned char)s[i];
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return 0;
}

enum { A_CHANNEL, A_ID, A_SENT, A_SENDER, A_LEN, A_BODY, A_PERSISTED, NARRAYS };

/* Rows of RES (columns: channel, message_id, sent_at_us, sender_id,
 * content_type, body or its head, octet_length(body), ...) from FIRST, as
 * documents; stops past PASS_TEXT_BYTES. *ret_n: rows inserted (a prefix),
 * *ret_text: of which text. */
static int insert_docs(PGconn *conn, const char *language, const PGresult *res,
                       size_t *ret_n, size_t *ret_text, char *errbuf, size_t errlen) {
    cv_buf a[NARRAYS];
    for (int k = 0; k < NARRAYS; k++) {
        cv_buf_init(&a[k], ARRAY_LIMIT);
    }
    int r = 0;
    for (int k = 0; r == 0 && k < NARRAYS; k++)
        r = cv_buf_append(&a[k], "{", 1);
    size_t n = 0, text = 0, bytes = 0, rows = (size_t)PQntuples(res);
    for (; r == 0 && n < rows && bytes <= PASS_TEXT_BYTES; n++) {
        int i = (int)n;
        char num[32];
        const char *body = PQgetvalue(res, i, 5);
        int tl = text_len(PQgetvalue(res, i, 4), body, (size_t)PQgetlength(res, i, 5),
                          get_i64(res, i, 6));
        r = array_elem(&a[A_CHANNEL], PQgetvalue(res, i, 0),
                       (size_t)PQgetlength(res, i, 0));
        if (r == 0)
            r = array_elem(&a[A_ID], PQgetvalue(res, i, 1),
                           (size_t)PQgetlength(res, i, 1));
        snprintf(num, sizeof(num), "%" PRId64, get_i64(res, i, 2));
        if (r == 0)
            r = array_elem(&a[A_SENT], num, strlen(num));
        if (r == 0)
            r = array_elem(&a[A_SENDER], PQgetvalue(res, i, 3),
                           (size_t)PQgetlength(res, i, 3));
        snprintf(num, sizeof(num), "%" PRId64, get_i64(res, i, 7));
        if (r == 0)
            r = array_elem(&a[A_PERSISTED], num, strlen(num));
        snprintf(num, sizeof(num), "%d", tl);
        if (r == 0)
            r = array_elem(&a[A_LEN], tl >= 0 ? num : NULL, strlen(num));
        if (r == 0)
            r = array_elem(&a[A_BODY], tl >= 0 ? body : NULL, tl >= 0 ? (size_t)tl : 0);
        if (tl >= 0)
            text++, bytes += (size_t)tl;
    }
    for (int k = 0; r == 0 && k < NARRAYS; k++)
        r = cv_buf_append(&a[k], "}", 2); /* with the NUL */
    if (r < 0) {
        cv_errf(errbuf, errlen, "postgres: building the documents: %s", strerror(-r));
        goto out;
    }
    if (n) {
        const char *params[1 + NARRAYS] = {language};
        for (int k = 0; k < NARRAYS; k++)
            params[1 + k] = (const char *)a[k].data;
        PGresult *ins = PQexecParams(
            conn,
            "INSERT INTO chatvault.search_docs (channel, message_id, sent_at_us,"
            " sender_id, text_len, tsv)"
            " SELECT c, i, s, f, l, to_tsvector($1::regconfig, b)"
            " FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[],"
            "  $6::integer[], $7::text[], $8::bigint[]) AS u(c, i, s, f, l, b, p)"
            /* Only while the row is the version that was read: an edit
             * (schemas/0005_versions.sql) committed since then dropped
             * the document and set persisted_at anew, and the next pass
             * indexes the new version (this statement sees the edit). */
            " WHERE EXISTS (SELECT 1 FROM chatvault.messages m"
            "  WHERE m.channel = u.c AND m.message_id = u.i"
            "  AND (extract(epoch FROM m.persisted_at) * 1000000)::bigint = u.p)"
            " ON CONFLICT (channel, message_id) DO NOTHING",
            1 + NARRAYS, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(ins) != PGRES_COMMAND_OK) {
            r = cv_pg_i_fail(conn, ins, "inserting into chatvault.search_docs", errbuf,
                             errlen);
            goto out;
        }
        PQclear(ins);
    }
    *ret_n = n;
    *ret_text = text;
out:
    for (int k = 0; k < NARRAYS; k++)
        cv_buf_release(&a[k]);
    return r;
}

/* The columns insert_docs reads, then persisted_at in Unix us. */
#define DOC_COLUMNS                                                                      \
    "m.channel, m.message_id, m.sent_at_us, m.sender_id, m.content_type,"                \
    " substring(m.body FROM 1 FOR 65540), octet_length(m.body)::bigint,"                 \
    " (extract(epoch FROM m.persisted_at) * 1000000)::bigint"

int cv_pgsearch_index_pass(PGconn *conn, const char *language, int64_t margin_us,
                           size_t max_rows, cv_pgsearch_pass *ret, char *errbuf,
                           size_t errlen) {
    memset(ret, 0, sizeof(*ret));
    int r = cv_pg_i_exec(conn, "BEGIN", "BEGIN", errbuf, errlen);
    if (r < 0)
        return r;
    /* One indexer at a time: several broker instances each run one, and
     * the one that finds the row locked lets the other finish. */
    PGresult *res = PQexec(conn, "SELECT watermark = '-infinity',"
                                 " CASE WHEN watermark > '-infinity' THEN"
                                 " (extract(epoch FROM watermark) * 1000000)::bigint END"
                                 " FROM chatvault.search_state WHERE id = 1"
                                 " FOR UPDATE SKIP LOCKED");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        r = cv_pg_i_fail(conn, res, "reading chatvault.search_state", errbuf, errlen);
        goto fail;
    }
    if (PQntuples(res) == 0) {
        PQclear(res);
        ret->busy = true;
        rollback(conn);
        return 0;
    }
    bool none = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    int64_t wm = none ? INT64_MIN : strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
    char margin[32], limit[32];
    snprintf(margin, sizeof(margin), "%" PRId64, margin_us);
    snprintf(limit, sizeof(limit), "%zu", max_rows);
    const char *params[2] = {margin, limit};
    /* The persisted_at BRIN index narrows the scan to the recent blocks;
     * rows read before (within the margin) are skipped in the server. */
    res = PQexecParams(conn,
                       "SELECT " DOC_COLUMNS " FROM chatvault.messages m"
                       " WHERE m.persisted_at > (SELECT watermark"
                       "  FROM chatvault.search_state WHERE id = 1)"
                       "  - $1::bigint * interval '1 microsecond'"
                       " AND NOT EXISTS (SELECT 1 FROM chatvault.search_docs d"
                       "  WHERE d.channel = m.channel AND d.message_id = m.message_id)"
                       " ORDER BY m.persisted_at LIMIT $2::bigint",
                       2, NULL, params, NULL, NULL, 1);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        r = cv_pg_i_fail(conn, res, "reading chatvault.messages", errbuf, errlen);
        goto fail;
    }
    size_t n = 0, text = 0;
    r = insert_docs(conn, language, res, &n, &text, errbuf, errlen);
    if (r < 0) {
        PQclear(res);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        int64_t p = get_i64(res, (int)i, 7);
        if (p > wm)
            wm = p;
    }
    PQclear(res);
    if (n) {
        char w[32], cnt[32];
        snprintf(w, sizeof(w), "%" PRId64, wm);
        snprintf(cnt, sizeof(cnt), "%zu", n);
        const char *up[2] = {w, cnt};
        res =
            PQexecParams(conn,
                         "UPDATE chatvault.search_state SET watermark = GREATEST("
                         "watermark, timestamptz 'epoch' + $1::bigint"
                         " * interval '1 microsecond'),"
                         " indexed = indexed + $2::bigint, updated_at = clock_timestamp()"
                         " WHERE id = 1",
                         2, NULL, up, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            r = cv_pg_i_fail(conn, res, "updating chatvault.search_state", errbuf,
                             errlen);
            goto fail;
        }
        PQclear(res);
    }
    if ((r = cv_pg_i_exec(conn, "COMMIT", "COMMIT", errbuf, errlen)) < 0)
        goto fail;
    ret->read = n;
    ret->text = text;
    ret->watermark_us = wm;
    return 0;
fail:
    rollback(conn);
    return r;
}

int cv_pgsearch_reindex_begin(PGconn *conn, int64_t *ret_total, char *errbuf,
                              size_t errlen) {
    int r = cv_pg_i_exec(conn, "DELETE FROM chatvault.search_docs",
                         "deleting from chatvault.search_docs", errbuf, errlen);
    /* Every row committed before now is seen by the steps (each reads a
     * later snapshot); a row committed later was inserted within the
     * indexer's margin of now, so the indexer need not go further back. */
    if (r == 0)
        r = cv_pg_i_exec(
            conn,
            "UPDATE chatvault.search_state SET watermark = GREATEST(watermark,"
            " clock_timestamp()), updated_at = clock_timestamp() WHERE id = 1",
            "updating chatvault.search_state", errbuf, errlen);
    if (r < 0)
        return r;
    PGresult *res = PQexec(conn, "SELECT count(*) FROM chatvault.messages");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return cv_pg_i_fail(conn, res, "counting chatvault.messages", errbuf, errlen);
    *ret_total = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return 0;
}

int cv_pgsearch_reindex_step(PGconn *conn, const char *language, size_t max_rows,
                             char *channel, size_t channel_len, char *message_id,
                             size_t id_len, size_t *ret_n, char *errbuf, size_t errlen) {
    char limit[32];
    snprintf(limit, sizeof(limit), "%zu", max_rows);
    const char *params[3] = {channel, message_id, limit};
    /* The primary key's order: an index scan that starts where the last
     * step ended, whatever the table's size. */
    PGresult *res = PQexecParams(conn,
                                 "SELECT " DOC_COLUMNS " FROM chatvault.messages m"
                                 " WHERE (m.channel, m.message_id) > ($1, $2)"
                                 " ORDER BY m.channel, m.message_id LIMIT $3::bigint",
                                 3, NULL, params, NULL, NULL, 1);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return cv_pg_i_fail(conn, res, "reading chatvault.messages", errbuf, errlen);
    size_t rows = 0, text = 0;
    /* insert_docs may take a prefix: the step ends after it. */
    int r = insert_docs(conn, language, res, &rows, &text, errbuf, errlen);
    if (r == 0 && rows) {
        int last = (int)rows - 1;
        if ((size_t)PQgetlength(res, last, 0) >= channel_len ||
            (size_t)PQgetlength(res, last, 1) >= id_len) {
            cv_errf(errbuf, errlen, "postgres: a channel or message id is too long");
            r = -ENAMETOOLONG;
        } else {
            memcpy(channel, PQgetvalue(res, last, 0), (size_t)PQgetlength(res, last, 0));
            channel[PQgetlength(res, last, 0)] = '\0';
            memcpy(message_id, PQgetvalue(res, last, 1),
                   (size_t)PQgetlength(res, last, 1));
            message_id[PQgetlength(res, last, 1)] = '\0';
        }
    }
    PQclear(res);
    if (r == 0)
        *ret_n = rows;
    return r;
}

int cv_pgsearch_state(PGconn *conn, int64_t *ret_watermark_us, int64_t *ret_docs,
                      int64_t *ret_behind, char *errbuf, size_t errlen) {
    /* behind: the persisted_at BRIN range past the watermark, small when
     * the indexer keeps up */
    PGresult *res = PQexec(conn, "SELECT watermark = '-infinity',"
                                 " CASE WHEN watermark > '-infinity' THEN"
                                 " (extract(epoch FROM watermark) * 1000000)::bigint END,"
                                 " (SELECT count(*) FROM chatvault.search_docs),"
                                 " (SELECT count(*) FROM chatvault.messages m"
                                 "  WHERE m.persisted_at > s.watermark)"
                                 " FROM chatvault.search_state s WHERE id = 1");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return cv_pg_i_fail(conn, res, "reading chatvault.search_state", errbuf, errlen);
    *ret_watermark_us = strcmp(PQgetvalue(res, 0, 0), "t") == 0
                            ? INT64_MIN
                            : strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    *ret_docs = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    *ret_behind = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    PQclear(res);
    return 0;
}

int cv_pgsearch_glob_regex(const char *pat, char *buf, size_t len) {
    cv_buf b;
    cv_buf_init(&b, len);
    int r = cv_buf_append(&b, "^", 1);
    for (const char *p = pat; r == 0 && *p; p++) {
        if (*p == '*') {
            r = cv_buf_append(&b, ".*", 2);
        } else if (*p == '?') {
            r = cv_buf_append(&b, ".", 1);
        } else if (*p == '[' && strchr(p + 1, ']')) {
            /* a class, as fnmatch reads one: [!x] and [^x] negate, a ]
             * right after the opening (or its negation) is a member */
            const char *q = p + 1;
            r = cv_buf_append(&b, "[", 1);
            if (r == 0 && (*q == '!' || *q == '^'))
                r = cv_buf_append(&b, "^", 1), q++;
            const char *end = strchr(*q == ']' ? q + 1 : q, ']');
            if (!end) {
                r = -EINVAL;
                break;
            }
            for (; r == 0 && q < end; q++)
                r = *q == '\\' ? cv_buf_append(&b, "\\\\", 2) : cv_buf_append(&b, q, 1);
            if (r == 0)
                r = cv_buf_append(&b, "]", 1);
            p = end;
        } else if (strchr(".^$|()+{}[]\\", *p)) {
            r = cv_buf_append(&b, "\\", 1);
            if (r == 0)
                r = cv_buf_append(&b, p, 1);
        } else {
            r = cv_buf_append(&b, p, 1);
        }
    }
    if (r == 0)
        r = cv_buf_append(&b, "$", 2); /* with the NUL */
    if (r == 0)
        memcpy(buf, b.data, b.len);
    cv_buf_release(&b);
    return r < 0 ? -ENOBUFS : 0;
}

static bool is_pattern(const char *s) {
    return strpbrk(s, "*?[") != NULL;
}

#define PARAMS_MAX 16

int cv_pgsearch_run(PGconn *conn, const cv_pgsearch_query *q, cv_pgsearch_result *ret,
                    char *errbuf, size_t errlen) {
    cv_buf sql, names, regexes;
    cv_buf_init(&sql, SQL_LIMIT);
    cv_buf_init(&names, SQL_LIMIT);
    cv_buf_init(&regexes, SQL_LIMIT);
    char vals[PARAMS_MAX][32];
    const char *params[PARAMS_MAX];
    int np = 0, r = 0;
    memset(ret, 0, sizeof(*ret));
    bool text = q->text && *q->text;
    if (text) {
        params[np++] = q->language; /* $1 */
        params[np++] = q->text;     /* $2 */
    } else {
        snprintf(vals[np], sizeof(vals[np]), "%d", q->excerpt_chars);
        params[np] = vals[np]; /* $1 */
        np++;
    }
    /* The page is chosen in search_docs alone, then joined to messages:
     * a join before the LIMIT would make the planner join every hit of a
     * common word (a hash join over the whole table) and keep it from
     * walking search_docs_time_idx backwards, which is how a common word
     * or a broad pattern finds its newest 50 quickest. */
    r = cv_buf_printf(&sql, "WITH page AS MATERIALIZED (SELECT d.channel, d.message_id,"
                            " d.sender_id, d.sent_at_us, d.text_len"
                            " FROM chatvault.search_docs d WHERE true");
    if (r == 0 && text)
        r = cv_buf_printf(&sql, " AND d.tsv @@ websearch_to_tsquery($1::regconfig, $2)");
    if (r == 0 && q->nchannels) {
        r = cv_buf_append(&names, "{", 1);
        if (r == 0)
            r = cv_buf_append(&regexes, "{", 1);
        for (size_t i = 0; r == 0 && i < q->nchannels; i++) {
            const char *c = q->channels[i];
            if (!is_pattern(c)) {
                r = array_elem(&names, c, strlen(c));
                continue;
            }
            char re[1024];
            if (cv_pgsearch_glob_regex(c, re, sizeof(re)) < 0) {
                cv_errf(errbuf, errlen, "--channel \"%s\" is not a pattern", c);
                r = -EINVAL;
                goto out;
            }
            r = array_elem(&regexes, re, strlen(re));
        }
        if (r == 0)
            r = cv_buf_append(&names, "}", 2);
        if (r == 0)
            r = cv_buf_append(&regexes, "}", 2);
        if (r == 0) {
            params[np++] = (const char *)names.data;
            params[np++] = (const char *)regexes.data;
            r = cv_buf_printf(&sql,
                              " AND (d.channel = ANY($%d::text[])"
                              " OR d.channel ~ ANY($%d::text[]))",
                              np - 1, np);
        }
    }
    if (r == 0 && q->sender) {
        params[np++] = q->sender;
        r = cv_buf_printf(&sql, " AND d.sender_id = $%d", np);
    }
    if (r == 0 && q->message_id) {
        params[np++] = q->message_id;
        r = cv_buf_printf(&sql, " AND d.message_id = $%d", np);
    }
#define ADD_I64(cond_sql, v)                                                             \
    do {                                                                                 \
        snprintf(vals[np], sizeof(vals[np]), "%" PRId64, (int64_t)(v));                  \
        params[np] = vals[np];                                                           \
        np++;                                                                            \
        if (r == 0)                                                                      \
            r = cv_buf_printf(&sql, cond_sql, np);                                       \
    } while (0)
    if (q->since_us >= 0)
        ADD_I64(" AND d.sent_at_us >= $%d", q->since_us);
    if (q->until_us >= 0)
        ADD_I64(" AND d.sent_at_us < $%d", q->until_us);
    if (q->has_cursor) {
        ADD_I64(" AND (d.sent_at_us, d.channel, d.message_id) < ($%d",
                q->cursor_sent_at_us);
        params[np++] = q->cursor_channel;
        params[np++] = q->cursor_message_id;
        if (r == 0)
            r = cv_buf_printf(&sql, ", $%d, $%d)", np - 1, np);
    }
    ADD_I64(" ORDER BY d.sent_at_us DESC, d.channel DESC, d.message_id DESC LIMIT $%d)",
            q->limit);
#undef ADD_I64
    if (r == 0)
        r = cv_buf_printf(
            &sql,
            " SELECT p.channel, p.message_id, p.sender_id, m.kafka_topic,"
            " m.content_type, m.kafka_partition, m.kafka_offset, p.sent_at_us,"
            " (extract(epoch FROM m.persisted_at) * 1000000)::bigint,"
            " octet_length(m.body)::bigint, %s, m.channel IS NOT NULL,"
            " m.revision, m.deleted"
            " FROM page p LEFT JOIN chatvault.messages m"
            " ON m.channel = p.channel AND m.message_id = p.message_id"
            " ORDER BY p.sent_at_us DESC, p.channel DESC, p.message_id DESC",
            /* text_len bytes of body are valid UTF-8: the indexer checked */
            text ? "ts_headline($1::regconfig, convert_from(substring(m.body FROM 1 FOR"
                   " p.text_len), 'UTF8'), websearch_to_tsquery($1::regconfig, $2),"
                   " 'MaxWords=20, MinWords=10, StartSel=**, StopSel=**')"
                 : "CASE WHEN p.text_len IS NOT NULL THEN left(convert_from(substring("
                   "m.body FROM 1 FOR p.text_len), 'UTF8'), $1::integer) END");
    if (r == 0)
        r = cv_buf_append(&sql, "", 1);
    if (r < 0) {
        cv_errf(errbuf, errlen, "postgres: building the search: %s", strerror(-r));
        goto out;
    }
    PGresult *res =
        PQexecParams(conn, (const char *)sql.data, np, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        r = cv_pg_i_fail(conn, res, "searching chatvault.search_docs", errbuf, errlen);
        goto out;
    }
    size_t n = (size_t)PQntuples(res);
    cv_pgsearch_hit *hits = calloc(n ? n : 1, sizeof(*hits));
    if (!hits) {
        PQclear(res);
        r = -ENOMEM;
        cv_errf(errbuf, errlen, "out of memory");
        goto out;
    }
    size_t nh = 0;
    for (size_t k = 0; k < n; k++) {
        int i = (int)k;
        if (k == n - 1) {
            ret->has_last = true;
            ret->last_channel = PQgetvalue(res, i, 0);
            ret->last_message_id = PQgetvalue(res, i, 1);
            ret->last_sent_at_us = strtoll(PQgetvalue(res, i, 7), NULL, 10);
        }
        /* a document whose row was deleted (retention, erasure): not a
         * hit, but still a position of the page */
        if (strcmp(PQgetvalue(res, i, 11), "t") != 0)
            continue;
        cv_pgsearch_hit *h = &hits[nh++];
        h->channel = PQgetvalue(res, i, 0);
        h->message_id = PQgetvalue(res, i, 1);
        h->sender_id = PQgetvalue(res, i, 2);
        h->topic = PQgetvalue(res, i, 3);
        h->content_type = PQgetvalue(res, i, 4);
        h->partition = (int32_t)strtol(PQgetvalue(res, i, 5), NULL, 10);
        h->offset = strtoll(PQgetvalue(res, i, 6), NULL, 10);
        h->sent_at_us = strtoll(PQgetvalue(res, i, 7), NULL, 10);
        h->persisted_at_us = strtoll(PQgetvalue(res, i, 8), NULL, 10);
        h->body_len = strtoll(PQgetvalue(res, i, 9), NULL, 10);
        h->excerpt = PQgetisnull(res, i, 10) ? NULL : PQgetvalue(res, i, 10);
        h->revision = (uint32_t)strtoul(PQgetvalue(res, i, 12), NULL, 10);
        h->deleted = strcmp(PQgetvalue(res, i, 13), "t") == 0;
    }
    ret->page_rows = n;
    ret->res = res;
    ret->n = nh;
    ret->hits = hits;
out:
    cv_buf_release(&sql);
    cv_buf_release(&names);
    cv_buf_release(&regexes);
    return r;
}

int cv_pgsearch_present(PGconn *conn, const char *const *channels, const char *const *ids,
                        size_t n, bool *ret_present, char *errbuf, size_t errlen) {
    cv_buf c, i;
    cv_buf_init(&c, ARRAY_LIMIT);
    cv_buf_init(&i, ARRAY_LIMIT);
    int r = cv_buf_append(&c, "{", 1);
    if (r == 0)
        r = cv_buf_append(&i, "{", 1);
    for (size_t k = 0; r == 0 && k < n; k++) {
        r = array_elem(&c, channels[k], strlen(channels[k]));
        if (r == 0)
            r = array_elem(&i, ids[k], strlen(ids[k]));
    }
    if (r == 0)
        r = cv_buf_append(&c, "}", 2);
    if (r == 0)
        r = cv_buf_append(&i, "}", 2);
    if (r < 0) {
        cv_errf(errbuf, errlen, "out of memory");
        goto out;
    }
    const char *params[2] = {(const char *)c.data, (const char *)i.data};
    /* One primary-key probe per message, by channel. */
    PGresult *res = PQexecParams(
        conn,
        "SELECT EXISTS (SELECT 1 FROM chatvault.messages m"
        " WHERE m.channel = u.c AND m.message_id = u.i)"
        " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(c, i, k) ORDER BY k",
        2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || (size_t)PQntuples(res) != n) {
        r = cv_pg_i_fail(conn, res, "looking up chatvault.messages", errbuf, errlen);
        goto out;
    }
    for (size_t k = 0; k < n; k++)
        ret_present[k] = strcmp(PQgetvalue(res, (int)k, 0), "t") == 0;
    PQclear(res);
out:
    cv_buf_release(&c);
    cv_buf_release(&i);
    return r;
}

void cv_pgsearch_result_free(cv_pgsearch_result *r) {
    if (!r)
        return;
    if (r->res)
        PQclear(r->res);
    free(r->hits);
    memset(r, 0, sizeof(*r));
}
