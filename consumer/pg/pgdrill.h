/*
 * pgdrill — chatvault.restore_drills, the record of restore drills (schema
 * version 6): a drill appends its outcome; the broker reads the newest
 * outcomes back for /metrics and the dashboard.
 *
 * Not thread-safe; each call takes the connection it is given and uses it
 * outside any transaction of the caller's.
 */
#ifndef CV_PGDRILL_H
#define CV_PGDRILL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cv_drill_row {
    int64_t started_us, finished_us; /* Unix us; finished_us 0: now */
    const char *trigger;             /* "command" or "schedule" */
    const char *host;
    bool passed;
    const char *scope;
    uint64_t selected, sampled, verified, mismatched, missing;
    double restore_s, verify_s;
    const char *detail; /* NULL: "" */
} cv_drill_row;

/* Appends a row. -CV_ESTORE with a one-line error when PostgreSQL refuses. */
int cv_pgdrill_append(PGconn *conn, const cv_drill_row *row, char *errbuf, size_t errlen);

/* What /metrics says of drills: the newest drill and the newest that
 * passed (0 when there is none). */
typedef struct cv_drill_last {
    int64_t last_us, last_success_us; /* finished_at, Unix us; 0: none */
    bool last_passed;
    double last_seconds; /* restore + verify of the newest */
    uint64_t last_sampled;
    char last_detail[256];
} cv_drill_last;

int cv_pgdrill_last(PGconn *conn, cv_drill_last *ret, char *errbuf, size_t errlen);

#endif
