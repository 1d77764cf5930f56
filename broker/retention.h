/*
 * retention — what a channel's retention class no longer keeps, dropped
 * from both stores (README "Retention classes").
 *
 * Classes: retention.classes names each class and how long it keeps a
 * message ("regular=60d,key=forever,audit=400d"); retention.channels maps
 * channels to classes by name or shell pattern, first match wins
 * ("compliance-*=key,payments=key"); every other channel is in
 * retention.default_class. A message may name a class of its own
 * (ChatMessage.retention_class) that keeps it longer than its channel's.
 * A legal hold (chatvault.retention_holds) suspends expiry of the channels
 * it names.
 *
 * What goes: whole sealed segments of the encrypted log, each one whose
 * every record is older than its retention (by Kafka timestamp), and the
 * rows PostgreSQL holds at those segments' Kafka coordinates that are older
 * than the channel's retention too (the timestamp keeps the rows of a later
 * generation that share the offsets when Kafka's offsets started over). The order
 * makes a crash at any point safe to run again: each segment is first
 * recorded as dropped in its directory (cv_applog_expiry_add; from then on
 * no reader reads it and verify does not miss it), then the rows are
 * deleted in one transaction per partition, then the files are removed.
 * A second run finishes what a crashed one recorded.
 */
#ifndef CV_RETENTION_H
#define CV_RETENTION_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "ingest/envelope.h"
#include "keyring.h"

#define CV_RETENTION_FOREVER INT64_MAX

typedef struct cv_retention_class {
    char *name;
    int64_t keep_s; /* CV_RETENTION_FOREVER: kept for good */
} cv_retention_class;

typedef struct cv_retention_rule {
    char *pattern; /* a channel name or a shell pattern (fnmatch) */
    size_t cls;    /* index into classes */
} cv_retention_rule;

typedef struct cv_retention_rules {
    cv_retention_class *classes;
    size_t nclasses;
    cv_retention_rule *map;
    size_t nmap;
    size_t default_class;
} cv_retention_rules;

/* The syntax checks of retention.classes and retention.channels, for the
 * config's validation: NULL when `v` parses, else what is wrong (in buf). */
const char *cv_retention_check_classes(const char *v, char *buf, size_t len);
const char *cv_retention_check_channels(const char *v, char *buf, size_t len);

/* Builds the rules from the config's retention.* keys; -EINVAL with a
 * one-line error naming the key (a class that retention.channels or
 * retention.default_class names but retention.classes lacks, say). */
int cv_retention_rules_load(const cv_config *cfg, cv_retention_rules *ret, char *errbuf,
                            size_t errlen);
void cv_retention_rules_release(cv_retention_rules *r);

/* The class of a channel (an index into r->classes). */
size_t cv_retention_class_of(const cv_retention_rules *r, const char *channel);

/* "60d", "36h", "forever": how a class's retention is written. */
void cv_retention_format_keep(int64_t keep_s, char *buf, size_t len);

/* One partition's outcome, reported as each is done. */
typedef struct cv_retention_part {
    const char *topic, *channel, *cls;
    int32_t partition;
    int64_t keep_s;
    const char *held_by; /* the hold that suspends it (its pattern), or NULL */
    uint64_t segments, records, bytes; /* log: what goes (went) */
    uint64_t rows, versions;           /* PostgreSQL: what goes (went) */
    uint64_t kept_for_messages;        /* expired segments a message's class keeps */
    uint64_t pending;                  /* recorded by an earlier run, finished now */
    int64_t first_offset, last_offset; /* of what goes; -1 when nothing */
} cv_retention_part;

typedef struct cv_retention_stats {
    uint64_t partitions, held, segments, records, bytes, rows, versions;
    uint64_t kept_for_messages, pending;
} cv_retention_stats;

typedef struct cv_retention_conf {
    const char *log_dir;
    const cv_keyring *keys;
    const char *pg_conninfo; /* the admin's: it deletes */
    const cv_retention_rules *rules;
    struct cv_cold *cold;         /* the cold tier (cold.target), or NULL: a segment
                             only there is then not dropped (an error) */
    const cv_envelope_rules *env; /* topic prefix: topic to channel */
    int64_t now_us;
    bool apply;                  /* false: only say what would go */
    const atomic_bool *stop;     /* set by another thread: ends the run between
                                partitions (-ECANCELED); NULL: never */
    const char *const *channels; /* only these (NULL, 0: every channel) */
    size_t nchannels;
    void *opaque;
    void (*on_part)(void *opaque, const cv_retention_part *p);
    /* Called before each partition is read, for progress. */
    void (*on_progress)(void *opaque, uint64_t done, uint64_t total, const char *topic,
                        int32_t partition);
} cv_retention_conf;

/* Adds the run's counts to the process's audit record (access.h). */
void cv_retention_audit_counts(const cv_retention_stats *st);

/* Plans (and with conf->apply, applies) retention over every partition of
 * the log. 0 when the run completed, else a negative errno with a one-line
 * error; *ret_stats holds what was done up to then. */
int cv_retention_run(const cv_retention_conf *conf, cv_retention_stats *ret_stats,
                     char *errbuf, size_t errlen);

#endif
