/*
 * chatvault log — inspect the encrypted log: list its segments, print its
 * records as JSON lines, check every record's authentication and the hash
 * chain. All three read the same directories: log.dir, or every --log-dir
 * given (one per broker instance that ever owned a partition; the reader
 * merges them, see "Many instances" in
 * consumer/applog/FORMAT.md).
 */
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "access.h"
#include "applog/applog.h"
#include "chatvault.pb-c.h"
#include "cli.h"
#include "keyring.h"
#include "select.h"
#include "util.h"

typedef struct logopts {
    cv_cli_log_dirs dirs;
    const char *topic;
    int64_t partition; /* -1: all */
    const char *channel;
    int64_t from_offset; /* -1: from the start */
    int64_t since_ms;    /* INT64_MIN: no limit */
    const char *since_arg;
    bool text; /* cat: a UTF-8 body also as "text" */
    const char *key_file;
} logopts;

/* One topic-partition and the directories (of all --log-dir) holding it. */
typedef struct pentry {
    char *name; /* "<topic>-<partition>" */
    char *topic;
    int32_t partition;
    const char *paths[CV_CLI_MAX_LOG_DIRS];
    char *owned[CV_CLI_MAX_LOG_DIRS];
    size_t npaths;
} pentry;

typedef struct plist {
    pentry *v;
    size_t n, cap;
} plist;

static int add_partition(void *opaque, const char *path, const char *topic,
                         int32_t partition) {
    plist *pl = opaque;
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    pentry *e = NULL;
    for (size_t i = 0; i < pl->n; i++)
        if (strcmp(pl->v[i].name, name) == 0)
            e = &pl->v[i];
    if (!e) {
        if (pl->n == pl->cap) {
            size_t ncap = pl->cap ? pl->cap * 2 : 16;
            pentry *nv = realloc(pl->v, ncap * sizeof(*nv));
            if (!nv)
                return -ENOMEM;
            pl->v = nv;
            pl->cap = ncap;
        }
        e = &pl->v[pl->n];
        memset(e, 0, sizeof(*e));
        e->name = strdup(name);
        e->topic = strdup(topic);
        e->partition = partition;
        if (!e->name || !e->topic) {
            free(e->name);
            free(e->topic);
            return -ENOMEM;
        }
        pl->n++;
    }
    if (e->npaths < CV_CLI_MAX_LOG_DIRS) {
        char *p = strdup(path);
        if (!p)
            return -ENOMEM;
        e->owned[e->npaths] = p;
        e->paths[e->npaths++] = p;
    }
    return 0;
}

static int pentry_cmp(const void *a, const void *b) {
    const pentry *x = a, *y = b;
    int c = strcmp(x->topic, y->topic);
    if (c)
        return c;
    return (x->partition > y->partition) - (x->partition < y->partition);
}

static void plist_free(plist *pl) {
    for (size_t i = 0; i < pl->n; i++) {
        for (size_t k = 0; k < pl->v[i].npaths; k++)
            free(pl->v[i].owned[k]);
        free(pl->v[i].name);
        free(pl->v[i].topic);
    }
    free(pl->v);
}

/* Collects the partitions of every directory that pass the filters. */
static int collect(const logopts *o, const char *prefix, plist *pl) {
    char err[1024];
    for (size_t i = 0; i < o->dirs.n; i++) {
        int r = cv_applog_partitions(o->dirs.dir[i], add_partition, pl, err, sizeof(err));
        if (r < 0) {
            cv_error("log", "%s", err);
            return r == -ENOENT || r == -ENOTDIR ? CV_EXIT_USAGE : CV_EXIT_FAILURE;
        }
    }
    size_t w = 0;
    for (size_t i = 0; i < pl->n; i++) {
        pentry *e = &pl->v[i];
        bool keep = (!o->topic || strcmp(e->topic, o->topic) == 0) &&
                    (o->partition < 0 || e->partition == o->partition);
        if (keep && o->channel) {
            size_t pl_ = strlen(prefix);
            keep = strncmp(e->topic, prefix, pl_) == 0 &&
                   strcmp(e->topic + pl_, o->channel) == 0;
        }
        if (keep) {
            pl->v[w++] = *e;
        } else {
            for (size_t k = 0; k < e->npaths; k++)
                free(e->owned[k]);
            free(e->name);
            free(e->topic);
        }
    }
    pl->n = w;
    if (pl->n)
        qsort(pl->v, pl->n, sizeof(*pl->v), pentry_cmp);
    return CV_EXIT_OK;
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* ---- list ------------------------------------------------------------- */

typedef struct list_ctx {
    const char *name;
    bool damaged;
} list_ctx;

static int list_one(void *opaque, const cv_applog_segment_info *si) {
    list_ctx *c = opaque;
    char wid[2 * CV_APPLOG_WRITER_ID_BYTES + 1], state[48], last[24];
    sodium_bin2hex(wid, sizeof(wid), si->writer_id, sizeof(si->writer_id));
    if (si->damaged && si->torn)
        snprintf(state, sizeof(state), "torn@%" PRIu64, si->damaged_at);
    else if (si->damaged)
        snprintf(state, sizeof(state), "DAMAGED@%" PRIu64, si->damaged_at);
    else
        snprintf(state, sizeof(state), "%s",
                 si->cold     ? "cold"
                 : si->sealed ? "sealed"
                              : "open");
    if (si->damaged && !si->torn)
        c->damaged = true;
    if (si->last_offset >= 0)
        snprintf(last, sizeof(last), "%" PRId64, si->last_offset);
    else
        snprintf(last, sizeof(last), "-");
    char name[128];
    if (si->repair) {
        /* "repair-<session>/<segment>" */
        const char *b = base_name(si->file);
        const char *slash = b - 1, *start = slash;
        while (start > si->file && start[-1] != '/')
            start--;
        snprintf(name, sizeof(name), "%.*s/%s", (int)(slash - start), start, b);
    } else {
        /* a cold segment's file is its stub: name the segment */
        size_t bl = strlen(base_name(si->file));
        if (si->cold && bl > 5)
            bl -= 5; /* ".cold" */
        snprintf(name, sizeof(name), "%.*s", (int)bl, base_name(si->file));
    }
    printf("%-24s %-26s %12" PRId64 " %12s %9" PRIu64 " %12" PRIu64 " %5" PRIu32
           " %-14s %s/%s\n",
           c->name, name, si->first_offset, last, si->records, si->bytes, si->key_id,
           state, si->writer_name[0] ? si->writer_name : "?", wid);
    return 0;
}

static int run_list(const logopts *o, const plist *pl) {
    char err[1024];
    printf("%-24s %-26s %12s %12s %9s %12s %5s %-14s %s\n", "PARTITION", "SEGMENT",
           "FIRST", "LAST", "RECORDS", "BYTES", "KEY", "STATE", "WRITER");
    bool damaged = false;
    for (size_t i = 0; i < pl->n; i++)
        for (size_t k = 0; k < pl->v[i].npaths; k++) {
            list_ctx c = {.name = pl->v[i].name};
            int r = cv_applog_segments(pl->v[i].paths[k], list_one, &c, err, sizeof(err));
            if (r < 0) {
                fflush(stdout);
                cv_error("log list", "%s", err);
                return r == -CV_ECORRUPT ? CV_EXIT_DIFFERENCES : CV_EXIT_FAILURE;
            }
            damaged |= c.damaged;
        }
    return damaged ? CV_EXIT_DIFFERENCES : CV_EXIT_OK;
}

/* ---- cat and check ---------------------------------------------------- */

static int exit_for(int r) {
    if (r == -ENOKEY || r == -EKEYREJECTED)
        return CV_EXIT_USAGE;
    if (r == -CV_ECORRUPT || r == -EBADMSG)
        return CV_EXIT_DIFFERENCES;
    return CV_EXIT_FAILURE;
}

static void report_torn(const char *cmd, const cv_applog_reader *rd) {
    size_t n = cv_applog_reader_torn(rd, 0, NULL, NULL);
    for (size_t i = 0; i < n; i++) {
        const char *file;
        uint64_t pos;
        cv_applog_reader_torn(rd, i, &file, &pos);
        cv_log(CV_LOG_WARN,
               "torn tail at the end of an unsealed last segment: an unfinished "
               "write of a crash (or of a writer appending right now), never acked "
               "as far as the log can tell; the broker cuts it when it next opens "
               "the partition, keeping the bytes beside the segment, unless Kafka's "
               "committed offset shows those records were acked",
               "cmd=\"%s\" file=\"%s\" byte=%" PRIu64, cmd, file, pos);
    }
}

static int print_record(cv_buf *b, const cv_applog_record *rec, const logopts *o,
                        const cv_keyring *kr, uint64_t *erased) {
    Chatvault__V1__ChatMessage *m =
        chatvault__v1__chat_message__unpack(NULL, rec->value_len, rec->value);
    if (m && cv_keyring_sender_erased(kr, m->channel, m->sender_id)) {
        (*erased)++; /* chatvault erase --sender */
        chatvault__v1__chat_message__free_unpacked(m, NULL);
        return 0;
    }
    if (m && o->channel && strcmp(m->channel, o->channel) != 0) {
        chatvault__v1__chat_message__free_unpacked(m, NULL);
        return 0;
    }
    if (o->since_ms != INT64_MIN) {
        int64_t t = rec->timestamp_ms >= 0 ? rec->timestamp_ms
                    : m                    ? m->sent_at_us / 1000
                                           : INT64_MIN;
        if (t < o->since_ms) {
            if (m)
                chatvault__v1__chat_message__free_unpacked(m, NULL);
            return 0;
        }
    }
    if (!m && o->channel)
        return 0;
    char dig[2 * CV_APPLOG_DIGEST_BYTES + 1];
    sodium_bin2hex(dig, sizeof(dig), rec->digest, sizeof(rec->digest));
    b->len = 0;
    int r = cv_buf_printf(b, "{\"topic\":");
    if (r == 0)
        r = cv_buf_json_string(b, rec->topic, strlen(rec->topic));
    if (r == 0)
        r = cv_buf_printf(b,
                          ",\"partition\":%" PRId32 ",\"offset\":%" PRId64
                          ",\"timestamp_ms\":%" PRId64 ",\"generation\":%" PRId64,
                          rec->partition, rec->offset, rec->timestamp_ms,
                          rec->generation);
    if (m) {
        if (r == 0)
            r = cv_buf_printf(b, ",\"channel\":");
        if (r == 0)
            r = cv_buf_json_string(b, m->channel, strlen(m->channel));
        if (r == 0)
            r = cv_buf_printf(b, ",\"message_id\":");
        if (r == 0)
            r = cv_buf_json_string(b, m->message_id, strlen(m->message_id));
        if (r == 0)
            r = cv_buf_printf(b, ",\"sender_id\":");
        if (r == 0)
            r = cv_buf_json_string(b, m->sender_id, strlen(m->sender_id));
        if (r == 0)
            r = cv_buf_printf(
                b, ",\"sent_at_us\":%" PRId64 ",\"content_type\":", m->sent_at_us);
        if (r == 0)
            r = cv_buf_json_string(b, m->content_type, strlen(m->content_type));
        if (r == 0)
            r = cv_buf_printf(b, ",\"body\":\"");
        if (r == 0)
            r = cv_buf_base64(b, m->body.data, m->body.len);
        if (r == 0)
            r = cv_buf_printf(b, "\"");
        /* Versions: only when set, so a log of originals prints as before. */
        if (r == 0 && m->revision)
            r = cv_buf_printf(b, ",\"revision\":%" PRIu32, m->revision);
        if (r == 0 && m->deleted)
            r = cv_buf_printf(b, ",\"deleted\":true");
        if (r == 0 && o->text && cv_utf8_valid((const char *)m->body.data, m->body.len)) {
            r = cv_buf_printf(b, ",\"text\":");
            if (r == 0)
                r = cv_buf_json_string(b, (const char *)m->body.data, m->body.len);
        }
    } else {
        if (r == 0)
            r = cv_buf_printf(b, ",\"error\":\"value is not a ChatMessage\","
                                 "\"value\":\"");
        if (r == 0)
            r = cv_buf_base64(b, rec->value, rec->value_len);
        if (r == 0)
            r = cv_buf_printf(b, "\"");
    }
    if (r == 0)
        r = cv_buf_printf(b, ",\"digest\":\"%s\",\"key_id\":%" PRIu32 "}\n", dig,
                          rec->key_id);
    if (m)
        chatvault__v1__chat_message__free_unpacked(m, NULL);
    if (r < 0)
        return r;
    if (fwrite(b->data, 1, b->len, stdout) != b->len)
        return -EIO;
    return 0;
}

/* DATA KEYS: segments of an erased channel are not damage; say so. */
static void report_erased(const char *cmd, const char *name, cv_applog_reader *rd) {
    cv_applog_erased e;
    cv_applog_reader_erased(rd, &e);
    if (e.segments)
        cv_log(CV_LOG_INFO,
               "erased: the channel's key was destroyed, its records "
               "are unreadable by design",
               "cmd=\"%s\" partition=%s erased_segments=%" PRIu64
               " erased_records=%" PRIu64 " erased_bytes=%" PRIu64,
               cmd, name, e.segments, e.records, e.bytes);
}

static int run_cat(const logopts *o, const plist *pl, const cv_keyring *kr) {
    char err[1024];
    cv_buf b;
    cv_buf_init(&b, 256u << 20);
    int code = CV_EXIT_OK;
    for (size_t i = 0; i < pl->n && code == CV_EXIT_OK; i++) {
        cv_applog_reader *rd = NULL;
        int r = cv_applog_reader_open(pl->v[i].paths, pl->v[i].npaths, kr, &rd, err,
                                      sizeof(err));
        if (r == 0 && o->from_offset >= 0)
            cv_applog_reader_skip_to(rd, o->from_offset);
        cv_applog_record rec;
        uint64_t erased = 0;
        while (r == 0 && (r = cv_applog_reader_next(rd, &rec, err, sizeof(err))) == 1)
            if ((r = print_record(&b, &rec, o, kr, &erased)) < 0) {
                snprintf(err, sizeof(err), "writing to stdout: %s", strerror(-r));
                break;
            }
        if (rd)
            report_torn("log cat", rd);
        if (rd)
            report_erased("log cat", pl->v[i].name, rd);
        if (erased)
            cv_log(CV_LOG_INFO, "erased: records of erased senders not printed",
                   "partition=%s records=%" PRIu64, pl->v[i].name, erased);
        cv_applog_reader_free(rd);
        if (r < 0) {
            fflush(stdout);
            cv_error("log cat", "%s", err);
            code = exit_for(r);
        }
    }
    cv_buf_release(&b);
    if (fflush(stdout) != 0 && code == CV_EXIT_OK) {
        cv_error("log cat", "writing to stdout: %s", strerror(errno));
        code = CV_EXIT_FAILURE;
    }
    return code;
}

static int run_check(const plist *pl, const cv_keyring *kr) {
    char err[1024];
    int code = CV_EXIT_OK;
    for (size_t i = 0; i < pl->n; i++) {
        cv_applog_reader *rd = NULL;
        int r = cv_applog_reader_open(pl->v[i].paths, pl->v[i].npaths, kr, &rd, err,
                                      sizeof(err));
        cv_applog_record rec;
        uint64_t n = 0;
        int64_t first = -1, last = -1;
        while (r == 0 && (r = cv_applog_reader_next(rd, &rec, err, sizeof(err))) == 1) {
            if (!n++)
                first = rec.offset;
            last = rec.offset;
            r = 0;
        }
        if (rd)
            report_torn("log check", rd);
        size_t torn = rd ? cv_applog_reader_torn(rd, 0, NULL, NULL) : 0;
        cv_applog_erased er = {0};
        if (rd)
            cv_applog_reader_erased(rd, &er);
        cv_applog_reader_free(rd);
        if (r < 0) {
            fflush(stdout);
            cv_error("log check", "%s", err);
            int c = exit_for(r);
            if (code == CV_EXIT_OK || c == CV_EXIT_DIFFERENCES)
                code = c;
            printf("FAIL %s records_before_problem=%" PRIu64 "\n", pl->v[i].name, n);
            continue;
        }
        printf(
            "ok   %s records=%" PRIu64 " first=%" PRId64 " last=%" PRId64 " dirs=%zu%s",
            pl->v[i].name, n, first, last, pl->v[i].npaths, torn ? " torn_tail=yes" : "");
        if (er.segments)
            printf(" erased_segments=%" PRIu64 " erased_records=%" PRIu64, er.segments,
                   er.records);
        printf("\n");
    }
    fflush(stdout);
    return code;
}

/* --since: RFC 3339 time (Z or an offset), a date, a duration ago (90s, 15m, 2h, 7d), or
 * Unix milliseconds, read as replay and export read theirs. */
static int since_opt(const cv_cli_opt *opt, void *dest, const char *cmd,
                     const char *value) {
    logopts *o = dest;
    int64_t us;
    if (cv_parse_time_us(value, &us) < 0) {
        cv_error(cmd,
                 "--since: \"%s\" is not a time (2026-01-31T12:00:00Z, 2026-01-31, 15m, "
                 "2h, 7d or Unix ms)",
                 value);
        return -1;
    }
    o->since_ms = us / 1000;
    return 0;
}

static const cv_cli_opt opts[] = {
    CV_OPT_LIST("log-dir", 0, "DIR",
                "read this log directory instead of log.dir; give it once per broker "
                "instance to merge their histories",
                logopts, dirs.dir, dirs.n),
    CV_OPT_STR("key-file", 0, "PATH", "key file instead of log.key_file", logopts,
               key_file),
    CV_OPT_STR("topic", 0, "T", "only this topic", logopts, topic),
    CV_OPT_INT("partition", 0, "N", "only this partition number", logopts, partition, 0,
               INT32_MAX),
    CV_OPT_STR("channel", 0, "C", "(cat) only messages of this channel", logopts,
               channel),
    CV_OPT_INT("from-offset", 0, "N", "(cat) start at this Kafka offset", logopts,
               from_offset, 0, INT64_MAX),
    CV_OPT_CALL("since", 0, "TIME",
                "(cat) only records from TIME: 2026-01-31T12:00:00Z, 2026-01-31, a "
                "duration ago (90s, 15m, 2h, 7d) or Unix ms",
                since_opt, 0),
    CV_OPT_FLAG("text", 0, "(cat) also print a body that is valid UTF-8 as \"text\"",
                logopts, text),
    CV_OPT_END,
};

static const cv_cli_spec spec = {
    .name = "log",
    .usage = "log list  [options]\n"
             "       chatvault log cat   [options] [--channel C] [--from-offset N] "
             "[--since TIME] [--text]\n"
             "       chatvault log check [options]",
    .about = "list   segments per partition: first/last offset, records, bytes, key id,\n"
             "       sealed or open, and the instance that wrote it\n"
             "cat    decrypt and print one JSON object per record\n"
             "check  verify every record's authentication and the hash chain; exit 3 "
             "with\n       file and byte offset of the first problem of each "
             "partition\n",
    .opts = opts,
    .config_keys = "log.dir, log.key_file",
    .epilog = "Exit codes: 0 ok, 1 runtime failure, 2 usage, config or key error, 3 "
              "damage found.\n",
};

int cv_cmd_log(int argc, char **argv) {
    static const char *const subs[] = {"list", "cat", "check", NULL};
    char name[16];
    cv_cli_spec sub_spec;
    int started =
        cv_cli_subcommand(&spec, argc, argv, subs, name, sizeof(name), &sub_spec);
    if (started != CV_CLI_RUN)
        return started;
    const char *sub = argv[1];
    logopts o = {.partition = -1, .from_offset = -1, .since_ms = INT64_MIN};
    cv_cli cli;
    int parsed = cv_cli_parse(&sub_spec, argc - 1, argv + 1, &o, &cli);
    if (parsed != CV_CLI_RUN)
        return parsed;
    if (strcmp(sub, "cat") != 0 &&
        (o.channel || o.from_offset >= 0 || o.since_ms != INT64_MIN || o.text)) {
        cv_error("log", "--channel, --from-offset, --since and --text are options of "
                        "log cat");
        return CV_EXIT_USAGE;
    }
    cv_config *cfg = cv_cli_load_config(&cli.config);
    if (!cfg)
        return CV_EXIT_USAGE;
    const char *key_file = o.key_file ? o.key_file : cv_config_str(cfg, "log.key_file");

    int code;
    cv_keyring *kr = NULL;
    plist pl = {0};
    cv_cli_default_log_dir(&o.dirs, cfg);
    if (o.dirs.n == 0) {
        cv_error("log", "no log to read: set log.dir (or give --log-dir)");
        code = CV_EXIT_USAGE;
        goto out;
    }
    if (strcmp(sub, "list") != 0) {
        char err[1024];
        int r = cv_keyring_load(key_file, &kr, err, sizeof(err));
        if (r == 0)
            r = cv_cli_attach_data_keys(kr, cfg, &o.dirs, err, sizeof(err));
        if (r < 0) {
            cv_error("log", "%s", err);
            code = r == -ENOMEM || r == -EIO ? CV_EXIT_FAILURE : CV_EXIT_USAGE;
            goto out;
        }
    }
    if (strcmp(sub, "cat") == 0) /* the one that reads messages out */
        cv_audit_begin(cfg, CV_PG_READER, "log cat", argc, argv);
    code = collect(&o, cv_config_str(cfg, "topics.prefix"), &pl);
    if (code != CV_EXIT_OK)
        goto out;
    if (strcmp(sub, "list") == 0)
        code = run_list(&o, &pl);
    else if (strcmp(sub, "cat") == 0)
        code = run_cat(&o, &pl, kr);
    else
        code = run_check(&pl, kr);
out:
    plist_free(&pl);
    cv_keyring_free(kr);
    cv_config_free(cfg);
    return code;
}
