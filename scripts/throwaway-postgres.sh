#!/usr/bin/env bash
# start | stop a private PostgreSQL cluster for the tests, on a machine where
# none answers at 127.0.0.1:5432: trust auth on loopback, user postgres,
# database test, port $TOKENPAY_PG_PORT (default 55432, so it never meets a
# system cluster that may own 5432 with password auth). Prints nothing on success.
set -euo pipefail
DIR="${TOKENPAY_PG_DIR:-/tmp/tokenpay-throwaway-pg}"
PORT="${TOKENPAY_PG_PORT:-55432}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
# initdb and postgres refuse to run as root: use the postgres account then.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "${1:-}" in
start)
    if [ -z "$(bindir)" ]; then
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi
    BIN="$(bindir)"
    if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
        rm -rf "$DIR"
        mkdir -p "$DIR"
        [ "$(id -u)" -ne 0 ] || chown postgres "$DIR"
        as_pg "$BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
        as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
            -o "-p $PORT -c listen_addresses=127.0.0.1 -k $DIR -c fsync=on" start >/dev/null
    fi
    "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" \
        | grep -q 1 || "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres test
    ;;
stop)
    BIN="$(bindir)"
    if [ -n "$BIN" ] && [ -d "$DIR/data" ]; then
        as_pg "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null || true
    fi
    ;;
url)
    echo "postgresql://postgres@127.0.0.1:$PORT/test"
    ;;
*)
    echo "usage: $0 start|stop|url" >&2
    exit 2
    ;;
esac
