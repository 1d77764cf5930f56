"""SIGTERM under load: the broker finishes the batch in flight, waits for its
acks, commits and exits 0 within shutdown.timeout_ms (plus generous slack
for a shared machine). Checked: the exit code; the broker's own summary line
(every record it consumed was acked); the committed offsets equal what it
consumed (offsets start at 0 and have no gaps on the mock cluster); and after
a restart nothing is lost or stored twice in either store.

Then SIGTERM when idle, and SIGTERM while the batch in flight can never
become durable (log.dir is a tmpfs that is full, ack.policy = all): the
broker must still exit within shutdown.timeout_ms, ack nothing of that
batch, and lose nothing once it restarts with space."""
import os
import re
import subprocess
import time

import faultlib

CHANNELS = ['term%d' % i for i in range(4)]
PARTITIONS = 4
TOTAL = 40000
RATE = 4000
TIMEOUT_MS = 5000
SLACK_S = 10            # scheduling slack on a shared 2-core machine

topics = {'chat.' + c: PARTITIONS for c in CHANNELS}
faultlib.need_root('log.dir on a tmpfs')
with faultlib.FaultHarness('sigterm', topics=topics, partitions=8,
                           config={'shutdown.timeout_ms': TIMEOUT_MS}) as h:
    logdir = os.path.join(h.tmp, 'log')
    h.mount_tmpfs(logdir, '64m')
    h.migrate()
    h.start_broker()
    acks = faultlib.AckCollector(h)
    acks.start()
    pub = faultlib.Publisher(h, CHANNELS, TOTAL, RATE)
    pub.start()

    deadline = time.time() + 180
    while time.time() < deadline and acks.count() < TOTAL // 4:
        time.sleep(0.05)
    rows_then = h.query('SELECT count(*) FROM chatvault.messages')[0][0]
    h.diag('injected: SIGTERM with %d acks seen, %d rows, %d published so far'
           % (acks.count(), rows_then, pub.attempted))
    h.ok(pub.is_alive(), 'the publisher is still publishing at the SIGTERM')
    t0 = time.time()
    rc = h.broker.stop(timeout=TIMEOUT_MS / 1000 + 60)
    took = time.time() - t0
    h.is_(rc, 0, 'broker exits 0 on SIGTERM under load')
    h.ok(took <= TIMEOUT_MS / 1000 + SLACK_S,
         'it exits within shutdown.timeout_ms (%d ms) + %d s slack: %.1f s'
         % (TIMEOUT_MS, SLACK_S, took))

    m = re.findall(r'broker stopped.*?consumed=(\d+) persisted=(\d+) '
                   r'duplicates=(\d+) rejected=(\d+) acked=(\d+)', h.broker_log())
    h.ok(m, 'the broker logged its summary line')
    consumed, persisted, dups, rejected, acked = map(int, m[-1]) if m else [-1] * 5
    h.diag('broker summary: consumed=%d persisted=%d duplicates=%d rejected=%d '
           'acked=%d' % (consumed, persisted, dups, rejected, acked))
    h.is_(acked, consumed, 'every record consumed before the SIGTERM was acked '
          '(the batch in flight was drained)')
    offs = h.group_offsets(list(topics))
    committed = sum(max(c or 0, 0) for c, _ in offs.values())
    h.is_(committed, consumed, 'the committed offsets cover exactly what it '
          'consumed (sum over partitions)')
    rows_stop = h.query('SELECT count(*) FROM chatvault.messages')[0][0]
    h.is_(rows_stop, persisted, 'PostgreSQL holds what it persisted')

    # The rest of the run after a restart.
    h.start_broker()
    pub.join(timeout=600)
    h.ok(not pub.errors and len(pub.sent) == TOTAL,
         'python3-kafka published %d messages' % TOTAL, pub.errors[:5])
    sent = dict(pub.sent)
    missing = acks.wait_all(sent, timeout=600, alive=h.broker.alive)
    h.ok(not missing, 'every message acked at least once',
         '%d never acked, e.g. %s' % (len(missing), sorted(missing)[:5]))
    h.wait_rows(len(sent), timeout=120)
    time.sleep(2)
    items = acks.snapshot()
    ids = faultlib.pg_ids(h)
    faultlib.check_store(h, 'PostgreSQL', ids, sent)
    log_ids = [r['message_id'] for r in faultlib.log_cat(h)]
    faultlib.check_store(h, 'the log', log_ids, sent)
    statuses = faultlib.status_counts(items)
    h.ok(set(statuses) <= {'PERSISTED', 'DUPLICATE'},
         'acks are PERSISTED or DUPLICATE', statuses)
    behind, _ = h.wait_committed(list(topics))
    h.ok(not behind, 'committed offset = end offset everywhere', behind)

    # SIGTERM when idle.
    t0 = time.time()
    rc = h.broker.stop(timeout=TIMEOUT_MS / 1000 + 60)
    h.is_(rc, 0, 'an idle broker exits 0 on SIGTERM (%.1f s)' % (time.time() - t0))

    # SIGTERM while the batch in flight cannot become durable.
    h.start_broker()
    deadline = time.time() + 60
    while time.time() < deadline and 'partition assigned' not in \
            h.broker_log().split('==== start %d' % h.broker_starts)[-1]:
        time.sleep(0.2)
    filler = os.path.join(logdir, 'filler')
    subprocess.run(['dd', 'if=/dev/zero', 'of=' + filler, 'bs=64k'],
                   capture_output=True)
    h.diag('injected: log.dir full (filler %d bytes)' % os.path.getsize(filler))
    pub2 = faultlib.Publisher(h, CHANNELS, 2000, 2000, seed=2)
    pub2.start()
    pub2.join(timeout=300)
    deadline = time.time() + 60
    while time.time() < deadline and 'No space left' not in \
            h.broker_log().split('==== start %d' % h.broker_starts)[-1]:
        time.sleep(0.2)
    stuck = 'No space left' in h.broker_log().split('==== start %d' % h.broker_starts)[-1]
    h.ok(stuck, 'the broker is stuck on a full log (its log says No space left)')
    t0 = time.time()
    rc3 = h.broker.stop(timeout=TIMEOUT_MS / 1000 + 60)
    took3 = time.time() - t0
    h.ok(took3 <= TIMEOUT_MS / 1000 + SLACK_S,
         'with a batch that cannot become durable it still exits within '
         'shutdown.timeout_ms (%d ms) + %d s slack: %.1f s' % (TIMEOUT_MS, SLACK_S, took3))
    h.ok(rc3 in (0, 1), 'and exits %d (0 or 1)' % rc3)
    m = re.findall(r'broker stopped.*?consumed=(\d+) .*?acked=(\d+)', h.broker_log())
    h.diag('exit %d after %.1f s; summary %s; last lines:' % (rc3, took3, m[-1:]))
    for line in h.broker_log().splitlines()[-4:]:
        h.diag('  ' + line[:240])
    sent2 = dict(pub2.sent)
    time.sleep(2)
    early = [a.message_id for _, a, _ in acks.snapshot() if a.message_id in sent2]
    h.is_(len(early), 0, 'none of the %d messages published while the log was full '
          'was acked' % len(sent2))
    os.unlink(filler)
    h.diag('injected: log space back; restarting')
    h.start_broker()
    missing = acks.wait_all(sent2, timeout=300, alive=h.broker.alive)
    h.ok(not missing, 'after the restart, every one of them is acked',
         '%d never acked' % len(missing))
    sent.update(sent2)
    h.wait_rows(len(sent), timeout=120)
    time.sleep(2)
    items = acks.snapshot()
    ids = faultlib.pg_ids(h)
    faultlib.check_store(h, 'PostgreSQL (all %d)' % len(sent), ids, sent)
    log_ids = [r['message_id'] for r in faultlib.log_cat(h)]
    faultlib.check_store(h, 'the log (all %d)' % len(sent), log_ids, sent)
    faultlib.check_verify(h)
    statuses = faultlib.status_counts(items)
    rc = h.broker.stop(timeout=TIMEOUT_MS / 1000 + 60)
    h.is_(rc, 0, 'broker exits 0 on SIGTERM at the end')
    acks.stop()
    h.diag('counts: published=%d stored_pg=%d stored_log=%d acks=%d acked_messages=%d '
           'rejected=0 duplicates=%d statuses=%s; first run consumed=%d acked=%d '
           'committed=%d exit %.1fs; stuck run exit %d in %.1fs'
           % (len(sent), len(ids), len(log_ids), len(items),
              len({a.message_id for _, a, _ in items}), statuses.get('DUPLICATE', 0),
              statuses, consumed, acked, committed, took, rc3, took3))
    h.unmount(logdir)
