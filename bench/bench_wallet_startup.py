"""Wallet command start-up: where a command's time goes before the KDF, the token and the network.

    .venv/bin/python bench/bench_wallet_startup.py [--runs 7]

For each command it times the whole process (medians of --runs) and splits it:
- `python -c pass`: the interpreter alone, the floor every command pays (the baseline: the other
  figures are also printed as ratios to it);
- imports: `python -X importtime` of what the command loads, largest packages first;
- the KDF: Argon2id with the wallet's default parameters, timed alone in this process;
- the rest (argument parsing, help rendering, opening the vault beyond the KDF) is what remains.
Commands: `wallet --version`, `wallet --help`, `wallet history --json` on a small vault made here
(password A from a file; the KDF is DEFAULT_KDF, as a real wallet), and the import of everything
`wallet pay` and `wallet balance` load (a payment needs a token and a center: their own costs, the
token's signature and the round trip, are not the wallet's overhead and are left out).
Issue 16's target: the wallet's own overhead <= 150 ms for pay, balance, history; --help and
--version < 200 ms. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hostkit.sealing import DEFAULT_KDF, derive_keys  # noqa: E402

PYTHON = sys.executable
TARGET_OWN_MS = 150
TARGET_HELP_MS = 200
TOP_IMPORTS = 12


def wall_ms(argv: list[str], env: dict, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, cwd=ROOT)
        times.append((time.perf_counter() - start) * 1000)
        assert done.returncode == 0, done.stderr.decode()[-400:]
    return statistics.median(times)


def import_breakdown(code: str, env: dict) -> tuple[float, list[tuple[str, float]]]:
    """Total import time (ms) of `code`, and the packages that spent most of it: each module's own
    time (not counting what it imported) summed per top-level package name."""
    done = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True, cwd=ROOT
    )
    per_package: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        self_us, _cumulative, name = line.removeprefix("import time:").split("|")
        if not self_us.strip().isdigit():
            continue  # the header line
        root = name.strip().split(".")[0]
        per_package[root] = per_package.get(root, 0) + int(self_us) / 1000
    total = sum(per_package.values())
    return total, sorted(per_package.items(), key=lambda item: -item[1])[:TOP_IMPORTS]


def kdf_ms(runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        derive_keys(b"bench password A", DEFAULT_KDF, b"\0" * 16)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def make_vault(directory: Path) -> tuple[Path, Path]:
    """A wallet home with a small vault (DEFAULT_KDF) and its password A file."""
    sys.path.insert(0, str(ROOT / "tests"))
    from token_wallet.vault import Vault

    home = directory / "home"
    password_file = directory / "a.txt"
    password_file.write_text("bench password A\n")
    password_file.chmod(0o600)
    history = [
        {
            "at_ms": 1_700_000_000_000 + i,
            "type": "pay",
            "msg_id": f"m{i}",
            "outcome": "accepted",
            "details": {},
        }
        for i in range(200)
    ]
    document = {
        "version": 1,
        "center": None,
        "member_id": None,
        "role": None,
        "outbox": [],
        "history": history,
    }
    Vault.create(home / "vault.tpv", "bench password A", document, kdf=DEFAULT_KDF).close()
    return home, password_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WALLET_", "TOKENPAY_FAST"))}
    floor = wall_ms([PYTHON, "-c", "pass"], env, args.runs)
    kdf = kdf_ms(args.runs)
    print(f"python -c pass (the floor): {floor:.0f} ms; Argon2id DEFAULT_KDF alone: {kdf:.0f} ms\n")
    with tempfile.TemporaryDirectory() as scratch:
        home, password_file = make_vault(Path(scratch))
        cases = [
            ("wallet --version", ["--version"], TARGET_HELP_MS, 0.0),
            ("wallet --help", ["--help"], TARGET_HELP_MS, 0.0),
            (
                "wallet history --json",
                ["history", "--json", "--home", str(home), "--password-a-file", str(password_file)],
                TARGET_OWN_MS,
                kdf,
            ),
        ]
        for name, argv, target_ms, kdf_part in cases:
            total = wall_ms([PYTHON, "-m", "token_wallet", *argv], env, args.runs)
            own = total - kdf_part
            verdict = "met" if own <= target_ms else "NOT met"
            print(
                f"{name}: {total:.0f} ms = {floor:.0f} interpreter + {own - floor:.0f} wallet"
                + (f" + {kdf_part:.0f} KDF" if kdf_part else "")
                + f" ({total / floor:.1f} x the floor); own {own:.0f} ms, target {target_ms} ms: {verdict}"
            )
    code = (
        "import token_wallet.cli.main as m; m.assembled_app(); "
        "import token_wallet.client, tokens.pkcs11_token"
    )
    total_imports, top = import_breakdown(code, env)
    print(f"\nimports of every command (what pay and balance load): {total_imports:.0f} ms; largest:")
    for package, spent in top:
        print(f"  {package:<24} {spent:6.0f} ms")


if __name__ == "__main__":
    main()
