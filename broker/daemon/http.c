/*
 * http — see http.h. libmicrohttpd runs the sockets in its own internal
 * polling thread (one thread, epoll: a connection that sends nothing holds
 * a slot, not the thread); every handler renders a fresh snapshot from
 * cv_metrics (under its mutex) and never blocks on the pipeline.
 *
 * libmicrohttpd's own timeout counts idleness, so a client that sends one
 * header line every few seconds keeps its connection forever. The header
 * deadline is kept here instead: every connection is listed (notify
 * callbacks, from libmicrohttpd's thread) with the time its next request
 * header must be complete by; a reaper thread shuts down the socket of one
 * past it, and libmicrohttpd, reading end of file, closes it. The list
 * drops a connection before libmicrohttpd closes its descriptor, and the
 * reaper holds the list's lock while it calls shutdown(), so it never
 * touches a descriptor that was closed and reused.
 */
#include "daemon/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "cli.h"
#include "daemon/httparchive.h"
#include "daemon/web_assets.h"

#define RENDER_LIMIT (64u << 20)
#define IDLE_TIMEOUT_S 30u /* libmicrohttpd's: a response nobody reads */
/* With http.archive on: a search may take seconds, and /healthz and
 * /metrics answer meanwhile from the other threads. */
#define ARCHIVE_THREADS 4u
#define LOG_EVERY_MS 10000 /* one line per kind of refusal this often */
#define REAP_EVERY_MS 200

/* A log line that may come once per LOG_EVERY_MS; the rest are counted. */
typedef struct ratelimit {
    pthread_mutex_t lock;
    int64_t last_ms;
    unsigned suppressed;
} ratelimit;

/* True when a line may be logged now; *ret_suppressed is how many were not
 * since the last one. */
static bool ratelimit_pass(ratelimit *r, unsigned *ret_suppressed) {
    int64_t now = cv_mono_ms();
    bool pass = false;
    pthread_mutex_lock(&r->lock);
    if (r->last_ms == 0 || now - r->last_ms >= LOG_EVERY_MS) {
        pass = true;
        *ret_suppressed = r->suppressed;
        r->suppressed = 0;
        r->last_ms = now;
    } else {
        r->suppressed++;
    }
    pthread_mutex_unlock(&r->lock);
    return pass;
}

/* One open connection, on cv_http's list from libmicrohttpd's "started" to
 * its "closed" notification. */
typedef struct conn {
    struct conn *prev, *next;
    int fd;
    bool in_request;     /* header complete, response not yet finished */
    bool cut;            /* shut down by the reaper */
    int64_t deadline_ms; /* monotonic: the header is due by then */
    char peer[INET6_ADDRSTRLEN];
} conn;

struct cv_http {
    struct MHD_Daemon *daemon;
    cv_metrics *metrics;
    char *kafka_bootstrap; /* NULL: not embedded */
    bool has_token;
    unsigned char token_hash[crypto_generichash_BYTES];
    char *allowed_hosts; /* http.allowed_hosts, copied */
    bool any_host;       /* it holds "*" */
    int64_t header_timeout_ms;
    pthread_mutex_t lock; /* guards conns and stopping */
    pthread_cond_t wake;
    conn *conns;
    bool stopping, reaper_started;
    pthread_t reaper;
    ratelimit host_log, slow_log, mhd_log;
    char *tls_cert, *tls_key; /* PEM text, kept while the daemon runs */
    size_t tls_key_len;
    cv_httparchive_conf archive; /* conninfo NULL: off; strings owned */
};

int cv_http_parse_listen(const char *listen, struct sockaddr_storage *ret_ss,
                         char *errbuf, size_t errlen) {
    char host[128];
    const char *port;
    const char *colon = strrchr(listen, ':');
    if (!colon || !colon[1]) {
        snprintf(errbuf, errlen, "http.listen = \"%s\": expected host:port", listen);
        return -EINVAL;
    }
    size_t hlen = (size_t)(colon - listen);
    port = colon + 1;
    if (hlen >= sizeof(host)) {
        snprintf(errbuf, errlen, "http.listen = \"%s\": host too long", listen);
        return -EINVAL;
    }
    memcpy(host, listen, hlen);
    host[hlen] = '\0';
    char *end;
    long p = strtol(port, &end, 10);
    if (*end || p < 0 || p > 65535) {
        snprintf(errbuf, errlen, "http.listen = \"%s\": bad port \"%s\"", listen, port);
        return -EINVAL;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        host[hlen - 1] = '\0';
        if (inet_pton(AF_INET6, host + 1, &s6->sin6_addr) != 1) {
            snprintf(errbuf, errlen, "http.listen = \"%s\": bad IPv6 address", listen);
            return -EINVAL;
        }
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)p);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        const char *h = hlen == 0                        ? "0.0.0.0"
                        : strcmp(host, "localhost") == 0 ? "127.0.0.1"
                                                         : host;
        if (inet_pton(AF_INET, h, &s4->sin_addr) != 1) {
            snprintf(errbuf, errlen,
                     "http.listen = \"%s\": host must be a numeric address, "
                     "[IPv6] or localhost",
                     listen);
            return -EINVAL;
        }
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)p);
    }
    *ret_ss = ss;
    return 0;
}

static bool is_loopback(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

/* Compares a presented token with the configured one in constant time:
 * both are hashed first, so neither the content nor the length leaks. */
static bool token_ok(const cv_http *h, const char *presented, size_t len) {
    unsigned char got[crypto_generichash_BYTES];
    crypto_generichash(got, sizeof(got), (const unsigned char *)presented, len, NULL, 0);
    return sodium_memcmp(got, h->token_hash, sizeof(got)) == 0;
}

static bool authorized(const cv_http *h, struct MHD_Connection *c) {
    if (!h->has_token)
        return true;
    const char *auth =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!auth)
        return false;
    if (strncasecmp(auth, "Bearer ", 7) == 0)
        return token_ok(h, auth + 7, strlen(auth + 7));
    if (strncasecmp(auth, "Basic ", 6) == 0) {
        unsigned char dec[512];
        size_t declen = 0;
        const char *b64 = auth + 6;
        if (strlen(b64) > 680 ||
            sodium_base642bin(dec, sizeof(dec) - 1, b64, strlen(b64), NULL, &declen, NULL,
                              sodium_base64_VARIANT_ORIGINAL) != 0)
            return false;
        dec[declen] = '\0';
        const char *colon = memchr(dec, ':', declen);
        if (!colon)
            return false;
        const char *pw = colon + 1;
        bool ok = token_ok(h, pw, declen - (size_t)(pw - (const char *)dec));
        sodium_memzero(dec, sizeof(dec));
        return ok;
    }
    return false;
}

static bool host_listed(const cv_http *h, const char *name, size_t nlen,
                        const char *port) {
    for (const char *p = h->allowed_hosts; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ", ");
        const char *colon = memchr(p, ':', n);
        size_t elen = colon ? (size_t)(colon - p) : n;
        if (elen && p[elen - 1] == '.')
            elen--;
        if (elen == nlen && strncasecmp(p, name, nlen) == 0 &&
            (!colon || (strlen(port) == n - elen - 1 &&
                        strncmp(colon + 1, port, n - elen - 1) == 0)))
            return true;
        p += n;
    }
    return false;
}

/* The Host check against DNS rebinding: a page on the attacker's name whose
 * DNS answer turns into this server's address makes the browser send that
 * name as Host. An address literal or localhost cannot be the attacker's
 * name, so they always pass; any other name must be in http.allowed_hosts.
 * No Host at all passes (handle() refuses it in HTTP/1.1, as RFC 9112
 * asks, and serves HTTP/1.0 tools that send none): every browser sends
 * one. */
static bool host_allowed(const cv_http *h, const char *host) {
    if (!host || h->any_host)
        return true;
    size_t len = strlen(host);
    if (len == 0 || len > 300)
        return false;
    char name[301];
    const char *port = "";
    if (host[0] == '[') {
        const char *close = strchr(host, ']');
        if (!close || (close[1] && (close[1] != ':' || strspn(close + 2, "0123456789") !=
                                                           strlen(close + 2))))
            return false;
        struct in6_addr a6;
        memcpy(name, host + 1, (size_t)(close - host - 1));
        name[close - host - 1] = '\0';
        return inet_pton(AF_INET6, name, &a6) == 1;
    }
    const char *colon = strchr(host, ':');
    if (colon &&
        (strchr(colon + 1, ':') || strspn(colon + 1, "0123456789") != strlen(colon + 1)))
        return false;
    size_t nlen = colon ? (size_t)(colon - host) : len;
    memcpy(name, host, nlen);
    name[nlen] = '\0';
    if (colon)
        port = colon + 1;
    if (nlen && name[nlen - 1] == '.')
        name[--nlen] = '\0';
    struct in_addr a4;
    if (inet_pton(AF_INET, name, &a4) == 1 || strcasecmp(name, "localhost") == 0)
        return true;
    return nlen && host_listed(h, name, nlen, port);
}

static void peer_name(struct MHD_Connection *c, char dst[INET6_ADDRSTRLEN]) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    snprintf(dst, INET6_ADDRSTRLEN, "?");
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, dst,
                  INET6_ADDRSTRLEN);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, dst,
                  INET6_ADDRSTRLEN);
}

/* libmicrohttpd's "started" and "closed": the connection list. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    cv_http *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        conn *k = ci ? calloc(1, sizeof(*k)) : NULL;
        if (!k)
            return; /* out of memory: only the idle timeout guards it */
        k->fd = ci->connect_fd;
        k->deadline_ms = cv_mono_ms() + h->header_timeout_ms;
        peer_name(c, k->peer);
        pthread_mutex_lock(&h->lock);
        k->next = h->conns;
        if (h->conns)
            h->conns->prev = k;
        h->conns = k;
        pthread_mutex_unlock(&h->lock);
        *socket_context = k;
        return;
    }
    conn *k = *socket_context;
    if (!k)
        return;
    pthread_mutex_lock(&h->lock);
    if (k->prev)
        k->prev->next = k->next;
    else
        h->conns = k->next;
    if (k->next)
        k->next->prev = k->prev;
    pthread_mutex_unlock(&h->lock);
    *socket_context = NULL;
    free(k);
}

static conn *conn_of(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* A request's header is complete (the handler runs) or its response is
 * done: the deadline stops, or starts again for the next request. */
static void conn_request(cv_http *h, struct MHD_Connection *c, bool in_request) {
    conn *k = conn_of(c);
    if (!k)
        return;
    pthread_mutex_lock(&h->lock);
    k->in_request = in_request;
    k->deadline_ms = cv_mono_ms() + h->header_timeout_ms;
    pthread_mutex_unlock(&h->lock);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)con_cls, (void)toe;
    conn_request(cls, c, false);
}

/* The reaper: shuts down every connection whose header is overdue. */
static void *reap(void *arg) {
    cv_http *h = arg;
    pthread_mutex_lock(&h->lock);
    while (!h->stopping) {
        int64_t now = cv_mono_ms();
        unsigned cut = 0;
        char peer[INET6_ADDRSTRLEN] = "";
        for (conn *k = h->conns; k; k = k->next)
            if (!k->in_request && !k->cut && now >= k->deadline_ms) {
                shutdown(k->fd, SHUT_RDWR);
                k->cut = true;
                cut++;
                memcpy(peer, k->peer, sizeof(peer));
            }
        pthread_mutex_unlock(&h->lock);
        unsigned suppressed;
        if (cut && ratelimit_pass(&h->slow_log, &suppressed))
            cv_log(
                CV_LOG_WARN,
                "http client sent no complete request header in time: disconnected",
                "peer=%s connections=%u earlier_unlogged=%u http.header_timeout_s=%lld",
                peer, cut, suppressed, (long long)(h->header_timeout_ms / 1000));
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += REAP_EVERY_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&h->lock);
        if (!h->stopping)
            pthread_cond_timedwait(&h->wake, &h->lock, &ts);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

static enum MHD_Result send_response(struct MHD_Connection *c, unsigned status,
                                     struct MHD_Response *r, const char *type,
                                     bool no_store) {
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "X-Frame-Options", "DENY");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'self'; style-src 'self'; img-src 'self' data:; "
                            "connect-src 'self'; frame-ancestors 'none'");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL,
                            no_store ? "no-store" : "max-age=300");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status,
                                 const char *text) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text,
                                                             MHD_RESPMEM_MUST_COPY);
    return send_response(c, status, r, "text/plain; charset=utf-8", true);
}

/* Hands `b`'s bytes to libmicrohttpd, which frees them. */
static enum MHD_Result send_buf_status(struct MHD_Connection *c, unsigned status,
                                       cv_buf *b, const char *type) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(b->len, b->data, MHD_RESPMEM_MUST_FREE);
    if (!r)
        cv_buf_release(b);
    return send_response(c, status, r, type, true);
}

static enum MHD_Result send_buf(struct MHD_Connection *c, cv_buf *b, int render_rc,
                                const char *type) {
    if (render_rc < 0) {
        cv_buf_release(b);
        cv_log(CV_LOG_ERROR, "http response too large", "error=%d", render_rc);
        return send_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "render failed\n");
    }
    return send_buf_status(c, MHD_HTTP_OK, b, type);
}

/* GET /api/history?channel=NAME&range=1h|24h: parameters checked here. */
typedef struct history_args {
    const char *channel, *range, *bad;
    bool repeated; /* `bad` is a known one given twice */
} history_args;

static enum MHD_Result history_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value) {
    history_args *a = cls;
    (void)kind;
    bool is_channel = strcmp(key, "channel") == 0, is_range = strcmp(key, "range") == 0;
    if (is_channel && !a->channel)
        a->channel = value ? value : "";
    else if (is_range && !a->range)
        a->range = value ? value : "";
    else if (!a->bad) {
        a->bad = key;
        a->repeated = is_channel || is_range;
    }
    return MHD_YES;
}

/* `s` cut to 64 bytes, with anything but printable ASCII as '?': for a
 * one-line error message that quotes the request. */
static const char *printable(char dst[65], const char *s) {
    size_t n = 0;
    for (; s[n] && n < 64; n++)
        dst[n] = s[n] >= 0x20 && s[n] < 0x7f ? s[n] : '?';
    dst[n] = '\0';
    return dst;
}

static bool channel_name_ok(const char *s) {
    size_t n = strlen(s);
    if (n < 1 || n > 200)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' || *s == '-'))
            return false;
    return true;
}

static enum MHD_Result serve_history(cv_http *h, struct MHD_Connection *c, cv_buf *b) {
    history_args a = {0};
    char msg[400], q[65];
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, history_arg, &a);
    cv_history_range range = CV_HISTORY_1H;
    if (a.bad) {
        snprintf(msg, sizeof(msg),
                 "bad request: %s parameter \"%s\" (use channel=NAME, "
                 "range=1h|24h)\n",
                 a.repeated ? "repeated" : "unknown", printable(q, a.bad));
        goto bad;
    }
    if (a.range && strcmp(a.range, "24h") == 0)
        range = CV_HISTORY_24H;
    else if (a.range && strcmp(a.range, "1h") != 0) {
        snprintf(msg, sizeof(msg), "bad request: range must be 1h or 24h, not \"%s\"\n",
                 printable(q, a.range));
        goto bad;
    }
    if (a.channel && !channel_name_ok(a.channel)) {
        snprintf(msg, sizeof(msg),
                 "bad request: channel must match [A-Za-z0-9._-]{1,200}\n");
        goto bad;
    }
    char err[300];
    int r =
        cv_metrics_render_history_json(h->metrics, a.channel, range, b, err, sizeof(err));
    if (r == -ENOENT) {
        cv_buf_release(b);
        snprintf(msg, sizeof(msg), "not found: %s\n", err);
        return send_text(c, MHD_HTTP_NOT_FOUND, msg);
    }
    return send_buf(c, b, r, "application/json");
bad:
    cv_buf_release(b);
    return send_text(c, MHD_HTTP_BAD_REQUEST, msg);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version,
                              const char *upload_data, size_t *upload_data_size,
                              void **con_cls) {
    cv_http *h = cls;
    (void)upload_data, (void)con_cls;
    conn_request(h, c, true);
    const char *host =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    if (!host && strcmp(version, MHD_HTTP_VERSION_1_0) != 0)
        return send_text(c, MHD_HTTP_BAD_REQUEST,
                         "bad request: an HTTP/1.1 request needs a Host header\n");
    if (!host_allowed(h, host)) {
        char q[65], peer[INET6_ADDRSTRLEN], msg[300];
        unsigned suppressed;
        printable(q, host);
        if (ratelimit_pass(&h->host_log, &suppressed)) {
            peer_name(c, peer);
            cv_log(CV_LOG_WARN, "http request refused: Host is not one of this server's",
                   "host=\"%s\" peer=%s earlier_unlogged=%u hint=\"add the name to "
                   "http.allowed_hosts if it is yours\"",
                   q, peer, suppressed);
        }
        snprintf(msg, sizeof(msg),
                 "misdirected request: Host \"%s\" is not a name of this server "
                 "(add it to http.allowed_hosts)\n",
                 q);
        return send_text(c, MHD_HTTP_MISDIRECTED_REQUEST, msg);
    }
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
        strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        struct MHD_Response *r = MHD_create_response_from_buffer(
            19, (void *)"method not allowed\n", MHD_RESPMEM_PERSISTENT);
        if (r)
            MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
        return send_response(c, MHD_HTTP_METHOD_NOT_ALLOWED, r,
                             "text/plain; charset=utf-8", true);
    }
    if (*upload_data_size) /* a GET with a body: ignore it */
        *upload_data_size = 0;
    if (strcmp(url, "/healthz") == 0)
        return send_text(c, MHD_HTTP_OK, "ok\n");
    if (!authorized(h, c)) {
        bool api = strcmp(url, "/metrics") == 0 || strncmp(url, "/api/", 5) == 0 ||
                   strcmp(url, "/readyz") == 0;
        struct MHD_Response *r = MHD_create_response_from_buffer(
            13, (void *)"unauthorized\n", MHD_RESPMEM_PERSISTENT);
        if (r)
            MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                    api ? "Bearer realm=\"chatvault\""
                                        : "Basic realm=\"chatvault\", charset=\"UTF-8\"");
        return send_response(c, MHD_HTTP_UNAUTHORIZED, r, "text/plain; charset=utf-8",
                             true);
    }
    cv_buf b;
    cv_buf_init(&b, RENDER_LIMIT);
    if (strcmp(url, "/metrics") == 0)
        return send_buf(c, &b, cv_metrics_render_prometheus(h->metrics, &b),
                        "text/plain; version=0.0.4; charset=utf-8");
    if (strcmp(url, "/api/lag") == 0)
        return send_buf(c, &b, cv_metrics_render_lag_json(h->metrics, &b),
                        "application/json");
    if (strcmp(url, "/api/history") == 0)
        return serve_history(h, c, &b);
    if (strcmp(url, "/api/kafka") == 0) {
        int r = cv_buf_printf(
            &b, "{\"embedded\":%s,\"bootstrap\":", h->kafka_bootstrap ? "true" : "false");
        if (r == 0)
            r = h->kafka_bootstrap ? cv_buf_json_string(&b, h->kafka_bootstrap,
                                                        strlen(h->kafka_bootstrap))
                                   : cv_buf_printf(&b, "null");
        if (r == 0)
            r = cv_buf_printf(&b, "}\n");
        return send_buf(c, &b, r, "application/json");
    }
    if (cv_httparchive_path(url)) {
        char peer[INET6_ADDRSTRLEN];
        const char *type;
        peer_name(c, peer);
        unsigned status = cv_httparchive_serve(&h->archive, c, url, peer, &b, &type);
        return send_buf_status(c, status, &b, type);
    }
    if (strcmp(url, "/readyz") == 0) {
        char why[512], text[600];
        bool ready = cv_metrics_ready(h->metrics, why, sizeof(why));
        snprintf(text, sizeof(text), "%s%s\n", ready ? "" : "not ready: ", why);
        return send_text(c, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, text);
    }
    const char *path = strcmp(url, "/") == 0 ? "/index.html" : url;
    for (const cv_web_asset *a = cv_web_assets; a->path; a++)
        if (strcmp(a->path, path) == 0) {
            struct MHD_Response *r = MHD_create_response_from_buffer(
                a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
            return send_response(c, MHD_HTTP_OK, r, a->content_type,
                                 strcmp(path, "/index.html") == 0);
        }
    return send_text(c, MHD_HTTP_NOT_FOUND, "not found\n");
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    cv_http *h = cls;
    unsigned suppressed;
    /* A flood of refused connections is one line per LOG_EVERY_MS. */
    if (!ratelimit_pass(&h->mhd_log, &suppressed))
        return;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    cv_log(CV_LOG_WARN, msg, "component=http earlier_unlogged=%u", suppressed);
}

/* "*" among the comma-separated entries of http.allowed_hosts. */
static bool hosts_any(const char *list) {
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ", ");
        if (n == 1 && *p == '*')
            return true;
        p += n;
    }
    return false;
}

#define TLS_FILE_MAX (1u << 20)

/* Reads the certificate and key (the key's mode checked) into h and fills
 * the option items that hand them to libmicrohttpd; nothing without them. */
static int load_tls(cv_http *h, const cv_http_conf *conf, struct MHD_OptionItem items[3],
                    char *errbuf, size_t errlen) {
    if (!conf->tls_cert_file || !*conf->tls_cert_file)
        return 0;
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        snprintf(errbuf, errlen,
                 "http.tls_cert_file: this libmicrohttpd was built without TLS support");
        return -ENOTSUP;
    }
    size_t len;
    int r = cv_read_file(conf->tls_cert_file, "http.tls_cert_file", TLS_FILE_MAX, false,
                         &h->tls_cert, &len, errbuf, errlen);
    if (r == 0)
        r = cv_read_file(conf->tls_key_file, "http.tls_key_file", TLS_FILE_MAX, true,
                         &h->tls_key, &h->tls_key_len, errbuf, errlen);
    if (r < 0)
        return r;
    items[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, h->tls_cert};
    items[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, h->tls_key};
    items[2] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    return 0;
}

int cv_http_start(const cv_http_conf *conf, cv_http **ret_http, char *errbuf,
                  size_t errlen) {
    struct sockaddr_storage ss;
    int r = cv_http_parse_listen(conf->listen, &ss, errbuf, errlen);
    if (r < 0)
        return r;
    if (sodium_init() < 0) {
        snprintf(errbuf, errlen, "libsodium failed to initialise");
        return -EIO;
    }
    cv_http *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(errbuf, errlen, "out of memory");
        return -ENOMEM;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&h->lock, NULL);
    pthread_mutex_init(&h->host_log.lock, NULL);
    pthread_mutex_init(&h->slow_log.lock, NULL);
    pthread_mutex_init(&h->mhd_log.lock, NULL);
    h->metrics = conf->metrics;
    h->header_timeout_ms =
        (int64_t)(conf->header_timeout_s ? conf->header_timeout_s : 10) * 1000;
    const char *hosts = conf->allowed_hosts ? conf->allowed_hosts : "";
    if ((conf->kafka_bootstrap &&
         !(h->kafka_bootstrap = strdup(conf->kafka_bootstrap))) ||
        !(h->allowed_hosts = strdup(hosts))) {
        snprintf(errbuf, errlen, "out of memory");
        r = -ENOMEM;
        goto fail;
    }
    h->any_host = hosts_any(hosts);
    if (conf->archive_conninfo) {
        if (!conf->token || !*conf->token) {
            snprintf(errbuf, errlen,
                     "http.archive = on serves message bodies: it needs http.token or "
                     "http.token_file");
            r = -EINVAL;
            goto fail;
        }
        h->archive.timeout_ms =
            conf->archive_timeout_ms ? conf->archive_timeout_ms : 10000;
        if (!(h->archive.conninfo = strdup(conf->archive_conninfo)) ||
            !(h->archive.language =
                  strdup(conf->search_language ? conf->search_language : "simple"))) {
            snprintf(errbuf, errlen, "out of memory");
            r = -ENOMEM;
            goto fail;
        }
    }
    if (conf->token && *conf->token) {
        h->has_token = true;
        crypto_generichash(h->token_hash, sizeof(h->token_hash),
                           (const unsigned char *)conf->token, strlen(conf->token), NULL,
                           0);
    } else if (!is_loopback(&ss)) {
        cv_log(CV_LOG_WARN, "http server reachable from the network without a token",
               "listen=%s hint=\"set http.token_file, or bind 127.0.0.1\"", conf->listen);
    }
    if ((r = -pthread_create(&h->reaper, NULL, reap, h)) < 0) {
        snprintf(errbuf, errlen, "http: cannot start a thread: %s", strerror(-r));
        goto fail;
    }
    h->reaper_started = true;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* the TLS files, then the pool of threads (only when asked for: a size
     * of 1 makes libmicrohttpd warn) */
    struct MHD_OptionItem opts[4] = {{MHD_OPTION_END, 0, NULL}};
    if ((r = load_tls(h, conf, opts, errbuf, errlen)) < 0)
        goto fail;
    if (h->archive.conninfo) {
        size_t i = h->tls_cert ? 2 : 0;
        opts[i] =
            (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, ARCHIVE_THREADS, NULL};
        opts[i + 1] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    }
    if (h->tls_cert)
        flags |= MHD_USE_TLS;
    h->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, handle, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
        conf->max_connections ? conf->max_connections : 256u,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        conf->max_per_address ? conf->max_per_address : 16u,
        MHD_OPTION_CONNECTION_TIMEOUT, IDLE_TIMEOUT_S, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, h, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_ARRAY,
        opts,
        /* No MHD_OPTION_LISTENING_ADDRESS_REUSE: given 1 it sets SO_REUSEPORT,
         * and a second broker on a taken http.listen then shares the port
         * (answering /api/kafka with the other one's cluster half of the
         * time); given 0 it also drops the default SO_REUSEADDR, and a
         * restart fails while the old port is in TIME_WAIT. */
        MHD_OPTION_END);
    if (!h->daemon && h->tls_cert) {
        /* libmicrohttpd says why through the logger; a refused certificate
         * or key is the likelier cause than the address. */
        snprintf(errbuf, errlen,
                 "http.listen = \"%s\": cannot serve HTTPS: the address is taken, or "
                 "http.tls_cert_file %s and http.tls_key_file %s are not a PEM "
                 "certificate and its key",
                 conf->listen, conf->tls_cert_file, conf->tls_key_file);
        r = -EADDRNOTAVAIL;
        goto fail;
    }
    if (!h->daemon) {
        int e = errno ? errno : EADDRINUSE;
        snprintf(errbuf, errlen, "http.listen = \"%s\": cannot listen: %s", conf->listen,
                 strerror(e));
        r = -e;
        goto fail;
    }
    cv_log(CV_LOG_INFO, "http server listening",
           "listen=%s scheme=%s auth=%s allowed_hosts=\"%s\" header_timeout_s=%u "
           "max_connections=%u max_connections_per_address=%u",
           conf->listen, h->tls_cert ? "https" : "http", h->has_token ? "token" : "none",
           h->any_host ? "*"
           : *hosts    ? hosts
                       : "(localhost and addresses)",
           (unsigned)(h->header_timeout_ms / 1000),
           conf->max_connections ? conf->max_connections : 256u,
           conf->max_per_address ? conf->max_per_address : 16u);
    *ret_http = h;
    return 0;
fail:
    cv_http_stop(h);
    return r;
}

cv_http *cv_http_stop(cv_http *h) {
    if (!h)
        return NULL;
    if (h->reaper_started) {
        pthread_mutex_lock(&h->lock);
        h->stopping = true;
        pthread_cond_signal(&h->wake);
        pthread_mutex_unlock(&h->lock);
        pthread_join(h->reaper, NULL);
    }
    if (h->daemon)
        MHD_stop_daemon(h->daemon);
    while (h->conns) { /* those libmicrohttpd did not report closed */
        conn *k = h->conns;
        h->conns = k->next;
        free(k);
    }
    pthread_cond_destroy(&h->wake);
    pthread_mutex_destroy(&h->lock);
    pthread_mutex_destroy(&h->host_log.lock);
    pthread_mutex_destroy(&h->slow_log.lock);
    pthread_mutex_destroy(&h->mhd_log.lock);
    sodium_memzero(h->token_hash, sizeof(h->token_hash));
    free(h->allowed_hosts);
    free(h->kafka_bootstrap);
    free((char *)h->archive.conninfo);
    free((char *)h->archive.language);
    free(h->tls_cert);
    if (h->tls_key)
        sodium_memzero(h->tls_key, h->tls_key_len);
    free(h->tls_key);
    free(h);
    return NULL;
}
