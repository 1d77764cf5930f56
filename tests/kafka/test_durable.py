"""The durable path on a real 3-node Kafka cluster (topics RF 3,
min.insync.replicas 2): python3-kafka publishes 6,000 messages over 4
channels x 4 partitions, plus one message id sent twice; chatvault stores
each once in PostgreSQL and once in the encrypted log, acks every one
(PERSISTED, the repeat DUPLICATE) and commits the group's offsets to the end.
Then Kafka's own tools check it independently: kafka-console-consumer reads
one ack per record from the ack topic, and kafka-consumer-groups --describe
shows the committed offsets and lag that `chatvault lag --direct` reports."""
import collections
import os
import time

import cvtest
import faultlib
import kafkalib

N = 6000

with kafkalib.KHarness('durable', channels=4, partitions=4) as h:
    h.migrate()
    h.start_broker()
    acks = h.acks()
    acks.start()
    t0 = time.time()
    pub = h.publisher(N, rate=3000)
    pub.start()
    pub.join(timeout=300)
    h.ok(not pub.errors and len(pub.sent) == N,
         'python3-kafka published %d messages (acks=all, RF 3)' % N, pub.errors[:3])
    # One message id twice: stored once, acked DUPLICATE the second time.
    prod = h.producer()
    ch = h.channels[0]
    for body in (b'first', b'second'):
        _, v = cvtest.chat_message(ch, body, message_id='dup-id')
        prod.send('chat.' + ch, value=v, key=b'dup-id').get(timeout=30)
    sent = dict(pub.sent)
    sent['dup-id'] = (ch, b'first')
    missing = acks.wait_all(sent, timeout=180, idle=60, alive=h.broker.alive)
    h.ok(not missing, 'every message acked (%.1f s after the first publish)'
         % (time.time() - t0), '%d missing, e.g. %s' % (len(missing), sorted(missing)[:3]))
    records = N + 2
    behind, offs = h.wait_committed(list(h.topics), timeout=60)
    h.ok(not behind, 'committed offset = end offset of all %d partitions' % len(offs),
         behind)
    h.is_(sum(e for _, e in offs.values()), records,
          'the chat topics hold %d records' % records)
    time.sleep(2)
    items = acks.snapshot()
    acks.stop()
    st = faultlib.status_counts(items)
    h.is_(st, {'PERSISTED': N + 1, 'DUPLICATE': 1},
          'acks: one PERSISTED per message, one DUPLICATE for the repeat')
    per_rec = collections.Counter((a.topic, a.partition, a.offset) for _, a, _ in items)
    h.ok(len(per_rec) == records and max(per_rec.values()) == 1,
         'exactly one ack per Kafka record', (len(per_rec), max(per_rec.values() or [0])))
    h.ok(all(a.stores == 3 for _, a, _ in items if a.status == 1),
         'PERSISTED acks name both stores (stores = 3)')
    faultlib.check_store(h, 'PostgreSQL', faultlib.pg_ids(h), sent)
    recs = faultlib.log_cat(h)
    faultlib.check_log(h, 'the log', recs, sent, records)
    faultlib.check_verify(h)

    # --- Kafka's own tools -------------------------------------------------
    r = kafkalib.tool('kafka-console-consumer', '--bootstrap-server', h.bootstrap,
                      '--topic', h.ack_topic, '--from-beginning',
                      '--timeout-ms', '15000', '--formatter-property', 'print.key=true',
                      '--formatter-property', 'print.value=false',
                      '--formatter-property', 'print.partition=true',
                      '--formatter-property', 'print.offset=true', timeout=120)
    lines = [l for l in r.stdout.splitlines() if l.startswith('Partition:')]
    keys = collections.Counter(l.split()[-1] for l in lines)
    want = collections.Counter(a.channel for _, a, _ in items)
    h.ok(len(lines) == len(items) and keys == want,
         'kafka-console-consumer reads %d acks from %s, keyed by channel as '
         'python3-kafka saw them' % (len(items), h.ack_topic),
         'read %d lines (exit %d): %s; per key %s, want %s; stderr %s'
         % (len(lines), r.returncode, lines[:3], dict(keys), dict(want), r.stderr[-300:]))
    desc, text = kafkalib.describe_group(h.group)
    ours = {k: v for k, v in desc.items() if k[0] in h.topics}
    h.ok(len(ours) == len(offs) and all(v[0] == v[1] and v[2] == 0
                                         for v in ours.values()),
         'kafka-consumer-groups --describe: %d partitions, CURRENT-OFFSET = '
         'LOG-END-OFFSET, LAG 0' % len(ours), text[-2000:])
    h.is_(sum(v[0] or 0 for v in ours.values()), records,
          'kafka-consumer-groups: committed offsets sum to the %d records' % records)

    # A backlog that chatvault lag and kafka-consumer-groups must both see.
    h.broker.stop()
    prod = h.producer()
    extra = 0
    for i, c in enumerate(h.channels):
        for j in range(25 * (i + 1)):
            _, v = cvtest.chat_message(c, b'backlog %d' % j)
            prod.send('chat.' + c, value=v)
            extra += 1
    prod.flush(timeout=60)
    desc, text = kafkalib.describe_group(h.group)
    lag = h.lag_direct()
    cv = {}
    for c in lag['channels']:
        for p in c['partitions']:
            cv[(p['topic'], p['partition'])] = (p['acked_offset'], p['high_watermark'],
                                                p['lag_messages'])
    ours = {k: v for k, v in desc.items() if k[0] in h.topics}
    h.is_(sum(v[2] for v in ours.values()), extra,
          'kafka-consumer-groups: LAG sums to the %d records published while '
          'chatvault was stopped' % extra)
    agree = [k for k in ours if k not in cv or
             (cv[k][0], cv[k][1], cv[k][2]) != ours[k]]
    h.ok(not agree and len(cv) == len(ours),
         '`chatvault lag --direct` agrees with kafka-consumer-groups on every '
         'partition (committed, end, lag)',
         'differ: %s' % [(k, cv.get(k), ours[k]) for k in agree[:5]])
    per_ch = {c['channel']: c['lag_messages'] for c in lag['channels']}
    h.is_(per_ch, {c: 25 * (i + 1) for i, c in enumerate(h.channels)},
          '`chatvault lag --direct`: lag per channel')
    h.diag('counts: published=%d records=%d acks=%d statuses=%s backlog=%d'
           % (len(sent), records, len(items), st, extra))
