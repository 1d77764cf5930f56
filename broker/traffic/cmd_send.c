/*
 * chatvault send — publishes ChatMessages to a channel's topic, one per
 * argument or per stdin line, and with --wait-ack waits for each message's
 * DeliveryAck and prints its status and latency.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chatvault.pb-c.h"
#include "cli.h"
#include "ingest/envelope.h"
#include "util.h"

#define MAX_ATTRS 64

typedef struct sent {
    char id[CV_MESSAGE_ID_MAX + 1];
    int64_t sent_at_us;
    int acked;
} sent;

typedef struct send_opts {
    const char *channel, *sender, *id, *content_type, *reply_to, *retention_class;
    Chatvault__V1__ChatMessage__AttributesEntry attrs[MAX_ATTRS];
    Chatvault__V1__ChatMessage__AttributesEntry *attr_ptrs[MAX_ATTRS];
    size_t nattrs;
    bool wait_ack;
    int64_t timeout_ms;
    int64_t revision; /* -1: not given (0, the original) */
    bool deleted;
} send_opts;

static void uuid4(char out[37]) {
    unsigned char b[16];
    randombytes_buf(b, sizeof(b));
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
}

static int delivery_err;
static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk, (void)opaque;
    if (m->err && !delivery_err) {
        delivery_err = m->err;
        cv_error("send", "delivery to %s failed: %s", rd_kafka_topic_name(m->rkt),
                 rd_kafka_err2str(m->err));
    }
}

/* A consumer assigned to the end of every partition of the ack topic, so it
 * sees exactly the acks produced from now on. */
static rd_kafka_t *ack_watcher(const cv_config *cfg, const char *topic) {
    char err[512];
    rd_kafka_conf_t *conf = cv_cli_kafka_conf(cfg, "consumer", NULL, err, sizeof(err));
    if (!conf) {
        cv_error("send", "config error: %s", err);
        return NULL;
    }
    /* One short-lived reader of a few partitions: an idle fetch may come
     * back often (the mock cluster holds each one this long). */
    const char *k, *v;
    bool fetch_set = false;
    for (size_t i = 0; cv_config_kafka_at(cfg, i, &k, &v); i++)
        fetch_set |= strcmp(k, "fetch.wait.max.ms") == 0;
    if (!fetch_set)
        rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (!rk) {
        cv_error("send", "kafka: %s", err);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    rd_kafka_topic_destroy(rkt);
    if (e || md->topic_cnt != 1 || md->topics[0].err) {
        char auth[400];
        const char *last = cv_cli_kafka_auth_error(auth, sizeof(auth));
        cv_error("send", "kafka: cannot read metadata of ack topic %s: %s%s%s%s", topic,
                 rd_kafka_err2str(e               ? e
                                  : md->topic_cnt ? md->topics[0].err
                                                  : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC),
                 last ? " (last: " : "", last ? last : "", last ? ")" : "");
        if (md)
            rd_kafka_metadata_destroy(md);
        rd_kafka_destroy(rk);
        return NULL;
    }
    rd_kafka_topic_partition_list_t *parts =
        rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
    for (int i = 0; i < md->topics[0].partition_cnt; i++) {
        int32_t pid = md->topics[0].partitions[i].id;
        int64_t lo, hi;
        e = rd_kafka_query_watermark_offsets(rk, topic, pid, &lo, &hi, 10000);
        if (e) {
            cv_error("send", "kafka: cannot read the end of %s/%d: %s", topic, pid,
                     rd_kafka_err2str(e));
            rd_kafka_topic_partition_list_destroy(parts);
            rd_kafka_metadata_destroy(md);
            rd_kafka_destroy(rk);
            return NULL;
        }
        rd_kafka_topic_partition_list_add(parts, topic, pid)->offset = hi;
    }
    rd_kafka_metadata_destroy(md);
    rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    return rk;
}

/* What --wait-ack has seen so far. */
typedef struct ack_state {
    size_t acked;      /* messages whose ack arrived */
    size_t first_open; /* no ack is missing below this index */
    int failed;        /* a REJECTED ack arrived */
} ack_state;

/* Reads the acks that arrive within `timeout_ms` (0: only those already
 * there) and prints each one as it comes. Acks of one channel arrive in the
 * order the messages were sent, so the search starts at the first message
 * still waiting. */
static void read_acks(rd_kafka_t *rk, sent *msgs, size_t n, ack_state *as,
                      int64_t timeout_ms) {
    int64_t deadline = cv_mono_ms() + timeout_ms;
    while (as->acked < n) {
        int64_t left = deadline - cv_mono_ms();
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, left > 100 ? 100
                                                           : left > 0 ? (int)left
                                                                      : 0);
        if (!m) {
            if (left <= 0)
                break;
            continue;
        }
        if (m->err) {
            rd_kafka_message_destroy(m);
            continue;
        }
        Chatvault__V1__DeliveryAck *ack =
            chatvault__v1__delivery_ack__unpack(NULL, m->len, m->payload);
        int64_t now = cv_now_us();
        rd_kafka_message_destroy(m);
        if (!ack)
            continue;
        for (size_t i = as->first_open; i < n; i++) {
            if (msgs[i].acked || strcmp(msgs[i].id, ack->message_id) != 0)
                continue;
            msgs[i].acked = 1;
            as->acked++;
            while (as->first_open < n && msgs[as->first_open].acked)
                as->first_open++;
            const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(
                &chatvault__v1__ack_status__descriptor, (int)ack->status);
            printf("%s %s latency_ms=%.1f stores=%s%s%s topic=%s partition=%d "
                   "offset=%" PRId64 "%s%s\n",
                   msgs[i].id, ev ? ev->name : "UNKNOWN",
                   (now - msgs[i].sent_at_us) / 1000.0, ack->stores & 1 ? "postgres" : "",
                   (ack->stores & 3) == 3 ? "+" : "", ack->stores & 2 ? "log" : "",
                   ack->topic, ack->partition, ack->offset, *ack->error ? " error=" : "",
                   ack->error);
            fflush(stdout);
            if (ack->status == CHATVAULT__V1__ACK_STATUS__REJECTED)
                as->failed = 1;
            break;
        }
        chatvault__v1__delivery_ack__free_unpacked(ack, NULL);
    }
}

static int missing_acks(const sent *msgs, size_t n, const ack_state *as,
                        int64_t timeout_ms) {
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].acked)
            cv_error("send", "no ack for message %s within %" PRId64 " ms", msgs[i].id,
                     timeout_ms);
    return as->failed || as->acked < n ? CV_EXIT_FAILURE : CV_EXIT_OK;
}

/* Lines of stdin, read with read(2) so that --wait-ack can print acks while
 * it waits for the next line (stdio would block inside getline). */
#define LINE_LIMIT ((size_t)64 << 20)
typedef struct line_reader {
    char *buf;
    size_t start, len, cap;
    bool eof;
} line_reader;

typedef struct idle_acks {
    rd_kafka_t *watcher;
    sent *msgs;
    size_t n;
    ack_state *as;
} idle_acks;

/* Returns the next line without its newline (NUL-terminated, valid until
 * the next call) and its length, or NULL at the end of input or on error
 * (*ret_err set). While no line is complete, reads acks every 50 ms. */
static char *next_line(line_reader *lr, size_t *ret_len, const idle_acks *idle,
                       int *ret_err) {
    *ret_err = 0;
    for (;;) {
        char *nl = lr->len > lr->start
                       ? memchr(lr->buf + lr->start, '\n', lr->len - lr->start)
                       : NULL;
        if (nl || (lr->eof && lr->len > lr->start)) {
            char *line = lr->buf + lr->start;
            size_t n = nl ? (size_t)(nl - line) : lr->len - lr->start;
            line[n] = '\0'; /* the newline, or the spare byte kept below */
            lr->start += n + (nl ? 1 : 0);
            *ret_len = n;
            return line;
        }
        if (lr->eof)
            return NULL;
        if (lr->start > 0) { /* move the partial line to the front */
            memmove(lr->buf, lr->buf + lr->start, lr->len - lr->start);
            lr->len -= lr->start;
            lr->start = 0;
        }
        if (lr->cap - lr->len < 4096 + 1) {
            size_t cap = lr->cap ? lr->cap * 2 : 65536;
            char *b = cap <= LINE_LIMIT ? realloc(lr->buf, cap) : NULL;
            if (!b) {
                cv_error("send", "stdin: a line longer than %zu bytes", LINE_LIMIT / 2);
                *ret_err = -ENOBUFS;
                return NULL;
            }
            lr->buf = b;
            lr->cap = cap;
        }
        if (idle->watcher) {
            struct pollfd pfd = {.fd = 0, .events = POLLIN};
            if (poll(&pfd, 1, 50) == 0) {
                read_acks(idle->watcher, idle->msgs, idle->n, idle->as, 0);
                continue;
            }
        }
        ssize_t got = read(0, lr->buf + lr->len, lr->cap - lr->len - 1);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            cv_error("send", "reading stdin: %s", strerror(errno));
            *ret_err = -errno;
            return NULL;
        }
        if (got == 0)
            lr->eof = true;
        lr->len += (size_t)got;
    }
}

static int send_one(rd_kafka_t *rk, const send_opts *o, const char *topic,
                    const char *body, size_t len, sent *out) {
    Chatvault__V1__ChatMessage m = CHATVAULT__V1__CHAT_MESSAGE__INIT;
    char id[37];
    if (o->id) {
        snprintf(out->id, sizeof(out->id), "%s", o->id);
    } else {
        uuid4(id);
        snprintf(out->id, sizeof(out->id), "%s", id);
    }
    out->sent_at_us = cv_now_us();
    m.message_id = out->id;
    m.channel = (char *)o->channel;
    m.sender_id = (char *)o->sender;
    m.sent_at_us = out->sent_at_us;
    m.body.data = (uint8_t *)body;
    m.body.len = len;
    m.content_type = (char *)o->content_type;
    m.n_attributes = o->nattrs;
    m.attributes = (Chatvault__V1__ChatMessage__AttributesEntry **)o->attr_ptrs;
    m.reply_to = (char *)(o->reply_to ? o->reply_to : "");
    m.revision = o->revision > 0 ? (uint32_t)o->revision : 0;
    m.deleted = o->deleted;
    m.retention_class = (char *)(o->retention_class ? o->retention_class : "");
    size_t size = chatvault__v1__chat_message__get_packed_size(&m);
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        cv_error("send", "out of memory");
        return -ENOMEM;
    }
    chatvault__v1__chat_message__pack(&m, buf);
    rd_kafka_resp_err_t err;
    while ((err = rd_kafka_producev(
                rk, RD_KAFKA_V_TOPIC(topic),
                RD_KAFKA_V_KEY((void *)o->channel, strlen(o->channel)),
                RD_KAFKA_V_VALUE(buf, size), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
                RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(rk, 10);
    if (err) {
        free(buf);
        cv_error("send", "kafka: producing to %s: %s", topic, rd_kafka_err2str(err));
        return -EIO;
    }
    rd_kafka_poll(rk, 0);
    return 0;
}

/* Learns the chat topic's leaders now. A producer asked for a topic after
 * its first metadata round waits about a second (librdkafka 2.0.2) before
 * it asks again, and that second went into every single message's
 * send->ack latency. -1 after the error when the login was refused. */
static int learn_leaders(rd_kafka_t *rk, const char *topic) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e =
        rkt ? rd_kafka_metadata(rk, 0, rkt, &md, 5000) : RD_KAFKA_RESP_ERR__FAIL;
    if (md)
        rd_kafka_metadata_destroy(md);
    if (rkt)
        rd_kafka_topic_destroy(rkt);
    /* A refused login does not get better by waiting for the rest. */
    char auth[400];
    const char *last = e ? cv_cli_kafka_auth_error(auth, sizeof(auth)) : NULL;
    if (last) {
        cv_error("send", "kafka: cannot read metadata of %s: %s (last: %s)", topic,
                 rd_kafka_err2str(e), last);
        return -1;
    }
    return 0;
}

/* Sends every BODY argument, or every line of stdin, printing the ids (or,
 * with a watcher, the acks as they come). The messages sent are left in
 * *msgs, *n (the caller frees *msgs). Returns the exit code so far. */
static int send_all(rd_kafka_t *rk, rd_kafka_t *watcher, const send_opts *o,
                    const char *topic, const cv_cli *cli, sent **msgs, size_t *n,
                    ack_state *as) {
    line_reader lr = {0};
    size_t cap = 0;
    int rc = CV_EXIT_OK;
    for (int i = 0;; i++) {
        const char *body;
        size_t len;
        if (o->deleted) { /* one tombstone, no body */
            if (i > 0)
                break;
            body = "";
            len = 0;
        } else if (cli->nargs > 0) {
            if (i >= cli->nargs)
                break;
            body = cli->args[i];
            len = strlen(body);
        } else {
            idle_acks idle = {watcher, *msgs, *n, as};
            int lerr;
            body = next_line(&lr, &len, &idle, &lerr);
            if (!body) {
                if (lerr)
                    rc = CV_EXIT_FAILURE;
                break;
            }
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            sent *nm = realloc(*msgs, cap * sizeof(sent));
            if (!nm) {
                cv_error("send", "out of memory");
                rc = CV_EXIT_FAILURE;
                break;
            }
            *msgs = nm;
        }
        sent *m = &(*msgs)[*n];
        memset(m, 0, sizeof(sent));
        if (send_one(rk, o, topic, body, len, m) < 0) {
            rc = CV_EXIT_FAILURE;
            break;
        }
        if (!o->wait_ack)
            printf("%s\n", m->id);
        ++*n;
        if (watcher) /* print acks as they come, not after the last line */
            read_acks(watcher, *msgs, *n, as, 0);
    }
    free(lr.buf);
    return rc;
}

static int attr_opt(const cv_cli_opt *opt, void *dest, const char *cmd,
                    const char *value) {
    send_opts *o = dest;
    char *eq = strchr(value, '=');
    if (!eq || o->nattrs == MAX_ATTRS) {
        cv_error(cmd, "--attr %s: want KEY=VALUE (at most %d)", value, MAX_ATTRS);
        return -1;
    }
    *eq = '\0'; /* value is an argv string */
    Chatvault__V1__ChatMessage__AttributesEntry e =
        CHATVAULT__V1__CHAT_MESSAGE__ATTRIBUTES_ENTRY__INIT;
    e.key = (char *)value;
    e.value = eq + 1;
    o->attrs[o->nattrs] = e;
    o->attr_ptrs[o->nattrs] = &o->attrs[o->nattrs];
    o->nattrs++;
    return 0;
}

static const cv_cli_opt opts[] = {
    CV_OPT_STR("channel", 0, "C", "channel to publish to (required)", send_opts, channel),
    CV_OPT_STR("sender", 0, "S", "sender_id (default: $USER)", send_opts, sender),
    CV_OPT_STR("id", 0, "ID", "message_id (only with a single message)", send_opts, id),
    CV_OPT_STR("content-type", 0, "T", "content_type (default text/plain)", send_opts,
               content_type),
    CV_OPT_CALL("attr", 0, "K=V", "an attribute (repeatable)", attr_opt, 0),
    CV_OPT_STR("reply-to", 0, "TOPIC", "ask for the ack on TOPIC instead of topics.acks",
               send_opts, reply_to),
    CV_OPT_FLAG("wait-ack", 0, "wait for each message's ack; print status and latency",
                send_opts, wait_ack),
    CV_OPT_INT("timeout", 0, "MS",
               "how long --wait-ack waits (default 30000); exit 1 if an ack is missing",
               send_opts, timeout_ms, 1, INT64_MAX),
    CV_OPT_INT("revision", 0, "N",
               "the version of message --id this is: an edit re-sends the id with a "
               "higher N (default 0, the original)",
               send_opts, revision, 0, UINT32_MAX),
    CV_OPT_FLAG("delete", 0,
                "send a tombstone of message --id (no BODY; give it a --revision higher "
                "than the last)",
                send_opts, deleted),
    CV_OPT_STR("retention-class", 0, "NAME",
               "keep the message by retention class NAME when that keeps it longer than "
               "its channel's class (e.g. key: for good)",
               send_opts, retention_class),
    CV_OPT_END,
};

static const cv_cli_spec spec = {
    .name = "send",
    .usage = "send --channel C [options] [BODY...]",
    .about = "Publishes one ChatMessage per BODY argument, or per line of stdin when no "
             "BODY\nis given, to the topic <topics.prefix><channel>. Message ids are "
             "generated\n(a random UUID) unless --id is given.\n",
    .opts = opts,
    .config_keys = "kafka.bootstrap.servers, topics.*",
    .epilog =
        "Edits and deletes: `send --id ID --revision N BODY` stores BODY as version "
        "N of\nmessage ID, `send --id ID --revision N --delete` a tombstone; the "
        "ack is\nPERSISTED, and DUPLICATE for a version already stored.\n"
        "Prints one line per message: message id (and with --wait-ack: status, "
        "latency\nin ms, stores). Exit 0 when all were sent (and acked, not "
        "REJECTED).\n",
    .max_args = -1,
};

int cv_cmd_send(int argc, char **argv) {
    send_opts o = {.content_type = "text/plain", .timeout_ms = 30000, .revision = -1};
    o.sender = getenv("USER") ? getenv("USER") : "chatvault-send";
    cv_cli cli;
    int parsed = cv_cli_parse(&spec, argc, argv, &o, &cli);
    if (parsed != CV_CLI_RUN)
        return parsed;
    if (!o.channel || !cv_channel_valid(o.channel, strlen(o.channel))) {
        cv_error("send",
                 o.channel ? "--channel \"%s\" is not [A-Za-z0-9._-]{1,200}"
                           : "--channel is required%s",
                 o.channel ? o.channel : "");
        return CV_EXIT_USAGE;
    }
    if (o.id && (strlen(o.id) == 0 || strlen(o.id) > CV_MESSAGE_ID_MAX)) {
        cv_error("send", "--id must be 1..%d bytes", CV_MESSAGE_ID_MAX);
        return CV_EXIT_USAGE;
    }
    if ((o.revision >= 0 || o.deleted) && !o.id) {
        cv_error("send", "%s names a version of a message: it needs --id",
                 o.deleted ? "--delete" : "--revision");
        return CV_EXIT_USAGE;
    }
    if (o.deleted && cli.nargs != 0) {
        cv_error("send", "--delete sends a tombstone: it takes no BODY");
        return CV_EXIT_USAGE;
    }
    if (o.deleted && o.revision < 1) {
        /* revision 0 is the original: a tombstone of it would be acked
         * DUPLICATE and delete nothing */
        cv_error("send", "--delete needs --revision N above the message's current one");
        return CV_EXIT_USAGE;
    }
    if (o.id && !o.deleted && cli.nargs != 1) {
        cv_error("send", "--id needs exactly one BODY argument");
        return CV_EXIT_USAGE;
    }
    if (sodium_init() < 0) {
        cv_error("send", "libsodium failed to initialise");
        return CV_EXIT_FAILURE;
    }
    cv_config *cfg = cv_cli_load_config(&cli.config);
    if (!cfg)
        return CV_EXIT_USAGE;
    char err[512], topic[512];
    int rc = CV_EXIT_OK;
    rd_kafka_t *rk = NULL, *watcher = NULL;
    sent *msgs = NULL;
    size_t n = 0;
    snprintf(topic, sizeof(topic), "%s%s", cv_config_str(cfg, "topics.prefix"),
             o.channel);
    rd_kafka_conf_t *conf = cv_cli_kafka_conf(cfg, "producer", NULL, err, sizeof(err));
    if (!conf) {
        cv_error("send", "config error: %s", err);
        rc = CV_EXIT_USAGE;
        goto out;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        cv_error("send", "kafka: %s", err);
        rc = CV_EXIT_FAILURE;
        goto out;
    }
    if (learn_leaders(rk, topic) < 0) {
        rc = CV_EXIT_FAILURE;
        goto out;
    }
    if (o.wait_ack) {
        watcher =
            ack_watcher(cfg, o.reply_to ? o.reply_to : cv_config_str(cfg, "topics.acks"));
        if (!watcher) {
            rc = CV_EXIT_FAILURE;
            goto out;
        }
    }
    ack_state as = {0};
    rc = send_all(rk, watcher, &o, topic, &cli, &msgs, &n, &as);
    if (rd_kafka_flush(rk, (int)o.timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        cv_error("send", "kafka: %d messages not delivered to %s within %" PRId64 " ms",
                 rd_kafka_outq_len(rk), topic, o.timeout_ms);
        rc = CV_EXIT_FAILURE;
    }
    if (delivery_err)
        rc = CV_EXIT_FAILURE;
    if (rc == CV_EXIT_OK && watcher) {
        read_acks(watcher, msgs, n, &as, o.timeout_ms);
        rc = missing_acks(msgs, n, &as, o.timeout_ms);
    }
out:
    free(msgs);
    if (watcher) {
        rd_kafka_consumer_close(watcher);
        rd_kafka_destroy(watcher);
    }
    if (rk)
        rd_kafka_destroy(rk);
    cv_config_free(cfg);
    return rc;
}
