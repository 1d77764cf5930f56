"""chatvault restore: PostgreSQL rebuilt from the encrypted log.

Two batches of messages on two channels, a second apart in Kafka time. Then:
rows deleted from the live database come back (and only they: the rest is
"already there"); a new database created by restore holds every row equal
to the live one and verifies clean against the log; running it again writes
nothing; --as-of the time between the batches restores exactly the first;
--to-offset, --message-id and a channel alone restore exactly what they
name; a dry run writes nothing and does not create the database; bad
arguments and unreachable targets end in one-line errors. Some messages of
the first batch are edited (revision 1) and some deleted (a tombstone,
revision 2) in the second: restore brings back every version, the newest as
the message and the others as its history, and as of the time between the
batches only the originals."""
import os
import re
import time

import cvtest

FIRST = 1500
SECOND = 700
EDITS = 40      # first-batch messages of ra edited in the second batch
DELETES = 10    # of them, deleted after the edit
COLS = ('channel, message_id, revision, deleted, kafka_topic, kafka_partition,'
        ' kafka_offset, kafka_timestamp, sender_id, sent_at_us, body, content_type,'
        ' attributes, reply_to')
BODY = 10       # the index of body in COLS


def rows(conninfo, where='TRUE', table='messages'):
    conn = cvtest.psycopg2.connect(conninfo)
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT %s FROM chatvault.%s WHERE %s'
                        ' ORDER BY channel, message_id, revision' % (COLS, table, where))
            return [tuple(bytes(x) if isinstance(x, memoryview) else x for x in r)
                    for r in cur.fetchall()]
    finally:
        conn.close()


def summary(r):
    """(restored, of, present) from restore's summary line."""
    m = re.search(r'restored? (\d+) of (\d+) log records .* (\d+) already there', r.stdout)
    return tuple(int(x) for x in m.groups()) if m else (None, None, None)


def errors(r):
    """The error lines restore printed (the rest of stderr is logfmt)."""
    return sum(l.startswith('chatvault restore: ') for l in r.stderr.splitlines())


def publish(h, prod, n, tag):
    for i in range(n):
        c = 'ra' if i % 3 else 'rb'
        prod.send('chat.' + c, key=('%s-%d' % (c, i)).encode(), value=cvtest.chat_message(
            c, ('%s message %d' % (tag, i)).encode(), message_id='%s-%s-%d' % (tag, c, i),
            attributes={'n': str(i)})[1])
    prod.flush(timeout=120)


def publish_edits(prod):
    """Edits, then deletes, of first-batch messages of ra (keyed as the
    originals, so each lands after its original)."""
    ids = [i for i in range(FIRST) if i % 3][:EDITS]
    for i in ids:
        prod.send('chat.ra', key=('ra-%d' % i).encode(), value=cvtest.chat_message(
            'ra', b'edit of %d' % i, message_id='first-ra-%d' % i, revision=1)[1])
    for i in ids[:DELETES]:
        prod.send('chat.ra', key=('ra-%d' % i).encode(), value=cvtest.chat_message(
            'ra', b'', message_id='first-ra-%d' % i, revision=2, deleted=True)[1])
    prod.flush(timeout=120)


with cvtest.Harness('restore', topics={'chat.ra': 2, 'chat.rb': 1}, partitions=2) as h:
    h.migrate()
    h.start_broker()
    prod = h.producer()
    publish(h, prod, FIRST, 'first')
    h.is_(h.wait_rows(FIRST), FIRST, 'the first batch is stored')
    time.sleep(1.2)
    between_ms = int(time.time() * 1000)
    time.sleep(1.2)
    publish(h, prod, SECOND, 'second')
    publish_edits(prod)
    total = FIRST + SECOND
    h.is_(h.wait_rows(total), total, 'the second batch is stored')
    h.is_(h.wait_rows(EDITS + DELETES, table='chatvault.message_versions'), EDITS + DELETES,
          'the edits and deletes are stored, the older versions as history')
    total += EDITS + DELETES     # log records: every version
    deadline = time.time() + 60
    while h.run('verify', '--quiet').returncode != 0 and time.time() < deadline:
        time.sleep(1)
    h.is_(h.broker.stop(), 0, 'broker stopped')
    live = rows(h.conninfo)
    live_versions = rows(h.conninfo, table='message_versions')

    r = h.run('restore', '--dry-run', '--quiet')
    h.ok(r.returncode == 0 and summary(r) == (0, total, total),
         'dry run on the live database: nothing to restore, all %d there' % total,
         r.stdout + r.stderr)

    with h.pg().cursor() as cur:
        cur.execute("DELETE FROM chatvault.messages WHERE channel = 'ra' AND"
                    " message_id IN (SELECT message_id FROM chatvault.messages"
                    " WHERE channel = 'ra' ORDER BY message_id LIMIT 25)")
    r = h.run('restore', '--channel', 'ra', '--dry-run', '--quiet')
    h.ok(r.returncode == 0 and summary(r)[0] == 25, 'dry run: 25 deleted rows to restore',
         r.stdout + r.stderr)
    h.is_(len(rows(h.conninfo)), FIRST + SECOND - 25, 'and it wrote nothing')
    r = h.run('restore', '--channel', 'ra', '--quiet')
    h.ok(r.returncode == 0 and summary(r)[0] == 25, 'restore --channel ra: 25 restored',
         r.stdout + r.stderr)
    h.ok(rows(h.conninfo) == live, 'the live database is whole again, row for row')

    dbs = []
    try:
        def target(suffix):
            db = '%s_%s' % (h.db, suffix)
            dbs.append(db)
            return db, '%s dbname=%s' % (cvtest.PG, db)

        db, ci = target('all')
        r = h.run('restore', '--into', ci, '--dry-run', '--quiet')
        h.ok(r.returncode == 1 and 'does not exist' in r.stderr and '--create' in r.stderr
             and errors(r) == 1,
             'a missing database without --create: one-line error', r.stderr)
        r = h.run('restore', '--into', ci, '--quiet')
        h.ok(r.returncode == 1 and 'does not exist: add --create' in r.stderr
             and errors(r) == 1, 'and so without --dry-run', r.stderr)
        r = h.run('restore', '--into', ci, '--create', '--dry-run', '--quiet')
        exists = h.query('SELECT count(*) FROM pg_database WHERE datname = %s', (db,))
        h.ok(r.returncode == 0 and summary(r) == (total, total, 0) and exists[0][0] == 0,
             'dry run with --create: would restore all, creates nothing',
             r.stdout + r.stderr)
        r = h.run('restore', '--into', ci, '--create', timeout=300)
        h.ok(r.returncode == 0 and summary(r) == (total, total, 0),
             'restore into a new database: all %d restored' % total, r.stdout + r.stderr)
        h.ok('restore' in r.stderr and 'restore done' in r.stderr,
             'it logs its progress and end on stderr', r.stderr)
        h.ok(rows(ci) == live, 'every restored row equals the live one, byte for byte')
        h.ok(rows(ci, table='message_versions') == live_versions,
             'and so does the history of the edited and deleted messages')
        offsets = h.query('SELECT count(*) FROM chatvault.kafka_offsets')[0][0]
        conn = cvtest.psycopg2.connect(ci)
        with conn.cursor() as cur:
            cur.execute('SELECT count(*) FROM chatvault.kafka_offsets')
            h.ok(offsets > 0 and cur.fetchone()[0] == 0,
                 'no consumer group offsets are written to the restored database')
        conn.close()
        r = h.run('verify', '--quiet', '--set', 'postgres.conninfo=' + ci)
        h.is_(r.returncode, 0, 'the restored database verifies clean against the log')
        r = h.run('restore', '--into', ci, '--quiet', timeout=300)
        h.ok(r.returncode == 0 and summary(r) == (0, total, total),
             'restoring again writes nothing (idempotent)', r.stdout + r.stderr)

        db, ci = target('asof')
        r = h.run('restore', '--into', ci, '--create', '--quiet', '--as-of',
                  str(between_ms))
        got = rows(ci)
        h.ok(r.returncode == 0 and len(got) == FIRST and
             all(x[BODY].startswith(b'first ') for x in got) and
             not rows(ci, table='message_versions'),
             '--as-of between the batches: exactly the first %d, before their edits'
             % FIRST, r.stdout + r.stderr)
        originals = sorted((x for x in live + live_versions if x[BODY].startswith(b'first ')),
                           key=lambda x: x[:3])
        h.ok(got == originals, 'and those rows equal the live originals')

        db, ci = target('one')
        mid = live[100][1]
        r = h.run('restore', '--into', ci, '--create', '--quiet', '--message-id', mid)
        got = rows(ci)
        h.ok(r.returncode == 0 and got == [live[100]],
             '--message-id: exactly that message', r.stdout + r.stderr)
        r = h.run('restore', '--into', ci, '--quiet', '--channel', 'rb', '--partition',
                  '0', '--to-offset', '9')
        got = rows(ci, "channel = 'rb'")
        h.ok(r.returncode == 0 and sorted(x[6] for x in got) == list(range(10)),
             '--channel rb --to-offset 9: offsets 0..9 of rb', r.stdout + r.stderr)

        r = h.run('restore', '--into', ci, '--as-of', 'yesterday-ish', '--quiet')
        h.ok(r.returncode == 2 and '--as-of' in r.stderr, 'a bad --as-of is exit 2',
             r.stderr)
        db, ci = target('bare')
        h._admin('CREATE DATABASE %s' % db)
        for dry in (['--dry-run'], []):
            r = h.run('restore', '--into', ci, '--quiet', *dry)
            h.ok(r.returncode == 1 and 'no chatvault schema: add --create' in r.stderr,
                 'a database without the schema, %s: refused with the hint'
                 % ('dry run' if dry else 'real run'), r.stderr)
        r = h.run('restore', '--into', ci, '--create', '--quiet', '--channel', 'rb')
        h.ok(r.returncode == 0 and summary(r)[0] == len(range(0, FIRST, 3)) + len(range(0, SECOND, 3)),
             'with --create it gets the schema and the messages', r.stdout + r.stderr)
        conn = cvtest.psycopg2.connect(ci)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute('DROP TABLE chatvault.messages CASCADE')
        conn.close()
        r = h.run('restore', '--into', ci, '--quiet')
        h.ok(r.returncode == 1 and 'dropped?' in r.stderr and errors(r) == 1,
             'a dropped chatvault.messages: refused, saying what to do', r.stderr)
        r = h.run('restore', '--into', 'host=127.0.0.1 port=%d dbname=x connect_timeout=5'
                  % cvtest.free_port(), '--quiet')
        h.ok(r.returncode == 1 and 'cannot connect' in r.stderr and errors(r) == 1,
             'an unreachable target: exit 1, one line', r.stderr)
        r = h.run('restore', '--help')
        h.ok(r.returncode == 0 and '--as-of' in r.stdout and '--message-id' in r.stdout,
             'restore --help lists its options')
    finally:
        for db in dbs:
            h._admin('DROP DATABASE IF EXISTS %s WITH (FORCE)' % db)
