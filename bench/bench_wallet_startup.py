"""Wallet command start-up: the wallet's own time, apart from the KDF, the token and the network.

    .venv/bin/python bench/bench_wallet_startup.py [--runs 7] [--port 18443]

Each command runs as a real process `--runs` times (medians). Its wall time is split with the spans
the wallet itself records (hostkit.timing, written to TOKENPAY_TIMING_FILE): Argon2id (`kdf`), the
token's open, login and signature (`token`), and the HTTPS round trips to the center (`center`).
What is left is the wallet's own time: the interpreter, imports, argument parsing, the vault's
reads and writes, checking the receipt, printing. The baseline, measured in the same run, is
`python -c pass` (the interpreter alone): every figure is also printed as a ratio to it.

Commands: `wallet --version`, `wallet --help`, `wallet history --json` (a vault of 200 entries),
and `wallet pay --yes --json` and `wallet balance --json` against a real `center serve` on loopback
with SoftHSM tokens (bench/wallet_world.py; a minute to set up). Then the imports of one `wallet pay`,
largest packages first. Issue 16's targets: the wallet's own time <= 150 ms for pay, balance and
history; --help and --version < 200 ms. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from wallet_world import World, wallet_world  # noqa: E402

from hostkit.sealing import DEFAULT_KDF, derive_keys  # noqa: E402
from hostkit.timing import PARTS, TIMING_FILE_ENV  # noqa: E402

TARGET_OWN_MS = 150
TARGET_HELP_MS = 200
TOP_IMPORTS = 12


def timed_run(
    argv: list[str], env: dict[str, str], timing_file: Path, cwd: Path = ROOT
) -> tuple[float, dict[str, float]]:
    """Wall milliseconds of one run, and the spans it recorded."""
    timing_file.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run(argv, env={**env, TIMING_FILE_ENV: str(timing_file)}, capture_output=True, cwd=cwd)
    wall_ms = (time.perf_counter() - start) * 1000
    assert done.returncode == 0, done.stderr.decode()[-400:]
    spans = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    return wall_ms, spans


def measure(
    argv_of_run, env: dict[str, str], runs: int, timing_file: Path, cwd: Path = ROOT
) -> dict[str, float]:
    """Medians over `runs` of the wall time, each span, and the wallet's own time (wall - spans)."""
    rows = []
    for index in range(runs):
        wall_ms, spans = timed_run(argv_of_run(index), env, timing_file, cwd)
        row = {"wall": wall_ms, **{part: spans.get(part, 0.0) for part in PARTS}}
        row["own"] = wall_ms - sum(row[part] for part in PARTS)
        rows.append(row)
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def report(name: str, figures: dict[str, float], floor_ms: float, target_ms: int) -> None:
    parts = ", ".join(f"{part} {figures[part]:.0f}" for part in PARTS if figures[part] >= 0.5)
    verdict = "met" if figures["own"] <= target_ms else "NOT met"
    print(
        f"{name:<24} wall {figures['wall']:5.0f} ms = own {figures['own']:4.0f}"
        + (f" + {parts}" if parts else "")
        + f"; own = {figures['own'] / floor_ms:.1f} x the floor; target {target_ms} ms: {verdict}"
    )


def report_before(argv_of_run, figures, before: list[str], env, runs: int, timing_file: Path) -> None:
    """The same command from an earlier checkout (`before`: its tree, then its dependencies), run as
    `python -m token_wallet`. An earlier version may record no spans: its own time is then taken as
    its wall time minus the spans of this version's runs (the same KDF, token and center)."""
    tree, *deps = before
    env = {**env, "PYTHONPATH": ":".join([*deps, tree])}
    # Run from the tree: `python -m` puts the working directory first on sys.path, before PYTHONPATH.
    then = measure(
        lambda i: [sys.executable, "-m", "token_wallet", *argv_of_run(i)[1:]],
        env,
        runs,
        timing_file,
        Path(tree),
    )
    spans_ms = sum(then[part] for part in PARTS) or sum(figures[part] for part in PARTS)
    own_ms = then["wall"] - spans_ms
    ratio = figures["own"] / own_ms
    print(f"{'  before':<24} wall {then['wall']:5.0f} ms, own {own_ms:4.0f}; now / before = {ratio:.2f}")


def import_breakdown(argv: list[str], env: dict[str, str]) -> tuple[float, list[tuple[str, float]]]:
    """Import time (ms) of one run of `argv` (a wallet command), and the packages that spent most:
    each module's own time summed per top-level package."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "token_wallet", *argv[1:]],
        env=env, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    per_package: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        self_us, _cumulative, name = line.removeprefix("import time:").split("|")
        if self_us.strip().isdigit():  # not the header line
            root = name.strip().split(".")[0]
            per_package[root] = per_package.get(root, 0) + int(self_us) / 1000
    total = sum(per_package.values())
    return total, sorted(per_package.items(), key=lambda item: -item[1])[:TOP_IMPORTS]


def run_cases(world: World, runs: int, floor_ms: float, scratch: Path, before: list[str] | None) -> None:
    timing_file = scratch / "timing.json"
    member = world.party_env("member")
    pay = ["pay", "--store", world.store_id, "--amount", "1", "--yes", "--json"]
    cases = [
        ("wallet --version", lambda i: world.wallet_argv("--version"), TARGET_HELP_MS),
        ("wallet --help", lambda i: world.wallet_argv("--help"), TARGET_HELP_MS),
        ("wallet history --json", lambda i: world.wallet_argv("history", "--json"), TARGET_OWN_MS),
        ("wallet balance --json", lambda i: world.wallet_argv("balance", "--json"), TARGET_OWN_MS),
        (
            "wallet pay --yes --json",
            lambda i: world.wallet_argv(*pay, "--order", f"bench-{time.time_ns()}-{i}"),
            TARGET_OWN_MS,
        ),
    ]
    for name, argv_of_run, target_ms in cases:
        figures = measure(argv_of_run, member, runs, timing_file)
        report(name, figures, floor_ms, target_ms)
        if before:
            report_before(argv_of_run, figures, before, member, runs, timing_file)
    total, top = import_breakdown(
        world.wallet_argv(*pay, "--order", f"bench-imports-{time.time_ns()}"), member
    )
    print(f"\nimports of one `wallet pay`: {total:.0f} ms; largest:")
    for package, spent in top:
        print(f"  {package:<24} {spent:6.0f} ms")
    print("\nthe same commands run again in one process that has imported everything (what a wallet")
    print("agent that forks a warm process per command would leave, plus its client's start):")
    for name, args in (("history --json", ["history", "--json"]), ("balance --json", ["balance", "--json"])):
        print(f"  wallet {name:<22} own {warm_own_ms(args, member, runs):5.1f} ms")
    print(f"  wallet {'pay --yes --json':<22} own {warm_own_ms(pay, member, runs, order=True):5.1f} ms")


# Runs a command `runs` times in one process after one run that imports what it needs; prints the
# median of wall minus the spans (hostkit.timing) of each run.
WARM_PROBE = """
import statistics, sys, time
from hostkit import timing
from token_wallet.cli.main import main
argv, runs, order = {argv!r}, {runs}, {order}
def once(index):
    sys.argv = ["wallet", *argv] + (["--order", f"warm-{{time.time_ns()}}-{{index}}"] if order else [])
    before = sum(timing.spent_ms().values())
    start = time.perf_counter()
    try:
        main()
    except SystemExit as done:
        assert not done.code, done.code
    return (time.perf_counter() - start) * 1000 - (sum(timing.spent_ms().values()) - before)
once(-1)
print(statistics.median(once(i) for i in range(runs)))
"""


def warm_own_ms(argv: list[str], env: dict[str, str], runs: int, *, order: bool = False) -> float:
    code = WARM_PROBE.format(argv=argv, runs=runs, order=order)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-400:]
    return float(done.stdout.strip().splitlines()[-1])


def default_kdf_ms() -> float:
    start = time.perf_counter()
    derive_keys(b"bench password A", DEFAULT_KDF, b"\0" * 16)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--port", type=int, default=18443)
    parser.add_argument(
        "--before",
        nargs="+",
        metavar="DIR",
        help="a checkout of an earlier version (e.g. a git worktree), then any directories of the "
        "dependencies it needs first on PYTHONPATH: each command is also run from it, in the same world",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        print("setting up a center, a member and a store (SoftHSM, SQLite) ...", flush=True)
        with wallet_world(Path(scratch), port=args.port) as world:
            floor = statistics.median(
                timed_run([sys.executable, "-c", "pass"], world.env, Path(scratch) / "t.json")[0]
                for _ in range(args.runs)
            )
            kdf_ms = statistics.median(default_kdf_ms() for _ in range(args.runs))
            print(
                f"python -c pass (the floor): {floor:.0f} ms; Argon2id with the wallet's default "
                f"parameters, alone: {kdf_ms:.0f} ms (the bench's vaults use the smallest KDF: its "
                f"span is shown apart); medians of {args.runs} runs\n"
            )
            run_cases(world, args.runs, floor, Path(scratch), args.before)


if __name__ == "__main__":
    main()
