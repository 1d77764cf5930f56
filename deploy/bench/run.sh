#!/bin/bash
# deploy/bench/run.sh — the end-to-end benchmark, start to finish.
#
# Starts a `chatvault dev-kafka` cluster with enough partitions for the mock's
# ~5 MiB-per-partition retention, creates a fresh database, migrates it,
# starts `chatvault broker` with a config written here, runs chatvault-bench
# (publish N messages, wait for every ack), then times the pipeline a user
# would otherwise script — kcat -C ... | psql -c '\copy ...' — over the same
# messages, prints a summary table and stops everything it started.
#
#   deploy/bench/run.sh [--messages N] [--partitions P] [--ack-partitions P]
#                       [--linger-ms N] [--set key=value]... [--no-kcat]
#                       [--perf SECONDS] [--sample] [--keep-log]
#                       [--kafka mock|real] [--brokers N] [--backlog]
#                       [--latency SECONDS] [--instances N]
#
# --instances N: N brokers in one consumer group (each its own log.dir and
# HTTP port) against the same PostgreSQL, for the scale-out figure
# (scaleout.sh runs 1 and 2 in alternating pairs). The broker CPU and peak
# RSS figures are the first instance's; the PostgreSQL figures and the
# broker's histograms cover all of them.
#
# --latency SECONDS: after the run at full speed, the same broker gets three
# open-loop passes (chatvault-bench --rate) at 10%, 50% and 90% of the rate
# just measured, SECONDS each, and the summary adds their sent -> ack
# p50 / p99 / p99.9; latency.py draws them as latency.png in the results,
# and each pass's per-message latencies go to series-rateP.txt
# (chatvault-bench --series).
#
# --backlog measures a drain instead: chatvault-bench publishes all N
# messages with no broker running (its ack consumer already waits at the ack
# topic's end), then the broker is started and the bench times broker start
# -> last ack; broker CPU and peak RSS, Kafka's and the PostgreSQL backend's
# CPU cover the drain only. kcat | psql then drains the same backlog of the
# same cluster, so the ratio compares two drains. With --kafka mock the
# backlog must fit the mock's ~5 MiB per partition: run.sh refuses a run of
# more than ~4 MiB per chat partition (add --partitions or use --kafka real).
#
# --kafka real runs on a real Apache Kafka cluster of deploy/kafka.sh instead
# of the mock: N nodes (--brokers, default 1) in .kafka/bench-N/ (or
# CV_KAFKA_DIR), started when not running and stopped afterwards if started
# here. Its topics are new for every run (names carry the run's time), with
# replication factor min(N, 3) and min.insync.replicas min(N, 2); chatvault's
# producer and the bench's publish with acks=all. Before a live run two
# passes that are not measured warm the new topics (deploy/bench/warm.sh:
# Kafka stalls once per new partition on its first index entries); a
# --backlog run publishes its backlog before the broker starts, so the
# stall falls outside the drain it times.
#
# CV_BENCH_PG: libpq conninfo of the PostgreSQL server to use, without dbname
# (default "host=127.0.0.1 port=55432 user=postgres"). The databases
# cv_bench and cv_bench_kcat on it are dropped and re-created.
# Logs, the config and the summary go to deploy/bench/results/<time>/.
set -euo pipefail

messages=1000000
channels=16
partitions=16
ack_partitions=64
linger_ms=5
body_bytes=256
run_kcat=1
perf_seconds=0
sample=0
keep=0
kafka=mock
brokers=1
backlog=0
latency_s=0
instances=1
sets=()

usage() { sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; }

while [ $# -gt 0 ]; do
    case $1 in
    --messages) messages=$2; shift 2 ;;
    --partitions) partitions=$2; shift 2 ;;
    --ack-partitions) ack_partitions=$2; shift 2 ;;
    --linger-ms) linger_ms=$2; shift 2 ;;
    --set) sets+=("$2"); shift 2 ;;
    --no-kcat) run_kcat=0; shift ;;
    --perf) perf_seconds=$2; shift 2 ;;
    --sample) sample=1; shift ;;
    --keep-log) keep=1; shift ;;
    --kafka) kafka=$2; shift 2 ;;
    --brokers) brokers=$2; shift 2 ;;
    --backlog) backlog=1; shift ;;
    --latency) latency_s=$2; shift 2 ;;
    --instances) instances=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

case $kafka in mock | real) ;; *) echo "run.sh: --kafka $kafka: want mock or real" >&2; exit 2 ;; esac
case $instances in [1-9]) ;; *) echo "run.sh: --instances $instances: want 1 to 9" >&2; exit 2 ;; esac
if [ "$backlog" = 1 ] && [ "$kafka" = mock ]; then
    # The mock drops a partition's oldest batches past ~5 MiB, silently: the
    # whole backlog must fit, with room to spare. A record is the body and
    # ~100 bytes of ids, names and Kafka framing.
    per_part=$(((messages * (body_bytes + 100) + channels * partitions - 1) / (channels * partitions)))
    if [ "$per_part" -gt $((4 << 20)) ]; then
        need=$(((messages * (body_bytes + 100) + channels * (4 << 20) - 1) / (channels * (4 << 20))))
        echo "run.sh: --kafka mock --backlog: $messages msgs would put $((per_part >> 20)) MiB in each of $channels x $partitions partitions, past the mock's ~5 MiB (it drops older batches silently); use --partitions $need or more, fewer --messages, or --kafka real" >&2
        exit 2
    fi
fi

src=$(cd "$(dirname "$0")/../.." && pwd)
build=${CV_BUILD_DIR:-$src/build}
pg=${CV_BENCH_PG:-host=127.0.0.1 port=55432 user=postgres}
chatvault=$build/broker/chatvault
bench=$build/deploy/bench/chatvault-bench
out=$src/deploy/bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
export PGOPTIONS="-c client_min_messages=warning"
# shellcheck source=deploy/bench/warm.sh
. "$src/deploy/bench/warm.sh" # warm_topics

for tool in psql kcat; do
    command -v $tool >/dev/null || { echo "run.sh: $tool not found" >&2; exit 1; }
done
ninja -C "$build" >/dev/null

pids=()
kafka_started=0
cleanup() {
    if [ "$kafka_started" = 1 ]; then
        "$src/deploy/kafka.sh" stop || true
    fi
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    # The encrypted log of a million messages is ~0.5 GB: keep it only when
    # asked to.
    [ "$keep" = 1 ] || rm -rf "$out"/log "$out"/log-[0-9]
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
log() { echo "run.sh: $*" >&2; }

# 1. Kafka: every chat topic and the ack topic get enough partitions.
topic_args=()
topics=()
channel_prefix=bench-
ack_topic=chatvault.acks
if [ "$kafka" = real ]; then
    run_id=$(date -u +%H%M%S)
    channel_prefix=bench$run_id-
    ack_topic=chatvault.acks.bench$run_id
fi
for ((c = 0; c < channels; c++)); do
    t=$(printf 'chat.%s%02d' "$channel_prefix" "$c")
    topics+=("$t")
    topic_args+=(--topic "$t:$partitions")
done
if [ "$kafka" = mock ]; then
    "$chatvault" dev-kafka --partitions "$ack_partitions" "${topic_args[@]}" \
        >"$out/dev-kafka.out" 2>"$out/dev-kafka.log" &
    pids+=($!)
    kafka_pid=$!
    bootstrap=
    for _ in $(seq 100); do
        bootstrap=$(head -n 1 "$out/dev-kafka.out" 2>/dev/null || true)
        [ -n "$bootstrap" ] && break
        sleep 0.1
    done
    [ -n "$bootstrap" ] || { log "dev-kafka did not start; see $out/dev-kafka.log"; exit 1; }
    log "dev-kafka at $bootstrap ($channels topics x $partitions partitions, acks x $ack_partitions)"
else
    export CV_KAFKA_DIR=${CV_KAFKA_DIR:-$src/.kafka/bench-$brokers}
    "$src/deploy/kafka.sh" status >/dev/null 2>&1 || kafka_started=1
    "$src/deploy/kafka.sh" start --brokers "$brokers" >/dev/null
    eval "$("$src/deploy/kafka.sh" env)"
    bootstrap=$KAFKA_BOOTSTRAP
    kafka_pid=${KAFKA_PIDS%% *}
    rf=$((brokers < 3 ? brokers : 3))
    isr=$((brokers < 2 ? brokers : 2))
    for tp in "${topics[@]/%/:$partitions}" "$ack_topic:$ack_partitions" "chatvault.dlq:1"; do
        "$src/deploy/kafka.sh" tool kafka-topics --bootstrap-server "$bootstrap" --create \
            --if-not-exists --topic "${tp%:*}" --partitions "${tp##*:}" \
            --replication-factor "$rf" --config min.insync.replicas="$isr" \
            >>"$out/topics.log" 2>&1 || { log "creating ${tp%:*} failed; see $out/topics.log"; exit 1; }
    done
    log "Apache Kafka, $brokers node(s) at $bootstrap ($channels topics x $partitions partitions, acks x $ack_partitions, RF $rf, min.insync.replicas $isr)"
fi

# 2. A fresh database, migrated.
psql -X -q -v ON_ERROR_STOP=1 "$pg dbname=postgres" \
    -c "DROP DATABASE IF EXISTS cv_bench" -c "CREATE DATABASE cv_bench" >/dev/null
http_port=$((20000 + RANDOM % 20000))
cat >"$out/chatvault.conf" <<EOF
# written by deploy/bench/run.sh
kafka.bootstrap.servers = $bootstrap
postgres.conninfo = $pg dbname=cv_bench
http.listen = 127.0.0.1:$http_port
log.dir = $out/log
log.key_file = $out/log.key
topics.pattern = ^chat\\.${channel_prefix}[0-9]+\$
topics.acks = $ack_topic
EOF
for kv in "${sets[@]+"${sets[@]}"}"; do
    printf '%s = %s\n' "${kv%%=*}" "${kv#*=}" >>"$out/chatvault.conf"
done
"$chatvault" migrate -c "$out/chatvault.conf" 2>>"$out/migrate.log"
"$chatvault" keygen -c "$out/chatvault.conf" >/dev/null 2>>"$out/keygen.log"
# Every run starts right after a checkpoint, so the one that max_wal_size
# triggers during a 1M-message run comes at the same point of every run (full
# page writes after a checkpoint make PostgreSQL's inserts dearer for a while).
psql -X -q "$pg dbname=postgres" -c CHECKPOINT

extra=0 # messages beyond --messages: the warm-up and the open-loop passes

# 3. The broker, and what measures around it. start_broker starts it (and
# the other --instances, each with its own log directory and HTTP port);
# broker_ready waits until each owns partitions.
http_ports=("$http_port")
broker_pids=()
start_broker() {
    "$chatvault" broker -c "$out/chatvault.conf" 2>"$out/broker.log" &
    broker_pid=$!
    pids+=("$broker_pid")
    broker_pids=("$broker_pid")
    local i port
    for ((i = 2; i <= instances; i++)); do
        port=$((http_port + i - 1))
        http_ports+=("$port")
        "$chatvault" broker -c "$out/chatvault.conf" --set "log.dir=$out/log-$i" \
            --set "http.listen=127.0.0.1:$port" 2>"$out/broker-$i.log" &
        pids+=($!)
        broker_pids+=($!)
    done
}
broker_ready() {
    local i f
    for ((i = 1; i <= instances; i++)); do
        f=$out/broker.log
        [ "$i" = 1 ] || f=$out/broker-$i.log
        for _ in $(seq 300); do
            grep -q 'partition assigned\|partitions assigned' "$f" && break
            kill -0 "${broker_pids[$((i - 1))]}" 2>/dev/null || { log "broker exited; see $f"; exit 1; }
            sleep 0.1
        done
    done
    # The group's last rebalance settles before anything is measured.
    [ "$instances" = 1 ] || sleep 5
    log "broker pid(s) ${broker_pids[*]} running (log $out/broker.log)"
}

# CPU seconds (user + system) of a process, from /proc/<pid>/stat.
cpu_of() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' \
        "/proc/$1/stat" 2>/dev/null || echo 0
}
# Seconds a process spent runnable but waiting for a CPU, from
# /proc/<pid>/schedstat (its second field, in ns).
rq_of() {
    awk '{ printf "%.2f", $2 / 1e9 }' "/proc/$1/schedstat" 2>/dev/null || echo 0
}
sum_of() { # sum_of FN PID...: FN's figures of the PIDs, added
    local fn=$1 t=0 pid
    shift
    for pid in "$@"; do t=$(awk -v a="$t" -v b="$($fn "$pid")" 'BEGIN { print a + b }'); done
    echo "$t"
}
# The broker's PostgreSQL backends, found by pg_stat_activity, so only once
# the broker has connected.
pg_backends_of_broker() {
    psql -X -qtA "$pg dbname=postgres" -c \
        "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE datname = 'cv_bench'"
}
# The baselines of the figures run.sh reports, and the samplers: called
# when the measurement starts (in --backlog mode, when the broker has just
# started and connected to PostgreSQL).
measure_start() {
    kafka_cpu0=$(cpu_of "$kafka_pid")
    # shellcheck disable=SC2086 # one pid per word
    pg_cpu0=$(sum_of cpu_of $pg_backends)
    # shellcheck disable=SC2086
    pg_rq0=$(sum_of rq_of $pg_backends)
    if [ "$perf_seconds" -gt 0 ]; then
        # System-wide, so PostgreSQL and the mock cluster show next to the broker.
        (sleep 2; exec perf record -a -g -o "$out/perf.data" -- sleep "$perf_seconds") \
            >"$out/perf.log" 2>&1 &
        perf_pid=$!
        pids+=("$perf_pid")
    fi
    if [ "$sample" = 1 ]; then
        # What the backend waits for, and where the machine's CPU goes, thread
        # by thread, while the bench runs (see threads.py and pg_waits.py).
        /usr/bin/python3 "$src/deploy/bench/threads.py" >"$out/threads.txt" 2>&1 &
        threads_pid=$!
        /usr/bin/python3 "$src/deploy/bench/pg_waits.py" "$pg dbname=postgres" cv_bench \
            >"$out/pg-waits.txt" 2>&1 &
        waits_pid=$!
        pids+=("$threads_pid" "$waits_pid")
    fi
}

# 4. The benchmark itself. start_bench ARGS... starts it; it writes its own
# output file (complete when it exits), and tail shows it as it comes.
start_bench() {
    : >"$out/bench.out"
    "$bench" --bootstrap "$bootstrap" --messages "$messages" --channels "$channels" \
        --channel-prefix "$channel_prefix" --ack-topic "$ack_topic" \
        --body-bytes "$body_bytes" --linger-ms "$linger_ms" "$@" >"$out/bench.out" &
    bench_pid=$!
    tail -n +1 -f --pid="$bench_pid" "$out/bench.out" &
    tail_pid=$!
    pids+=("$bench_pid" "$tail_pid")
}
if [ "$backlog" = 1 ]; then
    go=$out/go
    start_bench --backlog "$go"
    log "publishing $messages messages with no broker running"
    until grep -q '^backlog: ' "$out/bench.out"; do
        kill -0 "$bench_pid" 2>/dev/null || { log "chatvault-bench exited before its backlog was published; see $out/bench.out"; exit 1; }
        sleep 0.1
    done
    start_broker
    echo "$broker_pid" >"$go.tmp"
    mv "$go.tmp" "$go"
    # Baselines once the broker's backends exist: they are new, so what they
    # used before this is the connection's setup only.
    pg_backends=
    deadline=$((SECONDS + 20))
    while [ "$SECONDS" -lt "$deadline" ]; do
        pg_backends=$(pg_backends_of_broker)
        [ -n "$pg_backends" ] && break
        kill -0 "$broker_pid" 2>/dev/null || { log "broker exited before connecting to PostgreSQL; see $out/broker.log"; exit 1; }
        sleep 0.02
    done
    [ -n "$pg_backends" ] || { log "broker did not connect to PostgreSQL in 20 s; see $out/broker.log"; exit 1; }
    measure_start
    broker_ready
else
    start_broker
    broker_ready
    if [ "$kafka" = real ]; then
        # New topics stall Kafka once per partition: warm them first.
        warm_pass() {
            start_bench "$@"
            wait "$bench_pid" || { log "warm-up pass failed; see $out/bench.out"; return 1; }
            wait "$tail_pid" || true
            cat "$out/bench.out" >>"$out/bench-warmup.out"
        }
        warm_topics warm_pass "$channels" "$partitions" "$ack_partitions" || exit 1
        extra=$((extra + WARMED))
        # The broker's histograms count from its start: what the warm-up
        # put in them is taken off below.
        : >"$out/metrics-warmup.txt"
        for port in "${http_ports[@]}"; do
            curl -s "http://127.0.0.1:$port/metrics" >>"$out/metrics-warmup.txt" || true
        done
    fi
    pg_backends=$(pg_backends_of_broker)
    measure_start
    start_bench --broker-pid "$broker_pid"
fi
bench_rc=0
wait "$bench_pid" || bench_rc=$?
wait "$tail_pid" || true
if [ "$perf_seconds" -gt 0 ]; then
    wait "$perf_pid" || true
    perf report -i "$out/perf.data" --no-children --sort comm,dso --stdio 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -n 25 >"$out/perf-by-process.txt" || true
fi
if [ "$sample" = 1 ]; then
    kill -TERM "$threads_pid" "$waits_pid" 2>/dev/null || true
    wait "$threads_pid" "$waits_pid" || true
fi
kafka_cpu=$(awk -v a="$kafka_cpu0" -v b="$(cpu_of "$kafka_pid")" 'BEGIN { printf "%.2f", b - a }')
# shellcheck disable=SC2086
pg_cpu=$(awk -v a="$pg_cpu0" -v b="$(sum_of cpu_of $pg_backends)" 'BEGIN { printf "%.2f", b - a }')
# shellcheck disable=SC2086
pg_rq=$(awk -v a="$pg_rq0" -v b="$(sum_of rq_of $pg_backends)" 'BEGIN { printf "%.2f", b - a }')
# Where the broker's time went, from its own histograms.
: >"$out/metrics.txt"
for port in "${http_ports[@]}"; do
    curl -s "http://127.0.0.1:$port/metrics" >>"$out/metrics.txt" || true
done
metric() {
    local before=/dev/null
    [ -s "$out/metrics-warmup.txt" ] && before=$out/metrics-warmup.txt
    awk -v m="$1" -v f="$before" 'FILENAME == f && $1 == m { v -= $2; next } $1 == m { v += $2 }
        END { printf "%.3f", v }' "$before" "$out/metrics.txt"
}
pg_sum=$(metric chatvault_pg_commit_seconds_sum)
pg_n=$(metric chatvault_pg_commit_seconds_count)
log_sum=$(metric chatvault_log_fsync_seconds_sum)
log_n=$(metric chatvault_log_fsync_seconds_count)
txn_sum=$(metric chatvault_ack_txn_seconds_sum)
txn_n=$(metric chatvault_ack_txn_seconds_count)
batch_sum=$(metric chatvault_batch_size_messages_sum)
batch_n=$(metric chatvault_batch_size_messages_count)
mean() { awk -v a="$1" -v b="$2" -v k="$3" 'BEGIN { printf "%.1f", (b > 0 ? a * k / b : 0) }'; }
result=$(grep '^RESULT ' "$out/bench.out" || true)
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$result"; }

# 4b. Latency under partial load: open-loop passes on the same broker.
latency_rows=()
if [ "$latency_s" -gt 0 ] && [ "$backlog" = 0 ] && [ "$bench_rc" = 0 ]; then
    max_rate=$(field e2e_msgs_per_s)
    cp "$out/bench.out" "$out/bench-max.out"
    for pct in 10 50 90; do
        rate=$((max_rate * pct / 100))
        [ "$rate" -ge 1 ] || rate=1
        n=$((rate * latency_s))
        log "open loop at $pct% of $max_rate msgs/s: $rate msgs/s for $latency_s s"
        start_bench --rate "$rate" --messages "$n" --series "$out/series-rate$pct.txt"
        wait "$bench_pid" || bench_rc=$?
        wait "$tail_pid" || true
        cp "$out/bench.out" "$out/bench-rate$pct.out"
        r=$(grep '^RESULT ' "$out/bench.out" || true)
        lf() { local v; v=$(sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$r"); echo "${v:--}"; }
        latency_rows+=("$pct $rate $(lf p50_ms) $(lf p99_ms) $(lf p999_ms) $(lf max_ms) $(lf acked) $n")
        extra=$((extra + n))
    done
    printf '%s\n' "${latency_rows[@]}" >"$out/latency.txt"
    /usr/bin/python3 "$src/deploy/bench/latency.py" "$out/latency.txt" "$out/latency.png" \
        "$max_rate" >"$out/latency-chart.log" 2>&1 || log "latency chart not drawn; see $out/latency-chart.log"
fi
kill -TERM "${broker_pids[@]}"
for pid in "${broker_pids[@]}"; do
    wait "$pid" || log "broker $pid exited with status $?"
done

# 5. The pipeline a user would otherwise script, over the same messages:
# one balanced kcat consumer over the chat topics, printing CSV rows (the
# value between \x01 quote bytes: kcat has no binary-safe text encoding, and
# the bench's values hold no \x01 and no backslash), into psql's \copy.
# SQL_ASCII lets the raw protobuf bytes through COPY into a bytea.
kcat_rate=0
kcat_s=0
kcat_rows=0
if [ "$run_kcat" = 1 ]; then
    psql -X -q -v ON_ERROR_STOP=1 "$pg dbname=postgres" \
        -c "DROP DATABASE IF EXISTS cv_bench_kcat" \
        -c "CREATE DATABASE cv_bench_kcat ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" >/dev/null
    psql -X -q -v ON_ERROR_STOP=1 "$pg dbname=cv_bench_kcat" -c \
        'CREATE TABLE kcat_copy (topic text NOT NULL, "partition" int NOT NULL,
             "offset" bigint NOT NULL, value bytea, PRIMARY KEY (topic, "partition", "offset"))' >/dev/null
    log "kcat | psql over the same $messages messages"
    t0=$(now)
    kcat -C -q -b "$bootstrap" -G "cv-bench-kcat-$$" -X auto.offset.reset=earliest -e \
        -f $'%t,%p,%o,\x01%s\x01\n' "${topics[@]}" 2>"$out/kcat.log" |
        psql -X -q -v ON_ERROR_STOP=1 "$pg dbname=cv_bench_kcat" \
            -c "\\copy kcat_copy FROM STDIN WITH (FORMAT csv, QUOTE E'\\x01')" 2>"$out/psql.log"
    t1=$(now)
    kcat_rows=$(psql -X -qtA "$pg dbname=cv_bench_kcat" -c 'SELECT count(*) FROM kcat_copy')
    kcat_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    kcat_rate=$(awk -v n="$kcat_rows" -v s="$kcat_s" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
    [ "$kcat_rows" = "$((messages + extra))" ] || log "kcat|psql copied $kcat_rows rows, expected $((messages + extra))"
fi

rows=$(psql -X -qtA "$pg dbname=cv_bench" -c 'SELECT count(*) FROM chatvault.messages')
ours=$(field e2e_msgs_per_s)
ratio=$(awk -v a="${ours:-0}" -v b="$kcat_rate" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
{
    echo
    echo "== chatvault bench summary ($(date -u +%FT%TZ), $(nproc) cores, $messages msgs, ${body_bytes}-byte bodies, $channels channels, Kafka: $([ "$kafka" = real ] && echo "Apache Kafka x$brokers, RF $rf" || echo mock)$([ "$backlog" = 1 ] && echo ", backlog drain")$([ "$instances" = 1 ] || echo ", $instances broker instances"))"
    if [ "$backlog" = 1 ]; then
        printf '%-40s %s\n' "chatvault drain (broker start -> ack)" "$(field e2e_msgs_per_s) msgs/s in $(field e2e_s) s"
        printf '%-40s %s\n' "  publish, before the broker started" "$(field publish_s) s"
        printf '%-40s %s\n' "  sent -> ack p50 / p99 / max (+ wait)" "$(field p50_ms) / $(field p99_ms) / $(field max_ms) ms"
    else
        printf '%-40s %s\n' "chatvault end to end (publish -> ack)" "$(field e2e_msgs_per_s) msgs/s in $(field e2e_s) s"
        printf '%-40s %s\n' "  publish only" "$(field publish_s) s"
        printf '%-40s %s\n' "  sent -> ack latency p50 / p99 / max" "$(field p50_ms) / $(field p99_ms) / $(field max_ms) ms"
    fi
    printf '%-40s %s\n' "  broker CPU / peak RSS$([ "$instances" = 1 ] || echo " (instance 1)")" "$(field broker_cpu_s) s / $(field broker_peak_rss_mib) MiB"
    printf '%-40s %s\n' "  CPU of Kafka (node 1) / broker's PG backend" "$kafka_cpu s / $pg_cpu s"
    printf '%-40s %s\n' "  PG backend waiting for a CPU" "$pg_rq s"
    printf '%-40s %s\n' "  batches / mean size" "${batch_n%.*} / $(mean "$batch_sum" "$batch_n" 1) msgs"
    printf '%-40s %s\n' "  PG transactions: total / mean" "$pg_sum s / $(mean "$pg_sum" "$pg_n" 1000) ms"
    printf '%-40s %s\n' "  log append+sync: total / mean" "$log_sum s / $(mean "$log_sum" "$log_n" 1000) ms"
    if awk -v n="$txn_n" 'BEGIN { exit !(n > 0) }'; then
        printf '%-40s %s\n' "  ack transactions: total / mean" "$txn_sum s / $(mean "$txn_sum" "$txn_n" 1000) ms ($(metric chatvault_ack_txn_aborts_total | cut -d. -f1) aborted)"
    fi
    printf '%-40s %s\n' "  acked / missing / rows in PostgreSQL" "$(field acked) / $(field missing) / $rows"
    if [ "$run_kcat" = 1 ]; then
        printf '%-40s %s\n' "kcat -C | psql \\copy (drain only)" "$kcat_rate msgs/s in $kcat_s s ($kcat_rows rows)"
        printf '%-40s %s\n' "ratio chatvault / kcat|psql" "$ratio$([ "$backlog" = 1 ] && echo " (two drains of the same backlog, same cluster)")"
    fi
    if [ "${#latency_rows[@]}" -gt 0 ]; then
        echo "  sent -> ack under open-loop load (same broker, ${latency_s} s each):"
        printf '    %-6s %-12s %9s %9s %9s %9s  %s\n' load msgs/s p50_ms p99_ms p99.9_ms max_ms acked
        for row in "${latency_rows[@]}"; do
            # shellcheck disable=SC2086 # the fields of one row
            set -- $row
            printf '    %-6s %-12s %9s %9s %9s %9s  %s of %s\n' "$1%" "$2" "$3" "$4" "$5" "$6" "$7" "$8"
        done
        [ -f "$out/latency.png" ] && printf '    %s\n' "chart: $out/latency.png"
    fi
    if [ "$sample" = 1 ]; then
        echo "  PG backend, share of samples (pg_waits.py):"
        head -n 6 "$out/pg-waits.txt" | sed 's/^/    /'
        echo "  CPU and run-queue wait by thread (threads.py):"
        head -n 10 "$out/threads.txt" | sed 's/^/    /'
    fi
    printf '%-40s %s\n' "results" "$out"
} | tee "$out/summary.txt"

if [ "$bench_rc" -ne 0 ] || [ "$rows" != "$((messages + extra))" ]; then
    log "FAILED: bench exit $bench_rc, $rows rows for $((messages + extra)) messages"
    exit 1
fi
