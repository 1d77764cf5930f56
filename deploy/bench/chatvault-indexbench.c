/*
 * chatvault-indexbench — the broker's search indexer alone: runs its
 * passes (consumer/pg/pgsearch.h, cv_pgsearch_index_pass, with the short
 * margin of broker/daemon/indexer.c) back to back on CONNINFO until a pass
 * finds nothing, and prints how many rows it indexed and how fast. This is
 * the indexer catching up, after an outage or under a backlog; the pass
 * reads the persisted_at range past the watermark, so the caller sets the
 * watermark back and deletes the documents to re-index first
 * (deploy/bench/search.sh does).
 *
 *   chatvault-indexbench CONNINFO [LANGUAGE]
 *
 * The last line is machine-readable: `RESULT rows=N seconds=S rows_per_s=R`.
 */
#include <inttypes.h>
#include <stdio.h>

#include "pg/pgmigrate.h"
#include "pg/pgsearch.h"
#include "util.h"

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: chatvault-indexbench CONNINFO [LANGUAGE]\n");
        return 2;
    }
    char err[512];
    PGconn *conn = cv_pg_connect(argv[1], err, sizeof(err));
    if (!conn) {
        fprintf(stderr, "chatvault-indexbench: %s\n", err);
        return 1;
    }
    const char *lang = argc == 3 ? argv[2] : "simple";
    uint64_t rows = 0, passes = 0;
    int64_t t0 = cv_mono_us();
    for (;;) {
        cv_pgsearch_pass p;
        if (cv_pgsearch_index_pass(conn, lang, INT64_C(2000000), 5000, &p, err,
                                   sizeof(err)) < 0) {
            fprintf(stderr, "chatvault-indexbench: %s\n", err);
            PQfinish(conn);
            return 1;
        }
        passes++;
        rows += p.read;
        if (!p.read)
            break;
    }
    double s = (double)(cv_mono_us() - t0) / 1e6;
    PQfinish(conn);
    printf("RESULT rows=%" PRIu64 " passes=%" PRIu64 " seconds=%.2f rows_per_s=%.0f\n",
           rows, passes, s, s > 0 ? (double)rows / s : 0.0);
    return 0;
}
