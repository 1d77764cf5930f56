-- chatvault schema, version 4: rollups for `chatvault report`.
--
-- Reports read these tables, never chatvault.messages: a week's report costs
-- a few thousand rollup rows whatever the archive holds. They are kept up to
-- date inside PostgreSQL by statement-level AFTER INSERT triggers with
-- transition tables. The broker's batch is one INSERT … ON CONFLICT DO
-- NOTHING, so a transition table holds only the rows that statement really
-- inserted: a re-delivered batch, a replayed message or a re-sent message id
-- inserts nothing and counts nothing. A batch adds one upsert per rollup
-- (a handful of rows each), not work per message. Rows deleted later (by an
-- admin) stay counted: a report says what was received.
--
-- Time. A message counts in the hour (and minute) of its sent_at, UTC (the
-- sender's clock: a report of "messages per hour" is about the chat), or of
-- persisted_at when the sender left sent_at 0. A reject counts in the hour it
-- was rejected. Hours and minutes are timestamptz at their start.
--
-- Buckets, fixed (chatvault report prints them):
--   body size, bytes:   <64, <256, <1Ki, <4Ki, <16Ki, <64Ki, <256Ki, <1Mi, ≥1Mi
--                       (buckets 0..8)
--   store latency, ms:  <1, <2, <5, <10, <20, <50, <100, <200, <500, <1000,
--                       <2000, <5000, <10000, <30000, <60000, <300000,
--                       <3600000, ≥3600000 (buckets 0..17; 1-2-5 steps)
--   Store latency is persisted_at − sent_at: from the sender's clock to the
--   row's insert, which the COMMIT and the ack follow right after. Messages
--   without a sent_at are not in it; a negative one (the sender's clock ahead)
--   is in bucket 0.
--
-- Duplicates are not rows of chatvault.messages. chatvault.duplicates holds
-- one row per Kafka record the broker acked DUPLICATE (a message id the
-- archive already held, re-sent with other content or at another offset),
-- keyed by the record's coordinates, so Kafka re-delivering that record after
-- a crash does not count it again; `replayed` marks records that carry
-- `chatvault replay`'s header. consumer/pg/pgstore.c writes them, one INSERT
-- per batch that had any.
--
-- Rollups of minutes are kept, like the rest: one row per active channel
-- and minute, at most 1440 a day per channel, a few MB a year for a busy
-- one. Retention of the rollups, if ever needed, is a DELETE by hour.

-- fillfactor 50: a rollup row is updated by every batch of its hour; room
-- on its page lets the update be HOT (no new index entry), measured to
-- take a third off the trigger's cost.
CREATE TABLE chatvault.report_hourly (
    channel   text COLLATE "C" NOT NULL,
    hour      timestamptz NOT NULL,
    messages  bigint      NOT NULL,
    bytes     bigint      NOT NULL,
    PRIMARY KEY (channel, hour)
) WITH (fillfactor = 50);
CREATE TABLE chatvault.report_senders (
    channel   text COLLATE "C" NOT NULL,
    hour      timestamptz NOT NULL,
    sender_id text COLLATE "C" NOT NULL,
    messages  bigint      NOT NULL,
    PRIMARY KEY (channel, hour, sender_id)
) WITH (fillfactor = 50);
CREATE TABLE chatvault.report_minutes (
    channel   text COLLATE "C" NOT NULL,
    minute    timestamptz NOT NULL,
    messages  bigint      NOT NULL,
    PRIMARY KEY (channel, minute)
) WITH (fillfactor = 50);
CREATE TABLE chatvault.report_sizes (
    channel   text COLLATE "C" NOT NULL,
    hour      timestamptz NOT NULL,
    bucket    smallint    NOT NULL,
    messages  bigint      NOT NULL,
    PRIMARY KEY (channel, hour, bucket)
) WITH (fillfactor = 50);
CREATE TABLE chatvault.report_latency (
    channel   text COLLATE "C" NOT NULL,
    hour      timestamptz NOT NULL,
    bucket    smallint    NOT NULL,
    messages  bigint      NOT NULL,
    PRIMARY KEY (channel, hour, bucket)
) WITH (fillfactor = 50);
-- channel '' : a record whose channel could not be read.
CREATE TABLE chatvault.report_rejected (
    channel   text COLLATE "C" NOT NULL,
    hour      timestamptz NOT NULL,
    reason    text COLLATE "C" NOT NULL,
    rejected  bigint      NOT NULL,
    PRIMARY KEY (channel, hour, reason)
) WITH (fillfactor = 50);
CREATE TABLE chatvault.report_duplicates (
    channel    text COLLATE "C" NOT NULL,
    hour       timestamptz NOT NULL,
    duplicates bigint      NOT NULL, -- re-sent by a sender
    replayed   bigint      NOT NULL, -- re-sent by chatvault replay
    PRIMARY KEY (channel, hour)
) WITH (fillfactor = 50);
CREATE TABLE chatvault.duplicates (
    kafka_topic      text COLLATE "C" NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    channel          text COLLATE "C" NOT NULL,
    message_id       text COLLATE "C" NOT NULL,
    sent_at_us       bigint      NOT NULL,
    replayed         boolean     NOT NULL,
    seen_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset)
);

-- Helpers, inlined by the planner into the statements that use them (SQL,
-- IMMUTABLE, no SET clause: a SET would make each call a function call of
-- its own, measured to double the trigger's cost); their bodies name
-- pg_catalog explicitly instead.
-- The hour/minute a message counts in (see Time above), as Unix µs.
-- STABLE, not IMMUTABLE: date_part of a timestamptz is STABLE, and a SQL
-- function declared stricter than its body is not inlined.
CREATE FUNCTION chatvault.report_time_us(sent_at_us bigint, persisted_at timestamptz)
RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN sent_at_us > 0 THEN sent_at_us
                ELSE (pg_catalog.date_part('epoch', persisted_at) * 1000000)::bigint END
$$;
CREATE FUNCTION chatvault.report_trunc(t_us bigint, step_us bigint)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.to_timestamp(((t_us - (t_us % step_us + step_us) % step_us)
                                    / 1000000)::double precision)
$$;
CREATE FUNCTION chatvault.report_size_bucket(n integer)
RETURNS smallint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.width_bucket(n, ARRAY[64, 256, 1024, 4096, 16384, 65536, 262144,
                                 1048576])::smallint
$$;
CREATE FUNCTION chatvault.report_latency_bucket(us bigint)
RETURNS smallint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.width_bucket(us, ARRAY[1000, 2000, 5000, 10000, 20000, 50000, 100000,
        200000, 500000, 1000000, 2000000, 5000000, 10000000, 30000000,
        60000000, 300000000, 3600000000]::bigint[])::smallint
$$;

-- One statement for every rollup of messages, over the transition table
-- (the trigger) or the whole table (the backfill below): the same text
-- with another source. Each row's hour, minute and buckets are computed
-- once, in n.
CREATE FUNCTION chatvault.report_messages_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    WITH n AS MATERIALIZED (
        SELECT channel, sender_id, size,
               chatvault.report_trunc(t_us, 3600000000) AS hour,
               chatvault.report_trunc(t_us, 60000000) AS minute,
               chatvault.report_size_bucket(size) AS size_bucket,
               chatvault.report_latency_bucket(lat_us) AS lat_bucket
        FROM (SELECT channel, sender_id, octet_length(body) AS size,
                     chatvault.report_time_us(sent_at_us, persisted_at) AS t_us,
                     CASE WHEN sent_at_us > 0 THEN
                         (date_part('epoch', persisted_at) * 1000000)::bigint - sent_at_us
                     END AS lat_us
              FROM new_rows) r),
    h AS (INSERT INTO chatvault.report_hourly AS r
          SELECT channel, hour, count(*), sum(size) FROM n GROUP BY 1, 2 ORDER BY 1, 2
          ON CONFLICT (channel, hour) DO UPDATE
          SET messages = r.messages + EXCLUDED.messages, bytes = r.bytes + EXCLUDED.bytes),
    s AS (INSERT INTO chatvault.report_senders AS r
          SELECT channel, hour, sender_id, count(*) FROM n GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
          ON CONFLICT (channel, hour, sender_id) DO UPDATE
          SET messages = r.messages + EXCLUDED.messages),
    m AS (INSERT INTO chatvault.report_minutes AS r
          SELECT channel, minute, count(*) FROM n GROUP BY 1, 2 ORDER BY 1, 2
          ON CONFLICT (channel, minute) DO UPDATE
          SET messages = r.messages + EXCLUDED.messages),
    z AS (INSERT INTO chatvault.report_sizes AS r
          SELECT channel, hour, size_bucket, count(*) FROM n GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
          ON CONFLICT (channel, hour, bucket) DO UPDATE
          SET messages = r.messages + EXCLUDED.messages)
    INSERT INTO chatvault.report_latency AS r
    SELECT channel, hour, lat_bucket, count(*) FROM n WHERE lat_bucket IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (channel, hour, bucket) DO UPDATE
    SET messages = r.messages + EXCLUDED.messages;
    RETURN NULL;
END $$;

CREATE FUNCTION chatvault.report_rejected_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO chatvault.report_rejected AS r
    SELECT coalesce(channel, ''),
           chatvault.report_trunc((extract(epoch FROM rejected_at) * 1000000)::bigint,
                                  3600000000),
           reason, count(*)
    FROM new_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (channel, hour, reason) DO UPDATE
    SET rejected = r.rejected + EXCLUDED.rejected;
    RETURN NULL;
END $$;

CREATE FUNCTION chatvault.report_duplicates_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO chatvault.report_duplicates AS r
    SELECT channel,
           chatvault.report_trunc(chatvault.report_time_us(sent_at_us, seen_at),
                                  3600000000),
           count(*) FILTER (WHERE NOT replayed), count(*) FILTER (WHERE replayed)
    FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (channel, hour) DO UPDATE
    SET duplicates = r.duplicates + EXCLUDED.duplicates,
        replayed = r.replayed + EXCLUDED.replayed;
    RETURN NULL;
END $$;

REVOKE ALL ON FUNCTION chatvault.report_messages_trigger(),
    chatvault.report_rejected_trigger(), chatvault.report_duplicates_trigger()
    FROM PUBLIC;

-- The backfill: the rows already archived, once, before the triggers exist
-- (this migration runs in one transaction, so no insert falls between).
-- One pass over chatvault.messages feeds every rollup.
WITH n AS MATERIALIZED (
    SELECT channel, sender_id, size,
           chatvault.report_trunc(t_us, 3600000000) AS hour,
           chatvault.report_trunc(t_us, 60000000) AS minute,
           chatvault.report_size_bucket(size) AS size_bucket,
           chatvault.report_latency_bucket(lat_us) AS lat_bucket
    FROM (SELECT channel, sender_id, octet_length(body) AS size,
                 chatvault.report_time_us(sent_at_us, persisted_at) AS t_us,
                 CASE WHEN sent_at_us > 0 THEN
                     (date_part('epoch', persisted_at) * 1000000)::bigint - sent_at_us
                 END AS lat_us
          FROM chatvault.messages) r),
h AS (INSERT INTO chatvault.report_hourly
      SELECT channel, hour, count(*), sum(size) FROM n GROUP BY 1, 2),
s AS (INSERT INTO chatvault.report_senders
      SELECT channel, hour, sender_id, count(*) FROM n GROUP BY 1, 2, 3),
m AS (INSERT INTO chatvault.report_minutes
      SELECT channel, minute, count(*) FROM n GROUP BY 1, 2),
z AS (INSERT INTO chatvault.report_sizes
      SELECT channel, hour, size_bucket, count(*) FROM n GROUP BY 1, 2, 3)
INSERT INTO chatvault.report_latency
SELECT channel, hour, lat_bucket, count(*) FROM n WHERE lat_bucket IS NOT NULL
GROUP BY 1, 2, 3;

INSERT INTO chatvault.report_rejected
SELECT coalesce(channel, ''),
       chatvault.report_trunc((extract(epoch FROM rejected_at) * 1000000)::bigint,
                              3600000000),
       reason, count(*)
FROM chatvault.rejected GROUP BY 1, 2, 3;

CREATE TRIGGER report_rollup AFTER INSERT ON chatvault.messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatvault.report_messages_trigger();
CREATE TRIGGER report_rollup AFTER INSERT ON chatvault.rejected
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatvault.report_rejected_trigger();
CREATE TRIGGER report_rollup AFTER INSERT ON chatvault.duplicates
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatvault.report_duplicates_trigger();

-- The rollups are written by the triggers' owner (SECURITY DEFINER), so no
-- role needs more than SELECT on them; the writer only adds duplicates.
GRANT SELECT ON chatvault.report_hourly, chatvault.report_senders,
    chatvault.report_minutes, chatvault.report_sizes, chatvault.report_latency,
    chatvault.report_rejected, chatvault.report_duplicates, chatvault.duplicates
    TO chatvault_writer, chatvault_reader, chatvault_admin;
GRANT INSERT ON chatvault.duplicates TO chatvault_writer, chatvault_admin;
