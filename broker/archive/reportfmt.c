/*
 * reportfmt — an activity report (the JSON document of cv_pgreport_build,
 * consumer/pg/pgreport.h) as JSON, an aligned table, CSV (one figure per
 * line) or one HTML page with SVG charts drawn here (no script, no
 * network), for `chatvault report` and the broker's /reports page. Every
 * name that comes from the archive (channels, senders, reasons) is escaped
 * in HTML and quoted in CSV.
 */
#include "reportfmt.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pg/pgreport.h"
/* ---- helpers ------------------------------------------------------------ */

static json_int_t geti(const json_t *o, const char *k) {
    return json_integer_value(json_object_get(o, k));
}

static void iso_time(char *buf, size_t len, json_int_t ms, bool minutes) {
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, minutes ? "%Y-%m-%dT%H:%MZ" : "%Y-%m-%dT%H:00Z", &tm);
}

static void size_label(char *buf, size_t len, const json_t *doc, size_t i) {
    json_t *lt =
        json_object_get(json_array_get(json_object_get(doc, "size_buckets"), i), "lt");
    json_t *prev =
        i ? json_object_get(json_array_get(json_object_get(doc, "size_buckets"), i - 1),
                            "lt")
          : NULL;
    json_int_t v =
        json_is_integer(lt) ? json_integer_value(lt) : json_integer_value(prev);
    const char *unit = "B";
    if (v >= 1048576)
        v /= 1048576, unit = "MiB";
    else if (v >= 1024)
        v /= 1024, unit = "KiB";
    snprintf(buf, len, "%s%" JSON_INTEGER_FORMAT " %s",
             json_is_integer(lt) ? "<" : ">=", v, unit);
}

static void latency_label(char *buf, size_t len, const json_t *doc, size_t i) {
    const json_t *b = json_object_get(doc, "latency_buckets_ms");
    json_t *lt = json_object_get(json_array_get(b, i), "lt");
    json_t *prev = i ? json_object_get(json_array_get(b, i - 1), "lt") : NULL;
    json_int_t v =
        json_is_integer(lt) ? json_integer_value(lt) : json_integer_value(prev);
    const char *op = json_is_integer(lt) ? "<" : ">=";
    if (v >= 60000 && v % 60000 == 0)
        snprintf(buf, len, "%s%" JSON_INTEGER_FORMAT " min", op, v / 60000);
    else if (v >= 1000 && v % 1000 == 0)
        snprintf(buf, len, "%s%" JSON_INTEGER_FORMAT " s", op, v / 1000);
    else
        snprintf(buf, len, "%s%" JSON_INTEGER_FORMAT " ms", op, v);
}

static void pct(char *buf, size_t len, const json_t *sec, const char *key) {
    json_t *v = json_object_get(json_object_get(sec, "latency"), key);
    if (!json_is_integer(v))
        snprintf(buf, len, "-");
    else if (json_integer_value(v) >= 3600000)
        snprintf(buf, len, ">=1h");
    else
        snprintf(buf, len, "<%" JSON_INTEGER_FORMAT "ms", json_integer_value(v));
}

/* Volume over every step of the range, zeros included: n points. */
static json_int_t *volume_series(const json_t *doc, const json_t *sec, size_t *ret_n,
                                 json_int_t *ret_step_ms) {
    json_int_t step = strcmp(json_string_value(json_object_get(doc, "step")), "day") == 0
                          ? 86400000
                          : 3600000;
    json_int_t since = geti(doc, "since_ms"), until = geti(doc, "until_ms");
    if (step == 86400000)
        since -= since % step;
    size_t n = until > since ? (size_t)((until - since + step - 1) / step) : 0;
    json_int_t *v = calloc(n ? n : 1, sizeof(*v));
    if (!v)
        return NULL;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(sec, "volume"), i, e) {
        json_int_t k = (geti(e, "t_ms") - since) / step;
        if (k >= 0 && (size_t)k < n)
            v[k] += geti(e, "messages");
    }
    *ret_n = n;
    *ret_step_ms = step;
    return v;
}

/* ---- JSON --------------------------------------------------------------- */

static int render_json(cv_buf *b, const json_t *doc) {
    char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!s)
        return -ENOMEM;
    int r = cv_buf_printf(b, "%s\n", s);
    free(s);
    return r;
}

/* ---- table -------------------------------------------------------------- */

static int table_summary_row(cv_buf *b, const char *name, const json_t *sec) {
    char p50[16], p90[16], p99[16];
    pct(p50, sizeof(p50), sec, "p50_ms");
    pct(p90, sizeof(p90), sec, "p90_ms");
    pct(p99, sizeof(p99), sec, "p99_ms");
    return cv_buf_printf(b,
                         "%-24s %10" JSON_INTEGER_FORMAT " %12" JSON_INTEGER_FORMAT
                         " %8" JSON_INTEGER_FORMAT " %10" JSON_INTEGER_FORMAT
                         " %8" JSON_INTEGER_FORMAT " %8" JSON_INTEGER_FORMAT
                         "  %-8s %-8s %-8s\n",
                         name, geti(sec, "messages"), geti(sec, "bytes"),
                         geti(sec, "distinct_senders"), geti(sec, "duplicates"),
                         geti(sec, "replayed"), geti(sec, "rejected"), p50, p90, p99);
}

static int table_section(cv_buf *b, const json_t *doc, const json_t *sec,
                         const char *title) {
    int r = cv_buf_printf(b, "\n== %s ==\n", title);
    size_t n = 0, i;
    json_int_t step = 0;
    json_int_t *v = volume_series(doc, sec, &n, &step);
    if (!v)
        return -ENOMEM;
    r |= cv_buf_printf(b, "messages per %s (non-empty):\n",
                       step == 3600000 ? "hour" : "day");
    json_int_t t0 = geti(doc, "since_ms");
    if (step == 86400000)
        t0 -= t0 % step;
    for (i = 0; i < n; i++)
        if (v[i]) {
            char t[32];
            iso_time(t, sizeof(t), t0 + (json_int_t)i * step, false);
            if (step == 86400000)
                t[10] = 0;
            r |= cv_buf_printf(b, "  %-20s %10" JSON_INTEGER_FORMAT "\n", t, v[i]);
        }
    free(v);
    json_t *e;
    r |= cv_buf_printf(b, "top senders:\n");
    json_array_foreach(json_object_get(sec, "top_senders"), i, e) r |= cv_buf_printf(
        b, "  %-40s %10" JSON_INTEGER_FORMAT "\n",
        json_string_value(json_object_get(e, "sender_id")), geti(e, "messages"));
    r |= cv_buf_printf(b, "peak minutes:\n");
    json_array_foreach(json_object_get(sec, "peak_minutes"), i, e) {
        char t[32];
        iso_time(t, sizeof(t), geti(e, "t_ms"), true);
        r |= cv_buf_printf(b, "  %-20s %10" JSON_INTEGER_FORMAT "\n", t,
                           geti(e, "messages"));
    }
    r |= cv_buf_printf(b, "body sizes:\n");
    json_array_foreach(json_object_get(sec, "sizes"), i, e) {
        char l[32];
        size_label(l, sizeof(l), doc, i);
        r |= cv_buf_printf(b, "  %-12s %10" JSON_INTEGER_FORMAT "\n", l,
                           json_integer_value(e));
    }
    const json_t *lat = json_object_get(sec, "latency");
    r |= cv_buf_printf(b,
                       "store latency (persisted_at - sent_at), %" JSON_INTEGER_FORMAT
                       " messages with a sent_at:\n",
                       geti(lat, "count"));
    json_array_foreach(json_object_get(lat, "buckets"), i, e) if (json_integer_value(e)) {
        char l[32];
        latency_label(l, sizeof(l), doc, i);
        r |= cv_buf_printf(b, "  %-12s %10" JSON_INTEGER_FORMAT "\n", l,
                           json_integer_value(e));
    }
    r |= cv_buf_printf(b, "rejected by reason:\n");
    const char *k;
    json_object_foreach(json_object_get(sec, "rejected_by_reason"), k, e) r |=
        cv_buf_printf(b, "  %-24s %10" JSON_INTEGER_FORMAT "\n", k,
                      json_integer_value(e));
    return r;
}

static int render_table(cv_buf *b, const json_t *doc) {
    char s[32], u[32];
    iso_time(s, sizeof(s), geti(doc, "since_ms"), false);
    iso_time(u, sizeof(u), geti(doc, "until_ms"), false);
    int r = cv_buf_printf(b, "chatvault report %s .. %s (UTC, whole hours)\n\n", s, u);
    r |= cv_buf_printf(b, "%-24s %10s %12s %8s %10s %8s %8s  %-8s %-8s %-8s\n", "CHANNEL",
                       "MESSAGES", "BYTES", "SENDERS", "DUPLICATES", "REPLAYED",
                       "REJECTED", "P50", "P90", "P99");
    const json_t *overall = json_object_get(doc, "overall");
    r |= table_summary_row(b, "(all)", overall);
    size_t i;
    json_t *sec;
    json_array_foreach(json_object_get(doc, "channels"), i, sec) {
        const char *name = json_string_value(json_object_get(sec, "channel"));
        r |= table_summary_row(b, *name ? name : "(unknown)", sec);
    }
    r |= table_section(b, doc, overall, "all channels");
    json_array_foreach(json_object_get(doc, "channels"), i, sec) {
        const char *name = json_string_value(json_object_get(sec, "channel"));
        char title[256];
        snprintf(title, sizeof(title), "channel %s", *name ? name : "(unknown)");
        r |= table_section(b, doc, sec, title);
    }
    return r;
}

/* ---- CSV ---------------------------------------------------------------- */

static int csv_field(cv_buf *b, const char *s) {
    if (!strpbrk(s, ",\"\r\n"))
        return cv_buf_append(b, s, strlen(s));
    int r = cv_buf_append(b, "\"", 1);
    for (const char *p = s; r == 0 && *p; p++)
        r = *p == '"' ? cv_buf_append(b, "\"\"", 2) : cv_buf_append(b, p, 1);
    return r | cv_buf_append(b, "\"", 1);
}

static int csv_row(cv_buf *b, const char *scope, const char *channel, const char *metric,
                   const char *key, json_int_t value) {
    int r = cv_buf_printf(b, "%s,", scope);
    r |= csv_field(b, channel);
    r |= cv_buf_printf(b, ",%s,", metric);
    r |= csv_field(b, key);
    return r | cv_buf_printf(b, ",%" JSON_INTEGER_FORMAT "\n", value);
}

static int csv_section(cv_buf *b, const json_t *doc, const json_t *sec) {
    const char *ch = json_string_value(json_object_get(sec, "channel"));
    const char *scope = ch ? "channel" : "overall";
    if (!ch)
        ch = "";
    static const char *const plain[] = {"messages",   "bytes",    "distinct_senders",
                                        "duplicates", "replayed", "rejected"};
    int r = 0;
    for (size_t k = 0; k < sizeof(plain) / sizeof(plain[0]); k++)
        r |= csv_row(b, scope, ch, plain[k], "", geti(sec, plain[k]));
    size_t i;
    json_t *e;
    const char *key;
    json_object_foreach(json_object_get(sec, "rejected_by_reason"), key, e) r |=
        csv_row(b, scope, ch, "rejected_by_reason", key, json_integer_value(e));
    json_array_foreach(json_object_get(sec, "volume"), i, e) {
        char t[32];
        iso_time(t, sizeof(t), geti(e, "t_ms"), true);
        r |= csv_row(b, scope, ch, "volume", t, geti(e, "messages"));
    }
    json_array_foreach(json_object_get(sec, "top_senders"), i, e) r |=
        csv_row(b, scope, ch, "top_sender",
                json_string_value(json_object_get(e, "sender_id")), geti(e, "messages"));
    json_array_foreach(json_object_get(sec, "peak_minutes"), i, e) {
        char t[32];
        iso_time(t, sizeof(t), geti(e, "t_ms"), true);
        r |= csv_row(b, scope, ch, "peak_minute", t, geti(e, "messages"));
    }
    json_array_foreach(json_object_get(sec, "sizes"), i, e) {
        char l[32];
        size_label(l, sizeof(l), doc, i);
        r |= csv_row(b, scope, ch, "size", l, json_integer_value(e));
    }
    const json_t *lat = json_object_get(sec, "latency");
    json_array_foreach(json_object_get(lat, "buckets"), i, e) {
        char l[32];
        latency_label(l, sizeof(l), doc, i);
        r |= csv_row(b, scope, ch, "latency", l, json_integer_value(e));
    }
    static const char *const ps[] = {"p50_ms", "p90_ms", "p99_ms"};
    for (size_t k = 0; k < 3; k++)
        if (json_is_integer(json_object_get(lat, ps[k])))
            r |= csv_row(b, scope, ch, "latency_le_ms", ps[k], geti(lat, ps[k]));
    return r;
}

static int render_csv(cv_buf *b, const json_t *doc) {
    int r = cv_buf_printf(b, "scope,channel,metric,key,value\n");
    r |= csv_section(b, doc, json_object_get(doc, "overall"));
    size_t i;
    json_t *sec;
    json_array_foreach(json_object_get(doc, "channels"), i, sec) r |=
        csv_section(b, doc, sec);
    return r;
}

/* ---- HTML --------------------------------------------------------------- */

const char cv_report_css[] =
    "body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;"
    "color:#1d2330;background:#f6f7f9}"
    "h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}"
    "h3{font-size:14px;margin:14px 0 6px;color:#4a5263}"
    ".range{color:#5b6475;margin:0 0 16px}"
    "section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:16px;"
    "margin:0 0 20px}"
    ".tiles{display:flex;flex-wrap:wrap;gap:10px}"
    ".tile{border:1px solid #e3e6ec;border-radius:6px;padding:8px 12px;min-width:96px}"
    ".tile b{display:block;font-size:20px}.tile span{color:#5b6475;font-size:12px}"
    ".charts{display:flex;flex-wrap:wrap;gap:18px}"
    ".chart{flex:1 1 "
    "340px}.wide{flex-basis:100%}svg{width:100%;height:auto;display:block}"
    ".lists{display:flex;flex-wrap:wrap;gap:24px}"
    "table{border-collapse:collapse;font-size:13px}"
    "th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #eef0f4}"
    "th:first-child,td:first-child{text-align:left}th{color:#5b6475;font-weight:600}"
    ".note{color:#5b6475;font-size:12px}";

#define BAR "#3b6fd8"

/* Bars of v[0..n) with x labels from label(i) at a few ticks. */
static int svg_bars(cv_buf *b, int W, const json_int_t *v, size_t n,
                    const char *const *labels, size_t nticks, const char *title) {
    const int H = 200, L = 48, R = 8, T = 10, B = 34;
    json_int_t max = 0;
    for (size_t i = 0; i < n; i++)
        max = v[i] > max ? v[i] : max;
    int r = cv_buf_printf(b,
                          "<svg viewBox=\"0 0 %d %d\" role=\"img\" "
                          "xmlns=\"http://www.w3.org/2000/svg\"><title>",
                          W, H);
    r |= cv_buf_html(b, title);
    r |= cv_buf_printf(b, "</title>");
    r |=
        cv_buf_printf(b,
                      "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#c8cdd6\"/>"
                      "<text x=\"%d\" y=\"%d\" font-size=\"11\" text-anchor=\"end\" "
                      "fill=\"#5b6475\">%" JSON_INTEGER_FORMAT "</text>"
                      "<text x=\"%d\" y=\"%d\" font-size=\"11\" text-anchor=\"end\" "
                      "fill=\"#5b6475\">0</text>",
                      L, H - B, W - R, H - B, L - 4, T + 8, max, L - 4, H - B);
    r |= cv_buf_printf(
        b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#eef0f4\"/>", L, T,
        W - R, T);
    double slot = n ? (double)(W - L - R) / (double)n : 0;
    double bw = slot > 3 ? slot * 0.8 : slot;
    for (size_t i = 0; i < n; i++) {
        double h = max ? (double)v[i] * (H - T - B) / (double)max : 0;
        r |= cv_buf_printf(b,
                           "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
                           "height=\"%.1f\" fill=\"" BAR "\"><title>",
                           L + slot * (double)i + (slot - bw) / 2, H - B - h, bw, h);
        r |= cv_buf_html(b, labels[i]);
        r |= cv_buf_printf(b, ": %" JSON_INTEGER_FORMAT "</title></rect>", v[i]);
    }
    size_t every = nticks && n > nticks ? (n + nticks - 1) / nticks : 1;
    for (size_t i = 0; i < n; i += every) {
        r |= cv_buf_printf(b,
                           "<text x=\"%.1f\" y=\"%d\" font-size=\"10\" "
                           "text-anchor=\"middle\" fill=\"#5b6475\">",
                           L + slot * ((double)i + 0.5), H - B + 14);
        r |= cv_buf_html(b, labels[i]);
        r |= cv_buf_printf(b, "</text>");
    }
    return r | cv_buf_printf(b, "</svg>");
}

/* The cumulative share of messages under each latency bucket's bound, as a
 * step line, with the p50/p90/p99 levels dashed. */
static int svg_latency(cv_buf *b, const json_t *doc, const json_t *lat) {
    const int W = 560, H = 200, L = 48, R = 8, T = 10, B = 34;
    const json_t *bk = json_object_get(lat, "buckets");
    size_t n = json_array_size(bk);
    json_int_t total = geti(lat, "count"), cum = 0;
    int r = cv_buf_printf(b,
                          "<svg viewBox=\"0 0 %d %d\" role=\"img\" "
                          "xmlns=\"http://www.w3.org/2000/svg\"><title>store latency, "
                          "cumulative</title>",
                          W, H);
    double slot = (double)(W - L - R) / (double)n;
    static const int levels[] = {50, 90, 99};
    for (size_t k = 0; k < 3; k++) {
        double y = T + (H - T - B) * (1 - levels[k] / 100.0);
        r |= cv_buf_printf(b,
                           "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" "
                           "stroke=\"#c8cdd6\" stroke-dasharray=\"4 3\"/>"
                           "<text x=\"%d\" y=\"%.1f\" font-size=\"10\" "
                           "text-anchor=\"end\" fill=\"#5b6475\">p%d</text>",
                           L, y, W - R, y, L - 4, y + 3, levels[k]);
    }
    r |= cv_buf_printf(
        b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#c8cdd6\"/>", L, H - B,
        W - R, H - B);
    if (total > 0) {
        r |= cv_buf_printf(b,
                           "<path fill=\"none\" stroke=\"#d8603b\" stroke-width=\"2\" "
                           "d=\"M%d %d",
                           L, H - B);
        for (size_t i = 0; i < n; i++) {
            cum += json_integer_value(json_array_get(bk, i));
            double y = T + (H - T - B) * (1 - (double)cum / (double)total);
            r |= cv_buf_printf(b, " H%.1f V%.1f H%.1f", L + slot * (double)i, y,
                               L + slot * (double)(i + 1));
        }
        r |= cv_buf_printf(b, "\"/>");
    }
    for (size_t i = 0; i < n; i += 2) {
        char l[32];
        latency_label(l, sizeof(l), doc, i);
        r |= cv_buf_printf(b,
                           "<text x=\"%.1f\" y=\"%d\" font-size=\"10\" "
                           "text-anchor=\"middle\" fill=\"#5b6475\">%s</text>",
                           L + slot * ((double)i + 1), H - B + 14, l + 1);
    }
    return r | cv_buf_printf(b, "</svg>");
}

static int html_tile(cv_buf *b, const char *label, const char *value) {
    int r = cv_buf_printf(b, "<div class=\"tile\"><b>");
    r |= cv_buf_html(b, value);
    return r | cv_buf_printf(b, "</b><span>%s</span></div>", label);
}

static int html_tile_n(cv_buf *b, const char *label, json_int_t v) {
    char s[32];
    snprintf(s, sizeof(s), "%" JSON_INTEGER_FORMAT, v);
    return html_tile(b, label, s);
}

static int html_section(cv_buf *b, const json_t *doc, const json_t *sec, int idx) {
    const char *ch = json_string_value(json_object_get(sec, "channel"));
    int r = cv_buf_printf(b, "<section id=\"s%d\"><h2>", idx);
    if (!ch)
        r |= cv_buf_printf(b, "All channels");
    else {
        r |= cv_buf_printf(b, "Channel ");
        r |= cv_buf_html(b, *ch ? ch : "(unknown)");
    }
    r |= cv_buf_printf(b, "</h2><div class=\"tiles\">");
    r |= html_tile_n(b, "messages", geti(sec, "messages"));
    r |= html_tile_n(b, "bytes", geti(sec, "bytes"));
    r |= html_tile_n(b, "distinct senders", geti(sec, "distinct_senders"));
    r |= html_tile_n(b, "duplicates", geti(sec, "duplicates"));
    r |= html_tile_n(b, "replayed", geti(sec, "replayed"));
    r |= html_tile_n(b, "rejected", geti(sec, "rejected"));
    char p[16];
    pct(p, sizeof(p), sec, "p50_ms");
    r |= html_tile(b, "latency p50", p);
    pct(p, sizeof(p), sec, "p90_ms");
    r |= html_tile(b, "latency p90", p);
    pct(p, sizeof(p), sec, "p99_ms");
    r |= html_tile(b, "latency p99", p);
    r |= cv_buf_printf(b, "</div><div class=\"charts\">");

    size_t n = 0;
    json_int_t step = 0;
    json_int_t *v = volume_series(doc, sec, &n, &step);
    char(*lab)[24] = calloc(n ? n : 1, sizeof(*lab));
    const char **labp = calloc(n ? n : 1, sizeof(*labp));
    if (!v || !lab || !labp) {
        free(v), free(lab), free(labp);
        return -ENOMEM;
    }
    json_int_t t0 = geti(doc, "since_ms");
    if (step == 86400000)
        t0 -= t0 % step;
    for (size_t i = 0; i < n; i++) {
        char t[32];
        iso_time(t, sizeof(t), t0 + (json_int_t)i * step, false);
        /* "MM-DD HH:00" per hour, "YYYY-MM-DD" per day */
        if (step == 86400000)
            snprintf(lab[i], sizeof(lab[i]), "%.10s", t);
        else
            snprintf(lab[i], sizeof(lab[i]), "%.5s %.5s", t + 5, t + 11);
        labp[i] = lab[i];
    }
    r |= cv_buf_printf(b, "<div class=\"chart wide\"><h3>Messages per %s</h3>",
                       step == 86400000 ? "day" : "hour");
    r |= svg_bars(b, 1120, v, n, labp, 8, "messages per step");
    r |= cv_buf_printf(b, "</div>");
    free(v), free(lab), free(labp);

    json_int_t sz[CV_PGREPORT_SIZE_BUCKETS];
    char szl[CV_PGREPORT_SIZE_BUCKETS][24];
    const char *szp[CV_PGREPORT_SIZE_BUCKETS];
    for (size_t i = 0; i < CV_PGREPORT_SIZE_BUCKETS; i++) {
        sz[i] = json_integer_value(json_array_get(json_object_get(sec, "sizes"), i));
        size_label(szl[i], sizeof(szl[i]), doc, i);
        szp[i] = szl[i];
    }
    r |= cv_buf_printf(b, "<div class=\"chart\"><h3>Body size</h3>");
    r |= svg_bars(b, 560, sz, CV_PGREPORT_SIZE_BUCKETS, szp, 0, "body size distribution");
    r |= cv_buf_printf(b, "</div>");
    const json_t *lat = json_object_get(sec, "latency");
    r |= cv_buf_printf(b, "<div class=\"chart\"><h3>Store latency (share of messages "
                          "stored within)</h3>");
    r |= svg_latency(b, doc, lat);
    r |= cv_buf_printf(b, "</div></div><div class=\"lists\">");

    size_t i;
    json_t *e;
    r |= cv_buf_printf(b, "<div><h3>Top senders</h3><table><tr><th>sender</th>"
                          "<th>messages</th></tr>");
    json_array_foreach(json_object_get(sec, "top_senders"), i, e) {
        r |= cv_buf_printf(b, "<tr><td>");
        r |= cv_buf_html(b, json_string_value(json_object_get(e, "sender_id")));
        r |= cv_buf_printf(b, "</td><td>%" JSON_INTEGER_FORMAT "</td></tr>",
                           geti(e, "messages"));
    }
    r |= cv_buf_printf(b, "</table></div><div><h3>Peak minutes</h3><table><tr>"
                          "<th>minute (UTC)</th><th>messages</th></tr>");
    json_array_foreach(json_object_get(sec, "peak_minutes"), i, e) {
        char t[32];
        iso_time(t, sizeof(t), geti(e, "t_ms"), true);
        r |= cv_buf_printf(b, "<tr><td>%s</td><td>%" JSON_INTEGER_FORMAT "</td></tr>", t,
                           geti(e, "messages"));
    }
    r |= cv_buf_printf(b, "</table></div><div><h3>Rejected by reason</h3><table><tr>"
                          "<th>reason</th><th>records</th></tr>");
    const char *k;
    json_object_foreach(json_object_get(sec, "rejected_by_reason"), k, e) {
        r |= cv_buf_printf(b, "<tr><td>");
        r |= cv_buf_html(b, k);
        r |= cv_buf_printf(b, "</td><td>%" JSON_INTEGER_FORMAT "</td></tr>",
                           json_integer_value(e));
    }
    return r | cv_buf_printf(b, "</table></div></div></section>\n");
}

int cv_report_render_html(cv_buf *b, const json_t *doc, const char *stylesheet,
                          const char *header_html) {
    char s[32], u[32], g[32];
    iso_time(s, sizeof(s), geti(doc, "since_ms"), false);
    iso_time(u, sizeof(u), geti(doc, "until_ms"), false);
    iso_time(g, sizeof(g), geti(doc, "generated_at_ms"), true);
    int r = cv_buf_printf(b,
                          "<!DOCTYPE html>\n<html lang=\"en\"><head><meta "
                          "charset=\"utf-8\"><meta name=\"viewport\" "
                          "content=\"width=device-width\"><title>chatvault report %s "
                          "&ndash; %s</title>",
                          s, u);
    if (stylesheet) {
        r |= cv_buf_printf(b, "<link rel=\"stylesheet\" href=\"");
        r |= cv_buf_html(b, stylesheet);
        r |= cv_buf_printf(b, "\">");
    } else {
        r |= cv_buf_printf(b, "<style>%s</style>", cv_report_css);
    }
    r |= cv_buf_printf(b, "</head><body>\n%s", header_html ? header_html : "");
    r |= cv_buf_printf(b,
                       "<h1>chatvault activity report</h1><p class=\"range\">%s "
                       "&ndash; %s (UTC, whole hours) &middot; generated %s</p>\n",
                       s, u, g);
    const json_t *chans = json_object_get(doc, "channels");
    size_t i;
    json_t *sec;
    r |= cv_buf_printf(b, "<section><h2>Channels</h2><table><tr><th>channel</th>"
                          "<th>messages</th><th>bytes</th><th>senders</th>"
                          "<th>duplicates</th><th>replayed</th><th>rejected</th>"
                          "<th>p50</th><th>p90</th><th>p99</th></tr>");
    json_array_foreach(chans, i, sec) {
        const char *ch = json_string_value(json_object_get(sec, "channel"));
        char p50[16], p90[16], p99[16];
        pct(p50, sizeof(p50), sec, "p50_ms");
        pct(p90, sizeof(p90), sec, "p90_ms");
        pct(p99, sizeof(p99), sec, "p99_ms");
        r |= cv_buf_printf(b, "<tr><td><a href=\"#s%zu\">", i + 1);
        r |= cv_buf_html(b, *ch ? ch : "(unknown)");
        r |= cv_buf_printf(b, "</a></td>");
        static const char *const cols[] = {"messages",   "bytes",    "distinct_senders",
                                           "duplicates", "replayed", "rejected"};
        for (size_t c = 0; c < 6; c++)
            r |=
                cv_buf_printf(b, "<td>%" JSON_INTEGER_FORMAT "</td>", geti(sec, cols[c]));
        r |= cv_buf_printf(b, "<td>");
        r |= cv_buf_html(b, p50);
        r |= cv_buf_printf(b, "</td><td>");
        r |= cv_buf_html(b, p90);
        r |= cv_buf_printf(b, "</td><td>");
        r |= cv_buf_html(b, p99);
        r |= cv_buf_printf(b, "</td></tr>");
    }
    r |= cv_buf_printf(
        b, "</table><p class=\"note\">Duplicates: records acked DUPLICATE (a message id "
           "already held, re-sent by a sender); replayed: the same from "
           "<code>chatvault replay</code>; neither is stored twice. Latency: "
           "persisted_at &minus; sent_at (the ack follows the COMMIT), from "
           "1-2-5 buckets: &lt;50ms means the percentile lies in the bucket "
           "below 50 ms.</p></section>\n");
    r |= html_section(b, doc, json_object_get(doc, "overall"), 0);
    json_array_foreach(chans, i, sec) r |= html_section(b, doc, sec, (int)i + 1);
    return r | cv_buf_printf(b, "</body></html>\n");
}

int cv_report_render(cv_buf *b, const json_t *doc, cv_report_format format) {
    switch (format) {
    case CV_REPORT_JSON:
        return render_json(b, doc);
    case CV_REPORT_CSV:
        return render_csv(b, doc);
    case CV_REPORT_TABLE:
        return render_table(b, doc);
    case CV_REPORT_HTML:
        break;
    }
    return cv_report_render_html(b, doc, NULL, NULL);
}

int cv_report_format_parse(const char *name, cv_report_format *ret) {
    static const char *const names[] = {"table", "csv", "json", "html"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            *ret = (cv_report_format)i;
            return 0;
        }
    return -EINVAL;
}
