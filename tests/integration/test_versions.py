"""Versions of a message (README "Edits and deletes: message versions"): an
original, an edit and a delete of one message id are each acked PERSISTED and
each kept in both stores (chatvault.messages holds the latest version,
chatvault.message_versions the others; the log a record each), while an exact
re-send of a version is acked DUPLICATE. Also: an older revision that arrives
after a newer one is history, not the latest; every version of a message in
one batch; `chatvault send --revision/--delete`; the writer may only
supersede; search follows the edit; `log cat` shows the versions; verify
finds no difference, and verify --repair puts back a lost version; replay
and export read the latest version, or every one with --history; import
brings an exported history back."""
import json
import time

import cvtest

def refused_as_writer(h, sql):
    """The SQLSTATE of SQL run as chatvault_writer (None: it ran)."""
    conn = h.pg()
    try:
        with conn.cursor() as cur:
            cur.execute('SET ROLE chatvault_writer')
            cur.execute(sql)
        return None
    except cvtest.psycopg2.Error as e:
        return e.pgcode
    finally:
        conn.rollback()


with cvtest.Harness('versions', topics={'chat.ver': 1}, partitions=1,
                    config={'search.index_interval_ms': '200'}) as h:
    h.migrate()
    h.start_broker()
    prod = h.producer()
    acks_c = h.consumer('chatvault.acks')
    acks = {}  # offset -> status

    def publish(value, name):
        """Publishes one record, waits for its ack; returns its offset."""
        off = prod.send('chat.ver', value=value).get(timeout=30).offset
        got = h.drain(acks_c, lambda out: any(
            cvtest.parse_ack(r.value).offset == off for r in out), timeout=120)
        for r in got:
            a = cvtest.parse_ack(r.value)
            acks[a.offset] = cvtest.STATUS[a.status]
        h.diag('%s: offset %d acked %s' % (name, off, acks.get(off)))
        return off

    def msg(mid, body, **kw):
        return cvtest.chat_message('ver', body, message_id=mid, **kw)[1]

    # --- one message, one batch per version -----------------------------
    original = msg('m1', b'hello wrold')
    edit = msg('m1', b'hello world', revision=1)
    tomb = msg('m1', b'', revision=2, deleted=True)
    o_orig = publish(original, 'original')
    o_edit = publish(edit, 'edit')
    o_tomb = publish(tomb, 'delete')
    o_again = publish(edit, 'the edit re-sent, byte for byte')
    h.is_([acks.get(o) for o in (o_orig, o_edit, o_tomb, o_again)],
          ['PERSISTED', 'PERSISTED', 'PERSISTED', 'DUPLICATE'],
          'original, edit, delete PERSISTED; an exact re-send DUPLICATE')

    rows = h.query("SELECT revision, deleted, body, kafka_offset FROM chatvault.messages"
                   " WHERE channel = 'ver' AND message_id = 'm1'")
    h.is_([(r, d, bytes(b), o) for r, d, b, o in rows], [(2, True, b'', o_tomb)],
          'messages: one row, the latest version (the tombstone)')
    hist = h.query("SELECT revision, deleted, body, kafka_offset"
                   " FROM chatvault.message_versions"
                   " WHERE channel = 'ver' AND message_id = 'm1' ORDER BY revision")
    h.is_([(r, d, bytes(b), o) for r, d, b, o in hist],
          [(0, False, b'hello wrold', o_orig), (1, False, b'hello world', o_edit)],
          'message_versions: the original and the edit, at their offsets')

    # --- an older revision after a newer one ----------------------------
    o_b2 = publish(msg('m2', b'second edit', revision=2), 'm2 revision 2 first')
    o_b1 = publish(msg('m2', b'first edit', revision=1), 'm2 revision 1 late')
    h.is_([acks.get(o_b2), acks.get(o_b1)], ['PERSISTED', 'PERSISTED'],
          'a late older revision is PERSISTED too')
    h.is_(h.query("SELECT revision, body FROM chatvault.messages"
                  " WHERE channel = 'ver' AND message_id = 'm2'")[0][:1], (2,),
          'messages keeps the newest revision of m2')
    h.is_([r for (r,) in h.query("SELECT revision FROM chatvault.message_versions"
                                 " WHERE channel = 'ver' AND message_id = 'm2'")],
          [1], 'the late revision 1 is history')

    # --- every version of a message in one batch ------------------------
    batch = [msg('m3', b'v0'), msg('m3', b'v1', revision=1),
             msg('m3', b'', revision=2, deleted=True)]
    batch.append(batch[1])
    futs = [prod.send('chat.ver', value=v) for v in batch]
    prod.flush(timeout=30)
    offs = [f.get(timeout=30).offset for f in futs]
    got = h.drain(acks_c, lambda out: len(out) >= len(offs), timeout=120)
    for r in got:
        a = cvtest.parse_ack(r.value)
        acks[a.offset] = cvtest.STATUS[a.status]
    h.is_([acks.get(o) for o in offs], ['PERSISTED', 'PERSISTED', 'PERSISTED', 'DUPLICATE'],
          'the same four sent at once: PERSISTED x3, DUPLICATE')
    h.is_(h.query("SELECT revision, deleted FROM chatvault.messages"
                  " WHERE channel = 'ver' AND message_id = 'm3'"), [(2, True)],
          'm3: the tombstone is the latest')
    h.is_(h.query("SELECT count(*) FROM chatvault.message_versions"
                  " WHERE channel = 'ver' AND message_id = 'm3'")[0][0], 2,
          'm3: two versions in the history')

    # --- chatvault send --revision / --delete ---------------------------
    r = h.run('send', '--channel', 'ver', '--id', 'm4', '--wait-ack', 'typo')
    r1 = h.run('send', '--channel', 'ver', '--id', 'm4', '--revision', '1',
               '--wait-ack', 'fixed')
    r2 = h.run('send', '--channel', 'ver', '--id', 'm4', '--revision', '2', '--delete',
               '--wait-ack')
    r3 = h.run('send', '--channel', 'ver', '--id', 'm4', '--revision', '1',
               '--wait-ack', 'fixed')
    statuses = [x.stdout.split()[1] if x.stdout.split() else x.stderr
                for x in (r, r1, r2, r3)]
    h.is_(statuses, ['PERSISTED', 'PERSISTED', 'PERSISTED', 'DUPLICATE'],
          'send --revision/--delete: PERSISTED x3, revision 1 again DUPLICATE')
    bad = h.run('send', '--channel', 'ver', '--revision', '1', 'x')
    h.ok(bad.returncode == 2 and '--id' in bad.stderr,
         'send --revision without --id: usage error naming --id', bad.stderr)
    bad = h.run('send', '--channel', 'ver', '--id', 'm4', '--delete', 'x')
    h.ok(bad.returncode == 2 and 'BODY' in bad.stderr,
         'send --delete with a BODY: usage error', bad.stderr)
    bad = h.run('send', '--channel', 'ver', '--id', 'm4', '--delete')
    h.ok(bad.returncode == 2 and '--revision' in bad.stderr,
         'send --delete without --revision (it would delete nothing): usage error',
         bad.stderr)
    h.is_(h.query("SELECT revision, deleted, body FROM chatvault.messages"
                  " WHERE channel = 'ver' AND message_id = 'm4'")[0][:2], (2, True),
          'm4: the tombstone is the latest')
    h.is_([(rv, bytes(b)) for rv, b in h.query(
        "SELECT revision, body FROM chatvault.message_versions"
        " WHERE channel = 'ver' AND message_id = 'm4' ORDER BY revision")],
        [(0, b'typo'), (1, b'fixed')], 'm4: the original and the edit in the history')

    # --- the writer may only supersede ---------------------------------
    h.is_(refused_as_writer(h, "UPDATE chatvault.messages SET body = 'x'"
                               " WHERE channel = 'ver' AND message_id = 'm2'"), '42501',
          'the writer cannot change a message in place')
    h.is_(refused_as_writer(h, "UPDATE chatvault.messages SET revision = 9"
                               " WHERE channel = 'ver' AND message_id = 'm2'"), '42501',
          'nor raise its revision without its version in message_versions')

    # --- search finds the latest version --------------------------------
    o_s0 = publish(msg('m5', b'aardvark sighting'), 'm5 original')
    o_s1 = publish(msg('m5', b'pangolin sighting', revision=1), 'm5 edit')
    def found(word):
        r = h.run('search', '--format', 'jsonl', '--text', word)
        return None if r.returncode else [x['message_id']
                                          for x in cvtest.search_jsonl(r.stdout)[0]]
    deadline = time.time() + 60
    while found('pangolin') != ['m5'] and time.time() < deadline:
        time.sleep(0.5)
    h.is_(found('pangolin'), ['m5'], 'search finds the edit by its new words')
    h.is_(found('aardvark'), [], 'and not by the words it replaced')
    r = h.run('search', '--format', 'jsonl', '--text', 'pangolin')
    hits = cvtest.search_jsonl(r.stdout)[0] if r.returncode == 0 else []
    h.is_([(x.get('revision'), x.get('deleted')) for x in hits], [(1, None)],
          'search shows the hit\'s revision')
    r = h.run('search', '--format', 'jsonl', '--id', 'm1')
    hits = cvtest.search_jsonl(r.stdout)[0] if r.returncode == 0 else []
    h.is_([(x.get('revision'), x.get('deleted')) for x in hits], [(2, True)],
          'search by id finds a deleted message as its tombstone')

    # --- the log: a record per version ----------------------------------
    h.wait_committed(['chat.ver'])
    c = h.run('log', 'cat', timeout=300)
    h.is_(c.returncode, 0, 'log cat exits 0')
    recs = [json.loads(x) for x in c.stdout.splitlines() if x.strip()]
    m1 = {x['offset']: x for x in recs if x.get('message_id') == 'm1'}
    h.is_(sorted(m1), sorted([o_orig, o_edit, o_tomb, o_again]),
          'the log holds every record of m1, the exact re-send too')
    h.ok('revision' not in m1.get(o_orig, {}) and 'deleted' not in m1.get(o_orig, {}),
         'log cat: the original shows neither revision nor deleted', m1.get(o_orig))
    h.is_((m1.get(o_edit, {}).get('revision'), m1.get(o_edit, {}).get('deleted')),
          (1, None), 'log cat: the edit shows revision 1')
    h.is_((m1.get(o_tomb, {}).get('revision'), m1.get(o_tomb, {}).get('deleted')),
          (2, True), 'log cat: the delete shows revision 2 and deleted')

    # --- verify: both stores agree --------------------------------------
    v = h.run('verify', timeout=300)
    h.ok(v.returncode == 0, 'verify exits 0: both stores hold every version',
         v.stdout + v.stderr)

    # --- verify --repair puts back a lost version -----------------------
    conn = h.pg()
    with conn.cursor() as cur:
        cur.execute("DELETE FROM chatvault.message_versions"
                    " WHERE channel = 'ver' AND message_id = 'm1' AND revision = 1")
    conn.commit()
    v = h.run('verify', '--quiet', timeout=300)
    h.is_(v.returncode, 3, 'a version lost from message_versions is a difference')
    v = h.run('verify', '--repair', '--quiet', timeout=300)
    h.ok(v.returncode in (0, 3), 'verify --repair runs', v.stderr)
    h.is_([(rv, bytes(b)) for rv, b in h.query(
        "SELECT revision, body FROM chatvault.message_versions"
        " WHERE channel = 'ver' AND message_id = 'm1' ORDER BY revision")],
        [(0, b'hello wrold'), (1, b'hello world')],
        'verify --repair put the edit back into message_versions')
    h.is_(h.query("SELECT revision FROM chatvault.messages"
                  " WHERE channel = 'ver' AND message_id = 'm1'"), [(2,)],
          'and messages still holds the tombstone')
    h.is_(h.run('verify', '--quiet', timeout=300).returncode, 0,
          'verify exits 0 after the repair')

    # --- export: latest, or every version with --history ----------------
    def export_ids(*extra):
        r = h.run('export', '--channel', 'ver', '--source', 'pg', '--quiet', *extra,
                  timeout=300)
        if r.returncode != 0:
            h.diag('export: %s' % r.stderr)
            return None
        return sorted((x['message_id'], x.get('revision', 0))
                      for x in map(json.loads, r.stdout.splitlines())
                      if 'manifest' not in x)
    latest = export_ids()
    h.is_(latest and [x for x in latest if x[0] == 'm1'], [('m1', 2)],
          'export: the latest version of m1')
    every = export_ids('--history')
    h.is_(every and [x for x in every if x[0] == 'm1'], [('m1', 0), ('m1', 1), ('m1', 2)],
          'export --history: every version of m1')

    # --- replay: latest, or every version with --history ---------------
    def replayed(topic, *extra):
        r = h.run('replay', '--channel', 'ver', '--to-topic', topic, '--source', 'pg',
                  '--quiet', *extra, timeout=300)
        if r.returncode != 0:
            h.diag('replay: %s' % r.stderr)
            return None
        got = h.drain(h.consumer(topic), lambda out: False, timeout=8, idle=4)
        vs = [cvtest.pb.ChatMessage.FromString(x.value) for x in got]
        return sorted((m.revision, m.deleted) for m in vs if m.message_id == 'm1')
    h.is_(replayed('latest.ver'), [(2, True)],
          'replay: m1 once, its latest version (the tombstone)')
    h.is_(replayed('history.ver', '--history'), [(0, False), (1, False), (2, True)],
          'replay --history: every version of m1, revision and deleted kept')

    # --- export --history, import: the versions come back ---------------
    path = h.tmp + '/history.jsonl'
    r = h.run('export', '--channel', 'ver', '--history', '--source', 'pg', '--quiet',
              '-o', path, timeout=300)
    h.is_(r.returncode, 0, 'export --history to a file')
    conn = h.pg()
    with conn.cursor() as cur:
        cur.execute("DELETE FROM chatvault.message_versions WHERE channel = 'ver'"
                    " AND message_id = 'm4'")
        cur.execute("DELETE FROM chatvault.messages WHERE channel = 'ver'"
                    " AND message_id = 'm4'")
    r = h.run('import', path, '--quiet', timeout=300)
    h.is_(r.returncode, 0, 'import of the history exits 0')
    h.is_(h.query("SELECT revision, deleted FROM chatvault.messages"
                  " WHERE channel = 'ver' AND message_id = 'm4'"), [(2, True)],
          'import: m4 is back, its tombstone the latest')
    h.is_([(rv, bytes(b)) for rv, b in h.query(
        "SELECT revision, body FROM chatvault.message_versions"
        " WHERE channel = 'ver' AND message_id = 'm4' ORDER BY revision")],
        [(0, b'typo'), (1, b'fixed')], 'import: and its history')

    rc = h.broker.stop()
    h.is_(rc, 0, 'broker exits 0 on SIGTERM')
