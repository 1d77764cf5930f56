/*
 * pg/internal.h — private to consumer/pg/: the helpers its files share,
 * prefixed cv_pg_i_. They are defined in pgread.c. Nothing outside this
 * folder includes it; the public APIs are pgread.h, pgstore.h, pgverify.h
 * pgmigrate.h, pgsearch.h, pgaudit.h, pgreport.h and pgdrill.h.
 */
#ifndef CV_PG_INTERNAL_H
#define CV_PG_INTERNAL_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Fills errbuf with "postgres: <what>: <the server's message>" on one line,
 * clears `res` (NULL: none; the connection's message is used) and returns
 * -CV_ESTORE. */
int cv_pg_i_fail(PGconn *conn, PGresult *res, const char *what, char *errbuf,
                 size_t errlen);

/* Runs SQL, which returns no rows or rows nobody reads; 0, or
 * cv_pg_i_fail's error about `what`. */
int cv_pg_i_exec(PGconn *conn, const char *sql, const char *what, char *errbuf,
                 size_t errlen);

/* Appends a PostgreSQL array literal of the n offsets (offs) or of the n
 * quoted ids (ids), NUL-terminated, to b. 0 or the cv_buf error. */
int cv_pg_i_array_literal(cv_buf *b, const int64_t *offs, const char *const *ids,
                          size_t n);

#endif
