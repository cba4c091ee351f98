"""Attacks on backups (issue 11, point 7), on real archives, `center` processes, SQLite and PostgreSQL.

Someone who can write where backups are kept rewrites an archive: the center's currency
JPY -> EUR and its `pkcs11_module` -> a library of theirs (which `center serve` would load),
with fresh SHA-256 sums in the manifest. Before the fix that restored cleanly. Now every
archive is signed by the administrator's backup key, which is not in it; `center restore`
checks the signature with the public key from its own command line before it writes
anything, and takes the PKCS#11 module from its command line, never from the archive.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import create_pg_database, drop_pg_database, run_cli
from test_backup import make_backup_key, one_line_error, rewrite_archive, signed_by

PASSWORD = "a backup passphrase, long enough"


def forge_config(members, manifest, *, keep_signature: bool = True, evil_module: str = "/tmp/evil.so"):
    """The issue's attack: config.json says EUR and loads the attacker's module; manifest hashes
    recomputed."""
    forged = []
    for info, data in members:
        if info.name == "data/config.json":
            config = json.loads(data)
            assert config["currency"] == "JPY"
            config.update(currency="EUR", pkcs11_module=evil_module)
            data = json.dumps(config, indent=2, sort_keys=True).encode()
            info.size = len(data)
            entry = next(m for m in manifest["members"] if m["name"] == info.name)
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        forged.append((info, data))
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    head = forged[0][0]
    head.size = len(manifest_bytes)
    rest = [m for m in forged[1:] if keep_signature or m[0].name != "manifest.sig"]
    return [(head, manifest_bytes), *rest]


def restore(archive, target, public_key: str, *extra: str):
    return run_cli(
        "center",
        [
            "restore",
            str(archive),
            "--data-dir",
            str(target),
            "--json",
            "--backup-public-key",
            public_key,
            *extra,
        ],
    )


def assert_nothing_written(target) -> None:
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if ".restore-" in p.name] == []


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A SQLite center, the administrator's backup key (outside it), a plain and an encrypted signed
    backup."""
    root = tmp_path_factory.mktemp("attack-backup")
    key = make_backup_key(root / "admin")
    data_dir = root / "center"
    made = run_cli("center", ["init", "--data-dir", str(data_dir), "--currency", "JPY"])
    assert made.returncode == 0, made.stderr
    (root / "password").write_text(PASSWORD + "\n")
    plain, sealed = root / "plain.tgz", root / "sealed.tpbk"
    for archive, extra in ((plain, []), (sealed, ["--password-file", str(root / "password")])):
        result = run_cli(
            "center", ["backup", str(archive), "--data-dir", str(data_dir), *signed_by(key), *extra]
        )
        assert result.returncode == 0, result.stderr
    return {"root": root, "key": key, "data_dir": data_dir, "plain": plain, "sealed": sealed}


@pytest.mark.parametrize("keep_signature", [True, False], ids=["stale_signature", "signature_dropped"])
def test_a_rewritten_archive_with_fresh_hashes_is_refused_before_anything_is_written(
    site, tmp_path, keep_signature
):
    forged = tmp_path / "forged.tgz"
    rewrite_archive(site["plain"], forged, lambda m, man: forge_config(m, man, keep_signature=keep_signature))
    target = tmp_path / "new"
    line = one_line_error(restore(forged, target, site["key"]["public"]))
    expected = "does not verify" if keep_signature else "carries no signature"
    assert expected in line and "refused" in line and "nothing was written" in line, line
    assert_nothing_written(target)
    # The same tools, the archive untouched: it restores (the refusal above is the forgery's).
    copy = tmp_path / "copy.tgz"
    rewrite_archive(site["plain"], copy, lambda members, manifest: members)
    assert restore(copy, tmp_path / "ok", site["key"]["public"]).returncode == 0


def test_a_rewritten_postgresql_archive_is_refused_and_its_dump_never_runs(tmp_path, postgres_available):
    if not postgres_available:
        pytest.skip("PostgreSQL is not running")
    from center.ops.backup_db import pg_is_empty

    key = make_backup_key(tmp_path / "admin")
    source_db, fresh_db = create_pg_database(), create_pg_database()
    try:
        data_dir = tmp_path / "center"
        made = run_cli(
            "center", ["init", "--data-dir", str(data_dir), "--db", source_db, "--currency", "JPY"]
        )
        assert made.returncode == 0, made.stderr
        archive, forged = tmp_path / "pg.tgz", tmp_path / "forged.tgz"
        made = run_cli("center", ["backup", str(archive), "--data-dir", str(data_dir), *signed_by(key)])
        assert made.returncode == 0, made.stderr
        rewrite_archive(archive, forged, forge_config)
        target = tmp_path / "new"
        line = one_line_error(restore(forged, target, key["public"], "--db", fresh_db))
        assert "does not verify" in line, line
        assert_nothing_written(target)
        assert pg_is_empty(fresh_db), "pg_restore ran on a forged archive"
    finally:
        drop_pg_database(source_db)
        drop_pg_database(fresh_db)


def test_an_archive_signed_by_another_key_is_refused(site, tmp_path):
    other = make_backup_key(tmp_path / "other-admin")
    archive = tmp_path / "other.tgz"
    made = run_cli("center", ["backup", str(archive), "--data-dir", str(site["data_dir"]), *signed_by(other)])
    assert made.returncode == 0, made.stderr
    line = one_line_error(restore(archive, tmp_path / "new", site["key"]["public"]))
    assert "signed by another backup key" in line and "nothing was written" in line, line
    assert_nothing_written(tmp_path / "new")
    assert restore(archive, tmp_path / "new", other["public"]).returncode == 0  # its own key accepts it


def test_a_forgery_signed_by_the_attackers_key_in_the_administrators_name_is_refused(site, tmp_path):
    from center.ops.backup_signing import BackupSigner

    attacker = ed25519.Ed25519PrivateKey.generate()
    legit_spki = _spki_of(site["key"]["public"])

    def forge_and_sign(members, manifest):
        forged = forge_config(members, manifest)
        signer = BackupSigner("Ed25519", legit_spki, attacker.sign)  # claims the administrator's key id
        signature = signer.signature_member(forged[0][1])
        forged[1][0].size = len(signature)
        return [forged[0], (forged[1][0], signature), *forged[2:]]

    forged = tmp_path / "forged.tgz"
    rewrite_archive(site["plain"], forged, forge_and_sign)
    line = one_line_error(restore(forged, tmp_path / "new", site["key"]["public"]))
    assert "does not verify" in line, line
    assert_nothing_written(tmp_path / "new")


def test_whoever_knows_the_encryption_password_cannot_reseal_a_forgery(site, tmp_path):
    from center.ops.backup_crypto import DecryptingReader, EncryptingWriter

    with open(site["sealed"], "rb") as handle:
        plain = DecryptingReader(handle, PASSWORD).read()
    (tmp_path / "inner.tgz").write_bytes(plain)
    rewrite_archive(tmp_path / "inner.tgz", tmp_path / "forged.tgz", forge_config)
    resealed = io.BytesIO()
    writer = EncryptingWriter(resealed, PASSWORD)
    writer.write((tmp_path / "forged.tgz").read_bytes())
    writer.close()
    (tmp_path / "forged.tpbk").write_bytes(resealed.getvalue())
    password_file = site["root"] / "password"
    line = one_line_error(
        restore(
            tmp_path / "forged.tpbk",
            tmp_path / "new",
            site["key"]["public"],
            "--password-file",
            str(password_file),
        )
    )
    assert "does not verify" in line, line
    assert_nothing_written(tmp_path / "new")


def test_restore_takes_the_token_module_from_its_command_line_never_from_a_signed_archive(
    site, tmp_path, softhsm_module
):
    # A signed archive whose config names another library (a compromised or mistaken source center).
    data_dir = tmp_path / "center"
    assert run_cli("center", ["init", "--data-dir", str(data_dir)]).returncode == 0
    config_file = data_dir / "config.json"
    config = json.loads(config_file.read_text())
    config["pkcs11_module"] = str(tmp_path / "evil.so")
    config_file.write_text(json.dumps(config))
    archive = tmp_path / "evil-module.tgz"
    made = run_cli("center", ["backup", str(archive), "--data-dir", str(data_dir), *signed_by(site["key"])])
    assert made.returncode == 0, made.stderr

    relative = one_line_error(
        restore(archive, tmp_path / "a", site["key"]["public"], "--pkcs11-module", "evil.so")
    )
    assert "--pkcs11-module" in relative and not (tmp_path / "a").exists()
    done = restore(archive, tmp_path / "b", site["key"]["public"])
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "b" / "config.json").read_text())["pkcs11_module"] == softhsm_module
    assert json.loads(done.stdout)["archive_pkcs11_module_ignored"] == str(tmp_path / "evil.so")
    chosen = tmp_path / "lib" / "token.so"  # the administrator's choice for this machine
    chosen.parent.mkdir()
    os.symlink(softhsm_module, chosen)
    done = restore(archive, tmp_path / "c", site["key"]["public"], "--pkcs11-module", str(chosen))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "c" / "config.json").read_text())["pkcs11_module"] == str(chosen)


def test_the_backup_key_is_kept_apart_from_what_it_signs(site, tmp_path):
    data_dir, key = site["data_dir"], site["key"]
    inside = data_dir / "admin-key"
    line = one_line_error(
        run_cli(
            "center", ["backup-key", "create", "--out", str(inside), "--password-file", key["password_file"]]
        )
    )
    assert "inside a center's data directory" in line and not inside.exists()
    copied = data_dir / "backup-signing-key.pem"
    copied.write_bytes(Path(key["key"]).read_bytes())
    copied.chmod(0o600)
    try:
        line = one_line_error(
            run_cli(
                "center",
                [
                    "backup",
                    str(tmp_path / "b.tgz"),
                    "--data-dir",
                    str(data_dir),
                    "--signing-key",
                    str(copied),
                    "--signing-key-password-file",
                    key["password_file"],
                ],
            )
        )
        assert "inside the data directory" in line
    finally:
        copied.unlink()
    loose = tmp_path / "loose.pem"
    loose.write_bytes(Path(key["key"]).read_bytes())
    loose.chmod(0o644)
    line = one_line_error(
        run_cli(
            "center",
            [
                "backup",
                str(tmp_path / "b.tgz"),
                "--data-dir",
                str(data_dir),
                "--signing-key",
                str(loose),
                "--signing-key-password-file",
                key["password_file"],
            ],
        )
    )
    assert "chmod 600" in line
    assert not (tmp_path / "b.tgz").exists()
    assert stat.S_IMODE(os.stat(key["key"]).st_mode) == 0o600


def test_a_backup_key_on_the_administrators_own_token_signs_and_restores(site, tmp_path, make_softhsm_token):
    label, _so_pin, pin = make_softhsm_token()
    pin_file = tmp_path / "pin"
    pin_file.write_text(pin + "\n")
    made = run_cli(
        "center",
        [
            "backup-key",
            "create",
            "--out",
            str(tmp_path / "key"),
            "--token-label",
            label,
            "--pin-file",
            str(pin_file),
            "--key-type",
            "p256",
            "--json",
        ],
    )
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    reference = json.loads(Path(summary["signing_key"]).read_text())
    assert reference["key"]["mode"] == "resident" and "PRIVATE KEY" not in json.dumps(reference)
    archive = tmp_path / "token-signed.tgz"
    made = run_cli(
        "center",
        [
            "backup",
            str(archive),
            "--data-dir",
            str(site["data_dir"]),
            "--signing-key",
            summary["signing_key"],
            "--signing-key-password-file",
            str(pin_file),
        ],
    )
    assert made.returncode == 0, made.stderr
    assert restore(archive, tmp_path / "new", summary["public_key"]).returncode == 0
    line = one_line_error(restore(archive, tmp_path / "other", site["key"]["public"]))
    assert "another backup key" in line


def _spki_of(public_pem_file: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(Path(public_pem_file).read_bytes())
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
