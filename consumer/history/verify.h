/*
 * verify — proves that PostgreSQL and the encrypted log hold the same
 * messages, and repairs each from the other.
 *
 * The unit of comparison is one topic-partition (one channel's partition).
 * For each, PostgreSQL's rows (a server-side cursor ordered by offset,
 * sha256(body) computed by the server) and the log's records (the reader,
 * which authenticates every record and checks the hash chain, and returns
 * every generation of the partition) are streamed side by side and merged
 * by offset, so memory does not grow with the number of messages, only
 * with the number of differences.
 *
 * Records are matched by identity, not by offset alone: Kafka's offsets
 * start over when a topic is re-created (see "Generations" in
 * applog/FORMAT.md), so one offset can hold several messages in each
 * store. A row and a record at one offset with one message id are
 * compared field by field; any other row or record at that offset is
 * matched with the other store's by message id and content (channel,
 * sender, sent_at, content type, reply_to, body), then across offsets.
 *
 * What counts as a difference:
 *   only_in_postgres  a row the log holds no record of (no record at its
 *                     offset, or only other messages there)
 *   only_in_log       a log record PostgreSQL has no row for. A record whose
 *                     message id PostgreSQL holds from another offset is a
 *                     DUPLICATE (the log keeps every valid record while
 *                     PostgreSQL is down under ack.policy=any), not a
 *                     difference; it is counted as a duplicate.
 *   different         both hold the message id at one offset but channel,
 *                     sender, sent_at, content type, reply_to or the body's
 *                     SHA-256 differ (attributes are not compared: jsonb
 *                     reorders them)
 *   kafka_offsets     a consumer group's next offset in
 *                     chatvault.kafka_offsets is not past the partition's
 *                     highest row, nor past the row persisted last before
 *                     the offset was written (they are written in one
 *                     transaction; the second rule holds after Kafka's
 *                     offsets started over)
 *   log_damaged       the log reader stopped on damage (file and byte in the
 *                     detail); the rest of that partition is not compared.
 *                     --repair moves the damaged segment aside (kept as
 *                     <segment>.damaged-<Unix us>), puts its intact records
 *                     before the damage back, and compares the partition
 *                     again: what the damage held is rebuilt from
 *                     PostgreSQL, bridging the link to a later segment
 *   log_segment_missing  a partition segment does not chain to the one
 *                     before it: the segment(s) between were removed or lost.
 *                     Reading goes on after it; PostgreSQL's rows in the range
 *                     are reported only_in_postgres, and --repair rebuilds
 *                     them into a repair directory that bridges the link
 * Reported but not a difference:
 *   gap               offsets between a partition's first and last record
 *                     that neither store holds and chatvault.rejected does
 *                     not explain. A record acked DUPLICATE is stored in
 *                     neither store, and Kafka's own offsets have gaps
 *                     (transaction markers, compaction), so a gap is a lead
 *                     to follow, not proof of loss. Offsets of segments
 *                     retention dropped are no gap.
 *   expired_rows      rows at the offsets of a segment retention recorded
 *                     as dropped (applog/FORMAT.md "Retention") that a run
 *                     cut short has not deleted yet; not compared, never
 *                     repaired into the log; the next retention apply
 *                     deletes them.
 *   expired_records   records of repair directories at the offsets of a
 *                     segment retention dropped from their generation:
 *                     expired with the rows they stood for; not compared.
 *
 * Repair never deletes nor overwrites: records only in the log are written
 * to PostgreSQL through pgstore (idempotent on (channel, message_id); the
 * consumer group offsets are left alone), rows only in PostgreSQL are
 * appended to a repair directory of the log (cv_applog_open_repair), rebuilt
 * as the ChatMessage value they were stored from; a row whose offset the log
 * holds with another message goes to a repair directory in a new generation
 * (cv_applog_repair_new_generation), so a second verify finds it. "different"
 * stays reported for a human to decide.
 */
#ifndef CV_VERIFY_H
#define CV_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ingest/envelope.h"
#include "keyring.h"

typedef enum cv_verify_kind {
    CV_VERIFY_ONLY_PG = 1,
    CV_VERIFY_ONLY_LOG,
    CV_VERIFY_DIFFERENT,
    CV_VERIFY_OFFSETS,
    CV_VERIFY_LOG_DAMAGED,
    CV_VERIFY_SEGMENT_MISSING,
    CV_VERIFY_GAP,
} cv_verify_kind;

/* "only_in_postgres", "only_in_log", "different", "kafka_offsets",
 * "log_damaged", "log_segment_missing", "gap". */
const char *cv_verify_kind_name(cv_verify_kind k);

/* One finding; pointers are valid during the callback only. */
typedef struct cv_verify_finding {
    cv_verify_kind kind;
    const char *channel, *topic;
    int32_t partition;
    int64_t offset, last_offset; /* a range for gaps, else offset == last */
    const char *message_id;      /* per-record kinds; NULL otherwise */
    const char *detail;          /* what differs, the group, the damage */
} cv_verify_finding;

typedef struct cv_verify_stats {
    uint64_t partitions; /* topic-partitions compared */
    uint64_t pg_rows, log_records, matched;
    uint64_t only_pg, only_log, different, offsets, log_damaged;
    uint64_t segments_missing;
    uint64_t duplicates; /* log records whose id PostgreSQL holds elsewhere */
    uint64_t gaps, gap_offsets;
    uint64_t repaired_pg, repaired_log, repair_skipped;
    uint64_t quarantined;     /* damaged log files moved aside by --repair */
    uint64_t expired_rows;    /* rows of segments retention dropped, not yet deleted */
    uint64_t expired_records; /* repair records at the offsets of dropped segments */
    /* log segments of erased channels (chatvault erase): passed over by
     * chain only, neither damage nor a difference */
    uint64_t erased_segments, erased_records;
} cv_verify_stats;

/* The findings that make verify fail (exit 3). */
uint64_t cv_verify_differences(const cv_verify_stats *s);

typedef struct cv_verify_progress {
    uint64_t partitions_done, partitions_total;
    uint64_t messages_done;  /* offsets compared so far */
    uint64_t messages_total; /* PostgreSQL's row count: an estimate */
    const char *topic;       /* the partition being compared */
    int32_t partition;
    bool repairing;
} cv_verify_progress;

typedef struct cv_verify_conf {
    const char *pg_conninfo;
    const char *const *log_dirs; /* one per broker instance; repairs go to */
    size_t nlog_dirs;            /* the first */
    const cv_keyring *keys;
    const cv_envelope_rules *rules; /* topic prefix, limits */
    uint64_t log_segment_bytes;     /* of repair segments */
    int32_t partition;              /* -1: every partition */
    unsigned jobs;                  /* partitions compared at once, each
                                       with its own connection (0: 2) */
    bool repair;
    void *opaque;
    /* The callbacks are called under a lock, one at a time, from the
     * worker threads. Findings of different partitions interleave. */
    /* Which channels to compare (NULL: all). */
    bool (*want_channel)(void *opaque, const char *channel);
    void (*finding)(void *opaque, const cv_verify_finding *f);
    /* Called every few thousand messages and at each partition's end. */
    void (*progress)(void *opaque, const cv_verify_progress *p);
} cv_verify_conf;

/* Compares (and with conf->repair, repairs) every selected topic-partition
 * found in PostgreSQL or in the log directories. Findings go to
 * conf->finding as they are found, counts to *ret_stats (filled also on
 * failure, as far as the run got). Returns 0 when the run completed
 * (whatever it found), or a negative error with errbuf set when a store
 * could not be read or a repair could not be written. */
int cv_verify_run(const cv_verify_conf *conf, cv_verify_stats *ret_stats, char *errbuf,
                  size_t errlen);

#endif
