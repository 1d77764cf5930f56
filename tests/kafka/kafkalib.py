"""kafkalib — the harness of the `kafka` suite: chatvault against a real
Apache Kafka cluster (deploy/kafka.sh, 3 combined KRaft nodes).

deploy/test.sh starts the cluster when the suite runs and exports its
directory (CV_KAFKA_DIR) and KAFKA_BOOTSTRAP; outside that setup every test
skips (exit 77). The cluster is shared by the suite's tests, which run one at
a time: each test takes names of its own (channels `<tag>-chN`, so topics
`chat.<tag>-chN`, an ack topic, a DLQ topic and a consumer group, all with a
random tag) and creates its topics with python3-kafka's admin client,
replication factor 3 and min.insync.replicas 2. A test that stops brokers
starts them again on the way out (`deploy/kafka.sh start` is idempotent), and
each test begins by making sure every node runs.

KHarness is faultlib's FaultHarness (PostgreSQL, several broker instances,
Publisher, AckCollector, OffsetSampler) with the real cluster in place of
dev-kafka.

CV_ACK_TRANSACTIONS=on runs the suite with transactional acks
(ack.transactions = on) instead of the default at-least-once ones.
"""
import ctypes
import json
import os
import random
import re
import string
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'faults'))
sys.path.insert(0, os.path.join(HERE, '..', 'integration'))
import cvtest  # noqa: E402
import faultlib  # noqa: E402

KAFKA_SH = os.path.join(cvtest.SOURCE_ROOT, 'deploy', 'kafka.sh')
RF = 3
MIN_ISR = 2

if not os.environ.get('CV_KAFKA_DIR') or not os.environ.get('KAFKA_BOOTSTRAP'):
    cvtest.skip_all('no real Kafka cluster (CV_KAFKA_DIR, KAFKA_BOOTSTRAP unset): '
                    'run deploy/test.sh --suite kafka')

from kafka import KafkaAdminClient  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402


def kafka_sh(*args, timeout=300):
    """Runs deploy/kafka.sh ARGS; raises with its one-line error on failure."""
    r = subprocess.run(['bash', KAFKA_SH] + list(args), capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError('deploy/kafka.sh %s exited %d: %s'
                           % (' '.join(args), r.returncode, r.stderr.strip()[-500:]))
    return r


def cluster_env():
    """deploy/kafka.sh env as a dict (KAFKA_PIDS as a list of ints)."""
    out = {}
    for line in kafka_sh('env').stdout.splitlines():
        k, _, v = line.partition('=')
        out[k] = v.strip('"')
    out['KAFKA_PIDS'] = [int(p) for p in out['KAFKA_PIDS'].split()]
    return out


def tool(name, *args, timeout=120):
    """A Kafka tool from the jars (deploy/kafka.sh tool); CompletedProcess."""
    return subprocess.run(['bash', KAFKA_SH, 'tool', name] + list(args),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


class KHarness(faultlib.FaultHarness):
    def __init__(self, name, channels=4, partitions=4, ack_partitions=4,
                 config=None, **kw):
        super().__init__(name, topics={}, partitions=ack_partitions,
                         config=config, **kw)
        self.tag = '%s-%s' % (name, ''.join(random.choice(string.ascii_lowercase)
                                            for _ in range(6)))
        self.channels = ['%s-ch%d' % (self.tag, i) for i in range(channels)]
        self.chat_partitions = partitions
        self.topics = {'chat.' + c: partitions for c in self.channels}
        self.ack_topic = 'acks.' + self.tag
        self.dlq_topic = 'dlq.' + self.tag
        self.group = 'cv-' + self.tag
        self.stopped_nodes = False

    # --- the cluster ---------------------------------------------------------
    def _start_kafka(self):
        kafka_sh('start')       # every node of the suite's cluster runs
        self.bootstrap = cluster_env()['KAFKA_BOOTSTRAP']
        self.diag('Kafka cluster %s; names tagged %s' % (self.bootstrap, self.tag))
        want = dict(self.topics)
        want[self.ack_topic] = self.partitions
        want[self.dlq_topic] = 2
        self.create_topics(want)

    def admin(self):
        a = KafkaAdminClient(bootstrap_servers=self.bootstrap.split(','),
                             request_timeout_ms=30000)
        self.clients.append(a)
        return a

    def create_topics(self, topics):
        a = self.admin()
        a.create_topics([NewTopic(t, n, RF, topic_configs={
            'min.insync.replicas': str(MIN_ISR)}) for t, n in topics.items()],
            timeout_ms=60000)
        # Wait until every partition has a leader and all 3 replicas in sync.
        deadline = time.time() + 60
        while time.time() < deadline:
            ready = self.partition_leaders(list(topics))
            if len(ready) == sum(topics.values()) and all(
                    len(isr) == RF for _, isr in ready.values()):
                return
            time.sleep(0.5)
        raise RuntimeError('topics %s not fully in sync after 60 s' % sorted(topics))

    def partition_leaders(self, topics):
        """{(topic, partition): (leader node id, isr list)} from metadata."""
        a = self.admin()
        out = {}
        for t in a.describe_topics(topics):
            for p in t.get('partitions', []):
                if p.get('leader', -1) >= 0:
                    out[(t['topic'], p['partition'])] = (p['leader'], p['isr'])
        return out

    def node_pids(self):
        return cluster_env()['KAFKA_PIDS']

    def kill_node(self, node):
        """kill -9 of node NODE (1-based) of the cluster; returns its PID."""
        pid = self.node_pids()[node - 1]
        if pid <= 0:
            raise RuntimeError('node %d is not running' % node)
        os.kill(pid, 9)
        self.stopped_nodes = True
        deadline = time.time() + 30
        while os.path.exists('/proc/%d' % pid) and time.time() < deadline:
            try:
                with open('/proc/%d/stat' % pid) as f:
                    if f.read().split()[2] == 'Z':
                        break
            except OSError:
                break
            time.sleep(0.1)
        return pid

    def start_nodes(self):
        t = time.time()
        kafka_sh('start')
        return time.time() - t

    def __exit__(self, etype, exc, tb):
        if self.stopped_nodes:
            try:
                kafka_sh('start')
            except Exception as e:
                self.diag('could not start the cluster again: %s' % e)
        for t in [self.ack_topic, self.dlq_topic] + list(self.topics):
            pass    # topics stay: a failed run's topics help the post-mortem
        return super().__exit__(etype, exc, tb)

    # --- chatvault -------------------------------------------------------------
    def write_config(self, **overrides):
        base = {
            'topics.pattern': '^chat\\.%s-ch[0-9]+$' % re.escape(self.tag),
            'topics.acks': self.ack_topic,
            'topics.dlq': self.dlq_topic,
            'kafka.group.id': self.group,
        }
        # CV_ACK_TRANSACTIONS=on|off runs every test of the suite that way.
        if os.environ.get('CV_ACK_TRANSACTIONS'):
            base['ack.transactions'] = os.environ['CV_ACK_TRANSACTIONS']
        base.update(overrides)
        return super().write_config(**base)

    def group_offsets(self, topics, group=None):
        return super().group_offsets(topics, group=group or self.group)

    def acks(self, **kw):
        return faultlib.AckCollector(self, topic=self.ack_topic, **kw)

    def publisher(self, total, rate, **kw):
        return faultlib.Publisher(self, self.channels, total, rate, **kw)

    def lag_direct(self):
        """`chatvault lag --direct --json` parsed."""
        r = self.run('lag', '--direct', '--json', '--interval', '1', timeout=120)
        if r.returncode not in (0, 1):
            raise RuntimeError('chatvault lag exited %d: %s' % (r.returncode, r.stderr))
        return json.loads(r.stdout)


def librdkafka_version():
    """(major, minor, patch) of the librdkafka chatvault loads."""
    lib = ctypes.CDLL('librdkafka.so.1')
    lib.rd_kafka_version.restype = ctypes.c_int
    v = lib.rd_kafka_version()
    return (v >> 24 & 0xff, v >> 16 & 0xff, v >> 8 & 0xff)


def last_line(r):
    """The last line a CompletedProcess wrote to stderr."""
    return (r.stderr.strip().splitlines() or [''])[-1]


def run_timed(h, *args, timeout=60):
    """`chatvault ARGS` with h's config: (exit code, None on a hang, its last
    stderr line, the seconds it took)."""
    t = time.time()
    try:
        r = h.run(*args, timeout=timeout)
    except Exception as e:  # a hang: the timeout
        return None, repr(e), time.time() - t
    return r.returncode, last_line(r), time.time() - t


def refused_runs(h):
    """`chatvault send --wait-ack` and `chatvault broker` with h's config as
    it is, for a config they must refuse: [(command, exit code, last stderr
    line, seconds)]."""
    return [(what,) + run_timed(h, *args) for what, args in (
        ('send', ['send', '--channel', h.channels[0], '--wait-ack', 'x']),
        ('broker', ['broker']))]


def check_scram_send(h, over):
    """TAP point: `chatvault send --wait-ack` with h's SCRAM-SHA-512 config
    (listener OVER): with librdkafka before 2.6.1, which builds the SCRAM
    client-final message with the nonce twice (PR 4895), refused by Kafka 4
    as invalid credentials, ending within 30 s with one line saying so;
    with a newer one acked."""
    ver = librdkafka_version()
    rc, last, took = run_timed(h, 'send', '--channel', h.channels[0], '--wait-ack',
                               'scram')
    if ver < (2, 6, 1):
        h.ok(rc == 1 and took < 30 and 'authentication' in last.lower(),
             'librdkafka %d.%d.%d over %s/SCRAM-SHA-512: refused by Kafka 4 as the '
             'known nonce bug (fixed in 2.6.1); chatvault send ends in %.1f s with '
             'one line' % (ver + (over, took)), (rc, last))
    else:
        h.ok(rc == 0, 'librdkafka %d.%d.%d over %s/SCRAM-SHA-512: chatvault send '
             '--wait-ack acked' % (ver + (over,)), (rc, last))
    h.diag('%s/SCRAM-SHA-512 with librdkafka %d.%d.%d: exit %s, %s'
           % ((over,) + ver + (rc, last[:300])))


def kill_cycles(h, pub, rnd, kills, t0):
    """kill -9 of the running chatvault KILLS times under PUB's load, each
    once it has stored 1,000-2,500 more rows than when the cycle began (and
    a pause of under a second drawn from RND), restarting it 1 s later.
    Returns [(seconds since T0, rows, published, it was running)]."""
    def rows():
        return h.query('SELECT count(*) FROM chatvault.messages')[0][0]

    out = []
    for _ in range(kills):
        want = rows() + rnd.randrange(1000, 2500)
        deadline = time.time() + 120
        while rows() < want and time.time() < deadline and h.broker.alive():
            time.sleep(0.1)
        time.sleep(rnd.random())
        alive = h.broker.alive()
        h.broker.kill9()
        out.append((round(time.time() - t0, 1), rows(), pub.attempted, alive))
        h.diag('injected: kill -9 of chatvault at %.1f s, %d rows, %d published '
               '(it was %s)' % (out[-1][0], out[-1][1], pub.attempted,
                                'running' if alive else 'NOT running'))
        time.sleep(1)
        h.start_broker()
    return out


def describe_group(group):
    """kafka-consumer-groups --describe: {(topic, partition): (current, end,
    lag)}, None for '-'."""
    r = tool('kafka-consumer-groups', '--bootstrap-server',
             os.environ['KAFKA_BOOTSTRAP'], '--describe', '--group', group)
    if r.returncode != 0:
        raise RuntimeError('kafka-consumer-groups exited %d: %s'
                           % (r.returncode, r.stderr[-500:]))
    out = {}
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) >= 6 and f[0] == group and f[2].isdigit():
            num = [None if x == '-' else int(x) for x in f[3:6]]
            out[(f[1], int(f[2]))] = tuple(num)
    return out, r.stdout
