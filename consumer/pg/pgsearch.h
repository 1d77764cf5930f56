/*
 * pgsearch — search over the archive (schema version 3): the queries of the
 * indexer that fills chatvault.search_docs from chatvault.messages off the
 * ack path, and of `chatvault search`.
 *
 * The indexer copies one row per stored message into search_docs: key,
 * sent_at_us, sender_id, and the tsvector of the body when the body is text
 * (content_type text/... or containing "json", valid UTF-8 without NUL; its
 * first CV_PGSEARCH_TEXT_MAX bytes), else NULL. Which rows a pass reads is
 * decided by chatvault.search_state's watermark (see cv_pgsearch_index_pass).
 *
 * Not thread-safe: one connection per caller, used outside any transaction
 * of the caller's.
 */
#ifndef CV_PGSEARCH_H
#define CV_PGSEARCH_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes of a text body that are indexed; the words past them are not
 * found by --text (a tsvector holds at most 1 MB, and a chat message
 * rarely has 64 KiB of words). */
#define CV_PGSEARCH_TEXT_MAX 65536

/* Whether a body of this content type is indexed as text when it is valid
 * UTF-8. */
bool cv_pgsearch_textual(const char *content_type);

/* What one indexer pass did. */
typedef struct cv_pgsearch_pass {
    size_t read;          /* rows of messages read (not yet indexed) */
    size_t text;          /* of which with a text body */
    int64_t watermark_us; /* the watermark after the pass (Unix us) */
    bool busy;            /* another indexer held the state row: nothing done */
} cv_pgsearch_pass;

/* One pass of the indexer, in one transaction: reads up to MAX_ROWS rows of
 * chatvault.messages whose persisted_at is later than the watermark minus
 * MARGIN_US and that search_docs lacks, oldest first, inserts their
 * documents (to_tsvector(LANGUAGE, body)), and moves the watermark to the
 * latest persisted_at read. A row whose transaction commits more than
 * MARGIN_US after its persisted_at (clock_timestamp() of its INSERT) was
 * taken can be passed over: broker/daemon/indexer.c says why the margin
 * it uses suffices. Several indexers (broker instances) take turns: the
 * one that finds the state row locked returns with busy set. -CV_ESTORE
 * with a one-line error when PostgreSQL fails; nothing of the pass is kept
 * then. */
int cv_pgsearch_index_pass(PGconn *conn, const char *language, int64_t margin_us,
                           size_t max_rows, cv_pgsearch_pass *ret, char *errbuf,
                           size_t errlen);

/* --reindex: deletes every document, to be rebuilt by cv_pgsearch_reindex_step
 * (the broker's indexer keeps indexing new rows meanwhile), and moves the
 * watermark to now: the steps see every row committed before. *ret_total is
 * the number of rows of messages, for progress. */
int cv_pgsearch_reindex_begin(PGconn *conn, int64_t *ret_total, char *errbuf,
                              size_t errlen);

/* Indexes the next MAX_ROWS rows of messages in primary-key order after
 * (*channel, *message_id) (both "" at the start; the caller owns the
 * buffers, CHANNEL_LEN and ID_LEN bytes, and they are updated). *ret_n: rows
 * read; 0 at the end. */
int cv_pgsearch_reindex_step(PGconn *conn, const char *language, size_t max_rows,
                             char *channel, size_t channel_len, char *message_id,
                             size_t id_len, size_t *ret_n, char *errbuf, size_t errlen);

/* The indexer's watermark (Unix us; INT64_MIN before the first pass), how
 * many documents search_docs holds, and how many rows of messages were
 * stored after the watermark (not indexed yet, but for the margin). */
int cv_pgsearch_state(PGconn *conn, int64_t *ret_watermark_us, int64_t *ret_docs,
                      int64_t *ret_behind, char *errbuf, size_t errlen);

/* A search: every given condition applies. Results come newest first by
 * (sent_at_us, channel, message_id), at most LIMIT, after the cursor when
 * one is given. */
typedef struct cv_pgsearch_query {
    const char *const *channels; /* names or shell patterns (select.h) */
    size_t nchannels;
    const char *sender;         /* NULL: any */
    const char *message_id;     /* NULL: any */
    const char *text;           /* websearch_to_tsquery syntax; NULL: none */
    const char *language;       /* the text search configuration */
    int64_t since_us, until_us; /* sent_at_us; -1: unbounded */
    bool has_cursor;            /* keyset: strictly older than this */
    int64_t cursor_sent_at_us;
    const char *cursor_channel, *cursor_message_id;
    int limit;
    int excerpt_chars; /* of a body shown when there is no headline */
} cv_pgsearch_query;

/* One hit; strings valid until the result is freed. */
typedef struct cv_pgsearch_hit {
    const char *channel, *message_id, *sender_id, *topic, *content_type;
    int32_t partition;
    int64_t offset, sent_at_us, persisted_at_us;
    int64_t body_len;
    uint32_t revision;   /* the latest version's (schemas/0005_versions.sql) */
    bool deleted;        /* the latest version is a tombstone */
    const char *excerpt; /* ts_headline of a text hit, else the body's first
                            characters; NULL when the body is not text */
} cv_pgsearch_hit;

typedef struct cv_pgsearch_result {
    PGresult *res;
    size_t n; /* hits */
    cv_pgsearch_hit *hits;
    /* The page: documents chosen (LIMIT when full; n is fewer when some of
     * their rows were deleted from messages since), and the last one's
     * position, which is the cursor of the next page. */
    size_t page_rows;
    bool has_last;
    int64_t last_sent_at_us;
    const char *last_channel, *last_message_id;
} cv_pgsearch_result;

/* Runs Q. -EINVAL with the error when Q cannot be run (a pattern that is
 * not one), -CV_ESTORE when PostgreSQL fails. */
int cv_pgsearch_run(PGconn *conn, const cv_pgsearch_query *q, cv_pgsearch_result *ret,
                    char *errbuf, size_t errlen);
void cv_pgsearch_result_free(cv_pgsearch_result *r);

/* For each of N messages (CHANNELS[i], IDS[i]), whether chatvault.messages
 * holds it: ret_present[i]. */
int cv_pgsearch_present(PGconn *conn, const char *const *channels, const char *const *ids,
                        size_t n, bool *ret_present, char *errbuf, size_t errlen);

/* Writes the POSIX regular expression (anchored) equal to the shell pattern
 * PATTERN into BUF; -ENOBUFS when it does not fit. */
int cv_pgsearch_glob_regex(const char *pattern, char *buf, size_t len);

#endif
