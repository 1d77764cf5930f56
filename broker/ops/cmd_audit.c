/*
 * chatvault audit — lists the audit log (chatvault.audit): who ran which
 * operator command, when, as which database role, with which arguments,
 * counts and outcome. Reads with postgres.reader_conninfo.
 */
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

typedef struct audit_opts {
    const char *since, *command;
    int64_t limit;
    bool json;
} audit_opts;

static const cv_cli_opt opts[] = {
    CV_OPT_STR("since", 0, "TIME",
               "from TIME: RFC 3339 with Z or +HH:MM, a date, a duration ago (90s, 15m, "
               "2h, 7d) or "
               "Unix ms",
               audit_opts, since),
    CV_OPT_STR("command", 0, "NAME", "only this command (its first word, e.g. verify)",
               audit_opts, command),
    CV_OPT_INT("limit", 0, "N", "at most N actions (default 100)", audit_opts, limit, 1,
               1000000),
    CV_OPT_FLAG("json", 0, "one JSON object per line instead of a table", audit_opts,
                json),
    CV_OPT_END,
};

static const cv_cli_spec spec = {
    .name = "audit",
    .usage = "audit [-c FILE] [--set key=value]... [--since TIME]\n"
             "                       [--command NAME] [--limit N] [--json]",
    .about =
        "Lists operator actions recorded in chatvault.audit, newest first: when each\n"
        "started (UTC), how long it ran, the OS user and database role, the command\n"
        "and its arguments (secrets redacted), and its outcome with counts. An\n"
        "action that never ended (its process was killed) shows \"running\".\n"
        "Recorded: export, import, replay, verify (and --repair), log cat, and\n"
        "keygen on an existing key file (a key rotation).\n",
    .opts = opts,
    .config_keys = "postgres.reader_conninfo (or postgres.conninfo)",
};

int cv_cmd_audit(int argc, char **argv) {
    audit_opts o = {.limit = 100};
    cv_cli cli;
    int prc = cv_cli_parse(&spec, argc, argv, &o, &cli);
    if (prc != CV_CLI_RUN)
        return prc;
    cv_audit_filter f = {.since_us = -1, .command = o.command, .limit = (int)o.limit};
    bool json = o.json;
    if (o.since && cv_parse_time_us(o.since, &f.since_us) < 0) {
        cv_error("audit",
                 "--since %s: not a time (RFC 3339 with Z or +HH:MM, a date, 7d, ...)",
                 o.since);
        return CV_EXIT_USAGE;
    }
    cv_config *cfg = cv_cli_load_config(&cli.config);
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
