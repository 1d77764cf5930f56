"""chatvault verify and verify --repair against real stores: 10,000 messages
through the broker into PostgreSQL and the encrypted log; 1,000 random rows
deleted are named exactly and restored byte-identical by --repair; a log
segment removed from the middle of a partition is reported as its offset
range and rebuilt from PostgreSQL into a repair directory that bridges the
broken link, after which `chatvault log check` passes."""
import json
import os
import random
import time

import cvtest

N = 10000
DELETE = 1000
COLS = ('channel, message_id, kafka_topic, kafka_partition, kafka_offset,'
        ' kafka_timestamp, sender_id, sent_at_us, body, content_type,'
        ' attributes, reply_to')


def verify(h, *args):
    r = h.run('verify', '--quiet', '--json', *args, timeout=300)
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    return r, [l for l in lines if 'kind' in l], [l for l in lines if 'summary' in l]


with cvtest.Harness('verify', topics={'chat.v': 2}, partitions=2,
                    config={'log.segment_bytes': 262144}) as h:
    h.migrate()
    h.start_broker()
    prod = h.producer()
    rnd = random.Random(5)
    for i in range(N):
        attrs = {'k%d' % (i % 3): 'v%d' % i} if i % 2 else {}
        body = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 300)))
        _, value = cvtest.chat_message('v', body, attributes=attrs,
                                       content_type='application/octet-stream'
                                       if i % 5 == 0 else 'text/plain')
        prod.send('chat.v', value=value)
    prod.flush(timeout=120)
    h.is_(h.wait_rows(N), N, '%d messages stored in PostgreSQL' % N)

    # Both stores hold everything once the acks are out; then the broker
    # stops so nothing moves under the tests.
    deadline = time.time() + 60
    while True:
        r, findings, summary = verify(h)
        if r.returncode == 0 or time.time() > deadline:
            break
        time.sleep(1)
    h.is_(r.returncode, 0, 'verify: the stores agree after the broker stored them')
    h.ok(summary and summary[-1]['summary']['matched'] == N,
         'verify compared all %d messages' % N, r.stdout[-2000:] + r.stderr)
    h.is_(h.broker.stop(), 0, 'broker stopped')

    # 1,000 random rows deleted from PostgreSQL.
    conn = h.pg()
    cur = conn.cursor()
    cur.execute('SELECT message_id FROM chatvault.messages WHERE channel = %s',
                ('v',))
    victims = sorted(rnd.sample([row[0] for row in cur.fetchall()], DELETE))
    cur.execute('SELECT %s FROM chatvault.messages WHERE channel = %%s AND'
                ' message_id = ANY(%%s) ORDER BY message_id' % COLS,
                ('v', victims))
    before = [tuple(bytes(x) if isinstance(x, memoryview) else x for x in row)
              for row in cur.fetchall()]
    cur.execute('DELETE FROM chatvault.messages WHERE channel = %s AND'
                ' message_id = ANY(%s)', ('v', victims))
    h.is_(cur.rowcount, DELETE, '%d random rows deleted' % DELETE)

    r, findings, summary = verify(h)
    h.is_(r.returncode, 3, 'verify exits 3 when rows are missing')
    named = sorted(f['message_id'] for f in findings if f['kind'] == 'only_in_log')
    h.ok(named == victims, 'verify names exactly the %d deleted messages' % DELETE,
         'named %d, %d of them deleted' % (len(named), len(set(named) & set(victims))))
    h.is_([f for f in findings if f['kind'] != 'only_in_log'], [],
          'and reports nothing else')

    r, findings, summary = verify(h, '--repair')
    h.is_(r.returncode, 0, 'verify --repair exits 0 (the second pass is clean)')
    h.ok(len(summary) == 2 and summary[0]['summary']['repaired_postgres'] == DELETE,
         'verify --repair wrote the %d rows back' % DELETE, r.stdout[-2000:] + r.stderr)
    cur.execute('SELECT %s FROM chatvault.messages WHERE channel = %%s AND'
                ' message_id = ANY(%%s) ORDER BY message_id' % COLS,
                ('v', victims))
    after = [tuple(bytes(x) if isinstance(x, memoryview) else x for x in row)
             for row in cur.fetchall()]
    h.ok(after == before, 'the restored rows are byte-identical to the deleted ones',
         'first difference: %r' % next(((a, b) for a, b in zip(before, after)
                                         if a != b), None))
    r, findings, summary = verify(h)
    h.is_(r.returncode, 0, 'verify exits 0 after the repair')

    # A segment removed from the middle of a partition's log.
    pdir = os.path.join(h.tmp, 'log', 'chat.v-0')
    segs = sorted(f for f in os.listdir(pdir) if f.endswith('.cvlog'))
    h.ok(len(segs) >= 3, 'partition 0 has %d log segments' % len(segs))
    mid = len(segs) // 2
    first, nxt = int(segs[mid][:20]), int(segs[mid + 1][:20])
    os.unlink(os.path.join(pdir, segs[mid]))
    cur.execute('SELECT message_id FROM chatvault.messages WHERE channel = %s'
                ' AND kafka_partition = 0 AND kafka_offset BETWEEN %s AND %s',
                ('v', first, nxt - 1))
    lost = sorted(row[0] for row in cur.fetchall())

    r, findings, summary = verify(h)
    h.is_(r.returncode, 3, 'verify exits 3 when a log segment is missing')
    missing = [(f['offset'], f['last_offset']) for f in findings
               if f['kind'] == 'log_segment_missing']
    h.is_(missing, [(first, nxt - 1)], 'verify reports the missing range %d..%d'
          % (first, nxt - 1))
    only_pg = [f for f in findings if f['kind'] == 'only_in_postgres']
    h.ok(sorted(f['message_id'] for f in only_pg) == lost and
         all(first <= f['offset'] < nxt and f['partition'] == 0 for f in only_pg),
         'the %d messages of the range are reported only in PostgreSQL' % len(lost))
    h.ok(h.run('log', 'check').returncode != 0, 'log check fails on the broken chain')

    r, findings, summary = verify(h, '--repair')
    h.is_(r.returncode, 0, 'verify --repair rebuilds the segment from PostgreSQL')
    h.ok(summary and summary[0]['summary']['repaired_log'] == len(lost),
         'it appended the %d records to the log' % len(lost), r.stdout[-2000:] + r.stderr)
    reps = [d for d in os.listdir(pdir) if d.startswith('repair-')]
    h.is_(len(reps), 1, 'into one repair directory of the partition')
    c = h.run('log', 'check')
    h.is_(c.returncode, 0, 'log check passes after the repair')
    if c.returncode:
        h.diag(c.stdout + c.stderr)
    r, findings, summary = verify(h)
    h.is_(r.returncode, 0, 'verify exits 0 after the log repair')
    h.ok(summary and summary[-1]['summary']['matched'] == N,
         'and again compares all %d messages' % N)

    # The repaired records read back as the originals.
    cat = h.run('log', 'cat', '--topic', 'chat.v', '--partition', '0',
                '--from-offset', str(first), timeout=120)
    got = {}
    for line in cat.stdout.splitlines():
        rec = json.loads(line)
        if first <= rec['offset'] < nxt:
            got[rec['message_id']] = rec
    cur.execute('SELECT message_id, encode(body, \'base64\') FROM chatvault.messages'
                ' WHERE channel = %s AND message_id = ANY(%s)', ('v', lost))
    want = {mid_: b64.replace('\n', '') for mid_, b64 in cur.fetchall()}
    h.ok(sorted(got) == lost and all(got[m]['body'] == want[m] for m in lost),
         'log cat returns the rebuilt records with their bodies')
