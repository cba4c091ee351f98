"""The wallet starts quickly (issue 16, point 3): a command loads only its own module and what it uses.

- token_wallet.cli.command_index is a copy of what the command modules define (name, one-line help,
  module, order); `wallet --help` lists every command from it without importing any command module.
- A real `wallet history --json` loads neither HTTP, Rich, the token drivers, X.509 nor pydantic;
  `wallet --help` loads no command module and no cryptography.
- The spans the start-up bench splits a run by (hostkit.timing) are recorded by real runs: the KDF
  for `history`, and the KDF, the token and the center for a real `pay`.

Times are measured by bench/bench_wallet_startup.py, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from support import cli_env, run_cli
from test_payments_e2e import enrolled_pair, fund

from hostkit.sealing import MINIMUM_KDF
from hostkit.timing import PARTS, TIMING_FILE_ENV
from token_wallet.cli.command_index import COMMANDS, MODULE_PACKAGE
from token_wallet.cli.main import assembled_app
from token_wallet.vault import Vault

ROOT = Path(__file__).resolve().parents[1]
PASSWORD_A = "startup test passphrase"
PROBE_TIMEOUT_S = 60
# What a run that neither talks to the center, signs nor prints for people must not load.
NOT_FOR_HISTORY_JSON = (
    "httpx",
    "rich",
    "pydantic",
    "pkcs11",
    "smartcard",
    "cryptography.x509",
    "tokens.pkcs11_token",
    "token_wallet.client",
    "token_wallet.cli.money",
    "token_wallet.cli.keys",
    "token_wallet.cli.operator",
)


def first_paragraph(command) -> str:
    return (command.short_help or command.help or "").split("\n\n")[0].strip()


def command_modules(command) -> set[str]:
    """The modules whose functions a command (or each command of a group) runs."""
    callbacks = [sub.callback for sub in getattr(command, "commands", {}).values()] or [command.callback]
    return {callback.__module__.removeprefix(f"{MODULE_PACKAGE}.") for callback in callbacks}


def test_the_index_is_what_the_command_modules_define():
    group = typer.main.get_command(assembled_app(None))  # every command module imported
    real = group.commands  # what the modules registered, not the index's entries
    # As sets: the order of registration is that of the imports in this process (other tests import
    # command modules too); `wallet --help` shows the index's order (the next test).
    assert set(real) == set(COMMANDS)
    for name, (help_line, modules) in COMMANDS.items():
        assert first_paragraph(real[name]) == help_line, name
        assert command_modules(real[name]) == set(modules), name


def test_help_lists_every_command_without_loading_one():
    result = run_cli("wallet", ["--help"])
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("Commands:", 1)[1].splitlines()
    names = [line.split()[0] for line in listed if line.startswith("  ") and not line.startswith("   ")]
    assert names == list(COMMANDS), result.stdout
    assert not any(line.endswith("...") for line in listed), "a command's help line was cut"
    loaded = loaded_modules(["--help"], ("token_wallet.cli.common", "cryptography", "rich", "pydantic"))
    assert loaded == [], loaded


def loaded_modules(argv: list[str], watched: tuple[str, ...], env: dict[str, str] | None = None) -> list[str]:
    """Which of `watched` (or their submodules) a real run of `wallet argv` imported."""
    probe = (
        "import atexit, sys\n"
        f"watched = {watched!r}\n"
        "atexit.register(lambda: print('LOADED', *sorted({w for w in watched for m in sys.modules "
        "if m == w or m.startswith(w + '.')}), file=sys.stderr))\n"
        f"sys.argv = ['wallet', *{argv!r}]\n"
        "from token_wallet.cli.main import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("LOADED")][-1].split()[1:]


@pytest.fixture
def small_vault(tmp_path) -> tuple[Path, Path]:
    home = tmp_path / "home"
    password_file = tmp_path / "a.txt"
    password_file.write_text(PASSWORD_A + "\n")
    history = [
        {
            "at_ms": 1_700_000_000_000 + i,
            "type": "pay",
            "msg_id": f"m{i}",
            "outcome": "accepted",
            "details": {},
        }
        for i in range(3)
    ]
    document = {
        "version": 1,
        "center": None,
        "member_id": None,
        "role": None,
        "outbox": [],
        "history": history,
    }
    Vault.create(home / "vault.tpv", PASSWORD_A, document, kdf=MINIMUM_KDF).close()
    return home, password_file


def test_history_json_loads_no_network_token_or_rich(small_vault):
    home, password_file = small_vault
    argv = ["history", "--json", "--home", str(home), "--password-a-file", str(password_file)]
    result = run_cli("wallet", argv)
    assert result.returncode == 0, result.stderr
    assert sorted(entry["msg_id"] for entry in json.loads(result.stdout)["entries"]) == ["m0", "m1", "m2"]
    assert loaded_modules(argv, NOT_FOR_HISTORY_JSON) == []


def test_the_timing_file_holds_the_kdf_of_a_history_run(small_vault, tmp_path):
    home, password_file = small_vault
    timing_file = tmp_path / "timing.json"
    argv = ["history", "--json", "--home", str(home), "--password-a-file", str(password_file)]
    result = run_cli("wallet", argv, env=cli_env(**{TIMING_FILE_ENV: str(timing_file)}))
    assert result.returncode == 0, result.stderr
    spans = json.loads(timing_file.read_text())
    assert set(spans) == set(PARTS)
    assert spans["kdf"] > 0 and spans["token"] == 0 and spans["center"] == 0, spans
    # Without the variable, nothing is written.
    timing_file.unlink()
    assert run_cli("wallet", argv).returncode == 0
    assert not timing_file.exists()
    # A file that cannot be written: one warning line, the command's own outcome stands.
    unwritable = tmp_path / "no-such-dir" / "timing.json"
    result = run_cli("wallet", argv, env=cli_env(**{TIMING_FILE_ENV: str(unwritable)}))
    assert result.returncode == 0 and json.loads(result.stdout)["entries"], result.stderr
    assert result.stderr.strip().splitlines() == [
        f"warning: cannot write {TIMING_FILE_ENV} {unwritable}: No such file or directory"
    ]


@pytest.mark.slow
def test_a_real_payment_records_the_kdf_the_token_and_the_center(tmp_path, make_softhsm_token, live_center):
    member, _store, store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    fund(member, live_center, "1000")
    timing_file = tmp_path / "pay-timing.json"
    paid = member.json(
        "pay", "--store", store_id, "--amount", "100", "--order", "T-1", "--yes",
        **{TIMING_FILE_ENV: str(timing_file)},
    )  # fmt: skip
    assert paid["balance_minor"] == 900
    spans = json.loads(timing_file.read_text())
    assert all(spans[part] > 0 for part in PARTS), spans
