/*
 * pgmigrate — the PostgreSQL schema. Migrations (schemas/NNNN_name.sql) are
 * compiled into the binary; `cv_pgmigrate_apply` applies the pending ones in
 * order, each in its own transaction, under an advisory lock so two
 * concurrent runs serialise, and refuses a database whose schema is newer
 * than this binary.
 */
#ifndef CV_PGMIGRATE_H
#define CV_PGMIGRATE_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct cv_migration {
    int version;
    const char *name;
    const char *sql;
} cv_migration;

extern const cv_migration cv_migrations[];
extern const int cv_migrations_count;

/* Connects with libpq, keeping server notices out of stderr. On failure
 * returns NULL with a one-line error naming the host. The caller PQfinish-es
 * the connection. */
PGconn *cv_pg_connect(const char *conninfo, char *errbuf, size_t errlen);

/* The same, giving up after TIMEOUT_S seconds (0: libpq's default, none)
 * unless the conninfo sets connect_timeout itself. */
PGconn *cv_pg_connect_timeout(const char *conninfo, int timeout_s, char *errbuf,
                              size_t errlen);

/* Applies pending migrations. *ret_from / *ret_to receive the version before
 * and after. -CV_ESCHEMA when the database is newer than the binary;
 * -CV_ESTORE on a database error; errbuf says which. */
int cv_pgmigrate_apply(PGconn *conn, int *ret_from, int *ret_to, char *errbuf,
                       size_t errlen);

/* The schema version the database holds (0: none). */
int cv_pgmigrate_current(PGconn *conn, int *ret_version, char *errbuf, size_t errlen);

/* 0 when the database holds exactly the binary's latest version; otherwise
 * -CV_ESCHEMA with an error that says what to run. */
int cv_pgmigrate_check(PGconn *conn, char *errbuf, size_t errlen);

#endif
