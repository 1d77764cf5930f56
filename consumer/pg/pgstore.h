/*
 * pgstore — the PostgreSQL store. One batch is one transaction: the valid
 * records become rows of chatvault.messages (idempotent on (channel,
 * message_id)), rejected records become rows of chatvault.rejected, and
 * chatvault.kafka_offsets advances for every partition in the batch. Either
 * all of a transaction commits or none of it does, and a partition's rows
 * and offset are always in the same transaction.
 */
#ifndef CV_PGSTORE_H
#define CV_PGSTORE_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>

#include "record.h"

typedef struct cv_pgstore cv_pgstore;

#define CV_PGSTORE_MAX_CONNECTIONS 16

/* Connects and checks the schema version. `group` is the consumer group
 * whose offsets this store keeps. With `connections` > 1 (up to
 * CV_PGSTORE_MAX_CONNECTIONS; postgres.connections) a large batch is
 * spread by topic over that many connections, written in parallel: a
 * transaction each, so a server with a core to spare stores more per
 * second. The extra connections are made when first needed. */
int cv_pgstore_open(const char *conninfo, const char *group, unsigned connections,
                    cv_pgstore **ret_store, char *errbuf, size_t errlen);
cv_pgstore *cv_pgstore_free(cv_pgstore *store);

/* Writes the batch in one transaction per connection it is spread over
 * (one, unless the store has more connections and the batch is large).
 * On success every valid record has
 * status PERSISTED (its row is stored; also when a re-delivered record finds
 * its own row) or DUPLICATE (another record stored that message id first),
 * CV_STORE_PG in stores, and persisted_at_us set to the commit time.
 * `next_offsets` holds, per partition of the batch, the offset after its last
 * record; chatvault.kafka_offsets is set to it in the same transaction.
 * On failure the records are as they were; a share on another connection
 * may have committed, and writing the batch again finds those rows its own
 * (PERSISTED). A broken connection is re-established on the next call. */
int cv_pgstore_write(cv_pgstore *store, cv_rec *recs, size_t n,
                     const rd_kafka_topic_partition_list_t *next_offsets, char *errbuf,
                     size_t errlen);

/* For each partition of `parts`, sets .offset to the next offset that
 * chatvault.kafka_offsets holds for it, or RD_KAFKA_OFFSET_INVALID when it
 * holds none. */
int cv_pgstore_read_offsets(cv_pgstore *store, rd_kafka_topic_partition_list_t *parts,
                            char *errbuf, size_t errlen);

/* Whether the connection is up (without a round trip). */
bool cv_pgstore_connected(const cv_pgstore *store);

#endif
