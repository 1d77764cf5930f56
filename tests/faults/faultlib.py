"""faultlib — what the fault suite needs on top of the integration harness.

tests/integration/cvtest.py runs chatvault against PostgreSQL and the mock
Kafka cluster; this module adds the faults:

  FaultHarness   a cvtest.Harness that can own a private PostgreSQL (to stop
                 it without disturbing the tests that share $CV_TEST_PG), a
                 dev-kafka with several brokers and --control (fault
                 injection on stdin), tmpfs mounts, several broker instances
  Publisher      python3-kafka publishing at a steady rate in a thread
  AckCollector   python3-kafka reading chatvault.acks in a thread, with the
                 time each ack arrived
  log_cat()      the records `chatvault log cat` reads back (merging several
                 instance directories with --log-dir)
  http_get()     /readyz, /metrics

Everything started here is stopped and everything mounted is unmounted on the
way out, whatever happened.
"""
import json
import os
import random
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'integration'))
import cvtest  # noqa: E402

psycopg2 = cvtest.psycopg2
BIN = cvtest.BIN
PGSH = os.path.join(cvtest.SOURCE_ROOT, 'deploy', 'pg.sh')
PG_USER = os.environ.get('CV_PG_USER', 'chatvault-pg')


def pg_bin(name):
    for d in ['/usr/lib/postgresql/15/bin'] + sorted(
            os.path.join('/usr/lib/postgresql', v, 'bin')
            for v in (os.listdir('/usr/lib/postgresql')
                      if os.path.isdir('/usr/lib/postgresql') else [])):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return name


def need_root(why):
    """Skips the whole test (exit 77) when not run as root."""
    if os.getuid() != 0:
        cvtest.skip_all('needs root: %s' % why)


def fixed_port(lo=20000, hi=30000):
    """A free TCP port in [lo, hi): below the kernel's ephemeral range."""
    rnd = random.Random()
    for _ in range(200):
        port = rnd.randrange(lo, hi)
        s = socket.socket()
        try:
            s.bind(('127.0.0.1', port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError('no free port in [%d, %d)' % (lo, hi))


free_port = cvtest.free_port


def http_get(url, timeout=5):
    """(status, body) of GET URL; (None, error text) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors='replace')
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors='replace')
    except (urllib.error.URLError, OSError) as e:
        return None, str(e)


class PrivatePG:
    """A PostgreSQL server of our own (deploy/pg.sh in a temp dir), which a
    test may stop with `pg_ctl stop -m immediate` and start again."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix='cvfault-pg-')
        os.chmod(self.base, 0o755)    # the server's user must reach it
        self.dir = os.path.join(self.base, 'pg')
        self.conninfo = None
        # A port below the ephemeral range (32768+), so that no outgoing
        # connection takes it while the server is stopped: the broker's
        # postgres.conninfo must stay valid across the restart.
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o700)
        with open(os.path.join(self.dir, 'port'), 'w') as f:
            f.write('%d\n' % fixed_port())
        self.start()

    def _pgsh(self, cmd):
        r = subprocess.run(['bash', PGSH, cmd, self.dir], capture_output=True,
                           text=True, timeout=180)
        if r.returncode != 0:
            raise RuntimeError('deploy/pg.sh %s %s exited %d: %s'
                               % (cmd, self.dir, r.returncode, r.stderr))
        return r

    @property
    def real(self):
        return os.path.realpath(self.dir)

    def start(self):
        out = self._pgsh('start').stdout.strip().splitlines()
        if self.conninfo and out[-1] != self.conninfo:
            raise RuntimeError('private PostgreSQL came back on another address '
                               '(%s, was %s)' % (out[-1], self.conninfo))
        self.conninfo = out[-1]
        return self.conninfo

    def _as_pg(self, args):
        if os.getuid() == 0:
            args = ['runuser', '-u', PG_USER, '--'] + args
        return subprocess.run(args, capture_output=True, text=True, timeout=120)

    def stop_immediate(self):
        """`pg_ctl stop -m immediate`: the server dies as in a crash."""
        r = self._as_pg([pg_bin('pg_ctl'), 'stop', '-D',
                         os.path.join(self.real, 'data'), '-m', 'immediate', '-w'])
        if r.returncode != 0:
            raise RuntimeError('pg_ctl stop -m immediate: %s' % r.stderr)

    def running(self):
        r = self._as_pg([pg_bin('pg_ctl'), 'status', '-D',
                         os.path.join(self.real, 'data')])
        return r.returncode == 0

    def destroy(self):
        real = self.real
        try:
            if os.path.exists(os.path.join(real, 'data')) and self.running():
                self.stop_immediate()
        except Exception as e:
            print('# cannot stop private PostgreSQL: %s' % e, flush=True)
        shutil.rmtree(real, ignore_errors=True)
        shutil.rmtree(self.base, ignore_errors=True)


class ControlProc(cvtest.Proc):
    """dev-kafka --control: stdin takes commands, stdout answers."""

    def __init__(self, name, args, logpath):
        self.name = name
        self.args = args
        self.logpath = logpath
        self.log = open(logpath, 'ab')
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.log,
                                  start_new_session=True, bufsize=0)
        self.lock = threading.Lock()

    def readline(self, timeout=30):
        buf = b''
        deadline = time.time() + timeout
        while not buf.endswith(b'\n'):
            left = deadline - time.time()
            if left <= 0 or not select.select([self.p.stdout], [], [], left)[0]:
                raise RuntimeError('dev-kafka did not answer (got %r)' % buf)
            c = self.p.stdout.read(1)
            if not c:
                raise RuntimeError('dev-kafka closed its stdout (got %r)' % buf)
            buf += c
        return buf.decode().strip()

    def command(self, line):
        with self.lock:
            self.p.stdin.write((line + '\n').encode())
            self.p.stdin.flush()
            return self.readline()


class FaultHarness(cvtest.Harness):
    def __init__(self, name, topics=None, partitions=8, config=None,
                 private_pg=False, kafka_brokers=1, control=False):
        super().__init__(name, topics=topics, partitions=partitions,
                         config=config)
        self.want_private_pg = private_pg
        self.private_pg = None
        self.kafka_brokers = kafka_brokers
        self.control_on = control
        self.mounts = []
        self.instances = {}

    # --- lifecycle -----------------------------------------------------------
    def __enter__(self):
        try:
            if self.want_private_pg:
                self.private_pg = PrivatePG()
                self.diag('private PostgreSQL: %s (in %s)'
                          % (self.private_pg.conninfo, self.private_pg.real))
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        super().__enter__()
        try:
            self.keygen()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, etype, exc, tb):
        try:
            # Our mounts go before the harness removes its temp dir: stop
            # the processes that may hold files there first.
            for p in reversed(self.procs):
                if p.alive():
                    p.close()
            for m in reversed(self.mounts):
                subprocess.run(['umount', '-l', m], capture_output=True)
            self.mounts = []
            super().__exit__(etype, exc, tb)    # kills processes, sys.exit()
        finally:
            for m in reversed(self.mounts):
                subprocess.run(['umount', '-l', m], capture_output=True)
            if self.private_pg is not None:
                self.private_pg.destroy()

    # --- PostgreSQL: the private server when there is one ------------------
    @property
    def server_pg(self):
        return self.private_pg.conninfo if self.private_pg else cvtest.PG

    def _admin(self, sql):
        conn = psycopg2.connect(self.server_pg + ' dbname=postgres')
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    @property
    def conninfo(self):
        return '%s dbname=%s' % (self.server_pg, self.db)

    # --- Kafka: several brokers and --control ----------------------------
    def _start_kafka(self):
        if self.kafka_brokers == 1 and not self.control_on:
            return super()._start_kafka()
        args = [BIN, 'dev-kafka', '--partitions', str(self.partitions),
                '--brokers', str(self.kafka_brokers)]
        for t, parts in self.topics.items():
            args += ['--topic', '%s:%d' % (t, parts)]
        if self.control_on:
            args.append('--control')
        path = os.path.join(self.tmp, 'dev-kafka.log')
        self.kafka = ControlProc('dev-kafka', args, path)
        self.procs.append(self.kafka)
        self.logs.append(path)
        self.bootstrap = self.kafka.readline(timeout=30)

    def control(self, line):
        """Sends one fault-injection command; fails the test on an error."""
        ans = self.kafka.command(line)
        self.diag('injected: %s -> %s' % (line, ans))
        if ans != 'ok':
            raise RuntimeError('dev-kafka --control %r: %s' % (line, ans))
        return ans

    # --- chatvault ---------------------------------------------------------
    def keygen(self):
        r = self.run('keygen')
        if r.returncode != 0:
            raise RuntimeError('chatvault keygen exited %d: %s'
                               % (r.returncode, r.stderr))

    def instance_config(self, name, **overrides):
        """A config file of its own for broker instance NAME (its own
        log.dir, as "Many instances" in
        consumer/applog/FORMAT.md asks)."""
        ov = {'log.dir': os.path.join(self.tmp, 'log-' + name)}
        ov.update(overrides)
        src = self.write_config(**ov)
        path = os.path.join(self.tmp, 'chatvault-%s.conf' % name)
        shutil.copyfile(src, path)
        self.write_config()
        return path, ov['log.dir']

    def start_instance(self, name, **overrides):
        """Starts (or restarts) broker instance NAME with its own config and
        log.dir; returns the Proc."""
        path, logdir = self.instance_config(name, **overrides)
        logpath = os.path.join(self.tmp, 'broker-%s.log' % name)
        with open(logpath, 'a') as f:
            f.write('==== start\n')
        p = cvtest.Proc('broker-' + name, [BIN, 'broker', '-c', path], logpath)
        self.procs.append(p)
        if logpath not in self.logs:
            self.logs.append(logpath)
        self.instances[name] = (p, path, logdir)
        return p

    def mount_tmpfs(self, path, size):
        os.makedirs(path, exist_ok=True)
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%s' % size, 'tmpfs',
                        path], check=True, capture_output=True)
        self.mounts.append(path)
        self.diag('mounted tmpfs size=%s on %s' % (size, path))

    def remount(self, path, size):
        subprocess.run(['mount', '-o', 'remount,size=%s' % size, path],
                       check=True, capture_output=True)
        self.diag('injected: remount %s size=%s' % (path, size))

    def unmount(self, path):
        subprocess.run(['umount', path], check=True, capture_output=True)
        self.mounts.remove(path)

    def read_log(self, name=None):
        path = os.path.join(self.tmp, 'broker.log' if name is None
                            else 'broker-%s.log' % name)
        with open(path, errors='replace') as f:
            return f.read()


def group_coordinator(h, group='chatvault'):
    """The node id of GROUP's coordinator (kafka-python's admin client)."""
    from kafka import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=h.bootstrap)
    try:
        return admin._find_coordinator_ids([group])[group]
    finally:
        admin.close()


def log_cat(h, dirs=None, config=None):
    """The records of `chatvault log cat` (dicts), over DIRS merged when given.
    Raises when the tool fails."""
    args = [BIN, 'log', 'cat', '-c', config or h.config_path]
    for d in dirs or []:
        args += ['--log-dir', d]
    r = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError('chatvault log cat exited %d: %s'
                           % (r.returncode, r.stderr.decode(errors='replace')[-2000:]))
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


class Publisher(threading.Thread):
    """Publishes TOTAL messages over CHANNELS at about RATE per second with
    python3-kafka; sent = {message_id: (channel, body)} of the acknowledged
    (acks=all) ones, errors = the failed sends."""

    def __init__(self, h, channels, total, rate, seed=1, body_max=100, **kw):
        super().__init__(daemon=True)
        self.h = h
        self.channels = channels
        self.total = total
        self.rate = rate
        self.rnd = random.Random(seed)
        self.body_max = body_max
        self.kw = kw
        self.sent = {}
        self.attempted = 0
        self.errors = []
        self.lock = threading.Lock()
        self.stop_flag = False
        self.paused = threading.Event()

    def run(self):
        try:
            prod = self.h.producer(retries=1000000, retry_backoff_ms=200,
                                   request_timeout_ms=30000,
                                   max_in_flight_requests_per_connection=1,
                                   **self.kw)
            t0 = time.time()
            for i in range(self.total):
                if self.stop_flag:
                    break
                while self.paused.is_set() and not self.stop_flag:
                    time.sleep(0.05)
                ch = self.channels[i % len(self.channels)]
                body = ('%d:' % i).encode() + self.rnd.randbytes(
                    self.rnd.randrange(0, self.body_max))
                mid, value = cvtest.chat_message(ch, body)
                fut = prod.send('chat.' + ch,
                                value=value, key=mid.encode())
                fut.add_callback(self._ok, mid, ch, body)
                fut.add_errback(self._err, mid)
                self.attempted += 1
                if self.rate and i % 50 == 49:
                    ahead = (i + 1) / self.rate - (time.time() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            prod.flush(timeout=300)
        except Exception as e:  # reported by the test
            self.errors.append(repr(e))

    def _ok(self, mid, ch, body, _md):
        with self.lock:
            self.sent[mid] = (ch, body)

    def _err(self, mid, exc):
        self.errors.append('%s: %r' % (mid, exc))


def is_txn_marker(r):
    """python3-kafka 2.0.2 hands over the commit and abort markers of
    transactions as records. A marker's key is 4 bytes (version 0, type 0
    abort or 1 commit) and its value 6; an ack's key is its channel."""
    return (r.key is not None and len(r.key) == 4 and r.key[:2] == b'\0\0' and
            len(r.value or b'') == 6)


class AckCollector(threading.Thread):
    """Reads the ack topic from the start in a thread. items: (arrival time,
    DeliveryAck, Kafka timestamp ms of the ack record); by_pos: {(partition,
    offset): DeliveryAck}; markers: transaction markers skipped. KW:
    python3-kafka consumer options (another listener, TLS, SASL)."""

    def __init__(self, h, topic='chatvault.acks', **kw):
        super().__init__(daemon=True)
        self.c = h.consumer(topic, **kw)
        self.items = []
        self.by_pos = {}
        self.markers = 0
        self.lock = threading.Lock()
        self.stop_flag = False
        self.error = None

    def run(self):
        try:
            while not self.stop_flag:
                batch = self.c.poll(timeout_ms=300, max_records=20000)
                now = time.time()
                got, pos, markers = [], {}, 0
                for recs in batch.values():
                    for r in recs:
                        if is_txn_marker(r):
                            markers += 1
                            continue
                        a = cvtest.parse_ack(r.value)
                        got.append((now, a, r.timestamp))
                        pos[(r.partition, r.offset)] = a
                with self.lock:
                    self.items.extend(got)
                    self.by_pos.update(pos)
                    self.markers += markers
        except Exception as e:
            self.error = repr(e)

    def snapshot(self):
        with self.lock:
            return list(self.items)

    def positions(self):
        with self.lock:
            return dict(self.by_pos)

    def count(self):
        with self.lock:
            return len(self.items)

    def acked_ids(self):
        return {a.message_id for _, a, _ in self.snapshot()}

    def wait_all(self, ids, timeout=300, idle=90, alive=None):
        """Waits until every id in IDS has an ack, TIMEOUT passes, or no ack
        arrived for IDLE seconds. Returns the ids still missing."""
        ids = set(ids)
        deadline = time.time() + timeout
        last_n, last_t = -1, time.time()
        while True:
            missing = ids - self.acked_ids()
            n = self.count()
            if n != last_n:
                last_n, last_t = n, time.time()
            if not missing or time.time() > deadline or time.time() - last_t > idle:
                return missing
            if alive is not None and not alive():
                time.sleep(2)
                return ids - self.acked_ids()
            time.sleep(0.5)

    def stop(self):
        self.stop_flag = True
        self.join(timeout=10)


def status_counts(items):
    out = {}
    for _, a, _ in items:
        st = cvtest.STATUS.get(a.status, a.status)
        out[st] = out.get(st, 0) + 1
    return out


def check_store(h, name, ids_stored, sent):
    """TAP points: the store NAME holds exactly the published set, once each.
    ids_stored: list of message ids (one per stored record)."""
    h.is_(len(ids_stored), len(sent), '%s holds %d records (one per published '
          'message)' % (name, len(sent)))
    h.is_(len(set(ids_stored)), len(ids_stored), '%s: no message stored twice' % name)
    got = set(ids_stored)
    want = set(sent)
    h.ok(got == want, '%s holds exactly the published set' % name,
         'missing %d (e.g. %s), extra %d' % (len(want - got), sorted(want - got)[:3],
                                             len(got - want)))


def kafka_records(h, topics):
    """How many records the chat TOPICS hold (sum of end offsets: the mock
    cluster's offsets start at 0 and have no gaps)."""
    return sum(end for _, end in h.group_offsets(list(topics)).values())


def check_log(h, name, recs, sent, records):
    """TAP points: the log records RECS (from log_cat) hold every published
    message and each Kafka record once; RECORDS is how many valid records the
    chat topics hold. The log is keyed by Kafka coordinates: a message the
    publisher itself sent twice (a python3-kafka retry) is two records, in
    the log twice and in PostgreSQL once (acked DUPLICATE the second time)."""
    coords = {(r['topic'], r['partition'], r['offset']) for r in recs}
    h.is_(len(coords), len(recs), '%s: no Kafka record stored twice' % name)
    h.is_(len(recs), records, '%s holds one record per valid Kafka record (%d)'
          % (name, records))
    got = {r['message_id'] for r in recs}
    want = set(sent)
    h.ok(got == want, '%s holds exactly the published set of message ids' % name,
         'missing %d (e.g. %s), extra %d' % (len(want - got), sorted(want - got)[:3],
                                             len(got - want)))
    if len(recs) != len(got):
        h.diag('%s: %d records for %d message ids (messages the publisher sent '
               'twice)' % (name, len(recs), len(got)))


def verify(h, dirs=None, repair=False, config=None):
    """`chatvault verify [--repair]` (over DIRS when given); returns the
    CompletedProcess (exit 0: the stores agree, 3: differences)."""
    args = ['verify', '--quiet']
    if repair:
        args.append('--repair')
    for d in dirs or []:
        args += ['--log-dir', d]
    if config:
        args += ['-c', config]
        return h.run(*args, timeout=900, config=False)
    return h.run(*args, timeout=900)


def check_verify(h, dirs=None):
    """TAP point: `chatvault verify` finds the two stores in agreement."""
    r = verify(h, dirs=dirs)
    h.ok(r.returncode == 0, '`chatvault verify` finds PostgreSQL and the log in '
         'agreement (exit 0)', 'exit %d: %s %s' % (r.returncode, r.stdout[-1500:],
                                                 r.stderr[-1500:]))
    return r


def pg_ids(h):
    return [r[0] for r in h.query('SELECT message_id FROM chatvault.messages')]


class OffsetSampler(threading.Thread):
    """Samples group chatvault's committed offsets of TOPICS every EVERY
    seconds. samples: (time the answer came, {(topic, partition): offset})."""

    def __init__(self, h, topics, every=2.0):
        super().__init__(daemon=True)
        self.h = h
        self.topics = list(topics)
        self.every = every
        self.samples = []
        self.failures = 0
        self.stop_flag = False

    def run(self):
        while not self.stop_flag:
            try:
                offs = self.h.group_offsets(self.topics)
                t = time.time()     # committed at the latest now
                self.samples.append((t, {(tp.topic, tp.partition): c
                                         for tp, (c, _) in offs.items()
                                         if c is not None}))
            except Exception:
                self.failures += 1
            time.sleep(self.every)

    def stop(self):
        self.stop_flag = True
        self.join(timeout=60)

    def violations(self, items, t0=0):
        """Samples where a committed offset passed a record whose first ack
        (Kafka timestamp of the ack record, from AckCollector ITEMS) was not
        produced before the sample: (t, topic, partition, committed, offset,
        ack ts)."""
        first = {}
        for _, a, ts in items:
            k = (a.topic, a.partition, a.offset)
            first[k] = min(first.get(k, ts), ts)
        out = []
        for t, offs in self.samples:
            for (topic, part), c in offs.items():
                for o in range(c):
                    ts = first.get((topic, part, o))
                    if ts is None or ts > t * 1000:
                        out.append((round(t - t0, 1), topic, part, c, o, ts))
                        break
        return out


def check_commits(h, sampler, acks, topics, t0, timeout=60, min_samples=5):
    """The closing TAP points of a run watched by an OffsetSampler: the
    group's committed offsets reach the end of every partition of TOPICS
    (waiting up to TIMEOUT s); then, 3 s later so that SAMPLER has seen the
    last commits, SAMPLER and ACKS (an AckCollector) are stopped, and no
    sample (at least MIN_SAMPLES of them) had a committed offset past a
    record whose ack was not produced before the sample. T0: the run's start,
    for the violations' times. Returns the acks ACKS collected (its items)."""
    behind, _ = h.wait_committed(list(topics), timeout=timeout)
    h.ok(not behind, 'committed offset = end offset everywhere', behind)
    time.sleep(3)
    sampler.stop()
    items = acks.snapshot()
    acks.stop()
    bad = sampler.violations(items, t0)
    h.ok(len(sampler.samples) >= min_samples and not bad,
         'no committed offset ever passed a record without an ack produced '
         'before the sample (%d samples)' % len(sampler.samples),
         'first violations (t, topic, partition, committed, offset, ack ts): %s'
         % bad[:5])
    return items
