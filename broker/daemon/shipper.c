/*
 * daemon/shipper.c — see shipper.h.
 */
#include "daemon/shipper.h"

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cold/cold.h"
#include "daemon/periodic.h"

struct cv_shipper {
    cv_periodic *thread;
    cv_cold *cold;
    char *log_dir;
    int64_t interval_s, hot_window_s, cache_keep_s;
};

static void on_event(void *opaque, const cv_cold_event *ev) {
    (void)opaque;
    if (ev->kind == CV_COLD_SHIPPED)
        cv_log(CV_LOG_INFO, "cold tier: segment shipped",
               "file=%s key=%s bytes=%" PRIu64 " last_offset=%" PRId64, ev->path, ev->key,
               ev->stub->bytes, ev->stub->last_offset);
    else if (ev->kind == CV_COLD_REMOVED)
        cv_log(CV_LOG_INFO, "cold tier: local copy removed", "file=%s key=%s", ev->path,
               ev->key);
}

static void pass(void *opaque, const atomic_bool *stop) {
    cv_shipper *s = opaque;
    char err[1024];
    cv_cold_ship_opts o = {.partition = -1,
                           .hot_window_s = s->hot_window_s,
                           .cache_keep_s = s->cache_keep_s,
                           .on_event = on_event,
                           .stop = stop};
    cv_cold_ship_stats st;
    int r = cv_cold_ship_log(s->cold, s->log_dir, &o, &st, err, sizeof(err));
    if (r < 0 && r != -ECANCELED)
        cv_log(CV_LOG_WARN, "cold tier: shipping failed; retried at the next interval",
               "error=\"%s\" retry_in=%" PRId64 "s", err, s->interval_s);
    else if (st.shipped || st.removed)
        cv_log(CV_LOG_INFO, "cold tier: pass done",
               "shipped=%" PRIu64 " bytes=%" PRIu64 " removed=%" PRIu64, st.shipped,
               st.shipped_bytes, st.removed);
}

int cv_shipper_start(const cv_config *cfg, cv_shipper **ret, char *errbuf,
                     size_t errlen) {
    *ret = NULL;
    int64_t interval = cv_config_int(cfg, "cold.ship_interval_s");
    if (interval <= 0 || !*cv_config_str(cfg, "cold.target") ||
        !*cv_config_str(cfg, "log.dir"))
        return 0;
    cv_shipper *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->interval_s = interval;
    cv_cold_parse_window(cv_config_str(cfg, "cold.hot_window"), &s->hot_window_s);
    cv_cold_parse_window(cv_config_str(cfg, "cold.cache_keep"), &s->cache_keep_s);
    int r = cv_cli_cold_open(cfg, &s->cold, errbuf, errlen);
    if (r < 0) {
        free(s);
        return r;
    }
    if (!(s->log_dir = strdup(cv_config_str(cfg, "log.dir")))) {
        cv_cold_free(s->cold);
        free(s);
        return -ENOMEM;
    }
    r = cv_periodic_start("cv-cold-ship", 0, interval * 1000, pass, s, &s->thread, errbuf,
                          errlen);
    if (r < 0) {
        cv_cold_free(s->cold);
        free(s->log_dir);
        free(s);
        return r;
    }
    *ret = s;
    return 0;
}

cv_shipper *cv_shipper_stop(cv_shipper *s) {
    if (!s)
        return NULL;
    cv_periodic_stop(s->thread);
    cv_cold_free(s->cold);
    free(s->log_dir);
    free(s);
    return NULL;
}
