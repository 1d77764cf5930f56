"""HTTPS for the broker's HTTP server (issue 18, item 4), against a real
broker, curl, Python's ssl module and Debian's chromium:

- with http.tls_cert_file and http.tls_key_file the server speaks TLS only:
  curl trusting the test's CA gets /healthz and /metrics with the security
  headers; a client trusting nothing else refuses the certificate; a plain
  HTTP request to the port gets no HTTP answer;
- chromium, trusting exactly this certificate (by its public key), opens
  the dashboard over https and the page's own script fills in the broker's
  version from /api/lag;
- `chatvault lag` reads the broker over https when http.tls_ca_file names
  the CA, and says why when it does not (the certificate), falling back to
  Kafka + PostgreSQL;
- a key file others may read, a missing certificate, and a certificate
  without its key are config errors: exit 2, one line naming the key.
"""
import base64
import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

import cvtest

port = cvtest.free_port()
URL = 'https://127.0.0.1:%d' % port


def sh(*args):
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def make_pki(d):
    """A CA and a server certificate for 127.0.0.1 and localhost signed by
    it; returns (ca, cert, key, spki_sha256_base64)."""
    ca_key, ca = os.path.join(d, 'ca.key'), os.path.join(d, 'ca.pem')
    key, csr, cert = (os.path.join(d, n) for n in ('server.key', 'server.csr',
                                                   'server.pem'))
    ext = os.path.join(d, 'ext.cnf')
    sh('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', ca_key,
       '-out', ca, '-days', '2', '-subj', '/CN=chatvault test CA')
    sh('openssl', 'req', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr,
       '-subj', '/CN=127.0.0.1')
    with open(ext, 'w') as f:
        f.write('subjectAltName = IP:127.0.0.1, DNS:localhost\n')
    sh('openssl', 'x509', '-req', '-in', csr, '-CA', ca, '-CAkey', ca_key,
       '-CAcreateserial', '-out', cert, '-days', '2', '-extfile', ext)
    os.chmod(key, 0o600)
    pub = subprocess.run(['openssl', 'x509', '-in', cert, '-pubkey', '-noout'],
                         check=True, capture_output=True).stdout
    der = subprocess.run(['openssl', 'pkey', '-pubin', '-outform', 'der'], input=pub,
                         check=True, capture_output=True).stdout
    return ca, cert, key, base64.b64encode(hashlib.sha256(der).digest()).decode()


def curl(path, *extra):
    r = subprocess.run(['curl', '-sS', '-m', '10', '-D', '-', '-o', '-'] + list(extra)
                       + [URL + path], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout, r.stderr


def wait_listening(h, ca):
    deadline = time.time() + 60
    while time.time() < deadline:
        if curl('/healthz', '--cacert', ca)[0] == 0:
            return True
        if h.broker_died():
            return False
        time.sleep(0.2)
    return False


with cvtest.Harness('http_tls', topics={'chat.t': 1}) as h:
    ca, cert, key, spki = make_pki(h.tmp)
    h.migrate()
    h.write_config(**{'http.listen': '127.0.0.1:%d' % port, 'http.tls_cert_file': cert,
                      'http.tls_key_file': key})
    h.start_broker()
    h.ok(wait_listening(h, ca), 'the broker serves https on http.listen')
    h.ok('scheme=https' in h.broker_log(), 'and logs scheme=https')

    rc, out, err = curl('/healthz', '--cacert', ca)
    h.ok(rc == 0 and out.startswith('HTTP/') and out.rstrip().endswith('ok'),
         'curl trusting the CA gets /healthz', out + err)
    rc, out, err = curl('/metrics', '--cacert', ca)
    h.ok(rc == 0 and 'chatvault_' in out, 'and /metrics', err)
    low = out.lower()
    h.ok('x-frame-options: deny' in low and 'x-content-type-options: nosniff' in low
         and "frame-ancestors 'none'" in low,
         'with the headers that stop framing and sniffing', out[:600])

    rc, out, err = curl('/healthz')
    h.ok(rc != 0 and 'certificate' in err.lower(),
         'curl trusting only the system store refuses the certificate', err)
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
            with ssl.create_default_context().wrap_socket(s, server_hostname='127.0.0.1'):
                verified = True
    except ssl.SSLCertVerificationError:
        verified = False
    h.ok(not verified, 'Python\'s ssl with its default trust refuses it too')
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname='127.0.0.1') as t:
            t.sendall(b'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n')
            reply = b''
            while True:
                chunk = t.recv(4096)
                if not chunk:
                    break
                reply += chunk
            version = t.version()
    h.ok(reply.startswith(b'HTTP/1.') and reply.rstrip().endswith(b'ok'),
         'Python\'s ssl trusting the CA gets /healthz (%s)' % version, repr(reply))

    with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
        s.sendall(b'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n')
        try:
            plain = s.recv(4096)
        except OSError:
            plain = b''
    h.ok(not plain.startswith(b'HTTP/'), 'plain HTTP on the port gets no HTTP answer',
         repr(plain[:80]))

    # --- a real browser --------------------------------------------------
    browser = shutil.which('chromium')
    if not browser:
        h.ok(False, 'chromium is installed (deploy/setup.sh installs it)')
    else:
        profile = tempfile.mkdtemp(prefix='cvtest-chromium-')
        base = [browser, '--headless=new', '--no-sandbox', '--disable-gpu',
                '--no-first-run', '--user-data-dir=' + profile,
                '--virtual-time-budget=8000', '--dump-dom']
        r = subprocess.run(base + ['--ignore-certificate-errors-spki-list=' + spki,
                                   URL + '/'], capture_output=True, text=True,
                           timeout=120)
        m = re.search(r'id="version"[^>]*>(?:<b>)?([^<]*)<', r.stdout)
        h.ok('<title>chatvault' in r.stdout and m and m.group(1) not in ('', '?'),
             'chromium trusting this key opens the dashboard over https, and its script '
             'reads /api/lag (version %s)' % (m.group(1) if m else '?'),
             r.stdout[-400:] + r.stderr[-400:])
        r = subprocess.run(base + [URL + '/'], capture_output=True, text=True,
                           timeout=120)
        h.ok('<title>chatvault' not in r.stdout,
             'chromium trusting nothing of ours does not show it', r.stdout[:300])
        shutil.rmtree(profile, ignore_errors=True)

    # --- chatvault lag over https -------------------------------------------
    r = h.run('lag', '--set', 'http.tls_ca_file=' + ca)
    h.ok(r.returncode in (0, 1) and 'CHANNEL' in r.stdout.upper() and
         'no broker at' not in r.stderr,
         'chatvault lag reads the broker over https with http.tls_ca_file',
         r.stdout + r.stderr)
    r = h.run('lag', '--json', '--url', URL, '--set', 'http.tls_ca_file=' + ca)
    h.ok(r.returncode in (0, 1) and '"channels"' in r.stdout,
         'and with --url https://...', r.stdout[:300] + r.stderr)
    r = h.run('lag', '--url', URL)
    h.ok(r.returncode == 1 and 'certificate' in r.stderr.lower() and
         'http.tls_ca_file' in r.stderr,
         'without the CA, lag --url says the certificate is not trusted and which key '
         'to set', r.stderr)
    h.broker.stop()

    # --- configuration errors --------------------------------------------
    os.chmod(key, 0o644)
    r = h.run('broker')
    err = r.stderr.strip().splitlines()
    h.ok(r.returncode == 2 and any('http.tls_key_file' in l and '0644' in l for l in err),
         'a key file others may read: exit 2, one line naming it', r.stderr)
    os.chmod(key, 0o600)
    r = h.run('broker', '--set', 'http.tls_cert_file=' + cert + '.missing')
    h.ok(r.returncode == 2 and 'http.tls_cert_file' in r.stderr and
         'No such file' in r.stderr, 'a missing certificate: exit 2, naming it', r.stderr)
    r = h.run('broker', '--set', 'http.tls_key_file=')
    h.ok(r.returncode == 2 and 'go together' in r.stderr,
         'a certificate without its key: exit 2', r.stderr)
    other_key = os.path.join(h.tmp, 'ca.key')
    os.chmod(other_key, 0o600)
    r = h.run('broker', '--set', 'http.tls_key_file=' + other_key, timeout=60)
    h.ok(r.returncode != 0 and 'http.tls' in r.stderr,
         'a key that is not the certificate\'s: the broker does not start', r.stderr)
