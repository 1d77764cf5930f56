#!/usr/bin/env bash
# deploy/test.sh — README's test command: set up, start a private PostgreSQL,
# run every meson test suite against it, stop PostgreSQL again.
#
#   deploy/test.sh [--build-dir DIR] [--suite NAME]... [--no-suite NAME]...
#                  [MESON_OPTION...]
#
#   deploy/test.sh                                   all suites in build/
#   deploy/test.sh --suite integration
#   deploy/test.sh --build-dir build-asan -Db_sanitize=address,undefined
#
# MESON_OPTIONs go to `meson setup` (deploy/setup.sh). Env: CV_BUILD_DIR
# (default build), CV_MESON_TEST_ARGS (extra `meson test` arguments).
# When the kafka suite runs (named, or all suites), a 3-node Apache Kafka
# cluster is started for it in .kafka/test-cluster (deploy/kafka.sh, env
# CV_KAFKA_DIR) and stopped afterwards if this script started it.
# Exits with meson test's status.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

build=${CV_BUILD_DIR:-build}
suites=()
no_suites=()
setup_opts=()
while [ "$#" -gt 0 ]; do
    case "$1" in
    --build-dir) build=$2; shift 2 ;;
    --build-dir=*) build=${1#*=}; shift ;;
    --suite) suites+=(--suite "$2"); shift 2 ;;
    --suite=*) suites+=(--suite "${1#*=}"); shift ;;
    --no-suite) no_suites+=(--no-suite "$2"); shift 2 ;;
    --no-suite=*) no_suites+=(--no-suite "${1#*=}"); shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) setup_opts+=("$1"); shift ;;
    esac
done

CV_BUILD_DIR=$build deploy/setup.sh "${setup_opts[@]}"

# The kafka suite runs when named, or when every suite runs and it is not
# excluded with --no-suite kafka.
want_kafka=0
if [ "${#suites[@]}" = 0 ]; then
    want_kafka=1
    for s in "${no_suites[@]}"; do [ "$s" = kafka ] && want_kafka=0; done
else
    for s in "${suites[@]}"; do [ "$s" = kafka ] && want_kafka=1; done
fi

# Stop PostgreSQL and Kafka on the way out only if this script started them.
started_pg=0
started_kafka=0
cleanup() {
    if [ "$started_kafka" = 1 ]; then
        deploy/kafka.sh stop || true
    fi
    if [ "$started_pg" = 1 ]; then
        deploy/pg.sh stop || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! deploy/pg.sh status >/dev/null 2>&1; then
    started_pg=1
fi
deploy/pg.sh start >/dev/null
eval "$(deploy/pg.sh env)"
export CV_TEST_PG
echo "test.sh: CV_TEST_PG='$CV_TEST_PG' build=$build" >&2

if [ "$want_kafka" = 1 ]; then
    export CV_KAFKA_DIR=${CV_KAFKA_DIR:-$root/.kafka/test-cluster}
    deploy/kafka.sh status >/dev/null 2>&1 || started_kafka=1
    t=$(date +%s)
    deploy/kafka.sh start --brokers 3 >/dev/null
    eval "$(deploy/kafka.sh env)"
    export KAFKA_BOOTSTRAP
    echo "test.sh: Kafka $KAFKA_BOOTSTRAP ($CV_KAFKA_DIR, up in $(($(date +%s) - t)) s)" >&2
fi

read -r -a extra <<<"${CV_MESON_TEST_ARGS:-}"
set +e
meson test -C "$build" --print-errorlogs "${suites[@]}" "${no_suites[@]}" "${extra[@]}"
rc=$?
set -e
exit "$rc"
