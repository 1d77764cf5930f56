"""kill -9 of chatvault under load on a real 3-node cluster, several times:
python3-kafka publishes 30,000 messages over 4 channels x 4 partitions while
chatvault is killed (SIGKILL) 3 times, each time once it has stored more, and
restarted. Afterwards: every message acked, PostgreSQL and the log each hold
the published set once (no Kafka record twice), verify agrees, the group's
committed offsets reach the end, and no sample of them ever passed a record
whose ack had not been produced."""
import collections
import os
import random
import time

import faultlib
import kafkalib

N = 30000
RATE = 1000
KILLS = 3
seed = int(os.environ.get('CV_CRASH_SEED', str(int(time.time()))))
rnd = random.Random(seed)

with kafkalib.KHarness('crash', channels=4, partitions=4) as h:
    h.diag('seed %d (CV_CRASH_SEED reproduces the kill points)' % seed)
    h.migrate()
    h.start_broker()
    acks = h.acks()
    acks.start()
    t0 = time.time()
    sampler = faultlib.OffsetSampler(h, list(h.topics), every=2)
    sampler.start()
    pub = h.publisher(N, RATE, seed=seed)
    pub.start()

    kills = kafkalib.kill_cycles(h, pub, rnd, KILLS, t0)

    pub.join(timeout=300)
    h.ok(not pub.errors and len(pub.sent) == N,
         'python3-kafka published %d messages' % N, pub.errors[:3])
    h.ok(len(kills) == KILLS and all(k[3] for k in kills) and
         kills[-1][2] < N, '%d kill -9 of a running chatvault while messages '
         'were still being published' % KILLS, kills)
    sent = dict(pub.sent)
    missing = acks.wait_all(sent, timeout=300, idle=90, alive=h.broker.alive)
    h.ok(not missing, 'every message acked at least once',
         '%d never acked, e.g. %s' % (len(missing), sorted(missing)[:3]))
    h.wait_rows(len(sent), timeout=60)
    h.ok(h.broker.alive(), 'the last chatvault still runs')
    items = faultlib.check_commits(h, sampler, acks, h.topics, t0, timeout=60,
                                   min_samples=5)
    rc = h.broker.stop()
    h.is_(rc, 0, 'chatvault exits 0 on SIGTERM at the end')
    rows_ = h.query('SELECT message_id, kafka_topic, kafka_partition, kafka_offset '
                    'FROM chatvault.messages')
    faultlib.check_store(h, 'PostgreSQL', [r[0] for r in rows_], sent)
    records = faultlib.kafka_records(h, h.topics)
    recs = faultlib.log_cat(h)
    faultlib.check_log(h, 'the log', recs, sent, records)
    faultlib.check_verify(h)
    r = h.run('log', 'check', timeout=300)
    h.ok(r.returncode == 0, '`chatvault log check`: exit 0', r.stderr[-1000:])
    st = faultlib.status_counts(items)
    h.ok(set(st) <= {'PERSISTED', 'DUPLICATE'},
         'acks are PERSISTED or (re-delivered) DUPLICATE', st)
    per = collections.Counter(a.message_id for _, a, _ in items)
    h.diag('counts: published=%d records=%d stored_pg=%d stored_log=%d acks=%d '
           're-acked=%d statuses=%s kills=%s'
           % (len(sent), records, len(rows_), len(recs), len(items),
              sum(1 for v in per.values() if v > 1), st, kills))
