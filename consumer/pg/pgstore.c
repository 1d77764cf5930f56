/*
 * pgstore — see pgstore.h.
 *
 * A batch goes in with binary COPY straight into chatvault.messages: COPY is
 * the fastest way into PostgreSQL (measured here: ~143k rows/s against ~100k
 * for multi-row INSERT), and a batch without a message id PostgreSQL already
 * holds is the common case. When one is held (a duplicate, a re-delivery
 * after a crash, the same id twice in the batch) the COPY fails with
 * unique_violation, the transaction is rolled back and the batch goes the
 * careful way: binary COPY into a session-local staging table, then one
 * INSERT … SELECT … ON CONFLICT DO NOTHING that moves it into
 * chatvault.messages and says which records did not get a row of their own.
 * After a fallback the next STAGED_AFTER_CONFLICT batches go the careful
 * way at once, since re-deliveries come in runs. Staging costs a second
 * write of every row (deploy/bench/README.md has the figures).
 *
 * Versions (schemas/0005_versions.sql, README "Edits and deletes"). A
 * record is one version of a message: (channel, message_id, revision).
 * The COPY carries revision and deleted like any other column, so a
 * batch of originals (revision 0, every sender before versions) takes the
 * fast path exactly as before, and so does the first version of a message
 * id the archive does not hold yet, whatever its revision. An edit or a
 * delete of a held message is a unique_violation like a duplicate, and
 * the careful way sorts the staged records by version:
 *   - a version neither table holds is new: the highest new revision of a
 *     message becomes its row of messages when it is higher than the
 *     row's (the row's version moves to message_versions first, in the
 *     same transaction; the message's search document is dropped for the
 *     indexer to write anew); every other new version goes to
 *     message_versions. All are PERSISTED.
 *   - a version already held is PERSISTED when held from this very record
 *     (Kafka re-delivering it: same coordinates and content) and
 *     DUPLICATE otherwise: an exact re-send, or other content under a
 *     revision already taken. Without revisions that is today's rule.
 */
#include "pg/pgstore.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg/pgmigrate.h"
#include "util.h"

/* Unix epoch to PostgreSQL's 2000-01-01, in microseconds. */
#define PG_EPOCH_OFFSET_US INT64_C(946684800000000)
#define COPY_LIMIT ((size_t)1 << 31)
#define STAGED_AFTER_CONFLICT 16
/* A batch smaller than this is one transaction on one connection: the
 * split only pays where the server's CPU is the limit. */
#define SPLIT_MIN_RECORDS 1000

/* One connection and its share of a batch. */
typedef struct shard {
    PGconn *conn;
    const char *conninfo, *group; /* the store's */
    bool prepared;                /* staging table exists on this connection */
    int staged_left;              /* batches still to stage after a unique_violation */
    cv_buf copy;                  /* COPY payload, reused across batches */
    cv_buf json;                  /* one attributes object */
    unsigned index;
    /* The batch being written: owner[i] says which shard writes recs[i]
     * (NULL: this one writes all). */
    const unsigned char *owner, *next_owner; /* next_owner: per next[] element */
    cv_rec *recs;
    size_t n;
    const rd_kafka_topic_partition_list_t *next;
    int result;
    char err[512];
} shard;

struct cv_pgstore {
    char *conninfo;
    char *group;
    shard *shards;
    unsigned nshards;
    unsigned char *owner; /* per record, then per next offset, of a batch */
    size_t owner_cap;
};

/* Whether recs[i] of the batch is this shard's to write. */
static bool mine(const shard *st, size_t i) {
    return !st->owner || st->owner[i] == st->index;
}

static const char stage_sql[] =
    "CREATE TEMP TABLE IF NOT EXISTS cv_stage ("
    " seq integer, channel text COLLATE \"C\", message_id text COLLATE \"C\","
    " kafka_topic text COLLATE \"C\","
    " kafka_partition integer, kafka_offset bigint, kafka_timestamp timestamptz,"
    " sender_id text, sent_at_us bigint, body bytea, content_type text,"
    " attributes jsonb, reply_to text, revision bigint, deleted boolean)"
    " ON COMMIT DELETE ROWS;"
    /* The staged records that are new versions (seq), and whether each is
     * to be its message's row of messages (latest). */
    "CREATE TEMP TABLE IF NOT EXISTS cv_new (seq integer PRIMARY KEY,"
    " latest boolean NOT NULL) ON COMMIT DELETE ROWS";

/* The columns of messages a batch fills, in COPY order; the staging table
 * has `seq` (the record's index in the batch) before them. */
#define MESSAGE_COLUMNS                                                                  \
    "channel, message_id, kafka_topic, kafka_partition, kafka_offset,"                   \
    " kafka_timestamp, sender_id, sent_at_us, body, content_type, attributes,"           \
    " reply_to, revision, deleted"
#define MESSAGE_FIELDS 14

static const char copy_direct_sql[] =
    "COPY chatvault.messages (" MESSAGE_COLUMNS ") FROM STDIN (FORMAT binary)";

/* The careful way, step 1: which staged records are new versions. Of
 * several records of one version in the batch the first (batch order)
 * is; a version either table holds is not. A new version is `latest` when
 * it is the highest new revision of its message and higher than the
 * revision of the message's row (or there is no row). */
static const char new_versions_sql[] =
    "INSERT INTO cv_new (seq, latest)"
    " SELECT w.seq, w.revision = max(w.revision)"
    "  OVER (PARTITION BY w.channel, w.message_id)"
    "  AND w.revision > coalesce(m.revision, -1)"
    " FROM (SELECT DISTINCT ON (channel, message_id, revision)"
    "  seq, channel, message_id, revision FROM cv_stage"
    "  ORDER BY channel, message_id, revision, seq) w"
    " LEFT JOIN chatvault.messages m"
    "  ON m.channel = w.channel AND m.message_id = w.message_id"
    " WHERE m.revision IS DISTINCT FROM w.revision"
    " AND NOT EXISTS (SELECT 1 FROM chatvault.message_versions v"
    "  WHERE v.channel = w.channel AND v.message_id = w.message_id"
    "  AND v.revision = w.revision)";

/* Step 2: the rows of messages a latest new version supersedes go to the
 * history first (the update's trigger checks they are there). */
#define VERSION_COLUMNS MESSAGE_COLUMNS ", persisted_at"
static const char supersede_sql[] =
    "INSERT INTO chatvault.message_versions (" VERSION_COLUMNS ")"
    " SELECT m.channel, m.message_id, m.kafka_topic, m.kafka_partition,"
    " m.kafka_offset, m.kafka_timestamp, m.sender_id, m.sent_at_us, m.body,"
    " m.content_type, m.attributes, m.reply_to, m.revision, m.deleted,"
    " m.persisted_at"
    " FROM cv_new n JOIN cv_stage s ON s.seq = n.seq"
    " JOIN chatvault.messages m"
    "  ON m.channel = s.channel AND m.message_id = s.message_id"
    " WHERE n.latest AND m.revision < s.revision"
    " ON CONFLICT (channel, message_id, revision) DO NOTHING";

/* Step 3: then the rows take the new versions. persisted_at anew: the
 * search indexer reads rows by it. */
static const char update_latest_sql[] =
    "UPDATE chatvault.messages m SET kafka_topic = s.kafka_topic,"
    " kafka_partition = s.kafka_partition, kafka_offset = s.kafka_offset,"
    " kafka_timestamp = s.kafka_timestamp, sender_id = s.sender_id,"
    " sent_at_us = s.sent_at_us, body = s.body, content_type = s.content_type,"
    " attributes = s.attributes, reply_to = s.reply_to, revision = s.revision,"
    " deleted = s.deleted, persisted_at = clock_timestamp()"
    " FROM cv_new n JOIN cv_stage s ON s.seq = n.seq"
    " WHERE n.latest AND m.channel = s.channel AND m.message_id = s.message_id"
    " AND m.revision < s.revision";

/* Step 3b: an updated message's search document describes the version it
 * superseded; the indexer writes it anew. */
static const char stale_docs_sql[] =
    "DELETE FROM chatvault.search_docs d"
    " USING cv_new n JOIN cv_stage s ON s.seq = n.seq"
    " WHERE n.latest AND d.channel = s.channel AND d.message_id = s.message_id";

/* Step 4: latest versions of message ids messages has no row of. */
static const char insert_sql[] =
    "INSERT INTO chatvault.messages (" MESSAGE_COLUMNS ")"
    " SELECT " MESSAGE_COLUMNS " FROM cv_new n JOIN cv_stage s USING (seq)"
    " WHERE n.latest ORDER BY seq"
    " ON CONFLICT (channel, message_id) DO NOTHING";

/* Step 5: every other new version is history. */
static const char history_sql[] =
    "INSERT INTO chatvault.message_versions (" MESSAGE_COLUMNS ")"
    " SELECT " MESSAGE_COLUMNS " FROM cv_new n JOIN cv_stage s USING (seq)"
    " WHERE NOT n.latest ORDER BY seq"
    " ON CONFLICT (channel, message_id, revision) DO NOTHING";

/* After the steps, within the same transaction: staged records whose
 * version (message id and revision) is held by a row from another record
 * are duplicates. A re-delivered record finds its own row (same
 * coordinates, same content): not a duplicate. Coordinates alone do not
 * make a record the same: Kafka's offsets start over when a topic is
 * re-created, so a message reusing an id at a reused offset is a duplicate
 * too (the log keeps it, in a new generation). Only run when fewer new
 * versions than records were staged. */
#define DIFFERS(t)                                                                       \
    " ON " t ".channel = s.channel AND " t ".message_id = s.message_id"                  \
    " AND " t ".revision = s.revision"                                                   \
    " WHERE " t ".kafka_topic <> s.kafka_topic"                                          \
    " OR " t ".kafka_partition <> s.kafka_partition"                                     \
    " OR " t ".kafka_offset <> s.kafka_offset"                                           \
    " OR " t ".sent_at_us <> s.sent_at_us OR " t ".sender_id <> s.sender_id"             \
    " OR " t ".body <> s.body OR " t ".deleted <> s.deleted"
static const char duplicates_sql[] =
    "SELECT s.seq FROM cv_stage s JOIN chatvault.messages m" DIFFERS(
        "m") " UNION SELECT s.seq FROM cv_stage s JOIN chatvault.message_versions "
             "v" DIFFERS("v");

/* The batch's duplicates, for the reports (schemas/0004_reports.sql): keyed
 * by the record's coordinates, so a re-delivered duplicate counts once. One
 * statement, only for a batch that had any. */
static const char duplicates_log_sql[] =
    "INSERT INTO chatvault.duplicates (kafka_topic, kafka_partition,"
    " kafka_offset, channel, message_id, sent_at_us, replayed)"
    " SELECT s.kafka_topic, s.kafka_partition, s.kafka_offset, s.channel,"
    " s.message_id, s.sent_at_us, u.r"
    " FROM unnest($1::integer[], $2::boolean[]) AS u(seq, r)"
    " JOIN cv_stage s ON s.seq = u.seq"
    " ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING";

/* `chatvault replay` marks what it re-sends with this Kafka header
 * (broker/traffic/cmd_replay.c). */
#define REPLAY_HEADER "chatvault-replay"

static const char offsets_sql[] =
    "INSERT INTO chatvault.kafka_offsets AS k (consumer_group, topic,"
    " kafka_partition, next_offset)"
    " SELECT $1, t, p, o FROM unnest($2::text[], $3::integer[], $4::bigint[])"
    "  AS u(t, p, o)"
    " ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE"
    " SET next_offset = EXCLUDED.next_offset, updated_at = clock_timestamp()";

static const char rejected_sql[] =
    "INSERT INTO chatvault.rejected (kafka_topic, kafka_partition, kafka_offset,"
    " channel, message_id, reason, error, raw)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    " ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING";

static int pg_fail(shard *st, PGresult *res, const char *what, char *errbuf,
                   size_t errlen) {
    const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(st->conn);
    if (!msg || !*msg)
        msg = PQerrorMessage(st->conn);
    snprintf(errbuf, errlen, "postgres: %s: %s", what, msg);
    cv_one_line(errbuf);
    if (res)
        PQclear(res);
    return -CV_ESTORE;
}

static int exec_cmd(shard *st, const char *sql, const char *what, char *errbuf,
                    size_t errlen) {
    PGresult *res = PQexec(st->conn, sql);
    ExecStatusType s = PQresultStatus(res);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
        return pg_fail(st, res, what, errbuf, errlen);
    PQclear(res);
    return 0;
}

/* Connects (or reconnects) and prepares the session. */
static int ensure_connected(shard *st, char *errbuf, size_t errlen) {
    if (st->conn && PQstatus(st->conn) == CONNECTION_OK &&
        PQtransactionStatus(st->conn) == PQTRANS_IDLE)
        goto prepare;
    if (st->conn) {
        PQfinish(st->conn);
        st->conn = NULL;
    }
    st->prepared = false;
    st->conn = cv_pg_connect(st->conninfo, errbuf, errlen);
    if (!st->conn)
        return -CV_ESTORE;
    int r = cv_pgmigrate_check(st->conn, errbuf, errlen);
    if (r < 0)
        return r;
    r = exec_cmd(st, "SET synchronous_commit = on", "session setup", errbuf, errlen);
    if (r < 0)
        return r;
prepare:
    if (!st->prepared) {
        r = exec_cmd(st, stage_sql, "creating the staging table", errbuf, errlen);
        if (r < 0)
            return r;
        st->prepared = true;
    }
    return 0;
}

int cv_pgstore_open(const char *conninfo, const char *group, unsigned connections,
                    cv_pgstore **ret_store, char *errbuf, size_t errlen) {
    if (connections < 1 || connections > CV_PGSTORE_MAX_CONNECTIONS) {
        snprintf(errbuf, errlen, "postgres: %u connections (1..%d)", connections,
                 CV_PGSTORE_MAX_CONNECTIONS);
        return -EINVAL;
    }
    cv_pgstore *st = calloc(1, sizeof(*st));
    if (!st || !(st->conninfo = strdup(conninfo)) || !(st->group = strdup(group)) ||
        !(st->shards = calloc(connections, sizeof(shard)))) {
        snprintf(errbuf, errlen, "out of memory");
        cv_pgstore_free(st);
        return -ENOMEM;
    }
    st->nshards = connections;
    for (unsigned k = 0; k < connections; k++) {
        shard *sh = &st->shards[k];
        sh->conninfo = st->conninfo;
        sh->group = st->group;
        sh->index = k;
        cv_buf_init(&sh->copy, COPY_LIMIT);
        cv_buf_init(&sh->json, (size_t)64 << 20);
    }
    /* The first connection now, to check the schema; the others when a
     * batch first needs them. */
    int r = ensure_connected(&st->shards[0], errbuf, errlen);
    if (r < 0) {
        cv_pgstore_free(st);
        return r;
    }
    *ret_store = st;
    return 0;
}

cv_pgstore *cv_pgstore_free(cv_pgstore *st) {
    if (!st)
        return NULL;
    for (unsigned k = 0; st->shards && k < st->nshards; k++) {
        shard *sh = &st->shards[k];
        if (sh->conn)
            PQfinish(sh->conn);
        cv_buf_release(&sh->copy);
        cv_buf_release(&sh->json);
    }
    free(st->shards);
    free(st->owner);
    free(st->conninfo);
    free(st->group);
    free(st);
    return NULL;
}

bool cv_pgstore_connected(const cv_pgstore *st) {
    const shard *sh = &st->shards[0];
    return sh->conn && PQstatus(sh->conn) == CONNECTION_OK;
}

/* Binary COPY field writers. */
static int put_null(cv_buf *b) {
    unsigned char l[4];
    cv_be32(l, 0xffffffffu);
    return cv_buf_append(b, l, 4);
}

static int put_bytes(cv_buf *b, const void *p, size_t n) {
    unsigned char l[4];
    if (n > INT32_MAX)
        return -EMSGSIZE;
    cv_be32(l, (uint32_t)n);
    int r = cv_buf_append(b, l, 4);
    return r < 0 ? r : cv_buf_append(b, p, n);
}

static int put_text(cv_buf *b, const char *s) {
    return put_bytes(b, s, s ? strlen(s) : 0);
}

static int put_i32(cv_buf *b, int32_t v) {
    unsigned char f[8];
    cv_be32(f, 4);
    cv_be32(f + 4, (uint32_t)v);
    return cv_buf_append(b, f, 8);
}

static int put_i64(cv_buf *b, int64_t v) {
    unsigned char f[12];
    cv_be32(f, 8);
    cv_be64(f + 4, (uint64_t)v);
    return cv_buf_append(b, f, 12);
}

static int put_bool(cv_buf *b, bool v) {
    unsigned char f[5];
    cv_be32(f, 1);
    f[4] = v ? 1 : 0;
    return cv_buf_append(b, f, 5);
}

static int attributes_json(shard *st, const Chatvault__V1__ChatMessage *m) {
    cv_buf *j = &st->json;
    j->len = 0;
    int r = cv_buf_append(j, "\1{", 2); /* jsonb binary version 1 */
    for (size_t i = 0; r == 0 && i < m->n_attributes; i++) {
        const char *k = m->attributes[i]->key ? m->attributes[i]->key : "";
        const char *v = m->attributes[i]->value ? m->attributes[i]->value : "";
        if (i)
            r = cv_buf_append(j, ",", 1);
        if (r == 0)
            r = cv_buf_json_string(j, k, strlen(k));
        if (r == 0)
            r = cv_buf_append(j, ":", 1);
        if (r == 0)
            r = cv_buf_json_string(j, v, strlen(v));
    }
    return r < 0 ? r : cv_buf_append(j, "}", 1);
}

/* The binary COPY of the batch's valid records: for the staging table
 * (`staged`, with seq first) or for chatvault.messages. */
static int build_copy(shard *st, const cv_rec *recs, size_t n, bool staged,
                      size_t *ret_rows, char *errbuf, size_t errlen) {
    static const unsigned char header[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";
    cv_buf *b = &st->copy;
    b->len = 0;
    size_t rows = 0;
    int r = cv_buf_append(b, header, sizeof(header));
    for (size_t i = 0; r == 0 && i < n; i++) {
        const cv_rec *rec = &recs[i];
        if (!mine(st, i) || !cv_rec_valid(rec))
            continue;
        const Chatvault__V1__ChatMessage *m = rec->env.msg;
        unsigned char nf[2];
        cv_be16(nf, staged ? MESSAGE_FIELDS + 1 : MESSAGE_FIELDS);
        r = cv_buf_append(b, nf, 2);
        if (r == 0 && staged)
            r = put_i32(b, (int32_t)i);
        if (r == 0)
            r = put_text(b, m->channel);
        if (r == 0)
            r = put_text(b, m->message_id);
        if (r == 0)
            r = put_text(b, rec->topic);
        if (r == 0)
            r = put_i32(b, rec->partition);
        if (r == 0)
            r = put_i64(b, rec->offset);
        if (r == 0)
            r = rec->timestamp_ms >= 0
                    ? put_i64(b, rec->timestamp_ms * 1000 - PG_EPOCH_OFFSET_US)
                    : put_null(b);
        if (r == 0)
            r = put_text(b, m->sender_id);
        if (r == 0)
            r = put_i64(b, m->sent_at_us);
        if (r == 0)
            r = put_bytes(b, m->body.data, m->body.len);
        if (r == 0)
            r = put_text(b, m->content_type);
        if (r == 0)
            r = attributes_json(st, m);
        if (r == 0)
            r = put_bytes(b, st->json.data, st->json.len);
        if (r == 0)
            r = put_text(b, m->reply_to);
        if (r == 0)
            r = put_i64(b, (int64_t)m->revision);
        if (r == 0)
            r = put_bool(b, m->deleted);
        rows++;
    }
    if (r == 0) {
        unsigned char trailer[2] = {0xff, 0xff};
        r = cv_buf_append(b, trailer, 2);
    }
    *ret_rows = rows;
    if (r < 0)
        snprintf(errbuf, errlen, "postgres: building the COPY of %zu records: %s", n,
                 strerror(-r));
    return r;
}

/* Sends the built COPY with `sql`. A unique_violation sets *conflict
 * (when given) and returns -CV_ESTORE without a message: the caller takes
 * the other way. */
static int copy_in(shard *st, const char *sql, const char *what, bool *conflict,
                   char *errbuf, size_t errlen) {
    PGresult *res = PQexec(st->conn, sql);
    if (PQresultStatus(res) != PGRES_COPY_IN)
        return pg_fail(st, res, what, errbuf, errlen);
    PQclear(res);
    /* PQputCopyData takes an int length: send in pieces. */
    const size_t piece = (size_t)1 << 20;
    for (size_t off = 0; off < st->copy.len; off += piece) {
        size_t len = st->copy.len - off < piece ? st->copy.len - off : piece;
        if (PQputCopyData(st->conn, (const char *)st->copy.data + off, (int)len) != 1)
            return pg_fail(st, NULL, "COPY data", errbuf, errlen);
    }
    if (PQputCopyEnd(st->conn, NULL) != 1)
        return pg_fail(st, NULL, "COPY end", errbuf, errlen);
    res = PQgetResult(st->conn);
    int r = 0;
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (conflict && state && strcmp(state, "23505") == 0) {
            *conflict = true;
            PQclear(res);
            r = -CV_ESTORE;
        } else {
            r = pg_fail(st, res, what, errbuf, errlen);
        }
    } else {
        PQclear(res);
    }
    while ((res = PQgetResult(st->conn)))
        PQclear(res);
    return r;
}

static bool replayed(const cv_rec *rec) {
    rd_kafka_headers_t *hdrs = NULL;
    const void *v;
    size_t len;
    return rec->rkm &&
           rd_kafka_message_headers(rec->rkm, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR &&
           rd_kafka_header_get_last(hdrs, REPLAY_HEADER, &v, &len) ==
               RD_KAFKA_RESP_ERR_NO_ERROR;
}

/* Records the batch's duplicates (their status is set) in
 * chatvault.duplicates. */
static int log_duplicates(shard *st, const cv_rec *recs, size_t n, char *errbuf,
                          size_t errlen) {
    cv_buf seqs, flags;
    cv_buf_init(&seqs, (size_t)64 << 20);
    cv_buf_init(&flags, (size_t)64 << 20);
    int r = cv_buf_append(&seqs, "{", 1) | cv_buf_append(&flags, "{", 1);
    const char *sep = "";
    for (size_t i = 0; i < n; i++)
        if (mine(st, i) && cv_rec_valid(&recs[i]) &&
            recs[i].status == CHATVAULT__V1__ACK_STATUS__DUPLICATE) {
            r |= cv_buf_printf(&seqs, "%s%zu", sep, i);
            r |= cv_buf_printf(&flags, "%s%s", sep, replayed(&recs[i]) ? "t" : "f");
            sep = ",";
        }
    r |= cv_buf_append(&seqs, "}", 2) | cv_buf_append(&flags, "}", 2);
    if (r != 0) {
        snprintf(errbuf, errlen, "postgres: duplicates of the batch: out of memory");
        r = -ENOMEM;
        goto out;
    }
    const char *params[2] = {(char *)seqs.data, (char *)flags.data};
    PGresult *res =
        PQexecParams(st->conn, duplicates_log_sql, 2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        r = pg_fail(st, res, "inserting into chatvault.duplicates", errbuf, errlen);
    else
        PQclear(res);
out:
    cv_buf_release(&seqs);
    cv_buf_release(&flags);
    return r;
}

/* Runs one step of the careful way: its row count, or a negative error. */
static int64_t staged_step(shard *st, const char *sql, const char *what, char *errbuf,
                           size_t errlen) {
    PGresult *res = PQexec(st->conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        return pg_fail(st, res, what, errbuf, errlen);
    int64_t rows = strtoll(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    return rows;
}

/* The careful way: stage the batch, sort it by version (see the top of
 * the file), find the duplicates. */
static int insert_staged(shard *st, cv_rec *recs, size_t n, char *errbuf, size_t errlen) {
    size_t staged = 0;
    int r = build_copy(st, recs, n, true, &staged, errbuf, errlen);
    if (r < 0)
        return r;
    r = copy_in(st, "COPY cv_stage FROM STDIN (FORMAT binary)",
                "COPY into the staging table", NULL, errbuf, errlen);
    if (r < 0)
        return r;
    int64_t fresh =
        staged_step(st, new_versions_sql, "finding the new versions", errbuf, errlen);
    if (fresh < 0)
        return (int)fresh;
    if (fresh > 0) {
        static const struct {
            const char *sql, *what;
            bool stores; /* its rows are new versions stored */
        } steps[] = {
            {supersede_sql, "moving superseded versions to chatvault.message_versions",
             false},
            {update_latest_sql, "updating messages to their latest versions", true},
            {stale_docs_sql, "dropping the search documents of edited messages", false},
            {insert_sql, "inserting messages", true},
            {history_sql, "inserting into chatvault.message_versions", true},
        };
        int64_t stored = 0;
        for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
            int64_t x = staged_step(st, steps[k].sql, steps[k].what, errbuf, errlen);
            if (x < 0)
                return (int)x;
            if (steps[k].stores)
                stored += x;
        }
        /* Each new version is exactly one row of one of the three
         * steps; fewer means another writer stored versions of these
         * messages between step 1 and now (two broker instances in a
         * rebalance). Nothing is acked: the batch is rolled back and
         * written again, and then sees what the other wrote. */
        if (stored != fresh) {
            snprintf(errbuf, errlen,
                     "postgres: %" PRId64 " of %" PRId64
                     " new versions were stored: another writer stored versions of "
                     "these messages at the same time; the batch is written again",
                     stored, fresh);
            return -CV_ESTORE;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (mine(st, i) && cv_rec_valid(&recs[i]))
            recs[i].status = CHATVAULT__V1__ACK_STATUS__PERSISTED;
    if ((size_t)fresh == staged)
        return 0; /* every record is a version of its own */
    PGresult *res = PQexec(st->conn, duplicates_sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return pg_fail(st, res, "finding duplicate message ids", errbuf, errlen);
    int rows = PQntuples(res);
    for (int i = 0; i < rows; i++) {
        long seq = strtol(PQgetvalue(res, i, 0), NULL, 10);
        if (seq >= 0 && (size_t)seq < n)
            recs[seq].status = CHATVAULT__V1__ACK_STATUS__DUPLICATE;
    }
    PQclear(res);
    return rows > 0 ? log_duplicates(st, recs, n, errbuf, errlen) : 0;
}

/* Sets chatvault.kafka_offsets to the batch's next offsets: set, not the
 * larger of old and new, so that when Kafka's offsets start over (a topic
 * re-created) the row follows the new incarnation at once. */
static int write_offsets(shard *st, const rd_kafka_topic_partition_list_t *next_offsets,
                         char *errbuf, size_t errlen) {
    cv_buf topics, parts, offs;
    cv_buf_init(&topics, (size_t)64 << 20);
    cv_buf_init(&parts, (size_t)64 << 20);
    cv_buf_init(&offs, (size_t)64 << 20);
    int r = 0;
    r |= cv_buf_append(&topics, "{", 1);
    r |= cv_buf_append(&parts, "{", 1);
    r |= cv_buf_append(&offs, "{", 1);
    const char *sep = "";
    for (int i = 0; i < next_offsets->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &next_offsets->elems[i];
        if (st->next_owner && st->next_owner[i] != st->index)
            continue;
        /* Topic names are [A-Za-z0-9._-]: safe inside a quoted element. */
        r |= cv_buf_printf(&topics, "%s\"%s\"", sep, tp->topic);
        r |= cv_buf_printf(&parts, "%s%" PRId32, sep, tp->partition);
        r |= cv_buf_printf(&offs, "%s%" PRId64, sep, tp->offset);
        sep = ",";
    }
    r |= cv_buf_append(&topics, "}", 2);
    r |= cv_buf_append(&parts, "}", 2);
    r |= cv_buf_append(&offs, "}", 2);
    if (r != 0) {
        snprintf(errbuf, errlen, "postgres: offsets of the batch: out of memory");
        r = -ENOMEM;
        goto out;
    }
    const char *params[4] = {st->group, (char *)topics.data, (char *)parts.data,
                             (char *)offs.data};
    PGresult *res = PQexecParams(st->conn, offsets_sql, 4, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        r = pg_fail(st, res, "updating chatvault.kafka_offsets", errbuf, errlen);
    else
        PQclear(res);
out:
    cv_buf_release(&topics);
    cv_buf_release(&parts);
    cv_buf_release(&offs);
    return r;
}

static int write_rejected(shard *st, const cv_rec *rec, char *errbuf, size_t errlen) {
    char part[16], off[24];
    snprintf(part, sizeof(part), "%" PRId32, rec->partition);
    snprintf(off, sizeof(off), "%" PRId64, rec->offset);
    const Chatvault__V1__ChatMessage *m = rec->env.msg;
    /* Channel and message id only when they can be named. */
    const char *channel =
        m && m->channel && *m->channel && cv_utf8_valid(m->channel, strlen(m->channel))
            ? m->channel
            : NULL;
    const char *id = cv_envelope_message_id(&rec->env);
    const char *values[8] = {rec->topic,
                             part,
                             off,
                             channel,
                             id,
                             cv_reject_reason_name(rec->env.reason),
                             rec->env.error,
                             rec->rkm->payload};
    int lengths[8] = {0, 0, 0, 0, 0, 0, 0, (int)rec->rkm->len};
    int formats[8] = {0, 0, 0, 0, 0, 0, 0, 1};
    if (!rec->rkm->payload)
        values[7] = NULL;
    PGresult *res =
        PQexecParams(st->conn, rejected_sql, 8, NULL, values, lengths, formats, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        return pg_fail(st, res, "inserting into chatvault.rejected", errbuf, errlen);
    PQclear(res);
    return 0;
}

/* The common way: the whole batch straight into chatvault.messages in the
 * transaction's first statement. On a unique_violation the transaction is
 * rolled back and a new one begun, nothing is set but *conflict, and 0 is
 * returned: the careful way comes next. */
static int insert_direct(shard *st, cv_rec *recs, size_t n, bool *conflict, char *errbuf,
                         size_t errlen) {
    size_t rows = 0;
    int r = build_copy(st, recs, n, false, &rows, errbuf, errlen);
    if (r < 0)
        return r;
    r = copy_in(st, copy_direct_sql, "COPY into chatvault.messages", conflict, errbuf,
                errlen);
    if (r == 0) {
        for (size_t i = 0; i < n; i++)
            if (mine(st, i) && cv_rec_valid(&recs[i]))
                recs[i].status = CHATVAULT__V1__ACK_STATUS__PERSISTED;
        return 0;
    }
    if (!*conflict)
        return r;
    r = exec_cmd(st, "ROLLBACK", "ROLLBACK", errbuf, errlen);
    return r < 0 ? r : exec_cmd(st, "BEGIN", "BEGIN", errbuf, errlen);
}

static int insert_batch(shard *st, cv_rec *recs, size_t n, char *errbuf, size_t errlen) {
    bool any = false;
    for (size_t i = 0; i < n && !any; i++)
        any = mine(st, i) && cv_rec_valid(&recs[i]);
    if (!any)
        return 0;
    if (st->staged_left > 0) {
        st->staged_left--;
        return insert_staged(st, recs, n, errbuf, errlen);
    }
    bool conflict = false;
    int r = insert_direct(st, recs, n, &conflict, errbuf, errlen);
    if (r == 0 && conflict) {
        st->staged_left = STAGED_AFTER_CONFLICT;
        r = insert_staged(st, recs, n, errbuf, errlen);
    }
    return r;
}

/* Writes this shard's share of the batch in one transaction; on failure
 * it is rolled back (when the link is alive; otherwise the next call
 * reconnects). */
static int write_share(shard *st, cv_rec *recs, size_t n,
                       const rd_kafka_topic_partition_list_t *next_offsets, char *errbuf,
                       size_t errlen) {
    int r = ensure_connected(st, errbuf, errlen);
    if (r < 0)
        return r;
    r = exec_cmd(st, "BEGIN", "BEGIN", errbuf, errlen);
    if (r < 0)
        return r;
    r = insert_batch(st, recs, n, errbuf, errlen);
    for (size_t i = 0; r == 0 && i < n; i++)
        if (mine(st, i) && !cv_rec_valid(&recs[i]))
            r = write_rejected(st, &recs[i], errbuf, errlen);
    if (r == 0)
        r = write_offsets(st, next_offsets, errbuf, errlen);
    if (r == 0)
        r = exec_cmd(st, "COMMIT", "COMMIT", errbuf, errlen);
    if (r < 0 && PQstatus(st->conn) == CONNECTION_OK) {
        PGresult *res = PQexec(st->conn, "ROLLBACK");
        PQclear(res);
    }
    return r;
}

static void *share_main(void *arg) {
    shard *sh = arg;
    pthread_setname_np(pthread_self(), "cv-pg-share");
    sh->result = write_share(sh, sh->recs, sh->n, sh->next, sh->err, sizeof(sh->err));
    return NULL;
}

typedef struct topic_share {
    const char *topic;
    size_t records;
    unsigned shard;
} topic_share;

static int by_records_desc(const void *a, const void *b) {
    const topic_share *x = *(topic_share *const *)a, *y = *(topic_share *const *)b;
    return x->records < y->records ? 1 : x->records > y->records ? -1 : 0;
}

static size_t find_topic(topic_share *t, size_t nt, const char *topic) {
    size_t k = 0;
    while (k < nt && t[k].topic != topic && strcmp(t[k].topic, topic) != 0)
        k++;
    return k;
}

/* Spreads the batch over the connections by topic (so no two transactions
 * ever touch the same channel's rows, offsets or report rollups: each
 * channel is one topic, which the envelope enforces): the largest topic
 * first, each to the connection with the fewest records so far. Fills
 * st->owner and returns how many connections get a share; 1 (and no
 * owner) for a small batch or a single topic. -ENOMEM on no memory. */
static int spread(cv_pgstore *st, const cv_rec *recs, size_t n,
                  const rd_kafka_topic_partition_list_t *next) {
    if (st->nshards == 1 || n < SPLIT_MIN_RECORDS)
        return 1;
    topic_share *t = malloc(n * sizeof(*t));
    topic_share **order = malloc(n * sizeof(*order));
    size_t *of = malloc(n * sizeof(*of));
    size_t need = n + (size_t)next->cnt;
    if (need > st->owner_cap) {
        unsigned char *o = realloc(st->owner, need);
        if (o) {
            st->owner = o;
            st->owner_cap = need;
        }
    }
    int used = -ENOMEM;
    if (!t || !order || !of || need > st->owner_cap)
        goto out;
    size_t nt = 0, last = 0;
    for (size_t i = 0; i < n; i++) {
        const char *topic = recs[i].topic;
        size_t k = nt && t[last].topic == topic ? last : find_topic(t, nt, topic);
        if (k == nt)
            t[nt++] = (topic_share){.topic = topic};
        t[k].records++;
        of[i] = last = k;
    }
    used = nt < st->nshards ? (int)nt : (int)st->nshards;
    if (used > 1) {
        size_t load[CV_PGSTORE_MAX_CONNECTIONS] = {0};
        for (size_t k = 0; k < nt; k++)
            order[k] = &t[k];
        qsort(order, nt, sizeof(*order), by_records_desc);
        for (size_t k = 0; k < nt; k++) {
            unsigned least = 0;
            for (unsigned c = 1; c < (unsigned)used; c++)
                if (load[c] < load[least])
                    least = c;
            order[k]->shard = least;
            load[least] += order[k]->records;
        }
        for (size_t i = 0; i < n; i++)
            st->owner[i] = (unsigned char)t[of[i]].shard;
        for (int i = 0; i < next->cnt; i++) {
            size_t k = find_topic(t, nt, next->elems[i].topic);
            st->owner[n + (size_t)i] = k < nt ? (unsigned char)t[k].shard : 0;
        }
    }
out:
    free(t);
    free(order);
    free(of);
    return used;
}

int cv_pgstore_write(cv_pgstore *st, cv_rec *recs, size_t n,
                     const rd_kafka_topic_partition_list_t *next_offsets, char *errbuf,
                     size_t errlen) {
    if (n == 0)
        return 0;
    int used = spread(st, recs, n, next_offsets);
    if (used < 0) {
        snprintf(errbuf, errlen,
                 "postgres: spreading a batch of %zu records: out of memory", n);
        return used;
    }
    pthread_t tids[CV_PGSTORE_MAX_CONNECTIONS];
    bool started[CV_PGSTORE_MAX_CONNECTIONS] = {false};
    for (int k = 0; k < used; k++) {
        shard *sh = &st->shards[k];
        sh->owner = used > 1 ? st->owner : NULL;
        sh->next_owner = used > 1 ? st->owner + n : NULL;
        sh->recs = recs;
        sh->n = n;
        sh->next = next_offsets;
        sh->err[0] = '\0';
        if (k > 0)
            started[k] = pthread_create(&tids[k], NULL, share_main, sh) == 0;
    }
    shard *first = &st->shards[0];
    first->result = write_share(first, recs, n, next_offsets, errbuf, errlen);
    int r = first->result;
    for (int k = 1; k < used; k++) {
        shard *sh = &st->shards[k];
        if (started[k])
            pthread_join(tids[k], NULL);
        else
            share_main(sh); /* no thread to be had: write it here */
        if (sh->result < 0 && r == 0) {
            r = sh->result;
            snprintf(errbuf, errlen, "%s", sh->err);
        }
    }
    if (r < 0) {
        /* Some shares may have committed; the caller writes the whole
         * batch again, which finds those rows its own. */
        for (size_t i = 0; i < n; i++)
            if (cv_rec_valid(&recs[i]))
                recs[i].status = 0;
        return r;
    }
    int64_t now = cv_now_us();
    for (size_t i = 0; i < n; i++)
        if (cv_rec_valid(&recs[i])) {
            recs[i].stores |= CV_STORE_PG;
            recs[i].persisted_at_us = now;
        }
    return 0;
}

int cv_pgstore_read_offsets(cv_pgstore *store, rd_kafka_topic_partition_list_t *parts,
                            char *errbuf, size_t errlen) {
    shard *st = &store->shards[0];
    int r = ensure_connected(st, errbuf, errlen);
    if (r < 0)
        return r;
    for (int i = 0; i < parts->cnt; i++) {
        rd_kafka_topic_partition_t *p = &parts->elems[i];
        char part[16];
        snprintf(part, sizeof(part), "%" PRId32, p->partition);
        const char *values[3] = {st->group, p->topic, part};
        PGresult *res = PQexecParams(
            st->conn,
            "SELECT next_offset FROM chatvault.kafka_offsets"
            " WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3",
            3, NULL, values, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            return pg_fail(st, res, "reading chatvault.kafka_offsets", errbuf, errlen);
        p->offset = PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10)
                                        : RD_KAFKA_OFFSET_INVALID;
        PQclear(res);
    }
    return 0;
}
