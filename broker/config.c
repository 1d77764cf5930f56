/*
 * config — see config.h. The table below is the single source of truth for
 * every non-kafka key: its type, default, bounds and one-line meaning.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cold/cold.h"
#include "daemon/http.h"
#include "retention.h"
#include "util.h"

typedef enum { PROP_STR, PROP_INT, PROP_ENUM } prop_type;

/* A PROP_STR's own check: NULL when `value` is good, else why not (in buf). */
typedef const char *prop_check_fn(const char *value, char *buf, size_t len);

typedef struct prop {
    const char *name;
    prop_type type;
    const char *def;
    const char *desc;
    int64_t min, max;    /* PROP_INT */
    const char *choices; /* PROP_ENUM: "a|b" */
    prop_check_fn *check;
} prop;

/* Kafka's rule for a topic name: 1 to 249 of [A-Za-z0-9._-]. A prefix may
 * be empty. */
static const char *topic_chars(const char *v, size_t max, bool empty_ok, char *buf,
                               size_t len) {
    size_t n = strlen(v);
    if ((!n && !empty_ok) || n > max ||
        strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
            n) {
        snprintf(buf, len, "a Kafka topic name is 1 to 249 of [A-Za-z0-9._-]");
        return buf;
    }
    return NULL;
}

static const char *check_topic(const char *v, char *buf, size_t len) {
    return topic_chars(v, 249, false, buf, len);
}

static const char *check_prefix(const char *v, char *buf, size_t len) {
    return topic_chars(v, 248, true, buf, len);
}

/* "^..." is a regular expression (POSIX extended, as close to librdkafka's
 * own engine as a check can get); anything else names one topic. */
static const char *check_pattern(const char *v, char *buf, size_t len) {
    if (v[0] != '^')
        return check_topic(v, buf, len);
    regex_t re;
    int r = regcomp(&re, v, REG_EXTENDED | REG_NOSUB);
    if (r != 0) {
        char why[200];
        regerror(r, &re, why, sizeof(why));
        snprintf(buf, len, "not a valid regular expression: %s", why);
        return buf;
    }
    regfree(&re);
    return NULL;
}

static const char *check_listen(const char *v, char *buf, size_t len) {
    struct sockaddr_storage ss;
    char err[300];
    if (!*v || cv_http_parse_listen(v, &ss, err, sizeof(err)) == 0)
        return NULL;
    /* err names the key and value already; keep only what is wrong. */
    const char *colon = strstr(err, "\": ");
    snprintf(buf, len, "%s", colon ? colon + 3 : err);
    return buf;
}

/* http.allowed_hosts: comma-separated entries, each "*" or a host name
 * (letters, digits, '.', '-', '_') with an optional ":port". */
static const char *check_hosts(const char *v, char *buf, size_t len) {
    for (const char *p = v; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ", ");
        if (!n)
            break;
        if (n == 1 && *p == '*') {
            p++;
            continue;
        }
        size_t name = strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "0123456789.-_");
        size_t digits =
            name < n && p[name] == ':' ? strspn(p + name + 1, "0123456789") : 0;
        if (name == 0 ||
            (name != n && (p[name] != ':' || !digits || name + 1 + digits != n))) {
            snprintf(buf, len,
                     "expected host names (name or name:port) separated by commas, or *; "
                     "IP addresses and localhost are always accepted");
            return buf;
        }
        p += n;
    }
    return NULL;
}

/* A text search configuration's name (pg_ts_config), maybe schema-qualified:
 * it is given to PostgreSQL as a parameter, but a typo is caught here. */
static const char *check_language(const char *v, char *buf, size_t len) {
    size_t n = strlen(v);
    if (!n || n > 63 || strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789_.") != n) {
        snprintf(buf, len,
                 "a text search configuration is a name such as simple or "
                 "english");
        return buf;
    }
    return NULL;
}

/* cold.hot_window: a duration (cv_cold_parse_window). */
static const char *check_window(const char *v, char *buf, size_t len) {
    int64_t secs;
    if (cv_cold_parse_window(v, &secs) == 0)
        return NULL;
    snprintf(buf, len, "expected a duration such as 7d, 12h, 30m, 90s or 0, or off");
    return buf;
}

static const prop props[] = {
    {"postgres.conninfo", PROP_STR, "dbname=chatvault",
     "libpq connection string of the PostgreSQL store; the broker writes with it "
     "(grant its role chatvault_writer, see README \"PostgreSQL roles\")",
     0, 0, NULL, NULL},
    {"postgres.reader_conninfo", PROP_STR, "",
     "connection string of the commands that only read: verify, export, replay, lag "
     "(role chatvault_reader; empty: postgres.conninfo)",
     0, 0, NULL, NULL},
    {"postgres.admin_conninfo", PROP_STR, "",
     "connection string of the commands that change stored data: migrate (as the "
     "schema's owner), verify --repair, import, restore, drill (role chatvault_admin; "
     "empty: "
     "postgres.conninfo)",
     0, 0, NULL, NULL},
    {"postgres.connections", PROP_INT, "2",
     "connections the broker stores a batch over, in parallel, spread by topic (a "
     "batch under 1000 records takes one); more use more of the server's cores",
     1, 16, NULL, NULL},
    {"log.dir", PROP_STR, "/var/lib/chatvault/log",
     "directory of the encrypted log, one subdirectory per topic-partition", 0, 0, NULL,
     NULL},
    {"log.key_file", PROP_STR, "/etc/chatvault/log.key",
     "key file of the encrypted log (mode 0600; see chatvault keygen)", 0, 0, NULL, NULL},
    {"log.segment_bytes", PROP_INT, "134217728",
     "roll to a new log segment after this many bytes", 4096, INT64_C(1) << 40, NULL,
     NULL},
    {"log.sync_method", PROP_ENUM, "syncfs",
     "how a batch is made durable in the log: syncfs (one flush of the log's file "
     "system per batch) or fdatasync (one per log file written)",
     0, 0, "syncfs|fdatasync", NULL},
    {"log.compression", PROP_ENUM, "off",
     "compress each record of the broker's log with zstd before it is encrypted (see "
     "README \"Log compression\"); segments written either way stay readable",
     0, 0, "off|zstd", NULL},
    {"log.compression_level", PROP_INT, "3",
     "zstd level under log.compression = zstd: 1 (fastest) to 19 (smallest)", 1, 19, NULL,
     NULL},
    {"cold.target", PROP_STR, "",
     "where sealed log segments are shipped (chatvault cold ship): s3://BUCKET[/PREFIX], "
     "file:///DIR or /DIR; empty: no cold tier (see README \"Cold tier and off-site "
     "copy\")",
     0, 0, NULL, NULL},
    {"cold.endpoint", PROP_STR, "",
     "S3 endpoint, http(s)://host[:port], requests path-style; empty: "
     "https://s3.<cold.region>.amazonaws.com",
     0, 0, NULL, NULL},
    {"cold.region", PROP_STR, "us-east-1",
     "S3 region the requests are signed for (SigV4)", 0, 0, NULL, NULL},
    {"cold.credentials_file", PROP_STR, "",
     "file (mode 0600) with the lines access_key_id = ... and secret_access_key = ...; "
     "empty: $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY",
     0, 0, NULL, NULL},
    {"cold.ca_file", PROP_STR, "",
     "CA certificate an https cold.endpoint is checked against; empty: the system's", 0,
     0, NULL, NULL},
    {"cold.hot_window", PROP_STR, "off",
     "remove a shipped and verified segment's local copy once it is older than this "
     "(7d, 12h, 30m, 90s; 0: at once; off: keep local copies)",
     0, 0, NULL, check_window},
    {"cold.cache_keep", PROP_STR, "1d",
     "a shipping pass removes copies fetched into cold.cache_dir that were not read for "
     "this long (7d, 12h, 30m, 90s, 0; off: never)",
     0, 0, NULL, check_window},
    {"cold.ship_interval_s", PROP_INT, "0",
     "seconds between the broker's own shipping passes (what chatvault cold ship does); "
     "0: the broker does not ship (run chatvault cold ship from a timer)",
     0, 7 * 86400, NULL, NULL},
    {"cold.cache_dir", PROP_STR, "",
     "where segments read back from the cold tier are kept; empty: "
     "<log.dir>/.cold-cache",
     0, 0, NULL, NULL},
    {"ack.policy", PROP_ENUM, "all",
     "stores that must hold a message before it is acked: all, or any (degraded mode)", 0,
     0, "all|any", NULL},
    {"ack.transactions", PROP_ENUM, "off",
     "produce each batch's acks and commit its offsets in one Kafka transaction, so a "
     "read_committed reader sees every ack once (real Kafka only, not the embedded one)",
     0, 0, "off|on", NULL},
    {"ack.transactional_id", PROP_STR, "",
     "transactional.id of the ack producer under ack.transactions = on, one per "
     "instance and the same across its restarts (empty: chatvault-<group.id>-<host "
     "name>-<hash of log.dir>)",
     0, 0, NULL, NULL},
    {"batch.max_messages", PROP_INT, "5000",
     "most records written to the stores in one batch", 1, 1000000, NULL, NULL},
    {"batch.max_bytes", PROP_INT, "16777216", "most record bytes in one batch", 1024,
     INT64_C(1) << 30, NULL, NULL},
    {"batch.max_ms", PROP_INT, "0",
     "longest a batch waits for more records while the stores are idle (0: it goes "
     "as soon as none are waiting)",
     0, 60000, NULL, NULL},
    {"limits.max_body_bytes", PROP_INT, "1048576",
     "largest accepted message body; larger messages are rejected", 0, INT64_C(1) << 30,
     NULL, NULL},
    {"topics.pattern", PROP_STR, "^chat\\..+",
     "regular expression of the chat topics to consume", 0, 0, NULL, check_pattern},
    {"topics.prefix", PROP_STR, "chat.",
     "prefix of a chat topic; the rest of its name is the channel", 0, 0, NULL,
     check_prefix},
    {"topics.acks", PROP_STR, "chatvault.acks",
     "topic that receives DeliveryAck records (unless a message sets reply_to)", 0, 0,
     NULL, check_topic},
    {"topics.dlq", PROP_STR, "chatvault.dlq", "dead-letter topic for rejected records", 0,
     0, NULL, check_topic},
    {"http.listen", PROP_STR, "127.0.0.1:9187",
     "address of the metrics, health and dashboard server (empty disables it)", 0, 0,
     NULL, check_listen},
    {"http.token", PROP_STR, "",
     "bearer token required by every HTTP endpoint but /healthz (empty: none); visible "
     "in the process list when given as --set: prefer http.token_file",
     0, 0, NULL, NULL},
    {"http.token_file", PROP_STR, "",
     "file holding http.token on one line (mode 0600 or 0400, refused if group or "
     "others may read it); not together with http.token",
     0, 0, NULL, NULL},
    {"http.tls_cert_file", PROP_STR, "",
     "PEM certificate (chain) the HTTP server presents: with http.tls_key_file it serves "
     "HTTPS only, on http.listen (empty: plain HTTP)",
     0, 0, NULL, NULL},
    {"http.tls_key_file", PROP_STR, "",
     "PEM private key of http.tls_cert_file (mode 0600 or 0400, refused if group or "
     "others may read it)",
     0, 0, NULL, NULL},
    {"http.tls_ca_file", PROP_STR, "",
     "PEM certificates the commands trust when they talk to a broker over HTTPS (lag, "
     "the embedded Kafka's address); empty: the system's store",
     0, 0, NULL, NULL},
    {"http.allowed_hosts", PROP_STR, "",
     "host names the HTTP server answers to, comma-separated (name or name:port; * for "
     "any), besides localhost and IP addresses, which it always accepts; another Host "
     "header gets 421, so a web page that points its own name at this address (DNS "
     "rebinding) cannot read it",
     0, 0, NULL, check_hosts},
    {"http.header_timeout_s", PROP_INT, "10",
     "seconds a client has to send a request's whole header, counted from connecting or "
     "from the previous response; a slower one is disconnected, so slow clients cannot "
     "hold every connection (real clients need milliseconds)",
     1, 3600, NULL, NULL},
    {"http.max_connections", PROP_INT, "256",
     "most HTTP connections open at once (each holds a socket and up to 32 KiB)", 1,
     10000, NULL, NULL},
    {"http.max_connections_per_address", PROP_INT, "16",
     "most HTTP connections open at once from one client address, so that one client "
     "cannot take them all (a browser opens up to 6; raise it when a proxy's address "
     "carries every client)",
     1, 10000, NULL, NULL},
    {"http.archive", PROP_ENUM, "off",
     "the dashboard's search and reports pages (/search, /reports, /api/search, "
     "/api/report), read as postgres.reader_conninfo; they show message bodies, so on "
     "needs http.token or http.token_file",
     0, 0, "off|on", NULL},
    {"http.archive_timeout_ms", PROP_INT, "10000",
     "longest one statement of a search or report from the dashboard may run in "
     "PostgreSQL (statement_timeout); a slower one answers 503",
     100, 20000, NULL, NULL},
    {"metrics.max_channels", PROP_INT, "100",
     "channels with their own metric label; more are summed under channel=\"_other\"", 1,
     100000, NULL, NULL},
    {"probe.interval_ms", PROP_INT, "0",
     "publish an end-to-end canary to channel _probe this often and time it to its "
     "durable ack (0: off)",
     0, 3600000, NULL, NULL},
    {"drill.interval_s", PROP_INT, "0",
     "run a restore drill from the broker this often: a sample of the log restored into "
     "drill.database and checked against the log (0: off; see chatvault drill)",
     0, 2592000, NULL, NULL},
    {"drill.sample", PROP_INT, "1000",
     "messages a drill restores, sampled evenly over the whole log (0: every message)", 0,
     10000000, NULL, NULL},
    {"drill.database", PROP_STR, "",
     "the scratch database drills restore into, on the server of "
     "postgres.admin_conninfo; dropped and created again by every drill (empty: the live "
     "database's name + _drill)",
     0, 0, NULL, NULL},
    /* retention (README "Retention classes") */
    {"retention.classes", PROP_STR, "regular=60d,key=forever",
     "the retention classes, NAME=RETENTION separated by commas; a retention is a "
     "duration (60d, 36h, 90m, 600s) or forever",
     0, 0, NULL, cv_retention_check_classes},
    {"retention.channels", PROP_STR, "",
     "which channels are in which class: PATTERN=CLASS separated by commas, a channel "
     "name or a shell pattern (compliance-*=key); the first match wins",
     0, 0, NULL, cv_retention_check_channels},
    {"retention.default_class", PROP_STR, "regular",
     "the class of every channel retention.channels does not match", 0, 0, NULL, NULL},
    {"retention.interval_s", PROP_INT, "0",
     "apply retention from the broker this often (0: off; see chatvault retention)", 0,
     2592000, NULL, NULL},
    {"shutdown.timeout_ms", PROP_INT, "30000",
     "longest SIGTERM waits for the batch in flight before exiting", 0, 3600000, NULL,
     NULL},
    /* search (README "Search") */
    {"search.index", PROP_ENUM, "on",
     "index stored messages for chatvault search on a thread of the broker, off the ack "
     "path (off: search finds only what chatvault search --reindex indexed)",
     0, 0, "on|off", NULL},
    {"search.index_interval_ms", PROP_INT, "1000",
     "how often the broker's indexer looks for newly stored messages", 10, 3600000, NULL,
     NULL},
    {"search.language", PROP_STR, "simple",
     "PostgreSQL text search configuration of search documents and queries (simple: "
     "words as written, lower-cased; english: stemmed, stop words dropped); change it, "
     "then chatvault search --reindex",
     0, 0, NULL, check_language},
};
#define NPROPS (sizeof(props) / sizeof(props[0]))

#define KAFKA_PREFIX "kafka."
#define ENV_PREFIX "CHATVAULT_"

typedef struct kv {
    char *key;
    char *value;
} kv;

struct cv_config {
    char *values[NPROPS]; /* NULL: default */
    kv *kafka;
    size_t nkafka, kafka_cap;
    char warning[600]; /* "": none (cv_config_warning) */
};

/* librdkafka's own secrets (the properties its CONFIGURATION.md marks as
 * sensitive), under the kafka. prefix. */
static const char *const kafka_secrets[] = {
    "sasl.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl.truststore.password",
};

/* A libpq connection string holds a password as password=... (also in a
 * URI's query string) or as a URI's user:password@. */
static bool conninfo_has_password(const char *v) {
    for (const char *p = v; *p; p++)
        if (strncasecmp(p, "password", 8) == 0)
            return true;
    const char *scheme = strstr(v, "://");
    if (!scheme)
        return false;
    const char *auth = scheme + 3, *at = strchr(auth, '@');
    size_t hostpart = strcspn(auth, "/?");
    return at && (size_t)(at - auth) < hostpart && memchr(auth, ':', (size_t)(at - auth));
}

/* True when `key = value` is a secret that others must not read: of the
 * table's keys http.token, and a postgres.*conninfo that holds a password
 * (log.key_file and http.token_file name files that are checked
 * themselves). */
static bool value_secret(const char *key, const char *value) {
    if (!*value)
        return false;
    size_t n = strlen(key);
    if (strncmp(key, "postgres.", 9) == 0 && n >= 8 &&
        strcmp(key + n - 8, "conninfo") == 0) /* every role's connection string */
        return conninfo_has_password(value);
    if (strncmp(key, "kafka.", 6) == 0) {
        for (size_t i = 0; i < sizeof(kafka_secrets) / sizeof(kafka_secrets[0]); i++)
            if (strcmp(key + 6, kafka_secrets[i]) == 0)
                return true;
        return false;
    }
    return strcmp(key, "http.token") == 0;
}

static const char *kafka_defaults[][2] = {
    {"group.id", "chatvault"},
};

cv_config *cv_config_new(void) {
    return calloc(1, sizeof(cv_config));
}

cv_config *cv_config_free(cv_config *cfg) {
    if (!cfg)
        return NULL;
    for (size_t i = 0; i < NPROPS; i++)
        free(cfg->values[i]);
    for (size_t i = 0; i < cfg->nkafka; i++) {
        free(cfg->kafka[i].key);
        free(cfg->kafka[i].value);
    }
    free(cfg->kafka);
    free(cfg);
    return NULL;
}

static const prop *prop_find(const char *key, size_t *ret_idx) {
    for (size_t i = 0; i < NPROPS; i++)
        if (strcmp(props[i].name, key) == 0) {
            if (ret_idx)
                *ret_idx = i;
            return &props[i];
        }
    return NULL;
}

static int parse_int(const char *s, int64_t *ret) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s)
        return -EINVAL;
    bool overflow = errno == ERANGE;
    /* Accept the size suffixes operators write by hand. */
    int64_t mult = 1;
    if (*end == 'k' || *end == 'K')
        mult = 1024, end++;
    else if (*end == 'M')
        mult = 1024 * 1024, end++;
    else if (*end == 'G')
        mult = INT64_C(1024) * 1024 * 1024, end++;
    if (*end != '\0')
        return -EINVAL;
    if (overflow || v > INT64_MAX / mult || v < INT64_MIN / mult)
        return -ERANGE;
    *ret = (int64_t)v * mult;
    return 0;
}

static bool choice_ok(const char *choices, const char *v) {
    size_t n = strlen(v);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0)
            return true;
        p += len + (bar ? 1 : 0);
    }
    return false;
}

static int validate(const prop *p, const char *value, const char *origin, char *errbuf,
                    size_t errlen) {
    int64_t v = 0;
    int r;
    switch (p->type) {
    case PROP_STR: {
        char why[300];
        const char *bad = p->check ? p->check(value, why, sizeof(why)) : NULL;
        if (bad) {
            snprintf(errbuf, errlen, "%s: %s = \"%s\": %s", origin, p->name, value, bad);
            return -EINVAL;
        }
        return 0;
    }
    case PROP_INT:
        r = parse_int(value, &v);
        if (r == -EINVAL) {
            snprintf(errbuf, errlen, "%s: %s = \"%s\" is not an integer", origin, p->name,
                     value);
            return -EINVAL;
        }
        if (r == -ERANGE || v < p->min || v > p->max) {
            snprintf(errbuf, errlen,
                     "%s: %s = %s is out of range (%" PRId64 "..%" PRId64 ")", origin,
                     p->name, value, p->min, p->max);
            return -EINVAL;
        }
        return 0;
    case PROP_ENUM:
        if (!choice_ok(p->choices, value)) {
            snprintf(errbuf, errlen, "%s: %s = \"%s\" must be one of %s", origin, p->name,
                     value, p->choices);
            return -EINVAL;
        }
        return 0;
    }
    return 0;
}

static int kafka_set(cv_config *cfg, const char *key, const char *value) {
    for (size_t i = 0; i < cfg->nkafka; i++)
        if (strcmp(cfg->kafka[i].key, key) == 0) {
            char *v = strdup(value);
            if (!v)
                return -ENOMEM;
            free(cfg->kafka[i].value);
            cfg->kafka[i].value = v;
            return 0;
        }
    if (cfg->nkafka == cfg->kafka_cap) {
        size_t cap = cfg->kafka_cap ? cfg->kafka_cap * 2 : 16;
        kv *n = realloc(cfg->kafka, cap * sizeof(kv));
        if (!n)
            return -ENOMEM;
        cfg->kafka = n;
        cfg->kafka_cap = cap;
    }
    kv *e = &cfg->kafka[cfg->nkafka];
    e->key = strdup(key);
    e->value = strdup(value);
    if (!e->key || !e->value) {
        free(e->key);
        free(e->value);
        return -ENOMEM;
    }
    cfg->nkafka++;
    return 0;
}

int cv_config_set(cv_config *cfg, const char *key, const char *value, const char *origin,
                  char *errbuf, size_t errlen) {
    size_t idx;
    if (strncmp(key, KAFKA_PREFIX, strlen(KAFKA_PREFIX)) == 0) {
        const char *k = key + strlen(KAFKA_PREFIX);
        if (!*k) {
            snprintf(errbuf, errlen, "%s: empty kafka property name", origin);
            return -EINVAL;
        }
        /* Every producer of the program would share it and fence the others. */
        if (strcmp(k, "transactional.id") == 0) {
            snprintf(errbuf, errlen,
                     "%s: kafka.transactional.id is not passed on: set ack.transactions "
                     "= on (and ack.transactional_id) for transactional acks",
                     origin);
            return -EINVAL;
        }
        if (kafka_set(cfg, k, value) < 0) {
            snprintf(errbuf, errlen, "%s: out of memory", origin);
            return -ENOMEM;
        }
        return 0;
    }
    const prop *p = prop_find(key, &idx);
    if (!p) {
        snprintf(errbuf, errlen, "%s: unknown configuration key \"%s\"", origin, key);
        return -EINVAL;
    }
    int r = validate(p, value, origin, errbuf, errlen);
    if (r < 0)
        return r;
    char *v = strdup(value);
    if (!v) {
        snprintf(errbuf, errlen, "%s: out of memory", origin);
        return -ENOMEM;
    }
    free(cfg->values[idx]);
    cfg->values[idx] = v;
    return 0;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

int cv_config_load_file(cv_config *cfg, const char *path, char *errbuf, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(errbuf, errlen, "%s: cannot read config file: %s", path,
                 strerror(errno));
        return -errno;
    }
    struct stat st;
    bool others_read = fstat(fileno(f), &st) == 0 && (st.st_mode & S_IROTH);
    char line[8192], origin[600], secrets[200] = "";
    int lineno = 0, r = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        snprintf(origin, sizeof(origin), "%s:%d", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(errbuf, errlen, "%s: line longer than %zu bytes", origin,
                     sizeof(line) - 2);
            r = -EINVAL;
            break;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(errbuf, errlen, "%s: expected \"key = value\", got \"%s\"", origin,
                     s);
            r = -EINVAL;
            break;
        }
        *eq = '\0';
        char *key = trim(s), *value = trim(eq + 1);
        if (!*key) {
            snprintf(errbuf, errlen, "%s: missing key before \"=\"", origin);
            r = -EINVAL;
            break;
        }
        r = cv_config_set(cfg, key, value, origin, errbuf, errlen);
        if (r < 0)
            break;
        if (others_read && value_secret(key, value) && !strstr(secrets, key)) {
            size_t n = strlen(secrets);
            snprintf(secrets + n, sizeof(secrets) - n, "%s%s", n ? ", " : "", key);
        }
    }
    if (r == 0 && *secrets)
        snprintf(cfg->warning, sizeof(cfg->warning),
                 "%s is readable by others (mode %04o) and holds a secret (%s): chmod "
                 "o-r %s, or move the secret to a file of its own (http.token_file)",
                 path, (unsigned)(st.st_mode & 07777), secrets, path);
    if (r == 0 && ferror(f)) {
        snprintf(errbuf, errlen, "%s: read error: %s", path, strerror(errno));
        r = -EIO;
    }
    fclose(f);
    return r;
}

/* "CHATVAULT_POSTGRES_CONNINFO" -> "postgres.conninfo". Table keys are
 * matched by their env spelling (a key like log.key_file keeps its
 * underscore); anything under KAFKA_ becomes a librdkafka property with
 * dots, which is how librdkafka names its properties. */
static int env_to_key(const char *name, char *out, size_t outlen) {
    char want[256];
    for (size_t i = 0; i < NPROPS; i++) {
        size_t n = strlen(props[i].name);
        if (n >= sizeof(want))
            continue;
        for (size_t j = 0; j <= n; j++) {
            char c = props[i].name[j];
            want[j] = c == '.' ? '_' : (char)toupper((unsigned char)c);
        }
        if (strcmp(want, name) == 0) {
            snprintf(out, outlen, "%s", props[i].name);
            return 0;
        }
    }
    if (strncmp(name, "KAFKA_", 6) == 0 && name[6]) {
        size_t n = strlen(name);
        if (n >= outlen)
            return -ENAMETOOLONG;
        for (size_t j = 0; j <= n; j++) {
            char c = name[j];
            out[j] = c == '_' ? '.' : (char)tolower((unsigned char)c);
        }
        return 0;
    }
    return -ENOENT;
}

int cv_config_load_env(cv_config *cfg, char *const *envp, char *errbuf, size_t errlen) {
    for (char *const *e = envp; e && *e; e++) {
        if (strncmp(*e, ENV_PREFIX, strlen(ENV_PREFIX)) != 0)
            continue;
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        char name[256], key[256], origin[300];
        size_t n = (size_t)(eq - *e) - strlen(ENV_PREFIX);
        if (n >= sizeof(name))
            n = sizeof(name) - 1;
        memcpy(name, *e + strlen(ENV_PREFIX), n);
        name[n] = '\0';
        if (strcmp(name, "CONFIG") == 0)
            continue;
        snprintf(origin, sizeof(origin), "environment %s%s", ENV_PREFIX, name);
        if (env_to_key(name, key, sizeof(key)) < 0) {
            snprintf(errbuf, errlen,
                     "%s: unknown configuration variable (no key matches it)", origin);
            return -EINVAL;
        }
        int r = cv_config_set(cfg, key, eq + 1, origin, errbuf, errlen);
        if (r < 0)
            return r;
    }
    return 0;
}

const char *cv_config_str(const cv_config *cfg, const char *key) {
    size_t idx;
    if (!prop_find(key, &idx)) {
        fprintf(stderr, "chatvault: internal error: unknown config key %s\n", key);
        abort();
    }
    return cfg->values[idx] ? cfg->values[idx] : props[idx].def;
}

int64_t cv_config_int(const cv_config *cfg, const char *key) {
    int64_t v = 0;
    /* Validated on set, and defaults are checked by the unit test. */
    (void)parse_int(cv_config_str(cfg, key), &v);
    return v;
}

int cv_config_kafka_at(const cv_config *cfg, size_t i, const char **ret_key,
                       const char **ret_value) {
    size_t ndef = sizeof(kafka_defaults) / sizeof(kafka_defaults[0]);
    /* Defaults first, so that a user's value, applied later, wins. */
    if (i < ndef) {
        *ret_key = kafka_defaults[i][0];
        *ret_value = kafka_defaults[i][1];
        return 1;
    }
    i -= ndef;
    if (i >= cfg->nkafka)
        return 0;
    *ret_key = cfg->kafka[i].key;
    *ret_value = cfg->kafka[i].value;
    return 1;
}

const char *cv_config_kafka_get(const cv_config *cfg, const char *key) {
    const char *k, *v, *found = NULL;
    for (size_t i = 0; cv_config_kafka_at(cfg, i, &k, &v); i++)
        if (strcmp(k, key) == 0)
            found = v;
    return found;
}

void cv_config_print_help(FILE *out) {
    fprintf(out, "Configuration keys (file `key = value`, env CHATVAULT_KEY_NAME, "
                 "or --set key=value):\n");
    for (size_t i = 0; i < NPROPS; i++) {
        const prop *p = &props[i];
        fprintf(out, "  %-24s %s\n  %-24s default: %s%s%s\n", p->name, p->desc, "",
                *p->def ? p->def : "(empty)", p->type == PROP_ENUM ? "; one of " : "",
                p->type == PROP_ENUM ? p->choices : "");
    }
    fprintf(out,
            "  %-24s passed to librdkafka unchanged, e.g. "
            "kafka.bootstrap.servers\n"
            "  %-24s (`embedded` starts a mock cluster in the process); "
            "kafka.group.id defaults to chatvault\n",
            "kafka.*", "");
}

void cv_config_print_example(FILE *out) {
    fprintf(out, "# chatvault configuration: `key = value`, `#` starts a comment.\n"
                 "# Generated by `chatvault config --example`; every key shows "
                 "its default.\n\n"
                 "# Kafka: any kafka.* key is passed to librdkafka unchanged.\n"
                 "kafka.bootstrap.servers = localhost:9092\n"
                 "kafka.group.id = chatvault\n");
    for (size_t i = 0; i < NPROPS; i++) {
        const prop *p = &props[i];
        fprintf(out, "\n# %s%s%s%s\n%s = %s\n", p->desc, p->type == PROP_ENUM ? " (" : "",
                p->type == PROP_ENUM ? p->choices : "", p->type == PROP_ENUM ? ")" : "",
                p->name, p->def);
    }
}

const char *cv_config_warning(const cv_config *cfg) {
    return *cfg->warning ? cfg->warning : NULL;
}

#define TOKEN_FILE_MAX 4096

/* http.token_file: reads the token into http.token, refusing a file others
 * may read (the check the log's key file gets) and a token given twice. */
static int load_token_file(cv_config *cfg, char *errbuf, size_t errlen) {
    size_t file_idx = 0, token_idx = 0;
    prop_find("http.token_file", &file_idx);
    prop_find("http.token", &token_idx);
    const char *path = cfg->values[file_idx];
    if (!path || !*path)
        return 0;
    if (cfg->values[token_idx] && *cfg->values[token_idx]) {
        snprintf(errbuf, errlen,
                 "http.token and http.token_file are both set: keep one "
                 "(http.token_file keeps the token out of configs and the process list)");
        return -EINVAL;
    }
    char *text = NULL;
    size_t len = 0;
    int r = cv_read_file(path, "http.token_file", TOKEN_FILE_MAX, true, &text, &len,
                         errbuf, errlen);
    if (r < 0)
        return r;
    if (len && text[len - 1] == '\n')
        len--;
    if (len && text[len - 1] == '\r')
        len--;
    text[len] = '\0';
    if (len == 0 || strlen(text) != len || strpbrk(text, "\r\n")) {
        snprintf(errbuf, errlen, "http.token_file %s must hold the token on one line",
                 path);
        r = -EINVAL;
    } else if (!(cfg->values[token_idx] = strdup(text))) {
        r = -ENOMEM;
    }
    explicit_bzero(text, len);
    free(text);
    return r;
}

int cv_config_build(const cv_cli_config *cli, char *const *envp, cv_config **ret_cfg,
                    char *errbuf, size_t errlen) {
    cv_config *cfg = cv_config_new();
    if (!cfg) {
        snprintf(errbuf, errlen, "out of memory");
        return -ENOMEM;
    }
    const char *path = cli->path;
    if (!path) {
        path = getenv("CHATVAULT_CONFIG");
        if (path && !*path)
            path = NULL;
    }
    int r = 0;
    if (path)
        r = cv_config_load_file(cfg, path, errbuf, errlen);
    if (r == 0)
        r = cv_config_load_env(cfg, envp, errbuf, errlen);
    for (int i = 0; r == 0 && i < cli->nsets; i++) {
        char key[256];
        const char *s = cli->sets[i], *eq = strchr(s, '=');
        if (!eq || eq == s || (size_t)(eq - s) >= sizeof(key)) {
            snprintf(errbuf, errlen, "--set \"%s\": expected key=value", s);
            r = -EINVAL;
            break;
        }
        memcpy(key, s, (size_t)(eq - s));
        key[eq - s] = '\0';
        r = cv_config_set(cfg, trim(key), eq + 1, "--set", errbuf, errlen);
    }
    if (r == 0)
        r = load_token_file(cfg, errbuf, errlen);
    if (r == 0 && !*cv_config_str(cfg, "http.tls_cert_file") !=
                      !*cv_config_str(cfg, "http.tls_key_file")) {
        snprintf(errbuf, errlen,
                 "http.tls_cert_file and http.tls_key_file go together: set both for "
                 "HTTPS, or neither");
        r = -EINVAL;
    }
    if (r == 0 && strcmp(cv_config_str(cfg, "http.archive"), "on") == 0 &&
        !*cv_config_str(cfg, "http.token")) {
        snprintf(errbuf, errlen,
                 "http.archive = on serves message bodies: it needs http.token_file (or "
                 "http.token)");
        r = -EINVAL;
    }
    if (r < 0) {
        cv_config_free(cfg);
        return r;
    }
    *ret_cfg = cfg;
    return 0;
}
