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

/* Writes to out (outlen bytes) the conninfo `conninfo` with its database
 * replaced by `dbname`, as key='value' pairs (a URI is accepted too). 0,
 * or -EINVAL with errbuf saying why the conninfo does not parse, or
 * -ENAMETOOLONG. */
int cv_pg_conninfo_with_db(const char *conninfo, const char *dbname, char *out,
                           size_t outlen, char *errbuf, size_t errlen);

/* The database a conninfo names (libpq's default, the user name, when it
 * names none), into out. 0 or -EINVAL with errbuf set. */
int cv_pg_conninfo_db(const char *conninfo, char *out, size_t outlen, char *errbuf,
                      size_t errlen);

/* Creates the database `conninfo` names, unless it exists, connecting to
 * the same server's `postgres` database; *ret_created says whether it did.
 * With `mark` (NULL: none) a database it creates gets it as its comment.
 * 0, or -CV_ESTORE with errbuf set. */
int cv_pg_create_database(const char *conninfo, const char *mark, bool *ret_created,
                          char *errbuf, size_t errlen);

/* Drops the database `conninfo` names, if it exists, ending its sessions
 * (WITH (FORCE)), but only when its comment is `mark`: a database
 * something else made is refused (-EPERM, errbuf says which). 0, or
 * -CV_ESTORE with errbuf set. */
int cv_pg_drop_database(const char *conninfo, const char *mark, char *errbuf,
                        size_t errlen);

/* Whether the database `conninfo` names exists on its server (asked of the
 * server's `postgres` database). 0, or -CV_ESTORE with errbuf set. */
int cv_pg_database_exists(const char *conninfo, bool *ret_exists, char *errbuf,
                          size_t errlen);

#endif
