"""kill -9 of the Kafka node that leads the most of the busy partitions,
under load, restarted 15 s later. chatvault keeps running (no exit) and keeps
acking through the failover (no gap in acks past the failover), python3-kafka
keeps publishing (acks=all: min.insync.replicas 2 of 3 still holds), and in
the end every message is acked, PostgreSQL and the log hold each once,
verify agrees and the committed offsets reach the end."""
import collections
import time

import faultlib
import kafkalib

N = 30000
RATE = 1200
MAX_GAP = 45     # s without a new ack after the kill: failover, not a stall

with kafkalib.KHarness('broker_kill', channels=4, partitions=6) as h:
    h.migrate()
    h.start_broker()
    acks = h.acks()
    acks.start()
    t0 = time.time()
    pub = h.publisher(N, RATE)
    pub.start()
    while pub.attempted < N // 4 and pub.is_alive():
        time.sleep(0.1)
    leaders = h.partition_leaders(list(h.topics))
    per_node = collections.Counter(l for l, _ in leaders.values())
    victim, led = per_node.most_common(1)[0]
    n_before = acks.count()
    t_kill = time.time()
    pid = h.kill_node(victim)
    h.diag('injected: kill -9 of Kafka node %d (pid %d), leader of %d of %d chat '
           'partitions, at %.1f s, %d published, %d acks'
           % (victim, pid, led, len(leaders), t_kill - t0, pub.attempted, n_before))
    time.sleep(15)
    h.ok(h.broker.alive(), 'chatvault still runs 15 s after the kill')
    during = acks.count()
    took = h.start_nodes()
    h.diag('Kafka node %d restarted (%.1f s) at %.1f s' % (victim, took, time.time() - t0))
    moved = h.partition_leaders(list(h.topics))
    pub.join(timeout=300)
    h.ok(not pub.errors and len(pub.sent) == N,
         'python3-kafka published %d messages through the failover' % N, pub.errors[:3])
    sent = dict(pub.sent)
    missing = acks.wait_all(sent, timeout=300, idle=90, alive=h.broker.alive)
    h.ok(not missing, 'every message acked',
         '%d never acked, e.g. %s' % (len(missing), sorted(missing)[:3]))
    h.ok(h.broker.alive(), 'chatvault never exited')
    h.ok(during > n_before, 'acks went on while node %d was down (%d -> %d)'
         % (victim, n_before, during))
    times = sorted(t for t, _, _ in acks.snapshot() if t >= t_kill)
    gaps = [b - a for a, b in zip([t_kill] + times, times)]
    h.ok(gaps and max(gaps) < MAX_GAP,
         'longest time without a new ack after the kill: %.1f s (< %d s)'
         % (max(gaps or [0]), MAX_GAP))
    behind, _ = h.wait_committed(list(h.topics), timeout=90)
    h.ok(not behind, 'committed offset = end offset everywhere', behind)
    items = acks.snapshot()
    acks.stop()
    h.is_(h.broker.stop(), 0, 'chatvault exits 0 on SIGTERM at the end')
    faultlib.check_store(h, 'PostgreSQL', faultlib.pg_ids(h), sent)
    records = faultlib.kafka_records(h, h.topics)
    recs = faultlib.log_cat(h)
    faultlib.check_log(h, 'the log', recs, sent, records)
    faultlib.check_verify(h)
    st = faultlib.status_counts(items)
    h.ok(set(st) <= {'PERSISTED', 'DUPLICATE'},
         'acks are PERSISTED or (re-delivered) DUPLICATE', st)
    h.diag('counts: published=%d records=%d acks=%d statuses=%s victim=%d '
           'leaders_after_restart=%s' % (len(sent), records, len(items), st, victim,
                                         dict(collections.Counter(l for l, _ in moved.values()))))
