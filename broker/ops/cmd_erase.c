/*
 * chatvault erase — the right to be forgotten. Erasing a channel destroys
 * its data keys (consumer/datakeys.h), which makes every log segment sealed
 * with them unreadable without touching any other channel's segments
 * (crypto-shredding), and deletes the channel's rows from PostgreSQL in one
 * transaction (consumer/pg/pgerase.h). Erasing a sender deletes that
 * sender's rows; the log keeps their records, encrypted under the
 * channel's key, until the channel is erased, but the store records the
 * sender first so the readers that hand messages out pass them over.
 *
 * Order: keys first, then rows. A crash between the two leaves keys
 * destroyed and rows in place; running the command again finds no key left
 * to destroy and deletes the rows. Nothing is undone by running it twice.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "access.h"
#include "applog/applog.h"
#include "cli.h"
#include "datakeys.h"
#include "keyring.h"
#include "pg/pgerase.h"
#include "pg/pgmigrate.h"
#include "util.h"

typedef struct erase_opts {
    const char *channel, *sender, *reason;
    bool dry_run, yes;
} erase_opts;

static const cv_cli_opt erase_opts_table[] = {
    CV_OPT_STR("channel", 0, "NAME", "erase this channel: its log keys and its rows",
               erase_opts, channel),
    CV_OPT_STR("sender", 0, "ID",
               "erase this sender's rows in PostgreSQL (with --channel: in that channel "
               "only); the log's records stay, under the channel's key",
               erase_opts, sender),
    CV_OPT_STR("reason", 0, "TEXT", "why (kept in the erasure record and the audit)",
               erase_opts, reason),
    CV_OPT_FLAG("dry-run", 0, "say what would be erased, change nothing", erase_opts,
                dry_run),
    CV_OPT_FLAG("yes", 0, "really erase (it cannot be undone)", erase_opts, yes),
    CV_OPT_END,
};

static const cv_cli_spec erase_spec = {
    .name = "erase",
    .usage = "erase [-c FILE] [--set key=value]... --channel NAME | --sender ID\n"
             "                       [--dry-run | --yes] [--reason TEXT]",
    .about = "Erases a channel for good (the right to be forgotten): destroys the\n"
             "channel's data keys in log.dir, so its log segments cannot be decrypted\n"
             "any more (other channels' segments are untouched), and deletes its rows\n"
             "from PostgreSQL (messages, versions, search documents, duplicates,\n"
             "rejected records, report rollups) in one transaction. An erasure record\n"
             "(channel, key ids, time, OS user, reason) stays in log.dir/datakeys, and\n"
             "the audit records the command. verify, log cat, replay, export and\n"
             "restore then count the channel's segments as erased, not as damage. New\n"
             "messages to the channel get a new key. Stop the broker(s) writing\n"
             "log.dir first. --sender deletes a sender's rows; its log records stay\n"
             "(under the channel's key) but are recorded as erased, and replay,\n"
             "export, restore, drill, verify and log cat pass them over. Without\n"
             "--yes nothing is changed. Running it again finishes an interrupted\n"
             "erasure.\n",
    .opts = erase_opts_table,
    .config_keys = "log.dir, log.key_file, topics.prefix, postgres.admin_conninfo",
};

typedef struct seg_count {
    const char *topic;
    const cv_keyring *keys;
    const cv_datakeys_erasure *er;
    uint64_t segments, bytes, legacy, legacy_bytes;
} seg_count;

static int count_segment(void *opaque, const cv_applog_segment_info *si) {
    seg_count *c = opaque;
    if (si->key_id < CV_DATAKEY_ID_MIN) {
        c->legacy++;
        c->legacy_bytes += si->bytes;
        return 0;
    }
    bool ours = false;
    for (size_t i = 0; i < c->er->n && !ours; i++)
        ours = c->er->ids[i] == si->key_id;
    const char *t = ours ? NULL : cv_keyring_erased(c->keys, si->key_id, NULL);
    if (ours || (t && strcmp(t, c->topic) == 0)) {
        c->segments++;
        c->bytes += si->bytes;
    }
    return 0;
}

static int count_partition(void *opaque, const char *path, const char *topic,
                           int32_t partition) {
    seg_count *c = opaque;
    (void)partition;
    if (strcmp(topic, c->topic) != 0)
        return 0;
    char err[512];
    int r = cv_applog_segments(path, count_segment, c, err, sizeof(err));
    if (r < 0)
        cv_log(CV_LOG_WARN, "cannot list segments", "dir=\"%s\" error=\"%s\"", path, err);
    return 0;
}

static bool channel_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 200)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == '_' || s[i] == '-'))
            return false;
    return true;
}

/* The master and data keys of log.dir: CV_CLI_RUN, CV_EXIT_OK when there
 * is no log (nothing to do there), or the exit code after the error. */
static int load_log_keys(const cv_config *cfg, cv_keyring **keys) {
    char err[1024];
    if (!*cv_config_str(cfg, "log.dir"))
        return CV_EXIT_OK;
    int r = cv_cli_load_keys(cfg, NULL, keys, err, sizeof(err));
    if (r < 0) {
        cv_error("erase", "%s (log.key_file)", err);
        return r == -ENOMEM || r == -EIO ? CV_EXIT_FAILURE : CV_EXIT_USAGE;
    }
    return CV_CLI_RUN;
}

/* The log part of a channel erasure: *ret filled, segments counted. */
static int erase_log(const erase_opts *o, const cv_config *cfg, const char *topic,
                     cv_keyring **keys, cv_datakeys_erasure *er, seg_count *sc) {
    const char *log_dir = cv_config_str(cfg, "log.dir");
    char err[1024];
    int r = load_log_keys(cfg, keys);
    if (r != CV_CLI_RUN)
        return r;
    cv_datakeys *dk = cv_keyring_data_keys(*keys, log_dir);
    char user[128];
    r = cv_datakeys_erase(dk, topic, cv_access_os_user(user, sizeof(user)),
                          o->reason ? o->reason : "-", o->dry_run, er, err, sizeof(err));
    if (r < 0) {
        cv_error("erase", "%s", err);
        return CV_EXIT_FAILURE;
    }
    sc->topic = topic;
    sc->keys = *keys;
    sc->er = er;
    r = cv_applog_partitions(log_dir, count_partition, sc, err, sizeof(err));
    if (r < 0 && r != -ENOENT)
        cv_log(CV_LOG_WARN, "cannot list the log", "dir=\"%s\" error=\"%s\"", log_dir,
               err);
    return CV_EXIT_OK;
}

/* The log part of a sender erasure: a durable record in the store, so
 * readers pass the sender's records over. */
static int erase_sender_log(const erase_opts *o, const cv_config *cfg, cv_keyring **keys,
                            bool *ret_new) {
    const char *log_dir = cv_config_str(cfg, "log.dir");
    char err[1024];
    int r = load_log_keys(cfg, keys);
    if (r != CV_CLI_RUN)
        return r;
    char user[128];
    r = cv_datakeys_erase_sender(cv_keyring_data_keys(*keys, log_dir), o->channel,
                                 o->sender, cv_access_os_user(user, sizeof(user)),
                                 o->reason ? o->reason : "-", o->dry_run, ret_new, err,
                                 sizeof(err));
    if (r < 0) {
        cv_error("erase", "%s", err);
        return CV_EXIT_FAILURE;
    }
    return CV_EXIT_OK;
}

int cv_cmd_erase(int argc, char **argv) {
    erase_opts o = {0};
    cv_cli cli;
    int rc = cv_cli_parse(&erase_spec, argc, argv, &o, &cli);
    if (rc != CV_CLI_RUN)
        return rc;
    if (!o.channel && !o.sender) {
        cv_error("erase", "say what to erase: --channel NAME or --sender ID");
        return CV_EXIT_USAGE;
    }
    if (o.channel && !channel_ok(o.channel)) {
        cv_error("erase", "--channel %s: a channel name is [A-Za-z0-9._-]{1,200}",
                 o.channel);
        return CV_EXIT_USAGE;
    }
    if (o.sender && !*o.sender) {
        cv_error("erase", "--sender: an empty sender id");
        return CV_EXIT_USAGE;
    }
    if (o.dry_run && o.yes) {
        cv_error("erase", "--dry-run and --yes: choose one");
        return CV_EXIT_USAGE;
    }
    cv_config *cfg = cv_cli_load_config(&cli.config);
    if (!cfg)
        return CV_EXIT_USAGE;
    bool whole = o.channel && !o.sender;
    char topic[512] = "";
    if (o.channel)
        snprintf(topic, sizeof(topic), "%s%s", cv_config_str(cfg, "topics.prefix"),
                 o.channel);
    if (!o.dry_run && !o.yes) {
        if (whole)
            cv_error("erase",
                     "would erase channel %s for good (the data keys of topic %s in %s "
                     "and its PostgreSQL rows): run again with --yes, or --dry-run to "
                     "see the counts",
                     o.channel, topic, cv_config_str(cfg, "log.dir"));
        else
            cv_error("erase",
                     "would delete the PostgreSQL rows of sender %s%s%s for good: run "
                     "again with --yes, or --dry-run to see the counts",
                     o.sender, o.channel ? " in channel " : "",
                     o.channel ? o.channel : "");
        cv_config_free(cfg);
        return CV_EXIT_USAGE;
    }
    const char *what = o.dry_run ? "erase --dry-run" : "erase";
    cv_audit_begin(cfg, CV_PG_ADMIN, what, argc, argv);
    cv_keyring *keys = NULL;
    cv_datakeys_erasure er = {0};
    seg_count sc = {0};
    PGconn *conn = NULL;
    rc = CV_EXIT_OK;
    bool sender_new = false;
    if (whole && (rc = erase_log(&o, cfg, topic, &keys, &er, &sc)) != CV_EXIT_OK)
        goto out;
    if (!whole && (rc = erase_sender_log(&o, cfg, &keys, &sender_new)) != CV_EXIT_OK)
        goto out;
    /* Counted now: an erasure that fails at PostgreSQL has destroyed them. */
    cv_audit_count("data_keys", (int64_t)er.n);
    cv_audit_count("already_erased_keys", (int64_t)er.already);
    cv_audit_count("segments", (int64_t)sc.segments);
    cv_audit_count("bytes", (int64_t)sc.bytes);
    char err[1024];
    rc = CV_EXIT_FAILURE;
    conn = cv_pg_connect(cv_access_conninfo(cfg, CV_PG_ADMIN), err, sizeof(err));
    if (!conn) {
        cv_error("erase", "%s (%s)%s", err, cv_access_conninfo_key(cfg, CV_PG_ADMIN),
                 (whole && er.n) || sender_new
                     ? "; the log part is done already: run the same command again to "
                       "delete the rows"
                     : "");
        goto out;
    }
    cv_pgerase_counts pc;
    if (cv_pgerase(conn, o.channel, o.sender, o.dry_run, &pc, err, sizeof(err)) < 0) {
        cv_error("erase", "%s%s", err,
                 (whole && er.n) || sender_new
                     ? "; the log part is done already: run the same command again to "
                       "delete the rows"
                     : "");
        goto out;
    }
    for (size_t i = 0; i < CV_PGERASE_TABLES; i++)
        if (pc.rows[i])
            cv_log(CV_LOG_INFO, o.dry_run ? "rows that would be deleted" : "rows deleted",
                   "table=chatvault.%s rows=%" PRId64, cv_pgerase_tables[i], pc.rows[i]);
    if (whole && sc.legacy)
        cv_log(CV_LOG_WARN, "segments sealed with the master key stay readable",
               "topic=%s segments=%" PRIu64 " bytes=%" PRIu64
               " hint=\"they were written before data keys existed; erasing them needs "
               "the segment files removed by hand\"",
               topic, sc.legacy, sc.legacy_bytes);
    const char *verb = o.dry_run ? "would erase" : "erased";
    if (whole)
        printf("%s channel=%s topic=%s data_keys=%zu already_erased_keys=%zu "
               "segments_unreadable=%" PRIu64 " bytes_unreadable=%" PRIu64
               " segments_master_key=%" PRIu64 " postgres_rows=%" PRId64 "\n",
               verb, o.channel, topic, er.n, er.already, sc.segments, sc.bytes, sc.legacy,
               pc.total);
    else
        printf("%s sender=%s channel=%s postgres_rows=%" PRId64
               " log_records=hidden (kept under the channel's key; readers pass them "
               "over) new_sender_record=%s\n",
               verb, o.sender, o.channel ? o.channel : "*", pc.total,
               sender_new ? "yes" : "no");
    cv_audit_count("postgres_rows", pc.total);
    rc = CV_EXIT_OK;
out:
    fflush(stdout);
    if (conn)
        PQfinish(conn);
    free(er.ids);
    cv_keyring_free(keys);
    cv_config_free(cfg);
    return rc;
}
