/*
 * Unit test of broker/daemon/probe.c against librdkafka's mock cluster in this
 * process: the probe publishes valid ChatMessages of the probe channel at
 * its interval, with fresh sent_at and unique ids, counts them in
 * cv_metrics, and stops promptly.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chatvault.pb-c.h"
#include "daemon/devkafka.h"
#include "daemon/probe.h"
#include "tap.h"

int main(void) {
    char err[512];
    cv_devkafka *dk = NULL;
    if (cv_devkafka_start(1, &dk, err, sizeof(err)) < 0 ||
        cv_devkafka_create_topic(dk, "chat._probe", 1, err, sizeof(err)) < 0) {
        printf("Bail out! mock cluster: %s\n", err);
        return 1;
    }
    const char *bs = cv_devkafka_bootstraps(dk);
    cv_metrics *m = NULL;
    cv_metrics_conf mc = {.topics_prefix = "chat.",
                          .max_channels = 10,
                          .version = "test",
                          .probe_channel = CV_PROBE_CHANNEL};
    TAP_IS_INT(cv_metrics_new(&mc, &m), 0, "metrics with a probe channel");

    rd_kafka_conf_t *pc = rd_kafka_conf_new();
    rd_kafka_conf_set(pc, "bootstrap.servers", bs, err, sizeof(err));
    cv_probe *probe = NULL;
    cv_probe_conf conf = {.producer_conf = pc,
                          .topic = "chat._probe",
                          .channel = CV_PROBE_CHANNEL,
                          .interval_ms = 100,
                          .metrics = m};
    int64_t started = cv_now_us();
    TAP_IS_INT(cv_probe_start(&conf, &probe, err, sizeof(err)), 0, "probe starts");
    usleep(1000 * 1000);
    int64_t t0 = cv_mono_ms();
    probe = cv_probe_stop(probe);
    tap_ok(cv_mono_ms() - t0 < 2500, "stop returns promptly (%lld ms)",
           (long long)(cv_mono_ms() - t0));

    /* Read the topic back. */
    rd_kafka_conf_t *cc = rd_kafka_conf_new();
    rd_kafka_conf_set(cc, "bootstrap.servers", bs, err, sizeof(err));
    rd_kafka_conf_set(cc, "group.id", "probe-test", err, sizeof(err));
    rd_kafka_conf_set(cc, "enable.partition.eof", "true", err, sizeof(err));
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, sizeof(err));
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, "chat._probe", 0)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(c, l);
    rd_kafka_topic_partition_list_destroy(l);
    int n = 0, valid = 0, fresh = 0;
    char ids[64][192];
    int64_t deadline = cv_mono_ms() + 5000;
    while (cv_mono_ms() < deadline && n < 64) {
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(c, 200);
        if (!msg)
            continue;
        if (msg->err) {
            rd_kafka_message_destroy(msg);
            if (n)
                break; /* end of partition */
            continue;
        }
        Chatvault__V1__ChatMessage *cm =
            chatvault__v1__chat_message__unpack(NULL, msg->len, msg->payload);
        if (cm && strcmp(cm->channel, CV_PROBE_CHANNEL) == 0 && *cm->message_id) {
            valid++;
            if (cm->sent_at_us >= started && cm->sent_at_us <= cv_now_us())
                fresh++;
            snprintf(ids[n], sizeof(ids[n]), "%s", cm->message_id);
        }
        if (cm)
            chatvault__v1__chat_message__free_unpacked(cm, NULL);
        n++;
        rd_kafka_message_destroy(msg);
    }
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    tap_ok(n >= 5 && n <= 15, "about one message per 100 ms in 1 s (%d)", n);
    TAP_IS_INT(valid, n, "every probe message is a ChatMessage of channel _probe");
    TAP_IS_INT(fresh, n, "sent_at is the time it was published");
    int dup = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            dup += strcmp(ids[i], ids[j]) == 0;
    TAP_IS_INT(dup, 0, "message ids are unique");

    /* The pipeline acking one: the probe histogram gets it. */
    cv_ack_note note = {.topic = "chat._probe",
                        .partition = 0,
                        .offset = 0,
                        .sent_at_us = cv_now_us() - 30000,
                        .timestamp_ms = -1,
                        .status = CHATVAULT__V1__ACK_STATUS__PERSISTED};
    const cv_pipeline_observer *o = cv_metrics_observer(m);
    o->acked(o->opaque, &note, 1);
    cv_buf b;
    cv_buf_init(&b, 1 << 20);
    cv_metrics_render_prometheus(m, &b);
    cv_buf_append(&b, "", 1);
    const char *text = (const char *)b.data;
    tap_ok(strstr(text, "chatvault_probe_latency_seconds_count 1\n") != NULL,
           "an acked probe record feeds chatvault_probe_latency_seconds");
    char want[64];
    snprintf(want, sizeof(want), "chatvault_probe_sent_total %d\n", n);
    tap_ok(strstr(text, want) != NULL, "chatvault_probe_sent_total counts what was sent");
    b.len = 0;
    cv_metrics_render_lag_json(m, &b);
    cv_buf_append(&b, "", 1);
    tap_ok(strstr((const char *)b.data, "\"probe\":{\"topic\":\"chat._probe\"") != NULL,
           "/api/lag carries the probe");
    cv_buf_release(&b);
    cv_metrics_free(m);
    cv_devkafka_free(dk);
    return tap_done();
}
