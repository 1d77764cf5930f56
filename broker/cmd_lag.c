/*
 * chatvault lag — ack lag per channel from a running broker: fetches its
 * /api/lag (http.listen, or --url) and prints a table, or the JSON itself.
 * Exit 0 when every channel is OK, 1 when any is WARN, STALL, STOP or ERR
 * or the broker cannot be reached, 2 on a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "json.h"
#include "util.h"

#define RESPONSE_LIMIT (64u << 20)

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig, stop = 1; }

static void usage(FILE *out) {
    fprintf(out,
            "usage: chatvault lag [--url URL] [--json] [--partitions] [--watch [SECONDS]]\n"
            "                     [-c FILE] [--set key=value]...\n\n"
            "Shows the ack lag of every channel as a running broker sees it: its\n"
            "/api/lag, at --url (default http://<http.listen>, with http.token sent as\n"
            "a bearer token). Only http:// URLs.\n\n"
            "  --url URL          the broker's HTTP address, e.g. http://10.0.0.5:9187\n"
            "  --json             print the broker's JSON document unchanged\n"
            "  --partitions       one line per partition under each channel\n"
            "  --watch [SECONDS]  refresh every SECONDS (default 2) until interrupted\n\n"
            "Status (per channel, over the broker's sliding window):\n"
            "  OK     acks keep up\n"
            "  WARN   acks advance but the lag grew over the whole window\n"
            "  STALL  records consumed, acks not advancing for the whole window\n"
            "  STOP   records wait in Kafka, nothing consumed for the whole window\n"
            "  ERR    a store is down: acks cannot be made\n\n"
            "Exit status: 0 every channel OK; 1 any other status, or the broker\n"
            "cannot be reached; 2 usage or configuration error.\n");
}

typedef struct url {
    char host[256];
    char port[8];
    char path[512];
} url;

static int parse_url(const char *s, url *u, char *err, size_t errlen) {
    if (strncmp(s, "http://", 7) != 0) {
        snprintf(err, errlen, "--url \"%.200s\": only http:// URLs are supported", s);
        return -EINVAL;
    }
    const char *h = s + 7, *slash = strchr(h, '/');
    size_t hostport = slash ? (size_t)(slash - h) : strlen(h);
    char hp[300];
    if (hostport == 0 || hostport >= sizeof(hp)) {
        snprintf(err, errlen, "--url \"%.200s\": bad host", s);
        return -EINVAL;
    }
    memcpy(hp, h, hostport);
    hp[hostport] = '\0';
    const char *colon = strrchr(hp, ':');
    const char *bracket = strrchr(hp, ']');
    if (colon && (!bracket || colon > bracket)) {
        snprintf(u->port, sizeof(u->port), "%s", colon + 1);
        hp[colon - hp] = '\0';
    } else {
        snprintf(u->port, sizeof(u->port), "80");
    }
    if (hp[0] == '[') {
        size_t n = strlen(hp);
        if (n < 3 || hp[n - 1] != ']') {
            snprintf(err, errlen, "--url \"%.200s\": bad IPv6 host", s);
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
    const char *path = slash ? slash : "";
    size_t plen = strlen(path);
    while (plen > 0 && path[plen - 1] == '/')
        plen--;
    snprintf(u->path, sizeof(u->path), "%.*s/api/lag", (int)plen, path);
    return 0;
}

/* GET u->path; the body goes to `body`. Returns the HTTP status or a
 * negative errno with err set. */
static int http_get(const url *u, const char *token, cv_buf *body, char *err,
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
        snprintf(err, errlen, "cannot connect to %s:%s: %s (is the broker running "
                 "with http.listen set?)", u->host, u->port, strerror(e));
        return -e;
    }
    char req[2048];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.0\r\nHost: %s:%s\r\nAccept: application/json\r\n"
                     "User-Agent: chatvault-lag\r\n%s%s%sConnection: close\r\n\r\n",
                     u->path, u->host, u->port, token && *token ? "Authorization: Bearer " : "",
                     token && *token ? token : "", token && *token ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(req) || write(fd, req, (size_t)n) != n) {
        snprintf(err, errlen, "cannot send the request to %s:%s", u->host, u->port);
        close(fd);
        return -EIO;
    }
    cv_buf raw;
    cv_buf_init(&raw, RESPONSE_LIMIT);
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

static void fmt_secs(char *out, size_t len, double s) {
    if (s < 0 || isnan(s))
        snprintf(out, len, "-");
    else if (s == 0)
        snprintf(out, len, "0");
    else if (s < 1)
        snprintf(out, len, "%.1fms", s * 1e3);
    else if (s < 120)
        snprintf(out, len, "%.1fs", s);
    else if (s < 7200)
        snprintf(out, len, "%.1fm", s / 60);
    else
        snprintf(out, len, "%.1fh", s / 3600);
}

static int status_rank(const char *s) {
    static const char *order[] = {"OK", "WARN", "STOP", "STALL", "ERR"};
    for (int i = 0; i < 5; i++)
        if (strcmp(s, order[i]) == 0)
            return i;
    return 5;
}

/* Prints the table; returns 0 when every channel is OK, 1 otherwise. */
static int print_table(const cv_json *d, const char *where, bool partitions, bool color) {
    const char *overall = cv_json_str(cv_json_get(d, "status"), "?");
    const cv_json *lat = cv_json_get(d, "latency");
    char p50[32], p99[32];
    fmt_secs(p50, sizeof(p50), cv_json_num(cv_json_get(lat, "p50_s"), -1));
    fmt_secs(p99, sizeof(p99), cv_json_num(cv_json_get(lat, "p99_s"), -1));
    printf("chatvault %s at %s: %s · sent→ack p50 %s p99 %s · window %.0fs\n",
           cv_json_str(cv_json_get(d, "version"), "?"), where, overall, p50, p99,
           cv_json_num(cv_json_get(d, "window_s"), 0));
    const cv_json *stores = cv_json_get(d, "stores");
    printf("stores:");
    for (const cv_json *s = stores ? stores->child : NULL; s; s = s->next)
        printf(" %s %s", cv_json_str(cv_json_get(s, "name"), "?"),
               cv_json_bool(cv_json_get(s, "up"), false) ? "up" : "DOWN");
    if (cv_json_bool(cv_json_get(d, "degraded"), false))
        printf(" · DEGRADED (ack.policy = any on one store)");
    printf("\n\n%-24s %-6s %9s %10s %9s %9s %12s %12s %9s  %s\n", "CHANNEL", "STATUS",
           "RATE/S", "LAG MSGS", "LAG AGE", "INFLIGHT", "CONSUMED", "ACKED", "REJECTED",
           "WHY");
    int rc = 0;
    const cv_json *chans = cv_json_get(d, "channels");
    size_t nchan = 0;
    for (const cv_json *c = chans ? chans->child : NULL; c; c = c->next) {
        nchan++;
        const char *st = cv_json_str(cv_json_get(c, "status"), "?");
        if (strcmp(st, "OK") != 0)
            rc = 1;
        char age[32];
        fmt_secs(age, sizeof(age), cv_json_num(cv_json_get(c, "lag_seconds"), -1));
        const char *on = "", *off = "";
        if (color && strcmp(st, "OK") != 0) {
            on = status_rank(st) >= 2 ? "\033[1;31m" : "\033[1;33m";
            off = "\033[0m";
        }
        printf("%-24s %s%-6s%s %9.1f %10.0f %9s %9.0f %12.0f %12.0f %9.0f  %s\n",
               cv_json_str(cv_json_get(c, "channel"), "?"), on, st, off,
               cv_json_num(cv_json_get(c, "rate"), 0),
               cv_json_num(cv_json_get(c, "lag_messages"), 0), age,
               cv_json_num(cv_json_get(c, "inflight"), 0),
               cv_json_num(cv_json_get(c, "consumed"), 0),
               cv_json_num(cv_json_get(c, "acked"), 0),
               cv_json_num(cv_json_get(c, "rejected"), 0),
               strcmp(st, "OK") ? cv_json_str(cv_json_get(c, "why"), "") : "");
        const cv_json *parts = cv_json_get(c, "partitions");
        for (const cv_json *p = parts && partitions ? parts->child : NULL; p; p = p->next) {
            fmt_secs(age, sizeof(age), cv_json_num(cv_json_get(p, "lag_seconds"), -1));
            printf("  %-20s [%3.0f] %10s %10.0f %9s %9.0f   end %.0f acked %.0f%s\n",
                   cv_json_str(cv_json_get(p, "topic"), "?"),
                   cv_json_num(cv_json_get(p, "partition"), -1), "",
                   cv_json_num(cv_json_get(p, "lag_messages"), 0), age,
                   cv_json_num(cv_json_get(p, "inflight"), 0),
                   cv_json_num(cv_json_get(p, "high_watermark"), -1),
                   cv_json_num(cv_json_get(p, "acked_offset"), -1),
                   cv_json_bool(cv_json_get(p, "assigned"), true) ? "" : " (revoked)");
        }
    }
    if (!nchan)
        printf("(no channel consumed yet)\n");
    if (status_rank(overall) > 0)
        rc = 1;
    const cv_json *rej = cv_json_get(d, "rejected_recent");
    if (rej && rej->child) {
        printf("\nlatest rejections:\n");
        int k = 0;
        for (const cv_json *r = rej->child; r && k < 5; r = r->next, k++)
            printf("  %-20s %-18s %s\n", cv_json_str(cv_json_get(r, "channel"), "?"),
                   cv_json_str(cv_json_get(r, "reason"), "?"),
                   cv_json_str(cv_json_get(r, "error"), ""));
    }
    return rc;
}

/* One fetch and print. Returns the exit code. */
static int lag_once(const url *u, const char *where, const char *token, bool json,
                    bool partitions, bool color) {
    char err[512];
    cv_buf body;
    cv_buf_init(&body, RESPONSE_LIMIT);
    int status = http_get(u, token, &body, err, sizeof(err));
    int rc = CV_EXIT_FAILURE;
    if (status < 0) {
        cv_error("lag", "%s", err);
        goto out;
    }
    if (status == 401) {
        cv_error("lag", "%s: 401 unauthorized (set http.token to the broker's token)", where);
        goto out;
    }
    if (status != 200) {
        cv_error("lag", "%s: HTTP %d", where, status);
        goto out;
    }
    cv_json *d = NULL;
    if (cv_json_parse((const char *)body.data, body.len, &d, err, sizeof(err)) < 0) {
        cv_error("lag", "%s: %s", where, err);
        goto out;
    }
    if (json) {
        fwrite(body.data, 1, body.len, stdout);
        rc = strcmp(cv_json_str(cv_json_get(d, "status"), "?"), "OK") == 0
                 ? CV_EXIT_OK
                 : CV_EXIT_FAILURE;
    } else {
        rc = print_table(d, where, partitions, color) ? CV_EXIT_FAILURE : CV_EXIT_OK;
    }
    cv_json_free(d);
out:
    cv_buf_release(&body);
    fflush(stdout);
    return rc;
}

int cv_cmd_lag(int argc, char **argv) {
    static const struct option opts[] = {CV_COMMON_LONGOPTS,
                                         {"url", required_argument, NULL, 'u'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"partitions", no_argument, NULL, 'p'},
                                         {"watch", optional_argument, NULL, 'w'},
                                         {NULL, 0, NULL, 0}};
    cv_cli_config cli = {0};
    const char *url_arg = NULL;
    bool json = false, partitions = false;
    double watch = 0;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        int r = cv_cli_common_opt(&cli, opt, optarg);
        if (r < 0)
            return CV_EXIT_USAGE;
        if (r)
            continue;
        switch (opt) {
        case 'h':
            usage(stdout);
            return CV_EXIT_OK;
        case 'u':
            url_arg = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'p':
            partitions = true;
            break;
        case 'w': {
            const char *a = optarg;
            if (!a && optind < argc && argv[optind][0] >= '0' && argv[optind][0] <= '9')
                a = argv[optind++];
            char *end = NULL;
            watch = a ? strtod(a, &end) : 2.0;
            if ((a && *end) || watch < 0.2 || watch > 3600) {
                cv_error("lag", "--watch \"%s\": give seconds between 0.2 and 3600", a);
                return CV_EXIT_USAGE;
            }
            break;
        }
        default:
            usage(stderr);
            return CV_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        cv_error("lag", "unexpected argument \"%s\"", argv[optind]);
        return CV_EXIT_USAGE;
    }
    cv_config *cfg = cv_cli_load_config(&cli);
    if (!cfg)
        return CV_EXIT_USAGE;
    char where[600], err[512];
    const char *listen = cv_config_str(cfg, "http.listen");
    if (url_arg)
        snprintf(where, sizeof(where), "%s", url_arg);
    else if (*listen)
        snprintf(where, sizeof(where), "http://%s", listen);
    else {
        cv_error("lag", "http.listen is empty (the broker serves no HTTP): give --url");
        cv_config_free(cfg);
        return CV_EXIT_USAGE;
    }
    url u;
    if (parse_url(where, &u, err, sizeof(err)) < 0) {
        cv_error("lag", "%s", err);
        cv_config_free(cfg);
        return CV_EXIT_USAGE;
    }
    const char *token = cv_config_str(cfg, "http.token");
    bool tty = isatty(STDOUT_FILENO);
    int rc;
    if (watch <= 0) {
        rc = lag_once(&u, where, token, json, partitions, tty);
    } else {
        struct sigaction sa = {0};
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        do {
            if (tty && !json)
                fputs("\033[H\033[2J", stdout);
            rc = lag_once(&u, where, token, json, partitions, tty);
            if (!json && !tty)
                putchar('\n');
            struct timespec ts = {(time_t)watch, (long)((watch - (double)(time_t)watch) * 1e9)};
            while (!stop && nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
        } while (!stop);
    }
    cv_config_free(cfg);
    return rc;
}
