"""A secured listener, configured only through the kafka.* passthrough
(kafka.security.protocol, kafka.sasl.mechanism, kafka.sasl.username,
kafka.sasl.password), on the cluster's SASL_PLAINTEXT listener.

SCRAM-SHA-512: the credentials are right (python3-kafka authenticates with
them), but librdkafka before 2.6.1 builds the SCRAM client-final message
with the nonce twice, which Kafka 4 refuses as invalid credentials
(librdkafka PR 4895). With such a librdkafka (Debian 12's 2.0.2) the test
checks that chatvault ends with one line saying so, and with a newer one
that chatvault works over SCRAM; README says which.

PLAIN (SASL/PLAIN, which librdkafka 2.0.2 speaks to Kafka 4): messages
published by python3-kafka are stored and acked, `chatvault send --wait-ack`
works. With a wrong password, `chatvault send` and `chatvault broker` each
end within 30 s with exit 1 and one last stderr line that says Kafka refused
the authentication."""

import faultlib
import kafkalib
from kafka import KafkaConsumer

N = 2000


with kafkalib.KHarness('sasl', channels=2, partitions=2) as h:
    env = kafkalib.cluster_env()

    def secure(mech, password=None):
        return {
            'kafka.bootstrap.servers': env['KAFKA_SASL_BOOTSTRAP'],
            'kafka.security.protocol': 'SASL_PLAINTEXT',
            'kafka.sasl.mechanism': mech,
            'kafka.sasl.username': env['KAFKA_SASL_USER'],
            'kafka.sasl.password': password or env['KAFKA_SASL_PASSWORD'],
        }

    h.migrate()
    # The credentials, checked by an independent client.
    c = KafkaConsumer(bootstrap_servers=env['KAFKA_SASL_BOOTSTRAP'].split(','),
                      security_protocol='SASL_PLAINTEXT', sasl_mechanism='SCRAM-SHA-512',
                      sasl_plain_username=env['KAFKA_SASL_USER'],
                      sasl_plain_password=env['KAFKA_SASL_PASSWORD'])
    h.ok(h.ack_topic in c.topics(), 'python3-kafka authenticates with SCRAM-SHA-512 '
         'using the same user and password')
    c.close()

    h.write_config(**secure('SCRAM-SHA-512'))
    kafkalib.check_scram_send(h, 'SASL_PLAINTEXT')

    h.write_config(**secure('PLAIN'))
    h.start_broker()
    acks = h.acks()         # an independent reader on the plaintext listener
    acks.start()
    pub = h.publisher(N, 1000)
    pub.start()
    pub.join(timeout=120)
    sent = dict(pub.sent)
    missing = acks.wait_all(sent, timeout=120, idle=60, alive=h.broker.alive)
    h.ok(len(sent) == N and not missing,
         'over SASL/PLAIN chatvault stored and acked all %d messages' % N,
         '%d sent, %d missing' % (len(sent), len(missing)))
    r = h.run('send', '--channel', h.channels[0], '--wait-ack', 'over sasl', timeout=90)
    h.ok(r.returncode == 0 and 'PERSISTED' in r.stdout,
         '`chatvault send --wait-ack` over SASL/PLAIN: PERSISTED',
         (r.returncode, r.stdout, r.stderr[-500:]))
    ids = set(faultlib.pg_ids(h))
    h.ok(set(sent) <= ids and len(ids) == N + 1,
         'PostgreSQL holds the %d published messages and the one sent' % N, len(ids))
    h.is_(h.broker.stop(), 0, 'chatvault exits 0 on SIGTERM')
    acks.stop()

    h.write_config(**secure('PLAIN', env['KAFKA_SASL_PASSWORD'] + 'x'))
    for what, rc, last, took in kafkalib.refused_runs(h):
        h.ok(rc == 1 and took < 30,
             'wrong password: `chatvault %s` ends in %.1f s with exit 1' % (what, took),
             (rc, last))
        h.ok(last.startswith('chatvault %s: ' % what) and 'kafka' in last and
             'authentication' in last.lower(),
             'wrong password: its last line says Kafka refused the authentication',
             'last line: %r' % last)
        h.diag('%s: %s' % (what, last))
