/*
 * access — which PostgreSQL role a command connects as, and the audit
 * record every operator action that reads bulk data or changes stored data
 * leaves (consumer/pg/pgaudit.h holds the table's queries).
 *
 * Roles: the broker writes with postgres.conninfo; commands that only read
 * use postgres.reader_conninfo and the ones that change stored data
 * postgres.admin_conninfo, each falling back to postgres.conninfo when
 * empty, so a single-role installation needs one key.
 *
 * Audit: cv_audit_begin appends the action's "running" row before the
 * command touches data and cv_audit_end (called by main()) its outcome,
 * so every return path of a command is covered; both also go to
 * stderr as a logfmt line. When PostgreSQL cannot take the row (it is down
 * for a replay from the log, say), the line on stderr is the only record
 * and says so: the action is not refused, since recovering with
 * PostgreSQL gone is what replay from the log is for.
 */
#ifndef CV_ACCESS_H
#define CV_ACCESS_H

#include <stdint.h>

#include "config.h"

typedef enum cv_pg_role {
    CV_PG_WRITER, /* the broker */
    CV_PG_READER, /* verify, export, replay, lag, search */
    CV_PG_ADMIN,  /* migrate, verify --repair, import */
} cv_pg_role;

/* The operator running this process, for records (the audit, holds,
 * erasures): the effective user's name, else "uid N". Returns buf. */
const char *cv_access_os_user(char *buf, size_t len);

/* The conninfo of ROLE's config key, or postgres.conninfo when that is
 * empty. */
const char *cv_access_conninfo(const cv_config *cfg, cv_pg_role role);

/* The config key ROLE's conninfo comes from (for error messages). */
const char *cv_access_conninfo_key(const cv_config *cfg, cv_pg_role role);

/* The audit of this process's action (one per process: a command is one
 * action). cv_audit_begin records that COMMAND (e.g. "export", "verify
 * --repair") starts with the command's ARGV (ARGV[0] its name; values of
 * secret keys given with --set, and of options named like secrets, are
 * recorded as "<redacted>"). A second call while one is open is ignored. */
void cv_audit_begin(const cv_config *cfg, cv_pg_role role, const char *command, int argc,
                    char **argv);

/* Adds a count to what the end records, e.g. ("messages", 1200). */
void cv_audit_count(const char *name, int64_t value);

/* Keeps MSG (the command's error line) as the outcome's detail; the last
 * one wins. cv_error calls it. */
void cv_audit_note_error(const char *msg);

/* Records the outcome: exit code RC (0 "ok", else "exit RC" with the last
 * error as detail). main() calls it when the command returns; a no-op when
 * no action was begun. */
void cv_audit_end(int rc);

#endif
