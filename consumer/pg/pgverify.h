/*
 * pgverify — the queries `chatvault verify` (history/verify.c) runs on the
 * chatvault schema besides the stream of messages it reads through pgread:
 * the partitions chatvault.messages holds, the consumer groups' offsets in
 * chatvault.kafka_offsets, a partition's offsets in chatvault.rejected,
 * which message ids a channel holds, and a partition's newest row at a
 * time. Each returns plain C data; verify holds the comparison.
 *
 * Errors: -CV_ESTORE with errbuf "postgres: <what>: <the server's
 * message>", or -ENOMEM. A function runs one statement on the connection
 * it is given, outside any transaction of its own; a connection serves one
 * thread at a time.
 */
#ifndef CV_PGVERIFY_H
#define CV_PGVERIFY_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Every (channel, topic, partition) of chatvault.messages with its row
 * count, in no particular order; calls fn for each. A nonzero return from
 * fn stops the walk and is returned. */
typedef int cv_pgverify_partition_fn(void *opaque, const char *channel, const char *topic,
                                     int32_t partition, uint64_t rows);
int cv_pgverify_partitions(PGconn *conn, cv_pgverify_partition_fn *fn, void *opaque,
                           char *errbuf, size_t errlen);

/* One row of chatvault.kafka_offsets; the pointers are valid during the
 * callback only. */
typedef struct cv_pgverify_offset {
    const char *group, *topic;
    int32_t partition;
    int64_t next;           /* the group's next offset */
    const char *updated_at; /* as PostgreSQL prints it (a timestamptz) */
} cv_pgverify_offset;

/* Calls fn for every row of chatvault.kafka_offsets. A nonzero return from
 * fn stops the walk and is returned. */
typedef int cv_pgverify_offset_fn(void *opaque, const cv_pgverify_offset *o);
int cv_pgverify_offsets(PGconn *conn, cv_pgverify_offset_fn *fn, void *opaque,
                        char *errbuf, size_t errlen);

/* The offsets chatvault.rejected holds for (topic, partition), ascending.
 * The caller frees *ret_offsets (allocated also when there are none). */
int cv_pgverify_rejected(PGconn *conn, const char *topic, int32_t partition,
                         int64_t **ret_offsets, size_t *ret_n, char *errbuf,
                         size_t errlen);

/* Sets ret_held[i] to whether PostgreSQL holds version revs[i] of message
 * ids[i] of `channel` (in chatvault.messages or chatvault.message_versions),
 * for the n ids (one query; a few thousand ids at a time). */
int cv_pgverify_held_ids(PGconn *conn, const char *channel, const char *const *ids,
                         const uint32_t *revs, size_t n, bool *ret_held, char *errbuf,
                         size_t errlen);

/* The offset of the row of (channel, topic, partition) persisted last at or
 * before `at` (a timestamptz as PostgreSQL prints it), or -1 in
 * *ret_offset when there is none. */
int cv_pgverify_newest_row(PGconn *conn, const char *channel, const char *topic,
                           int32_t partition, const char *at, int64_t *ret_offset,
                           char *errbuf, size_t errlen);

#endif
