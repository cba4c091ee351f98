"""`center backup` / `center restore`: a center with real activity is backed up while
`center serve` runs (and payments keep arriving), restored into a fresh data directory
(and a fresh PostgreSQL database), passes `center ledger check` and `center audit verify`,
and serves the same balances with receipts signed by the same token key. Damaged,
crafted and misdirected archives are refused with one line and nothing written.
Every backup is signed by a backup key kept apart from the center (the attacks on
that are in test_attack_backup.py)."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
import threading
import time

import pytest
from ops_support import STORE_NAME, SignedClient, center_cli, funded_member, pay_body
from sqlalchemy import create_engine, func, select
from support import CenterProcess, cli_env, create_pg_database, drop_pg_database, free_port, run_cli

from center.storage.db import normalise_url, payments

PASSWORD = "a backup passphrase, long enough"
KEY_PASSWORD = "the administrator's backup key password"


def make_backup_key(directory, *extra: str) -> dict:
    """`center backup-key create` into directory/key; the paths a backup and a restore need."""
    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / "key-password"
    password_file.write_text(KEY_PASSWORD + "\n")
    password_file.chmod(0o600)
    made = run_cli(
        "center",
        [
            "backup-key",
            "create",
            "--out",
            str(directory / "key"),
            "--password-file",
            str(password_file),
            "--json",
            *extra,
        ],
    )
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    return {
        "key": summary["signing_key"],
        "public": summary["public_key"],
        "password_file": str(password_file),
        "key_id": summary["key_id"],
    }


def signed_by(key: dict) -> list[str]:
    return ["--signing-key", key["key"], "--signing-key-password-file", key["password_file"]]


@pytest.fixture(scope="session")
def backup_key(tmp_path_factory) -> dict:
    return make_backup_key(tmp_path_factory.mktemp("admin"))


def one_line_error(result) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def payments_by(config_dir, buyer_id: str) -> int:
    config = json.loads((config_dir / "config.json").read_text())
    engine = create_engine(normalise_url(config["db_url"]))
    with engine.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(payments).where(payments.c.buyer_id == buyer_id)
        )
        total = count.scalar_one()
    engine.dispose()
    return total


class Payer(threading.Thread):
    """Keeps paying small amounts over HTTPS until stopped: the backup runs under writes."""

    def __init__(self, center: CenterProcess, signer, store_id: str):
        super().__init__(daemon=True)
        self.center, self.signer, self.store_id = center, signer, store_id
        self.stop, self.paid, self.errors = threading.Event(), 0, []

    def run(self) -> None:
        client = SignedClient(self.center)
        try:
            while not self.stop.is_set():
                client.result(self.signer, "pay", pay_body(self.store_id, 7, f"B-{self.paid + 1}"))
                self.paid += 1
        except Exception as error:
            self.errors.append(repr(error))
        finally:
            client.close()


def test_backup_while_serving_restores_a_center_that_checks_and_serves_the_same(
    tmp_path, db_url, live_center, backup_key
):
    client = SignedClient(live_center)
    store, store_id = client.enroll("store", name=STORE_NAME)
    member, _member_id = funded_member(client, live_center, 10_000)
    paid = client.result(member, "pay", pay_body(store_id, 3_000, "A-1"))
    client.result(member, "pay", pay_body(store_id, 1_500, "A-2"))
    assert (
        client.result(
            store, "refund", {"payment_id": paid["payment_id"], "amount_minor": 500, "currency": "JPY"}
        )["balance_minor"]
        == 4_000
    )
    assert client.result(store, "payout", {"currency": "JPY"})["amount_minor"] == 4_000
    busy, busy_id = funded_member(client, live_center, 1_000_000)

    payer = Payer(live_center, busy, store_id)
    payer.start()
    deadline = time.monotonic() + 30
    while payer.paid < 3 and not payer.errors and time.monotonic() < deadline:
        time.sleep(0.05)
    archive = tmp_path / "center-backup.tgz"
    backup = run_cli(
        "center",
        ["backup", str(archive), "--data-dir", str(live_center.data_dir), "--json", *signed_by(backup_key)],
    )
    payer.stop.set()
    payer.join(timeout=60)
    assert backup.returncode == 0, backup.stderr
    assert payer.errors == [] and payer.paid >= 3
    summary = json.loads(backup.stdout)
    kind = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    assert summary["db_kind"] == kind and summary["encrypted"] is False and summary["token_included"] is True
    assert "token PIN" in summary["warning"] and summary["signed_by_key_id"] == backup_key["key_id"]
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    member_before = client.result(member, "balance", {})
    store_before = client.result(store, "balance", {})

    target, restore_db = tmp_path / "restored", None
    restore_args = [
        "restore",
        str(archive),
        "--data-dir",
        str(target),
        "--json",
        "--backup-public-key",
        backup_key["public"],
    ]
    if kind == "postgresql":
        refused = run_cli("center", restore_args)
        assert "--db" in one_line_error(refused) and not target.exists()
        assert "not empty" in one_line_error(run_cli("center", [*restore_args, "--db", db_url]))
        restore_db = create_pg_database()
        restore_args += ["--db", restore_db]
    restored_center = CenterProcess(data_dir=target, port=free_port())
    try:
        restored = run_cli("center", restore_args)
        assert restored.returncode == 0, restored.stderr
        report = json.loads(restored.stdout)
        assert (
            report["ok"]
            and report["ledger"]["ok"]
            and report["audit"]["ok"]
            and report["audit"]["entries"] > 8
        )
        assert center_cli(restored_center, "ledger", "check")["ok"] is True
        assert center_cli(restored_center, "audit", "verify")["ok"] is True

        # The snapshot is consistent: the busy member's balance is what its payments in it say.
        busy_paid = payments_by(target, busy_id)
        assert 3 <= busy_paid <= payer.paid + 1

        restored_center.start()
        restored_client = SignedClient(restored_center)
        assert restored_client.identity.receipt_spki == client.identity.receipt_spki
        # result() checks each receipt's signature with the pinned key: the restored token signed it.
        member_after = restored_client.result(member, "balance", {})
        assert member_after["balance_minor"] == member_before["balance_minor"] == 10_000 - 3_000 - 1_500 + 500
        assert member_after["refunds"] == member_before["refunds"]
        assert restored_client.result(store, "balance", {})["payouts"] == store_before["payouts"]
        assert restored_client.result(busy, "balance", {})["balance_minor"] == 1_000_000 - 7 * busy_paid
        restored_client.close()
    finally:
        restored_center.stop()
        client.close()
        if restore_db is not None:
            drop_pg_database(restore_db)


# --- refusals, on a center that is not serving ------------------------------------------


@pytest.fixture(scope="module")
def quiet_center(tmp_path_factory, backup_key):
    """A SQLite center (no activity needed) and a plain and an encrypted backup of it."""
    root = tmp_path_factory.mktemp("quiet")
    data_dir = root / "center"
    made = run_cli("center", ["init", "--data-dir", str(data_dir), "--json"])
    assert made.returncode == 0, made.stderr
    (root / "password").write_text(PASSWORD + "\n")
    plain, sealed = root / "plain.tgz", root / "sealed.tpbk"
    result = run_cli("center", ["backup", str(plain), "--data-dir", str(data_dir), *signed_by(backup_key)])
    assert result.returncode == 0, result.stderr
    result = run_cli(
        "center",
        [
            "backup",
            str(sealed),
            "--data-dir",
            str(data_dir),
            "--password-file",
            str(root / "password"),
            "--json",
            *signed_by(backup_key),
        ],
    )
    assert result.returncode == 0, result.stderr
    return {
        "root": root,
        "data_dir": data_dir,
        "plain": plain,
        "sealed": sealed,
        "password": root / "password",
        "key": backup_key,
    }


def restore(archive, target, key: dict, *extra: str, env=None):
    """`center restore` checking the signature with `key`'s public key."""
    return run_cli(
        "center",
        [
            "restore",
            str(archive),
            "--data-dir",
            str(target),
            "--json",
            "--backup-public-key",
            key["public"],
            *extra,
        ],
        env=env,
    )


def assert_nothing_written(parent, target) -> None:
    assert not target.exists()
    assert [p.name for p in parent.iterdir() if ".restore-" in p.name] == []


@pytest.mark.parametrize("where", ["gzip_header", "middle", "last_byte"])
def test_a_flipped_byte_is_refused_and_nothing_written(quiet_center, tmp_path, where):
    data = bytearray(quiet_center["plain"].read_bytes())
    position = {"gzip_header": 5, "middle": len(data) // 2, "last_byte": len(data) - 1}[where]
    data[position] ^= 0x01
    damaged = tmp_path / "damaged.tgz"
    damaged.write_bytes(bytes(data))
    line = one_line_error(restore(damaged, tmp_path / "new", quiet_center["key"]))
    assert "nothing was written" in line or "damaged" in line
    assert_nothing_written(tmp_path, tmp_path / "new")


def test_encrypted_backup_needs_its_password_and_detects_tampering(quiet_center, tmp_path):
    sealed = quiet_center["sealed"]
    pin = (quiet_center["data_dir"] / "secrets" / "token-pin").read_bytes()
    assert sealed.read_bytes().startswith(b"TPBKENC1") and pin not in sealed.read_bytes()
    target, key = tmp_path / "new", quiet_center["key"]
    assert "--password-file" in one_line_error(restore(sealed, target, key))
    wrong = tmp_path / "wrong"
    wrong.write_text("not the right password at all\n")
    assert "wrong backup password" in one_line_error(
        restore(sealed, target, key, "--password-file", str(wrong))
    )
    data = bytearray(sealed.read_bytes())
    data[len(data) // 2] ^= 0x40
    tampered = tmp_path / "tampered.tpbk"
    tampered.write_bytes(bytes(data))
    assert "damaged" in one_line_error(
        restore(tampered, target, key, "--password-file", str(quiet_center["password"]))
    )
    assert_nothing_written(tmp_path, target)
    env = cli_env(CENTER_BACKUP_PASSWORD_FILE=str(quiet_center["password"]))
    done = restore(sealed, target, key, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True and (target / "secrets" / "token-pin").read_bytes() == pin
    assert stat.S_IMODE((target / "secrets" / "token-pin").stat().st_mode) == 0o600


def test_restore_refuses_a_non_empty_target_and_leaves_it_alone(quiet_center, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert "not empty" in one_line_error(restore(quiet_center["plain"], target, quiet_center["key"]))
    assert [p.name for p in target.iterdir()] == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"


def rewrite_archive(source, destination, change) -> None:
    """Copy a plain backup member by member through change(name, data, manifest) -> [(TarInfo, bytes)]."""
    with tarfile.open(source, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    manifest = json.loads(members[0][1])
    out = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0, filename="") as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for info, data in change(members, manifest):
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    destination.write_bytes(out.getvalue())


def file_info(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o600
    return info


def with_manifest(members, manifest) -> list:
    data = json.dumps(manifest).encode()
    return [(file_info("manifest.json", data), data), *members[1:]]


def traversal_in_manifest(members, manifest):
    manifest["members"][0]["name"] = "data/../../evil"
    return with_manifest(members, manifest)


def traversal_in_tar(members, manifest):
    return [*members, (file_info("../evil", b"owned"), b"owned")]


def absolute_in_tar(members, manifest):
    return [*members, (file_info(str(manifest["source_data_dir"]) + "/evil", b"owned"), b"owned")]


def symlink_member(members, manifest):
    link = tarfile.TarInfo("data/tls/key.pem")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    return [m for m in members if m[0].name != "data/tls/key.pem"] + [(link, b"")]


@pytest.mark.parametrize("change", [traversal_in_manifest, traversal_in_tar, absolute_in_tar, symlink_member])
def test_crafted_members_are_refused_and_nothing_written(quiet_center, tmp_path, change):
    crafted = tmp_path / "crafted.tgz"
    rewrite_archive(quiet_center["plain"], crafted, change)
    target = tmp_path / "deep" / "new"
    (tmp_path / "deep").mkdir()
    line = one_line_error(restore(crafted, target, quiet_center["key"]))
    assert "refused" in line, line
    assert_nothing_written(tmp_path / "deep", target)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "evil").exists()


def test_an_unchanged_rewrite_restores(quiet_center, tmp_path):
    # The crafted-archive tests above would pass for any archive this helper writes if it were broken.
    copy = tmp_path / "copy.tgz"
    rewrite_archive(quiet_center["plain"], copy, lambda members, manifest: members)
    done = restore(copy, tmp_path / "new", quiet_center["key"])
    assert done.returncode == 0, done.stderr


def test_backup_never_overwrites_and_stays_out_of_the_data_dir(quiet_center, tmp_path):
    data_dir, key = quiet_center["data_dir"], signed_by(quiet_center["key"])
    existing = tmp_path / "existing.tgz"
    existing.write_bytes(b"precious")
    assert "already exists" in one_line_error(
        run_cli("center", ["backup", str(existing), "--data-dir", str(data_dir), *key])
    )
    assert existing.read_bytes() == b"precious"
    inside = data_dir / "b.tgz"
    assert "outside the data directory" in one_line_error(
        run_cli("center", ["backup", str(inside), "--data-dir", str(data_dir), *key])
    )
    assert not inside.exists()
    short = tmp_path / "short"
    short.write_text("short\n")
    assert "at least 12" in one_line_error(
        run_cli(
            "center",
            [
                "backup",
                str(tmp_path / "x.tpbk"),
                "--data-dir",
                str(data_dir),
                "--password-file",
                str(short),
                *key,
            ],
        )
    )
    assert sorted(os.listdir(tmp_path)) == ["existing.tgz", "short"]


def test_every_backup_is_signed_a_backup_without_a_key_is_refused(quiet_center, tmp_path):
    line = one_line_error(
        run_cli("center", ["backup", str(tmp_path / "b.tgz"), "--data-dir", str(quiet_center["data_dir"])])
    )
    assert "--signing-key" in line and "center backup-key create --out" in line
    wrong = tmp_path / "wrong"
    wrong.write_text("not the key password at all\n")
    line = one_line_error(
        run_cli(
            "center",
            [
                "backup",
                str(tmp_path / "b.tgz"),
                "--data-dir",
                str(quiet_center["data_dir"]),
                "--signing-key",
                quiet_center["key"]["key"],
                "--signing-key-password-file",
                str(wrong),
            ],
        )
    )
    assert "wrong backup key password" in line
    assert sorted(os.listdir(tmp_path)) == ["wrong"]
    line = one_line_error(
        run_cli("center", ["restore", str(quiet_center["plain"]), "--data-dir", str(tmp_path / "new")])
    )
    assert "--backup-public-key" in line and not (tmp_path / "new").exists()


def test_a_database_password_goes_to_pg_tools_in_the_environment_only():
    from psycopg.conninfo import conninfo_to_dict

    from center.ops.backup_db import libpq_target, redact_url

    uri, env = libpq_target("postgresql://tokenpay:s3cret-pw@db.example:5433/center?sslmode=require")
    assert "s3cret-pw" not in uri and env["PGPASSWORD"] == "s3cret-pw"
    assert conninfo_to_dict(uri) == {
        "dbname": "center",
        "user": "tokenpay",
        "host": "db.example",
        "port": "5433",
        "sslmode": "require",
    }
    # The backup center's cluster: several hosts, the read-write one chosen, as `center serve` does.
    uri, env = libpq_target(
        "postgresql+psycopg://tokenpay:s3cret-pw@/center?host=10.0.0.1:5433&host=10.0.0.2:5434"
        "&target_session_attrs=read-write"
    )
    assert conninfo_to_dict(uri) == {
        "dbname": "center",
        "user": "tokenpay",
        "host": "10.0.0.1,10.0.0.2",
        "port": "5433,5434",
        "target_session_attrs": "read-write",
    }
    assert "s3cret-pw" not in uri and env["PGPASSWORD"] == "s3cret-pw"
    assert "s3cret-pw" not in redact_url("postgresql://tokenpay:s3cret-pw@db.example/center")


def test_restore_reports_a_broken_ledger_and_exits_non_zero(tmp_path, backup_key):
    import sqlite3

    data_dir = tmp_path / "center"
    assert run_cli("center", ["init", "--data-dir", str(data_dir)]).returncode == 0
    with sqlite3.connect(data_dir / "center.db") as conn:  # money out of nowhere, behind the center's back
        assert (
            conn.execute(
                "UPDATE accounts SET balance_minor = balance_minor + 1 WHERE id = 'funding:bank'"
            ).rowcount
            == 1
        )
    archive = tmp_path / "broken.tgz"
    made = run_cli("center", ["backup", str(archive), "--data-dir", str(data_dir), *signed_by(backup_key)])
    assert made.returncode == 0, made.stderr
    result = restore(archive, tmp_path / "new", backup_key)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["ledger"]["ok"] is False and report["audit"]["ok"] is True
    assert any("funding:bank" in problem for problem in report["ledger"]["problems"])
