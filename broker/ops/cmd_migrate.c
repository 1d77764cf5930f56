/*
 * chatvault migrate — applies the pending schema migrations.
 */
#include <libpq-fe.h>
#include <stdio.h>

#include "access.h"
#include "cli.h"
#include "pg/pgmigrate.h"

static void schema_version(FILE *out) {
    fprintf(out, "This binary knows schema version %d.\n",
            cv_migrations[cv_migrations_count - 1].version);
}

static const cv_cli_spec spec = {
    .name = "migrate",
    .usage = "migrate [-c FILE] [--set key=value]...",
    .about =
        "Creates or upgrades the chatvault schema in the database of\n"
        "postgres.admin_conninfo (empty: postgres.conninfo), as the schema's owner.\n"
        "Schema version 2 also makes the roles chatvault_writer, chatvault_reader and\n"
        "chatvault_admin (which needs CREATEROLE). Each migration runs in its own\n"
        "transaction under an advisory lock; running it twice, or twice at once, is\n"
        "safe. A database whose schema is newer than this binary is refused.\n",
    .config_keys = "postgres.admin_conninfo, postgres.conninfo",
    .epilog_fn = schema_version,
};

int cv_cmd_migrate(int argc, char **argv) {
    cv_cli cli;
    int rc = cv_cli_parse(&spec, argc, argv, NULL, &cli);
    if (rc != CV_CLI_RUN)
        return rc;
    cv_config *cfg = cv_cli_load_config(&cli.config);
    if (!cfg)
        return CV_EXIT_USAGE;
    char err[512];
    PGconn *conn = cv_pg_connect(cv_access_conninfo(cfg, CV_PG_ADMIN), err, sizeof(err));
    if (!conn) {
        cv_error("migrate", "%s (%s)", err, cv_access_conninfo_key(cfg, CV_PG_ADMIN));
        cv_config_free(cfg);
        return CV_EXIT_FAILURE;
    }
    int from, to;
    int r = cv_pgmigrate_apply(conn, &from, &to, err, sizeof(err));
    PQfinish(conn);
    cv_config_free(cfg);
    if (r < 0) {
        cv_error("migrate", "%s", err);
        return CV_EXIT_FAILURE;
    }
    if (from == to)
        cv_log(CV_LOG_INFO, "schema is up to date", "version=%d", to);
    else
        cv_log(CV_LOG_INFO, "schema migrated", "from=%d to=%d", from, to);
    return CV_EXIT_OK;
}
