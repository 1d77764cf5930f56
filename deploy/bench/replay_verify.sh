#!/usr/bin/env bash
# deploy/bench/replay_verify.sh — how fast `chatvault verify` and
# `chatvault replay` go on N messages (a benchmark, not a test).
#
#   deploy/bench/replay_verify.sh [-n N] [-p PARTITIONS] [--build-dir DIR]
#
# N defaults to 1,000,000 over 4 partitions of one channel. Env: CV_BENCH_PG,
# a libpq conninfo of a superuser without dbname (default: the local
# PostgreSQL of deploy/pg.sh, host=127.0.0.1 port=55432 user=postgres).
#
# How the stores are filled: producing N messages through Kafka and the
# broker would measure the broker, not these tools, so PostgreSQL is filled
# directly by one INSERT ... SELECT generate_series (ids m<i>, 150-250 byte
# text bodies, Kafka coordinates partition i % P, offsets i / P, and
# chatvault.kafka_offsets to match), and the encrypted log is then built
# from PostgreSQL by `chatvault verify --repair` (a log made entirely of
# repair segments: the same format, sealing, chain and reader as the
# broker's segments). That repair is timed too.
#
# Then, each timed:
#   verify                          both stores, every record authenticated
#   replay --source pg  --dry-run   reading and rebuilding from PostgreSQL
#   replay --source log --dry-run   reading and authenticating the log
#   replay --source pg              ... and producing to a mock Kafka topic
#   replay --source log             ... (chatvault dev-kafka over TCP),
#                                   waiting for every delivery
# and prints msgs/s for each. Everything it starts (dev-kafka, a database
# cv_bench_rv_<pid>, a temp dir) is removed on exit.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${CV_BUILD_DIR:-$root/build}
n=1000000
parts=4
while [ "$#" -gt 0 ]; do
    case "$1" in
    -n) n=$2; shift 2 ;;
    -p) parts=$2; shift 2 ;;
    --build-dir) build=$2; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "replay_verify.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
cv=$build/broker/chatvault
[ -x "$cv" ] || { echo "replay_verify.sh: $cv not built (ninja -C $build)" >&2; exit 2; }
pg=${CV_BENCH_PG:-host=127.0.0.1 port=55432 user=postgres}
db=cv_bench_rv_$$
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cv-bench-rv.XXXXXX")
kpid=

cleanup() {
    if [ -n "$kpid" ]; then kill "$kpid" 2>/dev/null || true; wait "$kpid" 2>/dev/null || true; fi
    psql "$pg dbname=postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

now() { date +%s.%N; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { s = b - a; printf "%9.2f s %10.0f msgs/s", s, n / s }'; }

"$cv" dev-kafka --partitions "$parts" --topic "bench.out:$parts" >"$tmp/kafka.out" 2>"$tmp/kafka.log" &
kpid=$!
for _ in $(seq 100); do [ -s "$tmp/kafka.out" ] && break; sleep 0.1; done
bootstrap=$(head -1 "$tmp/kafka.out")
[ -n "$bootstrap" ] || { echo "replay_verify.sh: dev-kafka printed no address" >&2; exit 1; }

psql "$pg dbname=postgres" -qc "CREATE DATABASE $db"
cat >"$tmp/chatvault.conf" <<EOF
postgres.conninfo = $pg dbname=$db
log.dir = $tmp/log
log.key_file = $tmp/log.key
log.segment_bytes = 67108864
kafka.bootstrap.servers = $bootstrap
http.listen =
EOF
cfg=(-c "$tmp/chatvault.conf")
"$cv" keygen "${cfg[@]}" >/dev/null 2>&1
"$cv" migrate "${cfg[@]}" >/dev/null 2>&1

echo "chatvault replay/verify benchmark: $n messages, $parts partitions, $(nproc) cores, $(date -u +%FT%TZ)"
t0=$(now)
psql "$pg dbname=$db" -q <<EOF
INSERT INTO chatvault.messages (channel, message_id, kafka_topic, kafka_partition,
    kafka_offset, kafka_timestamp, sender_id, sent_at_us, body, content_type)
SELECT 'bench', 'm' || g, 'chat.bench', g % $parts, g / $parts,
       to_timestamp(1700000000 + g / 1000.0), 'bench-sender', 1700000000000000 + g,
       convert_to(rpad('message ' || g || ' ', 150 + g % 100, 'lorem ipsum '), 'UTF8'),
       'text/plain'
FROM generate_series(0, $n - 1) AS g;
INSERT INTO chatvault.kafka_offsets (consumer_group, topic, kafka_partition, next_offset)
SELECT 'chatvault', 'chat.bench', p, ($n - 1 - p) / $parts + 1
FROM generate_series(0, least($parts, $n) - 1) AS p;
EOF
psql "$pg dbname=$db" -qc "VACUUM (ANALYZE) chatvault.messages"
t1=$(now)
echo "fill PostgreSQL (INSERT ... SELECT, VACUUM) $(rate "$n" "$t0" "$t1")"

t0=$(now)
"$cv" verify "${cfg[@]}" --repair --quiet >"$tmp/repair.out" 2>"$tmp/repair.log" || {
    echo "verify --repair failed:" >&2; cat "$tmp/repair.log" >&2; exit 1; }
t1=$(now)
echo "verify --repair (log built from PG)      $(rate "$n" "$t0" "$t1")   (compare + write $n + compare again)"

t0=$(now)
"$cv" verify "${cfg[@]}" --quiet >"$tmp/verify.out" 2>"$tmp/verify.log" || {
    echo "verify failed:" >&2; cat "$tmp/verify.out" "$tmp/verify.log" >&2; exit 1; }
t1=$(now)
grep -q "matched=$n " "$tmp/verify.log" || { echo "verify did not match $n:" >&2; cat "$tmp/verify.log" >&2; exit 1; }
echo "verify                                   $(rate "$n" "$t0" "$t1")"

for src in pg log; do
    t0=$(now)
    "$cv" replay "${cfg[@]}" --source $src --dry-run --quiet >/dev/null 2>"$tmp/dry-$src.log"
    t1=$(now)
    grep -q "selected=$n " "$tmp/dry-$src.log" || { cat "$tmp/dry-$src.log" >&2; exit 1; }
    printf 'replay --source %-3s --dry-run           %s\n' $src "$(rate "$n" "$t0" "$t1")"
done
for src in pg log; do
    t0=$(now)
    "$cv" replay "${cfg[@]}" --source $src --to-topic bench.out --quiet >/dev/null 2>"$tmp/replay-$src.log" || {
        echo "replay --source $src failed:" >&2; cat "$tmp/replay-$src.log" >&2; exit 1; }
    t1=$(now)
    grep -q "sent=$n failed=0" "$tmp/replay-$src.log" || { cat "$tmp/replay-$src.log" >&2; exit 1; }
    printf 'replay --source %-3s -> mock Kafka        %s\n' $src "$(rate "$n" "$t0" "$t1")"
done
