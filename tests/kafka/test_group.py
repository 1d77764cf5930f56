"""Several chatvault instances in one consumer group on a real cluster, with
real rebalances: instances a and b share 4 channels x 6 partitions under
load, c joins, then b is killed (kill -9). Assignment strategy:
cooperative-sticky (kafka.partition.assignment.strategy), so a join or a
death moves only the partitions that must move while the others keep
flowing, where the eager strategies stop every member for each rebalance.
Afterwards every message is acked, PostgreSQL holds each once, the merged
logs (log cat --log-dir x3) hold each Kafka record once and pass log check
and verify, and both survivors were assigned partitions."""
import collections
import re
import time

import faultlib
import kafkalib

N = 30000
RATE = 1200
STRATEGY = 'cooperative-sticky'

with kafkalib.KHarness('group', channels=4, partitions=6,
                       config={'kafka.partition.assignment.strategy': STRATEGY}) as h:
    h.migrate()
    h.start_instance('a')
    h.start_instance('b')
    acks = h.acks()
    acks.start()
    t0 = time.time()
    sampler = faultlib.OffsetSampler(h, list(h.topics), every=2)
    sampler.start()
    pub = h.publisher(N, RATE)
    pub.start()
    while pub.attempted < 0.3 * N and pub.is_alive():
        time.sleep(0.1)
    h.start_instance('c')
    h.diag('injected: instance c joins at %.1f s, %d published, %d acks'
           % (time.time() - t0, pub.attempted, acks.count()))
    while pub.attempted < 0.6 * N and pub.is_alive():
        time.sleep(0.1)
    b = h.instances['b'][0]
    alive = b.alive()
    b.kill9()
    h.diag('injected: kill -9 of instance b at %.1f s, %d published, %d acks'
           % (time.time() - t0, pub.attempted, acks.count()))
    h.ok(alive, 'instance b was running when killed')
    pub.join(timeout=300)
    h.ok(not pub.errors and len(pub.sent) == N, 'python3-kafka published %d' % N,
         pub.errors[:3])
    sent = dict(pub.sent)
    missing = acks.wait_all(sent, timeout=300, idle=90)
    h.ok(not missing, 'every message acked',
         '%d never acked, e.g. %s' % (len(missing), sorted(missing)[:3]))
    items = faultlib.check_commits(h, sampler, acks, h.topics, t0, timeout=90,
                                   min_samples=5)
    for n in ('a', 'c'):
        p = h.instances[n][0]
        h.ok(p.alive(), 'instance %s still runs' % n)
        h.is_(p.stop(timeout=120), 0, 'instance %s exits 0 on SIGTERM' % n)
    assigned = {}
    for n in ('a', 'b', 'c'):
        log = h.read_log('a' if n == 'a' else n)
        assigned[n] = len(re.findall(r'msg="partition assigned"', log))
    h.ok(assigned['c'] > 0 and assigned['a'] > 0,
         'the joining instance c and the survivor a were assigned partitions '
         '(assignments logged: %s)' % assigned)
    faultlib.check_store(h, 'PostgreSQL', faultlib.pg_ids(h), sent)
    dirs = [h.instances[n][2] for n in ('a', 'b', 'c')]
    merged = faultlib.log_cat(h, dirs=dirs)
    records = faultlib.kafka_records(h, h.topics)
    faultlib.check_log(h, 'the merged log (log cat --log-dir x3)', merged, sent, records)
    faultlib.check_verify(h, dirs=dirs)
    args = ['log', 'check']
    for d in dirs:
        args += ['--log-dir', d]
    r = h.run(*args, timeout=300)
    h.ok(r.returncode == 0, '`chatvault log check` over the three dirs: exit 0',
         r.stderr[-1000:])
    per_dir = {}
    for n, d in zip('abc', dirs):
        try:
            per_dir[n] = len(faultlib.log_cat(h, dirs=[d]))
        except Exception as e:
            per_dir[n] = repr(e)[:100]
    st = faultlib.status_counts(items)
    h.ok(set(st) <= {'PERSISTED', 'DUPLICATE'},
         'acks are PERSISTED or (re-delivered) DUPLICATE', st)
    h.diag('counts: published=%d records=%d acks=%d statuses=%s log records per '
           'instance=%s strategy=%s' % (len(sent), records, len(items), st, per_dir,
                                        STRATEGY))
