"""Issue 11, points 5 and 6, tried as an attacker would, on a real `center serve` over HTTPS:

- anyone who reaches the public port polls GET /metrics around a purchase and reads its amount
  from the payment counters: the public port serves no metrics, the loopback listener does;
- another user of the machine reads the data directory (names, addresses, birth dates, bank
  accounts in center.db; the token PIN; the TLS key) or the wallet vault: `center init` leaves
  nothing open to others, `center serve` and the wallet refuse to run on open files, in one line
  with the chmod that fixes it;
- a second `center serve` on the same data directory that fails to start wipes the running
  server's counters: it no longer does.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import httpx
import pytest
from metrics_support import MetricsCenter, value
from ops_support import STORE_NAME, SignedClient, funded_member, pay_body
from support import SOFTHSM_MODULE, cli_env, free_port, run_cli

from token_wallet.client import pinned_ssl_context

PURCHASE_MINOR = 4_321  # an amount that shows in the counters if they are served
REFUSAL_TIMEOUT_S = 20  # a refusing `center serve` exits in about a second; one that serves never does


def open_paths(root: Path) -> list[str]:
    """Every path under root (root included) that group or others can access."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if not path.is_symlink() and mode & 0o077:
            found.append(f"{oct(mode)} {path}")
    return found


@pytest.fixture(scope="module")
def initialised(tmp_path_factory):
    """`center init` into an existing 0755 directory, its SQLite file a pre-existing 0644 file elsewhere."""
    base = tmp_path_factory.mktemp("exposure")
    data_dir, outside = base / "center", base / "outside"
    data_dir.mkdir(mode=0o755)
    outside.mkdir()
    database = outside / "center.db"
    database.touch(mode=0o644)  # an empty file is an empty SQLite database
    previous = os.umask(0o022)  # a usual login umask, whatever the test runner has
    try:
        os.chmod(data_dir, 0o755)
        os.chmod(database, 0o644)
        made = run_cli("center", ["init", "--data-dir", str(data_dir), "--db", f"sqlite:///{database}"])
    finally:
        os.umask(previous)
    assert made.returncode == 0, made.stderr
    return data_dir, database


@pytest.fixture(scope="module")
def served(initialised):
    data_dir, _database = initialised
    center = MetricsCenter(data_dir=data_dir, port=free_port())
    center.start()
    yield center
    center.stop()


# --- (b) init leaves nothing open --------------------------------------------------------------


def test_init_makes_an_existing_open_directory_and_every_file_private(initialised):
    data_dir, database = initialised
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert open_paths(data_dir) == []
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert (data_dir / "secrets" / "token-pin").exists() and (data_dir / "tls" / "key.pem").exists()


# --- (c) serve refuses open files, before anything listens ----------------------------------------


def _refused_serve(data_dir: Path, path: Path, mode: int, fix: str) -> None:
    port = free_port()
    original = stat.S_IMODE(path.stat().st_mode)
    os.chmod(path, mode)
    try:
        result = run_cli(
            "center", ["serve", "--data-dir", str(data_dir), "--port", str(port)], timeout_s=REFUSAL_TIMEOUT_S
        )
    finally:
        os.chmod(path, original)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert str(path) in lines[0] and f"chmod {fix} {path}" in lines[0], lines[0]
    with socket.socket() as sock:  # refused before uvicorn ever bound the port
        assert sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("name", "mode", "fix"),
    [
        ("", 0o755, "700"),  # the data directory itself
        ("secrets/token-pin", 0o644, "600"),  # the PIN of the center's token
        ("tls/key.pem", 0o640, "600"),  # group-readable is open too
        ("config.json", 0o604, "600"),
    ],
    ids=["data-dir", "token-pin", "tls-key", "config"],
)
def test_serve_refuses_a_data_directory_others_can_read(initialised, name, mode, fix):
    data_dir, _database = initialised
    _refused_serve(data_dir, data_dir / name if name else data_dir, mode, fix)


def test_serve_refuses_a_database_others_can_read(initialised):
    data_dir, database = initialised
    _refused_serve(data_dir, database, 0o644, "600")


# --- (a) the public port serves no metrics; the loopback listener does ----------------------------


def test_public_port_shows_no_payment_volume_and_the_loopback_scrape_does(served, initialised):
    public = httpx.Client(
        base_url=served.url, verify=pinned_ssl_context(served.cert.read_bytes()), timeout=30
    )
    client = SignedClient(served)
    try:
        before = public.get("/metrics")
        _store, store_id = client.enroll("store", name=STORE_NAME)
        member, _ = funded_member(client, served, 10_000)
        client.result(member, "pay", pay_body(store_id, PURCHASE_MINOR, "watched"))
        after = public.get("/metrics")
    finally:
        client.close()
        public.close()
    for answer in (before, after):
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", answer.text
        assert "tokenpay_" not in answer.text and str(PURCHASE_MINOR) not in answer.text
    samples = served.scrape()  # as Prometheus does: plain HTTP on 127.0.0.1
    assert value(samples, "tokenpay_payments_total") == 1
    assert value(samples, "tokenpay_payment_amount_minor_total") == PURCHASE_MINOR
    with socket.socket() as sock:  # bound to 127.0.0.1 alone, not to every address
        assert sock.connect_ex(("127.0.0.2", served.metrics_port)) != 0
    # What the serving processes wrote meanwhile (metrics files, SQLite's -wal/-shm) is private too.
    assert open_paths(served.data_dir) == []
    _data_dir, database = initialised
    written = {path.name: stat.S_IMODE(path.stat().st_mode) for path in database.parent.iterdir()}
    assert "center.db-wal" in written and all(mode == 0o600 for mode in written.values()), written


# --- (e) a failed second server leaves the running one's counters ---------------------------------


def test_a_second_serve_that_fails_leaves_the_first_ones_metrics(served):
    counted = value(served.scrape(), "tokenpay_payments_total")
    files = sorted((served.data_dir / "metrics").rglob("*.db"))
    assert counted >= 1 and files
    second = run_cli(
        "center", ["serve", "--data-dir", str(served.data_dir), "--port", str(served.port)], timeout_s=60
    )
    assert second.returncode != 0  # the port is taken
    assert all(path.exists() for path in files)
    assert value(served.scrape(), "tokenpay_payments_total") == counted


# --- (d) the wallet home ---------------------------------------------------------------------------


def test_wallet_refuses_a_home_or_vault_others_can_read(tmp_path, make_softhsm_token):
    label, _so_pin, pin = make_softhsm_token()
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o755)  # made by a plain mkdir before `wallet init`
    (tmp_path / "a").write_text("A-exposure-passphrase\n")
    (tmp_path / "b").write_text(pin + "\n")
    env = cli_env(
        WALLET_HOME=str(home),
        WALLET_PASSWORD_A_FILE=str(tmp_path / "a"),
        WALLET_PASSWORD_B_FILE=str(tmp_path / "b"),
    )
    made = run_cli(
        "wallet",
        [
            "init",
            "--pkcs11-module",
            SOFTHSM_MODULE,
            "--token-label",
            label,
            "--key-mode",
            "resident",
            "--json",
        ],
        env=env,
    )
    assert made.returncode == 0, made.stderr
    home = Path(json.loads(made.stdout)["home"])  # as the wallet names it (resolved)
    vault = home / "vault.tpv"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700 and open_paths(home) == []
    content = vault.read_bytes()
    for path, mode, fix in ((home, 0o755, "700"), (vault, 0o644, "600")):
        os.chmod(path, mode)
        try:
            result = run_cli("wallet", ["history"], env=env)
        finally:
            os.chmod(path, 0o700 if path == home else 0o600)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert f"chmod {fix} {path}" in lines[0], lines[0]
    assert vault.read_bytes() == content
    assert run_cli("wallet", ["history"], env=env).returncode == 0  # private again: it opens
