"""HTTP hardening against a real broker (issue 18, item 6 and 7):

- slow clients: 64 connections from one address that send a request header
  one line at a time, faster than any idle timeout would notice, neither
  keep /healthz from answering (the per-address limit turns most away) nor
  keep their connections (the header deadline, http.header_timeout_s, closes
  them although they never go quiet); 64 from 64 addresses do not fill the
  server either; the disconnections are logged once, not once each;
- Host: a name that is not this server's gets 421 with a line naming the
  value and http.allowed_hosts, before any token is asked for; localhost,
  address literals (with or without a port) and the listed names are
  served; a request without Host (HTTP/1.0) is served; refusals are logged
  once per interval, not once each; `chatvault lag` still reads the broker;
- http.token_file: the broker takes its token from a 0600 file (trailing
  newline stripped); a file others may read, an empty one, or both
  http.token and http.token_file set are config errors (exit 2, one line
  naming the file);
- a config file others may read that holds a secret gets one warning line
  naming the file and the key, and the command goes on; a private one, or
  one without secrets, gets none;
- `chatvault lag` reads a broker listening on [::1] (its Host header is
  [::1]:port, not the invalid ::1:port).
"""
import os
import socket
import subprocess
import time

import cvtest

TOKEN = 'hardening-test-token'
HEADER_TIMEOUT = 2
port = cvtest.free_port()


def curl(path, host=None, token=TOKEN, extra=()):
    """(status, body) of GET PATH with curl, Host HOST when given."""
    args = ['curl', '-sS', '-m', '5', '-o', '-', '-w', '\n%{http_code}']
    if host is not None:
        args += ['-H', 'Host: ' + host]
    if token:
        args += ['-H', 'Authorization: Bearer ' + token]
    args += list(extra) + ['http://127.0.0.1:%d%s' % (port, path)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    body, _, code = r.stdout.rpartition('\n')
    return (int(code) if code.isdigit() else 0), body + r.stderr


def raw(request, source='127.0.0.1'):
    """The status line's code of REQUEST sent as bytes over a socket."""
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(5)
        s.connect(('127.0.0.1', port))
        s.sendall(request)
        data = b''
        while b'\r\n' not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    parts = data.split(b' ', 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def wait_listening(h):
    deadline = time.time() + 60
    while time.time() < deadline:
        if curl('/healthz')[0] == 200:
            return True
        if h.broker_died():
            return False
        time.sleep(0.2)
    return False


def slow_clients(sources):
    """Opens one connection per address in SOURCES, each sending the first
    line of a request; returns the sockets that connected."""
    socks = []
    for src in sources:
        s = socket.socket()
        s.bind((src, 0))
        s.settimeout(2)
        try:
            s.connect(('127.0.0.1', port))
            s.sendall(b'GET /api/lag HTTP/1.1\r\n')
            socks.append(s)
        except OSError:
            s.close()
    return socks


def open_ones(socks):
    """Those of SOCKS the server has not closed (no EOF, no reset)."""
    out = []
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(4096) != b'':
                out.append(s)  # an answer: counted as held; never expected
        except BlockingIOError:
            out.append(s)
        except OSError:
            pass
    return out


def dribble(socks, seconds, step=0.5):
    """Sends each socket one header line every STEP seconds for SECONDS
    (far faster than any idle timeout); probes /healthz on the way.
    Returns the /healthz statuses."""
    probes = []
    t0 = time.time()
    i = 0
    while time.time() - t0 < seconds:
        for s in socks:
            try:
                s.sendall(b'X-Slow-%d: 1\r\n' % i)
            except OSError:
                pass
        i += 1
        if i % 2 == 0:
            probes.append(curl('/healthz', token=None)[0])
        time.sleep(step)
    return probes


def test_slow_clients(h):
    socks = slow_clients(['127.0.0.2'] * 64)
    try:
        time.sleep(0.5)
        held = open_ones(socks)
        h.ok(len(held) <= 16,
             '64 connections from one address: at most '
             'http.max_connections_per_address (16) are held',
             'held %d of %d' % (len(held), len(socks)))
        probes = dribble(socks, HEADER_TIMEOUT + 1.5)
        h.ok(probes and all(p == 200 for p in probes),
             '/healthz answers (5 s client timeout) while they send their header '
             'a line at a time', 'statuses %r' % probes)
        time.sleep(1)
        left = open_ones(socks)
        h.ok(not left,
             'the server closed every one that did not finish its header within '
             'http.header_timeout_s, though none was ever idle',
             '%d still open after %.1f s' % (len(left), HEADER_TIMEOUT + 2.5))
    finally:
        for s in socks:
            s.close()

    # 64 addresses of 127/8, one connection each: the per-address limit does
    # not apply; the server's own limit (256) is not reached.
    socks = slow_clients(['127.0.0.%d' % (10 + i) for i in range(64)])
    try:
        time.sleep(0.5)
        h.is_(len(open_ones(socks)), 64,
              '64 slow connections from 64 addresses are all held (below '
              'http.max_connections)')
        probes = dribble(socks, 1.5)
        h.ok(probes and all(p == 200 for p in probes),
             '/healthz answers beside 64 slow connections from 64 addresses',
             'statuses %r' % probes)
        time.sleep(HEADER_TIMEOUT + 1)
        h.is_(len(open_ones(socks)), 0, 'and they too are closed at the header deadline')
    finally:
        for s in socks:
            s.close()
    log = h.broker_log()
    n = log.count('sent no complete request header in time')
    h.ok(1 <= n <= 3,
         'the disconnections are logged, a line per 10 s, not one per connection',
         '%d lines' % n)
    status, body = curl('/api/lag')
    h.is_(status, 200, 'a normal request is served afterwards')


def test_host(h):
    for host in ('evil.example', 'evil.example:%d' % port, 'localhost.evil.example',
                 '127.0.0.1.evil.example', 'chatvault.internal.evil.example'):
        status, body = curl('/api/lag', host=host, token=None)
        h.ok(status == 421 and ('Host "%s"' % host) in body
             and 'http.allowed_hosts' in body,
             'Host %s: 421 naming the value and http.allowed_hosts, before the token '
             'is asked for' % host, 'got %d %r' % (status, body))
    status, body = curl('/healthz', host='evil.example', token=None)
    h.is_(status, 421, 'Host evil.example: /healthz too is refused')
    for host in ('localhost', 'localhost:%d' % port, 'LocalHost', '127.0.0.1',
                 '127.0.0.1:%d' % port, '[::1]', '[::1]:%d' % port, '10.1.2.3:80',
                 'chatvault.internal', 'chatvault.internal:%d' % port,
                 'metrics.example:9999'):
        status, body = curl('/api/lag', host=host)
        h.ok(status == 200, 'Host %s: served' % host, 'got %d %r' % (status, body))
    status, body = curl('/api/lag', host='metrics.example:%d' % port)
    h.is_(status, 421, 'an allowed name given with a port is allowed with that port only')
    status, _ = curl('/api/lag')
    h.is_(status, 200, 'curl\'s own Host (127.0.0.1:port): served')
    h.is_(raw(b'GET /healthz HTTP/1.0\r\n\r\n'), 200,
          'HTTP/1.0 without Host: served (no browser sends a request without one)')
    h.is_(raw(b'GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n'), 400,
          'HTTP/1.1 without Host: 400 (RFC 9112 asks for it)')
    before = h.broker_log().count('Host is not one of this server')
    for _ in range(20):
        curl('/api/lag', host='rebind.example', token=None)
    time.sleep(0.5)
    after = h.broker_log().count('Host is not one of this server')
    h.ok(before >= 1 and after - before <= 1,
         'refused Hosts are logged, a line per 10 s, not one per request',
         'lines before %d, after 20 more refusals %d' % (before, after))
    r = h.run('lag', '--url', 'http://127.0.0.1:%d' % port)
    h.ok(r.returncode == 0 and 'HTTP' not in r.stderr,
         '`chatvault lag` reads the broker (its Host passes the check)',
         'exit %d: %s' % (r.returncode, r.stderr))


def test_token_file(h):
    status, _ = curl('/api/lag', token=None)
    h.is_(status, 401, 'http.token_file: /api/lag without the token is refused')
    status, _ = curl('/api/lag', token=TOKEN)
    h.is_(status, 200, 'http.token_file: the token from the file (newline stripped) opens it')

    def check(*sets):
        args = ['config', '--check', '-c', h.config_path]
        for kv in sets:
            args += ['--set', kv]
        return h.run(*args, config=False)

    open_file = os.path.join(h.tmp, 'token-0644')
    with open(open_file, 'w') as f:
        f.write(TOKEN + '\n')
    os.chmod(open_file, 0o644)
    r = check('http.token_file=' + open_file)
    lines = r.stderr.strip().splitlines()
    h.ok(r.returncode == 2 and len(lines) == 1 and open_file in lines[0]
         and '0644' in lines[0],
         'a token file others may read: exit 2, one line naming the file and its mode',
         'exit %d: %r' % (r.returncode, r.stderr))
    os.chmod(open_file, 0o640)
    r = check('http.token_file=' + open_file)
    h.ok(r.returncode == 2 and open_file in r.stderr,
         'a token file the group may read: exit 2', 'exit %d: %r' % (r.returncode, r.stderr))
    r = h.run('broker', '-c', h.config_path, '--set', 'http.token_file=' + open_file,
              config=False, timeout=60)
    h.ok(r.returncode == 2 and open_file in r.stderr,
         'the broker refuses to start with it (exit 2)',
         'exit %d: %r' % (r.returncode, r.stderr[-500:]))
    empty = os.path.join(h.tmp, 'token-empty')
    fd = os.open(empty, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'\n')
    os.close(fd)
    r = check('http.token_file=' + empty)
    h.ok(r.returncode == 2 and empty in r.stderr, 'an empty token file: exit 2',
         'exit %d: %r' % (r.returncode, r.stderr))
    r = check('http.token=also-set')
    h.ok(r.returncode == 2 and 'http.token and http.token_file' in r.stderr,
         'http.token and http.token_file both set: exit 2 saying so',
         'exit %d: %r' % (r.returncode, r.stderr))
    r = check('http.token_file=' + os.path.join(h.tmp, 'no-such-token'))
    h.ok(r.returncode == 2 and 'no-such-token' in r.stderr,
         'a missing token file: exit 2 naming it', 'exit %d: %r' % (r.returncode, r.stderr))


def test_config_warning(h):
    def conf(name, mode, lines):
        path = os.path.join(h.tmp, name)
        with open(path, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        os.chmod(path, mode)
        return path

    def warnings(path):
        r = h.run('config', '--check', '-c', path, config=False)
        return r.returncode, [l for l in r.stderr.splitlines() if 'warning' in l]

    base = ['http.listen = ', 'kafka.bootstrap.servers = localhost:9092']
    for key, value in (('http.token', 'secret-token'),
                       ('postgres.conninfo', 'host=db dbname=cv password=hunter2'),
                       ('postgres.conninfo', 'postgresql://cv:hunter2@db/cv'),
                       ('kafka.sasl.password', 'hunter2')):
        path = conf('open.conf', 0o644, base + ['%s = %s' % (key, value)])
        rc, w = warnings(path)
        h.ok(rc == 0 and len(w) == 1 and path in w[0] and key in w[0]
             and '0644' in w[0],
             'a config file others may read holding %s: exit 0 and one warning '
             'naming the file and the key' % key, 'exit %d: %r' % (rc, w))
    path = conf('open.conf', 0o600, base + ['http.token = secret-token'])
    rc, w = warnings(path)
    h.ok(rc == 0 and not w, 'the same file with mode 0600: no warning', repr(w))
    path = conf('open.conf', 0o644, base + ['postgres.conninfo = host=db dbname=cv'])
    rc, w = warnings(path)
    h.ok(rc == 0 and not w, 'a file others may read without a secret: no warning',
         repr(w))
    path = conf('open.conf', 0o644,
                base + ['http.token_file = ' + h.token_path])
    rc, w = warnings(path)
    h.ok(rc == 0 and not w, 'naming a token file is no secret: no warning', repr(w))


def test_ipv6_listen(h):
    """chatvault's own client names an IPv6 listen address as [::1]:port."""
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        h.ok(True, '# SKIP no IPv6 here')
        return
    h.broker.stop()
    with socket.socket(socket.AF_INET6) as s:
        s.bind(('::1', 0))
        port6 = s.getsockname()[1]
    h.write_config(**{'http.listen': '[::1]:%d' % port6})
    os.chmod(h.config_path, 0o600)
    h.start_broker()
    deadline = time.time() + 60
    r = None
    while time.time() < deadline:
        r = h.run('lag', '--json')
        served = r.returncode == 0 and 'no broker at' not in r.stderr
        if served or 'HTTP' in r.stderr or h.broker_died():
            break
        time.sleep(0.5)
    h.ok(r.returncode == 0 and 'HTTP' not in r.stderr and 'no broker at' not in r.stderr,
         '`chatvault lag` reads a broker on [::1] (Host: [::1]:port passes)',
         'exit %d: %s' % (r.returncode, r.stderr))


def main():
    with cvtest.Harness('http_hardening', topics={'chat.a': 1}) as h:
        h.token_path = os.path.join(h.tmp, 'http.token')
        fd = os.open(h.token_path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (TOKEN + '\n').encode())
        os.close(fd)
        h.write_config(**{
            'http.listen': '127.0.0.1:%d' % port,
            'http.token_file': h.token_path,
            'http.header_timeout_s': str(HEADER_TIMEOUT),
            'http.allowed_hosts': 'chatvault.internal, metrics.example:9999',
        })
        os.chmod(h.config_path, 0o600)
        h.migrate()
        h.start_broker()
        if not h.ok(wait_listening(h), 'the broker serves http.listen'):
            return
        test_host(h)
        test_slow_clients(h)
        test_token_file(h)
        test_config_warning(h)
        test_ipv6_listen(h)


main()
