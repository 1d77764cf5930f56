/*
 * config — chatvault's configuration: one property table drives parsing,
 * defaults, validation, --help text and the example config.
 *
 * Sources, weakest first: the file (-c FILE or $CHATVAULT_CONFIG), the
 * environment (CHATVAULT_KEY_NAME: dots become underscores, upper case),
 * then --set key=value flags. Keys starting with "kafka." pass through to
 * librdkafka unchanged. Any other key not in the table is an error naming it.
 */
#ifndef CV_CONFIG_H
#define CV_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct cv_config cv_config;

cv_config *cv_config_new(void);
/* Accepts NULL; returns NULL. */
cv_config *cv_config_free(cv_config *cfg);

/* Sets one key. `origin` says where the value came from ("file.conf:12",
 * "--set", "env CHATVAULT_X") and is used in the error message. */
int cv_config_set(cv_config *cfg, const char *key, const char *value, const char *origin,
                  char *errbuf, size_t errlen);

/* Reads a file of `key = value` lines; `#` starts a comment. A file others
 * may read that holds a secret (http.token, a password in
 * postgres.conninfo, kafka.sasl.password, ...) loads, with a warning kept
 * for cv_config_warning(). */
int cv_config_load_file(cv_config *cfg, const char *path, char *errbuf, size_t errlen);

/* Applies every CHATVAULT_* variable of `envp` except CHATVAULT_CONFIG. */
int cv_config_load_env(cv_config *cfg, char *const *envp, char *errbuf, size_t errlen);

/* Value of a table key (never NULL for a key in the table; the default when
 * unset). Asking for a key not in the table aborts: it is a programming
 * error. */
const char *cv_config_str(const cv_config *cfg, const char *key);
int64_t cv_config_int(const cv_config *cfg, const char *key);

/* The kafka.* pass-through properties, in the order they were set, with the
 * "kafka." prefix removed. Returns 0 when `i` is past the end. */
int cv_config_kafka_at(const cv_config *cfg, size_t i, const char **ret_key,
                       const char **ret_value);
/* Value of one kafka.* property (without the prefix), or NULL. */
const char *cv_config_kafka_get(const cv_config *cfg, const char *key);

/* One line naming the config file that others may read and the secrets in
 * it, or NULL: for the caller to print. Lives as long as `cfg`. */
const char *cv_config_warning(const cv_config *cfg);

/* Prints every key with its default and meaning, as --help shows them. */
void cv_config_print_help(FILE *out);
/* Prints the table as an example config file (deploy/chatvault.conf.example). */
void cv_config_print_example(FILE *out);

/* Options every command shares: -c/--config FILE and --set key=value. */
typedef struct cv_cli_config {
    const char *path;
    const char *sets[64];
    int nsets;
} cv_cli_config;

/* Builds the config from file (cli->path, else $CHATVAULT_CONFIG, else none),
 * environment and --set flags, then reads http.token_file into http.token
 * (a file group or others may read, or both keys set, is an error). On
 * failure returns a negative errno with errbuf set. */
int cv_config_build(const cv_cli_config *cli, char *const *envp, cv_config **ret_cfg,
                    char *errbuf, size_t errlen);

#endif
