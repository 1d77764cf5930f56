/*
 * chatvault replay — re-delivers stored messages to Kafka: the selected
 * messages, from PostgreSQL, the log or both (broker/msgsource.h), to their
 * original topic and partition or to --to-topic, with the message id kept
 * (receivers deduplicate on it; chatvault itself acks a replayed message
 * DUPLICATE and does not store it twice) and headers that mark the replay.
 * The producer is idempotent and every message's delivery is waited for.
 */
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "access.h"
#include "cli.h"
#include "keyring.h"
#include "msgsource.h"
#include "progress.h"
#include "select.h"
#include "util.h"

#define SAMPLE 5
#define HDR_REPLAY "chatvault-replay"
#define HDR_ORIGIN "chatvault-replay-origin"

typedef struct rstats {
    uint64_t selected, delivered, failed, from_pg, from_log;
    char first_error[512];
} rstats;

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    rstats *st = opaque;
    if (m->err) {
        if (!st->failed++)
            snprintf(st->first_error, sizeof(st->first_error), "%s [%" PRId32 "]: %s",
                     rd_kafka_topic_name(m->rkt), m->partition, rd_kafka_err2str(m->err));
    } else {
        st->delivered++;
    }
}

/* Expands {channel} in the --to-topic template. */
static int expand_topic(const char *tmpl, const char *channel, char *out, size_t len) {
    size_t n = 0;
    for (const char *p = tmpl; *p;) {
        const char *piece = p;
        size_t pl = 1;
        if (strncmp(p, "{channel}", 9) == 0) {
            piece = channel;
            pl = strlen(channel);
            p += 9;
        } else {
            p++;
        }
        if (n + pl >= len)
            return -1;
        memcpy(out + n, piece, pl);
        n += pl;
    }
    out[n] = '\0';
    return 0;
}

/* Why `topic` must not receive the replay of `channel` (NULL when it may):
 * the ack and dead-letter topics, and another channel's chat topic, are
 * written only with --allow-any-topic. */
static const char *foreign_topic(const cv_config *cfg, const char *topic,
                                 const char *channel) {
    const char *prefix = cv_config_str(cfg, "topics.prefix");
    size_t pl = strlen(prefix);
    if (strcmp(topic, cv_config_str(cfg, "topics.acks")) == 0)
        return "it is the ack topic (topics.acks)";
    if (strcmp(topic, cv_config_str(cfg, "topics.dlq")) == 0)
        return "it is the dead-letter topic (topics.dlq)";
    if (pl && strncmp(topic, prefix, pl) == 0 &&
        (!channel || strcmp(topic + pl, channel) != 0))
        return "it is another channel's chat topic";
    return NULL;
}

typedef struct replay_opts {
    cv_src_mode mode;
    const char *to_topic;
    bool any_topic, dry, quiet;
    double rate;
    cv_cli_log_dirs ld;
    cv_select sel;
} replay_opts;

static int rate_opt(const cv_cli_opt *opt, void *dest, const char *cmd,
                    const char *value) {
    replay_opts *o = dest;
    char *end;
    double v = strtod(value, &end);
    if (end == value || !(v > 0) || (*end && strcmp(end, "/s") != 0)) {
        cv_error(cmd, "--rate: \"%s\" is not a positive number of messages per second",
                 value);
        return -1;
    }
    o->rate = v;
    return 0;
}

static const cv_cli_opt opts[] = {
    CV_OPT_CALL_AT("source", 0, "pg|log|auto",
                   "where messages come from (default auto: PostgreSQL, the log for what "
                   "PostgreSQL lacks, everything from the log when PostgreSQL is "
                   "unreachable; log records are authenticated before they are sent)",
                   replay_opts, mode, cv_src_mode_opt, 0),
    CV_OPT_STR("to-topic", 0, "T",
               "publish to T instead of the original topic and partition; "
               "\"{channel}\" in T is the message's channel (e.g. "
               "\"recovered.{channel}\"); never the ack or dead-letter topic or another "
               "channel's chat topic",
               replay_opts, to_topic),
    CV_OPT_FLAG("allow-any-topic", 0, "let --to-topic name those too", replay_opts,
                any_topic),
    CV_OPT_CALL("rate", 0, "N[/s]", "at most N messages per second", rate_opt, 0),
    CV_OPT_FLAG("dry-run", 0, "count and show a sample; send nothing", replay_opts, dry),
    CV_OPT_LIST("log-dir", 0, "DIR",
                "read this log directory instead of log.dir (repeatable)", replay_opts,
                ld.dir, ld.n),
    CV_OPT_FLAG("history", 0,
                "every version of an edited or deleted message, not only its latest "
                "(PostgreSQL; the log always has every version)",
                replay_opts, sel.history),
    CV_OPT_FLAG("quiet", 0, "no progress display", replay_opts, quiet),
    CV_OPT_END,
};

static const cv_cli_group selection = {CV_SELECT_TITLE, cv_select_opts,
                                       offsetof(replay_opts, sel)};

static const cv_cli_spec spec = {
    .name = "replay",
    .usage = "replay [-c FILE] [--set key=value]... [selection] [options]",
    .about = "Re-delivers stored messages to Kafka, keeping their message_id, with "
             "headers\n" HDR_REPLAY
             " (the store it came from: postgres or log) and\n" HDR_ORIGIN
             " (original topic/partition/offset). Receivers deduplicate\n"
             "on the message id; chatvault acks a replayed message DUPLICATE and does "
             "not\nstore it twice. The producer is idempotent; replay waits until Kafka "
             "has\nacknowledged every message and exits 1 if any failed.\n",
    .opts = opts,
    .group = &selection,
};

/* What one replay holds open. */
typedef struct replay {
    replay_opts *o;
    const cv_config *cfg;
    cv_keyring *keys;
    cv_src *src;
    rd_kafka_t *rk;
    rstats st;
    cv_progress prog;
} replay;

/* The log's keys (or, in auto mode, a warning and PostgreSQL alone), the
 * producer unless --dry-run, and the message source. Returns CV_EXIT_OK
 * or the exit code after the error. */
static int replay_open(replay *rp, cv_cli_log_dirs *ld) {
    replay_opts *o = rp->o;
    char err[1024];
    if (o->mode != CV_SRC_PG) {
        if (!ld->n && o->mode == CV_SRC_LOG) {
            cv_error("replay", "--source log needs log.dir (or --log-dir)");
            return CV_EXIT_USAGE;
        }
        if (ld->n && cv_cli_load_keys(rp->cfg, ld, &rp->keys, err, sizeof(err)) < 0) {
            if (o->mode == CV_SRC_LOG) {
                cv_error("replay", "%s (log.key_file)", err);
                return CV_EXIT_FAILURE;
            }
            cv_log(CV_LOG_WARN, "log unreadable: replaying from PostgreSQL only",
                   "error=\"%s\"", err);
            ld->n = 0;
        }
    }
    if (!o->dry) {
        rd_kafka_conf_t *kc =
            cv_cli_kafka_conf(rp->cfg, "producer", NULL, err, sizeof(err));
        if (!kc) {
            cv_error("replay", "%s", err);
            return CV_EXIT_USAGE;
        }
        rd_kafka_conf_set_dr_msg_cb(kc, dr_cb);
        rd_kafka_conf_set_opaque(kc, &rp->st);
        if (!(rp->rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err)))) {
            rd_kafka_conf_destroy(kc);
            cv_error("replay", "kafka: %s", err);
            return CV_EXIT_FAILURE;
        }
    }
    cv_src_conf sc = {
        .mode = o->mode,
        .pg_conninfo = cv_access_conninfo(rp->cfg, CV_PG_READER),
        .pg_conninfo_key = cv_access_conninfo_key(rp->cfg, CV_PG_READER),
        .log_dirs = ld->dir,
        .nlog_dirs = ld->n,
        .keys = rp->keys,
        .topic_prefix = cv_config_str(rp->cfg, "topics.prefix"),
        .sel = &o->sel,
    };
    char pgerr[512] = "";
    if (cv_src_open(&sc, &rp->src, pgerr, sizeof(pgerr), err, sizeof(err)) < 0) {
        cv_error("replay", "%s", err);
        return CV_EXIT_FAILURE;
    }
    if (*pgerr)
        cv_log(CV_LOG_WARN, "postgres unavailable: replaying from the log",
               "error=\"%s\"", pgerr);
    return CV_EXIT_OK;
}

/* Where message m goes: its own topic and partition, or --to-topic's
 * (into topic). Returns CV_EXIT_OK or the exit code after the error. */
static int destination(const replay *rp, const cv_msg *m, char *topic, size_t len,
                       const char **ret_dest, int32_t *ret_part) {
    const char *tmpl = rp->o->to_topic, *why;
    *ret_dest = m->topic;
    *ret_part = m->partition;
    if (!tmpl)
        return CV_EXIT_OK;
    if (expand_topic(tmpl, m->channel, topic, len) < 0) {
        cv_error("replay", "--to-topic: the topic for channel %s is too long",
                 m->channel);
        return CV_EXIT_FAILURE;
    }
    *ret_dest = topic;
    *ret_part = RD_KAFKA_PARTITION_UA;
    if (!rp->o->any_topic && (why = foreign_topic(rp->cfg, topic, m->channel))) {
        cv_error("replay",
                 "--to-topic %s: for channel %s that is %s: %s; a replay writes "
                 "there only with --allow-any-topic",
                 tmpl, m->channel, topic, why);
        return CV_EXIT_USAGE;
    }
    return CV_EXIT_OK;
}

/* Produces one message to dest, at no more than --rate. */
static int produce(replay *rp, const cv_msg *m, const char *dest, int32_t part,
                   int64_t start_ms) {
    if (rp->o->rate > 0) {
        /* Never ahead of N per second since the start. */
        int64_t due =
            start_ms + (int64_t)((double)rp->st.selected * 1000.0 / rp->o->rate);
        int64_t now;
        while ((now = cv_mono_ms()) < due && !stop_requested)
            rd_kafka_poll(rp->rk, (int)(due - now));
    }
    char origin[600];
    snprintf(origin, sizeof(origin), "%s/%" PRId32 "/%" PRId64, m->topic, m->partition,
             m->offset);
    const char *from = m->from_log ? "log" : "postgres";
    rd_kafka_resp_err_t e;
    while ((e = rd_kafka_producev(
                rp->rk, RD_KAFKA_V_TOPIC(dest), RD_KAFKA_V_PARTITION(part),
                RD_KAFKA_V_KEY((void *)m->channel, strlen(m->channel)),
                RD_KAFKA_V_VALUE((void *)m->value, m->value_len),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                RD_KAFKA_V_HEADER(HDR_REPLAY, from, (ssize_t)strlen(from)),
                RD_KAFKA_V_HEADER(HDR_ORIGIN, origin, (ssize_t)strlen(origin)),
                RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(rp->rk, 50);
    if (e) {
        cv_error("replay", "producing to %s: %s", dest, rd_kafka_err2str(e));
        return CV_EXIT_FAILURE;
    }
    rd_kafka_poll(rp->rk, 0);
    return CV_EXIT_OK;
}

/* Sends (or, with --dry-run, counts) every selected message and waits for
 * their delivery. Returns CV_EXIT_OK or the exit code after the error. */
static int replay_all(replay *rp, int64_t start_ms) {
    char err[1024], topic[512];
    cv_msg m;
    int r;
    while (!stop_requested && (r = cv_src_next(rp->src, &m, err, sizeof(err))) == 1) {
        rp->st.selected++;
        if (m.from_log)
            rp->st.from_log++;
        else
            rp->st.from_pg++;
        const char *dest;
        int32_t part;
        int rc = destination(rp, &m, topic, sizeof(topic), &dest, &part);
        if (rc == CV_EXIT_OK && rp->o->dry) {
            if (rp->st.selected <= SAMPLE)
                printf("would send channel=%s topic=%s partition=%" PRId32
                       " offset=%" PRId64 " message_id=%s bytes=%zu source=%s "
                       "to=%s\n",
                       m.channel, m.topic, m.partition, m.offset, m.message_id,
                       m.value_len, m.from_log ? "log" : "postgres", dest);
        } else if (rc == CV_EXIT_OK) {
            rc = produce(rp, &m, dest, part, start_ms);
        }
        if (rc != CV_EXIT_OK)
            return rc;
        cv_progress_update(&rp->prog, rp->st.selected, 0, m.channel);
    }
    if (r < 0) {
        cv_progress_end(&rp->prog);
        cv_error("replay", "%s", err);
        return CV_EXIT_FAILURE;
    }
    if (rp->rk) {
        /* Wait for the delivery of everything. */
        while (rd_kafka_outq_len(rp->rk) > 0 && !stop_requested) {
            rd_kafka_poll(rp->rk, 100);
            cv_progress_update(&rp->prog, rp->st.delivered, rp->st.selected,
                               "delivering");
        }
        rd_kafka_flush(rp->rk, 10000);
    }
    cv_progress_end(&rp->prog);
    return CV_EXIT_OK;
}

/* The last line: what was selected, sent and confirmed. */
static int replay_report(const replay *rp, int64_t start_ms) {
    const rstats *st = &rp->st;
    bool dry = rp->o->dry;
    double secs = (double)(cv_mono_ms() - start_ms) / 1000.0;
    uint64_t unconfirmed = dry ? 0 : st->selected - st->delivered - st->failed;
    cv_log(st->failed || unconfirmed || stop_requested ? CV_LOG_ERROR : CV_LOG_INFO,
           dry ? "replay dry run" : "replay done",
           "selected=%" PRIu64 " sent=%" PRIu64 " failed=%" PRIu64 " unconfirmed=%" PRIu64
           " from_postgres=%" PRIu64 " from_log=%" PRIu64
           " seconds=%.2f rate=%.0f/s%s%s%s",
           st->selected, st->delivered, st->failed, unconfirmed, st->from_pg,
           st->from_log, secs, secs > 0 ? (double)st->selected / secs : 0,
           st->failed ? " first_error=\"" : "", st->failed ? st->first_error : "",
           st->failed ? "\"" : "");
    cv_audit_count("selected", (int64_t)st->selected);
    cv_audit_count("sent", (int64_t)st->delivered);
    cv_audit_count("failed", (int64_t)st->failed);
    if (stop_requested)
        cv_error("replay",
                 "interrupted: %" PRIu64 " messages were selected "
                 "before the stop",
                 st->selected);
    return st->failed || unconfirmed || stop_requested ? CV_EXIT_FAILURE : CV_EXIT_OK;
}

int cv_cmd_replay(int argc, char **argv) {
    replay_opts o = {.mode = CV_SRC_AUTO};
    cv_select_init(&o.sel);
    cv_cli cli;
    cv_config *cfg = NULL;
    replay rp = {.o = &o};
    int rc = cv_cli_parse(&spec, argc, argv, &o, &cli);
    if (rc != CV_CLI_RUN)
        goto out;
    rc = CV_EXIT_USAGE;
    if (cv_select_check(&o.sel, "replay") < 0 || !(cfg = cv_cli_load_config(&cli.config)))
        goto out;
    cv_audit_begin(cfg, CV_PG_READER, o.dry ? "replay --dry-run" : "replay", argc, argv);
    rp.cfg = cfg;
    /* A template without {channel} names one topic for every message: it
     * is checked before anything is sent. */
    const char *why_foreign;
    if (o.to_topic && !strstr(o.to_topic, "{channel}") && !o.any_topic &&
        (why_foreign = foreign_topic(cfg, o.to_topic, NULL))) {
        cv_error("replay",
                 "--to-topic %s: %s; a replay writes there only with --allow-any-topic",
                 o.to_topic, why_foreign);
        goto out;
    }
    cv_cli_default_log_dir(&o.ld, cfg);
    if ((rc = replay_open(&rp, &o.ld)) != CV_EXIT_OK)
        goto out;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    cv_progress_init(&rp.prog, o.dry ? "replay --dry-run" : "replay", !o.quiet);
    int64_t start_ms = cv_mono_ms();
    if ((rc = replay_all(&rp, start_ms)) == CV_EXIT_OK)
        rc = replay_report(&rp, start_ms);
out:
    fflush(stdout);
    cv_src_free(rp.src);
    if (rp.rk)
        rd_kafka_destroy(rp.rk);
    cv_keyring_free(rp.keys);
    cv_config_free(cfg);
    cv_select_release(&o.sel);
    return rc;
}
