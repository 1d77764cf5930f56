/*
 * Unit tests of consumer/obs/lag.c: the status rules, table-driven (windows of
 * samples as the broker takes them, pairs of snapshots as `chatvault lag
 * --direct` takes them), the one status-name table, and the /api/lag
 * document builder (members, order, exact integers, rounding).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "obs/lag.h"
#include "tap.h"

/* Samples one second apart ending at t = 20 s; window 10 s. Each row lists
 * (consumed, acked, lag, inflight) per second. */
typedef struct row {
    int64_t consumed, acked, lag, inflight;
} row;

typedef struct status_case {
    const char *name;
    bool stores_down;
    size_t n;
    row rows[16];
    cv_lag_status want;
} status_case;

static const status_case status_cases[] = {
    {"no samples at all is OK", false, 0, {{0}}, CV_LAG_OK},
    {"idle channel, no lag: OK",
     false,
     12,
     {{5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0}},
     CV_LAG_OK},
    {"acks advancing with steady small lag: OK",
     false,
     12,
     {{100, 90, 10, 10},
      {200, 190, 12, 10},
      {300, 290, 9, 9},
      {400, 390, 10, 10},
      {500, 490, 11, 10},
      {600, 590, 10, 10},
      {700, 690, 8, 8},
      {800, 790, 10, 10},
      {900, 890, 10, 10},
      {1000, 990, 12, 10},
      {1100, 1090, 10, 10},
      {1200, 1190, 10, 10}},
     CV_LAG_OK},
    {"acks advancing but lag never shrinks and grows: WARN",
     false,
     12,
     {{100, 90, 10, 10},
      {200, 180, 20, 20},
      {300, 270, 30, 30},
      {400, 360, 40, 40},
      {500, 450, 50, 50},
      {600, 540, 60, 60},
      {700, 630, 70, 70},
      {800, 720, 80, 80},
      {900, 810, 90, 90},
      {1000, 900, 100, 100},
      {1100, 990, 110, 110},
      {1200, 1080, 120, 120}},
     CV_LAG_WARN},
    {"growth before the window does not count: OK",
     false,
     12,
     {{100, 90, 10, 10},
      {200, 180, 200, 20},
      {300, 270, 300, 30},
      {400, 360, 40, 40},
      {500, 450, 50, 50},
      {600, 540, 60, 60},
      {700, 630, 70, 70},
      {800, 720, 80, 80},
      {900, 810, 90, 90},
      {1000, 900, 100, 100},
      {1100, 990, 110, 110},
      {1200, 1080, 105, 105}},
     CV_LAG_OK},
    {"consumed, acks frozen: STALL",
     false,
     12,
     {{100, 90, 10, 10},
      {110, 90, 20, 20},
      {120, 90, 30, 30},
      {130, 90, 40, 40},
      {140, 90, 50, 50},
      {150, 90, 60, 60},
      {160, 90, 70, 70},
      {170, 90, 80, 80},
      {180, 90, 90, 90},
      {190, 90, 100, 100},
      {200, 90, 110, 110},
      {210, 90, 120, 120}},
     CV_LAG_STALL},
    {"nothing consumed but records in flight, acks frozen: STALL",
     false,
     12,
     {{100, 90, 10, 10},
      {100, 90, 10, 10},
      {100, 90, 10, 10},
      {100, 90, 10, 10},
      {100, 90, 10, 10},
      {100, 90, 10, 10},
      {100, 90, 10, 10},
      {100, 90, 10, 10},
      {100, 90, 10, 10},
      {100, 90, 10, 10},
      {100, 90, 10, 10},
      {100, 90, 10, 10}},
     CV_LAG_STALL},
    {"lag waits in Kafka, nothing consumed or in flight: STOP",
     false,
     12,
     {{100, 100, 5, 0},
      {100, 100, 5, 0},
      {100, 100, 6, 0},
      {100, 100, 6, 0},
      {100, 100, 7, 0},
      {100, 100, 7, 0},
      {100, 100, 8, 0},
      {100, 100, 8, 0},
      {100, 100, 9, 0},
      {100, 100, 9, 0},
      {100, 100, 10, 0},
      {100, 100, 10, 0}},
     CV_LAG_STOP},
    {"acks stopped mid-window while lag grows: WARN, not STALL yet",
     false,
     12,
     {{100, 90, 10, 10},
      {110, 100, 10, 10},
      {120, 110, 10, 10},
      {130, 120, 10, 10},
      {140, 130, 10, 10},
      {150, 140, 10, 10},
      {160, 140, 20, 20},
      {170, 140, 30, 30},
      {180, 140, 40, 40},
      {190, 140, 50, 50},
      {200, 140, 60, 60},
      {210, 140, 70, 70}},
     CV_LAG_WARN},
    {"store down beats everything: ERR",
     true,
     2,
     {{5, 5, 0, 0}, {5, 5, 0, 0}},
     CV_LAG_ERR},
    {"lag back to zero right now: OK",
     false,
     12,
     {{100, 90, 10, 10},
      {110, 90, 20, 20},
      {120, 90, 30, 30},
      {130, 90, 40, 40},
      {140, 90, 50, 50},
      {150, 90, 60, 60},
      {160, 90, 70, 70},
      {170, 90, 80, 80},
      {180, 90, 90, 90},
      {190, 90, 100, 100},
      {200, 90, 110, 110},
      {210, 210, 0, 0}},
     CV_LAG_OK},
    {"idle channel gets new records, acks frozen for less than a window: OK",
     false,
     12,
     {{5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {5, 5, 0, 0},
      {9, 5, 4, 4},
      {9, 5, 4, 4},
      {9, 5, 4, 4},
      {9, 5, 4, 4}},
     CV_LAG_OK},
    {"1 msg/s, lag 0 or 1 (a message waiting for its batch): OK",
     false,
     12,
     {{1, 1, 0, 0},
      {2, 1, 1, 1},
      {2, 2, 0, 0},
      {3, 3, 0, 0},
      {4, 3, 1, 1},
      {4, 4, 0, 0},
      {5, 5, 0, 0},
      {6, 5, 1, 1},
      {6, 6, 0, 0},
      {7, 7, 0, 0},
      {7, 7, 0, 0},
      {8, 7, 1, 1}},
     CV_LAG_OK},
    {"a quiet channel's one message waits while acks go on: OK",
     false,
     12,
     {{5, 5, 0, 0},
      {5, 5, 0, 0},
      {6, 6, 0, 0},
      {6, 6, 0, 0},
      {7, 7, 0, 0},
      {7, 7, 0, 0},
      {8, 8, 0, 0},
      {8, 8, 0, 0},
      {9, 9, 0, 0},
      {9, 9, 0, 0},
      {10, 10, 0, 0},
      {11, 10, 1, 1}},
     CV_LAG_OK},
    {"too little history to judge: OK",
     false,
     3,
     {{100, 90, 10, 10}, {110, 90, 20, 20}, {120, 90, 30, 30}},
     CV_LAG_OK},
};

static void test_status_rules(void) {
    for (size_t i = 0; i < sizeof(status_cases) / sizeof(status_cases[0]); i++) {
        const status_case *c = &status_cases[i];
        cv_lag_sample s[16];
        for (size_t k = 0; k < c->n; k++)
            s[k] = (cv_lag_sample){.t_ms = 20000 - (int64_t)(c->n - 1 - k) * 1000,
                                   .consumed = c->rows[k].consumed,
                                   .acked = c->rows[k].acked,
                                   .lag = c->rows[k].lag,
                                   .inflight = c->rows[k].inflight};
        /* The lag has been > 0 since the first sample of the final run of
         * non-zero lags (the run is assumed to have started there). */
        for (size_t k = 0; k < c->n; k++) {
            int64_t since = 0;
            for (size_t j = k + 1; j-- > 0 && c->rows[j].lag > 0;)
                since = s[j].t_ms;
            s[k].lag_since_ms = since;
        }
        const char *why = NULL;
        cv_lag_status got = cv_lag_status_eval(s, c->n, 10000, c->stores_down, &why);
        TAP_IS_STR(cv_lag_status_name(got), cv_lag_status_name(c->want), c->name);
        tap_ok(why && *why, "%s: has an explanation", c->name);
    }
}

/* A broker blocked in the stores stops ticking: the stored samples end long
 * ago and the render-time sample is the only recent one. */
static void test_status_blocked_pipeline(void) {
    cv_lag_sample s[] = {
        {.t_ms = 1000, .consumed = 40, .acked = 40, .lag = 0, .inflight = 0},
        {.t_ms = 2000, .consumed = 40, .acked = 40, .lag = 0, .inflight = 0},
        {.t_ms = 30000,
         .consumed = 60,
         .acked = 40,
         .lag = 20,
         .inflight = 20,
         .lag_since_ms = 2500},
    };
    TAP_IS_STR(cv_lag_status_name(cv_lag_status_eval(s, 3, 10000, false, NULL)), "STALL",
               "blocked pipeline: baseline before the window, STALL");
    s[2].t_ms = 9000;
    TAP_IS_STR(cv_lag_status_name(cv_lag_status_eval(s, 3, 10000, false, NULL)), "OK",
               "blocked for less than a window: not judged yet");
    s[2].t_ms = 30000;
    s[2].consumed = 40;
    s[2].inflight = 0;
    TAP_IS_STR(cv_lag_status_name(cv_lag_status_eval(s, 3, 10000, false, NULL)), "STOP",
               "lag in Kafka for a window, nothing consumed: STOP");
}

/* Two snapshots 5 s apart, as `chatvault lag --direct --interval 5` takes
 * them: (consumed, acked, lag, inflight) before and after. */
typedef struct pair_case {
    const char *name;
    bool stores_down;
    row before, after;
    cv_lag_status want;
} pair_case;

static const pair_case pair_cases[] = {
    {"PostgreSQL unreachable: ERR", true, {5, 5, 3, 0}, {5, 5, 3, 0}, CV_LAG_ERR},
    {"no lag at the second snapshot: OK", false, {5, 2, 3, 3}, {9, 9, 0, 0}, CV_LAG_OK},
    {"lag at both, stored moved, acks not: STALL",
     false,
     {5, 2, 3, 3},
     {8, 2, 6, 6},
     CV_LAG_STALL},
    {"lag at both, records in flight, acks not advancing: STALL",
     false,
     {5, 2, 3, 3},
     {5, 2, 3, 3},
     CV_LAG_STALL},
    {"lag at both, nothing stored or in flight: STOP",
     false,
     {5, 5, 3, 0},
     {5, 5, 3, 0},
     CV_LAG_STOP},
    {"lag appeared between the snapshots, no acks: not judged yet, OK",
     false,
     {5, 5, 0, 0},
     {5, 5, 3, 0},
     CV_LAG_OK},
    {"acks advance, lag grew from > 0: WARN",
     false,
     {50, 40, 10, 10},
     {90, 60, 30, 30},
     CV_LAG_WARN},
    {"acks advance, lag grew from 0: OK",
     false,
     {40, 40, 0, 0},
     {90, 60, 30, 30},
     CV_LAG_OK},
    {"acks advance, lag shrank: OK", false, {50, 40, 10, 10}, {90, 85, 5, 5}, CV_LAG_OK},
};

static void test_status_pairs(void) {
    for (size_t i = 0; i < sizeof(pair_cases) / sizeof(pair_cases[0]); i++) {
        const pair_case *c = &pair_cases[i];
        cv_lag_sample a = {.t_ms = 1000,
                           .consumed = c->before.consumed,
                           .acked = c->before.acked,
                           .lag = c->before.lag,
                           .inflight = c->before.inflight};
        cv_lag_sample b = {.t_ms = 6000,
                           .consumed = c->after.consumed,
                           .acked = c->after.acked,
                           .lag = c->after.lag,
                           .inflight = c->after.inflight};
        const char *why = NULL;
        cv_lag_status got = cv_lag_status_eval_pair(&a, &b, c->stores_down, &why);
        TAP_IS_STR(cv_lag_status_name(got), cv_lag_status_name(c->want), c->name);
        tap_ok(why && *why, "%s: has an explanation", c->name);
    }
}

static void test_status_names(void) {
    static const char *const want[] = {"OK", "WARN", "STALL", "STOP", "ERR"};
    for (int s = 0; s < CV_LAG__COUNT; s++) {
        cv_lag_status back = CV_LAG__COUNT;
        TAP_IS_STR(cv_lag_status_name((cv_lag_status)s), want[s], want[s]);
        tap_ok(cv_lag_status_parse(want[s], &back) == 0 && back == (cv_lag_status)s,
               "%s parses back", want[s]);
    }
    cv_lag_status back = CV_LAG_WARN;
    TAP_IS_INT(cv_lag_status_parse("ok", &back), -EINVAL, "names are upper case");
    tap_ok(back == CV_LAG_WARN, "an unknown name leaves the output alone");
    TAP_IS_STR(cv_lag_status_name(CV_LAG__COUNT), "?", "out of range: ?");
    tap_ok(CV_LAG_OK < CV_LAG_WARN && CV_LAG_WARN < CV_LAG_STALL &&
               CV_LAG_STALL < CV_LAG_STOP && CV_LAG_STOP < CV_LAG_ERR,
           "statuses ordered by severity");
}

static char *render(cv_lagdoc *d, const cv_lagdoc_tail *t) {
    cv_buf b;
    cv_buf_init(&b, 1 << 20);
    int r = cv_lagdoc_render(d, t, &b);
    TAP_IS_INT(r, 0, "render");
    char *s = strndup((const char *)b.data, b.len);
    cv_buf_release(&b);
    return s;
}

static void test_direct_document(void) {
    cv_lagdoc *d = NULL;
    cv_lagdoc_head h = {.source = CV_LAGDOC_DIRECT,
                        .time_ms = 1700000000000,
                        .version = "t",
                        .window_s = 5,
                        .uptime_s = 99}; /* not a direct member: not written */
    TAP_IS_INT(cv_lagdoc_new(&h, &d), 0, "new direct document");
    cv_lagdoc_channel c = {.channel = "a",
                           .status = CV_LAG_STOP,
                           .why = "w",
                           .lag = 3,
                           .lag_seconds = 1.5,
                           .consumed = 7,
                           .acked = 7};
    TAP_IS_INT(cv_lagdoc_add_channel(d, &c), 0, "add channel");
    cv_lagdoc_partition p = {.topic = "chat.a",
                             .high_watermark = 10,
                             .end_offset = 10,
                             .acked_offset = 7,
                             .stored_offset = 7,
                             .lag = 3,
                             .lag_seconds = 1.5,
                             .assigned = true};
    TAP_IS_INT(cv_lagdoc_add_partition(d, &p), 0, "add partition");
    cv_lagdoc_store pg = {.name = "postgres", .up = true, .last_error = ""};
    cv_lagdoc_tail t = {.p50_s = -1, .p99_s = -1, .stores = &pg, .nstores = 1};
    char *s = render(d, &t);
    TAP_IS_STR(
        s,
        "{\"source\":\"direct\",\"time_ms\":1700000000000,\"version\":\"t\","
        "\"window_s\":5.0,\"degraded\":false,\"channels\":[{\"channel\":\"a\","
        "\"status\":\"STOP\",\"why\":\"w\",\"rate\":0.0,\"lag_messages\":3,"
        "\"lag_seconds\":1.5,\"inflight\":0,\"consumed\":7,\"acked\":7,\"rejected\":0,"
        "\"duplicate\":0,\"partitions\":[{\"topic\":\"chat.a\",\"partition\":0,"
        "\"high_watermark\":10,\"end_offset\":10,\"acked_offset\":7,"
        "\"stored_offset\":7,\"lag_messages\":3,\"lag_seconds\":1.5,\"inflight\":0,"
        "\"assigned\":true}]}],\"status\":\"STOP\",\"totals\":{\"lag_messages\":3,"
        "\"lag_seconds\":1.5,\"inflight\":0,\"rate\":0.0,\"consumed\":7,\"acked\":7},"
        "\"latency\":{\"p50_s\":null,\"p99_s\":null},\"stores\":[{\"name\":"
        "\"postgres\",\"up\":true,\"last_error\":\"\"}],\"rejected_recent\":[]}\n",
        "direct document: its members, in order");
    free(s);
    cv_lagdoc_free(d);
}

static void test_broker_document(void) {
    cv_lagdoc *d = NULL;
    cv_lagdoc_head h = {.source = CV_LAGDOC_BROKER,
                        .version = "t",
                        .window_s = 10,
                        .uptime_s = 12.345,
                        .tick_age_s = -1,
                        .kafka_up = true,
                        .kafka_brokers_known = 3};
    TAP_IS_INT(cv_lagdoc_new(&h, &d), 0, "new broker document");
    const int64_t big = 9007199254740993; /* 2^53 + 1: not a double */
    cv_lagdoc_channel a = {.channel = "a",
                           .status = CV_LAG_WARN,
                           .why = "w",
                           .rate = 1.23456,
                           .lag = 2,
                           .lag_seconds = 0.0004,
                           .consumed = big,
                           .acked = 5,
                           .p50_s = 0.0123456789,
                           .p99_s = -1};
    cv_lagdoc_channel b = {.channel = "b\xff",
                           .status = CV_LAG_OK,
                           .why = "w",
                           .rate = 1,
                           .lag = 3,
                           .lag_seconds = 2.5,
                           .consumed = 1,
                           .p50_s = -1,
                           .p99_s = -1};
    cv_lagdoc_partition p = {.topic = "chat.a", .partition = 3, .end_offset = big};
    tap_ok(cv_lagdoc_add_channel(d, &a) == 0 && cv_lagdoc_add_partition(d, &p) == 0 &&
               cv_lagdoc_add_channel(d, &b) == 0,
           "add channels");
    TAP_IS_STR(cv_lag_status_name(cv_lagdoc_status(d)), "WARN", "worst channel so far");
    cv_lagdoc_tail t = {.stores_down = true, .p50_s = -1, .p99_s = 0.5};
    char *s = render(d, &t);
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    tap_ok(j != NULL, "the document parses (%s)", j ? "" : e.text);
    json_t *c0 = json_array_get(json_object_get(j, "channels"), 0);
    json_t *p0 = json_array_get(json_object_get(c0, "partitions"), 0);
    tap_ok(json_integer_value(json_object_get(c0, "consumed")) == big &&
               json_integer_value(json_object_get(p0, "end_offset")) == big,
           "64-bit counts and offsets stay exact");
    tap_ok(json_object_get(p0, "consumed_offset") &&
               !json_object_get(p0, "stored_offset"),
           "a broker's partition has consumed_offset, not stored_offset");
    tap_ok(strstr(s, "\"rate\":1.23,") && strstr(s, "\"lag_seconds\":0.0,") &&
               strstr(s, "\"uptime_s\":12.3,") && strstr(s, "\"p50_s\":0.0123457,") &&
               strstr(s, "\"tick_age_s\":-1.0,"),
           "numbers rounded as documented");
    TAP_IS_STR(json_string_value(json_object_get(j, "status")), "ERR",
               "a store down makes the document ERR");
    json_t *tot = json_object_get(j, "totals");
    tap_ok(json_integer_value(json_object_get(tot, "lag_messages")) == 5 &&
               json_real_value(json_object_get(tot, "lag_seconds")) == 2.5 &&
               json_integer_value(json_object_get(tot, "consumed")) == big + 1,
           "totals: sums, and the oldest lag");
    json_t *c1 = json_array_get(json_object_get(j, "channels"), 1);
    TAP_IS_STR(json_string_value(json_object_get(c1, "channel")), "b\xef\xbf\xbd",
               "bytes that are not UTF-8 become U+FFFD");
    tap_ok(json_is_null(json_object_get(j, "probe")) &&
               json_object_get(json_object_get(j, "kafka"), "brokers_known"),
           "broker members: probe null, kafka");
    json_decref(j);
    free(s);
    cv_lagdoc_free(d);
}

int main(void) {
    test_status_rules();
    test_status_blocked_pipeline();
    test_status_pairs();
    test_status_names();
    test_direct_document();
    test_broker_document();
    return tap_done();
}
