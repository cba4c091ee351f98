"""Installing a newer center on an existing database: `center serve` refuses a schema it does not
match, in one line, before any worker starts; `center migrate` upgrades it in one transaction and
says what it did; a backup from an older version comes back upgraded by `center restore`. A
database written by a newer version is never touched by an older one."""

from __future__ import annotations

import json
import subprocess
import sys

from alembic import command
from sqlalchemy import inspect, text
from support import cli_env, free_port, run_cli
from test_backup import make_backup_key, signed_by

from center.storage.db import alembic_config, head_revision, make_engine

OLDER = "0005"  # the revision before the read indexes (0006)


def init_center(tmp_path, db_url):
    data_dir = tmp_path / "center"
    result = run_cli("center", ["init", "--data-dir", str(data_dir), "--db", db_url, "--currency", "EUR"])
    assert result.returncode == 0, result.stderr
    return data_dir


def downgrade_to(db_url: str, revision: str) -> None:
    engine = make_engine(db_url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
    engine.dispose()


def revision_and_indexes(db_url: str) -> tuple[str, set[str]]:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        indexes = {index["name"] for index in inspect(conn).get_indexes("payments")}
    engine.dispose()
    return revision, indexes


def serve_refusal(data_dir) -> str:
    """`center serve` must exit at once with one line (no worker, nothing listening)."""
    result = subprocess.run(
        [sys.executable, "-m", "center", "serve", "--data-dir", str(data_dir), "--port", str(free_port())],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_serve_refuses_an_older_schema_until_migrate_upgrades_it(tmp_path, db_url):
    data_dir = init_center(tmp_path, db_url)
    downgrade_to(db_url, OLDER)
    revision, indexes = revision_and_indexes(db_url)
    assert revision == OLDER and "ix_payments_created" not in indexes

    line = serve_refusal(data_dir)
    assert f"at revision {OLDER}" in line and f"center migrate --data-dir {data_dir}" in line
    # Commands that act on the database refuse the same way; backup does not (back up before migrating).
    checked = run_cli("center", ["ledger", "check", "--data-dir", str(data_dir)])
    assert checked.returncode != 0 and checked.stderr.strip().splitlines() == [line]

    upgraded = run_cli("center", ["migrate", "--data-dir", str(data_dir), "--json"])
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(upgraded.stdout) == {
        "from_revision": OLDER,
        "to_revision": head_revision(),
        "changed": True,
    }
    revision, indexes = revision_and_indexes(db_url)
    assert revision == head_revision() and "ix_payments_created" in indexes

    again = run_cli("center", ["migrate", "--data-dir", str(data_dir), "--json"])
    assert json.loads(again.stdout)["changed"] is False


def test_a_schema_from_a_newer_version_is_refused_and_left_alone(tmp_path, db_url):
    data_dir = init_center(tmp_path, db_url)
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()

    assert "newer than this center knows" in serve_refusal(data_dir)
    refused = run_cli("center", ["migrate", "--data-dir", str(data_dir)])
    assert refused.returncode != 0 and "newer than this center knows" in refused.stderr
    assert revision_and_indexes(db_url)[0] == "9999"


def test_restore_upgrades_a_backup_from_an_older_version(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'old.db'}"
    data_dir = init_center(tmp_path, db_url)
    downgrade_to(db_url, OLDER)
    archive = tmp_path / "old.backup"
    key = make_backup_key(tmp_path / "admin")
    made = run_cli("center", ["backup", str(archive), "--data-dir", str(data_dir), *signed_by(key)])
    assert made.returncode == 0, made.stderr

    restored_dir = tmp_path / "restored"
    restored = run_cli(
        "center",
        [
            "restore",
            str(archive),
            "--data-dir",
            str(restored_dir),
            "--json",
            "--backup-public-key",
            key["public"],
        ],
    )
    assert restored.returncode == 0, restored.stderr
    report = json.loads(restored.stdout)
    assert report["ok"] is True
    assert report["schema"] == {"from_revision": OLDER, "to_revision": head_revision()}
    restored_url = json.loads((restored_dir / "config.json").read_text())["db_url"]
    revision, indexes = revision_and_indexes(restored_url)
    assert revision == head_revision() and "ix_payments_created" in indexes
    assert revision_and_indexes(db_url)[0] == OLDER  # the original is not touched


def test_serve_says_in_one_line_when_the_database_does_not_answer(tmp_path):
    data_dir = init_center(tmp_path, f"sqlite:///{tmp_path / 'center.db'}")
    config_file = data_dir / "config.json"
    config = json.loads(config_file.read_text())
    config["db_url"] = (
        f"postgresql://tokenpay:secret-pw@127.0.0.1:{free_port()}/center"  # nothing listens there
    )
    config_file.write_text(json.dumps(config))
    line = serve_refusal(data_dir)
    assert line.startswith("error: cannot reach the database postgresql") and "secret-pw" not in line
