/*
 * pgaudit — chatvault.audit, the record of operator actions (schema version
 * 2). An action writes two rows with one id: "running" when it starts, and
 * its outcome when it ends, so an action that crashes still leaves its
 * start. Every chatvault role may append; none may change a row.
 *
 * Not thread-safe; each call takes the connection it is given and uses it
 * outside any transaction of the caller's.
 */
#ifndef CV_PGAUDIT_H
#define CV_PGAUDIT_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#define CV_AUDIT_ID_LEN 37 /* a uuid's text and its NUL */

/* What one row says; the JSON fields are JSON text (NULL: the default). */
typedef struct cv_audit_row {
    const char *id;             /* NULL on the first row: a new uuid */
    const char *os_user, *host; /* who, from where */
    const char *command;        /* "export", "verify --repair", ... */
    const char *arguments_json; /* a JSON array of the argument words */
    const char *result;         /* "running", "ok", "failed: ...", ... */
    const char *counts_json;    /* a JSON object of counts */
    const char *detail;         /* free text; NULL: "" */
} cv_audit_row;

/* Appends a row. On the first row of an action (row->id NULL) the new id
 * is written to ret_id (CV_AUDIT_ID_LEN bytes). -CV_ESTORE with a one-line
 * error when PostgreSQL refuses. */
int cv_pgaudit_append(PGconn *conn, const cv_audit_row *row, char ret_id[CV_AUDIT_ID_LEN],
                      char *errbuf, size_t errlen);

/* Which actions cv_pgaudit_list returns, newest first. */
typedef struct cv_audit_filter {
    int64_t since_us;    /* Unix us; -1: no bound */
    const char *command; /* NULL: every command; else the command's first word */
    int limit;           /* at most this many actions; 0: 100 */
} cv_audit_filter;

/* One action: its first row's time and who, joined to its last row's
 * outcome (result "running" and seconds "" when it never ended). Strings
 * are valid until the list is freed. */
typedef struct cv_audit_action {
    const char *id;
    const char *started_at; /* RFC 3339 UTC, milliseconds */
    const char *seconds;    /* how long it ran, "" when it never ended */
    const char *os_user, *db_role, *host, *command;
    const char *arguments_json, *result, *counts_json, *detail;
} cv_audit_action;

typedef struct cv_audit_list {
    PGresult *res;
    size_t n;
    cv_audit_action *actions;
} cv_audit_list;

int cv_pgaudit_list(PGconn *conn, const cv_audit_filter *f, cv_audit_list *ret,
                    char *errbuf, size_t errlen);
void cv_pgaudit_list_free(cv_audit_list *l);

#endif
