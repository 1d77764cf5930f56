/*
 * chatvault restore — point-in-time restore: rebuilds PostgreSQL from the
 * encrypted log, everything or any selection (a channel, a message id, a
 * range of offsets), as of a time (--as-of: what Kafka had received by
 * then) or a Kafka offset (--to-offset), into the live database or a new
 * one (--into CONNINFO --create). --dry-run says what it would write.
 * The writing is restore.h's: idempotent, so a restore interrupted can be
 * run again.
 */
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "cli.h"
#include "keyring.h"
#include "msgsource.h"
#include "pg/pgmigrate.h"
#include "progress.h"
#include "restore.h"
#include "select.h"
#include "util.h"

typedef struct restore_opts {
    const char *into;
    const char *as_of;
    bool create, dry_run, quiet;
    cv_cli_log_dirs ld;
    cv_select sel;
} restore_opts;

static const cv_cli_opt restore_opts_table[] = {
    CV_OPT_STR("into", 0, "CONNINFO",
               "the database to restore into (default: postgres.admin_conninfo, else "
               "postgres.conninfo: the live one)",
               restore_opts, into),
    CV_OPT_FLAG("create", 0,
                "create the --into database when it does not exist, and its schema",
                restore_opts, create),
    CV_OPT_STR("as-of", 0, "TIME",
               "only what Kafka had received by TIME (its timestamp, inclusive): RFC "
               "3339 UTC, a date, a duration ago (2h) or Unix ms",
               restore_opts, as_of),
    CV_OPT_FLAG("dry-run", 'n', "count what would be restored; write nothing",
                restore_opts, dry_run),
    CV_OPT_LIST("log-dir", 0, "DIR",
                "read this log directory instead of log.dir (repeatable)", restore_opts,
                ld.dir, ld.n),
    CV_OPT_FLAG("quiet", 0, "no progress display", restore_opts, quiet),
    CV_OPT_END,
};

static const cv_cli_group restore_selection = {CV_SELECT_TITLE, cv_select_opts,
                                               offsetof(restore_opts, sel)};

static const cv_cli_spec restore_spec = {
    .name = "restore",
    .usage = "restore [-c FILE] [--set key=value]... [selection] [--as-of TIME]\n"
             "                         [--into CONNINFO [--create]] [--dry-run]",
    .about = "Rebuilds chatvault.messages from the encrypted log: every message, or the\n"
             "selection (--channel, --message-id, --to-offset ...), as of a time\n"
             "(--as-of) or a Kafka offset (--to-offset, with --partition). Messages go\n"
             "through the broker's own write path, idempotently: a message the database\n"
             "holds already is counted, not written again, so running it twice is\n"
             "harmless. Kafka coordinates are kept; chatvault.kafka_offsets is left\n"
             "alone. Exit 1 when a log record could not be restored.\n",
    .opts = restore_opts_table,
    .group = &restore_selection,
    .epilog = "Examples:\n"
              "  chatvault restore --dry-run                 what the live database "
              "lacks\n"
              "  chatvault restore --channel support --as-of 2026-12-01T00:00:00Z \\\n"
              "      --into 'dbname=chatvault_dec1' --create\n"
              "  chatvault restore --channel support --message-id m-42\n"
              "Check the result with `chatvault verify --set postgres.conninfo=...` "
              "and the\nsame selection.\n",
};

/* Whether the tables a restore writes exist (a schema version says they
 * were made, not that nobody dropped one since). */
static bool tables_there(PGconn *conn) {
    PGresult *res =
        PQexec(conn, "SELECT to_regclass('chatvault.messages') IS NOT NULL"
                     " AND to_regclass('chatvault.message_versions') IS NOT NULL");
    bool there = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
                 strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return there;
}

/* The target: created and migrated with --create; in a dry run, a target
 * that does not exist yet (or has no schema) holds nothing and *ret_conninfo
 * is NULL. CV_EXIT_OK or the exit code after the error. */
static int restore_target(const restore_opts *o, const char *conninfo,
                          const char **ret_conninfo) {
    char err[1024], db[256];
    *ret_conninfo = conninfo;
    if (cv_pg_conninfo_db(conninfo, db, sizeof(db), err, sizeof(err)) < 0) {
        cv_error("restore", "%s", err);
        return CV_EXIT_USAGE;
    }
    bool exists = false, created = false;
    if (cv_pg_database_exists(conninfo, &exists, err, sizeof(err)) < 0) {
        cv_error("restore", "%s", err);
        return CV_EXIT_FAILURE;
    }
    if (!exists && !o->create) {
        cv_error("restore", "database %s does not exist: add --create", db);
        return CV_EXIT_FAILURE;
    }
    if (!exists && o->dry_run) {
        cv_log(CV_LOG_INFO, "dry run: database would be created", "database=%s", db);
        *ret_conninfo = NULL;
        return CV_EXIT_OK;
    }
    if (!exists) {
        if (cv_pg_create_database(conninfo, NULL, &created, err, sizeof(err)) < 0) {
            cv_error("restore", "%s", err);
            return CV_EXIT_FAILURE;
        }
        cv_log(CV_LOG_INFO, "database created", "database=%s", db);
    }
    PGconn *conn = cv_pg_connect(conninfo, err, sizeof(err));
    if (!conn) {
        cv_error("restore", "%s", err);
        return CV_EXIT_FAILURE;
    }
    int latest = cv_migrations[cv_migrations_count - 1].version, from = 0, to = 0;
    int rc = CV_EXIT_OK;
    if (cv_pgmigrate_current(conn, &from, err, sizeof(err)) < 0) {
        cv_error("restore", "%s", err);
        rc = CV_EXIT_FAILURE;
    } else if (from < latest && !o->create) {
        if (from == 0)
            cv_error("restore", "database %s has no chatvault schema: add --create", db);
        else
            cv_error("restore",
                     "database %s has schema version %d, this chatvault writes %d: add "
                     "--create to upgrade it",
                     db, from, latest);
        rc = CV_EXIT_FAILURE;
    } else if (from < latest && o->dry_run) {
        cv_log(CV_LOG_INFO, "dry run: schema would be created or upgraded",
               "database=%s from=%d to=%d", db, from, latest);
        *ret_conninfo = NULL; /* counted as holding nothing */
    } else if (from < latest) {
        if (cv_pgmigrate_apply(conn, &from, &to, err, sizeof(err)) < 0) {
            cv_error("restore", "%s", err);
            rc = CV_EXIT_FAILURE;
        } else {
            cv_log(CV_LOG_INFO, "schema migrated", "database=%s from=%d to=%d", db, from,
                   to);
        }
    } else if (!tables_there(conn)) {
        cv_error("restore",
                 "database %s has chatvault's schema (version %d) but not its "
                 "chatvault.messages or message_versions (dropped?): restore into a new "
                 "database (--into CONNINFO --create), or drop schema chatvault there "
                 "and restore with --create",
                 db, from);
        rc = CV_EXIT_FAILURE;
    }
    PQfinish(conn);
    return rc;
}

/* Every selected message of the log into the target. */
static int restore_all(cv_src *src, cv_restore *rs, bool quiet, uint64_t *ret_channels) {
    char err[1024], last[CV_CHANNEL_MAX + 1] = "";
    cv_progress prog;
    cv_progress_init(&prog, "restore", !quiet);
    uint64_t channels = 0;
    cv_msg m;
    int e;
    while ((e = cv_src_next(src, &m, err, sizeof(err))) == 1) {
        if (strcmp(last, m.channel) != 0) {
            snprintf(last, sizeof(last), "%s", m.channel);
            channels++;
        }
        if ((e = cv_restore_add(rs, &m, err, sizeof(err))) < 0)
            break;
        cv_progress_update(&prog, cv_restore_get_stats(rs)->messages, 0, m.channel);
    }
    if (e == 0)
        e = cv_restore_flush(rs, err, sizeof(err));
    cv_progress_end(&prog);
    *ret_channels = channels;
    if (e < 0) {
        cv_error("restore", "%s", err);
        return -1;
    }
    return 0;
}

int cv_cmd_restore(int argc, char **argv) {
    restore_opts o = {0};
    cv_select_init(&o.sel);
    cv_cli cli;
    cv_config *cfg = NULL;
    cv_keyring *keys = NULL;
    cv_src *src = NULL;
    cv_restore *rs = NULL;
    char err[1024];
    int rc = cv_cli_parse(&restore_spec, argc, argv, &o, &cli);
    if (rc != CV_CLI_RUN)
        goto out;
    rc = CV_EXIT_USAGE;
    if (o.as_of) {
        int64_t t;
        if (cv_parse_time_us(o.as_of, &t) < 0) {
            cv_error("restore",
                     "--as-of: \"%s\" is not a time (RFC 3339 with Z or +HH:MM, a date, "
                     "90s/15m/2h/7d ago, or Unix ms)",
                     o.as_of);
            goto out;
        }
        if (o.sel.until_us >= 0) {
            cv_error("restore", "give --as-of or --until, not both");
            goto out;
        }
        /* Kafka timestamps are milliseconds: inclusive of TIME's. */
        o.sel.until_us = t / 1000 * 1000 + 1000;
        o.sel.time_field = CV_PGREAD_TIME_PERSISTED_AT;
    }
    if (cv_select_check(&o.sel, "restore") < 0 ||
        !(cfg = cv_cli_load_config(&cli.config)))
        goto out;
    const char *conninfo = o.into ? o.into : cv_access_conninfo(cfg, CV_PG_ADMIN);
    cv_audit_begin(cfg, CV_PG_ADMIN, o.dry_run ? "restore --dry-run" : "restore", argc,
                   argv);
    rc = CV_EXIT_FAILURE;
    if (sodium_init() < 0)
        goto out;
    cv_cli_default_log_dir(&o.ld, cfg);
    if (!o.ld.n) {
        cv_error("restore", "no log to restore from: set log.dir or give --log-dir");
        rc = CV_EXIT_USAGE;
        goto out;
    }
    if (cv_cli_load_keys(cfg, &o.ld, &keys, err, sizeof(err)) < 0) {
        cv_error("restore", "%s (log.key_file)", err);
        goto out;
    }
    const char *target;
    if ((rc = restore_target(&o, conninfo, &target)) != CV_EXIT_OK)
        goto out;
    rc = CV_EXIT_FAILURE;
    cv_envelope_rules rules = cv_cli_envelope_rules(cfg);
    cv_restore_conf rconf = {.conninfo = target, .rules = &rules, .dry_run = o.dry_run};
    if (cv_restore_open(&rconf, &rs, err, sizeof(err)) < 0) {
        cv_error("restore", "%s (%s)", err, o.into ? "--into" : "the target database");
        goto out;
    }
    cv_src_conf sc = {
        .mode = CV_SRC_LOG,
        .log_dirs = o.ld.dir,
        .nlog_dirs = o.ld.n,
        .keys = keys,
        .topic_prefix = rules.topic_prefix,
        .sel = &o.sel,
    };
    if (cv_src_open(&sc, &src, NULL, 0, err, sizeof(err)) < 0) {
        cv_error("restore", "%s", err);
        goto out;
    }
    int64_t start = (cv_now_us() / 1000);
    uint64_t channels = 0;
    if (restore_all(src, rs, o.quiet, &channels) < 0)
        goto out;
    const cv_restore_stats *st = cv_restore_get_stats(rs);
    double secs = (double)((cv_now_us() / 1000) - start) / 1000.0;
    char db[256] = "?";
    cv_pg_conninfo_db(conninfo, db, sizeof(db), err, sizeof(err));
    if (!st->messages)
        cv_log(CV_LOG_WARN, "the selection matched no log record",
               "hint=\"check --channel and the other selectors: chatvault log list shows "
               "what the log holds\"");
    /* A record is one version of one message (an edit is a record more). */
    printf("%s %" PRIu64 " of %" PRIu64 " log records into %s (%" PRIu64
           " channel%s) in %.1f s: %" PRIu64 " already there, %" PRIu64
           " duplicates, %" PRIu64 " not restorable\n",
           o.dry_run ? "dry run: would restore" : "restored", st->restored, st->messages,
           db, channels, channels == 1 ? "" : "s", secs, st->present, st->duplicates,
           st->invalid);
    cv_log(st->invalid ? CV_LOG_ERROR : CV_LOG_INFO, "restore done",
           "dry_run=%s messages=%" PRIu64 " restored=%" PRIu64 " present=%" PRIu64
           " duplicates=%" PRIu64 " invalid=%" PRIu64 " channels=%" PRIu64
           " database=%s seconds=%.1f",
           o.dry_run ? "true" : "false", st->messages, st->restored, st->present,
           st->duplicates, st->invalid, channels, db, secs);
    cv_audit_count("messages", (int64_t)st->messages);
    cv_audit_count("restored", (int64_t)st->restored);
    cv_audit_count("present", (int64_t)st->present);
    cv_audit_count("invalid", (int64_t)st->invalid);
    rc = st->invalid ? CV_EXIT_FAILURE : CV_EXIT_OK;
out:
    cv_src_free(src);
    cv_restore_free(rs);
    cv_keyring_free(keys);
    cv_config_free(cfg);
    cv_select_release(&o.sel);
    return rc;
}
