/*
 * chatvault config — prints the configuration reference, an example file,
 * or checks a file.
 */
#include <getopt.h>
#include <stdio.h>

#include "cli.h"

int cv_cmd_config(int argc, char **argv) {
    static const struct option opts[] = {CV_COMMON_LONGOPTS,
                                         {"example", no_argument, NULL, 'e'},
                                         {"check", no_argument, NULL, 'k'},
                                         {NULL, 0, NULL, 0}};
    cv_cli_config cli = {0};
    int opt, example = 0, check = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        int r = cv_cli_common_opt(&cli, opt, optarg);
        if (r < 0)
            return CV_EXIT_USAGE;
        if (r)
            continue;
        switch (opt) {
        case 'e':
            example = 1;
            break;
        case 'k':
            check = 1;
            break;
        case 'h':
            printf("usage: chatvault config [--example | --check -c FILE]\n\n"
                   "Without options prints every key with its default and "
                   "meaning.\n  --example   print a complete example file\n"
                   "  --check     load the configuration (-c FILE, environment, "
                   "--set) and\n              exit 0 if it is valid, 2 with the "
                   "error if not\n");
            return CV_EXIT_OK;
        default:
            return CV_EXIT_USAGE;
        }
    }
    if (example) {
        cv_config_print_example(stdout);
        return CV_EXIT_OK;
    }
    if (check) {
        cv_config *cfg = cv_cli_load_config(&cli);
        if (!cfg)
            return CV_EXIT_USAGE;
        cv_config_free(cfg);
        printf("configuration is valid\n");
        return CV_EXIT_OK;
    }
    cv_config_print_help(stdout);
    return CV_EXIT_OK;
}
