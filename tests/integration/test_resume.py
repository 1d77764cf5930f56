"""Where consumption resumes. Kafka's committed offset wins; where it is past
the partition's end (the topic was deleted and created again, so its
offsets start over) the broker must not wait there and skip what the
partition holds: librdkafka's auto.offset.reset = earliest, which the broker
sets, starts such a partition from its beginning."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cvtest  # noqa: E402
from kafka import KafkaConsumer, TopicPartition  # noqa: E402
from kafka.structs import OffsetAndMetadata  # noqa: E402

N = 40
TOPIC = 'chat.resume'

with cvtest.Harness('resume', topics={TOPIC: 2}) as h:
    h.migrate()
    # The group's committed offsets, as a broker on the topic's earlier
    # incarnation left them: far past anything the topic holds now.
    c = KafkaConsumer(bootstrap_servers=h.bootstrap, group_id='chatvault',
                      enable_auto_commit=False)
    tps = [TopicPartition(TOPIC, p) for p in (0, 1)]
    c.commit({tp: OffsetAndMetadata(5000, None) for tp in tps})
    committed = {tp.partition: c.committed(tp) for tp in tps}
    c.close()
    h.is_(committed, {0: 5000, 1: 5000},
          'the group starts with committed offset 5000 on both partitions')

    prod = h.producer()
    ids = set()
    for i in range(N):
        mid, value = cvtest.chat_message('resume', b'after the topic was recreated %d' % i)
        prod.send(TOPIC, value=value, partition=i % 2)
        ids.add(mid)
    prod.flush()

    h.start_broker()
    n = h.wait_rows(N, timeout=120)
    h.is_(n, N, 'every record of the recreated topic is stored')
    got = {r[0] for r in h.query('SELECT message_id FROM chatvault.messages')}
    h.ok(got == ids, 'exactly the published message ids are stored')

    _, offs = h.wait_committed([TOPIC])
    offs = {tp.partition: v for tp, v in offs.items()}
    h.ok(offs and all(committed == end for committed, end in offs.values()),
         'the committed offsets came back to the partitions\' ends',
         'committed, end per partition: %s' % offs)
