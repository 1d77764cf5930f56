/*
 * restore — see restore.h.
 */
#include "restore.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "chatvault.pb-c.h"
#include "pg/pgmigrate.h"
#include "pg/pgstore.h"
#include "pg/pgverify.h"
#include "record.h"
#include "util.h"

#define BATCH 2000                      /* messages per transaction */
#define ARENA_LIMIT ((size_t)256 << 20) /* decoded messages of one batch */

struct cv_restore {
    cv_restore_conf conf;
    cv_pgstore *store; /* NULL in a dry run */
    PGconn *conn;      /* for what the target holds; NULL: nothing */
    cv_arena *arena;
    char channel[CV_CHANNEL_MAX + 1];
    size_t n;
    cv_rec recs[BATCH];
    const char *ids[BATCH];
    uint32_t revs[BATCH];
    bool held[BATCH];
    cv_restore_stats st;
};

int cv_restore_open(const cv_restore_conf *conf, cv_restore **ret, char *errbuf,
                    size_t errlen) {
    cv_restore *r = calloc(1, sizeof(*r));
    if (!r || !(r->arena = cv_arena_new(ARENA_LIMIT))) {
        free(r);
        snprintf(errbuf, errlen, "out of memory");
        return -ENOMEM;
    }
    r->conf = *conf;
    int e = 0;
    if (conf->conninfo) {
        if (!(r->conn = cv_pg_connect(conf->conninfo, errbuf, errlen)))
            e = -CV_ESTORE;
        else
            e = cv_pgmigrate_check(r->conn, errbuf, errlen);
    }
    if (e == 0 && !conf->dry_run)
        e = cv_pgstore_open(conf->conninfo, "chatvault-restore", 1, &r->store, errbuf,
                            errlen);
    if (e < 0) {
        cv_restore_free(r);
        return e;
    }
    *ret = r;
    return 0;
}

int cv_restore_flush(cv_restore *r, char *errbuf, size_t errlen) {
    if (!r->n)
        return 0;
    int e = 0;
    for (size_t i = 0; i < r->n; i++) {
        r->ids[i] = cv_envelope_message_id(&r->recs[i].env);
        r->revs[i] = r->recs[i].env.msg ? r->recs[i].env.msg->revision : 0;
        r->held[i] = false;
    }
    if (r->conn)
        e = cv_pgverify_held_ids(r->conn, r->channel, r->ids, r->revs, r->n, r->held,
                                 errbuf, errlen);
    if (e < 0)
        return e;
    /* Only what the target lacks is written: a version it holds (in
     * messages or in message_versions) is left as it is. */
    size_t w = 0;
    for (size_t i = 0; i < r->n; i++) {
        if (r->held[i])
            r->st.present++;
        else if (w++ != i)
            r->recs[w - 1] = r->recs[i];
    }
    if (w && r->store) {
        rd_kafka_topic_partition_list_t *none = rd_kafka_topic_partition_list_new(0);
        e = none ? cv_pgstore_write(r->store, r->recs, w, none, errbuf, errlen) : -ENOMEM;
        if (none)
            rd_kafka_topic_partition_list_destroy(none);
    }
    if (e == -ENOMEM)
        snprintf(errbuf, errlen, "out of memory");
    if (e < 0)
        return e;
    for (size_t i = 0; i < w; i++) {
        if (r->store && r->recs[i].status != CHATVAULT__V1__ACK_STATUS__PERSISTED)
            r->st.duplicates++;
        else
            r->st.restored++;
    }
    r->n = 0;
    cv_arena_reset(r->arena);
    return 0;
}

int cv_restore_add(cv_restore *r, const cv_msg *m, char *errbuf, size_t errlen) {
    int e;
    if (r->n && (r->n == BATCH || strcmp(r->channel, m->channel) != 0) &&
        (e = cv_restore_flush(r, errbuf, errlen)) < 0)
        return e;
    r->st.messages++;
    snprintf(r->channel, sizeof(r->channel), "%s", m->channel);
    for (int attempt = 0; attempt < 2; attempt++) {
        cv_rec *x = &r->recs[r->n];
        memset(x, 0, sizeof(*x));
        char *topic = cv_arena_alloc(r->arena, strlen(m->topic) + 1);
        void *value = cv_arena_alloc(r->arena, m->value_len ? m->value_len : 1);
        if (topic && value) {
            strcpy(topic, m->topic);
            memcpy(value, m->value, m->value_len);
            x->topic = topic;
            x->partition = m->partition;
            x->offset = m->offset;
            x->timestamp_ms = m->timestamp_ms;
            e = cv_envelope_decode(r->conf.rules, topic, value, m->value_len, r->arena,
                                   &x->env);
        } else {
            e = -ENOMEM;
        }
        if (e == -ENOMEM && attempt == 0 && r->n) {
            /* The arena is full: write what it holds, then take this one. */
            if ((e = cv_restore_flush(r, errbuf, errlen)) < 0)
                return e;
            continue;
        }
        if (e == -ENOMEM) {
            snprintf(errbuf, errlen, "message %s of channel %s: out of memory",
                     m->message_id, m->channel);
            return e;
        }
        if (e < 0) {
            if (!r->st.invalid++)
                cv_log(CV_LOG_WARN, "log record not restored",
                       "topic=%s partition=%d offset=%lld error=\"%s\"", m->topic,
                       (int)m->partition, (long long)m->offset, x->env.error);
            return 0;
        }
        r->n++;
        return 0;
    }
    return 0;
}

const cv_restore_stats *cv_restore_get_stats(const cv_restore *r) {
    return &r->st;
}

cv_restore *cv_restore_free(cv_restore *r) {
    if (r) {
        cv_pgstore_free(r->store);
        if (r->conn)
            PQfinish(r->conn);
        cv_arena_free(r->arena);
        free(r);
    }
    return NULL;
}
