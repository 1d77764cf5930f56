/*
 * pgerase — see pgerase.h. A channel's rows: messages and their versions,
 * search documents, duplicates, rejected records that named it, and its
 * report rollups. A sender's rows: the messages, versions and search
 * documents of that sender and the sender's rollup rows; counts in the
 * other rollups stay (they say how many, not who or what).
 */
#include "pgerase.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "util.h"

const char *const cv_pgerase_tables[CV_PGERASE_TABLES] = {
    "search_docs",  "message_versions", "messages",        "duplicates",
    "rejected",     "report_hourly",    "report_senders",  "report_minutes",
    "report_sizes", "report_latency",   "report_rejected", "report_duplicates",
};

/* Which rows of table i a sender erasure takes: a condition on $2, or NULL
 * for none. */
static const char *sender_cond(size_t i) {
    switch (i) {
    case 0:
    case 1:
    case 2:
    case 6:
        return "sender_id = $2 AND ($1 = '' OR channel = $1)";
    default:
        return NULL;
    }
}

int cv_pgerase(PGconn *conn, const char *channel, const char *sender, bool dry_run,
               cv_pgerase_counts *ret, char *errbuf, size_t errlen) {
    cv_pgerase_counts c;
    memset(&c, 0, sizeof(c));
    int r = cv_pg_i_exec(
        conn, dry_run ? "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" : "BEGIN",
        "erase: begin", errbuf, errlen);
    if (r < 0)
        return r;
    const char *params[2] = {channel ? channel : "", sender ? sender : ""};
    for (size_t i = 0; i < CV_PGERASE_TABLES; i++) {
        const char *cond = sender ? sender_cond(i) : "channel = $1";
        if (!cond)
            continue;
        char sql[1024];
        if (dry_run)
            snprintf(sql, sizeof(sql), "SELECT count(*) FROM chatvault.%s WHERE %s",
                     cv_pgerase_tables[i], cond);
        else
            snprintf(sql, sizeof(sql),
                     "WITH d AS (DELETE FROM chatvault.%s WHERE %s RETURNING 1) SELECT "
                     "count(*) FROM d",
                     cv_pgerase_tables[i], cond);
        const Oid types[2] = {25, 25}; /* text */
        PGresult *res = PQexecParams(conn, sql, 2, types, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            char what[128];
            snprintf(what, sizeof(what), "erase: %s chatvault.%s",
                     dry_run ? "counting" : "deleting from", cv_pgerase_tables[i]);
            const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            bool denied = state && strcmp(state, "42501") == 0;
            r = cv_pg_i_fail(conn, res, what, errbuf, errlen);
            size_t l = strlen(errbuf);
            if (denied && l + 1 < errlen)
                snprintf(errbuf + l, errlen - l,
                         " (the admin role needs DELETE on it: schemas/0008_erasure.sql "
                         "grants it)");
            PQclear(PQexec(conn, "ROLLBACK"));
            return r;
        }
        c.rows[i] = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        c.total += c.rows[i];
        PQclear(res);
    }
    r = cv_pg_i_exec(conn, dry_run ? "ROLLBACK" : "COMMIT", "erase: commit", errbuf,
                     errlen);
    if (r < 0)
        return r;
    *ret = c;
    return 0;
}
