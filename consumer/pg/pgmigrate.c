/*
 * pgmigrate — see pgmigrate.h.
 */
#include "pg/pgmigrate.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* ---- whole databases (restore, drill) --------------------------------- */

static int conninfo_parse(const char *conninfo, PQconninfoOption **ret, char *errbuf,
                          size_t errlen) {
    char *perr = NULL;
    *ret = PQconninfoParse(conninfo, &perr);
    if (*ret)
        return 0;
    snprintf(errbuf, errlen, "postgres: conninfo does not parse: %s",
             perr ? perr : "out of memory");
    cv_one_line(errbuf);
    PQfreemem(perr);
    return -EINVAL;
}

/* Appends key='value' to out, quoting as libpq's conninfo grammar wants. */
static bool put_pair(char *out, size_t outlen, size_t *at, const char *key,
                     const char *value) {
    int n = snprintf(out + *at, outlen - *at, "%s%s='", *at ? " " : "", key);
    if (n < 0 || (size_t)n >= outlen - *at)
        return false;
    *at += (size_t)n;
    for (const char *p = value; *p; p++) {
        if ((*p == '\'' || *p == '\\') && *at + 1 < outlen)
            out[(*at)++] = '\\';
        if (*at + 2 >= outlen)
            return false;
        out[(*at)++] = *p;
    }
    if (*at + 2 > outlen) /* the closing quote and the NUL */
        return false;
    out[(*at)++] = '\'';
    out[*at] = '\0';
    return true;
}

int cv_pg_conninfo_with_db(const char *conninfo, const char *dbname, char *out,
                           size_t outlen, char *errbuf, size_t errlen) {
    PQconninfoOption *opts;
    int r = conninfo_parse(conninfo, &opts, errbuf, errlen);
    if (r < 0)
        return r;
    size_t at = 0;
    bool ok = outlen > 0;
    if (ok)
        out[0] = '\0';
    for (PQconninfoOption *o = opts; ok && o->keyword; o++)
        if (o->val && strcmp(o->keyword, "dbname") != 0)
            ok = put_pair(out, outlen, &at, o->keyword, o->val);
    if (ok)
        ok = put_pair(out, outlen, &at, "dbname", dbname);
    PQconninfoFree(opts);
    if (!ok) {
        snprintf(errbuf, errlen, "postgres: conninfo too long");
        return -ENAMETOOLONG;
    }
    return 0;
}

int cv_pg_conninfo_db(const char *conninfo, char *out, size_t outlen, char *errbuf,
                      size_t errlen) {
    PQconninfoOption *opts;
    int r = conninfo_parse(conninfo, &opts, errbuf, errlen);
    if (r < 0)
        return r;
    const char *db = NULL, *user = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "dbname") == 0)
            db = o->val;
        else if (strcmp(o->keyword, "user") == 0)
            user = o->val;
    }
    /* libpq's defaults, in its order: PGDATABASE, then the user name */
    if (!db || !*db)
        db = getenv("PGDATABASE");
    if (!db || !*db)
        db = user && *user ? user : getenv("PGUSER");
    if (!db || !*db) {
        const struct passwd *pw = getpwuid(geteuid());
        db = pw ? pw->pw_name : "postgres";
    }
    snprintf(out, outlen, "%s", db);
    PQconninfoFree(opts);
    return 0;
}

/* A connection to the `postgres` database of conninfo's server, and the
 * name of conninfo's own database, quoted as an identifier. */
static PGconn *maintenance_conn(const char *conninfo, char **ret_ident, char *db,
                                size_t dblen, char *errbuf, size_t errlen) {
    char other[4096];
    if (cv_pg_conninfo_db(conninfo, db, dblen, errbuf, errlen) < 0 ||
        cv_pg_conninfo_with_db(conninfo, "postgres", other, sizeof(other), errbuf,
                               errlen) < 0)
        return NULL;
    PGconn *conn = cv_pg_connect(other, errbuf, errlen);
    if (!conn)
        return NULL;
    *ret_ident = PQescapeIdentifier(conn, db, strlen(db));
    if (!*ret_ident) {
        cv_pg_i_fail(conn, NULL, "quoting a database name", errbuf, errlen);
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

static int database_exists(PGconn *conn, const char *db, bool *ret, char *errbuf,
                           size_t errlen) {
    const char *params[1] = {db};
    PGresult *res = PQexecParams(conn, "SELECT 1 FROM pg_database WHERE datname = $1", 1,
                                 NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return cv_pg_i_fail(conn, res, "looking up a database", errbuf, errlen);
    *ret = PQntuples(res) == 1;
    PQclear(res);
    return 0;
}

int cv_pg_create_database(const char *conninfo, const char *mark, bool *ret_created,
                          char *errbuf, size_t errlen) {
    char db[256], *ident = NULL;
    PGconn *conn = maintenance_conn(conninfo, &ident, db, sizeof(db), errbuf, errlen);
    if (!conn)
        return -CV_ESTORE;
    bool exists = false, created = false;
    int r = database_exists(conn, db, &exists, errbuf, errlen);
    if (r == 0 && !exists) {
        char sql[600], what[300];
        snprintf(sql, sizeof(sql), "CREATE DATABASE %s", ident);
        snprintf(what, sizeof(what), "creating database %s", db);
        r = cv_pg_i_exec(conn, sql, what, errbuf, errlen);
        created = r == 0;
    }
    if (created && mark) {
        char *lit = PQescapeLiteral(conn, mark, strlen(mark));
        char sql[1200], what[300];
        snprintf(sql, sizeof(sql), "COMMENT ON DATABASE %s IS %s", ident,
                 lit ? lit : "''");
        snprintf(what, sizeof(what), "marking database %s", db);
        r = lit ? cv_pg_i_exec(conn, sql, what, errbuf, errlen)
                : cv_pg_i_fail(conn, NULL, what, errbuf, errlen);
        PQfreemem(lit);
    }
    PQfreemem(ident);
    PQfinish(conn);
    if (r < 0)
        return -CV_ESTORE;
    *ret_created = created;
    return 0;
}

int cv_pg_drop_database(const char *conninfo, const char *mark, char *errbuf,
                        size_t errlen) {
    char db[256], *ident = NULL;
    PGconn *conn = maintenance_conn(conninfo, &ident, db, sizeof(db), errbuf, errlen);
    if (!conn)
        return -CV_ESTORE;
    const char *params[1] = {db};
    PGresult *res =
        PQexecParams(conn,
                     "SELECT coalesce(shobj_description(oid, 'pg_database'), '')"
                     " FROM pg_database WHERE datname = $1",
                     1, NULL, params, NULL, NULL, 0);
    int r = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        r = cv_pg_i_fail(conn, res, "looking up a database", errbuf, errlen);
        res = NULL;
    } else if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), mark) != 0) {
        snprintf(errbuf, errlen,
                 "database %s was not made by chatvault for this (its comment is not "
                 "\"%s\"): not dropped; name another database, or drop it yourself",
                 db, mark);
        r = -EPERM;
    }
    bool exists = res && PQntuples(res) == 1;
    PQclear(res);
    if (r == 0 && exists) {
        char sql[600], what[300];
        snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", ident);
        snprintf(what, sizeof(what), "dropping database %s", db);
        r = cv_pg_i_exec(conn, sql, what, errbuf, errlen) < 0 ? -CV_ESTORE : 0;
    }
    PQfreemem(ident);
    PQfinish(conn);
    return r;
}

int cv_pg_database_exists(const char *conninfo, bool *ret_exists, char *errbuf,
                          size_t errlen) {
    char db[256], *ident = NULL;
    PGconn *conn = maintenance_conn(conninfo, &ident, db, sizeof(db), errbuf, errlen);
    if (!conn)
        return -CV_ESTORE;
    int r = database_exists(conn, db, ret_exists, errbuf, errlen);
    PQfreemem(ident);
    PQfinish(conn);
    return r < 0 ? -CV_ESTORE : 0;
}
