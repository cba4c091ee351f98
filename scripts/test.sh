#!/usr/bin/env bash
# Run the whole test suite: SoftHSM tokens, SQLite, PostgreSQL, real HTTPS.
# Installs what is missing. Uses the PostgreSQL server at 127.0.0.1:5432 when
# one answers (or at $TOKENPAY_TEST_PG_URL); otherwise installs PostgreSQL and
# starts a throwaway cluster (scripts/throwaway-postgres.sh) for this run.
# Extra arguments go to pytest (e.g. scripts/test.sh -k enroll).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Lint first: a style error or a broken import contract (layers, cycles) stops the run in seconds.
# The tests run these too (tests/test_architecture.py runs lint-imports); here they fail with one line.
lint_failed=()
.venv/bin/ruff check --no-cache --quiet . || lint_failed+=("ruff check (see above)")
if ! contracts="$(.venv/bin/lint-imports --no-cache --no-logo 2>&1)"; then
    echo "$contracts"
    lint_failed+=("lint-imports (import contracts, see above)")
fi
if [ "${#lint_failed[@]}" -gt 0 ]; then
    echo "lint failed: ${lint_failed[*]}" >&2
    exit 1
fi

PG_URL="${TOKENPAY_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/test}"
throwaway=""
pg_answers() { .venv/bin/python -c "import psycopg,sys; psycopg.connect(sys.argv[1], connect_timeout=3).close()" "$1" 2>/dev/null; }

if ! pg_answers "$PG_URL"; then
    echo "PostgreSQL does not answer at $PG_URL: starting a throwaway cluster"
    bash scripts/throwaway-postgres.sh start
    throwaway="yes"
    PG_URL="$(bash scripts/throwaway-postgres.sh url)"
fi
cleanup() { [ -z "$throwaway" ] || bash scripts/throwaway-postgres.sh stop; }
trap cleanup EXIT

export TOKENPAY_TEST_PG_URL="$PG_URL"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 "$@"
status=$?
set -e
exit $status
