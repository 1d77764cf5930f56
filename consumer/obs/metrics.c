/*
 * metrics — see metrics.h for the rules. Layout of the state:
 *
 *   channels[0..nchannels)   counters and status samples; the last slot,
 *                            index max_channels, is "_other"
 *   parts[0..nparts)         one per (topic, partition) seen or assigned,
 *                            found through an open-addressing index; each
 *                            holds the acked / consumed positions, the high
 *                            watermark, the queue of consumed-unacked
 *                            records and the high-watermark history
 */
#include "obs/metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chatvault.pb-c.h"

/* ---- histograms ---- */

void cv_hist_init(cv_hist *h, const int64_t *bounds, size_t nbounds) {
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->nbounds = nbounds < CV_HIST_MAX_BUCKETS ? nbounds : CV_HIST_MAX_BUCKETS;
}

void cv_hist_observe(cv_hist *h, int64_t v) {
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

double cv_hist_quantile(const cv_hist *h, const cv_hist *base, double q) {
    uint64_t counts[CV_HIST_MAX_BUCKETS + 1], total = 0;
    for (size_t i = 0; i <= h->nbounds; i++) {
        uint64_t b = base ? base->counts[i] : 0;
        counts[i] = h->counts[i] >= b ? h->counts[i] - b : 0;
        total += counts[i];
    }
    if (total == 0)
        return -1;
    if (q < 0)
        q = 0;
    if (q > 1)
        q = 1;
    double rank = q * (double)total;
    uint64_t cum = 0;
    for (size_t i = 0; i <= h->nbounds; i++) {
        if (counts[i] == 0 || (double)(cum + counts[i]) < rank) {
            cum += counts[i];
            continue;
        }
        if (i == h->nbounds)
            return h->nbounds ? (double)h->bounds[h->nbounds - 1] : 0;
        double lo = i ? (double)h->bounds[i - 1] : 0, hi = (double)h->bounds[i];
        return lo + (hi - lo) * (rank - (double)cum) / (double)counts[i];
    }
    return h->nbounds ? (double)h->bounds[h->nbounds - 1] : 0;
}

/* Bucket bounds. Latencies in µs. */
static const int64_t ack_latency_bounds[] = {
    1000,    2500,    5000,    10000,    25000,    50000,    100000,    250000,   500000,
    1000000, 2500000, 5000000, 10000000, 30000000, 60000000, 120000000, 300000000};
static const int64_t pg_commit_bounds[] = {250,    500,     1000,    2500,    5000,
                                           10000,  25000,   50000,   100000,  250000,
                                           500000, 1000000, 2500000, 5000000, 10000000};
static const int64_t log_fsync_bounds[] = {50,     100,    250,    500,    1000,
                                           2500,   5000,   10000,  25000,  50000,
                                           100000, 250000, 500000, 1000000};
static const int64_t ack_txn_bounds[] = {1000,    2500,    5000,     10000,   25000,
                                         50000,   100000,  250000,   500000,  1000000,
                                         2500000, 5000000, 10000000, 30000000};
static const int64_t batch_size_bounds[] = {1,   2,   5,    10,   20,   50,    100,
                                            200, 500, 1000, 2000, 5000, 10000, 20000};
#define NB(a) (sizeof(a) / sizeof((a)[0]))

/* ---- state ---- */

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
#define LAT_BUCKETS (NB(ack_latency_bounds) + 1)

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

    char *probe_topic; /* NULL: no probe */
    cv_hist probe_latency;
    int64_t probe_sent, probe_acked, probe_last_ack_us, probe_last_latency_us;
};

static size_t store_index(unsigned store) {
    return store == CV_STORE_LOG ? 1 : 0;
}
static const char *store_name(size_t i) {
    return i ? "log" : "postgres";
}

static uint64_t hash_tp(const char *topic, int32_t partition) {
    uint64_t h = 1469598103934665603u;
    for (const unsigned char *p = (const unsigned char *)topic; *p; p++)
        h = (h ^ *p) * 1099511628211u;
    h = (h ^ (uint32_t)partition) * 1099511628211u;
    return h ^ (h >> 29);
}

static mpart *part_find(cv_metrics *m, const char *topic, int32_t partition) {
    if (!m->indexcap)
        return NULL;
    size_t mask = m->indexcap - 1;
    for (size_t i = hash_tp(topic, partition) & mask;; i = (i + 1) & mask) {
        int32_t k = m->index[i];
        if (k < 0)
            return NULL;
        mpart *p = m->parts[k];
        if (p->partition == partition && strcmp(p->topic, topic) == 0)
            return p;
    }
}

static void index_insert(cv_metrics *m, size_t k) {
    size_t mask = m->indexcap - 1;
    size_t i = hash_tp(m->parts[k]->topic, m->parts[k]->partition) & mask;
    while (m->index[i] >= 0)
        i = (i + 1) & mask;
    m->index[i] = (int32_t)k;
}

static int index_rebuild(cv_metrics *m, size_t cap) {
    int32_t *idx = malloc(cap * sizeof(*idx));
    if (!idx)
        return -ENOMEM;
    free(m->index);
    m->index = idx;
    m->indexcap = cap;
    for (size_t i = 0; i < cap; i++)
        idx[i] = -1;
    for (size_t k = 0; k < m->nparts; k++)
        index_insert(m, k);
    return 0;
}

static hseries *hseries_new(const cv_metrics *m) {
    hseries *h = calloc(1, sizeof(*h));
    if (h) {
        h->since_sec = m->hsec_seq;
        h->since_min = m->hmin_seq;
    }
    return h;
}

/* The channel slot for a topic: its own while there is room, else
 * "_other". */
static size_t channel_for(cv_metrics *m, const char *topic) {
    size_t plen = strlen(m->prefix);
    const char *name =
        strncmp(topic, m->prefix, plen) == 0 && topic[plen] ? topic + plen : topic;
    for (size_t i = 0; i < m->nchannels; i++)
        if (strcmp(m->channels[i].name, name) == 0)
            return i;
    if (m->nchannels < m->max_channels) {
        char *copy = strdup(name);
        if (copy) {
            mchannel *c = &m->channels[m->nchannels];
            c->name = copy;
            cv_hist_init(&c->latency, ack_latency_bounds, NB(ack_latency_bounds));
            if (m->nchannels < CV_METRICS_HISTORY_CHANNELS)
                c->hist = hseries_new(m); /* NULL: this one has none */
            return m->nchannels++;
        }
    }
    m->other_used = true;
    return m->max_channels;
}

static void part_free(mpart *p) {
    if (!p)
        return;
    free(p->q);
    free(p->topic);
    free(p);
}

static mpart *part_get(cv_metrics *m, const char *topic, int32_t partition) {
    mpart *p = part_find(m, topic, partition);
    if (p || m->nparts >= PARTS_MAX)
        return p;
    if (m->nparts == m->partscap) {
        size_t cap = m->partscap ? m->partscap * 2 : 64;
        mpart **np = realloc(m->parts, cap * sizeof(*np));
        if (!np)
            return NULL;
        m->parts = np;
        m->partscap = cap;
    }
    p = calloc(1, sizeof(*p));
    if (!p || !(p->topic = strdup(topic))) {
        free(p);
        return NULL;
    }
    p->partition = partition;
    p->channel = channel_for(m, topic);
    p->probe = m->probe_topic && strcmp(topic, m->probe_topic) == 0;
    p->acked_next = p->consumed_next = p->high = p->low = -1;
    m->parts[m->nparts++] = p;
    if (m->nparts * 2 > m->indexcap) {
        if (index_rebuild(m, m->indexcap ? m->indexcap * 2 : 256) < 0) {
            m->nparts--;
            part_free(p);
            return NULL;
        }
    } else {
        index_insert(m, m->nparts - 1);
    }
    return p;
}

static void q_push(mpart *p, int64_t offset, int64_t ts_us) {
    if (p->qlen == p->qcap) {
        if (p->qcap >= CV_METRICS_INFLIGHT_MAX)
            return; /* full: the age of later records is underestimated */
        size_t cap = p->qcap ? p->qcap * 2 : 256;
        inflight *nq = malloc(cap * sizeof(*nq));
        if (!nq)
            return;
        for (size_t i = 0; i < p->qlen; i++)
            nq[i] = p->q[(p->qhead + i) % p->qcap];
        free(p->q);
        p->q = nq;
        p->qcap = cap;
        p->qhead = 0;
    }
    p->q[(p->qhead + p->qlen) % p->qcap] = (inflight){offset, ts_us};
    p->qlen++;
}

/* Drops queued records below `next`. */
static void q_pop_below(mpart *p, int64_t next) {
    while (p->qlen && p->q[p->qhead].offset < next) {
        p->qhead = (p->qhead + 1) % p->qcap;
        p->qlen--;
    }
}

/* Drops queued records at or above `offset` (a rewind). */
static void q_drop_from(mpart *p, int64_t offset) {
    while (p->qlen && p->q[(p->qhead + p->qlen - 1) % p->qcap].offset >= offset)
        p->qlen--;
}

static void hw_note(mpart *p, int64_t hw, int64_t now_us) {
    if (p->nhws && p->hws[p->nhws - 1].hw >= hw)
        return;
    if (p->nhws == HW_HISTORY_MAX) { /* merge: keep the oldest entry */
        memmove(&p->hws[1], &p->hws[2], (HW_HISTORY_MAX - 2) * sizeof(hwmark));
        p->nhws--;
    }
    p->hws[p->nhws++] = (hwmark){hw, now_us};
}

static void hw_prune(mpart *p) {
    size_t k = 0;
    while (k < p->nhws && p->hws[k].hw <= p->acked_next)
        k++;
    if (k) {
        memmove(p->hws, p->hws + k, (p->nhws - k) * sizeof(hwmark));
        p->nhws -= k;
    }
}

static int64_t part_end(const mpart *p) {
    return p->high > p->consumed_next ? p->high : p->consumed_next;
}

static int64_t part_lag(const mpart *p) {
    if (p->acked_next < 0) /* position not known yet: no lag can be claimed */
        return 0;
    int64_t from = p->acked_next > p->low ? p->acked_next : p->low;
    int64_t lag = part_end(p) - from;
    return lag > 0 ? lag : 0;
}

/* Age of the oldest unacked record in µs (0 when nothing is unacked). */
static int64_t part_lag_age_us(const mpart *p, int64_t now_us) {
    if (part_lag(p) == 0)
        return 0;
    int64_t t = 0;
    if (p->qlen)
        t = p->q[p->qhead].ts_us;
    else
        for (size_t i = 0; i < p->nhws; i++)
            if (p->hws[i].hw > p->acked_next) {
                t = p->hws[i].seen_us;
                break;
            }
    return t > 0 && now_us > t ? now_us - t : 0;
}

static int64_t part_inflight(const mpart *p) {
    if (p->consumed_next < 0 || p->acked_next < 0)
        return (int64_t)p->qlen;
    int64_t n = p->consumed_next - p->acked_next;
    return n > 0 ? n : 0;
}

/* Keeps lag_since_ms current after the positions changed. */
static void part_touch(mpart *p, int64_t now_ms) {
    if (part_lag(p) == 0)
        p->lag_since_ms = 0;
    else if (!p->lag_since_ms)
        p->lag_since_ms = now_ms;
}

/* ---- observer callbacks (pipeline thread) ---- */

static int64_t rec_time_us(int64_t sent_at_us, int64_t timestamp_ms, int64_t now_us) {
    if (sent_at_us > 0)
        return sent_at_us;
    if (timestamp_ms > 0)
        return timestamp_ms * 1000;
    return now_us;
}

static void obs_consumed(void *opaque, const cv_rec *recs, size_t n) {
    cv_metrics *m = opaque;
    int64_t now_us = m->now_us(), now_ms = m->mono_ms();
    pthread_mutex_lock(&m->lock);
    m->batches++;
    cv_hist_observe(&m->batch_size, (int64_t)n);
    mpart *p = NULL;
    for (size_t i = 0; i < n; i++) {
        const cv_rec *r = &recs[i];
        if (!p || p->partition != r->partition || strcmp(p->topic, r->topic) != 0)
            p = part_get(m, r->topic, r->partition);
        if (!p)
            continue;
        mchannel *c = &m->channels[p->channel];
        c->consumed++;
        if (r->env.reason != CV_REJECT_NONE) {
            c->rejected++;
            if ((unsigned)r->env.reason < CV_REJECT__COUNT)
                c->rejected_by_reason[r->env.reason]++;
            rejnote *rn = &m->rejects[(m->reject_head + m->nrejects) % RECENT_REJECTS];
            if (m->nrejects == RECENT_REJECTS)
                m->reject_head = (m->reject_head + 1) % RECENT_REJECTS;
            else
                m->nrejects++;
            rn->time_ms = now_us / 1000;
            snprintf(rn->channel, sizeof(rn->channel), "%s", c->name);
            rn->reason = cv_reject_reason_name(r->env.reason);
            snprintf(rn->error, sizeof(rn->error), "%s", r->env.error);
        }
        if (p->consumed_next >= 0 && r->offset < p->consumed_next)
            q_drop_from(p, r->offset); /* re-delivered after a rebalance */
        if (p->acked_next < 0 || r->offset < p->acked_next)
            p->acked_next = r->offset;
        p->consumed_next = r->offset + 1;
        int64_t sent = r->env.msg ? r->env.msg->sent_at_us : 0;
        q_push(p, r->offset, rec_time_us(sent, r->timestamp_ms, now_us));
        part_touch(p, now_ms);
    }
    pthread_mutex_unlock(&m->lock);
}

static void obs_stored(void *opaque, const cv_rec *recs, size_t n, int64_t pg_us,
                       int64_t log_us) {
    cv_metrics *m = opaque;
    pthread_mutex_lock(&m->lock);
    if (pg_us > 0) {
        cv_hist_observe(&m->pg_commit, pg_us);
        m->stores[0].seen = true;
    }
    if (log_us > 0) {
        cv_hist_observe(&m->log_fsync, log_us);
        m->stores[1].seen = true;
    }
    mpart *p = NULL;
    for (size_t i = 0; i < n; i++) {
        const cv_rec *r = &recs[i];
        if (!p || p->partition != r->partition || strcmp(p->topic, r->topic) != 0)
            p = part_get(m, r->topic, r->partition);
        if (!p)
            continue;
        mchannel *c = &m->channels[p->channel];
        if (r->stores & CV_STORE_PG)
            c->stored[0]++;
        if (r->stores & CV_STORE_LOG)
            c->stored[1]++;
    }
    pthread_mutex_unlock(&m->lock);
}

static void obs_store_error(void *opaque, unsigned store, const char *error) {
    cv_metrics *m = opaque;
    pthread_mutex_lock(&m->lock);
    mstore *s = &m->stores[store_index(store)];
    s->seen = true;
    s->down = true;
    s->errors++;
    s->last_error_ms = m->now_us() / 1000;
    snprintf(s->last_error, sizeof(s->last_error), "%s", error ? error : "");
    pthread_mutex_unlock(&m->lock);
}

static void obs_store_ok(void *opaque, unsigned store) {
    cv_metrics *m = opaque;
    pthread_mutex_lock(&m->lock);
    mstore *s = &m->stores[store_index(store)];
    s->seen = true;
    s->down = false;
    s->writes++;
    pthread_mutex_unlock(&m->lock);
}

static void obs_acked(void *opaque, const cv_ack_note *notes, size_t n) {
    cv_metrics *m = opaque;
    int64_t now_us = m->now_us(), now_ms = m->mono_ms();
    pthread_mutex_lock(&m->lock);
    mpart *p = NULL;
    for (size_t i = 0; i < n; i++) {
        const cv_ack_note *a = &notes[i];
        if (!p || p->partition != a->partition || strcmp(p->topic, a->topic) != 0)
            p = part_get(m, a->topic, a->partition);
        if (!p)
            continue;
        mchannel *c = &m->channels[p->channel];
        c->acked++;
        if (a->status >= 0 && a->status < NSTATUS)
            c->acked_by_status[a->status]++;
        if (a->status == CHATVAULT__V1__ACK_STATUS__DUPLICATE)
            c->duplicate++;
        if (a->offset + 1 > p->acked_next)
            p->acked_next = a->offset + 1;
        q_pop_below(p, p->acked_next);
        hw_prune(p);
        part_touch(p, now_ms);
        if (a->sent_at_us > 0 || a->timestamp_ms > 0) {
            int64_t lat = now_us - rec_time_us(a->sent_at_us, a->timestamp_ms, now_us);
            lat = lat > 0 ? lat : 0;
            cv_hist_observe(&m->ack_latency, lat);
            cv_hist_observe(&c->latency, lat);
            if (p->probe) {
                cv_hist_observe(&m->probe_latency, lat);
                m->probe_acked++;
                m->probe_last_ack_us = now_us;
                m->probe_last_latency_us = lat;
            }
        }
    }
    pthread_mutex_unlock(&m->lock);
}

/* Every channel's sample (and, with now_us > 0, the age of its oldest
 * unacked record) as things are now, in one pass over the partitions.
 * Returns a calloc'ed array of max_channels + 1, or NULL. Lock held. */
typedef struct chagg {
    cv_lag_sample s;
    int64_t age_us;
} chagg;

static chagg *channel_aggregates(const cv_metrics *m, int64_t now_ms, int64_t now_us) {
    chagg *a = calloc(m->max_channels + 1, sizeof(*a));
    if (!a)
        return NULL;
    for (size_t ci = 0; ci <= m->max_channels; ci++)
        a[ci].s = (cv_lag_sample){.t_ms = now_ms,
                                  .consumed = m->channels[ci].consumed,
                                  .acked = m->channels[ci].acked};
    for (size_t k = 0; k < m->nparts; k++) {
        const mpart *p = m->parts[k];
        cv_lag_sample *s = &a[p->channel].s;
        s->lag += part_lag(p);
        s->inflight += part_inflight(p);
        if (p->lag_since_ms && (!s->lag_since_ms || p->lag_since_ms < s->lag_since_ms))
            s->lag_since_ms = p->lag_since_ms;
        if (now_us > 0) {
            int64_t age = part_lag_age_us(p, now_us);
            if (age > a[p->channel].age_us)
                a[p->channel].age_us = age;
        }
    }
    return a;
}

static void channel_add_sample(mchannel *c, cv_lag_sample s) {
    if (c->nsamples == SAMPLES_MAX) {
        c->samples[c->sample_head] = s;
        c->sample_head = (c->sample_head + 1) % SAMPLES_MAX;
    } else {
        c->samples[(c->sample_head + c->nsamples) % SAMPLES_MAX] = s;
        c->nsamples++;
    }
}

static void history_record(cv_metrics *m, int64_t now_ms, int64_t now_us,
                           const chagg *agg);

typedef struct tp_obs {
    int32_t partition;
    int64_t low, high, position, assigned_at;
    bool have_wm;
} tp_obs;

static void obs_tick(void *opaque, rd_kafka_t *rk) {
    cv_metrics *m = opaque;
    int64_t now_us = m->now_us(), now_ms = m->mono_ms();
    rd_kafka_topic_partition_list_t *asg = NULL;
    tp_obs *obs = NULL;
    if (rk && rd_kafka_assignment(rk, &asg) == RD_KAFKA_RESP_ERR_NO_ERROR && asg) {
        obs = calloc((size_t)asg->cnt + 1, sizeof(*obs));
        for (int i = 0; obs && i < asg->cnt; i++)
            obs[i].assigned_at = asg->elems[i].offset;
        rd_kafka_position(rk, asg);
        for (int i = 0; obs && i < asg->cnt; i++) {
            const rd_kafka_topic_partition_t *tp = &asg->elems[i];
            obs[i].partition = tp->partition;
            obs[i].position = tp->offset;
            obs[i].have_wm = rd_kafka_get_watermark_offsets(rk, tp->topic, tp->partition,
                                                            &obs[i].low, &obs[i].high) ==
                             RD_KAFKA_RESP_ERR_NO_ERROR;
        }
    }
    pthread_mutex_lock(&m->lock);
    m->last_tick_ms = now_ms;
    m->ticks++;
    if (asg && obs) {
        for (size_t k = 0; k < m->nparts; k++)
            m->parts[k]->assigned = false;
        for (int i = 0; i < asg->cnt; i++) {
            mpart *p = part_get(m, asg->elems[i].topic, obs[i].partition);
            if (!p)
                continue;
            p->assigned = true;
            if (obs[i].have_wm && obs[i].high >= 0) {
                p->high = obs[i].high;
                p->low = obs[i].low;
                hw_note(p, obs[i].high, now_us);
                hw_prune(p);
            }
            if (p->acked_next < 0 && p->consumed_next < 0) {
                /* Where consumption starts: the offset the pipeline assigned
                 * (from PostgreSQL's kafka_offsets), else the position, else
                 * the start of the partition (auto.offset.reset = earliest). */
                if (obs[i].assigned_at >= 0)
                    p->acked_next = obs[i].assigned_at;
                else if (obs[i].position >= 0)
                    p->acked_next = obs[i].position;
                else if (obs[i].have_wm && obs[i].high >= 0)
                    p->acked_next = obs[i].low > 0 ? obs[i].low : 0;
            }
            part_touch(p, now_ms);
        }
        /* Forget partitions taken away once nothing of theirs is in flight. */
        size_t w = 0;
        bool removed = false;
        for (size_t k = 0; k < m->nparts; k++) {
            mpart *p = m->parts[k];
            if (!p->assigned && p->qlen == 0) {
                part_free(p);
                removed = true;
            } else {
                m->parts[w++] = p;
            }
        }
        m->nparts = w;
        if (removed && index_rebuild(m, m->indexcap ? m->indexcap : 256) < 0) {
            /* The old index points at freed partitions: drop it; lookups
             * miss (and re-create) until a rebuild succeeds. */
            free(m->index);
            m->index = NULL;
            m->indexcap = 0;
        }
    }
    chagg *agg = channel_aggregates(m, now_ms, now_us);
    for (size_t ci = 0; agg && ci <= m->max_channels; ci++)
        if (ci < m->nchannels || (ci == m->max_channels && m->other_used))
            channel_add_sample(&m->channels[ci], agg[ci].s);
    /* Ack-latency snapshots for the recent quantiles. */
    size_t slot = (m->lat_snap_head + m->nlat_snaps) % LAT_SNAPS;
    if (m->nlat_snaps == LAT_SNAPS)
        m->lat_snap_head = (m->lat_snap_head + 1) % LAT_SNAPS;
    else
        m->nlat_snaps++;
    m->lat_snaps[slot] = m->ack_latency;
    m->lat_snap_ms[slot] = now_ms;
    for (size_t ci = 0; ci <= m->max_channels; ci++)
        if (m->channels[ci].hist)
            memcpy(m->channels[ci].hist->lat_snaps[slot], m->channels[ci].latency.counts,
                   sizeof(m->channels[ci].hist->lat_snaps[slot]));
    if (agg)
        history_record(m, now_ms, now_us, agg);
    pthread_mutex_unlock(&m->lock);
    free(agg);
    free(obs);
    if (asg)
        rd_kafka_topic_partition_list_destroy(asg);
}

static void obs_log_generation(void *opaque, const char *topic, int32_t partition) {
    (void)topic;
    (void)partition;
    cv_metrics *m = opaque;
    pthread_mutex_lock(&m->lock);
    m->log_generations++;
    pthread_mutex_unlock(&m->lock);
}

static void obs_ack_txn(void *opaque, int64_t us, int aborted) {
    cv_metrics *m = opaque;
    pthread_mutex_lock(&m->lock);
    cv_hist_observe(&m->ack_txn, us);
    m->ack_txn_aborts += aborted;
    pthread_mutex_unlock(&m->lock);
}

static void obs_log_torn(void *opaque, uint64_t bytes, uint64_t records) {
    cv_metrics *m = opaque;
    pthread_mutex_lock(&m->lock);
    m->torn_tails++;
    m->torn_bytes += (int64_t)bytes;
    m->torn_records += (int64_t)records;
    pthread_mutex_unlock(&m->lock);
}

static void obs_degraded(void *opaque, int on) {
    cv_metrics *m = opaque;
    pthread_mutex_lock(&m->lock);
    if (on && !m->degraded)
        m->degraded_since_us = m->now_us();
    m->degraded = on != 0;
    pthread_mutex_unlock(&m->lock);
}

/* ---- lifetime ---- */

int cv_metrics_new(const cv_metrics_conf *conf, cv_metrics **ret_metrics) {
    if (!conf || conf->max_channels < 1 || conf->max_channels > 100000)
        return -EINVAL;
    cv_metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    pthread_mutex_init(&m->lock, NULL);
    m->now_us = conf->now_us ? conf->now_us : cv_now_us;
    m->mono_ms = conf->mono_ms ? conf->mono_ms : cv_mono_ms;
    m->max_channels = conf->max_channels;
    m->window_ms = conf->window_ms > 0 ? conf->window_ms : 10000;
    m->prefix = strdup(conf->topics_prefix ? conf->topics_prefix : "");
    m->version = strdup(conf->version ? conf->version : "unknown");
    m->channels = calloc(m->max_channels + 1, sizeof(*m->channels));
    m->hmin_cur = -1;
    if (!m->prefix || !m->version || !m->channels ||
        !(m->channels[m->max_channels].name = strdup(OTHER_CHANNEL)) ||
        !(m->channels[m->max_channels].hist = hseries_new(m)) ||
        !(m->hist_total = hseries_new(m))) {
        cv_metrics_free(m);
        return -ENOMEM;
    }
    cv_hist_init(&m->channels[m->max_channels].latency, ack_latency_bounds,
                 NB(ack_latency_bounds));
    m->start_us = m->now_us();
    cv_hist_init(&m->ack_latency, ack_latency_bounds, NB(ack_latency_bounds));
    cv_hist_init(&m->pg_commit, pg_commit_bounds, NB(pg_commit_bounds));
    cv_hist_init(&m->log_fsync, log_fsync_bounds, NB(log_fsync_bounds));
    cv_hist_init(&m->ack_txn, ack_txn_bounds, NB(ack_txn_bounds));
    cv_hist_init(&m->batch_size, batch_size_bounds, NB(batch_size_bounds));
    cv_hist_init(&m->probe_latency, ack_latency_bounds, NB(ack_latency_bounds));
    if (conf->probe_channel && *conf->probe_channel) {
        size_t n = strlen(m->prefix) + strlen(conf->probe_channel) + 1;
        if (!(m->probe_topic = malloc(n))) {
            cv_metrics_free(m);
            return -ENOMEM;
        }
        snprintf(m->probe_topic, n, "%s%s", m->prefix, conf->probe_channel);
    }
    m->obs = (cv_pipeline_observer){
        .opaque = m,
        .consumed = obs_consumed,
        .stored = obs_stored,
        .store_error = obs_store_error,
        .store_ok = obs_store_ok,
        .acked = obs_acked,
        .tick = obs_tick,
        .degraded = obs_degraded,
        .log_generation = obs_log_generation,
        .log_torn = obs_log_torn,
        .ack_txn = obs_ack_txn,
    };
    *ret_metrics = m;
    return 0;
}

cv_metrics *cv_metrics_free(cv_metrics *m) {
    if (!m)
        return NULL;
    for (size_t k = 0; k < m->nparts; k++)
        part_free(m->parts[k]);
    free(m->parts);
    free(m->index);
    if (m->channels)
        for (size_t i = 0; i <= m->max_channels; i++) {
            free(m->channels[i].name);
            free(m->channels[i].hist);
        }
    free(m->hist_total);
    free(m->channels);
    free(m->prefix);
    free(m->version);
    free(m->probe_topic);
    pthread_mutex_destroy(&m->lock);
    free(m);
    return NULL;
}

const cv_pipeline_observer *cv_metrics_observer(cv_metrics *m) {
    return &m->obs;
}

void cv_metrics_probe_sent(cv_metrics *m) {
    pthread_mutex_lock(&m->lock);
    m->probe_sent++;
    pthread_mutex_unlock(&m->lock);
}

/* ---- evaluation shared by the renderers (lock held) ---- */

static bool stores_down(const cv_metrics *m) {
    int down = m->stores[0].down + m->stores[1].down;
    return m->degraded ? down >= 2 : down >= 1;
}

static bool channel_in_use(const cv_metrics *m, size_t ci) {
    return ci < m->nchannels || (ci == m->max_channels && m->other_used);
}

/* Acks per second over the window ending at `now`: from the newest stored
 * sample at or before the window's start, else the oldest one. */
static double channel_rate(const mchannel *c, const cv_lag_sample *now,
                           int64_t window_ms) {
    const cv_lag_sample *base = now;
    for (size_t i = 0; i < c->nsamples; i++) {
        const cv_lag_sample *s = &c->samples[(c->sample_head + i) % SAMPLES_MAX];
        if (i == 0 || s->t_ms <= now->t_ms - window_ms)
            base = s;
    }
    if (now->t_ms <= base->t_ms)
        return 0;
    return (double)(now->acked - base->acked) * 1000.0 / (double)(now->t_ms - base->t_ms);
}

/* The lat_snaps slot the window's quantiles count from: the newest snapshot
 * at or before the start of the window, else the oldest; -1: none yet. */
static int lat_base_slot(const cv_metrics *m, int64_t now_ms) {
    int base = -1;
    for (size_t i = 0; i < m->nlat_snaps; i++) {
        size_t k = (m->lat_snap_head + i) % LAT_SNAPS;
        if (base < 0 || m->lat_snap_ms[k] <= now_ms - m->window_ms)
            base = (int)k;
    }
    return base;
}

/* A channel's sent→ack q-quantile in µs over the window (-1: no acks). */
static double channel_quantile(const mchannel *c, int slot, double q) {
    if (!c->hist)
        return -1;
    cv_hist base = c->latency;
    if (slot >= 0)
        memcpy(base.counts, c->hist->lat_snaps[slot], sizeof(c->hist->lat_snaps[slot]));
    else
        memset(base.counts, 0, sizeof(base.counts));
    return cv_hist_quantile(&c->latency, &base, q);
}

static float hval(double v, double scale) {
    return v < 0 ? NAN : (float)(v / scale);
}

static void hacc_add(hseries *h, const hpoint *pt) {
    hpoint *a = &h->acc;
    if (h->acc_n == 0) {
        *a = *pt;
    } else {
        a->lag = fmaxf(a->lag, pt->lag);
        a->age_s = fmaxf(a->age_s, pt->age_s);
        a->rate += pt->rate;
        a->p50_s = fmaxf(a->p50_s, pt->p50_s); /* fmaxf skips a NaN */
        a->p99_s = fmaxf(a->p99_s, pt->p99_s);
    }
    h->acc_n++;
}

/* The minute in progress as a point: maxima, the mean rate. */
static hpoint hacc_point(const hseries *h) {
    hpoint pt = h->acc;
    pt.rate = h->acc_n ? pt.rate / (float)h->acc_n : NAN;
    return pt;
}

static void hmin_flush(hseries *h, size_t slot, uint64_t seq) {
    if (h->acc_n == 0 && h->since_min == seq)
        h->since_min = seq + 1; /* created after the minute's last point */
    else
        h->min[slot] = h->acc_n ? hacc_point(h) : (hpoint){NAN, NAN, NAN, NAN, NAN};
    h->acc_n = 0;
}

/* Appends one point to every series (the numbers /api/lag shows now), from
 * `agg` = channel_aggregates(m, now_ms, now_us). Lock held. */
static void history_record(cv_metrics *m, int64_t now_ms, int64_t now_us,
                           const chagg *agg) {
    int64_t minute = now_us / 60000000;
    if (m->hmin_cur >= 0 && minute != m->hmin_cur) {
        size_t slot = m->hmin_seq % HIST_MIN_POINTS;
        for (size_t ci = 0; ci <= m->max_channels; ci++)
            if (m->channels[ci].hist)
                hmin_flush(m->channels[ci].hist, slot, m->hmin_seq);
        hmin_flush(m->hist_total, slot, m->hmin_seq);
        m->hmin_t[slot] = m->hmin_cur * 60000;
        m->hmin_seq++;
    }
    m->hmin_cur = minute;
    int slot = lat_base_slot(m, now_ms);
    size_t si = m->hsec_seq % HIST_SEC_POINTS;
    hpoint tot = {0, 0, 0, NAN, NAN};
    for (size_t ci = 0; ci <= m->max_channels; ci++) {
        if (!channel_in_use(m, ci))
            continue;
        const mchannel *c = &m->channels[ci];
        double rate = channel_rate(c, &agg[ci].s, m->window_ms);
        tot.lag += (float)agg[ci].s.lag;
        tot.age_s = fmaxf(tot.age_s, (float)agg[ci].age_us / 1e6f);
        tot.rate += (float)rate;
        if (!c->hist)
            continue;
        hpoint pt = {(float)agg[ci].s.lag, (float)agg[ci].age_us / 1e6f, (float)rate,
                     hval(channel_quantile(c, slot, 0.5), 1e6),
                     hval(channel_quantile(c, slot, 0.99), 1e6)};
        c->hist->sec[si] = pt;
        hacc_add(c->hist, &pt);
    }
    const cv_hist *base = slot >= 0 ? &m->lat_snaps[slot] : NULL;
    tot.p50_s = hval(cv_hist_quantile(&m->ack_latency, base, 0.5), 1e6);
    tot.p99_s = hval(cv_hist_quantile(&m->ack_latency, base, 0.99), 1e6);
    m->hist_total->sec[si] = tot;
    hacc_add(m->hist_total, &tot);
    m->hsec_t[si] = now_us / 1000;
    m->hsec_seq++;
    m->hist_last_ms = now_ms;
}

/* A pipeline blocked in a store does not tick: a renderer takes the point
 * instead, at most one every 1.5 s. Lock held. */
static void history_catch_up(cv_metrics *m, int64_t now_ms, int64_t now_us) {
    if (!m->hist_last_ms || now_ms - m->hist_last_ms < 1500)
        return;
    chagg *agg = channel_aggregates(m, now_ms, now_us);
    if (agg)
        history_record(m, now_ms, now_us, agg);
    free(agg);
}

typedef struct chview {
    cv_lag_sample now;
    cv_lag_status status;
    const char *why;
    double rate; /* acks per second over the window */
    int64_t lag_age_us;
} chview;

static chview channel_view(const cv_metrics *m, size_t ci, const chagg *agg,
                           int64_t now_ms) {
    const mchannel *c = &m->channels[ci];
    cv_lag_sample s[SAMPLES_MAX + 1];
    size_t n = 0;
    for (size_t i = 0; i < c->nsamples; i++)
        s[n++] = c->samples[(c->sample_head + i) % SAMPLES_MAX];
    chview v = {.now = agg[ci].s, .lag_age_us = agg[ci].age_us};
    s[n++] = v.now;
    v.status = cv_lag_status_eval(s, n, m->window_ms, stores_down(m), &v.why);
    v.rate = channel_rate(c, &v.now, m->window_ms);
    return v;
}

/* ---- Prometheus text ---- */

static int prom_label(cv_buf *b, const char *s) {
    int r = 0;
    for (; *s && r == 0; s++) {
        if (*s == '\\' || *s == '"')
            r = cv_buf_printf(b, "\\%c", *s);
        else if (*s == '\n')
            r = cv_buf_append(b, "\\n", 2);
        else
            r = cv_buf_append(b, s, 1);
    }
    return r;
}

static int prom_family(cv_buf *b, const char *name, const char *type, const char *help) {
    return cv_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* An unlabelled metric of one integer value, with its family lines. */
static int prom_one(cv_buf *b, const char *name, const char *type, const char *help,
                    int64_t v) {
    int r = prom_family(b, name, type, help);
    return r ? r : cv_buf_printf(b, "%s %" PRId64 "\n", name, v);
}

/* name{channel="..."<extra>} value */
static int prom_ch(cv_buf *b, const char *name, const char *channel, const char *extra,
                   const char *fmt_value, double v) {
    int r = cv_buf_printf(b, "%s{channel=\"", name);
    if (!r)
        r = prom_label(b, channel);
    if (!r)
        r = cv_buf_printf(b, "\"%s} ", extra ? extra : "");
    if (!r)
        r = cv_buf_printf(b, fmt_value, v);
    if (!r)
        r = cv_buf_append(b, "\n", 1);
    return r;
}

static int prom_hist(cv_buf *b, const char *name, const char *help, const cv_hist *h,
                     double scale) {
    int r = prom_family(b, name, "histogram", help);
    uint64_t cum = 0;
    for (size_t i = 0; !r && i < h->nbounds; i++) {
        cum += h->counts[i];
        r = cv_buf_printf(b, "%s_bucket{le=\"%.9g\"} %" PRIu64 "\n", name,
                          (double)h->bounds[i] / scale, cum);
    }
    if (!r)
        r = cv_buf_printf(b,
                          "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum %.9g\n"
                          "%s_count %" PRIu64 "\n",
                          name, h->count, name, (double)h->sum / scale, name, h->count);
    return r;
}

#define CK(x)                                                                            \
    do {                                                                                 \
        if ((r = (x)) < 0)                                                               \
            goto out;                                                                    \
    } while (0)

static const char *ack_status_label(int s) {
    static const char *names[NSTATUS] = {"unspecified", "persisted", "duplicate",
                                         "rejected", "degraded"};
    return s >= 0 && s < NSTATUS ? names[s] : "unknown";
}

int cv_metrics_render_prometheus(cv_metrics *m, cv_buf *b) {
    int r = 0;
    int64_t now_us = m->now_us(), now_ms = m->mono_ms();
    double *other_lag = NULL, *other_age = NULL;
    bool *other_seen = NULL;
    chagg *agg = NULL;
    pthread_mutex_lock(&m->lock);
    CK(prom_family(b, "chatvault_build_info", "gauge",
                   "Always 1; the labels say which build and libraries run."));
    CK(cv_buf_printf(b,
                     "chatvault_build_info{version=\"%s\",librdkafka=\"%s\","
                     "libpq=\"%d\",libsodium=\"%s\"} 1\n",
                     m->version, rd_kafka_version_str(), PQlibVersion(),
                     sodium_version_string()));
    CK(prom_family(b, "chatvault_start_time_seconds", "gauge",
                   "Unix time the broker started."));
    CK(cv_buf_printf(b, "chatvault_start_time_seconds %.3f\n",
                     (double)m->start_us / 1e6));

    struct {
        const char *name, *help;
        size_t off;
    } counters[] = {
        {"chatvault_consumed_total", "Records consumed from the chat topics.",
         offsetof(mchannel, consumed)},
        {"chatvault_duplicates_total",
         "Records acked as DUPLICATE (message id already stored).",
         offsetof(mchannel, duplicate)},
    };
    for (size_t k = 0; k < NB(counters); k++) {
        CK(prom_family(b, counters[k].name, "counter", counters[k].help));
        for (size_t ci = 0; ci <= m->max_channels; ci++)
            if (channel_in_use(m, ci))
                CK(prom_ch(b, counters[k].name, m->channels[ci].name, NULL, "%.0f",
                           (double)*(const int64_t *)((const char *)&m->channels[ci] +
                                                      counters[k].off)));
    }
    CK(prom_family(b, "chatvault_stored_total", "counter",
                   "Records made durable, per store."));
    for (size_t ci = 0; ci <= m->max_channels; ci++)
        for (size_t s = 0; channel_in_use(m, ci) && s < 2; s++) {
            if (s == 1 && !m->stores[1].seen) /* the log store is off */
                continue;
            char extra[32];
            snprintf(extra, sizeof(extra), ",store=\"%s\"", store_name(s));
            CK(prom_ch(b, "chatvault_stored_total", m->channels[ci].name, extra, "%.0f",
                       (double)m->channels[ci].stored[s]));
        }
    CK(prom_family(b, "chatvault_acked_total", "counter",
                   "Records whose DeliveryAck was delivered, per ack status."));
    for (size_t ci = 0; ci <= m->max_channels; ci++)
        for (int s = 1; channel_in_use(m, ci) && s < NSTATUS; s++) {
            char extra[40];
            snprintf(extra, sizeof(extra), ",status=\"%s\"", ack_status_label(s));
            CK(prom_ch(b, "chatvault_acked_total", m->channels[ci].name, extra, "%.0f",
                       (double)m->channels[ci].acked_by_status[s]));
        }
    CK(prom_family(b, "chatvault_rejected_total", "counter",
                   "Records rejected (sent to the DLQ), per reason."));
    for (size_t ci = 0; ci <= m->max_channels; ci++)
        for (int s = 1; channel_in_use(m, ci) && s < CV_REJECT__COUNT; s++) {
            if (!m->channels[ci].rejected_by_reason[s])
                continue;
            char extra[64];
            snprintf(extra, sizeof(extra), ",reason=\"%s\"",
                     cv_reject_reason_name((cv_reject_reason)s));
            CK(prom_ch(b, "chatvault_rejected_total", m->channels[ci].name, extra, "%.0f",
                       (double)m->channels[ci].rejected_by_reason[s]));
        }

    /* Per-partition lag; "_other" sums its partitions by number (max age). */
    int32_t maxp = -1;
    for (size_t k = 0; k < m->nparts; k++)
        if (m->parts[k]->channel == m->max_channels && m->parts[k]->partition > maxp)
            maxp = m->parts[k]->partition;
    if (maxp >= 0) {
        other_lag = calloc((size_t)maxp + 1, sizeof(*other_lag));
        other_age = calloc((size_t)maxp + 1, sizeof(*other_age));
        other_seen = calloc((size_t)maxp + 1, sizeof(*other_seen));
        if (!other_lag || !other_age || !other_seen) {
            r = -ENOMEM;
            goto out;
        }
        for (size_t k = 0; k < m->nparts; k++) {
            const mpart *p = m->parts[k];
            if (p->channel != m->max_channels || p->partition < 0)
                continue;
            other_lag[p->partition] += (double)part_lag(p);
            other_seen[p->partition] = true;
            double age = (double)part_lag_age_us(p, now_us) / 1e6;
            if (age > other_age[p->partition])
                other_age[p->partition] = age;
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        const char *name =
            pass ? "chatvault_ack_lag_seconds" : "chatvault_ack_lag_messages";
        if (pass == 0)
            CK(prom_family(b, name, "gauge",
                           "Records of the partition not acked yet (end offset - acked "
                           "offset), consumed or still in Kafka."));
        else
            CK(prom_family(b, name, "gauge",
                           "Age of the oldest unacked record of the partition."));
        char extra[40];
        for (size_t k = 0; k < m->nparts; k++) {
            const mpart *p = m->parts[k];
            if (p->channel == m->max_channels)
                continue;
            snprintf(extra, sizeof(extra), ",partition=\"%" PRId32 "\"", p->partition);
            CK(prom_ch(
                b, name, m->channels[p->channel].name, extra, pass ? "%.3f" : "%.0f",
                pass ? (double)part_lag_age_us(p, now_us) / 1e6 : (double)part_lag(p)));
        }
        for (int32_t q = 0; q <= maxp; q++) {
            if (!other_seen[q])
                continue;
            snprintf(extra, sizeof(extra), ",partition=\"%" PRId32 "\"", q);
            CK(prom_ch(b, name, OTHER_CHANNEL, extra, pass ? "%.3f" : "%.0f",
                       pass ? other_age[q] : other_lag[q]));
        }
    }
    CK(prom_family(b, "chatvault_channel_status", "gauge",
                   "1 for the channel's current status (OK, WARN, STALL, STOP, "
                   "ERR; see /api/lag), 0 for the others."));
    if (!(agg = channel_aggregates(m, now_ms, now_us))) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t ci = 0; ci <= m->max_channels; ci++) {
        if (!channel_in_use(m, ci))
            continue;
        chview v = channel_view(m, ci, agg, now_ms);
        for (int s = 0; s < CV_LAG__COUNT; s++) {
            char extra[32];
            snprintf(extra, sizeof(extra), ",status=\"%s\"",
                     cv_lag_status_name((cv_lag_status)s));
            CK(prom_ch(b, "chatvault_channel_status", m->channels[ci].name, extra, "%.0f",
                       v.status == (cv_lag_status)s ? 1.0 : 0.0));
        }
    }
    CK(prom_hist(b, "chatvault_ack_latency_seconds",
                 "Time from a message's sent_at (else its Kafka timestamp) to "
                 "the delivery of its ack.",
                 &m->ack_latency, 1e6));
    CK(prom_hist(b, "chatvault_pg_commit_seconds",
                 "Duration of one batch's PostgreSQL transaction.", &m->pg_commit, 1e6));
    CK(prom_hist(b, "chatvault_log_fsync_seconds",
                 "Duration of one batch's log append and sync (log.sync_method).",
                 &m->log_fsync, 1e6));
    CK(prom_hist(b, "chatvault_batch_size_messages", "Records per decoded batch.",
                 &m->batch_size, 1));
    CK(prom_hist(b, "chatvault_ack_txn_seconds",
                 "ack.transactions = on: time from a batch's first transaction attempt "
                 "to its commit (acks produced, offsets added, committed).",
                 &m->ack_txn, 1e6));
    CK(prom_one(b, "chatvault_ack_txn_aborts_total", "counter",
                "Ack transactions aborted and tried again.", m->ack_txn_aborts));
    if (m->probe_topic) {
        CK(prom_hist(b, "chatvault_probe_latency_seconds",
                     "End-to-end probe: publish of a canary message to the durable "
                     "delivery of its ack.",
                     &m->probe_latency, 1e6));
        CK(prom_one(b, "chatvault_probe_sent_total", "counter",
                    "Canary messages the end-to-end probe published.", m->probe_sent));
        CK(prom_one(b, "chatvault_probe_acked_total", "counter",
                    "Canary messages whose ack was delivered.", m->probe_acked));
        CK(prom_family(b, "chatvault_probe_last_ack_timestamp_seconds", "gauge",
                       "Unix time of the last canary ack (0: none yet)."));
        CK(cv_buf_printf(b, "chatvault_probe_last_ack_timestamp_seconds %.3f\n",
                         (double)m->probe_last_ack_us / 1e6));
    }
    CK(prom_family(b, "chatvault_store_up", "gauge",
                   "1 when the store's last write succeeded, 0 after a failed "
                   "write until one succeeds."));
    for (size_t s = 0; s < 2; s++)
        if (m->stores[s].seen || s == 0)
            CK(cv_buf_printf(b, "chatvault_store_up{store=\"%s\"} %d\n", store_name(s),
                             !m->stores[s].down));
    CK(prom_family(b, "chatvault_store_errors_total", "counter",
                   "Failed store writes (each is retried)."));
    for (size_t s = 0; s < 2; s++)
        if (m->stores[s].seen || s == 0)
            CK(cv_buf_printf(b,
                             "chatvault_store_errors_total{store=\"%s\"} %" PRId64 "\n",
                             store_name(s), m->stores[s].errors));
    CK(prom_one(b, "chatvault_log_generations_total", "counter",
                "Partitions whose Kafka offsets started over (a held offset came "
                "with another message): the log began a new generation.",
                m->log_generations));
    CK(prom_one(b, "chatvault_log_torn_tails_total", "counter",
                "Torn tails (unfinished writes of a crash, never acked) that log "
                "recovery cut; the bytes are kept beside the segment.",
                m->torn_tails));
    CK(prom_one(b, "chatvault_log_torn_bytes_total", "counter",
                "Bytes that log recovery cut as torn tails.", m->torn_bytes));
    CK(prom_one(b, "chatvault_log_torn_records_total", "counter",
                "Frames, whole or not, that log recovery cut as torn tails.",
                m->torn_records));
    CK(prom_one(b, "chatvault_degraded", "gauge",
                "1 while ack.policy = any acks with one store only.", m->degraded));
    CK(prom_one(b, "chatvault_kafka_up", "gauge",
                "1 while the consumer holds a connection to at least one Kafka "
                "broker (or knows none yet), 0 while every known broker is down.",
                m->kafka_down_since_us ? 0 : 1));
    CK(prom_one(b, "chatvault_kafka_brokers_up", "gauge",
                "Kafka brokers the consumer is connected to, of "
                "chatvault_kafka_brokers_known.",
                m->kafka_up));
    CK(prom_one(b, "chatvault_kafka_brokers_known", "gauge",
                "Kafka brokers the consumer knows from metadata.", m->kafka_known));
    CK(prom_one(b, "chatvault_kafka_outages_total", "counter",
                "Times every known Kafka broker went down at once.", m->kafka_outages));
    CK(prom_one(b, "chatvault_channels_overflow", "gauge",
                "1 when channels beyond metrics.max_channels are counted "
                "under channel=\"_other\".",
                m->other_used));
    CK(prom_family(b, "chatvault_pipeline_tick_age_seconds", "gauge",
                   "Seconds since the pipeline thread last reported (about "
                   "every second while it runs; grows while it is blocked)."));
    CK(cv_buf_printf(b, "chatvault_pipeline_tick_age_seconds %.3f\n",
                     m->last_tick_ms ? (double)(now_ms - m->last_tick_ms) / 1e3
                                     : (double)(now_us - m->start_us) / 1e6));
out:
    pthread_mutex_unlock(&m->lock);
    free(agg);
    free(other_lag);
    free(other_age);
    free(other_seen);
    return r;
}

/* ---- /api/lag JSON (lag.h writes it) ---- */

static int lag_channels(cv_metrics *m, cv_lagdoc *d, const chagg *agg, int lat_slot,
                        int64_t now_ms, int64_t now_us) {
    int r = 0;
    for (size_t ci = 0; r == 0 && ci <= m->max_channels; ci++) {
        if (!channel_in_use(m, ci))
            continue;
        const mchannel *c = &m->channels[ci];
        chview v = channel_view(m, ci, agg, now_ms);
        double q50 = channel_quantile(c, lat_slot, 0.5);
        double q99 = channel_quantile(c, lat_slot, 0.99);
        r = cv_lagdoc_add_channel(d, &(cv_lagdoc_channel){
                                         .channel = c->name,
                                         .status = v.status,
                                         .why = v.why,
                                         .rate = v.rate,
                                         .lag = v.now.lag,
                                         .lag_seconds = (double)v.lag_age_us / 1e6,
                                         .inflight = v.now.inflight,
                                         .consumed = c->consumed,
                                         .acked = c->acked,
                                         .rejected = c->rejected,
                                         .duplicate = c->duplicate,
                                         .stored_postgres = c->stored[0],
                                         .stored_log = c->stored[1],
                                         .p50_s = q50 < 0 ? q50 : q50 / 1e6,
                                         .p99_s = q99 < 0 ? q99 : q99 / 1e6,
                                     });
        for (size_t k = 0; r == 0 && k < m->nparts; k++) {
            const mpart *p = m->parts[k];
            if (p->channel != ci)
                continue;
            r = cv_lagdoc_add_partition(
                d, &(cv_lagdoc_partition){
                       .topic = p->topic,
                       .partition = p->partition,
                       .high_watermark = p->high,
                       .end_offset = part_end(p),
                       .acked_offset = p->acked_next,
                       .consumed_offset = p->consumed_next,
                       .lag = part_lag(p),
                       .lag_seconds = (double)part_lag_age_us(p, now_us) / 1e6,
                       .inflight = part_inflight(p),
                       .assigned = p->assigned,
                   });
        }
    }
    return r;
}

/* µs quantile → seconds; < 0 (none) stays. */
static double q_s(double q_us) {
    return q_us < 0 ? q_us : q_us / 1e6;
}

int cv_metrics_render_lag_json(cv_metrics *m, cv_buf *b) {
    int r = 0;
    cv_lagdoc *d = NULL;
    int64_t now_us = m->now_us(), now_ms = m->mono_ms();
    pthread_mutex_lock(&m->lock);
    history_catch_up(m, now_ms, now_us);
    chagg *agg = channel_aggregates(m, now_ms, now_us);
    if (!agg) {
        r = -ENOMEM;
        goto out;
    }
    int lat_slot = lat_base_slot(m, now_ms);
    cv_lagdoc_head head = {
        .source = CV_LAGDOC_BROKER,
        .time_ms = now_us / 1000,
        .version = m->version,
        .window_s = (double)m->window_ms / 1e3,
        .degraded = m->degraded,
        .uptime_s = (double)(now_us - m->start_us) / 1e6,
        .tick_age_s = m->last_tick_ms ? (double)(now_ms - m->last_tick_ms) / 1e3 : -1.0,
        .degraded_since_ms = m->degraded ? m->degraded_since_us / 1000 : 0,
        .kafka_up = !m->kafka_down_since_us,
        .kafka_brokers_up = m->kafka_up,
        .kafka_brokers_known = m->kafka_known,
        .kafka_down_since_ms = m->kafka_down_since_us / 1000,
        .channels_overflow = m->other_used,
    };
    if ((r = cv_lagdoc_new(&head, &d)) < 0 ||
        (r = lag_channels(m, d, agg, lat_slot, now_ms, now_us)) < 0)
        goto out;
    /* Sent→ack quantiles over the last window, from the tick snapshots. */
    const cv_hist *base = lat_slot >= 0 ? &m->lat_snaps[lat_slot] : NULL;
    cv_lagdoc_probe probe = {0};
    if (m->probe_topic)
        probe = (cv_lagdoc_probe){
            .topic = m->probe_topic,
            .sent = m->probe_sent,
            .acked = m->probe_acked,
            .last_ack_ms = m->probe_last_ack_us / 1000,
            .last_latency_s =
                m->probe_acked ? (double)m->probe_last_latency_us / 1e6 : -1,
            .p99_s = q_s(cv_hist_quantile(&m->probe_latency, NULL, 0.99)),
        };
    cv_lagdoc_store stores[2];
    size_t nstores = 0;
    for (size_t s = 0; s < 2; s++) {
        if (!m->stores[s].seen && s != 0)
            continue;
        stores[nstores++] = (cv_lagdoc_store){
            .name = store_name(s),
            .up = !m->stores[s].down,
            .errors = m->stores[s].errors,
            .last_error_ms = m->stores[s].last_error_ms,
            .last_error = m->stores[s].last_error,
        };
    }
    cv_lagdoc_reject rejects[RECENT_REJECTS];
    for (size_t i = 0; i < m->nrejects; i++) { /* newest first */
        const rejnote *rn =
            &m->rejects[(m->reject_head + m->nrejects - 1 - i) % RECENT_REJECTS];
        rejects[i] = (cv_lagdoc_reject){rn->time_ms, rn->channel, rn->reason, rn->error};
    }
    cv_lagdoc_tail tail = {
        .stores_down = stores_down(m),
        .p50_s = q_s(cv_hist_quantile(&m->ack_latency, base, 0.5)),
        .p99_s = q_s(cv_hist_quantile(&m->ack_latency, base, 0.99)),
        .pg_commit_p99_s = q_s(cv_hist_quantile(&m->pg_commit, NULL, 0.99)),
        .log_fsync_p99_s = q_s(cv_hist_quantile(&m->log_fsync, NULL, 0.99)),
        .batches = m->batches,
        .probe = m->probe_topic ? &probe : NULL,
        .stores = stores,
        .nstores = nstores,
        .rejects = rejects,
        .nrejects = m->nrejects,
    };
    r = cv_lagdoc_render(d, &tail, b);
out:
    pthread_mutex_unlock(&m->lock);
    cv_lagdoc_free(d);
    free(agg);
    return r;
}

void cv_metrics_kafka_state(cv_metrics *m, int up, int known) {
    pthread_mutex_lock(&m->lock);
    m->kafka_up = up;
    m->kafka_known = known;
    if (known > 0 && up == 0) {
        if (!m->kafka_down_since_us) {
            m->kafka_down_since_us = m->now_us();
            m->kafka_outages++;
        }
    } else {
        m->kafka_down_since_us = 0;
    }
    pthread_mutex_unlock(&m->lock);
}

void cv_metrics_kafka_stats(cv_metrics *m, const char *json, size_t len) {
    /* {"brokers":{"host:port/1":{"name":..,"nodeid":1,"source":..,
     *  "state":"UP",..},..},"topics":{..}}: the bootstrap entries have
     * nodeid -1 and the coordinators' aliases source "logical". A document
     * that does not parse (cut short) changes nothing. */
    json_t *doc = json_loadb(json, len, 0, NULL);
    json_t *brokers = json_object_get(doc, "brokers");
    if (!json_is_object(brokers)) {
        json_decref(doc);
        return;
    }
    int up = 0, known = 0;
    const char *name;
    json_t *b;
    json_object_foreach(brokers, name, b) {
        json_t *id = json_object_get(b, "nodeid");
        const char *src = json_string_value(json_object_get(b, "source"));
        const char *state = json_string_value(json_object_get(b, "state"));
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            (src && strcmp(src, "logical") == 0))
            continue;
        known++;
        if (state && strcmp(state, "UP") == 0)
            up++;
    }
    json_decref(doc);
    cv_metrics_kafka_state(m, up, known);
}

bool cv_metrics_ready(cv_metrics *m, char *why, size_t whylen) {
    int64_t now_us = m->now_us(), now_ms = m->mono_ms();
    bool ok = true;
    pthread_mutex_lock(&m->lock);
    if (!m->last_tick_ms) {
        snprintf(why, whylen, "pipeline not running yet");
        ok = false;
    } else if (now_ms - m->last_tick_ms > 3 * m->window_ms) {
        snprintf(why, whylen, "pipeline thread silent for %.0f s",
                 (double)(now_ms - m->last_tick_ms) / 1e3);
        ok = false;
    }
    if (ok && m->kafka_down_since_us && now_us - m->kafka_down_since_us >= 5000000) {
        snprintf(why, whylen, "kafka unreachable: 0 of %d brokers up for %.0f s",
                 m->kafka_known, (double)(now_us - m->kafka_down_since_us) / 1e6);
        ok = false;
    }
    for (size_t s = 0; ok && s < 2; s++)
        if (m->stores[s].down && stores_down(m)) {
            snprintf(why, whylen, "store %s down: %s", store_name(s),
                     m->stores[s].last_error);
            ok = false;
        }
    chagg *agg = ok ? channel_aggregates(m, now_ms, now_us) : NULL;
    for (size_t ci = 0; agg && ci <= m->max_channels; ci++) {
        if (!channel_in_use(m, ci))
            continue;
        chview v = channel_view(m, ci, agg, now_ms);
        if (v.status == CV_LAG_STALL || v.status == CV_LAG_STOP ||
            v.status == CV_LAG_ERR) {
            snprintf(why, whylen, "channel %s is %s: %s", m->channels[ci].name,
                     cv_lag_status_name(v.status), v.why);
            ok = false;
            break;
        }
    }
    pthread_mutex_unlock(&m->lock);
    free(agg);
    if (ok)
        snprintf(why, whylen, "ready");
    return ok;
}

/* ---- /api/history JSON ---- */

typedef struct hview {
    const hpoint *pts; /* ring */
    const int64_t *t;  /* ring of times */
    size_t cap;
    uint64_t from, to; /* sequence numbers [from, to) */
    bool partial;      /* then one more point: the minute in progress */
    hpoint partial_pt;
    int64_t partial_t;
} hview;

static int history_array(cv_buf *b, const char *name, const hview *v, size_t field) {
    int r = cv_buf_printf(b, ",\"%s\":[", name);
    size_t n = 0;
    for (uint64_t q = v->from; r == 0 && q < v->to + (v->partial ? 1 : 0); q++, n++) {
        bool last = q == v->to;
        if (n)
            r = cv_buf_append(b, ",", 1);
        if (r)
            break;
        if (field == SIZE_MAX) { /* the times */
            r = cv_buf_printf(b, "%" PRId64, last ? v->partial_t : v->t[q % v->cap]);
            continue;
        }
        const hpoint *pt = last ? &v->partial_pt : &v->pts[q % v->cap];
        float f;
        memcpy(&f, (const char *)pt + field, sizeof(f));
        if (isnan(f))
            r = cv_buf_append(b, "null", 4);
        else if (field == offsetof(hpoint, lag))
            r = cv_buf_printf(b, "%.0f", (double)f);
        else
            r = cv_buf_printf(b, "%.4g", (double)f);
    }
    return r ? r : cv_buf_append(b, "]", 1);
}

int cv_metrics_render_history_json(cv_metrics *m, const char *channel,
                                   cv_history_range range, cv_buf *b, char *errbuf,
                                   size_t errlen) {
    int r = 0;
    int64_t now_us = m->now_us(), now_ms = m->mono_ms();
    pthread_mutex_lock(&m->lock);
    history_catch_up(m, now_ms, now_us);
    const hseries *h = m->hist_total;
    if (channel) {
        size_t ci = 0;
        while (ci <= m->max_channels &&
               !(channel_in_use(m, ci) && strcmp(m->channels[ci].name, channel) == 0))
            ci++;
        if (ci > m->max_channels) {
            snprintf(errbuf, errlen, "no channel \"%s\" (see /api/lag for the channels)",
                     channel);
            r = -ENOENT;
            goto out;
        }
        if (!(h = m->channels[ci].hist)) {
            snprintf(errbuf, errlen,
                     "channel \"%s\" keeps no history: only the first %d channels do",
                     channel, CV_METRICS_HISTORY_CHANNELS);
            r = -ENOENT;
            goto out;
        }
    }
    hview v = {0};
    int64_t oldest_ms;
    if (range == CV_HISTORY_24H) {
        v = (hview){.pts = h->min,
                    .t = m->hmin_t,
                    .cap = HIST_MIN_POINTS,
                    .from = h->since_min,
                    .to = m->hmin_seq};
        v.partial = h->acc_n > 0;
        v.partial_pt = hacc_point(h);
        v.partial_t = m->hmin_cur * 60000;
        oldest_ms = now_us / 1000 - 86400000;
    } else {
        v = (hview){.pts = h->sec,
                    .t = m->hsec_t,
                    .cap = HIST_SEC_POINTS,
                    .from = h->since_sec,
                    .to = m->hsec_seq};
        oldest_ms = now_us / 1000 - 3600000;
    }
    if (v.to - v.from > v.cap)
        v.from = v.to - v.cap;
    while (v.from < v.to && v.t[v.from % v.cap] < oldest_ms)
        v.from++;
    CK(cv_buf_append(b, "{\"channel\":", 11));
    CK(channel ? cv_buf_json_string(b, channel, strlen(channel))
               : cv_buf_append(b, "null", 4));
    CK(cv_buf_printf(b, ",\"range\":\"%s\",\"step_s\":%d,\"time_ms\":%" PRId64,
                     range == CV_HISTORY_24H ? "24h" : "1h",
                     range == CV_HISTORY_24H ? 60 : 1, now_us / 1000));
    CK(history_array(b, "t_ms", &v, SIZE_MAX));
    CK(history_array(b, "lag_messages", &v, offsetof(hpoint, lag)));
    CK(history_array(b, "lag_seconds", &v, offsetof(hpoint, age_s)));
    CK(history_array(b, "rate", &v, offsetof(hpoint, rate)));
    CK(history_array(b, "p50_s", &v, offsetof(hpoint, p50_s)));
    CK(history_array(b, "p99_s", &v, offsetof(hpoint, p99_s)));
    CK(cv_buf_append(b, "}\n", 2));
out:
    pthread_mutex_unlock(&m->lock);
    return r;
}
