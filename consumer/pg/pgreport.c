/*
 * pgreport — see pgreport.h.
 *
 * Every query reads one rollup over the selected channels and hours and
 * groups by GROUPING SETS ((channel, …), (…)): one pass gives each
 * channel's figures and the overall ones (distinct senders overall are
 * distinct over every channel, not a sum).
 */
#include "pg/pgreport.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define HOUR_US INT64_C(3600000000)
#define DAY_STEP_OVER_HOURS 192 /* a range over 8 days is shown per day */

const int64_t cv_pgreport_size_bounds[CV_PGREPORT_SIZE_BUCKETS - 1] = {
    64, 256, 1024, 4096, 16384, 65536, 262144, 1048576};
const int64_t cv_pgreport_latency_bounds_ms[CV_PGREPORT_LATENCY_BUCKETS - 1] = {
    1,    2,    5,    10,    20,    50,    100,    200,    500,
    1000, 2000, 5000, 10000, 30000, 60000, 300000, 3600000};

/* $1 anchored regexes of the channels (NULL: all), $2 $3 the range in µs. */
#define WHERE_CH "WHERE ($1::text[] IS NULL OR channel ~ ANY ($1::text[]))"
#define RANGE(col)                                                                       \
    " AND " col " >= to_timestamp($2::bigint / 1000000.0)"                               \
    " AND " col " < to_timestamp($3::bigint / 1000000.0)"

static const char totals_sql[] =
    "SELECT channel, GROUPING(channel), sum(messages), sum(bytes)"
    " FROM chatvault.report_hourly " WHERE_CH RANGE(
        "hour") " GROUP BY GROUPING SETS ((channel), ())";
static const char senders_sql[] =
    "SELECT channel, GROUPING(channel), count(DISTINCT sender_id)"
    " FROM chatvault.report_senders " WHERE_CH RANGE(
        "hour") " GROUP BY GROUPING SETS ((channel), ())";
static const char top_senders_sql[] =
    "SELECT c, g, sender_id, n FROM (SELECT channel AS c, GROUPING(channel) AS g,"
    " sender_id, sum(messages) AS n, row_number() OVER (PARTITION BY"
    " GROUPING(channel), channel ORDER BY sum(messages) DESC, sender_id) AS rn"
    " FROM chatvault.report_senders " WHERE_CH RANGE(
        "hour") " GROUP BY GROUPING SETS ((channel, sender_id), (sender_id))) x"
                " WHERE rn <= $4::integer ORDER BY g, c, rn";
static const char peak_minutes_sql[] =
    "SELECT c, g, (extract(epoch FROM minute) * 1000)::bigint, n FROM (SELECT"
    " channel AS c, GROUPING(channel) AS g, minute, sum(messages) AS n,"
    " row_number() OVER (PARTITION BY GROUPING(channel), channel"
    " ORDER BY sum(messages) DESC, minute) AS rn"
    " FROM chatvault.report_minutes " WHERE_CH RANGE(
        "minute") " GROUP BY GROUPING SETS ((channel, minute), (minute))) x"
                  " WHERE rn <= $4::integer ORDER BY g, c, rn";
static const char volume_sql[] =
    "SELECT channel, GROUPING(channel), (extract(epoch FROM t) * 1000)::bigint,"
    " sum(messages), sum(bytes) FROM (SELECT channel, date_trunc($4::text, hour) AS t,"
    " messages, bytes FROM chatvault.report_hourly " WHERE_CH RANGE(
        "hour") ") x"
                " GROUP BY GROUPING SETS ((channel, t), (t)) ORDER BY 2, 1, 3";
static const char sizes_sql[] =
    "SELECT channel, GROUPING(channel), bucket, sum(messages)"
    " FROM chatvault.report_sizes " WHERE_CH RANGE(
        "hour") " GROUP BY GROUPING SETS ((channel, bucket), (bucket))";
static const char latency_sql[] =
    "SELECT channel, GROUPING(channel), bucket, sum(messages)"
    " FROM chatvault.report_latency " WHERE_CH RANGE(
        "hour") " GROUP BY GROUPING SETS ((channel, bucket), (bucket))";
static const char rejected_sql[] =
    "SELECT channel, GROUPING(channel), reason, sum(rejected)"
    " FROM chatvault.report_rejected " WHERE_CH RANGE(
        "hour") " GROUP BY GROUPING SETS ((channel, reason), (reason)) ORDER BY 2, 1, 3";
static const char duplicates_sql[] =
    "SELECT channel, GROUPING(channel), sum(duplicates), sum(replayed)"
    " FROM chatvault.report_duplicates " WHERE_CH RANGE(
        "hour") " GROUP BY GROUPING SETS ((channel), ())";

typedef struct report {
    PGconn *conn;
    json_t *doc, *overall, *channels; /* channels: name -> section */
    const char *params[4];
    char *errbuf;
    size_t errlen;
} report;

/* A shell pattern as an anchored POSIX regex: * ? [!…] become .* . [^…];
 * a channel name is [A-Za-z0-9._-], so "." is the one character to quote. */
static int glob_regex(cv_buf *b, const char *glob) {
    int r = cv_buf_append(b, "^", 1);
    bool in_class = false;
    for (const char *p = glob; r == 0 && *p; p++) {
        if (in_class) {
            if (*p == ']')
                in_class = false;
            r = cv_buf_append(b, p, 1);
        } else if (*p == '*')
            r = cv_buf_append(b, ".*", 2);
        else if (*p == '?')
            r = cv_buf_append(b, ".", 1);
        else if (*p == '.')
            r = cv_buf_append(b, "[.]", 3);
        else if (*p == '[') {
            in_class = true;
            r = cv_buf_append(b, "[", 1);
            if (p[1] == '!' || p[1] == '^') {
                r |= cv_buf_append(b, "^", 1);
                p++;
            }
            if (p[1] == ']') { /* a leading ] is literal */
                r |= cv_buf_append(b, "]", 1);
                p++;
            }
        } else if (*p == '"' || *p == '\\' || *p == '{' || *p == '}' || *p == ',')
            r = -EINVAL; /* not in a channel name or a pattern of one */
        else
            r = cv_buf_append(b, p, 1);
    }
    return r < 0 ? r : cv_buf_append(b, "$", 1);
}

static int fail(report *rp, PGresult *res, const char *what) {
    snprintf(rp->errbuf, rp->errlen, "postgres: %s: %s", what,
             res ? PQresultErrorMessage(res) : PQerrorMessage(rp->conn));
    cv_one_line(rp->errbuf);
    PQclear(res);
    return -CV_ESTORE;
}

static int exec_cmd(report *rp, const char *sql) {
    PGresult *res = PQexec(rp->conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        return fail(rp, res, sql);
    PQclear(res);
    return 0;
}

static json_t *new_section(const char *channel) {
    json_t *lat = json_pack("{s:I,s:[],s:n,s:n,s:n}", "count", (json_int_t)0, "buckets",
                            "p50_ms", "p90_ms", "p99_ms");
    json_t *s = json_pack("{s:s?,s:I,s:I,s:I,s:I,s:I,s:I,s:{},s:[],s:[],s:[],s:[],s:o*}",
                          "channel", channel, "messages", (json_int_t)0, "bytes",
                          (json_int_t)0, "distinct_senders", (json_int_t)0, "duplicates",
                          (json_int_t)0, "replayed", (json_int_t)0, "rejected",
                          (json_int_t)0, "rejected_by_reason", "volume", "top_senders",
                          "peak_minutes", "sizes", "latency", lat);
    if (!s)
        return NULL;
    json_t *sizes = json_object_get(s, "sizes");
    json_t *buckets = json_object_get(lat, "buckets");
    for (int i = 0; i < CV_PGREPORT_SIZE_BUCKETS; i++)
        if (json_array_append_new(sizes, json_integer(0)) < 0)
            goto oom;
    for (int i = 0; i < CV_PGREPORT_LATENCY_BUCKETS; i++)
        if (json_array_append_new(buckets, json_integer(0)) < 0)
            goto oom;
    return s;
oom:
    json_decref(s);
    return NULL;
}

/* The section a row is for: column 0 the channel, column 1 GROUPING. */
static json_t *section(report *rp, PGresult *res, int row) {
    if (strcmp(PQgetvalue(res, row, 1), "1") == 0)
        return rp->overall;
    const char *ch = PQgetvalue(res, row, 0);
    json_t *s = json_object_get(rp->channels, ch);
    if (!s && (!(s = new_section(ch)) || json_object_set_new(rp->channels, ch, s) < 0))
        return NULL;
    return s;
}

static json_int_t num(PGresult *res, int row, int col) {
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

typedef int (*row_fn)(report *rp, json_t *sec, PGresult *res, int row);

static int run(report *rp, const char *sql, int nparams, const char *what, row_fn fn) {
    PGresult *res = PQexecParams(rp->conn, sql, nparams, NULL, rp->params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return fail(rp, res, what);
    int r = 0;
    for (int i = 0; r == 0 && i < PQntuples(res); i++) {
        json_t *sec = section(rp, res, i);
        r = sec ? fn(rp, sec, res, i) : -ENOMEM;
    }
    PQclear(res);
    if (r == -ENOMEM)
        snprintf(rp->errbuf, rp->errlen, "report: out of memory");
    return r;
}

static int set_int(json_t *o, const char *k, json_int_t v) {
    return json_object_set_new(o, k, json_integer(v)) < 0 ? -ENOMEM : 0;
}

static int row_totals(report *rp, json_t *sec, PGresult *res, int row) {
    (void)rp;
    return set_int(sec, "messages", num(res, row, 2)) |
           set_int(sec, "bytes", num(res, row, 3));
}

static int row_senders(report *rp, json_t *sec, PGresult *res, int row) {
    (void)rp;
    return set_int(sec, "distinct_senders", num(res, row, 2));
}

static int row_top_sender(report *rp, json_t *sec, PGresult *res, int row) {
    (void)rp;
    json_t *e = json_pack("{s:s,s:I}", "sender_id", PQgetvalue(res, row, 2), "messages",
                          num(res, row, 3));
    return json_array_append_new(json_object_get(sec, "top_senders"), e) < 0 ? -ENOMEM
                                                                             : 0;
}

static int row_peak_minute(report *rp, json_t *sec, PGresult *res, int row) {
    (void)rp;
    json_t *e =
        json_pack("{s:I,s:I}", "t_ms", num(res, row, 2), "messages", num(res, row, 3));
    return json_array_append_new(json_object_get(sec, "peak_minutes"), e) < 0 ? -ENOMEM
                                                                              : 0;
}

static int row_volume(report *rp, json_t *sec, PGresult *res, int row) {
    (void)rp;
    json_t *e = json_pack("{s:I,s:I,s:I}", "t_ms", num(res, row, 2), "messages",
                          num(res, row, 3), "bytes", num(res, row, 4));
    return json_array_append_new(json_object_get(sec, "volume"), e) < 0 ? -ENOMEM : 0;
}

static int add_bucket(json_t *arr, PGresult *res, int row) {
    json_int_t b = num(res, row, 2);
    json_t *cur = json_array_get(arr, (size_t)b);
    if (b < 0 || !cur)
        return 0; /* a bucket this chatvault does not know: not counted */
    return json_array_set_new(arr, (size_t)b,
                              json_integer(json_integer_value(cur) + num(res, row, 3))) <
                   0
               ? -ENOMEM
               : 0;
}

static int row_size(report *rp, json_t *sec, PGresult *res, int row) {
    (void)rp;
    return add_bucket(json_object_get(sec, "sizes"), res, row);
}

static int row_latency(report *rp, json_t *sec, PGresult *res, int row) {
    (void)rp;
    return add_bucket(json_object_get(json_object_get(sec, "latency"), "buckets"), res,
                      row);
}

static int row_rejected(report *rp, json_t *sec, PGresult *res, int row) {
    (void)rp;
    json_int_t n = num(res, row, 3);
    json_t *by = json_object_get(sec, "rejected_by_reason");
    json_int_t total = json_integer_value(json_object_get(sec, "rejected"));
    return set_int(by, PQgetvalue(res, row, 2), n) | set_int(sec, "rejected", total + n);
}

static int row_duplicates(report *rp, json_t *sec, PGresult *res, int row) {
    (void)rp;
    return set_int(sec, "duplicates", num(res, row, 2)) |
           set_int(sec, "replayed", num(res, row, 3));
}

/* Percentiles from the latency histogram of a section. */
static int percentiles(json_t *sec) {
    json_t *lat = json_object_get(sec, "latency");
    json_t *b = json_object_get(lat, "buckets");
    json_int_t total = 0;
    for (size_t i = 0; i < json_array_size(b); i++)
        total += json_integer_value(json_array_get(b, i));
    int r = set_int(lat, "count", total);
    static const struct {
        const char *key;
        int per_mille;
    } q[] = {{"p50_ms", 500}, {"p90_ms", 900}, {"p99_ms", 990}};
    for (size_t k = 0; r == 0 && total > 0 && k < sizeof(q) / sizeof(q[0]); k++) {
        /* the smallest bucket whose cumulative count reaches q·total */
        json_int_t need = (total * q[k].per_mille + 999) / 1000, cum = 0;
        size_t i = 0;
        for (; i < json_array_size(b); i++)
            if ((cum += json_integer_value(json_array_get(b, i))) >= need)
                break;
        int64_t v = i < CV_PGREPORT_LATENCY_BUCKETS - 1
                        ? cv_pgreport_latency_bounds_ms[i]
                        : cv_pgreport_latency_bounds_ms[CV_PGREPORT_LATENCY_BUCKETS - 2];
        r = set_int(lat, q[k].key, v);
    }
    return r;
}

static json_t *bounds(const int64_t *v, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; a && i <= n; i++)
        if (json_array_append_new(a, i < n ? json_pack("{s:I}", "lt", (json_int_t)v[i])
                                           : json_pack("{s:n}", "lt")) < 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int channels_array(report *rp, json_t **ret) {
    size_t n = json_object_size(rp->channels), i = 0;
    const char **names = calloc(n ? n : 1, sizeof(*names));
    json_t *arr = json_array();
    if (!names || !arr)
        goto oom;
    const char *k;
    json_t *v;
    json_object_foreach(rp->channels, k, v) names[i++] = k;
    qsort(names, n, sizeof(*names), cmp_str);
    for (i = 0; i < n; i++) {
        json_t *sec = json_object_get(rp->channels, names[i]);
        if (percentiles(sec) < 0 || json_array_append(arr, sec) < 0)
            goto oom;
    }
    free(names);
    *ret = arr;
    return 0;
oom:
    free(names);
    json_decref(arr);
    return -ENOMEM;
}

int cv_pgreport_build(PGconn *conn, const cv_pgreport_query *q, json_t **ret_doc,
                      char *errbuf, size_t errlen) {
    report rp = {.conn = conn, .errbuf = errbuf, .errlen = errlen};
    int64_t since = q->since_us - ((q->since_us % HOUR_US) + HOUR_US) % HOUR_US;
    int64_t until =
        q->until_us + (HOUR_US - ((q->until_us % HOUR_US) + HOUR_US) % HOUR_US) % HOUR_US;
    bool daily = (until - since) / HOUR_US > DAY_STEP_OVER_HOURS;
    char since_s[24], until_s[24], top_s[16];
    snprintf(since_s, sizeof(since_s), "%" PRId64, since);
    snprintf(until_s, sizeof(until_s), "%" PRId64, until);
    snprintf(top_s, sizeof(top_s), "%d", q->top);
    cv_buf re;
    cv_buf_init(&re, (size_t)1 << 20);
    int r = 0;
    if (q->nchannels) {
        r = cv_buf_append(&re, "{", 1);
        for (size_t i = 0; r == 0 && i < q->nchannels; i++) {
            r = cv_buf_append(&re, i ? ",\"" : "\"", i ? 2 : 1);
            if (r == 0)
                r = glob_regex(&re, q->channels[i]);
            if (r == 0)
                r = cv_buf_append(&re, "\"", 1);
        }
        if (r == 0)
            r = cv_buf_append(&re, "}", 2);
        if (r < 0) {
            snprintf(errbuf, errlen, "report: a --channel that no channel can match");
            cv_buf_release(&re);
            return r;
        }
    }
    rp.params[0] = q->nchannels ? (const char *)re.data : NULL;
    rp.params[1] = since_s;
    rp.params[2] = until_s;
    rp.params[3] = top_s;
    rp.overall = new_section(NULL);
    rp.channels = json_object();
    if (!rp.overall || !rp.channels) {
        r = -ENOMEM;
        snprintf(errbuf, errlen, "report: out of memory");
        goto out;
    }
    /* One snapshot for every query; UTC for date_trunc of days. */
    r = exec_cmd(&rp, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    if (r == 0)
        r = exec_cmd(&rp, "SET LOCAL TimeZone = 'UTC'");
    if (r == 0)
        r = run(&rp, totals_sql, 3, "reading report_hourly", row_totals);
    if (r == 0)
        r = run(&rp, senders_sql, 3, "reading report_senders", row_senders);
    if (r == 0)
        r = run(&rp, top_senders_sql, 4, "reading report_senders", row_top_sender);
    if (r == 0)
        r = run(&rp, peak_minutes_sql, 4, "reading report_minutes", row_peak_minute);
    rp.params[3] = daily ? "day" : "hour";
    if (r == 0)
        r = run(&rp, volume_sql, 4, "reading report_hourly", row_volume);
    if (r == 0)
        r = run(&rp, sizes_sql, 3, "reading report_sizes", row_size);
    if (r == 0)
        r = run(&rp, latency_sql, 3, "reading report_latency", row_latency);
    if (r == 0)
        r = run(&rp, rejected_sql, 3, "reading report_rejected", row_rejected);
    if (r == 0)
        r = run(&rp, duplicates_sql, 3, "reading report_duplicates", row_duplicates);
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        PQclear(PQexec(conn, "ROLLBACK"));
    if (r < 0)
        goto out;
    json_t *chans = NULL;
    if (percentiles(rp.overall) < 0 || channels_array(&rp, &chans) < 0) {
        r = -ENOMEM;
        snprintf(errbuf, errlen, "report: out of memory");
        goto out;
    }
    rp.doc = json_pack(
        "{s:s,s:I,s:I,s:I,s:s,s:o*,s:o*,s:O,s:o}", "format", "chatvault-report-1",
        "generated_at_ms", (json_int_t)(cv_now_us() / 1000), "since_ms",
        (json_int_t)(since / 1000), "until_ms", (json_int_t)(until / 1000), "step",
        daily ? "day" : "hour", "size_buckets",
        bounds(cv_pgreport_size_bounds, CV_PGREPORT_SIZE_BUCKETS - 1),
        "latency_buckets_ms",
        bounds(cv_pgreport_latency_bounds_ms, CV_PGREPORT_LATENCY_BUCKETS - 1), "overall",
        rp.overall, "channels", chans);
    if (!rp.doc) {
        r = -ENOMEM;
        snprintf(errbuf, errlen, "report: out of memory");
        goto out;
    }
    *ret_doc = rp.doc;
out:
    json_decref(rp.overall);
    json_decref(rp.channels);
    cv_buf_release(&re);
    return r;
}
