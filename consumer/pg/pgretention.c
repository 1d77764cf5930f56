/*
 * pgretention — see pgretention.h.
 */
#include "pg/pgretention.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg/internal.h"
#include "util.h"

static const char holds_sql[] =
    "SELECT channel, reason, held_by,"
    " to_char(held_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
    " FROM chatvault.retention_holds ORDER BY channel";
static const char hold_sql[] =
    "INSERT INTO chatvault.retention_holds (channel, reason, held_by)"
    " VALUES ($1, $2, $3) ON CONFLICT (channel) DO NOTHING";
static const char release_sql[] =
    "DELETE FROM chatvault.retention_holds WHERE channel = $1";

/* The ranges are passed as two arrays of their ends; joined to them, the
 * coordinates index (channel, kafka_partition, kafka_offset) scans each
 * range, not the whole partition. The ranges do not overlap. */
#define RANGES " unnest($4::bigint[], $5::bigint[]) AS r(lo, hi)"
#define IN_RANGES(t)                                                                     \
    " " t ".channel = $1 AND " t ".kafka_topic = $2 AND " t                              \
    ".kafka_partition = $3::integer AND " t ".kafka_offset BETWEEN r.lo AND r.hi"        \
    " AND (" t ".kafka_timestamp IS NULL OR " t ".kafka_timestamp < "                    \
    "timestamptz 'epoch' + $6::bigint * interval '1 millisecond')"

static const char count_sql[] =
    "SELECT (SELECT count(*) FROM" RANGES " JOIN chatvault.messages m ON" IN_RANGES(
        "m") "), (SELECT count(*) FROM" RANGES
             " JOIN chatvault.message_versions v ON" IN_RANGES("v") ")";
static const char delete_docs_sql[] =
    "DELETE FROM chatvault.search_docs d USING" RANGES ", chatvault.messages m"
    " WHERE d.channel = m.channel AND d.message_id = m.message_id AND" IN_RANGES("m");
static const char delete_messages_sql[] =
    "DELETE FROM chatvault.messages m USING" RANGES " WHERE" IN_RANGES("m");
static const char delete_versions_sql[] =
    "DELETE FROM chatvault.message_versions v USING" RANGES " WHERE" IN_RANGES("v");
static const char delete_duplicates_sql[] =
    "DELETE FROM chatvault.duplicates d USING" RANGES " WHERE d.channel = $1 AND"
    " d.kafka_topic = $2 AND d.kafka_partition = $3::integer"
    " AND d.kafka_offset BETWEEN r.lo AND r.hi";

int cv_pgretention_holds(PGconn *conn, cv_hold_list *ret, char *errbuf, size_t errlen) {
    memset(ret, 0, sizeof(*ret));
    PGresult *res = PQexec(conn, holds_sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return cv_pg_i_fail(conn, res, "reading chatvault.retention_holds", errbuf,
                            errlen);
    size_t n = (size_t)PQntuples(res);
    cv_hold *h = calloc(n ? n : 1, sizeof(*h));
    if (!h) {
        PQclear(res);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        h[i].channel = PQgetvalue(res, (int)i, 0);
        h[i].reason = PQgetvalue(res, (int)i, 1);
        h[i].held_by = PQgetvalue(res, (int)i, 2);
        h[i].held_at = PQgetvalue(res, (int)i, 3);
    }
    ret->res = res;
    ret->n = n;
    ret->holds = h;
    return 0;
}

void cv_pgretention_holds_free(cv_hold_list *l) {
    free(l->holds);
    PQclear(l->res);
    memset(l, 0, sizeof(*l));
}

static int exec_count(PGconn *conn, const char *sql, int nparams,
                      const char *const *values, const char *what, uint64_t *ret_changed,
                      char *errbuf, size_t errlen) {
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        return cv_pg_i_fail(conn, res, what, errbuf, errlen);
    if (ret_changed)
        *ret_changed = strtoull(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    return 0;
}

int cv_pgretention_hold(PGconn *conn, const char *channel, const char *reason,
                        const char *held_by, char *errbuf, size_t errlen) {
    const char *v[3] = {channel, reason, held_by};
    uint64_t n = 0;
    int r = exec_count(conn, hold_sql, 3, v,
                       "placing a hold in chatvault.retention_holds", &n, errbuf, errlen);
    return r < 0 ? r : n > 0;
}

int cv_pgretention_release(PGconn *conn, const char *channel, char *errbuf,
                           size_t errlen) {
    const char *v[1] = {channel};
    uint64_t n = 0;
    int r =
        exec_count(conn, release_sql, 1, v,
                   "releasing a hold in chatvault.retention_holds", &n, errbuf, errlen);
    return r < 0 ? r : n > 0;
}

/* "{1,2,3}" of the ranges' first (or last) offsets. */
static char *array_text(const cv_offset_range *ranges, size_t n, bool last) {
    cv_buf b;
    cv_buf_init(&b, (size_t)1 << 30);
    cv_buf_append(&b, "{", 1);
    for (size_t i = 0; i < n; i++)
        cv_buf_printf(&b, "%s%" PRId64, i ? "," : "",
                      last ? ranges[i].last : ranges[i].first);
    if (cv_buf_append(&b, "}", 2) < 0) {
        cv_buf_release(&b);
        return NULL;
    }
    return (char *)b.data; /* the caller frees it */
}

int cv_pgretention_rows(PGconn *conn, const char *channel, const char *topic,
                        int32_t partition, const cv_offset_range *ranges, size_t n,
                        int64_t before_ms, bool delete, uint64_t *ret_rows,
                        uint64_t *ret_versions, char *errbuf, size_t errlen) {
    *ret_rows = *ret_versions = 0;
    if (n == 0)
        return 0;
    char part[16], before[32];
    snprintf(part, sizeof(part), "%" PRId32, partition);
    snprintf(before, sizeof(before), "%" PRId64, before_ms);
    char *lo = array_text(ranges, n, false), *hi = array_text(ranges, n, true);
    if (!lo || !hi) {
        free(lo);
        free(hi);
        return -ENOMEM;
    }
    const char *v[6] = {channel, topic, part, lo, hi, before};
    int r = 0;
    if (!delete) {
        PGresult *res = PQexecParams(conn, count_sql, 6, NULL, v, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            r = cv_pg_i_fail(conn, res, "counting the rows retention would delete",
                             errbuf, errlen);
        } else {
            *ret_rows = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
            *ret_versions = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
            PQclear(res);
        }
        free(lo);
        free(hi);
        return r;
    }
    r = exec_count(conn, "BEGIN", 0, NULL, "BEGIN", NULL, errbuf, errlen);
    if (r == 0)
        r = exec_count(conn, delete_docs_sql, 6, v,
                       "deleting expired rows of chatvault.search_docs", NULL, errbuf,
                       errlen);
    if (r == 0)
        r = exec_count(conn, delete_messages_sql, 6, v,
                       "deleting expired rows of chatvault.messages", ret_rows, errbuf,
                       errlen);
    if (r == 0)
        r = exec_count(conn, delete_versions_sql, 6, v,
                       "deleting expired rows of chatvault.message_versions",
                       ret_versions, errbuf, errlen);
    if (r == 0)
        r = exec_count(conn, delete_duplicates_sql, 5, v,
                       "deleting expired rows of chatvault.duplicates", NULL, errbuf,
                       errlen);
    if (r == 0)
        r = exec_count(conn, "COMMIT", 0, NULL, "COMMIT", NULL, errbuf, errlen);
    if (r < 0 && PQstatus(conn) == CONNECTION_OK)
        PQclear(PQexec(conn, "ROLLBACK"));
    free(lo);
    free(hi);
    return r;
}
