"""chatvault search (issue 18, item 1): the broker's indexer fills
chatvault.search_docs off the ack path, and `chatvault search` finds
exactly the messages with the given words, sender, time range, channel
pattern or id, newest first, page by page through keyset cursors that hold
still while new messages arrive; a body that is not UTF-8 is indexed
without its words and breaks nothing; --from-log finds messages whose rows
PostgreSQL no longer holds; a login role in chatvault_reader can search,
and every search leaves an audit action with its result count."""
import json
import os
import time

import cvtest

N = 360
BAD = 6  # text/plain bodies that are not UTF-8, with the words in them
CHANNELS = ['alpha', 'beta', 'gamma-x']
SENDERS = ['alice', 'bob', 'carol']
READER = 'cvt_sr_%d' % os.getpid()
BASE_US = (cvtest.now_us() // 1000000 - 86400) * 1000000  # a day ago, whole s


def body_of(i):
    words = ['message', str(i)]
    if i % 3 == 0:
        words.append('Zebra' if i % 24 == 0 else 'zebra')
    if i % 4 == 0:
        words.append('quokka')
    if i % 5 == 1:
        words.append('zebras')  # a different word: never a hit for zebra
    return ' '.join(words)


def jsonl(r):
    """(results, next cursor) of a --format jsonl run."""
    return cvtest.search_jsonl(r.stdout)


def search(h, *args, config=True):
    r = h.run('search', '--format', 'jsonl', '--limit', '1000', *args, config=config)
    if r.returncode != 0:
        h.diag('search %s: exit %d: %s' % (' '.join(args), r.returncode, r.stderr))
        return None
    return jsonl(r)[0]


def ids(results):
    return None if results is None else [o['message_id'] for o in results]


with cvtest.Harness('search', topics={'chat.' + c: 2 for c in CHANNELS},
                    partitions=2, config={'search.index_interval_ms': '200'}) as h:
    h.migrate()
    h.start_broker()
    prod = h.producer()
    msgs = {}  # id -> (i, channel, sender, sent_at_us, body bytes, text?)
    for i in range(N):
        ch, sender = CHANNELS[(i // 7) % 3], SENDERS[(i // 11) % 3]
        sent = BASE_US + i * 1000000
        body = body_of(i).encode()
        mid, value = cvtest.chat_message(ch, body, message_id='m%04d' % i,
                                         sender_id=sender, sent_at_us=sent)
        msgs[mid] = (i, ch, sender, sent, body, True)
        prod.send('chat.' + ch, value=value)
    for k in range(BAD):
        i = N + k
        ch = CHANNELS[k % 3]
        body = b'\xff\xfe zebra quokka \xc3'
        mid, value = cvtest.chat_message(ch, body, message_id='bad%d' % k,
                                         sender_id='mallory',
                                         sent_at_us=BASE_US + i * 1000000)
        msgs[mid] = (i, ch, 'mallory', BASE_US + i * 1000000, body, False)
        prod.send('chat.' + ch, value=value)
    mid, value = cvtest.chat_message('alpha', b'\x00\x01zebra', message_id='bin0',
                                     content_type='application/octet-stream',
                                     sent_at_us=BASE_US - 1000000)
    msgs[mid] = (-1, 'alpha', 'cvtest', BASE_US - 1000000, b'\x00\x01zebra', False)
    prod.send('chat.alpha', value=value)
    prod.flush(timeout=60)
    total = len(msgs)
    h.is_(h.wait_rows(total), total, 'the broker stored every message')
    n = h.wait_rows(total, timeout=60, table='chatvault.search_docs')
    h.is_(n, total, 'its indexer made a search document of every one, the '
          'non-UTF-8 and binary bodies too')
    h.is_(h.query('SELECT count(*) FROM chatvault.search_docs WHERE tsv IS NULL')[0][0],
          BAD + 1, 'the bodies that are not text have no words')
    h.ok('search indexer: postgres unavailable' not in h.broker_log(),
         'and indexing them raised no error')

    def newest_first(sel):
        """The ids SEL picks, newest first; a selection that picks none or
        every message would let a wrong search pass, so it fails here."""
        got = [m for m, _ in sorted(((m, v) for m, v in msgs.items() if sel(v)),
                                    key=lambda x: -x[1][3])]
        if not 0 < len(got) < len(msgs) and sel is not everything:
            h.ok(False, 'the expected result picks some but not all messages',
                 '%d of %d' % (len(got), len(msgs)))
        return got

    def everything(v):
        return True

    def words(v):
        return v[5] and set(v[4].decode().lower().split())

    # --- by text ----------------------------------------------------------
    want = newest_first(lambda v: words(v) and {'zebra', 'quokka'} <= words(v))
    got = ids(search(h, '--text', 'zebra quokka'))
    h.is_(got, want, '--text "zebra quokka": exactly the %d text bodies with both '
          'words (any case, not "zebras"), newest first' % len(want))
    want = newest_first(lambda v: words(v) and 'zebra' in words(v)
                        and 'quokka' not in words(v))
    h.is_(ids(search(h, '--text', 'zebra -quokka')), want,
          '--text "zebra -quokka": the ones with zebra and without quokka')
    res = search(h, '--text', 'quokka', '--limit', '3')
    h.ok(res and all('**quokka**' in o['excerpt'] for o in res),
         'a text hit\'s excerpt marks the words', res)
    # --- by sender, time, channel pattern, id -----------------------------
    h.is_(ids(search(h, '--sender', 'bob')), newest_first(lambda v: v[2] == 'bob'),
          '--sender bob: exactly bob\'s messages')
    since, until = BASE_US + 100 * 1000000, BASE_US + 150 * 1000000
    h.is_(ids(search(h, '--since', str(since // 1000), '--until', str(until // 1000))),
          newest_first(lambda v: since <= v[3] < until),
          '--since/--until: exactly the 50 messages sent in [since, until)')
    h.is_(ids(search(h, '--channel', 'g*-?')),
          newest_first(lambda v: v[1] == 'gamma-x'),
          '--channel "g*-?": the messages of gamma-x only')
    h.is_(ids(search(h, '--channel', 'alpha', '--channel', 'b[e]ta',
                     '--sender', 'carol', '--text', 'zebra')),
          newest_first(lambda v: v[1] in ('alpha', 'beta') and v[2] == 'carol'
                       and words(v) and 'zebra' in words(v)),
          'two --channel and --sender and --text together')
    res = search(h, '--id', 'm0042')
    v = msgs['m0042']
    h.ok(res and len(res) == 1 and res[0]['message_id'] == 'm0042' and
         res[0]['channel'] == v[1] and res[0]['sender_id'] == v[2] and
         res[0]['sent_at_us'] == v[3] and res[0]['topic'] == 'chat.' + v[1] and
         isinstance(res[0]['offset'], int) and res[0]['partition'] in (0, 1) and
         res[0]['excerpt'] == v[4].decode() and
         res[0]['stores'] == {'postgres': True, 'log': None},
         '--id m0042: that message, with its Kafka position, body and stores', res)
    row = h.query("SELECT kafka_partition, kafka_offset FROM chatvault.messages"
                  " WHERE message_id = 'm0042'")[0]
    h.is_((res[0]['partition'], res[0]['offset']) if res else None, row,
          'the Kafka position is the stored row\'s')
    res = search(h, '--id', 'bad1')
    h.ok(res and len(res) == 1 and res[0]['excerpt'] is None and
         res[0]['body_bytes'] == len(msgs['bad1'][4]),
         'a non-UTF-8 body is found by id, shown by size, not as text', res)
    r = h.run('search', '--id', 'm0042', '--check-log')
    lines = r.stdout.splitlines()
    h.ok(r.returncode == 0 and len(lines) == 2 and lines[0].startswith('SENT') and
         ' yes  yes ' in lines[1] and 'm0042' in lines[1],
         '--check-log (table): PostgreSQL and the log both hold it', r.stdout + r.stderr)

    # --- paging -------------------------------------------------------------
    want = newest_first(everything)
    seen, cursor, pages, extra = [], None, 0, 0
    while pages < 100:
        args = ['search', '--format', 'jsonl', '--limit', '37']
        if cursor:
            args += ['--before', cursor]
        r = h.run(*args)
        if r.returncode != 0:
            h.diag(r.stderr)
            break
        page, cursor = jsonl(r)
        seen += [o['message_id'] for o in page]
        pages += 1
        if pages == 1:
            # messages arriving between pages are newer than every cursor
            for k in range(5):
                prod.send('chat.alpha', value=cvtest.chat_message(
                    'alpha', b'zebra late %d' % k, message_id='late%d' % k)[1])
            prod.flush(timeout=60)
            extra = 5
            h.wait_rows(total + extra, timeout=60, table='chatvault.search_docs')
        if not cursor:
            break
    h.is_(seen, want, 'pages of 37 visit every message exactly once, newest first '
          '(%d pages), while new ones arrive' % pages)
    h.is_(ids(search(h, '--text', 'late')), ['late%d' % k for k in range(4, -1, -1)],
          'and the new ones are on page 1 of a new search')
    r = h.run('search', '--limit', '2', '--format', 'jsonl')
    lines = r.stdout.splitlines()
    ok = r.returncode == 0 and len(lines) == 3
    try:
        objs = [json.loads(l) for l in lines]
    except ValueError:
        objs, ok = [], False
    h.ok(ok and set(objs[0]) == {'sent_at', 'sent_at_us', 'channel', 'sender_id',
                                  'message_id', 'topic', 'partition', 'offset',
                                  'content_type', 'body_bytes', 'excerpt', 'stores'}
         and list(objs[2]) == ['next_before'],
         '--format jsonl: one JSON object per result, then the next cursor', r.stdout)
    r = h.run('search', '--before', 'not-a-cursor')
    h.ok(r.returncode == 2 and 'cursor' in r.stderr, 'a bad cursor is a usage error',
         r.stderr)

    # --- a reader login, and the audit ------------------------------------
    h._admin('DROP ROLE IF EXISTS %s' % READER)
    h._admin('CREATE ROLE %s LOGIN IN ROLE chatvault_reader' % READER)
    try:
        reader = '%s user=%s' % (h.conninfo, READER)
        res = search(h, '--text', 'quokka', '--sender', 'alice', '--set',
                     'postgres.reader_conninfo=' + reader)
        h.is_(ids(res), newest_first(lambda v: v[2] == 'alice' and words(v)
                                     and 'quokka' in words(v)),
              'a login role in chatvault_reader searches')
        acts = h.query("SELECT db_role, result, counts FROM chatvault.audit"
                       " WHERE command = 'search' ORDER BY seq")
        h.ok(acts and acts[-1][0] == READER and acts[-1][1] == 'ok' and
             acts[-1][2].get('results') == len(res or []),
             'the audit table has the search, its role and result count', acts[-3:])
    finally:
        h._admin('DROP OWNED BY %s' % READER)
        h._admin('DROP ROLE IF EXISTS %s' % READER)

    # --- --from-log: rows gone from PostgreSQL ----------------------------
    h.is_(h.broker.stop(), 0, 'broker stopped')
    conn = h.pg()
    with conn.cursor() as cur:
        cur.execute("DELETE FROM chatvault.messages WHERE channel = 'beta'")
    h.ok(len(newest_first(lambda v: v[1] == 'beta')) > 0, 'beta had messages')
    h.is_(search(h, '--channel', 'beta'), [],
          'with beta\'s rows deleted, PostgreSQL finds none of them')
    want = newest_first(lambda v: v[1] == 'beta' and words(v) and 'zebra' in words(v))
    res = search(h, '--from-log', '--channel', 'beta', '--text', 'ZEBRA')
    h.is_(ids(res), want, '--from-log --text ZEBRA: exactly beta\'s text bodies with '
          'the word, any case (not "zebras", not the non-UTF-8 ones)')
    h.ok(res and all(o['stores'] == {'postgres': False, 'log': True} for o in res),
         'each says the log holds it and PostgreSQL does not', res and res[:2])
    h.is_(ids(search(h, '--from-log', '--sender', 'bob', '--since',
                     str(since // 1000), '--until', str(until // 1000))),
          newest_first(lambda v: v[2] == 'bob' and since <= v[3] < until),
          '--from-log --sender --since --until')
    res = search(h, '--from-log', '--limit', '10')
    r = h.run('search', '--from-log', '--format', 'jsonl', '--limit', '10', '--before',
              jsonl(h.run('search', '--from-log', '--format', 'jsonl',
                          '--limit', '10'))[1] or '')
    page2 = jsonl(r)[0] if r.returncode == 0 else None
    allnew = newest_first(everything)
    h.is_(ids(res) + (ids(page2) or []), ['late%d' % k for k in range(4, -1, -1)] +
          allnew[:15], '--from-log pages newest first with the same cursors')
    h.is_(ids(search(h, '--from-log', '--id', 'm0043')), ['m0043'],
          '--from-log --id')

    # --- --reindex ----------------------------------------------------------
    r = h.run('search', '--reindex')
    h.ok(r.returncode == 0 and 'search reindex done' in r.stderr,
         '--reindex rebuilds (as the admin role)', r.stderr)
    h.is_(h.query('SELECT count(*) FROM chatvault.search_docs')[0][0],
          h.query('SELECT count(*) FROM chatvault.messages')[0][0],
          'one document per row of chatvault.messages, none for the deleted rows')
    h.is_(ids(search(h, '--text', 'zebra quokka')),
          newest_first(lambda v: v[1] != 'beta' and words(v)
                       and {'zebra', 'quokka'} <= words(v)),
          'and text search finds the same messages again')
    n = h.query('SELECT count(*) FROM chatvault.search_docs')[0][0]
    r = h.run('search', '--status')
    h.ok(r.returncode == 0 and 'documents  %d\n' % n in r.stdout and
         'behind     0 messages' in r.stdout,
         '--status shows the documents and that the indexer is not behind',
         r.stdout + r.stderr)
