/*
 * pgreport — the queries behind `chatvault report`: activity per channel and
 * overall, read from the rollup tables of schemas/0004_reports.sql (never a
 * scan of chatvault.messages), in one read-only snapshot.
 *
 * The result is one JSON document (jansson), which the command prints as
 * JSON or renders as a table, CSV or HTML:
 *
 *   {"format":"chatvault-report-1", "generated_at_ms":…,
 *    "since_ms":…, "until_ms":…,          the range, whole hours (UTC)
 *    "step":"hour"|"day",                 the volume series' step
 *    "size_buckets":[{"lt":64},…,{"lt":null}],       bytes, upper bound
 *    "latency_buckets_ms":[{"lt":1},…,{"lt":null}],  ms, upper bound
 *    "overall":SECTION, "channels":[SECTION, …] (by name)}
 *
 *   SECTION = {"channel":name|null, "messages":n, "bytes":n,
 *    "distinct_senders":n, "duplicates":n, "replayed":n, "rejected":n,
 *    "rejected_by_reason":{"reason":n,…},
 *    "volume":[{"t_ms":start, "messages":n, "bytes":n},…] (non-empty steps),
 *    "top_senders":[{"sender_id":s, "messages":n},…],
 *    "peak_minutes":[{"t_ms":start, "messages":n},…],
 *    "sizes":[n per size bucket],
 *    "latency":{"count":n, "buckets":[n per latency bucket],
 *               "p50_ms":x, "p90_ms":x, "p99_ms":x}}
 *
 * A percentile is the upper bound of the bucket it falls in (so "p99 < x"),
 * the last bucket's lower bound (3600000) when it falls there, null without
 * data. A reject whose channel could not be read has channel "" and counts
 * only when no channel is selected.
 */
#ifndef CV_PGREPORT_H
#define CV_PGREPORT_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#define CV_PGREPORT_SIZE_BUCKETS 9
#define CV_PGREPORT_LATENCY_BUCKETS 18

/* Upper bounds of the buckets but the last (bytes; milliseconds). */
extern const int64_t cv_pgreport_size_bounds[CV_PGREPORT_SIZE_BUCKETS - 1];
extern const int64_t cv_pgreport_latency_bounds_ms[CV_PGREPORT_LATENCY_BUCKETS - 1];

typedef struct cv_pgreport_query {
    const char *const *channels; /* names or shell patterns; none: every channel */
    size_t nchannels;
    int64_t since_us, until_us; /* [since, until); rounded out to whole hours */
    int top;                    /* entries of top_senders and peak_minutes */
} cv_pgreport_query;

/* Builds the report. On success *ret_doc is a new reference the caller
 * json_decref()s. On failure returns -CV_ESTORE (or -ENOMEM) with errbuf set
 * and leaves *ret_doc alone. */
int cv_pgreport_build(PGconn *conn, const cv_pgreport_query *q, json_t **ret_doc,
                      char *errbuf, size_t errlen);

#endif
