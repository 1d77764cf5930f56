"""Browser test of the dashboard (meson suite `browser`).

Starts a mock Kafka cluster and a real broker against a fresh PostgreSQL
database (tests/integration/cvtest.py; skips with 77 when CV_TEST_PG is
unset), then runs dashboard.test.mjs: Debian's chromium driven by
playwright-core (tests/browser/node_modules, installed with `npm ci` when
missing). The node script reports one JSON line per check; this wrapper turns
them into TAP.

History: the node script lets messages flow for CV_DASHBOARD_TRAFFIC_S
seconds (default 75) before it opens the page, and checks that the fresh page
charts them. Issue 20's "5 minutes of traffic" is the same check with
CV_DASHBOARD_TRAFFIC_S=300 (give meson more time:
CV_MESON_TEST_ARGS=--timeout-multiplier=3 deploy/test.sh --suite browser).

How a stall is made: the test holds an ACCESS EXCLUSIVE lock on
chatvault.messages from its own PostgreSQL session (this script with
--hold-lock), then publishes to one channel. The broker consumes the records
and blocks inside its PostgreSQL transaction, exactly as it would behind a
long-running migration or a lock held by a runaway job: records consumed,
acks not advancing. /api/lag must call the channel STALL after one status
window, the page must paint it in the STALL colour, and both must go back to
OK when the lock is released.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def hold_lock(conninfo):
    """Locks chatvault.messages, says "locked", holds it until stdin closes."""
    import psycopg2
    conn = psycopg2.connect(conninfo)
    cur = conn.cursor()
    cur.execute('LOCK TABLE chatvault.messages IN ACCESS EXCLUSIVE MODE')
    print('locked', flush=True)
    sys.stdin.read()
    conn.commit()
    conn.close()


if len(sys.argv) == 3 and sys.argv[1] == '--hold-lock':
    hold_lock(sys.argv[2])
    sys.exit(0)

sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'integration'))
import cvtest  # noqa: E402  (skips with 77 without CV_TEST_PG)

CHROMIUM = '/usr/bin/chromium'
SRC = os.environ.get('CV_BROWSER_DIR', HERE)
ARTIFACTS = os.environ.get('CV_ARTIFACT_DIR', os.getcwd())


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


if not os.path.exists(CHROMIUM):
    cvtest.bail_out("%s not found: install Debian's chromium package" % CHROMIUM)
if not shutil.which('node'):
    cvtest.bail_out('node not found: install Node.js')
if not os.path.isdir(os.path.join(SRC, 'node_modules', 'playwright-core')):
    r = subprocess.run(['npm', 'ci', '--no-audit', '--no-fund'], cwd=SRC,
                       capture_output=True, text=True)
    if r.returncode != 0:
        cvtest.bail_out('npm ci in %s failed: %s' % (SRC, r.stderr[-500:]))

port = free_port()
url = 'http://127.0.0.1:%d' % port
topics = {'chat.alpha': 2, 'chat.beta': 2, 'chat.gamma': 2}
with cvtest.Harness('dashboard', topics=topics, partitions=2,
                    config={'http.listen': '127.0.0.1:%d' % port}) as h:
    h.migrate()
    if not os.path.exists(os.path.join(h.tmp, 'log.key')):  # the log store's key
        r = h.run('keygen')
        h.ok(r.returncode == 0, 'chatvault keygen', r.stderr)
    h.start_broker()
    up = False
    deadline = time.time() + 30
    while time.time() < deadline and h.broker.alive():
        try:
            up = urllib.request.urlopen(url + '/healthz', timeout=2).status == 200
            break
        except OSError:
            time.sleep(0.2)
    if not h.ok(up, 'broker serves /healthz on %s' % url):
        sys.exit(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith('CHATVAULT_')}
    env.update({
        'CV_URL': url,
        'CV_BIN': cvtest.BIN,
        'CV_CONFIG': h.config_path,
        'CV_LOCKER': json.dumps([sys.executable, os.path.abspath(__file__),
                                 '--hold-lock', h.conninfo]),
        'CV_ARTIFACT_DIR': ARTIFACTS,
    })
    p = subprocess.Popen(['node', os.path.join(HERE, 'dashboard.test.mjs')],
                         cwd=SRC, env=env, stdout=subprocess.PIPE, text=True)
    seen = 0
    for line in p.stdout:
        line = line.rstrip('\n')
        if line.startswith('{'):
            r = json.loads(line)
            h.ok(r['ok'], r['name'], r.get('diag'))
            seen += 1
        else:
            h.diag(line)
    rc = p.wait()
    h.ok(rc == 0 and seen > 0, 'dashboard.test.mjs finished (exit %d, %d checks)' % (rc, seen))
