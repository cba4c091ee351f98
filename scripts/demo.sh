#!/usr/bin/env bash
# The full demo on the embedded default (SQLite), over HTTPS, on SoftHSM tokens:
# a center, a member, a store and an operator, each with a key generated on its own token;
# then a lost card (revoke, new token, rebind), a key rotation, the console and its access trail,
# /metrics, backup and restore.
# Everything lives in ./demo-run (made afresh); the center stops at the end.
# Runs as root without a TTY: every password and PIN comes from a file.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

ROOT="$PWD"
DEMO="$ROOT/demo-run"
PATH="$ROOT/.venv/bin:$PATH"
PORT="${DEMO_PORT:-8443}"
METRICS_PORT="${DEMO_METRICS_PORT:-9464}"
export COLUMNS="${COLUMNS:-120}"  # wide tables even without a terminal
rm -rf "$DEMO"
mkdir -m 700 -p "$DEMO/secrets"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Demo secrets in files (0600), as automation would pass them; a person would
# type them at the no-echo prompts instead.
secret() { umask 077; printf '%s\n' "$2" > "$DEMO/secrets/$1"; }
secret member-a "member vault passphrase"; secret member-b "4711-member"; secret member-so "so-member-123"
secret store-a "store vault passphrase";   secret store-b "4711-store";   secret store-so "so-store-123"
secret ops-a "operator vault passphrase";  secret ops-b "4711-ops";     secret ops-so "so-ops-123"
secret member-new-b "4712-member-new";     secret member-new-so "so-member-new-123"  # the replacement card
secret backup "backup passphrase for the demo"; secret backup-key "backup key password for the demo"

step "Tokens: one SoftHSM token each for the member, the store and an operator (and the member's spare card)"
export SOFTHSM2_CONF="$DEMO/tokens/softhsm2.conf"
make_token() { bash softhsm_config/make-token.sh --dir "$DEMO/tokens" --label "$1" \
    --so-pin-file "$DEMO/secrets/$2-so" --pin-file "$DEMO/secrets/$2-b" >/dev/null; }
make_token member-token member; make_token store-token store; make_token ops-token ops
make_token member-token-2 member-new
softhsm2-util --show-slots | grep -E 'Label:\s+(member|store|ops)-token' || true

step "Center: init (SQLite, its own token key, TLS certificate) and serve on https://127.0.0.1:$PORT"
center init --data-dir "$DEMO/center" --currency JPY
center serve --data-dir "$DEMO/center" --port "$PORT" --metrics-port "$METRICS_PORT" > "$DEMO/center.log" 2>&1 &
CENTER_PID=$!
trap 'kill $CENTER_PID 2>/dev/null && wait $CENTER_PID 2>/dev/null || true' EXIT  # wait: the port is free once the demo ends
for _ in $(seq 1 100); do
    curl -fsS --cacert "$DEMO/center/center-cert.pem" "https://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS --cacert "$DEMO/center/center-cert.pem" "https://127.0.0.1:$PORT/healthz"; echo

MODULE="$(.venv/bin/python -c 'from tokens.softhsm import find_softhsm_module as f; print(f())')"
MEMBER_CARD=member  # which token's PIN is the member's password B: member, then member-new after the lost card
member() { WALLET_HOME="$DEMO/member" WALLET_PASSWORD_A_FILE="$DEMO/secrets/member-a" \
    WALLET_PASSWORD_B_FILE="$DEMO/secrets/$MEMBER_CARD-b" WALLET_SO_PIN_FILE="$DEMO/secrets/$MEMBER_CARD-so" \
    wallet "$@"; }
store() { WALLET_HOME="$DEMO/store" WALLET_PASSWORD_A_FILE="$DEMO/secrets/store-a" \
    WALLET_PASSWORD_B_FILE="$DEMO/secrets/store-b" WALLET_SO_PIN_FILE="$DEMO/secrets/store-so" wallet "$@"; }
ops() { WALLET_HOME="$DEMO/ops" WALLET_PASSWORD_A_FILE="$DEMO/secrets/ops-a" \
    WALLET_PASSWORD_B_FILE="$DEMO/secrets/ops-b" WALLET_SO_PIN_FILE="$DEMO/secrets/ops-so" wallet "$@"; }
json_get() { .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
# Run a --json command, show its answer, print one field of it. (Not `tee /dev/stderr`: when the
# output goes to a file, tee reopens that file and truncates what the demo wrote so far.)
json_field() { local field="$1" out; shift; out="$("$@")" || return 1; printf '%s\n' "$out" >&2
    printf '%s\n' "$out" | json_get "$field"; }
# Run a command that the center must refuse with CODE; stop the demo if it does anything else.
expect_refusal() {
    local code="$1" out; shift
    if out="$("$@" 2>&1)"; then echo "$out"; echo "demo: expected a refusal ($code), the command succeeded"; exit 1; fi
    printf '%s\n' "$out" | grep -q "$code" || { echo "$out"; echo "demo: expected the refusal $code"; exit 1; }
    printf '%s\n' "$out" | tail -n 1; echo "(refused with $code, as expected)"
}
CENTER=(--center "https://127.0.0.1:$PORT" --center-cert "$DEMO/center/center-cert.pem")

step "Member: generate the signing key on the token (wrapped mode) and create the password-A vault"
member init --pkcs11-module "$MODULE" --token-label member-token
step "Store: the same, with an Ed25519 key"
store init --pkcs11-module "$MODULE" --token-label store-token --key-type ed25519

step "Operator: a key on the operator's own token; the administrator adds its public key with the role operator"
ops init --pkcs11-module "$MODULE" --token-label ops-token
ops export-public-key --out "$DEMO/ops-public-key.pem"
center operator add --data-dir "$DEMO/center" --public-key "$DEMO/ops-public-key.pem" --role operator \
    --name "Operator One"
step "Operator attaches the wallet to the center (pinned TLS; a signed whoami names the operator account)"
ops operator attach "${CENTER[@]}"

step "Member enrolls: registration signed on the token, sent over pinned TLS, receipt checked; a recovery code shown once"
# The member writes the recovery code down (here: a file in the secrets folder), apart from the token.
json_field recovery_code member enroll "${CENTER[@]}" --name "Hanako Yamada" --address "1-1 Chiyoda, Tokyo" \
    --birth-date 1985-06-15 --json > "$DEMO/secrets/member-recovery-code"
chmod 600 "$DEMO/secrets/member-recovery-code"
step "Store enrolls"
store enroll "${CENTER[@]}" --store --name "Corner Shop" --address "2-2 Shibuya, Tokyo" --bank-account "JP-0009-7654321"

step "Member tops up 10000 JPY by bank transfer (a signed request; pending until funding is confirmed)"
TOPUP_ID="$(member topup 10000 --method bank --json | json_get topup_id)"
echo "top-up $TOPUP_ID is pending"
step "Operator confirms the top-up (the bank transfer arrived): a request signed on the operator's token"
ops operator confirm-topup "$TOPUP_ID" --yes   # shows member, amount and method, then signs them
member balance

STORE_ID="$(WALLET_PASSWORD_B_FILE= store status --json | json_get member_id)"
step "Member pays the store 3500 JPY for order A-1001 (confirmation shown, password B signs on the token)"
PAYMENT_ID="$(json_field payment_id member pay --store "$STORE_ID" --amount 3500 --order A-1001 --yes --json)"
step "Member tries to pay more than the balance: refused, nothing changes"
expect_refusal insufficient_funds member pay --store "$STORE_ID" --amount 999999 --order A-1002 --yes

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

MEMBER_ID="$(member status --json | json_get member_id)"
OLD_KID="$(member status --json | json_get kid)"
step "Lost card: the member reports it; the administrator finds the key and revokes it"
center operator list-keys --data-dir "$DEMO/center" --party "$MEMBER_ID"
center operator revoke-key "$OLD_KID" --data-dir "$DEMO/center" --reason "card lost"
step "Whatever the lost card signs from now on is refused"
expect_refusal key_revoked member pay --store "$STORE_ID" --amount 100 --order A-1003 --yes
step "Member: a key on the new card in the same wallet (history kept), then a rebind enrollment signed by it"
MEMBER_CARD=member-new
NEW_KID="$(json_field new_kid member replace-key --pkcs11-module "$MODULE" --token-label member-token-2 --json)"
# The recovery code proves the claim is the holder's: strangers' claims naming this id cannot block it.
WALLET_RECOVERY_CODE_FILE="$DEMO/secrets/member-recovery-code" member enroll "${CENTER[@]}" --rebind "$MEMBER_ID" \
    --recovery-code - --name "Hanako Yamada" --address "1-1 Chiyoda, Tokyo" --birth-date 1985-06-15
expect_refusal key_not_bound member pay --store "$STORE_ID" --amount 100 --order A-1004 --yes
step "The administrator compares the claim with the account, then binds the new key to it"
center operator list-keys --data-dir "$DEMO/center" --status pending_bind
center operator bind-key "$NEW_KID" --data-dir "$DEMO/center"
step "Member pays 1000 JPY with the new card, from the same balance"
member pay --store "$STORE_ID" --amount 1000 --order A-1005 --yes

step "Self-service key rotation: a new key on the card, announced in one message signed by both keys"
cp -a "$DEMO/member" "$DEMO/member-before-rotation"  # a stale copy of the wallet, to show the old key refused
member rotate-key
member pay --store "$STORE_ID" --amount 500 --order A-1006 --yes
step "The retired key (from the stale copy of the wallet) is refused"
expect_refusal key_rotated env WALLET_HOME="$DEMO/member-before-rotation" \
    WALLET_PASSWORD_A_FILE="$DEMO/secrets/member-a" WALLET_PASSWORD_B_FILE="$DEMO/secrets/member-new-b" \
    wallet pay --store "$STORE_ID" --amount 100 --order A-1007 --yes
center operator list-keys --data-dir "$DEMO/center" --party "$MEMBER_ID"

step "Member checks the center's log: the newest signed tree head extends the one kept, every receipt is in it"
member audit check
step "Store checks it too"
store audit check

step "Operator console: a browser's login code approved by the operator's token; a search; the access trail"
JAR="$DEMO/console-cookies"  # curl plays the browser here; open https://127.0.0.1:$PORT/console for the page
console_curl() { curl -fsS --cacert "$DEMO/center/center-cert.pem" -b "$JAR" -c "$JAR" "$@"; }
CODE="$(console_curl -X POST "https://127.0.0.1:$PORT/console/api/challenge" | json_get challenge)"
ops console-login "$CODE" --yes   # shows the browser's address, user agent and time, then signs
console_curl "https://127.0.0.1:$PORT/console/api/login-status" >/dev/null
console_curl "https://127.0.0.1:$PORT/console/api/search?q=hanako"; echo
center operator access-log --data-dir "$DEMO/center"

step "Center checks: ledger sums to zero and matches the transfers; audit chain, tree and signed tree heads intact"
center ledger check --data-dir "$DEMO/center"
center audit verify --data-dir "$DEMO/center"
center audit export "$DEMO/audit-export.jsonl" --data-dir "$DEMO/center"
center audit verify-export "$DEMO/audit-export.jsonl"

step "Metrics: Prometheus text on the loopback-only listener (the public port serves none)"
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" \
    | grep -E '^tokenpay_(payments_total|payment_amount_minor_total|errors_total)'

step "Backup while the center serves (encrypted; it holds the center's token and TLS key), signed by the administrator's backup key"
center backup-key create --out "$DEMO/admin-backup-key" --password-file "$DEMO/secrets/backup-key"
center backup "$DEMO/center-backup.tar.gz" --data-dir "$DEMO/center" --password-file "$DEMO/secrets/backup" \
    --signing-key "$DEMO/admin-backup-key/backup-signing-key.pem" --signing-key-password-file "$DEMO/secrets/backup-key"
step "Restore into a fresh data directory: the restore runs the ledger check and the audit verification"
center restore "$DEMO/center-backup.tar.gz" --data-dir "$DEMO/center-restored" --password-file "$DEMO/secrets/backup" \
    --backup-public-key "$DEMO/admin-backup-key/backup-signing-key.pub.pem"
center ledger check --data-dir "$DEMO/center-restored"
center audit verify --data-dir "$DEMO/center-restored"

step "Member balance (asks the center) and status"
member balance
member status
step "Member history, offline, with password A only"
WALLET_PASSWORD_B_FILE= member history
step "Store history (the newest 5 entries) and the notices it keeps, both with password A only"
WALLET_PASSWORD_B_FILE= store history --limit 5
WALLET_PASSWORD_B_FILE= store notices --stored --limit 5

step "Demo finished: files are in $DEMO"
