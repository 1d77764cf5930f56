/*
 * pgdrill — see pgdrill.h.
 */
#include "pg/pgdrill.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg/internal.h"
#include "util.h"

static const char append_sql[] =
    "INSERT INTO chatvault.restore_drills (started_at, finished_at, trigger, host,"
    " passed, scope, selected, sampled, verified, mismatched, missing,"
    " restore_seconds, verify_seconds, detail)"
    " VALUES (timestamptz 'epoch' + $1::bigint * interval '1 microsecond',"
    " CASE WHEN $2::bigint = 0 THEN clock_timestamp()"
    "  ELSE timestamptz 'epoch' + $2::bigint * interval '1 microsecond' END,"
    " $3, $4, $5::boolean, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/* The newest drill, and the newest that passed. */
static const char last_sql[] =
    "SELECT (extract(epoch FROM l.finished_at) * 1000000)::bigint, l.passed,"
    " l.restore_seconds + l.verify_seconds, l.sampled, l.detail,"
    " (SELECT (extract(epoch FROM max(finished_at)) * 1000000)::bigint"
    "  FROM chatvault.restore_drills WHERE passed)"
    " FROM (SELECT * FROM chatvault.restore_drills"
    "       ORDER BY finished_at DESC LIMIT 1) l";

int cv_pgdrill_append(PGconn *conn, const cv_drill_row *row, char *errbuf,
                      size_t errlen) {
    char v[11][32];
    snprintf(v[0], sizeof(v[0]), "%" PRId64, row->started_us);
    snprintf(v[1], sizeof(v[1]), "%" PRId64, row->finished_us);
    snprintf(v[2], sizeof(v[2]), "%s", row->passed ? "true" : "false");
    snprintf(v[3], sizeof(v[3]), "%" PRIu64, row->selected);
    snprintf(v[4], sizeof(v[4]), "%" PRIu64, row->sampled);
    snprintf(v[5], sizeof(v[5]), "%" PRIu64, row->verified);
    snprintf(v[6], sizeof(v[6]), "%" PRIu64, row->mismatched);
    snprintf(v[7], sizeof(v[7]), "%" PRIu64, row->missing);
    snprintf(v[8], sizeof(v[8]), "%.3f", row->restore_s);
    snprintf(v[9], sizeof(v[9]), "%.3f", row->verify_s);
    const char *values[14] = {v[0],         v[1],
                              row->trigger, row->host ? row->host : "",
                              v[2],         row->scope,
                              v[3],         v[4],
                              v[5],         v[6],
                              v[7],         v[8],
                              v[9],         row->detail ? row->detail : ""};
    PGresult *res = PQexecParams(conn, append_sql, 14, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        return cv_pg_i_fail(conn, res, "appending to chatvault.restore_drills", errbuf,
                            errlen);
    PQclear(res);
    return 0;
}

int cv_pgdrill_last(PGconn *conn, cv_drill_last *ret, char *errbuf, size_t errlen) {
    memset(ret, 0, sizeof(*ret));
    PGresult *res = PQexec(conn, last_sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return cv_pg_i_fail(conn, res, "reading chatvault.restore_drills", errbuf,
                            errlen);
    if (PQntuples(res) == 1) {
        ret->last_us = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        ret->last_passed = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
        ret->last_seconds = strtod(PQgetvalue(res, 0, 2), NULL);
        ret->last_sampled = strtoull(PQgetvalue(res, 0, 3), NULL, 10);
        snprintf(ret->last_detail, sizeof(ret->last_detail), "%s", PQgetvalue(res, 0, 4));
        if (!PQgetisnull(res, 0, 5))
            ret->last_success_us = strtoll(PQgetvalue(res, 0, 5), NULL, 10);
    }
    PQclear(res);
    return 0;
}
