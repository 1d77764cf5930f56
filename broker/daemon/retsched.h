/*
 * retsched — scheduled retention inside `chatvault broker`
 * (retention.interval_s > 0): every interval a thread runs what
 * `chatvault retention apply` does (retention.h) over log.dir, as the
 * admin role, and audits it like the command (command "retention apply",
 * arguments ["schedule"]). Off the ack path: it only drops sealed
 * segments, which the writer never touches again. A failed pass is logged
 * and tried again at the next interval; what it recorded is finished then.
 * /metrics exports each pass (chatvault_retention_*).
 */
#ifndef CV_RETSCHED_H
#define CV_RETSCHED_H

#include <stddef.h>

#include "config.h"
#include "keyring.h"
#include "obs/metrics.h"

typedef struct cv_retsched cv_retsched;

/* Starts the thread when the config asks for one (*ret stays NULL when
 * not); each pass is exported on `metrics` (chatvault_retention_*).
 * -EINVAL with errbuf set for a bad retention.* key. */
int cv_retsched_start(const cv_config *cfg, const cv_keyring *keys, cv_metrics *metrics,
                      cv_retsched **ret, char *errbuf, size_t errlen);

/* Stops the thread and frees it. Accepts NULL; returns NULL. */
cv_retsched *cv_retsched_stop(cv_retsched *s);

#endif
