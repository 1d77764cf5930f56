-- Demo data behind deploy/docs/report.png: a week of made-up traffic on
-- three channels, inserted as the broker would (the rollup triggers keep the
-- report tables), with persisted_at set to sent_at plus a store latency.
--   createdb cv_report_demo; chatvault migrate (postgres.conninfo ... dbname=cv_report_demo)
--   psql -d cv_report_demo -f deploy/docs/report_demo.sql
--   chatvault report --since 7d --format html -o report.html
--   chromium --headless --screenshot=report.png --window-size=1280,1500 report.html
SELECT setseed(0.42);
WITH p AS (
    SELECT i,
           (ARRAY['general', 'support', 'eu-sales'])[1 + (i % 7 = 0)::int + (i % 11 = 0)::int] AS channel,
           -- a day's rhythm: more traffic in the (UTC) afternoon
           now() - make_interval(secs => (random() * 7 * 86400)) AS t0,
           random() AS r1, random() AS r2, random() AS r3
    FROM generate_series(1, 40000) AS i),
q AS (
    SELECT i, channel, r1, r2, r3,
           CASE WHEN abs(extract(hour FROM t0 AT TIME ZONE 'UTC') - 15) < 6 OR r3 < 0.35
                THEN t0 END AS t
    FROM p)
INSERT INTO chatvault.messages (channel, message_id, kafka_topic, kafka_partition,
    kafka_offset, sender_id, sent_at_us, body, content_type, persisted_at)
SELECT channel, 'demo-' || i, 'chat.' || channel, i % 8, i,
       (ARRAY['ana', 'bo', 'chen', 'dita', 'emeka', 'farah', 'gus', 'hana', 'ivo',
              'jun', 'kai', 'lea', 'mo', 'nia', 'oz'])[1 + floor(15 * r1 * r1)::int],
       (extract(epoch FROM t) * 1000000)::bigint,
       convert_to(repeat('m', 8 + floor(exp(r2 * 8.5))::int), 'UTF8'), 'text/plain',
       t + make_interval(secs => 0.003 + 0.0015 * exp(r3 * r3 * 5.5))
FROM q WHERE t IS NOT NULL
ORDER BY i;
INSERT INTO chatvault.rejected (kafka_topic, kafka_partition, kafka_offset, channel,
    message_id, reason, error, rejected_at)
SELECT 'chat.general', 0, 100000 + i, CASE WHEN i % 3 = 0 THEN NULL ELSE 'general' END,
       NULL, (ARRAY['decode', 'too_large', 'no_message_id'])[1 + i % 3], 'demo',
       now() - make_interval(hours => i)
FROM generate_series(1, 40) AS i;
INSERT INTO chatvault.duplicates (kafka_topic, kafka_partition, kafka_offset, channel,
    message_id, sent_at_us, replayed)
SELECT 'chat.support', 1, 200000 + i, 'support', 'demo-' || i,
       (extract(epoch FROM now() - make_interval(hours => i)) * 1000000)::bigint, i > 20
FROM generate_series(1, 60) AS i;
