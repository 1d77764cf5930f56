/*
 * progress — the progress display of the long-running tools (verify,
 * replay, export, import): a bar redrawn in place when stderr is a
 * terminal, a logfmt line every few seconds when it is not (a log file or
 * a pipe).
 */
#ifndef CV_PROGRESS_H
#define CV_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct cv_progress {
    const char *what; /* "verify", "replay", ... */
    bool enabled, tty, drawn;
    int64_t start_ms, last_ms;
} cv_progress;

void cv_progress_init(cv_progress *p, const char *what, bool enabled);

/* `total` 0: unknown. `note` (may be NULL) says what is being worked on.
 * Cheap to call often: it draws at most every 100 ms (every 5 s without a
 * terminal). */
void cv_progress_update(cv_progress *p, uint64_t done, uint64_t total, const char *note);

/* Clears the bar (a terminal) so the summary starts on a clean line. */
void cv_progress_end(cv_progress *p);

#endif
