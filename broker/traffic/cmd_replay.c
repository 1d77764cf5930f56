/*
 * chatvault replay — re-delivers stored messages to Kafka: the selected
 * messages, from PostgreSQL, the log or both (broker/msgsource.h), to their
 * original topic and partition or to --to-topic, with the message id kept
 * (receivers deduplicate on it; chatvault itself acks a replayed message
 * DUPLICATE and does not store it twice) and headers that mark the replay.
 * The producer is idempotent and every message's delivery is waited for.
 */
#include <getopt.h>
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

enum {
    O_SOURCE = 0x2000,
    O_TO_TOPIC,
    O_RATE,
    O_DRY_RUN,
    O_LOG_DIR,
    O_QUIET,
    O_ANY_TOPIC
};

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

static int parse_rate(const char *s, double *ret) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || v <= 0 || (*end && strcmp(end, "/s") != 0))
        return -1;
    *ret = v;
    return 0;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: chatvault replay [-c FILE] [--set key=value]... "
            "[selection] [options]\n\n"
            "Re-delivers stored messages to Kafka, keeping their message_id, "
            "with headers\n" HDR_REPLAY " (the store it came from: postgres "
            "or log) and\n" HDR_ORIGIN " (original topic/partition/offset). "
            "Receivers deduplicate\non the message id; chatvault acks a "
            "replayed message DUPLICATE and does not\nstore it twice. The "
            "producer is idempotent; replay waits until Kafka has\n"
            "acknowledged every message and exits 1 if any failed.\n\n"
            "options:\n"
            "      --source pg|log|auto  where messages come from (default "
            "auto: PostgreSQL,\n"
            "                        the log for what PostgreSQL lacks, "
            "everything from the\n"
            "                        log when PostgreSQL is unreachable; log "
            "records are\n"
            "                        authenticated before they are sent)\n"
            "      --to-topic T      publish to T instead of the original "
            "topic and\n"
            "                        partition; \"{channel}\" in T is the "
            "message's channel\n"
            "                        (e.g. \"recovered.{channel}\"); never the ack or\n"
            "                        dead-letter topic or another channel's chat "
            "topic\n"
            "      --allow-any-topic let --to-topic name those too\n"
            "      --rate N[/s]      at most N messages per second\n"
            "      --dry-run         count and show a sample; send nothing\n"
            "      --log-dir DIR     read this log directory instead of "
            "log.dir (repeatable)\n"
            "      --quiet           no progress display\n"
            "  -c, --config FILE     configuration file\n"
            "      --set key=value   configuration override\n\n" CV_SELECT_HELP);
}

int cv_cmd_replay(int argc, char **argv) {
    static const struct option opts[] = {
        CV_COMMON_LONGOPTS,
        CV_SELECT_LONGOPTS,
        {"source", required_argument, NULL, O_SOURCE},
        {"to-topic", required_argument, NULL, O_TO_TOPIC},
        {"rate", required_argument, NULL, O_RATE},
        {"dry-run", no_argument, NULL, O_DRY_RUN},
        {"log-dir", required_argument, NULL, O_LOG_DIR},
        {"quiet", no_argument, NULL, O_QUIET},
        {"allow-any-topic", no_argument, NULL, O_ANY_TOPIC},
        {NULL, 0, NULL, 0}};
    cv_cli_config cli = {0};
    cv_select sel;
    cv_select_init(&sel);
    cv_cli_log_dirs ld = {0};
    cv_src_mode mode = CV_SRC_AUTO;
    const char *to_topic = NULL;
    bool any_topic = false;
    double rate = 0;
    bool dry = false, quiet = false;
    int opt, rc = CV_EXIT_USAGE;
    cv_config *cfg = NULL;
    cv_keyring *keys = NULL;
    cv_src *src = NULL;
    rd_kafka_t *rk = NULL;
    rstats st = {0};
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        int r = cv_cli_common_opt(&cli, opt, optarg);
        if (r < 0)
            goto out;
        if (r)
            continue;
        r = cv_select_opt(&sel, "replay", opt, optarg);
        if (r < 0)
            goto out;
        if (r)
            continue;
        switch (opt) {
        case 'h':
            usage(stdout);
            rc = CV_EXIT_OK;
            goto out;
        case O_SOURCE:
            if (cv_src_parse_mode("replay", optarg, &mode) < 0)
                goto out;
            break;
        case O_TO_TOPIC:
            to_topic = optarg;
            break;
        case O_RATE:
            if (parse_rate(optarg, &rate) < 0) {
                cv_error("replay",
                         "--rate: \"%s\" is not a positive number "
                         "of messages per second",
                         optarg);
                goto out;
            }
            break;
        case O_DRY_RUN:
            dry = true;
            break;
        case O_QUIET:
            quiet = true;
            break;
        case O_ANY_TOPIC:
            any_topic = true;
            break;
        case O_LOG_DIR:
            if (cv_cli_add_log_dir(&ld, "replay", optarg) < 0)
                goto out;
            break;
        default:
            usage(stderr);
            goto out;
        }
    }
    if (optind < argc) {
        cv_error("replay", "unexpected argument \"%s\"", argv[optind]);
        goto out;
    }
    if (cv_select_check(&sel, "replay") < 0)
        goto out;
    if (!(cfg = cv_cli_load_config(&cli)))
        goto out;
    cv_audit_begin(cfg, CV_PG_READER, dry ? "replay --dry-run" : "replay", argc, argv);
    /* A template without {channel} names one topic for every message: it
     * is checked before anything is sent. */
    const char *why_foreign;
    if (to_topic && !strstr(to_topic, "{channel}") && !any_topic &&
        (why_foreign = foreign_topic(cfg, to_topic, NULL))) {
        cv_error("replay",
                 "--to-topic %s: %s; a replay writes there only with --allow-any-topic",
                 to_topic, why_foreign);
        goto out;
    }
    cv_cli_default_log_dir(&ld, cfg);
    char err[1024];
    if (mode != CV_SRC_PG) {
        if (!ld.n && mode == CV_SRC_LOG) {
            cv_error("replay", "--source log needs log.dir (or --log-dir)");
            goto out;
        }
        if (ld.n && cv_keyring_load(cv_config_str(cfg, "log.key_file"), &keys, err,
                                    sizeof(err)) < 0) {
            if (mode == CV_SRC_LOG) {
                cv_error("replay", "%s (log.key_file)", err);
                rc = CV_EXIT_FAILURE;
                goto out;
            }
            cv_log(CV_LOG_WARN, "log unreadable: replaying from PostgreSQL only",
                   "error=\"%s\"", err);
            ld.n = 0;
        }
    }
    rc = CV_EXIT_FAILURE;
    if (!dry) {
        rd_kafka_conf_t *kc = cv_cli_kafka_conf(cfg, "producer", NULL, err, sizeof(err));
        if (!kc) {
            cv_error("replay", "%s", err);
            rc = CV_EXIT_USAGE;
            goto out;
        }
        rd_kafka_conf_set_dr_msg_cb(kc, dr_cb);
        rd_kafka_conf_set_opaque(kc, &st);
        if (!(rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err)))) {
            rd_kafka_conf_destroy(kc);
            cv_error("replay", "kafka: %s", err);
            goto out;
        }
    }
    cv_src_conf sc = {
        .mode = mode,
        .pg_conninfo = cv_access_conninfo(cfg, CV_PG_READER),
        .pg_conninfo_key = cv_access_conninfo_key(cfg, CV_PG_READER),
        .log_dirs = ld.dir,
        .nlog_dirs = ld.n,
        .keys = keys,
        .topic_prefix = cv_config_str(cfg, "topics.prefix"),
        .sel = &sel,
    };
    char pgerr[512] = "";
    if (cv_src_open(&sc, &src, pgerr, sizeof(pgerr), err, sizeof(err)) < 0) {
        cv_error("replay", "%s", err);
        goto out;
    }
    if (*pgerr)
        cv_log(CV_LOG_WARN, "postgres unavailable: replaying from the log",
               "error=\"%s\"", pgerr);

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    cv_progress prog;
    cv_progress_init(&prog, dry ? "replay --dry-run" : "replay", !quiet);
    int64_t start_ms = cv_mono_ms();
    cv_msg m;
    int r;
    char topic[512], origin[600];
    while (!stop_requested && (r = cv_src_next(src, &m, err, sizeof(err))) == 1) {
        st.selected++;
        if (m.from_log)
            st.from_log++;
        else
            st.from_pg++;
        const char *dest = m.topic;
        int32_t part = m.partition;
        if (to_topic) {
            if (expand_topic(to_topic, m.channel, topic, sizeof(topic)) < 0) {
                cv_error("replay",
                         "--to-topic: the topic for channel %s is "
                         "too long",
                         m.channel);
                goto out;
            }
            dest = topic;
            part = RD_KAFKA_PARTITION_UA;
            if (!any_topic && (why_foreign = foreign_topic(cfg, dest, m.channel))) {
                cv_error("replay",
                         "--to-topic %s: for channel %s that is %s: %s; a replay writes "
                         "there only with --allow-any-topic",
                         to_topic, m.channel, dest, why_foreign);
                rc = CV_EXIT_USAGE;
                goto out;
            }
        }
        if (dry) {
            if (st.selected <= SAMPLE)
                printf("would send channel=%s topic=%s partition=%" PRId32
                       " offset=%" PRId64 " message_id=%s bytes=%zu source=%s "
                       "to=%s\n",
                       m.channel, m.topic, m.partition, m.offset, m.message_id,
                       m.value_len, m.from_log ? "log" : "postgres", dest);
            cv_progress_update(&prog, st.selected, 0, m.channel);
            continue;
        }
        if (rate > 0) {
            /* Never ahead of N per second since the start. */
            int64_t due = start_ms + (int64_t)((double)st.selected * 1000.0 / rate);
            int64_t now;
            while ((now = cv_mono_ms()) < due && !stop_requested)
                rd_kafka_poll(rk, (int)(due - now));
        }
        snprintf(origin, sizeof(origin), "%s/%" PRId32 "/%" PRId64, m.topic, m.partition,
                 m.offset);
        const char *from = m.from_log ? "log" : "postgres";
        rd_kafka_resp_err_t e;
        while ((e = rd_kafka_producev(
                    rk, RD_KAFKA_V_TOPIC(dest), RD_KAFKA_V_PARTITION(part),
                    RD_KAFKA_V_KEY((void *)m.channel, strlen(m.channel)),
                    RD_KAFKA_V_VALUE((void *)m.value, m.value_len),
                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                    RD_KAFKA_V_HEADER(HDR_REPLAY, from, (ssize_t)strlen(from)),
                    RD_KAFKA_V_HEADER(HDR_ORIGIN, origin, (ssize_t)strlen(origin)),
                    RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(rk, 50);
        if (e) {
            cv_error("replay", "producing to %s: %s", dest, rd_kafka_err2str(e));
            goto out;
        }
        rd_kafka_poll(rk, 0);
        cv_progress_update(&prog, st.selected, 0, m.channel);
    }
    if (r < 0) {
        cv_progress_end(&prog);
        cv_error("replay", "%s", err);
        goto out;
    }
    if (rk) {
        /* Wait for the delivery of everything. */
        while (rd_kafka_outq_len(rk) > 0 && !stop_requested) {
            rd_kafka_poll(rk, 100);
            cv_progress_update(&prog, st.delivered, st.selected, "delivering");
        }
        rd_kafka_flush(rk, 10000);
    }
    cv_progress_end(&prog);
    double secs = (double)(cv_mono_ms() - start_ms) / 1000.0;
    uint64_t unconfirmed = dry ? 0 : st.selected - st.delivered - st.failed;
    cv_log(
        st.failed || unconfirmed || stop_requested ? CV_LOG_ERROR : CV_LOG_INFO,
        dry ? "replay dry run" : "replay done",
        "selected=%" PRIu64 " sent=%" PRIu64 " failed=%" PRIu64 " unconfirmed=%" PRIu64
        " from_postgres=%" PRIu64 " from_log=%" PRIu64 " seconds=%.2f rate=%.0f/s%s%s%s",
        st.selected, st.delivered, st.failed, unconfirmed, st.from_pg, st.from_log, secs,
        secs > 0 ? (double)st.selected / secs : 0, st.failed ? " first_error=\"" : "",
        st.failed ? st.first_error : "", st.failed ? "\"" : "");
    cv_audit_count("selected", (int64_t)st.selected);
    cv_audit_count("sent", (int64_t)st.delivered);
    cv_audit_count("failed", (int64_t)st.failed);
    if (stop_requested)
        cv_error("replay",
                 "interrupted: %" PRIu64 " messages were selected "
                 "before the stop",
                 st.selected);
    rc = st.failed || unconfirmed || stop_requested ? CV_EXIT_FAILURE : CV_EXIT_OK;
out:
    fflush(stdout);
    cv_src_free(src);
    if (rk)
        rd_kafka_destroy(rk);
    cv_keyring_free(keys);
    cv_config_free(cfg);
    cv_select_release(&sel);
    return rc;
}
