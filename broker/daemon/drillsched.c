/*
 * drillsched — see drillsched.h.
 */
#include "daemon/drillsched.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "access.h"
#include "cli.h"
#include "drill.h"
#include "pg/pgdrill.h"
#include "pg/pgmigrate.h"
#include "select.h"
#include "util.h"

#define REFRESH_MS 15000 /* how often the record is read */

struct cv_drillsched {
    const cv_config *cfg;
    const cv_keyring *keys;
    cv_metrics *metrics;
    int64_t interval_s;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_bool stop;
    PGconn *conn;        /* postgres.conninfo, for the record; NULL: not connected */
    bool refresh_failed; /* the last read of the record failed (logged once) */
    char scratch[4096];  /* the scratch database's conninfo */
};

/* Waits up to ms, or until stopped. True when stopped. */
static bool nap(cv_drillsched *s, int64_t ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->mu);
    while (!atomic_load(&s->stop) && pthread_cond_timedwait(&s->cv, &s->mu, &ts) == 0) {
    }
    pthread_mutex_unlock(&s->mu);
    return atomic_load(&s->stop);
}

/* The newest outcomes into the metrics. False when the record could not
 * be read (the last figures stay). */
static bool refresh(cv_drillsched *s, cv_drill_last *last) {
    char err[512];
    if (s->conn && PQstatus(s->conn) != CONNECTION_OK) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
    bool ok = s->conn ||
              (s->conn = cv_pg_connect_timeout(cv_config_str(s->cfg, "postgres.conninfo"),
                                               10, err, sizeof(err)));
    if (ok && cv_pgdrill_last(s->conn, last, err, sizeof(err)) < 0) {
        PQfinish(s->conn);
        s->conn = NULL;
        ok = false;
    }
    if (!ok) {
        if (!s->refresh_failed)
            cv_log(CV_LOG_WARN, "restore drill record unreadable (retrying)",
                   "error=\"%s\"", err);
        s->refresh_failed = true;
        return false;
    }
    s->refresh_failed = false;
    cv_metrics_drill md = {
        .interval_s = s->interval_s,
        .last_us = last->last_us,
        .last_success_us = last->last_success_us,
        .last_passed = last->last_passed,
        .last_seconds = last->last_seconds,
        .last_sampled = (int64_t)last->last_sampled,
    };
    snprintf(md.last_detail, sizeof(md.last_detail), "%s", last->last_detail);
    cv_metrics_set_drill(s->metrics, &md);
    return true;
}

static void run_drill(cv_drillsched *s) {
    const cv_config *cfg = s->cfg;
    char err[1024];
    const char *dirs[1] = {cv_config_str(cfg, "log.dir")};
    cv_envelope_rules rules = cv_cli_envelope_rules(cfg);
    cv_select all;
    cv_select_init(&all);
    uint64_t sample = (uint64_t)cv_config_int(cfg, "drill.sample");
    char scope[64];
    if (sample)
        snprintf(scope, sizeof(scope), "every channel, sample of %llu",
                 (unsigned long long)sample);
    else
        snprintf(scope, sizeof(scope), "every channel, all messages");
    cv_drill_conf dc = {
        .live_conninfo = cv_access_conninfo(cfg, CV_PG_ADMIN),
        .scratch_conninfo = s->scratch,
        .log_dirs = dirs,
        .nlog_dirs = 1,
        .keys = s->keys,
        .rules = &rules,
        .sel = &all,
        .scope = scope,
        .sample = sample,
        .trigger = "schedule",
        .stop = &s->stop,
    };
    cv_drill_result res;
    cv_log(CV_LOG_INFO, "restore drill started", "sample=%llu",
           (unsigned long long)sample);
    int e = cv_drill_run(&dc, &res, err, sizeof(err));
    if (e == -EBUSY || e == -ECANCELED)
        cv_log(CV_LOG_INFO, "restore drill not run", "reason=\"%s\"", err);
    else if (e < 0)
        cv_log(CV_LOG_ERROR, "restore drill could not run", "error=\"%s\" recorded=%s",
               err, res.recorded ? "true" : "false");
    else
        cv_log(res.passed ? CV_LOG_INFO : CV_LOG_ERROR,
               res.passed ? "restore drill passed" : "restore drill FAILED",
               "sampled=%llu verified=%llu selected=%llu restore_s=%.3f verify_s=%.3f "
               "detail=\"%s\"",
               (unsigned long long)res.sampled, (unsigned long long)res.verified,
               (unsigned long long)res.selected, res.restore_s, res.verify_s, res.detail);
    cv_select_release(&all);
}

static void *sched_main(void *arg) {
    cv_drillsched *s = arg;
    pthread_setname_np(pthread_self(), "cv-drill");
    int64_t start_ms = cv_now_us() / 1000;
    /* The first drill waits a little: the broker's own start comes first. */
    int64_t first_ms = s->interval_s * 1000 < 60000 ? s->interval_s * 1000 : 60000;
    int64_t refresh_ms = s->interval_s && s->interval_s * 1000 < REFRESH_MS
                             ? s->interval_s * 1000
                             : REFRESH_MS;
    int64_t tried_ms = 0; /* the last attempt: one per interval, run or not */
    do {
        cv_drill_last last;
        bool known = refresh(s, &last);
        int64_t now_ms = cv_now_us() / 1000;
        if (s->interval_s > 0 && known && now_ms - start_ms >= first_ms &&
            now_ms - last.last_us / 1000 >= s->interval_s * 1000 &&
            (!tried_ms || now_ms - tried_ms >= s->interval_s * 1000)) {
            tried_ms = now_ms;
            run_drill(s);
            if (!atomic_load(&s->stop))
                refresh(s, &last);
        }
    } while (!nap(s, refresh_ms));
    if (s->conn)
        PQfinish(s->conn);
    s->conn = NULL;
    return NULL;
}

int cv_drillsched_start(const cv_config *cfg, const cv_keyring *keys, cv_metrics *metrics,
                        cv_drillsched **ret, char *errbuf, size_t errlen) {
    cv_drillsched *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(errbuf, errlen, "out of memory");
        return -ENOMEM;
    }
    s->cfg = cfg;
    s->keys = keys;
    s->metrics = metrics;
    s->interval_s = cv_config_int(cfg, "drill.interval_s");
    if (s->interval_s > 0 && (!*cv_config_str(cfg, "log.dir") || !keys)) {
        snprintf(errbuf, errlen,
                 "drill.interval_s is set but log.dir is not: no log "
                 "to restore from");
        free(s);
        return -EINVAL;
    }
    if (s->interval_s > 0 &&
        cv_drill_scratch_conninfo(cv_access_conninfo(cfg, CV_PG_ADMIN),
                                  cv_config_str(cfg, "drill.database"), s->scratch,
                                  sizeof(s->scratch), errbuf, errlen) < 0) {
        free(s);
        return -EINVAL;
    }
    atomic_init(&s->stop, false);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    int e = pthread_create(&s->th, NULL, sched_main, s);
    if (e != 0) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        free(s);
        snprintf(errbuf, errlen, "cannot start the drill thread: %s", strerror(e));
        return -e;
    }
    *ret = s;
    return 0;
}

cv_drillsched *cv_drillsched_stop(cv_drillsched *s) {
    if (!s)
        return NULL;
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->stop, true);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->th, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    return NULL;
}
