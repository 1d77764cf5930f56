"""A batch that did not become durable leaves a hole: nothing after it may be
stored, acked or committed (issue 15, item 6; consumer/ingest/pipeline.c).

The window: batch S waits at the stores while batch F, behind it, fills.
A second psql session holds a lock on chatvault.messages, so S's INSERT
blocks; F's records arrive meanwhile; then S's backend is killed with
pg_terminate_backend, so S fails and is retried on the broker's main
thread. Two ways for S to end not durable follow, each ending with the lock
released so that the stores would take F:

  fatal  the retry reconnects and finds a schema version newer than the
         binary (a newer `chatvault migrate` ran meanwhile): a fatal error.
         The broker must exit 1 without storing, acking or committing F.
  stop   SIGTERM lands while S waits out its retry pause, a few ms before
         the retry is due, so that F would reach a PostgreSQL that is due
         for a write again. The broker must exit 0 without storing, acking
         or committing F. (When the signal lands after the retry started,
         S itself becomes durable once the lock goes; the round says so.)

After each round: no ack and no committed offset covers a record that is
not in both stores (ack.policy = all); then the broker restarts and every
record published is stored exactly once in PostgreSQL, once per Kafka record
in the log, and acked; `chatvault verify` agrees. On the code before the
fix, F was stored, acked and committed past S, whose records were never
re-delivered: PostgreSQL (or the log) lacked them for good."""
import calendar
import re
import signal
import time

import faultlib

cvtest = faultlib.cvtest
psycopg2 = faultlib.psycopg2

CHANNELS = ['hole0', 'hole1']
TOPICS = {'chat.' + c: 1 for c in CHANNELS}     # one partition: F follows S
TIMEOUT_MS = 5000
STOP_ROUNDS = 3
LEAD_S = 0.012          # SIGTERM this long before the retry is due


def publish(h, prod, tag, n):
    """Publishes N messages over CHANNELS; {message_id: (topic, partition,
    offset)} of each, as Kafka acknowledged it."""
    futs = []
    for i in range(n):
        ch = CHANNELS[i % len(CHANNELS)]
        mid, value = cvtest.chat_message(ch, ('%s %d' % (tag, i)).encode())
        futs.append((mid, prod.send('chat.' + ch, value=value, key=mid.encode())))
    prod.flush(timeout=60)
    out = {}
    for mid, f in futs:
        md = f.get(timeout=60)
        out[mid] = (md.topic, md.partition, md.offset)
    return out


def this_start(h):
    return h.broker_log().split('==== start %d\n' % h.broker_starts)[-1]


def wait_for(what, cond, timeout=60, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise RuntimeError('timed out after %d s waiting for %s' % (timeout, what))


def lock_waiters(h):
    """Backends of the test database waiting for a lock (the broker's)."""
    return [r[0] for r in h.query(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")]


class Locker:
    """A second session holding LOCK TABLE ... IN EXCLUSIVE MODE: reads go
    on, the broker's INSERT waits."""

    def __init__(self, h, table='chatvault.messages'):
        self.conn = psycopg2.connect(h.conninfo)
        with self.conn.cursor() as cur:
            cur.execute('LOCK TABLE %s IN EXCLUSIVE MODE' % table)
        h.diag('injected: a second session holds LOCK TABLE %s IN EXCLUSIVE MODE'
               % table)

    def release(self):
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None


def window(h, prod, tag):
    """Drives S into the stores behind the lock and F into the fill buffer
    behind it; returns (locker, pid of the broker's blocked backend, sent)."""
    sent = publish(h, prod, tag + '-warm', 20)
    missing = h.acks.wait_all(sent, timeout=120, alive=h.broker.alive)
    if missing:
        raise RuntimeError('%d warm-up messages never acked' % len(missing))
    locker = Locker(h)
    s = publish(h, prod, tag + '-S', 40)
    pid = wait_for('the broker to wait for the lock', lambda: lock_waiters(h))[0]
    f = publish(h, prod, tag + '-F', 40)
    time.sleep(1.5)      # the broker polls F into the batch that fills
    sent.update(s)
    sent.update(f)
    return locker, pid, sent


def sql(h, statement, args=None):
    """Runs one statement in its own committed transaction."""
    conn = psycopg2.connect(h.conninfo)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, args)
    finally:
        conn.close()


def terminate(h, pid):
    sql(h, 'SELECT pg_terminate_backend(%s)', (pid,))
    h.diag('injected: pg_terminate_backend(%d), the broker\'s backend' % pid)


def check_hole(h, label, sent):
    """TAP points: no ack and no committed offset covers a record that is
    not in both stores; and no record after the first one missing from a
    store (the hole) of its partition is in both stores: the batch after
    the one given up was not stored."""
    pg = {tuple(r) for r in h.query(
        'SELECT kafka_topic, kafka_partition, kafka_offset FROM chatvault.messages')}
    log = {(r['topic'], r['partition'], r['offset']) for r in faultlib.log_cat(h)}
    acked = {(a.topic, a.partition, a.offset) for _, a, _ in h.acks.snapshot()}
    committed = {(tp.topic, tp.partition): c for tp, (c, _) in
                 h.group_offsets(list(TOPICS)).items()}
    bad = []
    for mid, (t, p, o) in sorted(sent.items(), key=lambda kv: kv[1]):
        c = committed.get((t, p))
        how = [w for w, on in (('acked', (t, p, o) in acked),
                               ('committed', c is not None and c > o)) if on]
        if how and not ((t, p, o) in pg and (t, p, o) in log):
            bad.append('%s/%d@%d %s pg=%s log=%s' % (
                t, p, o, '+'.join(how), (t, p, o) in pg, (t, p, o) in log))
    hole = {}
    for t, p, o in sent.values():
        if not ((t, p, o) in pg and (t, p, o) in log):
            hole[(t, p)] = min(hole.get((t, p), o), o)
    later = sorted(k for k in sent.values()
                   if k[:2] in hole and k[2] > hole[k[:2]] and k in pg and k in log)
    not_durable = sum(1 for k in sent.values() if not (k in pg and k in log))
    h.diag('%s: %d published, %d not in both stores, committed %s'
           % (label, len(sent), not_durable, committed))
    h.ok(not bad, '%s: no ack and no committed offset covers a record missing '
         'from a store' % label,
         '%d such records, e.g. %s' % (len(bad), bad[:5]))
    h.ok(not later, '%s: nothing after the hole %s was stored' % (label, hole),
         '%d records after it in both stores, e.g. %s' % (len(later), later[:5]))


def restart_and_check(h, label, sent):
    """Restarts the broker and checks that every record published is stored
    once and acked, then stops it."""
    h.start_broker()
    missing = h.acks.wait_all(sent, timeout=300, alive=h.broker.alive)
    h.ok(not missing, '%s: after a restart every message is acked' % label,
         '%d never acked, e.g. %s' % (len(missing), sorted(missing)[:3]))
    behind, _ = h.wait_committed(list(TOPICS), timeout=60)
    h.ok(not behind, '%s: committed offset = end offset everywhere' % label, behind)
    faultlib.check_store(h, '%s: PostgreSQL' % label, faultlib.pg_ids(h), sent)
    recs = faultlib.log_cat(h)
    faultlib.check_log(h, '%s: the log' % label, recs, sent,
                       faultlib.kafka_records(h, TOPICS))
    rc = h.broker.stop(timeout=TIMEOUT_MS / 1000 + 60)
    h.is_(rc, 0, '%s: broker exits 0 on SIGTERM when idle' % label)


def log_ts(line):
    """Wall-clock seconds of a broker log line (ts=...Z, ms precision)."""
    m = re.match(r'ts=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z', line)
    return calendar.timegm(time.strptime(m.group(1), '%Y-%m-%dT%H:%M:%S')) + \
        int(m.group(2)) / 1000.0


with faultlib.FaultHarness('stop_hole', topics=TOPICS, partitions=4,
                           config={'shutdown.timeout_ms': TIMEOUT_MS}) as h:
    h.migrate()
    h.acks = faultlib.AckCollector(h)
    h.acks.start()
    prod = h.producer(max_in_flight_requests_per_connection=1)
    sent = {}

    # --- fatal: the retry of S meets a schema it does not know -------------
    h.start_broker()
    wait_for('partition assignment', lambda: this_start(h).count('partition assigned')
             >= len(TOPICS))
    locker, pid, got = window(h, prod, 'fatal')
    sent.update(got)
    sql(h, "INSERT INTO chatvault.schema_migrations (version, name) "
        "VALUES (9999, 'stop_hole test: a newer chatvault')")
    h.diag('injected: schema_migrations version 9999 (as if a newer chatvault '
           'migrated the database)')
    terminate(h, pid)
    # The retry reconnects 200 ms later and meets the schema check before
    # any INSERT. Then the broker exits, or (before the fix) hands F to the
    # stores, whose INSERT waits for the lock in a new backend.
    wait_for('the broker to exit or to write again', lambda: not h.broker.alive()
             or [w for w in lock_waiters(h) if w != pid], timeout=30)
    locker.release()
    h.diag('injected: lock released')
    try:
        rc = h.broker.p.wait(timeout=TIMEOUT_MS / 1000 + 60)
    except Exception:
        rc = h.broker.stop()
    h.broker.stopped = True
    h.is_(rc, 1, 'fatal: the broker exits 1 on a schema newer than it knows')
    errline = [l for l in this_start(h).splitlines()
               if l.startswith('chatvault broker: ')]
    h.ok(len(errline) == 1 and 'database schema is version 9999' in errline[0],
         'fatal: one error line names the schema version', errline)
    check_hole(h, 'fatal', sent)
    sql(h, 'DELETE FROM chatvault.schema_migrations WHERE version = 9999')
    restart_and_check(h, 'fatal', sent)

    # --- stop: SIGTERM while S waits out its retry pause -------------------
    hits = 0
    for rnd in range(1, STOP_ROUNDS + 1):
        label = 'stop %d' % rnd
        h.start_broker()
        wait_for('partition assignment', lambda: this_start(h).count(
            'partition assigned') >= len(TOPICS))
        locker, pid, got = window(h, prod, 'stop%d' % rnd)
        sent.update(got)
        terminate(h, pid)
        line = wait_for('the failed write', lambda: [
            l for l in this_start(h).splitlines()
            if 'store write failed' in l and 'store=postgres' in l], every=0.002)[-1]
        retry_ms = int(re.search(r'retry_in=(\d+)ms', line).group(1))
        due = log_ts(line) + retry_ms / 1000.0
        time.sleep(max(0.0, due - LEAD_S - time.time()))
        h.broker.p.send_signal(signal.SIGTERM)
        h.broker.stopped = True
        early = due - time.time()
        h.diag('injected: SIGTERM %.0f ms before the retry was due (retry_in=%dms)'
               % (early * 1000, retry_ms))
        time.sleep(0.3)
        locker.release()
        h.diag('injected: lock released')
        try:
            rc = h.broker.p.wait(timeout=TIMEOUT_MS / 1000 + 60)
        except Exception:
            rc = h.broker.stop()
        h.is_(rc, 0, '%s: the broker exits 0 on SIGTERM with a batch not durable'
              % label)
        after = this_start(h).split(line, 1)[-1]
        late = 'stores are back' in after
        hits += not late
        given_up = [l for l in after.splitlines() if 'was given up' in l]
        h.diag('%s: %s' % (label, 'the signal came after the retry started: S '
                           'became durable' if late else
                           'S was given up at the stop: %s' % given_up[:1]))
        check_hole(h, label, sent)
        restart_and_check(h, label, sent)
    h.ok(hits > 0, 'stop: in at least one round the SIGTERM came before the retry '
         '(%d of %d)' % (hits, STOP_ROUNDS))
    faultlib.check_verify(h)
    h.acks.stop()
    h.diag('counts: published=%d stored_pg=%d acks=%d rejected=0 stop rounds in '
           'the window=%d/%d' % (len(sent), len(faultlib.pg_ids(h)),
                                 h.acks.count(), hits, STOP_ROUNDS))
