#!/usr/bin/env bash
# Install what tokenpay needs on a Debian machine: system packages (apt-get)
# and the Python packages into ./.venv. Safe to run again; skips what is there.
# Used by scripts/demo.sh and scripts/test.sh; works as root without a TTY.
set -euo pipefail
cd "$(dirname "$0")/.."

# softhsm2: PKCS#11 tokens; pcscd + vsmartcard-vpcd: PC/SC with virtual readers;
# libpcsclite-dev + swig + gcc + python3-dev: pyscard builds against them where no wheel fits;
# chromium: the operator console's browser tests (Playwright drives Debian's build, never its own download);
# postgresql-client: pg_dump/pg_restore for `center backup` and `center restore` on PostgreSQL;
# wrk: the load generator of bench/bench_payments.py;
# patroni + etcd-server + etcd-client + python3-etcd: the backup center's PostgreSQL cluster (scripts/ha-cluster.sh).
APT_PACKAGES=(softhsm2 ca-certificates curl pcscd vsmartcard-vpcd libpcsclite-dev swig gcc python3-dev chromium postgresql-client wrk opensc patroni etcd-server etcd-client python3-etcd)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"tokenpay needs Python 3.11 or newer; this is {sys.version.split()[0]}")
PY

# Reinstall only when the dependency list changed.
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# Byte-compile the project as `pip install .` does at install time. An editable install leaves it to
# each process, and where the environment sets PYTHONDONTWRITEBYTECODE no process ever writes a .pyc:
# every `wallet` or `center` run then compiled ~290 modules from source, ~0.1 s of each start-up
# (bench/bench_wallet_startup.py). Up-to-date files are skipped; a stale one is compiled again.
.venv/bin/python -m compileall -q -j 0 paywire tokens hostkit token_wallet center >/dev/null
