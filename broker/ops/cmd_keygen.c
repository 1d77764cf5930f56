/*
 * chatvault keygen — adds a new key to the log's key file (log.key_file),
 * creating the file with mode 0600, and prints the new key id. New log
 * segments are sealed with the newest key; older keys stay in the file so
 * the segments they sealed remain readable.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#include "access.h"
#include "cli.h"
#include "keyring.h"

typedef struct keygen_opts {
    const char *key_file;
} keygen_opts;

static const cv_cli_opt opts[] = {
    CV_OPT_STR("key-file", 0, "PATH", "the key file (default: log.key_file)", keygen_opts,
               key_file),
    CV_OPT_END,
};

static const cv_cli_spec spec = {
    .name = "keygen",
    .usage = "keygen [-c FILE] [--set key=value]... [--key-file PATH]",
    .about = "Adds a new random key with the next key id to the key file of the "
             "encrypted\nlog (default: log.key_file), creating the file with mode "
             "0600, and prints\nthe new key id. New log segments use the newest key; "
             "keep the old keys so\nthe segments they sealed stay readable. Restart "
             "the broker to start using\nthe new key.\n",
    .opts = opts,
    .config_keys = "log.key_file",
};

int cv_cmd_keygen(int argc, char **argv) {
    keygen_opts o = {0};
    cv_cli cli;
    int rc = cv_cli_parse(&spec, argc, argv, &o, &cli);
    if (rc != CV_CLI_RUN)
        return rc;
    cv_config *cfg = cv_cli_load_config(&cli.config);
    if (!cfg)
        return CV_EXIT_USAGE;
    const char *key_file = o.key_file ? o.key_file : cv_config_str(cfg, "log.key_file");
    /* Adding a key to an existing file is a key rotation, which the audit
     * records; making the first key is setting up. */
    if (access(key_file, F_OK) == 0)
        cv_audit_begin(cfg, CV_PG_ADMIN, "keygen", argc, argv);
    char err[1024];
    uint32_t id = 0;
    int r = cv_keyring_generate(key_file, &id, err, sizeof(err));
    if (r < 0) {
        cv_error("keygen", "%s", err);
        cv_config_free(cfg);
        /* A file we must not touch, or a path that cannot exist, is the
         * operator's to fix; anything else failed at run time. */
        return r == -EACCES || r == -EINVAL || r == -ENOENT || r == -ENOTDIR ||
                       r == -EOVERFLOW
                   ? CV_EXIT_USAGE
                   : CV_EXIT_FAILURE;
    }
    cv_log(CV_LOG_INFO, "log key added", "key_id=%" PRIu32 " key_file=\"%s\"", id,
           key_file);
    printf("%" PRIu32 "\n", id);
    cv_audit_count("key_id", id);
    cv_config_free(cfg);
    return CV_EXIT_OK;
}
