/*
 * drill — a restore drill: proof that the backup restores. A sample of the
 * log's messages (or all of a selection) is restored into a scratch
 * database (dropped first, created, migrated) through restore.h, every
 * restored row is read back and compared with the log record it came from
 * (message id, sender, times, content type, reply_to, attributes, body,
 * Kafka coordinates), and the outcome is appended to
 * chatvault.restore_drills of the live database (pgdrill.h), where /metrics
 * and the dashboard find it. The scratch database is dropped at the end
 * unless kept for inspection.
 *
 * Used by `chatvault drill` and by the broker on drill.interval_s.
 */
#ifndef CV_DRILL_H
#define CV_DRILL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ingest/envelope.h"
#include "keyring.h"
#include "select.h"

typedef struct cv_drill_conf {
    const char *live_conninfo;    /* the outcome is recorded here */
    const char *scratch_conninfo; /* must name another database */
    const char *const *log_dirs;
    size_t nlog_dirs;
    const cv_keyring *keys;
    const cv_envelope_rules *rules;
    cv_select *sel;          /* what may be sampled */
    const char *scope;       /* the selection in words, for the record */
    uint64_t sample;         /* messages to restore; 0: every selected one */
    bool keep;               /* leave the scratch database */
    bool progress;           /* the progress display on stderr */
    const char *trigger;     /* "command" or "schedule" */
    const atomic_bool *stop; /* NULL, or true to cancel (-ECANCELED) */
} cv_drill_conf;

typedef struct cv_drill_result {
    bool passed;
    int64_t started_us;
    uint64_t selected; /* log records the selection matched */
    uint64_t sampled;  /* of them, restored */
    uint64_t verified, mismatched, missing, extra, channels;
    double restore_s, verify_s;
    bool recorded; /* appended to chatvault.restore_drills */
    char detail[512];
} cv_drill_result;

/* Runs a drill. 0 when it came to a verdict (res->passed; a damaged or
 * undecryptable log is a failed drill), or a negative error, with errbuf
 * (and res->detail) saying why, when it could not run: -EINVAL the scratch
 * database is the live one (a configuration error), -EPERM it exists and
 * is not a drill's, -EBUSY another drill runs, -ECANCELED conf->stop, else
 * a database or the log unreachable. Verdicts and failures to run are
 * recorded when the live database takes the row (res->recorded); a
 * cancelled drill, one refused its scratch database or that never started,
 * and a "command" drill of a selection that holds nothing (a typo) are
 * not. */
int cv_drill_run(const cv_drill_conf *conf, cv_drill_result *res, char *errbuf,
                 size_t errlen);

/* The scratch database's conninfo: the live one's with database `name`
 * (NULL or empty: the live database's name plus "_drill"). */
int cv_drill_scratch_conninfo(const char *live_conninfo, const char *name, char *out,
                              size_t outlen, char *errbuf, size_t errlen);

#endif
