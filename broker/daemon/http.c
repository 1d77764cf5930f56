/*
 * http — see http.h. libmicrohttpd runs the sockets in its own internal
 * polling thread; every handler renders a fresh snapshot from cv_metrics
 * (under its mutex) and never blocks on the pipeline.
 */
#include "daemon/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cli.h"
#include "daemon/web_assets.h"

#define RENDER_LIMIT (64u << 20)

struct cv_http {
    struct MHD_Daemon *daemon;
    cv_metrics *metrics;
    char *kafka_bootstrap; /* NULL: not embedded */
    bool has_token;
    unsigned char token_hash[crypto_generichash_BYTES];
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
static enum MHD_Result send_buf(struct MHD_Connection *c, cv_buf *b, int render_rc,
                                const char *type) {
    if (render_rc < 0) {
        cv_buf_release(b);
        cv_log(CV_LOG_ERROR, "http response too large", "error=%d", render_rc);
        return send_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "render failed\n");
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(b->len, b->data, MHD_RESPMEM_MUST_FREE);
    if (!r)
        cv_buf_release(b);
    return send_response(c, MHD_HTTP_OK, r, type, true);
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
    (void)version, (void)upload_data, (void)con_cls;
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
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    cv_log(CV_LOG_WARN, msg, "component=http");
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
    h->metrics = conf->metrics;
    if (conf->kafka_bootstrap && !(h->kafka_bootstrap = strdup(conf->kafka_bootstrap))) {
        free(h);
        snprintf(errbuf, errlen, "out of memory");
        return -ENOMEM;
    }
    if (conf->token && *conf->token) {
        h->has_token = true;
        crypto_generichash(h->token_hash, sizeof(h->token_hash),
                           (const unsigned char *)conf->token, strlen(conf->token), NULL,
                           0);
    } else if (!is_loopback(&ss)) {
        cv_log(CV_LOG_WARN, "http server reachable from the network without a token",
               "listen=%s hint=\"set http.token, or bind 127.0.0.1\"", conf->listen);
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    h->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, handle, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)64, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
        /* No MHD_OPTION_LISTENING_ADDRESS_REUSE: given 1 it sets SO_REUSEPORT,
         * and a second broker on a taken http.listen then shares the port
         * (answering /api/kafka with the other one's cluster half of the
         * time); given 0 it also drops the default SO_REUSEADDR, and a
         * restart fails while the old port is in TIME_WAIT. */
        MHD_OPTION_END);
    if (!h->daemon) {
        int e = errno ? errno : EADDRINUSE;
        snprintf(errbuf, errlen, "http.listen = \"%s\": cannot listen: %s", conf->listen,
                 strerror(e));
        free(h->kafka_bootstrap);
        free(h);
        return -e;
    }
    cv_log(CV_LOG_INFO, "http server listening", "listen=%s auth=%s", conf->listen,
           h->has_token ? "token" : "none");
    *ret_http = h;
    return 0;
}

cv_http *cv_http_stop(cv_http *h) {
    if (!h)
        return NULL;
    MHD_stop_daemon(h->daemon);
    sodium_memzero(h->token_hash, sizeof(h->token_hash));
    free(h->kafka_bootstrap);
    free(h);
    return NULL;
}
