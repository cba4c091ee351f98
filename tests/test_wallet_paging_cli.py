"""`wallet history` and `wallet notices --stored` page the vault's records, through the real CLI.

Each test runs `python -m token_wallet` as a subprocess against a wallet home built with the Python
API (no center, no token: these commands use password A only and must never sign). Covered: the
default and --limit pages of the history, --since with exact at_ms boundaries (UTC and with an
offset), the refusals of bad --limit and --since, the stored notices of a store wallet, and the
migration of a first-format vault by the first command that opens it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support import cli_env, run_cli

from hostkit.sealing import MINIMUM_KDF
from paywire.envelope import b64url_encode
from token_wallet.document import new_document
from token_wallet.vault import Vault
from token_wallet.vault_v1 import VaultV1
from tokens.base import ALGORITHM_FOR_KEY_TYPE, KeyMode, KeyRecord, KeyType

PASSWORD_A = "paging test passphrase A"
HISTORY_COUNT = 250
NOTICE_COUNT = 30
STEP_MS = 3_600_000  # one hour between entries: dates and times fall on known indices
BASE_MS = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp() * 1000)
SQLITE_MAGIC = b"SQLite format 3\x00"
# Nothing answers here: a command that tried to reach the center or the token would fail.
MISSING_MODULE = "/nonexistent/libno-such-pkcs11.so"


# --- building a wallet home without a center or a token ---------------------------------------------


def entry_at_ms(index: int) -> int:
    return BASE_MS + index * STEP_MS


def history_entry(index: int) -> dict:
    return {
        "at_ms": entry_at_ms(index),
        "type": "pay",
        "msg_id": f"msg-{index:04d}",
        "outcome": "accepted",
        "details": {"amount_minor": 100 + index, "currency": "JPY"},
    }


def notice_item(index: int) -> dict:
    """Shaped like Wallet._signed_notices keeps one (the envelope is never re-checked by --stored)."""
    notice = {
        "payment_id": f"pay-{index:04d}",
        "buyer_id": f"m-buyer{index % 3}",
        "store_id": "s-store1",
        "amount_minor": 500 + index,
        "currency": "JPY",
        "order_ref": f"order-{index}",
        "paid_at_ms": entry_at_ms(index),
    }
    envelope = {"payload": b64url_encode(b"{}"), "alg": "ES256", "kid": "center-kid", "sig": "c2ln"}
    return {"notice": notice, "envelope": envelope}


def key_record() -> KeyRecord:
    """A plausible resident P-256 key: only its public half exists, nothing here signs with it."""
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    spki_der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyRecord(
        mode=KeyMode.RESIDENT,
        key_type=KeyType.P256,
        algorithm=ALGORITHM_FOR_KEY_TYPE[KeyType.P256],
        spki_der=spki_der,
        handle={"id": "01"},
    )


def wallet_document(role: str, *, notices: bool) -> dict:
    token_doc = {"kind": "pkcs11", "module": MISSING_MODULE, "label": "paging", "serial": "0001"}
    doc = new_document(token_doc, key_record())
    doc["member_id"] = "s-store1" if role == "store" else "m-member1"
    doc["role"], doc["key_status"] = role, "active"
    doc["center"] = {
        "url": "https://center.invalid:8443",
        "cert_pem": "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
        "center_id": "c-test",
        "receipt_spki": b64url_encode(b"not used by these commands"),
        "receipt_alg": "ES256",
        "currency": "JPY",
    }
    doc["history"] = [history_entry(i) for i in range(HISTORY_COUNT)]
    doc["history_at_ms"] = entry_at_ms(HISTORY_COUNT - 1)
    doc["notices"] = [notice_item(i) for i in range(NOTICE_COUNT)] if notices else []
    doc["notices_cursor"] = len(doc["notices"])
    return doc


def password_file(directory: Path) -> Path:
    path = directory / "password-a"
    path.write_text(PASSWORD_A + "\n")
    path.chmod(0o600)
    return path


def make_home(root: Path, role: str = "store", *, v1: bool = False) -> Path:
    """A wallet home (0700, vault 0600) holding 250 history entries and, for a store, 30 notices."""
    home = root / f"home-{role}{'-v1' if v1 else ''}"
    home.mkdir(mode=0o700)
    document = wallet_document(role, notices=role == "store")
    if v1:
        VaultV1.create(home / "vault.tpv", PASSWORD_A, document, kdf=MINIMUM_KDF)
    else:
        Vault.create(home / "vault.tpv", PASSWORD_A, document, kdf=MINIMUM_KDF).close()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "vault.tpv").stat().st_mode) == 0o600
    return home


def wallet(home: Path, *args: str):
    """Run `wallet ARGS --home HOME --password-a-file F` with no password B, token or home in the env."""
    env = cli_env()
    for name in ("WALLET_HOME", "WALLET_PASSWORD_A_FILE", "WALLET_PASSWORD_B_FILE", "WALLET_SO_PIN_FILE"):
        env.pop(name, None)
    env["COLUMNS"] = "200"  # rows on one line each, whatever the terminal of the CI runner
    files = ["--home", str(home), "--password-a-file", str(home.parent / "password-a")]
    return run_cli("wallet", [*args, *files], env=env, timeout_s=60)


def wallet_json(home: Path, *args: str) -> dict:
    result = wallet(home, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result, *words: str) -> None:
    assert result.returncode != 0
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message.count("\n") == 0, message
    for word in words:
        assert word in message, message


@pytest.fixture(scope="module")
def store_home(tmp_path_factory) -> Path:
    """One store wallet for the read-only tests (history and notices --stored never save)."""
    root = tmp_path_factory.mktemp("paging")
    password_file(root)
    return make_home(root, "store")


def since_index(text: str) -> int:
    """The index of the first entry at or after --since TEXT, computed here independently of paging.py."""
    when = dt.datetime.fromisoformat(text)
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    since_ms = int(when.timestamp() * 1000)
    return next(i for i in range(HISTORY_COUNT) if entry_at_ms(i) >= since_ms)


# --- wallet history -----------------------------------------------------------------------------


def test_history_default_page_is_the_newest_100_in_order(store_home):
    document = wallet_json(store_home, "history")
    assert document["member_id"] == "s-store1" and document["role"] == "store"
    assert document["entries"] == [history_entry(i) for i in range(150, 250)]
    assert document["outbox"] == []
    assert document["page"] == {
        "first_index": 150,
        "count": 100,
        "total": HISTORY_COUNT,
        "limit": 100,
        "since": None,
        "more_after": False,
        "more_before": True,
    }


def test_history_limit_7_is_the_newest_7(store_home):
    document = wallet_json(store_home, "history", "--limit", "7")
    assert [e["msg_id"] for e in document["entries"]] == [f"msg-{i:04d}" for i in range(243, 250)]
    page = document["page"]
    assert (page["first_index"], page["count"], page["limit"], page["more_before"]) == (243, 7, 7, True)


def test_history_limit_larger_than_the_history_shows_it_all(store_home):
    document = wallet_json(store_home, "history", "--limit", "10000")
    assert document["entries"] == [history_entry(i) for i in range(HISTORY_COUNT)]
    assert document["page"]["first_index"] == 0 and document["page"]["more_before"] is False


@pytest.mark.parametrize("command", [("history",), ("notices", "--stored")])
@pytest.mark.parametrize("limit", ["0", "10001", "-5"])
def test_a_limit_out_of_range_is_refused_in_one_line(store_home, command, limit):
    result = wallet(store_home, *command, "--limit", limit, "--json")
    assert_one_line_error(result, "--limit")
    assert "1 to 10000" in result.stderr


@pytest.mark.parametrize(
    ("since", "expected_first"),
    [
        ("2026-11-05", 96),  # midnight UTC: entry 96 is exactly at it, and is included
        ("2026-11-05T09:30", 106),  # between two entries: the next one (10:00)
        ("2026-11-05T12:00+03:00", 105),  # 09:00 UTC exactly: entry 105 is included
        ("2026-11-05T09:00-00:01", 106),  # one minute after entry 105: excluded
        ("2026-11-05T09:00:00.001", 106),  # one millisecond after entry 105: excluded
        ("2026-10-01", 0),  # before everything: from the first entry
    ],
)
def test_history_since_starts_at_the_first_entry_at_or_after_it(store_home, since, expected_first):
    assert since_index(since) == expected_first  # the table above agrees with the arithmetic
    document = wallet_json(store_home, "history", "--since", since, "--limit", "20")
    assert document["entries"] == [history_entry(i) for i in range(expected_first, expected_first + 20)]
    first_ms = document["entries"][0]["at_ms"]
    if expected_first > 0:
        assert entry_at_ms(expected_first - 1) < first_ms
    page = document["page"]
    assert page["first_index"] == expected_first and page["count"] == 20 and page["since"] == since
    assert page["more_after"] is True and page["more_before"] is (expected_first > 0)


def test_history_since_without_limit_pages_100_from_the_start(store_home):
    document = wallet_json(store_home, "history", "--since", "2026-11-05")
    assert [e["at_ms"] for e in document["entries"]] == [entry_at_ms(i) for i in range(96, 196)]
    assert document["page"]["more_after"] is True


def test_history_since_the_newest_entry_and_after_it(store_home):
    newest = dt.datetime.fromtimestamp(entry_at_ms(HISTORY_COUNT - 1) / 1000, dt.UTC)
    at_newest = wallet_json(store_home, "history", "--since", newest.strftime("%Y-%m-%dT%H:%M"))
    assert at_newest["entries"] == [history_entry(HISTORY_COUNT - 1)]
    after = wallet_json(store_home, "history", "--since", "2026-12-01")
    assert after["entries"] == []
    assert after["page"] == {
        "first_index": HISTORY_COUNT,
        "count": 0,
        "total": HISTORY_COUNT,
        "limit": 100,
        "since": "2026-12-01",
        "more_after": False,
        "more_before": True,
    }


@pytest.mark.parametrize("since", ["yesterday", "2026-13-01", "01/11/2026"])
def test_history_since_garbage_is_one_line_naming_the_option_and_the_fix(store_home, since):
    result = wallet(store_home, "history", "--since", since, "--json")
    assert_one_line_error(result, "--since", "YYYY-MM-DD")


def test_history_plain_output_shows_the_rows(store_home):
    result = wallet(store_home, "history", "--limit", "3")
    assert result.returncode == 0, result.stderr
    assert "history of s-store1" in result.stdout
    for index in range(247, 250):
        when = dt.datetime.fromtimestamp(entry_at_ms(index) / 1000, dt.UTC)
        assert when.strftime("%Y-%m-%d %H:%M:%S") in result.stdout
    # Only the page: the entry just before it is not shown.
    before = dt.datetime.fromtimestamp(entry_at_ms(246) / 1000, dt.UTC)
    assert before.strftime("%Y-%m-%d %H:%M:%S") not in result.stdout


# --- wallet notices --stored ----------------------------------------------------------------------


def test_stored_notices_are_the_newest_page_without_a_token(store_home):
    # No password B anywhere and the token's module does not exist: any signing would fail.
    document = wallet_json(store_home, "notices", "--stored", "--limit", "5")
    assert document["notices"] == [notice_item(i)["notice"] for i in range(25, 30)]
    assert document["new"] == 0 and document["status"] == "stored"
    assert document["page"] == {
        "first_index": 25,
        "count": 5,
        "total": NOTICE_COUNT,
        "limit": 5,
        "since": None,
        "more_after": False,
        "more_before": True,
    }


def test_stored_notices_default_page_holds_them_all(store_home):
    document = wallet_json(store_home, "notices", "--stored")
    assert [n["payment_id"] for n in document["notices"]] == [f"pay-{i:04d}" for i in range(NOTICE_COUNT)]
    assert document["page"]["first_index"] == 0 and document["page"]["more_before"] is False


def test_stored_notices_plain_output_says_more_exist(store_home):
    result = wallet(store_home, "notices", "--stored", "--limit", "2")
    assert result.returncode == 0, result.stderr
    assert "pay-0028" in result.stdout and "pay-0029" in result.stdout
    assert "pay-0027" not in result.stdout
    assert f"the newest 2 of {NOTICE_COUNT}" in result.stdout


def vault_state(home: Path) -> tuple[int, int, int]:
    """(generation, counter, notices): a signature would raise the counter, a save the generation."""
    vault = Vault.open(home / "vault.tpv", PASSWORD_A)
    try:
        return vault.generation, vault.data["counter"], len(vault.data["notices"])
    finally:
        vault.close()


def test_stored_notices_neither_sign_nor_save(store_home):
    before = vault_state(store_home)
    wallet_json(store_home, "notices", "--stored")
    assert vault_state(store_home) == before


def test_notices_without_stored_needs_the_token_here(store_home):
    # The contrast that makes the tests above mean something: fetching must sign, and in this home
    # signing cannot work (no password B, no token module), so it fails without changing the vault.
    before = vault_state(store_home)
    result = wallet(store_home, "notices", "--json")
    assert result.returncode != 0 and result.stdout == ""
    assert "PKCS#11 module not found" in result.stderr
    assert vault_state(store_home) == before


def test_stored_notices_of_a_member_wallet_are_refused(tmp_path):
    password_file(tmp_path)
    home = make_home(tmp_path, "member")
    result = wallet(home, "notices", "--stored", "--json")
    assert_one_line_error(result, "only a store wallet", "member")


# --- migration of a first-format vault through the CLI --------------------------------------------


def test_first_command_migrates_a_v1_vault_and_a_later_save_drops_the_backup(tmp_path):
    password_file(tmp_path)
    home = make_home(tmp_path, "store", v1=True)
    vault_file, backup = home / "vault.tpv", home / "vault.tpv.v1"
    v1_bytes = vault_file.read_bytes()
    assert not v1_bytes.startswith(SQLITE_MAGIC)

    document = wallet_json(home, "history", "--limit", "10000")
    assert document["entries"] == [history_entry(i) for i in range(HISTORY_COUNT)]
    assert vault_file.read_bytes()[:16] == SQLITE_MAGIC
    assert backup.read_bytes() == v1_bytes
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    old = VaultV1.open(backup, PASSWORD_A)
    assert old.data["history"] == document["entries"]

    # A second read-only command opens the migrated store and leaves the backup alone.
    notices = wallet_json(home, "notices", "--stored", "--limit", "3")
    assert [n["payment_id"] for n in notices["notices"]] == ["pay-0027", "pay-0028", "pay-0029"]
    assert backup.exists()

    # `wallet sync --center` saves with password A only (no outbox: nothing is sent): the backup goes.
    result = wallet(home, "sync", "--center", "https://center-moved.invalid:8443", "--json")
    assert result.returncode == 0, result.stderr
    assert not backup.exists()
    vault = Vault.open(vault_file, PASSWORD_A)
    try:
        assert vault.data["center"]["url"] == "https://center-moved.invalid:8443"
        assert len(vault.data["history"]) == HISTORY_COUNT
    finally:
        vault.close()
    leftovers = sorted(p.name for p in home.iterdir() if p.name.startswith("vault.tpv."))
    assert all(not name.endswith((".v1", ".new", ".migrating")) for name in leftovers), leftovers


def test_home_files_stay_private_after_commands(store_home):
    # The wallet refuses a home whose files others can read; its own commands must not make them so.
    wallet_json(store_home, "history", "--limit", "1")
    for path in store_home.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path.name, oct(path.stat().st_mode))
    assert os.stat(store_home).st_mode & 0o077 == 0
