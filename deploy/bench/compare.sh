#!/bin/bash
# deploy/bench/compare.sh — what the encrypted log costs, end to end.
#
# Runs deploy/bench/run.sh --no-kcat in pairs, ROUNDS times: both stores (the
# default config) and PostgreSQL only (--set log.dir=), in turn first, and
# prints each run, the median of each side and the median of the per-round
# ratios, after one uncounted run of each side as a warm-up. One run of each
# is not enough on a shared 2-core machine: single runs of the same config
# were seen to differ by 30%, so only alternating pairs and medians say
# anything about a 10% difference.
#
#   deploy/bench/compare.sh [--rounds N] [--scale-out]
#                           [--a "RUN.SH WORDS" --b "RUN.SH WORDS"] [run.sh options]...
#
# --a / --b give the two sides' own run.sh words instead (split on spaces),
# e.g. --a "" --b "--set kafka.queued.min.messages=20000".
# --scale-out compares two broker instances in one consumer group (run.sh
# --instances 2) with one instance instead, both stores on each side.
#
# Columns per side: msgs/s end to end, the PostgreSQL backend's CPU seconds
# and the seconds it waited for a CPU (run-queue delay), the broker's CPU
# seconds.
#
# Every run.sh option (--messages, --set, ...) goes to both sides of a pair;
# CV_BENCH_PG and CV_BUILD_DIR as for run.sh. The table goes to standard
# output and to deploy/bench/results/compare-<time>.txt.
set -euo pipefail

rounds=5
args=()
# The two sides: run.sh's extra words for each, and their column titles.
a_args=()
b_args=(--set log.dir=)
a_name=both
b_name=PG-only
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --scale-out)
        a_args=(--instances 2) b_args=(--instances 1) a_name="2 inst" b_name="1 inst"
        shift ;;
    --a) read -r -a a_args <<<"$2"; a_name=A; shift 2 ;;
    --b) read -r -a b_args <<<"$2"; b_name=B; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) args+=("$1"); shift ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/results"
out=$here/results/compare-$(date -u +%Y%m%dT%H%M%SZ).txt

# One run; prints "<msgs/s> <PG backend CPU s> <its run-queue wait s>
# <broker CPU s> <broker peak RSS MiB>" (msgs/s of a --backlog run: the
# drain's).
one() {
    local s
    s=$("$here/run.sh" --no-kcat "${args[@]+"${args[@]}"}" "$@" 2>/dev/null) ||
        { echo "compare.sh: run.sh $* failed" >&2; return 1; }
    awk '/^chatvault (end to end|drain)/ { for (i = 1; i < NF; i++) if ($(i + 1) == "msgs/s") rate = $i }
         /broker.s PG backend/ { pg = $(NF - 1) }
         /PG backend waiting for a CPU/ { rq = $(NF - 1) }
         /^  broker CPU/ { cpu = $(NF - 4); rss = $(NF - 1) }
         END { print rate, pg, rq, cpu, rss }' <<<"$s"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

# One run of each side first, not counted: in six series run on 2026-11-22
# the first run after other work on the machine was the slowest of its
# config (in the three compare.sh series the backend used 16.1-16.9 s of CPU
# in it, 10.0-14.4 s in the others), and round 1 runs both stores first, so
# it always hit that side.
one "${a_args[@]+"${a_args[@]}"}" >/dev/null
one "${b_args[@]+"${b_args[@]}"}" >/dev/null

both=()
pgonly=()
ratios=()
{
    echo "== compare.sh: $rounds rounds, $(nproc) cores, run.sh --no-kcat ${args[*]-}"
    printf '%-6s %12s %8s %7s %8s %7s   %14s %8s %7s %8s %7s   %6s\n' round "$a_name msgs/s" "PG CPU" \
        "PG rq" "broker" "RSS" "$b_name msgs/s" "PG CPU" "PG rq" "broker" "RSS" ratio
} | tee "$out"
for ((r = 1; r <= rounds; r++)); do
    # Odd rounds run side A first (both stores; 2 instances), even rounds
    # side B first, so a machine that speeds up or slows down during the
    # runs does not always favour the same side.
    if ((r % 2)); then
        read -r b_rate b_pg b_rq b_cpu b_rss < <(one "${a_args[@]+"${a_args[@]}"}")
        read -r p_rate p_pg p_rq p_cpu p_rss < <(one "${b_args[@]+"${b_args[@]}"}")
    else
        read -r p_rate p_pg p_rq p_cpu p_rss < <(one "${b_args[@]+"${b_args[@]}"}")
        read -r b_rate b_pg b_rq b_cpu b_rss < <(one "${a_args[@]+"${a_args[@]}"}")
    fi
    ratio=$(awk -v a="$b_rate" -v b="$p_rate" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
    both+=("$b_rate")
    pgonly+=("$p_rate")
    ratios+=("$ratio")
    printf '%-6s %12s %8s %7s %8s %7s   %14s %8s %7s %8s %7s   %6s\n' "$r" "$b_rate" "$b_pg" \
        "$b_rq" "$b_cpu" "$b_rss" "$p_rate" "$p_pg" "$p_rq" "$p_cpu" "$p_rss" "$ratio" | tee -a "$out"
done
mb=$(printf '%s\n' "${both[@]}" | median)
mp=$(printf '%s\n' "${pgonly[@]}" | median)
mr=$(printf '%s\n' "${ratios[@]}" | median)
{
    printf 'median: %s %.0f msgs/s, %s %.0f msgs/s, ratio of medians %.3f, median of ratios %s\n' \
        "$a_name" "$mb" "$b_name" "$mp" "$(awk -v a="$mb" -v b="$mp" 'BEGIN { print a / b }')" "$mr"
    echo "results: $out"
} | tee -a "$out"
