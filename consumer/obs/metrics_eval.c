/*
 * metrics_eval — what the renderers of cv_metrics (metrics_prom.c,
 * metrics_json.c) evaluate from its state: each channel's aggregate over its
 * partitions, its ack rate and latency quantiles over the window, its
 * status by the rules of lag.h, the points of the history (see "History"
 * in metrics.h), and readiness. The state and its layout: metrics.c,
 * metrics_internal.h.
 *
 * Threading: everything here runs with cv_metrics.lock held, taken by the
 * caller (the pipeline thread's tick, a renderer), except cv_metrics_ready,
 * which takes it itself.
 */
#include "obs/metrics_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- one pass over the partitions ------------------------------------- */

/* Every channel's sample (and, with now_us > 0, the age of its oldest
 * unacked record) as things are now, in one pass over the partitions.
 * Returns a calloc'ed array of max_channels + 1, or NULL. Lock held. */
chagg *cv_metrics_i_channel_aggregates(const cv_metrics *m, int64_t now_ms,
                                       int64_t now_us) {
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
        s->lag += cv_metrics_i_part_lag(p);
        s->inflight += cv_metrics_i_part_inflight(p);
        if (p->lag_since_ms && (!s->lag_since_ms || p->lag_since_ms < s->lag_since_ms))
            s->lag_since_ms = p->lag_since_ms;
        if (now_us > 0) {
            int64_t age = cv_metrics_i_part_lag_age_us(p, now_us);
            if (age > a[p->channel].age_us)
                a[p->channel].age_us = age;
        }
    }
    return a;
}

/* ---- per channel, over the window ------------------------------------ */

bool cv_metrics_i_stores_down(const cv_metrics *m) {
    int down = m->stores[0].down + m->stores[1].down;
    return m->degraded ? down >= 2 : down >= 1;
}

bool cv_metrics_i_channel_in_use(const cv_metrics *m, size_t ci) {
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
int cv_metrics_i_lat_base_slot(const cv_metrics *m, int64_t now_ms) {
    int base = -1;
    for (size_t i = 0; i < m->nlat_snaps; i++) {
        size_t k = (m->lat_snap_head + i) % LAT_SNAPS;
        if (base < 0 || m->lat_snap_ms[k] <= now_ms - m->window_ms)
            base = (int)k;
    }
    return base;
}

/* A channel's sent→ack q-quantile in µs over the window (-1: no acks). */
double cv_metrics_i_channel_quantile(const mchannel *c, int slot, double q) {
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
hpoint cv_metrics_i_hacc_point(const hseries *h) {
    hpoint pt = h->acc;
    pt.rate = h->acc_n ? pt.rate / (float)h->acc_n : NAN;
    return pt;
}

static void hmin_flush(hseries *h, size_t slot, uint64_t seq) {
    if (h->acc_n == 0 && h->since_min == seq)
        h->since_min = seq + 1; /* created after the minute's last point */
    else
        h->min[slot] =
            h->acc_n ? cv_metrics_i_hacc_point(h) : (hpoint){NAN, NAN, NAN, NAN, NAN};
    h->acc_n = 0;
}

/* Appends one point to every series (the numbers /api/lag shows now), from
 * `agg` = cv_metrics_i_channel_aggregates(m, now_ms, now_us). Lock held. */
void cv_metrics_i_history_record(cv_metrics *m, int64_t now_ms, int64_t now_us,
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
    int slot = cv_metrics_i_lat_base_slot(m, now_ms);
    size_t si = m->hsec_seq % HIST_SEC_POINTS;
    hpoint tot = {0, 0, 0, NAN, NAN};
    for (size_t ci = 0; ci <= m->max_channels; ci++) {
        if (!cv_metrics_i_channel_in_use(m, ci))
            continue;
        const mchannel *c = &m->channels[ci];
        double rate = channel_rate(c, &agg[ci].s, m->window_ms);
        tot.lag += (float)agg[ci].s.lag;
        tot.age_s = fmaxf(tot.age_s, (float)agg[ci].age_us / 1e6f);
        tot.rate += (float)rate;
        if (!c->hist)
            continue;
        hpoint pt = {(float)agg[ci].s.lag, (float)agg[ci].age_us / 1e6f, (float)rate,
                     hval(cv_metrics_i_channel_quantile(c, slot, 0.5), 1e6),
                     hval(cv_metrics_i_channel_quantile(c, slot, 0.99), 1e6)};
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
void cv_metrics_i_history_catch_up(cv_metrics *m, int64_t now_ms, int64_t now_us) {
    if (!m->hist_last_ms || now_ms - m->hist_last_ms < 1500)
        return;
    chagg *agg = cv_metrics_i_channel_aggregates(m, now_ms, now_us);
    if (agg)
        cv_metrics_i_history_record(m, now_ms, now_us, agg);
    free(agg);
}

/* The channel now: its aggregate, its status over the window (the tick
 * samples plus this one) and its ack rate. */
chview cv_metrics_i_channel_view(const cv_metrics *m, size_t ci, const chagg *agg,
                                 int64_t now_ms) {
    const mchannel *c = &m->channels[ci];
    cv_lag_sample s[SAMPLES_MAX + 1];
    size_t n = 0;
    for (size_t i = 0; i < c->nsamples; i++)
        s[n++] = c->samples[(c->sample_head + i) % SAMPLES_MAX];
    chview v = {.now = agg[ci].s, .lag_age_us = agg[ci].age_us};
    s[n++] = v.now;
    v.status =
        cv_lag_status_eval(s, n, m->window_ms, cv_metrics_i_stores_down(m), &v.why);
    v.rate = channel_rate(c, &v.now, m->window_ms);
    return v;
}

/* ---- readiness -------------------------------------------------------- */

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
        if (m->stores[s].down && cv_metrics_i_stores_down(m)) {
            snprintf(why, whylen, "store %s down: %s", cv_metrics_i_store_name(s),
                     m->stores[s].last_error);
            ok = false;
        }
    chagg *agg = ok ? cv_metrics_i_channel_aggregates(m, now_ms, now_us) : NULL;
    for (size_t ci = 0; agg && ci <= m->max_channels; ci++) {
        if (!cv_metrics_i_channel_in_use(m, ci))
            continue;
        chview v = cv_metrics_i_channel_view(m, ci, agg, now_ms);
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
