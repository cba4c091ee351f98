"""The foundation's command-line contract end to end: real `center` and
`wallet` processes, SoftHSM tokens, HTTPS on loopback, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass
from sqlalchemy import create_engine, func, select
from support import SOFTHSM_MODULE, CenterProcess, cli_env, free_port, run_cli

from center.storage.db import normalise_url, parties

pytestmark = pytest.mark.slow


class WalletUser:
    """One wallet home with its token and password files, driven through the CLI."""

    def __init__(self, tmp_path: Path, make_softhsm_token, name: str):
        self.label, so_pin, self.pin = make_softhsm_token()
        self.home = tmp_path / f"home-{name}"
        secrets_dir = tmp_path / f"secrets-{name}"
        secrets_dir.mkdir()
        self.files = {}
        for key, value in {"a": f"A-{name}-passphrase", "b": self.pin, "so": so_pin, "bad": "not-it"}.items():
            path = secrets_dir / key
            path.write_text(value + "\n")
            self.files[key] = str(path)

    def env(self, **overrides: str) -> dict:
        values = {
            "WALLET_HOME": str(self.home),
            "WALLET_PASSWORD_A_FILE": self.files["a"],
            "WALLET_PASSWORD_B_FILE": self.files["b"],
            "WALLET_SO_PIN_FILE": self.files["so"],
        }
        values.update(overrides)
        return cli_env(**values)

    def run(self, *args: str, **env_overrides: str):
        return run_cli("wallet", list(args), env=self.env(**env_overrides))

    def json(self, *args: str, **env_overrides: str) -> dict:
        result = self.run(*args, "--json", **env_overrides)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def init(self, *extra: str) -> dict:
        return self.json("init", "--pkcs11-module", SOFTHSM_MODULE, "--token-label", self.label, *extra)

    def enroll_member(self, center: CenterProcess, *extra: str):
        return self.run(
            "enroll",
            "--center",
            center.url,
            "--center-cert",
            str(center.cert),
            "--name",
            "Hanako Yamada",
            "--address",
            "1-1 Chiyoda, Tokyo",
            "--birth-date",
            "1985-06-15",
            "--json",
            *extra,
        )

    @property
    def vault(self) -> Path:
        return self.home / "vault.tpv"


def count_parties(center: CenterProcess) -> int:
    config = json.loads((center.data_dir / "config.json").read_text())
    engine = create_engine(normalise_url(config["db_url"]))
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(parties)).scalar_one()
    engine.dispose()
    return total


def test_member_and_store_enroll_over_https(tmp_path, make_softhsm_token, live_center):
    member, store = (
        WalletUser(tmp_path, make_softhsm_token, "m"),
        WalletUser(tmp_path, make_softhsm_token, "s"),
    )
    assert member.init()["key_mode"] == "wrapped"
    store.init("--key-type", "ed25519")

    enrolled = member.enroll_member(live_center)
    assert enrolled.returncode == 0, enrolled.stderr
    member_id = json.loads(enrolled.stdout)["member_id"]
    assert member_id.startswith("M-")

    result = store.run(
        "enroll",
        "--center",
        live_center.url,
        "--center-cert",
        str(live_center.cert),
        "--store",
        "--name",
        "Corner Shop",
        "--address",
        "2-2 Shibuya, Tokyo",
        "--bank-account",
        "JP-9-777",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["member_id"].startswith("S-")

    status = member.json("status")
    assert status["member_id"] == member_id and status["algorithm"] == "ES256"
    assert status["token"]["label"] == member.label and status["token"]["pin"]["locked"] is False
    # History needs password A only: no password B file anywhere in this environment.
    history = member.json("history", WALLET_PASSWORD_B_FILE="")
    assert [(e["type"], e["outcome"]) for e in history["entries"]] == [("enroll", "accepted")]
    assert history["entries"][0]["details"]["member_id"] == member_id
    assert count_parties(live_center) == 2


def test_wrapped_key_is_not_on_the_token(tmp_path, make_softhsm_token, live_center):
    user = WalletUser(tmp_path, make_softhsm_token, "w")
    kid = user.init()["kid"]
    # Password B alone: the token holds no private key at all, so nothing can sign.
    lib = pkcs11.lib(SOFTHSM_MODULE)
    lib.reinitialize()  # this process loaded the module before the token existed
    token = lib.get_token(token_label=user.label)
    with token.open(user_pin=user.pin) as session:
        assert list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})) == []
    # Vault (password A) + token + password B: signing works, the center verifies it.
    result = user.enroll_member(live_center)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kid"] == kid


def test_wrong_password_a_changes_nothing(tmp_path, make_softhsm_token):
    user = WalletUser(tmp_path, make_softhsm_token, "a")
    user.init()
    before = user.vault.read_bytes()
    for command in ("history", "status", "sync"):
        result = user.run(command, WALLET_PASSWORD_A_FILE=user.files["bad"])
        assert result.returncode != 0
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert "wrong password A" in result.stderr
        assert "Traceback" not in result.stderr
    assert user.vault.read_bytes() == before


def test_wrong_password_b_then_right_one_works(tmp_path, make_softhsm_token, live_center):
    user = WalletUser(tmp_path, make_softhsm_token, "b")
    user.init()
    before = user.vault.read_bytes()
    wrong = user.enroll_member(live_center, "--password-b-file", user.files["bad"])
    assert wrong.returncode != 0
    assert "wrong password B" in wrong.stderr and wrong.stderr.strip().count("\n") == 0
    assert "not-it" not in wrong.stderr + wrong.stdout
    assert user.vault.read_bytes() == before, "a refused PIN must not queue or change anything"
    right = user.enroll_member(live_center)
    assert right.returncode == 0, right.stderr
    assert json.loads(right.stdout)["status"] == "enrolled"


def test_enroll_while_center_down_then_sync_delivers_once(tmp_path, make_softhsm_token, db_url):
    data_dir = tmp_path / "center"
    assert run_cli("center", ["init", "--data-dir", str(data_dir), "--db", db_url]).returncode == 0
    center = CenterProcess(data_dir=data_dir, port=free_port())  # not started yet
    user = WalletUser(tmp_path, make_softhsm_token, "q")
    user.init()

    queued = user.enroll_member(center)
    assert queued.returncode == 0, queued.stderr
    assert json.loads(queued.stdout) | {"msg_id": None, "reason": None, "recovery_code": None} == {
        "member_id": None,
        "role": None,
        "kid": user.json("status")["kid"],
        "status": "queued",
        "msg_id": None,
        "reason": None,
        "recovery_code": None,
    }
    assert [e["type"] for e in user.json("history")["outbox"]] == ["enroll"]
    offline = user.run("sync", "--json")
    assert offline.returncode == 3 and json.loads(offline.stdout)["pending"] == 1

    center.start()
    try:
        delivered = user.json("sync")
        assert [d["type"] for d in delivered["delivered"]] == ["enroll"]
        assert delivered["pending"] == 0 and delivered["member_id"].startswith("M-")
        assert user.json("sync")["delivered"] == []
        assert count_parties(center) == 1
        history = user.json("history")
        assert history["outbox"] == [] and len(history["entries"]) == 1
    finally:
        center.stop()


def test_enroll_refuses_bad_input_with_one_line(tmp_path, make_softhsm_token, live_center):
    user = WalletUser(tmp_path, make_softhsm_token, "x")
    user.init()
    before = user.vault.read_bytes()
    cases = [
        ["--birth-date", "1985-02-30"],
        ["--birth-date", "2999-01-01"],
        ["--bank-account", "JP-1"],
    ]
    for extra in cases:
        args = [
            "enroll",
            "--center",
            live_center.url,
            "--center-cert",
            str(live_center.cert),
            "--name",
            "N",
            "--address",
            "A",
            *extra,
        ]
        result = user.run(*args)
        assert result.returncode != 0 and result.stderr.startswith("error: "), (extra, result.stderr)
        assert result.stderr.strip().count("\n") == 0
    not_a_cert = tmp_path / "x.pem"
    not_a_cert.write_text("hello")
    result = user.run(
        "enroll",
        "--center",
        live_center.url,
        "--center-cert",
        str(not_a_cert),
        "--name",
        "N",
        "--address",
        "A",
        "--birth-date",
        "1990-01-01",
    )
    assert result.returncode != 0 and "center-cert" in result.stderr
    assert user.vault.read_bytes() == before


def test_center_with_another_certificate_is_refused(tmp_path, make_softhsm_token, live_center):
    """The wallet pins the certificate it was given: a different center's TLS identity fails."""
    impostor_dir = tmp_path / "impostor"
    assert run_cli("center", ["init", "--data-dir", str(impostor_dir)]).returncode == 0
    user = WalletUser(tmp_path, make_softhsm_token, "p")
    user.init()
    result = user.run(
        "enroll",
        "--center",
        live_center.url,
        "--center-cert",
        str(impostor_dir / "center-cert.pem"),
        "--name",
        "N",
        "--address",
        "A",
        "--birth-date",
        "1990-01-01",
        "--json",
    )
    # The TLS handshake fails against the pinned (impostor) certificate: nothing reaches the center.
    assert json.loads(result.stdout)["status"] == "queued"
    assert "certificate" in json.loads(result.stdout)["reason"]
    assert count_parties(live_center) == 0


def test_secrets_from_a_file_descriptor(tmp_path, make_softhsm_token):
    user = WalletUser(tmp_path, make_softhsm_token, "fd")
    user.init()
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"A-fd-passphrase\n")
    os.close(write_fd)
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "token_wallet", "history", "--json", "--password-a-fd", str(read_fd)],
        env=user.env(WALLET_PASSWORD_A_FILE=""),
        pass_fds=(read_fd,),
        capture_output=True,
        text=True,
        timeout=60,
    )
    os.close(read_fd)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["member_id"] is None


@pytest.mark.parametrize("command", [["init", "--pkcs11-module", SOFTHSM_MODULE, "--token-label", "nope"]])
def test_unknown_token_label_is_one_clear_line(tmp_path, command):
    result = run_cli("wallet", [*command, "--home", str(tmp_path / "h")])
    assert result.returncode != 0
    assert "nope" in result.stderr and result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "h" / "vault.tpv").exists()


def test_change_password_a_reencrypts_and_change_password_b_changes_the_pin(
    tmp_path, make_softhsm_token, live_center
):
    user = WalletUser(tmp_path, make_softhsm_token, "c")
    user.init()
    new_a, new_b = tmp_path / "new-a", tmp_path / "new-b"
    new_a.write_text("a brand new passphrase\n")
    new_b.write_text("pin-2468\n")
    before = user.vault.read_bytes()
    assert user.run("change-password-a", "--new-password-a-file", str(new_a)).returncode == 0
    assert user.vault.read_bytes() != before
    assert "wrong password A" in user.run("history").stderr
    assert user.run("history", WALLET_PASSWORD_A_FILE=str(new_a)).returncode == 0

    changed = user.run(
        "change-password-b", "--new-password-b-file", str(new_b), WALLET_PASSWORD_A_FILE=str(new_a)
    )
    assert changed.returncode == 0, changed.stderr
    old_pin = user.enroll_member(live_center, "--password-a-file", str(new_a))
    assert old_pin.returncode != 0 and "wrong password B" in old_pin.stderr
    new_pin = user.enroll_member(
        live_center, "--password-a-file", str(new_a), "--password-b-file", str(new_b)
    )
    assert new_pin.returncode == 0, new_pin.stderr


def test_export_public_key_gives_the_token_key(tmp_path, make_softhsm_token):
    from cryptography.hazmat.primitives import serialization

    from paywire.algorithms import key_id

    user = WalletUser(tmp_path, make_softhsm_token, "x")
    kid = user.init()["kid"]
    shown = user.json("export-public-key")
    spki = serialization.load_pem_public_key(shown["public_key_pem"].encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key_id(spki) == kid == shown["kid"]

    out = tmp_path / "key.pem"
    assert user.json("export-public-key", "--out", str(out))["file"] == str(out)
    assert out.read_text() == shown["public_key_pem"]
    again = user.run("export-public-key", "--out", str(out))
    assert again.returncode != 0 and "already exists" in again.stderr
    assert user.run("export-public-key", WALLET_PASSWORD_A_FILE=user.files["bad"]).returncode != 0
