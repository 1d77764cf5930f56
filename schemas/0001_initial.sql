-- chatvault schema, version 1.
--
-- Every query chatvault runs against messages filters or groups by channel,
-- and every unique key on it starts with channel, so the table can be
-- partitioned by hash of channel (or distributed on channel by Citus)
-- without changing the code.

CREATE SCHEMA IF NOT EXISTS chatvault;

-- Identifiers compare byte-wise (COLLATE "C"): they are names, not prose,
-- and the database's locale collation made every key comparison of the
-- insert path go through strcoll (measured: ~20% of the insert cost).
CREATE TABLE chatvault.messages (
    channel          text COLLATE "C" NOT NULL,
    message_id       text COLLATE "C" NOT NULL,
    kafka_topic      text COLLATE "C" NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    kafka_timestamp  timestamptz,
    sender_id        text        NOT NULL DEFAULT '',
    sent_at_us       bigint      NOT NULL DEFAULT 0,
    body             bytea       NOT NULL,
    content_type     text        NOT NULL DEFAULT '',
    attributes       jsonb       NOT NULL DEFAULT '{}',
    reply_to         text        NOT NULL DEFAULT '',
    persisted_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (channel, message_id)
);

-- replay / verify by Kafka coordinates, streamed in log order.
CREATE INDEX messages_coordinates_idx
    ON chatvault.messages (channel, kafka_partition, kafka_offset);
-- replay --since/--until. Rows arrive roughly in time order, so a BRIN index
-- (a few pages) narrows a time range almost as well as a B-tree at a
-- fraction of its insert cost; the channel condition filters the blocks.
CREATE INDEX messages_sent_at_brin
    ON chatvault.messages USING brin (sent_at_us);
CREATE INDEX messages_persisted_at_brin
    ON chatvault.messages USING brin (persisted_at);

-- Next offset to consume per consumer group and partition; written in the
-- same transaction as the rows, so it is never ahead of what is stored.
CREATE TABLE chatvault.kafka_offsets (
    consumer_group   text        NOT NULL,
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    next_offset      bigint      NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);

-- Records that were not accepted, with their original bytes.
CREATE TABLE chatvault.rejected (
    kafka_topic      text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    channel          text,
    message_id       text,
    reason           text        NOT NULL,
    error            text        NOT NULL,
    raw              bytea,
    rejected_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset)
);
CREATE INDEX rejected_at_idx ON chatvault.rejected (rejected_at);
