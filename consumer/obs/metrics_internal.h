/*
 * obs/metrics_internal.h — private to the cv_metrics module (obs/metrics*.c):
 * the layout of its state, which one mutex (cv_metrics.lock) guards, and
 * the functions one of its files calls in another, prefixed cv_metrics_i_.
 * Every cv_metrics_i_ function is called with the lock held. The files:
 *
 *   metrics.c        the state: histograms, channels, the partition table,
 *                    the observer callbacks (pipeline thread), lifetime,
 *                    Kafka's broker state
 *   metrics_eval.c   what the renderers evaluate from the state: channel
 *                    aggregates, rates, quantiles, status, the history
 *                    points, readiness
 *   metrics_prom.c   the Prometheus text exposition
 *   metrics_json.c   the /api/lag and /api/history JSON documents
 *
 * Layout of the state:
 *
 *   channels[0..nchannels)   counters and status samples; the last slot,
 *                            index max_channels, is "_other"
 *   parts[0..nparts)         one per (topic, partition) seen or assigned,
 *                            found through an open-addressing index; each
 *                            holds the acked / consumed positions, the high
 *                            watermark, the queue of consumed-unacked
 *                            records and the high-watermark history
 *
 * Nothing outside obs/metrics*.c includes it; the public API is
 * obs/metrics.h.
 */
#ifndef CV_METRICS_INTERNAL_H
#define CV_METRICS_INTERNAL_H

#include "obs/metrics.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ingest/envelope.h"
#include "obs/lag.h"

#define NB(a) (sizeof(a) / sizeof((a)[0]))

/* Stops a renderer at the first cv_buf error: `r` and a label `out`. */
#define CK(x)                                                                            \
    do {                                                                                 \
        if ((r = (x)) < 0)                                                               \
            goto out;                                                                    \
    } while (0)

/* ---- the state -------------------------------------------------------- */

#define OTHER_CHANNEL "_other"
#define SAMPLES_MAX 64
#define HW_HISTORY_MAX 64
#define LAT_SNAPS 32
#define RECENT_REJECTS 10
#define PARTS_MAX 65536
#define NSTATUS 5 /* CHATVAULT__V1__ACK_STATUS__* 0..4 */

typedef struct mchannel {
    char *name;
    int64_t consumed, acked, rejected, duplicate;
    int64_t stored[2]; /* [0] PostgreSQL, [1] log */
    int64_t acked_by_status[NSTATUS];
    int64_t rejected_by_reason[CV_REJECT__COUNT];
    cv_lag_sample samples[SAMPLES_MAX]; /* ring */
    size_t nsamples, sample_head;       /* head: index of the oldest */
    cv_hist latency;                    /* sent → ack, this channel's acks */
    struct hseries *hist;               /* NULL: none kept (see metrics.h) */
} mchannel;

/* History (see metrics.h). Points of all series are written together, so
 * their times live once, in cv_metrics; a series written since sequence
 * number `since` holds points [since, seq). Floats: the values are for
 * charts, and 20 bytes a point keep a channel at
 *   3600 × 20 (seconds) + 1440 × 20 (minutes) + 32 × 18 × 8 (latency
 *   snapshots) = 105,456 bytes on x86-64; the per-channel latency histogram
 *   in mchannel adds ~230 bytes per slot. */
#define HIST_SEC_POINTS 3600
#define HIST_MIN_POINTS 1440
/* The ack-latency buckets: NB(ack_latency_bounds) + 1 (metrics.c checks). */
#define LAT_BUCKETS 18

typedef struct hpoint {
    float lag, age_s, rate, p50_s, p99_s; /* NaN: none */
} hpoint;

typedef struct hseries {
    hpoint sec[HIST_SEC_POINTS];
    hpoint min[HIST_MIN_POINTS];
    hpoint acc; /* the minute in progress: max, but rate is a sum */
    int64_t acc_n;
    uint64_t since_sec, since_min;
    /* The channel's latency counts at each of the global lat_snaps slots,
     * for its quantiles over the window. */
    uint64_t lat_snaps[LAT_SNAPS][LAT_BUCKETS];
} hseries;

typedef struct inflight {
    int64_t offset, ts_us;
} inflight;

typedef struct hwmark {
    int64_t hw, seen_us;
} hwmark;

typedef struct mpart {
    char *topic;
    int32_t partition;
    size_t channel;
    bool assigned;
    bool probe;            /* the end-to-end probe's topic */
    int64_t acked_next;    /* -1: unknown */
    int64_t consumed_next; /* -1: nothing consumed */
    int64_t high, low;     /* -1: unknown */
    int64_t lag_since_ms;  /* monotonic; 0 while the lag is 0 */
    inflight *q;           /* ring of consumed-unacked records */
    size_t qcap, qhead, qlen;
    hwmark hws[HW_HISTORY_MAX];
    size_t nhws;
} mpart;

typedef struct mstore {
    bool seen, down;
    int64_t errors, writes;
    int64_t last_error_ms;
    char last_error[256];
} mstore;

typedef struct rejnote {
    int64_t time_ms;
    char channel[64];
    const char *reason;
    char error[200];
} rejnote;

struct cv_metrics {
    pthread_mutex_t lock;
    cv_pipeline_observer obs;
    int64_t (*now_us)(void);
    int64_t (*mono_ms)(void);
    char *prefix;
    char *version;
    size_t max_channels;
    int64_t window_ms;
    int64_t start_us;

    mchannel *channels; /* max_channels + 1 slots */
    size_t nchannels;   /* named ones in use; "_other" is always at max_channels */
    bool other_used;

    mpart **parts;
    size_t nparts, partscap;
    int32_t *index; /* open addressing over parts; -1 empty */
    size_t indexcap;

    cv_hist ack_latency, pg_commit, log_fsync, batch_size, ack_txn;
    int64_t ack_txn_aborts;
    cv_hist lat_snaps[LAT_SNAPS];
    int64_t lat_snap_ms[LAT_SNAPS];
    size_t nlat_snaps, lat_snap_head;

    mstore stores[2];
    int64_t torn_tails, torn_bytes, torn_records;
    bool degraded;
    int64_t degraded_since_us;
    int64_t log_generations;
    int64_t batches;
    int64_t last_tick_ms; /* monotonic; 0 before the first tick */
    int64_t ticks;

    rejnote rejects[RECENT_REJECTS];
    size_t nrejects, reject_head;

    int kafka_up, kafka_known;   /* brokers up / known, from librdkafka stats */
    int64_t kafka_down_since_us; /* 0: not down (some broker up, or none known) */
    int64_t kafka_outages;
    /* History: times (wall ms) of the points, the totals' series. */
    int64_t hsec_t[HIST_SEC_POINTS];
    uint64_t hsec_seq; /* points written; the newest is at (seq - 1) % N */
    int64_t hmin_t[HIST_MIN_POINTS];
    uint64_t hmin_seq;
    int64_t hmin_cur;     /* wall minute (ms / 60000) in progress; -1: none */
    int64_t hist_last_ms; /* monotonic time of the newest point; 0: none */
    hseries *hist_total;

    bool drill_known; /* cv_metrics_set_drill was called */
    cv_metrics_drill drill;
    bool retention_known; /* cv_metrics_retention_pass was called */
    cv_metrics_retention retention;
    uint64_t retention_segments, retention_records, retention_bytes, retention_rows;

    char *probe_topic; /* NULL: no probe */
    cv_hist probe_latency;
    int64_t probe_sent, probe_acked, probe_last_ack_us, probe_last_latency_us;
};

/* Every channel's sample (and, with now_us > 0, the age of its oldest
 * unacked record) as things are now: cv_metrics_i_channel_aggregates. */
typedef struct chagg {
    cv_lag_sample s;
    int64_t age_us;
} chagg;

/* A channel as the renderers show it: cv_metrics_i_channel_view. */
typedef struct chview {
    cv_lag_sample now;
    cv_lag_status status;
    const char *why;
    double rate; /* acks per second over the window */
    int64_t lag_age_us;
} chview;

/* ---- what one file calls in another, by the file that has it --------- */

/* metrics.c: the partition table */
const char *cv_metrics_i_store_name(size_t i);
int64_t cv_metrics_i_part_end(const mpart *p);
int64_t cv_metrics_i_part_lag(const mpart *p);
int64_t cv_metrics_i_part_lag_age_us(const mpart *p, int64_t now_us);
int64_t cv_metrics_i_part_inflight(const mpart *p);

/* metrics_eval.c: evaluation shared by the renderers */
chagg *cv_metrics_i_channel_aggregates(const cv_metrics *m, int64_t now_ms,
                                       int64_t now_us);
bool cv_metrics_i_stores_down(const cv_metrics *m);
bool cv_metrics_i_channel_in_use(const cv_metrics *m, size_t ci);
int cv_metrics_i_lat_base_slot(const cv_metrics *m, int64_t now_ms);
double cv_metrics_i_channel_quantile(const mchannel *c, int slot, double q);
chview cv_metrics_i_channel_view(const cv_metrics *m, size_t ci, const chagg *agg,
                                 int64_t now_ms);
hpoint cv_metrics_i_hacc_point(const hseries *h);
void cv_metrics_i_history_record(cv_metrics *m, int64_t now_ms, int64_t now_us,
                                 const chagg *agg);
void cv_metrics_i_history_catch_up(cv_metrics *m, int64_t now_ms, int64_t now_us);

#endif
