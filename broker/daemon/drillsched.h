/*
 * drillsched — the broker's restore drills (drill.interval_s) and what
 * /metrics says of drills. A thread of its own reads the newest outcome
 * from chatvault.restore_drills (postgres.conninfo) every few seconds into
 * cv_metrics, so a drill run by `chatvault drill` or by another instance
 * shows too; when drill.interval_s is set and the newest drill is older
 * than that, it runs one (drill.h) on postgres.admin_conninfo's server, on
 * this broker's log.dir. Several instances may schedule drills: the
 * drill's lock lets one run at a time, and each skips its turn while the
 * record is fresh.
 */
#ifndef CV_DRILLSCHED_H
#define CV_DRILLSCHED_H

#include <stddef.h>

#include "config.h"
#include "keyring.h"
#include "obs/metrics.h"

typedef struct cv_drillsched cv_drillsched;

/* Starts the thread; cfg, keys and metrics must outlive it. 0, -EINVAL
 * when drills are scheduled but cannot run (no log.dir, a conninfo that
 * does not parse), or another negative errno; errbuf says why. */
int cv_drillsched_start(const cv_config *cfg, const cv_keyring *keys, cv_metrics *metrics,
                        cv_drillsched **ret, char *errbuf, size_t errlen);

/* Stops the thread; a drill under way is cancelled at its next message.
 * Accepts NULL; returns NULL. */
cv_drillsched *cv_drillsched_stop(cv_drillsched *s);

#endif
