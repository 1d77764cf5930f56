/*
 * chatvault — command dispatch. Each command lives in its own cmd_*.c file,
 * in the folder of its audience (daemon/, ops/, traffic/, archive/).
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "access.h"
#include "cli.h"

static const cv_command commands[] = {
    {"broker", cv_cmd_broker, "run the daemon: consume, persist, ack, commit"},
    {"dev-kafka", cv_cmd_dev_kafka,
     "run a standalone mock Kafka cluster for trying chatvault"},
    {"migrate", cv_cmd_migrate, "create or upgrade the PostgreSQL schema"},
    {"send", cv_cmd_send, "publish chat messages, optionally waiting for their acks"},
    {"config", cv_cmd_config, "print the configuration reference or an example file"},
    {"log", cv_cmd_log, "list, print (cat) and check the encrypted log"},
    {"cold", cv_cmd_cold,
     "ship sealed log segments to S3 or a directory; list and fetch them"},
    {"keygen", cv_cmd_keygen, "add a key to the encrypted log's key file"},
    {"erase", cv_cmd_erase,
     "erase a channel (its log keys and rows) or a sender's rows, for good"},
    {"replay", cv_cmd_replay,
     "re-deliver stored messages to Kafka from PostgreSQL or the log"},
    {"export", cv_cmd_export, "write selected messages to JSON Lines with a manifest"},
    {"import", cv_cmd_import, "load an export file into PostgreSQL, idempotently"},
    {"restore", cv_cmd_restore,
     "rebuild PostgreSQL from the log: all, a channel or a message, as of a time"},
    {"retention", cv_cmd_retention,
     "what each channel's retention class keeps; drop what expired; legal holds"},
    {"drill", cv_cmd_drill,
     "restore a sample into a scratch database and check it against the log"},
    {"search", cv_cmd_search,
     "find messages by channel, sender, time, id or words, newest first"},
    {"report", cv_cmd_report,
     "activity per channel: volume, senders, sizes, latency; table, csv, json, html"},
    {"verify", cv_cmd_verify,
     "prove PostgreSQL and the log agree; --repair fills each from the other"},
    {"audit", cv_cmd_audit,
     "list the audit log: who ran which operator command, and when"},
    {"lag", cv_cmd_lag,
     "show the ack lag and status of every channel from a running broker"},
};

static void usage(FILE *out) {
    fprintf(out, "usage: chatvault <command> [options]   (chatvault <command> --help)\n\n"
                 "commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nEvery command reads the same configuration: -c FILE (or "
                 "$CHATVAULT_CONFIG),\nCHATVAULT_* variables and --set key=value. "
                 "`chatvault config` lists the keys.\n"
                 "Exit codes: 0 ok, 1 runtime failure, 2 usage or config error, "
                 "3 verification found differences.\n");
}

static void reverse(char **a, char **b) {
    while (a < --b) {
        char *t = *a;
        *a++ = *b;
        *b = t;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return CV_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return CV_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("chatvault %s\n", CV_VERSION);
        return CV_EXIT_OK;
    }
    /* The options every command shares may also stand before the command
     * (chatvault -c FILE lag): they are handed to it after its name. */
    int g = 1;
    while (g < argc) {
        const char *a = argv[g];
        bool takes =
            strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0 || strcmp(a, "--set") == 0;
        bool joined = strncmp(a, "--config=", 9) == 0 || strncmp(a, "--set=", 6) == 0 ||
                      (strncmp(a, "-c", 2) == 0 && a[2]);
        if (takes && g + 1 < argc)
            g += 2;
        else if (joined)
            g++;
        else
            break;
    }
    if (g >= argc) {
        fprintf(stderr,
                "chatvault: no command after the options (see chatvault --help)\n");
        return CV_EXIT_USAGE;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[g], commands[i].name) == 0) {
            /* argv: [cmd, the command's own..., global options, "--" ...]:
             * cv_cli_parse takes options anywhere, and a subcommand (log
             * check) stays right after the command. */
            int nglob = g - 1, end = argc;
            for (int k = g + 1; k < argc; k++)
                if (strcmp(argv[k], "--") == 0) {
                    end = k;
                    break;
                }
            if (nglob) { /* rotate argv[1, end) left by nglob */
                reverse(argv + 1, argv + g);
                reverse(argv + g, argv + end);
                reverse(argv + 1, argv + end);
            }
            int rc = commands[i].run(argc - 1, argv + 1);
            cv_audit_end(rc); /* the command's audit action, if it began one */
            return rc;
        }
    fprintf(stderr, "chatvault: unknown command \"%s\" (see chatvault --help)\n",
            argv[g]);
    return CV_EXIT_USAGE;
}
