/*
 * chatvault-compressbench — what log.compression costs and saves: writes
 * the same generated chat messages through the log writer with compression
 * off and at several zstd levels, in one run, interleaved over rounds so
 * that a noisy machine disturbs every setting alike, and prints bytes on
 * disk, the ratio against "off" and the rate of each.
 *
 *   chatvault-compressbench DIR [--records N] [--partitions P] [--batch B]
 *                           [--rounds R] [--levels L,L,...] [--seed S]
 *
 * DIR must not exist; each run writes a log under it and removes it after
 * it is measured (the key file DIR.key is left). The messages are
 * serialized ChatMessages, as the broker stores them: a random message id
 * (a UUID's 36 characters), a channel, a sender, a client attribute, and a
 * body of generated chat text: sentences of varied length from a
 * vocabulary, names and @mentions, emoji, URLs, numbers and times, now and
 * then a long message or a pasted log line. Nothing is copied from a
 * corpus. Records go round-robin over P partitions (16 topics), one group
 * commit per B records, as chatvault-logbench does.
 *
 * Per setting it prints the median over the rounds of records/s and the
 * CPU seconds (user + system, all threads) of the appends, the records/s
 * of reading the log back (every partition with the one reader, as log cat
 * and verify do, decrypting and decompressing) and the bytes of the
 * segment files. `per_batch_ratio` is not what the log does: it is
 * what zstd at that level makes of each partition's values of one append
 * concatenated, i.e. what compressing per batch instead of per record
 * could reach (computed outside the timing). The last lines are
 * machine-readable: `RESULT key=value ...`, one per setting.
 */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "applog/applog.h"
#include "chatvault.pb-c.h"
#include "keyring.h"

#define TOPICS 16
#define LEVELS_MAX 8
#define ROUNDS_MAX 15

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static long arg_long(const char *opt, const char *s, long min) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < min) {
        fprintf(stderr, "chatvault-compressbench: %s wants an integer >= %ld, not '%s'\n",
                opt, min, s);
        exit(2);
    }
    return v;
}

/* ---- generated chat text ----------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

static size_t pick(size_t n) {
    return (size_t)(next() % n);
}

#define PICK(a) (a)[pick(sizeof(a) / sizeof((a)[0]))]

static const char *names[] = {
    "alice", "bob",   "carol",  "dmitri", "eun-ji", "farah",  "gustavo", "hiroshi",
    "ines",  "jamal", "katrin", "lars",   "mei",    "nadia",  "olu",     "priya",
    "quinn", "rafa",  "sofia",  "tomás",  "uma",    "viktor", "wen",     "yusuf",
};
static const char *openers[] = {
    "hey",       "hi all,", "morning!", "ok so",  "quick question:", "fyi",
    "heads up:", "lol",     "hmm",      "thanks", "sorry,",          "btw",
    "ugh,",      "nice!",   "wait,",    "+1",
};
static const char *subjects[] = {
    "the deploy",     "the build",          "staging",
    "the release",    "the meeting",        "lunch",
    "the demo",       "the new api",        "the migration",
    "my laptop",      "the coffee machine", "the dashboard",
    "the flaky test", "the customer",       "the invoice",
    "the design doc", "the offsite",        "the on-call rota",
};
static const char *verbs[] = {
    "is broken again", "looks good to me", "is moved to",
    "needs a review",  "is done",          "takes forever",
    "failed on",       "is blocked by",    "was rescheduled to",
    "works now after", "crashed during",   "is waiting for",
};
static const char *tails[] = {
    "tomorrow",
    "friday",
    "next week",
    "the standup",
    "3pm",
    "after lunch",
    "the second floor",
    "the retro",
    "monday morning",
    "the usual place",
    "the vpn change",
    "the holidays",
    "the last merge",
    "noon",
};
static const char *emoji[] = {
    "\U0001F600", "\U0001F602",   "\U0001F44D", "\U0001F389", "\U0001F525", "\U0001F914",
    "\U0001F64F", "\u2764\uFE0F", "\U0001F680", "\U0001F605", "\U0001F440", "\u2705",
};
static const char *hosts[] = {
    "github.com",      "docs.google.com",  "example.org",      "jira.example.com",
    "www.youtube.com", "grafana.internal", "en.wikipedia.org", "maps.app.goo.gl",
};
static const char *fillers[] = {
    "I think",          "honestly", "maybe",   "probably", "definitely", "not sure but",
    "as far as I know", "again",    "finally", "already",  "still",      "just",
};

static void put(char **p, char *end, const char *s) {
    size_t n = strlen(s);
    if (n > (size_t)(end - *p))
        n = (size_t)(end - *p);
    memcpy(*p, s, n);
    *p += n;
}

static void putf(char **p, char *end, const char *fmt, long a, long b) {
    int n = snprintf(*p, (size_t)(end - *p), fmt, a, b);
    if (n > 0)
        *p += (size_t)n < (size_t)(end - *p) ? (size_t)n : (size_t)(end - *p);
}

static void sentence(char **p, char *end) {
    switch (pick(9)) {
    case 0:
        put(p, end, PICK(openers));
        put(p, end, " ");
        break;
    case 1:
        put(p, end, "@");
        put(p, end, PICK(names));
        put(p, end, " ");
        break;
    default:
        break;
    }
    if (pick(3) == 0) {
        put(p, end, PICK(fillers));
        put(p, end, " ");
    }
    put(p, end, PICK(subjects));
    put(p, end, " ");
    put(p, end, PICK(verbs));
    put(p, end, " ");
    put(p, end, PICK(tails));
    switch (pick(12)) {
    case 0:
        put(p, end, " https://");
        put(p, end, PICK(hosts));
        putf(p, end, "/%ld/%lx", (long)pick(100000), (long)(next() & 0xffffffff));
        break;
    case 1:
        putf(p, end, " (ticket #%ld, ~%ld min)", (long)pick(9000) + 1000, (long)pick(90));
        break;
    case 2:
        putf(p, end, " at %02ld:%02ld", (long)pick(24), (long)pick(60));
        break;
    default:
        break;
    }
    put(p, end, pick(4) ? "." : pick(2) ? "!" : "?");
    if (pick(3) == 0) {
        put(p, end, " ");
        put(p, end, PICK(emoji));
    }
}

/* One message body: mostly one or two sentences, sometimes many, now and
 * then a pasted line of a program's output. */
static size_t body(char *buf, size_t cap) {
    char *p = buf, *end = buf + cap - 1;
    size_t r = pick(100);
    if (r < 4) {
        putf(&p, end, "ERROR 2026-12-%02ld ", (long)pick(28) + 1, 0);
        putf(&p, end, "worker-%ld pid=%ld ", (long)pick(64), (long)pick(60000));
        putf(&p, end, "request_id=%016lx took %ldms", (long)(next() >> 1),
             (long)pick(30000));
        return (size_t)(p - buf);
    }
    size_t n = r < 55 ? 1 : r < 85 ? 2 : r < 97 ? 3 + pick(3) : 8 + pick(10);
    for (size_t i = 0; i < n; i++) {
        if (i)
            put(&p, end, " ");
        sentence(&p, end);
    }
    if (r % 7 == 0)
        put(&p, end, pick(2) ? " lol" : " :)");
    return (size_t)(p - buf);
}

static const char hexd[] = "0123456789abcdef";

/* A serialized ChatMessage in out (at least 4096 bytes); returns its length. */
static size_t message(unsigned char *out, const char *channel, int64_t sent_at_us) {
    char id[37], sender[32], text[3000];
    for (int i = 0; i < 36; i++)
        id[i] = i == 8 || i == 13 || i == 18 || i == 23 ? '-' : hexd[next() & 15];
    id[36] = '\0';
    snprintf(sender, sizeof(sender), "%s.%ld", PICK(names), (long)pick(500));
    size_t tl = body(text, sizeof(text));
    Chatvault__V1__ChatMessage m = CHATVAULT__V1__CHAT_MESSAGE__INIT;
    Chatvault__V1__ChatMessage__AttributesEntry client =
        CHATVAULT__V1__CHAT_MESSAGE__ATTRIBUTES_ENTRY__INIT;
    Chatvault__V1__ChatMessage__AttributesEntry *attrs[] = {&client};
    static const char *clients[] = {"web/4.12.0", "ios/4.11.2", "android/4.12.1",
                                    "desktop/4.10.0"};
    client.key = "client";
    client.value = (char *)PICK(clients);
    m.message_id = id;
    m.channel = (char *)channel;
    m.sender_id = sender;
    m.sent_at_us = sent_at_us;
    m.body.data = (uint8_t *)text;
    m.body.len = tl;
    m.content_type = "text/plain; charset=utf-8";
    m.n_attributes = 1;
    m.attributes = attrs;
    return chatvault__v1__chat_message__pack(&m, out);
}

/* ---- runs ---------------------------------------------------------------- */

static uint64_t disk_bytes;

static int add_size(const char *path, const struct stat *st, int type, struct FTW *f) {
    size_t n = strlen(path);
    if (type == FTW_F && n > 6 && strcmp(path + n - 6, ".cvlog") == 0)
        disk_bytes += (uint64_t)st->st_size;
    return 0;
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *f) {
    return remove(path);
}

typedef struct dataset {
    unsigned char **val;
    size_t *len;
    long n;
    uint64_t value_bytes;
} dataset;

typedef struct result {
    double rate[ROUNDS_MAX], cpu[ROUNDS_MAX], read_rate[ROUNDS_MAX];
    uint64_t bytes;
    double per_batch_ratio;
} result;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n) {
    double s[ROUNDS_MAX];
    memcpy(s, v, (size_t)n * sizeof(*s));
    qsort(s, (size_t)n, sizeof(*s), cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* Writes the dataset into a fresh log at `dir` with `level` (0: off). */
static int run(const char *dir, const cv_keyring *keys, const dataset *ds,
               long partitions, long batch, int level, double *ret_rate, double *ret_cpu,
               double *ret_read_rate, uint64_t *ret_bytes) {
    char err[512];
    cv_applog *log = NULL;
    if (cv_applog_open(dir, keys, 64u << 20, &log, err, sizeof(err)) < 0 ||
        cv_applog_set_sync(log, CV_APPLOG_SYNC_SYNCFS, err, sizeof(err)) < 0 ||
        cv_applog_set_compression(log, level, err, sizeof(err)) < 0) {
        fprintf(stderr, "chatvault-compressbench: %s\n", err);
        cv_applog_free(log);
        return -1;
    }
    static char topics[TOPICS][32];
    for (int t = 0; t < TOPICS; t++)
        snprintf(topics[t], sizeof(topics[t]), "chat.compressbench-%02d", t);
    cv_applog_entry *entries = calloc((size_t)batch, sizeof(*entries));
    int64_t *next_offset = calloc((size_t)partitions, sizeof(*next_offset));
    if (!entries || !next_offset) {
        fprintf(stderr, "chatvault-compressbench: out of memory\n");
        return -1;
    }
    long done = 0, p = 0;
    double t0 = now(), c0 = cpu_s();
    while (done < ds->n) {
        long n = 0;
        for (; n < batch && done + n < ds->n; n++, p = (p + 1) % partitions) {
            cv_applog_entry *e = &entries[n];
            e->topic = topics[p % TOPICS];
            e->partition = (int32_t)(p / TOPICS);
            e->offset = next_offset[p]++;
            e->timestamp_ms = 1765000000000 + done + n;
            e->value = ds->val[done + n];
            e->value_len = ds->len[done + n];
        }
        if (cv_applog_append(log, entries, (size_t)n, err, sizeof(err)) < 0) {
            fprintf(stderr, "chatvault-compressbench: append: %s\n", err);
            return -1;
        }
        done += n;
    }
    double wall = now() - t0;
    *ret_cpu = cpu_s() - c0;
    *ret_rate = (double)ds->n / wall;
    cv_applog_free(log);
    /* Read it all back, partition by partition, as log cat or verify do. */
    long got = 0;
    double r0 = now();
    for (long q = 0; q < partitions; q++) {
        char pd[4200];
        cv_applog_reader *rd = NULL;
        cv_applog_record rec;
        cv_applog_partition_dir(dir, topics[q % TOPICS], (int32_t)(q / TOPICS), pd,
                                sizeof(pd));
        const char *dirs[] = {pd};
        int x = cv_applog_reader_open(dirs, 1, keys, &rd, err, sizeof(err));
        while (x >= 0 && (x = cv_applog_reader_next(rd, &rec, err, sizeof(err))) == 1)
            got++;
        cv_applog_reader_free(rd);
        if (x < 0) {
            fprintf(stderr, "chatvault-compressbench: read %s: %s\n", pd, err);
            return -1;
        }
    }
    *ret_read_rate = (double)got / (now() - r0);
    if (got != ds->n) {
        fprintf(stderr, "chatvault-compressbench: read %ld records of %ld\n", got, ds->n);
        return -1;
    }
    disk_bytes = 0;
    nftw(dir, add_size, 16, FTW_PHYS);
    *ret_bytes = disk_bytes;
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(entries);
    free(next_offset);
    return 0;
}

/* What zstd at `level` makes of each partition's values of one append,
 * concatenated (see the top of the file). */
static double per_batch_ratio(const dataset *ds, long partitions, long batch, int level) {
    if (level == 0)
        return 1.0;
    size_t cap = 0;
    for (long i = 0; i < ds->n; i++)
        cap += ds->len[i];
    unsigned char *cat = malloc(cap), *z = malloc(ZSTD_compressBound(cap));
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    uint64_t in = 0, outb = 0;
    for (long b0 = 0; b0 < ds->n; b0 += batch) {
        long b1 = b0 + batch < ds->n ? b0 + batch : ds->n;
        for (long part = 0; part < partitions; part++) {
            size_t k = 0;
            for (long i = b0; i < b1; i++)
                if (i % partitions == part) {
                    memcpy(cat + k, ds->val[i], ds->len[i]);
                    k += ds->len[i];
                }
            if (!k)
                continue;
            size_t zn = ZSTD_compressCCtx(cc, z, ZSTD_compressBound(cap), cat, k, level);
            in += k;
            outb += ZSTD_isError(zn) ? k : zn;
        }
    }
    ZSTD_freeCCtx(cc);
    free(cat);
    free(z);
    return outb ? (double)in / (double)outb : 1.0;
}

int main(int argc, char **argv) {
    long records = 200000, partitions = 64, batch = 2000, rounds = 3, seed = 1;
    int levels[LEVELS_MAX] = {0, 1, 3, 9, 19}, nlevels = 5;
    static const struct option opts[] = {
        {"records", required_argument, NULL, 'n'},
        {"partitions", required_argument, NULL, 'p'},
        {"batch", required_argument, NULL, 'b'},
        {"rounds", required_argument, NULL, 'r'},
        {"levels", required_argument, NULL, 'l'},
        {"seed", required_argument, NULL, 's'},
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
        case 'r':
            rounds = arg_long("--rounds", optarg, 1);
            if (rounds > ROUNDS_MAX)
                rounds = ROUNDS_MAX;
            break;
        case 's':
            seed = arg_long("--seed", optarg, 1);
            break;
        case 'l': {
            nlevels = 1; /* "off" always runs first: the ratios are against it */
            for (char *t = strtok(optarg, ","); t && nlevels < LEVELS_MAX;
                 t = strtok(NULL, ","))
                levels[nlevels++] = (int)arg_long("--levels", t, 1);
            break;
        }
        default:
            fprintf(stderr, "usage: chatvault-compressbench DIR [--records N] "
                            "[--partitions P] [--batch B] [--rounds R] "
                            "[--levels L,L,...] [--seed S]\n");
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr,
                "chatvault-compressbench: give exactly one DIR (see the top of %s)\n",
                __FILE__);
        return 2;
    }
    const char *dir = argv[optind];
    if (access(dir, F_OK) == 0 || mkdir(dir, 0700) < 0) {
        fprintf(stderr, "chatvault-compressbench: %s exists or cannot be made\n", dir);
        return 2;
    }
    rng ^= (uint64_t)seed * 0x2545f4914f6cdd1dull;

    dataset ds = {.n = records};
    ds.val = calloc((size_t)records, sizeof(*ds.val));
    ds.len = calloc((size_t)records, sizeof(*ds.len));
    unsigned char buf[4096];
    for (long i = 0; i < records && ds.val && ds.len; i++) {
        char channel[32];
        snprintf(channel, sizeof(channel), "compressbench-%02ld",
                 (i % partitions) % TOPICS);
        ds.len[i] = message(buf, channel, 1765000000000000 + i * 1000);
        ds.val[i] = malloc(ds.len[i]);
        if (!ds.val[i])
            break;
        memcpy(ds.val[i], buf, ds.len[i]);
        ds.value_bytes += ds.len[i];
    }

    char err[512], key_path[4096];
    snprintf(key_path, sizeof(key_path), "%s.key", dir);
    uint32_t key_id;
    cv_keyring *keys = NULL;
    if (cv_keyring_generate(key_path, &key_id, err, sizeof(err)) < 0 ||
        cv_keyring_load(key_path, &keys, err, sizeof(err)) < 0) {
        fprintf(stderr, "chatvault-compressbench: %s\n", err);
        return 1;
    }
    printf("# %ld records, %.1f bytes per value on average, %ld partitions, %ld per "
           "append, %ld rounds\n",
           records, (double)ds.value_bytes / (double)records, partitions, batch, rounds);
    printf("# the first 3 values:\n");
    for (int i = 0; i < 3 && i < records; i++) {
        printf("#   ");
        for (size_t k = 0; k < ds.len[i]; k++)
            putchar(ds.val[i][k] >= 32 && ds.val[i][k] != 127 ? ds.val[i][k] : '.');
        putchar('\n');
    }
    static result res[LEVELS_MAX];
    for (int r = 0; r < rounds; r++)
        for (int l = 0; l < nlevels; l++) {
            char sub[4200];
            snprintf(sub, sizeof(sub), "%s/r%d-l%d", dir, r, levels[l]);
            if (run(sub, keys, &ds, partitions, batch, levels[l], &res[l].rate[r],
                    &res[l].cpu[r], &res[l].read_rate[r], &res[l].bytes) < 0)
                return 1;
        }
    for (int l = 0; l < nlevels; l++)
        res[l].per_batch_ratio = per_batch_ratio(&ds, partitions, batch, levels[l]);

    printf("\n| setting | bytes on disk | ratio vs off | write records/s | vs off | "
           "write CPU s | read records/s | vs off | per-batch ratio (not done) |\n");
    printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    double off_rate = median(res[0].rate, (int)rounds);
    double off_read = median(res[0].read_rate, (int)rounds);
    for (int l = 0; l < nlevels; l++) {
        double rate = median(res[l].rate, (int)rounds),
               cpu = median(res[l].cpu, (int)rounds),
               rd = median(res[l].read_rate, (int)rounds);
        char name[16];
        snprintf(name, sizeof(name), levels[l] ? "zstd %d" : "off", levels[l]);
        printf("| %s | %llu | %.3f | %.0f | %.2f | %.2f | %.0f | %.2f | %.2f |\n", name,
               (unsigned long long)res[l].bytes,
               (double)res[0].bytes / (double)res[l].bytes, rate, rate / off_rate, cpu,
               rd, rd / off_read, res[l].per_batch_ratio);
    }
    putchar('\n');
    for (int l = 0; l < nlevels; l++)
        printf(
            "RESULT level=%d records=%ld value_bytes=%llu disk_bytes=%llu ratio=%.4f "
            "records_per_s=%.0f rate_vs_off=%.3f cpu_s=%.3f read_records_per_s=%.0f "
            "per_batch_ratio=%.3f\n",
            levels[l], records, (unsigned long long)ds.value_bytes,
            (unsigned long long)res[l].bytes, (double)res[0].bytes / (double)res[l].bytes,
            median(res[l].rate, (int)rounds), median(res[l].rate, (int)rounds) / off_rate,
            median(res[l].cpu, (int)rounds), median(res[l].read_rate, (int)rounds),
            res[l].per_batch_ratio);
    cv_keyring_free(keys);
    rmdir(dir);
    return 0;
}
