/*
 * acker — see acker.h.
 */
#include "ingest/acker.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define RETRY_PAUSE_MS 500
#define ACK_MAX_BYTES 2048
/* How long one step of a transaction may take. Longer than the failover of
 * a partition leader or of the transaction coordinator, which librdkafka
 * rides out inside the step; shorter than transaction.timeout.ms, after
 * which the coordinator aborts the transaction itself. */
#define TXN_STEP_MS 10000

/* A delivery that failed, waiting to be produced again. */
typedef struct retry {
    struct retry *next;
    cv_ack_ticket *ticket;
    char *topic;
    void *key, *value;
    size_t key_len, value_len;
    rd_kafka_headers_t *headers;
} retry;

struct cv_acker {
    rd_kafka_t *rk;
    rd_kafka_conf_t *conf; /* a copy, to build a new producer from */
    int64_t restarts;
    char *ack_topic, *dlq_topic, *prefix;
    retry *retries, **retries_tail;
    int64_t retry_at_ms;
    rd_kafka_resp_err_t last_error;
    bool transactional;
    bool txn_open; /* begun and neither committed nor aborted */
};

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    cv_acker *a = opaque;
    cv_ack_ticket *t = m->_private;
    if (a->transactional) {
        /* The transaction's commit or abort settles the batch as a whole
         * (see cv_acker_send_txn); a report may even arrive after the
         * batch's next attempt began, so it must not touch the ticket. */
        a->last_error = m->err;
        return;
    }
    if (!m->err) {
        t->outstanding--;
        t->delivered++;
        a->last_error = RD_KAFKA_RESP_ERR_NO_ERROR;
        return;
    }
    /* Keep a copy to produce again; the ticket stays outstanding. */
    a->last_error = m->err;
    t->failures++;
    retry *r = calloc(1, sizeof(*r));
    const char *topic = rd_kafka_topic_name(m->rkt);
    rd_kafka_headers_t *hdrs = NULL;
    if (r && rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR)
        r->headers = rd_kafka_headers_copy(hdrs);
    if (r) {
        r->ticket = t;
        r->topic = strdup(topic);
        r->key_len = m->key_len;
        r->value_len = m->len;
        r->key = m->key_len ? malloc(m->key_len) : NULL;
        r->value = m->len ? malloc(m->len) : NULL;
        if (r->key)
            memcpy(r->key, m->key, m->key_len);
        if (r->value)
            memcpy(r->value, m->payload, m->len);
    }
    if (!r || !r->topic || (m->key_len && !r->key) || (m->len && !r->value)) {
        /* Out of memory: the batch can never complete, which keeps its
         * offsets uncommitted; the records are re-delivered after restart. */
        if (r) {
            free(r->topic), free(r->key), free(r->value);
            if (r->headers)
                rd_kafka_headers_destroy(r->headers);
            free(r);
        }
        return;
    }
    *a->retries_tail = r;
    a->retries_tail = &r->next;
    if (!a->retry_at_ms)
        a->retry_at_ms = cv_mono_ms() + RETRY_PAUSE_MS;
    (void)rk;
}

int cv_acker_new(rd_kafka_conf_t *conf, const char *ack_topic, const char *dlq_topic,
                 const char *topic_prefix, cv_acker **ret_acker, char *errbuf,
                 size_t errlen) {
    cv_acker *a = calloc(1, sizeof(*a));
    if (!a || !(a->ack_topic = strdup(ack_topic)) ||
        !(a->dlq_topic = strdup(dlq_topic)) || !(a->prefix = strdup(topic_prefix))) {
        snprintf(errbuf, errlen, "out of memory");
        rd_kafka_conf_destroy(conf);
        cv_acker_free(a, 0);
        return -ENOMEM;
    }
    a->retries_tail = &a->retries;
    rd_kafka_conf_set_opaque(conf, a);
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    a->conf = rd_kafka_conf_dup(conf);
    char kerr[512], txn_id[256] = "";
    size_t txn_len = sizeof(txn_id);
    a->transactional = rd_kafka_conf_get(conf, "transactional.id", txn_id, &txn_len) ==
                           RD_KAFKA_CONF_OK &&
                       *txn_id;
    a->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr));
    if (!a->rk) {
        snprintf(errbuf, errlen, "kafka: cannot create the ack producer: %s", kerr);
        rd_kafka_conf_destroy(conf);
        cv_acker_free(a, 0);
        return -EINVAL;
    }
    if (a->transactional) {
        /* Fences a predecessor with the same id and aborts what it left
         * open, so its acks stay invisible and its offsets uncommitted. */
        rd_kafka_error_t *e = rd_kafka_init_transactions(a->rk, TXN_STEP_MS);
        if (e) {
            snprintf(errbuf, errlen,
                     "kafka: cannot start the acks' transactions (transactional.id "
                     "%s): %s",
                     txn_id, rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
            cv_acker_free(a, 0);
            return -EIO;
        }
    }
    *ret_acker = a;
    return 0;
}

bool cv_acker_transactional(const cv_acker *a) {
    return a->transactional;
}

static void retry_free(retry *r) {
    free(r->topic);
    free(r->key);
    free(r->value);
    if (r->headers)
        rd_kafka_headers_destroy(r->headers);
    free(r);
}

cv_acker *cv_acker_free(cv_acker *a, int timeout_ms) {
    if (!a)
        return NULL;
    if (a->rk && a->txn_open) {
        /* Stopped while trying a transaction again: leave nothing open for
         * the coordinator's timeout (and read_committed readers) to wait on. */
        rd_kafka_error_t *e = rd_kafka_abort_transaction(a->rk, timeout_ms);
        if (e)
            rd_kafka_error_destroy(e);
    }
    if (a->rk) {
        rd_kafka_flush(a->rk, timeout_ms);
        rd_kafka_destroy(a->rk);
    }
    for (retry *r = a->retries, *n; r; r = n) {
        n = r->next;
        retry_free(r);
    }
    if (a->conf)
        rd_kafka_conf_destroy(a->conf);
    free(a->ack_topic);
    free(a->dlq_topic);
    free(a->prefix);
    free(a);
    return NULL;
}

rd_kafka_t *cv_acker_handle(cv_acker *a) {
    return a->rk;
}

rd_kafka_resp_err_t cv_acker_last_error(const cv_acker *a) {
    return a->last_error;
}

int64_t cv_acker_restarts(const cv_acker *a) {
    return a->restarts;
}

/* An idempotent producer that hit a fatal error (a broken sequence after
 * faults, say) refuses every message from then on. Its undelivered messages
 * are purged into the retry list (their delivery reports say so) and a new
 * producer takes over; acks are at-least-once, so a message that was in
 * flight may be acked twice. */
static bool restart_if_fatal(cv_acker *a) {
    if (a->transactional)
        return false; /* a new producer would fence nothing but itself */
    char reason[512];
    rd_kafka_resp_err_t err = rd_kafka_fatal_error(a->rk, reason, sizeof(reason));
    if (!err)
        return false;
    rd_kafka_conf_t *conf = rd_kafka_conf_dup(a->conf);
    char kerr[512];
    rd_kafka_purge(a->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    /* Serves the purged messages' delivery reports: dr_cb → retries. */
    rd_kafka_flush(a->rk, 2000);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr));
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return false; /* try again on the next poll */
    }
    rd_kafka_destroy(a->rk);
    a->rk = rk;
    a->restarts++;
    a->retry_at_ms = cv_mono_ms();
    a->last_error = err;
    return true;
}

/* Produces one message, serving delivery reports while the queue is full.
 * `headers` is taken over on success. */
static rd_kafka_resp_err_t produce(cv_acker *a, const char *topic, const void *key,
                                   size_t key_len, const void *value, size_t value_len,
                                   rd_kafka_headers_t *headers, cv_ack_ticket *t) {
    for (;;) {
        rd_kafka_resp_err_t err;
        if (headers)
            err = rd_kafka_producev(
                a->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY((void *)key, key_len),
                RD_KAFKA_V_VALUE((void *)value, value_len),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(headers),
                RD_KAFKA_V_OPAQUE(t), RD_KAFKA_V_END);
        else
            err = rd_kafka_producev(a->rk, RD_KAFKA_V_TOPIC(topic),
                                    RD_KAFKA_V_KEY((void *)key, key_len),
                                    RD_KAFKA_V_VALUE((void *)value, value_len),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                    RD_KAFKA_V_OPAQUE(t), RD_KAFKA_V_END);
        if (err == RD_KAFKA_RESP_ERR__FATAL && restart_if_fatal(a))
            continue;
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            return err;
        rd_kafka_poll(a->rk, 10);
    }
}

size_t cv_acker_encode(const cv_rec *rec, unsigned char *buf, size_t cap) {
    Chatvault__V1__DeliveryAck ack = CHATVAULT__V1__DELIVERY_ACK__INIT;
    const Chatvault__V1__ChatMessage *m = rec->env.msg;
    ack.message_id = m && m->message_id ? m->message_id : "";
    ack.channel = m && m->channel ? m->channel : "";
    ack.topic = (char *)rec->topic;
    ack.partition = rec->partition;
    ack.offset = rec->offset;
    ack.status = rec->status;
    ack.stores = rec->stores;
    ack.persisted_at_us = rec->persisted_at_us;
    ack.sent_at_us = m ? m->sent_at_us : 0;
    ack.error = (char *)(cv_rec_valid(rec) ? "" : rec->env.error);
    if (rec->has_digest) {
        ack.log_digest.data = (uint8_t *)rec->digest;
        ack.log_digest.len = CV_DIGEST_BYTES;
    }
    size_t need = chatvault__v1__delivery_ack__get_packed_size(&ack);
    if (need > cap)
        return 0;
    return chatvault__v1__delivery_ack__pack(&ack, buf);
}

static rd_kafka_headers_t *dlq_headers(const cv_rec *rec) {
    rd_kafka_headers_t *src = NULL, *h;
    if (rd_kafka_message_headers(rec->rkm, &src) == RD_KAFKA_RESP_ERR_NO_ERROR)
        h = rd_kafka_headers_copy(src);
    else
        h = rd_kafka_headers_new(8);
    char part[16], off[24];
    snprintf(part, sizeof(part), "%" PRId32, rec->partition);
    snprintf(off, sizeof(off), "%" PRId64, rec->offset);
    char source[300];
    snprintf(source, sizeof(source), "%s/%" PRId32 "@%" PRId64, rec->topic,
             rec->partition, rec->offset);
    const char *reason = cv_reject_reason_name(rec->env.reason);
    rd_kafka_header_add(h, "chatvault-error", -1, rec->env.error, -1);
    rd_kafka_header_add(h, "chatvault-reason", -1, reason, -1);
    rd_kafka_header_add(h, "chatvault-source", -1, source, -1);
    /* Kafka Connect's dead-letter headers, so existing tools read them. */
    rd_kafka_header_add(h, "__connect.errors.topic", -1, rec->topic, -1);
    rd_kafka_header_add(h, "__connect.errors.partition", -1, part, -1);
    rd_kafka_header_add(h, "__connect.errors.offset", -1, off, -1);
    rd_kafka_header_add(h, "__connect.errors.exception.class.name", -1,
                        "chatvault.Rejected", -1);
    rd_kafka_header_add(h, "__connect.errors.exception.message", -1, rec->env.error, -1);
    rd_kafka_header_add(h, "__connect.errors.stage", -1, reason, -1);
    return h;
}

static const char *ack_key(const cv_acker *a, const cv_rec *rec) {
    const Chatvault__V1__ChatMessage *m = rec->env.msg;
    if (m && m->channel && cv_channel_valid(m->channel, strlen(m->channel)))
        return m->channel;
    size_t n = strlen(a->prefix);
    return strncmp(rec->topic, a->prefix, n) == 0 ? rec->topic + n : rec->topic;
}

int cv_acker_send(cv_acker *a, const cv_rec *recs, size_t n, cv_ack_ticket *t,
                  char *errbuf, size_t errlen) {
    unsigned char buf[ACK_MAX_BYTES];
    for (size_t i = 0; i < n; i++) {
        const cv_rec *rec = &recs[i];
        rd_kafka_resp_err_t err;
        if (!cv_rec_valid(rec)) {
            rd_kafka_headers_t *h = dlq_headers(rec);
            t->outstanding++;
            err = produce(a, a->dlq_topic, rec->rkm->key, rec->rkm->key_len,
                          rec->rkm->payload, rec->rkm->len, h, t);
            if (err) {
                t->outstanding--;
                rd_kafka_headers_destroy(h);
                snprintf(errbuf, errlen, "kafka: producing to %s: %s", a->dlq_topic,
                         rd_kafka_err2str(err));
                return -EIO;
            }
            if (!cv_envelope_message_id(&rec->env)) /* no id: no ack */
                continue;
        }
        size_t len = cv_acker_encode(rec, buf, sizeof(buf));
        if (len == 0) {
            snprintf(errbuf, errlen,
                     "ack of %s/%" PRId32 "@%" PRId64 " does not fit in %d bytes",
                     rec->topic, rec->partition, rec->offset, ACK_MAX_BYTES);
            return -EMSGSIZE;
        }
        const Chatvault__V1__ChatMessage *m = rec->env.msg;
        const char *topic =
            cv_rec_valid(rec) && m->reply_to && *m->reply_to ? m->reply_to : a->ack_topic;
        const char *key = ack_key(a, rec);
        t->outstanding++;
        err = produce(a, topic, key, strlen(key), buf, len, NULL, t);
        if (err) {
            t->outstanding--;
            snprintf(errbuf, errlen, "kafka: producing an ack to %s: %s", topic,
                     rd_kafka_err2str(err));
            return -EIO;
        }
    }
    return 0;
}

/* Ends a failed step of the transaction: -EIO when the producer failed for
 * good, else aborts the transaction and returns -EAGAIN. */
static int txn_failed(cv_acker *a, rd_kafka_error_t *e, const char *what, char *errbuf,
                      size_t errlen) {
    bool fatal = rd_kafka_error_is_fatal(e);
    rd_kafka_resp_err_t code = rd_kafka_error_code(e);
    snprintf(errbuf, errlen, "kafka: %s the acks' transaction: %s", what,
             rd_kafka_error_string(e));
    rd_kafka_error_destroy(e);
    if (!fatal && a->txn_open) {
        e = rd_kafka_abort_transaction(a->rk, TXN_STEP_MS);
        if (e) { /* still open: aborted on the next try */
            size_t used = strlen(errbuf);
            snprintf(errbuf + used, errlen - used, "; aborting it: %s",
                     rd_kafka_error_string(e));
            fatal = rd_kafka_error_is_fatal(e);
            rd_kafka_error_destroy(e);
        } else {
            a->txn_open = false;
            rd_kafka_poll(a->rk, 0); /* the purged messages' reports */
        }
    }
    /* After the reports: the caller asks what made the step fail. */
    a->last_error = code;
    return fatal ? -EIO : -EAGAIN;
}

int cv_acker_send_txn(cv_acker *a, rd_kafka_t *consumer, const cv_rec *recs, size_t n,
                      const rd_kafka_topic_partition_list_t *offsets, cv_ack_ticket *t,
                      char *errbuf, size_t errlen) {
    rd_kafka_error_t *e;
    if (a->txn_open) { /* an abort that failed last time */
        e = rd_kafka_abort_transaction(a->rk, TXN_STEP_MS);
        if (e)
            return txn_failed(a, e, "aborting", errbuf, errlen);
        a->txn_open = false;
    }
    if ((e = rd_kafka_begin_transaction(a->rk)))
        return txn_failed(a, e, "beginning", errbuf, errlen);
    a->txn_open = true;
    t->outstanding = t->delivered = 0;
    int r = cv_acker_send(a, recs, n, t, errbuf, errlen);
    if (r < 0) {
        if (rd_kafka_fatal_error(a->rk, NULL, 0))
            return -EIO; /* errbuf says why */
        char why[512];
        snprintf(why, sizeof(why), "%s", errbuf);
        e = rd_kafka_error_new(RD_KAFKA_RESP_ERR__STATE, "%s", why);
        int ended = txn_failed(a, e, "producing into", errbuf, errlen);
        /* An ack too large stays too large. */
        return r == -EMSGSIZE ? -EIO : ended;
    }
    rd_kafka_consumer_group_metadata_t *group =
        rd_kafka_consumer_group_metadata(consumer);
    e = rd_kafka_send_offsets_to_transaction(a->rk, offsets, group, TXN_STEP_MS);
    rd_kafka_consumer_group_metadata_destroy(group);
    if (e)
        return txn_failed(a, e, "committing the offsets in", errbuf, errlen);
    /* Flushes the acks, serving their delivery reports, then commits. */
    for (int tries = 1; (e = rd_kafka_commit_transaction(a->rk, TXN_STEP_MS)); tries++) {
        if (!rd_kafka_error_is_retriable(e) || tries == 3)
            return txn_failed(a, e, "committing", errbuf, errlen);
        rd_kafka_error_destroy(e);
    }
    a->txn_open = false;
    a->last_error = RD_KAFKA_RESP_ERR_NO_ERROR;
    t->delivered = t->outstanding;
    t->outstanding = 0;
    return 0;
}

void cv_acker_poll(cv_acker *a, int timeout_ms) {
    rd_kafka_poll(a->rk, timeout_ms);
    restart_if_fatal(a);
    if (!a->retries || cv_mono_ms() < a->retry_at_ms)
        return;
    retry *list = a->retries;
    a->retries = NULL;
    a->retries_tail = &a->retries;
    a->retry_at_ms = 0;
    for (retry *r = list, *next; r; r = next) {
        next = r->next;
        rd_kafka_resp_err_t err = produce(a, r->topic, r->key, r->key_len, r->value,
                                          r->value_len, r->headers, r->ticket);
        if (err) {
            /* Still failing to enqueue: keep it for the next round. */
            r->next = NULL;
            *a->retries_tail = r;
            a->retries_tail = &r->next;
            if (!a->retry_at_ms)
                a->retry_at_ms = cv_mono_ms() + RETRY_PAUSE_MS;
            continue;
        }
        r->headers = NULL; /* taken over by the producer */
        retry_free(r);
    }
}
