/*
 * pgaudit — see pgaudit.h.
 */
#include "pg/pgaudit.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg/internal.h"
#include "util.h"

static const char append_sql[] =
    "INSERT INTO chatvault.audit (id, os_user, host, command, arguments, result,"
    " counts, detail)"
    " VALUES (coalesce($1::uuid, gen_random_uuid()), $2, $3, $4,"
    " coalesce($5::jsonb, '[]'), $6, coalesce($7::jsonb, '{}'), coalesce($8, ''))"
    " RETURNING id";

/* The first row of each action gives who and when; the last (highest seq)
 * gives the outcome. */
static const char list_sql[] =
    "SELECT f.id,"
    " to_char(f.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
    " CASE WHEN l.seq <> f.seq"
    "  THEN round(extract(epoch FROM l.at - f.at), 3)::text ELSE '' END,"
    " f.os_user, f.db_role, f.host, f.command, f.arguments, l.result, l.counts,"
    " l.detail"
    " FROM (SELECT DISTINCT ON (id) * FROM chatvault.audit ORDER BY id, seq) f"
    " JOIN (SELECT DISTINCT ON (id) * FROM chatvault.audit ORDER BY id, seq DESC) l"
    " USING (id)"
    " WHERE ($1::bigint IS NULL OR f.at >= timestamptz 'epoch'"
    "        + $1::bigint * interval '1 microsecond')"
    "   AND ($2::text IS NULL OR split_part(f.command, ' ', 1) = $2)"
    " ORDER BY f.seq DESC LIMIT $3";

int cv_pgaudit_append(PGconn *conn, const cv_audit_row *row, char ret_id[CV_AUDIT_ID_LEN],
                      char *errbuf, size_t errlen) {
    const char *values[8] = {row->id,          row->os_user,        row->host,
                             row->command,     row->arguments_json, row->result,
                             row->counts_json, row->detail};
    PGresult *res = PQexecParams(conn, append_sql, 8, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return cv_pg_i_fail(conn, res, "appending to chatvault.audit", errbuf, errlen);
    if (ret_id)
        snprintf(ret_id, CV_AUDIT_ID_LEN, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

int cv_pgaudit_list(PGconn *conn, const cv_audit_filter *f, cv_audit_list *ret,
                    char *errbuf, size_t errlen) {
    char since[24], limit[16];
    snprintf(since, sizeof(since), "%" PRId64, f->since_us);
    snprintf(limit, sizeof(limit), "%d", f->limit > 0 ? f->limit : 100);
    const char *values[3] = {f->since_us >= 0 ? since : NULL, f->command, limit};
    memset(ret, 0, sizeof(*ret));
    PGresult *res = PQexecParams(conn, list_sql, 3, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return cv_pg_i_fail(conn, res, "reading chatvault.audit", errbuf, errlen);
    size_t n = (size_t)PQntuples(res);
    cv_audit_action *a = calloc(n ? n : 1, sizeof(*a));
    if (!a) {
        PQclear(res);
        snprintf(errbuf, errlen, "out of memory");
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        int r = (int)i;
        a[i] = (cv_audit_action){
            .id = PQgetvalue(res, r, 0),
            .started_at = PQgetvalue(res, r, 1),
            .seconds = PQgetvalue(res, r, 2),
            .os_user = PQgetvalue(res, r, 3),
            .db_role = PQgetvalue(res, r, 4),
            .host = PQgetvalue(res, r, 5),
            .command = PQgetvalue(res, r, 6),
            .arguments_json = PQgetvalue(res, r, 7),
            .result = PQgetvalue(res, r, 8),
            .counts_json = PQgetvalue(res, r, 9),
            .detail = PQgetvalue(res, r, 10),
        };
    }
    *ret = (cv_audit_list){.res = res, .n = n, .actions = a};
    return 0;
}

void cv_pgaudit_list_free(cv_audit_list *l) {
    if (!l)
        return;
    PQclear(l->res);
    free(l->actions);
    memset(l, 0, sizeof(*l));
}
