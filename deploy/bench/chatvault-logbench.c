/*
 * chatvault-logbench — the encrypted log alone, without Kafka or
 * PostgreSQL: appends N records of a fixed size spread over P partitions,
 * in appends of B records (one group commit each, as the broker makes one
 * per batch), and prints the rate and the CPU it took.
 *
 *   chatvault-logbench DIR [--records N] [--partitions P] [--batch B]
 *                      [--value-bytes V] [--period-ms MS]
 *                      [--sync syncfs|fdatasync]
 *
 * DIR must not exist; the log and its key file (DIR.key) are written there
 * and left for the caller to remove. --period-ms starts one append every MS
 * milliseconds (as a broker would at a given message rate) instead of back
 * to back, so the log's load on the machine can be set while something
 * else is measured beside it (see deploy/bench/log_interference.sh).
 * --sync is the log.sync_method to use (default syncfs, as the broker's).
 * The last line is machine-readable: `RESULT key=value ...`.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "applog/applog.h"
#include "keyring.h"

#define TOPICS 16

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double tv_s(struct timeval tv) {
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static long arg_long(const char *opt, const char *s, long min) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < min) {
        fprintf(stderr, "chatvault-logbench: %s wants an integer >= %ld, not '%s'\n", opt,
                min, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    long records = 1000000, partitions = 256, batch = 5000, value_bytes = 330,
         period_ms = 0;
    cv_applog_sync sync = CV_APPLOG_SYNC_SYNCFS;
    static const struct option opts[] = {
        {"records", required_argument, NULL, 'n'},
        {"partitions", required_argument, NULL, 'p'},
        {"batch", required_argument, NULL, 'b'},
        {"value-bytes", required_argument, NULL, 'v'},
        {"period-ms", required_argument, NULL, 't'},
        {"sync", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            records = arg_long("--records", optarg, 1);
            break;
        case 'p':
            partitions = arg_long("--partitions", optarg, 1);
            break;
        case 'b':
            batch = arg_long("--batch", optarg, 1);
            break;
        case 'v':
            value_bytes = arg_long("--value-bytes", optarg, 0);
            break;
        case 't':
            period_ms = arg_long("--period-ms", optarg, 0);
            break;
        case 's':
            if (strcmp(optarg, "syncfs") != 0 && strcmp(optarg, "fdatasync") != 0) {
                fprintf(stderr,
                        "chatvault-logbench: --sync is syncfs or fdatasync, not %s\n",
                        optarg);
                return 2;
            }
            sync = optarg[0] == 's' ? CV_APPLOG_SYNC_SYNCFS : CV_APPLOG_SYNC_FDATASYNC;
            break;
        default:
            fprintf(stderr,
                    "usage: chatvault-logbench DIR [--records N] [--partitions P] "
                    "[--batch B] [--value-bytes V] [--period-ms MS] "
                    "[--sync syncfs|fdatasync]\n");
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "chatvault-logbench: give exactly one DIR (see the top of %s)\n",
                __FILE__);
        return 2;
    }
    const char *dir = argv[optind];
    if (access(dir, F_OK) == 0) {
        fprintf(stderr, "chatvault-logbench: %s exists; give a new directory\n", dir);
        return 2;
    }

    char err[512], key_path[4096];
    snprintf(key_path, sizeof(key_path), "%s.key", dir);
    uint32_t key_id;
    cv_keyring *keys = NULL;
    cv_applog *log = NULL;
    if (cv_keyring_generate(key_path, &key_id, err, sizeof(err)) < 0 ||
        cv_keyring_load(key_path, &keys, err, sizeof(err)) < 0 ||
        cv_applog_open(dir, keys, 64u << 20, &log, err, sizeof(err)) < 0 ||
        cv_applog_set_sync(log, sync, err, sizeof(err)) < 0) {
        fprintf(stderr, "chatvault-logbench: %s\n", err);
        cv_keyring_free(keys);
        return 1;
    }

    cv_applog_entry *entries = calloc((size_t)batch, sizeof(*entries));
    int64_t *next_offset = calloc((size_t)partitions, sizeof(*next_offset));
    unsigned char *value = malloc((size_t)value_bytes + 1);
    if (!entries || !next_offset || !value) {
        fprintf(stderr, "chatvault-logbench: out of memory\n");
        return 1;
    }
    memset(value, 'v', (size_t)value_bytes);
    char topics[TOPICS][32];
    for (int t = 0; t < TOPICS; t++)
        snprintf(topics[t], sizeof(topics[t]), "chat.logbench-%02d", t);

    /* Records go to the partitions in turn, as a round-robin producer
     * spreads them; each partition's offsets ascend. */
    long done = 0, appends = 0, p = 0;
    double t0 = now(), due = t0, busy = 0;
    while (done < records) {
        long n = 0;
        for (; n < batch && done + n < records; n++, p = (p + 1) % partitions) {
            cv_applog_entry *e = &entries[n];
            e->topic = topics[p % TOPICS];
            e->partition = (int32_t)(p / TOPICS);
            e->offset = next_offset[p]++;
            e->timestamp_ms = 0;
            e->value = value;
            e->value_len = (size_t)value_bytes;
        }
        double a0 = now();
        if (cv_applog_append(log, entries, (size_t)n, err, sizeof(err)) < 0) {
            fprintf(stderr, "chatvault-logbench: append %ld: %s\n", appends + 1, err);
            return 1;
        }
        busy += now() - a0;
        done += n;
        appends++;
        if (period_ms > 0) {
            due += (double)period_ms / 1000.0;
            double wait = due - now();
            if (wait > 0)
                usleep((useconds_t)(wait * 1e6));
        }
    }
    double wall = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf(
        "RESULT records=%ld partitions=%ld batch=%ld value_bytes=%ld sync=%s appends=%ld "
        "wall_s=%.3f records_per_s=%.0f append_ms=%.2f user_s=%.2f sys_s=%.2f\n",
        records, partitions, batch, value_bytes,
        sync == CV_APPLOG_SYNC_SYNCFS ? "syncfs" : "fdatasync", appends, wall,
        (double)records / wall, 1000.0 * busy / (double)appends, tv_s(ru.ru_utime),
        tv_s(ru.ru_stime));
    cv_applog_free(log);
    cv_keyring_free(keys);
    free(entries);
    free(next_offset);
    free(value);
    return 0;
}
