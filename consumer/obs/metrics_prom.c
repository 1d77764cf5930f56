/*
 * metrics_prom — the Prometheus text exposition (format 0.0.4) of
 * cv_metrics: cv_metrics_render_prometheus writes the families in a fixed
 * order, each group of them by a function of its own below. The numbers
 * come from the state (metrics_internal.h) and from metrics_eval.c.
 *
 * Threading: cv_metrics_render_prometheus takes cv_metrics.lock for the
 * whole document; the prom_* functions run with it held.
 */
#include "obs/metrics_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <sodium.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- the text format -------------------------------------------------- */

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

/* An unlabelled gauge of seconds (or a Unix time), with its family lines. */
static int prom_seconds(cv_buf *b, const char *name, const char *help, double v) {
    int r = prom_family(b, name, "gauge", help);
    return r ? r : cv_buf_printf(b, "%s %.3f\n", name, v);
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

static const char *ack_status_label(int s) {
    static const char *names[NSTATUS] = {"unspecified", "persisted", "duplicate",
                                         "rejected", "degraded"};
    return s >= 0 && s < NSTATUS ? names[s] : "unknown";
}

/* ---- the families, in the order of the document ---------------------- */

static int prom_build_info(const cv_metrics *m, cv_buf *b) {
    int r = 0;
    CK(prom_family(b, "chatvault_build_info", "gauge",
                   "Always 1; the labels say which build and libraries run."));
    CK(cv_buf_printf(b,
                     "chatvault_build_info{version=\"%s\",librdkafka=\"%s\","
                     "libpq=\"%d\",libsodium=\"%s\"} 1\n",
                     m->version, rd_kafka_version_str(), PQlibVersion(),
                     sodium_version_string()));
    CK(prom_seconds(b, "chatvault_start_time_seconds", "Unix time the broker started.",
                    (double)m->start_us / 1e6));
out:
    return r;
}

/* chatvault_consumed_total, chatvault_duplicates_total: one per channel. */
static int prom_channel_counters(const cv_metrics *m, cv_buf *b) {
    int r = 0;
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
            if (cv_metrics_i_channel_in_use(m, ci))
                CK(prom_ch(b, counters[k].name, m->channels[ci].name, NULL, "%.0f",
                           (double)*(const int64_t *)((const char *)&m->channels[ci] +
                                                      counters[k].off)));
    }
out:
    return r;
}

static int prom_stored(const cv_metrics *m, cv_buf *b) {
    int r = 0;
    CK(prom_family(b, "chatvault_stored_total", "counter",
                   "Records made durable, per store."));
    for (size_t ci = 0; ci <= m->max_channels; ci++)
        for (size_t s = 0; cv_metrics_i_channel_in_use(m, ci) && s < 2; s++) {
            if (s == 1 && !m->stores[1].seen) /* the log store is off */
                continue;
            char extra[32];
            snprintf(extra, sizeof(extra), ",store=\"%s\"", cv_metrics_i_store_name(s));
            CK(prom_ch(b, "chatvault_stored_total", m->channels[ci].name, extra, "%.0f",
                       (double)m->channels[ci].stored[s]));
        }
out:
    return r;
}

static const char *reject_label(int s) {
    return cv_reject_reason_name((cv_reject_reason)s);
}

/* A counter per channel and per value of a label: name{channel,key="..."}
 * for s in [1, n), the value the channel's int64_t array at `off` holds at
 * s; zeros are left out when `skip_zero`. */
static int prom_ch_by(const cv_metrics *m, cv_buf *b, const char *name, const char *help,
                      const char *key, int n, const char *(*label)(int), size_t off,
                      bool skip_zero) {
    int r = 0;
    CK(prom_family(b, name, "counter", help));
    for (size_t ci = 0; ci <= m->max_channels; ci++)
        for (int s = 1; cv_metrics_i_channel_in_use(m, ci) && s < n; s++) {
            int64_t v = ((const int64_t *)((const char *)&m->channels[ci] + off))[s];
            if (skip_zero && !v)
                continue;
            char extra[64];
            snprintf(extra, sizeof(extra), ",%s=\"%s\"", key, label(s));
            CK(prom_ch(b, name, m->channels[ci].name, extra, "%.0f", (double)v));
        }
out:
    return r;
}

static int prom_acked(const cv_metrics *m, cv_buf *b) {
    return prom_ch_by(m, b, "chatvault_acked_total",
                      "Records whose DeliveryAck was delivered, per ack status.",
                      "status", NSTATUS, ack_status_label,
                      offsetof(mchannel, acked_by_status), false);
}

static int prom_rejected(const cv_metrics *m, cv_buf *b) {
    return prom_ch_by(m, b, "chatvault_rejected_total",
                      "Records rejected (sent to the DLQ), per reason.", "reason",
                      CV_REJECT__COUNT, reject_label,
                      offsetof(mchannel, rejected_by_reason), true);
}

/* chatvault_ack_lag_messages and chatvault_ack_lag_seconds, per partition;
 * "_other" sums its partitions by number (max age). */
static int prom_partition_lag(const cv_metrics *m, cv_buf *b, int64_t now_us) {
    int r = 0;
    double *other_lag = NULL, *other_age = NULL;
    bool *other_seen = NULL;
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
            other_lag[p->partition] += (double)cv_metrics_i_part_lag(p);
            other_seen[p->partition] = true;
            double age = (double)cv_metrics_i_part_lag_age_us(p, now_us) / 1e6;
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
            CK(prom_ch(b, name, m->channels[p->channel].name, extra,
                       pass ? "%.3f" : "%.0f",
                       pass ? (double)cv_metrics_i_part_lag_age_us(p, now_us) / 1e6
                            : (double)cv_metrics_i_part_lag(p)));
        }
        for (int32_t q = 0; q <= maxp; q++) {
            if (!other_seen[q])
                continue;
            snprintf(extra, sizeof(extra), ",partition=\"%" PRId32 "\"", q);
            CK(prom_ch(b, name, OTHER_CHANNEL, extra, pass ? "%.3f" : "%.0f",
                       pass ? other_age[q] : other_lag[q]));
        }
    }
out:
    free(other_lag);
    free(other_age);
    free(other_seen);
    return r;
}

static int prom_channel_status(const cv_metrics *m, cv_buf *b, int64_t now_ms,
                               int64_t now_us) {
    int r = 0;
    chagg *agg = NULL;
    CK(prom_family(b, "chatvault_channel_status", "gauge",
                   "1 for the channel's current status (OK, WARN, STALL, STOP, "
                   "ERR; see /api/lag), 0 for the others."));
    if (!(agg = cv_metrics_i_channel_aggregates(m, now_ms, now_us))) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t ci = 0; ci <= m->max_channels; ci++) {
        if (!cv_metrics_i_channel_in_use(m, ci))
            continue;
        chview v = cv_metrics_i_channel_view(m, ci, agg, now_ms);
        for (int s = 0; s < CV_LAG__COUNT; s++) {
            char extra[32];
            snprintf(extra, sizeof(extra), ",status=\"%s\"",
                     cv_lag_status_name((cv_lag_status)s));
            CK(prom_ch(b, "chatvault_channel_status", m->channels[ci].name, extra, "%.0f",
                       v.status == (cv_lag_status)s ? 1.0 : 0.0));
        }
    }
out:
    free(agg);
    return r;
}

/* The latency and batch-size histograms, and the ack transactions'. */
static int prom_latencies(const cv_metrics *m, cv_buf *b) {
    int r = 0;
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
out:
    return r;
}

/* The end-to-end probe's families, when it runs. */
static int prom_probe(const cv_metrics *m, cv_buf *b) {
    int r = 0;
    if (!m->probe_topic)
        return 0;
    CK(prom_hist(b, "chatvault_probe_latency_seconds",
                 "End-to-end probe: publish of a canary message to the durable "
                 "delivery of its ack.",
                 &m->probe_latency, 1e6));
    CK(prom_one(b, "chatvault_probe_sent_total", "counter",
                "Canary messages the end-to-end probe published.", m->probe_sent));
    CK(prom_one(b, "chatvault_probe_acked_total", "counter",
                "Canary messages whose ack was delivered.", m->probe_acked));
    CK(prom_seconds(b, "chatvault_probe_last_ack_timestamp_seconds",
                    "Unix time of the last canary ack (0: none yet).",
                    (double)m->probe_last_ack_us / 1e6));
out:
    return r;
}

/* The restore drills' families, once the broker read their record. */
static int prom_drill(const cv_metrics *m, cv_buf *b) {
    int r = 0;
    const cv_metrics_drill *d = &m->drill;
    if (!m->drill_known)
        return 0;
    CK(prom_seconds(b, "chatvault_drill_last_timestamp_seconds",
                    "Unix time the newest restore drill ended (0: none yet).",
                    (double)d->last_us / 1e6));
    CK(prom_seconds(b, "chatvault_drill_last_success_timestamp_seconds",
                    "Unix time the newest restore drill that passed ended (0: none).",
                    (double)d->last_success_us / 1e6));
    CK(prom_one(b, "chatvault_drill_last_passed", "gauge",
                "1 when the newest restore drill passed, 0 when it failed or none ran.",
                d->last_us && d->last_passed));
    CK(prom_seconds(b, "chatvault_drill_last_duration_seconds",
                    "Restore and verify time of the newest restore drill.",
                    d->last_seconds));
    CK(prom_one(b, "chatvault_drill_last_sampled_messages", "gauge",
                "Messages the newest restore drill restored.", d->last_sampled));
    CK(prom_one(b, "chatvault_drill_interval_seconds", "gauge",
                "drill.interval_s: how often this broker runs a drill (0: never).",
                d->interval_s));
out:
    return r;
}

/* The broker's scheduled retention, once it ran a pass. */
static int prom_retention(const cv_metrics *m, cv_buf *b) {
    int r = 0;
    const cv_metrics_retention *t = &m->retention;
    if (!m->retention_known)
        return 0;
    CK(prom_seconds(b, "chatvault_retention_last_run_timestamp_seconds",
                    "Unix time the broker's last retention pass ended.",
                    (double)t->last_us / 1e6));
    CK(prom_one(b, "chatvault_retention_last_run_ok", "gauge",
                "1 when the last retention pass completed, 0 when it failed.",
                t->last_ok));
    CK(prom_one(b, "chatvault_retention_dropped_segments_total", "counter",
                "Expired log segments the broker's retention dropped.",
                (int64_t)m->retention_segments));
    CK(prom_one(b, "chatvault_retention_dropped_records_total", "counter",
                "Log records in the segments retention dropped.",
                (int64_t)m->retention_records));
    CK(prom_one(b, "chatvault_retention_dropped_bytes_total", "counter",
                "Bytes of the log segments retention dropped.",
                (int64_t)m->retention_bytes));
    CK(prom_one(b, "chatvault_retention_deleted_rows_total", "counter",
                "PostgreSQL rows (latest versions) retention deleted with them.",
                (int64_t)m->retention_rows));
    CK(prom_one(b, "chatvault_retention_held_partitions", "gauge",
                "Partitions a legal hold kept from expiring in the last pass.",
                (int64_t)t->held));
    CK(prom_one(b, "chatvault_retention_interval_seconds", "gauge",
                "retention.interval_s: how often this broker applies retention.",
                t->interval_s));
out:
    return r;
}

/* chatvault_store_up and chatvault_store_errors_total, per store. */
static int prom_stores(const cv_metrics *m, cv_buf *b) {
    int r = 0;
    CK(prom_family(b, "chatvault_store_up", "gauge",
                   "1 when the store's last write succeeded, 0 after a failed "
                   "write until one succeeds."));
    for (size_t s = 0; s < 2; s++)
        if (m->stores[s].seen || s == 0)
            CK(cv_buf_printf(b, "chatvault_store_up{store=\"%s\"} %d\n",
                             cv_metrics_i_store_name(s), !m->stores[s].down));
    CK(prom_family(b, "chatvault_store_errors_total", "counter",
                   "Failed store writes (each is retried)."));
    for (size_t s = 0; s < 2; s++)
        if (m->stores[s].seen || s == 0)
            CK(cv_buf_printf(b,
                             "chatvault_store_errors_total{store=\"%s\"} %" PRId64 "\n",
                             cv_metrics_i_store_name(s), m->stores[s].errors));
out:
    return r;
}

/* The log's generations and torn tails. */
static int prom_log(const cv_metrics *m, cv_buf *b) {
    int r = 0;
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
out:
    return r;
}

/* Degraded acks and the connection to Kafka's brokers. */
static int prom_degraded_kafka(const cv_metrics *m, cv_buf *b) {
    int r = 0;
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
out:
    return r;
}

/* The label overflow and the pipeline thread's last tick. */
static int prom_pipeline(const cv_metrics *m, cv_buf *b, int64_t now_ms, int64_t now_us) {
    int r = 0;
    CK(prom_one(b, "chatvault_channels_overflow", "gauge",
                "1 when channels beyond metrics.max_channels are counted "
                "under channel=\"_other\".",
                m->other_used));
    CK(prom_seconds(b, "chatvault_pipeline_tick_age_seconds",
                    "Seconds since the pipeline thread last reported (about "
                    "every second while it runs; grows while it is blocked).",
                    m->last_tick_ms ? (double)(now_ms - m->last_tick_ms) / 1e3
                                    : (double)(now_us - m->start_us) / 1e6));
out:
    return r;
}

int cv_metrics_render_prometheus(cv_metrics *m, cv_buf *b) {
    int r = 0;
    int64_t now_us = m->now_us(), now_ms = m->mono_ms();
    pthread_mutex_lock(&m->lock);
    CK(prom_build_info(m, b));
    CK(prom_channel_counters(m, b));
    CK(prom_stored(m, b));
    CK(prom_acked(m, b));
    CK(prom_rejected(m, b));
    CK(prom_partition_lag(m, b, now_us));
    CK(prom_channel_status(m, b, now_ms, now_us));
    CK(prom_latencies(m, b));
    CK(prom_probe(m, b));
    CK(prom_drill(m, b));
    CK(prom_retention(m, b));
    CK(prom_stores(m, b));
    CK(prom_log(m, b));
    CK(prom_degraded_kafka(m, b));
    CK(prom_pipeline(m, b, now_ms, now_us));
out:
    pthread_mutex_unlock(&m->lock);
    return r;
}
