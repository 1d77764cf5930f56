"""ack.transactions = on, on a real 3-node cluster: each batch's acks and its
committed offsets are one Kafka transaction, so a read_committed reader sees
exactly one ack per record however often chatvault dies.

python3-kafka publishes 20,000 messages over 4 channels x 4 partitions while
chatvault is killed (SIGKILL) 3 times, each time once it has stored more, and
restarted with the same transactional.id (which aborts what the killed one
left open). Afterwards Kafka's own kafka-console-consumer reads the ack topic
with --isolation-level read_committed: exactly one ack per chat record and
per message id, and every message acked. The records a read_uncommitted
reader sees beside those are the aborted acks; the test reports how many (a
crash inside an open transaction leaves some, a crash between two leaves
none). The stores hold every message once, verify agrees, and the group's
committed offsets reach the end. Last, a second instance with the same
ack.transactional_id fences the first, which exits 1 with one line saying so.

CV_ACK_TRANSACTIONS=off runs the same with at-least-once acks, to see the
read_committed checks fail: a kill between a batch's acks and its commit
acks its records twice."""
import collections
import os
import random
import time

import cvtest
import faultlib
import kafkalib

N = 30000
RATE = 1000
KILLS = 3
seed = int(os.environ.get('CV_CRASH_SEED', str(int(time.time()))))
rnd = random.Random(seed)


def committed_positions(h):
    """(partition, offset) of every ack a read_committed reader sees, read
    by Kafka's own console consumer."""
    r = kafkalib.tool('kafka-console-consumer', '--bootstrap-server', h.bootstrap,
                      '--topic', h.ack_topic, '--from-beginning',
                      '--isolation-level', 'read_committed',
                      '--timeout-ms', '20000', '--formatter-property', 'print.key=false',
                      '--formatter-property', 'print.value=false',
                      '--formatter-property', 'print.partition=true',
                      '--formatter-property', 'print.offset=true', timeout=180)
    out = []
    for line in r.stdout.splitlines():
        f = dict(x.split(':', 1) for x in line.split() if ':' in x)
        if 'Partition' in f and 'Offset' in f:
            out.append((int(f['Partition']), int(f['Offset'])))
    return out, r


with kafkalib.KHarness('txn', channels=4, partitions=4,
                       config={'ack.transactions':
                               os.environ.get('CV_ACK_TRANSACTIONS', 'on')}) as h:
    h.diag('seed %d (CV_CRASH_SEED reproduces the kill points)' % seed)
    h.migrate()
    h.start_broker()
    raw = h.acks()      # read_uncommitted: committed and aborted acks
    raw.start()
    t0 = time.time()
    pub = h.publisher(N, RATE, seed=seed)
    pub.start()
    kills = kafkalib.kill_cycles(h, pub, rnd, KILLS, t0)

    pub.join(timeout=300)
    h.ok(not pub.errors and len(pub.sent) == N,
         'python3-kafka published %d messages' % N, pub.errors[:3])
    h.ok(len(kills) == KILLS and all(k[3] for k in kills) and kills[-1][2] < N,
         '%d kill -9 of a running chatvault while messages were still being '
         'published' % KILLS, kills)
    sent = dict(pub.sent)
    h.wait_rows(len(sent), timeout=300)
    behind, offs = h.wait_committed(list(h.topics), timeout=300)
    h.ok(not behind, 'committed offset = end offset everywhere (committed by the '
         'acks\' transactions)', behind)
    records = sum(e for _, e in offs.values())
    h.ok(h.broker.alive(), 'the last chatvault still runs')
    log = h.broker_log()
    h.ok('ack_transactions=on' in log, 'the broker says it runs ack transactions',
         log[-300:])
    rc = h.broker.stop()
    h.is_(rc, 0, 'chatvault exits 0 on SIGTERM at the end')

    committed, r = committed_positions(h)
    time.sleep(2)
    seen = raw.positions()
    raw.stop()
    h.ok(raw.error is None, 'python3-kafka read the ack topic', raw.error)
    acks = [seen.get(pos) for pos in committed]
    h.ok(committed and all(a is not None for a in acks),
         'kafka-console-consumer --isolation-level read_committed read %d acks, '
         'each also read by python3-kafka' % len(committed),
         'exit %d, %d lines, %d unknown to python3-kafka; stderr %s'
         % (r.returncode, len(committed), sum(a is None for a in acks),
            r.stderr[-300:]))
    acks = [a for a in acks if a is not None]
    per_rec = collections.Counter((a.topic, a.partition, a.offset) for a in acks)
    twice = [k for k, v in per_rec.items() if v > 1]
    h.ok(len(per_rec) == records and not twice,
         'read_committed: exactly one ack per chat record (%d records)' % records,
         '%d records acked, %d of them more than once, e.g. %s'
         % (len(per_rec), len(twice), twice[:3]))
    # A message id is in Kafka twice only when the publisher's own retry
    # wrote it twice: then its second record is acked DUPLICATE, once.
    per_id = collections.Counter(a.message_id for a in acks)
    extra = sum(v - 1 for v in per_id.values())
    h.ok(set(per_id) == set(sent) and extra == records - len(sent),
         'read_committed: every message id acked, once per Kafka record holding it',
         '%d ids missing, %d acks beyond one per id (%d records beyond one per id)'
         % (len(set(sent) - set(per_id)), extra, records - len(sent)))
    st = collections.Counter(cvtest.STATUS.get(a.status, a.status) for a in acks)
    h.ok(st.get('PERSISTED', 0) == len(sent) and
         st.get('DUPLICATE', 0) == records - len(sent),
         'committed acks: one PERSISTED per message (a re-delivered record is the '
         'same record), DUPLICATE only for a publisher\'s repeat', dict(st))
    aborted = len(seen) - len(committed)
    rows_ = h.query('SELECT message_id FROM chatvault.messages')
    faultlib.check_store(h, 'PostgreSQL', [x[0] for x in rows_], sent)
    recs = faultlib.log_cat(h)
    faultlib.check_log(h, 'the log', recs, sent, records)
    faultlib.check_verify(h)

    # --- two instances with one transactional id: the later one fences the
    # earlier, which stops at its next transaction with one line saying so;
    # what it stored but could not ack is acked by the next owner.
    tid = 'cv-fence-' + h.tag
    a = h.start_instance('a', **{'ack.transactional_id': tid})
    prod = h.producer()

    def publish(n, what):
        for i in range(n):
            _, v = cvtest.chat_message(h.channels[i % len(h.channels)],
                                       b'%s %d' % (what, i))
            prod.send('chat.' + h.channels[i % len(h.channels)], value=v)
        prod.flush(timeout=60)

    publish(20, b'before the fence')
    h.wait_rows(len(sent) + 20, timeout=120)
    behind, _ = h.wait_committed(list(h.topics), timeout=120)
    h.ok(not behind and a.alive(), 'instance a (transactional id %s) acks and '
         'commits' % tid, behind)
    b = h.start_instance('b', **{'ack.transactional_id': tid,
                                 'kafka.group.id': h.group + '-b',
                                 'topics.pattern': '^none\\.%s$' % h.tag})
    blog = os.path.join(h.tmp, 'broker-b.log')
    deadline = time.time() + 60
    while time.time() < deadline and 'broker started' not in open(blog).read():
        time.sleep(0.2)
    a.stopped = True    # its exit is expected, not a death
    publish(20, b'after the fence')
    deadline = time.time() + 90
    while time.time() < deadline and a.alive():
        time.sleep(0.2)
    rc = a.stop()
    alog = open(os.path.join(h.tmp, 'broker-a.log')).read().strip().splitlines()
    h.ok(rc == 1 and alog and alog[-1].startswith('chatvault broker: ') and
         'fenced' in alog[-1].lower(),
         'instance a, fenced by b with the same ack.transactional_id, exits 1; its '
         'last line says it was fenced', 'exit %s, last line %r' % (rc, alog[-1:]))
    b.stop()
    h.start_broker()
    behind, _ = h.wait_committed(list(h.topics), timeout=120)
    h.ok(not behind, 'the next owner acks and commits what the fenced one stored '
         'but could not ack', behind)
    h.broker.stop()
    h.diag('counts: published=%d records=%d committed_acks=%d aborted_acks=%d '
           'markers=%d statuses=%s kills=%s'
           % (len(sent), records, len(committed), aborted, raw.markers, dict(st),
              kills))
