/*
 * chatvault cold — the log's cold tier and off-site copy (README "Cold
 * tier and off-site copy"): ship sealed segments to cold.target and, past
 * cold.hot_window, remove their local copies; list where each segment is;
 * fetch cold-only segments into the cache ahead of a read. Reading them is
 * not here: every command's reader fetches what it needs (cli.c installs
 * the hook).
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "applog/applog.h"
#include "cli.h"
#include "cold/cold.h"
#include "util.h"

typedef struct coldopts {
    const char *log_dir;
    const char *topic;
    int64_t partition; /* -1: all */
    bool dry_run;
} coldopts;

typedef struct run {
    const char *sub;  /* "list", "fetch" */
    const char *name; /* "cold list", ...: for errors */
    const coldopts *o;
    cv_cold *cold;
    uint64_t fetched, errors;
    int code;
} run;

static void on_event(void *opaque, const cv_cold_event *ev) {
    (void)opaque;
    switch (ev->kind) {
    case CV_COLD_SHIPPED:
        fprintf(stderr,
                "cold: shipped %s (%" PRIu64 " bytes, %" PRIu64
                " records up to offset %" PRId64 ") as %s, verified\n",
                ev->path, ev->stub->bytes, ev->stub->records, ev->stub->last_offset,
                ev->key);
        break;
    case CV_COLD_REMOVED:
        fprintf(stderr, "cold: removed the local copy of %s (in the cold tier as %s)\n",
                ev->path, ev->key);
        break;
    case CV_COLD_WOULD_SHIP:
        fprintf(stderr, "cold: would ship %s as %s\n", ev->path, ev->key);
        break;
    case CV_COLD_WOULD_REMOVE:
        fprintf(stderr, "cold: would remove the local copy of %s (shipped as %s)\n",
                ev->path, ev->key);
        break;
    }
}

/* list and fetch: one segment. */
static int on_seg(void *opaque, const cv_applog_cold_seg *cs) {
    run *rn = opaque;
    char path[PATH_MAX], stub_path[PATH_MAX + 8];
    snprintf(path, sizeof(path), "%s/%s", cs->dir, cs->name);
    snprintf(stub_path, sizeof(stub_path), "%s.cold", path);
    char err[1024];
    if (strcmp(rn->sub, "list") == 0) {
        const char *state = cs->last                ? "active"
                            : cs->local && cs->stub ? "shipped"
                            : cs->local             ? "local"
                                                    : "cold";
        struct stat st;
        uint64_t bytes = 0;
        if (cs->local && stat(path, &st) == 0) {
            bytes = (uint64_t)st.st_size;
        } else if (!cs->local) {
            cv_applog_cold_stub stub;
            if (cv_applog_cold_stub_read(stub_path, &stub, err, sizeof(err)) == 0)
                bytes = stub.bytes;
        }
        printf("%-8s %10" PRIu64 "  %s\n", state, bytes, cs->key);
        return 0;
    }
    if (cs->local)
        return 0;
    cv_applog_cold_stub stub;
    char got[PATH_MAX];
    int r = cv_applog_cold_stub_read(stub_path, &stub, err, sizeof(err));
    if (r == 0)
        r = cv_cold_fetch(rn->cold, stub_path, &stub, got, sizeof(got), err, sizeof(err));
    if (r < 0) {
        cv_error(rn->name, "%s", err);
        rn->errors++;
        if (r != -CV_ECORRUPT)
            return r; /* the target: the rest would fail alike */
        rn->code = CV_EXIT_DIFFERENCES;
        return 0;
    }
    fprintf(stderr, "cold: fetched %s into %s\n", stub.key, got);
    rn->fetched++;
    return 0;
}

static int on_partition(void *opaque, const char *path, const char *topic,
                        int32_t partition) {
    run *rn = opaque;
    if ((rn->o->topic && strcmp(rn->o->topic, topic) != 0) ||
        (rn->o->partition >= 0 && rn->o->partition != partition))
        return 0;
    char err[1024] = "";
    int r = cv_applog_cold_walk(path, on_seg, rn, err, sizeof(err));
    if (r < 0 && *err)
        cv_error(rn->name, "%s", err);
    return r;
}

static const cv_cli_opt opts[] = {
    CV_OPT_STR("log-dir", 0, "DIR", "this log directory instead of log.dir", coldopts,
               log_dir),
    CV_OPT_STR("topic", 0, "T", "only this topic", coldopts, topic),
    CV_OPT_INT("partition", 0, "N", "only this partition number", coldopts, partition, 0,
               INT32_MAX),
    CV_OPT_FLAG("dry-run", 'n',
                "(ship) say what would be shipped and removed, do nothing", coldopts,
                dry_run),
    CV_OPT_END,
};

static const cv_cli_spec spec = {
    .name = "cold",
    .usage = "cold ship  [options] [--dry-run]\n"
             "       chatvault cold list  [options]\n"
             "       chatvault cold fetch [options]",
    .about =
        "ship   upload every sealed segment not shipped yet to cold.target, check\n"
        "       the object's size and read it back to check its chain hash, then\n"
        "       record it beside the segment (<segment>.cold); past\n"
        "       cold.hot_window remove the local copy of a shipped segment\n"
        "list   each segment: active (being written, never shipped), local (not\n"
        "       shipped yet), shipped (here and in the cold tier), cold (only there)\n"
        "fetch  copy every cold-only segment into the cache and verify it (every\n"
        "       command that reads the log does this by itself when it needs one)\n",
    .opts = opts,
    .config_keys = "log.dir, cold.target, cold.endpoint, cold.region, "
                   "cold.credentials_file, cold.ca_file, cold.hot_window, cold.cache_dir",
    .epilog = "Exit codes: 0 ok, 1 runtime failure (target unreachable, refused, short\n"
              "upload), 2 usage or config error, 3 a cold copy is damaged.\n",
};

int cv_cmd_cold(int argc, char **argv) {
    static const char *const subs[] = {"ship", "list", "fetch", NULL};
    char name[16];
    cv_cli_spec sub_spec;
    int started =
        cv_cli_subcommand(&spec, argc, argv, subs, name, sizeof(name), &sub_spec);
    if (started != CV_CLI_RUN)
        return started;
    const char *sub = argv[1];
    coldopts o = {.partition = -1};
    cv_cli cli;
    int parsed = cv_cli_parse(&sub_spec, argc - 1, argv + 1, &o, &cli);
    if (parsed != CV_CLI_RUN)
        return parsed;
    if (o.dry_run && strcmp(sub, "ship") != 0) {
        cv_error(name, "--dry-run is an option of cold ship");
        return CV_EXIT_USAGE;
    }
    cv_config *cfg = cv_cli_load_config(&cli.config);
    if (!cfg)
        return CV_EXIT_USAGE;
    run rn = {.sub = sub, .name = name, .o = &o, .code = CV_EXIT_OK};
    char err[1024];
    const char *dir = o.log_dir ? o.log_dir : cv_config_str(cfg, "log.dir");
    int code = CV_EXIT_OK;
    if (strcmp(sub, "list") != 0 && !*cv_config_str(cfg, "cold.target")) {
        cv_error(name,
                 "no cold tier: set cold.target (s3://BUCKET/PREFIX or a directory)");
        code = CV_EXIT_USAGE;
        goto out;
    }
    if (*cv_config_str(cfg, "cold.target") &&
        cv_cli_cold_open(cfg, &rn.cold, err, sizeof(err)) < 0) {
        cv_error(name, "%s", err);
        code = CV_EXIT_USAGE;
        goto out;
    }
    struct stat dst;
    int se = stat(dir, &dst) < 0 ? errno : 0;
    if (se || !S_ISDIR(dst.st_mode)) {
        cv_error(name, "log directory %s: %s", dir,
                 se ? strerror(se) : "not a directory");
        code = CV_EXIT_USAGE;
        goto out;
    }
    /* --log-dir may name another directory than log.dir, which
     * cv_cli_cold_open checked: a target or cache overlapping it is a
     * config error too. */
    if (rn.cold && cv_cold_check_places(rn.cold, dir, err, sizeof(err)) < 0) {
        cv_error(name, "%s", err);
        code = CV_EXIT_USAGE;
        goto out;
    }
    if (strcmp(sub, "ship") == 0) {
        cv_cold_ship_opts so = {.topic = o.topic,
                                .partition = o.partition,
                                .dry_run = o.dry_run,
                                .on_event = on_event};
        cv_cold_parse_window(cv_config_str(cfg, "cold.hot_window"), &so.hot_window_s);
        cv_cold_parse_window(cv_config_str(cfg, "cold.cache_keep"), &so.cache_keep_s);
        cv_cold_ship_stats st;
        int r = cv_cold_ship_log(rn.cold, dir, &so, &st, err, sizeof(err));
        if (r < 0)
            cv_error(name, "%s", err);
        if (o.dry_run)
            fprintf(stderr,
                    "cold: (dry run) %" PRIu64 " segments would be shipped; each local "
                    "copy goes once shipped, verified and older than cold.hot_window",
                    st.shipped);
        else
            fprintf(stderr,
                    "cold: %" PRIu64 " segments shipped (%" PRIu64 " bytes), %" PRIu64
                    " local copies removed, %" PRIu64
                    " shipped ones kept locally, %" PRIu64 " cached copies pruned",
                    st.shipped, st.shipped_bytes, st.removed, st.kept, st.cache_pruned);
        if (st.failed)
            fprintf(stderr,
                    "; %" PRIu64 " partitions stopped at a failure (the first above)",
                    st.failed);
        else if (r < 0)
            fprintf(stderr, "; stopped at the error above");
        fputc('\n', stderr);
        code = r < 0 ? CV_EXIT_FAILURE : CV_EXIT_OK;
        goto out;
    }
    int r = cv_applog_partitions(dir, on_partition, &rn, err, sizeof(err));
    code = r < 0 ? CV_EXIT_FAILURE : rn.code;
    if (strcmp(sub, "fetch") == 0)
        fprintf(stderr,
                "cold: %" PRIu64 " segments fetched and verified, %" PRIu64 " failed\n",
                rn.fetched, rn.errors);
out:
    cv_cold_free(rn.cold);
    cv_config_free(cfg);
    return code;
}
