"""Issuer-certified keys through the command line: `center issuer create-ca |
certify | trust | status`, `center init --issuer-ca --require-certified-keys`,
and end to end over HTTPS with real `center` and `wallet` processes on SoftHSM
tokens, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support import CenterProcess, free_port, run_cli
from test_wallet_e2e import WalletUser, count_parties

from center.errors import ApiError
from center.keys import issuer
from center.keys.issuer_policy import check_enrollment_certificate, policy_of
from center.storage.config import CenterConfig

pytestmark = pytest.mark.slow

PASSWORD = "issuer station passphrase"


@dataclass
class Station:
    """A card issuance station: an issuer CA made by `center issuer create-ca`."""

    directory: Path
    password_file: Path

    @property
    def cert(self) -> Path:
        return self.directory / "ca-cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "ca-key.pem"

    def certify(self, public_key: Path, out: Path, *extra: str) -> dict:
        result = center(
            "issuer",
            "certify",
            "--ca-cert",
            str(self.cert),
            "--ca-key",
            str(self.key),
            "--password-file",
            str(self.password_file),
            "--public-key",
            str(public_key),
            "--out",
            str(out),
            "--json",
            *extra,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def center(*args: str):
    return run_cli("center", list(args))


def one_line_error(result) -> str:
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def make_station(tmp_path: Path, name: str = "Example Card Issuer", directory: str = "issuer") -> Station:
    password_file = tmp_path / f"{directory}-password"
    password_file.write_text(PASSWORD + "\n")
    result = center(
        "issuer",
        "create-ca",
        "--out-dir",
        str(tmp_path / directory),
        "--name",
        name,
        "--password-file",
        str(password_file),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["subject"] == f"CN={name}" and document["intermediate"] is False
    return Station(tmp_path / directory, password_file)


def export_public_key(user: WalletUser, path: Path) -> Path:
    document = user.json("export-public-key", "--out", str(path))
    assert document["file"] == str(path)
    return path


# --- end to end over HTTPS -------------------------------------------------------------


def test_center_requiring_certified_keys_over_https(tmp_path, make_softhsm_token, db_url):
    station = make_station(tmp_path)
    foreign_station = make_station(tmp_path, "Some Other Issuer", "foreign")
    data_dir = tmp_path / "center"
    result = center(
        "init",
        "--data-dir",
        str(data_dir),
        "--db",
        db_url,
        "--issuer-ca",
        str(station.cert),
        "--require-certified-keys",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["issuer_policy"] == "issuer_certified"
    live = CenterProcess(data_dir=data_dir, port=free_port())
    live.start()
    try:
        member, other = (
            WalletUser(tmp_path, make_softhsm_token, "m"),
            WalletUser(tmp_path, make_softhsm_token, "o"),
        )
        member.init()
        other.init("--key-type", "ed25519")
        member_key = export_public_key(member, tmp_path / "member.pub.pem")
        member_cert = station.certify(member_key, tmp_path / "member-cert.pem", "--subject", "card 0001")
        other_cert = station.certify(
            export_public_key(other, tmp_path / "other.pub.pem"), tmp_path / "other-cert.pem"
        )
        foreign_station.certify(member_key, tmp_path / "member-foreign.pem")
        assert member_cert["kid"] == member.json("status")["kid"] and member_cert["key_type"] == "p256"

        # No certificate: the center refuses, in one line naming the code; nothing is enrolled.
        assert "key_not_certified" in one_line_error(member.enroll_member(live))
        # A certificate made for another token's key: refused before anything is signed or sent.
        assert "not this wallet's key" in one_line_error(
            member.enroll_member(live, "--key-cert", str(tmp_path / "other-cert.pem"))
        )
        # The right key, but certified by an issuer this center does not trust.
        refusal = one_line_error(
            member.enroll_member(live, "--key-cert", str(tmp_path / "member-foreign.pem"))
        )
        assert "key_not_certified" in refusal and "not issued by the configured issuer CA" in refusal
        assert count_parties(live) == 0

        accepted = member.enroll_member(live, "--key-cert", str(tmp_path / "member-cert.pem"))
        assert accepted.returncode == 0, accepted.stderr
        assert json.loads(accepted.stdout)["member_id"].startswith("M-")
        enrolled = other.enroll_member(live, "--key-cert", str(tmp_path / "other-cert.pem"))
        assert enrolled.returncode == 0, enrolled.stderr
        assert count_parties(live) == 2

        history = member.json("history")
        outcomes = [(entry["type"], entry["outcome"]) for entry in history["entries"]]
        assert outcomes == [("enroll", "refused"), ("enroll", "refused"), ("enroll", "accepted")]
        # The center's signed receipt names the certificate it checked.
        checked = history["entries"][-1]["details"]["key_certificate"]
        assert checked["serial"] == member_cert["serial"] and checked["sha256"] == member_cert["sha256"]
        assert checked["subject"] == "CN=card 0001"
        audit = center("audit", "verify", "--data-dir", str(data_dir), "--json")
        assert audit.returncode == 0 and json.loads(audit.stdout)["entries"] == 2, audit.stdout + audit.stderr
        status = center("issuer", "status", "--data-dir", str(data_dir), "--json")
        assert json.loads(status.stdout)["policy"] == "issuer_certified"
        assert other_cert["key_type"] == "ed25519"
    finally:
        live.stop()


# --- configuring a center ----------------------------------------------------------------


def test_trust_configures_an_existing_center(tmp_path):
    station = make_station(tmp_path)
    data_dir = tmp_path / "center"
    assert center("init", "--data-dir", str(data_dir)).returncode == 0
    status = json.loads(center("issuer", "status", "--data-dir", str(data_dir), "--json").stdout)
    assert status["policy"] == "any" and status["trusted"] == []
    config_before = (data_dir / "config.json").read_bytes()

    assert "needs the issuer's CA certificate" in one_line_error(
        center("issuer", "trust", "--data-dir", str(data_dir), "--require-certified")
    )
    key_cert = tmp_path / "key-cert.pem"
    _certify_new_key(station, tmp_path, key_cert)
    assert "not a CA certificate" in one_line_error(
        center(
            "issuer", "trust", "--data-dir", str(data_dir), "--ca-cert", str(key_cert), "--require-certified"
        )
    )
    assert "exclude each other" in one_line_error(
        center(
            "issuer",
            "trust",
            "--data-dir",
            str(data_dir),
            "--ca-cert",
            str(station.cert),
            "--require-certified",
            "--allow-uncertified",
        )
    )
    assert "nothing to change" in one_line_error(center("issuer", "trust", "--data-dir", str(data_dir)))
    assert (data_dir / "config.json").read_bytes() == config_before
    assert not (data_dir / "issuer").exists()

    result = center(
        "issuer",
        "trust",
        "--data-dir",
        str(data_dir),
        "--ca-cert",
        str(station.cert),
        "--require-certified",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["policy"] == "issuer_certified" and document["restart_needed"] is True
    assert [cert["subject"] for cert in document["trusted"]] == ["CN=Example Card Issuer"]
    assert (data_dir / "issuer" / "ca-cert.pem").read_bytes() == station.cert.read_bytes()
    config = json.loads((data_dir / "config.json").read_text())
    assert config["issuer_policy"] == "issuer_certified" and config["issuer_ca_file"] == "issuer/ca-cert.pem"

    relaxed = center("issuer", "trust", "--data-dir", str(data_dir), "--allow-uncertified", "--json")
    assert relaxed.returncode == 0, relaxed.stderr
    assert json.loads(relaxed.stdout)["policy"] == "any" and json.loads(relaxed.stdout)["trusted"]

    # A center whose configured issuer CA file is gone refuses to start, in one line.
    (data_dir / "issuer" / "ca-cert.pem").unlink()
    served = run_cli(
        "center", ["serve", "--data-dir", str(data_dir), "--port", str(free_port())], timeout_s=60
    )
    assert "cannot read the issuer file" in one_line_error(served)


def test_intermediate_ca_from_the_command_line(tmp_path):
    root = make_station(tmp_path)
    branch_dir = tmp_path / "branch"
    result = center(
        "issuer",
        "create-ca",
        "--out-dir",
        str(branch_dir),
        "--name",
        "Branch Office CA",
        "--days",
        "1000",
        "--password-file",
        str(root.password_file),
        "--parent-cert",
        str(root.cert),
        "--parent-key",
        str(root.key),
        "--parent-password-file",
        str(root.password_file),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    assert made["intermediate"] is True and made["issuer"] == "CN=Example Card Issuer"
    branch = Station(branch_dir, root.password_file)
    key_cert = tmp_path / "key-cert.pem"
    spki = _certify_new_key(branch, tmp_path, key_cert)

    data_dir = tmp_path / "center"
    assert center("init", "--data-dir", str(data_dir), "--issuer-ca", str(root.cert)).returncode == 0
    # Without the intermediate the chain does not reach the root.
    cert_der = x509.load_pem_x509_certificate(key_cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    now_s = int(time.time())
    with pytest.raises(ApiError, match="not issued by"):
        check_enrollment_certificate(policy_of(CenterConfig.load(data_dir)), spki, cert_der, now_s)
    # An intermediate must come from the trusted CA: another issuer's CA is not one.
    stranger = make_station(tmp_path, "Stranger", "stranger")
    assert "not issued by a trusted CA" in one_line_error(
        center(
            "issuer",
            "trust",
            "--data-dir",
            str(data_dir),
            "--ca-cert",
            str(root.cert),
            "--intermediate",
            str(stranger.cert),
        )
    )
    result = center(
        "issuer",
        "trust",
        "--data-dir",
        str(data_dir),
        "--ca-cert",
        str(root.cert),
        "--intermediate",
        str(branch.cert),
        "--require-certified",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert [c["subject"] for c in json.loads(result.stdout)["intermediates"]] == ["CN=Branch Office CA"]
    facts = check_enrollment_certificate(policy_of(CenterConfig.load(data_dir)), spki, cert_der, now_s)
    assert facts["issuer"] == "CN=Branch Office CA"


def test_init_refuses_bad_issuer_options_before_creating_anything(tmp_path):
    station = make_station(tmp_path)
    data_dir = tmp_path / "center"
    assert "--require-certified-keys needs --issuer-ca" in one_line_error(
        center("init", "--data-dir", str(data_dir), "--require-certified-keys")
    )
    key_cert = tmp_path / "key-cert.pem"
    _certify_new_key(station, tmp_path, key_cert)
    assert "not a CA certificate" in one_line_error(
        center("init", "--data-dir", str(data_dir), "--issuer-ca", str(key_cert), "--require-certified-keys")
    )
    assert "cannot read --issuer-ca" in one_line_error(
        center("init", "--data-dir", str(data_dir), "--issuer-ca", str(tmp_path / "missing.pem"))
    )
    assert not data_dir.exists()


# --- the issuance station ----------------------------------------------------------------


def test_create_ca_files_and_refusals(tmp_path):
    station = make_station(tmp_path)
    assert stat.S_IMODE(station.key.stat().st_mode) == 0o600
    key_pem = station.key.read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in key_pem and b"PASSPHRASE" not in key_pem
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(key_pem, password=None)
    serialization.load_pem_private_key(key_pem, password=PASSWORD.encode())
    cert = x509.load_pem_x509_certificate(station.cert.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    before = (station.cert.read_bytes(), key_pem)
    again = center(
        "issuer",
        "create-ca",
        "--out-dir",
        str(station.directory),
        "--name",
        "Again",
        "--password-file",
        str(station.password_file),
    )
    assert "already exists" in one_line_error(again)
    assert (station.cert.read_bytes(), station.key.read_bytes()) == before

    short = tmp_path / "short"
    short.write_text("too short\n")
    assert "at least 12 characters" in one_line_error(
        center(
            "issuer",
            "create-ca",
            "--out-dir",
            str(tmp_path / "s"),
            "--name",
            "S",
            "--password-file",
            str(short),
        )
    )
    assert "1 to 3650" in one_line_error(
        center(
            "issuer",
            "create-ca",
            "--out-dir",
            str(tmp_path / "d"),
            "--name",
            "D",
            "--days",
            "5000",
            "--password-file",
            str(station.password_file),
        )
    )
    assert "no terminal" in one_line_error(
        center("issuer", "create-ca", "--out-dir", str(tmp_path / "p"), "--name", "P")
    )
    assert not any((tmp_path / name).exists() for name in ("s", "d", "p"))


def test_certify_contract_and_refusals(tmp_path):
    station = make_station(tmp_path)
    out = tmp_path / "cert.pem"
    spki = _certify_new_key(station, tmp_path, out, "--days", "30", "--subject", "card 7")
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=card 7"
    assert 29 * 86400 < cert.not_valid_after_utc.timestamp() - time.time() <= 30 * 86400
    assert issuer.verify_key_certificate(
        issuer.der(cert),
        spki,
        trusted=(x509.load_pem_x509_certificate(station.cert.read_bytes()),),
        intermediates=(),
        now_s=int(time.time()),
    )
    public_key = tmp_path / "key.pub.pem"
    base = [
        "issuer",
        "certify",
        "--ca-cert",
        str(station.cert),
        "--ca-key",
        str(station.key),
        "--public-key",
        str(public_key),
    ]
    written = out.read_bytes()
    assert "already exists" in one_line_error(
        center(*base, "--out", str(out), "--password-file", str(station.password_file))
    )
    assert out.read_bytes() == written
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the right password\n")
    assert "wrong password" in one_line_error(
        center(*base, "--out", str(tmp_path / "a.pem"), "--password-file", str(wrong))
    )
    assert "1 to 1825" in one_line_error(
        center(
            *base,
            "--out",
            str(tmp_path / "b.pem"),
            "--days",
            "4000",
            "--password-file",
            str(station.password_file),
        )
    )
    assert "not a PEM public key" in one_line_error(
        center(
            "issuer",
            "certify",
            "--ca-cert",
            str(station.cert),
            "--ca-key",
            str(station.key),
            "--public-key",
            str(station.cert),
            "--out",
            str(tmp_path / "c.pem"),
            "--password-file",
            str(station.password_file),
        )
    )
    assert not any((tmp_path / name).exists() for name in ("a.pem", "b.pem", "c.pem"))


def _certify_new_key(station: Station, tmp_path: Path, out: Path, *extra: str) -> bytes:
    """Certify a fresh software P-256 key; return its SPKI DER."""
    from cryptography.hazmat.primitives.asymmetric import ec

    public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem_file = tmp_path / "key.pub.pem"
    pem_file.write_bytes(
        public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    station.certify(pem_file, out, *extra)
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
