#!/usr/bin/env bash
# What the report rollups' triggers (schemas/0004_reports.sql) cost the
# store's batch statement: the same batches of 1000 rows, each one
# INSERT ... SELECT ... ON CONFLICT (channel, message_id) DO NOTHING in its own
# transaction (synchronous_commit on, as the broker), with the triggers
# firing and not, interleaved batch by batch on one PostgreSQL. rows/s is
# 1000 / the mean latency of that kind of transaction.
#
#   eval "$(deploy/pg.sh env)"; deploy/bench/rollup_cost.sh [--rounds 3] [--batches 200] [--senders 200]
#
# CV_BENCH_PG (default $CV_TEST_PG): conninfo without dbname; the database
# cv_rollup_bench on it is dropped and re-created. Rows: 8 channels, --senders
# senders (each batch has about min(1000, 8 x senders) distinct pairs of
# channel and sender: the sender rollup's upserts), 200-byte bodies, sent_at 50-70 ms before the insert (a live
# batch: one hour and minute or two per channel, every sender), plus
# one batch in 10 re-sending 1000 ids already held (a re-delivery: the
# transition table is empty).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=3
BATCHES=200
SENDERS=200
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --batches) BATCHES=$2; shift 2 ;;
    --senders) SENDERS=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--batches N] [--senders N]" >&2; exit 2 ;;
    esac
done
PG=${CV_BENCH_PG:-${CV_TEST_PG:-host=127.0.0.1 port=55432 user=postgres}}
BIN=build/broker/chatvault
DB=cv_rollup_bench
psql "$PG dbname=postgres" -qXc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
"$BIN" migrate --set "postgres.conninfo=$PG dbname=$DB" 2>/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/batch.sql" <<EOF
\set b random(1, 4000000000000)
\set redeliver random(1, 10)
INSERT INTO chatvault.messages (channel, message_id, kafka_topic,
    kafka_partition, kafka_offset, kafka_timestamp, sender_id, sent_at_us,
    body, content_type, attributes, reply_to)
SELECT 'channel-' || (i % 8), CASE WHEN :redeliver = 1 THEN 'fixed-' || i
                                   ELSE :b || '-' || i END,
       'chat.channel-' || (i % 8), i % 16, :b + i, now(), 'sender-' || ((:b + i * 7919) % $SENDERS),
       (extract(epoch FROM now()) * 1000000)::bigint - 50000 - (i * 37) % 20000,
       convert_to(repeat('x', 200), 'UTF8'), 'text/plain', '{}', ''
FROM generate_series(1, 1000) AS i
ORDER BY i
ON CONFLICT (channel, message_id) DO NOTHING;
EOF
# Both kinds of batch in one pgbench run, picked at random per transaction,
# so they meet the same load (this machine is shared): on.sql fires the
# triggers, off.sql sets session_replication_role = replica, which skips
# ordinary triggers for that transaction (superuser only: a bench setting).
{ echo 'BEGIN;'; echo 'SET LOCAL session_replication_role = origin;'
  cat "$work/batch.sql"; echo 'COMMIT;'; } >"$work/on.sql"
{ echo 'BEGIN;'; echo 'SET LOCAL session_replication_role = replica;'
  cat "$work/batch.sql"; echo 'COMMIT;'; } >"$work/off.sql"
echo "round  triggers_on_rows_s  triggers_off_rows_s  on/off"
on_all=() off_all=()
for r in $(seq 1 "$ROUNDS"); do
    out=$(pgbench -n -c 1 -t $((2 * BATCHES)) -f "$work/on.sql@1" -f "$work/off.sql@1" \
        "$PG dbname=$DB" 2>/dev/null)
    # per script: "SQL script N: ..." then " - latency average = X ms"
    read -r on off < <(awk '/^SQL script 1/ { s = 1 } /^SQL script 2/ { s = 2 }
        /latency average/ && s { l[s] = $(NF - 1) }
        END { printf "%.0f %.0f\n", 1000000 / l[1], 1000000 / l[2] }' <<<"$out")
    on_all+=("$on") off_all+=("$off")
    awk -v r="$r" -v a="$on" -v b="$off" 'BEGIN { printf "%5d  %18d  %19d  %6.3f\n", r, a, b, a / b }'
done
med() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
m_on=$(med "${on_all[@]}") m_off=$(med "${off_all[@]}")
awk -v a="$m_on" -v b="$m_off" 'BEGIN { printf "median  %17d  %19d  %6.3f  (cost %.1f%%)\n", a, b, a / b, (1 - a / b) * 100 }'
rows=$(psql "$PG dbname=$DB" -qXtAc "SELECT count(*) FROM chatvault.messages")
echo "rows in chatvault.messages at the end: $rows"
