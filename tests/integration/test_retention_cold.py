"""Retention reaches the cold tier: a channel's old sealed segments are
shipped (to a real S3 API server, moto, and then to a directory target)
and removed locally; `retention apply` drops the expired ones there too:
the object is deleted, the stub removed, the rows deleted, and verify and
log check pass afterwards on what is left (local and cold)."""
import json
import os
import time

import cvtest
import motolib

OLD, NEW = 150, 30
DAY_MS = 86400 * 1000

if not motolib.available():
    if os.environ.get('CI'):
        print('1..1\nnot ok 1 - moto_server not found at %s' % motolib.MOTO)
        raise SystemExit(1)
    cvtest.skip_all('moto_server not found at %s (run deploy/setup.sh)' % motolib.MOTO)


def rows(h, channel):
    return h.query('SELECT count(*) FROM chatvault.messages WHERE channel = %s',
                   (channel,))[0][0]


def names(h, topic, suffix):
    d = os.path.join(h.tmp, 'log', topic + '-0')
    return sorted(x for x in os.listdir(d) if x.endswith(suffix))


def plan(h, channel):
    r = h.run('retention', 'plan', '--json', '--channel', channel)
    parts = [json.loads(x) for x in r.stdout.splitlines() if x.startswith('{')]
    return r, (parts[0] if parts else {})


with cvtest.Harness('retention_cold', topics={'chat.s3': 1, 'chat.dir': 1}, partitions=1,
                    config={'log.segment_bytes': '4096'}) as h:
    moto = motolib.Moto(h.tmp)
    h.procs.append(moto)
    h.migrate()
    h.start_broker()
    prod = h.producer()
    old_ms = int(time.time() * 1000) - 90 * DAY_MS
    for c in ('s3', 'dir'):
        for i in range(OLD):
            prod.send('chat.' + c, timestamp_ms=old_ms + i, value=cvtest.chat_message(
                c, b'old %d' % i, message_id='%s-old-%d' % (c, i))[1])
        for i in range(NEW):
            prod.send('chat.' + c, value=cvtest.chat_message(
                c, b'new %d' % i, message_id='%s-new-%d' % (c, i))[1])
    prod.flush(timeout=120)
    h.is_(h.wait_rows(2 * (OLD + NEW)), 2 * (OLD + NEW), 'every message stored')
    deadline = time.time() + 60
    while h.run('verify', '--quiet').returncode != 0 and time.time() < deadline:
        time.sleep(1)
    h.is_(h.broker.stop(), 0, 'broker stopped')

    for c, target in (('s3', 's3://cold/vault'),
                      ('dir', 'file://' + os.path.join(h.tmp, 'offsite'))):
        topic = 'chat.' + c
        if c == 's3':
            h.is_(moto.request('PUT', '/cold')[0], 200, 'bucket created on moto')
            cred = moto.credentials_file(os.path.join(h.tmp, 's3.cred'))
            h.write_config(**{'cold.target': target, 'cold.endpoint': moto.endpoint,
                              'cold.credentials_file': cred, 'cold.hot_window': '0'})
        else:
            os.makedirs(os.path.join(h.tmp, 'offsite'))
            h.write_config(**{'cold.target': target, 'cold.hot_window': '0',
                              'cold.cache_dir': os.path.join(h.tmp, 'cache-dir')})
        r = h.run('cold', 'ship', '--topic', topic, timeout=300)
        h.is_(r.returncode, 0, '%s: cold ship exits 0' % c)
        stubs = names(h, topic, '.cvlog.cold')
        h.ok(len(stubs) >= 4 and len(names(h, topic, '.cvlog')) == 1,
             '%s: every sealed segment is only in the cold tier' % c, stubs)

        r, p = plan(h, c)
        h.ok(r.returncode == 0 and p.get('segments', 0) > 0 and p.get('rows') == p.get('records'),
             '%s: plan reads the cold segments and finds the expired ones' % c,
             r.stdout + r.stderr)
        if c == 's3':
            r = h.run('retention', 'apply', '--channel', c, '--set', 'cold.target=')
            h.ok(r.returncode == 1 and 'cold.target' in r.stderr and
                 rows(h, c) == OLD + NEW and names(h, topic, '.cvlog.cold') == stubs,
                 'without cold.target apply stops with an error and drops nothing',
                 r.stdout + r.stderr)
        r = h.run('retention', 'apply', '--channel', c, timeout=300)
        h.ok(r.returncode == 0, '%s: retention apply exits 0' % c, r.stdout + r.stderr)
        h.is_(rows(h, c), OLD + NEW - p.get('rows', 0), "%s: the expired rows are gone" % c)
        left = names(h, topic, '.cvlog.cold')
        h.is_(len(left), len(stubs) - p.get('segments', 0), '%s: their stubs are removed' % c)
        if c == 's3':
            objs = moto.objects('cold', 'vault/%s-0/' % topic)
        else:
            d = os.path.join(h.tmp, 'offsite', topic + '-0')
            objs = sorted(os.listdir(d)) if os.path.isdir(d) else []
        h.is_(len(objs), len(left), '%s: and their objects deleted from the target' % c)
        r = h.run('log', 'check', '--topic', topic)
        h.ok(r.returncode == 0, '%s: log check passes on what is left' % c,
             r.stdout[-400:] + r.stderr[-400:])
        r = h.run('verify', '--channel', c)
        h.ok(r.returncode == 0, '%s: verify passes' % c, r.stdout[-600:] + r.stderr[-400:])
        r = h.run('retention', 'apply', '--channel', c)
        h.ok(r.returncode == 0 and 'retention apply: 0 segments' in r.stdout,
             '%s: a second apply has nothing to do' % c, r.stdout + r.stderr)
