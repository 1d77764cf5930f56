/*
 * restore — rebuilds chatvault.messages of a PostgreSQL database from
 * messages of the encrypted log (see msgsource.h for reading them): the
 * engine of `chatvault restore` and of the restore drill (drill.h).
 *
 * Messages go through the broker's own write path (consumer/pg/pgstore.h)
 * in batches of one channel, so a restore is idempotent: a message the
 * target already holds (same channel, message id and revision) is counted,
 * not written again; the versions of an edited message are written in
 * offset order, so the newest becomes the message and the others its
 * history. Kafka coordinates and timestamps are kept;
 * chatvault.kafka_offsets is left alone (no consumer group read anything
 * of the target); persisted_at is the restore's time.
 */
#ifndef CV_RESTORE_H
#define CV_RESTORE_H

#include <stdbool.h>
#include <stdint.h>

#include "ingest/envelope.h"
#include "msgsource.h"

typedef struct cv_restore_conf {
    /* The target database. NULL only in a dry run: a database that does
     * not exist yet, so that it holds nothing. */
    const char *conninfo;
    const cv_envelope_rules *rules;
    bool dry_run; /* count what would be written; write nothing */
} cv_restore_conf;

typedef struct cv_restore_stats {
    uint64_t messages;   /* given to cv_restore_add */
    uint64_t restored;   /* written, as the target lacked them (dry run: would be) */
    uint64_t present;    /* the target held them already */
    uint64_t duplicates; /* another record of the same message id came first */
    uint64_t invalid;    /* not a valid message: never written */
} cv_restore_stats;

typedef struct cv_restore cv_restore;

/* Connects to the target (whose schema must be current: see
 * cv_pgmigrate_apply). The caller owns *ret (cv_restore_free). */
int cv_restore_open(const cv_restore_conf *conf, cv_restore **ret, char *errbuf,
                    size_t errlen);

/* Takes one message of the log (m->value is copied); writes a batch when
 * it is full or the channel changes. 0, or a negative error with errbuf
 * set: the batches written before it stay written. */
int cv_restore_add(cv_restore *r, const cv_msg *m, char *errbuf, size_t errlen);

/* Writes what is left. */
int cv_restore_flush(cv_restore *r, char *errbuf, size_t errlen);

const cv_restore_stats *cv_restore_get_stats(const cv_restore *r);

cv_restore *cv_restore_free(cv_restore *r);

#endif
