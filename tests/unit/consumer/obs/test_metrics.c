/*
 * Unit tests of consumer/obs/metrics.c: histogram quantiles, lag bookkeeping
 * fed through the observer the way the pipeline feeds it, and the history
 * rings (with a fake clock). The status rules are tests/unit/consumer/obs/test_lag.c's.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "obs/metrics.h"
#include "tap.h"

static const int64_t bounds[] = {10, 20, 50, 100};

static void test_histogram(void) {
    cv_hist h, base;
    cv_hist_init(&h, bounds, 4);
    TAP_IS_INT((long long)(cv_hist_quantile(&h, NULL, 0.5)), -1,
               "empty histogram has no quantile");
    for (int i = 0; i < 10; i++)
        cv_hist_observe(&h, 5); /* bucket le=10 */
    for (int i = 0; i < 10; i++)
        cv_hist_observe(&h, 15); /* bucket le=20 */
    TAP_IS_INT(h.count, 20, "count");
    TAP_IS_INT(h.sum, 200, "sum");
    TAP_IS_INT((long long)(cv_hist_quantile(&h, NULL, 0.5) + 0.5), 10,
               "p50 at the top of the first bucket");
    TAP_IS_INT((long long)(cv_hist_quantile(&h, NULL, 0.75) + 0.5), 15,
               "p75 interpolated inside the second bucket");
    cv_hist_observe(&h, 1000); /* +Inf bucket */
    TAP_IS_INT((long long)cv_hist_quantile(&h, NULL, 1.0), 100,
               "past the last bound gives the last bound");
    base = h;
    for (int i = 0; i < 4; i++)
        cv_hist_observe(&h, 60);
    TAP_IS_INT((long long)(cv_hist_quantile(&h, &base, 0.5) + 0.5), 75,
               "quantile of the difference to a snapshot");
    cv_hist_observe(&h, 10);
    TAP_IS_INT(h.counts[0], 11, "a value equal to a bound falls in that bucket");
}

/* Feeds the observer like the pipeline does and checks the rendered lag. */
static void test_observer_lag(void) {
    cv_metrics *m = NULL;
    cv_metrics_conf conf = {
        .topics_prefix = "chat.", .max_channels = 2, .version = "test"};
    TAP_IS_INT(cv_metrics_new(&conf, &m), 0, "cv_metrics_new");
    const cv_pipeline_observer *o = cv_metrics_observer(m);
    cv_rec recs[5];
    memset(recs, 0, sizeof(recs));
    const char *topics[] = {"chat.a", "chat.a", "chat.a", "chat.b", "chat.c"};
    for (int i = 0; i < 5; i++) {
        recs[i].topic = topics[i];
        recs[i].partition = 0;
        recs[i].offset = 10 + i;
        recs[i].timestamp_ms = cv_now_us() / 1000 - 5000; /* 5 s old */
    }
    recs[4].env.reason = CV_REJECT_CHANNEL_MISMATCH;
    snprintf(recs[4].env.error, sizeof(recs[4].env.error), "channel x in topic c");
    o->consumed(o->opaque, recs, 5);
    o->tick(o->opaque, NULL, NULL);
    cv_buf b;
    cv_buf_init(&b, 1 << 20);
    TAP_IS_INT(cv_metrics_render_lag_json(m, &b), 0, "render json");
    TAP_IS_INT(cv_buf_append(&b, "", 1), 0, "terminate");
    const char *j = (const char *)b.data;
    tap_ok(strstr(j, "\"channel\":\"a\",\"status\":\"OK\"") != NULL, "channel a listed");
    tap_ok(strstr(j, "\"lag_messages\":3,\"lag_seconds\":5.") != NULL,
           "a: 3 consumed-unacked records, the oldest 5 s old");
    tap_ok(strstr(j, "\"channel\":\"_other\"") != NULL,
           "third channel goes to _other with max_channels = 2");
    tap_ok(strstr(j, "\"reason\":\"channel_mismatch\"") != NULL,
           "recent rejection listed");
    cv_ack_note notes[2] = {
        {.topic = "chat.a",
         .partition = 0,
         .offset = 10,
         .timestamp_ms = -1,
         .sent_at_us = cv_now_us() - 2000000,
         .status = 1,
         .stores = CV_STORE_PG},
        {.topic = "chat.a",
         .partition = 0,
         .offset = 11,
         .timestamp_ms = -1,
         .sent_at_us = cv_now_us() - 2000000,
         .status = 2,
         .stores = CV_STORE_PG},
    };
    o->acked(o->opaque, notes, 2);
    b.len = 0;
    cv_metrics_render_prometheus(m, &b);
    cv_buf_append(&b, "", 1);
    j = (const char *)b.data;
    tap_ok(strstr(j, "chatvault_ack_lag_messages{channel=\"a\",partition=\"0\"} 1\n") !=
               NULL,
           "a: lag 1 after two acks");
    tap_ok(strstr(j, "chatvault_acked_total{channel=\"a\",status=\"duplicate\"} 1\n") !=
               NULL,
           "duplicate ack counted");
    tap_ok(strstr(j, "chatvault_rejected_total{channel=\"_other\",reason=\"channel_"
                     "mismatch\"} 1\n") != NULL,
           "rejection counted under _other");
    tap_ok(
        strstr(j, "chatvault_ack_lag_messages{channel=\"_other\",partition=\"0\"} 1\n") !=
            NULL,
        "_other: lag summed by partition number");
    tap_ok(strstr(j, "chatvault_ack_lag_messages{channel=\"b\",partition=\"0\"} 1\n") !=
               NULL,
           "b: its own series");
    tap_ok(strstr(j, "chatvault_ack_latency_seconds_count 2\n") != NULL,
           "two sent->ack latencies observed");
    tap_ok(strstr(j, "chatvault_channel_status{channel=\"a\",status=\"OK\"} 1\n") != NULL,
           "status one-hot");
    o->store_error(o->opaque, CV_STORE_PG, "connection refused");
    char why[256];
    tap_ok(!cv_metrics_ready(m, why, sizeof(why)), "not ready with a store down");
    tap_ok(strstr(why, "postgres") != NULL, "readiness names the store: %s", why);
    b.len = 0;
    cv_metrics_render_lag_json(m, &b);
    cv_buf_append(&b, "", 1);
    tap_ok(strstr((const char *)b.data, "\"status\":\"ERR\"") != NULL,
           "store down: channels ERR");
    o->store_ok(o->opaque, CV_STORE_PG);
    tap_ok(cv_metrics_ready(m, why, sizeof(why)), "ready again after a good write (%s)",
           why);
    b.len = 0;
    cv_metrics_render_prometheus(m, &b);
    cv_buf_append(&b, "", 1);
    tap_ok(strstr((const char *)b.data, "chatvault_log_generations_total 0\n") != NULL,
           "no log generation started yet");
    o->log_generation(o->opaque, "chat.a", 0);
    o->log_generation(o->opaque, "chat.b", 1);
    b.len = 0;
    cv_metrics_render_prometheus(m, &b);
    cv_buf_append(&b, "", 1);
    tap_ok(
        strstr((const char *)b.data, "chatvault_log_generations_total 2\n") != NULL,
        "chatvault_log_generations_total counts each partition's offsets starting over");
    cv_buf_release(&b);
    m = cv_metrics_free(m);
    tap_ok(m == NULL, "free returns NULL");
}

/* librdkafka 2.0.2's statistics, cut to what cv_metrics_kafka_stats reads:
 * a bootstrap entry (nodeid -1), three learned brokers, the group
 * coordinator's logical alias of one of them, then topics whose partitions
 * have states of their own. */
static const char *stats_doc(const char *s1, const char *s2, const char *s3) {
    static char doc[2048];
    snprintf(
        doc, sizeof(doc),
        "{\"name\":\"rdkafka#consumer-2\",\"type\":\"consumer\",\"brokers\":{"
        "\"127.0.0.1:9/bootstrap\":{\"name\":\"127.0.0.1:9/bootstrap\",\"nodeid\":-1,"
        "\"source\":\"configured\",\"state\":\"INIT\",\"toppars\":{}},"
        "\"127.0.0.1:1/1\":{\"name\":\"127.0.0.1:1/1\",\"nodeid\":1,\"nodename\":"
        "\"127.0.0.1:1\",\"source\":\"learned\",\"state\":\"%s\",\"toppars\":{"
        "\"chat.a-0\":{\"topic\":\"chat.a\",\"partition\":0}}},"
        "\"127.0.0.1:2/2\":{\"name\":\"127.0.0.1:2/2\",\"nodeid\":2,"
        "\"source\":\"learned\",\"state\":\"%s\"},"
        "\"127.0.0.1:3/3\":{\"name\":\"127.0.0.1:3/3\",\"nodeid\":3,"
        "\"source\":\"learned\",\"state\":\"%s\"},"
        "\"GroupCoordinator\":{\"name\":\"GroupCoordinator\",\"nodeid\":2,"
        "\"source\":\"logical\",\"state\":\"UP\"}},"
        "\"topics\":{\"chat.a\":{\"partitions\":{\"0\":{\"partition\":0,"
        "\"leader\":1,\"fetch_state\":\"active\"}}}},"
        "\"cgrp\":{\"state\":\"up\",\"join_state\":\"steady\"}}",
        s1, s2, s3);
    return doc;
}

static bool prom_has(cv_metrics *m, const char *line) {
    cv_buf b;
    cv_buf_init(&b, 1 << 20);
    cv_metrics_render_prometheus(m, &b);
    cv_buf_append(&b, "", 1);
    bool found = strstr((const char *)b.data, line) != NULL;
    cv_buf_release(&b);
    return found;
}

static void test_kafka_stats(void) {
    cv_metrics *m = NULL;
    cv_metrics_conf conf = {.topics_prefix = "chat.", .max_channels = 2, .version = "t"};
    TAP_IS_INT(cv_metrics_new(&conf, &m), 0, "cv_metrics_new (kafka state)");
    const cv_pipeline_observer *o = cv_metrics_observer(m);
    o->tick(o->opaque, NULL, NULL);
    tap_ok(prom_has(m, "chatvault_kafka_up 1\n") &&
               prom_has(m, "chatvault_kafka_brokers_known 0\n"),
           "before any statistics: kafka up, no broker known");
    const char *d = stats_doc("UP", "DOWN", "UP");
    cv_metrics_kafka_stats(m, d, strlen(d));
    tap_ok(prom_has(m, "chatvault_kafka_brokers_up 2\n") &&
               prom_has(m, "chatvault_kafka_brokers_known 3\n") &&
               prom_has(m, "chatvault_kafka_up 1\n"),
           "2 of 3 learned brokers up; bootstrap and logical entries not counted");
    d = stats_doc("TRY_CONNECT", "DOWN", "CONNECT");
    cv_metrics_kafka_stats(m, d, strlen(d));
    tap_ok(prom_has(m, "chatvault_kafka_up 0\n") &&
               prom_has(m, "chatvault_kafka_brokers_up 0\n") &&
               prom_has(m, "chatvault_kafka_outages_total 1\n"),
           "every broker down: kafka_up 0, one outage");
    char why[256];
    tap_ok(cv_metrics_ready(m, why, sizeof(why)),
           "an outage younger than 5 s leaves /readyz ready (%s)", why);
    cv_buf b;
    cv_buf_init(&b, 1 << 20);
    cv_metrics_render_lag_json(m, &b);
    cv_buf_append(&b, "", 1);
    tap_ok(strstr((const char *)b.data,
                  "\"kafka\":{\"up\":false,\"brokers_up\":0,\"brokers_known\":3,") !=
               NULL,
           "/api/lag: kafka object says down");
    cv_buf_release(&b);
    cv_metrics_kafka_stats(m, d, strlen(d));
    tap_ok(prom_has(m, "chatvault_kafka_outages_total 1\n"),
           "the same outage is counted once");
    d = stats_doc("DOWN", "UP", "DOWN");
    cv_metrics_kafka_stats(m, d, strlen(d));
    tap_ok(prom_has(m, "chatvault_kafka_up 1\n") &&
               prom_has(m, "chatvault_kafka_brokers_up 1\n"),
           "one broker back: kafka up again");
    cv_metrics_kafka_stats(m, "{\"brokers\":{\"x\":{\"nodeid\":1", 27);
    tap_ok(prom_has(m, "chatvault_kafka_brokers_up 1\n"),
           "a truncated document changes nothing");
    m = cv_metrics_free(m);
}

/* ---- history, on a fake clock ---- */

static int64_t fake_us;
static int64_t fake_now_us(void) {
    return fake_us;
}
static int64_t fake_mono_ms(void) {
    return fake_us / 1000;
}

/* The numbers of `"name":[...]` in `j` into out (null → NaN); returns how
 * many, or -1 when the array is missing. */
static int json_array(const char *j, const char *name, double *out, int max) {
    char key[64];
    snprintf(key, sizeof(key), "\"%s\":[", name);
    const char *p = strstr(j, key);
    if (!p)
        return -1;
    p += strlen(key);
    int n = 0;
    while (*p && *p != ']') {
        double v = NAN;
        if (strncmp(p, "null", 4) == 0)
            p += 4;
        else
            v = strtod(p, (char **)&p);
        if (n < max)
            out[n] = v;
        n++;
        if (*p == ',')
            p++;
    }
    return n;
}

static void consume_one(const cv_pipeline_observer *o, const char *topic,
                        int64_t offset) {
    cv_rec r;
    memset(&r, 0, sizeof(r));
    r.topic = topic;
    r.offset = offset;
    r.timestamp_ms = fake_us / 1000;
    o->consumed(o->opaque, &r, 1);
}

static void ack_range(const cv_pipeline_observer *o, const char *topic, int64_t from,
                      int64_t to, int64_t latency_us) {
    for (int64_t off = from; off < to; off++) {
        cv_ack_note a = {.topic = topic,
                         .offset = off,
                         .timestamp_ms = -1,
                         .sent_at_us = fake_us - latency_us,
                         .status = 1,
                         .stores = CV_STORE_PG};
        o->acked(o->opaque, &a, 1);
    }
}

static char *render_history(cv_metrics *m, const char *channel, cv_history_range range,
                            cv_buf *b) {
    char err[200];
    b->len = 0;
    if (cv_metrics_render_history_json(m, channel, range, b, err, sizeof(err)) < 0 ||
        cv_buf_append(b, "", 1) < 0)
        return NULL;
    return (char *)b->data;
}

#define NPTS 4000
static double t_ms[NPTS], vals[NPTS];

static void test_history(void) {
    fake_us = 1700000040LL * 1000000; /* the start of a minute */
    const int64_t t0_ms = fake_us / 1000;
    cv_metrics *m = NULL;
    cv_metrics_conf conf = {.topics_prefix = "chat.",
                            .max_channels = 2,
                            .version = "test",
                            .now_us = fake_now_us,
                            .mono_ms = fake_mono_ms};
    TAP_IS_INT(cv_metrics_new(&conf, &m), 0, "cv_metrics_new with a fake clock");
    const cv_pipeline_observer *o = cv_metrics_observer(m);
    cv_buf b;
    cv_buf_init(&b, 16 << 20);
    char *j = render_history(m, NULL, CV_HISTORY_1H, &b);
    tap_ok(j && json_array(j, "t_ms", t_ms, NPTS) == 0,
           "no points before the first tick");

    /* 100 s: channel a gets one record a second, none acked until second
     * 50 (lag 1..50), then each is acked 200 ms after it was sent. */
    for (int k = 0; k < 100; k++) {
        consume_one(o, "chat.a", k);
        if (k == 50)
            ack_range(o, "chat.a", 0, 51, 200000);
        else if (k > 50)
            ack_range(o, "chat.a", k, k + 1, 200000);
        o->tick(o->opaque, NULL, NULL);
        fake_us += 1000000;
    }
    j = render_history(m, NULL, CV_HISTORY_1H, &b);
    TAP_IS_INT(json_array(j, "t_ms", t_ms, NPTS), 100, "1h: one point per tick");
    TAP_IS_INT((long long)(t_ms[0] - (double)t0_ms), 0,
               "1h: the first point is the first tick");
    TAP_IS_INT((long long)(t_ms[99] - t_ms[0]), 99000, "1h: the last is 99 s later");
    json_array(j, "lag_messages", vals, NPTS);
    TAP_IS_INT((long long)vals[49], 50, "totals lag at second 49 is 50");
    TAP_IS_INT((long long)vals[60], 0, "totals lag 0 once acks keep up");
    json_array(j, "p99_s", vals, NPTS);
    tap_ok(isnan(vals[10]), "no p99 before the first ack (null)");
    tap_ok(vals[70] > 0.1 && vals[70] <= 0.25, "p99 of 200 ms acks in its bucket: %g",
           vals[70]);

    j = render_history(m, "a", CV_HISTORY_1H, &b);
    tap_ok(j && strstr(j, "\"channel\":\"a\",\"range\":\"1h\",\"step_s\":1"),
           "channel a's 1h document");
    json_array(j, "p50_s", vals, NPTS);
    tap_ok(vals[70] > 0.1 && vals[70] <= 0.25, "a: its own p50: %g", vals[70]);
    json_array(j, "rate", vals, NPTS);
    tap_ok(fabs(vals[80] - 1.0) < 1e-6, "a: rate 1/s at steady state: %g", vals[80]);

    /* Minutes: [t0, t0+60 s) is done, [t0+60 s, ...) in progress. */
    j = render_history(m, NULL, CV_HISTORY_24H, &b);
    TAP_IS_INT(json_array(j, "t_ms", t_ms, NPTS), 2,
               "24h: one done minute + the one in progress");
    TAP_IS_INT((long long)(t_ms[1] - t_ms[0]), 60000, "24h: minute points 60 s apart");
    TAP_IS_INT((long long)(t_ms[0] - (double)t0_ms), 0,
               "24h: a minute point is its start");
    json_array(j, "lag_messages", vals, NPTS);
    TAP_IS_INT((long long)vals[0], 50, "minute lag = the maximum of its seconds");
    TAP_IS_INT((long long)vals[1], 0, "second minute: lag 0");
    json_array(j, "rate", vals, NPTS);
    tap_ok(fabs(vals[1] - 1.0) < 1e-6, "minute rate = the mean of its seconds: %g",
           vals[1]);
    json_array(j, "p99_s", vals, NPTS);
    tap_ok(vals[0] > 0.1 && vals[0] <= 0.25,
           "minute p99 = the maximum (NaN seconds skipped): %g", vals[0]);

    /* Channel b appears later: its series starts then. */
    consume_one(o, "chat.b", 0);
    o->tick(o->opaque, NULL, NULL);
    fake_us += 1000000;
    j = render_history(m, "b", CV_HISTORY_1H, &b);
    TAP_IS_INT(json_array(j, "t_ms", t_ms, NPTS), 1,
               "a new channel's history starts when it appears");
    json_array(j, "p50_s", vals, NPTS);
    tap_ok(isnan(vals[0]), "b: no acks, p50 null");
    b.len = 0;
    char err[200] = "";
    TAP_IS_INT(
        cv_metrics_render_history_json(m, "nope", CV_HISTORY_1H, &b, err, sizeof(err)),
        -ENOENT, "unknown channel: -ENOENT");
    tap_ok(strstr(err, "nope") != NULL, "the error names it: %s", err);

    /* Past the ring: one hour and more of ticks keeps exactly 3600. */
    for (int k = 0; k < 3700; k++) {
        o->tick(o->opaque, NULL, NULL);
        fake_us += 1000000;
    }
    j = render_history(m, "a", CV_HISTORY_1H, &b);
    int n = json_array(j, "t_ms", t_ms, NPTS);
    TAP_IS_INT(n, 3600, "1h ring wrapped: 3600 points");
    TAP_IS_INT((long long)(t_ms[n - 1] - t_ms[0]), 3599000,
               "1h: the newest hour, oldest first");
    TAP_IS_INT((long long)((double)fake_us / 1000 - 1000 - t_ms[n - 1]), 0,
               "1h: the newest point is the last tick");

    /* A day and more: the minute ring keeps 1440. */
    for (int k = 0; k < 86400; k++) {
        o->tick(o->opaque, NULL, NULL);
        fake_us += 1000000;
    }
    j = render_history(m, NULL, CV_HISTORY_24H, &b);
    n = json_array(j, "t_ms", t_ms, NPTS);
    tap_ok(n >= 1440 && n <= 1441,
           "24h ring wrapped: %d points (1440 + the one in progress)", n);
    tap_ok((double)fake_us / 1000 - t_ms[0] <= 86400000.0,
           "24h: nothing older than 24 h");
    for (int k = 1; k < n; k++)
        if (t_ms[k] - t_ms[k - 1] != 60000) {
            tap_ok(false, "24h: points a minute apart (at %d: %g)", k,
                   t_ms[k] - t_ms[k - 1]);
            break;
        }
    tap_ok(b.len < 300000, "24h document stays small: %zu bytes", b.len);
    j = render_history(m, NULL, CV_HISTORY_1H, &b);
    tap_ok(b.len < 400000, "1h document: %zu bytes", b.len);
    cv_buf_release(&b);
    cv_metrics_free(m);
}

int main(void) {
    test_kafka_stats();
    test_histogram();
    test_observer_lag();
    test_history();
    return tap_done();
}
