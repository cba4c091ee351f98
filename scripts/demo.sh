#!/usr/bin/env bash
# The full demo on the embedded default (SQLite), over HTTPS, on SoftHSM tokens:
# a center, a member and a store, each with a key generated on its own token.
# Everything lives in ./demo-run (made afresh); the center stops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

ROOT="$PWD"
DEMO="$ROOT/demo-run"
PATH="$ROOT/.venv/bin:$PATH"
PORT="${DEMO_PORT:-8443}"
export COLUMNS="${COLUMNS:-120}"  # wide tables even without a terminal
rm -rf "$DEMO"
mkdir -m 700 -p "$DEMO/secrets"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Demo secrets in files (0600), as automation would pass them; a person would
# type them at the no-echo prompts instead.
secret() { umask 077; printf '%s\n' "$2" > "$DEMO/secrets/$1"; }
secret member-a "member vault passphrase"; secret member-b "4711-member"; secret member-so "so-member-123"
secret store-a "store vault passphrase";   secret store-b "4711-store";   secret store-so "so-store-123"

step "Tokens: one SoftHSM token each for the member and the store"
export SOFTHSM2_CONF="$DEMO/tokens/softhsm2.conf"
bash softhsm_config/make-token.sh --dir "$DEMO/tokens" --label member-token \
    --so-pin-file "$DEMO/secrets/member-so" --pin-file "$DEMO/secrets/member-b" >/dev/null
bash softhsm_config/make-token.sh --dir "$DEMO/tokens" --label store-token \
    --so-pin-file "$DEMO/secrets/store-so" --pin-file "$DEMO/secrets/store-b" >/dev/null
softhsm2-util --show-slots | grep -E 'Label:\s+(member|store)-token' || true

step "Center: init (SQLite, its own token key, TLS certificate) and serve on https://127.0.0.1:$PORT"
center init --data-dir "$DEMO/center" --currency JPY
center serve --data-dir "$DEMO/center" --port "$PORT" > "$DEMO/center.log" 2>&1 &
CENTER_PID=$!
trap 'kill $CENTER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -fsS --cacert "$DEMO/center/center-cert.pem" "https://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS --cacert "$DEMO/center/center-cert.pem" "https://127.0.0.1:$PORT/healthz"; echo

MODULE="$(.venv/bin/python -c 'from token_wallet.tokens.softhsm import find_softhsm_module as f; print(f())')"
member() { WALLET_HOME="$DEMO/member" WALLET_PASSWORD_A_FILE="$DEMO/secrets/member-a" \
    WALLET_PASSWORD_B_FILE="$DEMO/secrets/member-b" WALLET_SO_PIN_FILE="$DEMO/secrets/member-so" wallet "$@"; }
store() { WALLET_HOME="$DEMO/store" WALLET_PASSWORD_A_FILE="$DEMO/secrets/store-a" \
    WALLET_PASSWORD_B_FILE="$DEMO/secrets/store-b" WALLET_SO_PIN_FILE="$DEMO/secrets/store-so" wallet "$@"; }
json_get() { .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
CENTER=(--center "https://127.0.0.1:$PORT" --center-cert "$DEMO/center/center-cert.pem")

step "Member: generate the signing key on the token (wrapped mode) and create the password-A vault"
member init --pkcs11-module "$MODULE" --token-label member-token
step "Store: the same, with an Ed25519 key"
store init --pkcs11-module "$MODULE" --token-label store-token --key-type ed25519

step "Member enrolls: registration signed on the token, sent over pinned TLS, receipt checked"
member enroll "${CENTER[@]}" --name "Hanako Yamada" --address "1-1 Chiyoda, Tokyo" --birth-date 1985-06-15
step "Store enrolls"
store enroll "${CENTER[@]}" --store --name "Corner Shop" --address "2-2 Shibuya, Tokyo" --bank-account "JP-0009-7654321"

step "Member tops up 10000 JPY by bank transfer (a signed request; pending until funding is confirmed)"
TOPUP_ID="$(member topup 10000 --method bank --json | json_get topup_id)"
echo "top-up $TOPUP_ID is pending"
step "Operator confirms the top-up (the bank transfer arrived)"
center operator confirm-topup "$TOPUP_ID" --data-dir "$DEMO/center"
member balance

STORE_ID="$(WALLET_PASSWORD_B_FILE= store status --json | json_get member_id)"
step "Member pays the store 3500 JPY for order A-1001 (confirmation shown, password B signs on the token)"
PAYMENT_ID="$(member pay --store "$STORE_ID" --amount 3500 --order A-1001 --yes --json | tee /dev/stderr | json_get payment_id)"
step "Member tries to pay more than the balance: refused, nothing changes"
member pay --store "$STORE_ID" --amount 999999 --order A-1002 --yes || echo "(refused as expected)"

step "Store fetches its payment notices; each is verified against the center's signature"
store notices
step "Store refunds 500 JPY of the payment"
store refund "$PAYMENT_ID" --amount 500
step "Store claims a payout of its balance"
store payout
step "Center exports the payouts as an ISO 20022 pain.001 file and settles them"
center payouts export "$DEMO/payouts-pain001.xml" --data-dir "$DEMO/center"
head -c 600 "$DEMO/payouts-pain001.xml"; echo " ..."
center payouts settle --data-dir "$DEMO/center"

step "Center checks: ledger sums to zero and matches the transfers; audit chain intact"
center ledger check --data-dir "$DEMO/center"
center audit verify --data-dir "$DEMO/center"
center audit export "$DEMO/audit-export.jsonl" --data-dir "$DEMO/center"
center audit verify-export "$DEMO/audit-export.jsonl"

step "Member balance (asks the center) and status"
member balance
member status
step "Member history, offline, with password A only"
WALLET_PASSWORD_B_FILE= member history
step "Store history"
WALLET_PASSWORD_B_FILE= store history

step "Demo finished: files are in $DEMO"
