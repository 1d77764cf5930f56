/*
 * metrics_json — the JSON documents of cv_metrics: /api/lag (written through
 * lag.h's cv_lagdoc, source broker) and /api/history (the rings of points
 * metrics_eval.c records; see "History" in metrics.h).
 *
 * Threading: each renderer takes cv_metrics.lock for its whole document,
 * and may first record a history point the pipeline thread did not
 * (cv_metrics_i_history_catch_up).
 */
#include "obs/metrics_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- /api/lag JSON (lag.h writes it) ---- */

static int lag_channels(cv_metrics *m, cv_lagdoc *d, const chagg *agg, int lat_slot,
                        int64_t now_ms, int64_t now_us) {
    int r = 0;
    for (size_t ci = 0; r == 0 && ci <= m->max_channels; ci++) {
        if (!cv_metrics_i_channel_in_use(m, ci))
            continue;
        const mchannel *c = &m->channels[ci];
        chview v = cv_metrics_i_channel_view(m, ci, agg, now_ms);
        double q50 = cv_metrics_i_channel_quantile(c, lat_slot, 0.5);
        double q99 = cv_metrics_i_channel_quantile(c, lat_slot, 0.99);
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
                d,
                &(cv_lagdoc_partition){
                    .topic = p->topic,
                    .partition = p->partition,
                    .high_watermark = p->high,
                    .end_offset = cv_metrics_i_part_end(p),
                    .acked_offset = p->acked_next,
                    .consumed_offset = p->consumed_next,
                    .lag = cv_metrics_i_part_lag(p),
                    .lag_seconds = (double)cv_metrics_i_part_lag_age_us(p, now_us) / 1e6,
                    .inflight = cv_metrics_i_part_inflight(p),
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
    cv_metrics_i_history_catch_up(m, now_ms, now_us);
    chagg *agg = cv_metrics_i_channel_aggregates(m, now_ms, now_us);
    if (!agg) {
        r = -ENOMEM;
        goto out;
    }
    int lat_slot = cv_metrics_i_lat_base_slot(m, now_ms);
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
    cv_lagdoc_drill drill = {
        .interval_s = m->drill.interval_s,
        .last_ms = m->drill.last_us / 1000,
        .last_success_ms = m->drill.last_success_us / 1000,
        .last_passed = m->drill.last_passed,
        .last_seconds = m->drill.last_seconds,
        .last_sampled = m->drill.last_sampled,
        .last_detail = m->drill.last_detail,
    };
    cv_lagdoc_store stores[2];
    size_t nstores = 0;
    for (size_t s = 0; s < 2; s++) {
        if (!m->stores[s].seen && s != 0)
            continue;
        stores[nstores++] = (cv_lagdoc_store){
            .name = cv_metrics_i_store_name(s),
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
        .stores_down = cv_metrics_i_stores_down(m),
        .p50_s = q_s(cv_hist_quantile(&m->ack_latency, base, 0.5)),
        .p99_s = q_s(cv_hist_quantile(&m->ack_latency, base, 0.99)),
        .pg_commit_p99_s = q_s(cv_hist_quantile(&m->pg_commit, NULL, 0.99)),
        .log_fsync_p99_s = q_s(cv_hist_quantile(&m->log_fsync, NULL, 0.99)),
        .batches = m->batches,
        .probe = m->probe_topic ? &probe : NULL,
        .drill = m->drill_known ? &drill : NULL,
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
    cv_metrics_i_history_catch_up(m, now_ms, now_us);
    const hseries *h = m->hist_total;
    if (channel) {
        size_t ci = 0;
        while (ci <= m->max_channels && !(cv_metrics_i_channel_in_use(m, ci) &&
                                          strcmp(m->channels[ci].name, channel) == 0))
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
        v.partial_pt = cv_metrics_i_hacc_point(h);
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
