"""Least-privilege PostgreSQL roles and the audit log (issue 18, items 3
and 5). `chatvault migrate` makes the group roles chatvault_writer,
chatvault_reader and chatvault_admin; this test gives each to a login role
of its own, runs the broker as the writer and the tools as the roles their
config keys name, and shows:
- the writer stores and acks, and cannot delete, update, truncate or drop;
- the reader verifies and exports, and cannot write; an import given the
  reader's connection is refused with PostgreSQL's one-line reason;
- the admin imports and repairs;
- every operator command (export, import, replay, verify, verify --repair,
  log cat, keygen on an existing key file) leaves an audit action (a start row and an end
  row, with the OS user, the database role, the arguments with secrets
  redacted, the counts and the result), which no chatvault role can change
  or delete, and `chatvault audit` lists them."""
import json
import os

import cvtest

N = 400
SUFFIX = '%d' % os.getpid()
ROLES = {'writer': 'cvt_w_' + SUFFIX, 'reader': 'cvt_r_' + SUFFIX,
         'admin': 'cvt_a_' + SUFFIX}


def as_role(h, role):
    return '%s user=%s' % (h.conninfo, ROLES[role])


def denied(h, role, sql):
    """True when ROLE's SQL is refused for lack of privilege."""
    conn = cvtest.psycopg2.connect(as_role(h, role))
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
        conn.commit()
        return False
    except cvtest.psycopg2.Error as e:
        return e.pgcode in ('42501',)  # insufficient_privilege
    finally:
        conn.close()


with cvtest.Harness('roles', topics={'chat.r': 2}, partitions=2) as h:
    h.migrate()
    for name, login in ROLES.items():
        h._admin('DROP ROLE IF EXISTS %s' % login)
        h._admin('CREATE ROLE %s LOGIN IN ROLE chatvault_%s' % (login, name))
    try:
        h.write_config(**{'postgres.conninfo': as_role(h, 'writer'),
                          'postgres.reader_conninfo': as_role(h, 'reader'),
                          'postgres.admin_conninfo': as_role(h, 'admin')})
        roles = dict(h.query("SELECT rolname, rolcanlogin FROM pg_roles"
                             " WHERE rolname LIKE 'chatvault\\_%'"))
        h.is_(roles, {'chatvault_writer': False, 'chatvault_reader': False,
                      'chatvault_admin': False},
              'migrate made the three group roles, none of which can log in')

        # --- the writer: the broker ------------------------------------
        h.start_broker()
        prod = h.producer()
        for i in range(N):
            prod.send('chat.r', value=cvtest.chat_message('r', b'hello %d' % i)[1])
        prod.flush(timeout=60)
        acks = h.drain(h.consumer('chatvault.acks'), lambda r: len(r) >= N, timeout=120)
        h.is_(len(acks), N, 'the broker, connected as the writer, acked every message')
        h.is_(h.wait_rows(N), N, 'and stored every one in PostgreSQL')
        for sql in ("DELETE FROM chatvault.messages",
                    "UPDATE chatvault.messages SET body = ''",
                    "TRUNCATE chatvault.messages",
                    "DELETE FROM chatvault.kafka_offsets",
                    "UPDATE chatvault.audit SET result = 'ok'",
                    "DELETE FROM chatvault.audit"):
            h.ok(denied(h, 'writer', sql), 'the writer is refused: ' + sql)
        h.ok(h.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'chatvault'"
                     " AND tableowner = %s", (ROLES['writer'],))[0][0] == 0,
             'the writer owns no table, so it cannot drop one')
        h.broker.stop()

        # --- the reader: verify, export, audit --------------------------
        r = h.run('verify')
        h.is_(r.returncode, 0, 'verify runs as the reader and finds the stores agree')
        out = os.path.join(h.tmp, 'r.jsonl')
        r = h.run('export', '--channel', 'r', '-o', out, '--set',
                  'postgres.reader_conninfo=%s password=not-shown' % as_role(h, 'reader'))
        h.is_(r.returncode, 0, 'export runs as the reader')
        for sql in ("INSERT INTO chatvault.messages (channel, message_id, kafka_topic,"
                    " kafka_partition, kafka_offset, body) VALUES ('r', 'x', 'chat.r',"
                    " 0, 999999, '')",
                    "DELETE FROM chatvault.messages",
                    "UPDATE chatvault.kafka_offsets SET next_offset = 0",
                    "DELETE FROM chatvault.audit"):
            h.ok(denied(h, 'reader', sql), 'the reader is refused: ' + sql)

        # --- import: refused to the reader, done by the admin -----------
        r = h.run('import', '--quiet', out, '--set',
                  'postgres.admin_conninfo=' + as_role(h, 'reader'))
        err = r.stderr.strip().splitlines()
        h.ok(r.returncode == 1 and any('permission denied' in l for l in err),
             'import with the reader\'s connection fails: permission denied',
             r.stderr)
        r = h.run('import', '--quiet', out)
        h.is_(r.returncode, 0, 'import runs as the admin (every message already held)')
        r = h.run('verify', '--repair')
        h.is_(r.returncode, 0, 'verify --repair runs as the admin')
        h.is_(h.query('SELECT count(*) FROM chatvault.messages')[0][0], N,
              'nothing was lost or doubled')
        r = h.run('replay', '--dry-run', '--quiet', '--channel', 'r')
        h.is_(r.returncode, 0, 'replay --dry-run runs as the reader')
        r = h.run('log', 'cat', '--channel', 'r')
        h.ok(r.returncode == 0 and r.stdout.count('\n') >= N,
             'log cat prints the channel', r.stderr)
        r = h.run('keygen')
        h.is_(r.returncode, 0, 'keygen adds a second key (a rotation)')

        # --- the audit log -----------------------------------------------
        acts = h.query("SELECT id, command, db_role, os_user, result, arguments, counts"
                       " FROM chatvault.audit ORDER BY seq")
        by_id = {}
        for a in acts:
            by_id.setdefault(a[0], []).append(a)
        summary = [(rows[0][1], rows[0][2], rows[0][4], rows[-1][4])
                   for rows in by_id.values()]
        h.diag('audit: %r' % summary)
        want = [('verify', ROLES['reader'], 'ok'), ('export', ROLES['reader'], 'ok'),
                ('import', ROLES['reader'], 'exit 1'), ('import', ROLES['admin'], 'ok'),
                ('verify --repair', ROLES['admin'], 'ok'),
                ('replay --dry-run', ROLES['reader'], 'ok'), ('log cat', ROLES['reader'], 'ok'),
                ('keygen', ROLES['admin'], 'ok')]
        h.is_([(s[0], s[1], s[3]) for s in summary], want,
              'each command left one action: its command, database role and outcome')
        h.ok(all(len(rows) == 2 and rows[0][4] == 'running' for rows in by_id.values()),
             'each action is a "running" row and an outcome row')
        h.ok(all(rows[0][3] for rows in by_id.values()), 'each names its OS user')
        export_args = [rows[0][5] for rows in by_id.values() if rows[0][1] == 'export'][0]
        h.ok('--channel' in export_args and
             'postgres.reader_conninfo=<redacted>' in ' '.join(export_args) and
             'not-shown' not in json.dumps(export_args),
             'the arguments are recorded, a connection string among them redacted',
             repr(export_args))
        export_counts = [rows[-1][6] for rows in by_id.values()
                         if rows[0][1] == 'export'][0]
        h.is_(export_counts.get('messages'), N, 'the export records how many it wrote')
        r = h.run('audit')
        h.ok(r.returncode == 0 and 'verify --repair' in r.stdout and
             'export' in r.stdout, '`chatvault audit` lists the actions', r.stdout + r.stderr)
        r = h.run('audit', '--json', '--command', 'import')
        lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
        h.is_([(x['command'], x['result']) for x in lines],
              [('import', 'ok'), ('import', 'exit 1')],
              '`chatvault audit --json --command import` gives both imports, newest first')
    finally:
        h._admin('DROP DATABASE IF EXISTS %s WITH (FORCE)' % h.db)
        h.db_created = False
        for login in ROLES.values():
            h._admin('DROP ROLE IF EXISTS %s' % login)
