/*
 * searchfmt — a search result as `chatvault search` and the broker's
 * /search and /api/search show it: the result, a page of them, the page's
 * cursor, and their JSON and HTML forms. One owner for these, so that the
 * command and the dashboard cannot drift.
 *
 * The cursor (--before, ?before=) is base64url of
 * "<sent_at_us>\n<channel>\n<message_id>": a position in the order of
 * results (sent_at_us, channel, message_id, newest first), not a row
 * number.
 *
 * Plain functions on the caller's memory: thread-safe.
 */
#ifndef CV_SEARCHFMT_H
#define CV_SEARCHFMT_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pg/pgsearch.h"
#include "util.h"

#define CV_SEARCH_CURSOR_MAX 1024
#define CV_SEARCH_EXCERPT_CHARS 100 /* of a body shown when no words are marked */
#define CV_SEARCH_LIMIT_MAX 10000   /* results per page */

/* One result, whichever store it came from; strings owned (strdup). */
typedef struct cv_search_hit {
    char *channel, *message_id, *sender_id, *topic, *content_type;
    char *excerpt; /* ts_headline (words between "**") or the body's first
                      characters; NULL when the body is not text */
    int32_t partition;
    int64_t offset, sent_at_us, body_len;
    uint32_t revision; /* the version found (README "Edits and deletes") */
    bool deleted;      /* a tombstone */
    int pg, log;       /* held there: 1 yes, 0 no, -1 not checked */
} cv_search_hit;

void cv_search_hit_release(cv_search_hit *h);
/* Copies the strings (EXCERPT may be NULL). 0 or -ENOMEM. */
int cv_search_hit_set(cv_search_hit *h, const char *channel, const char *id,
                      const char *sender, const char *topic, const char *content_type,
                      const char *excerpt);

/* Order of results: newest first by (sent_at_us, channel, message_id);
 * <0, 0, >0 as a comes before, with or after b in ascending order. */
int cv_search_key_cmp(int64_t at_a, const char *ch_a, const char *id_a, int64_t at_b,
                      const char *ch_b, const char *id_b);

/* A page: at most CAP results, the position of its last one and whether
 * it was full (from PostgreSQL a page may show fewer results than it
 * holds positions, when rows were deleted meanwhile). */
typedef struct cv_search_page {
    cv_search_hit *h;
    size_t n, cap;
    bool full;
    cv_search_hit last; /* sent_at_us, channel and message_id only */
} cv_search_page;

/* 0 or -ENOMEM. */
int cv_search_page_init(cv_search_page *p, size_t cap);
void cv_search_page_release(cv_search_page *p);

/* Runs Q (its limit is P's cap) on CONN and fills P, each result held by
 * PostgreSQL and the log not checked. cv_pgsearch_run's errors, or -ENOMEM. */
int cv_search_page_pg(PGconn *conn, cv_pgsearch_query *q, cv_search_page *p, char *errbuf,
                      size_t errlen);

typedef struct cv_search_cursor {
    bool set;
    int64_t sent_at_us;
    char channel[256], message_id[512];
} cv_search_cursor;

/* The cursor after the page's last result into OUT (LEN >=
 * CV_SEARCH_CURSOR_MAX * 2 always suffices): 0, or -ENOBUFS. */
int cv_search_cursor_encode(const cv_search_hit *last, char *out, size_t len);
/* 0, or -EINVAL when S is not a cursor this module made. */
int cv_search_cursor_decode(const char *s, cv_search_cursor *c);

/* Unix microseconds as RFC 3339 UTC with milliseconds. */
void cv_search_time(int64_t us, char *buf, size_t len);

/* Appends the result as one JSON object (no newline): the line of
 * `search --format jsonl`, an element of /api/search's "results". */
int cv_search_hit_json(cv_buf *b, const cv_search_hit *h);

/* Appends the result as an HTML table row: time, channel, sender, message
 * id, Kafka position, and the excerpt with its marked words in
 * <mark> (every string escaped), else "(N bytes of TYPE)". */
int cv_search_hit_html(cv_buf *b, const cv_search_hit *h);

#endif
