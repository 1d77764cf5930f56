/*
 * indexer — see indexer.h.
 *
 * Which rows a pass reads. Every row of chatvault.messages carries
 * persisted_at = clock_timestamp() of its INSERT, taken inside the batch's
 * transaction, which commits a little later (d, the row's commit delay). A
 * pass reads the rows with persisted_at later than the watermark (the
 * latest persisted_at indexed so far, in chatvault.search_state, shared by
 * every broker instance) minus a margin M, that search_docs lacks, and
 * moves the watermark to the latest persisted_at it read. The watermark
 * a pass starts from is never later than the pass's own start t: every
 * persisted_at was taken on the server's clock before the snapshot that
 * saw it. A row R inserted at p and committed at c = p + d is therefore
 * read by any pass that starts after c with t - M < p, i.e. t < c + M - d.
 *
 * Most passes use a short margin (SHORT_MARGIN, 2 s): a batch's
 * transaction (a COPY, or an INSERT … SELECT from a staged one, then
 * COMMIT) takes milliseconds, so the next pass indexes what several
 * writers (broker instances, import, verify --repair) interleave. One pass every
 * LONG_EVERY (30 s) uses MARGIN (90 s); the first one after c starts before
 * c + LONG_EVERY (plus a pass), so R is indexed, at the latest by it,
 * whenever d < MARGIN - LONG_EVERY = 60 s. Only a transaction that commits
 * more than a minute after inserting its rows (a server frozen mid COMMIT,
 * say), or the server's clock stepping back by as much, can leave rows
 * unindexed; `chatvault search --reindex` finds them, and `chatvault search
 * --status` shows the watermark.
 *
 * Reading a margin's worth of rows again costs a primary-key probe of
 * search_docs per row (the query skips, in the server, rows already
 * indexed; the INSERT is ON CONFLICT DO NOTHING for the rest, so a pass is
 * idempotent): about SHORT_MARGIN / interval + MARGIN / LONG_EVERY = 5
 * probes per row at the default interval, where one margin of 90 s on
 * every pass would cost 90.
 */
#include "daemon/indexer.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "pg/pgmigrate.h"
#include "pg/pgsearch.h"
#include "util.h"

#define MARGIN_US INT64_C(90000000)
#define SHORT_MARGIN_US INT64_C(2000000)
#define LONG_EVERY_MS 30000
#define PASS_ROWS 5000
#define WARN_EVERY_MS 60000

struct cv_indexer {
    cv_indexer_conf conf;
    char *conninfo, *language;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
    PGcancel *cancel; /* of the connection in use, under lock */
};

/* A failure, logged at its start and then once a minute while it lasts. */
typedef struct outage {
    int64_t since_ms, last_log_ms;
    uint64_t failures;
} outage;

static void outage_fail(outage *o, const char *what, const char *err) {
    int64_t now = cv_mono_ms();
    if (!o->failures++)
        o->since_ms = now;
    if (o->failures == 1 || now - o->last_log_ms >= WARN_EVERY_MS) {
        o->last_log_ms = now;
        cv_log(CV_LOG_WARN, "search indexer: postgres unavailable, retrying",
               "what=\"%s\" failures=%" PRIu64 " error=\"%s\"", what, o->failures, err);
    }
}

static void outage_ok(outage *o) {
    if (o->failures)
        cv_log(CV_LOG_INFO, "search indexer: postgres reachable again",
               "after_s=%" PRId64 " failures=%" PRIu64,
               (cv_mono_ms() - o->since_ms) / 1000, o->failures);
    o->failures = 0;
}

/* Waits MS or until stopped; true when stopped. Called with the lock. */
static bool wait_ms(cv_indexer *ix, int64_t ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000)
        ts.tv_sec++, ts.tv_nsec -= 1000000000;
    while (!ix->stop)
        if (pthread_cond_timedwait(&ix->cond, &ix->lock, &ts) == ETIMEDOUT)
            break;
    return ix->stop;
}

static void set_conn(cv_indexer *ix, PGconn *conn) {
    pthread_mutex_lock(&ix->lock);
    if (ix->cancel)
        PQfreeCancel(ix->cancel);
    ix->cancel = conn ? PQgetCancel(conn) : NULL;
    pthread_mutex_unlock(&ix->lock);
}

static void *run(void *arg) {
    cv_indexer *ix = arg;
    pthread_setname_np(pthread_self(), "cv-indexer");
    PGconn *conn = NULL;
    outage o = {0};
    bool caught_up = false;
    uint64_t total = 0;
    int64_t last_long_ms = 0; /* the first pass takes the long margin */
    char err[512];
    for (;;) {
        pthread_mutex_lock(&ix->lock);
        bool stop = ix->stop;
        pthread_mutex_unlock(&ix->lock);
        if (stop)
            break;
        int64_t wait = ix->conf.interval_ms;
        if (!conn) {
            conn = cv_pg_connect_timeout(ix->conninfo, 10, err, sizeof(err));
            if (conn) {
                /* Nothing of a pass may wait long on the server. */
                PGresult *res = PQexec(conn, "SET statement_timeout = '60s'");
                PQclear(res);
                set_conn(ix, conn);
            } else {
                outage_fail(&o, "connecting", err);
            }
        }
        if (conn) {
            cv_pgsearch_pass pass;
            int64_t t0 = cv_mono_us();
            bool long_pass = !last_long_ms || t0 / 1000 - last_long_ms >= LONG_EVERY_MS;
            int r = cv_pgsearch_index_pass(conn, ix->language,
                                           long_pass ? MARGIN_US : SHORT_MARGIN_US,
                                           PASS_ROWS, &pass, err, sizeof(err));
            if (r == 0 && long_pass && pass.read < PASS_ROWS)
                last_long_ms = t0 / 1000;
            if (r < 0) {
                pthread_mutex_lock(&ix->lock);
                stop = ix->stop;
                pthread_mutex_unlock(&ix->lock);
                if (stop)
                    break; /* cancelled by cv_indexer_stop */
                outage_fail(&o, "indexing", err);
                if (PQstatus(conn) != CONNECTION_OK) {
                    set_conn(ix, NULL);
                    PQfinish(conn);
                    conn = NULL;
                }
            } else {
                outage_ok(&o);
                total += pass.read;
                if (pass.read)
                    cv_log(CV_LOG_DEBUG, "search indexer pass",
                           "rows=%zu text=%zu ms=%.1f lag_ms=%" PRId64, pass.read,
                           pass.text, (double)(cv_mono_us() - t0) / 1000,
                           (cv_now_us() - pass.watermark_us) / 1000);
                /* A full pass: more is waiting. Go on after as long as the
                 * pass took, so that catching up (after an outage, under a
                 * burst) takes at most half of one PostgreSQL backend from
                 * the machine the ack path runs on; a tenth while the ack
                 * path is saturated. */
                if (pass.read == PASS_ROWS) {
                    wait = (cv_mono_us() - t0) / 1000;
                    if (ix->conf.busy && ix->conf.busy(ix->conf.busy_opaque))
                        wait *= 9;
                } else if (!caught_up) {
                    caught_up = true;
                    cv_log(CV_LOG_INFO, "search indexer caught up",
                           "indexed=%" PRIu64 " interval_ms=%" PRId64, total,
                           ix->conf.interval_ms);
                }
            }
        }
        pthread_mutex_lock(&ix->lock);
        stop = wait > 0 ? wait_ms(ix, wait) : ix->stop;
        pthread_mutex_unlock(&ix->lock);
        if (stop)
            break;
    }
    set_conn(ix, NULL);
    if (conn)
        PQfinish(conn);
    return NULL;
}

int cv_indexer_start(const cv_indexer_conf *conf, cv_indexer **ret, char *errbuf,
                     size_t errlen) {
    cv_indexer *ix = calloc(1, sizeof(*ix));
    if (!ix || !(ix->conninfo = strdup(conf->conninfo)) ||
        !(ix->language = strdup(conf->language))) {
        if (ix) {
            free(ix->conninfo);
            free(ix);
        }
        cv_errf(errbuf, errlen, "search indexer: out of memory");
        return -ENOMEM;
    }
    ix->conf = *conf;
    pthread_mutex_init(&ix->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ix->cond, &ca);
    pthread_condattr_destroy(&ca);
    int r = pthread_create(&ix->thread, NULL, run, ix);
    if (r != 0) {
        pthread_mutex_destroy(&ix->lock);
        pthread_cond_destroy(&ix->cond);
        free(ix->language);
        free(ix->conninfo);
        free(ix);
        cv_errf(errbuf, errlen, "search indexer: cannot start its thread: %s",
                strerror(r));
        return -r;
    }
    *ret = ix;
    return 0;
}

cv_indexer *cv_indexer_stop(cv_indexer *ix) {
    if (!ix)
        return NULL;
    pthread_mutex_lock(&ix->lock);
    ix->stop = true;
    if (ix->cancel) {
        char buf[256];
        PQcancel(ix->cancel, buf, sizeof(buf));
    }
    pthread_cond_broadcast(&ix->cond);
    pthread_mutex_unlock(&ix->lock);
    pthread_join(ix->thread, NULL);
    pthread_mutex_destroy(&ix->lock);
    pthread_cond_destroy(&ix->cond);
    free(ix->language);
    free(ix->conninfo);
    free(ix);
    return NULL;
}
