"""A refused offset commit is tried again (issue 14): Kafka answers the
broker's commits of the last batches before a quiet spell with
NOT_COORDINATOR (as a real cluster does while the group coordinator moves;
seen in tests/kafka/test_crash.py), and no further traffic comes to commit
past them. The committed offsets must still reach the end offsets, soon,
without a restart, and the log says the commit went again.

Injected through `chatvault dev-kafka --control`: OffsetCommit (API key 8)
fails 20 times in a row with error 16 (NOT_COORDINATOR) right before the last burst
of messages; the burst is acked, and then the group's committed offsets are
read from Kafka by python3-kafka."""
import time

import cvtest
import faultlib

CHANNELS = ['cr0', 'cr1']
topics = {'chat.' + c: 2 for c in CHANNELS}
with faultlib.FaultHarness('commit_retry', topics=topics, partitions=2,
                           control=True) as h:
    h.migrate()
    h.start_broker()
    prod = h.producer()
    n = 0

    def burst(count):
        global n
        for i in range(count):
            ch = CHANNELS[i % 2]
            _, v = cvtest.chat_message(ch, b'commit retry %d' % n)
            prod.send('chat.' + ch, value=v)
            n += 1
        prod.flush(timeout=60)

    burst(200)
    h.is_(h.wait_rows(n, timeout=120), n, 'a first burst is stored')
    behind, _ = h.wait_committed(list(topics), timeout=60)
    h.ok(not behind, 'and committed to its end', behind)

    h.control('request-errors 8 20 16')
    burst(50)
    h.is_(h.wait_rows(n, timeout=120), n, 'the last burst is stored while Kafka '
          'refuses commits')
    t0 = time.time()
    behind, offs = h.wait_committed(list(topics), timeout=90)
    h.ok(not behind, 'its offsets are committed all the same, %.1f s later, with no '
         'more traffic and no restart' % (time.time() - t0), behind)
    log = h.broker_log()
    h.ok('offset commit again after a refusal' in log,
         'the broker logs that it committed again after the refusal')
    h.ok(h.broker.alive(), 'the broker runs on')
