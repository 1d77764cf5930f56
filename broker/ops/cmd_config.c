/*
 * chatvault config — prints the configuration reference, an example file,
 * or checks a file.
 */
#include <stdio.h>

#include "cli.h"
#include "retention.h"

typedef struct config_opts {
    bool example, check;
} config_opts;

static const cv_cli_opt opts[] = {
    CV_OPT_FLAG("example", 0, "print a complete example file", config_opts, example),
    CV_OPT_FLAG("check", 0,
                "load the configuration (-c FILE, environment, --set) and exit 0 if it "
                "is valid, 2 with the error if not",
                config_opts, check),
    CV_OPT_END,
};

static const cv_cli_spec spec = {
    .name = "config",
    .usage = "config [--example | --check -c FILE]",
    .about = "Without options prints every key with its default and meaning.\n",
    .opts = opts,
};

int cv_cmd_config(int argc, char **argv) {
    config_opts o = {0};
    cv_cli cli;
    int rc = cv_cli_parse(&spec, argc, argv, &o, &cli);
    if (rc != CV_CLI_RUN)
        return rc;
    if (o.example) {
        cv_config_print_example(stdout);
        return CV_EXIT_OK;
    }
    if (o.check) {
        cv_config *cfg = cv_cli_load_config(&cli.config);
        if (!cfg)
            return CV_EXIT_USAGE;
        /* keys that name each other: retention's classes */
        cv_retention_rules rules;
        char err[1024];
        int r = cv_retention_rules_load(cfg, &rules, err, sizeof(err));
        cv_config_free(cfg);
        if (r < 0) {
            cv_error("config", "%s", err);
            return CV_EXIT_USAGE;
        }
        cv_retention_rules_release(&rules);
        printf("configuration is valid\n");
        return CV_EXIT_OK;
    }
    cv_config_print_help(stdout);
    return CV_EXIT_OK;
}
