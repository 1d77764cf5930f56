"""Erasure of a channel (README "Erasure (right to be forgotten)"): messages
go to two channels; `chatvault erase --channel` refuses without --yes and
while a broker writes the log, changes nothing with --dry-run, then destroys
the channel's data key and deletes its PostgreSQL rows. Afterwards its log
records cannot be read (log cat says erased, the key is gone from the
store), the other channel is intact and readable, verify exits 0 and counts
the erased segments, a second erase is a no-op, new messages to the erased
channel get a fresh key and read back, a missing key that was not erased is
still an error, and segments sealed with the master key (written before data
keys existed) still read. Also the sender erasure (rows only)."""
import base64
import json
import os
import re
import shutil
import subprocess
import sys

import cvtest

LOG_WRITER = os.path.abspath(sys.argv[1])


def cat(h, *args):
    r = h.run('log', 'cat', *args, timeout=300)
    recs = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return r, recs


def bodies(recs):
    return [base64.b64decode(rec['body']) for rec in recs]


def field(text, name):
    m = re.search(r'\b%s=(\S+)' % name, text)
    return m.group(1) if m else None


with cvtest.Harness('erase', topics={'chat.gone': 2, 'chat.keep': 1},
                    partitions=1) as h:
    h.migrate()
    h.start_broker()
    prod = h.producer()
    for i in range(20):
        prod.send('chat.gone', partition=i % 2,
                  value=cvtest.chat_message('gone', b'secret %d' % i,
                                            message_id='g%d' % i,
                                            sender_id='s%d' % (i % 2))[1])
    for i in range(10):
        prod.send('chat.keep', value=cvtest.chat_message(
            'keep', b'kept %d' % i, message_id='k%d' % i, sender_id='s0')[1])
    prod.flush(timeout=30)
    h.is_(h.wait_rows(30), 30, 'both channels stored in PostgreSQL')
    behind, _ = h.wait_committed(['chat.gone', 'chat.keep'])
    h.is_(behind, {}, 'every offset committed')

    log_dir = h.config_values['log.dir']
    store = os.path.join(log_dir, 'datakeys')
    with open(store) as f:
        text = f.read()
    h.ok(re.search(r'^dek \d+ chat\.gone ', text, re.M) and
         re.search(r'^dek \d+ chat\.keep ', text, re.M),
         'a data key per channel in log.dir/datakeys', text)
    h.is_(oct(os.stat(store).st_mode & 0o777), '0o600', 'the store is mode 0600')
    r = h.run('log', 'list')
    h.ok(r.returncode == 0 and 'chat.gone-0' in r.stdout and 'datakeys' not in r.stdout,
         'log list shows the partitions, not the store', r.stdout + r.stderr)

    # --- refusals --------------------------------------------------------
    r = h.run('erase', '--channel', 'gone')
    h.ok(r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and
         'would erase channel gone' in r.stderr and '--yes' in r.stderr,
         'without --yes: exit 2, one line naming what would be erased', r.stderr)
    r = h.run('erase', '--channel', 'gone', '--yes')
    h.ok(r.returncode == 1 and 'in use by a writer' in r.stderr,
         'refused while the broker writes the log', r.stderr)
    h.broker.stop()

    r = h.run('erase', '--channel', 'gone', '--dry-run')
    h.ok(r.returncode == 0 and r.stdout.startswith('would erase channel=gone') and
         field(r.stdout, 'data_keys') == '1' and
         int(field(r.stdout, 'postgres_rows') or 0) >= 20,
         'dry run: exit 0, names the key and the rows', r.stdout + r.stderr)
    with open(store) as f:
        h.is_(f.read(), text, 'dry run: the store is unchanged')
    h.is_(h.query("SELECT count(*) FROM chatvault.messages WHERE channel = 'gone'")[0][0],
          20, 'dry run: the rows are still there')

    r, recs = cat(h, '--topic', 'chat.gone')
    h.is_(sorted(bodies(recs)), sorted(b'secret %d' % i for i in range(20)),
          'before: the channel reads back from the log')

    # --- the erasure ------------------------------------------------------
    # Interrupted half-way: the keys are destroyed, PostgreSQL is unreachable.
    r = h.run('erase', '--channel', 'gone', '--yes', '--reason', 'user asked, ticket 42',
              '--set', 'postgres.admin_conninfo=host=127.0.0.1 port=1 connect_timeout=2')
    h.ok(r.returncode == 1 and 'run the same command again' in r.stderr,
         'PostgreSQL down after the keys went: exit 1, says to run it again', r.stderr)
    h.is_(h.query("SELECT count(*) FROM chatvault.messages WHERE channel = 'gone'")[0][0],
          20, '... the rows are still there')
    r = h.run('erase', '--channel', 'gone', '--yes', '--reason', 'user asked, ticket 42')
    h.ok(r.returncode == 0 and field(r.stdout, 'data_keys') == '0' and
         field(r.stdout, 'already_erased_keys') == '1' and
         int(field(r.stdout, 'segments_unreadable') or 0) >= 2 and
         int(field(r.stdout, 'bytes_unreadable') or 0) > 0 and
         int(field(r.stdout, 'postgres_rows') or 0) >= 20,
         'run again: exit 0, finishes with the rows; counts of segments, bytes, rows',
         r.stdout + r.stderr)
    with open(store) as f:
        after = f.read()
    h.ok(not re.search(r'^dek \d+ chat\.gone ', after, re.M) and
         re.search(r'^erased \d+ chat\.gone \d+ \S+ user%20asked,%20ticket%2042$',
                   after, re.M),
         'the key is gone from the store; an erasure record with user and reason '
         'stays', after)
    gone_key = re.search(r'^dek \d+ chat\.gone \d+ \d+ (\S+)$', text, re.M).group(1)
    h.ok(gone_key not in after, 'the wrapped key bytes are no longer in the store')

    # (a) the log's records are unreadable, and said so
    r, recs = cat(h, '--topic', 'chat.gone')
    h.ok(r.returncode == 0 and recs == [] and 'erased' in r.stderr,
         'log cat of the erased channel: no record, says erased', r.stderr)
    r = h.run('log', 'check')
    h.ok(r.returncode == 0 and 'erased_segments=' in r.stdout,
         'log check passes: the chain of the erased segments is still checked',
         r.stdout + r.stderr)
    seg = sorted(p for p in os.listdir(os.path.join(log_dir, 'chat.gone-0'))
                 if p.endswith('.cvlog'))[0]
    segpath = os.path.join(log_dir, 'chat.gone-0', seg)
    h.ok(b'secret' not in open(segpath, 'rb').read(), 'no plaintext in the segment')
    # The chain is still checked without the key: a flipped byte is damage.
    broken = os.path.join(h.tmp, 'broken')
    shutil.copytree(log_dir, broken)
    bseg = os.path.join(broken, 'chat.gone-0', seg)
    with open(bseg, 'r+b') as f:
        f.seek(os.path.getsize(bseg) - 20)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    r = h.run('log', 'check', '--set', 'log.dir=' + broken, '--topic', 'chat.gone')
    h.ok(r.returncode != 0, 'a changed byte in an erased segment is still damage',
         r.stdout + r.stderr)

    # (b) PostgreSQL
    for table in ('messages', 'message_versions', 'search_docs', 'report_hourly',
                  'report_senders', 'report_sizes'):
        h.is_(h.query("SELECT count(*) FROM chatvault.%s WHERE channel = 'gone'"
                      % table)[0][0], 0, 'chatvault.%s holds nothing of it' % table)
    audit = h.query("SELECT result, counts, arguments::text FROM chatvault.audit"
                    " WHERE command = 'erase' ORDER BY seq")
    # (the interrupted run could not reach PostgreSQL, so neither its audit;
    # the erasure record in the store is what it leaves)
    h.ok(audit and audit[-1][0] == 'ok' and
         audit[-1][1].get('already_erased_keys') == 1 and
         audit[-1][1].get('postgres_rows', 0) >= 20 and 'ticket 42' in audit[-1][2],
         'the audit records the erasure: keys, rows and the reason', audit)

    # (c) the other channel
    h.is_(h.query("SELECT count(*) FROM chatvault.messages WHERE channel = 'keep'")[0][0],
          10, 'the other channel keeps its rows')
    r, recs = cat(h, '--topic', 'chat.keep')
    h.is_(sorted(bodies(recs)), sorted(b'kept %d' % i for i in range(10)),
          'the other channel reads back from the log')

    # (d) verify
    r = h.run('verify', '--quiet', timeout=300)
    n = int(field(r.stderr, 'log_erased_segments') or 0)
    h.ok(r.returncode == 0 and n >= 2 and field(r.stderr, 'only_in_log') == '0' and
         field(r.stderr, 'log_damaged') == '0',
         'verify exits 0 and counts the erased segments (%d)' % n, r.stderr)

    # the other readers of the log skip it and say erased
    r = h.run('export', '--channel', 'gone', '--source', 'log', '--quiet')
    h.ok(r.returncode == 0 and 'erased' in r.stderr and 'secret' not in r.stdout,
         'export --source log of the erased channel: nothing, says erased', r.stderr)
    r = h.run('restore', '--channel', 'gone', '--quiet')
    h.ok(r.returncode == 0 and 'erased' in r.stderr,
         'restore of the erased channel: says erased', r.stdout + r.stderr)
    r = h.run('verify', '--repair', '--quiet', timeout=300)
    h.ok(r.returncode == 0, 'verify --repair finds nothing to repair', r.stderr)
    h.is_(h.query("SELECT count(*) FROM chatvault.messages WHERE channel = 'gone'")[0][0],
          0, 'restore and repair brought nothing of the erased channel back')

    # (g) idempotent
    r = h.run('erase', '--channel', 'gone', '--yes')
    h.ok(r.returncode == 0 and field(r.stdout, 'data_keys') == '0' and
         field(r.stdout, 'already_erased_keys') == '1' and
         field(r.stdout, 'postgres_rows') == '0',
         'a second erase destroys nothing more and exits 0', r.stdout + r.stderr)

    # (e) new messages after the erasure get a fresh key
    h.start_broker()
    for i in range(5):
        prod.send('chat.gone', partition=0, value=cvtest.chat_message(
            'gone', b'after %d' % i, message_id='a%d' % i)[1])
    prod.flush(timeout=30)
    h.is_(h.wait_rows(15), 15, 'new messages of the erased channel are stored')
    h.wait_committed(['chat.gone'])
    h.broker.stop()
    with open(store) as f:
        h.ok(re.search(r'^dek \d+ chat\.gone ', f.read(), re.M),
             'the erased channel has a new data key')
    r, recs = cat(h, '--topic', 'chat.gone')
    h.is_(sorted(bodies(recs)), sorted(b'after %d' % i for i in range(5)),
          'the new messages read back; the erased ones stay unreadable')
    r = h.run('verify', '--quiet', timeout=300)
    h.ok(r.returncode == 0, 'verify still exits 0', r.stderr)

    # a missing key that was not erased is an error, not "erased"
    lost = os.path.join(h.tmp, 'lost')
    shutil.copytree(log_dir, lost)
    lstore = os.path.join(lost, 'datakeys')
    with open(lstore) as f:
        lines = [ln for ln in f if not re.match(r'dek \d+ chat\.keep ', ln)]
    with open(lstore, 'w') as f:
        f.writelines(lines)
    r = h.run('log', 'cat', '--set', 'log.dir=' + lost, '--topic', 'chat.keep')
    h.ok(r.returncode != 0 and 'is not in' in r.stderr and 'erased:' not in r.stderr,
         'a data key missing without an erasure is an error', r.stderr)

    # (h) segments sealed with the master key still read
    legacy = os.path.join(h.tmp, 'legacy')
    subprocess.run([LOG_WRITER, h.config_values['log.key_file'], legacy, 'old', '0', '0',
                    '5'], check=True, capture_output=True)
    r, recs = cat(h, '--set', 'log.dir=' + legacy)
    h.ok(r.returncode == 0 and len(recs) == 5 and
         all(rec['key_id'] < 2 ** 31 for rec in recs),
         'master-key segments (no data key) still read', r.stderr)

    # sender erasure: rows deleted, log records kept but passed over
    r = h.run('erase', '--sender', 's0', '--channel', 'keep')
    h.ok(r.returncode == 2 and 'would delete the PostgreSQL rows of sender s0' in r.stderr,
         'erase --sender without --yes refuses', r.stderr)
    r = h.run('erase', '--sender', 's0', '--channel', 'keep', '--yes', '--reason', 'gdpr')
    h.ok(r.returncode == 0 and field(r.stdout, 'postgres_rows') not in (None, '0') and
         field(r.stdout, 'new_sender_record') == 'yes',
         'erase --sender deletes the sender\'s rows', r.stdout + r.stderr)
    h.is_(h.query("SELECT count(*) FROM chatvault.messages WHERE sender_id = 's0'"
                  " AND channel = 'keep'")[0][0],
          0, 'no message of the sender is left in the channel in PostgreSQL')
    with open(store) as f:
        h.ok(re.search(r'^sender keep s0 \d+ \S+ gdpr$', f.read(), re.M),
             'the store records the erased sender')
    r = h.run('erase', '--sender', 's0', '--channel', 'keep', '--yes')
    h.ok(r.returncode == 0 and field(r.stdout, 'postgres_rows') == '0' and
         field(r.stdout, 'new_sender_record') == 'no', 'a second sender erasure is a no-op',
         r.stdout + r.stderr)
    kseg = [p for p in os.listdir(os.path.join(log_dir, 'chat.keep-0'))
            if p.endswith('.cvlog')]
    h.ok(kseg, 'the channel\'s segments are all still there')
    r, recs = cat(h, '--topic', 'chat.keep')
    h.ok(recs == [] and 'erased senders' in r.stderr,
         'log cat passes the sender\'s records over and says so', r.stderr)
    r = h.run('verify', '--quiet', timeout=300)
    h.ok(r.returncode == 0 and field(r.stderr, 'only_in_log') == '0',
         'verify: the sender\'s log records are not differences', r.stderr)
    r = h.run('restore', '--channel', 'keep', '--quiet')
    h.ok(r.returncode == 0, 'restore of the channel', r.stdout + r.stderr)
    r = h.run('verify', '--repair', '--quiet', timeout=300)
    h.is_(h.query("SELECT count(*) FROM chatvault.messages WHERE sender_id = 's0'"
                  " AND channel = 'keep'")[0][0],
          0, 'restore and verify --repair do not bring the sender back')
