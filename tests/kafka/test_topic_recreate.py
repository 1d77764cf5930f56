"""A topic deleted and re-created on a real cluster (issue 15, identity not
position): 800 messages over 2 channels are stored and acked; the broker
stops; the chat topics are deleted and created again with the same names,
so Kafka's offsets start over at 0 while PostgreSQL and the log keep the
first incarnation's records at those same offsets. 800 new messages follow.
Every message of both incarnations must be acked, held once in PostgreSQL
and held in the log (which starts a new generation of each partition whose
offsets went back and says so), and `chatvault verify` must agree."""
import time

import faultlib
import kafkalib

N = 800

with kafkalib.KHarness('recreate', channels=2, partitions=2) as h:
    h.migrate()
    h.start_broker()
    acks = h.acks()
    acks.start()
    sent = {}
    for round_ in (1, 2):
        pub = h.publisher(N, rate=800)
        pub.start()
        pub.join(timeout=300)
        h.ok(not pub.errors and len(pub.sent) == N,
             'incarnation %d: published %d messages' % (round_, N), pub.errors[:3])
        sent.update(pub.sent)
        missing = acks.wait_all(sent, timeout=180, idle=60, alive=h.broker.alive)
        h.ok(not missing, 'incarnation %d: every message acked' % round_,
             '%d missing, e.g. %s' % (len(missing), sorted(missing)[:3]))
        behind, _ = h.wait_committed(list(h.topics), timeout=60)
        h.ok(not behind, 'incarnation %d: committed to the end' % round_, behind)
        if round_ == 2:
            break
        h.is_(h.broker.stop(), 0, 'the broker stops with SIGTERM')
        a = h.admin()
        a.delete_topics(list(h.topics), timeout_ms=60000)
        deadline = time.time() + 60
        while set(h.topics) & set(h.admin().list_topics()) and time.time() < deadline:
            time.sleep(0.5)
        h.ok(not set(h.topics) & set(h.admin().list_topics()),
             'the chat topics are deleted')
        created = False
        for _ in range(30):     # deletion completes asynchronously
            try:
                h.create_topics(dict(h.topics))
                created = True
                break
            except Exception as e:   # TopicAlreadyExists while it finishes
                h.diag('create again: %s' % e)
                time.sleep(2)
        h.ok(created, 'the chat topics are created again with the same names')
        ends = h.group_offsets(list(h.topics))
        h.ok(all(end == 0 for _, end in ends.values()),
             'their offsets start over at 0', ends)
        h.start_broker()
    time.sleep(2)
    items = acks.snapshot()
    acks.stop()
    st = faultlib.status_counts(items)
    h.ok(st.get('PERSISTED', 0) == 2 * N, 'acks: one PERSISTED per message of both '
         'incarnations', st)
    h.ok(all(a.stores == 3 for _, a, _ in items if a.status == 1),
         'every PERSISTED ack names both stores')
    faultlib.check_store(h, 'PostgreSQL', faultlib.pg_ids(h), sent)
    recs = faultlib.log_cat(h)
    got = {r['message_id'] for r in recs}
    h.ok(set(sent) <= got, 'the log holds every message of both incarnations',
         '%d missing' % len(set(sent) - got))
    gens = {r.get('generation', 0) for r in recs}
    h.ok(len(gens) >= 2, 'the re-created partitions are a new generation of the log',
         sorted(gens))
    h.ok('offsets started over' in h.broker_log(),
         'the broker says Kafka\'s offsets started over')
    faultlib.check_verify(h)
