/*
 * pgretention — retention's queries (schema version 7): legal holds, and
 * the rows PostgreSQL holds at the Kafka coordinates of log segments that
 * retention drops (broker/retention.h has the whole of it).
 *
 * Not thread-safe; each call takes the connection it is given.
 */
#ifndef CV_PGRETENTION_H
#define CV_PGRETENTION_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The holds, ordered by channel; strings are valid until freed. */
typedef struct cv_hold {
    const char *channel; /* a name or a shell pattern */
    const char *reason, *held_by;
    const char *held_at; /* RFC 3339 UTC */
} cv_hold;
typedef struct cv_hold_list {
    PGresult *res;
    size_t n;
    cv_hold *holds;
} cv_hold_list;

int cv_pgretention_holds(PGconn *conn, cv_hold_list *ret, char *errbuf, size_t errlen);
void cv_pgretention_holds_free(cv_hold_list *l);

/* Places a hold (1), or finds one in place for `channel` already (0:
 * nothing changed). */
int cv_pgretention_hold(PGconn *conn, const char *channel, const char *reason,
                        const char *held_by, char *errbuf, size_t errlen);
/* Releases a hold: 1, or 0 when there was none. */
int cv_pgretention_release(PGconn *conn, const char *channel, char *errbuf,
                           size_t errlen);

/* A range of Kafka offsets of one topic-partition (both ends included). */
typedef struct cv_offset_range {
    int64_t first, last;
} cv_offset_range;

/* Counts (with `delete`, deletes in one transaction) the rows of
 * chatvault.messages and chatvault.message_versions of `channel` at
 * `topic`/`partition` with offsets in the ranges and a Kafka timestamp
 * before before_ms (or none), with their search documents and the
 * duplicates recorded there. The timestamp keeps the rows of a later
 * generation (Kafka's offsets started over) that share the offsets. */
int cv_pgretention_rows(PGconn *conn, const char *channel, const char *topic,
                        int32_t partition, const cv_offset_range *ranges, size_t n,
                        int64_t before_ms, bool delete, uint64_t *ret_rows,
                        uint64_t *ret_versions, char *errbuf, size_t errlen);

#endif
