#!/usr/bin/env bash
# deploy/setup.sh — install what chatvault needs to build, run and test, then
# build it. Idempotent: packages already installed are not asked for again (so
# a second run is fast and works offline), an existing build directory is
# reused.
#
#   deploy/setup.sh [MESON_OPTION...]      e.g. -Dwerror=true
#                                               -Db_sanitize=address,undefined
#   CV_BUILD_DIR=build-asan deploy/setup.sh -Db_sanitize=address,undefined
#
# Env: CV_BUILD_DIR (default build), CV_SKIP_APT=1 to skip the package step,
# CV_SKIP_MOTO=1 to skip installing moto (the S3 test server) into .venv-moto/.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build=${CV_BUILD_DIR:-build}

# Build: compiler, meson, the libraries (zstd: the log's and the exports'
# compression, CLI for the tests; jansson: the JSON chatvault reads
# and writes). Run: PostgreSQL 15. Tests: Python
# with Debian's kafka/psycopg2/protobuf modules, protoc for the Python wire
# schema, kcat, jq, clang's sanitizer and fuzzer runtime, clang-format, and
# node + Debian's chromium for the dashboard's browser test.
packages=(
    gcc libc6-dev meson ninja-build pkg-config
    librdkafka-dev libprotobuf-c-dev protobuf-c-compiler libpq-dev libsodium-dev
    libzstd-dev zstd libmicrohttpd-dev libjansson-dev libcurl4-gnutls-dev curl
    postgresql-15 postgresql-client-15
    python3 python3-venv python3-kafka python3-psycopg2 python3-protobuf protobuf-compiler
    kcat jq clang libclang-rt-14-dev clang-format
    nodejs chromium
)

log() { printf 'setup: %s\n' "$*" >&2; }

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ] && [ "${CV_SKIP_APT:-0}" != 1 ]; then
    sudo=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null; then
            sudo=(sudo)
        else
            log "missing packages: ${missing[*]}; run as root or install them"
            exit 1
        fi
    fi
    log "installing: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
else
    log "packages present"
fi

# The cold tier's test (tests/integration/test_cold.py) talks to a real S3
# API server on loopback: moto (PyPI moto[server], its moto_server), in a
# venv of its own in the source tree. CV_SKIP_MOTO=1 leaves it out.
moto_venv="$root/.venv-moto"
if [ ! -x "$moto_venv/bin/moto_server" ] && [ "${CV_SKIP_MOTO:-0}" != 1 ]; then
    log "installing moto[server] into $moto_venv"
    if ! /usr/bin/python3 -m venv "$moto_venv" ||
        ! "$moto_venv/bin/pip" install -q 'moto[server]==5.2.6'; then
        log "could not install moto into $moto_venv (the cold tier's test needs it)"
        exit 1
    fi
fi

if [ -f "$build/build.ninja" ]; then
    if [ "$#" -gt 0 ]; then
        meson configure "$build" "$@" >/dev/null
    fi
else
    meson setup "$build" "$@"
fi
ninja -C "$build"
log "built $build/broker/chatvault"
