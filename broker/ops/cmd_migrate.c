/*
 * chatvault migrate — applies the pending schema migrations.
 */
#include <getopt.h>
#include <libpq-fe.h>
#include <stdio.h>

#include "access.h"
#include "cli.h"
#include "pg/pgmigrate.h"

int cv_cmd_migrate(int argc, char **argv) {
    static const struct option opts[] = {CV_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    cv_cli_config cli = {0};
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        int r = cv_cli_common_opt(&cli, opt, optarg);
        if (r < 0)
            return CV_EXIT_USAGE;
        if (r)
            continue;
        if (opt == 'h') {
            printf("usage: chatvault migrate [-c FILE] [--set key=value]...\n\n"
                   "Creates or upgrades the chatvault schema in the database of "
                   "postgres.conninfo.\nEach migration runs in its own "
                   "transaction under an advisory lock; running it\ntwice, or "
                   "twice at once, is safe. A database whose schema is newer "
                   "than this\nbinary is refused. This binary knows schema "
                   "version %d.\n",
                   cv_migrations[cv_migrations_count - 1].version);
            return CV_EXIT_OK;
        }
        return CV_EXIT_USAGE;
    }
    if (optind < argc) {
        cv_error("migrate", "unexpected argument \"%s\"", argv[optind]);
        return CV_EXIT_USAGE;
    }
    cv_config *cfg = cv_cli_load_config(&cli);
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
