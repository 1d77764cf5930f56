/*
 * lag — the one owner of the ack-lag status rules and of the /api/lag
 * document. The broker's metrics (metrics.c) and `chatvault lag --direct`
 * (broker/ops/cmd_lag.c) both judge a channel with cv_lag_status_eval and both
 * write the document with cv_lagdoc, so the two cannot drift apart.
 *
 * Status per channel, from samples of the channel's cumulative acked and
 * consumed counts, its lag, its records in flight and since when its lag
 * has been > 0, the last sample being "now". The window is the samples of
 * the last `window_ms` plus the newest sample before them (the baseline).
 * Rules, first match wins (Burrow's rules applied to ack progress):
 *   ERR   a store is down and acks cannot be made.
 *   OK    the lag now is 0, or the window spans less than half of window_ms
 *         (not enough history to judge).
 *   STALL acks did not advance over the window, the lag has been > 0 for
 *         the whole window, and records were consumed in the window or are
 *         in flight now: the pipeline has the records but does not get them
 *         acked (a store blocks, acks are not delivered).
 *   STOP  as STALL, but nothing was consumed and nothing is in flight:
 *         records wait in Kafka and nobody takes them.
 *   WARN  acks advance but the lag never shrank from one sample to the next
 *         and is larger at the end than at the start: falling behind.
 *   OK    otherwise.
 * The broker samples every tick (≈1 s, metrics.h); `chatvault lag --direct`
 * has two snapshots --interval apart (cv_lag_status_eval_pair).
 *
 * The document (README.md, "Observability"): one JSON object, written
 * compact with its members in a fixed order. A broker writes every member;
 * a direct computation (source "direct") writes the members it can know and
 * says so with "source":"direct". Members marked [broker] below are written
 * only by a broker, [direct] only by a direct computation.
 *   {"source":"direct" [direct], "time_ms", "version", "uptime_s" [broker],
 *    "window_s", "tick_age_s" [broker], "degraded",
 *    "degraded_since_ms" [broker], "kafka":{"up","brokers_up",
 *    "brokers_known","down_since_ms"} [broker], "channels_overflow" [broker],
 *    "channels":[{"channel","status","why","rate","lag_messages",
 *      "lag_seconds","inflight","consumed","acked","stored_postgres" [broker],
 *      "stored_log" [broker],"rejected","duplicate","p50_s" [broker],
 *      "p99_s" [broker],"partitions":[{"topic","partition","high_watermark",
 *        "end_offset","acked_offset","consumed_offset" [broker],
 *        "stored_offset" [direct],"lag_messages","lag_seconds","inflight",
 *        "assigned"}]}],
 *    "status", "totals":{"lag_messages","lag_seconds","inflight","rate",
 *      "consumed","acked","rejected" [broker],"duplicate" [broker],
 *      "batches" [broker]},
 *    "latency":{"p50_s","p99_s","pg_commit_p99_s" [broker],
 *      "log_fsync_p99_s" [broker]}, "probe" [broker],
 *    "drill":{"interval_s","last_ms","last_success_ms","last_passed",
 *      "last_seconds","last_sampled","last_detail"} [broker],
 *    "stores":[{"name","up","errors" [broker],"last_error_ms" [broker],
 *      "last_error"}], "rejected_recent":[{"time_ms","channel","reason",
 *      "error"}]}
 * Offsets and counts are exact integers; seconds and rates are rounded as
 * the fields' comments say; a quantile that has no observations is null.
 * "status" is the worst channel status, ERR when a store is down; the
 * totals are the sums over the channels (lag_seconds: the maximum).
 */
#ifndef CV_LAG_H
#define CV_LAG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* In order of severity: a larger value is worse. */
typedef enum cv_lag_status {
    CV_LAG_OK = 0,
    CV_LAG_WARN,
    CV_LAG_STALL,
    CV_LAG_STOP,
    CV_LAG_ERR,
    CV_LAG__COUNT
} cv_lag_status;

/* "OK", "WARN", "STALL", "STOP", "ERR"; "?" for anything else. */
const char *cv_lag_status_name(cv_lag_status s);

/* The status named `name` (as cv_lag_status_name writes it). Returns 0, or
 * -EINVAL for an unknown name (*ret_status untouched). */
int cv_lag_status_parse(const char *name, cv_lag_status *ret_status);

/* One observation of a channel. Counts are cumulative since start. */
typedef struct cv_lag_sample {
    int64_t t_ms;         /* monotonic time, > 0 */
    int64_t consumed;     /* records consumed */
    int64_t acked;        /* records whose ack was delivered */
    int64_t lag;          /* ack lag in messages */
    int64_t inflight;     /* consumed, ack not delivered yet */
    int64_t lag_since_ms; /* monotonic time since which lag > 0 without a
                             break; 0 when the lag is 0 */
} cv_lag_sample;

/* Applies the rules above to samples `s[0..n)` in time order, the last
 * being "now". `ret_why`, when not NULL, gets a short static explanation. */
cv_lag_status cv_lag_status_eval(const cv_lag_sample *s, size_t n, int64_t window_ms,
                                 bool stores_down, const char **ret_why);

/* The rules over two snapshots: the window is the time between them and
 * the lag counts as > 0 since `before` when it was > 0 at both (the
 * samples' lag_since_ms are ignored). */
cv_lag_status cv_lag_status_eval_pair(const cv_lag_sample *before,
                                      const cv_lag_sample *after, bool stores_down,
                                      const char **ret_why);

/* ---- The /api/lag document ---- */

typedef enum cv_lagdoc_source {
    CV_LAGDOC_BROKER = 0, /* a running broker's metrics */
    CV_LAGDOC_DIRECT,     /* computed from Kafka and PostgreSQL */
} cv_lagdoc_source;

typedef struct cv_lagdoc_head {
    cv_lagdoc_source source;
    int64_t time_ms; /* wall clock, Unix ms */
    const char *version;
    double window_s; /* %.1f */
    bool degraded;
    /* [broker] */
    double uptime_s;   /* %.1f */
    double tick_age_s; /* %.1f; -1 before the first tick */
    int64_t degraded_since_ms;
    bool kafka_up;
    int kafka_brokers_up, kafka_brokers_known;
    int64_t kafka_down_since_ms;
    bool channels_overflow;
} cv_lagdoc_head;

typedef struct cv_lagdoc_channel {
    const char *channel;
    cv_lag_status status;
    const char *why;
    double rate;        /* acks per second, %.2f */
    int64_t lag;        /* "lag_messages" */
    double lag_seconds; /* %.3f */
    int64_t inflight, consumed, acked, rejected, duplicate;
    /* [broker] */
    int64_t stored_postgres, stored_log;
    double p50_s, p99_s; /* %.6g; < 0: null */
} cv_lagdoc_channel;

typedef struct cv_lagdoc_partition {
    const char *topic;
    int32_t partition;
    int64_t high_watermark, end_offset, acked_offset;
    int64_t consumed_offset; /* [broker] next offset consumed */
    int64_t stored_offset;   /* [direct] chatvault.kafka_offsets' next offset */
    int64_t lag;             /* "lag_messages" */
    double lag_seconds;      /* %.3f */
    int64_t inflight;
    bool assigned;
} cv_lagdoc_partition;

typedef struct cv_lagdoc_probe {
    const char *topic;
    int64_t sent, acked, last_ack_ms;
    double last_latency_s, p99_s; /* %.6g; < 0: null */
} cv_lagdoc_probe;

/* The restore drills (broker/drill.h), as chatvault.restore_drills says. */
typedef struct cv_lagdoc_drill {
    int64_t interval_s;               /* 0: this broker schedules none */
    int64_t last_ms, last_success_ms; /* 0: null */
    bool last_passed;
    double last_seconds; /* %.3f */
    int64_t last_sampled;
    const char *last_detail;
} cv_lagdoc_drill;

typedef struct cv_lagdoc_store {
    const char *name;
    bool up;
    int64_t errors, last_error_ms; /* [broker] */
    const char *last_error;
} cv_lagdoc_store;

typedef struct cv_lagdoc_reject {
    int64_t time_ms;
    const char *channel, *reason, *error;
} cv_lagdoc_reject;

typedef struct cv_lagdoc_tail {
    bool stores_down;    /* the status is ERR whatever the channels say */
    double p50_s, p99_s; /* sent→ack, %.6g; < 0: null */
    double pg_commit_p99_s, log_fsync_p99_s; /* [broker] %.6g; < 0: null */
    int64_t batches;                         /* [broker] */
    const cv_lagdoc_probe *probe;            /* [broker] NULL: null */
    const cv_lagdoc_drill *drill;            /* [broker] NULL: null */
    const cv_lagdoc_store *stores;
    size_t nstores;
    const cv_lagdoc_reject *rejects; /* newest first */
    size_t nrejects;
} cv_lagdoc_tail;

typedef struct cv_lagdoc cv_lagdoc;

/* Starts a document. Strings are copied; nothing given is kept. Returns 0
 * or -ENOMEM. */
int cv_lagdoc_new(const cv_lagdoc_head *head, cv_lagdoc **ret_doc);

/* Appends a channel, then its partitions to the channel added last.
 * Returns 0 or -ENOMEM (the document is then unusable but must be freed). */
int cv_lagdoc_add_channel(cv_lagdoc *doc, const cv_lagdoc_channel *c);
int cv_lagdoc_add_partition(cv_lagdoc *doc, const cv_lagdoc_partition *p);

/* Finishes the document (status, totals, the tail) and appends it to `out`
 * followed by a newline. Returns 0, -ENOMEM or the cv_buf error. */
int cv_lagdoc_render(cv_lagdoc *doc, const cv_lagdoc_tail *tail, cv_buf *out);

/* The status the document says so far (after render: its "status"). */
cv_lag_status cv_lagdoc_status(const cv_lagdoc *doc);

/* Accepts NULL; returns NULL. */
cv_lagdoc *cv_lagdoc_free(cv_lagdoc *doc);

#endif
