"""chatvault report (issue 18, item 2): activity from the rollups of
schemas/0004_reports.sql. A known mix goes through the broker (two channels,
several senders and body sizes, sent_at spread over three past hours, some
without sent_at, message ids re-sent, rejects, one from a channel named with
HTML), then `chatvault replay` re-sends a channel to its own topic. The
report's JSON must give exactly what was sent and what a full scan of
chatvault.messages gives; the replay must change nothing but `replayed`;
CSV and table carry the same totals; the HTML parses, has its SVG charts and
no unescaped markup from the archive; a reader login can run it and leaves
an audit action; and the migration's backfill, run again over the same
rows, gives the same report."""
import csv
import html.parser
import io
import json
import os
import shutil
import subprocess
import time

import cvtest

SUFFIX = '%d' % os.getpid()
READER = 'cvt_rep_' + SUFFIX
HOUR_US = 3600 * 10**6
SIZE_BOUNDS = [64, 256, 1024, 4096, 16384, 65536, 262144, 1048576]
LAT_BOUNDS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000,
                 60000, 300000, 3600000]
EVIL = '<script>alert("x")</script>'


def bucket(v, bounds):
    return sum(1 for b in bounds if v >= b)


def report_json(h, since_ms, *extra):
    r = h.run('report', '--since', str(since_ms), '--format', 'json', *extra)
    if r.returncode != 0:
        h.diag('report failed: %s' % r.stderr)
        return None
    return json.loads(r.stdout)


def expected(h, since_us, channel=None):
    """The report computed from a full scan of chatvault.messages."""
    where = "WHERE channel = %s" if channel else ""
    args = (channel,) if channel else None
    rows = h.query("SELECT channel, sender_id, octet_length(body),"
                   " CASE WHEN sent_at_us > 0 THEN sent_at_us"
                   " ELSE (date_part('epoch', persisted_at) * 1000000)::bigint END,"
                   " CASE WHEN sent_at_us > 0 THEN"
                   " (date_part('epoch', persisted_at) * 1000000)::bigint - sent_at_us END"
                   " FROM chatvault.messages " + where, args)
    rows = [r for r in rows if r[3] >= since_us]
    e = {'messages': len(rows), 'bytes': sum(r[2] for r in rows),
         'distinct_senders': len({r[1] for r in rows})}
    senders, minutes, hours = {}, {}, {}
    sizes = [0] * (len(SIZE_BOUNDS) + 1)
    lat = [0] * (len(LAT_BOUNDS_MS) + 1)
    for ch, s, size, t, l in rows:
        senders[s] = senders.get(s, 0) + 1
        m = t // 60000000 * 60000
        minutes[m] = minutes.get(m, 0) + 1
        hr = t // HOUR_US * 3600000
        hours[hr] = hours.get(hr, 0) + 1
        sizes[bucket(size, SIZE_BOUNDS)] += 1
        if l is not None:
            lat[bucket(l, [b * 1000 for b in LAT_BOUNDS_MS])] += 1
    e['top_senders'] = [{'sender_id': s, 'messages': n} for s, n in
                        sorted(senders.items(), key=lambda kv: (-kv[1], kv[0]))[:10]]
    e['peak_minutes'] = [{'t_ms': m, 'messages': n} for m, n in
                         sorted(minutes.items(), key=lambda kv: (-kv[1], kv[0]))[:10]]
    e['volume'] = sorted(hours.items())
    e['sizes'] = sizes
    e['latency_buckets'] = lat
    total = sum(lat)
    pct = {}
    for key, q in (('p50_ms', 500), ('p90_ms', 900), ('p99_ms', 990)):
        if not total:
            pct[key] = None
            continue
        need, cum = -(-total * q // 1000), 0
        for i, n in enumerate(lat):
            cum += n
            if cum >= need:
                break
        pct[key] = LAT_BOUNDS_MS[min(i, len(LAT_BOUNDS_MS) - 1)]
    e['pct'] = pct
    return e


def check_section(h, sec, e, what):
    for k in ('messages', 'bytes', 'distinct_senders', 'top_senders', 'peak_minutes',
              'sizes'):
        h.is_(sec[k], e[k], '%s: %s as the full scan' % (what, k))
    h.is_(sorted((v['t_ms'], v['messages']) for v in sec['volume']), e['volume'],
          '%s: messages per hour as the full scan' % what)
    h.is_(sec['latency']['buckets'], e['latency_buckets'],
          '%s: latency histogram as the full scan' % what)
    h.is_({k: sec['latency'][k] for k in e['pct']}, e['pct'],
          '%s: latency p50/p90/p99 from the histogram' % what)


class Checker(html.parser.HTMLParser):
    VOID = {'meta', 'br', 'img', 'input', 'link', 'hr', 'col', 'path', 'rect', 'line'}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.tags = [], [], {}

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append('</%s> closes %s' % (tag, self.stack[-1:]))
            return
        self.stack.pop()


with cvtest.Harness('report', topics={'chat.alpha': 2, 'chat.beta': 1},
                    partitions=2) as h:
    h.migrate()
    h.start_broker()
    prod = h.producer()
    now = cvtest.now_us()
    h0 = now // HOUR_US * HOUR_US - 3 * HOUR_US      # three hours ago, on the hour
    since_ms = (h0 - HOUR_US) // 1000

    sent = []      # (topic, value) in publishing order
    alpha = []     # (message_id, value): for the duplicates
    senders = ['ann', 'bob', 'cyd', EVIL]
    sizes = [10, 100, 300, 2000, 70000]
    for i in range(30):
        mid, v = cvtest.chat_message(
            'alpha', b'a' * sizes[i % 5], sender_id=senders[i % 4] if i % 7 else 'ann',
            sent_at_us=h0 + (i % 3) * HOUR_US + (i % 4) * 60 * 10**6 + i * 1000)
        alpha.append((mid, v))
        sent.append(('chat.alpha', v))
    for i in range(12):
        kw = {'sent_at_us': 0} if i < 2 else \
            {'sent_at_us': cvtest.now_us()} if i < 6 else \
            {'sent_at_us': h0 + HOUR_US + 17 * 60 * 10**6}
        mid, v = cvtest.chat_message('beta', b'b' * (i * 40), sender_id='bea%d' % (i % 3),
                                     **kw)
        sent.append(('chat.beta', v))
    for t, v in sent:
        prod.send(t, value=v)
    prod.flush(timeout=60)
    acks_c = h.consumer('chatvault.acks')
    acks = h.drain(acks_c, lambda out: len(out) >= len(sent), timeout=120)
    h.is_(h.wait_rows(42), 42, 'the broker stored the 42 messages')

    # duplicates: three ids re-sent with other bodies, one as it was (at
    # another offset); rejects: two undecodable records, one record naming
    # a channel of HTML on chat.beta
    dups = []
    for mid, _ in alpha[:3]:
        dups.append(cvtest.chat_message('alpha', b'other body', message_id=mid)[1])
    dups.append(alpha[3][1])
    for v in dups:
        prod.send('chat.alpha', value=v)
    prod.send('chat.alpha', value=b'\x07garbage\xff')
    prod.send('chat.alpha', value=b'\x07more garbage\xfe')
    bad = cvtest.chat_message('beta', b'x', sender_id='z')[1]
    from chatvault_pb2 import ChatMessage
    m = ChatMessage()
    m.ParseFromString(bad)
    m.channel = 'beta<img src=x onerror=alert(1)>'
    prod.send('chat.beta', value=m.SerializeToString())
    prod.flush(timeout=60)
    acks += h.drain(acks_c, lambda out: len(out) >= 5, timeout=120)
    h.is_(h.wait_rows(3, table='chatvault.rejected'), 3, 'three records rejected')
    deadline = time.time() + 60
    while time.time() < deadline and \
            h.query('SELECT count(*) FROM chatvault.duplicates')[0][0] < 4:
        time.sleep(0.2)
    statuses = [cvtest.STATUS[cvtest.parse_ack(a.value).status] for a in acks]
    h.is_(statuses.count('DUPLICATE'), 4, 'four records acked DUPLICATE')

    before = report_json(h, since_ms)
    h.ok(before is not None, 'report --format json exits 0')
    ov = before['overall']
    h.is_(ov['messages'], 42, 'overall: 42 messages, as sent')
    h.is_({c['channel']: c['messages'] for c in before['channels']},
          {'alpha': 30, 'beta': 12, 'beta<img src=x onerror=alert(1)>': 0, '': 0},
          'per channel: 30 alpha, 12 beta; the rejected HTML channel and the'
          ' unreadable ones ("") with none')
    h.is_((ov['duplicates'], ov['replayed']), (4, 0), 'overall: 4 duplicates, 0 replayed')
    alpha_sec = [c for c in before['channels'] if c['channel'] == 'alpha'][0]
    h.is_(alpha_sec['duplicates'], 4, 'alpha: the 4 duplicates')
    rej = dict(h.query('SELECT reason, count(*) FROM chatvault.rejected GROUP BY 1'))
    h.is_((ov['rejected'], ov['rejected_by_reason']), (3, rej),
          'overall: 3 rejected, by reason as chatvault.rejected')
    check_section(h, ov, expected(h, since_ms * 1000), 'overall')
    check_section(h, alpha_sec, expected(h, since_ms * 1000, 'alpha'), 'alpha')
    beta_sec = [c for c in before['channels'] if c['channel'] == 'beta'][0]
    check_section(h, beta_sec, expected(h, since_ms * 1000, 'beta'), 'beta')

    only = report_json(h, since_ms, '--channel', 'al*')
    h.is_([c['channel'] for c in only['channels']], ['alpha'],
          '--channel al* selects alpha alone')
    h.is_((only['overall']['messages'], only['overall']['rejected']), (30, 0),
          '--channel al*: overall is alpha\'s 30 messages; the unreadable'
          ' rejects name no channel')
    late = report_json(h, (h0 + 2 * HOUR_US) // 1000)
    h.is_(late['overall']['messages'], expected(h, h0 + 2 * HOUR_US)['messages'],
          '--since two hours later counts only what was sent from then')

    # a replay to the original topic: every alpha message again, acked
    # DUPLICATE; nothing but `replayed` may change
    r = h.run('replay', '--channel', 'alpha', '--quiet')
    h.is_(r.returncode, 0, 'replay --channel alpha exits 0')
    acks = h.drain(acks_c, lambda out: len(out) >= 30, timeout=120)
    acks += h.drain(acks_c, lambda out: False, timeout=3)    # stragglers
    statuses = [cvtest.STATUS[cvtest.parse_ack(a.value).status] for a in acks]
    # the log keeps every record, the 4 re-sent ones too: replay --source auto
    # sends those as well
    h.ok(len(acks) >= 30 and set(statuses) == {'DUPLICATE'},
         'the replay\'s %d records are acked DUPLICATE' % len(acks))
    replayed = len(acks)
    deadline = time.time() + 60
    while time.time() < deadline and \
            h.query('SELECT count(*) FROM chatvault.duplicates')[0][0] < 4 + replayed:
        time.sleep(0.2)
    after = report_json(h, since_ms)
    h.is_(after['overall']['replayed'], replayed,
          'the replay shows as %d replayed records, one per ack' % replayed)

    def strip(doc):
        d = json.loads(json.dumps(doc))
        d.pop('generated_at_ms')
        for s in [d['overall']] + d['channels']:
            s.pop('replayed')
        return d
    h.is_(strip(after), strip(before), 'the replay changed no other figure')

    # CSV and table
    r = h.run('report', '--since', str(since_ms), '--format', 'csv')
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    val = {(x['scope'], x['channel'], x['metric'], x['key']): int(x['value']) for x in rows}
    h.is_((val[('overall', '', 'messages', '')], val[('channel', 'alpha', 'messages', '')],
           val[('channel', 'beta', 'messages', '')], val[('overall', '', 'replayed', '')],
           val[('channel', 'alpha', 'top_sender', 'ann')]),
          (42, 30, 12, replayed, [s['messages'] for s in alpha_sec['top_senders']
                            if s['sender_id'] == 'ann'][0]),
          'csv: the same totals and top senders')
    h.ok(any(x['metric'] == 'top_sender' and x['key'] == EVIL for x in rows),
         'csv: a sender with quotes and commas reads back intact')
    r = h.run('report', '--since', str(since_ms))
    line = [ln for ln in r.stdout.splitlines() if ln.startswith('(all) ')]
    h.ok(r.returncode == 0 and line and line[0].split()[1:7] == ['42', str(ov['bytes']),
                                                                  str(ov['distinct_senders']),
                                                                  '4', str(replayed), '3'],
         'table: the overall line has the same totals', r.stdout[:600])

    # HTML
    out = os.path.join(h.tmp, 'report.html')
    r = h.run('report', '--since', str(since_ms), '--format', 'html', '--output', out)
    h.is_(r.returncode, 0, 'report --format html --output exits 0')
    page = open(out, encoding='utf-8').read()
    p = Checker()
    p.feed(page)
    p.close()
    h.ok(not p.errors and not p.stack, 'html: every element is closed in order',
         '%s %s' % (p.errors[:5], p.stack))
    h.ok(p.tags.get('svg', 0) >= 3 * (1 + len(after['channels'])) and
         p.tags.get('rect', 0) > 0 and p.tags.get('path', 0) > 0,
         'html: bar, histogram and latency SVG charts for each section (%d svg)'
         % p.tags.get('svg', 0))
    low = page.lower()
    h.ok('<script' not in low and '<img' not in low and 'http://' not in
         low.replace('http://www.w3.org/2000/svg', ''),
         'html: no script, no unescaped markup from the archive, nothing fetched')
    h.ok('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;' in page and
         'beta&lt;img src=x onerror=alert(1)&gt;' in page,
         'html: the sender and the channel named with HTML are shown escaped')
    # it renders: Debian's chromium (as tests/browser uses) takes a
    # screenshot of the file, offline; the PNG is the page, not a blank
    chromium = shutil.which('chromium')
    if chromium:
        png = os.path.join(h.tmp, 'report.png')
        subprocess.run([chromium, '--headless', '--no-sandbox', '--disable-gpu',
                        '--hide-scrollbars', '--window-size=1280,1400',
                        '--screenshot=' + png, 'file://' + out],
                       capture_output=True, timeout=120, cwd=h.tmp)
        data = open(png, 'rb').read() if os.path.exists(png) else b''
        h.ok(data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 20000,
             'chromium renders the HTML report (%d bytes of PNG)' % len(data))
    else:
        h.diag('chromium not installed: the HTML report is not rendered')
    if os.environ.get('CV_REPORT_HTML_COPY'):
        shutil.copy(out, os.environ['CV_REPORT_HTML_COPY'])

    # the reader role, and the audit
    h._admin('DROP ROLE IF EXISTS %s' % READER)
    h._admin('CREATE ROLE %s LOGIN IN ROLE chatvault_reader' % READER)
    try:
        r = h.run('report', '--since', str(since_ms), '--format', 'json', '--set',
                  'postgres.reader_conninfo=%s user=%s' % (h.conninfo, READER))
        h.ok(r.returncode == 0 and json.loads(r.stdout)['overall']['messages'] == 42,
             'a reader login runs the report', r.stderr)
        audit = h.query("SELECT db_role, result, counts FROM chatvault.audit"
                        " WHERE command = 'report' AND result <> 'running'"
                        " ORDER BY seq")
        h.ok(audit and audit[-1][0] == READER and audit[-1][1] == 'ok' and
             audit[-1][2].get('messages') == 42,
             'the report left an audit action as the reader, ok, with its count',
             repr(audit[-3:]))
    finally:
        h._admin('DROP OWNED BY %s' % READER)
        h._admin('DROP ROLE IF EXISTS %s' % READER)

    # the backfill: drop the rollups, migrate again (0004 reruns over the
    # rows already there) and get the same report, duplicates apart (they
    # are not rows of chatvault.messages). The migrations after 0004 are
    # undone too: migrate applies what is above the newest version held.
    h.broker.stop()
    conn = h.pg()
    with conn.cursor() as cur:
        cur.execute("DROP TABLE chatvault.report_hourly, chatvault.report_senders,"
                    " chatvault.report_minutes, chatvault.report_sizes,"
                    " chatvault.report_latency, chatvault.report_rejected,"
                    " chatvault.report_duplicates, chatvault.duplicates CASCADE;"
                    " DROP FUNCTION chatvault.report_messages_trigger() CASCADE;"
                    " DROP FUNCTION chatvault.report_rejected_trigger() CASCADE;"
                    " DROP FUNCTION chatvault.report_duplicates_trigger() CASCADE;"
                    " DROP FUNCTION chatvault.report_time_us(bigint, timestamptz),"
                    " chatvault.report_trunc(bigint, bigint),"
                    " chatvault.report_size_bucket(integer),"
                    " chatvault.report_latency_bucket(bigint);"
                    " DROP TABLE chatvault.message_versions;"
                    " DROP FUNCTION chatvault.messages_supersede_check() CASCADE;"
                    " ALTER TABLE chatvault.messages DROP COLUMN revision,"
                    " DROP COLUMN deleted;"
                    " DROP TABLE chatvault.restore_drills;"
                    " DROP TABLE chatvault.retention_holds;"
                    " DELETE FROM chatvault.schema_migrations WHERE version >= 4")
    h.migrate()
    again = report_json(h, since_ms)

    def nodup(doc):
        d = strip(doc)
        for s in [d['overall']] + d['channels']:
            s.pop('duplicates')
        return d
    h.is_(nodup(again), nodup(after), 'the migration\'s backfill gives the same report')
