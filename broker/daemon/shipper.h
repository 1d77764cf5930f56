/*
 * shipper — the cold tier's schedule inside `chatvault broker`
 * (cold.ship_interval_s > 0 with cold.target set): a thread that every
 * interval runs one shipping pass over log.dir (consumer/cold/cold.h
 * cv_cold_ship_log), the same as `chatvault cold ship`. It is off the ack
 * path: it only reads sealed segments, which the writer never touches
 * again, and removes local copies past cold.hot_window only after their
 * copy was verified. A failed pass (target unreachable, refused) is logged
 * and tried again at the next interval; nothing is removed by it.
 */
#ifndef CV_SHIPPER_H
#define CV_SHIPPER_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct cv_shipper cv_shipper;

/* Starts the thread when the config asks for one (*ret stays NULL when
 * not). Returns 0, or negative with errbuf set (a bad cold.* key). */
int cv_shipper_start(const cv_config *cfg, cv_shipper **ret, char *errbuf, size_t errlen);

/* Stops the thread (a pass in flight ends after its current segment) and
 * frees it. Accepts NULL; returns NULL: s = cv_shipper_stop(s). */
cv_shipper *cv_shipper_stop(cv_shipper *s);

#endif
