"""The log disk fills up under load: log.dir is a small tmpfs; mid-run a filler
file takes the rest of it (ENOSPC); later the tmpfs is remounted bigger.

  test_log_full.py all   ack.policy = all: the broker stalls (no acks, a clear
                         error in its log) and resumes by itself when space
                         returns; in the end both stores hold everything once.
  test_log_full.py any   ack.policy = any: acks keep flowing DEGRADED with
                         stores = postgres (or PERSISTED with both, for a
                         batch small enough for the room left in the log's
                         segments), and the broker says to run
                         `chatvault verify --repair`; PostgreSQL holds
                         everything once.
Both: nothing is acked as held by a store that does not hold it (every ack
naming the log is in `chatvault log cat`, every ack naming PostgreSQL is a
row), and every message is acked at least once."""
import os
import subprocess
import sys
import time

import faultlib
from faultlib import cvtest

policy = sys.argv[1] if len(sys.argv) > 1 else 'all'
CHANNELS = ['full%d' % i for i in range(4)]
PARTITIONS = 4
RATE = 500
BEFORE, FULL, AFTER = 8, 25, 15
SETTLE = 5
BATCH = 5000
PG, LOG = 1, 2

topics = {'chat.' + c: PARTITIONS for c in CHANNELS}
port = faultlib.free_port()
faultlib.need_root('log.dir on a tmpfs')
total = RATE * (BEFORE + FULL + AFTER)
with faultlib.FaultHarness('log_full_' + policy, topics=topics, partitions=8,
                           config={'ack.policy': policy,
                                   'batch.max_messages': BATCH,
                                   'log.segment_bytes': 256 * 1024,
                                   'http.listen': '127.0.0.1:%d' % port}) as h:
    logdir = os.path.join(h.tmp, 'log')
    h.mount_tmpfs(logdir, '6m')
    h.migrate()
    h.start_broker()
    acks = faultlib.AckCollector(h)
    acks.start()
    pub = faultlib.Publisher(h, CHANNELS, total, RATE)
    pub.start()
    t0 = time.time()
    while time.time() < t0 + BEFORE:
        time.sleep(0.2)

    # Fill the file system: a filler file takes whatever is left.
    filler = os.path.join(logdir, 'filler')
    subprocess.run(['dd', 'if=/dev/zero', 'of=' + filler, 'bs=64k'],
                   capture_output=True)
    t_full = time.time()
    st = os.statvfs(logdir)
    h.diag('injected: log.dir full at t=%.1f (filler %d bytes, %d bytes free, '
           'acks so far %d)' % (t_full, os.path.getsize(filler),
                                st.f_bavail * st.f_frsize, acks.count()))
    ready = None
    while time.time() < t_full + FULL:
        time.sleep(0.5)
        if ready is None and time.time() > t_full + 15:
            ready = faultlib.http_get('http://127.0.0.1:%d/readyz' % port)
    h.diag('/readyz while the log is full: %s' % (ready,))
    if policy == 'all' and ready and ready[0] in (200, 503):
        h.is_(ready[0], 503, '/readyz is not ready while the log is full')
    items = acks.snapshot()
    window = [x for x in items if x[0] > t_full]
    late = [x for x in window if x[0] > t_full + SETTLE]
    h.diag('acks received while full: %d (%d after %d s): %s'
           % (len(window), len(late), SETTLE, faultlib.status_counts(window)))
    log = h.broker_log()
    enospc = [l for l in log.splitlines() if 'store=log' in l
              and ('No space left' in l or 'ENOSPC' in l)]
    h.ok(enospc, 'the broker logs a clear error: store=log ... No space left',
         [l for l in log.splitlines() if 'level=warn' in l or 'level=error' in l][-5:])
    if enospc:
        h.diag('broker log: ' + enospc[0][:300])
    h.ok(h.broker.alive(), 'the broker keeps running while the log is full')
    if policy == 'all':
        h.ok(len(window) <= BATCH, 'at most one batch in flight acked after the '
             'disk filled: %d' % len(window))
        h.is_(len(late), 0, 'no ack while the log is full (after %d s)' % SETTLE)
    else:
        # A retry of the log with a new batch may find room: each segment's
        # last page has some left, and a batch small enough for it is then
        # truly in both stores (the acks naming the log are checked against
        # the log below). Everything else is DEGRADED with PostgreSQL alone.
        kinds = [(cvtest.STATUS.get(a.status), a.stores) for _, a, _ in late]
        degraded = kinds.count(('DEGRADED', PG))
        both = kinds.count(('PERSISTED', PG | LOG))
        h.diag('acks while full (after %d s): %d DEGRADED with postgres, %d '
               'PERSISTED with both (a retry found room)' % (SETTLE, degraded, both))
        h.ok(degraded >= RATE * (FULL - SETTLE) / 4,
             'acks keep flowing DEGRADED while the log is full (%d)' % degraded)
        bad = [k for k in kinds if k not in (('DEGRADED', PG), ('PERSISTED', PG | LOG))]
        h.ok(late and not bad, 'every ack while the log is full is DEGRADED with '
             'stores = postgres, or PERSISTED with both stores',
             'not so: %d, e.g. %s' % (len(bad), bad[:5]))
        repair = [l for l in log.splitlines() if 'verify --repair' in l]
        h.ok(repair, 'the broker says to run `chatvault verify --repair`')
        if repair:
            h.diag('broker log: ' + repair[0][:300])

    h.remount(logdir, '64m')
    t_back = time.time()
    pub.join(timeout=600)
    h.ok(not pub.errors and len(pub.sent) == total,
         'python3-kafka published %d messages' % total, pub.errors[:5])
    sent = dict(pub.sent)
    missing = acks.wait_all(sent, timeout=600, idle=120, alive=h.broker.alive)
    h.ok(not missing, 'every published message acked at least once',
         '%d never acked, e.g. %s' % (len(missing), sorted(missing)[:5]))
    h.wait_rows(len(sent), timeout=120)
    time.sleep(3)
    items = acks.snapshot()

    ids = faultlib.pg_ids(h)
    faultlib.check_store(h, 'PostgreSQL', ids, sent)
    os.unlink(filler)
    logrecs = faultlib.log_cat(h)
    log_ids = [r['message_id'] for r in logrecs]
    pre_repair_ids = set(log_ids)   # what the broker itself made durable
    if policy == 'all':
        faultlib.check_store(h, 'the log', log_ids, sent)
    else:
        h.is_(len(set(log_ids)), len(log_ids), 'the log: no message stored twice')
        h.ok(set(log_ids) <= set(sent), 'the log holds only published messages')
        h.diag('the log misses %d messages (acked DEGRADED while it was full; '
               '`chatvault verify --repair` would fill the gap)'
               % len(set(sent) - set(log_ids)))
        r = faultlib.verify(h)
        h.is_(r.returncode, 3, '`chatvault verify` reports the gap (exit 3)')
        h.diag('verify: ' + ' | '.join(r.stdout.strip().splitlines()[-3:])[:600])
        r = faultlib.verify(h, repair=True)
        h.is_(r.returncode, 0, '`chatvault verify --repair` fills it and then '
              'finds the stores in agreement (exit 0)')
        h.diag('verify --repair: ' + ' | '.join(
            (r.stdout + r.stderr).strip().splitlines()[-3:])[:600])
        logrecs = faultlib.log_cat(h)
        log_ids = [x['message_id'] for x in logrecs]
        faultlib.check_store(h, 'the log after verify --repair', log_ids, sent)
    faultlib.check_verify(h)
    in_log, in_pg = pre_repair_ids, set(ids)
    claims_log = [a.message_id for _, a, _ in items if a.stores & LOG
                  and a.message_id not in in_log]
    claims_pg = [a.message_id for _, a, _ in items if a.stores & PG
                 and a.message_id not in in_pg]
    h.ok(not claims_log, 'every ack naming the log: the log holds the message',
         '%d not, e.g. %s' % (len(claims_log), claims_log[:3]))
    h.ok(not claims_pg, 'every ack naming PostgreSQL: PostgreSQL holds it',
         '%d not, e.g. %s' % (len(claims_pg), claims_pg[:3]))
    statuses = faultlib.status_counts(items)
    if policy == 'all':
        h.ok(set(statuses) <= {'PERSISTED', 'DUPLICATE'},
             'acks are PERSISTED or (re-delivered) DUPLICATE', statuses)
    # Back to normal once the log has space again.
    order = list(sent)
    tail = order[-RATE * 3:]
    tail_st = {}
    by_id = {}
    for _, a, _ in items:
        by_id.setdefault(a.message_id, []).append(a)
    for m in tail:
        for a in by_id.get(m, []):
            k = (cvtest.STATUS.get(a.status), a.stores)
            tail_st[k] = tail_st.get(k, 0) + 1
    h.ok(tail_st and set(tail_st) <= {('PERSISTED', PG | LOG)},
         'after space returned, acks are PERSISTED with both stores again', tail_st)
    behind, _ = h.wait_committed(list(topics))
    h.ok(not behind, 'committed offset = end offset everywhere', behind)
    acks.stop()
    rc = h.broker.stop()
    h.is_(rc, 0, 'broker exits 0 on SIGTERM')
    h.diag('counts: published=%d stored_pg=%d stored_log=%d acks=%d '
           'acked_messages=%d rejected=0 duplicates=%d statuses=%s '
           'acks_while_full=%d (late %d)'
           % (len(sent), len(ids), len(log_ids), len(items), len(by_id),
              statuses.get('DUPLICATE', 0), statuses, len(window), len(late)))
    h.unmount(logdir)
