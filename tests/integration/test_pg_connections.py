"""A backlog stored over several PostgreSQL connections (postgres.connections
= 3): large batches are spread by topic over the connections and written in
parallel, and what the one-connection store guarantees still holds: every
message one row, a re-sent id DUPLICATE (also when the first copy was
written by another connection's share of an earlier batch), bad records
rejected, chatvault.kafka_offsets at the end of every partition, the
report rollups exact, and Kafka's committed offsets at the end."""
import collections

import cvtest

CHANNELS = ['pc-a', 'pc-b', 'pc-c', 'pc-d', 'pc-e']
PER_CHANNEL = 1200
DUPS_PER_CHANNEL = 60
topics = {'chat.' + c: 2 for c in CHANNELS}


def send(prod, channel, body, mid):
    # Keyed by the id: a re-sent id goes to its first copy's partition, so
    # the first copy is the first consumed.
    prod.send('chat.' + channel, key=mid.encode(),
              value=cvtest.chat_message(channel, body, message_id=mid)[1])


with cvtest.Harness('pg_connections', topics=topics, partitions=2,
                    config={'postgres.connections': 3,
                            'search.index': 'off',
                            'batch.max_ms': 200}) as h:
    h.migrate()
    # Everything is published before the broker starts, so that it finds a
    # backlog and its batches are full (5000 records over five topics).
    prod = h.producer()
    want = collections.Counter()
    for c in CHANNELS:
        for i in range(PER_CHANNEL):
            send(prod, c, b'body %d of %s' % (i, c.encode()), '%s-%d' % (c, i))
            want['PERSISTED'] += 1
        # The same ids again with other bodies: duplicates, spread over the
        # channel's history so some meet their first copy in an earlier
        # batch and some in the same one.
        for i in range(0, PER_CHANNEL, PER_CHANNEL // DUPS_PER_CHANNEL):
            send(prod, c, b'again', '%s-%d' % (c, i))
            want['DUPLICATE'] += 1
        # A record naming another channel: rejected.
        prod.send('chat.' + c, value=cvtest.chat_message('elsewhere', b'wrong channel',
                                                         message_id=c + '-bad')[1])
        want['REJECTED'] += 1
    prod.flush(timeout=120)
    total = sum(want.values())

    h.start_broker()
    acks_c = h.consumer('chatvault.acks')
    acks = h.drain(acks_c, lambda out: len(out) >= total, timeout=300)
    acks += h.drain(acks_c, lambda out: False, timeout=3)    # stragglers
    got = collections.Counter(cvtest.STATUS[cvtest.parse_ack(r.value).status]
                              for r in acks)
    h.is_(dict(got), dict(want), 'acks: %d PERSISTED, %d DUPLICATE, %d REJECTED'
          % (want['PERSISTED'], want['DUPLICATE'], want['REJECTED']))

    # Extra connections are made only when a batch is spread over them.
    conns = h.query("SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND backend_type = 'client backend'")[0][0]
    h.ok(conns >= 2, 'the broker stored over more than one connection',
         '%d connections of the broker' % conns)

    rows = h.query('SELECT channel, count(*), count(DISTINCT message_id),'
                   " count(*) FILTER (WHERE body = 'again')"
                   ' FROM chatvault.messages GROUP BY channel ORDER BY channel')
    h.is_(rows, [(c, PER_CHANNEL, PER_CHANNEL, 0) for c in CHANNELS],
          'every channel: each message once, with its first body')
    rejected = h.query('SELECT count(*) FROM chatvault.rejected')[0][0]
    h.is_(rejected, want['REJECTED'], 'the rejected records are in chatvault.rejected')
    dups = h.query('SELECT count(*) FROM chatvault.duplicates')[0][0]
    h.is_(dups, want['DUPLICATE'], 'every duplicate is in chatvault.duplicates once')

    hourly = h.query('SELECT channel, sum(messages)::bigint FROM chatvault.report_hourly'
                     ' GROUP BY channel ORDER BY channel')
    h.is_(hourly, [(c, PER_CHANNEL) for c in CHANNELS],
          'report rollups: exactly the stored messages per channel')
    dup_roll = h.query('SELECT sum(duplicates)::bigint FROM chatvault.report_duplicates')
    h.is_(dup_roll[0][0], want['DUPLICATE'], 'report rollups: exactly the duplicates')

    behind, offs = h.wait_committed(list(topics), timeout=60)
    h.ok(not behind, 'Kafka committed offsets reach the end of every partition',
         'behind: %s' % behind)
    pg_offs = dict(((t, p), o) for t, p, o in h.query(
        'SELECT topic, kafka_partition, next_offset FROM chatvault.kafka_offsets'))
    ends = dict(((tp.topic, tp.partition), end) for tp, (_, end) in offs.items()
                if end > 0)
    h.is_(pg_offs, ends, 'chatvault.kafka_offsets holds the end of every partition')
