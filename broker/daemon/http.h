/*
 * http — the broker's observability server on http.listen (libmicrohttpd,
 * its own thread): GET /metrics (Prometheus text), /healthz (process alive),
 * /readyz (stores reachable, pipeline running, no channel stalled),
 * /api/lag (JSON), /api/history (JSON: the bounded history behind the
 * dashboard's charts, ?channel=NAME&range=1h|24h; 400 for a bad parameter,
 * 404 for an unknown channel), /api/kafka (JSON: the embedded Kafka cluster's address,
 * for the other commands), / (the dashboard, embedded in the binary), and
 * with http.archive on the pages of daemon/httparchive.h (search, reports).
 *
 * It only reads cv_metrics snapshots; it never touches the pipeline (a
 * render may append a history point while the pipeline is blocked).
 *
 * With http.token set, every endpoint but /healthz needs the token, as
 * `Authorization: Bearer <token>` (tools, Prometheus' `authorization`) or as
 * the password of HTTP Basic auth with any user name (so a browser can open
 * the dashboard: it asks once and sends it with the page's own requests).
 * The comparison is constant-time. Binding an address that is not loopback
 * without a token logs a warning.
 *
 * TLS: with a certificate and key configured the server speaks HTTPS only
 * (a plain-HTTP request on the port fails the handshake); the files are
 * read once at start.
 *
 * Hardening: a request whose Host header is neither localhost, an address
 * literal nor one of allowed_hosts gets 421 (DNS rebinding: a web page that
 * points its own name at this address is refused). A connection whose
 * request header is not complete header_timeout_s after it opened, or after
 * its previous response, is closed; at most max_connections are open, and
 * max_per_address from one client address. Refusals are logged at most
 * once per 10 s, with a count of the rest.
 */
#ifndef CV_HTTP_H
#define CV_HTTP_H

#include <stddef.h>

#include "obs/metrics.h"

typedef struct cv_http cv_http;

typedef struct cv_http_conf {
    const char *listen;  /* "host:port", "[v6addr]:port" or ":port"; host is
                            a numeric address or "localhost" */
    const char *token;   /* NULL or "": no authentication */
    cv_metrics *metrics; /* read-only; must outlive the server */
    /* The embedded (mock) Kafka cluster's address, served at /api/kafka so
     * that the other commands, given the broker's config, find it; NULL when
     * the broker uses a Kafka of its own. Copied. */
    const char *kafka_bootstrap;
    /* http.allowed_hosts: host names (name or name:port, comma-separated;
     * "*": any) accepted in the Host header besides localhost and address
     * literals. NULL or "": those only. Copied. */
    const char *allowed_hosts;
    unsigned header_timeout_s; /* a request header must be complete this long
                                  after connecting or the last response (0: 10) */
    unsigned max_connections;  /* open at once (0: 256) */
    unsigned max_per_address;  /* open at once from one client address (0: 16) */
    /* http.tls_cert_file / http.tls_key_file: PEM files; both set: HTTPS
     * only (libmicrohttpd with GnuTLS), neither: plain HTTP. The key file
     * must not be readable by group or others. */
    const char *tls_cert_file, *tls_key_file;
    /* http.archive: the reader's conninfo for the archive's pages
     * (daemon/httparchive.h), or NULL: off. Needs a token. Copied. */
    const char *archive_conninfo;
    const char *search_language; /* search.language; copied */
    unsigned archive_timeout_ms; /* http.archive_timeout_ms (0: 10000) */
} cv_http_conf;

/* Binds and starts serving. Returns 0, or a negative errno with errbuf set
 * ("http.listen = \"...\": ..."). */
int cv_http_start(const cv_http_conf *conf, cv_http **ret_http, char *errbuf,
                  size_t errlen);

/* Stops serving and frees. Accepts NULL; returns NULL. */
cv_http *cv_http_stop(cv_http *h);

/* Parses a listen address into `ret_ss` (sockaddr_in or sockaddr_in6).
 * Returns 0 or -EINVAL with errbuf set. Exposed for tests and `lag`. */
struct sockaddr_storage;
int cv_http_parse_listen(const char *listen, struct sockaddr_storage *ret_ss,
                         char *errbuf, size_t errlen);

#endif
