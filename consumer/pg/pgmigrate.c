/*
 * pgmigrate — see pgmigrate.h.
 */
#include "pg/pgmigrate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg/internal.h"
#include "util.h"

/* pg_advisory_lock key: "chatvaul" as a big-endian int64. */
#define MIGRATE_LOCK_KEY "7162241009358694764"

static void quiet_notice(void *arg, const char *message) {
    (void)arg, (void)message;
}

PGconn *cv_pg_connect(const char *conninfo, char *errbuf, size_t errlen) {
    return cv_pg_connect_timeout(conninfo, 0, errbuf, errlen);
}

PGconn *cv_pg_connect_timeout(const char *conninfo, int timeout_s, char *errbuf,
                              size_t errlen) {
    /* The timeout comes before the expanded conninfo, so a connect_timeout
     * the user wrote there wins. */
    char t[16];
    snprintf(t, sizeof(t), "%d", timeout_s);
    const char *const keys[] = {"connect_timeout", "dbname", NULL};
    const char *const values[] = {t, conninfo, NULL};
    PGconn *conn = timeout_s > 0 ? PQconnectdbParams(keys + 0, values + 0, 1)
                                 : PQconnectdbParams(keys + 1, values + 1, 1);
    if (!conn) {
        snprintf(errbuf, errlen, "postgres: out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        const char *host = PQhost(conn), *port = PQport(conn);
        snprintf(errbuf, errlen, "postgres: cannot connect to %s%s%s: %s",
                 host && *host ? host : "(default socket)", port && *port ? " port " : "",
                 port && *port ? port : "", PQerrorMessage(conn));
        cv_one_line(errbuf);
        PQfinish(conn);
        return NULL;
    }
    PQsetNoticeProcessor(conn, quiet_notice, NULL);
    return conn;
}

int cv_pgmigrate_current(PGconn *conn, int *ret_version, char *errbuf, size_t errlen) {
    PGresult *res =
        PQexec(conn, "SELECT to_regclass('chatvault.schema_migrations') IS NOT NULL");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return cv_pg_i_fail(conn, res, "reading the schema version", errbuf, errlen);
    bool exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!exists) {
        *ret_version = 0;
        return 0;
    }
    res =
        PQexec(conn, "SELECT coalesce(max(version), 0) FROM chatvault.schema_migrations");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return cv_pg_i_fail(conn, res, "reading the schema version", errbuf, errlen);
    *ret_version = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

static int apply_one(PGconn *conn, const cv_migration *m, char *errbuf, size_t errlen) {
    char what[200];
    snprintf(what, sizeof(what), "migration %s", m->name);
    int r = cv_pg_i_exec(conn, "BEGIN", what, errbuf, errlen);
    if (r < 0)
        return r;
    r = cv_pg_i_exec(conn, m->sql, what, errbuf, errlen);
    if (r == 0) {
        char version[16];
        snprintf(version, sizeof(version), "%d", m->version);
        const char *params[2] = {version, m->name};
        PGresult *res = PQexecParams(
            conn,
            "INSERT INTO chatvault.schema_migrations (version, name) VALUES ($1, $2)", 2,
            NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            r = cv_pg_i_fail(conn, res, what, errbuf, errlen);
        else
            PQclear(res);
    }
    if (r == 0)
        return cv_pg_i_exec(conn, "COMMIT", what, errbuf, errlen);
    char ignore[256];
    cv_pg_i_exec(conn, "ROLLBACK", what, ignore, sizeof(ignore));
    return r;
}

int cv_pgmigrate_apply(PGconn *conn, int *ret_from, int *ret_to, char *errbuf,
                       size_t errlen) {
    int latest = cv_migrations[cv_migrations_count - 1].version, current = 0;
    int r = cv_pg_i_exec(conn, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")",
                         "taking the migration lock", errbuf, errlen);
    if (r < 0)
        return r;
    r = cv_pg_i_exec(conn,
                     "CREATE SCHEMA IF NOT EXISTS chatvault;"
                     "CREATE TABLE IF NOT EXISTS chatvault.schema_migrations ("
                     " version integer PRIMARY KEY,"
                     " name text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())",
                     "creating chatvault.schema_migrations", errbuf, errlen);
    if (r == 0)
        r = cv_pgmigrate_current(conn, &current, errbuf, errlen);
    if (r == 0 && current > latest) {
        snprintf(errbuf, errlen,
                 "postgres: database schema is version %d but this chatvault "
                 "knows only up to %d; upgrade chatvault instead",
                 current, latest);
        r = -CV_ESCHEMA;
    }
    int from = current;
    for (int i = 0; r == 0 && i < cv_migrations_count; i++)
        if (cv_migrations[i].version > current) {
            r = apply_one(conn, &cv_migrations[i], errbuf, errlen);
            if (r == 0)
                current = cv_migrations[i].version;
        }
    char ignore[256];
    cv_pg_i_exec(conn, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")",
                 "releasing the migration lock", ignore, sizeof(ignore));
    if (r < 0)
        return r;
    *ret_from = from;
    *ret_to = current;
    return 0;
}

int cv_pgmigrate_check(PGconn *conn, char *errbuf, size_t errlen) {
    int latest = cv_migrations[cv_migrations_count - 1].version, current;
    int r = cv_pgmigrate_current(conn, &current, errbuf, errlen);
    if (r < 0)
        return r;
    if (current < latest) {
        snprintf(errbuf, errlen,
                 "postgres: database schema is version %d, this chatvault needs "
                 "%d: run `chatvault migrate`",
                 current, latest);
        return -CV_ESCHEMA;
    }
    if (current > latest) {
        snprintf(errbuf, errlen,
                 "postgres: database schema is version %d but this chatvault "
                 "knows only up to %d; upgrade chatvault",
                 current, latest);
        return -CV_ESCHEMA;
    }
    return 0;
}
