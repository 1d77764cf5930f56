/*
 * pgread — see pgread.h.
 */
#include "pg/pgread.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chatvault.pb-c.h"
#include "pg/internal.h"

#define FETCH_ROWS 10000
#define FETCH_SQL "FETCH 10000 FROM cv_pgread"
#define AHEAD 3 /* batches fetched ahead of the caller */
#define PARAMS_MAX 12
#define ARRAY_LIMIT ((size_t)256 << 20)

/* A fetcher thread runs the FETCHes while the caller reads, so the server
 * never waits for the caller (nor on a full socket buffer): up to AHEAD
 * batches are held. The connection belongs to the thread while it runs. */
struct cv_pgread {
    PGconn *conn;
    bool in_tx, cursor;
    PGresult *res; /* the batch being read */
    int row, nrows;
    pthread_t th;
    bool th_up;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    PGresult *q[AHEAD];
    size_t qhead, qlen;
    bool done, stop; /* the thread fetched the last batch / must stop */
    char *err;       /* the thread's error */
    char *channel;   /* the selection's */
    cv_buf attr;     /* this row's attribute strings */
    const char **attrv;
    size_t attrcap;
};

/* See pg/internal.h. */
int cv_pg_i_fail(PGconn *conn, PGresult *res, const char *what, char *errbuf,
                 size_t errlen) {
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    if (!msg || !*msg)
        msg = PQerrorMessage(conn);
    snprintf(errbuf, errlen, "postgres: %s: %s", what, msg);
    cv_one_line(errbuf);
    if (res)
        PQclear(res);
    return -CV_ESTORE;
}

/* See pg/internal.h. */
int cv_pg_i_exec(PGconn *conn, const char *sql, const char *what, char *errbuf,
                 size_t errlen) {
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        return cv_pg_i_fail(conn, res, what, errbuf, errlen);
    PQclear(res);
    return 0;
}

/* See pg/internal.h. */
int cv_pg_i_array_literal(cv_buf *b, const int64_t *offs, const char *const *ids,
                          size_t n) {
    int r = cv_buf_append(b, "{", 1);
    for (size_t i = 0; r == 0 && i < n; i++) {
        if (i)
            r = cv_buf_append(b, ",", 1);
        if (r == 0 && offs)
            r = cv_buf_printf(b, "%" PRId64, offs[i]);
        if (r == 0 && ids) {
            r = cv_buf_append(b, "\"", 1);
            for (const char *p = ids[i]; r == 0 && *p; p++) {
                if (*p == '"' || *p == '\\')
                    r = cv_buf_append(b, "\\", 1);
                if (r == 0)
                    r = cv_buf_append(b, p, 1);
            }
            if (r == 0)
                r = cv_buf_append(b, "\"", 1);
        }
    }
    if (r == 0)
        r = cv_buf_append(b, "}", 2); /* with the NUL */
    return r;
}

static void *fetcher(void *arg);

#define HISTORY_COLUMNS                                                                  \
    "channel, message_id, kafka_topic, kafka_partition, kafka_offset,"                   \
    " kafka_timestamp, sender_id, sent_at_us, body, content_type, attributes,"           \
    " reply_to, persisted_at, revision, deleted"

int cv_pgread_open(PGconn *conn, const cv_pgread_sel *sel, cv_pgread **ret, char *errbuf,
                   size_t errlen) {
    cv_buf sql, arr;
    cv_buf_init(&sql, 1 << 16);
    cv_buf_init(&arr, ARRAY_LIMIT);
    char vals[PARAMS_MAX][32];
    const char *params[PARAMS_MAX];
    int np = 0, r;
    cv_pgread *rd = calloc(1, sizeof(*rd));
    if (!rd) {
        r = -ENOMEM;
        goto out;
    }
    rd->conn = conn;
    cv_buf_init(&rd->attr, ARRAY_LIMIT);
    if (!(rd->channel = strdup(sel->channel))) {
        r = -ENOMEM;
        goto out;
    }
    params[np++] = sel->channel;
    r = cv_buf_printf(
        &sql,
        "DECLARE cv_pgread NO SCROLL CURSOR FOR SELECT %s, message_id,"
        " kafka_topic, kafka_partition, kafka_offset, %s,"
        " sender_id, sent_at_us, %s, content_type, %s, reply_to, %s,"
        " revision, deleted, %s FROM %s WHERE channel = $1",
        /* verify (digest_only) reads millions of rows: the server computes
         * nothing it does not compare (a third less server time). */
        sel->digest_only ? "NULL::text" : "channel",
        sel->digest_only
            ? "-1::bigint"
            : "COALESCE((extract(epoch FROM kafka_timestamp) * 1000)::bigint, -1)",
        sel->digest_only ? "sha256(body)" : "body",
        sel->digest_only ? "NULL::text[]"
                         : "ARRAY(SELECT x FROM jsonb_each_text(attributes) e,"
                           " LATERAL (VALUES (e.key), (e.value)) v(x))",
        sel->digest_only ? "-1::bigint"
                         : "(extract(epoch FROM persisted_at) * 1000000)::bigint",
        sel->history ? "latest" : "true",
        /* Every version: the latest ones and the history, which never
         * hold the same version (schemas/0005_versions.sql). The
         * conditions below reach into both arms. */
        sel->history ? "(SELECT " HISTORY_COLUMNS ", true AS latest"
                       " FROM chatvault.messages UNION ALL SELECT " HISTORY_COLUMNS
                       ", false FROM chatvault.message_versions) h"
                     : "chatvault.messages");
#define ADD_I64(cond_sql, v)                                                             \
    do {                                                                                 \
        snprintf(vals[np], sizeof(vals[np]), "%" PRId64, (int64_t)(v));                  \
        params[np] = vals[np];                                                           \
        np++;                                                                            \
        if (r == 0)                                                                      \
            r = cv_buf_printf(&sql, cond_sql, np);                                       \
    } while (0)
    if (sel->partition >= 0)
        ADD_I64(" AND kafka_partition = $%d", sel->partition);
    if (sel->from_offset >= 0)
        ADD_I64(" AND kafka_offset >= $%d", sel->from_offset);
    if (sel->to_offset >= 0)
        ADD_I64(" AND kafka_offset <= $%d", sel->to_offset);
    if (sel->time_field == CV_PGREAD_TIME_SENT_AT) {
        if (sel->since_us >= 0)
            ADD_I64(" AND sent_at_us >= $%d", sel->since_us);
        if (sel->until_us >= 0)
            ADD_I64(" AND sent_at_us < $%d", sel->until_us);
    } else if (sel->time_field == CV_PGREAD_TIME_PERSISTED_AT) {
        if (sel->since_us >= 0)
            ADD_I64(" AND persisted_at >= timestamptz 'epoch' + $%d::bigint"
                    " * interval '1 microsecond'",
                    sel->since_us);
        if (sel->until_us >= 0)
            ADD_I64(" AND persisted_at < timestamptz 'epoch' + $%d::bigint"
                    " * interval '1 microsecond'",
                    sel->until_us);
    }
#undef ADD_I64
    if (r == 0 && (sel->noffsets || sel->nids)) {
        r = cv_pg_i_array_literal(&arr, sel->noffsets ? sel->offsets : NULL,
                                  sel->noffsets ? NULL : sel->ids,
                                  sel->noffsets ? sel->noffsets : sel->nids);
        params[np++] = (const char *)arr.data;
        if (r == 0)
            r = cv_buf_printf(&sql,
                              sel->noffsets ? " AND kafka_offset = ANY($%d::bigint[])"
                                            : " AND message_id = ANY($%d::text[])",
                              np);
    }
    if (r == 0)
        r = cv_buf_printf(&sql, " ORDER BY kafka_partition, kafka_offset%s",
                          sel->history ? ", revision" : "");
    if (r == 0)
        r = cv_buf_append(&sql, "", 1);
    if (r < 0) {
        snprintf(errbuf, errlen, "postgres: building the query: %s", strerror(-r));
        goto out;
    }
    r = cv_pg_i_exec(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "BEGIN",
                     errbuf, errlen);
    if (r < 0)
        goto out;
    rd->in_tx = true;
    PGresult *res =
        PQexecParams(conn, (const char *)sql.data, np, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        r = cv_pg_i_fail(conn, res, "opening a cursor on chatvault.messages", errbuf,
                         errlen);
        goto out;
    }
    PQclear(res);
    rd->cursor = true;
    pthread_mutex_init(&rd->mu, NULL);
    pthread_cond_init(&rd->cv, NULL);
    if (pthread_create(&rd->th, NULL, fetcher, rd) != 0) {
        pthread_mutex_destroy(&rd->mu);
        pthread_cond_destroy(&rd->cv);
        snprintf(errbuf, errlen, "postgres: cannot start the fetcher thread");
        r = -EAGAIN;
        goto out;
    }
    rd->th_up = true;
    *ret = rd;
    rd = NULL;
out:
    cv_pgread_free(rd);
    cv_buf_release(&sql);
    cv_buf_release(&arr);
    return r;
}

static void *fetcher(void *arg) {
    cv_pgread *rd = arg;
    pthread_setname_np(pthread_self(), "cv-pg-read");
    for (;;) {
        pthread_mutex_lock(&rd->mu);
        while (rd->qlen == AHEAD && !rd->stop)
            pthread_cond_wait(&rd->cv, &rd->mu);
        bool stop = rd->stop;
        pthread_mutex_unlock(&rd->mu);
        if (stop)
            return NULL;
        PGresult *res = PQexecParams(rd->conn, FETCH_SQL, 0, NULL, NULL, NULL, NULL, 1);
        char *err = NULL;
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            char buf[1024];
            cv_pg_i_fail(rd->conn, res, "FETCH from chatvault.messages", buf,
                         sizeof(buf));
            err = strdup(buf);
            res = NULL;
        }
        pthread_mutex_lock(&rd->mu);
        if (res) {
            rd->q[(rd->qhead + rd->qlen) % AHEAD] = res;
            rd->qlen++;
            rd->done = PQntuples(res) < FETCH_ROWS;
        } else {
            rd->err = err ? err : strdup("postgres: FETCH failed");
            rd->done = true;
        }
        bool done = rd->done;
        pthread_cond_broadcast(&rd->cv);
        pthread_mutex_unlock(&rd->mu);
        if (done)
            return NULL;
    }
}

/* The next batch from the fetcher: 1, 0 when there is none, or an error. */
static int take_batch(cv_pgread *rd, char *errbuf, size_t errlen) {
    pthread_mutex_lock(&rd->mu);
    while (rd->qlen == 0 && !rd->done)
        pthread_cond_wait(&rd->cv, &rd->mu);
    PGresult *got = NULL;
    if (rd->qlen) {
        got = rd->q[rd->qhead];
        rd->qhead = (rd->qhead + 1) % AHEAD;
        rd->qlen--;
        pthread_cond_broadcast(&rd->cv);
    }
    int r = got ? 1 : 0;
    if (!got && rd->err) {
        snprintf(errbuf, errlen, "%s", rd->err);
        r = -CV_ESTORE;
    }
    pthread_mutex_unlock(&rd->mu);
    if (got) {
        if (rd->res)
            PQclear(rd->res);
        rd->res = got;
        rd->row = 0;
        rd->nrows = PQntuples(got);
    }
    return r;
}

static int64_t get_i64(const PGresult *res, int row, int col) {
    const unsigned char *p = (const unsigned char *)PQgetvalue(res, row, col);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v;
}

static int32_t get_i32(const PGresult *res, int row, int col) {
    const unsigned char *p = (const unsigned char *)PQgetvalue(res, row, col);
    return (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
                     p[3]);
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Decodes a binary one-dimensional text[] into NUL-terminated strings. */
static int parse_attrs(cv_pgread *rd, const unsigned char *p, size_t len, cv_pgrow *row) {
    row->attrs = NULL;
    row->nattrs = 0;
    rd->attr.len = 0;
    if (len < 12)
        return len == 0 ? 0 : -EBADMSG;
    uint32_t ndim = be32(p);
    if (ndim == 0)
        return 0;
    if (ndim != 1 || len < 20)
        return -EBADMSG;
    uint32_t n = be32(p + 12);
    size_t pos = 20;
    if (n % 2 || n > len / 4)
        return -EBADMSG;
    /* First the bytes, then the pointers (the buffer may move). */
    size_t *offs = calloc(n ? n : 1, sizeof(*offs));
    if (!offs)
        return -ENOMEM;
    int r = 0;
    for (uint32_t i = 0; r == 0 && i < n; i++) {
        if (len - pos < 4) {
            r = -EBADMSG;
            break;
        }
        uint32_t l = be32(p + pos);
        pos += 4;
        if (l == 0xffffffffu)
            l = 0; /* NULL (cannot happen for jsonb keys or text values) */
        if (l > len - pos) {
            r = -EBADMSG;
            break;
        }
        offs[i] = rd->attr.len;
        r = cv_buf_append(&rd->attr, p + pos, l);
        if (r == 0)
            r = cv_buf_append(&rd->attr, "", 1);
        pos += l;
    }
    if (r == 0 && n > rd->attrcap) {
        const char **nv = realloc(rd->attrv, n * sizeof(*nv));
        if (!nv)
            r = -ENOMEM;
        else {
            rd->attrv = nv;
            rd->attrcap = n;
        }
    }
    if (r == 0) {
        for (uint32_t i = 0; i < n; i++)
            rd->attrv[i] = (const char *)rd->attr.data + offs[i];
        row->attrs = rd->attrv;
        row->nattrs = n / 2;
    }
    free(offs);
    return r;
}

int cv_pgread_next(cv_pgread *rd, cv_pgrow *row, char *errbuf, size_t errlen) {
    while (!rd->res || rd->row >= rd->nrows) {
        int r = take_batch(rd, errbuf, errlen);
        if (r <= 0)
            return r;
    }
    const PGresult *res = rd->res;
    int i = rd->row++;
    row->channel = PQgetisnull(res, i, 0) ? rd->channel : PQgetvalue(res, i, 0);
    row->message_id = PQgetvalue(res, i, 1);
    row->topic = PQgetvalue(res, i, 2);
    row->partition = get_i32(res, i, 3);
    row->offset = get_i64(res, i, 4);
    row->timestamp_ms = get_i64(res, i, 5);
    row->sender_id = PQgetvalue(res, i, 6);
    row->sent_at_us = get_i64(res, i, 7);
    row->body = (const unsigned char *)PQgetvalue(res, i, 8);
    row->body_len = (size_t)PQgetlength(res, i, 8);
    row->content_type = PQgetvalue(res, i, 9);
    int r = PQgetisnull(res, i, 10)
                ? parse_attrs(rd, NULL, 0, row)
                : parse_attrs(rd, (const unsigned char *)PQgetvalue(res, i, 10),
                              (size_t)PQgetlength(res, i, 10), row);
    if (r < 0) {
        snprintf(errbuf, errlen, "postgres: attributes of message %s of channel %s: %s",
                 row->message_id, row->channel,
                 r == -ENOMEM ? "out of memory" : "malformed array");
        return r;
    }
    row->reply_to = PQgetvalue(res, i, 11);
    row->persisted_at_us = get_i64(res, i, 12);
    row->revision = (uint32_t)get_i64(res, i, 13);
    row->deleted = *PQgetvalue(res, i, 14) != 0;
    row->latest = *PQgetvalue(res, i, 15) != 0;
    return 1;
}

cv_pgread *cv_pgread_free(cv_pgread *rd) {
    if (!rd)
        return NULL;
    if (rd->th_up) {
        pthread_mutex_lock(&rd->mu);
        rd->stop = true;
        pthread_cond_broadcast(&rd->cv);
        pthread_mutex_unlock(&rd->mu);
        pthread_join(rd->th, NULL);
        for (size_t i = 0; i < rd->qlen; i++)
            PQclear(rd->q[(rd->qhead + i) % AHEAD]);
        free(rd->err);
        pthread_mutex_destroy(&rd->mu);
        pthread_cond_destroy(&rd->cv);
    }
    if (rd->res)
        PQclear(rd->res);
    if (rd->in_tx && PQstatus(rd->conn) == CONNECTION_OK) {
        /* A read-only transaction: ending it either way discards nothing. */
        PGresult *res = PQexec(rd->conn, "ROLLBACK");
        PQclear(res);
    }
    cv_buf_release(&rd->attr);
    free(rd->attrv);
    free(rd->channel);
    free(rd);
    return NULL;
}

int cv_pgrow_pack(const cv_pgrow *row, cv_buf *out) {
    Chatvault__V1__ChatMessage m = CHATVAULT__V1__CHAT_MESSAGE__INIT;
    m.message_id = (char *)row->message_id;
    m.channel = (char *)row->channel;
    m.sender_id = (char *)row->sender_id;
    m.sent_at_us = row->sent_at_us;
    m.body.data = (uint8_t *)row->body;
    m.body.len = row->body_len;
    m.content_type = (char *)row->content_type;
    m.reply_to = (char *)row->reply_to;
    m.revision = row->revision;
    m.deleted = row->deleted;
    Chatvault__V1__ChatMessage__AttributesEntry *ents = NULL, **ptrs = NULL;
    if (row->nattrs) {
        ents = calloc(row->nattrs, sizeof(*ents));
        ptrs = calloc(row->nattrs, sizeof(*ptrs));
        if (!ents || !ptrs) {
            free(ents);
            free(ptrs);
            return -ENOMEM;
        }
        for (size_t i = 0; i < row->nattrs; i++) {
            chatvault__v1__chat_message__attributes_entry__init(&ents[i]);
            ents[i].key = (char *)row->attrs[2 * i];
            ents[i].value = (char *)row->attrs[2 * i + 1];
            ptrs[i] = &ents[i];
        }
        m.n_attributes = row->nattrs;
        m.attributes = ptrs;
    }
    size_t need = chatvault__v1__chat_message__get_packed_size(&m);
    out->len = 0;
    int r = cv_buf_reserve(out, need);
    if (r == 0) {
        chatvault__v1__chat_message__pack(&m, out->data);
        out->len = need;
    }
    free(ents);
    free(ptrs);
    return r;
}

int cv_pgread_channels(PGconn *conn, cv_pgread_channel_fn *fn, void *opaque, char *errbuf,
                       size_t errlen) {
    /* GROUP BY channel: served by the primary key's index, and fine on a
     * table partitioned or distributed on channel. */
    PGresult *res = PQexec(conn, "SELECT channel FROM chatvault.messages GROUP BY channel"
                                 " ORDER BY channel");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return cv_pg_i_fail(conn, res, "listing the channels of chatvault.messages",
                            errbuf, errlen);
    int r = 0;
    for (int i = 0; r == 0 && i < PQntuples(res); i++)
        r = fn(opaque, PQgetvalue(res, i, 0));
    PQclear(res);
    return r;
}
