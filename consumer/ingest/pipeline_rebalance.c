/*
 * pipeline_rebalance — the consumer group's rebalance callback: on
 * assignment each partition resumes from Kafka's committed offset (and
 * chatvault.kafka_offsets is compared with it, see
 * cv_stores_check_offsets); on revocation the batch in flight is finished,
 * acked and committed first, or, while a store is down, given up for the
 * next owner (see the top of pipeline.c).
 *
 * Threading: librdkafka calls it on the pipeline thread, inside a poll of
 * the consumer (in_rebalance is set meanwhile: the consumer is not polled
 * again from inside it).
 */
#include "ingest/pipeline_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ingest/stores.h"
#include "record.h"

static void assign(cv_pipeline *p, rd_kafka_topic_partition_list_t *parts) {
    char err[512];
    cv_pipeline_i_finish_storing(p); /* the stores' connection is this thread's again */
    for (int i = 0; i < parts->cnt; i++)
        parts->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
    rd_kafka_resp_err_t kerr = rd_kafka_committed(p->consumer, parts, 10000);
    if (kerr)
        cv_pipeline_i_log(
            p, CV_LOG_WARN,
            "cannot read committed offsets now; librdkafka fetches them itself "
            "when it starts the partitions, but postgres is not checked against "
            "them for this assignment (chatvault verify finds any gap)",
            "error=\"%s\"", rd_kafka_err2str(kerr));
    for (int i = 0; i < parts->cnt; i++)
        if (parts->elems[i].err)
            parts->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
    if (cv_stores_check_offsets(p->stores, parts, err, sizeof(err)) < 0)
        cv_pipeline_i_log(
            p, CV_LOG_WARN,
            "cannot compare chatvault.kafka_offsets with Kafka's committed offsets "
            "now; they are compared before postgres's next write",
            "error=\"%s\"", err);
    for (int i = 0; i < parts->cnt; i++) {
        if (parts->elems[i].offset >= 0)
            cv_pipeline_i_log(p, CV_LOG_INFO, "partition assigned",
                              "topic=%s partition=%" PRId32 " committed_offset=%" PRId64,
                              parts->elems[i].topic, parts->elems[i].partition,
                              parts->elems[i].offset);
        else
            cv_pipeline_i_log(p, CV_LOG_INFO,
                              "partition assigned; no committed offset: it starts at its "
                              "beginning (auto.offset.reset)",
                              "topic=%s partition=%" PRId32, parts->elems[i].topic,
                              parts->elems[i].partition);
    }
    if (strcmp(rd_kafka_rebalance_protocol(p->consumer), "COOPERATIVE") == 0) {
        rd_kafka_error_t *e = rd_kafka_incremental_assign(p->consumer, parts);
        if (e) {
            cv_pipeline_i_log(p, CV_LOG_ERROR, "incremental assign failed",
                              "error=\"%s\"", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
        }
    } else {
        rd_kafka_assign(p->consumer, parts);
    }
}

/* A record of batch `b` whose partition is not in `parts`, or NULL. */
static const cv_rec *record_outside(const batch *b,
                                    const rd_kafka_topic_partition_list_t *parts) {
    const cv_rec *last = NULL;
    for (size_t i = 0; b && i < b->n; i++) {
        const cv_rec *r = &b->recs[i];
        if (last && last->partition == r->partition && strcmp(last->topic, r->topic) == 0)
            continue;
        if (!rd_kafka_topic_partition_list_find(parts, r->topic, r->partition))
            return r;
        last = r;
    }
    return NULL;
}

void cv_pipeline_i_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                rd_kafka_topic_partition_list_t *parts, void *opaque) {
    cv_pipeline *p = opaque;
    bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    p->in_rebalance = true;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        assign(p, parts);
        p->in_rebalance = false;
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        if (p->in_store) {
            /* A store is down and the batch in flight is not durable: give
             * it, and the one filling behind it, up uncommitted; the next
             * owner is re-delivered them. */
            cv_pipeline_i_log(p, CV_LOG_WARN,
                              "partitions revoked while a store is down; the batches "
                              "in flight are left for the next owner",
                              "count=%d", parts->cnt);
            /* An incremental revoke may leave partitions of those batches
             * assigned: going on with them would skip what is given up. */
            const cv_rec *kept = record_outside(p->retrying, parts);
            if (!kept)
                kept = record_outside(p->fill, parts);
            if (kept) {
                char why[512];
                snprintf(why, sizeof(why),
                         "partitions revoked while a store is down left %s/%" PRId32
                         " assigned with records given up from offset %" PRId64
                         " on; stopping so that Kafka re-delivers them",
                         kept->topic, kept->partition, kept->offset);
                cv_pipeline_i_set_fatal(p, why);
                if (p->retrying)
                    cv_pipeline_i_make_hole(p, p->retrying, why);
            }
            p->abandon = true;
            cv_pipeline_i_release_batch(p->fill);
            cv_pipeline_i_drain_acks(p, p->shutdown_timeout_ms);
        } else {
            cv_pipeline_i_log(p, CV_LOG_INFO,
                              "partitions revoked; finishing the batch in flight",
                              "count=%d", parts->cnt);
            cv_pipeline_i_drain(p, p->shutdown_timeout_ms);
        }
    } else {
        cv_pipeline_i_log(p, CV_LOG_ERROR, "rebalance error", "error=\"%s\"",
                          rd_kafka_err2str(err));
    }
    if (cooperative) {
        rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
        if (e)
            rd_kafka_error_destroy(e);
    } else {
        rd_kafka_assign(rk, NULL);
    }
    p->in_rebalance = false;
}
