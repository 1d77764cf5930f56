/*
 * drill — see drill.h.
 *
 * Sampling is a reservoir over the selected log records (every record has
 * the same chance, whatever its age), so one pass reads the log and keeps
 * at most `sample` copies. The comparison is by digest: each side's
 * fields, length-prefixed, attributes sorted by key, hashed with SHA-256,
 * and looked up by (topic, partition, offset, message id).
 */
#include "drill.h"

#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chatvault.pb-c.h"
#include "cli.h"
#include "msgsource.h"
#include "pg/pgdrill.h"
#include "pg/pgmigrate.h"
#include "progress.h"
#include "restore.h"
#include "util.h"

/* pg_try_advisory_lock key of a running drill: "cvdrill!" big-endian. */
#define DRILL_LOCK_KEY "7166470042592872737"
#define SAMPLE_MAX 10000000 /* messages a drill restores, sampled or all */
/* The comment of a scratch database: a drill drops no database without it. */
#define SCRATCH_MARK "chatvault restore drill scratch database"

typedef struct entry {
    char *topic, *message_id;
    int32_t partition;
    int64_t offset;
    unsigned char digest[crypto_hash_sha256_BYTES];
    bool seen;
} entry;

/* A sampled message, copied out of the reader. */
typedef struct held {
    char *channel, *topic, *message_id;
    int32_t partition;
    int64_t offset, timestamp_ms;
    void *value;
    size_t value_len;
} held;

typedef struct drill {
    const cv_drill_conf *conf;
    cv_drill_result *res;
    char *err;
    size_t errlen;
    cv_progress prog;
    entry *ents;
    size_t nents, capents;
    held *pool;
    size_t npool;
    uint64_t dups;
} drill;

static void put_bytes(crypto_hash_sha256_state *st, const void *p, size_t n) {
    uint64_t len = n;
    crypto_hash_sha256_update(st, (const unsigned char *)&len, sizeof(len));
    if (n)
        crypto_hash_sha256_update(st, p, n);
}

static void put_str(crypto_hash_sha256_state *st, const char *s) {
    put_bytes(st, s ? s : "", s ? strlen(s) : 0);
}

static void put_i64(crypto_hash_sha256_state *st, int64_t v) {
    crypto_hash_sha256_update(st, (const unsigned char *)&v, sizeof(v));
}

/* What a message says, as a digest both stores' readings give alike. */
static int msg_digest(const cv_msg *m, unsigned char out[crypto_hash_sha256_BYTES]) {
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    put_str(&st, m->channel);
    put_str(&st, m->message_id);
    put_str(&st, m->sender_id);
    put_i64(&st, m->sent_at_us);
    put_i64(&st, m->revision);
    put_i64(&st, m->deleted);
    put_i64(&st, m->timestamp_ms);
    put_str(&st, m->content_type);
    put_str(&st, m->reply_to);
    put_bytes(&st, m->body, m->body_len);
    size_t *order = calloc(m->nattrs ? m->nattrs : 1, sizeof(*order));
    if (!order)
        return -ENOMEM;
    /* by key: insertion sort, a message has a handful */
    for (size_t i = 0; i < m->nattrs; i++) {
        size_t j = i;
        for (; j > 0 && strcmp(m->attrs[2 * order[j - 1]], m->attrs[2 * i]) > 0; j--)
            order[j] = order[j - 1];
        order[j] = i;
    }
    for (size_t i = 0; i < m->nattrs; i++) {
        /* A key sent twice means its last value (protobuf's map rule, and
         * PostgreSQL's jsonb): the sort is stable, so skip all but the last. */
        if (i + 1 < m->nattrs &&
            strcmp(m->attrs[2 * order[i]], m->attrs[2 * order[i + 1]]) == 0)
            continue;
        put_str(&st, m->attrs[2 * order[i]]);
        put_str(&st, m->attrs[2 * order[i] + 1]);
    }
    free(order);
    crypto_hash_sha256_final(&st, out);
    return 0;
}

static int entry_cmp(const void *a, const void *b) {
    const entry *x = a, *y = b;
    int c = strcmp(x->topic, y->topic);
    if (c)
        return c;
    if (x->partition != y->partition)
        return x->partition < y->partition ? -1 : 1;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    return strcmp(x->message_id, y->message_id);
}

/* Notes a message given to the restore: its key and digest. */
static int add_entry(drill *d, const cv_msg *m) {
    if (d->nents == SAMPLE_MAX) {
        snprintf(d->err, d->errlen,
                 "the selection holds more than %d messages: drill a --sample of it",
                 SAMPLE_MAX);
        return -E2BIG;
    }
    if (d->nents == d->capents) {
        size_t cap = d->capents ? d->capents * 2 : 1024;
        entry *ne = realloc(d->ents, cap * sizeof(*ne));
        if (!ne)
            return -ENOMEM;
        d->ents = ne;
        d->capents = cap;
    }
    entry *e = &d->ents[d->nents];
    memset(e, 0, sizeof(*e));
    e->topic = strdup(m->topic);
    e->message_id = strdup(m->message_id);
    e->partition = m->partition;
    e->offset = m->offset;
    d->nents++;
    if (!e->topic || !e->message_id)
        return -ENOMEM;
    return msg_digest(m, e->digest);
}

static void held_free(held *h) {
    free(h->channel);
    free(h->topic);
    free(h->message_id);
    free(h->value);
    memset(h, 0, sizeof(*h));
}

static int held_set(held *h, const cv_msg *m) {
    held_free(h);
    h->channel = strdup(m->channel);
    h->topic = strdup(m->topic);
    h->message_id = strdup(m->message_id);
    h->value = malloc(m->value_len ? m->value_len : 1);
    if (!h->channel || !h->topic || !h->message_id || !h->value)
        return -ENOMEM;
    memcpy(h->value, m->value, m->value_len);
    h->value_len = m->value_len;
    h->partition = m->partition;
    h->offset = m->offset;
    h->timestamp_ms = m->timestamp_ms;
    return 0;
}

static int held_cmp(const void *a, const void *b) {
    const held *x = a, *y = b;
    int c = strcmp(x->channel, y->channel);
    if (!c)
        c = strcmp(x->topic, y->topic);
    if (!c && x->partition != y->partition)
        c = x->partition < y->partition ? -1 : 1;
    if (!c && x->offset != y->offset)
        c = x->offset < y->offset ? -1 : 1;
    return c;
}

static bool cancelled(const drill *d) {
    return d->conf->stop && atomic_load(d->conf->stop);
}

/* Whether an error says the log is damaged or cannot be decrypted: the
 * drill's verdict (failed), not a reason it could not run. */
static bool log_damage(int e) {
    return e == -CV_ECORRUPT || e == -EBADMSG || e == -ENOKEY || e == -EKEYREJECTED;
}

static int fail(drill *d, int e, const char *what) {
    snprintf(d->res->detail, sizeof(d->res->detail), "%s: %s", what,
             e == -ENOMEM ? "out of memory" : d->err);
    snprintf(d->err, d->errlen, "%s", d->res->detail);
    return e < 0 ? e : -EIO;
}

/* A log source over the drill's selection (mode LOG) or over everything
 * the scratch database holds (mode PG). */
static int open_source(drill *d, cv_src_mode mode, cv_select *all, cv_src **ret) {
    const cv_drill_conf *c = d->conf;
    cv_src_conf sc = {
        .mode = mode,
        .pg_conninfo = c->scratch_conninfo,
        .pg_conninfo_key = "the scratch database",
        .log_dirs = c->log_dirs,
        .nlog_dirs = mode == CV_SRC_LOG ? c->nlog_dirs : 0,
        .keys = c->keys,
        .topic_prefix = c->rules->topic_prefix,
        .sel = mode == CV_SRC_LOG ? c->sel : all,
    };
    return cv_src_open(&sc, ret, NULL, 0, d->err, d->errlen);
}

/* Reads the selection from the log: every message into the restore (no
 * sample), or a reservoir of them into d->pool. */
static int read_log(drill *d, cv_restore *rs) {
    const cv_drill_conf *c = d->conf;
    cv_src *src = NULL;
    int e = open_source(d, CV_SRC_LOG, NULL, &src);
    if (e < 0)
        return fail(d, e, "reading the log");
    cv_msg m;
    char last[CV_CHANNEL_MAX + 1] = "";
    while ((e = cv_src_next(src, &m, d->err, d->errlen)) == 1) {
        if (cancelled(d)) {
            snprintf(d->err, d->errlen, "cancelled");
            e = -ECANCELED;
            break;
        }
        uint64_t i = d->res->selected++;
        if (strcmp(last, m.channel) != 0) {
            snprintf(last, sizeof(last), "%s", m.channel);
            d->res->channels++;
        }
        cv_progress_update(&d->prog, d->res->selected, 0, "reading the log");
        if (!c->sample) {
            if ((e = add_entry(d, &m)) < 0 ||
                (e = cv_restore_add(rs, &m, d->err, d->errlen)) < 0)
                break;
            continue;
        }
        /* Reservoir: the first `sample` fill it, then record i replaces a
         * random one with probability sample / (i + 1). */
        uint64_t slot =
            i < c->sample
                ? i
                : randombytes_uniform((uint32_t)(i < UINT32_MAX ? i + 1 : UINT32_MAX));
        if (slot < c->sample && (e = held_set(&d->pool[slot], &m)) < 0)
            break;
        if (i < c->sample)
            d->npool++;
    }
    cv_src_free(src);
    return e < 0 ? fail(d, e, "reading the log") : 0;
}

/* The sampled messages, in channel and offset order, into the restore. */
static int restore_pool(drill *d, cv_restore *rs) {
    qsort(d->pool, d->npool, sizeof(*d->pool), held_cmp);
    for (size_t i = 0; i < d->npool; i++) {
        const held *h = &d->pool[i];
        if (cancelled(d)) {
            snprintf(d->err, d->errlen, "cancelled");
            return fail(d, -ECANCELED, "restoring");
        }
        Chatvault__V1__ChatMessage *pm = NULL;
        cv_msg m = {.from_log = true,
                    .channel = h->channel,
                    .topic = h->topic,
                    .partition = h->partition,
                    .offset = h->offset,
                    .timestamp_ms = h->timestamp_ms,
                    .persisted_at_us = -1,
                    .value = h->value,
                    .value_len = h->value_len,
                    .message_id = h->message_id};
        /* The digest wants the fields: decode the copy. */
        pm = chatvault__v1__chat_message__unpack(NULL, h->value_len, h->value);
        if (!pm)
            return fail(d, -EINVAL, "a sampled log record does not decode");
        const char **attrs =
            calloc(pm->n_attributes ? 2 * pm->n_attributes : 1, sizeof(*attrs));
        int e = attrs ? 0 : -ENOMEM;
        for (size_t k = 0; attrs && k < pm->n_attributes; k++) {
            attrs[2 * k] = pm->attributes[k]->key;
            attrs[2 * k + 1] = pm->attributes[k]->value;
        }
        m.sender_id = pm->sender_id;
        m.revision = pm->revision;
        m.deleted = pm->deleted;
        m.sent_at_us = pm->sent_at_us;
        m.content_type = pm->content_type;
        m.reply_to = pm->reply_to;
        m.body = pm->body.data;
        m.body_len = pm->body.len;
        m.attrs = attrs;
        m.nattrs = pm->n_attributes;
        if (e == 0)
            e = add_entry(d, &m);
        if (e == 0)
            e = cv_restore_add(rs, &m, d->err, d->errlen);
        free(attrs);
        chatvault__v1__chat_message__free_unpacked(pm, NULL);
        if (e < 0)
            return fail(d, e, "restoring");
        cv_progress_update(&d->prog, i + 1, d->npool, "restoring");
    }
    return 0;
}

/* Every row of the scratch database against the entries. */
static int compare(drill *d) {
    cv_select all;
    cv_select_init(&all);
    all.history = true; /* every version a sampled record became */
    if (d->nents)
        qsort(d->ents, d->nents, sizeof(*d->ents), entry_cmp);
    cv_src *src = NULL;
    int e = open_source(d, CV_SRC_PG, &all, &src);
    if (e < 0) {
        cv_select_release(&all);
        return fail(d, e, "reading the scratch database");
    }
    cv_msg m;
    uint64_t rows = 0;
    while ((e = cv_src_next(src, &m, d->err, d->errlen)) == 1) {
        entry key = {.topic = (char *)m.topic,
                     .message_id = (char *)m.message_id,
                     .partition = m.partition,
                     .offset = m.offset};
        entry *hit = d->nents
                         ? bsearch(&key, d->ents, d->nents, sizeof(*d->ents), entry_cmp)
                         : NULL;
        unsigned char dg[crypto_hash_sha256_BYTES];
        if ((e = msg_digest(&m, dg)) < 0)
            break;
        cv_progress_update(&d->prog, ++rows, d->nents, "verifying");
        if (!hit || hit->seen) {
            if (!d->res->extra++ && !d->res->detail[0])
                snprintf(d->res->detail, sizeof(d->res->detail),
                         "a row no sampled record explains: %s partition %" PRId32
                         " offset %" PRId64,
                         m.topic, m.partition, m.offset);
            continue;
        }
        hit->seen = true;
        if (memcmp(hit->digest, dg, sizeof(dg)) == 0) {
            d->res->verified++;
        } else if (!d->res->mismatched++ && !d->res->detail[0]) {
            snprintf(d->res->detail, sizeof(d->res->detail),
                     "message %s (%s partition %" PRId32 " offset %" PRId64
                     ") differs from its log record after restore",
                     m.message_id, m.topic, m.partition, m.offset);
        }
    }
    cv_src_free(src);
    cv_select_release(&all);
    if (e < 0)
        return fail(d, e, "reading the scratch database");
    const entry *first = NULL;
    for (size_t i = 0; i < d->nents; i++)
        if (!d->ents[i].seen) {
            d->res->missing++;
            first = first ? first : &d->ents[i];
        }
    /* A message id at two offsets is restored once (a duplicate), not lost. */
    if (d->res->missing > d->dups && !d->res->detail[0])
        snprintf(d->res->detail, sizeof(d->res->detail),
                 "message %s (%s partition %" PRId32 " offset %" PRId64
                 ") was not restored",
                 first->message_id, first->topic, first->partition, first->offset);
    return 0;
}

/* Drops (a leftover), creates and migrates the scratch database. */
static int scratch_fresh(drill *d) {
    const char *ci = d->conf->scratch_conninfo;
    bool created;
    int e = cv_pg_drop_database(ci, SCRATCH_MARK, d->err, d->errlen);
    if (e == 0)
        e = cv_pg_create_database(ci, SCRATCH_MARK, &created, d->err, d->errlen);
    if (e < 0)
        return fail(d, e, "the scratch database");
    PGconn *conn = cv_pg_connect(ci, d->err, d->errlen);
    int from, to;
    e = conn ? cv_pgmigrate_apply(conn, &from, &to, d->err, d->errlen) : -CV_ESTORE;
    if (conn)
        PQfinish(conn);
    return e < 0 ? fail(d, e, "the scratch database") : 0;
}

/* The drill itself, with the lock held. */
static int drill_body(drill *d) {
    const cv_drill_conf *c = d->conf;
    int e = scratch_fresh(d);
    if (e < 0)
        return e;
    cv_restore *rs = NULL;
    cv_restore_conf rc = {.conninfo = c->scratch_conninfo, .rules = c->rules};
    if ((e = cv_restore_open(&rc, &rs, d->err, d->errlen)) < 0)
        return fail(d, e, "the scratch database");
    int64_t t0 = cv_now_us();
    if (c->sample && !(d->pool = calloc(c->sample, sizeof(*d->pool))))
        e = fail(d, -ENOMEM, "sampling");
    if (e == 0)
        e = read_log(d, rs);
    if (e == 0 && c->sample)
        e = restore_pool(d, rs);
    if (e == 0 && (e = cv_restore_flush(rs, d->err, d->errlen)) < 0)
        e = fail(d, e, "restoring");
    const cv_restore_stats *st = cv_restore_get_stats(rs);
    d->res->sampled = st->restored + st->present;
    d->dups = st->duplicates;
    uint64_t invalid = st->invalid;
    cv_restore_free(rs);
    int64_t t1 = cv_now_us();
    d->res->restore_s = (double)(t1 - t0) / 1e6;
    if (e == 0)
        e = compare(d);
    d->res->verify_s = (double)(cv_now_us() - t1) / 1e6;
    cv_drill_result *r = d->res;
    if (log_damage(e)) {
        r->passed = false; /* the backup does not restore: detail says where */
        return 0;
    }
    if (e < 0)
        return e;
    if (!r->selected && !r->detail[0])
        snprintf(r->detail, sizeof(r->detail),
                 "nothing to restore: the log holds no message of the selection");
    else if (invalid && !r->detail[0])
        snprintf(r->detail, sizeof(r->detail),
                 "%" PRIu64 " sampled log records are not valid messages", invalid);
    /* A record of a message id another record stored first is a duplicate
     * (acked DUPLICATE when it came), not a row that went missing. */
    r->missing -= r->missing < d->dups ? r->missing : d->dups;
    r->passed = r->selected && !invalid && !r->mismatched && !r->extra && !r->missing &&
                r->verified == r->sampled;
    if (r->passed)
        r->detail[0] = '\0';
    else if (!r->detail[0])
        snprintf(r->detail, sizeof(r->detail),
                 "%" PRIu64 " restored of %" PRIu64 " sampled verified", r->verified,
                 r->sampled);
    return 0;
}

static void record(drill *d, PGconn *live) {
    const cv_drill_conf *c = d->conf;
    cv_drill_result *r = d->res;
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    cv_drill_row row = {
        .started_us = r->started_us,
        .trigger = c->trigger,
        .host = host,
        .passed = r->passed,
        .scope = c->scope,
        .selected = r->selected,
        .sampled = r->sampled,
        .verified = r->verified,
        .mismatched = r->mismatched,
        .missing = r->missing,
        .restore_s = r->restore_s,
        .verify_s = r->verify_s,
        .detail = r->detail,
    };
    char err[512];
    if (cv_pgdrill_append(live, &row, err, sizeof(err)) == 0)
        r->recorded = true;
    else
        cv_log(CV_LOG_WARN, "drill outcome not recorded", "error=\"%s\"", err);
}

int cv_drill_scratch_conninfo(const char *live_conninfo, const char *name, char *out,
                              size_t outlen, char *errbuf, size_t errlen) {
    char db[256], own[300];
    if (!name || !*name) {
        int e = cv_pg_conninfo_db(live_conninfo, db, sizeof(db), errbuf, errlen);
        if (e < 0)
            return e;
        snprintf(own, sizeof(own), "%s_drill", db);
        name = own;
    }
    return cv_pg_conninfo_with_db(live_conninfo, name, out, outlen, errbuf, errlen);
}

int cv_drill_run(const cv_drill_conf *conf, cv_drill_result *res, char *errbuf,
                 size_t errlen) {
    memset(res, 0, sizeof(*res));
    res->started_us = cv_now_us();
    drill d = {.conf = conf, .res = res, .err = errbuf, .errlen = errlen};
    char scratch_db[256];
    if (conf->sample > SAMPLE_MAX) {
        snprintf(errbuf, errlen, "a sample is at most %d messages", SAMPLE_MAX);
        return -EINVAL;
    }
    if (cv_pg_conninfo_db(conf->scratch_conninfo, scratch_db, sizeof(scratch_db), errbuf,
                          errlen) < 0)
        return -EINVAL;
    PGconn *live = cv_pg_connect(conf->live_conninfo, errbuf, errlen);
    if (!live)
        return -CV_ESTORE;
    /* Which database is live, as its server says (a service file or the
     * environment may name it; the conninfo need not). */
    PGresult *q = PQexec(
        live, "SELECT current_database(), pg_try_advisory_lock(" DRILL_LOCK_KEY ")");
    int e = 0;
    if (PQresultStatus(q) != PGRES_TUPLES_OK) {
        snprintf(errbuf, errlen, "postgres: %s", PQresultErrorMessage(q));
        cv_one_line(errbuf);
        e = -CV_ESTORE;
    } else if (strcmp(PQgetvalue(q, 0, 0), scratch_db) == 0) {
        snprintf(errbuf, errlen,
                 "the scratch database %s is the live one: a drill drops and "
                 "recreates it, so it must be another (drill.database, --database)",
                 scratch_db);
        e = -EINVAL;
    } else if (strcmp(PQgetvalue(q, 0, 1), "t") != 0) {
        snprintf(errbuf, errlen,
                 "another restore drill of database %s is running (one at a time)",
                 PQgetvalue(q, 0, 0));
        e = -EBUSY;
    }
    PQclear(q);
    if (e < 0) {
        PQfinish(live);
        return e;
    }
    cv_progress_init(&d.prog, "drill", conf->progress);
    e = drill_body(&d);
    cv_progress_end(&d.prog);
    if (!conf->keep && e != -EPERM) {
        char ignore[512];
        if (cv_pg_drop_database(conf->scratch_conninfo, SCRATCH_MARK, ignore,
                                sizeof(ignore)) < 0)
            cv_log(CV_LOG_WARN, "scratch database not dropped", "error=\"%s\"", ignore);
    }
    /* Not recorded: a drill cancelled by a stopping broker, or refused a
     * scratch database (a configuration error), proves nothing either way;
     * nor does an operator's drill of a selection that holds nothing (a
     * typo must not turn the dashboard red; a scheduled one is recorded). */
    bool typo = e == 0 && !res->selected && strcmp(conf->trigger, "command") == 0;
    if (e != -ECANCELED && e != -EPERM && !typo)
        record(&d, live);
    PQfinish(live);
    for (size_t i = 0; i < d.nents; i++) {
        free(d.ents[i].topic);
        free(d.ents[i].message_id);
    }
    free(d.ents);
    for (size_t i = 0; d.pool && i < conf->sample; i++)
        held_free(&d.pool[i]);
    free(d.pool);
    return e;
}
