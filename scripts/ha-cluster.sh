#!/usr/bin/env bash
# The backup center's PostgreSQL cluster on loopback: one etcd and three Patroni nodes (pg1..pg3),
# strict synchronous replication, so a commit the center acknowledged is on two nodes.
#
#   ha-cluster.sh start            start what is not running, wait for a leader, a sync standby and
#                                  every replica streaming, print the SQLAlchemy URL (db "postgres")
#   ha-cluster.sh stop             kill everything it started and remove HA_DIR
#   ha-cluster.sh status           `patronictl list` (or "not running", exit 1)
#   ha-cluster.sh url [DBNAME]     the multi-host SQLAlchemy URL of DBNAME (default postgres)
#   ha-cluster.sh leader           the leader's member name (exit 1 while there is none)
#   ha-cluster.sh kill-node NAME   node loss: kill -9 NAME's Patroni, its postmaster and its backends
#   ha-cluster.sh start-node NAME  restart NAME's Patroni (it rejoins; no waiting)
#
# Environment (read on the first start, then kept in HA_DIR/cluster.env, which wins afterwards):
#   HA_DIR (default /var/tmp/tokenpay-ha; the postgres user must reach it, so not under a 0700 dir),
#   HA_PG_PORTS ("5433 5434 5435"), HA_REST_PORTS ("8008 8009 8010"), HA_ETCD_PORTS ("12379 12380",
#   client and peer: not etcd's 2379/2380, which Debian's own etcd service takes where systemd runs),
#   HA_SCOPE (tokenpay), HA_TTL/HA_LOOP_WAIT/HA_RETRY_TIMEOUT (Patroni's DCS timing, see below),
#   HA_START_TIMEOUT_S (180). Works as root without a TTY (Patroni then runs as the postgres user).
# Long because starting, checking and killing a cluster is one job with one pid bookkeeping; the
# readiness check is a small Python (Debian's, with psycopg2) inside it.
set -euo pipefail

HA_DIR="${HA_DIR:-/var/tmp/tokenpay-ha}"
HA_DIR="${HA_DIR%/}"
ENV_FILE="$HA_DIR/cluster.env"
if [ -f "$ENV_FILE" ]; then
    # shellcheck disable=SC1090
    . "$ENV_FILE"
fi
HA_PG_PORTS="${HA_PG_PORTS:-5433 5434 5435}"
HA_REST_PORTS="${HA_REST_PORTS:-8008 8009 8010}"
HA_ETCD_PORTS="${HA_ETCD_PORTS:-12379 12380}"
HA_SCOPE="${HA_SCOPE:-tokenpay}"
# Failover after a node loss takes about ttl (the dead leader's key must expire) plus a loop. Measured
# here, kill -9 of the leader to the first commit: ttl 20/loop 2/retry 5 -> 20.8 s; 10/1/3 -> 11.5-12.7 s.
# Patroni needs loop_wait + 2 * retry_timeout <= ttl; a leader stalled longer than retry_timeout demotes
# itself, so on a loaded machine that sees spurious failovers go back to 20/2/5.
HA_TTL="${HA_TTL:-10}"
HA_LOOP_WAIT="${HA_LOOP_WAIT:-1}"
HA_RETRY_TIMEOUT="${HA_RETRY_TIMEOUT:-3}"
HA_START_TIMEOUT_S="${HA_START_TIMEOUT_S:-180}"
STOP_TIMEOUT_S=20

read -r -a PG_PORTS <<<"$HA_PG_PORTS"
read -r -a REST_PORTS <<<"$HA_REST_PORTS"
read -r ETCD_CLIENT_PORT ETCD_PEER_PORT <<<"$HA_ETCD_PORTS"
NODE_COUNT="${#PG_PORTS[@]}"
NODES=()
for ((i = 1; i <= NODE_COUNT; i++)); do NODES+=("pg$i"); done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

die() {
    echo "ha-cluster: $*" >&2
    exit 1
}

# die_with_logs MESSAGE LOG...: the one-line reason, then the tail of each log that exists.
die_with_logs() {
    local message="$1" log
    shift
    echo "ha-cluster: $message" >&2
    for log in "$@"; do
        [ -s "$log" ] || continue
        echo "--- last lines of $log:" >&2
        tail -n 15 "$log" >&2
    done
    exit 1
}

check_settings() {
    case "$HA_DIR" in
    /?*) ;;
    *) die "HA_DIR must be an absolute path below / (Patroni's configuration names it), got '$HA_DIR'" ;;
    esac
    [ "$NODE_COUNT" -ge 2 ] || die "HA_PG_PORTS needs at least 2 ports, got '$HA_PG_PORTS'"
    [ "${#REST_PORTS[@]}" -eq "$NODE_COUNT" ] ||
        die "HA_REST_PORTS needs one port per node ($NODE_COUNT), got '$HA_REST_PORTS'"
    [ -n "${ETCD_PEER_PORT:-}" ] || die "HA_ETCD_PORTS needs two ports (client peer), got '$HA_ETCD_PORTS'"
    [ $((HA_LOOP_WAIT + 2 * HA_RETRY_TIMEOUT)) -le "$HA_TTL" ] ||
        die "Patroni needs HA_LOOP_WAIT + 2*HA_RETRY_TIMEOUT <= HA_TTL; got $HA_LOOP_WAIT, $HA_RETRY_TIMEOUT, $HA_TTL"
}

# shellcheck disable=SC2012  # versioned directory names, sorted by version
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

ensure_packages() {
    local missing=() package
    for package in patroni etcd-server etcd-client python3-etcd curl; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    [ -n "$(bindir)" ] || missing+=(postgresql)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "ha-cluster: installing Debian packages: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# A live process, not a zombie waiting for a parent that does not reap it.
alive() {
    local pid="${1:-}" state
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    state="$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# A live process of this cluster: pid files outlive their process, and the kernel reuses pids.
ours() {
    local cmdline
    alive "${1:-}" || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *"$HA_DIR/"* ]]
}

pid_of() { if [ -s "$1" ]; then head -n 1 "$1" | tr -dc 0-9; fi; }

port_busy() { [ -n "$(ss -Hltn "sport = :$1")" ]; }

node_index() {
    local i
    for ((i = 0; i < NODE_COUNT; i++)); do
        [ "${NODES[$i]}" != "$1" ] || { echo "$i"; return 0; }
    done
    die "no node '$1' in this cluster (nodes: ${NODES[*]})"
}

# launch PIDFILE LOG COMMAND...: run COMMAND in its own session (a Ctrl-C or a killed caller does not
# reach it), logging to LOG; PIDFILE gets the pid COMMAND runs as (setsid may or may not fork).
launch() {
    local pidfile="$1" log="$2"
    shift 2
    rm -f "$pidfile"
    # shellcheck disable=SC2016  # $$ and $@ belong to the inner sh
    setsid sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" >>"$log" 2>&1 </dev/null &
    local i
    for ((i = 0; i < 50; i++)); do
        [ -s "$pidfile" ] && return 0
        sleep 0.1
    done
    die_with_logs "could not start $1 (no pid after 5 s)" "$log"
}

write_env_file() {
    cat >"$ENV_FILE" <<EOF
HA_PG_PORTS="$HA_PG_PORTS"
HA_REST_PORTS="$HA_REST_PORTS"
HA_ETCD_PORTS="$HA_ETCD_PORTS"
HA_SCOPE="$HA_SCOPE"
HA_TTL="$HA_TTL"
HA_LOOP_WAIT="$HA_LOOP_WAIT"
HA_RETRY_TIMEOUT="$HA_RETRY_TIMEOUT"
EOF
}

write_node_config() {
    local index="$1" name="${NODES[$1]}" node="$HA_DIR/${NODES[$1]}"
    local pg_port="${PG_PORTS[$index]}" rest_port="${REST_PORTS[$index]}"
    cat >"$node/patroni.yml" <<EOF
scope: $HA_SCOPE
name: $name
log:
  level: INFO
restapi:
  listen: 127.0.0.1:$rest_port
  connect_address: 127.0.0.1:$rest_port
etcd:
  host: 127.0.0.1:$ETCD_CLIENT_PORT
watchdog:
  mode: "off"
bootstrap:
  dcs:
    ttl: $HA_TTL
    loop_wait: $HA_LOOP_WAIT
    retry_timeout: $HA_RETRY_TIMEOUT
    maximum_lag_on_failover: 0
    synchronous_mode: true
    synchronous_mode_strict: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_log_hints: "on"
        max_connections: 200
        # After a failover a standby's first try at the new leader fails (its slot is made on the
        # leader's next loop); the default 5 s before the retry delayed the first commit by as much.
        wal_retrieve_retry_interval: 500ms
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
postgresql:
  listen: 127.0.0.1:$pg_port
  connect_address: 127.0.0.1:$pg_port
  data_dir: $node/data
  bin_dir: $BIN
  pgpass: $node/pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
  parameters:
    unix_socket_directories: $node
    logging_collector: "on"
    log_directory: $node/log
    log_filename: postgresql.log
EOF
}

# A directory this script may fill and later remove: absent, empty, or one of ours.
claim_dir() {
    if [ -d "$HA_DIR" ] && [ ! -f "$ENV_FILE" ] && [ -n "$(ls -A "$HA_DIR")" ]; then
        die "HA_DIR $HA_DIR is not empty and holds no cluster.env; pick another HA_DIR"
    fi
    local created=""
    [ -d "$HA_DIR" ] || created=yes
    mkdir -p "$HA_DIR"
    chmod 755 "$HA_DIR"
    if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$HA_DIR"; then
        [ -z "$created" ] || rmdir "$HA_DIR"
        die "the postgres user cannot reach $HA_DIR (a parent directory is private, e.g. pytest's tmp); use a path under /var/tmp"
    fi
    # First, so that `stop` recognises the directory as ours whatever fails next.
    [ -f "$ENV_FILE" ] || write_env_file
    mkdir -p "$HA_DIR/etcd"
    local index node
    for ((index = 0; index < NODE_COUNT; index++)); do
        node="$HA_DIR/${NODES[$index]}"
        mkdir -p "$node/log"
        write_node_config "$index"
        [ "$(id -u)" -ne 0 ] || chown -R postgres: "$node"
        chmod 700 "$node"
    done
}

# Before anything is written: every port a component still to start needs must be free.
preflight_ports() {
    local index
    if ! ours "$(pid_of "$HA_DIR/etcd/etcd.pid")"; then
        check_free "etcd" HA_ETCD_PORTS "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT"
    fi
    for ((index = 0; index < NODE_COUNT; index++)); do
        ours "$(pid_of "$HA_DIR/${NODES[$index]}/patroni.pid")" ||
            check_free "${NODES[$index]}" "HA_PG_PORTS/HA_REST_PORTS" "${PG_PORTS[$index]}" "${REST_PORTS[$index]}"
    done
}

# check_free WHAT VARIABLE PORT...
check_free() {
    local what="$1" variable="$2" port
    shift 2
    for port in "$@"; do
        ! port_busy "$port" || die "port $port ($what) is in use by another program; set $variable"
    done
}

start_etcd() {
    local dir="$HA_DIR/etcd"
    ours "$(pid_of "$dir/etcd.pid")" && return 0
    check_free "etcd" HA_ETCD_PORTS "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT"
    local member="$HA_SCOPE-etcd" peer="http://127.0.0.1:$ETCD_PEER_PORT"
    launch "$dir/etcd.pid" "$dir/etcd.log" etcd --name "$member" --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$member=$peer" --initial-cluster-token "$HA_SCOPE" \
        --initial-cluster-state new --enable-v2=true --logger=zap
    local deadline=$((SECONDS + 30))
    until curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q true; do
        ours "$(pid_of "$dir/etcd.pid")" || die_with_logs "etcd exited while starting" "$dir/etcd.log"
        [ "$SECONDS" -lt "$deadline" ] || die_with_logs "etcd did not become healthy within 30 s" "$dir/etcd.log"
        sleep 0.2
    done
}

start_node() {
    local index name="$1" node="$HA_DIR/$1"
    index="$(node_index "$name")"
    ours "$(pid_of "$node/patroni.pid")" && return 0
    check_free "$name" "HA_PG_PORTS/HA_REST_PORTS" "${PG_PORTS[$index]}" "${REST_PORTS[$index]}"
    # The postgres user runs Patroni (initdb and postgres refuse root); without root, the caller does.
    local as_postgres=()
    [ "$(id -u)" -ne 0 ] || as_postgres=(runuser -u postgres --)
    # shellcheck disable=SC2016  # $$ and $1 belong to the inner sh
    launch "$node/runuser.pid" "$node/patroni.log" \
        "${as_postgres[@]}" sh -c 'echo $$ >"$0"; exec patroni "$1"' "$node/patroni.pid" "$node/patroni.yml"
    # runuser forks; the inner sh records Patroni's own pid (the one kill-node must hit).
    local i
    for ((i = 0; i < 50; i++)); do
        [ -s "$node/patroni.pid" ] && return 0
        sleep 0.1
    done
    die_with_logs "Patroni $name did not start (no pid after 5 s)" "$node/patroni.log"
}

# Prints "ready", or what is missing and, on a second line, the member to blame (or "-").
# Debian's python3, the one Patroni runs on: it has psycopg2 (a venv or pyenv python3 may not).
cluster_state() {
    /usr/bin/python3 - "$HA_REST_PORTS" "$NODE_COUNT" <<'PY'
import json
import sys
import urllib.request

import psycopg2

rest_ports, node_count = sys.argv[1].split(), int(sys.argv[2])
cluster = None
for port in rest_ports:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/cluster", timeout=2) as response:
            cluster = json.load(response)
            break
    except Exception:
        continue
if cluster is None:
    print("no Patroni REST API answers yet\n-")
    sys.exit()
members = {m["name"]: m for m in cluster.get("members", [])}
leader = next((m for m in members.values() if m["role"] == "leader"), None)
if leader is None or leader.get("state") != "running":
    print(f"no running leader yet (members: {sorted(members)})\n-")
    sys.exit()
try:
    with psycopg2.connect(host=leader["host"], port=leader["port"], user="postgres", dbname="postgres",
                          connect_timeout=2) as conn, conn.cursor() as cur:
        cur.execute("SELECT application_name, sync_state,"
                    " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) = 0"
                    " FROM pg_stat_replication WHERE state = 'streaming'")
        streaming = {name: (sync_state, caught_up) for name, sync_state, caught_up in cur.fetchall()}
    conn.close()
except psycopg2.Error as error:
    print(f"leader {leader['name']} does not answer SQL: {str(error).strip()}\n{leader['name']}")
    sys.exit()
for name in sorted(f"pg{i}" for i in range(1, node_count + 1)):
    if name == leader["name"]:
        continue
    if name not in streaming:
        state = members.get(name, {}).get("state", "not registered")
        print(f"leader {leader['name']}; {name} is not streaming yet (Patroni state: {state})\n{name}")
        sys.exit()
    if not streaming[name][1]:
        print(f"leader {leader['name']}; {name} is streaming but not caught up\n{name}")
        sys.exit()
sync = [name for name, (sync_state, _) in streaming.items() if sync_state == "sync"]
if not sync or not any(m["role"] == "sync_standby" for m in members.values()):
    print(f"leader {leader['name']}; no synchronous standby yet\n-")
    sys.exit()
print("ready")
PY
}

wait_ready() {
    local started="$SECONDS" deadline=$((SECONDS + HA_START_TIMEOUT_S)) state name
    while true; do
        ours "$(pid_of "$HA_DIR/etcd/etcd.pid")" || die_with_logs "etcd exited" "$HA_DIR/etcd/etcd.log"
        for name in "${NODES[@]}"; do
            ours "$(pid_of "$HA_DIR/$name/patroni.pid")" ||
                die_with_logs "Patroni $name exited" "$HA_DIR/$name/patroni.log" "$HA_DIR/$name/log/postgresql.log"
        done
        state="$(cluster_state 2>&1)" || die "readiness check failed: $(tail -n 1 <<<"$state")"
        [ "$state" != ready ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            name="$(tail -n 1 <<<"$state")"
            local logs=()
            if [ "$name" != - ]; then
                logs=("$HA_DIR/$name/patroni.log" "$HA_DIR/$name/log/postgresql.log")
            else
                for name in "${NODES[@]}"; do logs+=("$HA_DIR/$name/patroni.log"); done
            fi
            die_with_logs "cluster not ready within ${HA_START_TIMEOUT_S} s: $(head -n 1 <<<"$state")" "${logs[@]}"
        fi
        sleep 0.5
    done
    echo "ha-cluster: ready in $((SECONDS - started)) s (leader, sync standby, all replicas streaming)" >&2
}

url() {
    local dbname="${1:-postgres}" hosts="" port
    for port in "${PG_PORTS[@]}"; do hosts+="host=127.0.0.1:$port&"; done
    echo "postgresql+psycopg://postgres@/$dbname?${hosts}target_session_attrs=read-write&connect_timeout=2"
}

running() { [ -f "$ENV_FILE" ] && ours "$(pid_of "$HA_DIR/etcd/etcd.pid")"; }

all_running() {
    running || return 1
    local name
    for name in "${NODES[@]}"; do ours "$(pid_of "$HA_DIR/$name/patroni.pid")" || return 1; done
}

cmd_start() {
    check_settings
    if all_running; then
        echo "ha-cluster: already running in $HA_DIR" >&2
        wait_ready
        url
        return 0
    fi
    preflight_ports
    ensure_packages
    BIN="$(bindir)"
    claim_dir
    start_etcd
    local name
    for name in "${NODES[@]}"; do start_node "$name"; done
    wait_ready
    url
}

# kill_node NAME: node loss. Patroni first (so it cannot react), then the postmaster stopped in place
# (SIGSTOP: no new backend forks) and killed together with every child it had.
kill_node() {
    local node="$HA_DIR/$1" patroni postmaster children=""
    patroni="$(pid_of "$node/patroni.pid")"
    if ours "$patroni"; then kill -9 "$patroni" 2>/dev/null || true; fi
    postmaster="$(pid_of "$node/data/postmaster.pid")"
    if ours "$postmaster"; then
        kill -STOP "$postmaster" 2>/dev/null || true
        children="$(pgrep -P "$postmaster" || true)"
        # shellcheck disable=SC2086
        kill -9 "$postmaster" $children 2>/dev/null || true
    fi
    # runuser only waits for Patroni; its session may still hold helpers (pg_rewind, pg_basebackup).
    local runuser_pid
    runuser_pid="$(pid_of "$node/runuser.pid")"
    if ours "$runuser_pid"; then kill -9 "$runuser_pid" 2>/dev/null || true; fi
    # shellcheck disable=SC2086
    wait_gone "$1" "$patroni" "$postmaster" $children
}

# wait_gone WHAT PID...: bounded wait until none of PID is alive.
wait_gone() {
    local what="$1" deadline=$((SECONDS + STOP_TIMEOUT_S)) pid left
    shift
    while true; do
        left=""
        for pid in "$@"; do alive "$pid" && left+=" $pid"; done
        [ -n "$left" ] || return 0
        [ "$SECONDS" -lt "$deadline" ] || die "processes of $what still alive after ${STOP_TIMEOUT_S} s:$left"
        sleep 0.1
    done
}

cmd_stop() {
    if [ ! -d "$HA_DIR" ]; then
        echo "ha-cluster: not running ($HA_DIR does not exist)" >&2
        return 0
    fi
    # An empty directory is what a start that failed before writing anything leaves.
    if [ -z "$(ls -A "$HA_DIR")" ]; then
        rmdir "$HA_DIR"
        return 0
    fi
    [ -f "$ENV_FILE" ] || die "HA_DIR $HA_DIR holds no cluster.env: not a cluster of this script, not removing it"
    local name
    # All Patronis first: a surviving one would otherwise take over from the one just killed.
    for name in "${NODES[@]}"; do
        local pid
        pid="$(pid_of "$HA_DIR/$name/patroni.pid")"
        if ours "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    done
    for name in "${NODES[@]}"; do kill_node "$name"; done
    local etcd
    etcd="$(pid_of "$HA_DIR/etcd/etcd.pid")"
    if ours "$etcd"; then kill -9 "$etcd" 2>/dev/null || true; fi
    wait_gone etcd "$etcd"
    # Anything else naming the directory (a pg_basebackup, a single-user postgres during a rewind).
    local strays
    strays="$(pgrep -f -- "$HA_DIR/" || true)"
    if [ -n "$strays" ]; then
        # shellcheck disable=SC2086
        kill -9 $strays 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone "$HA_DIR" $strays
    fi
    rm -rf "$HA_DIR"
    echo "ha-cluster: stopped; removed $HA_DIR" >&2
}

cmd_leader() {
    running || die "not running ($HA_DIR); start it first"
    local port answer
    for port in "${REST_PORTS[@]}"; do
        answer="$(curl -fsS --max-time 2 "http://127.0.0.1:$port/cluster" 2>/dev/null)" || continue
        /usr/bin/python3 -c '
import json, sys
names = [m["name"] for m in json.load(sys.stdin)["members"] if m["role"] == "leader"]
print(names[0]) if names else sys.exit("ha-cluster: no leader now (a failover may be under way); try again in seconds")
' <<<"$answer"
        return
    done
    die "no Patroni REST API answers on ports ${REST_PORTS[*]}"
}

cmd_status() {
    running || { echo "ha-cluster: not running ($HA_DIR)"; exit 1; }
    patronictl -c "$HA_DIR/${NODES[0]}/patroni.yml" list
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
url) url "${2:-postgres}" ;;
leader) cmd_leader ;;
kill-node)
    [ -n "${2:-}" ] || die "usage: $0 kill-node NAME"
    node_index "$2" >/dev/null
    running || die "not running ($HA_DIR); start it first"
    kill_node "$2"
    ;;
start-node)
    [ -n "${2:-}" ] || die "usage: $0 start-node NAME"
    node_index "$2" >/dev/null
    running || die "not running ($HA_DIR); start it first"
    start_node "$2"
    ;;
*)
    echo "usage: $0 start|stop|status|url [DBNAME]|leader|kill-node NAME|start-node NAME" >&2
    exit 2
    ;;
esac
