"""chatvault retention: classes, holds and key messages, in both stores.

Messages are produced with Kafka timestamps 90 days old and then current
ones, into four channels: reg (class regular, 60 days), keyc (class key,
forever, by retention.channels), held (regular, but under a legal hold)
and mixed (regular, one old message sent with retention_class=key).
`retention plan` says what would go and changes nothing; `retention apply`
drops the old sealed segments of reg and mixed from the log and their rows
from PostgreSQL, keeps keyc and held whole and mixed's segment holding the
key message; verify passes afterwards. A middle segment removed by hand
and the first segment left removed by hand are still reported; a changed
expiry record is damage; a segment file put back after apply is removed by
the next apply; a released hold lets its channel expire."""
import fcntl
import glob
import json
import os
import shutil
import time
import urllib.request

import cvtest

OLD, NEW = 200, 40
DAY_MS = 86400 * 1000
CHANNELS = ('reg', 'keyc', 'held', 'mixed')
KEY_MSG = 'mixed-old-50'


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def rows(h, channel, table='chatvault.messages'):
    return h.query('SELECT count(*) FROM %s WHERE channel = %%s' % table,
                   (channel,))[0][0]


def segments(h, topic):
    return sorted(glob.glob(os.path.join(h.tmp, 'log', topic + '-0', '*.cvlog')))


def verify_summary(h):
    r = h.run('verify', '--json')
    lines = [json.loads(x) for x in r.stdout.splitlines() if '"summary"' in x]
    return r.returncode, (lines[-1]['summary'] if lines else {}), r


def plan(h, *extra):
    r = h.run('retention', 'plan', '--json', *extra)
    parts = {}
    for line in r.stdout.splitlines():
        p = json.loads(line)
        parts[p['channel']] = p
    return r, parts


with cvtest.Harness('retention', topics={'chat.' + c: 1 for c in CHANNELS},
                    partitions=1,
                    config={'log.segment_bytes': '4096',
                            'retention.classes': 'regular=60d, key=forever',
                            'retention.channels': 'keyc=key'}) as h:
    h.migrate()
    h.start_broker()
    prod = h.producer()
    old_ms = int(time.time() * 1000) - 90 * DAY_MS
    for c in CHANNELS:
        for i in range(OLD):
            kw = {'retention_class': 'key'} if c == 'mixed' and i == 50 else {}
            prod.send('chat.' + c, timestamp_ms=old_ms + i,
                      value=cvtest.chat_message(c, b'old message %d of %s' % (i, c.encode()),
                                                message_id='%s-old-%d' % (c, i), **kw)[1])
        for i in range(NEW):
            prod.send('chat.' + c, value=cvtest.chat_message(
                c, b'new message %d' % i, message_id='%s-new-%d' % (c, i))[1])
    prod.flush(timeout=120)
    total = len(CHANNELS) * (OLD + NEW)
    h.is_(h.wait_rows(total), total, 'every message stored')
    deadline = time.time() + 60
    while h.run('verify', '--quiet').returncode != 0 and time.time() < deadline:
        time.sleep(1)
    h.is_(h.broker.stop(), 0, 'broker stopped')
    h.ok(len(segments(h, 'chat.reg')) > 5, 'reg spans several segments',
         segments(h, 'chat.reg'))

    # --- holds ------------------------------------------------------------
    r = h.run('retention', 'hold', '--channel', 'held')
    h.ok(r.returncode == 2 and '--reason' in r.stderr, 'a hold needs a reason', r.stderr)
    r = h.run('retention', 'hold', '--channel', 'held', '--reason', 'case 4711')
    h.ok(r.returncode == 0 and 'hold placed on held' in r.stdout, 'hold placed',
         r.stdout + r.stderr)
    r = h.run('retention', 'holds', '--json')
    holds = [json.loads(x) for x in r.stdout.splitlines()]
    h.ok(len(holds) == 1 and holds[0]['channel'] == 'held' and
         holds[0]['reason'] == 'case 4711', 'holds lists it', r.stdout)

    # --- plan -------------------------------------------------------------
    before = {c: (rows(h, c), segments(h, 'chat.' + c)) for c in CHANNELS}
    r, parts = plan(h)
    h.is_(r.returncode, 0, 'retention plan exits 0')
    h.ok(set(parts) == set(CHANNELS), 'plan covers every channel', r.stdout + r.stderr)
    reg = parts.get('reg', {})
    h.ok(reg.get('class') == 'regular' and reg.get('retention') == '60d' and
         reg.get('segments', 0) > 0 and 0 < reg.get('rows', 0) <= OLD and
         reg.get('records') == reg.get('rows'),
         'reg: old segments and their rows would go', reg)
    h.ok(parts.get('keyc', {}).get('class') == 'key' and
         parts['keyc']['segments'] == 0, 'keyc (class key) keeps everything',
         parts.get('keyc'))
    h.ok(parts.get('held', {}).get('held') == 'held' and parts['held']['segments'] == 0,
         'held is held', parts.get('held'))
    mixed = parts.get('mixed', {})
    h.ok(mixed.get('kept_for_messages') == 1 and mixed.get('segments', 0) > 0,
         "mixed: the key message's segment is kept, the others go", mixed)
    r = h.run('retention', 'plan', '--quiet')
    h.ok(r.returncode == 0 and 'held (held): nothing expires' in r.stdout and
         'retention plan: %d segments' % (reg['segments'] + mixed['segments']) in r.stdout,
         'the plan in words', r.stdout + r.stderr)
    h.diag(r.stdout)
    after = {c: (rows(h, c), segments(h, 'chat.' + c)) for c in CHANNELS}
    h.is_(after, before, 'plan changes nothing')
    r2, later = plan(h, '--now', '2100-01-01T00:00:00Z')
    h.ok(later.get('keyc', {}).get('segments') == 0 and
         later.get('reg', {}).get('segments', 0) > reg.get('segments', 0),
         'plan --now in the future: more of reg, still nothing of keyc', later)

    # --- apply ------------------------------------------------------------
    h.execute("CREATE TABLE saved AS SELECT * FROM chatvault.messages WHERE channel = 'reg'")
    backup = os.path.join(h.tmp, 'reg-segments')
    shutil.copytree(os.path.join(h.tmp, 'log', 'chat.reg-0'), backup)
    # A row of a later generation (Kafka's offsets started over) at an
    # offset of an expired segment, but current: it stays.
    h.execute("INSERT INTO chatvault.messages (channel, message_id, kafka_topic,"
              " kafka_partition, kafka_offset, kafka_timestamp, body)"
              " VALUES ('reg', 'later-generation', 'chat.reg', 0, 3, now(), 'x')")
    r = h.run('retention', 'apply')
    h.ok(r.returncode == 0 and 'retention apply:' in r.stdout, 'retention apply exits 0',
         r.stdout + r.stderr)
    h.is_(h.query("SELECT count(*) FROM chatvault.messages WHERE message_id = 'later-generation'"),
          [(1,)], 'a current row at an expired offset (a later generation) is kept')
    h.execute("DELETE FROM chatvault.messages WHERE message_id = 'later-generation'")
    h.is_(rows(h, 'reg'), OLD + NEW - reg.get('rows', 0), "reg's expired rows are gone")
    new_reg = h.query("SELECT count(*) FROM chatvault.messages WHERE channel = 'reg'"
                      " AND message_id LIKE 'reg-new-%%'")[0][0]
    h.is_(new_reg, NEW, "reg's current messages are all kept")
    h.is_(len(segments(h, 'chat.reg')), len(before['reg'][1]) - reg.get('segments', 0),
          "reg's expired segment files are removed")
    h.is_(rows(h, 'keyc'), OLD + NEW, 'keyc keeps every row')
    h.is_(rows(h, 'held'), OLD + NEW, 'held keeps every row')
    h.is_(segments(h, 'chat.held'), before['held'][1], 'held keeps every segment')
    h.is_(h.query('SELECT count(*) FROM chatvault.messages WHERE message_id = %s',
                  (KEY_MSG,))[0][0], 1, 'the key message of mixed is kept')
    h.is_(rows(h, 'mixed'), OLD + NEW - mixed.get('rows', 0), "mixed's expired rows are gone")

    r = h.run('log', 'cat', '--topic', 'chat.reg')
    ids = [json.loads(x)['message_id'] for x in r.stdout.splitlines() if x.startswith('{')]
    h.ok(r.returncode == 0 and len(ids) == OLD + NEW - reg.get('records', 0) and
         'reg-old-0' not in ids and 'reg-new-0' in ids,
         'log cat reads what is left of reg, without the expired records',
         r.stderr[-400:])
    r = h.run('log', 'check')
    h.ok(r.returncode == 0, 'log check passes after apply', r.stdout[-400:] + r.stderr)
    r = h.run('verify')
    h.ok(r.returncode == 0, 'verify passes after apply', r.stdout[-600:] + r.stderr)
    audit = h.query("SELECT result, counts FROM chatvault.audit"
                    " WHERE command = 'retention apply' ORDER BY at")
    h.ok(len(audit) == 2 and audit[1][0] == 'ok' and
         audit[1][1].get('segments') == reg['segments'] + mixed['segments'] and
         audit[1][1].get('rows') == reg['rows'] + mixed['rows'],
         'apply is audited with its counts', audit)

    planned = h.query("SELECT counts FROM chatvault.audit WHERE command = 'retention plan'"
                      " AND result = 'ok' ORDER BY at LIMIT 1")
    h.ok(planned and planned[0][0].get('segments') == reg['segments'] + mixed['segments'],
         'plan is audited too, with what it found', planned)
    r, again = plan(h)
    h.ok(all(p['segments'] == 0 for p in again.values()),
         'a second plan finds nothing more', again)

    # --- a run that stopped between recording and removing ----------------
    expired = os.path.join(h.tmp, 'log', 'chat.reg-0', 'expired')
    names = [line.split()[1] for line in open(expired)]
    h.ok(len(names) == reg['segments'], 'the expiry record names each dropped segment',
         names)
    # (recorded, rows not deleted yet, file still there)
    first = [line.split() for line in open(expired)][0]
    lo, hi = int(first[2]), int(first[3])
    keep = segments(h, 'chat.reg')
    shutil.copy(os.path.join(backup, names[0]), os.path.join(h.tmp, 'log', 'chat.reg-0',
                                                             names[0]))
    h.execute('INSERT INTO chatvault.messages SELECT * FROM saved'
               ' WHERE kafka_offset BETWEEN %d AND %d' % (lo, hi))
    h.is_(rows(h, 'reg'), OLD + NEW - reg['rows'] + hi - lo + 1,
          '(the rows of the first recorded segment are back)')
    r = h.run('log', 'check')
    h.ok(r.returncode == 0, 'a recorded segment still on disk is not read', r.stdout[-300:])
    rc, summ, r = verify_summary(h)
    h.ok(rc == 0 and summ.get('expired_rows') == hi - lo + 1 and summ.get('only_in_postgres') == 0,
         'verify passes: rows of a recorded segment are expired, not only in PostgreSQL',
         r.stdout[-600:] + r.stderr[-300:])
    r, parts2 = plan(h)
    h.is_(parts2.get('reg', {}).get('pending'), 1, 'plan shows it pending')
    r = h.run('retention', 'apply', '--channel', 'reg')
    h.ok(r.returncode == 0 and not os.path.exists(os.path.join(h.tmp, 'log', 'chat.reg-0',
                                                               names[0])),
         'the next apply removes it', r.stdout + r.stderr)
    rc, summ, r = verify_summary(h)
    h.ok(rc == 0 and summ.get('expired_rows') == 0,
         "and deletes the rows: verify finds none left", r.stdout[-400:])

    # --- what must still be detected --------------------------------------
    keep = segments(h, 'chat.reg')
    if len(keep) >= 3:
        moved = keep[1] + '.aside'
        os.rename(keep[1], moved)
        r = h.run('verify')
        h.ok(r.returncode == 3 and 'log_segment_missing' in r.stdout,
             'a middle segment removed by hand is still reported', r.stdout[-600:])
        os.rename(moved, keep[1])
        moved = keep[0] + '.aside'
        os.rename(keep[0], moved)
        r = h.run('log', 'check')
        h.ok(r.returncode == 3 and 'first segments were removed' in (r.stdout + r.stderr),
             'the first segment left, removed by hand, is reported', r.stdout[-600:])
        os.rename(moved, keep[0])
    else:
        h.ok(False, 'reg keeps at least 3 segments', keep)
        h.ok(False, 'skipped')
    text = open(expired).read()
    with open(expired, 'w') as f:
        f.write(text.replace(' 0 ', ' 1 ', 1) if ' 0 ' in text else text[:-5] + 'x' + text[-4:])
    r = h.run('log', 'check')
    h.ok(r.returncode != 0 and 'expiry record' in (r.stdout + r.stderr),
         'a changed expiry record is damage', (r.stdout + r.stderr)[-400:])
    # A line changed with its CRC made good again: only the MAC (keyed with
    # the log key) can tell, and it does.
    first = text.splitlines()[0].split(' ')
    first[4] = str(int(first[4]) + 1)                 # the record count
    body = ' '.join(first[:-1])
    forged = body + ' %08x\n' % crc32c(body.encode())
    with open(expired, 'w') as f:
        f.write(forged + ''.join(l + '\n' for l in text.splitlines()[1:]))
    r = h.run('log', 'check')
    h.ok(r.returncode != 0 and 'not authentic' in (r.stdout + r.stderr),
         'a forged expiry line with a good CRC fails its MAC', (r.stdout + r.stderr)[-400:])
    with open(expired, 'w') as f:
        f.write(text)
    # The segment mixed keeps for its key message sits between dropped ones:
    # removing it by hand is reported too.
    mixed_segs = segments(h, 'chat.mixed')
    moved = mixed_segs[0] + '.aside'
    os.rename(mixed_segs[0], moved)
    r = h.run('log', 'check')
    h.ok(r.returncode == 3 and 'chat.mixed' in (r.stdout + r.stderr),
         'the key segment between dropped ones, removed by hand, is reported',
         (r.stdout + r.stderr)[-600:])
    os.rename(moved, mixed_segs[0])
    # So is the first segment of a directory retention never touched.
    keyc_segs = segments(h, 'chat.keyc')
    moved = keyc_segs[0] + '.aside'
    os.rename(keyc_segs[0], moved)
    r = h.run('log', 'check')
    h.ok(r.returncode == 3 and 'first segments were removed' in (r.stdout + r.stderr),
         "a directory's first segment removed by hand is reported",
         (r.stdout + r.stderr)[-600:])
    os.rename(moved, keyc_segs[0])
    r = h.run('log', 'check')
    h.is_(r.returncode, 0, 'log check passes again with everything back')
    # One run at a time.
    with open(os.path.join(h.tmp, 'log', '.retention.lock'), 'a+') as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        r = h.run('retention', 'apply')
    h.ok(r.returncode == 1 and 'another retention run' in r.stderr,
         'a second run at once is refused', r.stderr)

    # --- release, and the broker goes on ----------------------------------
    r = h.run('retention', 'release', '--channel', 'held')
    h.ok(r.returncode == 0 and 'released' in r.stdout, 'hold released', r.stdout + r.stderr)
    r = h.run('retention', 'release', '--channel', 'held')
    h.is_(r.returncode, 2, 'releasing it again: there is none')
    r, parts3 = plan(h, '--channel', 'held')
    h.ok(set(parts3) == {'held'} and parts3['held']['held'] is None and
         parts3['held']['segments'] > 0, 'released, held would expire', parts3)

    port = cvtest.free_port()
    h.write_config(**{'retention.interval_s': '1', 'http.listen': '127.0.0.1:%d' % port})
    h.start_broker()
    deadline = time.time() + 60
    while rows(h, 'held') == OLD + NEW and time.time() < deadline:
        time.sleep(0.5)
    h.is_(rows(h, 'held'), OLD + NEW - parts3['held']['rows'],
          'the broker applies retention on retention.interval_s: held expires now')
    sched = h.query("SELECT result, arguments FROM chatvault.audit"
                    " WHERE command = 'retention apply' AND arguments = '[\"schedule\"]'")
    h.ok(len(sched) >= 1, 'a scheduled pass is audited', sched)
    with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port, timeout=10) as resp:
        metrics = resp.read().decode()
    dropped = [l for l in metrics.splitlines()
               if l.startswith('chatvault_retention_dropped_segments_total ')]
    h.ok(dropped and int(dropped[0].split()[1]) == parts3['held']['segments'] and
         'chatvault_retention_last_run_ok 1' in metrics,
         '/metrics shows what the scheduled pass dropped', dropped)
    prod = h.producer()
    for i in range(20):
        prod.send('chat.reg', value=cvtest.chat_message('reg', b'after %d' % i,
                                                        message_id='reg-after-%d' % i)[1])
    prod.flush(timeout=60)
    want = OLD + NEW - reg['rows'] + 20
    deadline = time.time() + 60
    while rows(h, 'reg') < want and time.time() < deadline:
        time.sleep(0.5)
    h.is_(rows(h, 'reg'), want, 'the broker stores new messages after retention')
    h.is_(h.broker.stop(), 0, 'broker stopped again')
    r = h.run('verify')
    h.ok(r.returncode == 0, 'verify passes with the new messages', r.stdout[-600:])

    r = h.run('retention', 'plan', '--set', 'retention.default_class=nope')
    h.ok(r.returncode == 2 and 'retention.default_class' in r.stderr,
         'an undefined default class is a config error naming the key', r.stderr)
    r = h.run('retention', 'plan', '--set', 'retention.classes=regular=0d')
    h.ok(r.returncode == 2 and 'retention.classes' in r.stderr,
         'a zero retention is refused', r.stderr)
