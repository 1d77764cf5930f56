-- chatvault schema, version 2: least-privilege roles, and the audit log.
--
-- Three group roles (NOLOGIN: grant them to login roles of your own):
--   chatvault_writer  the broker: appends messages, rejects and offsets, and
--                     reads them back (the duplicate check, the resume
--                     offsets); it cannot update a message, delete or
--                     truncate anything, or change the schema.
--   chatvault_reader  search, reports, verify without --repair, export,
--                     replay, lag, the dashboard: SELECT only.
--   chatvault_admin   verify --repair, import, retention and erasure: the
--                     reader's rights and INSERT/UPDATE/DELETE on the tables.
-- Every role may append to chatvault.audit; none may change or delete a row
-- of it (only the schema's owner, who runs chatvault migrate, can).
--
-- Roles belong to the whole PostgreSQL cluster, so several chatvault
-- databases on one server share them; the grants are per database. Creating
-- a role needs CREATEROLE: a migrating user without it gets an error that
-- says so, and can have the three roles created by hand and migrate again.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['chatvault_writer', 'chatvault_reader',
                             'chatvault_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION
                -- another migration of another database made it first
                WHEN duplicate_object OR unique_violation THEN NULL;
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'creating role % needs CREATEROLE', r
                        USING HINT = 'create chatvault_writer, chatvault_reader '
                            'and chatvault_admin as NOLOGIN roles (README '
                            '"PostgreSQL roles"), then run chatvault migrate again';
            END;
        END IF;
    END LOOP;
END $$;

-- Who did what to the archive: one row per operator command that reads bulk
-- data or changes stored data, written when it starts (result 'running')
-- and again when it ends (a second row with the same id and the outcome),
-- so a command that crashes still leaves its start.
CREATE TABLE chatvault.audit (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          uuid        NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    os_user     text        NOT NULL,
    db_role     text        NOT NULL DEFAULT current_user,
    host        text        NOT NULL DEFAULT '',
    command     text        NOT NULL,
    arguments   jsonb       NOT NULL DEFAULT '[]',
    result      text        NOT NULL,
    counts      jsonb       NOT NULL DEFAULT '{}',
    detail      text        NOT NULL DEFAULT ''
);
CREATE INDEX audit_at_idx ON chatvault.audit (at);

GRANT USAGE ON SCHEMA chatvault
    TO chatvault_writer, chatvault_reader, chatvault_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA chatvault
    TO chatvault_writer, chatvault_reader, chatvault_admin;
GRANT INSERT ON chatvault.messages, chatvault.rejected TO chatvault_writer;
GRANT INSERT, UPDATE ON chatvault.kafka_offsets TO chatvault_writer;
GRANT INSERT, UPDATE, DELETE ON chatvault.messages, chatvault.rejected,
    chatvault.kafka_offsets TO chatvault_admin;
GRANT INSERT ON chatvault.audit
    TO chatvault_writer, chatvault_reader, chatvault_admin;
-- db_role defaults to current_user and seq is an identity: nothing else
-- the roles need. The writer reads the audit table too (SELECT above), as
-- everyone may see who did what.

-- Tables a later migration adds get the reader's SELECT by default; their
-- other rights are granted by that migration, table by table.
ALTER DEFAULT PRIVILEGES IN SCHEMA chatvault
    GRANT SELECT ON TABLES TO chatvault_writer, chatvault_reader, chatvault_admin;
