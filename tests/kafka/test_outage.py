"""Every Kafka node down for 30 s (kill -9 of all three) while chatvault runs
under load (python3-kafka publishes before and after): chatvault does not exit, reports the outage
(/readyz 503 naming Kafka, chatvault_kafka_up 0 on /metrics), and once the
nodes are started again resumes on its own: every message acked, the stores
hold each once, the committed offsets reach the end, /readyz 200 again."""
import time

import faultlib
import kafkalib

N = 9000
RATE = 300
DOWN = 30

with kafkalib.KHarness('outage', channels=2, partitions=4) as h:
    port = faultlib.free_port()
    h.extra_config['http.listen'] = '127.0.0.1:%d' % port
    h.write_config()
    url = 'http://127.0.0.1:%d' % port
    h.migrate()
    h.start_broker()
    acks = h.acks()
    acks.start()
    pub = h.publisher(N, RATE)
    pub.start()
    while acks.count() < 1500 and h.broker.alive():
        time.sleep(0.2)
    code, body = faultlib.http_get(url + '/readyz')
    h.is_(code, 200, '/readyz 200 before the outage')
    # python3-kafka expires a batch 30 s after it was made, whatever its
    # retries: the publisher pauses over the outage and its last batches are
    # delivered before the kill. What it published is consumed or waits.
    pub.paused.set()
    time.sleep(2)
    pids = h.node_pids()
    for node in range(1, len(pids) + 1):
        h.kill_node(node)
    t_down = time.time()
    h.diag('injected: kill -9 of all %d Kafka nodes %s, %d published, %d acks'
           % (len(pids), pids, pub.attempted, acks.count()))
    ready, metric = [], []
    while time.time() - t_down < DOWN:
        time.sleep(3)
        c, b = faultlib.http_get(url + '/readyz')
        ready.append((round(time.time() - t_down), c, b.strip()[:200]))
        c, m = faultlib.http_get(url + '/metrics')
        metric.append([l for l in (m or '').splitlines()
                       if l.startswith('chatvault_kafka_up')])
    h.ok(h.broker.alive(), 'chatvault still runs after %d s without Kafka' % DOWN)
    late = [r for r in ready if r[0] >= 15]
    h.ok(late and all(c == 503 and 'kafka' in b.lower() for _, c, b in late),
         '/readyz answers 503 naming Kafka from 15 s into the outage', ready)
    h.ok(any(m and m[0].split()[-1] == '0' for m in metric[-3:]),
         '/metrics: chatvault_kafka_up 0 during the outage', metric[-3:])
    h.diag('/readyz during the outage: %s' % ready[-2:])
    took = h.start_nodes()
    t_up = time.time()
    pub.paused.clear()
    h.diag('all nodes started again (%.1f s)' % took)
    pub.join(timeout=300)
    sent = dict(pub.sent)
    h.ok(not pub.errors and len(sent) == N, 'python3-kafka published %d' % N,
         pub.errors[:3])
    missing = acks.wait_all(sent, timeout=300, idle=120, alive=h.broker.alive)
    h.ok(not missing, 'every message acked after the outage',
         '%d missing, e.g. %s' % (len(missing), sorted(missing)[:3]))
    behind, _ = h.wait_committed(list(h.topics), timeout=90)
    h.ok(not behind, 'committed offset = end offset everywhere', behind)
    deadline = time.time() + 60
    while time.time() < deadline:
        code, body = faultlib.http_get(url + '/readyz')
        if code == 200:
            break
        time.sleep(1)
    h.is_(code, 200, '/readyz 200 again after the outage (%.0f s after the nodes '
          'came back)' % (time.time() - t_up))
    items = acks.snapshot()
    acks.stop()
    h.is_(h.broker.stop(), 0, 'chatvault exits 0 on SIGTERM')
    faultlib.check_store(h, 'PostgreSQL', faultlib.pg_ids(h), sent)
    records = faultlib.kafka_records(h, h.topics)
    faultlib.check_log(h, 'the log', faultlib.log_cat(h), sent, records)
    st = faultlib.status_counts(items)
    h.ok(set(st) <= {'PERSISTED', 'DUPLICATE'},
         'acks are PERSISTED or (re-delivered) DUPLICATE', st)
