#!/usr/bin/env bash
# deploy/quickstart.sh — README's first command: try chatvault with nothing
# else installed. Installs and builds (deploy/setup.sh), starts a private
# PostgreSQL (deploy/pg.sh), creates the database `chatvault`, migrates it,
# starts `chatvault broker` with embedded (mock) Kafka, and runs a demo sender
# that publishes a few messages per second over several channels with
# --wait-ack, printing each ack's status and latency.
#
#   deploy/quickstart.sh [--rounds N] [--channels "a b c"] [--kafka embedded|real]
#
# --kafka real uses a real Apache Kafka instead (deploy/kafka.sh: started
# when not running, 1 node unless a cluster is already there, stopped again
# on the way out if started here), creates the topics with Kafka's
# kafka-topics, and keeps its database (chatvault_real) and log (.run/log-real)
# apart from the embedded runs'.
#
# Ctrl-C stops everything it started (sender, broker, PostgreSQL). Config and
# logs are in .run/ (git-ignored). Env: CV_BUILD_DIR (default build),
# CV_HTTP_LISTEN (default 127.0.0.1:9187).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

rounds=0                       # 0: until Ctrl-C
channels="general random support"
kafka=embedded
while [ "$#" -gt 0 ]; do
    case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --channels) channels=$2; shift 2 ;;
    --kafka) kafka=$2; shift 2 ;;
    --kafka=*) kafka=${1#*=}; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

case "$kafka" in embedded|real) ;; *) echo "quickstart: --kafka $kafka: want embedded or real" >&2; exit 2 ;; esac

build=${CV_BUILD_DIR:-build}
run=$root/.run
bin=$root/$build/broker/chatvault
say() { printf '\033[1mquickstart:\033[0m %s\n' "$*"; }

broker_pid=""
sender_pids=()
pg_started=0
kafka_started=0
# The broker and each sender run in their own process group (setsid), so they
# are stopped here, senders first, then the broker with SIGTERM so that it
# finishes its batch in flight.
stop_group() {
    local pid=$1 sig=$2
    kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || true
}
cleanup() {
    trap - EXIT INT TERM
    set +e
    echo
    for pid in "${sender_pids[@]}"; do
        stop_group "$pid" TERM
    done
    for pid in "${sender_pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
        say "stopping the broker (pid $broker_pid)"
        stop_group "$broker_pid" TERM
        for _ in $(seq 1 150); do
            kill -0 "$broker_pid" 2>/dev/null || break
            sleep 0.1
        done
        stop_group "$broker_pid" KILL
        wait "$broker_pid" 2>/dev/null
    fi
    if [ "$kafka_started" = 1 ]; then
        say "stopping Kafka"
        deploy/kafka.sh stop
    fi
    if [ "$pg_started" = 1 ]; then
        say "stopping PostgreSQL"
        deploy/pg.sh stop
    fi
    say "stopped; nothing left running. Logs are in .run/"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CV_BUILD_DIR=$build deploy/setup.sh

mkdir -p "$run"
if ! deploy/pg.sh status >/dev/null 2>&1; then
    pg_started=1
fi
pg=$(deploy/pg.sh start)
say "PostgreSQL: $pg"
db=chatvault
logdir=$run/log
bootstrap_conf=embedded
if [ "$kafka" = real ]; then
    db=chatvault_real
    logdir=$run/log-real
    deploy/kafka.sh status >/dev/null 2>&1 || kafka_started=1
    bootstrap_conf=$(deploy/kafka.sh start | tail -1)
    say "Kafka: $bootstrap_conf"
    eval "$(deploy/kafka.sh env)"
    rf=$((KAFKA_NODES < 3 ? KAFKA_NODES : 3))
    isr=$((KAFKA_NODES < 2 ? KAFKA_NODES : 2))
    for t in chatvault.acks:4 chatvault.dlq:1 $(printf 'chat.%s:4 ' $channels); do
        deploy/kafka.sh tool kafka-topics --bootstrap-server "$bootstrap_conf" --create \
            --if-not-exists --topic "${t%:*}" --partitions "${t##*:}" \
            --replication-factor "$rf" --config min.insync.replicas="$isr" 2>/dev/null |
            grep -v '^WARNING' || true
    done
fi
if ! psql "$pg dbname=postgres" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$db'" |
    grep -q 1; then
    psql "$pg dbname=postgres" -qc "CREATE DATABASE $db"
fi

conf=$run/chatvault.conf
cat >"$conf" <<EOF
# Written by deploy/quickstart.sh; the full reference: chatvault config,
# deploy/chatvault.conf.example.
kafka.bootstrap.servers = $bootstrap_conf
# look for new chat.<channel> topics every second (librdkafka's default: 5 min)
kafka.topic.metadata.refresh.interval.ms = 1000
postgres.conninfo = $pg dbname=$db
log.dir = $logdir
log.key_file = $run/log.key
http.listen = ${CV_HTTP_LISTEN:-127.0.0.1:9187}
EOF
if [ ! -f "$run/log.key" ] && "$bin" keygen --help >/dev/null 2>&1; then
    "$bin" keygen -c "$conf" >/dev/null
fi
"$bin" migrate -c "$conf"
# The embedded Kafka cluster is new at every start; the broker knows, and
# does not resume from the offsets stored for the previous one.

: >"$run/broker.log"
: >"$run/demo.out"
setsid "$bin" broker -c "$conf" 2>>"$run/broker.log" &
broker_pid=$!
bootstrap=""
for _ in $(seq 1 300); do
    if [ "$kafka" = real ]; then
        grep -q 'msg="broker started"' "$run/broker.log" && { bootstrap=$bootstrap_conf; break; }
        kill -0 "$broker_pid" 2>/dev/null || break
        sleep 0.1
        continue
    fi
    bootstrap=$(sed -n 's/.*msg="embedded kafka started" bootstrap=\([^ ]*\).*/\1/p' \
        "$run/broker.log" | tail -1)
    [ -n "$bootstrap" ] && break
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$bootstrap" ]; then
    say "the broker did not start; .run/broker.log says:"
    tail -20 "$run/broker.log"
    exit 1
fi
# Every command takes .run/chatvault.conf: with kafka.bootstrap.servers =
# embedded it asks the running broker (GET /api/kafka) where its mock
# cluster is. The address alone, for other Kafka clients (kcat):
printf '%s\n' "$bootstrap" >"$run/bootstrap"

cat <<EOF

  chatvault is running (broker pid $broker_pid, $kafka Kafka at $bootstrap).

  Broker log:        tail -f .run/broker.log
  Stored messages:   psql "$pg dbname=$db" -c 'SELECT channel, message_id, convert_from(body, '"'"'UTF8'"'"') AS body, persisted_at FROM chatvault.messages ORDER BY persisted_at DESC LIMIT 10'
  Send one yourself: $build/broker/chatvault send -c .run/chatvault.conf --channel general --wait-ack 'hello'
  Every command takes that one config (lag, replay, verify, log ...).
  Dashboard:         http://${CV_HTTP_LISTEN:-127.0.0.1:9187}/   (metrics: /metrics)

  The demo sender publishes to: $channels. Ctrl-C stops everything.

EOF

# The demo sender: one long-lived `chatvault send --wait-ack` per channel,
# fed a line a second, printing each ack's status and send->ack latency as
# it arrives (the first ones wait for the consumer group to form). Each runs
# in its own process group, stopped as a whole on the way out.
for ch in $channels; do
    CV_CH=$ch CV_BIN=$bin CV_SEND_CONF=$conf CV_ROUNDS=$rounds setsid bash -c '
        i=0
        while [ "$CV_ROUNDS" = 0 ] || [ "$i" -lt "$CV_ROUNDS" ]; do
            i=$((i + 1))
            echo "message $i to #$CV_CH at $(date +%T)"
            sleep 1
        done | stdbuf -oL "$CV_BIN" send -c "$CV_SEND_CONF" --channel "$CV_CH" \
            --sender demo --wait-ack --timeout 15000 2>&1 |
            tee -a "'"$run"'/demo.out" | sed -u "s/^/  #$CV_CH  /"' &
    sender_pids+=($!)
done
for pid in "${sender_pids[@]}"; do
    wait "$pid" || true
done
# With --rounds: what the demo sent and what came back.
/usr/bin/python3 - "$run/demo.out" "$rounds" "$channels" <<'PY' || true
import re, sys
lines = open(sys.argv[1], errors='replace').read().splitlines()
acks = [l for l in lines if re.search(r' (PERSISTED|DUPLICATE|DEGRADED|REJECTED) ', l)]
lat = sorted(float(m.group(1)) for l in acks
             for m in [re.search(r'latency_ms=([0-9.]+)', l)] if m)
sent = int(sys.argv[2]) * len(sys.argv[3].split())
def q(p):
    return '%.1f ms' % lat[min(len(lat) - 1, int(p * len(lat)))] if lat else '-'
status = {}
for l in acks:
    s = re.search(r' (PERSISTED|DUPLICATE|DEGRADED|REJECTED) ', l).group(1)
    status[s] = status.get(s, 0) + 1
print('\033[1mquickstart:\033[0m sent %d, acked %d (%s), send->ack p50 %s, p99 %s'
      % (sent, len(acks), ', '.join('%s %d' % kv for kv in sorted(status.items())) or 'none',
         q(0.50), q(0.99)))
PY
if ! kill -0 "$broker_pid" 2>/dev/null; then
    say "the broker exited; .run/broker.log says:"
    tail -20 "$run/broker.log"
    exit 1
fi
