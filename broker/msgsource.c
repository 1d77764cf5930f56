/*
 * msgsource — see msgsource.h.
 */
#include "msgsource.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "applog/applog.h"
#include "arena.h"
#include "chatvault.pb-c.h"
#include "cli.h"
#include "pg/pgmigrate.h"
#include "pg/pgread.h"
#include "util.h"

#define ARENA_LIMIT ((size_t)256 << 20)

/* One topic-partition of the log and its directories in every log dir. */
typedef struct lpart {
    char *channel, *topic;
    int32_t partition;
    char **paths;
    size_t npaths;
} lpart;

struct cv_src {
    cv_src_conf conf;
    uint64_t erased_sender; /* log records of erased senders passed over */
    cv_src_mode mode;       /* CV_SRC_LOG when auto found no PostgreSQL */
    PGconn *conn;
    char **chans;
    size_t nchans, ichan;
    lpart *lp;
    size_t nlp, lpcap;
    /* the channel being read */
    bool open;
    const char *chan;
    cv_pgread *pr;
    bool has_pg, adv_pg;
    cv_pgrow row;
    size_t lp_i, lp_end;
    cv_applog_reader *lr;
    const lpart *cur;
    bool has_log, adv_log;
    cv_applog_record rec;
    Chatvault__V1__ChatMessage *lm;
    cv_arena *arena;
    cv_buf val;
    const char **attrv;
    size_t attrcap;
    /* Message ids of the rows PostgreSQL served at (served_part,
     * served_off): a log record there with one of them is PostgreSQL's.
     * At one offset PostgreSQL's rows come first, in no set order, and an
     * offset holds one message per log generation. */
    int32_t served_part;
    int64_t served_off;
    char **served;
    size_t nserved, servedcap;
};

static void served_clear(cv_src *s) {
    for (size_t i = 0; i < s->nserved; i++)
        free(s->served[i]);
    s->nserved = 0;
}

static int served_add(cv_src *s, const cv_pgrow *row) {
    if (row->partition != s->served_part || row->offset != s->served_off) {
        served_clear(s);
        s->served_part = row->partition;
        s->served_off = row->offset;
    }
    if (s->nserved == s->servedcap) {
        size_t nc = s->servedcap ? s->servedcap * 2 : 4;
        char **nv = realloc(s->served, nc * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        s->served = nv;
        s->servedcap = nc;
    }
    if (!(s->served[s->nserved] = strdup(row->message_id)))
        return -ENOMEM;
    s->nserved++;
    return 0;
}

static bool served_has(const cv_src *s, int32_t partition, int64_t offset,
                       const char *id) {
    if (partition != s->served_part || offset != s->served_off)
        return false;
    for (size_t i = 0; i < s->nserved; i++)
        if (strcmp(s->served[i], id) == 0)
            return true;
    return false;
}

static int str_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int lpart_cmp(const void *a, const void *b) {
    const lpart *x = a, *y = b;
    int c = strcmp(x->channel, y->channel);
    if (!c)
        c = strcmp(x->topic, y->topic);
    return c ? c : (x->partition > y->partition) - (x->partition < y->partition);
}

static int add_chan(cv_src *s, const char *channel) {
    if (!cv_select_channel(s->conf.sel, channel))
        return 0;
    char **nv = realloc(s->chans, (s->nchans + 1) * sizeof(*nv));
    if (!nv)
        return -ENOMEM;
    s->chans = nv;
    if (!(s->chans[s->nchans] = strdup(channel)))
        return -ENOMEM;
    s->nchans++;
    return 0;
}

static int pg_channel(void *opaque, const char *channel) {
    return add_chan(opaque, channel);
}

static int log_partition(void *opaque, const char *path, const char *topic,
                         int32_t partition) {
    cv_src *s = opaque;
    const char *pre = s->conf.topic_prefix;
    const char *channel =
        strncmp(topic, pre, strlen(pre)) == 0 ? topic + strlen(pre) : topic;
    if (!cv_select_channel(s->conf.sel, channel) ||
        (s->conf.sel->partition >= 0 && partition != s->conf.sel->partition))
        return 0;
    lpart *e = NULL;
    for (size_t i = 0; i < s->nlp; i++)
        if (s->lp[i].partition == partition && strcmp(s->lp[i].topic, topic) == 0)
            e = &s->lp[i];
    if (!e) {
        if (s->nlp == s->lpcap) {
            size_t nc = s->lpcap ? s->lpcap * 2 : 16;
            lpart *nv = realloc(s->lp, nc * sizeof(*nv));
            if (!nv)
                return -ENOMEM;
            s->lp = nv;
            s->lpcap = nc;
        }
        e = &s->lp[s->nlp++];
        memset(e, 0, sizeof(*e));
        e->channel = strdup(channel);
        e->topic = strdup(topic);
        e->partition = partition;
        if (!e->channel || !e->topic)
            return -ENOMEM;
    }
    char **np = realloc(e->paths, (e->npaths + 1) * sizeof(*np));
    if (!np)
        return -ENOMEM;
    e->paths = np;
    if (!(e->paths[e->npaths] = strdup(path)))
        return -ENOMEM;
    e->npaths++;
    return 0;
}

int cv_src_open(const cv_src_conf *conf, cv_src **ret, char *pg_error, size_t pg_errlen,
                char *errbuf, size_t errlen) {
    cv_src *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(errbuf, errlen, "out of memory");
        return -ENOMEM;
    }
    s->conf = *conf;
    s->mode = conf->mode;
    cv_buf_init(&s->val, (size_t)1 << 30);
    int r = 0;
    if (!(s->arena = cv_arena_new(ARENA_LIMIT))) {
        r = -ENOMEM;
        snprintf(errbuf, errlen, "out of memory");
        goto fail;
    }
    if (s->mode != CV_SRC_LOG) {
        char err[512];
        s->conn = cv_pg_connect(conf->pg_conninfo, err, sizeof(err));
        if (s->conn && cv_pgmigrate_check(s->conn, err, sizeof(err)) < 0) {
            PQfinish(s->conn);
            s->conn = NULL;
        }
        if (!s->conn) {
            if (s->mode == CV_SRC_PG) {
                snprintf(errbuf, errlen, "%s (%s)", err, conf->pg_conninfo_key);
                r = -CV_ESTORE;
                goto fail;
            }
            if (!conf->nlog_dirs) {
                snprintf(errbuf, errlen, "%s (%s), and no log to serve from", err,
                         conf->pg_conninfo_key);
                r = -CV_ESTORE;
                goto fail;
            }
            if (pg_error)
                snprintf(pg_error, pg_errlen, "%s", err);
            s->mode = CV_SRC_LOG;
        }
    }
    if (s->mode != CV_SRC_LOG) {
        r = cv_pgread_channels(s->conn, pg_channel, s, errbuf, errlen);
        if (r < 0)
            goto fail;
    }
    if (s->mode != CV_SRC_PG && conf->nlog_dirs) {
        if (!conf->keys) {
            snprintf(errbuf, errlen, "reading the log needs log.key_file");
            r = -EINVAL;
            goto fail;
        }
        for (size_t i = 0; i < conf->nlog_dirs; i++) {
            r = cv_applog_partitions(conf->log_dirs[i], log_partition, s, errbuf, errlen);
            if (r == -ENOENT)
                r = 0;
            if (r < 0)
                goto fail;
        }
        if (s->nlp)
            qsort(s->lp, s->nlp, sizeof(*s->lp), lpart_cmp);
        for (size_t i = 0; i < s->nlp; i++)
            if ((r = add_chan(s, s->lp[i].channel)) < 0)
                goto fail;
    }
    /* Sorted, each channel once. */
    if (s->nchans)
        qsort(s->chans, s->nchans, sizeof(*s->chans), str_cmp);
    size_t w = 0;
    for (size_t i = 0; i < s->nchans; i++) {
        if (w && strcmp(s->chans[w - 1], s->chans[i]) == 0) {
            free(s->chans[i]);
            continue;
        }
        s->chans[w++] = s->chans[i];
    }
    s->nchans = w;
    *ret = s;
    return 0;
fail:
    if (r == -ENOMEM)
        snprintf(errbuf, errlen, "out of memory");
    cv_src_free(s);
    return r;
}

bool cv_src_has_pg(const cv_src *s) {
    return s->conn != NULL;
}

static void close_channel(cv_src *s) {
    s->pr = cv_pgread_free(s->pr);
    s->lr = cv_applog_reader_free(s->lr);
    s->has_pg = s->has_log = s->adv_pg = s->adv_log = false;
    s->open = false;
    served_clear(s);
    s->served_off = -1;
}

static int advance_pg(cv_src *s, char *errbuf, size_t errlen) {
    s->has_pg = false;
    if (!s->pr)
        return 0;
    int r = cv_pgread_next(s->pr, &s->row, errbuf, errlen);
    if (r < 0)
        return r;
    s->has_pg = r == 1;
    return 0;
}

/* The next selected log record of the channel, across its partitions. */
static int advance_log(cv_src *s, char *errbuf, size_t errlen) {
    const cv_select *sel = s->conf.sel;
    s->has_log = false;
    for (;;) {
        if (!s->lr) {
            if (s->lp_i >= s->lp_end)
                return 0;
            s->cur = &s->lp[s->lp_i++];
            int r =
                cv_applog_reader_open((const char *const *)s->cur->paths, s->cur->npaths,
                                      s->conf.keys, &s->lr, errbuf, errlen);
            if (r < 0)
                return r;
            if (sel->from_offset >= 0)
                cv_applog_reader_skip_to(s->lr, sel->from_offset);
        }
        int r = cv_applog_reader_next(s->lr, &s->rec, errbuf, errlen);
        if (r < 0)
            return r;
        if (r == 0 || (sel->to_offset >= 0 && s->rec.offset > sel->to_offset)) {
            cv_applog_erased e;
            cv_applog_reader_erased(s->lr, &e);
            if (s->erased_sender)
                cv_log(CV_LOG_INFO, "erased: skipping the log records of erased senders",
                       "dir=\"%s\" records=%" PRIu64, s->cur->paths[0], s->erased_sender);
            s->erased_sender = 0;
            if (e.segments) /* DATA KEYS: an erased channel, not damage */
                cv_log(CV_LOG_INFO,
                       "erased: skipping the log records of an erased channel",
                       "dir=\"%s\" erased_segments=%" PRIu64 " erased_records=%" PRIu64,
                       s->cur->paths[0], e.segments, e.records);
            s->lr = cv_applog_reader_free(s->lr);
            continue;
        }
        cv_arena_reset(s->arena);
        s->lm = chatvault__v1__chat_message__unpack(cv_arena_protobuf(s->arena),
                                                    s->rec.value_len, s->rec.value);
        if (!s->lm) {
            snprintf(errbuf, errlen,
                     "log record %s/%" PRId32 " offset %" PRId64 " (%s at byte %" PRIu64
                     ") is not a ChatMessage",
                     s->rec.topic, s->rec.partition, s->rec.offset, s->rec.file,
                     s->rec.pos);
            return -EBADMSG;
        }
        if (cv_keyring_sender_erased(s->conf.keys, s->cur->channel, s->lm->sender_id)) {
            /* chatvault erase --sender: never handed out again */
            s->erased_sender++;
            continue;
        }
        if (cv_select_match(sel, s->rec.partition, s->rec.offset, s->lm->sent_at_us,
                            s->rec.timestamp_ms, s->cur->channel, s->lm->message_id)) {
            s->has_log = true;
            return 0;
        }
    }
}

static int open_channel(cv_src *s, const char *chan, char *errbuf, size_t errlen) {
    s->chan = chan;
    s->open = true;
    int r;
    if (s->mode != CV_SRC_LOG) {
        cv_pgread_sel psel;
        if ((r = cv_select_pg(s->conf.sel, chan, &psel)) < 0)
            return r;
        /* Every version, so that a version the log holds is known to be
         * PostgreSQL's too; without --history only the latest ones are
         * returned (cv_src_next). */
        psel.history = true;
        if ((r = cv_pgread_open(s->conn, &psel, &s->pr, errbuf, errlen)) < 0)
            return r;
        if ((r = advance_pg(s, errbuf, errlen)) < 0)
            return r;
    }
    if (s->mode != CV_SRC_PG) {
        s->lp_i = s->lp_end = 0;
        while (s->lp_i < s->nlp && strcmp(s->lp[s->lp_i].channel, chan) < 0)
            s->lp_i++;
        s->lp_end = s->lp_i;
        while (s->lp_end < s->nlp && strcmp(s->lp[s->lp_end].channel, chan) == 0)
            s->lp_end++;
        if ((r = advance_log(s, errbuf, errlen)) < 0)
            return r;
    }
    return 0;
}

static void emit_pg(cv_src *s, cv_msg *m) {
    const cv_pgrow *row = &s->row;
    *m = (cv_msg){
        .from_log = false,
        .channel = row->channel,
        .topic = row->topic,
        .partition = row->partition,
        .offset = row->offset,
        .timestamp_ms = row->timestamp_ms,
        .persisted_at_us = row->persisted_at_us,
        .value = s->val.data,
        .value_len = s->val.len,
        .message_id = row->message_id,
        .sender_id = row->sender_id,
        .content_type = row->content_type,
        .reply_to = row->reply_to,
        .sent_at_us = row->sent_at_us,
        .body = row->body,
        .body_len = row->body_len,
        .attrs = row->attrs,
        .nattrs = row->nattrs,
        .revision = row->revision,
        .deleted = row->deleted,
    };
}

static int emit_log(cv_src *s, cv_msg *m) {
    const Chatvault__V1__ChatMessage *lm = s->lm;
    if (2 * lm->n_attributes > s->attrcap) {
        size_t nc = 2 * lm->n_attributes;
        const char **nv = realloc(s->attrv, nc * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        s->attrv = nv;
        s->attrcap = nc;
    }
    for (size_t i = 0; i < lm->n_attributes; i++) {
        s->attrv[2 * i] = lm->attributes[i]->key ? lm->attributes[i]->key : "";
        s->attrv[2 * i + 1] = lm->attributes[i]->value ? lm->attributes[i]->value : "";
    }
    *m = (cv_msg){
        .from_log = true,
        .channel = s->cur->channel,
        .topic = s->rec.topic,
        .partition = s->rec.partition,
        .offset = s->rec.offset,
        .timestamp_ms = s->rec.timestamp_ms,
        .persisted_at_us = -1,
        .value = s->rec.value,
        .value_len = s->rec.value_len,
        .message_id = lm->message_id,
        .sender_id = lm->sender_id,
        .content_type = lm->content_type,
        .reply_to = lm->reply_to,
        .sent_at_us = lm->sent_at_us,
        .body = lm->body.data ? lm->body.data : (const unsigned char *)"",
        .body_len = lm->body.len,
        .attrs = s->attrv,
        .nattrs = lm->n_attributes,
        .revision = lm->revision,
        .deleted = lm->deleted,
    };
    return 0;
}

int cv_src_next(cv_src *s, cv_msg *m, char *errbuf, size_t errlen) {
    int r;
    for (;;) {
        /* What was returned last is let go of now. */
        if (s->adv_pg && (r = advance_pg(s, errbuf, errlen)) < 0)
            return r;
        if (s->adv_log && (r = advance_log(s, errbuf, errlen)) < 0)
            return r;
        s->adv_pg = s->adv_log = false;
        if (!s->open) {
            if (s->ichan >= s->nchans)
                return 0;
            if ((r = open_channel(s, s->chans[s->ichan++], errbuf, errlen)) < 0)
                return r;
        }
        if (!s->has_pg && !s->has_log) {
            close_channel(s);
            continue;
        }
        bool pg_first = s->has_pg;
        if (s->has_pg && s->has_log) {
            int32_t pp = s->row.partition, lp = s->rec.partition;
            pg_first = pp < lp || (pp == lp && s->row.offset <= s->rec.offset);
            /* PostgreSQL serves the record it holds: the same offset and
             * message id (an offset may hold several messages, one of each
             * log generation: see "Generations" in
             * consumer/applog/FORMAT.md). */
            if (pp == lp && s->row.offset == s->rec.offset &&
                strcmp(s->row.message_id, s->lm->message_id) == 0)
                s->adv_log = true;
        }
        if (!pg_first &&
            served_has(s, s->rec.partition, s->rec.offset, s->lm->message_id)) {
            s->adv_log = true; /* PostgreSQL served it */
            continue;
        }
        if (pg_first) {
            if ((r = cv_pgrow_pack(&s->row, &s->val)) < 0 ||
                (r = served_add(s, &s->row)) < 0) {
                snprintf(errbuf, errlen, "out of memory rebuilding a message");
                return r;
            }
            s->adv_pg = true;
            if (!s->row.latest && !s->conf.sel->history)
                continue; /* a superseded version: served, not returned */
            emit_pg(s, m);
            return 1;
        }
        if ((r = emit_log(s, m)) < 0) {
            snprintf(errbuf, errlen, "out of memory");
            return r;
        }
        s->adv_log = true;
        return 1;
    }
}

cv_src *cv_src_free(cv_src *s) {
    if (!s)
        return NULL;
    close_channel(s);
    free(s->served);
    if (s->conn)
        PQfinish(s->conn);
    for (size_t i = 0; i < s->nchans; i++)
        free(s->chans[i]);
    free(s->chans);
    for (size_t i = 0; i < s->nlp; i++) {
        for (size_t k = 0; k < s->lp[i].npaths; k++)
            free(s->lp[i].paths[k]);
        free(s->lp[i].paths);
        free(s->lp[i].channel);
        free(s->lp[i].topic);
    }
    free(s->lp);
    cv_arena_free(s->arena);
    cv_buf_release(&s->val);
    free(s->attrv);
    free(s);
    return NULL;
}

int cv_src_parse_mode(const char *cmd, const char *arg, cv_src_mode *ret_mode) {
    if (strcmp(arg, "pg") == 0 || strcmp(arg, "postgres") == 0)
        *ret_mode = CV_SRC_PG;
    else if (strcmp(arg, "log") == 0)
        *ret_mode = CV_SRC_LOG;
    else if (strcmp(arg, "auto") == 0)
        *ret_mode = CV_SRC_AUTO;
    else {
        cv_error(cmd, "--source: \"%s\" is not pg, log or auto", arg);
        return -EINVAL;
    }
    return 0;
}

int cv_src_mode_opt(const cv_cli_opt *opt, void *dest, const char *cmd,
                    const char *value) {
    return cv_src_parse_mode(cmd, value, dest) < 0 ? -1 : 0;
}
