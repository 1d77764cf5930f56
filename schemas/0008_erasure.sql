-- chatvault schema, version 8: erasure (`chatvault erase`, README "Erasure
-- (right to be forgotten)").
--
-- Erasing a channel deletes, in one transaction as chatvault_admin, every
-- row that holds what its messages said or who sent them: messages,
-- message_versions, search_docs, duplicates, rejected and the report
-- rollups. The admin could already delete messages and rejected; these are
-- the rest. Nothing else changes (kafka_offsets is kept on purpose: the
-- broker must not consume the erased messages from Kafka again).
GRANT DELETE ON chatvault.message_versions, chatvault.search_docs,
    chatvault.duplicates, chatvault.report_hourly, chatvault.report_senders,
    chatvault.report_minutes, chatvault.report_sizes, chatvault.report_latency,
    chatvault.report_rejected, chatvault.report_duplicates
    TO chatvault_admin;
