"""Damage in the log is never taken for a torn tail (issue 15), through the
real broker: 2,000 messages over 4 channels, all acked, broker stopped with
SIGTERM; one bit flipped in the last record of one partition's open
segment. `log check` exits 3 naming the segment and byte; the broker serves
the other partitions, refuses the damaged one (no ack, file untouched);
`verify` reports log_damaged; `verify --repair` keeps the damaged file as
evidence and rebuilds the lost records from PostgreSQL, after which
`log check` and a second `verify` pass and the broker acks that partition
again. Then a kill -9 and a garbage (zero) tail: the next broker cuts it,
keeps the bytes beside the segment, logs and counts it, and serves on."""
import glob
import json
import os
import subprocess
import time
import urllib.request

import cvtest

CHANNELS = ['a', 'b', 'c', 'd']
N = 2000


def verify(h, *args):
    r = h.run('verify', '--quiet', '--json', *args, timeout=300)
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    return r, [l for l in lines if 'kind' in l], [l for l in lines if 'summary' in l]


def wait_ack(h, acks, mid, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for recs in acks.poll(timeout_ms=500).values():
            for rec in recs:
                a = cvtest.parse_ack(rec.value)
                if a.message_id == mid:
                    return a
        if h.broker_died():
            return None
    return None


def logged_ids(h):
    r = h.run('log', 'cat', timeout=120)
    return r, {json.loads(l)['message_id'] for l in r.stdout.splitlines() if l.strip()}


with cvtest.Harness('log_damage', topics={'chat.' + c: 2 for c in CHANNELS},
                    partitions=2) as h:
    port = cvtest.free_port()
    h.write_config(**{'http.listen': '127.0.0.1:%d' % port})
    topics = ['chat.' + c for c in CHANNELS]
    h.migrate()
    h.start_broker()
    prod = h.producer()
    ids = []
    for i in range(N):
        c = CHANNELS[i % 4]
        mid, value = cvtest.chat_message(c, b'message %d' % i)
        ids.append(mid)
        prod.send('chat.' + c, value=value, partition=(i // 4) % 2)
    prod.flush(timeout=120)
    h.is_(h.wait_rows(N), N, '%d messages stored in PostgreSQL' % N)
    behind, _ = h.wait_committed(topics, timeout=120)
    h.ok(not behind, 'every message acked and committed', behind)
    h.is_(h.broker.stop(), 0, 'the broker stops with SIGTERM')

    pdir = os.path.join(h.tmp, 'log', 'chat.a-0')
    h.ok(os.path.exists(os.path.join(pdir, 'sealed')), 'the clean stop sealed chat.a-0')
    seg = sorted(glob.glob(os.path.join(pdir, '*.cvlog')))[-1]
    with open(seg, 'rb') as f:
        data = bytearray(f.read())
    data[len(data) - 60] ^= 0x01  # the last record: the open segment's last batch
    with open(seg, 'wb') as f:
        f.write(data)
    damaged = bytes(data)

    r = h.run('log', 'check')
    h.is_(r.returncode, 3, 'log check exits 3 on the flipped bit')
    h.ok(seg in r.stderr and 'at byte' in r.stderr and 'torn' not in r.stdout,
         'it names the segment and the byte, and no torn tail', r.stdout + r.stderr)

    # The broker serves another partition, and refuses the damaged one.
    h.start_broker()
    acks = h.consumer('chatvault.acks')
    acks.poll(timeout_ms=1000)
    acks.seek_to_end()
    mid_b, value = cvtest.chat_message('b', b'after the damage, elsewhere')
    prod.send('chat.b', value=value, partition=0)
    prod.flush(timeout=30)
    a = wait_ack(h, acks, mid_b, 60)
    h.ok(a is not None and a.status == 1 and a.stores == 3,
         'a message of another partition is acked PERSISTED by both stores', a)
    mid_a, value = cvtest.chat_message('a', b'after the damage, here')
    prod.send('chat.a', value=value, partition=0)
    prod.flush(timeout=30)
    a = wait_ack(h, acks, mid_a, 10)
    h.ok(a is None, 'no ack for a message of the damaged partition', a)
    with open(seg, 'rb') as f:
        h.ok(f.read() == damaged, 'the broker neither truncated nor rewrote the segment')
    log = h.broker_log()
    h.ok('verify --repair' in log and os.path.basename(seg) in log,
         'the broker log names the segment and what to run')
    try:
        ready = urllib.request.urlopen('http://127.0.0.1:%d/readyz' % port, timeout=5)
        code = ready.status
    except urllib.error.HTTPError as e:
        code = e.code
    h.is_(code, 503, '/readyz reports not ready while the partition is refused')
    h.is_(h.broker.stop(), 0, 'the broker stops with SIGTERM while refusing it')

    r, findings, summary = verify(h)
    h.is_(r.returncode, 3, 'verify exits 3')
    h.ok(any(f['kind'] == 'log_damaged' and seg in f['detail'] for f in findings),
         'verify reports log_damaged naming the segment', r.stdout[-1500:])

    r, findings, summary = verify(h, '--repair')
    h.is_(r.returncode, 0, 'verify --repair exits 0: its second pass is clean')
    h.ok(summary and summary[0]['summary']['log_quarantined'] == 1,
         'it moved one damaged file aside', r.stdout[-1500:] + r.stderr[-1500:])
    kept = glob.glob(seg + '.damaged-*')
    ok = len(kept) == 1
    if ok:
        with open(kept[0], 'rb') as f:
            ok = f.read() == damaged
    h.ok(ok, 'the damaged segment is kept, byte for byte, as evidence', kept)
    c = h.run('log', 'check')
    h.is_(c.returncode, 0, 'log check passes after the repair')
    if c.returncode:
        h.diag(c.stdout + c.stderr)
    r, got = logged_ids(h)
    h.ok(set(ids) <= got, 'log cat shows every one of the %d messages again' % N,
         '%d missing' % len(set(ids) - got))
    r, findings, summary = verify(h)
    h.is_(r.returncode, 0, 'a second verify exits 0')

    # The broker writes the partition again; the stuck message is acked.
    h.start_broker()
    a = wait_ack(h, acks, mid_a, 60)
    h.ok(a is not None and a.stores & 2, 'the damaged partition is acked again, '
         'with the log', a)
    behind, _ = h.wait_committed(topics, timeout=60)
    h.ok(not behind, 'and committed', behind)

    # kill -9 of a broker that wrote chat.c-1, then a tail of zeros on the
    # segment it wrote (a block the file was extended by that never reached
    # the disk): cut, kept, logged, counted.
    last = None
    for i in range(20):
        last, value = cvtest.chat_message('c', b'before the crash %d' % i)
        prod.send('chat.c', value=value, partition=1)
    prod.flush(timeout=30)
    h.ok(wait_ack(h, acks, last, 60) is not None, 'the broker wrote chat.c-1')
    h.broker.kill9()
    pdir = os.path.join(h.tmp, 'log', 'chat.c-1')
    seg = sorted(glob.glob(os.path.join(pdir, '*.cvlog')))[-1]
    size = os.path.getsize(seg)
    with open(seg, 'ab') as f:
        f.write(b'\0' * 700)
    h.start_broker()
    mid_c, value = cvtest.chat_message('c', b'after the crash')
    prod.send('chat.c', value=value, partition=1)
    prod.flush(timeout=30)
    a = wait_ack(h, acks, mid_c, 60)
    h.ok(a is not None and a.stores == 3, 'after the crash the partition is acked by '
         'both stores', a)
    h.is_(os.path.getsize(seg), size, 'the zero tail was cut at the last record')
    side = glob.glob(seg + '.torn-*')
    h.ok(len(side) == 1 and os.path.getsize(side[0]) == 700,
         'the cut bytes are kept beside the segment', side)
    h.ok('torn tail' in h.broker_log() and 'dropped_bytes=700' in h.broker_log(),
         'the broker log reports the cut with its size')
    with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port, timeout=5) as m:
        text = m.read().decode()
    h.ok('chatvault_log_torn_tails_total 1' in text and
         'chatvault_log_torn_bytes_total 700' in text,
         '/metrics counts the torn tail and its bytes')
    h.is_(h.broker.stop(), 0, 'broker stopped')
    r, findings, summary = verify(h)
    h.is_(r.returncode, 0, 'verify agrees at the end')

    # The PostgreSQL side: an edited body is a difference verify names.
    victim = ids[7]
    h.pg().cursor().execute(
        "UPDATE chatvault.messages SET body = 'edited by hand' WHERE message_id = %s",
        (victim,))
    r, findings, summary = verify(h)
    h.is_(r.returncode, 3, 'verify exits 3 after a row body was edited in PostgreSQL')
    h.ok([f['message_id'] for f in findings if f['kind'] == 'different'] == [victim],
         'it names that message as different', r.stdout[-1500:])

    # log cat --text shows a UTF-8 body as text beside its base64.
    r = h.run('log', 'cat', '--text', '--topic', 'chat.c', '--partition', '1', timeout=120)
    recs = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    h.ok(recs and any(x.get('text') == 'after the crash' for x in recs) and
         all('body' in x for x in recs), 'log cat --text prints UTF-8 bodies as text')
    # Options every command shares may stand before the command.
    r = subprocess.run([cvtest.BIN, '-c', h.config_path, 'log', 'check'],
                       capture_output=True, text=True, timeout=120)
    h.is_(r.returncode, 0, 'chatvault -c FILE log check: global options before the command')
