"""The PostgreSQL outage scenario of test_pg_down_all.py and
test_pg_down_any.py: messages flow at a steady rate; a private PostgreSQL is
stopped with `pg_ctl stop -m immediate` for OUTAGE seconds mid-run and started
again; the checks depend on ack.policy."""
import os
import subprocess
import time

import faultlib
from faultlib import cvtest

CHANNELS = ['pgdown%d' % i for i in range(4)]
PARTITIONS = 4
RATE = 400               # messages per second
BEFORE = 10              # seconds of traffic before the outage
OUTAGE = float(os.environ.get('CV_FAULT_PG_OUTAGE', '32'))
AFTER = 20               # seconds of traffic after PostgreSQL returns
SETTLE = 5               # acks of batches in flight at the stop may still come
BATCH = 5000             # batch.max_messages: the in-flight allowance
LOG = 2                  # DeliveryAck.stores bits
PG = 1
BOTH_AT, BOTH_S = 8, 12  # (both) log full from 8 s into the outage, for 12 s


def run(policy, crash=False, both=False):
    """CRASH: the broker is killed with SIGKILL halfway through the outage
    and started again once PostgreSQL is back, so what it acked DEGRADED
    before dying must be backfilled by the next broker, from the log, on
    assignment (cv_stores_resume_offsets).
    BOTH: log.dir is a tmpfs that is also full for BOTH_S seconds in the
    middle of the outage: with neither store, nothing may be acked."""
    if both:
        faultlib.need_root('log.dir on a tmpfs')
    port = faultlib.free_port()
    total = int(RATE * (BEFORE + OUTAGE + AFTER))
    topics = {'chat.' + c: PARTITIONS for c in CHANNELS}
    name = 'pg_down_' + policy + ('_crash' if crash else '') + ('_both' if both else '')
    with faultlib.FaultHarness(name, topics=topics, partitions=8,
                               private_pg=True,
                               config={'ack.policy': policy,
                                       'batch.max_messages': BATCH,
                                       'http.listen': '127.0.0.1:%d' % port}) as h:
        logdir = os.path.join(h.tmp, 'log')
        if both:
            h.mount_tmpfs(logdir, '64m')
        h.migrate()
        h.start_broker()
        acks = faultlib.AckCollector(h)
        acks.start()
        pub = faultlib.Publisher(h, CHANNELS, total, RATE)
        pub.start()
        base = 'http://127.0.0.1:%d' % port

        # Running normally first.
        deadline = time.time() + 120
        while time.time() < deadline and acks.count() < RATE * BEFORE // 2:
            time.sleep(0.2)
        time.sleep(max(0, BEFORE - (time.time() - deadline + 120)))
        st, body = faultlib.http_get(base + '/readyz')
        h.diag('/readyz before the outage: %s %s' % (st, body.strip()))
        http_on = st in (200, 503)

        t_stop = time.time()
        h.private_pg.stop_immediate()
        h.diag('injected: pg_ctl stop -m immediate at t=%.1f (acks so far %d)'
               % (t_stop, acks.count()))
        ready_during = []
        committed = []
        killed = False
        t_fill = t_free = None
        filler = os.path.join(logdir, 'filler')
        while time.time() < t_stop + OUTAGE:
            time.sleep(1)
            if crash and not killed and time.time() > t_stop + OUTAGE / 2:
                committed.append(h.group_offsets(list(topics)))
                h.broker.kill9()
                killed = True
                h.diag('injected: kill -9 of the broker %.0f s into the outage '
                       '(acks so far %d)' % (time.time() - t_stop, acks.count()))
            if both and t_fill is None and time.time() > t_stop + BOTH_AT:
                subprocess.run(['dd', 'if=/dev/zero', 'of=' + filler, 'bs=64k'],
                               capture_output=True)
                t_fill = time.time()
                h.diag('injected: log.dir full too, %.0f s into the outage '
                       '(acks so far %d)' % (t_fill - t_stop, acks.count()))
            if both and t_fill and not t_free and time.time() > t_fill + BOTH_S:
                t_free = time.time()
                os.unlink(filler)
                h.diag('injected: log.dir space back after %.0f s' % (t_free - t_fill))
            if time.time() > t_stop + SETTLE and not committed:
                committed.append(h.group_offsets(list(topics)))
            if time.time() > t_stop + 15 and http_on and len(ready_during) < 5:
                ready_during.append(faultlib.http_get(base + '/readyz'))
        committed.append(h.group_offsets(list(topics)))
        t_restart = time.time()
        h.private_pg.start()
        h.diag('injected: PostgreSQL started again after %.1f s' % (t_restart - t_stop))
        if crash:
            h.start_broker()
            h.diag('injected: broker started again')
        else:
            h.ok(h.broker.alive(), 'the broker kept running through the outage')

        items = acks.snapshot()
        window = [x for x in items if t_stop < x[0] < t_restart]
        late = [x for x in window if x[0] > t_stop + SETTLE]
        h.diag('acks received during the outage: %d (%d after the first %d s): %s'
               % (len(window), len(late), SETTLE, faultlib.status_counts(window)))

        c_first = sum(max(c or 0, 0) for c, _ in committed[0].values())
        c_last = sum(max(c or 0, 0) for c, _ in committed[-1].values())
        h.diag('committed offsets (sum over partitions) %d s into the outage: %d; '
               'at its end: %d' % (SETTLE, c_first, c_last))
        if policy == 'all':
            h.is_(c_last, c_first, 'no offset committed while PostgreSQL is down')
            h.ok(len(window) <= BATCH, 'at most one batch in flight (%d) acked after '
                 'the stop: %d' % (BATCH, len(window)))
            h.is_(len(late), 0, 'no ack arrives while PostgreSQL is down '
                  '(after %d s of settling)' % SETTLE)
            claimed = [a for _, a, _ in items if a.persisted_at_us > (t_stop + 1) * 1e6
                       and a.persisted_at_us < t_restart * 1e6]
            h.is_(len(claimed), 0, 'no ack claims a persist time inside the outage')
            if http_on:
                h.ok(ready_during and all(s == 503 for s, _ in ready_during),
                     '/readyz is not ready while PostgreSQL is down',
                     ready_during)
                h.diag('/readyz during the outage: %s' % ready_during[:1])
            else:
                h.diag('/readyz not served (http.listen): check skipped')
        else:
            h.ok(c_last > c_first, 'offsets keep being committed while PostgreSQL '
                 'is down (on the log alone)')
            h.ok(len(late) >= RATE * (OUTAGE - SETTLE) / 4,
                 'acks keep flowing while PostgreSQL is down (%d)' % len(late))
            bad = [(cvtest.STATUS.get(a.status), a.stores) for _, a, _ in late
                   if cvtest.STATUS.get(a.status) != 'DEGRADED' or a.stores != LOG]
            if both:
                none = [x for x in items if t_fill + SETTLE < x[0] < t_free]
                h.is_(len(none), 0, 'no ack while both stores are down (%.0f s, '
                      'after %d s of settling)' % (t_free - t_fill - SETTLE, SETTLE))
                after = [x for x in items if t_free + SETTLE < x[0] < t_restart]
                h.ok(after, 'acks flow again (DEGRADED) once the log has space: %d'
                     % len(after))
            h.ok(late and not bad, 'every ack during the outage is DEGRADED with '
                 'stores = log only', 'not so: %d, e.g. %s' % (len(bad), bad[:5]))
            if http_on:
                h.diag('/readyz during the outage: %s' % ready_during[:1])

        pub.join(timeout=600)
        h.ok(not pub.is_alive() and not pub.errors and len(pub.sent) == total,
             'python3-kafka published %d messages (published %d)'
             % (total, len(pub.sent)), pub.errors[:5])
        sent = dict(pub.sent)
        missing = acks.wait_all(sent, timeout=600, idle=120, alive=h.broker.alive)
        h.ok(not missing, 'every published message acked at least once',
             '%d never acked, e.g. %s' % (len(missing), sorted(missing)[:5]))
        rows_n = h.wait_rows(len(sent), timeout=300)
        t_end = time.time()
        time.sleep(3)           # stragglers
        items = acks.snapshot()

        # Stores.
        ids = faultlib.pg_ids(h)
        faultlib.check_store(h, 'PostgreSQL', ids, sent)
        rows = h.query('SELECT channel, message_id, body FROM chatvault.messages')
        wrong = [m for c, m, b in rows if m in sent and sent[m] != (c, bytes(b))]
        h.ok(not wrong, 'every row holds the channel and body sent', wrong[:5])
        logrecs = faultlib.log_cat(h)
        log_ids = [r['message_id'] for r in logrecs]
        faultlib.check_store(h, 'the log', log_ids, sent)
        faultlib.check_verify(h)

        statuses = faultlib.status_counts(items)
        by_id = {}
        for _, a, _ in items:
            by_id.setdefault(a.message_id, []).append(a)
        if policy == 'all':
            h.ok(set(statuses) <= {'PERSISTED', 'DUPLICATE'},
                 'acks are PERSISTED or (re-delivered) DUPLICATE', statuses)
            h.ok(all(a.stores == PG | LOG for _, a, _ in items
                     if cvtest.STATUS.get(a.status) == 'PERSISTED'),
                 'every PERSISTED ack names both stores')
        else:
            degraded = {m for m, l in by_id.items()
                        if any(cvtest.STATUS.get(a.status) == 'DEGRADED' for a in l)}
            h.ok(degraded and degraded <= set(ids),
                 'PostgreSQL was backfilled with the %d messages acked DEGRADED'
                 % len(degraded), 'not in PG: %d' % len(degraded - set(ids)))
            # Back to normal: the acks of the last messages published.
            order = [m for m in sent]       # publish (callback) order
            tail = order[-RATE * 3:]
            tail_st = {}
            for m in tail:
                for a in by_id.get(m, []):
                    k = (cvtest.STATUS.get(a.status), a.stores)
                    tail_st[k] = tail_st.get(k, 0) + 1
            h.ok(tail_st and set(tail_st) <= {('PERSISTED', PG | LOG), ('DUPLICATE', PG | LOG),
                                              ('DUPLICATE', PG)},
                 'after PostgreSQL returned, acks are PERSISTED with both stores '
                 'again', tail_st)
            # In order: per partition, rows by offset were stored at
            # non-decreasing times (a backfill that skipped ahead and came
            # back would show as a later offset stored earlier).
            rows = h.query('SELECT kafka_topic, kafka_partition, kafka_offset, '
                           'persisted_at FROM chatvault.messages '
                           'ORDER BY 1, 2, 3')
            out_of_order = [(t, p, o) for (t, p, o, at), (t0_, p0, _, at0)
                            in zip(rows[1:], rows[:-1])
                            if (t, p) == (t0_, p0) and at < at0]
            h.ok(not out_of_order, 'PostgreSQL was filled in offset order within '
                 'each partition', '%d rows stored before a lower offset, e.g. %s'
                 % (len(out_of_order), out_of_order[:3]))
            log = h.broker_log()
            h.ok('backfill' in log, 'the broker logged the backfill',
                 [l for l in log.splitlines() if 'postgres' in l][-5:])

        behind, _ = h.wait_committed(list(topics))
        h.ok(not behind, 'committed offset = end offset everywhere', behind)
        dup_acked = sum(1 for l in by_id.values() if len(l) > 1)
        h.diag('counts: published=%d stored_pg=%d stored_log=%d acks=%d '
               'acked_messages=%d re-acked=%d rejected=0 statuses=%s '
               'outage_acks=%d (late %d) rows_wait=%d in %.0fs'
               % (len(sent), len(ids), len(log_ids), len(items),
                  len(set(by_id) & set(sent)), dup_acked, statuses, len(window),
                  len(late), rows_n, t_end - t_restart))
        acks.stop()
        rc = h.broker.stop()
        h.is_(rc, 0, 'broker exits 0 on SIGTERM')
        if both:
            h.unmount(logdir)
