/*
 * chatvault retention — what each channel's retention class keeps, what
 * would go (plan), dropping it from both stores (apply), and legal holds
 * (hold, release, holds). The engine is retention.h.
 */
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "access.h"
#include "cli.h"
#include "cold/cold.h"
#include "keyring.h"
#include "pg/pgmigrate.h"
#include "pg/pgretention.h"
#include "progress.h"
#include "retention.h"
#include "select.h"
#include "util.h"

#define MAX_CHANNELS 64

typedef struct ret_opts {
    const char *channel[MAX_CHANNELS];
    size_t nchannels;
    const char *reason, *log_dir, *now;
    bool json, quiet, all;
} ret_opts;

static const cv_cli_opt opts[] = {
    CV_OPT_LIST(
        "channel", 0, "NAME",
        "(plan, apply) only this channel (repeatable); (hold, release) the channel "
        "or shell pattern",
        ret_opts, channel, nchannels),
    CV_OPT_STR("reason", 0, "TEXT", "(hold) why, for the record (required)", ret_opts,
               reason),
    CV_OPT_FLAG("json", 0, "(plan, apply, holds) one JSON object per line", ret_opts,
                json),
    CV_OPT_STR("log-dir", 0, "DIR", "this log directory instead of log.dir", ret_opts,
               log_dir),
    CV_OPT_STR("now", 0, "TIME",
               "(plan) judge ages as of TIME (RFC 3339 or Unix seconds) instead of now",
               ret_opts, now),
    CV_OPT_FLAG("quiet", 0, "no progress display", ret_opts, quiet),
    CV_OPT_END,
};

static const cv_cli_spec spec = {
    .name = "retention",
    .usage = "retention plan    [options] [--channel NAME]...\n"
             "       chatvault retention apply   [options] [--channel NAME]...\n"
             "       chatvault retention hold    --channel NAME|PATTERN --reason TEXT\n"
             "       chatvault retention release --channel NAME|PATTERN\n"
             "       chatvault retention holds   [--json]",
    .about =
        "plan     per channel partition: its class, what has expired (log segments,\n"
        "         records, bytes, PostgreSQL rows) and what is kept; changes nothing\n"
        "apply    drop it: each expired sealed log segment is recorded as dropped\n"
        "         (authenticated with the log key), PostgreSQL's rows at its Kafka\n"
        "         coordinates are deleted, then the file is removed; verify passes\n"
        "         after it. Safe to run again after a crash: it finishes the job\n"
        "hold     place a legal hold: nothing of the channels it names expires\n"
        "release  lift a hold\n"
        "holds    list the holds in place\n"
        "\n"
        "A segment goes when every record in it is older than its channel's class\n"
        "keeps (by Kafka timestamp) and no record names a class of its own that\n"
        "keeps it longer (ChatMessage.retention_class). The last segment of each\n"
        "partition is never dropped. Every plan, apply, hold and release is audited.\n",
    .opts = opts,
    .config_keys = "log.dir, log.key_file, postgres.admin_conninfo, retention.classes, "
                   "retention.channels, retention.default_class, cold.target",
    .epilog = "Exit codes: 0 ok, 1 runtime failure (PostgreSQL unreachable, a damaged\n"
              "log segment: see chatvault log check), 2 usage or config error.\n",
};

typedef struct run {
    const ret_opts *o;
    const char *name;
    cv_progress prog;
} run;

static const char *plural(uint64_t n) {
    return n == 1 ? "" : "s";
}

static void on_progress(void *opaque, uint64_t done, uint64_t total, const char *topic,
                        int32_t partition) {
    run *rn = opaque;
    char note[320] = "";
    if (topic)
        snprintf(note, sizeof(note), "%s-%" PRId32, topic, partition);
    cv_progress_update(&rn->prog, done, total, note);
}

static void on_part(void *opaque, const cv_retention_part *p) {
    run *rn = opaque;
    char keep[32];
    cv_retention_format_keep(p->keep_s, keep, sizeof(keep));
    if (rn->o->json) {
        cv_buf b;
        cv_buf_init(&b, 1 << 16);
        cv_buf_append(&b, "{\"channel\":", 11);
        cv_buf_json_string(&b, p->channel, strlen(p->channel));
        cv_buf_printf(&b, ",\"topic\":");
        cv_buf_json_string(&b, p->topic, strlen(p->topic));
        cv_buf_printf(&b, ",\"partition\":%" PRId32 ",\"class\":", p->partition);
        cv_buf_json_string(&b, p->cls, strlen(p->cls));
        cv_buf_printf(&b, ",\"retention\":\"%s\",\"held\":", keep);
        if (p->held_by)
            cv_buf_json_string(&b, p->held_by, strlen(p->held_by));
        else
            cv_buf_printf(&b, "null");
        cv_buf_printf(&b,
                      ",\"segments\":%" PRIu64 ",\"records\":%" PRIu64
                      ",\"bytes\":%" PRIu64 ",\"rows\":%" PRIu64 ",\"versions\":%" PRIu64
                      ",\"kept_for_messages\":%" PRIu64 ",\"pending\":%" PRIu64
                      ",\"first_offset\":%" PRId64 ",\"last_offset\":%" PRId64 "}\n",
                      p->segments, p->records, p->bytes, p->rows, p->versions,
                      p->kept_for_messages, p->pending, p->first_offset, p->last_offset);
        cv_progress_update(&rn->prog, 0, 0, NULL);
        fputs((const char *)b.data, stdout);
        cv_buf_release(&b);
        return;
    }
    printf("%-24s %4" PRId32 "  %-10s %-8s ", p->channel, p->partition, p->cls, keep);
    if (p->held_by)
        printf("held (%s): nothing expires\n", p->held_by);
    else if (!p->segments)
        printf("nothing expired%s\n",
               p->kept_for_messages ? " (some kept for key messages)" : "");
    else
        printf("%" PRIu64 " segment%s, %" PRIu64 " record%s, %" PRIu64
               " bytes (offsets %" PRId64 "..%" PRId64 "); %" PRIu64 " rows + %" PRIu64
               " versions in PostgreSQL%s\n",
               p->segments, plural(p->segments), p->records, plural(p->records), p->bytes,
               p->first_offset, p->last_offset, p->rows, p->versions,
               p->kept_for_messages ? "; some kept for key messages" : "");
}

static int holds_cmd(const char *sub, const ret_opts *o, const cv_config *cfg,
                     const char *name) {
    char err[1024];
    bool change = strcmp(sub, "holds") != 0;
    if (change && (o->nchannels != 1 || !*o->channel[0])) {
        cv_error(name, "give the channel (or shell pattern) with --channel, once");
        return CV_EXIT_USAGE;
    }
    if (strcmp(sub, "hold") == 0 && (!o->reason || !*o->reason)) {
        cv_error(name, "a hold needs --reason TEXT (kept with it, for the record)");
        return CV_EXIT_USAGE;
    }
    cv_pg_role role = change ? CV_PG_ADMIN : CV_PG_READER;
    PGconn *conn = cv_pg_connect(cv_access_conninfo(cfg, role), err, sizeof(err));
    if (!conn) {
        cv_error(name, "%s (%s)", err, cv_access_conninfo_key(cfg, role));
        return CV_EXIT_FAILURE;
    }
    int rc = CV_EXIT_OK;
    if (strcmp(sub, "hold") == 0) {
        char user[128];
        int r =
            cv_pgretention_hold(conn, o->channel[0], o->reason,
                                cv_access_os_user(user, sizeof(user)), err, sizeof(err));
        if (r < 0) {
            cv_error(name, "%s", err);
            rc = CV_EXIT_FAILURE;
        } else {
            cv_audit_count("placed", r);
            printf(r ? "hold placed on %s: nothing of it expires until it is released\n"
                     : "a hold on %s is in place already (unchanged)\n",
                   o->channel[0]);
        }
    } else if (strcmp(sub, "release") == 0) {
        int r = cv_pgretention_release(conn, o->channel[0], err, sizeof(err));
        if (r < 0) {
            cv_error(name, "%s", err);
            rc = CV_EXIT_FAILURE;
        } else if (r == 0) {
            cv_error(name,
                     "no hold is placed on \"%s\" itself (a hold is released by the name "
                     "or pattern it was placed on; chatvault retention holds lists them)",
                     o->channel[0]);
            rc = CV_EXIT_USAGE;
        } else {
            cv_audit_count("released", 1);
            printf("hold on %s released: it expires by its class again\n", o->channel[0]);
        }
    } else {
        cv_hold_list l;
        if (cv_pgretention_holds(conn, &l, err, sizeof(err)) < 0) {
            cv_error(name, "%s", err);
            rc = CV_EXIT_FAILURE;
        } else {
            if (!o->json && l.n == 0)
                printf("no holds\n");
            for (size_t i = 0; i < l.n; i++) {
                const cv_hold *h = &l.holds[i];
                if (!o->json) {
                    printf("%-24s held %s by %s: %s\n", h->channel, h->held_at,
                           h->held_by, h->reason);
                    continue;
                }
                cv_buf b;
                cv_buf_init(&b, 1 << 16);
                const char *f[4] = {h->channel, h->reason, h->held_by, h->held_at};
                const char *k[4] = {"channel", "reason", "held_by", "held_at"};
                for (int j = 0; j < 4; j++) {
                    cv_buf_printf(&b, "%s\"%s\":", j ? "," : "{", k[j]);
                    cv_buf_json_string(&b, f[j], strlen(f[j]));
                }
                cv_buf_append(&b, "}\n", 3);
                fputs((const char *)b.data, stdout);
                cv_buf_release(&b);
            }
            cv_pgretention_holds_free(&l);
        }
    }
    PQfinish(conn);
    return rc;
}

int cv_cmd_retention(int argc, char **argv) {
    static const char *const subs[] = {"plan", "apply", "hold", "release", "holds", NULL};
    char name[24];
    cv_cli_spec sub_spec;
    int started =
        cv_cli_subcommand(&spec, argc, argv, subs, name, sizeof(name), &sub_spec);
    if (started != CV_CLI_RUN)
        return started;
    const char *sub = argv[1];
    ret_opts o = {0};
    cv_cli cli;
    int parsed = cv_cli_parse(&sub_spec, argc - 1, argv + 1, &o, &cli);
    if (parsed != CV_CLI_RUN)
        return parsed;
    bool planning = strcmp(sub, "plan") == 0, applying = strcmp(sub, "apply") == 0;
    if (o.reason && strcmp(sub, "hold") != 0) {
        cv_error(name, "--reason is an option of retention hold");
        return CV_EXIT_USAGE;
    }
    if (o.now && !planning) {
        cv_error(name, "--now is an option of retention plan");
        return CV_EXIT_USAGE;
    }
    int64_t now_us = cv_now_us();
    if (o.now && cv_parse_time_us(o.now, &now_us) < 0) {
        cv_error(name,
                 "--now %s: not a time (RFC 3339 such as 2026-12-01T00:00:00Z, or "
                 "Unix seconds)",
                 o.now);
        return CV_EXIT_USAGE;
    }
    cv_config *cfg = cv_cli_load_config(&cli.config);
    if (!cfg)
        return CV_EXIT_USAGE;
    char err[1024];
    cv_retention_rules rules;
    if (cv_retention_rules_load(cfg, &rules, err, sizeof(err)) < 0) {
        cv_error(name, "%s", err);
        cv_config_free(cfg);
        return CV_EXIT_USAGE;
    }
    int rc;
    if (!planning && !applying) {
        if (strcmp(sub, "holds") != 0)
            cv_audit_begin(cfg, CV_PG_ADMIN,
                           strcmp(sub, "hold") == 0 ? "retention hold"
                                                    : "retention release",
                           argc, argv);
        rc = holds_cmd(sub, &o, cfg, name);
        goto out;
    }
    rc = CV_EXIT_FAILURE;
    cv_keyring *keys = NULL;
    if (sodium_init() < 0)
        goto out;
    cv_cli_log_dirs ld = {.n = 0};
    if (o.log_dir)
        ld.dir[ld.n++] = o.log_dir;
    if (cv_cli_load_keys(cfg, &ld, &keys, err, sizeof(err)) < 0) {
        cv_error(name, "%s", err);
        rc = CV_EXIT_USAGE;
        goto out;
    }
    cv_audit_begin(cfg, applying ? CV_PG_ADMIN : CV_PG_READER,
                   applying ? "retention apply" : "retention plan", argc, argv);
    cv_cold *cold = NULL;
    if (applying && *cv_config_str(cfg, "cold.target") &&
        cv_cli_cold_open(cfg, &cold, err, sizeof(err)) < 0) {
        cv_error(name, "%s", err);
        cv_keyring_free(keys);
        rc = CV_EXIT_USAGE;
        goto out;
    }
    cv_envelope_rules env = cv_cli_envelope_rules(cfg);
    run rn = {.o = &o, .name = name};
    cv_progress_init(&rn.prog, applying ? "retention apply" : "retention plan",
                     !o.quiet && !o.json);
    cv_retention_conf rc_conf = {
        .log_dir = o.log_dir ? o.log_dir : cv_config_str(cfg, "log.dir"),
        .keys = keys,
        .pg_conninfo = cv_access_conninfo(cfg, applying ? CV_PG_ADMIN : CV_PG_READER),
        .rules = &rules,
        .cold = cold,
        .env = &env,
        .now_us = now_us,
        .apply = applying,
        .channels = o.channel,
        .nchannels = o.nchannels,
        .opaque = &rn,
        .on_part = on_part,
        .on_progress = on_progress,
    };
    cv_retention_stats st;
    int r = cv_retention_run(&rc_conf, &st, err, sizeof(err));
    cv_progress_end(&rn.prog);
    cv_retention_audit_counts(&st);
    if (r < 0) {
        cv_error(name, "%s", err);
    } else {
        rc = CV_EXIT_OK;
        if (!o.json)
            printf("%s: %" PRIu64 " segment%s, %" PRIu64 " record%s, %" PRIu64
                   " bytes of the log and %" PRIu64 " rows + %" PRIu64
                   " versions of PostgreSQL %s; %" PRIu64 " partitions, %" PRIu64
                   " held%s\n",
                   name, st.segments, plural(st.segments), st.records, plural(st.records),
                   st.bytes, st.rows, st.versions, applying ? "dropped" : "would go",
                   st.partitions, st.held,
                   !st.pending ? ""
                   : applying  ? " (with what an earlier run left unfinished)"
                               : " (with what an earlier run left unfinished: pending)");
    }
    cv_keyring_free(keys);
    cv_cold_free(cold);
out:
    cv_retention_rules_release(&rules);
    cv_config_free(cfg);
    return rc;
}
