/*
 * chatvault lag — ack lag per channel from a running broker: fetches its
 * /api/lag (http.listen, or --url) and prints a table, or the JSON itself.
 * With --direct, or when no broker answers at http.listen, it computes the
 * lag itself from Kafka (high watermarks, the group's committed offsets, the
 * oldest unacked record) and PostgreSQL (chatvault.kafka_offsets), judging
 * status over two snapshots --interval apart by the broker's rules, and
 * writes the document with the broker's builder (consumer/obs/lag.c).
 * Exit 0 when every channel is OK, 1 when any is WARN, STALL, STOP or ERR
 * or nothing can be reached, 2 on a usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "access.h"
#include "chatvault.pb-c.h"
#include "cli.h"
#include "json.h"
#include "obs/lag.h"
#include "pg/pgstore.h"
#include "util.h"

#define RESPONSE_LIMIT (64u << 20)

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
    (void)sig, stop = 1;
}

typedef cv_cli_url url;

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

/* A status the document names; one it does not know counts as the worst. */
static cv_lag_status doc_status(const json_t *o) {
    cv_lag_status st = CV_LAG_ERR;
    const char *name = cv_json_str(o, "status", NULL);
    if (name)
        cv_lag_status_parse(name, &st);
    return st;
}

/* Prints the table; returns 0 when every channel is OK, 1 otherwise. */
static int print_table(const json_t *d, const char *where, bool partitions, bool color) {
    const char *overall = cv_json_str(d, "status", "?");
    const json_t *lat = json_object_get(d, "latency");
    char p50[32], p99[32];
    fmt_secs(p50, sizeof(p50), cv_json_num(lat, "p50_s", -1));
    fmt_secs(p99, sizeof(p99), cv_json_num(lat, "p99_s", -1));
    printf("chatvault %s at %s: %s · sent→ack p50 %s p99 %s · window %.0fs\n",
           cv_json_str(d, "version", "?"), where, overall, p50, p99,
           cv_json_num(d, "window_s", 0));
    size_t i;
    const json_t *s, *c, *p, *r;
    printf("stores:");
    json_array_foreach(json_object_get(d, "stores"), i, s)
        printf(" %s %s", cv_json_str(s, "name", "?"),
               cv_json_bool(s, "up", false) ? "up" : "DOWN");
    if (cv_json_bool(d, "degraded", false))
        printf(" · DEGRADED (ack.policy = any on one store)");
    printf("\n\n%-24s %-6s %9s %10s %9s %9s %12s %12s %9s  %s\n", "CHANNEL", "STATUS",
           "RATE/S", "LAG MSGS", "LAG AGE", "INFLIGHT", "CONSUMED", "ACKED", "REJECTED",
           "WHY");
    int rc = 0;
    size_t nchan = 0;
    json_array_foreach(json_object_get(d, "channels"), nchan, c) {
        cv_lag_status st = doc_status(c);
        const char *name = cv_json_str(c, "status", "?");
        if (st != CV_LAG_OK)
            rc = 1;
        char age[32];
        fmt_secs(age, sizeof(age), cv_json_num(c, "lag_seconds", -1));
        const char *on = "", *off = "";
        if (color && st != CV_LAG_OK) {
            on = st >= CV_LAG_STALL ? "\033[1;31m" : "\033[1;33m";
            off = "\033[0m";
        }
        printf("%-24s %s%-6s%s %9.1f %10" PRId64 " %9s %9" PRId64 " %12" PRId64
               " %12" PRId64 " %9" PRId64 "  %s\n",
               cv_json_str(c, "channel", "?"), on, name, off, cv_json_num(c, "rate", 0),
               cv_json_int(c, "lag_messages", 0), age, cv_json_int(c, "inflight", 0),
               cv_json_int(c, "consumed", 0), cv_json_int(c, "acked", 0),
               cv_json_int(c, "rejected", 0),
               st != CV_LAG_OK ? cv_json_str(c, "why", "") : "");
        if (!partitions)
            continue;
        size_t k;
        json_array_foreach(json_object_get(c, "partitions"), k, p) {
            fmt_secs(age, sizeof(age), cv_json_num(p, "lag_seconds", -1));
            printf("  %-20s [%3" PRId64 "] %10s %10" PRId64 " %9s %9" PRId64
                   "   end %" PRId64 " acked %" PRId64 "%s\n",
                   cv_json_str(p, "topic", "?"), cv_json_int(p, "partition", -1), "",
                   cv_json_int(p, "lag_messages", 0), age, cv_json_int(p, "inflight", 0),
                   /* end as the lag counts it: the larger of the high
                    * watermark and the next offset consumed */
                   cv_json_int(p, "end_offset", cv_json_int(p, "high_watermark", -1)),
                   cv_json_int(p, "acked_offset", -1),
                   cv_json_bool(p, "assigned", true) ? "" : " (revoked)");
        }
    }
    if (!nchan)
        printf("(no channel consumed yet)\n");
    if (doc_status(d) != CV_LAG_OK)
        rc = 1;
    const json_t *rej = json_object_get(d, "rejected_recent");
    if (json_array_size(rej)) {
        printf("\nlatest rejections:\n");
        json_array_foreach(rej, i, r) {
            if (i == 5)
                break;
            printf("  %-20s %-18s %s\n", cv_json_str(r, "channel", "?"),
                   cv_json_str(r, "reason", "?"), cv_json_str(r, "error", ""));
        }
    }
    return rc;
}

/* ---- direct mode: Kafka + PostgreSQL, no broker ---- */

typedef struct dpart {
    char *topic;
    const char *channel;
    int32_t partition;
    int64_t lo, hi;       /* watermarks; -1 unknown */
    int64_t committed[2]; /* group's committed offset per snapshot; -1 none */
    int64_t stored[2];    /* chatvault.kafka_offsets next_offset; -1 none */
    int64_t hi_first;     /* high watermark at the first snapshot */
    int64_t oldest_us;    /* sent_at (or Kafka time) of the oldest unacked */
} dpart;

static int64_t dp_acked(const dpart *p, int snap) {
    int64_t a = p->committed[snap] >= 0 ? p->committed[snap] : p->lo;
    return a > p->lo ? a : (p->lo > 0 ? p->lo : 0);
}

static int64_t dp_lag(const dpart *p, int snap) {
    int64_t hi = snap ? p->hi : p->hi_first;
    int64_t l = hi - dp_acked(p, snap);
    return l > 0 ? l : 0;
}

static dpart *d_free(dpart *ps, size_t n) {
    for (size_t i = 0; ps && i < n; i++)
        free(ps[i].topic);
    free(ps);
    return NULL;
}

static bool topic_matches(const char *pattern, regex_t *re, const char *topic) {
    return pattern[0] == '^' ? regexec(re, topic, 0, NULL, 0) == 0
                             : strcmp(pattern, topic) == 0;
}

/* Committed offsets of the group and PostgreSQL's next offsets
 * (cv_pgstore_read_offsets) into snapshot `snap`. PostgreSQL failing is not
 * an error here: *pg_ok says so and pg_err why. */
static int d_snapshot(rd_kafka_t *rk, cv_pgstore *pg, const char *group, dpart *ps,
                      size_t n, int snap, bool *pg_ok, char *pg_err, size_t pg_errlen,
                      char *err, size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
    for (size_t i = 0; i < n; i++) {
        int64_t lo = -1, hi = -1;
        if (rd_kafka_query_watermark_offsets(rk, ps[i].topic, ps[i].partition, &lo, &hi,
                                             5000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            ps[i].lo = lo;
            ps[i].hi = hi;
        }
        if (snap == 0)
            ps[i].hi_first = ps[i].hi;
        rd_kafka_topic_partition_list_add(l, ps[i].topic, ps[i].partition);
    }
    rd_kafka_resp_err_t e = rd_kafka_committed(rk, l, 10000);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "reading the committed offsets of group %s: %s", group,
                 rd_kafka_err2str(e));
        rd_kafka_topic_partition_list_destroy(l);
        return -EIO;
    }
    for (size_t i = 0; i < n; i++)
        ps[i].committed[snap] = l->elems[i].offset >= 0 ? l->elems[i].offset : -1;
    *pg_ok = pg && cv_pgstore_read_offsets(pg, l, pg_err, pg_errlen) == 0;
    for (size_t i = 0; i < n; i++)
        ps[i].stored[snap] = *pg_ok && l->elems[i].offset >= 0 ? l->elems[i].offset : -1;
    rd_kafka_topic_partition_list_destroy(l);
    return 0;
}

/* Reads the record at each lagging partition's acked offset for its age. */
static void d_oldest(rd_kafka_t *rk, dpart *ps, size_t n) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
    size_t want = 0;
    for (size_t i = 0; i < n; i++)
        if (dp_lag(&ps[i], 1) > 0) {
            rd_kafka_topic_partition_list_add(l, ps[i].topic, ps[i].partition)->offset =
                dp_acked(&ps[i], 1);
            want++;
        }
    if (want && rd_kafka_assign(rk, l) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        int64_t deadline = cv_mono_ms() + 8000;
        size_t got = 0;
        while (got < want && cv_mono_ms() < deadline) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
            if (!m)
                continue;
            for (size_t i = 0; !m->err && i < n; i++) {
                if (ps[i].partition != m->partition || ps[i].oldest_us ||
                    strcmp(ps[i].topic, rd_kafka_topic_name(m->rkt)) != 0)
                    continue;
                Chatvault__V1__ChatMessage *cm =
                    chatvault__v1__chat_message__unpack(NULL, m->len, m->payload);
                int64_t ts = cm && cm->sent_at_us > 0 ? cm->sent_at_us : 0;
                if (cm)
                    chatvault__v1__chat_message__free_unpacked(cm, NULL);
                if (!ts) {
                    rd_kafka_timestamp_type_t tt;
                    int64_t ms = rd_kafka_message_timestamp(m, &tt);
                    ts = ms > 0 ? ms * 1000 : cv_now_us();
                }
                ps[i].oldest_us = ts;
                got++;
            }
            rd_kafka_message_destroy(m);
        }
        rd_kafka_assign(rk, NULL);
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static int64_t dp_inflight(const dpart *p, int snap) {
    return p->stored[snap] > dp_acked(p, snap) ? p->stored[snap] - dp_acked(p, snap) : 0;
}

/* The channel of the partitions ps[from..to) as the rules see it at
 * snapshot `snap` (taken at `t_ms`): what chatvault stored counts as
 * consumed, the committed offsets as acked. */
static cv_lag_sample d_sample(const dpart *ps, size_t from, size_t to, int snap,
                              int64_t t_ms) {
    cv_lag_sample s = {.t_ms = t_ms};
    for (size_t k = from; k < to; k++) {
        s.consumed += ps[k].stored[snap] > 0 ? ps[k].stored[snap] : 0;
        s.acked += dp_acked(&ps[k], snap);
        s.lag += dp_lag(&ps[k], snap);
        s.inflight += dp_inflight(&ps[k], snap);
    }
    return s;
}

/* Adds the channel of ps[from..to) and its partitions to the document. */
static int d_channel(cv_lagdoc *d, const dpart *ps, size_t from, size_t to,
                     const int64_t t_ms[2], bool pg_ok, int64_t now_us) {
    cv_lag_sample s0 = d_sample(ps, from, to, 0, t_ms[0]);
    cv_lag_sample s1 = d_sample(ps, from, to, 1, t_ms[1]);
    const char *why = "";
    cv_lag_status st = cv_lag_status_eval_pair(&s0, &s1, !pg_ok, &why);
    int64_t age = 0;
    for (size_t k = from; k < to; k++)
        if (dp_lag(&ps[k], 1) && ps[k].oldest_us && now_us - ps[k].oldest_us > age)
            age = now_us - ps[k].oldest_us;
    double interval_s = (double)(t_ms[1] - t_ms[0]) / 1e3;
    int r = cv_lagdoc_add_channel(
        d, &(cv_lagdoc_channel){
               .channel = ps[from].channel,
               .status = st,
               .why = why,
               .rate = interval_s > 0 ? (double)(s1.acked - s0.acked) / interval_s : 0,
               .lag = s1.lag,
               .lag_seconds = (double)age / 1e6,
               .inflight = s1.inflight,
               .consumed = s1.consumed,
               .acked = s1.acked,
           });
    for (size_t k = from; r == 0 && k < to; k++) {
        const dpart *p = &ps[k];
        r = cv_lagdoc_add_partition(
            d, &(cv_lagdoc_partition){
                   .topic = p->topic,
                   .partition = p->partition,
                   .high_watermark = p->hi,
                   .end_offset = p->hi,
                   .acked_offset = dp_acked(p, 1),
                   .stored_offset = p->stored[1],
                   .lag = dp_lag(p, 1),
                   .lag_seconds = dp_lag(p, 1) && p->oldest_us
                                      ? (double)(now_us - p->oldest_us) / 1e6
                                      : 0.0,
                   .inflight = dp_inflight(p, 1),
                   .assigned = true,
               });
    }
    return r;
}

static int dpart_cmp(const void *a, const void *b) {
    const dpart *x = a, *y = b;
    int c = strcmp(x->topic, y->topic);
    return c ? c : (x->partition > y->partition) - (x->partition < y->partition);
}

/* The partitions of the topics that match topics.pattern, sorted, each with
 * its channel (one shared pointer per topic). */
static int d_partitions(const cv_config *cfg, const rd_kafka_metadata_t *md,
                        dpart **ret_ps, size_t *ret_n, char *err, size_t errlen) {
    const char *pattern = cv_config_str(cfg, "topics.pattern");
    const char *prefix = cv_config_str(cfg, "topics.prefix");
    regex_t re;
    if (pattern[0] == '^' && regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB) != 0) {
        snprintf(err, errlen, "topics.pattern \"%s\" is not a regular expression",
                 pattern);
        return -EINVAL;
    }
    size_t cap = 0, n = 0;
    for (int t = 0; t < md->topic_cnt; t++)
        if (topic_matches(pattern, &re, md->topics[t].topic))
            cap += (size_t)md->topics[t].partition_cnt;
    dpart *ps = calloc(cap + 1, sizeof(*ps));
    for (int t = 0; ps && t < md->topic_cnt; t++) {
        const rd_kafka_metadata_topic_t *mt = &md->topics[t];
        if (!topic_matches(pattern, &re, mt->topic))
            continue;
        for (int k = 0; ps && k < mt->partition_cnt; k++) {
            dpart *p = &ps[n];
            if (!(p->topic = strdup(mt->topic))) {
                ps = d_free(ps, n);
                break;
            }
            p->partition = mt->partitions[k].id;
            p->lo = p->hi = p->hi_first = -1;
            n++;
        }
    }
    if (pattern[0] == '^')
        regfree(&re);
    if (!ps) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    qsort(ps, n, sizeof(*ps), dpart_cmp);
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < n; i++) {
        if (i && strcmp(ps[i].topic, ps[i - 1].topic) == 0)
            ps[i].channel = ps[i - 1].channel;
        else
            ps[i].channel = strncmp(ps[i].topic, prefix, plen) == 0 && ps[i].topic[plen]
                                ? ps[i].topic + plen
                                : ps[i].topic;
    }
    *ret_ps = ps;
    *ret_n = n;
    return 0;
}

/* Computes the /api/lag document (lag.h, source direct) from Kafka and
 * PostgreSQL into `out`: two snapshots `interval` seconds apart, judged by
 * the broker's rules. */
static int lag_direct(const cv_config *cfg, double interval, cv_buf *out, char *err,
                      size_t errlen) {
    const char *group = cv_config_kafka_get(cfg, "group.id");
    int rc = -EIO;
    rd_kafka_t *rk = NULL;
    cv_pgstore *pg = NULL;
    cv_lagdoc *doc = NULL;
    dpart *ps = NULL;
    size_t n = 0;
    const rd_kafka_metadata_t *md = NULL;
    char kerr[512], pg_err[512] = "";
    rd_kafka_conf_t *conf = cv_cli_kafka_conf(cfg, "consumer", NULL, kerr, sizeof(kerr));
    if (!conf) {
        snprintf(err, errlen, "%s", kerr);
        return -EINVAL;
    }
    if (!(rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kerr, sizeof(kerr)))) {
        snprintf(err, errlen, "kafka: %.400s", kerr);
        goto out;
    }
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, 10000);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "kafka metadata: %s", rd_kafka_err2str(e));
        goto out;
    }
    if ((rc = d_partitions(cfg, md, &ps, &n, err, errlen)) < 0)
        goto out;
    rc = -EIO;
    cv_pgstore_open(cv_access_conninfo(cfg, CV_PG_READER), group, 1, &pg, pg_err,
                    sizeof(pg_err));
    bool pg_ok = false;
    /* The rules see the snapshots `interval` apart, as asked, however long
     * the reads took. */
    const int64_t t_ms[2] = {1, 1 + llround(interval * 1e3)};
    if (d_snapshot(rk, pg, group, ps, n, 0, &pg_ok, pg_err, sizeof(pg_err), err, errlen) <
        0)
        goto out;
    struct timespec ts = {(time_t)interval,
                          (long)((interval - (double)(time_t)interval) * 1e9)};
    while (!stop && nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
    if (d_snapshot(rk, pg, group, ps, n, 1, &pg_ok, pg_err, sizeof(pg_err), err, errlen) <
        0)
        goto out;
    d_oldest(rk, ps, n);
    int64_t now_us = cv_now_us();
    int r = cv_lagdoc_new(&(cv_lagdoc_head){.source = CV_LAGDOC_DIRECT,
                                            .time_ms = now_us / 1000,
                                            .version = CV_VERSION,
                                            .window_s = interval},
                          &doc);
    for (size_t i = 0, j; r == 0 && i < n; i = j) {
        for (j = i + 1; j < n && ps[j].channel == ps[i].channel; j++)
            ;
        r = d_channel(doc, ps, i, j, t_ms, pg_ok, now_us);
    }
    cv_lagdoc_store store = {
        .name = "postgres", .up = pg_ok, .last_error = pg_ok ? "" : pg_err};
    if (r == 0)
        r = cv_lagdoc_render(doc,
                             &(cv_lagdoc_tail){.stores_down = !pg_ok,
                                               .p50_s = -1,
                                               .p99_s = -1,
                                               .stores = &store,
                                               .nstores = 1},
                             out);
    if (r < 0) {
        snprintf(err, errlen, r == -ENOMEM ? "out of memory" : "output too large");
        goto out;
    }
    rc = 0;
out:
    cv_lagdoc_free(doc);
    d_free(ps, n);
    if (md)
        rd_kafka_metadata_destroy(md);
    if (rk) {
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
    }
    cv_pgstore_free(pg);
    return rc;
}

typedef struct lag_src {
    const url *u; /* NULL: direct only */
    const char *where;
    const char *token;
    const cv_config *cfg;
    bool fallback;   /* no broker answering: compute directly */
    double interval; /* direct mode: seconds between the snapshots */
} lag_src;

/* One fetch (or computation) and print. Returns the exit code. */
static int lag_once(lag_src *src, bool json, bool partitions, bool color) {
    char err[512];
    cv_buf body;
    cv_buf_init(&body, RESPONSE_LIMIT);
    int rc = CV_EXIT_FAILURE;
    const char *where = src->where;
    if (src->u) {
        int status = cv_cli_http_get(src->u, src->token, &body, err, sizeof(err));
        if (status < 0 && src->fallback) {
            fprintf(stderr,
                    "chatvault lag: no broker at %s (%s); computing from Kafka "
                    "and PostgreSQL\n",
                    src->where, strerror(-status));
            src->u = NULL;
        } else if (status < 0) {
            cv_error("lag", "%s", err);
            goto out;
        } else if (status == 401) {
            cv_error("lag", "%s: 401 unauthorized (set http.token to the broker's token)",
                     where);
            goto out;
        } else if (status != 200) {
            cv_error("lag", "%s: HTTP %d", where, status);
            goto out;
        }
    }
    if (!src->u) {
        where = "Kafka + PostgreSQL (direct)";
        if (lag_direct(src->cfg, src->interval, &body, err, sizeof(err)) < 0) {
            cv_error("lag", "%s", err);
            goto out;
        }
    }
    json_t *d = NULL;
    if (cv_json_parse((const char *)body.data, body.len, &d, err, sizeof(err)) < 0) {
        cv_error("lag", "%s: %s", where, err);
        goto out;
    }
    if (json) {
        fwrite(body.data, 1, body.len, stdout);
        rc = doc_status(d) == CV_LAG_OK ? CV_EXIT_OK : CV_EXIT_FAILURE;
    } else {
        rc = print_table(d, where, partitions, color) ? CV_EXIT_FAILURE : CV_EXIT_OK;
    }
    json_decref(d);
out:
    cv_buf_release(&body);
    fflush(stdout);
    return rc;
}

typedef struct lag_opts {
    const char *url;
    bool json, partitions, direct;
    double watch, interval;
} lag_opts;

enum { O_WATCH = 1, O_INTERVAL };

/* --watch [SECONDS] and --interval S. */
static int seconds_opt(const cv_cli_opt *opt, void *dest, const char *cmd,
                       const char *value) {
    lag_opts *o = dest;
    bool watch = opt->id == O_WATCH;
    double lo = watch ? 0.2 : 0.5, hi = watch ? 3600 : 600, v = 2.0;
    char *end = NULL;
    if (value)
        v = strtod(value, &end);
    if ((value && (end == value || *end)) || !(v >= lo && v <= hi)) {
        cv_error(cmd, "--%s \"%s\": give seconds between %g and %g", opt->name,
                 value ? value : "", lo, hi);
        return -1;
    }
    *(watch ? &o->watch : &o->interval) = v;
    return 0;
}

static const cv_cli_opt opts[] = {
    CV_OPT_STR("url", 0, "URL",
               "the broker's address, e.g. http://10.0.0.5:9187 or https://...", lag_opts,
               url),
    CV_OPT_FLAG("direct", 0, "compute from Kafka + PostgreSQL, do not ask a broker",
                lag_opts, direct),
    CV_OPT_CALL("interval", 0, "S",
                "direct mode: seconds between the two snapshots (default 5)", seconds_opt,
                O_INTERVAL),
    CV_OPT_FLAG("json", 0, "print the JSON document (/api/lag's shape)", lag_opts, json),
    CV_OPT_FLAG("partitions", 0, "one line per partition under each channel", lag_opts,
                partitions),
    CV_OPT_CALL_OPTIONAL("watch", "SECONDS",
                         "refresh every SECONDS (default 2) until interrupted",
                         seconds_opt, O_WATCH),
    CV_OPT_END,
};

static const cv_cli_spec spec = {
    .name = "lag",
    .usage = "lag [--url URL | --direct [--interval S]] [--json] [--partitions]\n"
             "                     [--watch [SECONDS]] [-c FILE] [--set key=value]...",
    .about =
        "Shows the ack lag of every channel as a running broker sees it: its\n"
        "/api/lag, at --url (default http://<http.listen>, https:// when\n"
        "http.tls_cert_file is set; http.token is sent as a bearer token, and an\n"
        "https server is checked against http.tls_ca_file or the system's store).\n"
        "When no broker answers at http.listen\n"
        "(and with --direct), the lag is computed from Kafka and PostgreSQL instead:\n"
        "high watermarks, the group's committed offsets (kafka.group.id), the\n"
        "oldest unacked record and chatvault.kafka_offsets, taken twice --interval\n"
        "seconds apart (default 5) to judge the status. There CONSUMED and ACKED\n"
        "are the stored and committed offsets summed over the partitions.\n",
    .opts = opts,
    .config_keys = "http.listen, http.token, http.tls_ca_file, kafka.*, "
                   "postgres.reader_conninfo",
    .epilog = "Status (per channel, over the broker's sliding window):\n"
              "  OK     acks keep up\n"
              "  WARN   acks advance but the lag grew over the whole window\n"
              "  STALL  records consumed, acks not advancing for the whole window\n"
              "  STOP   records wait in Kafka, nothing consumed for the whole window\n"
              "  ERR    a store is down: acks cannot be made\n\n"
              "Exit status: 0 every channel OK; 1 any other status, or the broker\n"
              "cannot be reached; 2 usage or configuration error.\n",
};

int cv_cmd_lag(int argc, char **argv) {
    lag_opts o = {.interval = 5};
    cv_cli cli;
    int parsed = cv_cli_parse(&spec, argc, argv, &o, &cli);
    if (parsed != CV_CLI_RUN)
        return parsed;
    const char *url_arg = o.url;
    bool json = o.json, partitions = o.partitions, direct = o.direct;
    double watch = o.watch, interval = o.interval;
    cv_config *cfg = cv_cli_load_config(&cli.config);
    if (!cfg)
        return CV_EXIT_USAGE;
    char where[600], err[512];
    const char *listen = cv_config_str(cfg, "http.listen");
    lag_src src = {.cfg = cfg,
                   .token = cv_config_str(cfg, "http.token"),
                   .interval = interval,
                   .where = where};
    url u;
    if (url_arg && direct) {
        cv_error("lag", "give --url or --direct, not both");
        cv_config_free(cfg);
        return CV_EXIT_USAGE;
    }
    if (!direct && (url_arg || *listen)) {
        bool tls = *cv_config_str(cfg, "http.tls_cert_file");
        if (url_arg)
            snprintf(where, sizeof(where), "%s", url_arg);
        else
            snprintf(where, sizeof(where), "%s://%s", tls ? "https" : "http", listen);
        if (cv_cli_parse_url(where, tls, "/api/lag", url_arg ? "--url" : "http.listen",
                             &u, err, sizeof(err)) < 0) {
            cv_error("lag", "%s", err);
            cv_config_free(cfg);
            return CV_EXIT_USAGE;
        }
        u.ca_file = cv_config_str(cfg, "http.tls_ca_file");
        src.u = &u;
        src.fallback = !url_arg;
    } else {
        snprintf(where, sizeof(where), "Kafka + PostgreSQL (direct)");
    }
    bool tty = isatty(STDOUT_FILENO);
    int rc;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (watch <= 0) {
        rc = lag_once(&src, json, partitions, tty);
    } else {
        do {
            if (tty && !json)
                fputs("\033[H\033[2J", stdout);
            rc = lag_once(&src, json, partitions, tty);
            if (!json && !tty)
                putchar('\n');
            struct timespec ts = {(time_t)watch,
                                  (long)((watch - (double)(time_t)watch) * 1e9)};
            while (!stop && nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
        } while (!stop);
    }
    cv_config_free(cfg);
    return rc;
}
