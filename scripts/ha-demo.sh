#!/usr/bin/env bash
# The backup center taking over, on loopback: a three-node PostgreSQL cluster (Patroni, strict
# synchronous replication), two center nodes of one center (the second made by `center join` from a
# signed backup), a member and a store whose wallets know both nodes. The member pays; the primary
# database node is killed (kill -9 of its Patroni and PostgreSQL); the member pays again; one center
# node is killed; the member pays again; the ledger check and the audit verification pass; the old
# primary rejoins as a standby.
# Everything lives in ./ha-demo-run and the cluster in HA_DIR (default /var/tmp/tokenpay-ha-demo);
# both centers and the cluster stop at the end. Runs as root without a TTY.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

ROOT="$PWD"
DEMO="$ROOT/ha-demo-run"
PATH="$ROOT/.venv/bin:$PATH"
PORT_A="${DEMO_PORT_A:-8543}"
PORT_B="${DEMO_PORT_B:-8544}"
export HA_DIR="${HA_DIR:-/var/tmp/tokenpay-ha-demo}"
export COLUMNS="${COLUMNS:-120}"
rm -rf "$DEMO"
mkdir -m 700 -p "$DEMO/secrets"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
secret() { umask 077; printf '%s\n' "$2" > "$DEMO/secrets/$1"; }
secret member-a "member vault passphrase"; secret member-b "4711-member"; secret member-so "so-member-123"
secret store-a "store vault passphrase";   secret store-b "4711-store";   secret store-so "so-store-123"
secret backup-key "backup key password for the demo"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
    bash scripts/ha-cluster.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "PostgreSQL cluster: etcd and three Patroni nodes, strict synchronous mode"
bash scripts/ha-cluster.sh stop >/dev/null 2>&1 || true
bash scripts/ha-cluster.sh start
bash scripts/ha-cluster.sh status
.venv/bin/python - "$(bash scripts/ha-cluster.sh url postgres)" <<'PY'
import sys, psycopg
from center.ops.backup_db import libpq_target
with psycopg.connect(libpq_target(sys.argv[1])[0], autocommit=True) as conn:
    conn.execute('CREATE DATABASE center')
PY
DB_URL="$(bash scripts/ha-cluster.sh url center)"
echo "the center's database: $DB_URL"

serve() {  # serve DATA_DIR PORT: one center node in the background, until it answers
    center serve --data-dir "$1" --port "$2" > "$DEMO/center-$2.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do
        curl -fsS --cacert "$DEMO/node-a/center-cert.pem" "https://127.0.0.1:$2/healthz" >/dev/null 2>&1 && return
        sleep 0.2
    done
    echo "center on port $2 did not start: see $DEMO/center-$2.log"; exit 1
}

step "Center node A: init on the cluster (every host named; the writable one is used) and serve on $PORT_A"
center init --data-dir "$DEMO/node-a" --db "$DB_URL" --currency JPY
serve "$DEMO/node-a" "$PORT_A"
NODE_A_PID="${PIDS[-1]}"

step "Tokens and wallets: a member and a store, each wallet knowing both center nodes"
export SOFTHSM2_CONF="$DEMO/tokens/softhsm2.conf"
make_token() { bash softhsm_config/make-token.sh --dir "$DEMO/tokens" --label "$1" \
    --so-pin-file "$DEMO/secrets/$2-so" --pin-file "$DEMO/secrets/$2-b" >/dev/null; }
make_token member-token member; make_token store-token store
MODULE="$(.venv/bin/python -c 'from tokens.softhsm import find_softhsm_module as f; print(f())')"
member() { WALLET_HOME="$DEMO/member" WALLET_PASSWORD_A_FILE="$DEMO/secrets/member-a" \
    WALLET_PASSWORD_B_FILE="$DEMO/secrets/member-b" WALLET_SO_PIN_FILE="$DEMO/secrets/member-so" wallet "$@"; }
store() { WALLET_HOME="$DEMO/store" WALLET_PASSWORD_A_FILE="$DEMO/secrets/store-a" \
    WALLET_PASSWORD_B_FILE="$DEMO/secrets/store-b" WALLET_SO_PIN_FILE="$DEMO/secrets/store-so" wallet "$@"; }
json_get() { .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
member init --pkcs11-module "$MODULE" --token-label member-token
store init --pkcs11-module "$MODULE" --token-label store-token --key-type ed25519
CENTERS=(--center "https://127.0.0.1:$PORT_A" --center "https://127.0.0.1:$PORT_B"
    --center-cert "$DEMO/node-a/center-cert.pem")
store enroll "${CENTERS[@]}" --store --name "Corner Shop" --address "2-2 Shibuya, Tokyo" \
    --bank-account "JP-0009-7654321"

step "Center node B: center join of a signed backup of node A (config, TLS, the token key copy), same database"
center backup-key create --out "$DEMO/admin-backup-key" --password-file "$DEMO/secrets/backup-key"
center backup "$DEMO/node-a.backup" --data-dir "$DEMO/node-a" \
    --signing-key "$DEMO/admin-backup-key/backup-signing-key.pem" \
    --signing-key-password-file "$DEMO/secrets/backup-key"
center join "$DEMO/node-a.backup" --data-dir "$DEMO/node-b" --db "$DB_URL" \
    --backup-public-key "$DEMO/admin-backup-key/backup-signing-key.pub.pem"
serve "$DEMO/node-b" "$PORT_B"

step "Member enrolls through the first node that answers, tops up; the administrator confirms"
member enroll "${CENTERS[@]}" --name "Hanako Yamada" --address "1-1 Chiyoda, Tokyo" --birth-date 1985-06-15
member status
TOPUP_ID="$(member topup 10000 --method bank --json | json_get topup_id)"
center operator confirm-topup "$TOPUP_ID" --data-dir "$DEMO/node-a"
STORE_ID="$(WALLET_PASSWORD_B_FILE= store status --json | json_get member_id)"

step "Member pays 1000 JPY (order H-1)"
member pay --store "$STORE_ID" --amount 1000 --order H-1 --yes

LEADER="$(bash scripts/ha-cluster.sh leader)"
step "Node loss: kill -9 of the primary database node $LEADER (its Patroni and PostgreSQL)"
bash scripts/ha-cluster.sh kill-node "$LEADER"
SECONDS=0
step "Member pays 2000 JPY (order H-2): the center answers 503 until a standby is promoted; the wallet resends the same bytes"
member pay --store "$STORE_ID" --amount 2000 --order H-2 --yes
echo "paid ${SECONDS} s after the kill"
bash scripts/ha-cluster.sh status

step "Center node A is killed too (kill -9): the wallet goes on through node B"
kill -9 "$NODE_A_PID"
member pay --store "$STORE_ID" --amount 3000 --order H-3 --yes
member balance

step "The books on the new primary: the ledger sums to zero, the audit log and its signed tree heads verify"
center ledger check --data-dir "$DEMO/node-b"
center audit verify --data-dir "$DEMO/node-b"
WALLET_PASSWORD_B_FILE= member history

step "The old primary $LEADER comes back and rejoins as a standby (pg_rewind through Patroni)"
bash scripts/ha-cluster.sh start-node "$LEADER"
for _ in $(seq 1 60); do
    bash scripts/ha-cluster.sh status 2>/dev/null | grep -E "\| $LEADER .*(streaming|running)" >/dev/null && break
    sleep 1
done
bash scripts/ha-cluster.sh status

step "Demo finished: files are in $DEMO; the cluster and both centers stop now"
