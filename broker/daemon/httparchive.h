/*
 * httparchive — the broker's pages into the archive, served by http.c when
 * http.archive is on:
 *
 *   GET /search       a form and one page of results (HTML, no script)
 *   GET /api/search   {"results": [...], "next_before": CURSOR|null}, each
 *                     result the object of `search --format jsonl`
 *   GET /reports      the activity report's HTML page, with a form
 *   GET /api/report   the report's JSON document (`report --format json`)
 *   GET /archive.css  the pages' style sheet
 *
 * Parameters are the commands' options: text, channel (repeatable), sender,
 * id, since, until, limit (1..200, default 50), before for search; since
 * (default 7d), until, channel for reports. An unknown or repeated one is a
 * 400 that names it.
 *
 * Each request opens a PostgreSQL connection of its own with the reader's
 * conninfo (postgres.reader_conninfo), sets statement_timeout, and writes
 * an audit action (os user "http", host the client's address, the
 * parameters as its arguments, the result count) as the commands do. A
 * query over the timeout answers 503, PostgreSQL unreachable 503, a
 * pattern or time that is not one 400.
 *
 * Thread-safe: the conf is read-only; libmicrohttpd's pool threads call in
 * at once.
 */
#ifndef CV_HTTPARCHIVE_H
#define CV_HTTPARCHIVE_H

#include <microhttpd.h>
#include <stdbool.h>

#include "util.h"

typedef struct cv_httparchive_conf {
    const char *conninfo; /* the reader's */
    const char *language; /* search.language */
    unsigned timeout_ms;  /* statement_timeout of every query */
} cv_httparchive_conf;

/* Whether URL is one of this module's paths. */
bool cv_httparchive_path(const char *url);

/* Serves URL into OUT (its limit set by the caller): returns the HTTP
 * status and sets *ret_type; on an error OUT holds a one-line text/plain
 * message. PEER is the client's address, for the audit record. */
unsigned cv_httparchive_serve(const cv_httparchive_conf *a, struct MHD_Connection *c,
                              const char *url, const char *peer, cv_buf *out,
                              const char **ret_type);

#endif
