/*
 * httparchive — search and reports in the broker's HTTP server
 * (httparchive.h).
 */
#include "httparchive.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "archive/reportfmt.h"
#include "archive/searchfmt.h"
#include "pg/pgaudit.h"
#include "pg/pgmigrate.h"
#include "pg/pgreport.h"
#include "pg/pgsearch.h"
#include "select.h"

#define CHANNELS_MAX 16
#define HTTP_LIMIT_MAX 200
#define CONNECT_TIMEOUT_S 5
/* Archive requests at once: fewer than the server's threads (http.c's
 * ARCHIVE_THREADS), so that /healthz and /metrics always find one free. */
#define ARCHIVE_MAX_BUSY 3
#define TEXT "text/plain; charset=utf-8"
#define HTML "text/html; charset=utf-8"
#define JSON "application/json"

/* Rules the pages add to the report's style sheet. */
static const char extra_css[] =
    "nav{margin:0 0 14px}nav a{margin-right:14px}"
    "form{display:flex;flex-wrap:wrap;gap:8px 14px;align-items:end;margin:0 0 18px}"
    "label{display:flex;flex-direction:column;font-size:12px;color:#5b6475}"
    "input{font:inherit;padding:4px 6px;border:1px solid #c9ced8;border-radius:4px}"
    "button{font:inherit;padding:5px 14px}"
    "td.body{text-align:left;white-space:pre-wrap;max-width:60ch}"
    "#results th,#results td{text-align:left}td.time{white-space:nowrap}"
    "mark{background:#ffe58a}";

static const char nav[] = "<nav><a href=\"/\">dashboard</a><a href=\"/search\">search</a>"
                          "<a href=\"/reports\">reports</a></nav>\n";

/* ---- parameters ---------------------------------------------------------- */

typedef struct params {
    const char *const *known; /* the names this path takes */
    const char *v[8];         /* by index in known; channel apart */
    const char *channels[CHANNELS_MAX];
    size_t nchannels, n;
    const char *bad; /* unknown, repeated, or one channel too many */
    const char *why;
} params;

static enum MHD_Result param(void *cls, enum MHD_ValueKind kind, const char *key,
                             const char *value) {
    params *p = cls;
    (void)kind;
    p->n++;
    if (p->bad)
        return MHD_YES;
    if (strcmp(key, "channel") == 0) {
        if (!value || !*value) /* a form's field left blank */
            return MHD_YES;
        if (p->nchannels == CHANNELS_MAX) {
            p->bad = key, p->why = "more than 16 of";
            return MHD_YES;
        }
        p->channels[p->nchannels++] = value;
        return MHD_YES;
    }
    for (size_t i = 0; p->known[i]; i++)
        if (strcmp(key, p->known[i]) == 0) {
            if (p->v[i])
                p->bad = key, p->why = "repeated";
            p->v[i] = value ? value : "";
            return MHD_YES;
        }
    p->bad = key, p->why = "unknown";
    return MHD_YES;
}

/* Empty values are absent: what an HTML form sends for a field left blank. */
static const char *given(const char *v) {
    return v && *v ? v : NULL;
}

/* A channel name or pattern: the characters select.h allows, and each
 * [...] closed, not empty, its ranges in order (PostgreSQL would refuse the
 * regular expression made of it, and that is the request's fault). */
static bool channel_ok(const char *s) {
    size_t n = strlen(s);
    if (n < 1 || n > 200 ||
        strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                  "0123456789._-*?[]!^") != n)
        return false;
    for (const char *p = s; *p; p++) {
        if (*p == ']')
            return false;
        if (*p != '[')
            continue;
        const char *q = p + 1;
        if (*q == '!' || *q == '^')
            q++;
        const char *first = q;
        for (; *q && *q != ']'; q++)
            if (*q == '[' || (q > first && *q == '-' && q[1] && q[1] != ']' &&
                              (unsigned char)q[-1] > (unsigned char)q[1]))
                return false;
        if (!*q || q == first)
            return false;
        p = q;
    }
    return true;
}

/* Replaces OUT with a one-line text/plain message; returns STATUS. */
static unsigned fail(cv_buf *out, const char **type, unsigned status, const char *fmt,
                     ...) __attribute__((format(printf, 4, 5)));
static unsigned fail(cv_buf *out, const char **type, unsigned status, const char *fmt,
                     ...) {
    char msg[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    out->len = 0;
    cv_buf_printf(out, "%s\n", msg);
    *type = TEXT;
    return status;
}

/* Shared checks of since, until and channel. 0, or the 400 written. */
static unsigned range_and_channels(const params *p, int ix_since, int ix_until,
                                   const char *def_since, int64_t *since, int64_t *until,
                                   cv_buf *out, const char **type) {
    const char *s = given(p->v[ix_since]) ? p->v[ix_since] : def_since;
    const char *u = given(p->v[ix_until]);
    if (s && cv_parse_time_us(s, since) < 0)
        return fail(
            out, type, MHD_HTTP_BAD_REQUEST,
            "bad request: since \"%.64s\" is not a time (RFC 3339, a date, 7d, Unix "
            "ms)",
            s);
    if (u && cv_parse_time_us(u, until) < 0)
        return fail(
            out, type, MHD_HTTP_BAD_REQUEST,
            "bad request: until \"%.64s\" is not a time (RFC 3339, a date, 7d, Unix "
            "ms)",
            u);
    for (size_t i = 0; i < p->nchannels; i++)
        if (!channel_ok(p->channels[i]))
            return fail(out, type, MHD_HTTP_BAD_REQUEST,
                        "bad request: channel \"%.64s\" is neither a channel name nor a "
                        "pattern",
                        p->channels[i]);
    return 0;
}

/* ---- PostgreSQL and the audit record ------------------------------------ */

typedef struct session {
    PGconn *conn;
    char id[CV_AUDIT_ID_LEN];
    bool audited;
    const char *command, *peer;
    cv_buf args; /* the parameters as a JSON array of "key=value" */
} session;

static enum MHD_Result audit_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value) {
    cv_buf *b = cls;
    char kv[600];
    (void)kind;
    snprintf(kv, sizeof(kv), "%s=%s", key, value ? value : "");
    cv_buf_printf(b, "%s", b->len > 1 ? "," : "");
    cv_buf_json_string(b, kv, strlen(kv));
    return MHD_YES;
}

/* Connects as the reader with the timeout and writes the action's first
 * audit row. 0, or the 503 written. */
static unsigned session_open(session *s, const cv_httparchive_conf *a,
                             struct MHD_Connection *c, cv_buf *out, const char **type) {
    char err[1024], sql[64];
    cv_buf_init(&s->args, 512 << 10); /* 23 parameters of 600 bytes, escaped */
    cv_buf_printf(&s->args, "[");
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, audit_arg, &s->args);
    cv_buf_printf(&s->args, "]");
    s->conn = cv_pg_connect_timeout(a->conninfo, CONNECT_TIMEOUT_S, err, sizeof(err));
    if (!s->conn || cv_pgmigrate_check(s->conn, err, sizeof(err)) < 0) {
        cv_log(CV_LOG_WARN, "http archive: postgres unavailable", "path=%s error=\"%s\"",
               s->command, err);
        return fail(out, type, MHD_HTTP_SERVICE_UNAVAILABLE,
                    "service unavailable: %s (postgres.reader_conninfo)", err);
    }
    snprintf(sql, sizeof(sql), "SET statement_timeout = %u", a->timeout_ms);
    PGresult *res = PQexec(s->conn, sql);
    bool set = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!set) { /* without the bound a request could hold its thread for good */
        snprintf(err, sizeof(err), "%s", PQerrorMessage(s->conn));
        cv_one_line(err);
        return fail(out, type, MHD_HTTP_SERVICE_UNAVAILABLE,
                    "service unavailable: postgres: setting statement_timeout: %s", err);
    }
    cv_audit_row row = {.os_user = "http",
                        .host = s->peer,
                        .command = s->command,
                        .arguments_json = (const char *)s->args.data,
                        .result = "running"};
    if (cv_pgaudit_append(s->conn, &row, s->id, err, sizeof(err)) < 0)
        return fail(out, type, MHD_HTTP_SERVICE_UNAVAILABLE,
                    "service unavailable: %s (the audit record)", err);
    s->audited = true;
    return 0;
}

/* The action's outcome, then the connection closed. */
static void session_close(session *s, unsigned status, const char *counts_key,
                          int64_t count, const char *detail) {
    if (s->audited) {
        char result[32], counts[96], err[512];
        snprintf(result, sizeof(result), status == MHD_HTTP_OK ? "ok" : "http %u",
                 status);
        snprintf(counts, sizeof(counts), "{\"%s\":%" PRId64 "}", counts_key, count);
        cv_audit_row row = {.id = s->id,
                            .os_user = "http",
                            .host = s->peer,
                            .command = s->command,
                            .arguments_json = (const char *)s->args.data,
                            .result = result,
                            .counts_json = status == MHD_HTTP_OK ? counts : NULL,
                            .detail = detail};
        if (cv_pgaudit_append(s->conn, &row, NULL, err, sizeof(err)) < 0)
            cv_log(CV_LOG_WARN, "http archive: audit record not written",
                   "path=%s error=\"%s\"", s->command, err);
        cv_log(CV_LOG_INFO, "audit",
               "id=%s command=\"%s\" os_user=http host=%s result=%s", s->id, s->command,
               s->peer, result);
    }
    if (s->conn)
        PQfinish(s->conn);
    cv_buf_release(&s->args);
}

/* A failed query: 400 for what the request got wrong, else 503. */
static unsigned query_failed(int r, const char *err, cv_buf *out, const char **type) {
    cv_log(CV_LOG_WARN, "http archive: query failed", "error=\"%s\"", err);
    return r == -EINVAL ? fail(out, type, MHD_HTTP_BAD_REQUEST, "bad request: %s", err)
                        : fail(out, type, MHD_HTTP_SERVICE_UNAVAILABLE,
                               "service unavailable: %s", err);
}

/* ---- search -------------------------------------------------------------- */

enum { S_TEXT, S_SENDER, S_ID, S_SINCE, S_UNTIL, S_LIMIT, S_BEFORE, S_FORMAT };
static const char *const search_params[] = {"text",  "sender", "id",     "since",
                                            "until", "limit",  "before", NULL};

/* Percent-encodes S for a query string. */
static int url_escape(cv_buf *b, const char *s) {
    int r = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && r == 0; p++)
        r = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                    (*p >= '0' && *p <= '9') || strchr("-._~", *p)
                ? cv_buf_append(b, (const char *)p, 1)
                : cv_buf_printf(b, "%%%02X", *p);
    return r;
}

static int form_field(cv_buf *b, const char *name, const char *label, const char *value,
                      const char *placeholder) {
    int r = cv_buf_printf(b, "<label>%s<input name=\"%s\" value=\"", label, name);
    r = r ? r : cv_buf_html(b, value ? value : "");
    return r ? r : cv_buf_printf(b, "\" placeholder=\"%s\"></label>", placeholder);
}

static int search_form(cv_buf *b, const params *p) {
    int r = cv_buf_printf(b, "<form method=\"get\" action=\"/search\">");
    r = r ? r
          : form_field(b, "text", "words", p->v[S_TEXT], "refund \"order 5521\" -test");
    r = r ? r
          : form_field(b, "channel", "channel", p->nchannels ? p->channels[0] : NULL,
                       "eu-*");
    r = r ? r : form_field(b, "sender", "sender", p->v[S_SENDER], "sender id");
    r = r ? r : form_field(b, "since", "since", p->v[S_SINCE], "7d, 2026-12-01");
    r = r ? r : form_field(b, "until", "until", p->v[S_UNTIL], "now");
    r = r ? r : form_field(b, "id", "message id", p->v[S_ID], "");
    return r ? r : cv_buf_printf(b, "<button type=\"submit\">search</button></form>\n");
}

static int search_html(cv_buf *b, const params *p, const cv_search_page *pg,
                       const char *note) {
    int r = cv_buf_printf(b,
                          "<!DOCTYPE html>\n<html lang=\"en\"><head><meta "
                          "charset=\"utf-8\"><title>chatvault search</title><link "
                          "rel=\"stylesheet\" href=\"/archive.css\"></head><body>\n%s"
                          "<h1>Search the archive</h1>\n",
                          nav);
    r = r ? r : search_form(b, p);
    if (r == 0 && note)
        r = cv_buf_printf(b, "<p class=\"note\">%s</p>\n", note);
    if (r || !pg)
        return r ? r : cv_buf_printf(b, "</body></html>\n");
    r = cv_buf_printf(b, "<section><p class=\"range\">%zu result%s, newest first</p>",
                      pg->n, pg->n == 1 ? "" : "s");
    r = r ? r
          : cv_buf_printf(b,
                          "<table id=\"results\"><tr><th>sent (UTC)</th><th>channel</th>"
                          "<th>sender</th><th>message id</th><th>topic/partition@offset"
                          "</th><th>message</th></tr>\n");
    for (size_t i = 0; i < pg->n && r == 0; i++)
        r = cv_search_hit_html(b, &pg->h[i]);
    r = r ? r : cv_buf_printf(b, "</table>");
    char next[2 * CV_SEARCH_CURSOR_MAX];
    if (r == 0 && pg->full &&
        cv_search_cursor_encode(&pg->last, next, sizeof(next)) == 0) {
        r = cv_buf_printf(b, "<p><a id=\"next\" href=\"/search?before=%s", next);
        for (size_t i = 0; search_params[i] && r == 0; i++)
            if (i != S_BEFORE && given(p->v[i])) {
                r = cv_buf_printf(b, "&amp;%s=", search_params[i]);
                r = r ? r : url_escape(b, p->v[i]);
            }
        for (size_t i = 0; i < p->nchannels && r == 0; i++) {
            r = cv_buf_printf(b, "&amp;channel=");
            r = r ? r : url_escape(b, p->channels[i]);
        }
        r = r ? r : cv_buf_printf(b, "\">next page</a></p>");
    }
    return r ? r : cv_buf_printf(b, "</section></body></html>\n");
}

static int search_json(cv_buf *b, const cv_search_page *pg) {
    int r = cv_buf_printf(b, "{\"results\":[");
    for (size_t i = 0; i < pg->n && r == 0; i++) {
        r = i ? cv_buf_append(b, ",", 1) : 0;
        r = r ? r : cv_search_hit_json(b, &pg->h[i]);
    }
    char next[2 * CV_SEARCH_CURSOR_MAX];
    if (r == 0 && pg->full && cv_search_cursor_encode(&pg->last, next, sizeof(next)) == 0)
        return cv_buf_printf(b, "],\"next_before\":\"%s\"}\n", next);
    return r ? r : cv_buf_printf(b, "],\"next_before\":null}\n");
}

/* Reads the request's parameters into P (KNOWN: the names the path takes,
 * USE: them as the error lists them). 0, or the 400 written. */
static unsigned params_read(struct MHD_Connection *c, const char *const *known,
                            const char *use, params *p, cv_buf *out, const char **type) {
    *p = (params){.known = known};
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, param, p);
    return p->bad
               ? fail(out, type, MHD_HTTP_BAD_REQUEST,
                      "bad request: %s parameter \"%.64s\" (use %s)", p->why, p->bad, use)
               : 0;
}

static unsigned serve_search(const cv_httparchive_conf *a, struct MHD_Connection *c,
                             bool html, const char *peer, cv_buf *out,
                             const char **type) {
    params p;
    unsigned st = params_read(c, search_params,
                              "text, channel, sender, id, since, until, limit, before",
                              &p, out, type);
    if (st)
        return st;
    if (html && p.n == 0) { /* the empty form */
        *type = HTML;
        return search_html(out, &p, NULL,
                           "Every field given applies; words use web "
                           "search syntax (\"a phrase\", -not, or).") < 0
                   ? fail(out, type, 500, "render failed")
                   : MHD_HTTP_OK;
    }
    int64_t since = -1, until = -1, limit = 50;
    st = range_and_channels(&p, S_SINCE, S_UNTIL, NULL, &since, &until, out, type);
    if (st)
        return st;
    char *end;
    if (given(p.v[S_LIMIT]) &&
        ((limit = strtoll(p.v[S_LIMIT], &end, 10)) < 1 || limit > HTTP_LIMIT_MAX || *end))
        return fail(out, type, MHD_HTTP_BAD_REQUEST,
                    "bad request: limit \"%.16s\" is not a number from 1 to 200",
                    p.v[S_LIMIT]);
    cv_search_cursor cur = {0};
    if (given(p.v[S_BEFORE]) && cv_search_cursor_decode(p.v[S_BEFORE], &cur) < 0)
        return fail(out, type, MHD_HTTP_BAD_REQUEST,
                    "bad request: before \"%.64s\" is not a cursor of this search",
                    p.v[S_BEFORE]);
    session s = {.command = html ? "search (dashboard)" : "search (api)", .peer = peer};
    cv_search_page pg = {0};
    char err[1024];
    int r = 0;
    if (!(st = session_open(&s, a, c, out, type))) {
        cv_pgsearch_query q = {.channels = p.channels,
                               .nchannels = p.nchannels,
                               .sender = given(p.v[S_SENDER]),
                               .message_id = given(p.v[S_ID]),
                               .text = given(p.v[S_TEXT]),
                               .language = a->language,
                               .since_us = since,
                               .until_us = until,
                               .has_cursor = cur.set,
                               .cursor_sent_at_us = cur.sent_at_us,
                               .cursor_channel = cur.channel,
                               .cursor_message_id = cur.message_id,
                               .excerpt_chars = CV_SEARCH_EXCERPT_CHARS};
        if ((r = cv_search_page_init(&pg, (size_t)limit)) < 0 ||
            (r = cv_search_page_pg(s.conn, &q, &pg, err, sizeof(err))) < 0)
            st = query_failed(r, err, out, type);
        else if ((r = html ? search_html(out, &p, &pg, NULL) : search_json(out, &pg)) < 0)
            st = fail(out, type, 500, "render failed: %s", "too large");
        else
            *type = html ? HTML : JSON, st = MHD_HTTP_OK;
    }
    session_close(&s, st, "results", (int64_t)pg.n,
                  st == MHD_HTTP_OK ? NULL : (const char *)out->data);
    cv_search_page_release(&pg);
    return st;
}

/* ---- reports ------------------------------------------------------------- */

enum { R_SINCE, R_UNTIL };
static const char *const report_params[] = {"since", "until", NULL};

static int report_header(cv_buf *b, const params *p) {
    int r = cv_buf_printf(b, "%s<form method=\"get\" action=\"/reports\">", nav);
    r = r ? r : form_field(b, "since", "since", p->v[R_SINCE], "7d");
    r = r ? r : form_field(b, "until", "until", p->v[R_UNTIL], "now");
    r = r ? r
          : form_field(b, "channel", "channel", p->nchannels ? p->channels[0] : NULL,
                       "every channel");
    return r ? r : cv_buf_printf(b, "<button type=\"submit\">show</button></form>\n");
}

static unsigned serve_report(const cv_httparchive_conf *a, struct MHD_Connection *c,
                             bool html, const char *peer, cv_buf *out,
                             const char **type) {
    params p;
    unsigned st = params_read(c, report_params, "since, until, channel", &p, out, type);
    if (st)
        return st;
    cv_pgreport_query q = {.top = 10, .channels = p.channels, .nchannels = p.nchannels};
    q.until_us = cv_now_us();
    st = range_and_channels(&p, R_SINCE, R_UNTIL, "7d", &q.since_us, &q.until_us, out,
                            type);
    if (st)
        return st;
    if (q.since_us >= q.until_us)
        return fail(out, type, MHD_HTTP_BAD_REQUEST,
                    "bad request: since must be before until");
    session s = {.command = html ? "report (dashboard)" : "report (api)", .peer = peer};
    json_t *doc = NULL;
    char err[1024];
    int64_t messages = 0;
    if (!(st = session_open(&s, a, c, out, type))) {
        int r = cv_pgreport_build(s.conn, &q, &doc, err, sizeof(err));
        if (r < 0) {
            st = query_failed(r, err, out, type);
        } else {
            cv_buf header;
            cv_buf_init(&header, 64 << 10);
            r = html ? report_header(&header, &p) : 0;
            r = r      ? r
                : html ? cv_report_render_html(out, doc, "/archive.css",
                                               (const char *)header.data)
                       : cv_report_render(out, doc, CV_REPORT_JSON);
            cv_buf_release(&header);
            messages = json_integer_value(
                json_object_get(json_object_get(doc, "overall"), "messages"));
            if (r < 0)
                st = fail(out, type, 500, "render failed: %s", "too large");
            else
                *type = html ? HTML : JSON, st = MHD_HTTP_OK;
        }
    }
    session_close(&s, st, "messages", messages,
                  st == MHD_HTTP_OK ? NULL : (const char *)out->data);
    json_decref(doc);
    return st;
}

/* ---- dispatch ------------------------------------------------------------ */

bool cv_httparchive_path(const char *url) {
    return strcmp(url, "/search") == 0 || strcmp(url, "/api/search") == 0 ||
           strcmp(url, "/reports") == 0 || strcmp(url, "/api/report") == 0 ||
           strcmp(url, "/archive.css") == 0;
}

unsigned cv_httparchive_serve(const cv_httparchive_conf *a, struct MHD_Connection *c,
                              const char *url, const char *peer, cv_buf *out,
                              const char **ret_type) {
    if (!a->conninfo)
        return fail(out, ret_type, MHD_HTTP_NOT_FOUND,
                    "not found: the archive's pages are off (http.archive = off)");
    if (strcmp(url, "/archive.css") == 0) {
        *ret_type = "text/css; charset=utf-8";
        return cv_buf_printf(out, "%s%s", cv_report_css, extra_css) < 0
                   ? fail(out, ret_type, 500, "render failed")
                   : MHD_HTTP_OK;
    }
    static atomic_int busy;
    if (atomic_fetch_add(&busy, 1) >= ARCHIVE_MAX_BUSY) {
        atomic_fetch_sub(&busy, 1);
        return fail(out, ret_type, MHD_HTTP_SERVICE_UNAVAILABLE,
                    "service unavailable: %d searches and reports are running; try "
                    "again shortly",
                    ARCHIVE_MAX_BUSY);
    }
    bool html = url[1] != 'a';
    unsigned st = strstr(url, "search") ? serve_search(a, c, html, peer, out, ret_type)
                                        : serve_report(a, c, html, peer, out, ret_type);
    atomic_fetch_sub(&busy, 1);
    return st;
}
