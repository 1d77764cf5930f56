/*
 * select — see select.h.
 */
#include "select.h"

#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "util.h"

#define IDS_MAX 10000000 /* lines in an --ids file */

void cv_select_init(cv_select *s) {
    memset(s, 0, sizeof(*s));
    s->partition = -1;
    s->from_offset = s->to_offset = -1;
    s->since_us = s->until_us = -1;
    s->time_field = CV_PGREAD_TIME_SENT_AT;
}

void cv_select_release(cv_select *s) {
    for (size_t i = 0; i < s->nids; i++)
        free(s->ids[i]);
    free(s->ids);
    free(s->channels);
    free(s->chan_ids);
    memset(s, 0, sizeof(*s));
}

int cv_parse_time_us(const char *s, int64_t *ret_us) {
    char *end;
    if (*s >= '0' && *s <= '9') {
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (errno == 0 && end != s) {
            int64_t mult = 0;
            if (*end == '\0') {
                *ret_us = (int64_t)v * 1000; /* Unix ms */
                return 0;
            }
            if (strcmp(end, "s") == 0)
                mult = 1;
            else if (strcmp(end, "m") == 0)
                mult = 60;
            else if (strcmp(end, "h") == 0)
                mult = 3600;
            else if (strcmp(end, "d") == 0)
                mult = 86400;
            if (mult > 0) {
                *ret_us = cv_now_us() - (int64_t)v * mult * 1000000;
                return 0;
            }
        }
    }
    struct tm tm = {0};
    const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    int64_t frac = 0;
    if (rest && *rest == '.') {
        int digits = 0;
        for (rest++; *rest >= '0' && *rest <= '9'; rest++)
            if (digits++ < 6)
                frac = frac * 10 + (*rest - '0');
        while (digits++ < 6)
            frac *= 10;
    }
    if (!rest) {
        memset(&tm, 0, sizeof(tm));
        rest = strptime(s, "%Y-%m-%d", &tm);
    }
    /* RFC 3339's zone: Z, or an offset from UTC, +HH:MM or -HH:MM */
    int64_t zone_s = 0;
    if (rest && (*rest == '+' || *rest == '-') && strlen(rest) == 6 && rest[3] == ':' &&
        strspn(rest + 1, "0123456789") == 2 && strspn(rest + 4, "0123456789") == 2) {
        int hh = (rest[1] - '0') * 10 + (rest[2] - '0');
        int mm = (rest[4] - '0') * 10 + (rest[5] - '0');
        if (hh > 23 || mm > 59)
            return -EINVAL;
        zone_s = (int64_t)(hh * 3600 + mm * 60) * (*rest == '-' ? -1 : 1);
        rest += 6;
    }
    if (!rest || (*rest && strcmp(rest, "Z") != 0))
        return -EINVAL;
    *ret_us = ((int64_t)timegm(&tm) - zone_s) * 1000000 + frac;
    return 0;
}

static int num_arg(const char *cmd, const char *name, const char *arg, int64_t max,
                   int64_t *ret) {
    char *end;
    errno = 0;
    long long v = strtoll(arg, &end, 10);
    if (errno || end == arg || *end || v < 0 || v > max) {
        cv_error(cmd, "--%s: \"%s\" is not a number from 0 to %" PRId64, name, arg, max);
        return -1;
    }
    *ret = v;
    return 1;
}

static int ids_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int load_ids(cv_select *s, const char *cmd, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        cv_error(cmd, "--ids %s: %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0, vcap = 0;
    ssize_t n;
    unsigned long lineno = 0;
    int r = 1;
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (n && strchr("\n\r \t", line[n - 1]))
            line[--n] = '\0';
        char *p = line + strspn(line, " \t");
        if (!*p || *p == '#')
            continue;
        char *sep = p + strcspn(p, " \t");
        char *chan = "", *id = p;
        if (*sep) {
            *sep = '\0';
            chan = p;
            id = sep + 1 + strspn(sep + 1, " \t");
        }
        if (s->nids == IDS_MAX || !*id) {
            cv_error(cmd, "--ids %s line %lu: %s", path, lineno,
                     *id ? "too many ids" : "no message id");
            r = -1;
            break;
        }
        if (s->nids >= vcap) { /* --message-id may have added some */
            vcap = vcap ? vcap * 2 : s->nids + 256;
            char **nv = realloc(s->ids, vcap * sizeof(*nv));
            if (!nv) {
                r = -1;
                break;
            }
            s->ids = nv;
        }
        size_t l = strlen(chan) + strlen(id) + 2;
        if (!(s->ids[s->nids] = malloc(l))) {
            r = -1;
            break;
        }
        snprintf(s->ids[s->nids++], l, "%s\t%s", chan, id);
    }
    free(line);
    fclose(f);
    if (r == 1 && s->nids)
        qsort(s->ids, s->nids, sizeof(*s->ids), ids_cmp);
    if (r == 1)
        s->has_ids = true;
    return r;
}

/* --message-id: one more id of any channel, with those of --ids. */
static int add_id(cv_select *s, const char *cmd, const char *id) {
    size_t l = strlen(id);
    if (l == 0 || l > 128) {
        cv_error(cmd, "--message-id: a message id is 1 to 128 bytes");
        return -1;
    }
    char **nv = realloc(s->ids, (s->nids + 1) * sizeof(*nv));
    if (!nv)
        return -1;
    s->ids = nv;
    if (!(s->ids[s->nids] = malloc(l + 2)))
        return -1;
    snprintf(s->ids[s->nids++], l + 2, "\t%s", id);
    qsort(s->ids, s->nids, sizeof(*s->ids), ids_cmp);
    s->has_ids = true;
    return 1;
}

int cv_select_opt(cv_select *s, const char *cmd, int opt, const char *arg) {
    int64_t v;
    int r;
    switch (opt) {
    case CV_SEL_CHANNEL: {
        const char **nc = realloc(s->channels, (s->nchannels + 1) * sizeof(*nc));
        if (!nc)
            return -1;
        s->channels = nc;
        s->channels[s->nchannels++] = arg;
        return 1;
    }
    case CV_SEL_PARTITION:
        r = num_arg(cmd, "partition", arg, INT32_MAX, &v);
        if (r == 1)
            s->partition = (int32_t)v;
        return r;
    case CV_SEL_FROM_OFFSET:
        return num_arg(cmd, "from-offset", arg, INT64_MAX, &s->from_offset);
    case CV_SEL_TO_OFFSET:
        return num_arg(cmd, "to-offset", arg, INT64_MAX, &s->to_offset);
    case CV_SEL_SINCE:
    case CV_SEL_UNTIL:
        if (cv_parse_time_us(arg, opt == CV_SEL_SINCE ? &s->since_us : &s->until_us) <
            0) {
            cv_error(cmd,
                     "--%s: \"%s\" is not a time (RFC 3339 with Z or +HH:MM, a date, "
                     "90s/15m/2h/7d ago, or Unix ms)",
                     opt == CV_SEL_SINCE ? "since" : "until", arg);
            return -1;
        }
        return 1;
    case CV_SEL_TIME:
        if (strcmp(arg, "sent") == 0)
            s->time_field = CV_PGREAD_TIME_SENT_AT;
        else if (strcmp(arg, "persisted") == 0)
            s->time_field = CV_PGREAD_TIME_PERSISTED_AT;
        else {
            cv_error(cmd, "--time: \"%s\" is neither sent nor persisted", arg);
            return -1;
        }
        return 1;
    case CV_SEL_IDS:
        return load_ids(s, cmd, arg);
    case CV_SEL_ID:
        return add_id(s, cmd, arg);
    }
    return 0;
}

int cv_select_cli_opt(const cv_cli_opt *opt, void *dest, const char *cmd,
                      const char *value) {
    return cv_select_opt(dest, cmd, opt->id, value) < 0 ? -1 : 0;
}

const cv_cli_opt cv_select_opts[] = {
    CV_OPT_CALL("channel", 0, "C", "a channel, or a shell pattern (\"eu-*\"); repeatable",
                cv_select_cli_opt, CV_SEL_CHANNEL),
    CV_OPT_CALL("partition", 0, "N", "one Kafka partition", cv_select_cli_opt,
                CV_SEL_PARTITION),
    CV_OPT_CALL("from-offset", 0, "N", "offsets from N (inclusive)", cv_select_cli_opt,
                CV_SEL_FROM_OFFSET),
    CV_OPT_CALL("to-offset", 0, "N", "offsets up to N (inclusive)", cv_select_cli_opt,
                CV_SEL_TO_OFFSET),
    CV_OPT_CALL("since", 0, "TIME",
                "from TIME (inclusive): RFC 3339 with Z or +HH:MM, a date, a duration "
                "ago (90s, 15m, "
                "2h, 7d) or Unix ms",
                cv_select_cli_opt, CV_SEL_SINCE),
    CV_OPT_CALL("until", 0, "TIME", "before TIME (exclusive), same forms",
                cv_select_cli_opt, CV_SEL_UNTIL),
    CV_OPT_CALL("time", 0, "sent|persisted",
                "the time --since/--until apply to (default sent: the sender's sent_at; "
                "persisted: when stored; the log keeps no store time and uses the Kafka "
                "timestamp)",
                cv_select_cli_opt, CV_SEL_TIME),
    CV_OPT_CALL(
        "ids", 0, "FILE",
        "only these message ids: one per line, or \"channel message_id\" per line",
        cv_select_cli_opt, CV_SEL_IDS),
    CV_OPT_CALL("message-id", 0, "ID", "only this message id (any channel); repeatable",
                cv_select_cli_opt, CV_SEL_ID),
    CV_OPT_END,
};

int cv_select_check(const cv_select *s, const char *cmd) {
    if (s->from_offset >= 0 && s->to_offset >= 0 && s->from_offset > s->to_offset) {
        cv_error(cmd,
                 "--from-offset %" PRId64 " is above --to-offset %" PRId64
                 ": no offset is in that range",
                 s->from_offset, s->to_offset);
        return -1;
    }
    if (s->since_us >= 0 && s->until_us >= 0 && s->since_us >= s->until_us) {
        cv_error(cmd, "--since is not before --until: no time is in that range");
        return -1;
    }
    static const char pattern_chars[] =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-*?[]!^";
    for (size_t i = 0; i < s->nchannels; i++) {
        const char *c = s->channels[i];
        size_t n = strlen(c);
        if (n == 0 || n > 200 || strspn(c, pattern_chars) != n) {
            cv_error(cmd,
                     "--channel \"%s\": a channel is 1 to 200 of [A-Za-z0-9._-] (a "
                     "pattern may add * ? [ ])",
                     c);
            return -1;
        }
    }
    return 0;
}

bool cv_select_channel(const cv_select *s, const char *channel) {
    if (!s->nchannels)
        return true;
    for (size_t i = 0; i < s->nchannels; i++)
        if (fnmatch(s->channels[i], channel, 0) == 0)
            return true;
    return false;
}

/* Whether "chan\tid" entries hold id for channel (or for any channel). */
static bool has_id(const cv_select *s, const char *channel, const char *id) {
    char key[512];
    const char *k = key;
    snprintf(key, sizeof(key), "%s\t%s", channel, id);
    if (bsearch(&k, s->ids, s->nids, sizeof(*s->ids), ids_cmp))
        return true;
    snprintf(key, sizeof(key), "\t%s", id);
    return bsearch(&k, s->ids, s->nids, sizeof(*s->ids), ids_cmp) != NULL;
}

int cv_select_pg(cv_select *s, const char *channel, cv_pgread_sel *ret) {
    memset(ret, 0, sizeof(*ret));
    ret->channel = channel;
    ret->partition = s->partition;
    ret->from_offset = s->from_offset;
    ret->to_offset = s->to_offset;
    ret->time_field =
        s->since_us >= 0 || s->until_us >= 0 ? s->time_field : CV_PGREAD_TIME_NONE;
    ret->since_us = s->since_us;
    ret->until_us = s->until_us;
    ret->history = s->history;
    if (!s->has_ids)
        return 0;
    free(s->chan_ids);
    s->chan_ids = calloc(s->nids ? s->nids : 1, sizeof(*s->chan_ids));
    if (!s->chan_ids)
        return -ENOMEM;
    size_t cl = strlen(channel), n = 0;
    for (size_t i = 0; i < s->nids; i++) {
        const char *e = s->ids[i];
        if (e[0] == '\t')
            s->chan_ids[n++] = e + 1;
        else if (strncmp(e, channel, cl) == 0 && e[cl] == '\t')
            s->chan_ids[n++] = e + cl + 1;
    }
    ret->ids = s->chan_ids;
    ret->nids = n;
    /* An empty list selects nothing: an impossible offset says so. */
    if (n == 0)
        ret->from_offset = INT64_MAX;
    return 0;
}

bool cv_select_match(const cv_select *s, int32_t partition, int64_t offset,
                     int64_t sent_at_us, int64_t kafka_ts_ms, const char *channel,
                     const char *message_id) {
    if (s->partition >= 0 && partition != s->partition)
        return false;
    if (s->from_offset >= 0 && offset < s->from_offset)
        return false;
    if (s->to_offset >= 0 && offset > s->to_offset)
        return false;
    int64_t t =
        s->time_field == CV_PGREAD_TIME_PERSISTED_AT ? kafka_ts_ms * 1000 : sent_at_us;
    if (s->since_us >= 0 && t < s->since_us)
        return false;
    if (s->until_us >= 0 && t >= s->until_us)
        return false;
    return !s->has_ids || has_id(s, channel, message_id);
}
