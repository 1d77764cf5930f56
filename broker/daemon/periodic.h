/*
 * periodic — a thread of the broker that runs one job every interval, off
 * the ack path (the cold tier's shipping, scheduled retention): the
 * start, the wait between passes that a stop cuts short, and the stop
 * that joins it. The job sees the stop flag, so a long pass can end early.
 */
#ifndef CV_PERIODIC_H
#define CV_PERIODIC_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cv_periodic cv_periodic;

/* One pass; `stop` turns true when the broker stops. */
typedef void cv_periodic_fn(void *opaque, const atomic_bool *stop);

/* Starts thread `name` (at most 15 characters) that runs fn after first_ms
 * and then every interval_ms, until stopped. 0, or a negative errno with
 * errbuf set. */
int cv_periodic_start(const char *name, int64_t first_ms, int64_t interval_ms,
                      cv_periodic_fn *fn, void *opaque, cv_periodic **ret, char *errbuf,
                      size_t errlen);

/* Stops the thread (a pass in flight finishes, or ends early if it reads
 * its stop flag) and frees it. Accepts NULL; returns NULL. */
cv_periodic *cv_periodic_stop(cv_periodic *p);

#endif
