/*
 * chatvault drill — a restore drill on demand (drill.h): a sample of the
 * log restored into a scratch database and checked row by row against the
 * log; pass or fail, with timing, recorded in chatvault.restore_drills.
 */
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "cli.h"
#include "drill.h"
#include "keyring.h"
#include "pg/pgmigrate.h"
#include "select.h"
#include "util.h"

typedef struct drill_opts {
    int64_t sample; /* -1: drill.sample */
    bool all, keep, json, quiet;
    const char *database;
    cv_cli_log_dirs ld;
    cv_select sel;
} drill_opts;

static const cv_cli_opt drill_opts_table[] = {
    CV_OPT_INT("sample", 0, "N",
               "restore N messages sampled evenly over the selection (default "
               "drill.sample)",
               drill_opts, sample, 1, 10000000),
    CV_OPT_FLAG("all", 0, "restore every selected message", drill_opts, all),
    CV_OPT_STR("database", 0, "NAME",
               "the scratch database (default drill.database, else the live one's name + "
               "_drill); it is dropped and created again",
               drill_opts, database),
    CV_OPT_FLAG("keep", 0, "leave the scratch database for inspection", drill_opts, keep),
    CV_OPT_FLAG("json", 0, "print the outcome as one JSON object", drill_opts, json),
    CV_OPT_LIST("log-dir", 0, "DIR",
                "read this log directory instead of log.dir (repeatable)", drill_opts,
                ld.dir, ld.n),
    CV_OPT_FLAG("quiet", 0, "no progress display", drill_opts, quiet),
    CV_OPT_END,
};

static const cv_cli_group drill_selection = {CV_SELECT_TITLE, cv_select_opts,
                                             offsetof(drill_opts, sel)};

static const cv_cli_spec drill_spec = {
    .name = "drill",
    .usage = "drill [-c FILE] [--set key=value]... [selection] [--sample N | --all]\n"
             "                       [--database NAME] [--keep] [--json]",
    .about =
        "A restore drill: restores a sample of the log's messages (or all of the\n"
        "selection) into a scratch database on the server of postgres.admin_conninfo,\n"
        "reads every restored row back and compares it with the log record it came\n"
        "from, and says pass or fail with the time each step took. The outcome is\n"
        "recorded in chatvault.restore_drills, where /metrics and the dashboard show\n"
        "the last successful one. Exit 0 passed; 3 failed (a row differs or is\n"
        "missing, the log is damaged, or the selection holds nothing); 2 the scratch\n"
        "database is the live one or one no drill made; 1 could not run.\n",
    .opts = drill_opts_table,
    .group = &drill_selection,
    .epilog = "The broker runs drills itself every drill.interval_s seconds.\n",
};

/* The selection in words, for the record. */
static void scope_words(const drill_opts *o, uint64_t sample, char *out, size_t outlen) {
    size_t at = 0;
    if (!o->sel.nchannels)
        at += (size_t)snprintf(out, outlen, "every channel");
    for (size_t i = 0; i < o->sel.nchannels && at < outlen; i++)
        at += (size_t)snprintf(out + at, outlen - at, "%s%s", i ? "," : "channel ",
                               o->sel.channels[i]);
    if (at < outlen &&
        (o->sel.partition >= 0 || o->sel.from_offset >= 0 || o->sel.to_offset >= 0 ||
         o->sel.since_us >= 0 || o->sel.until_us >= 0 || o->sel.has_ids))
        at += (size_t)snprintf(out + at, outlen - at, " (narrowed)");
    if (at < outlen) {
        if (sample)
            snprintf(out + at, outlen - at, ", sample of %" PRIu64, sample);
        else
            snprintf(out + at, outlen - at, ", all messages");
    }
}

static void print_outcome(const drill_opts *o, const cv_drill_result *r, const char *db) {
    if (o->json) {
        cv_buf b;
        cv_buf_init(&b, 1 << 16);
        cv_buf_printf(
            &b,
            "{\"passed\":%s,\"selected\":%" PRIu64 ",\"sampled\":%" PRIu64
            ",\"verified\":%" PRIu64 ",\"mismatched\":%" PRIu64 ",\"missing\":%" PRIu64
            ",\"extra\":%" PRIu64 ",\"channels\":%" PRIu64
            ",\"restore_s\":%.3f,\"verify_s\":%.3f,\"database\":",
            r->passed ? "true" : "false", r->selected, r->sampled, r->verified,
            r->mismatched, r->missing, r->extra, r->channels, r->restore_s, r->verify_s);
        cv_buf_json_string(&b, db, strlen(db));
        cv_buf_printf(&b, ",\"recorded\":%s,\"detail\":", r->recorded ? "true" : "false");
        cv_buf_json_string(&b, r->detail, strlen(r->detail));
        cv_buf_append(&b, "}\n", 3);
        fputs((const char *)b.data, stdout);
        cv_buf_release(&b);
        return;
    }
    printf("drill %s: %" PRIu64 " of %" PRIu64 " restored messages verified against the "
           "log (sampled from %" PRIu64 " in %" PRIu64
           " channels) in %s; restore %.1f s, "
           "verify %.1f s\n",
           r->passed ? "passed" : "FAILED", r->verified, r->sampled, r->selected,
           r->channels, db, r->restore_s, r->verify_s);
    if (!r->passed)
        printf("  why: %s\n", r->detail);
    if (o->keep)
        printf("  the scratch database %s is kept (--keep): drop it when done\n", db);
}

int cv_cmd_drill(int argc, char **argv) {
    drill_opts o = {.sample = -1};
    cv_select_init(&o.sel);
    cv_cli cli;
    cv_config *cfg = NULL;
    cv_keyring *keys = NULL;
    char err[1024], scratch[4096], db[256] = "?";
    int rc = cv_cli_parse(&drill_spec, argc, argv, &o, &cli);
    if (rc != CV_CLI_RUN)
        goto out;
    rc = CV_EXIT_USAGE;
    if (o.all && o.sample >= 0) {
        cv_error("drill", "give --sample or --all, not both");
        goto out;
    }
    if (cv_select_check(&o.sel, "drill") < 0 || !(cfg = cv_cli_load_config(&cli.config)))
        goto out;
    const char *live = cv_access_conninfo(cfg, CV_PG_ADMIN);
    const char *name = o.database ? o.database : cv_config_str(cfg, "drill.database");
    int e =
        cv_drill_scratch_conninfo(live, name, scratch, sizeof(scratch), err, sizeof(err));
    if (e < 0) {
        cv_error("drill", "%s (%s)", err, cv_access_conninfo_key(cfg, CV_PG_ADMIN));
        goto out;
    }
    cv_pg_conninfo_db(scratch, db, sizeof(db), err, sizeof(err));
    cv_audit_begin(cfg, CV_PG_ADMIN, "drill", argc, argv);
    rc = CV_EXIT_FAILURE;
    if (sodium_init() < 0)
        goto out;
    cv_cli_default_log_dir(&o.ld, cfg);
    if (!o.ld.n) {
        cv_error("drill", "no log to restore from: set log.dir or give --log-dir");
        rc = CV_EXIT_USAGE;
        goto out;
    }
    if (cv_cli_load_keys(cfg, &o.ld, &keys, err, sizeof(err)) < 0) {
        cv_error("drill", "%s (log.key_file)", err);
        goto out;
    }
    uint64_t sample = o.all          ? 0
                      : o.sample > 0 ? (uint64_t)o.sample
                                     : (uint64_t)cv_config_int(cfg, "drill.sample");
    char scope[512];
    scope_words(&o, sample, scope, sizeof(scope));
    cv_envelope_rules rules = cv_cli_envelope_rules(cfg);
    cv_drill_conf dc = {
        .live_conninfo = live,
        .scratch_conninfo = scratch,
        .log_dirs = o.ld.dir,
        .nlog_dirs = o.ld.n,
        .keys = keys,
        .rules = &rules,
        .sel = &o.sel,
        .scope = scope,
        .sample = sample,
        .keep = o.keep,
        .progress = !o.quiet && !o.json,
        .trigger = "command",
    };
    cv_drill_result res;
    e = cv_drill_run(&dc, &res, err, sizeof(err));
    cv_log(e < 0 || !res.passed ? CV_LOG_ERROR : CV_LOG_INFO, "drill done",
           "passed=%s selected=%" PRIu64 " sampled=%" PRIu64 " verified=%" PRIu64
           " mismatched=%" PRIu64 " missing=%" PRIu64 " restore_s=%.3f verify_s=%.3f "
           "recorded=%s database=%s",
           e == 0 && res.passed ? "true" : "false", res.selected, res.sampled,
           res.verified, res.mismatched, res.missing, res.restore_s, res.verify_s,
           res.recorded ? "true" : "false", db);
    cv_audit_count("sampled", (int64_t)res.sampled);
    cv_audit_count("verified", (int64_t)res.verified);
    if (e < 0) {
        cv_error("drill", "%s", err);
        /* a scratch database that is the live one, or another's */
        if (e == -EINVAL || e == -EPERM)
            rc = CV_EXIT_USAGE;
        goto out;
    }
    print_outcome(&o, &res, db);
    rc = res.passed ? CV_EXIT_OK : CV_EXIT_DIFFERENCES;
out:
    cv_keyring_free(keys);
    cv_config_free(cfg);
    cv_select_release(&o.sel);
    return rc;
}
