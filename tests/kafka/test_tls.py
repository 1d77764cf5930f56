"""chatvault over TLS: the cluster's SASL_SSL listener (deploy/kafka.sh, a
private CA in KAFKA_CA_FILE and a broker certificate for localhost and
127.0.0.1), configured only through the kafka.* passthrough
(kafka.security.protocol = SASL_SSL, kafka.sasl.mechanism = PLAIN,
kafka.ssl.ca.location = the CA), with librdkafka's default hostname check.

python3-kafka publishes over TLS, chatvault broker consumes, stores (both
PostgreSQL and the log, which verify finds in agreement) and acks every
message, and an independent python3-kafka reader gets every ack over TLS;
the group's committed offsets reach the end. `chatvault send --wait-ack`
works over SASL_SSL and over the plain SSL listener. SCRAM-SHA-512 over TLS
meets librdkafka's nonce bug as on SASL_PLAINTEXT (test_sasl.py): with a
librdkafka before 2.6.1 chatvault ends with one line saying Kafka refused
the authentication, with a newer one it is acked.

Failures end quickly with one last stderr line: a CA that did not sign the
broker certificate (another self-signed CA) makes `chatvault broker` and
`chatvault send` exit 1, as an unreachable cluster or a wrong password do,
naming the failed certificate check; a CA file that does not exist is a
configuration error (exit 2) naming kafka.ssl.ca.location and the path."""
import os
import subprocess

import faultlib
import kafkalib
from kafka import KafkaConsumer

N = 2000

with kafkalib.KHarness('tls', channels=2, partitions=2) as h:
    env = kafkalib.cluster_env()
    ca = env['KAFKA_CA_FILE']
    tls_boot = env['KAFKA_SASL_SSL_BOOTSTRAP']

    def chatvault_tls(mech='PLAIN', ca_file=ca, protocol='SASL_SSL'):
        cfg = {
            'kafka.bootstrap.servers': tls_boot,
            'kafka.security.protocol': protocol,
            'kafka.ssl.ca.location': ca_file,
        }
        if protocol == 'SSL':
            cfg['kafka.bootstrap.servers'] = env['KAFKA_SSL_BOOTSTRAP']
        else:
            cfg.update({'kafka.sasl.mechanism': mech,
                        'kafka.sasl.username': env['KAFKA_SASL_USER'],
                        'kafka.sasl.password': env['KAFKA_SASL_PASSWORD']})
        return cfg

    # python3-kafka over the same listener, verifying the certificate and
    # the host name (ssl_check_hostname defaults to on).
    py_tls = dict(bootstrap_servers=tls_boot.split(','), security_protocol='SASL_SSL',
                  ssl_cafile=ca, ssl_check_hostname=True, sasl_mechanism='PLAIN',
                  sasl_plain_username=env['KAFKA_SASL_USER'],
                  sasl_plain_password=env['KAFKA_SASL_PASSWORD'])

    h.migrate()

    san = subprocess.run(['openssl', 'x509', '-noout', '-ext', 'subjectAltName', '-in',
                          os.path.join(env['KAFKA_DIR'], 'tls', 'broker.crt')],
                         capture_output=True, text=True)
    v = subprocess.run(['openssl', 'verify', '-CAfile', ca,
                        os.path.join(env['KAFKA_DIR'], 'tls', 'broker.crt')],
                       capture_output=True, text=True)
    h.ok(v.returncode == 0 and 'DNS:localhost' in san.stdout and
         'IP Address:127.0.0.1' in san.stdout,
         'the broker certificate is signed by KAFKA_CA_FILE and names localhost and '
         '127.0.0.1', (v.stdout, v.stderr, san.stdout, san.stderr))
    c = KafkaConsumer(**py_tls)
    h.ok(h.ack_topic in c.topics(), 'python3-kafka reads metadata over SASL_SSL with '
         'the CA file and the host name checked')
    c.close()

    h.write_config(**chatvault_tls('SCRAM-SHA-512'))
    kafkalib.check_scram_send(h, 'SASL_SSL')

    h.write_config(**chatvault_tls('PLAIN'))
    h.start_broker()
    acks = h.acks(**py_tls)     # an independent reader, over TLS too
    acks.start()
    pub = h.publisher(N, 1000, **py_tls)
    pub.start()
    pub.join(timeout=120)
    h.ok(not pub.errors and len(pub.sent) == N,
         'python3-kafka published %d messages over SASL_SSL' % N, pub.errors[:3])
    sent = dict(pub.sent)
    missing = acks.wait_all(sent, timeout=120, idle=60, alive=h.broker.alive)
    h.ok(len(sent) == N and not missing,
         'over SASL_SSL/PLAIN chatvault stored and acked all %d messages, the acks '
         'read back over TLS' % N, '%d sent, %d missing' % (len(sent), len(missing)))

    sends = {}
    for mid, proto in (('tls-send-sasl-ssl', 'SASL_SSL'), ('tls-send-ssl', 'SSL')):
        h.write_config(**chatvault_tls('PLAIN', protocol=proto))
        r = h.run('send', '--channel', h.channels[0], '--id', mid, '--wait-ack',
                  'over ' + proto, timeout=90)
        h.ok(r.returncode == 0 and 'PERSISTED' in r.stdout,
             '`chatvault send --wait-ack` over %s: PERSISTED' % proto,
             (r.returncode, r.stdout, r.stderr[-500:]))
        sends[mid] = (h.channels[0], b'')
    h.write_config(**chatvault_tls('PLAIN'))
    everything = dict(sent, **sends)
    missing = acks.wait_all(everything, timeout=60, idle=30)
    h.ok(not missing, 'the reader over TLS got the acks of the two sent messages too',
         sorted(missing)[:3])
    behind, _ = h.wait_committed(list(h.topics), timeout=60)
    h.ok(not behind, 'committed offset = end offset everywhere', behind)
    acks.stop()
    h.is_(h.broker.stop(), 0, 'chatvault exits 0 on SIGTERM')
    faultlib.check_store(h, 'PostgreSQL', faultlib.pg_ids(h), everything)
    faultlib.check_log(h, 'the log', faultlib.log_cat(h), everything,
                       faultlib.kafka_records(h, h.topics))
    faultlib.check_verify(h)

    # A CA that did not sign the broker's certificate: made here, self-signed.
    other = os.path.join(h.tmp, 'other-ca.crt')
    r = subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
                        '-days', '1', '-subj', '/CN=not the cluster CA',
                        '-keyout', os.path.join(h.tmp, 'other-ca.key'), '-out', other],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError('openssl could not make a CA: %s' % r.stderr[-300:])
    h.write_config(**chatvault_tls('PLAIN', ca_file=other))
    for what, rc, last, took in kafkalib.refused_runs(h):
        h.ok(rc == 1 and took < 30,
             'wrong CA: `chatvault %s` ends in %.1f s with exit 1' % (what, took),
             (rc, last))
        h.ok(last.startswith('chatvault %s: ' % what) and 'kafka' in last and
             'certificate verify failed' in last,
             'wrong CA: its last line says the broker certificate did not verify',
             'last line: %r' % last)
        h.diag('%s: %s' % (what, last[:300]))

    nope = os.path.join(h.tmp, 'no-such-ca.crt')
    h.write_config(**chatvault_tls('PLAIN', ca_file=nope))
    for what, rc, last, took in kafkalib.refused_runs(h):
        h.ok(rc == 2 and took < 10,
             'missing CA file: `chatvault %s` ends in %.1f s with exit 2 (a '
             'configuration error)' % (what, took), (rc, last))
        h.ok(last.startswith('chatvault %s: ' % what) and 'kafka.ssl.ca.location' in last
             and nope in last and 'No such file' in last,
             'missing CA file: its last line names kafka.ssl.ca.location, the path and '
             'the reason', 'last line: %r' % last)
        h.diag('%s: %s' % (what, last))
