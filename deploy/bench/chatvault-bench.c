/*
 * chatvault-bench — the end-to-end benchmark of the durable path.
 *
 * Publishes N ChatMessages round-robin over C channels (topics
 * <prefix><channel>, every partition in turn) while `chatvault broker` runs,
 * and consumes the ack topic at the same time. It proves that every message
 * was acknowledged (distinct message ids are counted, nothing is sampled or
 * truncated; a missing ack is a failure) and prints:
 *   - end-to-end throughput: N / (last new ack - first publish);
 *     with --backlog GOFILE, the drain instead: the bench publishes and
 *     flushes all N with no broker running, prints a line starting
 *     "backlog: ", waits until GOFILE holds the pid of the broker its caller
 *     has just started, and measures N / (last new ack - that moment);
 *     with --rate N, messages go out on a clock at N msgs/s (open loop),
 *     each stamped with the moment it was due;
 *   - sent -> ack latency p50 / p99 / p99.9 / max, from each ack's sent_at_us (the
 *     sender's clock, copied by the broker) to the moment the ack arrived;
 *   - the broker's CPU seconds over the run and its peak RSS, read from
 *     /proc/<pid>/stat and /proc/<pid>/status (--broker-pid).
 * deploy/bench/run.sh starts everything around it; see deploy/bench/README.md.
 *
 * The last line of output is machine-readable: `RESULT key=value ...`.
 * Exit codes: 0 every message acked PERSISTED, 1 anything missing or
 * failed, 2 usage.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "chatvault.pb-c.h"

#define MAX_CHANNELS 1024
#define MAX_ACK_PARTITIONS 10000
#define MISSING_SHOWN 10
#define GO_TIMEOUT_S 600 /* --backlog: the longest wait for GOFILE */

typedef struct bench_opts {
    const char *bootstrap;
    const char *topic_prefix;
    const char *channel_prefix;
    const char *ack_topic;
    long messages;
    int body_bytes;
    int channels;
    int linger_ms;
    int idle_timeout_s;
    long broker_pid;
    const char *backlog_go; /* --backlog GOFILE, or NULL */
    long rate;              /* --rate: msgs/s on a clock; 0: as fast as possible */
    const char *series;     /* --series FILE, or NULL */
    const char *kafka_props[32];
    int nkafka_props;
} bench_opts;

/* What the ack consumer thread has seen. The producer thread reads the
 * atomics for progress; everything else is read after the thread joined. */
typedef struct ack_state {
    rd_kafka_t *rk;
    const char *run_id;
    size_t run_id_len;
    long n;
    unsigned char *seen; /* per message: acks received (saturating) */
    int64_t *latency_us; /* first ack of each message, in arrival order */
    int64_t *sent_us;    /* its sent_at_us, in the same order */
    int64_t *ackts_us;   /* the ack record's Kafka timestamp, in the same order */
    long nlatency;
    long by_status[5]; /* index: AckStatus, 0 = other */
    long repeats;      /* acks of a message already acked */
    long foreign;      /* acks of other runs or undecodable */
    atomic_long distinct;
    atomic_llong last_new_mono_us;
    atomic_bool stop;
    char error[256];
} ack_state;

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) {
    (void)sig, interrupted = 1;
}

static atomic_long delivery_failures;
static char delivery_error[256];

static int64_t now_us(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void usage(FILE *out) {
    fprintf(out, "usage: chatvault-bench --bootstrap HOST:PORT [options]\n\n"
                 "Publishes chat messages to a Kafka cluster that `chatvault broker` "
                 "consumes,\nwaits for every DeliveryAck and prints throughput, "
                 "latency and broker cost.\n\n"
                 "  --bootstrap SERVERS     Kafka bootstrap servers (required)\n"
                 "  --messages N            messages to publish (default 1000000)\n"
                 "  --body-bytes N          body size (default 256)\n"
                 "  --channels N            channels, one topic each (default 16)\n"
                 "  --topic-prefix P        chat topic prefix (default chat.)\n"
                 "  --channel-prefix P      channel names P00, P01, ... (default "
                 "bench-)\n"
                 "  --ack-topic T           ack topic (default chatvault.acks)\n"
                 "  --linger-ms N           producer linger.ms, >= 5 (default 5)\n"
                 "  --idle-timeout S        give up when no new ack came for S "
                 "seconds (default 60)\n"
                 "  --broker-pid PID        report this process's CPU time and "
                 "peak RSS\n"
                 "  --backlog GOFILE        publish everything first, print a line "
                 "\"backlog: ...\",\n"
                 "                          wait until GOFILE holds the pid of a "
                 "broker just\n"
                 "                          started, measure from then to the last "
                 "ack\n"
                 "  --rate N                open loop: publish N msgs/s on a clock, "
                 "each message\n"
                 "                          stamped with the time it was due (so a "
                 "publisher that\n"
                 "                          falls behind shows as latency, not as "
                 "a lower rate)\n"
                 "  --series FILE           write one line per message acked: "
                 "seconds from the\n"
                 "                          first send to its send, its sent -> ack "
                 "ms, and sent ->\n"
                 "                          the ack record's Kafka timestamp, ms\n"
                 "  -X key=value            extra librdkafka property for both "
                 "clients\n");
}

static int parse_long(const char *s, long min, long max, long *ret) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return -EINVAL;
    *ret = v;
    return 0;
}

static int parse_args(int argc, char **argv, bench_opts *o) {
    static const struct option opts[] = {{"bootstrap", required_argument, NULL, 'b'},
                                         {"messages", required_argument, NULL, 'n'},
                                         {"body-bytes", required_argument, NULL, 's'},
                                         {"channels", required_argument, NULL, 'c'},
                                         {"topic-prefix", required_argument, NULL, 'T'},
                                         {"channel-prefix", required_argument, NULL, 'C'},
                                         {"ack-topic", required_argument, NULL, 'a'},
                                         {"linger-ms", required_argument, NULL, 'l'},
                                         {"idle-timeout", required_argument, NULL, 'i'},
                                         {"broker-pid", required_argument, NULL, 'p'},
                                         {"backlog", required_argument, NULL, 'B'},
                                         {"rate", required_argument, NULL, 'r'},
                                         {"series", required_argument, NULL, 'S'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    *o = (bench_opts){.topic_prefix = "chat.",
                      .channel_prefix = "bench-",
                      .ack_topic = "chatvault.acks",
                      .messages = 1000000,
                      .body_bytes = 256,
                      .channels = 16,
                      .linger_ms = 5,
                      .idle_timeout_s = 60};
    int opt;
    long v;
    while ((opt = getopt_long(argc, argv, "X:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            o->bootstrap = optarg;
            break;
        case 'n':
            if (parse_long(optarg, 1, 1000000000, &o->messages) < 0)
                goto bad;
            break;
        case 's':
            if (parse_long(optarg, 0, 1 << 20, &v) < 0)
                goto bad;
            o->body_bytes = (int)v;
            break;
        case 'c':
            if (parse_long(optarg, 1, MAX_CHANNELS, &v) < 0)
                goto bad;
            o->channels = (int)v;
            break;
        case 'T':
            o->topic_prefix = optarg;
            break;
        case 'C':
            o->channel_prefix = optarg;
            break;
        case 'a':
            o->ack_topic = optarg;
            break;
        case 'l':
            if (parse_long(optarg, 5, 60000, &v) < 0)
                goto bad;
            o->linger_ms = (int)v;
            break;
        case 'i':
            if (parse_long(optarg, 1, 86400, &v) < 0)
                goto bad;
            o->idle_timeout_s = (int)v;
            break;
        case 'p':
            if (parse_long(optarg, 1, INT32_MAX, &o->broker_pid) < 0)
                goto bad;
            break;
        case 'B':
            if (!*optarg)
                goto bad;
            o->backlog_go = optarg;
            break;
        case 'r':
            if (parse_long(optarg, 1, 10000000, &o->rate) < 0)
                goto bad;
            break;
        case 'S':
            if (!*optarg)
                goto bad;
            o->series = optarg;
            break;
        case 'X':
            if (!strchr(optarg, '=') ||
                o->nkafka_props ==
                    (int)(sizeof(o->kafka_props) / sizeof(o->kafka_props[0])))
                goto bad;
            o->kafka_props[o->nkafka_props++] = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -EINVAL;
        }
    }
    if (!o->bootstrap || optind < argc) {
        usage(stderr);
        return -EINVAL;
    }
    if (o->backlog_go && o->rate) {
        fprintf(stderr, "chatvault-bench: --rate and --backlog do not go together\n");
        return -EINVAL;
    }
    if (o->backlog_go && o->broker_pid) {
        fprintf(stderr, "chatvault-bench: --backlog reads the broker's pid from "
                        "GOFILE; drop --broker-pid\n");
        return -EINVAL;
    }
    return 0;
bad:
    fprintf(stderr, "chatvault-bench: bad value \"%s\" for option %s\n", optarg,
            argv[optind - 1]);
    return -EINVAL;
}

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v) {
    char err[256];
    if (rd_kafka_conf_set(conf, k, v, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "chatvault-bench: kafka property %s=%s: %s\n", k, v, err);
        return -EINVAL;
    }
    return 0;
}

/* A client config: bootstrap, the given defaults, then every -X. */
static rd_kafka_conf_t *client_conf(const bench_opts *o, const char *const (*defs)[2]) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (conf_set(conf, "bootstrap.servers", o->bootstrap) < 0)
        goto fail;
    for (int i = 0; defs[i][0]; i++)
        if (conf_set(conf, defs[i][0], defs[i][1]) < 0)
            goto fail;
    for (int i = 0; i < o->nkafka_props; i++) {
        char kv[512];
        snprintf(kv, sizeof(kv), "%s", o->kafka_props[i]);
        char *eq = strchr(kv, '=');
        *eq = '\0';
        if (conf_set(conf, kv, eq + 1) < 0)
            goto fail;
    }
    return conf;
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/* Number of partitions of `topic`, or a negative error. */
static int partition_count(rd_kafka_t *rk, const char *topic) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    int n = -ENOENT;
    /* A topic just created may not be in a busy node's metadata yet: ask
     * again, for 10 s in all. */
    int64_t deadline = now_us(CLOCK_MONOTONIC) + 10000000;
    for (int tries = 0; rkt && n < 0; tries++) {
        const struct rd_kafka_metadata *md = NULL;
        if (tries)
            usleep(500000);
        int64_t left_ms = (deadline - now_us(CLOCK_MONOTONIC)) / 1000;
        if (left_ms <= 0)
            break;
        if (rd_kafka_metadata(rk, 0, rkt, &md, (int)left_ms) !=
            RD_KAFKA_RESP_ERR_NO_ERROR)
            continue;
        if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
            md->topics[0].partition_cnt > 0)
            n = md->topics[0].partition_cnt;
        rd_kafka_metadata_destroy(md);
    }
    if (rkt)
        rd_kafka_topic_destroy(rkt);
    return n;
}

/* ---- the ack consumer ------------------------------------------------- */

static const char *const consumer_defaults[][2] = {
    {"group.id", "chatvault-bench"},
    {"enable.auto.commit", "false"},
    {"enable.partition.eof", "false"},
    {"queued.min.messages", "200000"},
    {"queued.max.messages.kbytes", "65536"},
    {"fetch.wait.max.ms", "20"},
    {NULL, NULL}};

/* Assigns every partition of the ack topic at its current end, so that the
 * consumer sees exactly the acks produced from now on, whenever its first
 * fetch happens. */
static int ack_consumer_start(const bench_opts *o, ack_state *st) {
    rd_kafka_conf_t *conf = client_conf(o, consumer_defaults);
    char err[512];
    if (!conf)
        return -EINVAL;
    st->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (!st->rk) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "chatvault-bench: ack consumer: %s\n", err);
        return -EINVAL;
    }
    int parts = partition_count(st->rk, o->ack_topic);
    if (parts <= 0 || parts > MAX_ACK_PARTITIONS) {
        fprintf(stderr, "chatvault-bench: ack topic %s: no partitions found at %s\n",
                o->ack_topic, o->bootstrap);
        return -ENOENT;
    }
    rd_kafka_topic_partition_list_t *assign = rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++) {
        int64_t lo, hi;
        /* A partition just created may have no leader yet: ask again. */
        rd_kafka_resp_err_t e;
        for (int tries = 0;; tries++) {
            e = rd_kafka_query_watermark_offsets(st->rk, o->ack_topic, p, &lo, &hi,
                                                 10000);
            if (!e || tries == 20 ||
                (e != RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION &&
                 e != RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE &&
                 e != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART))
                break;
            usleep(500000);
        }
        if (e) {
            fprintf(stderr, "chatvault-bench: watermarks of %s [%d]: %s\n", o->ack_topic,
                    p, rd_kafka_err2str(e));
            rd_kafka_topic_partition_list_destroy(assign);
            return -EIO;
        }
        rd_kafka_topic_partition_list_add(assign, o->ack_topic, p)->offset = hi;
    }
    rd_kafka_resp_err_t e = rd_kafka_assign(st->rk, assign);
    rd_kafka_topic_partition_list_destroy(assign);
    if (e) {
        fprintf(stderr, "chatvault-bench: assign %s: %s\n", o->ack_topic,
                rd_kafka_err2str(e));
        return -EIO;
    }
    return 0;
}

static void ack_record(ack_state *st, const rd_kafka_message_t *m, int64_t recv_us) {
    Chatvault__V1__DeliveryAck *ack =
        chatvault__v1__delivery_ack__unpack(NULL, m->len, m->payload);
    if (!ack) {
        st->foreign++;
        return;
    }
    const char *id = ack->message_id;
    char *end;
    long seq = -1;
    if (strncmp(id, st->run_id, st->run_id_len) == 0 && id[st->run_id_len] == '-') {
        errno = 0;
        seq = strtol(id + st->run_id_len + 1, &end, 10);
        if (errno || *end || seq < 0 || seq >= st->n)
            seq = -1;
    }
    if (seq < 0) {
        st->foreign++;
    } else {
        int status = ack->status >= 1 && ack->status <= 4 ? (int)ack->status : 0;
        st->by_status[status]++;
        if (st->seen[seq]) {
            st->repeats++;
            if (st->seen[seq] < 255)
                st->seen[seq]++;
        } else {
            st->seen[seq] = 1;
            st->sent_us[st->nlatency] = ack->sent_at_us;
            st->ackts_us[st->nlatency] = rd_kafka_message_timestamp(m, NULL) * 1000;
            st->latency_us[st->nlatency++] = recv_us - ack->sent_at_us;
            atomic_store(&st->last_new_mono_us, now_us(CLOCK_MONOTONIC));
            atomic_fetch_add(&st->distinct, 1);
        }
    }
    chatvault__v1__delivery_ack__free_unpacked(ack, NULL);
}

static void *ack_thread(void *arg) {
    ack_state *st = arg;
    while (!atomic_load(&st->stop)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(st->rk, 100);
        if (!m)
            continue;
        if (m->err)
            snprintf(st->error, sizeof(st->error), "%s", rd_kafka_message_errstr(m));
        else
            ack_record(st, m, now_us(CLOCK_REALTIME));
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

/* ---- the producer ----------------------------------------------------- */

static const char *const producer_defaults[][2] = {
    {"batch.num.messages", "10000"},
    {"queue.buffering.max.messages", "1000000"},
    {"queue.buffering.max.kbytes", "1048576"},
    {"enable.idempotence", "false"},
    {NULL, NULL}};

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk, (void)opaque;
    if (m->err && atomic_fetch_add(&delivery_failures, 1) == 0)
        snprintf(delivery_error, sizeof(delivery_error), "%s", rd_kafka_err2str(m->err));
}

typedef struct channel_out {
    char name[64];
    rd_kafka_topic_t *rkt;
    int partitions;
} channel_out;

/* Publishes every message; returns 0, or -EINTR when interrupted. Message i
 * goes to channel i % C, partition (i / C) % P, with id "<run>-<i>". */
static int publish_all(rd_kafka_t *rk, const bench_opts *o, const char *run_id,
                       channel_out *ch, const ack_state *acks) {
    unsigned char *body = malloc(o->body_bytes ? (size_t)o->body_bytes : 1);
    size_t cap = (size_t)o->body_bytes + 512;
    uint8_t *buf = malloc(cap);
    if (!body || !buf) {
        free(body);
        free(buf);
        return -ENOMEM;
    }
    /* Printable, and free of quotes and backslashes: the kcat|psql
     * comparison in run.sh copies values through CSV. */
    for (int i = 0; i < o->body_bytes; i++)
        body[i] = (unsigned char)('a' + i % 26);
    int64_t last_report = now_us(CLOCK_MONOTONIC);
    int64_t t0_mono = last_report, t0_real = now_us(CLOCK_REALTIME);
    int rc = 0;
    for (long i = 0; i < o->messages && !interrupted; i++) {
        channel_out *c = &ch[i % o->channels];
        int64_t sent_at = 0;
        if (o->rate) {
            /* Message i is due at i / rate seconds: wait for it, and stamp
             * it with that moment, however late it goes out. */
            int64_t due = t0_mono + (int64_t)((double)i * 1e6 / (double)o->rate);
            int64_t now = now_us(CLOCK_MONOTONIC);
            if (due - now > 200) {
                rd_kafka_poll(rk, 0);
                struct timespec ts = {.tv_sec = due / 1000000,
                                      .tv_nsec = (due % 1000000) * 1000};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            }
            sent_at = t0_real + (due - t0_mono);
        }
        char id[64];
        snprintf(id, sizeof(id), "%s-%ld", run_id, i);
        Chatvault__V1__ChatMessage m = CHATVAULT__V1__CHAT_MESSAGE__INIT;
        m.message_id = id;
        m.channel = c->name;
        m.sender_id = "chatvault-bench";
        m.sent_at_us = o->rate ? sent_at : now_us(CLOCK_REALTIME);
        m.body.data = body;
        m.body.len = (size_t)o->body_bytes;
        m.content_type = "text/plain";
        size_t len = chatvault__v1__chat_message__pack(&m, buf);
        int32_t part = (int32_t)((i / o->channels) % c->partitions);
        while (rd_kafka_produce(c->rkt, part, RD_KAFKA_MSG_F_COPY, buf, len, NULL, 0,
                                NULL) == -1) {
            rd_kafka_resp_err_t e = rd_kafka_last_error();
            if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                fprintf(stderr, "chatvault-bench: produce to %s: %s\n",
                        rd_kafka_topic_name(c->rkt), rd_kafka_err2str(e));
                rc = -EIO;
                goto out;
            }
            rd_kafka_poll(rk, 10);
        }
        if ((i & 1023) == 0) {
            rd_kafka_poll(rk, 0);
            int64_t t = now_us(CLOCK_MONOTONIC);
            if (t - last_report >= 2000000) {
                fprintf(stderr, "chatvault-bench: published %ld, acked %ld\n", i,
                        atomic_load(&acks->distinct));
                last_report = t;
            }
        }
    }
    if (interrupted)
        rc = -EINTR;
out:
    free(body);
    free(buf);
    return rc;
}

/* ---- the broker's cost ------------------------------------------------ */

/* CPU seconds (user + system) of `pid`, or -1. */
static double proc_cpu_seconds(long pid, double *ret_user, double *ret_sys) {
    char path[64], line[2048];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(line, 1, sizeof(line) - 1, f);
    fclose(f);
    line[n] = '\0';
    /* Fields after the command name (which may hold spaces) start at 3:
     * state; utime and stime are fields 14 and 15. */
    const char *p = strrchr(line, ')');
    unsigned long long ut, st;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                     &st) != 2)
        return -1;
    double hz = (double)sysconf(_SC_CLK_TCK);
    *ret_user = (double)ut / hz;
    *ret_sys = (double)st / hz;
    return *ret_user + *ret_sys;
}

/* Peak resident set of `pid` in KiB (VmHWM), or -1. */
static long proc_peak_rss_kib(long pid) {
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kib = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* ---- the backlog's start signal --------------------------------------- */

/* Waits until `path` holds a pid (decimal, optionally a newline: the caller
 * writes it to a temporary file and renames it into place) and stores it in
 * *ret_pid. Returns 0, -EINTR when interrupted, -ETIMEDOUT after
 * GO_TIMEOUT_S seconds. */
static int wait_go(const char *path, long *ret_pid) {
    int64_t deadline = now_us(CLOCK_MONOTONIC) + (int64_t)GO_TIMEOUT_S * 1000000;
    while (!interrupted) {
        FILE *f = fopen(path, "r");
        if (f) {
            char line[32];
            long pid;
            bool got = fgets(line, sizeof(line), f) != NULL;
            fclose(f);
            if (got) {
                line[strcspn(line, "\n")] = '\0';
                if (parse_long(line, 1, INT32_MAX, &pid) == 0) {
                    *ret_pid = pid;
                    return 0;
                }
            }
        }
        if (now_us(CLOCK_MONOTONIC) > deadline)
            return -ETIMEDOUT;
        usleep(5000);
    }
    return -EINTR;
}

/* The broker's CPU seconds at the start of the measurement, or -1 (no pid,
 * or /proc unreadable: said once). */
static double broker_cpu_start(long pid, double *ret_user, double *ret_sys) {
    if (!pid)
        return -1;
    double cpu = proc_cpu_seconds(pid, ret_user, ret_sys);
    if (cpu < 0)
        fprintf(stderr, "chatvault-bench: cannot read /proc/%ld/stat\n", pid);
    return cpu;
}

/* --series: "<s since the first send> <sent -> ack ms> <sent -> the ack
 * record's Kafka timestamp, ms>" per message, in arrival order: latency over
 * the run, and (with an ack topic of message.timestamp.type LogAppendTime)
 * how much of it came after the ack reached Kafka. */
static int write_series(const char *path, const ack_state *st) {
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int64_t t0 = INT64_MAX;
    for (long i = 0; i < st->nlatency; i++)
        if (st->sent_us[i] < t0)
            t0 = st->sent_us[i];
    for (long i = 0; i < st->nlatency; i++)
        fprintf(f, "%.6f %.3f %.3f\n", (double)(st->sent_us[i] - t0) / 1e6,
                (double)st->latency_us[i] / 1e3,
                (double)(st->ackts_us[i] - st->sent_us[i]) / 1e3);
    bool bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        if (!errno)
            errno = EIO;
        return -1;
    }
    return 0;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double percentile_ms(const int64_t *sorted, long n, double q) {
    if (n == 0)
        return 0;
    long i = (long)(q * (double)(n - 1) + 0.5);
    return (double)sorted[i] / 1000.0;
}

int main(int argc, char **argv) {
    bench_opts o;
    if (parse_args(argc, argv, &o) < 0)
        return 2;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    char run_id[32];
    snprintf(run_id, sizeof(run_id), "b%08lx",
             (unsigned long)((now_us(CLOCK_REALTIME) ^ ((int64_t)getpid() << 20)) &
                             0xffffffffUL));
    ack_state acks = {.run_id = run_id, .run_id_len = strlen(run_id), .n = o.messages};
    acks.seen = calloc((size_t)o.messages, 1);
    acks.latency_us = malloc((size_t)o.messages * sizeof(int64_t));
    acks.sent_us = malloc((size_t)o.messages * sizeof(int64_t));
    acks.ackts_us = malloc((size_t)o.messages * sizeof(int64_t));
    channel_out *ch = calloc((size_t)o.channels, sizeof(*ch));
    rd_kafka_t *rk = NULL;
    int rc = 1;
    if (!acks.seen || !acks.latency_us || !acks.sent_us || !acks.ackts_us || !ch) {
        fprintf(stderr, "chatvault-bench: out of memory\n");
        goto out;
    }
    if (ack_consumer_start(&o, &acks) < 0)
        goto out;

    char lg[16], err[512];
    snprintf(lg, sizeof(lg), "%d", o.linger_ms);
    rd_kafka_conf_t *conf = client_conf(&o, producer_defaults);
    if (!conf || conf_set(conf, "linger.ms", lg) < 0) {
        if (conf)
            rd_kafka_conf_destroy(conf);
        goto out;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "chatvault-bench: producer: %s\n", err);
        goto out;
    }
    int min_parts = INT32_MAX;
    for (int c = 0; c < o.channels; c++) {
        char topic[300];
        snprintf(ch[c].name, sizeof(ch[c].name), "%s%02d", o.channel_prefix, c);
        snprintf(topic, sizeof(topic), "%s%s", o.topic_prefix, ch[c].name);
        ch[c].partitions = partition_count(rk, topic);
        if (ch[c].partitions <= 0) {
            fprintf(stderr,
                    "chatvault-bench: topic %s does not exist at %s (create it "
                    "with enough partitions: the mock keeps ~5 MiB each)\n",
                    topic, o.bootstrap);
            goto out;
        }
        if (ch[c].partitions < min_parts)
            min_parts = ch[c].partitions;
        ch[c].rkt = rd_kafka_topic_new(rk, topic, NULL);
    }
    printf("chatvault-bench: %ld messages, %d channels (%s%s00..), >= %d "
           "partitions each, %d-byte bodies, linger.ms=%d, run %s\n",
           o.messages, o.channels, o.topic_prefix, o.channel_prefix, min_parts,
           o.body_bytes, o.linger_ms, run_id);
    fflush(stdout);

    pthread_t tid;
    if (pthread_create(&tid, NULL, ack_thread, &acks) != 0) {
        fprintf(stderr, "chatvault-bench: cannot start the ack thread\n");
        goto out;
    }
    double cpu_user0 = 0, cpu_sys0 = 0, cpu_user1 = 0, cpu_sys1 = 0;
    double cpu0 = -1;
    if (!o.backlog_go)
        cpu0 = broker_cpu_start(o.broker_pid, &cpu_user0, &cpu_sys0);

    int64_t t_start = now_us(CLOCK_MONOTONIC);
    int64_t t_measure = t_start; /* where the end-to-end (or drain) time starts */
    int grc = 0;                 /* --backlog: waiting for GOFILE */
    int prc = publish_all(rk, &o, run_id, ch, &acks);
    while (prc == 0 && rd_kafka_outq_len(rk) > 0 && !interrupted)
        rd_kafka_poll(rk, 100);
    int64_t t_published = now_us(CLOCK_MONOTONIC);
    long failed = atomic_load(&delivery_failures);
    if (prc == 0 && failed)
        fprintf(stderr, "chatvault-bench: %ld messages failed delivery: %s\n", failed,
                delivery_error);

    /* The backlog is in Kafka: the drain is timed from the moment the
     * caller has started the broker. A failed publish ends the run here. */
    if (o.backlog_go && prc == 0 && failed == 0) {
        printf("backlog: %ld messages published and flushed in %.2f s; waiting for "
               "%s to hold the broker's pid\n",
               o.messages, (double)(t_published - t_start) / 1e6, o.backlog_go);
        fflush(stdout);
        grc = wait_go(o.backlog_go, &o.broker_pid);
        if (grc == -ETIMEDOUT)
            fprintf(stderr, "chatvault-bench: %s held no pid after %d s; giving up\n",
                    o.backlog_go, GO_TIMEOUT_S);
        t_measure = now_us(CLOCK_MONOTONIC);
        if (grc == 0)
            cpu0 = broker_cpu_start(o.broker_pid, &cpu_user0, &cpu_sys0);
    }

    /* Wait for the acks: done when all came, give up when none came for
     * idle_timeout_s. */
    int64_t last_report = now_us(CLOCK_MONOTONIC);
    atomic_store(&acks.last_new_mono_us, last_report);
    while (prc == 0 && grc == 0 && !interrupted &&
           atomic_load(&acks.distinct) < o.messages) {
        usleep(20000);
        int64_t t = now_us(CLOCK_MONOTONIC);
        if (t - atomic_load(&acks.last_new_mono_us) >
            (int64_t)o.idle_timeout_s * 1000000) {
            fprintf(stderr, "chatvault-bench: no new ack for %d s; giving up\n",
                    o.idle_timeout_s);
            break;
        }
        if (t - last_report >= 2000000) {
            fprintf(stderr, "chatvault-bench: published %ld, acked %ld\n", o.messages,
                    atomic_load(&acks.distinct));
            last_report = t;
        }
    }
    int64_t t_last_ack = atomic_load(&acks.last_new_mono_us);
    /* Late repeats are counted too: give them a moment to arrive. */
    usleep(500000);
    if (o.broker_pid && cpu0 >= 0)
        (void)proc_cpu_seconds(o.broker_pid, &cpu_user1, &cpu_sys1);
    long rss_kib = o.broker_pid ? proc_peak_rss_kib(o.broker_pid) : -1;
    atomic_store(&acks.stop, true);
    pthread_join(tid, NULL);

    long distinct = atomic_load(&acks.distinct), missing = o.messages - distinct;
    double pub_s = (double)(t_published - t_start) / 1e6;
    double e2e_s = (double)(t_last_ack - t_measure) / 1e6;
    double e2e_rate = missing == 0 && e2e_s > 0 ? (double)o.messages / e2e_s : 0;
    if (o.series && write_series(o.series, &acks) < 0)
        fprintf(stderr, "chatvault-bench: %s: %s\n", o.series, strerror(errno));
    qsort(acks.latency_us, (size_t)acks.nlatency, sizeof(int64_t), cmp_i64);
    double p50 = percentile_ms(acks.latency_us, acks.nlatency, 0.50);
    double p99 = percentile_ms(acks.latency_us, acks.nlatency, 0.99);
    double p999 = percentile_ms(acks.latency_us, acks.nlatency, 0.999);
    double pmax = acks.nlatency ? (double)acks.latency_us[acks.nlatency - 1] / 1000 : 0;
    double cpu_user = cpu_user1 - cpu_user0, cpu_sys = cpu_sys1 - cpu_sys0;

    printf("published   %ld in %.2f s (%.0f msgs/s), %ld delivery failures\n",
           prc == 0 ? o.messages : 0, pub_s, pub_s > 0 ? (double)o.messages / pub_s : 0,
           failed);
    printf("acked       %ld distinct of %ld: PERSISTED %ld, DUPLICATE %ld, "
           "REJECTED %ld, DEGRADED %ld, other %ld; %ld repeated acks, %ld foreign\n",
           distinct, o.messages, acks.by_status[1], acks.by_status[2], acks.by_status[3],
           acks.by_status[4], acks.by_status[0], acks.repeats, acks.foreign);
    if (missing == 0 && o.backlog_go)
        printf("drain: %ld msgs in %.2f s = %.0f msgs/s (broker start -> last ack)\n",
               o.messages, e2e_s, e2e_rate);
    else if (missing == 0)
        printf("end to end  %ld msgs in %.2f s = %.0f msgs/s (first publish -> "
               "last ack)\n",
               o.messages, e2e_s, e2e_rate);
    if (o.rate)
        printf("offered     %ld msgs/s on a clock (open loop)\n", o.rate);
    printf("latency     sent -> ack p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms, max %.1f ms "
           "(%ld samples)%s\n",
           p50, p99, p999, pmax, acks.nlatency,
           o.backlog_go ? ", including the backlog's wait for the broker" : "");
    if (o.broker_pid)
        printf("broker      pid %ld: CPU %.2f s over the run (user %.2f, sys %.2f) "
               "= %.1f us/msg; peak RSS %.1f MiB\n",
               o.broker_pid, cpu_user + cpu_sys, cpu_user, cpu_sys,
               (cpu_user + cpu_sys) * 1e6 / (double)o.messages,
               rss_kib >= 0 ? (double)rss_kib / 1024 : -1.0);
    if (acks.error[0])
        printf("ack consumer: last error: %s\n", acks.error);

    /* Fresh messages into a fresh database: anything but PERSISTED (or
     * DUPLICATE for a re-delivered record) is a failure. */
    bool ok = prc == 0 && grc == 0 && failed == 0 && missing == 0 &&
              acks.by_status[0] == 0 && acks.by_status[3] == 0 && acks.by_status[4] == 0;
    if (missing > 0) {
        printf("FAIL: %ld of %ld messages were never acked; first missing ids:", missing,
               o.messages);
        int shown = 0;
        for (long i = 0; i < o.messages && shown < MISSING_SHOWN; i++)
            if (!acks.seen[i]) {
                printf(" %s-%ld", run_id, i);
                shown++;
            }
        printf("\n");
    } else if (!ok) {
        printf("FAIL: every message was acked, but some acks were not PERSISTED "
               "(or publishing failed)\n");
    }
    printf("RESULT ok=%d messages=%ld acked=%ld missing=%ld publish_s=%.3f "
           "e2e_s=%.3f e2e_msgs_per_s=%.0f p50_ms=%.1f p99_ms=%.1f p999_ms=%.1f "
           "max_ms=%.1f broker_cpu_s=%.2f broker_peak_rss_mib=%.1f mode=%s rate=%ld\n",
           ok, o.messages, distinct, missing, pub_s, e2e_s, e2e_rate, p50, p99, p999,
           pmax, cpu_user + cpu_sys, rss_kib >= 0 ? (double)rss_kib / 1024 : -1.0,
           o.backlog_go ? "backlog"
           : o.rate     ? "rate"
                        : "live",
           o.rate);
    rc = ok ? 0 : 1;
out:
    if (rk) {
        for (int c = 0; c < o.channels; c++)
            if (ch[c].rkt)
                rd_kafka_topic_destroy(ch[c].rkt);
        rd_kafka_destroy(rk);
    }
    if (acks.rk) {
        rd_kafka_consumer_close(acks.rk);
        rd_kafka_destroy(acks.rk);
    }
    free(ch);
    free(acks.seen);
    free(acks.latency_us);
    free(acks.sent_us);
    free(acks.ackts_us);
    return rc;
}
