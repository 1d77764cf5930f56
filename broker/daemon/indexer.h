/*
 * indexer — the search indexer of `chatvault broker` (search.index = on):
 * a thread with its own PostgreSQL connection that, every
 * search.index_interval_ms, copies what the pipeline stored since its last
 * pass into chatvault.search_docs (consumer/pg/pgsearch.h). It is off the
 * ack path: the pipeline never waits for it, it never holds a lock a
 * batch needs (it only reads chatvault.messages), and while it catches up
 * it rests as long as each pass took, so it takes at most half of one
 * PostgreSQL backend; while the ack path is saturated (`busy`) it rests
 * nine times as long, a tenth of a backend: on a server with few cores
 * the store's COPY needs the CPU more than search needs to be current.
 * When PostgreSQL is away it
 * logs a warning (then one a minute while it lasts) and tries again every
 * interval; what was stored meanwhile is indexed when it is back.
 */
#ifndef CV_INDEXER_H
#define CV_INDEXER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cv_indexer cv_indexer;

typedef struct cv_indexer_conf {
    const char *conninfo; /* the writer's: postgres.conninfo */
    const char *language; /* search.language */
    int64_t interval_ms;  /* search.index_interval_ms */
    /* Whether the ack path is saturated now; NULL: never. Called from the
     * indexer's thread. */
    bool (*busy)(void *opaque);
    void *busy_opaque;
} cv_indexer_conf;

/* Starts the thread (it connects on its own; a PostgreSQL that is down is
 * not an error here). Returns 0 or a negative errno with errbuf set. */
int cv_indexer_start(const cv_indexer_conf *conf, cv_indexer **ret, char *errbuf,
                     size_t errlen);

/* Stops the thread (a pass in flight is cancelled: it is one transaction,
 * so nothing half-done stays) and frees. Accepts NULL; returns NULL. */
cv_indexer *cv_indexer_stop(cv_indexer *ix);

#endif
