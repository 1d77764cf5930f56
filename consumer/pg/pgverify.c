/*
 * pgverify — see pgverify.h. The statements are those verify ran itself
 * before they moved here; what they answer is documented in verify.h.
 */
#include "pg/pgverify.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg/internal.h"
#include "util.h"

#define IDS_LIMIT ((size_t)64 << 20) /* bytes of one lookup's id array */

/* The partitions of chatvault.messages and their rows, with the versions
 * of chatvault.message_versions (an edit may go to another partition than
 * the message's latest version). */
static const char partitions_sql[] =
    "SELECT channel, kafka_topic, kafka_partition, sum(n)::bigint FROM ("
    " SELECT channel, kafka_topic, kafka_partition, count(*) AS n"
    " FROM chatvault.messages GROUP BY channel, kafka_topic, kafka_partition"
    " UNION ALL SELECT channel, kafka_topic, kafka_partition, count(*)"
    " FROM chatvault.message_versions GROUP BY channel, kafka_topic, kafka_partition"
    ") p GROUP BY channel, kafka_topic, kafka_partition";

/* The consumer groups' offsets. */
static const char offsets_sql[] = "SELECT consumer_group, topic,"
                                  " kafka_partition, next_offset, updated_at"
                                  " FROM chatvault.kafka_offsets";

/* A partition's rejected offsets: $1 topic, $2 partition. */
static const char rejected_sql[] =
    "SELECT kafka_offset FROM chatvault.rejected"
    " WHERE kafka_topic = $1 AND kafka_partition = $2 ORDER BY kafka_offset";

/* The versions channel $1 holds of the ids $2 (a text[]). */
static const char held_ids_sql[] =
    "SELECT message_id, revision FROM chatvault.messages"
    " WHERE channel = $1 AND message_id = ANY($2::text[])"
    " UNION ALL SELECT message_id, revision FROM chatvault.message_versions"
    " WHERE channel = $1 AND message_id = ANY($2::text[])";

/* The offset of a partition's row persisted last at or before $4: $1
 * channel, $2 topic, $3 partition. */
static const char newest_row_sql[] =
    "SELECT kafka_offset FROM chatvault.messages"
    " WHERE channel = $1 AND kafka_topic = $2 AND kafka_partition = $3"
    " AND persisted_at <= $4::timestamptz"
    " ORDER BY persisted_at DESC, kafka_offset DESC LIMIT 1";

/* Runs one SELECT with nparams text parameters (0: none): its rows, which
 * the caller clears, or NULL after cv_pg_i_fail filled errbuf (the error
 * is then -CV_ESTORE). */
static PGresult *select_rows(PGconn *conn, const char *sql, int nparams,
                             const char *const *params, const char *what, char *errbuf,
                             size_t errlen) {
    PGresult *res = nparams
                        ? PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0)
                        : PQexec(conn, sql);
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        return res;
    cv_pg_i_fail(conn, res, what, errbuf, errlen);
    return NULL;
}

int cv_pgverify_partitions(PGconn *conn, cv_pgverify_partition_fn *fn, void *opaque,
                           char *errbuf, size_t errlen) {
    PGresult *res =
        select_rows(conn, partitions_sql, 0, NULL,
                    "listing the partitions of chatvault.messages", errbuf, errlen);
    if (!res)
        return -CV_ESTORE;
    int r = 0;
    for (int i = 0; r == 0 && i < PQntuples(res); i++)
        r = fn(opaque, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
               (int32_t)strtol(PQgetvalue(res, i, 2), NULL, 10),
               strtoull(PQgetvalue(res, i, 3), NULL, 10));
    PQclear(res);
    return r;
}

int cv_pgverify_offsets(PGconn *conn, cv_pgverify_offset_fn *fn, void *opaque,
                        char *errbuf, size_t errlen) {
    PGresult *res = select_rows(conn, offsets_sql, 0, NULL,
                                "reading chatvault.kafka_offsets", errbuf, errlen);
    if (!res)
        return -CV_ESTORE;
    int r = 0;
    for (int i = 0; r == 0 && i < PQntuples(res); i++) {
        cv_pgverify_offset o = {
            .group = PQgetvalue(res, i, 0),
            .topic = PQgetvalue(res, i, 1),
            .partition = (int32_t)strtol(PQgetvalue(res, i, 2), NULL, 10),
            .next = strtoll(PQgetvalue(res, i, 3), NULL, 10),
            .updated_at = PQgetvalue(res, i, 4),
        };
        r = fn(opaque, &o);
    }
    PQclear(res);
    return r;
}

int cv_pgverify_rejected(PGconn *conn, const char *topic, int32_t partition,
                         int64_t **ret_offsets, size_t *ret_n, char *errbuf,
                         size_t errlen) {
    char part[16];
    snprintf(part, sizeof(part), "%" PRId32, partition);
    const char *params[2] = {topic, part};
    PGresult *res = select_rows(conn, rejected_sql, 2, params,
                                "reading chatvault.rejected", errbuf, errlen);
    if (!res)
        return -CV_ESTORE;
    int n = PQntuples(res);
    int64_t *offs = calloc(n ? (size_t)n : 1, sizeof(*offs));
    if (!offs) {
        PQclear(res);
        snprintf(errbuf, errlen, "out of memory");
        return -ENOMEM;
    }
    for (int i = 0; i < n; i++)
        offs[i] = strtoll(PQgetvalue(res, i, 0), NULL, 10);
    PQclear(res);
    *ret_offsets = offs;
    *ret_n = (size_t)n;
    return 0;
}

typedef struct version {
    const char *id;
    uint32_t rev;
} version;

static int version_cmp(const void *a, const void *b) {
    const version *x = a, *y = b;
    int k = strcmp(x->id, y->id);
    return k ? k : (x->rev > y->rev) - (x->rev < y->rev);
}

int cv_pgverify_held_ids(PGconn *conn, const char *channel, const char *const *ids,
                         const uint32_t *revs, size_t n, bool *ret_held, char *errbuf,
                         size_t errlen) {
    cv_buf arr;
    cv_buf_init(&arr, IDS_LIMIT);
    int r = cv_pg_i_array_literal(&arr, NULL, ids, n);
    if (r < 0) {
        cv_buf_release(&arr);
        snprintf(errbuf, errlen, "out of memory");
        return r;
    }
    const char *params[2] = {channel, (const char *)arr.data};
    PGresult *res = select_rows(conn, held_ids_sql, 2, params, "looking up message ids",
                                errbuf, errlen);
    cv_buf_release(&arr);
    if (!res)
        return -CV_ESTORE;
    int nf = PQntuples(res);
    version *found = calloc(nf ? (size_t)nf : 1, sizeof(*found));
    if (!found) {
        PQclear(res);
        snprintf(errbuf, errlen, "out of memory");
        return -ENOMEM;
    }
    for (int k = 0; k < nf; k++)
        found[k] = (version){PQgetvalue(res, k, 0),
                             (uint32_t)strtoul(PQgetvalue(res, k, 1), NULL, 10)};
    qsort(found, (size_t)nf, sizeof(*found), version_cmp);
    for (size_t i = 0; i < n; i++) {
        version want = {ids[i], revs[i]};
        ret_held[i] =
            bsearch(&want, found, (size_t)nf, sizeof(*found), version_cmp) != NULL;
    }
    free(found);
    PQclear(res);
    return 0;
}

int cv_pgverify_newest_row(PGconn *conn, const char *channel, const char *topic,
                           int32_t partition, const char *at, int64_t *ret_offset,
                           char *errbuf, size_t errlen) {
    char part[16];
    snprintf(part, sizeof(part), "%" PRId32, partition);
    const char *params[4] = {channel, topic, part, at};
    PGresult *res = select_rows(conn, newest_row_sql, 4, params,
                                "finding the newest row of a partition", errbuf, errlen);
    if (!res)
        return -CV_ESTORE;
    *ret_offset = PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : -1;
    PQclear(res);
    return 0;
}
