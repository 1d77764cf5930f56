"""The cold tier under the broker, verify and replay: messages through the
broker into PostgreSQL and a log of many small segments; the sealed ones
shipped to a real S3 API server (moto, see motolib.py) and removed locally.
Then `chatvault verify` still matches every message against PostgreSQL,
`restore` rebuilds a new database from the log that verifies clean,
`replay` with PostgreSQL down serves every message from the log (its cold
segments fetched), and a restarted broker with cold segments behind its
tail stores and acks new messages and ships what it seals by itself
(cold.ship_interval_s), after which verify agrees again; a cold copy lost
from the bucket is damage that verify --repair mends."""
import json
import os
import time

import cvtest
import motolib

N = 1500
MORE = 200

if not motolib.available():
    if os.environ.get('CI'):
        print('1..1\nnot ok 1 - moto_server not found at %s' % motolib.MOTO)
        raise SystemExit(1)
    cvtest.skip_all('moto_server not found at %s (run deploy/setup.sh)' % motolib.MOTO)


def verify(h):
    r = h.run('verify', '--quiet', '--json', timeout=300)
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    return r, [l for l in lines if 'summary' in l]


def local_segments(h):
    d = os.path.join(h.config_values['log.dir'], 'chat.c-0')
    return sorted(x for x in os.listdir(d) if x.endswith('.cvlog'))


with cvtest.Harness('cold_verify', topics={'chat.c': 1}, partitions=1,
                    config={'log.segment_bytes': 16384}) as h:
    moto = motolib.Moto(h.tmp)
    h.procs.append(moto)  # stopped with the harness's processes
    h.migrate()
    h.start_broker()
    prod = h.producer()
    for i in range(N):
        _, value = cvtest.chat_message('c', ('message %d ' % i).encode() * 8)
        prod.send('chat.c', value=value)
    prod.flush(timeout=120)
    h.is_(h.wait_rows(N), N, '%d messages stored in PostgreSQL' % N)
    deadline = time.time() + 60
    while True:
        r, summary = verify(h)
        if r.returncode == 0 or time.time() > deadline:
            break
        time.sleep(1)
    h.is_(r.returncode, 0, 'verify: the stores agree before shipping')
    h.is_(h.broker.stop(), 0, 'broker stopped')
    segs = local_segments(h)
    h.ok(len(segs) >= 5, 'the log has %d segments' % len(segs), segs)

    h.is_(moto.request('PUT', '/cold')[0], 200, 'bucket created on moto')
    cred = moto.credentials_file(os.path.join(h.tmp, 's3.cred'))
    h.write_config(**{'cold.target': 's3://cold/vault', 'cold.endpoint': moto.endpoint,
                      'cold.credentials_file': cred, 'cold.hot_window': '0'})
    r = h.run('cold', 'ship', timeout=300)
    h.is_(r.returncode, 0, 'cold ship exits 0')
    left = local_segments(h)
    h.is_(left, segs[-1:], 'only the last segment is left locally')
    objs = moto.objects('cold', 'vault/')
    h.is_(len(objs), len(segs) - 1, 'every sealed segment is in the bucket')

    r, summary = verify(h)
    h.is_(r.returncode, 0, 'verify: the stores still agree with the segments cold')
    h.ok(summary and summary[-1]['summary']['matched'] == N,
         'verify compared all %d messages' % N, r.stdout[-2000:] + r.stderr)

    # restore reads the log through the same reader: a new database rebuilt
    # from local and cold segments verifies clean.
    rdb = '%s_restored' % h.db
    rci = '%s dbname=%s' % (cvtest.PG, rdb)
    try:
        r = h.run('restore', '--into', rci, '--create', '--quiet', timeout=300)
        h.ok(r.returncode == 0, 'restore from a log whose sealed segments are cold',
             r.stdout + r.stderr)
        conn = cvtest.psycopg2.connect(rci)
        with conn.cursor() as cur:
            cur.execute('SELECT count(*) FROM chatvault.messages')
            h.is_(cur.fetchone()[0], N, 'the restored database holds all %d messages' % N)
        conn.close()
        r = h.run('verify', '--quiet', '--set', 'postgres.conninfo=' + rci, timeout=300)
        h.is_(r.returncode, 0, 'the restored database verifies clean against the log')
    finally:
        h._admin('DROP DATABASE IF EXISTS %s WITH (FORCE)' % rdb)

    r = h.run('replay', '--channel', 'c', '--to-topic', 'fromlog.{channel}', '--quiet',
              '--set', 'postgres.conninfo=host=127.0.0.1 port=1 user=nobody '
              'connect_timeout=2', timeout=300)
    h.ok(r.returncode == 0 and 'from_log=%d' % N in r.stderr,
         'replay with PostgreSQL down serves all %d from the log' % N, r.stderr)
    c = h.consumer('fromlog.c')
    recs = h.drain(c, lambda out: len(out) >= N, timeout=120)
    recs += h.drain(c, lambda out: False, timeout=2)
    h.is_(len(recs), N, 'every replayed message arrived')

    # The broker again, cold segments behind its tail, shipping by itself
    # every second (cold.ship_interval_s) what it seals.
    h.write_config(**{'cold.target': 's3://cold/vault', 'cold.endpoint': moto.endpoint,
                      'cold.credentials_file': cred, 'cold.hot_window': '0',
                      'cold.ship_interval_s': '1'})
    h.start_broker()
    for i in range(MORE):
        _, value = cvtest.chat_message('c', b'after the cold tier %d' % i)
        prod.send('chat.c', value=value)
    prod.flush(timeout=120)
    h.is_(h.wait_rows(N + MORE), N + MORE, 'the restarted broker stores new messages')
    deadline = time.time() + 60
    while 'cold tier: segment shipped' not in h.broker_log() and time.time() < deadline:
        time.sleep(0.5)
    h.ok('cold tier: segment shipped' in h.broker_log(),
         'the broker ships what it sealed by itself', h.broker_log()[-3000:])
    h.ok(len(moto.objects('cold', 'vault/')) > len(objs),
         'the bucket holds more segments than before')
    deadline = time.time() + 60
    while True:
        r, summary = verify(h)
        if r.returncode == 0 or time.time() > deadline:
            break
        time.sleep(1)
    h.is_(r.returncode, 0, 'verify: the stores agree after more messages')
    h.ok(summary and summary[-1]['summary']['matched'] == N + MORE,
         'verify compared all %d' % (N + MORE), r.stdout[-2000:] + r.stderr)
    h.is_(h.broker.stop(), 0, 'broker stopped')
    r = h.run('log', 'check')
    h.is_(r.returncode, 0, 'log check passes across local and cold segments')
    objs = moto.objects('cold', 'vault/')

    # A lost cold copy: verify names it, --repair rebuilds it from PostgreSQL.
    victim = sorted(objs)[len(objs) // 2]
    h.is_(moto.request('DELETE', '/cold/' + victim)[0], 204, 'an object deleted from the bucket')
    cache = os.path.join(h.config_values['log.dir'], '.cold-cache')
    for root, _, files in os.walk(cache):
        for f in files:
            os.unlink(os.path.join(root, f))
    r = h.run('log', 'check')
    h.ok(r.returncode == 3 and os.path.basename(victim) in r.stderr,
         'log check reports the lost cold copy as damage', r.stdout + r.stderr)
    r, summary = verify(h)
    h.is_(r.returncode, 3, 'verify finds differences with the cold copy lost')
    r = h.run('verify', '--repair', '--quiet', timeout=300)
    h.ok(r.returncode == 0, 'verify --repair rebuilds the lost records', r.stdout + r.stderr)
    r, summary = verify(h)
    h.is_(r.returncode, 0, 'verify: the stores agree after the repair')
    r = h.run('log', 'check')
    h.is_(r.returncode, 0, 'log check passes after the repair')

    # The bucket gone (a wrong name, an account's outage): the target is
    # not there, which is no damage: verify --repair must not quarantine
    # every cold segment.
    pdir = os.path.join(h.config_values['log.dir'], 'chat.c-0')
    before = sorted(os.listdir(pdir))
    for root, _, files in os.walk(cache):
        for f in files:
            os.unlink(os.path.join(root, f))
    h.write_config(**{'cold.target': 's3://gone/vault', 'cold.endpoint': moto.endpoint,
                      'cold.credentials_file': cred})
    r = h.run('verify', '--repair', '--quiet', '--json', timeout=300)
    h.ok(r.returncode == 1 and 'no such bucket' in r.stderr,
         'verify --repair with the bucket missing: exit 1, the bucket named',
         r.stdout[-2000:] + r.stderr[-2000:])
    h.ok('"log_quarantined":0' in r.stdout or '"log_quarantined"' not in r.stdout,
         'and nothing is quarantined', r.stdout[-2000:])
    h.is_(sorted(os.listdir(pdir)), before, 'every stub is still in place')
