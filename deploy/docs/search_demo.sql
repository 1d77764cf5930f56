-- Demo data behind deploy/docs/search.png: a support conversation and some
-- chatter, inserted as the broker would store them (the search indexer, or
-- `chatvault search --reindex`, makes their documents).
--   createdb cv_search_demo; chatvault migrate (postgres.conninfo ... dbname=cv_search_demo)
--   psql -d cv_search_demo -f deploy/docs/search_demo.sql
--   chatvault search --reindex
--   chatvault broker with http.archive = on, then in chromium:
--   /search?text=refund
WITH m(n, channel, sender, body) AS (VALUES
    (1, 'eu-support', 'maria', 'Hi, the invoice for order 5521 was charged twice, can you refund one?'),
    (2, 'eu-support', 'agent-7', 'Sorry about that Maria, let me look at order 5521.'),
    (3, 'eu-support', 'agent-7', 'I see two charges of 49.00 EUR on the same card, 2 minutes apart.'),
    (4, 'eu-support', 'agent-7', 'Refund issued for the duplicate invoice, it shows up in 3-5 days.'),
    (5, 'eu-support', 'maria', 'Thanks! Will I get a credit note for the refund?'),
    (6, 'eu-support', 'agent-7', 'Yes, the credit note is attached to the refund email.'),
    (7, 'eu-sales', 'jun', 'Can I get a refund on the annual plan if we move to monthly?'),
    (8, 'eu-sales', 'lea', 'Pro-rated: the unused months are refunded as account credit.'),
    (9, 'us-ops', 'bob', 'deploy 2026.12.7 finished, payments service healthy'),
    (10, 'us-ops', 'eve', 'refund worker queue is back to zero after the retry storm'),
    (11, 'us-support', 'kai', 'My order arrived damaged, what are my options?'),
    (12, 'us-support', 'agent-2', 'We can send a replacement today or refund the full amount.'),
    (13, 'us-support', 'kai', 'A replacement please, no refund needed.'),
    (14, 'general', 'ana', 'lunch at 12:30 anyone?'),
    (15, 'general', 'chen', 'count me in'))
INSERT INTO chatvault.messages (channel, message_id, kafka_topic, kafka_partition,
    kafka_offset, sender_id, sent_at_us, body, content_type, persisted_at)
SELECT channel, 'msg-' || lpad(n::text, 4, '0'), 'chat.' || channel, n % 4, 1000 + n,
       sender,
       (extract(epoch FROM now() - make_interval(mins => 90 - 5 * n)) * 1000000)::bigint,
       convert_to(body, 'UTF8'), 'text/plain',
       now() - make_interval(mins => 90 - 5 * n) + interval '4 ms'
FROM m;
