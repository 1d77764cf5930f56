"""chatvault export / import: a channel exported to JSON Lines (text bodies
as text, binary ones as base64) with a manifest, refused when changed or
truncated, imported into an empty database byte-identical and idempotently,
and the imported database verified clean against the exporting site's log
for that channel (the meaning of "clean" for an import-only database: it
holds exactly the exported channels, and has no kafka_offsets).

The broker writes its log compressed (log.compression = zstd), so verify and
export --source log read compressed segments; export --compress zstd writes
a zstd stream that Debian's zstd CLI decompresses to the same export."""
import base64
import hashlib
import json
import os
import random
import subprocess
import time

import cvtest

N = 3000
OTHER = 200
COLS = ('channel, message_id, kafka_topic, kafka_partition, kafka_offset,'
        ' kafka_timestamp, sender_id, sent_at_us, body, content_type,'
        ' attributes, reply_to')


def rows(conninfo):
    conn = cvtest.psycopg2.connect(conninfo)
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT %s FROM chatvault.messages WHERE channel = %%s'
                        ' ORDER BY message_id' % COLS, ('e',))
            return [tuple(bytes(x) if isinstance(x, memoryview) else x for x in r)
                    for r in cur.fetchall()]
    finally:
        conn.close()


def strip_time(lines):
    """The export's lines with the manifest's exported_at_us dropped."""
    m = json.loads(lines[-1])
    del m['manifest']['exported_at_us']
    return lines[:-1] + [json.dumps(m)]


with cvtest.Harness('export', topics={'chat.e': 2, 'chat.f': 1}, partitions=2,
                    config={'log.compression': 'zstd',
                            'log.compression_level': '3'}) as h:
    h.migrate()
    h.start_broker()
    prod = h.producer()
    rnd = random.Random(7)
    kinds = {}
    for i in range(N):
        k = i % 5
        if k == 0:
            body, ct = ('héllo wörld %d ✓' % i).encode(), 'text/plain'
        elif k == 1:
            body, ct = bytes(rnd.getrandbits(8) for _ in range(64)), 'application/octet-stream'
        elif k == 2:
            body, ct = b'\xff\xfe not utf-8 %d' % i, 'text/plain'
        elif k == 3:
            body, ct = b'nul\x00inside %d' % i, 'text/plain'
        else:
            body, ct = json.dumps({'i': i}).encode(), 'application/json'
        attrs = {'a': str(i), 'b': 'x"y\\z'} if i % 4 == 0 else {}
        mid, value = cvtest.chat_message('e', body, content_type=ct, attributes=attrs,
                                         reply_to='' if i % 7 else 'acks.e')
        kinds[mid] = k
        prod.send('chat.e', value=value)
    for i in range(OTHER):
        prod.send('chat.f', value=cvtest.chat_message('f', b'other')[1])
    prod.flush(timeout=120)
    h.is_(h.wait_rows(N + OTHER), N + OTHER, 'all messages stored')
    deadline = time.time() + 60
    while h.run('verify', '--quiet').returncode != 0 and time.time() < deadline:
        time.sleep(1)
    h.is_(h.run('verify', '--quiet').returncode, 0, 'both stores hold them')
    h.is_(h.broker.stop(), 0, 'broker stopped')

    path = os.path.join(h.tmp, 'e.jsonl')
    r = h.run('export', '--channel', 'e', '-o', path, '--quiet')
    h.is_(r.returncode, 0, 'export exits 0')
    with open(path, 'rb') as f:
        lines = f.read().splitlines(keepends=True)
    h.is_(len(lines), N + 1, '%d message lines and a manifest' % N)
    manifest = json.loads(lines[-1])['manifest']
    h.ok(manifest['count'] == N and manifest['digest'] ==
         'sha256:' + hashlib.sha256(b''.join(lines[:-1])).hexdigest(),
         'the manifest holds the count and the SHA-256 of the lines')
    objs = [json.loads(l) for l in lines[:-1]]
    want_enc = {0: 'utf-8', 1: 'base64', 2: 'base64', 3: 'base64', 4: 'utf-8'}
    h.ok(all(o['body_encoding'] == want_enc[kinds[o['message_id']]] for o in objs),
         'bodies are text when valid UTF-8 (no NUL) with a textual type, else base64')
    h.ok(all(o['channel'] == 'e' for o in objs), 'only the selected channel')
    one = next(o for o in objs if kinds[o['message_id']] == 1)
    h.is_(len(base64.b64decode(one['body'])), 64, 'a binary body decodes from base64')

    versions = set()
    for d, _, files in os.walk(os.path.join(h.tmp, 'log')):
        for name in files:
            if name.endswith('.cvlog'):
                with open(os.path.join(d, name), 'rb') as f:
                    versions.add(int.from_bytes(f.read(10)[8:10], 'big'))
    h.is_(versions, {2}, 'the broker wrote its log compressed (format version 2)')
    zpath = os.path.join(h.tmp, 'e.jsonl.zst')
    r = h.run('export', '--channel', 'e', '-o', zpath, '--compress', 'zstd', '--quiet')
    h.ok(r.returncode == 0, 'export --compress zstd exits 0', r.stderr)
    with open(zpath, 'rb') as f:
        zdata = f.read()
    h.ok(zdata[:4] == b'\x28\xb5\x2f\xfd', 'the file is a zstd stream')
    d = subprocess.run(['zstd', '-q', '-d', '-c', zpath], capture_output=True)
    h.ok(d.returncode == 0, 'zstd -d decompresses it (its checksum holds)', d.stderr)
    zlines = d.stdout.splitlines(keepends=True)
    h.ok(strip_time(zlines) == strip_time(lines),
         'decompressed, it is the same export (manifest time aside)')
    h.ok(len(zdata) * 2 < sum(map(len, lines)),
         'and less than half its size (%d of %d bytes)' % (len(zdata), sum(map(len, lines))))
    lpath = os.path.join(h.tmp, 'e-log.jsonl.zst')
    with open(lpath, 'wb') as f:
        r = subprocess.run([cvtest.BIN, 'export', '--channel', 'e', '--source', 'log',
                            '--compress', 'zstd', '--compress-level', '19', '--quiet',
                            '-c', h.config_path], stdout=f, stderr=subprocess.PIPE)
    h.ok(r.returncode == 0, 'export --source log of the compressed log, to stdout, level 19',
         r.stderr)
    d = subprocess.run(['zstd', '-q', '-d', '-c', lpath], capture_output=True)
    llines = d.stdout.splitlines()
    h.ok(d.returncode == 0 and len(llines) == N + 1 and
         json.loads(llines[-1])['manifest']['count'] == N and
         {json.loads(l)['message_id'] for l in llines[:-1]} ==
         {o['message_id'] for o in objs},
         'it decompresses to every message of the channel, read from the log')
    r = h.run('export', '--channel', 'e', '--compress', 'lz4', '--quiet')
    h.ok(r.returncode == 2 and '--compress' in r.stderr, 'an unknown --compress is exit 2',
         r.stderr)
    r = h.run('export', '--channel', 'e', '--compress', 'zstd', '--compress-level', '20',
              '--quiet')
    h.is_(r.returncode, 2, '--compress-level 20 is exit 2')

    imp = h.db + '_imp'
    h._admin('CREATE DATABASE %s' % imp)
    try:
        ci = '%s dbname=%s' % (cvtest.PG, imp)
        sets = ['--set', 'postgres.conninfo=' + ci]
        h.is_(h.run('migrate', *sets).returncode, 0, 'an empty database migrated')

        bad = os.path.join(h.tmp, 'bad.jsonl')
        with open(bad, 'wb') as f:
            f.write(b''.join(lines).replace(b'"offset":1,', b'"offset":7,', 1))
        r = h.run('import', bad, '--quiet', *sets)
        h.ok(r.returncode == 1 and 'digest' in r.stderr,
             'import refuses a changed file (digest)', r.stderr)
        short = os.path.join(h.tmp, 'short.jsonl')
        with open(short, 'wb') as f:
            f.write(b''.join(lines[:-1]))
        r = h.run('import', short, '--quiet', *sets)
        h.ok(r.returncode == 1 and 'manifest' in r.stderr,
             'import refuses a file without its manifest', r.stderr)
        h.is_(rows(ci), [], 'and wrote nothing')

        r = h.run('import', zpath, '--quiet', *sets)
        h.ok(r.returncode == 2 and 'zstd -d' in r.stderr,
             'import of a .zst says to decompress it first', r.stderr)
        r = h.run('import', path, '--quiet', *sets, timeout=300)
        h.is_(r.returncode, 0, 'import exits 0')
        orig = rows(h.conninfo)
        got = rows(ci)
        h.is_(len(got), N, '%d rows imported' % N)
        h.ok(got == orig, 'every imported row equals the original, byte for byte',
             'first difference: %r' % next(((a, b) for a, b in zip(orig, got)
                                             if a != b), None))
        r = h.run('import', path, '--quiet', *sets, timeout=300)
        h.is_(r.returncode, 0, 'importing again exits 0')
        h.is_(len(rows(ci)), N, 'and adds nothing (idempotent)')

        r = h.run('verify', '--quiet', '--channel', 'e', *sets)
        h.is_(r.returncode, 0, 'verify --channel e: the imported database agrees '
              'with the exporting site\'s log')
        r = h.run('verify', '--quiet', '--json', *sets)
        kinds_found = {(json.loads(l).get('kind'), json.loads(l).get('channel'))
                       for l in r.stdout.splitlines()} - {(None, None)}
        h.ok(r.returncode == 3 and kinds_found == {('only_in_log', 'f')},
             'verify of every channel names only the channel not exported', kinds_found)
    finally:
        h._admin('DROP DATABASE IF EXISTS %s WITH (FORCE)' % imp)
