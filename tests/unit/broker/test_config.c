/*
 * Unit tests of broker/config.c: the file syntax, the errors a bad key or
 * value produces (they must name the key and where it came from), the order
 * of the sources (--set beats environment beats file), the environment
 * spelling of keys, and that the property table's own defaults and the
 * shipped example config are valid.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "tap.h"

#define EXAMPLE_CONFIG "deploy/chatvault.conf.example"

static char tmpdir[] = "/tmp/cv-test-config-XXXXXX";
static int nfiles;

/* Writes `text` to a new file under tmpdir; returns its path (static). */
static const char *write_file(const char *text) {
    static char path[256];
    snprintf(path, sizeof(path), "%s/%d.conf", tmpdir, ++nfiles);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) == EOF || fclose(f) != 0) {
        printf("Bail out! cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    return path;
}

static int contains(const char *hay, const char *needle) {
    return strstr(hay, needle) != NULL;
}

/* Loads `text` as a config file into a fresh config; returns the result. */
static int load_text(const char *text, cv_config **ret_cfg, char *err, size_t errlen,
                     const char **ret_path) {
    const char *path = write_file(text);
    if (ret_path)
        *ret_path = path;
    cv_config *cfg = cv_config_new();
    err[0] = '\0';
    int r = cv_config_load_file(cfg, path, err, errlen);
    if (ret_cfg)
        *ret_cfg = cfg;
    else
        cv_config_free(cfg);
    return r;
}

static void test_file_syntax(void) {
    char err[512];
    cv_config *cfg;
    int r = load_text("# a comment\n"
                      "\n"
                      "   \t\n"
                      "   # an indented comment\n"
                      "postgres.conninfo = host=db port=5432 dbname=cv\n"
                      "\tbatch.max_messages\t=\t  250  \n"
                      "ack.policy=any\n"
                      "topics.acks =   my.acks\r\n"
                      "kafka.bootstrap.servers = k1:9092,k2:9092\n"
                      "kafka.sasl.jaas = a=b;c=d\n"
                      "http.token =\n"
                      "limits.max_body_bytes = 64k\n"
                      "log.segment_bytes = 1M",
                      &cfg, err, sizeof(err), NULL);
    TAP_IS_INT(r, 0, "file: comments, blank lines, whitespace parse");
    if (r)
        printf("#   error: %s\n", err);
    TAP_IS_STR(cv_config_str(cfg, "postgres.conninfo"), "host=db port=5432 dbname=cv",
               "file: '=' inside a value is kept");
    TAP_IS_INT(cv_config_int(cfg, "batch.max_messages"), 250,
               "file: tabs and spaces around key and value are trimmed");
    TAP_IS_STR(cv_config_str(cfg, "ack.policy"), "any", "file: no spaces around '='");
    TAP_IS_STR(cv_config_str(cfg, "topics.acks"), "my.acks",
               "file: CRLF line ending is trimmed");
    TAP_IS_STR(cv_config_kafka_get(cfg, "bootstrap.servers"), "k1:9092,k2:9092",
               "file: kafka.* passes through without its prefix");
    TAP_IS_STR(cv_config_kafka_get(cfg, "sasl.jaas"), "a=b;c=d",
               "file: kafka.* value with '=' is kept");
    TAP_IS_STR(cv_config_str(cfg, "http.token"), "", "file: empty value");
    TAP_IS_INT(cv_config_int(cfg, "limits.max_body_bytes"), 64 * 1024, "file: k suffix");
    TAP_IS_INT(cv_config_int(cfg, "log.segment_bytes"), 1024 * 1024,
               "file: M suffix on a last line without newline");
    TAP_IS_STR(cv_config_str(cfg, "topics.dlq"), "chatvault.dlq",
               "file: unset key reads its default");
    TAP_IS_STR(cv_config_kafka_get(cfg, "group.id"), "chatvault",
               "kafka.group.id defaults to chatvault");
    cfg = cv_config_free(cfg);

    r = load_text("kafka.group.id = mine\nbatch.max_ms = 5\nbatch.max_ms = 7\n", &cfg,
                  err, sizeof(err), NULL);
    TAP_IS_INT(r, 0, "file: a key given twice");
    TAP_IS_INT(cv_config_int(cfg, "batch.max_ms"), 7, "file: the later line wins");
    TAP_IS_STR(cv_config_kafka_get(cfg, "group.id"), "mine",
               "kafka.group.id set by the user beats the built-in default");
    cv_config_free(cfg);
}

static void test_file_errors(void) {
    char err[512];
    const char *path;
    char where[300];

    int r = load_text("# ok\nbatch.max_ms = 5\nno.such.key = 1\n", NULL, err, sizeof(err),
                      &path);
    snprintf(where, sizeof(where), "%s:3", path);
    TAP_IS_INT(r, -EINVAL, "unknown key: -EINVAL");
    tap_ok(contains(err, "no.such.key"), "unknown key: error names the key");
    tap_ok(contains(err, where), "unknown key: error names file:line (%s)", err);

    r = load_text("just some words\n", NULL, err, sizeof(err), &path);
    TAP_IS_INT(r, -EINVAL, "line without '=': -EINVAL");
    snprintf(where, sizeof(where), "%s:1", path);
    tap_ok(contains(err, where), "line without '=': names file:line (%s)", err);

    r = load_text(" = value\n", NULL, err, sizeof(err), NULL);
    TAP_IS_INT(r, -EINVAL, "missing key before '=': -EINVAL");

    r = load_text("\n\nbatch.max_messages = many\n", NULL, err, sizeof(err), &path);
    snprintf(where, sizeof(where), "%s:3", path);
    TAP_IS_INT(r, -EINVAL, "bad int: -EINVAL");
    tap_ok(contains(err, "batch.max_messages") && contains(err, where),
           "bad int: error names key and file:line (%s)", err);

    r = load_text("batch.max_messages = 12x\n", NULL, err, sizeof(err), NULL);
    tap_ok(r == -EINVAL && contains(err, "batch.max_messages"),
           "int with trailing garbage: error names key (%s)", err);

    r = load_text("batch.max_messages = \n", NULL, err, sizeof(err), NULL);
    tap_ok(r == -EINVAL && contains(err, "batch.max_messages"),
           "empty int: error names key (%s)", err);

    r = load_text("batch.max_messages = 0\n", NULL, err, sizeof(err), NULL);
    tap_ok(r == -EINVAL && contains(err, "batch.max_messages") &&
               contains(err, "out of range"),
           "int below range: error names key (%s)", err);

    r = load_text("batch.max_messages = 1000001\n", NULL, err, sizeof(err), NULL);
    tap_ok(r == -EINVAL && contains(err, "batch.max_messages") &&
               contains(err, "out of range"),
           "int above range: error names key (%s)", err);

    r = load_text("batch.max_messages = 1000000\n", NULL, err, sizeof(err), NULL);
    TAP_IS_INT(r, 0, "int at the top of its range is accepted");

    r = load_text("log.compression = lz4\n", NULL, err, sizeof(err), NULL);
    tap_ok(r == -EINVAL && contains(err, "log.compression") && contains(err, "off|zstd"),
           "log.compression other than off|zstd: error names key and values (%s)", err);
    r = load_text("log.compression_level = 20\n", NULL, err, sizeof(err), NULL);
    tap_ok(r == -EINVAL && contains(err, "log.compression_level") &&
               contains(err, "out of range"),
           "zstd level above 19: error names key (%s)", err);
    r = load_text("log.compression_level = 0\n", NULL, err, sizeof(err), NULL);
    tap_ok(r == -EINVAL && contains(err, "log.compression_level"),
           "zstd level 0: error names key (%s)", err);
    r = load_text("log.compression = zstd\nlog.compression_level = 19\n", NULL, err,
                  sizeof(err), NULL);
    TAP_IS_INT(r, 0, "log.compression = zstd at level 19 is accepted");

    /* Strings with a shape of their own are checked when set, so that
     * `config --check` catches what the broker would refuse at start. */
    static const char *const bad_strings[][2] = {
        {"http.listen = 127.0.0.1:99999\n", "bad port"},
        {"http.listen = localhost\n", "host:port"},
        {"topics.pattern = ^chat\\.(\n", "regular expression"},
        {"topics.pattern = chat/general\n", "topic name"},
        {"topics.acks = acks topic\n", "topic name"},
        {"topics.dlq = \n", "topic name"},
        {"topics.prefix = chat:\n", "topic name"},
        {"http.allowed_hosts = evil.example/x\n", "host names"},
        {"http.allowed_hosts = chatvault.internal:http\n", "host names"},
        {"http.allowed_hosts = :9187\n", "host names"},
        {"http.allowed_hosts = *.example\n", "host names"},
    };
    for (size_t i = 0; i < sizeof(bad_strings) / sizeof(bad_strings[0]); i++) {
        r = load_text(bad_strings[i][0], NULL, err, sizeof(err), &path);
        snprintf(where, sizeof(where), "%s:1", path);
        tap_ok(r == -EINVAL && contains(err, bad_strings[i][1]) && contains(err, where),
               "refused with file:line and why: %s", err);
    }
    static const char *const good_strings[] = {
        "http.listen = \n",
        "http.listen = [::1]:0\n",
        "topics.pattern = ^(chat|talk)\\..+$\n",
        "topics.pattern = chat.general\n",
        "topics.prefix = \n",
        "http.allowed_hosts = chatvault.internal, metrics.example:9187,grafana\n",
        "http.allowed_hosts = *\n",
    };
    for (size_t i = 0; i < sizeof(good_strings) / sizeof(good_strings[0]); i++) {
        r = load_text(good_strings[i], NULL, err, sizeof(err), NULL);
        tap_ok(r == 0, "accepted: %.*s", (int)strlen(good_strings[i]) - 1,
               good_strings[i]);
    }

    r = load_text("log.segment_bytes = 99999999999999999999G\n", NULL, err, sizeof(err),
                  NULL);
    tap_ok(r == -EINVAL && contains(err, "log.segment_bytes") &&
               contains(err, "out of range"),
           "int overflow: error names key, says out of range (%s)", err);

    r = load_text("log.segment_bytes = 9000000000000000000G\n", NULL, err, sizeof(err),
                  NULL);
    tap_ok(r == -EINVAL && contains(err, "log.segment_bytes") &&
               contains(err, "out of range"),
           "int overflow through a suffix: says out of range (%s)", err);

    r = load_text("batch.max_ms = 1x5\n", NULL, err, sizeof(err), NULL);
    tap_ok(r == -EINVAL && contains(err, "not an integer"),
           "digits after a suffix: not an integer (%s)", err);

    r = load_text("batch.max_ms = 99999999999999999999x\n", NULL, err, sizeof(err), NULL);
    tap_ok(r == -EINVAL && contains(err, "not an integer"),
           "overflowing digits with garbage: not an integer (%s)", err);

    r = load_text("ack.policy = some\n", NULL, err, sizeof(err), NULL);
    tap_ok(r == -EINVAL && contains(err, "ack.policy") && contains(err, "all|any"),
           "bad enum: error names key and choices (%s)", err);

    r = load_text("ack.policy = al\n", NULL, err, sizeof(err), NULL);
    TAP_IS_INT(r, -EINVAL, "enum prefix of a choice is refused");

    r = load_text("ack.policy = anyall\n", NULL, err, sizeof(err), NULL);
    TAP_IS_INT(r, -EINVAL, "enum with a choice as prefix is refused");

    r = load_text("kafka. = x\n", NULL, err, sizeof(err), NULL);
    TAP_IS_INT(r, -EINVAL, "empty kafka property name is refused");

    cv_config *cfg = cv_config_new();
    r = cv_config_load_file(cfg, "/nonexistent/chatvault.conf", err, sizeof(err));
    tap_ok(r == -ENOENT && contains(err, "/nonexistent/chatvault.conf"),
           "missing file: -ENOENT, error names the path (%s)", err);
    cv_config_free(cfg);
}

static void test_sources(void) {
    char err[512];
    const char *path = write_file("batch.max_ms = 1\n"
                                  "batch.max_messages = 11\n"
                                  "topics.acks = from.file\n"
                                  "kafka.client.id = file\n");
    char *envp[] = {
        "PATH=/usr/bin",
        "CHATVAULT_BATCH_MAX_MS=2",
        "CHATVAULT_TOPICS_ACKS=from.env",
        "CHATVAULT_LOG_KEY_FILE=/keys/env.key",
        "CHATVAULT_KAFKA_BOOTSTRAP_SERVERS=broker-a:9092",
        "CHATVAULT_KAFKA_CLIENT_ID=env",
        "CHATVAULT_CONFIG=/ignored/because/cli/path/is/set",
        "NOT_CHATVAULT_BATCH_MAX_MS=99",
        NULL,
    };
    cv_cli_config cli = {.path = path,
                         .sets = {"batch.max_ms=3", "kafka.client.id=flag",
                                  "postgres.conninfo=dbname=x user=y"},
                         .nsets = 3};
    cv_config *cfg = NULL;
    int r = cv_config_build(&cli, envp, &cfg, err, sizeof(err));
    TAP_IS_INT(r, 0, "build: file + env + --set");
    if (r) {
        printf("#   error: %s\n", err);
        return;
    }
    TAP_IS_INT(cv_config_int(cfg, "batch.max_ms"), 3, "--set beats env beats file");
    TAP_IS_STR(cv_config_str(cfg, "topics.acks"), "from.env", "env beats file");
    TAP_IS_INT(cv_config_int(cfg, "batch.max_messages"), 11,
               "file value kept when nothing overrides it");
    TAP_IS_STR(cv_config_str(cfg, "log.key_file"), "/keys/env.key",
               "CHATVAULT_LOG_KEY_FILE maps to log.key_file");
    TAP_IS_STR(cv_config_kafka_get(cfg, "bootstrap.servers"), "broker-a:9092",
               "CHATVAULT_KAFKA_BOOTSTRAP_SERVERS maps to kafka.bootstrap.servers");
    TAP_IS_STR(cv_config_kafka_get(cfg, "client.id"), "flag",
               "kafka.*: --set beats env beats file");
    TAP_IS_STR(cv_config_str(cfg, "postgres.conninfo"), "dbname=x user=y",
               "--set value with '=' is kept");
    cfg = cv_config_free(cfg);

    char *bad_env[] = {"CHATVAULT_NO_SUCH_KEY=1", NULL};
    cv_cli_config none = {0};
    r = cv_config_build(&none, bad_env, &cfg, err, sizeof(err));
    tap_ok(r == -EINVAL && contains(err, "CHATVAULT_NO_SUCH_KEY"),
           "unknown CHATVAULT_ variable: error names it (%s)", err);
    tap_ok(cfg == NULL, "failed build leaves ret_cfg untouched");

    char *bad_val[] = {"CHATVAULT_ACK_POLICY=never", NULL};
    r = cv_config_build(&none, bad_val, &cfg, err, sizeof(err));
    tap_ok(r == -EINVAL && contains(err, "ack.policy") &&
               contains(err, "CHATVAULT_ACK_POLICY"),
           "bad env value: error names key and variable (%s)", err);

    cv_cli_config bad_set = {.sets = {"no.such=1"}, .nsets = 1};
    r = cv_config_build(&bad_set, NULL, &cfg, err, sizeof(err));
    tap_ok(r == -EINVAL && contains(err, "no.such") && contains(err, "--set"),
           "unknown --set key: error names key and --set (%s)", err);

    cv_cli_config no_eq = {.sets = {"batch.max_ms"}, .nsets = 1};
    r = cv_config_build(&no_eq, NULL, &cfg, err, sizeof(err));
    tap_ok(r == -EINVAL && contains(err, "batch.max_ms"),
           "--set without '=': error names it (%s)", err);

    cv_cli_config bad_file = {.path = write_file("x = 1\n")};
    r = cv_config_build(&bad_file, NULL, &cfg, err, sizeof(err));
    tap_ok(r == -EINVAL && contains(err, "\"x\""),
           "build: an error in the file is returned (%s)", err);
}

/* Every default of the table must pass the table's own validation: print the
 * example config (which holds every key at its default) and load it back. */
static void test_defaults_validate(void) {
    char path[300], err[512];
    snprintf(path, sizeof(path), "%s/example.conf", tmpdir);
    FILE *f = fopen(path, "w");
    if (!f) {
        tap_ok(0, "write example config: %s", strerror(errno));
        return;
    }
    cv_config_print_example(f);
    fclose(f);
    cv_config *cfg = cv_config_new();
    int r = cv_config_load_file(cfg, path, err, sizeof(err));
    TAP_IS_INT(r, 0,
               "`chatvault config --example` output loads (every default validates)");
    if (r)
        printf("#   error: %s\n", err);

    /* The loaded values equal the defaults a fresh config reports. */
    cv_config *fresh = cv_config_new();
    static const char *const keys[] = {
        "postgres.conninfo",
        "log.dir",
        "log.key_file",
        "log.segment_bytes",
        "ack.policy",
        "batch.max_messages",
        "batch.max_bytes",
        "batch.max_ms",
        "limits.max_body_bytes",
        "topics.pattern",
        "topics.prefix",
        "topics.acks",
        "topics.dlq",
        "http.listen",
        "http.token",
        "http.token_file",
        "http.allowed_hosts",
        "http.header_timeout_s",
        "http.max_connections",
        "http.max_connections_per_address",
        "shutdown.timeout_ms",
    };
    int same = 1;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strcmp(cv_config_str(cfg, keys[i]), cv_config_str(fresh, keys[i])) != 0) {
            printf("#   %s: example \"%s\", default \"%s\"\n", keys[i],
                   cv_config_str(cfg, keys[i]), cv_config_str(fresh, keys[i]));
            same = 0;
        }
    tap_ok(same, "example config holds every key at its default");
    TAP_IS_INT(cv_config_int(fresh, "batch.max_messages") > 0, 1,
               "default batch.max_messages is positive");
    cv_config_free(fresh);
    cv_config_free(cfg);
    unlink(path);

    /* The help text lists every key. */
    char *help = NULL;
    size_t helplen = 0;
    FILE *m = open_memstream(&help, &helplen);
    cv_config_print_help(m);
    fclose(m);
    int listed = 1;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (!contains(help, keys[i])) {
            printf("#   --help does not list %s\n", keys[i]);
            listed = 0;
        }
    tap_ok(listed, "--help lists every key");
    free(help);
}

static void test_shipped_example(void) {
    char err[512];
    if (access(EXAMPLE_CONFIG, F_OK) != 0) {
        tap_ok(1, "# SKIP %s not present", EXAMPLE_CONFIG);
        return;
    }
    cv_config *cfg = cv_config_new();
    int r = cv_config_load_file(cfg, EXAMPLE_CONFIG, err, sizeof(err));
    TAP_IS_INT(r, 0, EXAMPLE_CONFIG " parses");
    if (r)
        printf("#   error: %s\n", err);
    cv_config_free(cfg);
}

int main(void) {
    if (!mkdtemp(tmpdir)) {
        printf("Bail out! mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    test_file_syntax();
    test_file_errors();
    test_sources();
    test_defaults_validate();
    test_shipped_example();
    for (int i = 1; i <= nfiles; i++) {
        char path[300];
        snprintf(path, sizeof(path), "%s/%d.conf", tmpdir, i);
        unlink(path);
    }
    rmdir(tmpdir);
    return tap_done();
}
