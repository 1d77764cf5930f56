/*
 * chatvault audit — lists the audit log (chatvault.audit): who ran which
 * operator command, when, as which database role, with which arguments,
 * counts and outcome. Reads with postgres.reader_conninfo.
 */
#include <getopt.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "cli.h"
#include "pg/pgaudit.h"
#include "pg/pgmigrate.h"
#include "select.h"

static void usage(FILE *out) {
    fprintf(
        out,
        "usage: chatvault audit [-c FILE] [--set key=value]... [--since TIME]\n"
        "                       [--command NAME] [--limit N] [--json]\n\n"
        "Lists operator actions recorded in chatvault.audit, newest first: when each\n"
        "started (UTC), how long it ran, the OS user and database role, the command\n"
        "and its arguments (secrets redacted), and its outcome with counts. An\n"
        "action that never ended (its process was killed) shows \"running\".\n"
        "Recorded: export, import, replay, verify (and --repair), log cat, and\n"
        "keygen on an existing key file (a key rotation).\n\n"
        "options:\n"
        "      --since TIME      from TIME: RFC 3339 UTC, a date, a duration ago\n"
        "                        (90s, 15m, 2h, 7d) or Unix ms\n"
        "      --command NAME    only this command (its first word, e.g. verify)\n"
        "      --limit N         at most N actions (default 100)\n"
        "      --json            one JSON object per line instead of a table\n"
        "  -c, --config FILE     configuration file\n"
        "      --set key=value   configuration override\n");
}

static json_t *json_or_string(const char *text) {
    json_t *j = json_loads(text, JSON_DECODE_ANY, NULL);
    return j ? j : json_string(text);
}

static void print_json(const cv_audit_action *a) {
    json_t *o = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:s, s:o, s:s}", "id", a->id, "started_at",
        a->started_at, "os_user", a->os_user, "db_role", a->db_role, "host", a->host,
        "command", a->command, "arguments", json_or_string(a->arguments_json), "result",
        a->result, "counts", json_or_string(a->counts_json), "detail", a->detail);
    if (o && *a->seconds)
        json_object_set_new(o, "seconds", json_real(strtod(a->seconds, NULL)));
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(o);
}

/* counts {"a":1,"b":2} as "a=1 b=2" */
static void print_counts(const char *counts_json) {
    json_t *c = json_loads(counts_json, 0, NULL);
    const char *k;
    json_t *v;
    const char *sep = "";
    json_object_foreach(c, k, v) {
        if (json_is_integer(v))
            printf("%s%s=%" JSON_INTEGER_FORMAT, sep, k, json_integer_value(v));
        sep = " ";
    }
    json_decref(c);
}

static void print_table(const cv_audit_list *l) {
    printf("%-24s %8s  %-10s %-14s %-16s %-10s %s\n", "STARTED (UTC)", "SECONDS", "USER",
           "DB ROLE", "COMMAND", "RESULT", "COUNTS / DETAIL");
    for (size_t i = 0; i < l->n; i++) {
        const cv_audit_action *a = &l->actions[i];
        printf("%-24s %8s  %-10s %-14s %-16s %-10s ", a->started_at,
               *a->seconds ? a->seconds : "-", a->os_user, a->db_role, a->command,
               a->result);
        print_counts(a->counts_json);
        if (*a->detail)
            printf("%s%s", strcmp(a->counts_json, "{}") ? "  " : "", a->detail);
        printf("\n");
    }
}

int cv_cmd_audit(int argc, char **argv) {
    enum { OPT_SINCE = 1000, OPT_COMMAND, OPT_LIMIT, OPT_JSON };
    static const struct option opts[] = {
        CV_COMMON_LONGOPTS,
        {"since", required_argument, NULL, OPT_SINCE},
        {"command", required_argument, NULL, OPT_COMMAND},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"json", no_argument, NULL, OPT_JSON},
        {NULL, 0, NULL, 0}};
    cv_cli_config cli = {0};
    cv_audit_filter f = {.since_us = -1, .limit = 100};
    bool json = false;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        int r = cv_cli_common_opt(&cli, opt, optarg);
        if (r < 0)
            return CV_EXIT_USAGE;
        if (r)
            continue;
        char *end;
        switch (opt) {
        case 'h':
            usage(stdout);
            return CV_EXIT_OK;
        case OPT_SINCE:
            if (cv_parse_time_us(optarg, &f.since_us) < 0) {
                cv_error("audit",
                         "--since %s: not a time (RFC 3339 UTC, a date, 7d, ...)",
                         optarg);
                return CV_EXIT_USAGE;
            }
            break;
        case OPT_COMMAND:
            f.command = optarg;
            break;
        case OPT_LIMIT:
            f.limit = (int)strtol(optarg, &end, 10);
            if (*end || f.limit < 1 || f.limit > 1000000) {
                cv_error("audit", "--limit %s: expected 1 to 1000000", optarg);
                return CV_EXIT_USAGE;
            }
            break;
        case OPT_JSON:
            json = true;
            break;
        default:
            usage(stderr);
            return CV_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        cv_error("audit", "unexpected argument \"%s\"", argv[optind]);
        return CV_EXIT_USAGE;
    }
    cv_config *cfg = cv_cli_load_config(&cli);
    if (!cfg)
        return CV_EXIT_USAGE;
    int rc = CV_EXIT_FAILURE;
    char err[1024];
    cv_audit_list l = {0};
    PGconn *conn = cv_pg_connect(cv_access_conninfo(cfg, CV_PG_READER), err, sizeof(err));
    if (!conn || cv_pgmigrate_check(conn, err, sizeof(err)) < 0 ||
        cv_pgaudit_list(conn, &f, &l, err, sizeof(err)) < 0) {
        cv_error("audit", "%s (%s)", err, cv_access_conninfo_key(cfg, CV_PG_READER));
        goto out;
    }
    if (json)
        for (size_t i = 0; i < l.n; i++)
            print_json(&l.actions[i]);
    else
        print_table(&l);
    rc = fflush(stdout) == 0 ? CV_EXIT_OK : CV_EXIT_FAILURE;
out:
    cv_pgaudit_list_free(&l);
    if (conn)
        PQfinish(conn);
    cv_config_free(cfg);
    return rc;
}
