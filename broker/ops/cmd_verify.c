/*
 * chatvault verify — proves that PostgreSQL and the encrypted log agree
 * (consumer/history/verify.h says what is compared and what counts as a
 * difference) and, with --repair, fills each store from the other and
 * verifies again. Exit 0: they agree; 3: a difference was found (after
 * --repair: one remains); 1: a store could not be read; 2: usage.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "cli.h"
#include "history/verify.h"
#include "keyring.h"
#include "progress.h"
#include "select.h"
#include "util.h"

typedef struct vout {
    bool json;
    int pass;
    cv_select *sel;
    cv_progress prog;
    cv_buf line;
    /* text mode: a run of per-record findings printed as one range */
    bool run;
    cv_verify_kind rkind;
    char rtopic[256], rchannel[256], rid[256];
    int32_t rpart;
    int64_t rfirst, rlast;
} vout;

static bool want_channel(void *opaque, const char *channel) {
    vout *o = opaque;
    return cv_select_channel(o->sel, channel);
}

static void flush_run(vout *o) {
    if (!o->run)
        return;
    o->run = false;
    cv_progress_end(&o->prog);
    if (o->rfirst == o->rlast)
        printf("%s channel=%s topic=%s partition=%" PRId32 " offset=%" PRId64
               " message_id=%s\n",
               cv_verify_kind_name(o->rkind), o->rchannel, o->rtopic, o->rpart, o->rfirst,
               o->rid);
    else
        printf("%s channel=%s topic=%s partition=%" PRId32 " offsets=%" PRId64
               "..%" PRId64 " count=%" PRId64 "\n",
               cv_verify_kind_name(o->rkind), o->rchannel, o->rtopic, o->rpart, o->rfirst,
               o->rlast, o->rlast - o->rfirst + 1);
}

static void print_json_finding(vout *o, const cv_verify_finding *f) {
    cv_buf *b = &o->line;
    b->len = 0;
    cv_buf_printf(b, "{\"pass\":%d,\"kind\":\"%s\",\"channel\":", o->pass,
                  cv_verify_kind_name(f->kind));
    cv_buf_json_string(b, f->channel, strlen(f->channel));
    cv_buf_printf(b, ",\"topic\":");
    cv_buf_json_string(b, f->topic, strlen(f->topic));
    cv_buf_printf(b, ",\"partition\":%" PRId32, f->partition);
    if (f->offset >= 0)
        cv_buf_printf(b, ",\"offset\":%" PRId64 ",\"last_offset\":%" PRId64, f->offset,
                      f->last_offset);
    if (f->message_id) {
        cv_buf_printf(b, ",\"message_id\":");
        cv_buf_json_string(b, f->message_id, strlen(f->message_id));
    }
    if (f->detail) {
        cv_buf_printf(b, ",\"detail\":");
        cv_buf_json_string(b, f->detail, strlen(f->detail));
    }
    cv_buf_append(b, "}\n", 2);
    fwrite(b->data, 1, b->len, stdout);
}

static void on_finding(void *opaque, const cv_verify_finding *f) {
    vout *o = opaque;
    if (o->json) {
        print_json_finding(o, f);
        return;
    }
    bool per_record = f->kind == CV_VERIFY_ONLY_PG || f->kind == CV_VERIFY_ONLY_LOG;
    if (per_record && o->run && o->rkind == f->kind && o->rpart == f->partition &&
        strcmp(o->rtopic, f->topic) == 0 && f->offset == o->rlast + 1) {
        o->rlast = f->offset;
        return;
    }
    flush_run(o);
    if (per_record) {
        o->run = true;
        o->rkind = f->kind;
        o->rpart = f->partition;
        o->rfirst = o->rlast = f->offset;
        snprintf(o->rtopic, sizeof(o->rtopic), "%s", f->topic);
        snprintf(o->rchannel, sizeof(o->rchannel), "%s", f->channel);
        snprintf(o->rid, sizeof(o->rid), "%s", f->message_id ? f->message_id : "");
        return;
    }
    cv_progress_end(&o->prog);
    printf("%s channel=%s topic=%s partition=%" PRId32, cv_verify_kind_name(f->kind),
           f->channel, f->topic, f->partition);
    if (f->offset >= 0) {
        if (f->offset == f->last_offset)
            printf(" offset=%" PRId64, f->offset);
        else
            printf(" offsets=%" PRId64 "..%" PRId64, f->offset, f->last_offset);
    }
    if (f->message_id)
        printf(" message_id=%s", f->message_id);
    if (f->detail)
        printf(" detail=\"%s\"", f->detail);
    putchar('\n');
}

static void on_progress(void *opaque, const cv_verify_progress *p) {
    vout *o = opaque;
    char note[300];
    snprintf(note, sizeof(note), "%s%s/%" PRId32, p->repairing ? "repair " : "", p->topic,
             p->partition);
    cv_progress_update(&o->prog, p->messages_done, p->messages_total, note);
}

static void print_summary(vout *o, const cv_verify_stats *s, const char *what) {
    uint64_t diff = cv_verify_differences(s);
    cv_audit_count("differences", (int64_t)diff);
    cv_audit_count("matched", (int64_t)s->matched);
    cv_audit_count("repaired_postgres", (int64_t)s->repaired_pg);
    cv_audit_count("repaired_log", (int64_t)s->repaired_log);
    if (o->json) {
        printf("{\"pass\":%d,\"summary\":{\"partitions\":%" PRIu64 ",\"pg_rows\":%" PRIu64
               ",\"log_records\":%" PRIu64 ",\"matched\":%" PRIu64
               ",\"only_in_postgres\":%" PRIu64 ",\"only_in_log\":%" PRIu64
               ",\"different\":%" PRIu64 ",\"kafka_offsets\":%" PRIu64
               ",\"log_damaged\":%" PRIu64 ",\"log_segment_missing\":%" PRIu64
               ",\"duplicates\":%" PRIu64 ",\"gaps\":%" PRIu64 ",\"gap_offsets\":%" PRIu64
               ",\"repaired_postgres\":%" PRIu64 ",\"repaired_log\":%" PRIu64
               ",\"repair_skipped\":%" PRIu64 ",\"log_quarantined\":%" PRIu64
               ",\"expired_rows\":%" PRIu64 ",\"expired_records\":%" PRIu64
               ",\"log_erased_segments\":%" PRIu64 ",\"log_erased_records\":%" PRIu64
               "},\"differences\":%" PRIu64 ",\"clean\":%s}\n",
               o->pass, s->partitions, s->pg_rows, s->log_records, s->matched, s->only_pg,
               s->only_log, s->different, s->offsets, s->log_damaged, s->segments_missing,
               s->duplicates, s->gaps, s->gap_offsets, s->repaired_pg, s->repaired_log,
               s->repair_skipped, s->quarantined, s->expired_rows, s->expired_records,
               s->erased_segments, s->erased_records, diff, diff ? "false" : "true");
        fflush(stdout);
        return;
    }
    fflush(stdout);
    cv_log(diff ? CV_LOG_WARN : CV_LOG_INFO,
           diff ? "the stores differ" : "the stores agree",
           "pass=%s partitions=%" PRIu64 " pg_rows=%" PRIu64 " log_records=%" PRIu64
           " matched=%" PRIu64 " only_in_postgres=%" PRIu64 " only_in_log=%" PRIu64
           " different=%" PRIu64 " kafka_offsets=%" PRIu64 " log_damaged=%" PRIu64
           " log_segment_missing=%" PRIu64 " duplicates=%" PRIu64 " gaps=%" PRIu64
           " gap_offsets=%" PRIu64 " expired_rows=%" PRIu64
           " log_erased_segments=%" PRIu64 " log_erased_records=%" PRIu64 "%s%s",
           what, s->partitions, s->pg_rows, s->log_records, s->matched, s->only_pg,
           s->only_log, s->different, s->offsets, s->log_damaged, s->segments_missing,
           s->duplicates, s->gaps, s->gap_offsets, s->expired_rows, s->erased_segments,
           s->erased_records,
           diff && o->pass == 1 ? " next=\"run chatvault verify --repair\"" : "",
           s->expired_rows ? " note=\"rows of segments retention dropped remain: run "
                             "chatvault retention apply to finish\""
                           : "");
}

typedef struct verify_opts {
    bool repair, json, quiet;
    int64_t jobs;
    cv_cli_log_dirs ld;
    cv_select sel;
} verify_opts;

/* The other selection options, refused with a reason. */
static int whole_partitions(const cv_cli_opt *opt, void *dest, const char *cmd,
                            const char *value) {
    cv_error(cmd, "verify compares whole partitions: it takes --channel and --partition "
                  "only");
    return -1;
}

static const cv_cli_opt opts[] = {
    CV_OPT_FLAG("repair", 0,
                "fill PostgreSQL from the log and the log from PostgreSQL (into repair "
                "segments), then verify again; never deletes",
                verify_opts, repair),
    CV_OPT_FLAG("json", 0,
                "JSON Lines on stdout: one object per finding, then a summary object "
                "(\"pass\": 1, and 2 after --repair)",
                verify_opts, json),
    CV_OPT_LIST("log-dir", 0, "DIR",
                "read this log directory instead of log.dir; repeat for the directories "
                "of several broker instances (repairs go to the first)",
                verify_opts, ld.dir, ld.n),
    CV_OPT_INT("jobs", 0, "N",
               "compare N partitions at once, each with its own PostgreSQL connection "
               "(default 2)",
               verify_opts, jobs, 1, 64),
    CV_OPT_FLAG("quiet", 0, "no progress display", verify_opts, quiet),
    CV_OPT_CALL_AT("channel", 0, "C",
                   "only this channel, or a shell pattern (\"eu-*\"); repeatable",
                   verify_opts, sel, cv_select_cli_opt, CV_SEL_CHANNEL),
    CV_OPT_CALL_AT("partition", 0, "N", "only this Kafka partition", verify_opts, sel,
                   cv_select_cli_opt, CV_SEL_PARTITION),
    CV_OPT_CALL("from-offset", 0, "N", NULL, whole_partitions, 0),
    CV_OPT_CALL("to-offset", 0, "N", NULL, whole_partitions, 0),
    CV_OPT_CALL("since", 0, "TIME", NULL, whole_partitions, 0),
    CV_OPT_CALL("until", 0, "TIME", NULL, whole_partitions, 0),
    CV_OPT_CALL("time", 0, "WHICH", NULL, whole_partitions, 0),
    CV_OPT_CALL("ids", 0, "FILE", NULL, whole_partitions, 0),
    CV_OPT_END,
};

static const cv_cli_spec spec = {
    .name = "verify",
    .usage = "verify [-c FILE] [--set key=value]... [--repair] [--json]\n"
             "                        [--channel C]... [--partition N] "
             "[--log-dir DIR]...",
    .about =
        "Compares PostgreSQL (postgres.reader_conninfo, with --repair\n"
        "postgres.admin_conninfo; empty: postgres.conninfo) with the encrypted log\n"
        "(log.dir, log.key_file) per channel and partition, streaming both in offset\n"
        "order. Every log record is authenticated and its hash chain checked on the\n"
        "way.\n"
        "\n"
        "Differences (exit 3): only_in_postgres, only_in_log, different (message id,\n"
        "sender, sent_at, content type, reply_to or body digest), kafka_offsets (a\n"
        "consumer group's next offset not past its rows), log_damaged,\n"
        "log_segment_missing (a segment removed from the middle of a partition).\n"
        "A log record whose message id PostgreSQL holds from another offset is a\n"
        "duplicate, not a difference. Offsets neither store holds (gaps)\n"
        "are reported but are not a difference: records acked DUPLICATE are stored\n"
        "in neither store.\n",
    .opts = opts,
    .epilog = "A database filled by `chatvault import` is verified against the log of "
              "the\nsite it was exported from, for the channels exported (--channel): "
              "it has no\nchatvault.kafka_offsets rows, which is not a difference.\n",
};

/* One pass of the comparison (or the repair), its findings printed. 0, or
 * -1 after the error. */
static int verify_pass(vout *o, const cv_verify_conf *vc, const char *label, bool quiet,
                       cv_verify_stats *st) {
    char err[1024];
    cv_progress_init(&o->prog, label, !quiet);
    int r = cv_verify_run(vc, st, err, sizeof(err));
    flush_run(o);
    cv_progress_end(&o->prog);
    if (r < 0) {
        cv_error("verify", "%s", err);
        return -1;
    }
    return 0;
}

int cv_cmd_verify(int argc, char **argv) {
    verify_opts vo = {.jobs = 2};
    cv_select_init(&vo.sel);
    vout o = {.pass = 1, .sel = &vo.sel};
    cv_buf_init(&o.line, 1 << 20);
    cv_cli cli;
    cv_config *cfg = NULL;
    cv_keyring *keys = NULL;
    int rc = cv_cli_parse(&spec, argc, argv, &vo, &cli);
    if (rc != CV_CLI_RUN)
        goto out;
    rc = CV_EXIT_USAGE;
    o.json = vo.json;
    if (!(cfg = cv_cli_load_config(&cli.config)))
        goto out;
    cv_pg_role role = vo.repair ? CV_PG_ADMIN : CV_PG_READER;
    cv_audit_begin(cfg, role, vo.repair ? "verify --repair" : "verify", argc, argv);
    cv_cli_default_log_dir(&vo.ld, cfg);
    if (!vo.ld.n) {
        cv_error("verify", "no log to compare with: set log.dir (or give "
                           "--log-dir)");
        goto out;
    }
    char err[1024];
    if (cv_cli_load_keys(cfg, &vo.ld, &keys, err, sizeof(err)) < 0) {
        cv_error("verify", "%s (log.key_file)", err);
        goto out;
    }
    cv_envelope_rules rules = cv_cli_envelope_rules(cfg);
    cv_verify_conf vc = {
        .pg_conninfo = cv_access_conninfo(cfg, role),
        .log_dirs = vo.ld.dir,
        .nlog_dirs = vo.ld.n,
        .keys = keys,
        .rules = &rules,
        .log_segment_bytes = (uint64_t)cv_config_int(cfg, "log.segment_bytes"),
        .partition = vo.sel.partition,
        .jobs = (unsigned)vo.jobs,
        .repair = vo.repair,
        .opaque = &o,
        .want_channel = want_channel,
        .finding = on_finding,
        .progress = on_progress,
    };
    cv_verify_stats st;
    rc = CV_EXIT_FAILURE;
    if (verify_pass(&o, &vc, vo.repair ? "verify --repair" : "verify", vo.quiet, &st) < 0)
        goto out;
    print_summary(&o, &st, vo.repair ? "repair" : "verify");
    if (vo.repair) {
        cv_log(CV_LOG_INFO, "repaired",
               "postgres_rows=%" PRIu64 " log_records=%" PRIu64 " skipped=%" PRIu64
               " log_files_moved_aside=%" PRIu64,
               st.repaired_pg, st.repaired_log, st.repair_skipped, st.quarantined);
        o.pass = 2;
        vc.repair = false;
        if (verify_pass(&o, &vc, "verify", vo.quiet, &st) < 0)
            goto out;
        print_summary(&o, &st, "after-repair");
    }
    rc = cv_verify_differences(&st) ? CV_EXIT_DIFFERENCES : CV_EXIT_OK;
out:
    fflush(stdout);
    cv_keyring_free(keys);
    cv_config_free(cfg);
    cv_select_release(&vo.sel);
    cv_buf_release(&o.line);
    return rc;
}
