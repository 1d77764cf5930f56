"""chatvault drill: restore tests that prove the backup restores.

`chatvault drill` restores a sample (or all of a channel) into a scratch
database, checks every row against the log, records the outcome in
chatvault.restore_drills and drops the scratch database; a damaged log, an
empty selection and a scratch database that is the live one are failures
or errors that say why. The broker with drill.interval_s runs drills itself
and exports the last outcome on /metrics and /api/lag. Some messages of db
are edited and deleted: every version is restored and checked."""
import json
import os
import time
import urllib.request

import cvtest

N = 2400
EDITS = 30      # messages of db edited (revision 1), 10 of them then deleted


def drills(h):
    return h.query('SELECT trigger, passed, sampled, verified, mismatched, missing,'
                   ' detail FROM chatvault.restore_drills ORDER BY id')


def db_exists(h, name):
    return h.query('SELECT count(*) FROM pg_database WHERE datname = %s', (name,))[0][0] == 1


def get(port, path):
    with urllib.request.urlopen('http://127.0.0.1:%d%s' % (port, path), timeout=10) as r:
        return r.read().decode()


port = cvtest.free_port()
with cvtest.Harness('drill', topics={'chat.da': 2, 'chat.db': 1}, partitions=2,
                    config={'http.listen': '127.0.0.1:%d' % port}) as h:
    h.migrate()
    h.start_broker()
    prod = h.producer()
    for i in range(N):
        c = 'da' if i % 4 else 'db'
        prod.send('chat.' + c, value=cvtest.chat_message(
            c, ('drill %d' % i).encode(), message_id='m%d' % i,
            attributes={'k%d' % (i % 3): 'v', 'a': 'b'})[1])
    for i in range(0, 4 * EDITS, 4):
        prod.send('chat.db', value=cvtest.chat_message(
            'db', b'edited %d' % i, message_id='m%d' % i, revision=1)[1])
    for i in range(0, 40, 4):
        prod.send('chat.db', value=cvtest.chat_message(
            'db', b'', message_id='m%d' % i, revision=2, deleted=True)[1])
    # An attribute key twice on the wire (valid protobuf: the last value
    # counts, as in PostgreSQL's jsonb): the drill must compare it so too.
    twice = (cvtest.chat_message('db', b'key twice', message_id='twice',
                                 attributes={'k': 'first'})[1] +
             cvtest.pb.ChatMessage(attributes={'k': 'last'}).SerializeToString())
    prod.send('chat.db', value=twice)
    # A re-sent id (acked DUPLICATE; the log keeps the record, PostgreSQL
    # not): a duplicate in the drill too, not a row gone missing.
    prod.send('chat.db', value=cvtest.chat_message('db', b'again', message_id='m4')[1])
    prod.flush(timeout=120)
    h.is_(h.wait_rows(N + 1), N + 1, 'messages stored')
    versions = EDITS + 10
    h.is_(h.wait_rows(versions, table='chatvault.message_versions'), versions,
          'edits and deletes stored')
    deadline = time.time() + 60
    while h.run('verify', '--quiet').returncode != 0 and time.time() < deadline:
        time.sleep(1)
    h.is_(h.broker.stop(), 0, 'broker stopped')
    scratch = h.db + '_drill'

    r = h.run('drill', '--sample', '500', timeout=300)
    h.ok(r.returncode == 0 and 'drill passed: 500 of 500' in r.stdout,
         'drill --sample 500 passes', r.stdout + r.stderr)
    h.ok('drill done' in r.stderr, 'and logs its end', r.stderr)
    h.ok(not db_exists(h, scratch), 'the scratch database is dropped afterwards')
    rows = drills(h)
    h.is_(rows, [('command', True, 500, 500, 0, 0, '')],
          'the outcome is in chatvault.restore_drills')

    r = h.run('drill', '--all', '--channel', 'db', '--json', timeout=300)
    out = json.loads(r.stdout) if r.returncode == 0 else {}
    h.ok(out.get('passed') is True and out.get('sampled') == N // 4 + versions + 1 and
         out.get('selected') == N // 4 + versions + 2 and out.get('missing') == 0 and
         out.get('verified') == out.get('sampled') and out.get('channels') == 1 and
         out.get('recorded'),
         'drill --all --channel db --json: every version of every message of db restored '
         'and verified',
         r.stdout + r.stderr)

    keep = h.db + '_kept'
    r = h.run('drill', '--sample', '50', '--database', keep, '--keep', '--quiet')
    try:
        h.ok(r.returncode == 0 and db_exists(h, keep), '--keep leaves the scratch database',
             r.stdout + r.stderr)
        conn = cvtest.psycopg2.connect('%s dbname=%s' % (cvtest.PG, keep))
        with conn.cursor() as cur:
            cur.execute('SELECT count(*), count(DISTINCT channel) FROM'
                        ' (SELECT channel FROM chatvault.messages UNION ALL'
                        '  SELECT channel FROM chatvault.message_versions) v')
            n, chans = cur.fetchone()
        conn.close()
        h.ok(n == 50 and chans == 2,
             'it holds the 50 sampled messages, from both channels', (n, chans))
    finally:
        h._admin('DROP DATABASE IF EXISTS %s WITH (FORCE)' % keep)

    before = len(drills(h))
    r = h.run('drill', '--channel', 'nosuch', '--quiet')
    h.ok(r.returncode == 3 and 'FAILED' in r.stdout and 'nothing to restore' in r.stdout,
         'an empty selection fails the drill (it proves nothing)', r.stdout + r.stderr)
    h.is_(len(drills(h)), before,
          'but an operator\'s typo is not recorded (the dashboard stays as it was)')
    r = h.run('drill', '--database', h.db, '--quiet')
    h.ok(r.returncode == 2 and 'is the live one' in r.stderr,
         'a scratch database that is the live one is refused (exit 2)', r.stderr)
    h.ok(h.query('SELECT count(*) FROM chatvault.messages')[0][0] == N + 1,
         'and the live database is untouched')
    other = h.db + '_other'
    h._admin('CREATE DATABASE %s' % other)
    try:
        r = h.run('drill', '--database', other, '--quiet')
        h.ok(r.returncode == 2 and 'not made by chatvault' in r.stderr and
             db_exists(h, other),
             'a database the drill did not make is neither dropped nor used (exit 2)',
             r.stderr)
    finally:
        h._admin('DROP DATABASE IF EXISTS %s WITH (FORCE)' % other)

    # Damage in the middle of a segment: the drill cannot read the log.
    seg = None
    for d, _, files in os.walk(os.path.join(h.tmp, 'log')):
        for name in sorted(files):
            if name.endswith('.cvlog') and 'chat.da' in d:
                seg = seg or os.path.join(d, name)
    with open(seg, 'r+b') as f:
        f.seek(os.path.getsize(seg) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x55]))
    r = h.run('drill', '--all', '--quiet', timeout=300)
    h.ok(r.returncode == 3 and 'FAILED' in r.stdout and os.path.basename(seg) in r.stdout,
         'a damaged log fails the drill (exit 3), naming the segment', r.stdout + r.stderr)
    last = drills(h)[-1]
    h.ok(last[1] is False and os.path.basename(seg) in last[6],
         'and the failure is recorded with why', last)
    with open(seg, 'r+b') as f:
        f.seek(os.path.getsize(seg) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x55]))

    # The broker's own schedule, and what it exports.
    h.write_config(**{'drill.interval_s': '2', 'drill.sample': '100'})
    h.start_broker()
    deadline = time.time() + 90
    metrics = ''
    while time.time() < deadline:
        try:
            metrics = get(port, '/metrics')
            sched = [x for x in drills(h) if x[0] == 'schedule']
            if sched and 'chatvault_drill_last_passed 1' in metrics:
                break
        except OSError:
            pass
        time.sleep(0.5)
    sched = [x for x in drills(h) if x[0] == 'schedule']
    h.ok(sched and sched[-1][1] is True and sched[-1][2] == 100,
         'the broker ran a scheduled drill of 100 messages, which passed', sched)
    h.ok('chatvault_drill_last_passed 1' in metrics and
         'chatvault_drill_interval_seconds 2' in metrics,
         '/metrics: the last drill passed, every 2 s', metrics[-2000:])
    succ = [l for l in metrics.splitlines()
            if l.startswith('chatvault_drill_last_success_timestamp_seconds ')]
    h.ok(succ and abs(float(succ[0].split()[1]) - time.time()) < 60,
         '/metrics: the last success is recent', succ)
    lag = json.loads(get(port, '/api/lag'))
    dr = lag.get('drill') or {}
    h.ok(dr.get('last_passed') is True and dr.get('interval_s') == 2 and
         dr.get('last_success_ms') and dr.get('last_sampled') == 100,
         '/api/lag carries the drill for the dashboard', dr)
    h.is_(h.broker.stop(), 0, 'broker stopped (a drill under way is cancelled)')

    r = h.run('drill', '--help')
    h.ok(r.returncode == 0 and '--sample' in r.stdout and '--keep' in r.stdout,
         'drill --help lists its options')
