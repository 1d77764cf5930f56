/* compat_probe — what the system's librdkafka can do against a Kafka cluster.
 *
 *   compat_probe BOOTSTRAP TOPIC
 *
 * TOPIC must exist (any partition count). Runs, each printed as one line
 * `ok|FAIL <what>: <detail>`:
 *   1. an idempotent producer: 100 records, every delivery report OK;
 *   2. a consumer group member: subscribe, read the 100, commit, read the
 *      committed offsets back (OffsetCommit / OffsetFetch);
 *   3. admin calls chatvault's tools use: metadata, watermarks,
 *      rd_kafka_committed, list groups;
 *   4. a transactional producer: init, produce + send_offsets_to_transaction
 *      + commit; then produce + abort; a read_committed consumer sees the
 *      committed records and not the aborted ones, and the group's offsets
 *      moved with the committed transaction only.
 * Exit 0 when every line is ok. Built and run by deploy/kafka/compat.sh. */
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int failures;
static int delivered, delivery_errors;
static char first_delivery_error[512];

static void report(int ok, const char *what, const char *detail) {
    printf("%s %s: %s\n", ok ? "ok" : "FAIL", what, detail);
    fflush(stdout);
    if (!ok)
        failures++;
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    (void)opaque;
    if (m->err) {
        if (!delivery_errors++)
            snprintf(first_delivery_error, sizeof(first_delivery_error), "%s",
                     rd_kafka_err2str(m->err));
    } else {
        delivered++;
    }
}

static rd_kafka_t *make(rd_kafka_type_t type, const char *boot, const char **kv) {
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", boot, NULL, 0);
    for (; kv && kv[0]; kv += 2)
        if (rd_kafka_conf_set(c, kv[0], kv[1], err, sizeof(err)) != RD_KAFKA_CONF_OK) {
            fprintf(stderr, "compat_probe: %s=%s: %s\n", kv[0], kv[1], err);
            exit(2);
        }
    if (type == RD_KAFKA_PRODUCER)
        rd_kafka_conf_set_dr_msg_cb(c, dr_cb);
    rd_kafka_t *rk = rd_kafka_new(type, c, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "compat_probe: rd_kafka_new: %s\n", err);
        exit(1);
    }
    return rk;
}

static void produce_n(rd_kafka_t *p, const char *topic, int n, const char *tag) {
    for (int i = 0; i < n; i++) {
        char v[64];
        snprintf(v, sizeof(v), "%s-%d", tag, i);
        rd_kafka_resp_err_t e =
            rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE(v, strlen(v)),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (e) {
            delivery_errors++;
            snprintf(first_delivery_error, sizeof(first_delivery_error), "producev: %s",
                     rd_kafka_err2str(e));
        }
    }
}

static int has_tag(const rd_kafka_message_t *m, const char *tag) {
    return m->len >= strlen(tag) && memcmp(m->payload, tag, strlen(tag)) == 0;
}

/* Reads until N records or TIMEOUT_S; counts the values starting with "committed"
 * and "aborted" into TAGGED[0] and TAGGED[1] when given. */
static int consume(rd_kafka_t *c, int n, int timeout_s, int *tagged) {
    int got = 0;
    time_t end = time(NULL) + timeout_s;
    while (got < n && time(NULL) < end) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 200);
        if (!m)
            continue;
        if (!m->err) {
            got++;
            if (tagged && has_tag(m, "committed"))
                tagged[0]++;
            if (tagged && has_tag(m, "aborted"))
                tagged[1]++;
        }
        rd_kafka_message_destroy(m);
    }
    return got;
}

static const char *txn_err(rd_kafka_error_t *e, char *buf, size_t len) {
    snprintf(buf, len, "%s (%s)", rd_kafka_error_string(e), rd_kafka_error_name(e));
    rd_kafka_error_destroy(e);
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: compat_probe BOOTSTRAP TOPIC\n");
        return 2;
    }
    const char *boot = argv[1], *topic = argv[2];
    char d[1024], group[64], tid[64];
    snprintf(group, sizeof(group), "compat-%ld", (long)time(NULL));
    snprintf(tid, sizeof(tid), "compat-txn-%ld", (long)time(NULL));
    printf("librdkafka %s\n", rd_kafka_version_str());

    /* 1. idempotent producer */
    const char *pkv[] = {"enable.idempotence", "true", "linger.ms", "5", NULL};
    rd_kafka_t *p = make(RD_KAFKA_PRODUCER, boot, pkv);
    produce_n(p, topic, 100, "idem");
    rd_kafka_flush(p, 30000);
    snprintf(d, sizeof(d), "%d of 100 delivered%s%s", delivered,
             delivery_errors ? ", first error: " : "", first_delivery_error);
    report(delivered == 100 && !delivery_errors, "idempotent producer", d);
    rd_kafka_destroy(p);

    /* 2. consumer group */
    const char *ckv[] = {
        "group.id", group, "auto.offset.reset", "earliest", "enable.auto.commit",
        "false",    NULL};
    rd_kafka_t *c = make(RD_KAFKA_CONSUMER, boot, ckv);
    rd_kafka_poll_set_consumer(c);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(c, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    int got = consume(c, 100, 60, NULL);
    rd_kafka_resp_err_t ce = rd_kafka_commit(c, NULL, 0);
    snprintf(d, sizeof(d), "subscribed, read %d, commit: %s", got, rd_kafka_err2str(ce));
    report(got >= 100 && !ce, "consumer group (JoinGroup/SyncGroup/Fetch/OffsetCommit)",
           d);

    /* 3. admin-ish calls */
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t me = rd_kafka_metadata(c, 1, NULL, &md, 10000);
    int parts = 0;
    if (!me)
        for (int i = 0; i < md->topic_cnt; i++)
            if (strcmp(md->topics[i].topic, topic) == 0)
                parts = md->topics[i].partition_cnt;
    snprintf(d, sizeof(d), "%s, %d brokers, topic %s has %d partitions",
             rd_kafka_err2str(me), me ? 0 : md->broker_cnt, topic, parts);
    report(!me && parts > 0, "metadata", d);
    if (md)
        rd_kafka_metadata_destroy(md);
    int64_t lo = -1, hi = -1;
    rd_kafka_resp_err_t we =
        rd_kafka_query_watermark_offsets(c, topic, 0, &lo, &hi, 10000);
    snprintf(d, sizeof(d), "%s, partition 0: [%" PRId64 ", %" PRId64 ")",
             rd_kafka_err2str(we), lo, hi);
    report(!we && hi >= 0, "watermarks (ListOffsets)", d);
    rd_kafka_topic_partition_list_t *asg = NULL;
    rd_kafka_assignment(c, &asg);
    rd_kafka_resp_err_t fe = rd_kafka_committed(c, asg, 10000);
    int64_t sum = 0;
    for (int i = 0; !fe && i < asg->cnt; i++)
        sum += asg->elems[i].offset > 0 ? asg->elems[i].offset : 0;
    snprintf(d, sizeof(d), "%s, committed offsets sum to %" PRId64, rd_kafka_err2str(fe),
             sum);
    report(!fe && sum >= 100, "rd_kafka_committed (OffsetFetch)", d);
    rd_kafka_topic_partition_list_destroy(asg);
    const struct rd_kafka_group_list *gl = NULL;
    rd_kafka_resp_err_t ge = rd_kafka_list_groups(c, group, &gl, 10000);
    snprintf(d, sizeof(d), "%s, %d group(s) named %s", rd_kafka_err2str(ge),
             ge ? 0 : gl->group_cnt, group);
    report(!ge && gl->group_cnt == 1, "list/describe groups", d);
    if (gl)
        rd_kafka_group_list_destroy(gl);

    /* 4. transactions */
    const char *tkv[] = {"transactional.id", tid, "linger.ms", "5", NULL};
    delivered = delivery_errors = 0;
    rd_kafka_t *t = make(RD_KAFKA_PRODUCER, boot, tkv);
    rd_kafka_error_t *e = rd_kafka_init_transactions(t, 30000);
    if (e) {
        report(0, "init_transactions (InitProducerId with transactional.id)",
               txn_err(e, d, sizeof(d)));
        goto out;
    }
    report(1, "init_transactions (InitProducerId with transactional.id)", "done");
    rd_kafka_topic_partition_list_t *pos = NULL;
    rd_kafka_assignment(c, &pos);
    rd_kafka_position(c, pos);
    for (int i = 0; i < pos->cnt; i++)
        if (pos->elems[i].offset < 0)
            pos->elems[i].offset = 0;
    /* The group's offsets go back to 0 first, so that the check below can
     * only pass when the transaction moved them. */
    rd_kafka_topic_partition_list_t *zero = rd_kafka_topic_partition_list_copy(pos);
    for (int i = 0; i < zero->cnt; i++)
        zero->elems[i].offset = 0;
    rd_kafka_commit(c, zero, 0);
    rd_kafka_topic_partition_list_destroy(zero);
    e = rd_kafka_begin_transaction(t);
    if (!e) {
        produce_n(t, topic, 50, "committed");
        rd_kafka_consumer_group_metadata_t *cgm = rd_kafka_consumer_group_metadata(c);
        e = rd_kafka_send_offsets_to_transaction(t, pos, cgm, 30000);
        rd_kafka_consumer_group_metadata_destroy(cgm);
        if (e) {
            report(0, "send_offsets_to_transaction (AddOffsetsToTxn/TxnOffsetCommit)",
                   txn_err(e, d, sizeof(d)));
            goto out;
        }
        report(1, "send_offsets_to_transaction (AddOffsetsToTxn/TxnOffsetCommit)",
               "done");
        e = rd_kafka_commit_transaction(t, 30000);
    }
    if (e) {
        report(0, "commit_transaction (EndTxn)", txn_err(e, d, sizeof(d)));
        goto out;
    }
    snprintf(d, sizeof(d), "50 records, %d delivered", delivered);
    report(delivered == 50, "commit_transaction (EndTxn)", d);
    e = rd_kafka_begin_transaction(t);
    if (!e) {
        produce_n(t, topic, 30, "aborted");
        rd_kafka_flush(t, 30000);
        e = rd_kafka_abort_transaction(t, 30000);
    }
    report(!e, "abort_transaction", e ? txn_err(e, d, sizeof(d)) : "30 records aborted");
    /* read_committed: sees the 50, not the 30 */
    char g2[80];
    snprintf(g2, sizeof(g2), "%s-rc", group);
    const char *rkv[] = {"group.id",
                         g2,
                         "auto.offset.reset",
                         "earliest",
                         "enable.auto.commit",
                         "false",
                         "isolation.level",
                         "read_committed",
                         NULL};
    rd_kafka_t *rc = make(RD_KAFKA_CONSUMER, boot, rkv);
    rd_kafka_poll_set_consumer(rc);
    sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rc, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    int seen[2] = {0, 0}, total = consume(rc, 1 << 30, 15, seen);
    int committed_seen = seen[0], aborted_seen = seen[1];
    snprintf(d, sizeof(d), "read %d: 100 plain + %d committed + %d aborted", total,
             committed_seen, aborted_seen);
    report(committed_seen == 50 && aborted_seen == 0, "read_committed consumer", d);
    rd_kafka_consumer_close(rc);
    rd_kafka_destroy(rc);
    /* the group's offsets moved with the committed transaction */
    rd_kafka_topic_partition_list_t *after = rd_kafka_topic_partition_list_copy(pos);
    rd_kafka_resp_err_t ae = rd_kafka_committed(c, after, 10000);
    int same = !ae;
    int64_t moved = 0;
    for (int i = 0; same && i < after->cnt; i++) {
        same = after->elems[i].offset == pos->elems[i].offset;
        moved += after->elems[i].offset;
    }
    same = same && moved > 0;
    snprintf(d, sizeof(d),
             "%s; committed offsets (sum %" PRId64 ") %s the positions sent in the "
             "transaction",
             rd_kafka_err2str(ae), moved, same ? "equal" : "differ from");
    report(same, "offsets committed by the transaction", d);
    rd_kafka_topic_partition_list_destroy(after);
    rd_kafka_topic_partition_list_destroy(pos);
out:
    rd_kafka_destroy(t);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    printf("%s\n", failures ? "compat_probe: some calls failed" : "compat_probe: all ok");
    return failures ? 1 : 0;
}
