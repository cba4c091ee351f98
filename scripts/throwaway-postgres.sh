#!/usr/bin/env bash
# start | stop a private PostgreSQL cluster on 127.0.0.1:5432 (trust auth,
# user postgres, database test) for a machine that has no server running.
set -euo pipefail
DIR="${TOKENPAY_PG_DIR:-/tmp/tokenpay-throwaway-pg}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

case "${1:-}" in
start)
    if [ -z "$(bindir)" ]; then
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi
    BIN="$(bindir)"
    # Debian's package may have made a cluster; start it if it exists and is stopped.
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql)" ]; then
        version="$(ls /etc/postgresql | sort -V | tail -n 1)"
        $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
        sleep 1
    fi
    if ! "$BIN/pg_isready" -h 127.0.0.1 -p 5432 -q; then
        rm -rf "$DIR"
        mkdir -p "$DIR"
        chown postgres "$DIR" 2>/dev/null || true
        run_as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
        run_as_pg "$BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
        run_as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
            -o "-p 5432 -c listen_addresses=127.0.0.1 -k $DIR" start >/dev/null
    fi
    "$BIN/psql" -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
        || "$BIN/createdb" -h 127.0.0.1 -U postgres test
    ;;
stop)
    BIN="$(bindir)"
    if [ -d "$DIR/data" ]; then
        if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null || true
        else "$BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null || true; fi
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
