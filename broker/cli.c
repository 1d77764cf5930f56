/*
 * cli — see cli.h.
 */
#include "cli.h"

#include "datakeys.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "access.h"
#include "applog/applog.h"
#include "cold/cold.h"
#include "datakeys.h"
#include "json.h"
#include "util.h"

extern char **environ;

/* ---- options --------------------------------------------------------- */

/* -c, --set and --help: every command's, after its own in --help. */
enum { COMMON_CONFIG = 1, COMMON_SET, COMMON_HELP };

static int common_opt(const cv_cli_opt *opt, void *dest, const char *cmd,
                      const char *value) {
    cv_cli_config *c = dest;
    size_t cap = sizeof(c->sets) / sizeof(c->sets[0]);
    switch (opt->id) {
    case COMMON_CONFIG:
        c->path = value;
        return 0;
    case COMMON_SET:
        if ((size_t)c->nsets >= cap) {
            cv_error(cmd, "too many --set options (at most %zu)", cap);
            return -1;
        }
        c->sets[c->nsets++] = value;
        return 0;
    }
    return 0;
}

static const cv_cli_opt common_opts[] = {
    CV_OPT_CALL("config", 'c', "FILE", "configuration file", common_opt, COMMON_CONFIG),
    CV_OPT_CALL("set", 0, "key=value", "override a configuration key (repeatable)",
                common_opt, COMMON_SET),
    CV_OPT_END,
};
static const cv_cli_opt help_opts[] = {
    CV_OPT_CALL("help", 'h', NULL, "print this help and exit", common_opt, COMMON_HELP),
    CV_OPT_END,
};

/* The tables a command's options are looked up in, in --help order. */
typedef struct table {
    const cv_cli_opt *opts;
    char *base;
} table;

typedef struct parser {
    const cv_cli_spec *spec;
    table t[4];
    size_t nt;
} parser;

typedef struct found {
    const cv_cli_opt *opt;
    char *base;
} found;

static void parser_init(parser *p, const cv_cli_spec *spec, void *opts, cv_cli *cli) {
    memset(p, 0, sizeof(*p));
    p->spec = spec;
    if (spec->opts)
        p->t[p->nt++] = (table){spec->opts, opts};
    if (spec->group)
        p->t[p->nt++] = (table){spec->group->opts, (char *)opts + spec->group->off};
    if (!spec->no_config)
        p->t[p->nt++] = (table){common_opts, (char *)&cli->config};
    p->t[p->nt++] = (table){help_opts, (char *)&cli->config}; /* writes nothing */
}

/* The option --name (n bytes of it): exactly, else by a unique prefix as
 * getopt_long takes it. 1 found, 0 none, -1 ambiguous (error printed). */
static int find_long(const parser *p, const char *name, size_t n, found *ret) {
    int matches = 0;
    for (size_t i = 0; i < p->nt; i++)
        for (const cv_cli_opt *o = p->t[i].opts; o->name; o++) {
            if (strncmp(o->name, name, n) != 0)
                continue;
            if (o->name[n] == '\0') {
                *ret = (found){o, p->t[i].base};
                return 1;
            }
            if (!matches++)
                *ret = (found){o, p->t[i].base};
        }
    if (matches > 1) {
        cv_error(p->spec->name, "option '--%.*s' is ambiguous (see chatvault %s --help)",
                 (int)n, name, p->spec->name);
        return -1;
    }
    return matches;
}

static bool find_short(const parser *p, char c, found *ret) {
    for (size_t i = 0; i < p->nt; i++)
        for (const cv_cli_opt *o = p->t[i].opts; o->name; o++)
            if (o->shortname && o->shortname == c) {
                *ret = (found){o, p->t[i].base};
                return true;
            }
    return false;
}

static int int_value(const parser *p, const cv_cli_opt *o, const char *v, int64_t *ret) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < o->min || x > o->max) {
        if (o->max == INT64_MAX)
            cv_error(p->spec->name, "--%s: \"%s\" is not a number of at least %" PRId64,
                     o->name, v, o->min);
        else
            cv_error(p->spec->name,
                     "--%s: \"%s\" is not a number from %" PRId64 " to %" PRId64, o->name,
                     v, o->min, o->max);
        return -1;
    }
    *ret = x;
    return 0;
}

/* Applies one option with its value (NULL for none). 0, 1 for --help, -1
 * after the error. */
static int apply(const parser *p, const found *f, const char *v) {
    const cv_cli_opt *o = f->opt;
    char *dest = f->base + o->off;
    switch (o->kind) {
    case CV_CLI_FLAG:
        *(bool *)dest = true;
        return 0;
    case CV_CLI_STR:
        *(const char **)dest = v;
        return 0;
    case CV_CLI_INT:
        return int_value(p, o, v, (int64_t *)dest);
    case CV_CLI_LIST: {
        size_t *n = (size_t *)(f->base + o->off_count);
        if (*n >= o->cap) {
            cv_error(p->spec->name, "more than %zu --%s", o->cap, o->name);
            return -1;
        }
        ((const char **)dest)[(*n)++] = v;
        return 0;
    }
    case CV_CLI_CALL:
        if (o->fn == common_opt && o->id == COMMON_HELP)
            return 1;
        return o->fn(o, dest, p->spec->name, v) < 0 ? -1 : 0;
    }
    return -1;
}

/* One "--name[=value]" at argv[*i]; may take the next argument. */
static int long_opt(const parser *p, int argc, char **argv, int *i) {
    const char *a = argv[*i] + 2, *eq = strchr(a, '=');
    size_t n = eq ? (size_t)(eq - a) : strlen(a);
    found f;
    int r = find_long(p, a, n, &f);
    if (r < 0)
        return -1;
    if (r == 0) {
        cv_error(p->spec->name, "unrecognized option '--%.*s' (see chatvault %s --help)",
                 (int)n, a, p->spec->name);
        return -1;
    }
    const char *v = eq ? eq + 1 : NULL;
    if (!f.opt->arg && v) {
        cv_error(p->spec->name, "option '--%s' doesn't allow an argument", f.opt->name);
        return -1;
    }
    if (f.opt->arg && !v) {
        const char *next = *i + 1 < argc ? argv[*i + 1] : NULL;
        if (f.opt->optional) {
            if (next && *next >= '0' && *next <= '9')
                v = argv[++*i];
        } else if (next) {
            v = argv[++*i];
        } else {
            cv_error(p->spec->name, "option '--%s' requires an argument", f.opt->name);
            return -1;
        }
    }
    return apply(p, &f, v);
}

/* One cluster of short options "-xyz" or "-xVALUE" at argv[*i]. */
static int short_opts(const parser *p, int argc, char **argv, int *i) {
    for (const char *c = argv[*i] + 1; *c; c++) {
        found f;
        if (!find_short(p, *c, &f)) {
            cv_error(p->spec->name, "invalid option -- '%c' (see chatvault %s --help)",
                     *c, p->spec->name);
            return -1;
        }
        if (!f.opt->arg) {
            int r = apply(p, &f, NULL);
            if (r != 0)
                return r;
            continue;
        }
        const char *v = c[1] ? c + 1 : *i + 1 < argc ? argv[++*i] : NULL;
        if (!v) {
            cv_error(p->spec->name, "option requires an argument -- '%c'", *c);
            return -1;
        }
        return apply(p, &f, v);
    }
    return 0;
}

int cv_cli_parse(const cv_cli_spec *spec, int argc, char **argv, void *opts,
                 cv_cli *ret) {
    parser p;
    memset(ret, 0, sizeof(*ret));
    parser_init(&p, spec, opts, ret);
    /* Positional arguments move to the front, in order: argv[1..nargs]. */
    int nargs = 0;
    bool dashdash = false;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        int r = 0;
        if (dashdash || a[0] != '-' || a[1] == '\0')
            argv[1 + nargs++] = a;
        else if (strcmp(a, "--") == 0)
            dashdash = true;
        else if (a[1] == '-')
            r = long_opt(&p, argc, argv, &i);
        else
            r = short_opts(&p, argc, argv, &i);
        if (r < 0)
            return CV_EXIT_USAGE;
        if (r > 0) {
            cv_cli_help(spec, stdout);
            return CV_EXIT_OK;
        }
    }
    ret->args = argv + 1;
    ret->nargs = nargs;
    if (spec->max_args >= 0 && nargs > spec->max_args) {
        cv_error(spec->name, "unexpected argument \"%s\"", argv[1 + spec->max_args]);
        return CV_EXIT_USAGE;
    }
    return CV_CLI_RUN;
}

#define HELP_COLUMN 24
#define HELP_WIDTH 80

/* Writes the help text of an option, the cursor standing at HELP_COLUMN:
 * words wrapped before HELP_WIDTH, every further line indented to
 * HELP_COLUMN. A "\n" in the text starts a new line; spaces after it
 * indent that line and the lines it wraps to (a list inside the help). */
static void put_wrapped(FILE *out, const char *text) {
    const char *s = text;
    for (bool first = true;; first = false) {
        size_t seg = strcspn(s, "\n"), lead = strspn(s, " ");
        if (lead > seg)
            lead = seg;
        if (!first)
            fprintf(out, "%*s", HELP_COLUMN, "");
        fprintf(out, "%.*s", (int)lead, s);
        size_t start = HELP_COLUMN + lead, col = start;
        for (const char *p = s + lead, *end = s + seg; p < end;) {
            size_t w = 0;
            while (p + w < end && p[w] != ' ')
                w++;
            if (col > start && col + 1 + w >= HELP_WIDTH) {
                fprintf(out, "\n%*s", (int)start, "");
                col = start;
            }
            if (col > start) {
                fputc(' ', out);
                col++;
            }
            fwrite(p, 1, w, out);
            col += w;
            for (p += w; p < end && *p == ' '; p++)
                ;
        }
        fputc('\n', out);
        if (!s[seg])
            return;
        s += seg + 1;
    }
}

static void put_option(FILE *out, const cv_cli_opt *o) {
    char left[128];
    int n =
        snprintf(left, sizeof(left), "  %c%c%s--%s", o->shortname ? '-' : ' ',
                 o->shortname ? o->shortname : ' ', o->shortname ? ", " : "  ", o->name);
    if (o->arg)
        snprintf(left + n, sizeof(left) - (size_t)n, o->optional ? " [%s]" : " %s",
                 o->arg);
    int col = (int)strlen(left);
    fputs(left, out);
    if (col + 1 > HELP_COLUMN) {
        fprintf(out, "\n%*s", HELP_COLUMN, "");
    } else {
        fprintf(out, "%*s", HELP_COLUMN - col, "");
    }
    put_wrapped(out, o->help);
}

static void put_table(FILE *out, const cv_cli_opt *opts) {
    for (const cv_cli_opt *o = opts; o && o->name; o++)
        if (o->help)
            put_option(out, o);
}

int cv_cli_subcommand(const cv_cli_spec *spec, int argc, char **argv,
                      const char *const *subs, char *name, size_t namelen,
                      cv_cli_spec *ret_spec) {
    if (argc < 2) {
        cv_cli_help(spec, stderr);
        return CV_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 ||
        strcmp(sub, "help") == 0) {
        cv_cli_help(spec, stdout);
        return CV_EXIT_OK;
    }
    size_t n = 0;
    while (subs[n] && strcmp(subs[n], sub) != 0)
        n++;
    if (!subs[n]) {
        char list[256] = "";
        size_t at = 0;
        for (size_t i = 0; subs[i] && at < sizeof(list); i++)
            at += (size_t)snprintf(list + at, sizeof(list) - at, "%s%s",
                                   i == 0        ? ""
                                   : subs[i + 1] ? ", "
                                                 : " or ",
                                   subs[i]);
        cv_error(spec->name, "unknown subcommand \"%s\" (%s)", sub, list);
        return CV_EXIT_USAGE;
    }
    snprintf(name, namelen, "%s %s", spec->name, sub);
    *ret_spec = *spec;
    ret_spec->name = name;
    return CV_CLI_RUN;
}

void cv_cli_help(const cv_cli_spec *spec, FILE *out) {
    fprintf(out, "usage: chatvault %s\n", spec->usage);
    if (spec->about)
        fprintf(out, "\n%s", spec->about);
    fprintf(out, "\noptions:\n");
    put_table(out, spec->opts);
    if (!spec->no_config) {
        cv_cli_opt config = common_opts[0];
        char help[256];
        if (spec->config_keys) {
            snprintf(help, sizeof(help), "configuration file (%s)", spec->config_keys);
            config.help = help;
        }
        put_option(out, &config);
        put_table(out, common_opts + 1);
    }
    put_table(out, help_opts);
    if (spec->group) {
        fprintf(out, "\n%s:\n", spec->group->title);
        put_table(out, spec->group->opts);
    }
    if (spec->epilog)
        fprintf(out, "\n%s", spec->epilog);
    if (spec->epilog_fn) {
        fputc('\n', out);
        spec->epilog_fn(out);
    }
}

cv_config *cv_cli_load_config(const cv_cli_config *cli) {
    char err[512];
    cv_config *cfg = NULL;
    if (cv_config_build(cli, environ, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "chatvault: config error: %s\n", err);
        return NULL;
    }
    if (cv_config_warning(cfg))
        fprintf(stderr, "chatvault: warning: %s\n", cv_config_warning(cfg));
    if (cv_cli_cold_install(cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "chatvault: config error: %s\n", err);
        return cv_config_free(cfg);
    }
    return cfg;
}

/* The cold tier of every command: one target for the process, made from
 * the first config loaded, kept until exit (the log's reader calls it). */
static cv_cold *cold_target;

int cv_cli_cold_open(const cv_config *cfg, cv_cold **ret, char *errbuf, size_t errlen) {
    char cache[4096];
    const char *cd = cv_config_str(cfg, "cold.cache_dir");
    if (*cd)
        snprintf(cache, sizeof(cache), "%s", cd);
    else
        snprintf(cache, sizeof(cache), "%s/.cold-cache", cv_config_str(cfg, "log.dir"));
    cv_cold_conf cc = {
        .target = cv_config_str(cfg, "cold.target"),
        .endpoint = cv_config_str(cfg, "cold.endpoint"),
        .region = cv_config_str(cfg, "cold.region"),
        .credentials_file = cv_config_str(cfg, "cold.credentials_file"),
        .ca_file = cv_config_str(cfg, "cold.ca_file"),
        .cache_dir = cache,
        .log_dir = cv_config_str(cfg, "log.dir"),
    };
    return cv_cold_open(&cc, ret, errbuf, errlen);
}

int cv_cli_cold_install(const cv_config *cfg, char *errbuf, size_t errlen) {
    if (cold_target || !*cv_config_str(cfg, "cold.target"))
        return 0;
    int r = cv_cli_cold_open(cfg, &cold_target, errbuf, errlen);
    if (r < 0)
        return r;
    cv_applog_set_cold_fetch(cv_cold_fetch, cold_target);
    return 0;
}

void cv_cli_default_log_dir(cv_cli_log_dirs *d, const cv_config *cfg) {
    if (d->n == 0 && *cv_config_str(cfg, "log.dir"))
        d->dir[d->n++] = cv_config_str(cfg, "log.dir");
}

static int attach_store(cv_keyring *kr, const char *dir, char *errbuf, size_t errlen) {
    if (!*dir || cv_keyring_data_keys(kr, dir))
        return 0;
    cv_datakeys *dk = NULL;
    int r = cv_datakeys_open(dir, kr, &dk, errbuf, errlen);
    if (r == 0 && (r = cv_keyring_attach(kr, dk)) < 0) {
        cv_errf(errbuf, errlen, "too many log directories for data keys");
        cv_datakeys_free(dk);
    }
    return r;
}

int cv_cli_attach_data_keys(cv_keyring *kr, const cv_config *cfg,
                            const cv_cli_log_dirs *ld, char *errbuf, size_t errlen) {
    int r = attach_store(kr, cv_config_str(cfg, "log.dir"), errbuf, errlen);
    for (size_t i = 0; r == 0 && ld && i < ld->n; i++)
        r = attach_store(kr, ld->dir[i], errbuf, errlen);
    return r;
}

int cv_cli_load_keys(const cv_config *cfg, const cv_cli_log_dirs *ld, cv_keyring **ret,
                     char *errbuf, size_t errlen) {
    cv_keyring *kr = NULL;
    int r = cv_keyring_load(cv_config_str(cfg, "log.key_file"), &kr, errbuf, errlen);
    if (r < 0)
        return r;
    if ((r = cv_cli_attach_data_keys(kr, cfg, ld, errbuf, errlen)) < 0) {
        cv_keyring_free(kr);
        return r;
    }
    *ret = kr;
    return 0;
}

cv_envelope_rules cv_cli_envelope_rules(const cv_config *cfg) {
    return (cv_envelope_rules){
        .topic_prefix = cv_config_str(cfg, "topics.prefix"),
        .max_body_bytes = (size_t)cv_config_int(cfg, "limits.max_body_bytes"),
        .ack_topic = cv_config_str(cfg, "topics.acks"),
        .dlq_topic = cv_config_str(cfg, "topics.dlq"),
    };
}

static cv_log_level log_min = CV_LOG_INFO;

void cv_log_set_min(cv_log_level level) {
    log_min = level;
}

const char *cv_log_level_name(cv_log_level level) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    return (unsigned)level <= CV_LOG_ERROR ? names[level] : "?";
}

/* Writes `s` as a logfmt value: quoted, with " and \ and newlines escaped. */
static void fput_quoted(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f), fputc(*s, f);
        else if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

void cv_log(cv_log_level level, const char *msg, const char *kvfmt, ...) {
    if (level < log_min)
        return;
    struct timeval tv;
    struct tm tm;
    char ts[64];
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    flockfile(stderr);
    fprintf(stderr, "ts=%s.%03dZ level=%s msg=", ts, (int)(tv.tv_usec / 1000),
            cv_log_level_name(level));
    fput_quoted(stderr, msg);
    if (kvfmt && *kvfmt) {
        va_list ap;
        va_start(ap, kvfmt);
        fputc(' ', stderr);
        vfprintf(stderr, kvfmt, ap);
        va_end(ap);
    }
    fputc('\n', stderr);
    funlockfile(stderr);
}

void cv_error(const char *cmd, const char *fmt, ...) {
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "chatvault %s: %s\n", cmd, msg);
    cv_audit_note_error(msg);
}

/* The last authentication or TLS failure librdkafka logged, for the one
 * line a command ends with (librdkafka itself reports only "Broker transport
 * failure" once every broker refused it). */
static pthread_mutex_t auth_lock = PTHREAD_MUTEX_INITIALIZER;
static char auth_error[400];

static void note_auth_error(const char *buf) {
    static const char *marks[] = {"SASL authentication error",  "SASL SCRAM",
                                  "SASL handshake failed",      "SSL handshake failed",
                                  "Unsupported SASL mechanism", NULL};
    const char *at = NULL;
    for (int i = 0; marks[i] && !at; i++)
        at = strstr(buf, marks[i]);
    if (!at)
        return;
    pthread_mutex_lock(&auth_lock);
    snprintf(auth_error, sizeof(auth_error), "%s", at);
    pthread_mutex_unlock(&auth_lock);
}

const char *cv_cli_kafka_auth_error(char *buf, size_t len) {
    pthread_mutex_lock(&auth_lock);
    snprintf(buf, len, "%s", auth_error);
    pthread_mutex_unlock(&auth_lock);
    return buf[0] ? buf : NULL;
}

static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac,
                         const char *buf) {
    note_auth_error(buf);
    cv_log_level l = level <= 3   ? CV_LOG_ERROR
                     : level == 4 ? CV_LOG_WARN
                     : level <= 6 ? CV_LOG_INFO
                                  : CV_LOG_DEBUG;
    /* A request cut short by our own rd_kafka_destroy() is no news: logged
     * at error level it came after, and hid, the command's last line that
     * says what went wrong. */
    if (strstr(buf, "Broker handle destroyed"))
        l = CV_LOG_DEBUG;
    char msg[1024];
    snprintf(msg, sizeof(msg), "%s", buf);
    cv_log(l, msg, "component=kafka client=%s facility=%s", rd_kafka_name(rk), fac);
}

/* Properties that only one side understands; giving them to the other makes
 * librdkafka warn at start-up. */
static const char *consumer_only[] = {"group.",          "auto.",
                                      "enable.auto.",    "partition.assignment",
                                      "session.timeout", "max.poll",
                                      "queued.",         "fetch.",
                                      "isolation.",      "heartbeat.",
                                      "check.crcs",      "enable.partition.eof",
                                      "offset.store",    "consume.callback",
                                      "group.instance",  NULL};
static const char *producer_only[] = {"enable.idempotence",
                                      "linger.ms",
                                      "queue.buffering.",
                                      "batch.",
                                      "acks",
                                      "request.required.acks",
                                      "compression.",
                                      "message.timeout.ms",
                                      "retries",
                                      "delivery.",
                                      "transactional.",
                                      "transaction.",
                                      "sticky.partitioning",
                                      "partitioner",
                                      "message.send.max.retries",
                                      "enable.gapless",
                                      "queuing.strategy",
                                      "request.timeout.ms",
                                      NULL};

static bool has_prefix_in(const char *key, const char **list) {
    for (; *list; list++)
        if (strncmp(key, *list, strlen(*list)) == 0)
            return true;
    return false;
}

bool cv_cli_kafka_embedded(const cv_config *cfg) {
    const char *b = cv_config_kafka_get(cfg, "bootstrap.servers");
    return b && strcmp(b, "embedded") == 0;
}

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v, char *errbuf,
                    size_t errlen) {
    char kerr[512];
    if (rd_kafka_conf_set(conf, k, v, kerr, sizeof(kerr)) != RD_KAFKA_CONF_OK) {
        snprintf(errbuf, errlen, "kafka.%s = \"%s\": %s", k, v, kerr);
        return -EINVAL;
    }
    return 0;
}

/* librdkafka reads its TLS files only when a client is created, and then
 * names neither the key nor the file ("ssl.ca.location failed: x509
 * certificate routines::system lib"), so a missing or unreadable one is
 * found here, as the configuration error it is. Only with TLS on: without
 * it librdkafka never opens them. */
static int check_tls_files(const cv_config *cfg, char *errbuf, size_t errlen) {
    static const char *keys[] = {"ssl.ca.location",          "ssl.crl.location",
                                 "ssl.certificate.location", "ssl.key.location",
                                 "ssl.keystore.location",    NULL};
    const char *proto = cv_config_kafka_get(cfg, "security.protocol");
    if (!proto || (strcasecmp(proto, "ssl") != 0 && strcasecmp(proto, "sasl_ssl") != 0))
        return 0;
    for (int i = 0; keys[i]; i++) {
        const char *v = cv_config_kafka_get(cfg, keys[i]);
        if (!v || !*v)
            continue;
        /* "probe": librdkafka looks in the system's usual CA places. */
        if (strcmp(keys[i], "ssl.ca.location") == 0 && strcmp(v, "probe") == 0)
            continue;
        if (access(v, R_OK) < 0) {
            int e = errno;
            snprintf(errbuf, errlen, "kafka.%s = \"%s\": cannot read it: %s", keys[i], v,
                     strerror(e));
            return -e;
        }
    }
    return 0;
}

int cv_cli_parse_url(const char *s, bool tls, const char *path, const char *what,
                     cv_cli_url *u, char *err, size_t errlen) {
    memset(u, 0, sizeof(*u));
    const char *h = s;
    if (strncmp(s, "http://", 7) == 0)
        h = s + 7, tls = false;
    else if (strncmp(s, "https://", 8) == 0)
        h = s + 8, tls = true;
    else if (strstr(s, "://")) {
        snprintf(err, errlen, "%s \"%.200s\": only http:// and https:// URLs", what, s);
        return -EINVAL;
    }
    u->tls = tls;
    const char *slash = strchr(h, '/');
    size_t hostport = slash ? (size_t)(slash - h) : strlen(h);
    char hp[300];
    if (hostport >= sizeof(hp)) {
        snprintf(err, errlen, "%s \"%.200s\": bad host", what, s);
        return -EINVAL;
    }
    memcpy(hp, h, hostport);
    hp[hostport] = '\0';
    const char *colon = strrchr(hp, ':'), *bracket = strrchr(hp, ']');
    if (colon && (!bracket || colon > bracket)) {
        if (strlen(colon + 1) >= sizeof(u->port) || !colon[1]) {
            snprintf(err, errlen, "%s \"%.200s\": bad port", what, s);
            return -EINVAL;
        }
        snprintf(u->port, sizeof(u->port), "%s", colon + 1);
        hp[colon - hp] = '\0';
    } else {
        snprintf(u->port, sizeof(u->port), "%s", tls ? "443" : "80");
    }
    if (hp[0] == '[') {
        size_t n = strlen(hp);
        if (n < 3 || hp[n - 1] != ']') {
            snprintf(err, errlen, "%s \"%.200s\": bad IPv6 host", what, s);
            return -EINVAL;
        }
        hp[n - 1] = '\0';
        memmove(hp, hp + 1, n - 1);
    }
    if (strcmp(hp, "0.0.0.0") == 0 || !*hp)
        snprintf(hp, sizeof(hp), "127.0.0.1");
    else if (strcmp(hp, "::") == 0)
        snprintf(hp, sizeof(hp), "::1");
    snprintf(u->host, sizeof(u->host), "%s", hp);
    const char *own = slash ? slash : "";
    size_t plen = strlen(own);
    while (plen > 0 && own[plen - 1] == '/')
        plen--;
    if (plen + strlen(path) >= sizeof(u->path)) {
        snprintf(err, errlen, "%s \"%.200s\": path too long", what, s);
        return -EINVAL;
    }
    snprintf(u->path, sizeof(u->path), "%.*s%s", (int)plen, own, path);
    return 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg) {
    return cv_buf_append(arg, data, size * n) == 0 ? size * n : 0;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int cv_cli_http_get(const cv_cli_url *u, const char *token, cv_buf *body, char *err,
                    size_t errlen) {
    pthread_once(&curl_once, curl_init);
    bool v6 = strchr(u->host, ':') != NULL;
    char url[1024], auth[1100];
    snprintf(url, sizeof(url), "%s://%s%s%s:%s%s", u->tls ? "https" : "http",
             v6 ? "[" : "", u->host, v6 ? "]" : "", u->port, u->path);
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    struct curl_slist *hdrs = curl_slist_append(NULL, "Accept: application/json");
    if (token && *token) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        hdrs = curl_slist_append(hdrs, auth);
    }
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "chatvault");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
    if (u->ca_file && *u->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, u->ca_file);
    CURLcode cr = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdrs);
    if (token && *token)
        explicit_bzero(auth, sizeof(auth));
    curl_easy_cleanup(c);
    if (cr != CURLE_OK) {
        snprintf(
            err, errlen, "%s: %s%s", url, *cerr ? cerr : curl_easy_strerror(cr),
            cr == CURLE_COULDNT_CONNECT ? " (is the broker running with http.listen set?)"
            : cr == CURLE_PEER_FAILED_VERIFICATION || cr == CURLE_SSL_CACERT_BADFILE
                ? " (set http.tls_ca_file to the certificate that signed the broker's)"
                : "");
        cv_one_line(err);
        return cr == CURLE_WRITE_ERROR          ? -EFBIG
               : cr == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT
                                                : -ECONNREFUSED;
    }
    return (int)status;
}

/* The address of the embedded cluster of the broker that serves http.listen
 * (GET /api/kafka), into buf. 0, or negative with errbuf saying what to do. */
static int embedded_address(const cv_config *cfg, char *buf, size_t len, char *errbuf,
                            size_t errlen) {
    const char *listen = cv_config_str(cfg, "http.listen");
    if (!listen || !*listen) {
        snprintf(errbuf, errlen,
                 "kafka.bootstrap.servers = embedded: the mock cluster lives inside "
                 "`chatvault broker`, and with http.listen empty it cannot be asked for "
                 "its address; set http.listen, or give this command the broker's "
                 "address as kafka.bootstrap.servers");
        return -EINVAL;
    }
    cv_cli_url u;
    bool tls = *cv_config_str(cfg, "http.tls_cert_file");
    if (cv_cli_parse_url(listen, tls, "/api/kafka", "http.listen", &u, errbuf, errlen) <
        0)
        return -EINVAL;
    u.ca_file = cv_config_str(cfg, "http.tls_ca_file");
    cv_buf body;
    cv_buf_init(&body, 1u << 20);
    char err[512];
    int status =
        cv_cli_http_get(&u, cv_config_str(cfg, "http.token"), &body, err, sizeof(err));
    int r = 0;
    json_t *doc = NULL;
    const char *boot = NULL;
    if (status == 200 &&
        cv_json_parse((const char *)body.data, body.len, &doc, err, sizeof(err)) == 0)
        boot = cv_json_str(doc, "bootstrap", NULL);
    if (!boot || !*boot || strlen(boot) >= len) {
        snprintf(errbuf, errlen,
                 "kafka.bootstrap.servers = embedded: the mock cluster lives inside a "
                 "running `chatvault broker`, and none gave its address at %s://%s/"
                 "api/kafka (%s); start the broker, or set kafka.bootstrap.servers",
                 tls ? "https" : "http", listen,
                 status < 0      ? err
                 : status == 401 ? "401: set http.token to the broker's token"
                 : status == 200 ? "it runs with a Kafka of its own, not an embedded one"
                                 : "unexpected answer");
        r = -EHOSTUNREACH;
    } else {
        snprintf(buf, len, "%s", boot);
    }
    json_decref(doc);
    cv_buf_release(&body);
    return r;
}

rd_kafka_conf_t *cv_cli_kafka_conf(const cv_config *cfg, const char *role,
                                   const char *embedded_bootstraps, char *errbuf,
                                   size_t errlen) {
    bool consumer = strcmp(role, "consumer") == 0;
    char asked[1024];
    static const char *consumer_defaults[][2] = {
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"auto.offset.reset", "earliest"},
        /* Measured: with librdkafka's defaults a group consumer stalls near
         * 200k msgs/s; a deeper prefetch queue lifts it past 1M. 16 MiB of
         * it (not 64) drains a 1M backlog as fast on the bench with about
         * 150 MiB less peak RSS (deploy/bench/README.md, issue 16 item 3). */
        {"queued.min.messages", "100000"},
        {"queued.max.messages.kbytes", "16384"},
        /* A restarted broker waits this long for its dead predecessor's
         * partitions; librdkafka's 45 s default is an outage of acks. */
        {"session.timeout.ms", "10000"},
        {"heartbeat.interval.ms", "3000"},
        /* Bounds the wait of an idle fetch. A real Kafka answers as soon as
         * data arrives; the mock cluster holds every fetch this long, so it
         * is also the mock's floor on ack latency per hop. */
        {"fetch.wait.max.ms", "50"},
        /* A channel topic created while the broker runs is found this fast. */
        {"topic.metadata.refresh.interval.ms", "5000"},
        {NULL, NULL}};
    static const char *producer_defaults[][2] = {
        {"enable.idempotence", "true"},
        {"linger.ms", "5"},
        {"queue.buffering.max.messages", "1000000"},
        {"queue.buffering.max.kbytes", "1048576"},
        {NULL, NULL}};
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *(*defs)[2] = consumer ? consumer_defaults : producer_defaults;
    for (int i = 0; defs[i][0]; i++)
        if (conf_set(conf, defs[i][0], defs[i][1], errbuf, errlen) < 0)
            goto fail;
    const char *k, *v;
    for (size_t i = 0; cv_config_kafka_at(cfg, i, &k, &v); i++) {
        if (has_prefix_in(k, consumer ? producer_only : consumer_only))
            continue;
        if (strcmp(k, "bootstrap.servers") == 0 && strcmp(v, "embedded") == 0) {
            if (!embedded_bootstraps) {
                /* Another command: ask the running broker where it is. */
                if (embedded_address(cfg, asked, sizeof(asked), errbuf, errlen) < 0)
                    goto fail;
                embedded_bootstraps = asked;
            }
            v = embedded_bootstraps;
        }
        if (conf_set(conf, k, v, errbuf, errlen) < 0)
            goto fail;
    }
    const char *boot = cv_config_kafka_get(cfg, "bootstrap.servers");
    if (!boot || !*boot) {
        snprintf(errbuf, errlen,
                 "kafka.bootstrap.servers is not set (use host:port, or "
                 "\"embedded\" for a mock cluster inside the broker)");
        goto fail;
    }
    if (check_tls_files(cfg, errbuf, errlen) < 0)
        goto fail;
    rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
    return conf;
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}
