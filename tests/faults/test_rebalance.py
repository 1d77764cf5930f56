"""Rebalance under load: 3 broker instances in one consumer group, each with
its own log.dir (consumer/applog/FORMAT.md,
"Many instances"), are killed (kill -9)
and stopped (SIGTERM) and restarted while 200,000 messages flow over 8
channels x 8 partitions. Afterwards every message is stored once in
PostgreSQL, once in the merged view of the three logs (`chatvault log cat
--log-dir A --log-dir B --log-dir C`), the merged logs pass `chatvault log
check`, and every message was acked at least once."""
import collections
import os
import time

import faultlib

N = int(os.environ.get('CV_FAULT_REBALANCE_N', '200000'))
CHANNELS = ['rb%d' % i for i in range(8)]
PARTITIONS = 8
RATE = 4000
NAMES = ['a', 'b', 'c']
# (fraction of N published, instance, action)
PLAN = [(0.10, 'b', 'kill'), (0.22, 'c', 'term'), (0.34, 'a', 'kill'),
        (0.46, 'b', 'term'), (0.58, 'c', 'kill'), (0.70, 'a', 'term'),
        (0.82, 'b', 'kill')]

topics = {'chat.' + c: PARTITIONS for c in CHANNELS}
with faultlib.FaultHarness('rebalance', topics=topics, partitions=32) as h:
    h.migrate()
    for n in NAMES:
        h.start_instance(n)
    acks = faultlib.AckCollector(h)
    acks.start()
    pub = faultlib.Publisher(h, CHANNELS, N, RATE, body_max=80)
    pub.start()
    t0 = time.time()
    sampler = faultlib.OffsetSampler(h, topics, every=3)
    sampler.start()

    term_rcs = []
    kills = 0
    last_acks = 0
    for frac, name, action in PLAN:
        # Each event once the publisher is that far AND the group stored
        # more since the last one, so that every kill lands on instances
        # that are busy storing, not on a group still rebalancing.
        deadline = time.time() + 180
        while time.time() < deadline and (
                (pub.is_alive() and pub.attempted < frac * N)
                or acks.count() < last_acks + N // 40):
            time.sleep(0.1)
        last_acks = acks.count()
        p = h.instances[name][0]
        alive = p.alive()
        if action == 'kill':
            p.kill9()
            kills += 1
        else:
            t = time.time()
            rc = p.stop(timeout=120)
            term_rcs.append((name, rc, round(time.time() - t, 1)))
        h.diag('injected: %s instance %s at %d published, %d acks (it was %s)'
               % ('kill -9' if action == 'kill' else 'SIGTERM', name, pub.attempted,
                  acks.count(), 'running' if alive else 'NOT running'))
        time.sleep(2)
        h.start_instance(name)

    pub.join(timeout=900)
    h.ok(not pub.errors and len(pub.sent) == N,
         'python3-kafka published %d messages' % N, pub.errors[:3])
    h.ok(kills >= 3 and len(term_rcs) >= 3,
         '%d kill -9 and %d SIGTERM of instances while messages flowed'
         % (kills, len(term_rcs)))
    h.ok(all(rc == 0 for _, rc, _ in term_rcs),
         'every SIGTERM-ed instance exited 0', term_rcs)
    sent = dict(pub.sent)
    missing = acks.wait_all(sent, timeout=900, idle=180)
    h.ok(not missing, 'every message acked at least once',
         '%d never acked, e.g. %s' % (len(missing), sorted(missing)[:5]))
    h.wait_rows(len(sent), timeout=300)
    items = faultlib.check_commits(h, sampler, acks, topics, t0, timeout=120,
                                   min_samples=10)
    for n in NAMES:
        rc = h.instances[n][0].stop(timeout=120)
        h.is_(rc, 0, 'instance %s exits 0 on SIGTERM at the end' % n)

    rows = h.query('SELECT message_id, kafka_topic, kafka_partition, kafka_offset '
                   'FROM chatvault.messages')
    ids = [r[0] for r in rows]
    faultlib.check_store(h, 'PostgreSQL', ids, sent)
    h.is_(len({r[1:] for r in rows}), len(rows), 'PostgreSQL: no Kafka record twice')

    dirs = [h.instances[n][2] for n in NAMES]
    per_dir = {}
    for n, d in zip(NAMES, dirs):
        try:
            per_dir[n] = len(faultlib.log_cat(h, dirs=[d]))
        except Exception as e:
            per_dir[n] = repr(e)[:200]
    h.diag('log records per instance dir: %s (a record re-delivered after a '
           'rebalance may be in two)' % per_dir)
    merged = faultlib.log_cat(h, dirs=dirs)
    log_ids = [r['message_id'] for r in merged]
    records = faultlib.kafka_records(h, topics)
    faultlib.check_log(h, 'the merged log (log cat --log-dir x3)', merged, sent,
                       records)
    coords = collections.Counter((r['topic'], r['partition'], r['offset'])
                                 for r in merged)
    h.ok(max(coords.values() or [1]) == 1, 'the merged log: no Kafka record twice')
    faultlib.check_verify(h, dirs=dirs)
    args = ['log', 'check']
    for d in dirs:
        args += ['--log-dir', d]
    r = h.run(*args, timeout=600)
    h.ok(r.returncode == 0, '`chatvault log check` over the three dirs: exit 0',
         (r.returncode, r.stderr[-2000:]))

    statuses = faultlib.status_counts(items)
    h.ok(set(statuses) <= {'PERSISTED', 'DUPLICATE'},
         'acks are PERSISTED or (re-delivered) DUPLICATE', statuses)
    per_msg = collections.Counter(a.message_id for _, a, _ in items)
    h.diag('counts: published=%d stored_pg=%d stored_log_merged=%d per_dir=%s '
           'acks=%d acked_messages=%d re-acked=%d rejected=0 statuses=%s '
           'kills=%d sigterms=%s'
           % (len(sent), len(ids), len(log_ids), per_dir, len(items),
              len(set(per_msg) & set(sent)),
              sum(1 for v in per_msg.values() if v > 1), statuses, kills, term_rcs))
