/*
 * cli — what every chatvault command shares: the command table, option
 * handling for -c/--set, logging in logfmt, and building librdkafka
 * configurations from the kafka.* keys.
 */
#ifndef CV_CLI_H
#define CV_CLI_H

#include <librdkafka/rdkafka.h>
#include <stdarg.h>
#include <stdbool.h>

#include "config.h"
#include "util.h"

/* An http:// address to GET: host (no brackets for IPv6), port, path. */
typedef struct cv_cli_url {
    char host[256];
    char port[8];
    char path[512];
} cv_cli_url;

/* GET u->path (HTTP/1.0, 10 s timeouts, with `token` as a Bearer token when
 * set); the body goes to `body`. Returns the HTTP status, or a negative
 * errno with err set. */
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
int cv_cmd_log(int argc, char **argv);
int cv_cmd_lag(int argc, char **argv);
int cv_cmd_audit(int argc, char **argv);
int cv_cmd_verify(int argc, char **argv);
int cv_cmd_replay(int argc, char **argv);
int cv_cmd_export(int argc, char **argv);
int cv_cmd_import(int argc, char **argv);
int cv_cmd_report(int argc, char **argv);

/* Long options shared by every command; append to a command's own table. */
#define CV_COMMON_LONGOPTS                                                               \
    {"config", required_argument, NULL, 'c'}, {"set", required_argument, NULL, 'S'}, {   \
        "help", no_argument, NULL, 'h'                                                   \
    }

/* Handles -c and --set into `cli`. Returns 1 when the option was one of
 * them, 0 otherwise, -1 after printing an error. */
int cv_cli_common_opt(cv_cli_config *cli, int opt, const char *arg);

/* Builds the config or prints the one-line error; returns NULL on error. */
cv_config *cv_cli_load_config(const cv_cli_config *cli);

/* The log directories a reading command merges: every --log-dir given
 * (one per broker instance), else the config's log.dir. */
#define CV_CLI_MAX_LOG_DIRS 32
typedef struct cv_cli_log_dirs {
    const char *dir[CV_CLI_MAX_LOG_DIRS];
    size_t n;
} cv_cli_log_dirs;

/* Adds one --log-dir; prints the error and returns -1 when there are too
 * many. */
int cv_cli_add_log_dir(cv_cli_log_dirs *d, const char *cmd, const char *arg);

/* With no --log-dir given, takes log.dir from `cfg` when it is set. */
void cv_cli_default_log_dir(cv_cli_log_dirs *d, const cv_config *cfg);

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
