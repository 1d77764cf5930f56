#!/usr/bin/env bash
# deploy/pg.sh — a private PostgreSQL 15 for trying and testing chatvault.
#
#   deploy/pg.sh start [DIR]    initdb (first time) and start; prints a conninfo
#   deploy/pg.sh stop [DIR]     pg_ctl stop -m fast (no-op when not running)
#   deploy/pg.sh status [DIR]   exit 0 when running
#   deploy/pg.sh env [DIR]      prints `export CV_TEST_PG=... PGHOST=...` for eval
#
# DIR defaults to .pgdata/ in the checkout (git-ignored). It holds data/ (the
# cluster), the unix socket, pg.log and port. The server listens on 127.0.0.1
# only, on a free port picked at first start (kept while it stays free), with
# trust authentication, superuser `postgres`.
#
# PostgreSQL refuses to run as root. Run as root, the server runs as the system
# user chatvault-pg (created when missing) and DIR is owned by it. When that
# user cannot reach DIR (a checkout under /root, say), the cluster lives in
# /var/lib/chatvault-pg/<hash of DIR> instead and DIR becomes a symlink to it;
# nothing in the checkout is chmod-ed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cmd=${1:-}
dir=${2:-${CV_PGDATA:-$root/.pgdata}}
case "$dir" in /*) ;; *) dir=$PWD/$dir ;; esac
pg_user=${CV_PG_USER:-chatvault-pg}
# shellcheck source=deploy/lib.sh
. "$root/deploy/lib.sh"      # port_free

die() { printf 'pg.sh: %s\n' "$*" >&2; exit 1; }
say() { printf 'pg.sh: %s\n' "$*" >&2; }

pgbin=${PG_BIN:-}
if [ -z "$pgbin" ]; then
    for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
        [ -x "$d/pg_ctl" ] && { pgbin=$d; break; }
    done
fi
[ -n "$pgbin" ] || die "PostgreSQL server binaries not found; run deploy/setup.sh"

# as_pg CMD...: run CMD as the server's user.
if [ "$(id -u)" = 0 ]; then
    as_pg() { runuser -u "$pg_user" -- "$@"; }
else
    as_pg() { "$@"; }
fi

free_port() {
    /usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Resolves $dir (following the symlink to a fallback location) into $real.
resolve() { real=$(readlink -f "$dir" 2>/dev/null || echo "$dir"); }

running() {
    resolve
    [ -f "$real/data/PG_VERSION" ] || return 1
    as_pg "$pgbin/pg_ctl" status -D "$real/data" >/dev/null 2>&1
}

conninfo() { echo "host=127.0.0.1 port=$(cat "$real/port") user=postgres"; }

prepare_dir() {
    if [ "$(id -u)" != 0 ]; then
        mkdir -p "$dir"
        chmod 700 "$dir"
        resolve
        return
    fi
    if ! id "$pg_user" >/dev/null 2>&1; then
        say "creating system user $pg_user to run PostgreSQL (it refuses root)"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$pg_user"
    fi
    resolve
    if [ ! -e "$dir" ]; then
        mkdir -p "$dir"
        chown "$pg_user:" "$dir"
        chmod 700 "$dir"
        if ! as_pg test -w "$dir" -a -x "$dir"; then
            rmdir "$dir"
            local alt
            alt=/var/lib/chatvault-pg/$(printf '%s' "$dir" | sha1sum | cut -c1-12)
            say "$pg_user cannot reach $dir; keeping the cluster in $alt ($dir links to it)"
            mkdir -p "$alt"
            chown "$pg_user:" /var/lib/chatvault-pg "$alt"
            chmod 700 "$alt"
            ln -s "$alt" "$dir"
        fi
    elif [ ! -L "$dir" ] && [ "$(stat -c %U "$dir")" != "$pg_user" ]; then
        chown -R "$pg_user:" "$dir"
    fi
    resolve
    as_pg test -w "$real" || die "$pg_user cannot write $real"
}

start() {
    if running; then
        conninfo
        return
    fi
    prepare_dir
    if [ ! -f "$real/data/PG_VERSION" ]; then
        say "initdb in $real/data"
        as_pg "$pgbin/initdb" -D "$real/data" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 >"$real/initdb.log" 2>&1 ||
            { cat "$real/initdb.log" >&2; die "initdb failed"; }
    fi
    local port=""
    [ -f "$real/port" ] && port=$(cat "$real/port")
    if [ -z "$port" ] || ! port_free "$port"; then
        port=$(free_port)
        as_pg sh -c "echo $port > '$real/port'"
    fi
    # The unix socket goes in DIR, unless its path would be too long for one.
    local sockdir=$real
    [ "${#real}" -lt 90 ] || sockdir=/tmp
    as_pg "$pgbin/pg_ctl" start -D "$real/data" -l "$real/pg.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -k $sockdir" \
        >/dev/null || { tail -20 "$real/pg.log" >&2; die "PostgreSQL did not start"; }
    say "PostgreSQL running in $real (log $real/pg.log)"
    conninfo
}

stop() {
    if running; then
        as_pg "$pgbin/pg_ctl" stop -D "$real/data" -m fast -w >/dev/null
        say "PostgreSQL in $real stopped"
    fi
}

case "$cmd" in
start) start ;;
stop) stop ;;
status)
    if running; then conninfo; else exit 1; fi
    ;;
env)
    running || die "not running; deploy/pg.sh start $dir"
    port=$(cat "$real/port")
    echo "export CV_TEST_PG='$(conninfo)'"
    echo "export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres"
    ;;
*)
    echo "usage: deploy/pg.sh start|stop|status|env [DIR]" >&2
    exit 2
    ;;
esac
