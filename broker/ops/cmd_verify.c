/*
 * chatvault verify — proves that PostgreSQL and the encrypted log agree
 * (consumer/history/verify.h says what is compared and what counts as a
 * difference) and, with --repair, fills each store from the other and
 * verifies again. Exit 0: they agree; 3: a difference was found (after
 * --repair: one remains); 1: a store could not be read; 2: usage.
 */
#include <getopt.h>
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

enum { O_JSON = 0x2000, O_REPAIR, O_LOG_DIR, O_QUIET, O_JOBS };

typedef struct vout {
    bool json;
    int pass;
    cv_select sel;
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
    return cv_select_channel(&o->sel, channel);
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
               "},\"differences\":%" PRIu64 ",\"clean\":%s}\n",
               o->pass, s->partitions, s->pg_rows, s->log_records, s->matched, s->only_pg,
               s->only_log, s->different, s->offsets, s->log_damaged, s->segments_missing,
               s->duplicates, s->gaps, s->gap_offsets, s->repaired_pg, s->repaired_log,
               s->repair_skipped, s->quarantined, diff, diff ? "false" : "true");
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
           " gap_offsets=%" PRIu64 "%s",
           what, s->partitions, s->pg_rows, s->log_records, s->matched, s->only_pg,
           s->only_log, s->different, s->offsets, s->log_damaged, s->segments_missing,
           s->duplicates, s->gaps, s->gap_offsets,
           diff && o->pass == 1 ? " next=\"run chatvault verify --repair\"" : "");
}

static void usage(FILE *out) {
    fprintf(out, "usage: chatvault verify [-c FILE] [--set key=value]... [--repair] "
                 "[--json]\n"
                 "                        [--channel C]... [--partition N] "
                 "[--log-dir DIR]...\n\n"
                 "Compares PostgreSQL (postgres.conninfo) with the encrypted log "
                 "(log.dir,\nlog.key_file) per channel and partition, streaming both "
                 "in offset order.\nEvery log record is authenticated and its hash "
                 "chain checked on the way.\n\n"
                 "Differences (exit 3): only_in_postgres, only_in_log, different "
                 "(message id,\nsender, sent_at, content type, reply_to or body "
                 "digest), kafka_offsets (a\nconsumer group's next offset not past "
                 "its rows), log_damaged,\nlog_segment_missing (a segment removed "
                 "from the middle of a partition).\nA log record "
                 "whose message id PostgreSQL holds from another offset is a\n"
                 "duplicate, not a difference. Offsets neither store holds (gaps)\n"
                 "are reported but are not a difference: records acked DUPLICATE "
                 "are stored\nin neither store.\n\n"
                 "options:\n"
                 "      --repair          fill PostgreSQL from the log and the log "
                 "from PostgreSQL\n"
                 "                        (into repair segments), then verify "
                 "again; never deletes\n"
                 "      --json            JSON Lines on stdout: one object per "
                 "finding, then a\n"
                 "                        summary object (\"pass\": 1, and 2 after "
                 "--repair)\n"
                 "      --log-dir DIR     read this log directory instead of "
                 "log.dir; repeat for\n"
                 "                        the directories of several broker "
                 "instances (repairs go\n"
                 "                        to the first)\n"
                 "      --jobs N          compare N partitions at once, each with "
                 "its own\n"
                 "                        PostgreSQL connection (default 2)\n"
                 "      --quiet           no progress display\n"
                 "      --channel C       only this channel, or a shell pattern "
                 "(\"eu-*\");\n"
                 "                        repeatable\n"
                 "      --partition N     only this Kafka partition\n"
                 "  -c, --config FILE     configuration file\n"
                 "      --set key=value   configuration override\n\n"
                 "A database filled by `chatvault import` is verified against the "
                 "log of the\nsite it was exported from, for the channels exported "
                 "(--channel): it has no\nchatvault.kafka_offsets rows, which is "
                 "not a difference.\n");
}

int cv_cmd_verify(int argc, char **argv) {
    static const struct option opts[] = {CV_COMMON_LONGOPTS,
                                         CV_SELECT_LONGOPTS,
                                         {"json", no_argument, NULL, O_JSON},
                                         {"repair", no_argument, NULL, O_REPAIR},
                                         {"log-dir", required_argument, NULL, O_LOG_DIR},
                                         {"quiet", no_argument, NULL, O_QUIET},
                                         {"jobs", required_argument, NULL, O_JOBS},
                                         {NULL, 0, NULL, 0}};
    cv_cli_config cli = {0};
    vout o = {.pass = 1};
    unsigned jobs = 2;
    cv_select_init(&o.sel);
    cv_buf_init(&o.line, 1 << 20);
    cv_cli_log_dirs ld = {0};
    bool repair = false, quiet = false;
    int opt, rc = CV_EXIT_USAGE;
    cv_config *cfg = NULL;
    cv_keyring *keys = NULL;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        int r = cv_cli_common_opt(&cli, opt, optarg);
        if (r < 0)
            goto out;
        if (r)
            continue;
        r = cv_select_opt(&o.sel, "verify", opt, optarg);
        if (r < 0)
            goto out;
        if (r)
            continue;
        switch (opt) {
        case 'h':
            usage(stdout);
            rc = CV_EXIT_OK;
            goto out;
        case O_JSON:
            o.json = true;
            break;
        case O_REPAIR:
            repair = true;
            break;
        case O_QUIET:
            quiet = true;
            break;
        case O_JOBS: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 64) {
                cv_error("verify", "--jobs: \"%s\" is not a number from 1 to 64", optarg);
                goto out;
            }
            jobs = (unsigned)v;
            break;
        }
        case O_LOG_DIR:
            if (cv_cli_add_log_dir(&ld, "verify", optarg) < 0)
                goto out;
            break;
        default:
            usage(stderr);
            goto out;
        }
    }
    if (optind < argc) {
        cv_error("verify", "unexpected argument \"%s\"", argv[optind]);
        goto out;
    }
    if (o.sel.has_ids || o.sel.from_offset >= 0 || o.sel.to_offset >= 0 ||
        o.sel.since_us >= 0 || o.sel.until_us >= 0) {
        cv_error("verify", "verify compares whole partitions: it takes "
                           "--channel and --partition only");
        goto out;
    }
    if (!(cfg = cv_cli_load_config(&cli)))
        goto out;
    cv_pg_role role = repair ? CV_PG_ADMIN : CV_PG_READER;
    cv_audit_begin(cfg, role, repair ? "verify --repair" : "verify", argc, argv);
    cv_cli_default_log_dir(&ld, cfg);
    if (!ld.n) {
        cv_error("verify", "no log to compare with: set log.dir (or give "
                           "--log-dir)");
        goto out;
    }
    char err[1024];
    if (cv_keyring_load(cv_config_str(cfg, "log.key_file"), &keys, err, sizeof(err)) <
        0) {
        cv_error("verify", "%s (log.key_file)", err);
        goto out;
    }
    cv_envelope_rules rules = {
        .topic_prefix = cv_config_str(cfg, "topics.prefix"),
        .max_body_bytes = (size_t)cv_config_int(cfg, "limits.max_body_bytes"),
        .ack_topic = cv_config_str(cfg, "topics.acks"),
        .dlq_topic = cv_config_str(cfg, "topics.dlq"),
    };
    cv_verify_conf vc = {
        .pg_conninfo = cv_access_conninfo(cfg, role),
        .log_dirs = ld.dir,
        .nlog_dirs = ld.n,
        .keys = keys,
        .rules = &rules,
        .log_segment_bytes = (uint64_t)cv_config_int(cfg, "log.segment_bytes"),
        .partition = o.sel.partition,
        .jobs = jobs,
        .repair = repair,
        .opaque = &o,
        .want_channel = want_channel,
        .finding = on_finding,
        .progress = on_progress,
    };
    cv_verify_stats st;
    cv_progress_init(&o.prog, repair ? "verify --repair" : "verify", !quiet);
    int r = cv_verify_run(&vc, &st, err, sizeof(err));
    flush_run(&o);
    cv_progress_end(&o.prog);
    if (r < 0) {
        cv_error("verify", "%s", err);
        rc = CV_EXIT_FAILURE;
        goto out;
    }
    print_summary(&o, &st, repair ? "repair" : "verify");
    if (repair) {
        cv_log(CV_LOG_INFO, "repaired",
               "postgres_rows=%" PRIu64 " log_records=%" PRIu64 " skipped=%" PRIu64
               " log_files_moved_aside=%" PRIu64,
               st.repaired_pg, st.repaired_log, st.repair_skipped, st.quarantined);
        o.pass = 2;
        vc.repair = false;
        cv_progress_init(&o.prog, "verify", !quiet);
        r = cv_verify_run(&vc, &st, err, sizeof(err));
        flush_run(&o);
        cv_progress_end(&o.prog);
        if (r < 0) {
            cv_error("verify", "%s", err);
            rc = CV_EXIT_FAILURE;
            goto out;
        }
        print_summary(&o, &st, "after-repair");
    }
    rc = cv_verify_differences(&st) ? CV_EXIT_DIFFERENCES : CV_EXIT_OK;
out:
    fflush(stdout);
    cv_keyring_free(keys);
    cv_config_free(cfg);
    cv_select_release(&o.sel);
    cv_buf_release(&o.line);
    return rc;
}
