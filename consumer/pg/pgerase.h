/*
 * pgerase — erasing a channel's or a sender's rows (`chatvault erase`):
 * every table of the chatvault schema that holds what a channel's messages
 * said or who sent them, in one transaction. kafka_offsets is kept: the
 * broker must not consume the erased messages from Kafka a second time.
 */
#ifndef CV_PGERASE_H
#define CV_PGERASE_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The tables erase deletes from, in the order of cv_pgerase_counts.rows. */
#define CV_PGERASE_TABLES 12
extern const char *const cv_pgerase_tables[CV_PGERASE_TABLES];

typedef struct cv_pgerase_counts {
    int64_t rows[CV_PGERASE_TABLES]; /* per table (deleted, or that would be) */
    int64_t total;
} cv_pgerase_counts;

/* Deletes every row of `channel` (sender NULL), or only the rows of sender
 * `sender` in it (channel NULL: in every channel), in one transaction, and
 * fills *ret with the counts. dry_run: counts only, in a read-only
 * transaction. Returns 0 or -CV_ESTORE with errbuf set. */
int cv_pgerase(PGconn *conn, const char *channel, const char *sender, bool dry_run,
               cv_pgerase_counts *ret, char *errbuf, size_t errlen);

#endif
