#!/bin/bash
# deploy/bench/stages.sh — where one message's time goes, on real Kafka.
#
# Publishes at a fixed rate (chatvault-bench --rate, open loop) through a
# broker on a deploy/kafka.sh cluster and splits each message's sent -> ack
# time at the points the stores themselves record:
#
#   in Kafka      the chat record's Kafka timestamp: the topics are created
#                 with message.timestamp.type = LogAppendTime, so it is when
#                 the Kafka leader appended it (the sender's linger and
#                 produce request)
#   row written   chatvault.messages.persisted_at (clock_timestamp() as the
#                 row went in: consumer fetch, batch, decode, COPY)
#   ack in Kafka  the ack record's LogAppendTime (the rest of the batch's
#                 PostgreSQL transaction and log sync, the ack's produce)
#   ack received  when chatvault-bench's ack consumer had it
#
# and prints p50 / p99 / p99.9 of each, counted from the moment the message
# was due. The topics are new for each run and warmed first by passes that
# are not measured (Kafka stalls once per new partition on its first index
# entries: deploy/bench/warm.sh). The first second of the measured pass is
# left out of the table and reported on its own line.
#
#   deploy/bench/stages.sh [--rate N] [--seconds S] [--partitions P]
#                          [--ack-partitions P] [--channels C]
#                          [--set key=value]...
#
# Defaults: 600 msgs/s for 15 s, 16 channels x 16 partitions, 64 ack
# partitions, the broker's default config (--set overrides a key). The
# cluster is CV_KAFKA_DIR (default .kafka/bench-1/), started when not
# running and stopped afterwards if started here; CV_BENCH_PG as for run.sh
# (database cv_stages is dropped and re-created). Output goes to
# deploy/bench/results/stages-<time>/ (series.txt: per message, seconds
# since the first send, sent -> ack ms, sent -> ack in Kafka ms).
set -euo pipefail

rate=600
seconds=15
channels=16
partitions=16
ack_partitions=64
sets=()

usage() { sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; }

while [ $# -gt 0 ]; do
    case $1 in
    --rate) rate=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --channels) channels=$2; shift 2 ;;
    --partitions) partitions=$2; shift 2 ;;
    --ack-partitions) ack_partitions=$2; shift 2 ;;
    --set) sets+=("$2"); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "stages.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for v in "$rate" "$seconds" "$channels" "$partitions" "$ack_partitions"; do
    case $v in '' | *[!0-9]* | 0) echo "stages.sh: $v: want a positive whole number" >&2; exit 2 ;; esac
done
[ "$seconds" -ge 2 ] || { echo "stages.sh: --seconds $seconds: want 2 or more (the first is reported apart)" >&2; exit 2; }

src=$(cd "$(dirname "$0")/../.." && pwd)
build=${CV_BUILD_DIR:-$src/build}
pg=${CV_BENCH_PG:-host=127.0.0.1 port=55432 user=postgres}
chatvault=$build/broker/chatvault
bench=$build/deploy/bench/chatvault-bench
out=$src/deploy/bench/results/stages-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
export PGOPTIONS="-c client_min_messages=warning"
# shellcheck source=deploy/bench/warm.sh
. "$src/deploy/bench/warm.sh" # warm_topics
log() { echo "stages.sh: $*" >&2; }
ninja -C "$build" >/dev/null

pids=()
kafka_started=0
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ "$kafka_started" = 0 ] || "$src/deploy/kafka.sh" stop || true
    rm -rf "$out/log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Kafka, and topics stamped by the leader.
export CV_KAFKA_DIR=${CV_KAFKA_DIR:-$src/.kafka/bench-1}
"$src/deploy/kafka.sh" status >/dev/null 2>&1 || kafka_started=1
"$src/deploy/kafka.sh" start >/dev/null
eval "$("$src/deploy/kafka.sh" env)"
tag=stages$(date -u +%H%M%S)
create() {
    "$src/deploy/kafka.sh" tool kafka-topics --bootstrap-server "$KAFKA_BOOTSTRAP" --create \
        --topic "$1" --partitions "$2" --config message.timestamp.type=LogAppendTime \
        >>"$out/topics.log" 2>&1 || { log "creating $1 failed; see $out/topics.log"; exit 1; }
}
cpids=()
for ((c = 0; c < channels; c++)); do
    create "$(printf 'chat.%s-%02d' "$tag" "$c")" "$partitions" &
    cpids+=($!)
done
create "acks.$tag" "$ack_partitions" &
cpids+=($!)
for pid in "${cpids[@]}"; do
    wait "$pid" || exit 1
done

# 2. A fresh database and a broker.
psql -X -q -v ON_ERROR_STOP=1 "$pg dbname=postgres" \
    -c "DROP DATABASE IF EXISTS cv_stages" -c "CREATE DATABASE cv_stages" >/dev/null
cat >"$out/chatvault.conf" <<EOF
# written by deploy/bench/stages.sh
kafka.bootstrap.servers = $KAFKA_BOOTSTRAP
postgres.conninfo = $pg dbname=cv_stages
http.listen = 127.0.0.1:$((20000 + RANDOM % 20000))
log.dir = $out/log
log.key_file = $out/log.key
topics.pattern = ^chat\\.$tag-[0-9]+\$
topics.acks = acks.$tag
EOF
for kv in "${sets[@]+"${sets[@]}"}"; do
    echo "${kv%%=*} = ${kv#*=}" >>"$out/chatvault.conf"
done
"$chatvault" keygen -c "$out/chatvault.conf" >"$out/keygen.log" 2>&1
"$chatvault" migrate -c "$out/chatvault.conf" 2>"$out/migrate.log"
"$chatvault" broker -c "$out/chatvault.conf" 2>"$out/broker.log" &
pids+=($!)
for _ in $(seq 600); do
    grep -q 'partition assigned' "$out/broker.log" && break
    kill -0 "${pids[0]}" 2>/dev/null || { log "broker exited; see $out/broker.log"; exit 1; }
    sleep 0.1
done
grep -q 'partition assigned' "$out/broker.log" ||
    { log "broker owns no partition after 60 s; see $out/broker.log"; exit 1; }

bench_run() {
    "$bench" --bootstrap "$KAFKA_BOOTSTRAP" --channels "$channels" --channel-prefix "$tag-" \
        --ack-topic "acks.$tag" "$@"
}

# 3. Warm every partition (not measured), then the measured pass.
warm_pass() { bench_run "$@" >>"$out/warmup.out" 2>&1 || { log "warm-up failed; see $out/warmup.out"; return 1; }; }
warm_topics warm_pass "$channels" "$partitions" "$ack_partitions" || exit 1
log "measuring: $rate msgs/s for $seconds s"
bench_run --messages $((rate * seconds)) --rate "$rate" --series "$out/series.txt" \
    >"$out/bench.out" 2>&1 || { log "measured pass failed; see $out/bench.out"; exit 1; }
run=$(sed -n 's/.*, run \(b[0-9a-f]*\).*/\1/p' "$out/bench.out" | head -n 1)

# 4. Each message's points: two from its row in PostgreSQL, two from the
# bench's series; all counted from sent_at_us, the moment it was due.
psql -X -q -A -F ' ' -t "$pg dbname=cv_stages" -c "
    SELECT sent_at_us,
           (extract(epoch FROM kafka_timestamp) * 1e6)::bigint - sent_at_us,
           (extract(epoch FROM persisted_at) * 1e6)::bigint - sent_at_us
    FROM chatvault.messages WHERE message_id LIKE '$run-%'" >"$out/rows.txt"
/usr/bin/python3 - "$out/rows.txt" "$out/series.txt" "$rate" "$seconds" <<'EOF' | tee "$out/summary.txt"
import sys

rows_path, series_path, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [tuple(int(v) for v in line.split()) for line in open(rows_path) if line.strip()]
series = [tuple(float(v) for v in line.split()) for line in open(series_path) if line.strip()]
if not rows or len(rows) != len(series):
    sys.exit('stages.sh: %d rows in PostgreSQL, %d acks in the series: cannot split'
             % (len(rows), len(series)))
t0 = min(r[0] for r in rows)
t_rows = [(r[0] - t0) / 1e6 for r in rows]
in_kafka = [r[1] / 1e3 for r in rows]
row = [r[2] / 1e3 for r in rows]


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def after_first(times, values):
    return [v for t, v in zip(times, values) if t >= 1.0]


t_acks = [s[0] for s in series]
points = [('in Kafka', after_first(t_rows, in_kafka)),
          ('row written', after_first(t_rows, row)),
          ('ack in Kafka', after_first(t_acks, [s[2] for s in series])),
          ('ack received', after_first(t_acks, [s[1] for s in series]))]
print('%d msgs/s for %d s; ms from the moment each message was due, second 1 on:' % (rate, seconds))
print('  %-14s %8s %8s %8s' % ('point', 'p50', 'p99', 'p99.9'))
for name, vals in points:
    print('  %-14s %8.1f %8.1f %8.1f' % (name, pct(vals, .5), pct(vals, .99), pct(vals, .999)))
first = [s[1] for s in series if s[0] < 1.0]
if first:
    print('  first second: ack received p50 %.1f, max %.1f ms (%d msgs)'
          % (pct(first, .5), max(first), len(first)))
EOF
log "results in $out"
