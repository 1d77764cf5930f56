"""The chatvault command line a user meets first: send --wait-ack against a
running broker, the example config, config errors, an unreachable database."""
import os
import re
import subprocess
import time

import cvtest

EXAMPLE = os.path.join(cvtest.SOURCE_ROOT, 'deploy', 'chatvault.conf.example')


def config_keys(h):
    """Every key `chatvault config` lists, but the kafka.* pass-through."""
    r = h.run('config', config=False)
    h.is_(r.returncode, 0, 'chatvault config exits 0')
    keys = re.findall(r'^  ([a-z][a-z0-9_]*\.[a-z0-9_.]+)\s', r.stdout, re.M)
    return [k for k in keys if not k.startswith('kafka.')]


with cvtest.Harness('cli', topics={'chat.cli': 2}) as h:
    h.migrate()
    h.start_broker()

    # send --wait-ack: two bodies, each acked PERSISTED, and the rows exist.
    r = h.run('send', '--channel', 'cli', '--wait-ack', '--timeout', '60000',
              'hello', 'world', timeout=120)
    h.is_(r.returncode, 0, 'send --wait-ack exits 0')
    lines = r.stdout.splitlines()
    h.ok(len(lines) == 2 and all('PERSISTED' in l for l in lines),
         'send --wait-ack prints PERSISTED for each message',
         'stdout: %r\nstderr: %r' % (r.stdout, r.stderr))
    ids = [l.split()[0] for l in lines if l.split()]
    rows = h.query('SELECT message_id, body FROM chatvault.messages '
                   'WHERE channel = %s ORDER BY kafka_offset', ('cli',))
    h.is_(sorted((m, bytes(b)) for m, b in rows),
          sorted(zip(ids, [b'hello', b'world'])),
          'the printed message ids are rows with the sent bodies')

    # --id: a message id sent twice is acked DUPLICATE the second time.
    r1 = h.run('send', '--channel', 'cli', '--id', 'cli-fixed-id', '--wait-ack',
               '--timeout', '60000', 'once', timeout=120)
    r2 = h.run('send', '--channel', 'cli', '--id', 'cli-fixed-id', '--wait-ack',
               '--timeout', '60000', 'twice', timeout=120)
    h.ok('PERSISTED' in r1.stdout and 'DUPLICATE' in r2.stdout,
         'send --id twice: PERSISTED, then DUPLICATE',
         'first: %r %r\nsecond: %r %r' % (r1.stdout, r1.stderr, r2.stdout, r2.stderr))
    body = h.query("SELECT body FROM chatvault.messages WHERE "
                   "channel = 'cli' AND message_id = 'cli-fixed-id'")
    h.is_([bytes(b) for (b,) in body], [b'once'],
          'the duplicate id is one row, with the first body')

    rc = h.broker.stop()
    h.is_(rc, 0, 'broker exits 0 on SIGTERM')

    # The example config parses and names every key.
    r = h.run('config', '--check', '-c', EXAMPLE, config=False)
    h.ok(r.returncode == 0, 'config --check accepts deploy/chatvault.conf.example',
         'exit %d, stderr: %s' % (r.returncode, r.stderr))
    with open(EXAMPLE) as f:
        example = f.read()
    keys = config_keys(h)
    h.ok(len(keys) >= 10, 'chatvault config lists the keys', repr(keys))
    missing = [k for k in keys
               if not re.search(r'^%s\s*=' % re.escape(k), example, re.M)]
    h.ok(not missing, 'the example config sets every key of chatvault config',
         'missing: %s (regenerate: chatvault config --example > '
         'deploy/chatvault.conf.example)' % missing)

    # An unknown key is a usage error naming it: in a file and with --set.
    bad = os.path.join(h.tmp, 'bad.conf')
    with open(bad, 'w') as f:
        f.write('postgres.conninfo = dbname=x\nno.such.key = 1\n')
    r = h.run('config', '--check', '-c', bad, config=False)
    h.ok(r.returncode == 2 and 'no.such.key' in r.stderr,
         'unknown key in a file: exit 2, error names the key',
         'exit %d, stderr: %r' % (r.returncode, r.stderr))
    r = h.run('migrate', '--set', 'bogus.setting=1')
    h.ok(r.returncode == 2 and 'bogus.setting' in r.stderr,
         'unknown key with --set: exit 2, error names the key',
         'exit %d, stderr: %r' % (r.returncode, r.stderr))

    # Unreachable PostgreSQL: migrate exits 1 with one line naming the host.
    port = cvtest.free_port()
    r = h.run('migrate', '--set',
              'postgres.conninfo=host=127.0.0.1 port=%d dbname=x connect_timeout=5'
              % port, config=False)
    err_lines = [l for l in r.stderr.splitlines() if l.strip()]
    h.is_(r.returncode, 1, 'migrate against an unreachable PostgreSQL exits 1')
    h.ok(len(err_lines) == 1 and '127.0.0.1' in err_lines[0],
         'its error is one line naming the host', 'stderr: %r' % r.stderr)

    # What the broker would refuse at start, config --check refuses too.
    for kv, why in (('http.listen=127.0.0.1:99999', 'bad port'),
                    ('topics.pattern=^chat\\.(', 'regular expression')):
        r = h.run('config', '--check', '--set', kv)
        h.ok(r.returncode == 2 and why in r.stderr and len(r.stderr.splitlines()) == 1,
             'config --check --set %s: exit 2, one line saying why' % kv,
             'exit %d, stderr: %r' % (r.returncode, r.stderr))
    # Only the ack producer may be transactional, and only on real Kafka.
    r = h.run('config', '--check', '--set', 'kafka.transactional.id=x')
    h.ok(r.returncode == 2 and 'ack.transactions' in r.stderr and
         len(r.stderr.splitlines()) == 1,
         'config --check --set kafka.transactional.id=x: exit 2, one line naming '
         'ack.transactions', 'exit %d, stderr: %r' % (r.returncode, r.stderr))
    r = h.run('broker', '--set', 'kafka.bootstrap.servers=embedded', '--set',
              'ack.transactions=on', '--set', 'http.listen=', timeout=60)
    last = (r.stderr.strip().splitlines() or [''])[-1]
    h.ok(r.returncode == 2 and last.startswith('chatvault broker: config error: '
                                               'ack.transactions = on needs a real '
                                               'Kafka cluster'),
         'broker with ack.transactions = on on the embedded mock: exit 2, its last '
         'line says it needs real Kafka', 'exit %d, stderr: %r'
         % (r.returncode, r.stderr[-500:]))
    # A selection that can match nothing is a usage error, not an empty run.
    for args in (['--from-offset', '10', '--to-offset', '5'],
                 ['--since', '2026-01-02', '--until', '2026-01-01'],
                 ['--channel', '../../x']):
        for cmd in ('replay', 'export'):
            r = h.run(cmd, '--dry-run', *args) if cmd == 'replay' else \
                h.run(cmd, *args)
            h.ok(r.returncode == 2 and r.stderr.count('\n') == 1,
                 '%s %s: exit 2 with one line' % (cmd, ' '.join(args)),
                 'exit %d, stderr: %r' % (r.returncode, r.stderr))

    # One config for every command: with kafka.bootstrap.servers = embedded,
    # the other commands ask the running broker (GET /api/kafka) where its
    # mock cluster is.
    eport = cvtest.free_port()
    econf = os.path.join(h.tmp, 'embedded.conf')
    with open(econf, 'w') as f:
        f.write('kafka.bootstrap.servers = embedded\n'
                'postgres.conninfo = %s\n' % h.conninfo +
                'log.dir = %s\n' % os.path.join(h.tmp, 'elog') +
                'log.key_file = %s\n' % h.config_values['log.key_file'] +
                'http.listen = 127.0.0.1:%d\n' % eport)
    r = subprocess.run([cvtest.BIN, 'send', '-c', econf, '--channel', 'one', 'x'],
                       capture_output=True, text=True, timeout=60)
    h.ok(r.returncode != 0 and 'running `chatvault broker`' in r.stderr and
         len(r.stderr.splitlines()) == 1,
         'embedded, no broker running: one line says to start it', r.stderr)
    elog = open(os.path.join(h.tmp, 'embedded-broker.log'), 'ab')
    eb = subprocess.Popen([cvtest.BIN, 'broker', '-c', econf], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=elog)
    try:
        r = None
        deadline = time.time() + 60
        while time.time() < deadline:
            r = subprocess.run([cvtest.BIN, 'send', '-c', econf, '--channel', 'one',
                                '--wait-ack', '--timeout', '20000', 'one config'],
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                break
            time.sleep(1)
        h.ok(r.returncode == 0 and ' PERSISTED ' in r.stdout,
             'send with the embedded broker\'s own config is acked', r.stdout + r.stderr)
        r = subprocess.run([cvtest.BIN, 'lag', '--direct', '--interval', '0.5', '-c', econf],
                           capture_output=True, text=True, timeout=60)
        h.ok('direct' in r.stdout and 'config error' not in r.stderr,
             'lag --direct with the same config reads Kafka and PostgreSQL',
             r.stdout + r.stderr)
        r = subprocess.run([cvtest.BIN, 'replay', '-c', econf, '--dry-run', '--channel',
                            'one'], capture_output=True, text=True, timeout=60)
        h.ok(r.returncode == 0 and 'one' in r.stdout, 'replay --dry-run with it too',
             r.stdout + r.stderr)
        r = subprocess.run([cvtest.BIN, 'broker', '-c', econf, '--set',
                            'log.dir=' + os.path.join(h.tmp, 'elog2')],
                           capture_output=True, text=True, timeout=60)
        h.ok(r.returncode == 1 and 'cannot listen' in r.stderr,
             'a second broker on a taken http.listen fails to start',
             'exit %d: %s' % (r.returncode, r.stderr[-500:]))
    finally:
        eb.terminate()
        eb.wait(timeout=60)
        elog.close()

    # Every error line starts "chatvault <command>:", getopt's own too.
    for args in (['lag', '--bogus'], ['send', '--bogus'], ['log', 'check', '--bogus'],
                 ['replay', '--from-offset', 'x']):
        r = subprocess.run([cvtest.BIN] + args, capture_output=True, text=True,
                           timeout=30)
        first = r.stderr.splitlines()[0] if r.stderr else ''
        want = 'chatvault %s: ' % ' '.join(args[:2] if args[0] == 'log' else args[:1])
        h.ok(r.returncode == 2 and first.startswith(want),
             '%s: exit 2, the error starts "%s"' % (' '.join(args), want.strip()),
             'exit %d: %r' % (r.returncode, r.stderr[:300]))
