"""chatvault replay: one channel of 10,000 messages replayed to --to-topic
and consumed back with python3-kafka, every message compared with the bytes
originally published; the same with PostgreSQL unreachable (served from the
log); --dry-run sends nothing; a replay to the original topic is acked
DUPLICATE by the running broker and not stored twice."""
import os
import time

import cvtest

N = 10000
IDS = 100


def drain_topic(h, topic, want):
    c = h.consumer(topic)
    recs = h.drain(c, lambda out: len(out) >= want, timeout=180)
    recs += h.drain(c, lambda out: False, timeout=2)  # nothing more
    return recs


def check_copy(h, recs, original, source, what):
    got = {}
    for rec in recs:
        m = cvtest.pb.ChatMessage()
        m.ParseFromString(rec.value)
        got.setdefault(m.message_id, []).append(rec)
    h.is_(len(recs), N, '%s: %d messages arrived' % (what, N))
    h.ok(sorted(got) == sorted(original) and all(len(v) == 1 for v in got.values()),
         '%s: each message exactly once' % what)
    same = sum(1 for mid, v in got.items()
               if mid in original and v[0].value == original[mid])
    h.is_(same, N, '%s: every message is byte-identical to the original' % what)
    hdrs = [dict(r.headers) for r in recs]
    h.ok(all(x.get('chatvault-replay') == source.encode() for x in hdrs),
         '%s: every message carries chatvault-replay: %s' % (what, source))
    h.ok(all(x.get('chatvault-replay-origin', b'').startswith(b'chat.r/')
             for x in hdrs), '%s: and its origin' % what)
    h.ok(all(r.key == b'r' for r in recs), '%s: keyed by channel' % what)


with cvtest.Harness('replay', topics={'chat.r': 2, 'chat.other': 1,
                                      'replayed.r': 2, 'fromlog.r': 1},
                    partitions=2) as h:
    h.migrate()
    h.start_broker()
    prod = h.producer()
    original = {}
    for i in range(N):
        attrs = {'n': str(i)} if i % 3 == 0 else {}
        body = ('message %d ' % i).encode() * (1 + i % 7)
        mid, value = cvtest.chat_message('r', body, attributes=attrs)
        original[mid] = value
        prod.send('chat.r', value=value)
    for i in range(50):
        prod.send('chat.other', value=cvtest.chat_message('other', b'not me')[1])
    prod.flush(timeout=120)
    h.is_(h.wait_rows(N + 50), N + 50, 'all messages stored')
    deadline = time.time() + 60
    while h.run('verify', '--quiet').returncode != 0 and time.time() < deadline:
        time.sleep(1)
    h.is_(h.run('verify', '--quiet').returncode, 0, 'both stores hold them')

    r = h.run('replay', '--channel', 'r', '--to-topic', 'replayed.{channel}',
              '--dry-run', '--quiet')
    h.is_(r.returncode, 0, '--dry-run exits 0')
    h.ok('selected=%d' % N in r.stderr and 'sent=0' in r.stderr and
         r.stdout.count('would send') == 5, '--dry-run counts and shows a sample',
         r.stdout + r.stderr)

    t0 = time.time()
    r = h.run('replay', '--channel', 'r', '--to-topic', 'replayed.{channel}',
              '--quiet', timeout=300)
    h.is_(r.returncode, 0, 'replay from PostgreSQL exits 0')
    h.ok('selected=%d sent=%d failed=0' % (N, N) in r.stderr and
         'from_postgres=%d from_log=0' % N in r.stderr,
         'the summary says %d sent from PostgreSQL' % N, r.stderr)
    h.diag('replayed %d from PostgreSQL in %.1fs' % (N, time.time() - t0))
    check_copy(h, drain_topic(h, 'replayed.r', N), original, 'postgres',
               'replay from PostgreSQL')

    # PostgreSQL unreachable: a closed port.
    r = h.run('replay', '--channel', 'r', '--to-topic', 'fromlog.{channel}',
              '--quiet', '--set', 'postgres.conninfo=host=127.0.0.1 port=1 '
              'user=nobody connect_timeout=2', timeout=300)
    h.is_(r.returncode, 0, 'replay with PostgreSQL down exits 0')
    h.ok('postgres unavailable' in r.stderr and 'from_log=%d' % N in r.stderr,
         'it says PostgreSQL is down and serves all from the log', r.stderr)
    check_copy(h, drain_topic(h, 'fromlog.r', N), original, 'log',
               'replay from the log')

    # Back to the original topic: the broker acks DUPLICATE, stores nothing.
    ids = sorted(original)[:IDS]
    path = os.path.join(h.tmp, 'ids.txt')
    with open(path, 'w') as f:
        f.write('# replay these\n')
        for mid in ids:
            f.write('r %s\n' % mid)
    acks = h.consumer('chatvault.acks')
    h.drain(acks, lambda out: False, timeout=3, idle=2)  # skip the old ones
    r = h.run('replay', '--ids', path, '--quiet')
    h.is_(r.returncode, 0, 'replay --ids to the original topic exits 0')
    h.ok('selected=%d' % IDS in r.stderr, '--ids selects exactly %d' % IDS, r.stderr)
    got = h.drain(acks, lambda out: len(out) >= IDS, timeout=120)
    dup = {a.message_id for a in map(lambda x: cvtest.parse_ack(x.value), got)
           if cvtest.STATUS[a.status] == 'DUPLICATE'}
    h.is_(sorted(dup), ids, 'the broker acks every replayed message DUPLICATE')
    h.is_(h.query('SELECT count(*) FROM chatvault.messages')[0][0], N + 50,
          'and stores none of them twice')

    # Channel isolation: a replay never writes into the ack or DLQ topic or
    # another channel's topic unless told to, and nothing is sent first.
    before = h.group_offsets(['chatvault.acks', 'chat.other'])
    for target, why in (('chatvault.acks', 'ack topic'), ('chatvault.dlq', 'dead-letter'),
                        ('chat.other', "another channel's"),
                        ('chat.{channel}x', "another channel's")):
        r = h.run('replay', '--channel', 'r', '--to-topic', target, '--quiet')
        h.ok(r.returncode == 2 and why in r.stderr and '--allow-any-topic' in r.stderr,
             'replay --to-topic %s is refused: %s' % (target, why),
             'exit %d: %s' % (r.returncode, r.stderr[-400:]))
    time.sleep(1)
    after = h.group_offsets(['chatvault.acks', 'chat.other'])
    h.ok({k: v[1] for k, v in before.items()} == {k: v[1] for k, v in after.items()},
         'and nothing was written to those topics')
