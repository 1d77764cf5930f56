/*
 * pgread — streams stored messages out of chatvault.messages for the tools
 * that read history back (replay, export, verify --repair).
 *
 * One reader walks the messages of ONE channel (every query on messages is
 * per channel, so the table can be hash-partitioned or distributed on it):
 * their latest versions, or with `history` every version (see
 * schemas/0005_versions.sql), ordered by (kafka_partition, kafka_offset), through a server-side cursor
 * fetched in batches in binary format by a thread of the reader, a few
 * batches ahead of the caller: memory stays bounded whatever the channel's
 * size, and the server never waits for the caller.
 *
 * The reader owns a transaction on the connection (REPEATABLE READ, READ
 * ONLY) from open to free; the caller does not use the connection meanwhile.
 */
#ifndef CV_PGREAD_H
#define CV_PGREAD_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Which time column --since/--until apply to. */
typedef enum {
    CV_PGREAD_TIME_NONE = 0,
    CV_PGREAD_TIME_SENT_AT,      /* sent_at_us, set by the sender */
    CV_PGREAD_TIME_PERSISTED_AT, /* persisted_at, set by the store */
} cv_pgread_time;

typedef struct cv_pgread_sel {
    const char *channel; /* required */
    int32_t partition;   /* -1: every partition */
    int64_t from_offset; /* -1: no lower bound (inclusive) */
    int64_t to_offset;   /* -1: no upper bound (inclusive) */
    cv_pgread_time time_field;
    int64_t since_us, until_us; /* Unix us; since inclusive, until exclusive;
                                   -1: unbounded */
    const int64_t *offsets;     /* exactly these offsets (with partition) */
    size_t noffsets;
    const char *const *ids; /* exactly these message ids */
    size_t nids;
    bool history;     /* every version (chatvault.message_versions too),
                         not only the latest of each message */
    bool digest_only; /* verify: sha256(body) instead of body, no
                                 channel (the selection's is returned),
                                 timestamps (-1) nor attributes */
} cv_pgread_sel;

/* One row; every pointer is valid until the next cv_pgread_next(). */
typedef struct cv_pgrow {
    const char *channel, *message_id, *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms; /* Kafka timestamp, -1 when none */
    const char *sender_id;
    int64_t sent_at_us;
    const unsigned char *body; /* with digest_only: the 32-byte SHA-256 */
    size_t body_len;
    const char *content_type;
    const char *const *attrs; /* key, value, key, value, ... */
    size_t nattrs;            /* pairs */
    const char *reply_to;
    int64_t persisted_at_us;
    uint32_t revision; /* 0: the original */
    bool deleted;      /* a tombstone */
    bool latest;       /* the message's row of chatvault.messages */
} cv_pgrow;

typedef struct cv_pgread cv_pgread;

/* Starts the transaction and the cursor. The caller owns *ret and ends it
 * with cv_pgread_free(), which ends the transaction. */
int cv_pgread_open(PGconn *conn, const cv_pgread_sel *sel, cv_pgread **ret, char *errbuf,
                   size_t errlen);

/* 1 and *row filled, 0 at the end, or -CV_ESTORE with errbuf set. */
int cv_pgread_next(cv_pgread *r, cv_pgrow *row, char *errbuf, size_t errlen);

cv_pgread *cv_pgread_free(cv_pgread *r);

/* Serializes the row as the ChatMessage value it was stored from (not for
 * digest_only rows). Replaces out's contents. */
int cv_pgrow_pack(const cv_pgrow *row, cv_buf *out);

/* The channels of chatvault.messages, sorted; calls fn for each. A nonzero
 * return from fn stops the walk and is returned. */
typedef int cv_pgread_channel_fn(void *opaque, const char *channel);
int cv_pgread_channels(PGconn *conn, cv_pgread_channel_fn *fn, void *opaque, char *errbuf,
                       size_t errlen);

#endif
