/*
 * metrics — see metrics.h for the rules. This file holds the state (its
 * layout is in metrics_internal.h) and everything that changes it: the
 * histograms, the channel slots, the partition table, the observer
 * callbacks the pipeline thread calls, lifetime, and Kafka's broker state
 * from librdkafka's statistics. The renderers, which only read it, are in
 * metrics_eval.c, metrics_prom.c and metrics_json.c.
 *
 * Threading: every entry point takes cv_metrics.lock; the observer
 * callbacks hold it for a few microseconds per batch.
 */
#include "obs/metrics_internal.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
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
_Static_assert(LAT_BUCKETS == NB(ack_latency_bounds) + 1, "LAT_BUCKETS");

/* ---- channels and the partition table ---- */

static size_t store_index(unsigned store) {
    return store == CV_STORE_LOG ? 1 : 0;
}
const char *cv_metrics_i_store_name(size_t i) {
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

int64_t cv_metrics_i_part_end(const mpart *p) {
    return p->high > p->consumed_next ? p->high : p->consumed_next;
}

int64_t cv_metrics_i_part_lag(const mpart *p) {
    if (p->acked_next < 0) /* position not known yet: no lag can be claimed */
        return 0;
    int64_t from = p->acked_next > p->low ? p->acked_next : p->low;
    int64_t lag = cv_metrics_i_part_end(p) - from;
    return lag > 0 ? lag : 0;
}

/* Age of the oldest unacked record in µs (0 when nothing is unacked). */
int64_t cv_metrics_i_part_lag_age_us(const mpart *p, int64_t now_us) {
    if (cv_metrics_i_part_lag(p) == 0)
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

int64_t cv_metrics_i_part_inflight(const mpart *p) {
    if (p->consumed_next < 0 || p->acked_next < 0)
        return (int64_t)p->qlen;
    int64_t n = p->consumed_next - p->acked_next;
    return n > 0 ? n : 0;
}

/* Keeps lag_since_ms current after the positions changed. */
static void part_touch(mpart *p, int64_t now_ms) {
    if (cv_metrics_i_part_lag(p) == 0)
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

static void channel_add_sample(mchannel *c, cv_lag_sample s) {
    if (c->nsamples == SAMPLES_MAX) {
        c->samples[c->sample_head] = s;
        c->sample_head = (c->sample_head + 1) % SAMPLES_MAX;
    } else {
        c->samples[(c->sample_head + c->nsamples) % SAMPLES_MAX] = s;
        c->nsamples++;
    }
}

typedef struct tp_obs {
    int32_t partition;
    int64_t low, high, position, assigned_at;
    bool have_wm;
} tp_obs;

static void obs_tick(void *opaque, rd_kafka_t *rk,
                     const rd_kafka_topic_partition_list_t *ends) {
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
            const rd_kafka_topic_partition_t *end =
                ends ? rd_kafka_topic_partition_list_find(ends, tp->topic, tp->partition)
                     : NULL;
            if (end && !end->err && end->offset > obs[i].high) {
                obs[i].high = end->offset;
                obs[i].have_wm = true;
            }
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
    chagg *agg = cv_metrics_i_channel_aggregates(m, now_ms, now_us);
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
        cv_metrics_i_history_record(m, now_ms, now_us, agg);
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

void cv_metrics_retention_pass(cv_metrics *m, const cv_metrics_retention *r,
                               uint64_t segments, uint64_t records, uint64_t bytes,
                               uint64_t rows) {
    pthread_mutex_lock(&m->lock);
    m->retention = *r;
    m->retention_known = true;
    m->retention_segments += segments;
    m->retention_records += records;
    m->retention_bytes += bytes;
    m->retention_rows += rows;
    pthread_mutex_unlock(&m->lock);
}

void cv_metrics_set_drill(cv_metrics *m, const cv_metrics_drill *d) {
    pthread_mutex_lock(&m->lock);
    m->drill = *d;
    m->drill_known = true;
    pthread_mutex_unlock(&m->lock);
}
