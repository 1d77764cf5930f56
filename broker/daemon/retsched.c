/*
 * daemon/retsched.c — see retsched.h.
 */
#include "daemon/retsched.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "cli.h"
#include "cold/cold.h"
#include "daemon/periodic.h"
#include "retention.h"
#include "util.h"

struct cv_retsched {
    cv_periodic *thread;
    const cv_config *cfg;
    const cv_keyring *keys;
    cv_retention_rules rules;
    cv_cold *cold; /* cold.target's, or NULL */
    cv_metrics *metrics;
    cv_envelope_rules env;
    int64_t interval_s;
};

static void on_part(void *opaque, const cv_retention_part *p) {
    (void)opaque;
    if (p->segments)
        cv_log(CV_LOG_INFO, "retention: expired messages dropped",
               "channel=%s partition=%" PRId32 " class=%s segments=%" PRIu64
               " records=%" PRIu64 " bytes=%" PRIu64 " rows=%" PRIu64 " versions=%" PRIu64
               " first_offset=%" PRId64 " last_offset=%" PRId64,
               p->channel, p->partition, p->cls, p->segments, p->records, p->bytes,
               p->rows, p->versions, p->first_offset, p->last_offset);
}

static void pass(void *opaque, const atomic_bool *stop) {
    cv_retsched *s = opaque;
    char *argv[] = {"retention", "schedule", NULL};
    cv_audit_begin(s->cfg, CV_PG_ADMIN, "retention apply", 2, argv);
    cv_retention_conf c = {
        .log_dir = cv_config_str(s->cfg, "log.dir"),
        .keys = s->keys,
        .pg_conninfo = cv_access_conninfo(s->cfg, CV_PG_ADMIN),
        .rules = &s->rules,
        .cold = s->cold,
        .env = &s->env,
        .now_us = cv_now_us(),
        .apply = true,
        .stop = stop,
        .on_part = on_part,
    };
    cv_retention_stats st;
    char err[1024];
    int r = cv_retention_run(&c, &st, err, sizeof(err));
    cv_retention_audit_counts(&st);
    cv_metrics_retention mr = {.interval_s = s->interval_s,
                               .last_us = cv_now_us(),
                               .last_ok = r == 0,
                               .held = st.held};
    cv_metrics_retention_pass(s->metrics, &mr, st.segments, st.records, st.bytes,
                              st.rows);
    if (r == -EBUSY)
        cv_log(CV_LOG_INFO, "retention: pass skipped", "reason=\"%s\"", err);
    else if (r < 0)
        cv_log(CV_LOG_WARN, "retention: pass failed; tried again at the next interval",
               "error=\"%s\" retry_in=%" PRId64 "s", err, s->interval_s);
    if (r < 0)
        cv_audit_note_error(err);
    cv_audit_end(r < 0 ? CV_EXIT_FAILURE : CV_EXIT_OK);
}

int cv_retsched_start(const cv_config *cfg, const cv_keyring *keys, cv_metrics *metrics,
                      cv_retsched **ret, char *errbuf, size_t errlen) {
    *ret = NULL;
    int64_t interval = cv_config_int(cfg, "retention.interval_s");
    cv_retention_rules check;
    int r = cv_retention_rules_load(cfg, &check, errbuf, errlen); /* even when off */
    if (r < 0)
        return r;
    cv_retention_rules_release(&check);
    if (interval <= 0 || !*cv_config_str(cfg, "log.dir") || !keys)
        return 0;
    cv_retsched *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->cfg = cfg;
    s->keys = keys;
    s->metrics = metrics;
    s->interval_s = interval;
    s->env = cv_cli_envelope_rules(cfg);
    r = cv_retention_rules_load(cfg, &s->rules, errbuf, errlen);
    if (r == 0 && *cv_config_str(cfg, "cold.target"))
        r = cv_cli_cold_open(cfg, &s->cold, errbuf, errlen);
    if (r == 0)
        r = cv_periodic_start("cv-retention",
                              interval * 1000 < 60000 ? interval * 1000 : 60000,
                              interval * 1000, pass, s, &s->thread, errbuf, errlen);
    if (r < 0) {
        cv_retention_rules_release(&s->rules);
        cv_cold_free(s->cold);
        free(s);
        return r;
    }
    *ret = s;
    return 0;
}

cv_retsched *cv_retsched_stop(cv_retsched *s) {
    if (!s)
        return NULL;
    cv_periodic_stop(s->thread);
    cv_retention_rules_release(&s->rules);
    cv_cold_free(s->cold);
    free(s);
    return NULL;
}
