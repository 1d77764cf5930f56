-- chatvault schema, version 3: search over the archive.
--
-- The ack path does not pay for search: chatvault.messages gets no new
-- index (a GIN index on an expression of body would be updated inside
-- every durable batch, and convert_from() raises on a body that is not
-- UTF-8). Instead the broker's indexer thread (broker/daemon/indexer.c)
-- copies, a moment after each batch commits and on its own connection, one
-- row per stored message into chatvault.search_docs: the message's key, the
-- metadata searches filter on, and the tsvector of its body when the body
-- is text (content_type text/... or json, valid UTF-8); tsv is NULL for
-- any other body, whose message is still found by channel, sender, time
-- and id. `chatvault search` reads search_docs and joins each hit to its
-- row of messages by primary key (the join keeps a table partitioned or
-- distributed on channel working: both tables are keyed by channel first).
CREATE TABLE chatvault.search_docs (
    channel      text COLLATE "C" NOT NULL,
    message_id   text COLLATE "C" NOT NULL,
    sent_at_us   bigint      NOT NULL,
    sender_id    text COLLATE "C" NOT NULL,
    -- text bodies: how many leading bytes of body were indexed (valid
    -- UTF-8, cut at a character, at most 64 KiB), and their words; both
    -- NULL when the body is not text.
    text_len     integer,
    tsv          tsvector,
    PRIMARY KEY (channel, message_id)
);
-- --text: the words' posting lists.
CREATE INDEX search_docs_tsv_idx ON chatvault.search_docs USING gin (tsv);
-- Newest first and the keyset cursor (sent_at_us, channel, message_id):
-- a backward scan of this index is the order of every page.
CREATE INDEX search_docs_time_idx
    ON chatvault.search_docs (sent_at_us, channel, message_id);
-- --sender, newest first.
CREATE INDEX search_docs_sender_idx
    ON chatvault.search_docs (sender_id, sent_at_us);
-- --id without --channel.
CREATE INDEX search_docs_id_idx ON chatvault.search_docs (message_id);

-- The indexer's progress: rows of messages with persisted_at up to
-- watermark have been indexed (see broker/daemon/indexer.c for the safety
-- margin below it that is read again). One row.
CREATE TABLE chatvault.search_state (
    id           integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    watermark    timestamptz NOT NULL DEFAULT '-infinity',
    indexed      bigint      NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Starts now: messages stored before this migration are indexed by
-- `chatvault search --reindex` (reading a whole archive in persisted_at
-- order is what the indexer's query must not do: it has no B-tree there).
INSERT INTO chatvault.search_state (id, watermark) VALUES (1, clock_timestamp());

-- The broker (writer) runs the indexer; the admin rebuilds with
-- `chatvault search --reindex`; everyone reads (0002's default privileges
-- gave SELECT already; granted again here so the migration says it).
GRANT SELECT ON chatvault.search_docs, chatvault.search_state
    TO chatvault_writer, chatvault_reader, chatvault_admin;
GRANT INSERT, UPDATE ON chatvault.search_docs, chatvault.search_state
    TO chatvault_writer;
GRANT INSERT, UPDATE, DELETE ON chatvault.search_docs, chatvault.search_state
    TO chatvault_admin;
