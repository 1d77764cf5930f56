"""Crash safety: while 50,000 messages are being published, the broker is
killed with SIGKILL at random moments (at least 3) and restarted each time,
each time with the other log.sync_method (syncfs, fdatasync, ...).
Afterwards PostgreSQL and the encrypted log each hold exactly the published
set, no message twice, the log's chain checks, and every message was acked
at least once."""
import collections
import json
import os
import random
import threading
import time

import cvtest

N = 50000
CHANNELS = ['crash%02d' % i for i in range(10)]
PARTITIONS = 4
KILLS = 4
SYNC_METHODS = ['syncfs', 'fdatasync']
seed = int(os.environ.get('CV_CRASH_SEED', str(int(time.time()))))
rnd = random.Random(seed)

topics = {'chat.' + c: PARTITIONS for c in CHANNELS}

with cvtest.Harness('crash', topics=topics, partitions=16) as h:
    h.diag('seed %d (CV_CRASH_SEED=%d reproduces the kill points)' % (seed, seed))
    h.migrate()
    h.start_broker()

    sent = {}
    publish_error = []

    def publish():
        try:
            prod = h.producer()
            prnd = random.Random(seed + 1)
            for i in range(N):
                ch = CHANNELS[i % len(CHANNELS)]
                body = ('%d:' % i).encode() + prnd.randbytes(prnd.randrange(0, 120))
                mid, value = cvtest.chat_message(ch, body)
                sent[mid] = (ch, body)
                prod.send('chat.' + ch, value=value, key=mid.encode())
                # ~2,500 msgs/s: the run lasts ~20 s, long enough that
                # every kill finds the broker storing, restarts included.
                if i % 250 == 249:
                    time.sleep(0.1)
            prod.flush(timeout=120)
        except Exception as e:            # reported by the main thread
            publish_error.append(repr(e))

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()

    # Each kill comes once the running broker has stored a random number of
    # further rows, after a random delay, so that the kills land anywhere in
    # the store/ack/commit cycle of a broker that is busy.
    def rows():
        return h.query('SELECT count(*) FROM chatvault.messages')[0][0]

    kills = 0
    for k in range(KILLS):
        start_rows = rows()
        # The broker can store faster than this loop looks: a target past N
        # would never be reached and only cost the 300 s deadline.
        target = min(start_rows + rnd.randrange(500, N // (KILLS + 2)), N - 1)
        deadline = time.time() + 300
        while time.time() < deadline and h.broker.alive() and rows() < target:
            time.sleep(0.02)
        time.sleep(rnd.uniform(0, 0.3))
        if h.broker.alive():
            rows_then = rows()
            h.broker.kill9()
            kills += 1
            h.diag('kill -9 #%d at %d rows (target %d)' % (kills, rows_then, target))
        else:
            h.diag('broker was not running before kill #%d (exit %s)'
                   % (k + 1, h.broker.p.returncode))
        # Restarts alternate the sync method: the files of one are the
        # files of the other, and both must survive a kill.
        os.environ['CHATVAULT_LOG_SYNC_METHOD'] = SYNC_METHODS[(k + 1) % 2]
        h.diag('restart with log.sync_method = %s' % SYNC_METHODS[(k + 1) % 2])
        h.start_broker()

    publisher.join(timeout=300)
    h.ok(not publisher.is_alive() and not publish_error and len(sent) == N,
         'python3-kafka published %d messages' % N, publish_error)
    h.ok(kills >= 3, 'the broker was killed with SIGKILL %d times while storing '
         '(want >= 3)' % kills)

    # Everything is stored and acked at least once.
    acks_c = h.consumer('chatvault.acks')
    acked = {}
    statuses = {}

    def all_acked(out):
        for r in out[len(all_acked.seen):]:
            a = cvtest.parse_ack(r.value)
            st = cvtest.STATUS.get(a.status, a.status)
            statuses[st] = statuses.get(st, 0) + 1
            acked[a.message_id] = acked.get(a.message_id, 0) + 1
        all_acked.seen = out[:]
        return len(set(acked) & set(sent)) >= N
    all_acked.seen = []

    tps = [cvtest.TopicPartition('chatvault.acks', p)
           for p in sorted(acks_c.partitions_for_topic('chatvault.acks'))]
    firsts, ends = acks_c.beginning_offsets(tps), acks_c.end_offsets(tps)
    h.diag('chatvault.acks (partition: first, end offset): %s' % ', '.join(
        '%d: %d, %d' % (tp.partition, firsts[tp], ends[tp]) for tp in tps if ends[tp]))
    h.drain(acks_c, all_acked, timeout=400, idle=45)
    rows_n = h.wait_rows(N, timeout=60)

    rows = h.query('SELECT channel, message_id, body, kafka_topic, kafka_partition, '
                   'kafka_offset FROM chatvault.messages')
    h.is_(len(rows), N, 'exactly %d rows' % N)
    ids = [r[1] for r in rows]
    h.is_(len(set(ids)), len(ids), 'no message id stored twice')
    h.is_(len({(r[3], r[4], r[5]) for r in rows}), len(rows),
          'no Kafka record stored twice')
    h.ok(set(ids) == set(sent), 'the rows are exactly the published set',
         'missing %d, extra %d' % (len(set(sent) - set(ids)), len(set(ids) - set(sent))))
    wrong = [r[1] for r in rows if r[1] in sent and
             (sent[r[1]][0] != r[0] or sent[r[1]][1] != bytes(r[2]))]
    h.ok(not wrong, 'every row holds the channel and body that were sent', wrong[:5])

    not_acked = set(sent) - set(acked)
    h.ok(not not_acked, 'every message was acked at least once',
         '%d never acked, e.g. %s' % (len(not_acked), sorted(not_acked)[:5]))
    h.ok(set(statuses) <= {'PERSISTED', 'DUPLICATE'},
         'acks are PERSISTED or (re-delivered) DUPLICATE', statuses)
    h.diag('acks: %s; re-acked messages: %d' %
           (statuses, sum(1 for v in acked.values() if v > 1)))

    behind, _ = h.wait_committed(['chat.' + c for c in CHANNELS])
    h.ok(not behind, 'group chatvault committed offset = end offset everywhere',
         'behind (committed, end): %s' % behind)

    rc = h.broker.stop()
    h.is_(rc, 0, 'the last broker exits 0 on SIGTERM')

    # The log: every published message, no Kafka record twice (a kill -9
    # re-delivers, the log skips what it holds), and the chain checks. The
    # log is keyed by Kafka coordinates, not message ids: a producer retry
    # that wrote a message twice to Kafka is rightly in it twice.
    c = h.run('log', 'cat', timeout=300)
    recs = [json.loads(line) for line in c.stdout.splitlines() if line.strip()]
    log_ids = [r['message_id'] for r in recs]
    h.ok(c.returncode == 0 and set(log_ids) == set(sent),
         'the log holds exactly the published set',
         'exit %d, missing %d, extra %d: %s' % (
             c.returncode, len(set(sent) - set(log_ids)), len(set(log_ids) - set(sent)),
             c.stderr[-500:]))
    coords = [(r['topic'], r['partition'], r['offset']) for r in recs]
    h.is_(len(set(coords)), len(coords), 'no Kafka record twice in the log')
    # Each message id as often as Kafka holds it: once, unless a producer
    # retry wrote it twice; never more because of the kills.
    kafka_ids = []
    for t in topics:
        kc = h.consumer(t)
        parts = list(kc.assignment())
        want = sum(kc.end_offsets(parts).values()) - sum(
            kc.beginning_offsets(parts).values())
        for rec in h.drain(kc, lambda out: len(out) >= want, timeout=120):
            m = cvtest.pb.ChatMessage()
            m.ParseFromString(rec.value)
            kafka_ids.append(m.message_id)
    extra = collections.Counter(log_ids) - collections.Counter(kafka_ids)
    short = collections.Counter(kafka_ids) - collections.Counter(log_ids)
    h.ok(not extra and not short,
         'each message id is in the log as often as in Kafka',
         'more often in the log: %s; less often: %s' % (
             list(extra.items())[:5], list(short.items())[:5]))
    c = h.run('log', 'check', timeout=300)
    h.ok(c.returncode == 0, '`chatvault log check` passes after the kills',
         'exit %d: %s' % (c.returncode, (c.stdout + c.stderr)[-500:]))
