/*
 * chatvault broker — the daemon: joins the consumer group, persists every
 * chat record, acks it, commits offsets (see consumer/ingest/pipeline.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "access.h"
#include "cli.h"
#include "daemon/devkafka.h"
#include "daemon/drillsched.h"
#include "daemon/http.h"
#include "daemon/indexer.h"
#include "daemon/probe.h"
#include "daemon/retsched.h"
#include "daemon/shipper.h"
#include "ingest/pipeline.h"
#include "keyring.h"
#include "obs/metrics.h"

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
    (void)sig, stop = 1;
}

static void pipeline_log(void *opaque, cv_log_level level, const char *msg,
                         const char *kv) {
    (void)opaque;
    cv_log(level, msg, "%s", kv);
}

/* One broker per process: the stats callback's opaque is the pipeline's. */
static cv_metrics *stats_metrics;

static int kafka_stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
    (void)rk;
    (void)opaque;
    if (stats_metrics)
        cv_metrics_kafka_stats(stats_metrics, json, len);
    return 0; /* librdkafka frees json */
}

/* ack.transactions = on: makes the ack producer transactional. Its id is
 * this instance's across restarts, so that a restart fences what the last
 * run left open instead of waiting for transaction.timeout.ms. By default
 * it names the group, the host and (hashed) the log directory, which every
 * instance has its own of: instances on one host do not fence each other. */
static int set_transactional(const cv_config *cfg, rd_kafka_conf_t *pconf, bool embedded,
                             char *errbuf, size_t errlen) {
    if (embedded) {
        snprintf(errbuf, errlen,
                 "ack.transactions = on needs a real Kafka cluster: the embedded one "
                 "only pretends to run transactions (set kafka.bootstrap.servers)");
        return -EINVAL;
    }
    char id[512], host[256] = "";
    const char *asked = cv_config_str(cfg, "ack.transactional_id");
    if (*asked) {
        snprintf(id, sizeof(id), "%s", asked);
    } else {
        if (gethostname(host, sizeof(host) - 1) < 0 || !*host)
            snprintf(host, sizeof(host), "localhost");
        const char *dir = cv_config_str(cfg, "log.dir");
        unsigned char h[crypto_generichash_BYTES_MIN];
        char hex[9];
        crypto_generichash(h, sizeof(h), (const unsigned char *)dir, strlen(dir), NULL,
                           0);
        sodium_bin2hex(hex, sizeof(hex), h, 4);
        snprintf(id, sizeof(id), "chatvault-%s-%s-%s",
                 cv_config_kafka_get(cfg, "group.id"), host, hex);
    }
    char kerr[512];
    if (rd_kafka_conf_set(pconf, "transactional.id", id, kerr, sizeof(kerr)) !=
            RD_KAFKA_CONF_OK ||
        (!cv_config_kafka_get(cfg, "transaction.timeout.ms") &&
         rd_kafka_conf_set(pconf, "transaction.timeout.ms", "15000", kerr,
                           sizeof(kerr)) != RD_KAFKA_CONF_OK)) {
        snprintf(errbuf, errlen, "ack.transactions: %.400s", kerr);
        return -EINVAL;
    }
    return 0;
}

/* The log's keys, when log.dir is set. */
static int load_keys(const cv_config *cfg, cv_keyring **ret) {
    char err[512];
    if (!*cv_config_str(cfg, "log.dir")) {
        cv_log(CV_LOG_WARN,
               "log.dir is empty: the encrypted log store is off; "
               "messages are kept in PostgreSQL only",
               NULL);
        return 0;
    }
    /* A key file that is missing, unreadable or open to others is a
     * configuration error: refuse to start rather than write a log nobody
     * can read, or one anybody can. */
    if (cv_cli_load_keys(cfg, NULL, ret, err, sizeof(err)) < 0) {
        cv_error("broker", "%s (log.key_file; create one with `chatvault keygen`)", err);
        return -1;
    }
    return 0;
}

/* The mock cluster of kafka.bootstrap.servers = embedded, with the ack and
 * dead-letter topics. */
static int start_embedded(const cv_config *cfg, cv_devkafka **ret) {
    char err[512];
    cv_devkafka *dk = NULL;
    if (cv_devkafka_start(1, &dk, err, sizeof(err)) < 0 ||
        cv_devkafka_create_topic(dk, cv_config_str(cfg, "topics.acks"), 4, err,
                                 sizeof(err)) < 0 ||
        cv_devkafka_create_topic(dk, cv_config_str(cfg, "topics.dlq"), 1, err,
                                 sizeof(err)) < 0) {
        cv_error("broker", "%s", err);
        cv_devkafka_free(dk);
        return CV_EXIT_FAILURE;
    }
    cv_log(CV_LOG_INFO, "embedded kafka started",
           "bootstrap=%s note=\"mock cluster: about 5 MiB per partition, "
           "older batches dropped\"",
           cv_devkafka_bootstraps(dk));
    *ret = dk;
    return CV_EXIT_OK;
}

/* The consumer's and the ack producer's configurations. */
static int kafka_confs(const cv_config *cfg, const char *embedded, cv_metrics *metrics,
                       rd_kafka_conf_t **ret_cconf, rd_kafka_conf_t **ret_pconf) {
    char err[512];
    rd_kafka_conf_t *cconf =
        cv_cli_kafka_conf(cfg, "consumer", embedded, err, sizeof(err));
    if (!cconf) {
        cv_error("broker", "config error: %s", err);
        return CV_EXIT_USAGE;
    }
    /* The consumer's statistics tell /metrics and /readyz whether Kafka is
     * reachable (chatvault_kafka_up); kafka.statistics.interval.ms beats it. */
    stats_metrics = metrics;
    if (!cv_config_kafka_get(cfg, "statistics.interval.ms"))
        rd_kafka_conf_set(cconf, "statistics.interval.ms", "1000", NULL, 0);
    rd_kafka_conf_set_stats_cb(cconf, kafka_stats_cb);
    rd_kafka_conf_t *pconf =
        cv_cli_kafka_conf(cfg, "producer", embedded, err, sizeof(err));
    if (!pconf) {
        rd_kafka_conf_destroy(cconf);
        cv_error("broker", "config error: %s", err);
        return CV_EXIT_USAGE;
    }
    if (strcmp(cv_config_str(cfg, "ack.transactions"), "on") == 0 &&
        set_transactional(cfg, pconf, embedded != NULL, err, sizeof(err)) < 0) {
        rd_kafka_conf_destroy(cconf);
        rd_kafka_conf_destroy(pconf);
        cv_error("broker", "config error: %s", err);
        return CV_EXIT_USAGE;
    }
    *ret_cconf = cconf;
    *ret_pconf = pconf;
    return CV_EXIT_OK;
}

/* The probe that sends a message through the pipeline every
 * probe.interval_ms. */
static int start_probe(const cv_config *cfg, const char *embedded, cv_metrics *metrics,
                       cv_probe **ret) {
    char err[512], probe_topic[256];
    snprintf(probe_topic, sizeof(probe_topic), "%s%s",
             cv_config_str(cfg, "topics.prefix"), CV_PROBE_CHANNEL);
    rd_kafka_conf_t *prc = cv_cli_kafka_conf(cfg, "producer", embedded, err, sizeof(err));
    cv_probe_conf prb = {.producer_conf = prc,
                         .topic = probe_topic,
                         .channel = CV_PROBE_CHANNEL,
                         .interval_ms = cv_config_int(cfg, "probe.interval_ms"),
                         .metrics = metrics};
    if (!prc || cv_probe_start(&prb, ret, err, sizeof(err)) < 0) {
        cv_error("broker", "probe: %s", err);
        return CV_EXIT_FAILURE;
    }
    return CV_EXIT_OK;
}

/* The HTTP server on http.listen, when set. */
static int start_http(const cv_config *cfg, const char *embedded, cv_metrics *metrics,
                      cv_http **ret) {
    char err[1024];
    cv_http_conf hc = {
        .listen = cv_config_str(cfg, "http.listen"),
        .token = cv_config_str(cfg, "http.token"),
        .metrics = metrics,
        .kafka_bootstrap = embedded,
        .allowed_hosts = cv_config_str(cfg, "http.allowed_hosts"),
        .header_timeout_s = (unsigned)cv_config_int(cfg, "http.header_timeout_s"),
        .max_connections = (unsigned)cv_config_int(cfg, "http.max_connections"),
        .max_per_address =
            (unsigned)cv_config_int(cfg, "http.max_connections_per_address"),
        .tls_cert_file = cv_config_str(cfg, "http.tls_cert_file"),
        .tls_key_file = cv_config_str(cfg, "http.tls_key_file"),
        .archive_conninfo = strcmp(cv_config_str(cfg, "http.archive"), "on") == 0
                                ? cv_access_conninfo(cfg, CV_PG_READER)
                                : NULL,
        .search_language = cv_config_str(cfg, "search.language"),
        .archive_timeout_ms = (unsigned)cv_config_int(cfg, "http.archive_timeout_ms")};
    int r = *hc.listen ? cv_http_start(&hc, ret, err, sizeof(err)) : 0;
    if (r == 0)
        return CV_EXIT_OK;
    cv_error("broker", "%s", err);
    /* a TLS file that is missing, unreadable or too open is the operator's to
     * fix, like a bad log.key_file */
    return r == -ENOENT || r == -EACCES || r == -EFBIG || r == -ENOTSUP || r == -EISDIR ||
                   r == -EINVAL
               ? CV_EXIT_USAGE
               : CV_EXIT_FAILURE;
}

/* The indexer yields PostgreSQL to the ack path within 2 s of a full
 * batch. */
static bool ack_path_busy(void *opaque) {
    return cv_pipeline_saturated(opaque, 2000);
}

/* Search documents, off the ack path (daemon/indexer.h), unless
 * search.index is off. */
static int start_indexer(const cv_config *cfg, cv_pipeline *p, cv_indexer **ret) {
    char err[512];
    cv_indexer_conf ic = {.conninfo = cv_config_str(cfg, "postgres.conninfo"),
                          .language = cv_config_str(cfg, "search.language"),
                          .interval_ms = cv_config_int(cfg, "search.index_interval_ms"),
                          .busy = ack_path_busy,
                          .busy_opaque = p};
    if (strcmp(cv_config_str(cfg, "search.index"), "on") == 0 &&
        cv_indexer_start(&ic, ret, err, sizeof(err)) < 0) {
        cv_error("broker", "%s", err);
        return CV_EXIT_FAILURE;
    }
    return CV_EXIT_OK;
}

static void log_stopped(cv_pipeline *p) {
    cv_pipeline_stats st;
    cv_pipeline_get_stats(p, &st);
    cv_log(CV_LOG_INFO, "broker stopped",
           "consumed=%" PRId64 " persisted=%" PRId64 " duplicates=%" PRId64
           " rejected=%" PRId64 " acked=%" PRId64 " batches=%" PRId64,
           st.consumed, st.persisted, st.duplicates, st.rejected, st.acked, st.batches);
}

typedef struct broker_opts {
    bool verbose;
} broker_opts;

static const cv_cli_opt opts[] = {
    CV_OPT_FLAG("verbose", 'v', "log at debug level", broker_opts, verbose),
    CV_OPT_END,
};

static const cv_cli_spec spec = {
    .name = "broker",
    .usage = "broker [-c FILE] [--set key=value]... [-v]",
    .about = "Consumes the chat topics (topics.pattern) as a member of consumer group\n"
             "kafka.group.id, stores every message in PostgreSQL, produces a "
             "DeliveryAck to\ntopics.acks (or the message's reply_to) once it is "
             "durable, then commits the\noffsets. SIGTERM or SIGINT finishes the batch "
             "in flight and exits 0.\n\n"
             "With kafka.bootstrap.servers = embedded it starts librdkafka's mock Kafka "
             "cluster\ninside the process (its address is logged). The mock keeps only "
             "about 5 MiB per\npartition and silently drops older batches: for trying "
             "chatvault, not for data.\n",
    .opts = opts,
    .epilog_fn = cv_config_print_help,
};

int cv_cmd_broker(int argc, char **argv) {
    broker_opts o = {0};
    cv_cli cli;
    int parsed = cv_cli_parse(&spec, argc, argv, &o, &cli);
    if (parsed != CV_CLI_RUN)
        return parsed;
    if (o.verbose)
        cv_log_set_min(CV_LOG_DEBUG);
    cv_config *cfg = cv_cli_load_config(&cli.config);
    if (!cfg)
        return CV_EXIT_USAGE;

    char err[512];
    int rc = CV_EXIT_OK;
    cv_devkafka *dk = NULL;
    cv_pipeline *p = NULL;
    cv_metrics *metrics = NULL;
    cv_http *http = NULL;
    cv_probe *probe = NULL;
    cv_indexer *indexer = NULL;
    cv_shipper *shipper = NULL;
    cv_drillsched *drills = NULL;
    cv_retsched *retention = NULL;
    int64_t probe_ms = cv_config_int(cfg, "probe.interval_ms");
    cv_keyring *keys = NULL;
    const char *embedded = NULL;
    const char *log_dir = cv_config_str(cfg, "log.dir");
    if (load_keys(cfg, &keys) < 0) {
        cv_config_free(cfg);
        return CV_EXIT_USAGE;
    }
    cv_metrics_conf mc = {.topics_prefix = cv_config_str(cfg, "topics.prefix"),
                          .max_channels =
                              (size_t)cv_config_int(cfg, "metrics.max_channels"),
                          .version = CV_VERSION,
                          .probe_channel = probe_ms > 0 ? CV_PROBE_CHANNEL : NULL};
    if (cv_metrics_new(&mc, &metrics) < 0) {
        cv_error("broker", "out of memory");
        rc = CV_EXIT_FAILURE;
        goto out;
    }
    if (cv_cli_kafka_embedded(cfg)) {
        if ((rc = start_embedded(cfg, &dk)) != CV_EXIT_OK)
            goto out;
        embedded = cv_devkafka_bootstraps(dk);
    }
    if (strcmp(cv_config_str(cfg, "log.compression"), "zstd") == 0 &&
        cv_applog_set_default_compression(
            (int)cv_config_int(cfg, "log.compression_level"), err, sizeof(err)) < 0) {
        cv_error("broker", "log.compression_level: %s", err);
        rc = CV_EXIT_USAGE;
        goto out;
    }
    rd_kafka_conf_t *cconf = NULL, *pconf = NULL;
    if ((rc = kafka_confs(cfg, embedded, metrics, &cconf, &pconf)) != CV_EXIT_OK)
        goto out;
    cv_pipeline_conf pc = {
        .consumer_conf = cconf,
        .producer_conf = pconf,
        .group = cv_config_kafka_get(cfg, "group.id"),
        .topics_pattern = cv_config_str(cfg, "topics.pattern"),
        .topics_prefix = cv_config_str(cfg, "topics.prefix"),
        .ack_topic = cv_config_str(cfg, "topics.acks"),
        .dlq_topic = cv_config_str(cfg, "topics.dlq"),
        .pg_conninfo = cv_config_str(cfg, "postgres.conninfo"),
        .pg_connections = (unsigned)cv_config_int(cfg, "postgres.connections"),
        .log_dir = log_dir,
        .log_keys = keys,
        .log_segment_bytes = (uint64_t)cv_config_int(cfg, "log.segment_bytes"),
        .log_sync = strcmp(cv_config_str(cfg, "log.sync_method"), "fdatasync") == 0
                        ? CV_APPLOG_SYNC_FDATASYNC
                        : CV_APPLOG_SYNC_SYNCFS,
        .fresh_cluster = dk != NULL,
        .ack_policy = strcmp(cv_config_str(cfg, "ack.policy"), "any") == 0
                          ? CV_ACK_POLICY_ANY
                          : CV_ACK_POLICY_ALL,
        .batch_max_messages = cv_config_int(cfg, "batch.max_messages"),
        .batch_max_bytes = cv_config_int(cfg, "batch.max_bytes"),
        .batch_max_ms = cv_config_int(cfg, "batch.max_ms"),
        .max_body_bytes = cv_config_int(cfg, "limits.max_body_bytes"),
        .shutdown_timeout_ms = cv_config_int(cfg, "shutdown.timeout_ms"),
        .log = pipeline_log,
    };
    pc.observer = cv_metrics_observer(metrics);
    if (cv_pipeline_new(&pc, &p, err, sizeof(err)) < 0) {
        char auth[400];
        if (cv_cli_kafka_auth_error(auth, sizeof(auth)))
            cv_error("broker", "%s (last: %s)", err, auth);
        else
            cv_error("broker", "%s", err);
        rc = CV_EXIT_FAILURE;
        goto out;
    }
    if ((rc = start_http(cfg, embedded, metrics, &http)) != CV_EXIT_OK)
        goto out;
    if (probe_ms > 0 && (rc = start_probe(cfg, embedded, metrics, &probe)) != CV_EXIT_OK)
        goto out;
    if ((rc = start_indexer(cfg, p, &indexer)) != CV_EXIT_OK)
        goto out;
    if (cv_shipper_start(cfg, &shipper, err, sizeof(err)) < 0) {
        cv_error("broker", "%s", err);
        rc = CV_EXIT_USAGE;
        goto out;
    }
    int de = cv_drillsched_start(cfg, keys, metrics, &drills, err, sizeof(err));
    if (de < 0) {
        cv_error("broker", "%s", err);
        rc = de == -EINVAL ? CV_EXIT_USAGE : CV_EXIT_FAILURE;
        goto out;
    }
    if (cv_retsched_start(cfg, keys, metrics, &retention, err, sizeof(err)) < 0) {
        cv_error("broker", "%s", err);
        rc = CV_EXIT_USAGE;
        goto out;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    char zdesc[32] = "off";
    if (strcmp(cv_config_str(cfg, "log.compression"), "zstd") == 0)
        snprintf(zdesc, sizeof(zdesc), "zstd:%d",
                 (int)cv_config_int(cfg, "log.compression_level"));
    cv_log(CV_LOG_INFO, "broker started",
           "group=%s pattern=\"%s\" acks=%s dlq=%s log_dir=%s log_compression=%s "
           "ack_policy=%s ack_transactions=%s",
           pc.group, pc.topics_pattern, pc.ack_topic, pc.dlq_topic,
           *log_dir ? log_dir : "(off)", zdesc, cv_config_str(cfg, "ack.policy"),
           cv_config_str(cfg, "ack.transactions"));
    if (cv_pipeline_run(p, &stop, err, sizeof(err)) < 0)
        rc = CV_EXIT_FAILURE;
    log_stopped(p);
    /* The reason comes last, where an operator reading the tail looks. */
    if (rc == CV_EXIT_FAILURE)
        cv_error("broker", "%s", err);
out:
    retention = cv_retsched_stop(retention);
    cv_drillsched_stop(drills);
    shipper = cv_shipper_stop(shipper);
    cv_indexer_stop(indexer);
    cv_probe_stop(probe);
    cv_http_stop(http);
    cv_pipeline_free(p);
    cv_metrics_free(metrics);
    cv_devkafka_free(dk);
    cv_keyring_free(keys);
    cv_config_free(cfg);
    return rc;
}
