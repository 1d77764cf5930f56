/*
 * metrics — what the pipeline did, per channel and partition, for the
 * Prometheus endpoint, the /api/lag JSON, the dashboard and `chatvault lag`.
 *
 * cv_metrics implements a cv_pipeline_observer. The pipeline thread feeds it;
 * any other thread renders it. One mutex guards everything; callbacks hold it
 * for a few microseconds per batch, renderers for one pass over the state.
 *
 * Ack lag, per partition:
 *   - in messages: end − acked, where `acked` is the next offset whose ack is
 *     delivered (everything below it is acked) and `end` is the larger of the
 *     high watermark read at the last tick and the next offset consumed. So
 *     consumed-but-unacked records count, and so do records still in Kafka.
 *   - in seconds: the age of the oldest unacked message. When that message
 *     was consumed it is exact: now − its sent_at_us (else its Kafka
 *     timestamp, else the time it was consumed). When every unacked record
 *     is still in Kafka (not consumed yet), the age is measured from the
 *     first tick whose high watermark showed the record existed, so it is a
 *     lower bound, at most one tick (≈1 s) short; the history of high
 *     watermarks kept for that is bounded (64 entries per partition; when it
 *     is full, intermediate entries are merged, which can only make the age
 *     younger). Consumed-unacked records are queued per partition up to
 *     CV_METRICS_INFLIGHT_MAX; past it newer records are not queued and the
 *     age of a record missing from the queue is taken from the next queued
 *     one (younger: an underestimate).
 *   Partitions no longer assigned to this instance leave the lag once their
 *   records in flight are acked.
 *
 * Status per channel: the rules of lag.h (cv_lag_status_eval), applied to
 * samples taken at every tick (≈1 s) plus one sample taken at render time
 * (so a pipeline blocked inside a store, which stops ticking, is still
 * judged), over the last `window_ms`. A store is down for the rules when a
 * write to it failed and no write to it succeeded since, unless ack.policy
 * = any runs degraded on the other store.
 *
 * Label cardinality: the first `max_channels` channels seen get their own
 * label; later ones are counted under channel="_other" (their per-partition
 * lag is summed by partition number there).
 *
 * History, for the dashboard's charts (/api/history): at every tick one
 * point per channel, for "_other" and for the totals, holding what /api/lag
 * shows at that moment: lag in messages, lag in seconds (age of the oldest
 * unacked), ack rate over the window and the sent→ack p50/p99 over the
 * window. Two fixed rings: the last 3600 points (1 h at one per tick, ≈1 s)
 * and the last 1440 minutes (24 h). A minute point aggregates that minute's
 * seconds: the maximum of lag, lag seconds, p50 and p99 (a spike is never
 * hidden), the mean of the rate. While the pipeline is blocked it does not
 * tick; points are then taken when /api/lag or /api/history is asked (at
 * most one per second), so a stall shows while anyone watches.
 * Memory, allocated once per channel when it first appears and never grown:
 * about 105 KB per channel (see hseries in metrics_internal.h), for at most
 * min(max_channels, CV_METRICS_HISTORY_CHANNELS) channels plus "_other" and
 * the totals: ≤ 10.8 MB with the default max_channels = 100. Channels past
 * that cap have no history and no per-channel latency (their points still
 * count in the totals).
 */
#ifndef CV_METRICS_H
#define CV_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ingest/pipeline.h"
#include "obs/lag.h"
#include "util.h"

/* ---- Pure parts (unit-tested) ---- */

/* A fixed-bucket histogram of integer observations (µs or counts). */
#define CV_HIST_MAX_BUCKETS 24
typedef struct cv_hist {
    const int64_t *bounds; /* upper bounds, ascending; +Inf is implicit */
    size_t nbounds;        /* ≤ CV_HIST_MAX_BUCKETS */
    uint64_t counts[CV_HIST_MAX_BUCKETS + 1]; /* per bucket, last is +Inf */
    uint64_t count;
    int64_t sum;
} cv_hist;

void cv_hist_init(cv_hist *h, const int64_t *bounds, size_t nbounds);
void cv_hist_observe(cv_hist *h, int64_t v);
/* The q-quantile (0..1) of the observations in `h` minus those in `base`
 * (NULL: none), interpolated linearly inside a bucket as Prometheus'
 * histogram_quantile does; observations past the last bound give the last
 * bound. Returns -1 when there are no observations. */
double cv_hist_quantile(const cv_hist *h, const cv_hist *base, double q);

/* ---- The observer ---- */

#define CV_METRICS_INFLIGHT_MAX (1u << 18)

typedef struct cv_metrics cv_metrics;

typedef struct cv_metrics_conf {
    const char *topics_prefix; /* "chat.": channel = topic minus it */
    size_t max_channels;       /* channels with their own label (≥ 1) */
    int64_t window_ms;         /* status window; 0 means 10000 */
    const char *version;       /* for chatvault_build_info */
    const char *probe_channel; /* the end-to-end probe's channel, or NULL: its
                                  acks feed chatvault_probe_latency_seconds */
    /* Clocks, for tests: NULL means cv_now_us (wall, µs) and cv_mono_ms
     * (monotonic, ms). */
    int64_t (*now_us)(void);
    int64_t (*mono_ms)(void);
} cv_metrics_conf;

/* Channels that keep a history of their own (see "History" above). */
#define CV_METRICS_HISTORY_CHANNELS 1024

/* Returns 0, -EINVAL for a bad conf, or -ENOMEM. */
int cv_metrics_new(const cv_metrics_conf *conf, cv_metrics **ret_metrics);

/* Accepts NULL; returns NULL. The pipeline must be freed first. */
cv_metrics *cv_metrics_free(cv_metrics *m);

/* The observer to put in cv_pipeline_conf.observer; valid as long as `m`. */
const cv_pipeline_observer *cv_metrics_observer(cv_metrics *m);

/* Appends the Prometheus text exposition (format 0.0.4) to `out`.
 * Returns 0 or the cv_buf error. Thread-safe. */
int cv_metrics_render_prometheus(cv_metrics *m, cv_buf *out);

/* Appends the /api/lag JSON document to `out` (lag.h, source broker).
 * Returns 0, -ENOMEM or the cv_buf error. Thread-safe. */
int cv_metrics_render_lag_json(cv_metrics *m, cv_buf *out);

typedef enum cv_history_range {
    CV_HISTORY_1H = 0, /* one point per tick (≈1 s), the last hour */
    CV_HISTORY_24H,    /* one point per minute, the last 24 h, plus the
                          minute in progress */
} cv_history_range;

/* Appends the /api/history JSON document for `channel` (NULL: the totals)
 * to `out`: {"channel", "range", "step_s", "time_ms", "t_ms": [...],
 * "lag_messages": [...], "lag_seconds": [...], "rate": [...], "p50_s":
 * [...], "p99_s": [...]}, oldest first, null where there is no value (no
 * acks in the window). Returns 0, -ENOENT when no channel of that name
 * keeps a history (errbuf says why), or the cv_buf error. Thread-safe. */
int cv_metrics_render_history_json(cv_metrics *m, const char *channel,
                                   cv_history_range range, cv_buf *out, char *errbuf,
                                   size_t errlen);

/* The end-to-end probe published one message now. Thread-safe. */
void cv_metrics_probe_sent(cv_metrics *m);

/* The consumer's view of the Kafka cluster: of the brokers it knows
 * (KNOWN; 0 before the first metadata), UP hold a working connection.
 * Fed from librdkafka's statistics (cv_metrics_kafka_stats). Thread-safe. */
void cv_metrics_kafka_state(cv_metrics *m, int up, int known);

/* Parses librdkafka statistics JSON (the stats callback's document, with
 * jansson) for the brokers' connection states and feeds
 * cv_metrics_kafka_state. Brokers known only by their bootstrap address,
 * and coordinators' aliases, are not counted. Thread-safe. */
void cv_metrics_kafka_stats(cv_metrics *m, const char *json, size_t len);

/* What the restore drills say (chatvault.restore_drills, which the broker
 * reads; see broker/drill.h). Until the first call no drill family is
 * exported. Thread-safe. */
typedef struct cv_metrics_drill {
    int64_t interval_s;               /* drill.interval_s; 0: not scheduled */
    int64_t last_us, last_success_us; /* Unix us of the newest drill's end,
                                         and of the newest that passed; 0: none */
    bool last_passed;
    double last_seconds; /* restore + verify of the newest */
    int64_t last_sampled;
    char last_detail[256]; /* why the newest failed */
} cv_metrics_drill;
void cv_metrics_set_drill(cv_metrics *m, const cv_metrics_drill *d);

/* What the broker's scheduled retention did (broker/daemon/retsched.h);
 * no retention family is exported before the first call. */
typedef struct cv_metrics_retention {
    int64_t interval_s; /* retention.interval_s */
    int64_t last_us;    /* Unix us the last pass ended */
    bool last_ok;       /* it completed */
    uint64_t held;      /* partitions held in the last pass */
} cv_metrics_retention;
/* Records a pass: `r` and the counts it dropped (added to the totals). */
void cv_metrics_retention_pass(cv_metrics *m, const cv_metrics_retention *r,
                               uint64_t segments, uint64_t records, uint64_t bytes,
                               uint64_t rows);

/* Ready: the pipeline ticked in the last 3 windows, Kafka is reachable (at
 * least one broker up, or the outage is younger than 5 s), acks can be made (no
 * store is down, or ack.policy = any runs degraded on the other one), no
 * channel is STALL, STOP or ERR. When not ready, `why` says what is wrong.
 * Thread-safe. */
bool cv_metrics_ready(cv_metrics *m, char *why, size_t whylen);

#endif
