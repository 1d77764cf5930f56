"""The durable path end to end: 50,000 messages over 20 channels, published by
python3-kafka, become exactly 50,000 rows and 50,000 PERSISTED acks, each ack
produced after its row committed, and the group's committed offsets reach the
end of every partition."""
import random
import time

import cvtest

N = 50000
CHANNELS = ['dp%02d' % i for i in range(20)]
PARTITIONS = 4

topics = {'chat.' + c: PARTITIONS for c in CHANNELS}

with cvtest.Harness('durable_path', topics=topics, partitions=16) as h:
    h.migrate()
    h.start_broker()

    rnd = random.Random(20261122)
    sent = {}                      # message_id -> (channel, body, sent_at_us)
    prod = h.producer()
    t0 = time.time()
    for i in range(N):
        ch = CHANNELS[i % len(CHANNELS)]
        body = ('%d:' % i).encode() + rnd.randbytes(rnd.randrange(0, 200))
        sent_at = cvtest.now_us()
        mid, value = cvtest.chat_message(ch, body, sent_at_us=sent_at,
                                         attributes={'i': str(i)})
        sent[mid] = (ch, body, sent_at)
        prod.send('chat.' + ch, value=value, key=mid.encode())
    prod.flush(timeout=120)
    h.diag('published %d messages in %.1fs' % (N, time.time() - t0))

    acks_c = h.consumer('chatvault.acks')
    acks = h.drain(acks_c, lambda out: len(out) >= N, timeout=400, idle=120)
    rows_n = h.wait_rows(N, timeout=60)

    h.is_(rows_n, N, 'exactly %d rows in chatvault.messages' % N)
    # Straggling duplicates would show up shortly after the last expected ack.
    acks += h.drain(acks_c, lambda out: False, timeout=3)
    h.is_(len(acks), N, 'exactly %d acks on chatvault.acks' % N)

    parsed = [(r, cvtest.parse_ack(r.value)) for r in acks]
    statuses = {}
    for _, a in parsed:
        statuses[cvtest.STATUS.get(a.status, a.status)] = \
            statuses.get(cvtest.STATUS.get(a.status, a.status), 0) + 1
    h.is_(statuses, {'PERSISTED': N}, 'every ack says PERSISTED')
    acked_ids = [a.message_id for _, a in parsed]
    h.is_(len(set(acked_ids)), N, 'one ack per message id')
    h.ok(set(acked_ids) == set(sent), 'the acked ids are the published ids',
         'not acked: %d, unknown: %d' % (len(set(sent) - set(acked_ids)),
                                         len(set(acked_ids) - set(sent))))
    bad_key = [a.message_id for r, a in parsed if r.key != a.channel.encode()]
    h.ok(not bad_key, 'every ack is keyed by its channel', bad_key[:5])

    rows = h.query(
        'SELECT message_id, channel, kafka_topic, kafka_partition, kafka_offset, '
        'body, sent_at_us, attributes, '
        '(extract(epoch FROM persisted_at) * 1000000)::bigint '
        'FROM chatvault.messages')
    by_id = {r[0]: r for r in rows}
    h.is_(len(by_id), N, 'message ids are unique across channels')
    wrong = [m for m, (ch, body, sent_at) in sent.items()
             if m not in by_id or by_id[m][1] != ch or bytes(by_id[m][5]) != body
             or by_id[m][6] != sent_at]
    h.ok(not wrong, 'every row holds the channel, body and sent_at that were sent',
         'first wrong: %s' % wrong[:3])
    h.ok(all(by_id[m][2] == 'chat.' + by_id[m][1] for m in by_id),
         'every row records the topic of its channel')
    attrs_wrong = [m for m in sent if m in by_id and
                   not isinstance(by_id[m][7], dict)]
    h.ok(not attrs_wrong, 'attributes are stored as a JSON object', attrs_wrong[:3])

    # Acks match their rows' coordinates and come after the commit.
    mismatch, early_ts, early_pa = [], [], []
    for r, a in parsed:
        row = by_id.get(a.message_id)
        if row is None:
            continue
        if (a.channel, a.topic, a.partition, a.offset) != (row[1], row[2], row[3], row[4]):
            mismatch.append(a.message_id)
        persisted_us = row[8]
        # the ack's Kafka timestamp (ms, taken when it was produced) cannot be
        # earlier than the millisecond the row was written in
        if r.timestamp < persisted_us // 1000:
            early_ts.append((a.message_id, r.timestamp, persisted_us))
        if a.persisted_at_us < persisted_us:
            early_pa.append((a.message_id, a.persisted_at_us, persisted_us))
    h.ok(not mismatch, 'every ack names its row\'s topic, partition and offset',
         mismatch[:5])
    h.ok(not early_ts, 'every ack was produced after its row was written',
         early_ts[:5])
    h.ok(not early_pa, 'every ack\'s persisted_at_us is not before the row\'s '
         'persisted_at', early_pa[:5])
    h.ok(all(a.stores & 1 for _, a in parsed), 'every ack has the PostgreSQL store bit')
    h.ok(all(a.sent_at_us == sent[a.message_id][2] for _, a in parsed
             if a.message_id in sent), 'every ack carries the message\'s sent_at_us')

    # The group's committed offsets reach the end of every chat partition.
    behind, offs = h.wait_committed(['chat.' + c for c in CHANNELS])
    h.ok(len(offs) == len(CHANNELS) * PARTITIONS and not behind,
         'group chatvault committed offset = end offset on all %d partitions'
         % (len(CHANNELS) * PARTITIONS), 'behind (committed, end): %s' % behind)
    total_end = sum(v[1] for v in offs.values())
    h.is_(total_end, N, 'the chat partitions hold the %d published records' % N)

    pg_offs = dict(((t, p), o) for t, p, o in h.query(
        "SELECT topic, kafka_partition, next_offset FROM chatvault.kafka_offsets "
        "WHERE consumer_group = 'chatvault'"))
    h.ok(all(pg_offs.get((tp.topic, tp.partition)) == v[1] for tp, v in offs.items()
             if v[1] > 0),
         'chatvault.kafka_offsets = end offsets too')

    rc = h.broker.stop()
    h.is_(rc, 0, 'broker exits 0 on SIGTERM')
