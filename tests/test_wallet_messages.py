"""What the `wallet` command line says to a person (issue 16, point 4), through the real CLI process.

Covered, each by a test that fails on the old wording or order: a negative amount ("more than
zero"), a too-large amount (the ceiling in the currency, never "minor units"), an empty or blank
--order (refused before any prompt), a missing wallet (said before password A is asked), the
password-B prompt (names the token PIN), a PKCS#11 token's PIN flags in words (and `wallet status`
never "ok" beside few tries left), `wallet sync`'s lines (no Python dict), `--json` shown as a plain
flag, and `wallet --version`.

Most tests build a wallet home with the Python API (Vault.create + new_document: no token, no
center; its center URL is a closed loopback port, so a command that tried to reach it would fail);
the PIN tests use a SoftHSM token made by `wallet init`; the sync and live pay tests a real center.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import TokenFlag
from support import CenterProcess, cli_env, free_port, run_cli
from test_wallet_e2e import WalletUser

from hostkit.sealing import MINIMUM_KDF
from paywire.envelope import b64url_encode
from paywire.money import MAX_AMOUNT_MINOR
from token_wallet.cli import common
from token_wallet.document import new_document
from token_wallet.vault import Vault
from tokens.base import ALGORITHM_FOR_KEY_TYPE, KeyMode, KeyRecord, KeyType, PinStatus

PASSWORD_A = "messages test passphrase A"
STORE_ID = "S-0123456789abcdef"
MEMBER_ID = "M-0123456789abcdef"
PROMPT_TIMEOUT_S = 30.0


# --- a wallet home without a token or a center ---------------------------------------------------------


def key_record() -> KeyRecord:
    """A resident P-256 key of which only the public half exists: nothing here signs with it."""
    spki_der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return KeyRecord(
        mode=KeyMode.RESIDENT,
        key_type=KeyType.P256,
        algorithm=ALGORITHM_FOR_KEY_TYPE[KeyType.P256],
        spki_der=spki_der,
        handle={"id": "01"},
    )


def make_member_home(root: Path, currency: str) -> Path:
    """An enrolled member's wallet whose center's currency is already known (no center is asked)."""
    home = root / f"home-{currency}"
    home.mkdir(mode=0o700)
    token_doc = {"kind": "pkcs11", "module": "/nonexistent/libno-such.so", "label": "none", "serial": "0"}
    doc = new_document(token_doc, key_record())
    doc["member_id"], doc["role"], doc["key_status"] = MEMBER_ID, "member", "active"
    doc["center"] = {
        "url": f"https://127.0.0.1:{free_port()}",  # nothing listens there
        "cert_pem": "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
        "center_id": "c-test",
        "receipt_spki": b64url_encode(b"not used by these commands"),
        "receipt_alg": "ES256",
        "currency": currency,
    }
    Vault.create(home / "vault.tpv", PASSWORD_A, doc, kdf=MINIMUM_KDF).close()
    (root / "password-a").write_text(PASSWORD_A + "\n")
    return home


@pytest.fixture(scope="module")
def homes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("messages")
    return {currency: make_member_home(root, currency) for currency in ("JPY", "EUR")}


def wallet(home: Path, *args: str, password_a: bool = True):
    """`wallet ARGS --home HOME` with no password B, token or home in the environment, no terminal."""
    env = cli_env()
    for name in ("WALLET_HOME", "WALLET_PASSWORD_A_FILE", "WALLET_PASSWORD_B_FILE", "WALLET_SO_PIN_FILE"):
        env.pop(name, None)
    env["COLUMNS"] = "200"
    files = ["--home", str(home)] + (
        ["--password-a-file", str(home.parent / "password-a")] if password_a else []
    )
    command, *rest = args  # the options right after the command: a `--` in ARGS ends them
    return run_cli("wallet", [command, *files, *rest], env=env, timeout_s=60)


def one_line_error(result) -> str:
    assert result.returncode != 0, result.stdout
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message.count("\n") == 0, message
    return message


def outbox_of(home: Path) -> list:
    vault = Vault.open(home / "vault.tpv", PASSWORD_A)
    try:
        return list(vault.data["outbox"])
    finally:
        vault.close()


# --- a, b: amounts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("pay", "--store", STORE_ID, "--amount=-5", "--order", "O-1", "--yes"),
        ("topup", "--method", "cash", "--", "-5"),
        ("topup", "--method", "cash", "--", "-0.01"),
    ],
)
def test_a_negative_amount_must_be_more_than_zero(homes, args):
    message = one_line_error(wallet(homes["JPY"], *args))
    assert "must be more than zero" in message, message
    assert "plain decimal" not in message
    assert outbox_of(homes["JPY"]) == []


@pytest.mark.parametrize(
    ("currency", "amount", "limit"),
    [
        ("JPY", str(MAX_AMOUNT_MINOR + 1), f"{MAX_AMOUNT_MINOR} JPY"),
        ("EUR", "10000000000.01", "10000000000.00 EUR"),
        ("EUR", "99999999999999999", "10000000000.00 EUR"),  # more digits than an amount may have
    ],
)
def test_b_a_too_large_amount_says_the_limit_in_the_currency(homes, currency, amount, limit):
    message = one_line_error(
        wallet(homes[currency], "pay", "--store", STORE_ID, "--amount", amount, "--order", "O")
    )
    assert f"at most {limit}" in message, message
    assert "minor units" not in message


# --- c: an empty order, refused before anything is asked or shown -------------------------------------


@pytest.mark.parametrize("order", ["", "   ", "\t"])
def test_c_an_empty_order_is_refused_before_any_prompt(homes, order):
    result = wallet(homes["JPY"], "pay", "--store", STORE_ID, "--amount", "100", "--order", order, "--yes")
    message = one_line_error(result)
    assert "--order" in message and "empty" in message, message
    assert "store id" not in result.stderr and "Pay " not in result.stderr  # no confirmation block
    assert outbox_of(homes["JPY"]) == []


# --- d: no wallet, said before password A -------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("history",),
        ("status",),
        ("sync",),
        ("export-public-key",),
        ("change-password-a",),
        ("balance", "--offline"),
        ("pay", "--store", STORE_ID, "--amount", "1", "--order", "O"),
    ],
)
def test_d_a_missing_wallet_is_said_before_password_a_is_asked(tmp_path, args):
    # No password-A file and no terminal: the old order failed on "password A is needed" first.
    home = tmp_path / "no-wallet-here"
    message = one_line_error(wallet(home, *args, password_a=False))
    assert message.startswith(f"error: no wallet at {home}"), message
    assert "password A" not in message
    assert not home.exists()


# --- e, f: password B on a SoftHSM token --------------------------------------------------------------


@pytest.fixture
def softhsm_user(tmp_path, make_softhsm_token) -> WalletUser:
    user = WalletUser(tmp_path, make_softhsm_token, "pin")
    user.init()
    return user


def first_prompt(args: list[str], env: dict[str, str]) -> str:
    """Run `wallet ARGS` with a pseudo-terminal as stdin and return what it wrote on stderr up to its
    first no-echo prompt (": " at the end), then stop it. A new session has no /dev/tty, so getpass
    asks on stdin (the terminal) and writes the prompt to stderr."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "token_wallet", *args],
        stdin=terminal,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + PROMPT_TIMEOUT_S
        while not seen.rstrip(b" ").endswith(b":") and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stderr], [], [], 0.5)
            if ready:
                chunk = os.read(process.stderr.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stderr.close()
        os.close(controller)
    return seen.decode()


def test_e_the_password_b_prompt_says_it_is_the_token_pin(softhsm_user):
    env = softhsm_user.env(WALLET_PASSWORD_B_FILE="")
    prompt = first_prompt(["change-password-b"], env)
    assert prompt.strip().endswith("password B (token PIN):"), prompt
    # Without a terminal, the refusal names it the same way and still points to the option.
    refused = softhsm_user.run("change-password-b", WALLET_PASSWORD_B_FILE="")
    assert "password B (token PIN) is needed" in refused.stderr and "--password-b-file" in refused.stderr


def test_f_a_wrong_pin_on_softhsm_and_the_status_line(softhsm_user):
    wrong = softhsm_user.run(
        "change-password-b",
        "--new-password-b-file",
        softhsm_user.files["so"],
        WALLET_PASSWORD_B_FILE=softhsm_user.files["bad"],
    )
    message = one_line_error(wrong)
    assert "wrong password B (token PIN)" in message, message
    # SoftHSM sets CKF_USER_PIN_COUNT_LOW after a wrong PIN: said in words, never as "count low".
    assert message.endswith("few tries left: the token says a wrong PIN was given since the last right one")
    pin_line = status_pin_line(softhsm_user)
    assert pin_line.startswith("PIN: few tries left"), pin_line
    assert "ok" not in words_of(pin_line) and "count low" not in pin_line
    # The right PIN clears the flag: "ok" again, and only then.
    changed = softhsm_user.run("change-password-b", "--new-password-b-file", softhsm_user.files["so"])
    assert changed.returncode == 0, changed.stderr
    assert status_pin_line(softhsm_user) == "PIN: ok, the token does not tell how many tries are left"


def status_pin_line(user: WalletUser) -> str:
    status = user.run("status", COLUMNS="200")  # the line whole, not wrapped
    assert status.returncode == 0, status.stderr
    return next(line for line in status.stdout.splitlines() if line.startswith("PIN:"))


def words_of(line: str) -> list[str]:
    return line.replace(",", " ").replace(":", " ").split()


def pkcs11_status(flags: int) -> PinStatus:
    """A PinStatus as tokens.pkcs11_token reads one from a token's flags (it has no count)."""
    return PinStatus(
        tries_left=None,
        locked=bool(flags & TokenFlag.USER_PIN_LOCKED),
        count_low=bool(flags & TokenFlag.USER_PIN_COUNT_LOW),
        final_try=bool(flags & TokenFlag.USER_PIN_FINAL_TRY),
    )


@pytest.mark.parametrize(
    ("flags", "words", "line"),
    [
        (0, "the token does not tell how many tries are left", "PIN: ok, "),
        (TokenFlag.USER_PIN_COUNT_LOW, "few tries left", "PIN: few tries left"),
        (TokenFlag.USER_PIN_FINAL_TRY, "the last try", "PIN: the last try"),
        (TokenFlag.USER_PIN_COUNT_LOW | TokenFlag.USER_PIN_FINAL_TRY, "the last try", "PIN: the last try"),
        (TokenFlag.USER_PIN_LOCKED, "locked", "PIN: LOCKED"),
    ],
)
def test_f_pkcs11_pin_flags_in_words(flags, words, line):
    status = pkcs11_status(flags)
    assert words in common.pin_tries_words(status)
    rendered = common.pin_state_line(status)
    assert rendered.startswith(line), rendered
    assert "count low" not in rendered and "COUNT_LOW" not in rendered and "FINAL_TRY" not in rendered
    assert ("ok" in words_of(rendered)) == (flags == 0)  # never "ok" beside a lost try


def test_f_a_card_count_keeps_its_number():
    assert common.pin_state_line(PinStatus(3, False)) == "PIN: ok, 3 tries left"
    assert common.pin_state_line(PinStatus(2, False, count_low=True)) == "PIN: 2 tries left"
    assert "the next wrong PIN locks it" in common.pin_state_line(
        PinStatus(1, False, count_low=True, final_try=True)
    )


# --- g: sync's lines ----------------------------------------------------------------------------------


@pytest.fixture
def db_url(tmp_path) -> str:
    """SQLite only: the lines printed do not depend on the center's database."""
    return f"sqlite:///{tmp_path / 'center.db'}"


def enroll(user: WalletUser, center: CenterProcess, *role_args: str) -> str:
    result = user.run(
        "enroll",
        "--center",
        center.url,
        "--center-cert",
        str(center.cert),
        "--name",
        "Hanako Yamada",
        "--address",
        "1-1 Chiyoda",
        *role_args,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["member_id"]


def test_g_sync_prints_lines_not_a_python_dict(tmp_path, make_softhsm_token, live_center):
    member = WalletUser(tmp_path, make_softhsm_token, "m")
    member.init()
    enroll(member, live_center, "--birth-date", "1985-06-15")
    assert member.json("topup", "700", "--method", "cash")["status"] == "pending"  # the currency is kept
    closed = f"https://127.0.0.1:{free_port()}"
    assert member.run("sync", "--center", closed).stdout == "nothing to send\n"  # the URL moves
    queued = member.run("balance")
    assert queued.returncode != 0 and "waits in the outbox" in queued.stderr
    synced = member.run("sync", "--center", live_center.url, COLUMNS="200")  # one line, not wrapped
    assert synced.returncode == 0, synced.stderr
    lines = synced.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("delivered balance "), synced.stdout
    assert lines[0].endswith("balance: 0 JPY, 1 recent top-up(s)"), lines[0]
    for python_repr in ("{", "}", "[", "'", "_minor"):
        assert python_repr not in lines[0]


def test_c_an_empty_order_to_a_live_store_shows_no_confirmation(tmp_path, make_softhsm_token, live_center):
    store = WalletUser(tmp_path, make_softhsm_token, "s")
    store.init()
    store_id = enroll(store, live_center, "--store", "--bank-account", "JP-0001-1111111")
    member = WalletUser(tmp_path, make_softhsm_token, "m")
    member.init()
    enroll(member, live_center, "--birth-date", "1985-06-15")
    member.json("topup", "700", "--method", "cash")  # the currency is known: pay asks the center nothing else
    # No password B file and no terminal: the old order printed the block, then failed on password B.
    result = member.run(
        "pay", "--store", store_id, "--amount", "100", "--order", " ", "--yes", WALLET_PASSWORD_B_FILE=""
    )
    message = one_line_error(result)
    assert "--order" in message and "password B" not in message, message
    assert store_id not in result.stderr  # the confirmation block names the store id first


# --- h, i: --json and --version -----------------------------------------------------------------------


def test_h_json_is_a_plain_flag_in_help_and_use(homes):
    env = cli_env(COLUMNS="200")
    help_text = run_cli("wallet", ["pay", "--help"], env=env).stdout
    json_lines = [line for line in help_text.splitlines() if "--json" in line]
    assert len(json_lines) == 1, help_text
    assert "--no-json" not in help_text and "<bool>" not in json_lines[0], json_lines[0]
    assert json_lines[0].split("--json", 1)[1].split()[0] == "Machine-readable", json_lines[0]
    # Used as a flag anywhere among the options, with no value after it.
    result = wallet(homes["JPY"], "history", "--json", "--limit", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["member_id"] == MEMBER_ID


def test_i_version_prints_the_package_version_fast():
    result = run_cli("wallet", ["--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wallet {importlib.metadata.version('tokenpay')}\n"
    # Answered without loading the commands' heavy modules.
    probe = (
        "import sys; sys.argv = ['wallet', '--version']; from token_wallet.cli.main import main; main(); "
        "print(' '.join(sorted(m for m in ('cryptography', 'httpx', 'typer', 'rich', 'tokens', "
        "'token_wallet.cli.common') if m in sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.splitlines() == [result.stdout.strip(), ""], loaded.stdout
