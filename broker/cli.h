/*
 * cli — what every chatvault command shares: the command table, the
 * option parser that reads argv by a command's table of options and
 * prints its --help (with -c/--set for all), logging in logfmt, and
 * building librdkafka configurations from the kafka.* keys.
 */
#ifndef CV_CLI_H
#define CV_CLI_H

#include <librdkafka/rdkafka.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "ingest/envelope.h"
#include "keyring.h"
#include "util.h"

/* An http:// or https:// address to GET: host (no brackets for IPv6),
 * port, path; ca_file (NULL: the system's store) is what an https server
 * is checked against. */
typedef struct cv_cli_url {
    bool tls;
    char host[256];
    char port[8];
    char path[512];
    const char *ca_file;
} cv_cli_url;

/* Parses "http://host[:port][/prefix]", "https://..." or a listen address
 * "host:port" (then https when `tls`), appending `path` to the URL's own
 * path; a wildcard host (0.0.0.0, ::, empty) becomes the loopback address.
 * `what` names the value in the one-line error. 0 or -EINVAL. */
int cv_cli_parse_url(const char *s, bool tls, const char *path, const char *what,
                     cv_cli_url *u, char *err, size_t errlen);

/* GET the URL (libcurl: 10 s to connect, 30 s in all, the server's
 * certificate verified for https, `token` as a Bearer token when set); the
 * body goes to `body`. Returns the HTTP status, or a negative errno with
 * err set. */
int cv_cli_http_get(const cv_cli_url *u, const char *token, cv_buf *body, char *err,
                    size_t errlen);

/* Exit codes (DESIGN.md). */
enum {
    CV_EXIT_OK = 0,
    CV_EXIT_FAILURE = 1,
    CV_EXIT_USAGE = 2,
    CV_EXIT_DIFFERENCES = 3,
};

typedef struct cv_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} cv_command;

int cv_cmd_broker(int argc, char **argv);
int cv_cmd_dev_kafka(int argc, char **argv);
int cv_cmd_migrate(int argc, char **argv);
int cv_cmd_send(int argc, char **argv);
int cv_cmd_config(int argc, char **argv);
int cv_cmd_keygen(int argc, char **argv);
int cv_cmd_erase(int argc, char **argv);
int cv_cmd_log(int argc, char **argv);
int cv_cmd_lag(int argc, char **argv);
int cv_cmd_audit(int argc, char **argv);
int cv_cmd_verify(int argc, char **argv);
int cv_cmd_replay(int argc, char **argv);
int cv_cmd_export(int argc, char **argv);
int cv_cmd_import(int argc, char **argv);
int cv_cmd_restore(int argc, char **argv);
int cv_cmd_drill(int argc, char **argv);
int cv_cmd_retention(int argc, char **argv);
int cv_cmd_search(int argc, char **argv);
int cv_cmd_report(int argc, char **argv);
int cv_cmd_cold(int argc, char **argv);

/* ---- options: one table per command --------------------------------
 *
 * A command declares a static table of its options and a cv_cli_spec
 * (usage line, description, tables); cv_cli_parse() parses argv by it and
 * prints --help from it, so the help and the parsing cannot drift. Every
 * option writes into the command's own options struct (`opts` below) at
 * the offset the table gives; the CV_OPT_* macros check the member's type.
 *
 * Syntax: --name VALUE, --name=VALUE, a unique prefix of a long name, -x
 * VALUE, -xVALUE, flags grouped (-vh), `--` ends the options, and
 * everything else is a positional argument, wherever it stands. Every
 * command also takes -h/--help and, unless spec->no_config, -c/--config
 * FILE and --set key=value (into cv_cli.config). An error is one line,
 * "chatvault <command>: ...", and exit 2. */

typedef enum cv_cli_kind {
    CV_CLI_FLAG, /* bool: set to true */
    CV_CLI_STR,  /* const char *: the value (the last one given wins) */
    CV_CLI_INT,  /* int64_t: a decimal number from min to max */
    CV_CLI_LIST, /* const char *[N] and a size_t count: each value appended */
    CV_CLI_CALL, /* fn(): anything else */
} cv_cli_kind;

typedef struct cv_cli_opt cv_cli_opt;

/* A CV_CLI_CALL option's handler. `dest` is the options struct at the
 * option's offset, `value` NULL for an option without one. Returns 0, or
 * -1 after printing the one-line error with cv_error(cmd, ...). */
typedef int (*cv_cli_fn)(const cv_cli_opt *opt, void *dest, const char *cmd,
                         const char *value);

struct cv_cli_opt {
    const char *name; /* long name without "--"; NULL ends a table */
    char shortname;   /* -x, or 0 */
    const char *arg;  /* the value's name in --help ("FILE"); NULL: no value */
    const char *help; /* wrapped to the screen; "\n" breaks a line. NULL:
                       * accepted but not listed */
    cv_cli_kind kind;
    size_t off;       /* the member in the options struct */
    size_t off_count; /* LIST: its size_t count */
    size_t cap;       /* LIST: how many fit */
    int64_t min, max; /* INT */
    cv_cli_fn fn;     /* CALL */
    int id;           /* CALL: tells apart the options one handler serves */
    bool optional;    /* CALL: the value may be left out; then --name=V, or
                       * --name V where V starts with a digit */
};

/* offsetof(T, m), and a compile error unless m is of type `type`. */
#define CV_CLI_OFF(T, m, type) (offsetof(T, m) + 0 * sizeof(&((T *)0)->m - (type *)0))

#define CV_OPT_FLAG(nm, s, hl, T, m)                                                     \
    {                                                                                    \
        .name = nm, .shortname = s, .help = hl, .kind = CV_CLI_FLAG,                     \
        .off = CV_CLI_OFF(T, m, bool)                                                    \
    }
#define CV_OPT_STR(nm, s, a, hl, T, m)                                                   \
    {                                                                                    \
        .name = nm, .shortname = s, .arg = a, .help = hl, .kind = CV_CLI_STR,            \
        .off = CV_CLI_OFF(T, m, const char *)                                            \
    }
#define CV_OPT_INT(nm, s, a, hl, T, m, lo, hi)                                           \
    {                                                                                    \
        .name = nm, .shortname = s, .arg = a, .help = hl, .kind = CV_CLI_INT,            \
        .off = CV_CLI_OFF(T, m, int64_t), .min = lo, .max = hi                           \
    }
/* v: an array member, n: its size_t count. */
#define CV_OPT_LIST(nm, s, a, hl, T, v, n)                                               \
    {                                                                                    \
        .name = nm, .shortname = s, .arg = a, .help = hl, .kind = CV_CLI_LIST,           \
        .off = CV_CLI_OFF(T, v[0], const char *), .off_count = CV_CLI_OFF(T, n, size_t), \
        .cap = sizeof(((T *)0)->v) / sizeof(((T *)0)->v[0])                              \
    }
/* f gets the whole options struct (dest at offset 0) and the option's id. */
#define CV_OPT_CALL(nm, s, a, hl, f, ident)                                              \
    {                                                                                    \
        .name = nm, .shortname = s, .arg = a, .help = hl, .kind = CV_CLI_CALL, .fn = f,  \
        .id = ident                                                                      \
    }
/* f gets the member m of T (dest points at it) and the option's id. */
#define CV_OPT_CALL_AT(nm, s, a, hl, T, m, f, ident)                                     \
    {                                                                                    \
        .name = nm, .shortname = s, .arg = a, .help = hl, .kind = CV_CLI_CALL,           \
        .off = offsetof(T, m), .fn = f, .id = ident                                      \
    }
#define CV_OPT_CALL_OPTIONAL(nm, a, hl, f, ident)                                        \
    {                                                                                    \
        .name = nm, .arg = a, .help = hl, .kind = CV_CLI_CALL, .fn = f, .id = ident,     \
        .optional = true                                                                 \
    }
#define CV_OPT_END                                                                       \
    { .name = NULL }

/* A further table with a heading of its own in --help (the selection of
 * replay, export and verify), writing into a struct at `off` in the
 * command's options. */
typedef struct cv_cli_group {
    const char *title; /* "selection (...)" */
    const cv_cli_opt *opts;
    size_t off;
} cv_cli_group;

typedef struct cv_cli_spec {
    const char *name;          /* "send", "log cat": errors read "chatvault <name>: " */
    const char *usage;         /* after "usage: chatvault "; may hold more lines */
    const char *about;         /* the description, as printed (lines of <= 80) */
    const cv_cli_opt *opts;    /* listed under "options:" */
    const cv_cli_group *group; /* or NULL */
    const char *config_keys;   /* the keys -c FILE matters for, or NULL */
    const char *epilog;        /* printed after the options, or NULL */
    void (*epilog_fn)(FILE *); /* called after that, or NULL */
    int max_args;              /* positional arguments: at most (-1: any) */
    bool no_config;            /* no -c/--config, --set */
} cv_cli_spec;

/* What every command gets besides its own options. */
typedef struct cv_cli {
    cv_cli_config config; /* -c, --set */
    char **args;          /* the positional arguments, in order */
    int nargs;
} cv_cli;

#define CV_CLI_RUN (-1)

/* Parses argv[1..argc) (argv[0] is the command) by `spec` into `opts`
 * (which holds the defaults) and `ret`. Returns CV_CLI_RUN when the
 * command is to run, else the exit code to return now: CV_EXIT_OK after
 * --help (printed on stdout), CV_EXIT_USAGE after the one-line error.
 * Reorders argv: ret->args points into it. */
int cv_cli_parse(const cv_cli_spec *spec, int argc, char **argv, void *opts, cv_cli *ret);

/* Prints the --help text generated from the spec. */
void cv_cli_help(const cv_cli_spec *spec, FILE *out);

/* The start of a command with subcommands ("log list", "cold ship"):
 * argv[1] is the subcommand, one of the NULL-terminated `subs`. Prints the
 * help for no argument (CV_EXIT_USAGE) or help, --help, -h (CV_EXIT_OK),
 * refuses an unknown one (CV_EXIT_USAGE, naming `subs`); otherwise
 * returns CV_CLI_RUN with *ret_spec a copy of `spec` named "<name> <sub>"
 * (the name in `name`, which must outlive it). */
int cv_cli_subcommand(const cv_cli_spec *spec, int argc, char **argv,
                      const char *const *subs, char *name, size_t namelen,
                      cv_cli_spec *ret_spec);

/* Builds the config or prints the one-line error; returns NULL on error. */
cv_config *cv_cli_load_config(const cv_cli_config *cli);

/* The cold tier (cold.* keys): cv_cli_cold_open makes a target from the
 * config (the caller frees it); cv_cli_cold_install, which
 * cv_cli_load_config calls, makes the process's one and installs it as the
 * log reader's fetch hook when cold.target is set, so every command reads
 * segments that are only in the cold tier. -EINVAL with errbuf set. */
typedef struct cv_cold cv_cold;
int cv_cli_cold_open(const cv_config *cfg, cv_cold **ret, char *errbuf, size_t errlen);
int cv_cli_cold_install(const cv_config *cfg, char *errbuf, size_t errlen);

/* The log directories a reading command merges: every --log-dir given
 * (one per broker instance), else the config's log.dir. */
#define CV_CLI_MAX_LOG_DIRS 32
typedef struct cv_cli_log_dirs {
    const char *dir[CV_CLI_MAX_LOG_DIRS];
    size_t n;
} cv_cli_log_dirs;

/* With no --log-dir given, takes log.dir from `cfg` when it is set. */
void cv_cli_default_log_dir(cv_cli_log_dirs *d, const cv_config *cfg);

/* Loads log.key_file and attaches to the ring the channel data key store
 * (consumer/datakeys.h) of log.dir and of every directory in `ld` (may be
 * NULL), so readers find channels' keys and a writer of one of those
 * directories seals with them. Errors as cv_keyring_load's, or the store's
 * (one line in errbuf). The caller owns *ret. */
int cv_cli_load_keys(const cv_config *cfg, const cv_cli_log_dirs *ld, cv_keyring **ret,
                     char *errbuf, size_t errlen);
/* The attaching part of it, for a ring loaded otherwise. */
int cv_cli_attach_data_keys(cv_keyring *kr, const cv_config *cfg,
                            const cv_cli_log_dirs *ld, char *errbuf, size_t errlen);

/* The broker's validation rules (topics.*, limits.max_body_bytes), for
 * the tools that decode records as it does; the strings are cfg's. */
cv_envelope_rules cv_cli_envelope_rules(const cv_config *cfg);

/* logfmt logging to stderr: level=... msg="..." then key=value pairs given
 * as a printf-style tail, e.g. cv_log(CV_LOG_WARN, "postgres unavailable",
 * "retry_in=%ds", 2). The levels are util.h's cv_log_level. */
void cv_log(cv_log_level level, const char *msg, const char *kvfmt, ...)
    __attribute__((format(printf, 3, 4)));
void cv_log_set_min(cv_log_level level);
const char *cv_log_level_name(cv_log_level level);

/* Prints "chatvault <cmd>: <message>" on one line to stderr. */
void cv_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The last SASL or TLS failure any Kafka client of this process logged,
 * copied into BUF (LEN bytes); NULL when there was none. */
const char *cv_cli_kafka_auth_error(char *buf, size_t len);

/* A librdkafka configuration from the kafka.* keys, with chatvault's
 * defaults under them. `role` is "consumer" or "producer"; consumer-only
 * keys are not given to a producer and the other way round. If
 * kafka.bootstrap.servers is "embedded", `embedded_bootstraps` is used
 * instead (it must be non-NULL then). With an SSL or SASL_SSL
 * kafka.security.protocol, a TLS file (kafka.ssl.ca.location, ...) that
 * cannot be read is an error naming its key and path. Returns NULL with
 * errbuf set: a configuration error. */
rd_kafka_conf_t *cv_cli_kafka_conf(const cv_config *cfg, const char *role,
                                   const char *embedded_bootstraps, char *errbuf,
                                   size_t errlen);

/* True when kafka.bootstrap.servers is "embedded". */
bool cv_cli_kafka_embedded(const cv_config *cfg);

#endif
