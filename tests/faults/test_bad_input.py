"""Bad input: every kind of bad record, each among good ones in the same batch
and partition, and bad configuration / unreachable services at start.

tests/integration/test_duplicates.py checks the DLQ basics one record per
batch; this test adds: all reasons (decode, truncated protobuf, missing
channel, missing id, id too long, invalid channel name, channel mismatch,
oversize body, invalid UTF-8) in ONE batch (published before the broker
starts, so its first poll takes them all) and in a live stream; Kafka
Connect's __connect.errors.* headers; chatvault.rejected reasons; the
chatvault_rejected_total{reason} metric; and start-up errors (exit codes,
one-line messages naming the key, file or host)."""
import os
import re
import subprocess
import time

import faultlib
from faultlib import cvtest

MAX_BODY = 2048
TOPIC = 'chat.bad'
port = faultlib.free_port()


def msg(channel, body, mid, **kw):
    return cvtest.chat_message(channel, body, message_id=mid, **kw)[1]


def bad_records(tag):
    """(name, bytes, reason, ack expected: message id or None)."""
    good_for_trunc = msg('bad', b'y' * 50, 'trunc-' + tag)
    pb = cvtest.pb
    bad_utf8 = pb.ChatMessage(message_id='utf-' + tag, channel='bad',
                              sent_at_us=cvtest.now_us(), body=b'b')
    raw = bad_utf8.SerializeToString()
    # sender_id (field 3, wire type 2) with invalid UTF-8 bytes, appended.
    raw_bad_utf8 = raw + bytes([0x1a, 2, 0xff, 0xfe])
    return [
        ('garbage', b'\x07not a protobuf \xff\xfe' + tag.encode(), 'decode', None),
        ('truncated', good_for_trunc[:len(good_for_trunc) - 7], 'decode', None),
        ('no channel', msg('', b'no channel', 'nochan-' + tag), 'missing_field',
         'nochan-' + tag),
        ('no message id', msg('bad', b'no id ' + tag.encode(), ''), 'missing_field',
         None),
        ('id too long', msg('bad', b'long id', 'L' * 129 + tag), 'id_too_long', None),
        ('invalid channel name', msg('bad channel!', b'bad name', 'badname-' + tag),
         'bad_channel', 'badname-' + tag),
        ('channel mismatch', msg('other', b'wrong channel', 'mismatch-' + tag),
         'channel_mismatch', 'mismatch-' + tag),
        ('oversize body', msg('bad', b'x' * (MAX_BODY + 1), 'big-' + tag),
         'body_too_large', 'big-' + tag),
        ('invalid UTF-8 sender', raw_bad_utf8, 'bad_text', 'utf-' + tag),
        ('NUL in sender_id', msg('bad', b'nul sender', 'nulsender-' + tag,
                                 sender_id='a\x00b'), 'bad_text', 'nulsender-' + tag),
        # The id cannot be read faithfully ("nulid-x\0tail" would arrive as
        # "nulid-x"): no ack, or it would name another message's id.
        ('NUL in message_id', msg('bad', b'nul id', 'nulid-' + tag + '\x00tail'),
         'bad_text', None),
        ('reply_to a chat topic', msg('bad', b'reply', 'replychat-' + tag,
                                      reply_to='chat.other'),
         'bad_reply_to', 'replychat-' + tag),
        ('reply_to not a topic name', msg('bad', b'reply', 'replyname-' + tag,
                                          reply_to='not a topic!'),
         'bad_reply_to', 'replyname-' + tag),
    ]


with faultlib.FaultHarness('bad_input', topics={TOPIC: 1, 'chat.other': 1},
                           partitions=2,
                           config={'limits.max_body_bytes': MAX_BODY,
                                   'http.listen': '127.0.0.1:%d' % port}) as h:
    h.migrate()
    prod = h.producer(linger_ms=50)

    # plan: (name, bytes, headers, reason or None for good, ack id or None)
    plan = []
    goods = {}

    def add_round(tag):
        for i, (name, value, reason, ack_id) in enumerate(bad_records(tag)):
            for j in range(3):
                mid = 'good-%s-%d-%d' % (tag, i, j)
                body = ('good %s %d %d' % (tag, i, j)).encode()
                goods[mid] = ('bad', body)
                plan.append(('good', msg('bad', body, mid), [], None, mid))
            plan.append(('%s (%s)' % (name, tag), value,
                         [('x-trace', ('trace-%s-%d' % (tag, i)).encode())],
                         reason, ack_id))
        for j in range(3):
            mid = 'good-%s-tail-%d' % (tag, j)
            goods[mid] = ('bad', b'tail')
            plan.append(('good', msg('bad', b'tail', mid), [], None, mid))

    def publish(start):
        futs = [prod.send(TOPIC, value=v, headers=hd) for _, v, hd, _, _ in plan[start:]]
        prod.flush(timeout=60)
        return [f.get(timeout=30).offset for f in futs]

    # Round 1: published before the broker runs, so one poll, one batch.
    add_round('batch')
    offsets = publish(0)
    nkinds = len(bad_records('x'))
    h.is_(offsets, list(range(len(plan))), 'round 1: %d records (%d bad) at '
          'offsets 0..%d of one partition' % (len(plan), nkinds, len(plan) - 1))
    h.start_broker()
    time.sleep(3)
    # Round 2: the same among a live stream.
    n1 = len(plan)
    add_round('live')
    offsets += publish(n1)
    h.diag('injected: %d bad records (%d kinds x 2 rounds) among %d good ones, '
           'one partition' % (sum(1 for p in plan if p[3]), nkinds, len(goods)))

    bads = [(p, o) for p, o in zip(plan, offsets) if p[3]]
    want_acks = len(goods) + sum(1 for p, _ in bads if p[4])
    acks_c = h.consumer('chatvault.acks')
    acks = h.drain(acks_c, lambda out: len(out) >= want_acks, timeout=120)
    acks += h.drain(acks_c, lambda out: False, timeout=3)
    h.wait_rows(len(bads), table='chatvault.rejected', timeout=60)
    by_off = {}
    for r in acks:
        a = cvtest.parse_ack(r.value)
        by_off.setdefault((a.topic, a.offset), []).append(a)
    h.is_(len(acks), want_acks, 'one ack per record whose id is readable '
          '(%d good + %d rejected)' % (len(goods), want_acks - len(goods)))

    # Good records: stored once in both stores, acked PERSISTED.
    rows = h.query('SELECT message_id, channel, body FROM chatvault.messages')
    h.is_(sorted((m, c, bytes(b)) for m, c, b in rows),
          sorted((m, c, b) for m, (c, b) in goods.items()),
          'PostgreSQL holds exactly the %d good records' % len(goods))
    log_ids = [r['message_id'] for r in faultlib.log_cat(h)]
    faultlib.check_store(h, 'the log', log_ids, goods)
    faultlib.check_verify(h)
    good_acks = [by_off.get((TOPIC, o), []) for p, o in zip(plan, offsets) if not p[3]]
    h.ok(all(len(l) == 1 and cvtest.STATUS[l[0].status] == 'PERSISTED'
             for l in good_acks),
         'every good record around the bad ones acked PERSISTED once')

    # Rejected records: acks, chatvault.rejected, DLQ.
    rej = {r[0]: r for r in h.query(
        'SELECT kafka_offset, raw, reason, error, message_id FROM chatvault.rejected '
        "WHERE kafka_topic = %s", (TOPIC,))}
    dlq = h.drain(h.consumer('chatvault.dlq'), lambda out: len(out) >= len(bads),
                  timeout=60)
    dlq += h.drain(h.consumer('chatvault.dlq'), lambda out: False, timeout=2)[len(dlq):]
    h.is_(len(dlq), len(bads), '%d records on chatvault.dlq' % len(bads))
    dlq_by_off = {}
    for r in dlq:
        hd = {k: v for k, v in (r.headers or [])}
        dlq_by_off[int(hd.get('__connect.errors.offset', b'-1'))] = (r, hd)
    for (name, value, headers, reason, ack_id), off in bads:
        got = by_off.get((TOPIC, off), [])
        if ack_id is None and got:
            h.diag('%s: acked as %s' % (name, [(a.message_id, cvtest.STATUS[a.status])
                                               for a in got]))
        if ack_id:
            h.ok(len(got) == 1 and cvtest.STATUS[got[0].status] == 'REJECTED'
                 and got[0].message_id == ack_id and got[0].error,
                 '%s: acked REJECTED with its id and error' % name,
                 [(a.message_id, cvtest.STATUS[a.status], a.error) for a in got])
        else:
            h.is_(len(got), 0, '%s: no ack (no readable message id)' % name)
        row = rej.get(off)
        h.ok(row is not None and bytes(row[1]) == value and row[2] == reason
             and row[3], '%s: chatvault.rejected row, reason %s, original bytes'
             % (name, reason), row and (row[2], row[3]))
        r, hd = dlq_by_off.get(off, (None, {}))
        want_hd = {
            'chatvault-source': ('%s/0@%d' % (TOPIC, off)).encode(),
            '__connect.errors.topic': TOPIC.encode(),
            '__connect.errors.partition': b'0',
            '__connect.errors.offset': str(off).encode(),
            'chatvault-reason': reason.encode(),
            '__connect.errors.stage': reason.encode(),
            'x-trace': headers[0][1],
        }
        wrong = {k: (hd.get(k), v) for k, v in want_hd.items() if hd.get(k) != v}
        h.ok(r is not None and r.value == value and not wrong
             and hd.get('chatvault-error')
             and hd.get('__connect.errors.exception.message')
             and hd.get('__connect.errors.exception.class.name'),
             '%s: on the DLQ with its bytes, its own headers, chatvault-* and '
             '__connect.errors.* headers' % name, wrong or sorted(hd))

    st, metrics = faultlib.http_get('http://127.0.0.1:%d/metrics' % port)
    if st == 200:
        counts = {}
        for line in metrics.splitlines():
            m = re.match(r'chatvault_rejected_total\{([^}]*)\}\s+(\S+)', line)
            if m:
                lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
                counts[lab.get('reason')] = counts.get(lab.get('reason'), 0) + \
                    float(m.group(2))
        want = {}
        for (_, _, _, reason, _), _ in bads:
            want[reason] = want.get(reason, 0) + 1
        h.is_({k: int(v) for k, v in counts.items() if v}, want,
              'chatvault_rejected_total{reason} counts each rejection')
    else:
        h.diag('/metrics not served (%s): metric check skipped' % st)
    rc = h.broker.stop()
    h.is_(rc, 0, 'broker exits 0 on SIGTERM')
    h.diag('counts: published=%d good=%d rejected=%d (rows %d, dlq %d) acks=%d '
           'stored_pg=%d stored_log=%d duplicates=0'
           % (len(plan), len(goods), len(bads), len(rej), len(dlq), len(acks),
              len(rows), len(log_ids)))

    # --- start-up errors ---------------------------------------------------
    def broker(*args, timeout=60, config=True):
        return h.run('broker', *args, timeout=timeout, config=config)

    def one_line(r):
        return len([l for l in r.stderr.splitlines() if l.strip()]) == 1

    r = broker('--set', 'no.such.key=1')
    h.ok(r.returncode == 2 and 'no.such.key' in r.stderr and one_line(r),
         'unknown key: exit 2, one line naming it', (r.returncode, r.stderr))
    r = broker('--set', 'batch.max_messages=lots')
    h.ok(r.returncode == 2 and 'batch.max_messages' in r.stderr and one_line(r),
         'bad value: exit 2, one line naming the key', (r.returncode, r.stderr))
    r = broker('--set', 'ack.policy=some')
    h.ok(r.returncode == 2 and 'ack.policy' in r.stderr and one_line(r),
         'bad enum value: exit 2, one line naming the key', (r.returncode, r.stderr))
    missing = os.path.join(h.tmp, 'no-such.conf')
    r = h.run('broker', '-c', missing, config=False)
    h.ok(r.returncode == 2 and missing in r.stderr and one_line(r),
         'missing config file: exit 2, one line naming it', (r.returncode, r.stderr))
    # Root reads any mode; a directory is a config file nobody can read.
    unreadable = os.path.join(h.tmp, 'conf.d')
    os.mkdir(unreadable)
    r = h.run('broker', '-c', unreadable, config=False)
    h.ok(r.returncode == 2 and unreadable in r.stderr and one_line(r),
         'unreadable config file (a directory): exit 2, one line naming it',
         (r.returncode, r.stderr))
    bad_line = os.path.join(h.tmp, 'bad-line.conf')
    with open(bad_line, 'w') as f:
        f.write('this line has no equals sign\n')
    r = h.run('broker', '-c', bad_line, config=False)
    h.ok(r.returncode == 2 and bad_line in r.stderr and one_line(r),
         'a malformed config line: exit 2, one line naming the file',
         (r.returncode, r.stderr))
    r = h.run('broker', '--set', 'log.key_file=' + missing)
    h.ok(r.returncode == 2 and missing in r.stderr and one_line(r),
         'missing log key file: exit 2, one line naming it', (r.returncode, r.stderr))

    dead = faultlib.free_port()
    r = broker('--set', 'postgres.conninfo=host=127.0.0.1 port=%d dbname=x '
               'connect_timeout=5' % dead)
    h.ok(r.returncode == 1 and '127.0.0.1' in r.stderr and str(dead) in r.stderr
         and one_line(r), 'unreachable PostgreSQL at start: exit 1, one line naming '
         'host and port', (r.returncode, r.stderr))

    # Kafka unreachable at start: librdkafka connects lazily and retries.
    dead = faultlib.free_port()
    p = subprocess.Popen([faultlib.BIN, 'broker', '-c', h.config_path, '--set',
                          'kafka.bootstrap.servers=127.0.0.1:%d' % dead],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        rc = p.wait(timeout=20)
        err = p.stderr.read()
        h.diag('Kafka unreachable at start: the broker exited %d after %s' % (rc, err))
        h.ok(rc == 1 and '127.0.0.1:%d' % dead in err,
             'unreachable Kafka: exit 1 naming the address', err)
    except subprocess.TimeoutExpired:
        p.terminate()
        try:
            rc = p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        err = p.stderr.read()
        lines = err.splitlines()
        h.diag('Kafka unreachable at start: the broker does not exit; it keeps '
               'running and retrying (librdkafka connects lazily). After 20 s its '
               'log has %d lines; SIGTERM -> exit %d. Lines naming the address:'
               % (len(lines), rc))
        named = [l for l in lines if '127.0.0.1:%d' % dead in l]
        for l in named[:3]:
            h.diag('  ' + l)
        h.ok(named, 'unreachable Kafka: the broker logs errors naming the address',
             lines[-5:])
        h.is_(rc, 0, 'unreachable Kafka: SIGTERM still stops it with exit 0')
