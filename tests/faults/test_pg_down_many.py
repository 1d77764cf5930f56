"""PostgreSQL down under ack.policy = any with TWO broker instances, each with
its own log.dir, and the one instance killed (-9) mid-outage for good.

What instance A acked DEGRADED before it died is held only by A's log, and
each instance's log is its own volume (DESIGN.md), so B cannot read it. When
PostgreSQL returns, instance B owns A's former partitions: it backfills all
its own log holds, and names every partition and offset range PostgreSQL
still misses (nothing dropped silently); `chatvault verify --repair` over
both directories then fills PostgreSQL. Also checked: the merged log (A + B)
holds everything, and every message is acked.

  test_pg_down_many.py        A dies halfway through the outage: B takes its
                              partitions while PostgreSQL is still down
  test_pg_down_many.py late   A dies 2 s before PostgreSQL returns: B takes
                              its partitions (after the session timeout) with
                              PostgreSQL up, sees PostgreSQL behind Kafka and
                              backfills from its own log directory"""
import sys
import re
import time

import faultlib
from faultlib import cvtest

CHANNELS = ['many%d' % i for i in range(4)]
PARTITIONS = 4
RATE = 400
BEFORE, OUTAGE, AFTER = 10, 32, 15
SETTLE = 5
LOG = 2
LATE = sys.argv[1:] == ['late']
KILL_AT = OUTAGE - 2 if LATE else OUTAGE / 2

topics = {'chat.' + c: PARTITIONS for c in CHANNELS}
total = RATE * (BEFORE + OUTAGE + AFTER)
with faultlib.FaultHarness('pg_down_many' + ('_late' if LATE else ''), topics=topics, partitions=8,
                           private_pg=True, config={'ack.policy': 'any'}) as h:
    h.migrate()
    a = h.start_instance('a')
    b = h.start_instance('b')
    deadline = time.time() + 60
    while time.time() < deadline and not all(
            'partition assigned' in h.read_log(n) for n in ('a', 'b')):
        time.sleep(0.2)
    acks = faultlib.AckCollector(h)
    acks.start()
    pub = faultlib.Publisher(h, CHANNELS, total, RATE)
    pub.start()
    time.sleep(BEFORE)

    t_stop = time.time()
    h.private_pg.stop_immediate()
    h.diag('injected: pg_ctl stop -m immediate (acks so far %d)' % acks.count())
    time.sleep(KILL_AT)
    a.kill9()
    t_kill = time.time()
    h.diag('injected: kill -9 of instance a %.0f s into the outage, for good '
           '(acks so far %d)' % (t_kill - t_stop, acks.count()))
    while time.time() < t_stop + OUTAGE:
        time.sleep(0.5)
    h.private_pg.start()
    t_restart = time.time()
    h.diag('injected: PostgreSQL started again after %.1f s' % (t_restart - t_stop))

    pub.join(timeout=600)
    h.ok(not pub.errors and len(pub.sent) == total,
         'python3-kafka published %d messages' % total, pub.errors[:3])
    sent = dict(pub.sent)
    missing = acks.wait_all(sent, timeout=600, idle=120, alive=b.alive)
    h.ok(not missing, 'every published message acked at least once',
         '%d never acked' % len(missing))
    items = acks.snapshot()
    degraded = {x.message_id for _, x, _ in items
                if cvtest.STATUS.get(x.status) == 'DEGRADED'}
    h.ok(degraded, '%d messages were acked DEGRADED (log only)' % len(degraded))

    # PostgreSQL catches up, or stops changing.
    n, last, since = -1, -2, time.time()
    deadline = time.time() + 180
    while time.time() < deadline and n < len(sent) and time.time() - since < 30:
        n = h.query('SELECT count(*) FROM chatvault.messages')[0][0]
        if n != last:
            last, since = n, time.time()
        time.sleep(1)
    ids = faultlib.pg_ids(h)
    not_in_pg = set(sent) - set(ids)
    h.diag('PostgreSQL holds %d of %d; missing %d, of which acked DEGRADED: %d'
           % (len(set(ids)), len(sent), len(not_in_pg), len(not_in_pg & degraded)))
    # Each instance's log is its own volume (DESIGN.md), so instance b can
    # backfill PostgreSQL only from its own log. What only a's log holds must
    # be named by b, partition and offset range, and repaired by verify.
    h.is_(len(set(ids)), len(ids), 'PostgreSQL: no message stored twice')
    h.ok(set(ids) <= set(sent), 'PostgreSQL holds only published messages')

    dirs = [h.instances['a'][2], h.instances['b'][2]]
    merged = faultlib.log_cat(h, dirs=dirs)
    records = faultlib.kafka_records(h, topics)
    faultlib.check_log(h, 'the merged log (a + b)', merged, sent, records)
    a_recs = faultlib.log_cat(h, dirs=dirs[:1])
    b_ids = {r['message_id'] for r in faultlib.log_cat(h, dirs=dirs[1:])}
    only_a = not_in_pg & {r['message_id'] for r in a_recs}
    h.diag('of the messages missing from PostgreSQL, %d are in instance a\'s log '
           'dir (which instance b cannot read)' % len(only_a))
    h.ok(not (not_in_pg & b_ids),
         'every message missing from PostgreSQL is one instance b\'s log lacks '
         '(b backfilled all it holds)', sorted(not_in_pg & b_ids)[:3])
    blog = h.read_log('b')
    told = {}
    for l in blog.splitlines():
        if 'level=warn' in l and 'postgres misses records' in l:
            kv = dict(re.findall(r'(\w+)=(\S+)', l))
            told[(kv['topic'], int(kv['partition']))] = (
                int(kv['from_offset']), int(kv['backfilled_first']))
    for (t, p), rng in sorted(told.items())[:4]:
        h.diag('b reported: %s/%d from %d, its log starts at %d' % (t, p, rng[0], rng[1]))
    unreported = []
    for r in a_recs:
        if r['message_id'] not in not_in_pg:
            continue
        rng = told.get((r['topic'], r['partition']))
        if not rng or r['offset'] < rng[0] or (rng[1] >= 0 and r['offset'] >= rng[1]):
            unreported.append((r['topic'], r['partition'], r['offset']))
    h.ok(not unreported, 'instance b names every range PostgreSQL misses '
         '(topic, partition, from_offset up to its own log)', unreported[:3])

    r = faultlib.verify(h, dirs=dirs)
    h.diag('chatvault verify --log-dir a --log-dir b: exit %d; %s' % (
        r.returncode, ' | '.join(r.stdout.strip().splitlines()[-2:])[:500]))
    r = faultlib.verify(h, dirs=dirs, repair=True)
    h.diag('chatvault verify --repair --log-dir a --log-dir b: exit %d' % r.returncode)
    ids2 = faultlib.pg_ids(h)
    h.ok(set(ids2) == set(sent) and len(ids2) == len(sent),
         'after verify --repair over both dirs, PostgreSQL holds the published '
         'set once', 'missing %d, rows %d' % (len(set(sent) - set(ids2)), len(ids2)))

    acks.stop()
    rc = b.stop()
    h.is_(rc, 0, 'instance b exits 0 on SIGTERM')
    h.diag('counts: published=%d stored_pg=%d (after repair %d) stored_log_merged=%d '
           'acks=%d acked_messages=%d degraded=%d missing_from_pg=%d rejected=0 '
           'statuses=%s' % (len(sent), len(ids), len(ids2), len(merged), len(items),
                            len({x.message_id for _, x, _ in items}), len(degraded),
                            len(not_in_pg), faultlib.status_counts(items)))
