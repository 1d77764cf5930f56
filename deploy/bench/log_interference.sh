#!/bin/bash
# deploy/bench/log_interference.sh — how much a busy encrypted log slows a
# PostgreSQL on the same machine, and which part of the log does it.
#
# Runs pgbench (one client, 1,000-row INSERTs into an indexed table, 15 s)
# alone and with chatvault-logbench appending beside it at a fixed rate (one
# 5,000-record append over 256 partitions every 60 ms, about what the broker
# does at 80k msgs/s), once with each log.sync_method (syncfs, fdatasync),
# ROUNDS times in turn, and prints transactions per second. CV_BENCH_PG as
# for run.sh; the database cv_logint is re-created.
#
#   deploy/bench/log_interference.sh [ROUNDS]
set -euo pipefail

rounds=${1:-3}
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${CV_BUILD_DIR:-$src/build}
pg=${CV_BENCH_PG:-host=127.0.0.1 port=55432 user=postgres}
logbench=$build/deploy/bench/chatvault-logbench
export PGOPTIONS="-c client_min_messages=warning"
command -v pgbench >/dev/null || { echo "log_interference.sh: pgbench not found" >&2; exit 1; }
ninja -C "$build" >/dev/null
work=$(mktemp -d)
bg=
cleanup() {
    [ -z "$bg" ] || kill "$bg" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

psql -X -q -v ON_ERROR_STOP=1 "$pg dbname=postgres" \
    -c "DROP DATABASE IF EXISTS cv_logint" -c "CREATE DATABASE cv_logint"
psql -X -q -v ON_ERROR_STOP=1 "$pg dbname=cv_logint" -c \
    'CREATE TABLE t (id text COLLATE "C" PRIMARY KEY, channel text COLLATE "C",
         value bytea, sent_at_us bigint);
     CREATE INDEX ON t (channel, sent_at_us)'
cat >"$work/insert.sql" <<'SQL'
INSERT INTO t SELECT md5(random()::text || g::text), 'channel-' || (g % 16),
    decode(repeat('ab', 150), 'hex'), (random() * 1e12)::bigint
FROM generate_series(1, 1000) g;
SQL

for ((r = 1; r <= rounds; r++)); do
    for with_log in none syncfs fdatasync; do
        psql -X -q "$pg dbname=cv_logint" -c "TRUNCATE t" -c CHECKPOINT
        if [ "$with_log" != none ]; then
            rm -rf "$work/log" "$work/log.key"
            "$logbench" "$work/log" --records 100000000 --period-ms 60 \
                --sync "$with_log" >/dev/null &
            bg=$!
            sleep 1
        fi
        tps=$(pgbench -n -f "$work/insert.sql" -T 15 -c 1 "$pg dbname=cv_logint" 2>/dev/null |
            awk '/^tps/ { printf "%.1f", $3 }')
        if [ "$with_log" != none ]; then
            kill "$bg"
            wait "$bg" 2>/dev/null || true
            bg=
        fi
        case $with_log in
        none) beside="alone                   " ;;
        syncfs) beside="beside the log, syncfs   " ;;
        fdatasync) beside="beside the log, fdatasync" ;;
        esac
        echo "round $r: $beside $tps INSERTs of 1,000 rows per second"
    done
done
