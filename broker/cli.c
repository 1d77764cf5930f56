/*
 * cli — see cli.h.
 */
#include "cli.h"

#include <errno.h>
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
#include "json.h"
#include "util.h"

extern char **environ;

int cv_cli_common_opt(cv_cli_config *cli, int opt, const char *arg) {
    switch (opt) {
    case 'c':
        cli->path = arg;
        return 1;
    case 'S':
        if (cli->nsets >= (int)(sizeof(cli->sets) / sizeof(cli->sets[0]))) {
            fprintf(stderr, "chatvault: too many --set options (at most %zu)\n",
                    sizeof(cli->sets) / sizeof(cli->sets[0]));
            return -1;
        }
        cli->sets[cli->nsets++] = arg;
        return 1;
    default:
        return 0;
    }
}

cv_config *cv_cli_load_config(const cv_cli_config *cli) {
    char err[512];
    cv_config *cfg = NULL;
    if (cv_config_build(cli, environ, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "chatvault: config error: %s\n", err);
        return NULL;
    }
    return cfg;
}

int cv_cli_add_log_dir(cv_cli_log_dirs *d, const char *cmd, const char *arg) {
    if (d->n == CV_CLI_MAX_LOG_DIRS) {
        cv_error(cmd, "more than %d --log-dir", CV_CLI_MAX_LOG_DIRS);
        return -1;
    }
    d->dir[d->n++] = arg;
    return 0;
}

void cv_cli_default_log_dir(cv_cli_log_dirs *d, const cv_config *cfg) {
    if (d->n == 0 && *cv_config_str(cfg, "log.dir"))
        d->dir[d->n++] = cv_config_str(cfg, "log.dir");
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

#define HTTP_RESPONSE_LIMIT (64u << 20)

int cv_cli_http_get(const cv_cli_url *u, const char *token, cv_buf *body, char *err,
                    size_t errlen) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int g = getaddrinfo(u->host, u->port, &hints, &ai);
    if (g != 0) {
        snprintf(err, errlen, "%s:%s: %s", u->host, u->port, gai_strerror(g));
        return -EHOSTUNREACH;
    }
    int fd = -1, e = ECONNREFUSED;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        struct timeval tv = {.tv_sec = 10};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
            e = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        snprintf(err, errlen,
                 "cannot connect to %s:%s: %s (is the broker running "
                 "with http.listen set?)",
                 u->host, u->port, strerror(e));
        return -e;
    }
    char req[2048];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.0\r\nHost: %s:%s\r\nAccept: application/json\r\n"
                     "User-Agent: chatvault\r\n%s%s%sConnection: close\r\n\r\n",
                     u->path, u->host, u->port,
                     token && *token ? "Authorization: Bearer " : "",
                     token && *token ? token : "", token && *token ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(req) || write(fd, req, (size_t)n) != n) {
        snprintf(err, errlen, "cannot send the request to %s:%s", u->host, u->port);
        close(fd);
        return -EIO;
    }
    cv_buf raw;
    cv_buf_init(&raw, HTTP_RESPONSE_LIMIT);
    int r = 0;
    for (;;) {
        if ((r = cv_buf_reserve(&raw, 65536)) < 0)
            break;
        ssize_t got = read(fd, raw.data + raw.len, 65536);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            r = -errno;
            break;
        }
        if (got == 0)
            break;
        raw.len += (size_t)got;
    }
    close(fd);
    if (r < 0) {
        snprintf(err, errlen, "reading from %s:%s: %s", u->host, u->port, strerror(-r));
        cv_buf_release(&raw);
        return r;
    }
    int status = 0;
    const unsigned char *hdr_end = NULL;
    for (size_t i = 0; i + 3 < raw.len; i++)
        if (memcmp(raw.data + i, "\r\n\r\n", 4) == 0) {
            hdr_end = raw.data + i + 4;
            break;
        }
    if (!hdr_end || sscanf((const char *)raw.data, "HTTP/%*d.%*d %d", &status) != 1) {
        snprintf(err, errlen, "%s:%s did not answer HTTP", u->host, u->port);
        cv_buf_release(&raw);
        return -EPROTO;
    }
    size_t blen = raw.len - (size_t)(hdr_end - raw.data);
    r = cv_buf_append(body, hdr_end, blen);
    cv_buf_release(&raw);
    if (r < 0) {
        snprintf(err, errlen, "response too large");
        return r;
    }
    return status;
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
    cv_cli_url u = {0};
    const char *colon = strrchr(listen, ':');
    size_t hl = colon ? (size_t)(colon - listen) : 0;
    if (!colon || hl >= sizeof(u.host) || strlen(colon + 1) >= sizeof(u.port)) {
        snprintf(errbuf, errlen, "http.listen = \"%s\": expected host:port", listen);
        return -EINVAL;
    }
    memcpy(u.host, listen, hl);
    u.host[hl] = '\0';
    if (u.host[0] == '[' && hl >= 2) { /* [v6]:port */
        memmove(u.host, u.host + 1, hl - 2);
        u.host[hl - 2] = '\0';
    }
    if (!u.host[0] || strcmp(u.host, "0.0.0.0") == 0)
        snprintf(u.host, sizeof(u.host), "127.0.0.1");
    else if (strcmp(u.host, "::") == 0)
        snprintf(u.host, sizeof(u.host), "::1");
    snprintf(u.port, sizeof(u.port), "%s", colon + 1);
    snprintf(u.path, sizeof(u.path), "/api/kafka");
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
                 "running `chatvault broker`, and none gave its address at http://%s/"
                 "api/kafka (%s); start the broker, or set kafka.bootstrap.servers",
                 listen,
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
        /* Measured: with the defaults a group consumer stalls near 200k
         * msgs/s; a deeper prefetch queue lifts it past 1M. */
        {"queued.min.messages", "200000"},
        {"queued.max.messages.kbytes", "65536"},
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
