#!/bin/sh
# Builds the libFuzzer targets with clang in their own build directory
# (build-fuzz/, git-ignored) and runs each for SECONDS (default 60).
# New inputs go to build-fuzz/corpus/<target>/ (the committed seeds in
# tests/fuzz/corpus/<target>/ are read, never written); a crash leaves its
# input in build-fuzz/artifacts/ and makes the script exit 1.
#
#   tests/fuzz/run.sh 60          # what CI runs
set -eu

seconds=${1:-60}
case $seconds in
'' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${FUZZ_BUILD_DIR:-$src/build-fuzz}

if [ ! -f "$build/build.ninja" ]; then
    CC=clang meson setup "$build" "$src" -Dfuzz=true -Dbuildtype=debugoptimized >/dev/null
else
    meson configure "$build" -Dfuzz=true >/dev/null
fi
ninja -C "$build" >/dev/null || ninja -C "$build"

mkdir -p "$build/artifacts"
status=0
for exe in "$build"/tests/fuzz/fuzz_*; do
    [ -f "$exe" ] && [ -x "$exe" ] || continue
    name=$(basename "$exe")
    target=${name#fuzz_}
    seeds=$src/tests/fuzz/corpus/$target
    work=$build/corpus/$target
    mkdir -p "$work" "$seeds"
    echo "== $name: ${seconds}s, seeds $seeds"
    log=$build/$name.log
    if "$exe" "$work" "$seeds" -max_total_time="$seconds" -print_final_stats=1 \
        -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$build/artifacts/$name-" >"$log" 2>&1; then
        :
    else
        status=1
        echo "!! $name found a failure; input in $build/artifacts/, log $log" >&2
    fi
    # The summary lines: executions, speed, coverage, corpus size.
    grep -E '^(stat::|#[0-9]+ +DONE|Done [0-9]+ runs)|ERROR|SUMMARY' "$log" | tail -n 12 || true
done
exit $status
