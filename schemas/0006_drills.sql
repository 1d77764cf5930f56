-- chatvault schema, version 6: the record of restore drills.
--
-- A drill (`chatvault drill`, or the broker on drill.interval_s) restores a
-- sample of the log into a scratch database, checks every restored row
-- against the log record it came from, and appends one row here with the
-- outcome, so that every instance's /metrics and dashboard can say when a
-- restore last worked. Rows are only appended.
CREATE TABLE chatvault.restore_drills (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    trigger         text        NOT NULL,  -- 'command' or 'schedule'
    host            text        NOT NULL DEFAULT '',
    passed          boolean     NOT NULL,
    scope           text        NOT NULL,  -- the selection, as an operator wrote it
    selected        bigint      NOT NULL,  -- log records the selection matched
    sampled         bigint      NOT NULL,  -- of them, restored into the scratch database
    verified        bigint      NOT NULL,  -- restored rows equal to their log record
    mismatched      bigint      NOT NULL,  -- restored rows that differ from it
    missing         bigint      NOT NULL,  -- sampled records without their row
    restore_seconds double precision NOT NULL,
    verify_seconds  double precision NOT NULL,
    detail          text        NOT NULL DEFAULT ''  -- why it failed
);
CREATE INDEX restore_drills_finished_idx ON chatvault.restore_drills (finished_at);

-- The broker runs scheduled drills as chatvault_writer; operators as admin.
GRANT SELECT ON chatvault.restore_drills
    TO chatvault_writer, chatvault_reader, chatvault_admin;
GRANT INSERT ON chatvault.restore_drills TO chatvault_writer, chatvault_admin;
