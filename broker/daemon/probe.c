/*
 * probe — see probe.h.
 */
#include "daemon/probe.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chatvault.pb-c.h"
#include "cli.h"

struct cv_probe {
    rd_kafka_t *rk;
    char *topic, *channel;
    int64_t interval_ms;
    cv_metrics *metrics;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stopping;
    bool failing; /* last delivery failed: log again only on a change */
    char id_prefix[128];
};

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    cv_probe *p = opaque;
    (void)rk;
    if (m->err && !p->failing)
        cv_log(CV_LOG_WARN, "probe message not delivered", "topic=%s error=\"%s\"",
               p->topic, rd_kafka_err2str(m->err));
    else if (!m->err && p->failing)
        cv_log(CV_LOG_INFO, "probe messages delivered again", "topic=%s", p->topic);
    p->failing = m->err != 0;
}

static void publish(cv_probe *p, uint64_t seq) {
    char id[192];
    snprintf(id, sizeof(id), "%s-%" PRIu64, p->id_prefix, seq);
    Chatvault__V1__ChatMessage msg = CHATVAULT__V1__CHAT_MESSAGE__INIT;
    msg.message_id = id;
    msg.channel = p->channel;
    msg.sender_id = "chatvault-probe";
    msg.sent_at_us = cv_now_us();
    msg.content_type = "application/x-chatvault-probe";
    msg.body.data = (uint8_t *)"probe";
    msg.body.len = 5;
    unsigned char buf[512];
    size_t len = chatvault__v1__chat_message__get_packed_size(&msg);
    if (len > sizeof(buf))
        return;
    chatvault__v1__chat_message__pack(&msg, buf);
    rd_kafka_resp_err_t e =
        rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(p->topic), RD_KAFKA_V_VALUE(buf, len),
                          RD_KAFKA_V_KEY(p->channel, strlen(p->channel)),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    if (e) {
        if (!p->failing)
            cv_log(CV_LOG_WARN, "probe message not queued", "topic=%s error=\"%s\"",
                   p->topic, rd_kafka_err2str(e));
        p->failing = true;
        return;
    }
    if (p->metrics)
        cv_metrics_probe_sent(p->metrics);
}

static void *run(void *arg) {
    cv_probe *p = arg;
    pthread_setname_np(pthread_self(), "cv-probe");
    uint64_t seq = 0;
    pthread_mutex_lock(&p->lock);
    while (!p->stopping) {
        pthread_mutex_unlock(&p->lock);
        publish(p, ++seq);
        pthread_mutex_lock(&p->lock);
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        int64_t ns = (int64_t)until.tv_nsec + (p->interval_ms % 1000) * 1000000;
        until.tv_sec += (time_t)(p->interval_ms / 1000 + ns / 1000000000);
        until.tv_nsec = (long)(ns % 1000000000);
        /* Serve delivery reports while waiting, at least every 100 ms. */
        while (!p->stopping) {
            pthread_mutex_unlock(&p->lock);
            rd_kafka_poll(p->rk, 0);
            pthread_mutex_lock(&p->lock);
            struct timespec now, step;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec > until.tv_sec ||
                (now.tv_sec == until.tv_sec && now.tv_nsec >= until.tv_nsec))
                break;
            step = now;
            step.tv_nsec += 100000000;
            if (step.tv_nsec >= 1000000000) {
                step.tv_sec++;
                step.tv_nsec -= 1000000000;
            }
            if (step.tv_sec > until.tv_sec ||
                (step.tv_sec == until.tv_sec && step.tv_nsec > until.tv_nsec))
                step = until;
            pthread_cond_timedwait(&p->cond, &p->lock, &step);
        }
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int cv_probe_start(const cv_probe_conf *conf, cv_probe **ret_probe, char *errbuf,
                   size_t errlen) {
    rd_kafka_conf_t *kconf = conf->producer_conf;
    cv_probe *p = calloc(1, sizeof(*p));
    if (!p || conf->interval_ms <= 0) {
        snprintf(errbuf, errlen, p ? "probe.interval_ms must be > 0" : "out of memory");
        free(p);
        rd_kafka_conf_destroy(kconf);
        return p ? -EINVAL : -ENOMEM;
    }
    p->interval_ms = conf->interval_ms;
    p->metrics = conf->metrics;
    p->topic = strdup(conf->topic);
    p->channel = strdup(conf->channel);
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    snprintf(p->id_prefix, sizeof(p->id_prefix), "probe-%s-%d-%" PRId64, host,
             (int)getpid(), cv_now_us());
    pthread_mutex_init(&p->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (!p->topic || !p->channel) {
        snprintf(errbuf, errlen, "out of memory");
        rd_kafka_conf_destroy(kconf);
        cv_probe_stop(p);
        return -ENOMEM;
    }
    rd_kafka_conf_set_dr_msg_cb(kconf, on_delivery);
    rd_kafka_conf_set_opaque(kconf, p);
    char kerr[512];
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, kconf, kerr, sizeof(kerr));
    if (!p->rk) {
        snprintf(errbuf, errlen, "probe producer: %.400s", kerr);
        rd_kafka_conf_destroy(kconf);
        cv_probe_stop(p);
        return -EINVAL;
    }
    if (pthread_create(&p->thread, NULL, run, p) != 0) {
        snprintf(errbuf, errlen, "cannot start the probe thread");
        rd_kafka_destroy(p->rk);
        p->rk = NULL;
        cv_probe_stop(p);
        return -EAGAIN;
    }
    *ret_probe = p;
    return 0;
}

cv_probe *cv_probe_stop(cv_probe *p) {
    if (!p)
        return NULL;
    if (p->rk) { /* the thread runs exactly when the producer exists */
        pthread_mutex_lock(&p->lock);
        p->stopping = true;
        pthread_cond_signal(&p->cond);
        pthread_mutex_unlock(&p->lock);
        pthread_join(p->thread, NULL);
        rd_kafka_flush(p->rk, 2000);
        rd_kafka_destroy(p->rk);
    }
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p->topic);
    free(p->channel);
    free(p);
    return NULL;
}
