"""Observability against a real broker: /metrics and /api/lag scraped while
messages flow agree with what was published; counters only grow; the
exposition is valid (promtool check metrics when installed); http.token
guards everything but /healthz; a record that is never acked (garbage with no
message id, the last of its partition) still leaves no lag once its offset is
committed; and with PostgreSQL unavailable to the broker (its database
refuses connections, the broker's session is terminated) the store shows
down, channels with waiting messages turn ERR, /readyz fails, and all of it
recovers when PostgreSQL is back; `chatvault lag` reads the broker, and
computes the lag itself when no broker runs; with ack.policy = any the same
outage is degraded mode (acks DEGRADED, no ERR) instead."""
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import cvtest

TOKEN = 'observability-test-token'
LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


port = cvtest.free_port()
base = 'http://127.0.0.1:%d' % port


def get(path, token=TOKEN):
    req = urllib.request.Request(base + path)
    if token:
        req.add_header('Authorization', 'Bearer ' + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:  # not listening (yet)
        return 0, str(e)


def scrape():
    """{(name, frozenset(labels)): value} and the raw text."""
    status, text = get('/metrics')
    if status != 200:
        raise RuntimeError('/metrics answered %d' % status)
    out, bad = {}, []
    for line in text.splitlines():
        if not line or line.startswith('#'):
            continue
        m = LINE.match(line)
        if not m:
            bad.append(line)
            continue
        labels = frozenset(LABEL.findall(m.group(3) or ''))
        out[(m.group(1), labels)] = float(m.group(4))
    return out, text, bad


def val(metrics, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


def lag():
    status, text = get('/api/lag')
    if status != 200:
        raise RuntimeError('/api/lag answered %d' % status)
    return json.loads(text)


def wait(cond, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.3)
    return last


topics = {'chat.m1': 4, 'chat.m2': 4, 'chat.m3': 1}
with cvtest.Harness('metrics', topics=topics, partitions=4,
                    config={'http.listen': '127.0.0.1:%d' % port,
                            'http.token': TOKEN}) as h:
    h.migrate()
    if not os.path.exists(os.path.join(h.tmp, 'log.key')):  # the log store's key
        r = h.run('keygen')
        h.ok(r.returncode == 0, 'chatvault keygen', r.stderr)
    h.start_broker()
    up = wait(lambda: get('/healthz', token=None)[0] == 200 if h.broker.alive() else None, 30)
    if not h.ok(up, 'broker serves /healthz without a token'):
        raise SystemExit(1)
    h.is_(get('/metrics', token=None)[0], 401, '/metrics without the token: 401')
    h.is_(get('/api/lag', token='wrong')[0], 401, '/api/lag with a wrong token: 401')
    h.is_(get('/', token=None)[0], 401, 'the dashboard without the token: 401')
    h.is_(get('/metrics')[0], 200, '/metrics with the token: 200')

    assigned = wait(lambda: (lambda d: d if {'m1', 'm2', 'm3'} <= {c['channel'] for c in d['channels']}
                             else None)(lag()), 60)
    h.ok(assigned, '/api/lag lists the assigned channels before any message')

    # --- messages flow while we scrape ----------------------------------
    prod = h.producer()
    sent = {'m1': 0, 'm2': 0}
    per_channel = 1500

    def publish():
        for i in range(per_channel):
            for ch in sent:
                prod.send('chat.' + ch, value=cvtest.chat_message(ch, b'body %d' % i)[1])
                sent[ch] += 1
            if i % 100 == 99:
                prod.flush(timeout=60)
                time.sleep(0.3)
        # m3: a channel mismatch (rejected, acked REJECTED), then garbage with
        # no message id as the last record of the partition (never acked).
        prod.send('chat.m3', value=cvtest.chat_message('m1', b'wrong channel')[1])
        prod.send('chat.m3', value=b'\x07garbage')
        prod.flush(timeout=60)

    t = threading.Thread(target=publish)
    t.start()
    scrapes, bad_lines, flowing_lag = [], [], []
    while t.is_alive():
        m, _, bad = scrape()
        scrapes.append(m)
        bad_lines += bad
        flowing_lag.append(lag())
        time.sleep(0.4)
    t.join()
    h.ok(len(scrapes) >= 3, 'scraped /metrics %d times while messages flowed' % len(scrapes))
    h.ok(not bad_lines, 'every sample line is valid exposition format', bad_lines[:5])
    went_back = []
    for a, b in zip(scrapes, scrapes[1:]):
        for k, v in a.items():
            if k[0].endswith(('_total', '_count', '_sum', '_bucket')) and b.get(k, v) < v:
                went_back.append((k, v, b.get(k)))
    h.ok(not went_back, 'counters never go back between scrapes', went_back[:5])
    h.ok(any(0 < d['totals']['acked'] < 2 * per_channel for d in flowing_lag),
         '/api/lag shows acks while messages flow',
         [d['totals']['acked'] for d in flowing_lag])

    total = sum(sent.values()) + 2
    done = wait(lambda: (lambda d: d if d['totals']['consumed'] >= total and
                         d['totals']['lag_messages'] == 0 else None)(lag()), 120)
    h.ok(done, 'all %d records consumed and the lag drained to 0' % total,
         json.dumps(lag()['totals']))
    m, text, _ = scrape()
    d = lag()
    for ch, n in sent.items():
        h.is_(val(m, 'chatvault_consumed_total', channel=ch), n, '%s: consumed_total = %d published' % (ch, n))
        h.is_(val(m, 'chatvault_acked_total', channel=ch, status='persisted'), n,
              '%s: acked_total{status="persisted"} = %d' % (ch, n))
        h.is_(val(m, 'chatvault_stored_total', channel=ch, store='postgres'), n,
              '%s: stored_total{store="postgres"} = %d' % (ch, n))
        c = next((c for c in d['channels'] if c['channel'] == ch), {})
        h.ok(c.get('consumed') == n and c.get('acked') == n and c.get('status') == 'OK',
             '%s: /api/lag agrees (consumed, acked, OK)' % ch, c)
        h.is_(val(m, 'chatvault_ack_lag_messages', channel=ch), 0, '%s: ack_lag_messages 0' % ch)
    h.is_(val(m, 'chatvault_rejected_total', channel='m3', reason='channel_mismatch'), 1,
          'm3: rejected_total{reason="channel_mismatch"} = 1')
    h.is_(val(m, 'chatvault_rejected_total', channel='m3', reason='decode'), 1,
          'm3: rejected_total{reason="decode"} = 1')
    h.is_(val(m, 'chatvault_ack_lag_messages', channel='m3'), 0,
          'm3: the unackable garbage record leaves no lag once committed')
    h.ok(val(m, 'chatvault_ack_latency_seconds_count') >= 2 * per_channel,
         'sent->ack latency observed for every acked message')
    h.ok(val(m, 'chatvault_pg_commit_seconds_count') >= 1, 'PostgreSQL commit latency observed')
    h.ok(val(m, 'chatvault_batch_size_messages_sum') == total, 'batch sizes sum to the records consumed',
         val(m, 'chatvault_batch_size_messages_sum'))
    h.is_(val(m, 'chatvault_store_up', store='postgres'), 1, 'store_up{store="postgres"} 1')
    h.is_(val(m, 'chatvault_degraded'), 0, 'not degraded')
    h.ok(('chatvault_build_info', frozenset()) not in m and
         any(k[0] == 'chatvault_build_info' for k in m), 'build_info carries labels')
    h.ok(d['latency']['p50_s'] is None or d['latency']['p50_s'] >= 0, 'latency quantiles in /api/lag')
    parts = [p for c in d['channels'] for p in c['partitions']]
    h.ok(parts and all(p['acked_offset'] <= p['end_offset'] and
                       p['end_offset'] >= max(p['high_watermark'], p['consumed_offset'])
                       for p in parts),
         '/api/lag: every partition\'s end_offset is the larger of high watermark and '
         'consumed offset, and acked is never past it',
         json.dumps(parts)[:800])
    r = h.run('lag', '--partitions')
    rows = re.findall(r'end (-?\d+) acked (-?\d+)', r.stdout)
    h.ok(rows and all(int(a) <= int(e) for e, a in rows),
         'chatvault lag --partitions never shows acked above end', r.stdout[-800:])
    h.is_(get('/readyz')[0], 200, '/readyz 200 while all is well')
    promtool = shutil.which('promtool')
    if promtool:
        p = subprocess.run([promtool, 'check', 'metrics'], input=text, capture_output=True, text=True)
        h.ok(p.returncode == 0, 'promtool check metrics', p.stdout + p.stderr)

    # --- PostgreSQL unavailable ------------------------------------------
    h._admin('ALTER DATABASE %s ALLOW_CONNECTIONS false' % h.db)
    try:
        h._admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = '%s' AND pid <> pg_backend_pid()" % h.db)
        for i in range(10):
            prod.send('chat.m1', value=cvtest.chat_message('m1', b'while pg is away %d' % i)[1])
        prod.flush(timeout=60)
        down = wait(lambda: (lambda mm: mm if val(mm, 'chatvault_store_up', store='postgres') == 0
                             else None)(scrape()[0]), 60)
        h.ok(down, 'store_up{store="postgres"} drops to 0')
        if down:
            h.ok(val(down, 'chatvault_store_errors_total', store='postgres') >= 1,
                 'store_errors_total counts the failed writes')
        d = wait(lambda: (lambda dd: dd if any(c['channel'] == 'm1' and c['status'] == 'ERR'
                                              for c in dd['channels']) else None)(lag()), 30)
        h.ok(d, 'm1 turns ERR in /api/lag', json.dumps(lag()['channels'])[:800])
        if d:
            # Paused partitions are not fetched: the broker asks Kafka for
            # their ends about once a second, so the lag keeps growing.
            def m1_lag():
                c = next(c for c in lag()['channels'] if c['channel'] == 'm1')
                return c if c['lag_messages'] >= 10 else None
            m1 = wait(m1_lag, 10)
            h.ok(m1, 'm1 shows the 10 waiting messages as lag',
                 next(c for c in lag()['channels'] if c['channel'] == 'm1'))
            h.ok(not d['stores'][0]['up'] and d['stores'][0]['last_error'],
                 '/api/lag names the store error', d['stores'])
        status, body = get('/readyz')
        h.ok(status == 503 and 'postgres' in body, '/readyz 503 naming postgres', (status, body))
    finally:
        h._admin('ALTER DATABASE %s ALLOW_CONNECTIONS true' % h.db)
    back = wait(lambda: (lambda dd: dd if dd['status'] == 'OK' and dd['totals']['lag_messages'] == 0
                         else None)(lag()), 90)
    h.ok(back, 'after PostgreSQL is back: status OK, lag 0', json.dumps(lag()['totals']))
    h.is_(val(scrape()[0], 'chatvault_store_up', store='postgres'), 1, 'store_up back to 1')
    h.is_(val(scrape()[0], 'chatvault_acked_total', channel='m1', status='persisted'),
          sent['m1'] + 10, 'the 10 messages published meanwhile are acked')
    h.is_(get('/readyz')[0], 200, '/readyz 200 again')

    # --- chatvault lag -----------------------------------------------------
    r = h.run('lag')
    h.ok(r.returncode == 0 and re.search(r'^m1 +OK ', r.stdout, re.M),
         'chatvault lag: table from the broker, m1 OK, exit 0', r.stdout + r.stderr)
    r = h.run('lag', '--json')
    h.ok(r.returncode == 0 and json.loads(r.stdout)['status'] == 'OK',
         'chatvault lag --json: the broker\'s document', r.stdout[:300] + r.stderr)
    h.is_(h.broker.stop(), 0, 'broker exits 0 on SIGTERM')
    r = h.run('lag', '--direct', '--interval', '1', '--json')
    d = json.loads(r.stdout) if r.stdout.startswith('{') else {}
    h.ok(r.returncode == 0 and d.get('source') == 'direct' and d.get('status') == 'OK',
         'chatvault lag --direct with everything acked: OK, exit 0', r.stdout[:400] + r.stderr)
    for i in range(3):
        prod.send('chat.m2', value=cvtest.chat_message('m2', b'nobody consumes %d' % i)[1])
    prod.flush(timeout=60)
    r = h.run('lag', '--interval', '1')   # no broker answers: falls back to direct
    h.ok(r.returncode == 1 and re.search(r'^m2 +STOP +[0-9.]+ +3 ', r.stdout, re.M)
         and 'no broker at' in r.stderr,
         'chatvault lag without a broker: m2 STOP with 3 waiting, exit 1',
         r.stdout + r.stderr)

    # --- ack.policy = any: degraded mode -----------------------------------
    h.write_config(**{'ack.policy': 'any'})
    h.start_broker()
    drained = wait(lambda: (lambda d: d if d['totals']['lag_messages'] == 0 and any(
        c['channel'] == 'm2' and c['acked'] >= 3 for c in d['channels']) else None)(
            lag()) if get('/healthz', token=None)[0] == 200 else None, 90)
    h.ok(drained, 'restarted with ack.policy = any: the 3 waiting m2 messages are acked')
    h._admin('ALTER DATABASE %s ALLOW_CONNECTIONS false' % h.db)
    try:
        h._admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = '%s' AND pid <> pg_backend_pid()" % h.db)
        for i in range(5):
            prod.send('chat.m1', value=cvtest.chat_message('m1', b'degraded %d' % i)[1])
        prod.flush(timeout=60)
        d = wait(lambda: (lambda dd: dd if dd['degraded'] and dd['totals']['lag_messages'] == 0
                          else None)(lag()), 60)
        h.ok(d, 'PostgreSQL away: /api/lag says degraded and the lag drains (log only)',
             json.dumps(lag())[:600])
        m = scrape()[0]
        h.is_(val(m, 'chatvault_degraded'), 1, 'chatvault_degraded 1')
        h.is_(val(m, 'chatvault_acked_total', channel='m1', status='degraded'), 5,
              'the 5 messages are acked DEGRADED')
        h.is_(val(m, 'chatvault_store_up', store='postgres'), 0, 'store_up{postgres} 0')
        h.ok(d and all(c['status'] == 'OK' for c in d['channels']),
             'degraded is not ERR: acks keep flowing', d and d['channels'])
    finally:
        h._admin('ALTER DATABASE %s ALLOW_CONNECTIONS true' % h.db)
    # Store health is the last write's result: the next message shows it.
    prod.send('chat.m1', value=cvtest.chat_message('m1', b'after the outage')[1])
    prod.flush(timeout=60)
    back = wait(lambda: (lambda mm: mm if val(mm, 'chatvault_store_up', store='postgres') == 1
                         and val(mm, 'chatvault_degraded') == 0 else None)(scrape()[0]), 90)
    h.ok(back, 'PostgreSQL back and written to: store_up{postgres} 1, degraded 0')
    h.is_(h.broker.stop(), 0, 'broker exits 0 on SIGTERM')
