-- chatvault schema, version 7: retention (README "Retention classes").
--
-- Retention drops what a channel's class no longer keeps: whole sealed
-- segments of the encrypted log (each recorded in its directory's
-- "expired" file, see consumer/applog/FORMAT.md "Retention") and, in the
-- same run, PostgreSQL's rows at the Kafka coordinates those segments
-- held. PostgreSQL follows the log, so both stores keep the same messages
-- and verify keeps passing.
--
-- A legal hold suspends expiry of the channels it names (a channel name or
-- a shell pattern such as legal-*), whatever their class, until it is
-- released. Holds live here, beside the data, so every instance and every
-- run sees the same ones; placing and releasing one is audited
-- (chatvault.audit) like every retention run.
CREATE TABLE chatvault.retention_holds (
    channel  text COLLATE "C" PRIMARY KEY,  -- a channel or a shell pattern
    reason   text        NOT NULL,
    held_by  text        NOT NULL,          -- the operator (OS user)
    held_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Holds are the admin's to place and release; the broker (which runs
-- scheduled retention as chatvault_admin through postgres.admin_conninfo,
-- or as the single role of a one-role installation) reads them.
GRANT SELECT ON chatvault.retention_holds
    TO chatvault_writer, chatvault_reader, chatvault_admin;
GRANT INSERT, DELETE ON chatvault.retention_holds TO chatvault_admin;
-- Retention deletes the rows of expired segments from every table that
-- holds them by Kafka coordinates.
GRANT DELETE ON chatvault.duplicates TO chatvault_admin;
