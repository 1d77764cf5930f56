-- chatvault schema, version 5: versions of a message (edits and deletes).
--
-- A message id names a message; (message_id, revision) names one version of
-- it (ChatMessage.revision, 0 = the original; ChatMessage.deleted marks a
-- tombstone). chatvault.messages keeps ONE row per (channel, message_id),
-- as before: the message's latest version, the highest revision held. So
-- search, reports, replay and export read what they read before, and a
-- sender that never sets a revision sees no change at all.
--
-- chatvault.message_versions holds every other version: the ones an edit
-- superseded, and older revisions that arrived after a newer one. The two
-- tables never hold the same version, and together they hold every version
-- stored: a message's history is its row of messages plus its rows here.
-- consumer/pg/pgstore.c moves a superseded row here in the same transaction
-- that writes its successor into messages, and before it.
--
-- Rollups (0004): the report triggers count INSERTs into messages only. An
-- edit is an UPDATE of messages (and an INSERT here), so it is not counted
-- as a message again; a report counts messages received, by their first
-- stored version.
--
-- Search (0003): an edit deletes the message's row of search_docs in its
-- transaction and sets persisted_at anew, so the indexer indexes the latest
-- version's body on its next pass.

-- A constant default: PostgreSQL adds these without rewriting the table,
-- and every row stored before is revision 0, not deleted.
ALTER TABLE chatvault.messages
    ADD COLUMN revision bigint  NOT NULL DEFAULT 0,
    ADD COLUMN deleted  boolean NOT NULL DEFAULT false;

-- The columns of messages, with superseded_at: when the version left
-- messages (or arrived, for an older revision that came late). Keyed by
-- channel first, like every table on messages' side, so it can be
-- partitioned or distributed on channel alike.
CREATE TABLE chatvault.message_versions (
    channel          text COLLATE "C" NOT NULL,
    message_id       text COLLATE "C" NOT NULL,
    revision         bigint      NOT NULL,
    deleted          boolean     NOT NULL DEFAULT false,
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
    superseded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (channel, message_id, revision)
);
-- verify and replay --history read a partition's versions in offset order,
-- as they read messages (messages_coordinates_idx).
CREATE INDEX message_versions_coordinates_idx
    ON chatvault.message_versions (channel, kafka_partition, kafka_offset);

-- The writer may now update a row of messages, but only to supersede it:
-- to a higher revision, after the row's current version is in
-- message_versions. The trigger enforces that for every role but the admin
-- (and superusers), so the writer still cannot change or lose what it
-- stored; the column grant below keeps it from touching the key. The
-- error is insufficient_privilege, like every other refusal of the writer.
CREATE FUNCTION chatvault.messages_supersede_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_has_role(current_user, 'chatvault_admin', 'USAGE') THEN
        RETURN NEW;
    END IF;
    IF NEW.revision <= OLD.revision THEN
        RAISE EXCEPTION 'message % of channel %: revision % does not supersede revision %',
            OLD.message_id, OLD.channel, NEW.revision, OLD.revision
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM chatvault.message_versions v
                   WHERE v.channel = OLD.channel AND v.message_id = OLD.message_id
                     AND v.revision = OLD.revision) THEN
        RAISE EXCEPTION 'message % of channel %: revision % is not in message_versions',
            OLD.message_id, OLD.channel, OLD.revision
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER supersede_check BEFORE UPDATE ON chatvault.messages
    FOR EACH ROW EXECUTE FUNCTION chatvault.messages_supersede_check();

GRANT SELECT ON chatvault.message_versions
    TO chatvault_writer, chatvault_reader, chatvault_admin;
-- Append-only for the writer, like messages was.
GRANT INSERT ON chatvault.message_versions TO chatvault_writer;
GRANT INSERT, UPDATE, DELETE ON chatvault.message_versions TO chatvault_admin;
GRANT UPDATE (kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, sender_id,
              sent_at_us, body, content_type, attributes, reply_to, persisted_at,
              revision, deleted)
    ON chatvault.messages TO chatvault_writer;
-- An edit makes the message's search document stale: the writer drops it
-- and the indexer writes it anew.
GRANT DELETE ON chatvault.search_docs TO chatvault_writer;
