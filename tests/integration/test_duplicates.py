"""Idempotency and rejection: a message id published twice is one row and its
second ack says DUPLICATE; bad records (garbage bytes, a channel that is not
its topic's, an oversized body, no message id) end in chatvault.rejected and
on chatvault.dlq with their original bytes and headers, are acked REJECTED
when their message id could be read, and the good records around them are
stored."""
import cvtest

MAX_BODY = 1024
topics = {'chat.dup': 1, 'chat.other': 1}


def msg(channel, body, mid=None, **kw):
    return cvtest.chat_message(channel, body, message_id=mid, **kw)[1]


with cvtest.Harness('duplicates', topics=topics, partitions=2,
                    config={'limits.max_body_bytes': MAX_BODY}) as h:
    h.migrate()
    h.start_broker()
    prod = h.producer()

    # One partition, so offsets are the publishing order. `want` is the ack
    # expected for each record (None: no ack, the id cannot be read).
    garbage = b'\x07not a protobuf message \xff\xfe'
    plan = [
        ('good-1', msg('dup', b'good one', 'good-1'), [], 'PERSISTED'),
        ('dup-1', msg('dup', b'first', 'dup-1'), [], 'PERSISTED'),
        ('garbage', garbage, [('x-trace', b'trace-42')], None),
        ('mismatch', msg('other', b'wrong channel', 'mismatch-1'), [], 'REJECTED'),
        ('too-big', msg('dup', b'x' * (MAX_BODY + 1), 'big-1'), [], 'REJECTED'),
        ('no-id', msg('dup', b'no id', ''), [], None),
        ('good-2', msg('dup', b'good two', 'good-2'), [], 'PERSISTED'),
        ('dup-1 again', msg('dup', b'second', 'dup-1'), [], 'DUPLICATE'),
        ('shared-id', msg('dup', b'shared on dup', 'shared-id'), [], 'PERSISTED'),
    ]
    futures = [prod.send('chat.dup', value=v, headers=hd) for _, v, hd, _ in plan]
    # The same message id on another channel is another message.
    shared_other = prod.send('chat.other', value=msg('other', b'shared on other',
                                                     'shared-id'))
    prod.flush(timeout=60)
    offsets = [f.get(timeout=30).offset for f in futures]
    h.is_(offsets, list(range(len(plan))), 'records published at offsets 0..%d'
          % (len(plan) - 1))
    other_offset = shared_other.get(timeout=30).offset

    acks_c = h.consumer('chatvault.acks')
    want_acks = sum(1 for p in plan if p[3]) + 1
    acks = h.drain(acks_c, lambda out: len(out) >= want_acks, timeout=120)
    h.wait_rows(4, table='chatvault.rejected', timeout=60)

    # A third copy of dup-1, published after the first was acked: a batch of
    # its own.
    third = prod.send('chat.dup', value=msg('dup', b'third', 'dup-1'))
    prod.flush(timeout=60)
    third_offset = third.get(timeout=30).offset
    acks += h.drain(acks_c, lambda out: len(out) >= 1, timeout=120)
    acks += h.drain(acks_c, lambda out: False, timeout=3)    # stragglers

    by_coord = {}
    for r in acks:
        a = cvtest.parse_ack(r.value)
        by_coord.setdefault((a.topic, a.offset), []).append(a)
    h.is_(len(acks), want_acks + 1, 'one ack per record whose id could be read')

    for (name, _, _, want), off in zip(plan, offsets):
        got = by_coord.get(('chat.dup', off), [])
        if want is None:
            h.is_(len(got), 0, '%s: no ack (no message id to ack)' % name)
            continue
        h.ok(len(got) == 1 and cvtest.STATUS[got[0].status] == want,
             '%s: acked %s' % (name, want),
             'acks: %s' % [(a.message_id, cvtest.STATUS[a.status], a.error)
                           for a in got])
        if got and want == 'REJECTED':
            h.ok(got[0].error != '' and got[0].message_id != '',
                 '%s: the REJECTED ack names the id and the error (%s)'
                 % (name, got[0].error))
    got = by_coord.get(('chat.dup', third_offset), [])
    h.ok(len(got) == 1 and cvtest.STATUS[got[0].status] == 'DUPLICATE'
         and got[0].message_id == 'dup-1',
         'dup-1 published a third time, in a later batch: acked DUPLICATE',
         [(a.message_id, cvtest.STATUS[a.status]) for a in got])
    got = by_coord.get(('chat.other', other_offset), [])
    h.ok(len(got) == 1 and cvtest.STATUS[got[0].status] == 'PERSISTED',
         'the same id on another channel: PERSISTED',
         [(a.message_id, cvtest.STATUS[a.status]) for a in got])

    rows = h.query('SELECT channel, message_id, body, kafka_offset '
                   'FROM chatvault.messages ORDER BY channel, kafka_offset')
    h.is_([(c, i, bytes(b), o) for c, i, b, o in rows],
          [('dup', 'good-1', b'good one', 0), ('dup', 'dup-1', b'first', 1),
           ('dup', 'good-2', b'good two', 6), ('dup', 'shared-id', b'shared on dup', 8),
           ('other', 'shared-id', b'shared on other', other_offset)],
          'rows: the good records once each, dup-1 with its first body')

    rej = h.query('SELECT kafka_topic, kafka_partition, kafka_offset, raw, reason, '
                  'error, message_id FROM chatvault.rejected ORDER BY kafka_offset')
    h.is_([(t, p, o) for t, p, o, *_ in rej],
          [('chat.dup', 0, offsets[i]) for i in (2, 3, 4, 5)],
          'chatvault.rejected holds the four bad records by coordinates')
    h.ok(all(bytes(r[3]) == plan[i][1] for r, i in zip(rej, (2, 3, 4, 5))),
         'chatvault.rejected keeps their original bytes')
    h.ok(all(r[4] and r[5] for r in rej), 'each rejected row has a reason and an error',
         [(r[4], r[5]) for r in rej])
    h.is_([r[6] for r in rej if r[2] == offsets[3]], ['mismatch-1'],
          'the channel mismatch is recorded with its message id')

    dlq = h.drain(h.consumer('chatvault.dlq'), lambda out: len(out) >= 4, timeout=60)
    dlq += h.drain(h.consumer('chatvault.dlq'), lambda out: False, timeout=2)[len(dlq):]
    h.is_(len(dlq), 4, 'four records on chatvault.dlq')
    dlq_by_src = {}
    for r in dlq:
        hd = {k: v for k, v in (r.headers or [])}
        dlq_by_src[hd.get('chatvault-source', b'').decode()] = (r, hd)
    for i in (2, 3, 4, 5):
        src = 'chat.dup/0@%d' % offsets[i]
        r, hd = dlq_by_src.get(src, (None, {}))
        h.ok(r is not None and r.value == plan[i][1] and hd.get('chatvault-error'),
             '%s: on the DLQ with its bytes and chatvault-error, chatvault-source=%s'
             % (plan[i][0], src), 'sources: %s' % sorted(dlq_by_src))
    r, hd = dlq_by_src.get('chat.dup/0@%d' % offsets[2], (None, {}))
    h.is_(hd.get('x-trace'), b'trace-42', 'the DLQ copy keeps the record\'s own headers')

    rc = h.broker.stop()
    h.is_(rc, 0, 'broker exits 0 on SIGTERM')
