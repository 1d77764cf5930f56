/*
 * access — see access.h.
 */
#include "access.h"

#include <jansson.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "pg/pgaudit.h"
#include "pg/pgmigrate.h"
#include "util.h"

static const char *const role_keys[] = {
    [CV_PG_WRITER] = "postgres.conninfo",
    [CV_PG_READER] = "postgres.reader_conninfo",
    [CV_PG_ADMIN] = "postgres.admin_conninfo",
};

const char *cv_access_conninfo_key(const cv_config *cfg, cv_pg_role role) {
    const char *v = cv_config_str(cfg, role_keys[role]);
    return v && *v ? role_keys[role] : role_keys[CV_PG_WRITER];
}

const char *cv_access_conninfo(const cv_config *cfg, cv_pg_role role) {
    return cv_config_str(cfg, cv_access_conninfo_key(cfg, role));
}

typedef struct cv_audit {
    PGconn *conn; /* NULL: PostgreSQL did not take the start row */
    char id[CV_AUDIT_ID_LEN];
    char *command, *args_json;
    char os_user[64], host[256];
    json_t *counts;
} cv_audit;

/* A word that may carry a secret: a --set of such a key, or the value after
 * such an option. */
static bool secret_name(const char *s) {
    return strstr(s, "password") || strstr(s, "token") || strstr(s, "secret") ||
           strstr(s, "conninfo");
}

/* One argument word as the audit records it: the value of a secret key
 * given with --set, or of an option named like one, becomes <redacted>. */
static const char *redact(const char *w, const char *prev, bool *hide_next, char *buf,
                          size_t len) {
    if (*hide_next) {
        *hide_next = false;
        return "<redacted>";
    }
    const char *prefix = "", *kv = NULL;
    if (strncmp(w, "--set=", 6) == 0)
        prefix = "--set=", kv = w + 6;
    else if (prev && strcmp(prev, "--set") == 0)
        kv = w;
    else if (strncmp(w, "--", 2) == 0 && secret_name(w)) {
        const char *eq = strchr(w, '=');
        if (!eq) {
            *hide_next = true;
            return w;
        }
        snprintf(buf, len, "%.*s=<redacted>", (int)(eq - w), w);
        return buf;
    }
    const char *eq = kv ? strchr(kv, '=') : NULL;
    if (!eq)
        return w;
    snprintf(buf, len, "%s%.*s", prefix, (int)(eq - kv), kv);
    if (!secret_name(buf))
        return w;
    snprintf(buf, len, "%s%.*s=<redacted>", prefix, (int)(eq - kv), kv);
    return buf;
}

static char *args_json(int argc, char **argv) {
    json_t *a = json_array();
    bool hide_next = false;
    for (int i = 0; a && i < argc; i++) {
        char buf[256];
        const char *w =
            redact(argv[i], i > 0 ? argv[i - 1] : NULL, &hide_next, buf, sizeof(buf));
        json_t *j = json_string(w);
        json_array_append_new(a, j ? j : json_string("<not UTF-8>"));
    }
    char *s = a ? json_dumps(a, JSON_COMPACT) : NULL;
    json_decref(a);
    return s;
}

static void free_audit(cv_audit *a) {
    if (a->conn)
        PQfinish(a->conn);
    json_decref(a->counts);
    free(a->args_json);
    free(a->command);
    free(a);
}

const char *cv_access_os_user(char *buf, size_t len) {
    struct passwd *pw = getpwuid(geteuid());
    const char *u = pw ? pw->pw_name : getenv("USER");
    if (u)
        snprintf(buf, len, "%s", u);
    else
        snprintf(buf, len, "uid %u", (unsigned)geteuid());
    return buf;
}

static void who(cv_audit *a) {
    cv_access_os_user(a->os_user, sizeof(a->os_user));
    if (gethostname(a->host, sizeof(a->host)) != 0)
        a->host[0] = '\0';
    a->host[sizeof(a->host) - 1] = '\0';
}

static cv_audit *current; /* the process's action; NULL: none */
static char last_error[512];

void cv_audit_begin(const cv_config *cfg, cv_pg_role role, const char *command, int argc,
                    char **argv) {
    if (current)
        return;
    cv_audit *a = calloc(1, sizeof(*a));
    if (!a)
        return;
    a->command = strdup(command);
    a->args_json = args_json(argc > 0 ? argc - 1 : 0, argv + (argc > 0));
    a->counts = json_object();
    current = a;
    if (!a->command || !a->args_json || !a->counts) {
        cv_log(CV_LOG_WARN, "audit record not made: out of memory", "command=\"%s\"",
               command);
        free_audit(a);
        current = NULL;
        return;
    }
    who(a);
    char err[512];
    a->conn = cv_pg_connect_timeout(cv_access_conninfo(cfg, role), 10, err, sizeof(err));
    cv_audit_row row = {.os_user = a->os_user,
                        .host = a->host,
                        .command = a->command,
                        .arguments_json = a->args_json,
                        .result = "running"};
    if (a->conn && cv_pgaudit_append(a->conn, &row, a->id, err, sizeof(err)) < 0) {
        PQfinish(a->conn);
        a->conn = NULL;
    }
    if (!a->conn) {
        cv_log(CV_LOG_WARN,
               "audit record not stored in PostgreSQL: these lines are the only record",
               "command=\"%s\" os_user=%s error=\"%s\"", a->command, a->os_user, err);
        return;
    }
    cv_log(CV_LOG_INFO, "audit", "id=%s command=\"%s\" os_user=%s result=running", a->id,
           a->command, a->os_user);
}

void cv_audit_count(const char *name, int64_t value) {
    if (current)
        json_object_set_new(current->counts, name, json_integer(value));
}

void cv_audit_note_error(const char *msg) {
    snprintf(last_error, sizeof(last_error), "%s", msg);
}

void cv_audit_end(int rc) {
    cv_audit *a = current;
    if (!a)
        return;
    current = NULL;
    char result[32];
    snprintf(result, sizeof(result), rc == 0 ? "ok" : "exit %d", rc);
    const char *detail = rc == 0 ? "" : last_error;
    char *counts = json_dumps(a->counts, JSON_COMPACT);
    char err[512];
    if (a->conn) {
        cv_audit_row row = {.id = a->id,
                            .os_user = a->os_user,
                            .host = a->host,
                            .command = a->command,
                            .arguments_json = a->args_json,
                            .result = result,
                            .counts_json = counts,
                            .detail = detail};
        if (cv_pgaudit_append(a->conn, &row, NULL, err, sizeof(err)) < 0)
            cv_log(CV_LOG_WARN, "audit outcome not stored in PostgreSQL",
                   "id=%s error=\"%s\"", a->id, err);
    }
    cv_log(rc == 0 ? CV_LOG_INFO : CV_LOG_WARN, "audit",
           "id=%s command=\"%s\" os_user=%s result=\"%s\" counts=%s",
           a->conn ? a->id : "-", a->command, a->os_user, result, counts ? counts : "{}");
    free(counts);
    free_audit(a);
}
