/*
 * chatvault report — activity per channel and overall over a time range:
 * messages per hour (per day past 8 days), distinct and top senders, peak
 * minutes, body sizes, rejects by reason, duplicates, store latency
 * percentiles. The numbers come from the rollups PostgreSQL keeps itself
 * (schemas/0004_reports.sql, queried by consumer/pg/pgreport.c) as one JSON
 * document, rendered by reportfmt.h.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "access.h"
#include "cli.h"
#include "pg/pgmigrate.h"
#include "pg/pgreport.h"
#include "reportfmt.h"
#include "select.h"
#include "util.h"

#define OUT_LIMIT ((size_t)256 << 20)
#define TOP_N 10

typedef struct report_opts {
    const char *since, *until, *output;
    cv_report_format format;
    cv_select sel; /* only its channel names and patterns */
} report_opts;

static int format_opt(const cv_cli_opt *opt, void *dest, const char *cmd,
                      const char *value) {
    if (cv_report_format_parse(value, dest) == 0)
        return 0;
    cv_error(cmd, "--format \"%s\": one of table, csv, json, html", value);
    return -1;
}

static const cv_cli_opt report_opts_table[] = {
    CV_OPT_STR("since", 0, "TIME",
               "from TIME (default 7d: seven days ago), rounded down to the hour: RFC "
               "3339 UTC, a date, a duration ago (90s, 15m, 2h, 7d) or Unix ms",
               report_opts, since),
    CV_OPT_STR("until", 0, "TIME", "before TIME (default now), rounded up to the hour",
               report_opts, until),
    CV_OPT_CALL_AT("channel", 0, "C",
                   "a channel, or a shell pattern (\"eu-*\"); repeatable", report_opts,
                   sel, cv_select_cli_opt, CV_SEL_CHANNEL),
    CV_OPT_CALL_AT("format", 0, "F",
                   "table (default), csv, json or html (one offline page with charts)",
                   report_opts, format, format_opt, 0),
    CV_OPT_STR("output", 'o', "FILE",
               "write to FILE (replaced when complete) instead of stdout", report_opts,
               output),
    CV_OPT_END,
};

static const cv_cli_spec report_spec = {
    .name = "report",
    .usage = "report [-c FILE] [--set key=value]... [--since TIME] [--until TIME]\n"
             "                        [--channel C]... [--format table|csv|json|html] "
             "[--output FILE]",
    .about = "Activity per channel and overall: messages per hour (per day over more "
             "than 8\ndays), distinct senders, top 10 senders, top 10 peak minutes, body "
             "sizes,\nrejects by reason, duplicates and replayed records, store latency "
             "p50/p90/p99\n(persisted_at - sent_at, from fixed 1-2-5 buckets: a "
             "percentile is the upper\nbound of its bucket). Read from rollups "
             "PostgreSQL keeps as messages arrive,\nin whole UTC hours, as the "
             "reader role (postgres.reader_conninfo).\n",
    .opts = report_opts_table,
    .max_args = 0,
};

static int write_out(const char *output, const cv_buf *b) {
    if (!output) {
        if (fwrite(b->data, 1, b->len, stdout) != b->len || fflush(stdout) != 0) {
            cv_error("report", "stdout: %s", strerror(errno));
            return -1;
        }
        return 0;
    }
    size_t l = strlen(output) + 8;
    char *tmp = malloc(l);
    if (!tmp) {
        cv_error("report", "out of memory");
        return -1;
    }
    snprintf(tmp, l, "%s.tmp", output);
    FILE *f = fopen(tmp, "w");
    int r = -1;
    if (!f)
        cv_error("report", "%s: %s", tmp, strerror(errno));
    else if (fwrite(b->data, 1, b->len, f) != b->len || fflush(f) != 0 ||
             fsync(fileno(f)) != 0) {
        cv_error("report", "%s: %s", tmp, strerror(errno));
        fclose(f);
        unlink(tmp);
    } else if (fclose(f) != 0 || rename(tmp, output) != 0) {
        cv_error("report", "%s: %s", output, strerror(errno));
        unlink(tmp);
    } else
        r = 0;
    free(tmp);
    return r;
}

/* The query the options ask for. 0, or -1 after the usage error. */
static int report_query(const report_opts *o, cv_pgreport_query *q) {
    *q = (cv_pgreport_query){.top = TOP_N};
    if (cv_parse_time_us(o->since, &q->since_us) < 0) {
        cv_error("report", "--since \"%s\": not a time (RFC 3339, a date, 7d, Unix ms)",
                 o->since);
        return -1;
    }
    q->until_us = cv_now_us();
    if (o->until && cv_parse_time_us(o->until, &q->until_us) < 0) {
        cv_error("report", "--until \"%s\": not a time (RFC 3339, a date, 7d, Unix ms)",
                 o->until);
        return -1;
    }
    if (q->since_us >= q->until_us) {
        cv_error("report", "--since must be before --until");
        return -1;
    }
    if (cv_select_check(&o->sel, "report") < 0)
        return -1;
    q->channels = (const char *const *)o->sel.channels;
    q->nchannels = o->sel.nchannels;
    return 0;
}

int cv_cmd_report(int argc, char **argv) {
    report_opts o = {.since = "7d", .format = CV_REPORT_TABLE};
    cv_select_init(&o.sel);
    cv_cli cli;
    cv_config *cfg = NULL;
    PGconn *conn = NULL;
    json_t *doc = NULL;
    cv_buf out;
    cv_buf_init(&out, OUT_LIMIT);
    cv_pgreport_query q;
    int rc = cv_cli_parse(&report_spec, argc, argv, &o, &cli);
    if (rc != CV_CLI_RUN)
        goto out;
    rc = CV_EXIT_USAGE;
    if (report_query(&o, &q) < 0 || !(cfg = cv_cli_load_config(&cli.config)))
        goto out;
    cv_audit_begin(cfg, CV_PG_READER, "report", argc, argv);
    rc = CV_EXIT_FAILURE;
    char err[1024];
    conn = cv_pg_connect(cv_access_conninfo(cfg, CV_PG_READER), err, sizeof(err));
    if (!conn) {
        cv_error("report", "%s (%s)", err, cv_access_conninfo_key(cfg, CV_PG_READER));
        goto out;
    }
    if (cv_pgmigrate_check(conn, err, sizeof(err)) < 0 ||
        cv_pgreport_build(conn, &q, &doc, err, sizeof(err)) < 0) {
        cv_error("report", "%s", err);
        goto out;
    }
    int r = cv_report_render(&out, doc, o.format);
    if (r < 0) {
        cv_error("report", "the report does not fit in %zu MiB", OUT_LIMIT >> 20);
        goto out;
    }
    if (write_out(o.output, &out) < 0)
        goto out;
    cv_audit_count("messages", (int64_t)json_integer_value(json_object_get(
                                   json_object_get(doc, "overall"), "messages")));
    cv_audit_count("channels",
                   (int64_t)json_array_size(json_object_get(doc, "channels")));
    rc = CV_EXIT_OK;
out:
    json_decref(doc);
    if (conn)
        PQfinish(conn);
    cv_buf_release(&out);
    cv_config_free(cfg);
    cv_select_release(&o.sel);
    return rc;
}
