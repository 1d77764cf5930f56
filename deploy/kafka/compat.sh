#!/usr/bin/env bash
# deploy/kafka/compat.sh — which clients on this machine work with the Kafka
# that deploy/kafka.sh runs (README, "Real Apache Kafka: compatibility").
#
#   deploy/kafka/compat.sh        against the running deploy/kafka.sh cluster
#
# Checks, one line each (ok / FAIL what: detail):
#   librdkafka (the system's, the one chatvault links): compat_probe.c
#   python3-kafka (Debian's, the tests' independent client): produce,
#     group consume + commit, offsets, admin calls, SASL/SCRAM-SHA-512
#   Kafka's own tools from the jars: kafka-topics, kafka-console-consumer,
#     kafka-consumer-groups --describe
# Exit 0 when everything is ok.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
k=$root/deploy/kafka.sh
eval "$("$k" env)"
cache=${CV_KAFKA_CACHE:-$root/.kafka}
topic=compat.$(date +%s)
fail=0

echo "Kafka $(basename "$(ls "$cache"/lib/kafka_2.13-*.jar)" .jar | sed 's/kafka_2.13-//'), $KAFKA_NODES node(s) at $KAFKA_BOOTSTRAP"
"$k" tool kafka-topics --bootstrap-server "$KAFKA_BOOTSTRAP" --create --topic "$topic" \
    --partitions 3 --replication-factor "$((KAFKA_NODES < 3 ? KAFKA_NODES : 3))" \
    2>/dev/null | grep -v WARNING | sed "s/^/ok kafka-topics --create: /" || { echo "FAIL kafka-topics --create"; fail=1; }

cc -std=c11 -O1 -o "$cache/compat_probe" "$root/deploy/kafka/compat_probe.c" \
    $(pkg-config --cflags --libs rdkafka) || { echo "FAIL building compat_probe (librdkafka-dev)"; exit 1; }
"$cache/compat_probe" "$KAFKA_BOOTSTRAP" "$topic" 2>/dev/null || fail=1

/usr/bin/python3 - "$KAFKA_BOOTSTRAP" "$KAFKA_SASL_BOOTSTRAP" "$KAFKA_SASL_PASSWORD" "$topic" <<'PY' || fail=1
import sys, time
import kafka
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
boot, sasl_boot, pw, topic = sys.argv[1].split(','), sys.argv[2].split(','), sys.argv[3], sys.argv[4]
failed = 0
def report(ok, what, detail):
    global failed
    print('%s python3-kafka %s %s: %s' % ('ok' if ok else 'FAIL', kafka.__version__, what, detail), flush=True)
    failed += not ok
def attempt(what, fn):
    try:
        ok, detail = fn()
    except Exception as e:
        ok, detail = False, repr(e)
    report(ok, what, detail)
def produce():
    p = KafkaProducer(bootstrap_servers=boot, acks='all')
    fs = [p.send(topic, b'py-%d' % i) for i in range(100)]
    p.flush(30)
    n = sum(1 for f in fs if f.succeeded())
    return n == 100, '%d of 100 acked (acks=all), api_version %s' % (n, p.config['api_version'])
def group():
    c = KafkaConsumer(topic, bootstrap_servers=boot, group_id=topic + '-py',
                      auto_offset_reset='earliest', enable_auto_commit=False,
                      consumer_timeout_ms=20000)
    n = 0
    for _ in c:
        n += 1
        if n >= 100:
            break
    c.commit()
    tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
    committed = sum(c.committed(tp) or 0 for tp in tps)
    ends = sum(c.end_offsets(tps).values())
    c.close()
    return n >= 100 and committed == n, 'read %d, committed %d, end offsets sum %d' % (n, committed, ends)
def admin():
    a = KafkaAdminClient(bootstrap_servers=boot)
    groups = [g for g, _ in a.list_consumer_groups()]
    offs = a.list_consumer_group_offsets(topic + '-py')
    coord = a._find_coordinator_ids([topic + '-py'])
    a.close()
    return topic + '-py' in groups and sum(o.offset for o in offs.values()) >= 100, \
        '%d groups, coordinator %s, offsets of %d partitions' % (len(groups), coord, len(offs))
def sasl(password):
    def f():
        c = KafkaConsumer(bootstrap_servers=sasl_boot, security_protocol='SASL_PLAINTEXT',
                          sasl_mechanism='SCRAM-SHA-512', sasl_plain_username='chatvault',
                          sasl_plain_password=password, request_timeout_ms=15000,
                          api_version_auto_timeout_ms=15000)
        parts = c.partitions_for_topic(topic)
        c.close()
        return bool(parts), 'metadata over SASL_PLAINTEXT: %s partitions' % (len(parts or []))
    return f
attempt('produce', produce)
attempt('consumer group', group)
attempt('admin (list groups, group offsets, find coordinator)', admin)
attempt('SASL/SCRAM-SHA-512', sasl(pw))
try:
    sasl(pw + 'x')()
    report(False, 'SASL/SCRAM-SHA-512, wrong password', 'was accepted')
except Exception as e:
    report(True, 'SASL/SCRAM-SHA-512, wrong password', 'refused: %r' % e)
print('python3-kafka: %s' % ('some calls failed' if failed else 'all ok'))
sys.exit(1 if failed else 0)
PY

n=$("$k" tool kafka-console-consumer --bootstrap-server "$KAFKA_BOOTSTRAP" --topic "$topic" \
    --from-beginning --timeout-ms 15000 2>/dev/null | wc -l)
if [ "$n" -ge 250 ]; then echo "ok kafka-console-consumer: read $n records"; else echo "FAIL kafka-console-consumer: read $n records, want >= 250"; fail=1; fi
if out=$("$k" tool kafka-consumer-groups --bootstrap-server "$KAFKA_BOOTSTRAP" --describe --group "$topic-py" 2>&1) &&
    echo "$out" | grep -q "$topic"; then
    echo "ok kafka-consumer-groups --describe: $(echo "$out" | grep -c "$topic") partitions"
else
    echo "FAIL kafka-consumer-groups --describe: $(echo "$out" | tail -1)"; fail=1
fi
"$k" tool kafka-topics --bootstrap-server "$KAFKA_BOOTSTRAP" --delete --topic "$topic" 2>/dev/null || true
[ "$fail" = 0 ] && echo "compat: all ok" || echo "compat: some checks failed"
exit "$fail"
