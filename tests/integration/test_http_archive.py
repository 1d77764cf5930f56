"""The dashboard's search and reports pages (issue 18, items 1, 2 and 4)
against a real broker and PostgreSQL, with curl and Debian's chromium:

- http.archive = on without a token is a config error (exit 2, one line);
- /api/search answers exactly what `chatvault search --format jsonl` prints
  for the same conditions (words, channel pattern, sender, time, id), page
  by page through the same cursors; bad parameters get a 400 naming them,
  no token a 401;
- /search is an HTML page with a form and the results, the words marked,
  every string from the archive escaped (a body holding a <script> stays
  text), and a next-page link that carries the conditions;
- /reports is the report's HTML page (the command's renderer) and
  /api/report its JSON document, equal to `chatvault report --format json`;
- each request runs as the reader role (postgres.reader_conninfo) and
  leaves an audit action (os user http, the client's address, the result
  count);
- a search that PostgreSQL holds up past http.archive_timeout_ms answers
  503 naming the timeout; while three wait, a fourth gets 503 at once and
  /healthz answers;
- chromium renders both pages; with http.archive off they are 404s that say
  so.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse

import cvtest

TOKEN = 'archive-test-token'
READER = 'cvt_ha_%d' % os.getpid()
port = cvtest.free_port()
BASE_US = (cvtest.now_us() // 1000000 - 7200) * 1000000  # two hours ago


def curl(path, token=TOKEN):
    """(status, body, content type) of GET PATH."""
    args = ['curl', '-sS', '-m', '30', '-o', '-', '-w', '\n%{http_code} %{content_type}']
    if token:
        args += ['-H', 'Authorization: Bearer ' + token]
    args.append('http://127.0.0.1:%d%s' % (port, path))
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    body, _, tail = r.stdout.rpartition('\n')
    code, _, ctype = tail.partition(' ')
    return (int(code) if code.isdigit() else 0), body + r.stderr, ctype


def api(path):
    status, body, _ = curl(path)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def cli_search(h, *args):
    return cvtest.search_jsonl(h.run('search', '--format', 'jsonl', *args).stdout)


def q(**kw):
    return '?' + urllib.parse.urlencode(kw, doseq=True)


MESSAGES = [  # channel, sender, body
    ('eu-support', 'maria', 'The invoice for order 5521 was charged twice, can you refund one?'),
    ('eu-support', 'agent-7', 'Refund issued for the duplicate invoice, 3-5 days'),
    ('eu-sales', 'maria', 'Can I get a refund on the annual plan?'),
    ('us-ops', 'bob', 'deploy finished, no refund needed'),
    ('us-ops', 'eve', '<script>alert("x")</script> refund & "quotes"'),
] + [('eu-support', 'user%d' % (i % 3), 'chatter %d about nothing' % i)
     for i in range(40)]
CHANNELS = sorted({m[0] for m in MESSAGES})

with cvtest.Harness('http_archive', topics={'chat.' + c: 2 for c in CHANNELS},
                    partitions=2,
                    config={'http.listen': '127.0.0.1:%d' % port, 'http.archive': 'on',
                            'http.token': TOKEN, 'search.index_interval_ms': '200',
                            'http.archive_timeout_ms': '4000'}) as h:
    h.migrate()
    r = h.run('broker', '--set', 'http.token=', timeout=60)
    h.ok(r.returncode == 2 and 'http.archive' in r.stderr and
         len(r.stderr.strip().splitlines()) == 1,
         'http.archive = on without a token: exit 2, one line naming http.archive',
         'exit %d: %r' % (r.returncode, r.stderr))

    h._admin('DROP ROLE IF EXISTS %s' % READER)
    h._admin('CREATE ROLE %s LOGIN IN ROLE chatvault_reader' % READER)
    h.write_config(**{'postgres.reader_conninfo': '%s user=%s' % (h.conninfo, READER)})
    try:
        h.start_broker()
        prod = h.producer()
        for i, (ch, sender, body) in enumerate(MESSAGES):
            _, value = cvtest.chat_message(ch, body.encode(), message_id='h%03d' % i,
                                           sender_id=sender,
                                           sent_at_us=BASE_US + i * 60 * 1000000)
            prod.send('chat.' + ch, value=value)
        prod.flush(timeout=60)
        n = len(MESSAGES)
        h.is_(h.wait_rows(n, timeout=60, table='chatvault.search_docs'), n,
              'every message stored and indexed')
        deadline = time.time() + 30
        while time.time() < deadline and curl('/healthz', token=None)[0] != 200:
            time.sleep(0.2)

        # --- /api/search is the command's search --------------------------
        cases = [
            ({'text': 'refund'}, ['--text', 'refund']),
            ({'text': 'refund', 'channel': 'eu-*'}, ['--text', 'refund', '--channel', 'eu-*']),
            ({'sender': 'maria'}, ['--sender', 'maria']),
            ({'channel': ['us-ops', 'eu-s?les']},
             ['--channel', 'us-ops', '--channel', 'eu-s?les']),
            ({'since': str(BASE_US // 1000 + 10 * 60000),
              'until': str(BASE_US // 1000 + 20 * 60000)},
             ['--since', str(BASE_US // 1000 + 10 * 60000),
              '--until', str(BASE_US // 1000 + 20 * 60000)]),
            ({'id': 'h003'}, ['--id', 'h003']),
        ]
        for params, args in cases:
            status, doc = api('/api/search' + q(**params))
            want, _ = cli_search(h, *args)
            got = doc.get('results') if isinstance(doc, dict) else doc
            h.ok(status == 200 and want and got == want,
                 '/api/search %s: the %d results of chatvault search %s'
                 % (urllib.parse.urlencode(params, doseq=True), len(want), ' '.join(args)),
                 '%s: %r' % (status, str(got)[:300]))
        pages, cur, seen = 0, None, []
        while pages < 20:
            p = {'channel': 'eu-support', 'limit': '7'}
            if cur:
                p['before'] = cur
            status, doc = api('/api/search' + q(**p))
            if status != 200:
                break
            seen += [o['message_id'] for o in doc['results']]
            pages += 1
            cur = doc['next_before']
            if not cur:
                break
        want = [o['message_id'] for o in cli_search(h, '--channel', 'eu-support',
                                                    '--limit', '1000')[0]]
        h.ok(seen == want and pages >= 6,
             '/api/search pages of 7 through next_before: every eu-support message once, '
             'newest first (%d pages)' % pages, '%r vs %r' % (seen[:5], want[:5]))
        _, nxt = cli_search(h, '--channel', 'eu-support', '--limit', '7')
        status, doc = api('/api/search' + q(channel='eu-support', limit='7'))
        h.is_(doc.get('next_before') if isinstance(doc, dict) else None, nxt,
              'its cursor is the one the command prints')
        for path, word in [('/api/search?bogus=1', 'bogus'), ('/api/search?limit=0', 'limit'),
                           ('/api/search?text=a&text=b', 'repeated'),
                           ('/api/search?since=yesterday-ish', 'since'),
                           ('/api/search?channel=a%20b', 'channel'),
                           ('/api/search?channel=a%5B', 'channel'),
                           ('/api/report?channel=%5Bz-a%5D', 'channel'),
                           ('/api/search?before=xyz', 'before'),
                           ('/api/report?since=2h&until=3h', 'since')]:
            status, body, _ = curl(path)
            h.ok(status == 400 and word in body and len(body.strip().splitlines()) == 1,
                 '%s: 400, one line naming %s' % (path, word), '%d %r' % (status, body))
        status, body, _ = curl('/api/search?text=refund', token=None)
        h.is_(status, 401, '/api/search without the token: 401')
        status, body, _ = curl('/search', token=None)
        h.is_(status, 401, '/search without the token: 401')

        # --- /search, the page -------------------------------------------
        status, page, ctype = curl('/search')
        h.ok(status == 200 and ctype.startswith('text/html') and '<form' in page and
             'name="text"' in page and 'id="results"' not in page,
             '/search alone: the form, no results yet', page[:300])
        status, page, _ = curl('/search' + q(text='refund', channel='', sender=''))
        rows = page.count('<tr>') - 1
        h.ok(status == 200 and rows == 5 and '<mark>refund</mark>' in page.lower(),
             '/search?text=refund: the 5 results, the word marked', page[-800:])
        h.ok('alert(&quot;x&quot;)' in page and '<script' not in page and
             '&amp; &quot;quotes&quot;' in page,
             'a text hit\'s excerpt (ts_headline drops tags) is escaped')
        status, page, _ = curl('/search' + q(sender='eve'))
        h.ok(status == 200 and '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;' in page
             and '<script' not in page,
             'a body holding markup is shown as text, escaped', page[-600:])
        status, page, _ = curl('/search' + q(channel='eu-*', limit='5'))
        m = re.search(r'id="next" href="([^"]+)"', page)
        h.ok(m and 'channel=eu-%2A' in m.group(1) and 'limit=5' in m.group(1),
             'a full page links the next one with its conditions', m and m.group(1))
        if m:
            status, page2, _ = curl(m.group(1).replace('&amp;', '&'))
            first = re.findall(r'<td>(h\d{3})</td>', page)
            second = re.findall(r'<td>(h\d{3})</td>', page2)
            h.ok(status == 200 and len(second) == 5 and not set(first) & set(second) and
                 max(second) < min(first),
                 'the next page continues where the first ended', '%r %r' % (first, second))

        # --- reports ------------------------------------------------------
        since_ms = BASE_US // 1000 - 3600000
        until_ms = cvtest.now_us() // 1000 + 3600000
        status, doc = api('/api/report' + q(since=since_ms, until=until_ms))
        r = h.run('report', '--since', str(since_ms), '--until', str(until_ms),
                  '--format', 'json')
        want = json.loads(r.stdout) if r.returncode == 0 else None
        for d in (doc, want):
            if isinstance(d, dict):
                d.pop('generated_at_ms', None)
        h.ok(status == 200 and isinstance(doc, dict) and doc == want and
             doc['overall']['messages'] == len(MESSAGES),
             '/api/report is the document of chatvault report --format json (%d messages)'
             % len(MESSAGES), str(doc)[:300])
        status, page, ctype = curl('/reports' + q(since='1d', channel='eu-*'))
        h.ok(status == 200 and ctype.startswith('text/html') and
             'chatvault activity report' in page and 'href="/archive.css"' in page and
             '<svg' in page and '<style' not in page and 'eu-support' in page and
             'us-ops' not in page,
             '/reports: the report page for eu-*, its charts, its style sheet linked '
             '(the CSP forbids inline styles)', page[:400])
        status, css, ctype = curl('/archive.css')
        h.ok(status == 200 and ctype.startswith('text/css') and 'mark{' in css,
             '/archive.css is served')

        # --- the audit ----------------------------------------------------
        audit = h.query("SELECT command, os_user, host, db_role, result, counts"
                        " FROM chatvault.audit WHERE os_user = 'http'"
                        " AND result <> 'running' ORDER BY seq")
        api_ok = [a for a in audit if a[0] == 'search (api)' and a[4] == 'ok']
        h.ok(api_ok and all(a[2] == '127.0.0.1' and a[3] == READER for a in api_ok) and
             api_ok[0][5].get('results') == 5,
             'every search left an audit action: os user http, the client address, the '
             'reader role, the result count', repr(audit[:3]))
        h.ok(any(a[0] == 'search (api)' and a[4] == 'http 400' for a in audit) is False and
             any(a[0] == 'report (dashboard)' and a[4] == 'ok' for a in audit) and
             any(a[0] == 'search (dashboard)' for a in audit),
             'the pages are audited too; a request refused before PostgreSQL is not',
             repr(sorted({(a[0], a[4]) for a in audit})))

        # --- a slow query ---------------------------------------------------
        conn = h.pg()
        cur_ = conn.cursor()
        cur_.execute('BEGIN; LOCK TABLE chatvault.search_docs IN ACCESS EXCLUSIVE MODE')
        results = []

        def slow():
            t0 = time.time()
            r = curl('/api/search?text=refund')
            results.append((r, time.time() - t0))
        # one after another, so that each is taken by a server thread that is
        # not already blocked in a handler
        threads = [threading.Thread(target=slow) for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.4)
        time.sleep(0.4)
        busy = curl('/api/search?text=refund')
        t0 = time.time()
        hz = curl('/healthz', token=None)
        hz_t = time.time() - t0
        for t in threads:
            t.join(60)
        cur_.execute('ROLLBACK')
        conn.close()
        h.ok(busy[0] == 503 and 'running' in busy[1],
             'a fourth search while three wait in PostgreSQL: 503, saying so', busy[:2])
        h.ok(hz[0] == 200 and hz_t < 1.0,
             '/healthz answers while three searches wait in PostgreSQL (%.2f s)' % hz_t)
        h.ok(len(results) == 3 and all(r[0] == 503 and 'statement timeout' in r[1] and
                                       3.5 < t_ < 6 for r, t_ in results),
             'the searches held up past http.archive_timeout_ms (4 s): 503 naming the '
             'timeout (%s s)' % ', '.join('%.1f' % t_ for _, t_ in results),
             repr([(r[0], r[1][:100]) for r, _ in results]))

        # --- a real browser -----------------------------------------------
        browser = shutil.which('chromium')
        if not browser:
            h.ok(False, 'chromium is installed (deploy/setup.sh installs it)')
        else:
            profile = tempfile.mkdtemp(prefix='cvtest-chromium-')
            base = [browser, '--headless=new', '--no-sandbox', '--disable-gpu',
                    '--no-first-run', '--user-data-dir=' + profile]
            url = 'http://u:%s@127.0.0.1:%d' % (TOKEN, port)
            r = subprocess.run(base + ['--dump-dom', url + '/search?text=invoice'],
                               capture_output=True, text=True, timeout=120)
            h.ok(r.stdout.count('<mark>') >= 2 and 'h001' in r.stdout and
                 'h000' in r.stdout,
                 'chromium opens /search?text=invoice and shows both invoices, marked',
                 r.stdout[-500:] + r.stderr[-300:])
            png = os.path.join(h.tmp, 'reports.png')
            subprocess.run(base + ['--hide-scrollbars', '--window-size=1280,1200',
                                   '--screenshot=' + png, url + '/reports?since=1d'],
                           capture_output=True, timeout=120, cwd=h.tmp)
            data = open(png, 'rb').read() if os.path.exists(png) else b''
            h.ok(data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 20000,
                 'chromium renders /reports (%d bytes of PNG)' % len(data))
            shutil.rmtree(profile, ignore_errors=True)

        # --- off ------------------------------------------------------------
        h.broker.stop()
        h.write_config(**{'postgres.reader_conninfo': '%s user=%s' % (h.conninfo, READER),
                          'http.archive': 'off'})
        h.start_broker()
        deadline = time.time() + 30
        while time.time() < deadline and curl('/healthz', token=None)[0] != 200:
            time.sleep(0.2)
        for path in ('/search', '/api/search?text=refund', '/reports', '/api/report'):
            status, body, _ = curl(path)
            h.ok(status == 404 and 'http.archive' in body,
                 'http.archive off: %s is a 404 that names http.archive' % path,
                 '%d %r' % (status, body))
    finally:
        if h.broker:
            h.broker.stop()
        h._admin('DROP OWNED BY %s' % READER)
        h._admin('DROP ROLE IF EXISTS %s' % READER)
