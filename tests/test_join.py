"""`center join` (issue 15, point 2): a second node of a running center from a signed backup, on the
center's live database, which it reads and never writes.

The joined node, served by a real `center serve` over HTTPS, answers with receipts and tree heads
that verify against the first node's center-cert.pem (the same token key, copied), both nodes work
on one database (SQLite file, or PostgreSQL through the multi-host URL form, its first host dead),
and the database is the same before and after the join. Refusals are one line with nothing
written: no --db, a backup signed by another key or altered after signing, a damaged archive, an
empty database, another center's, a new center's with nothing signed yet, a schema behind or ahead,
a data directory in use.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from ops_support import STORE_NAME, SignedClient, center_cli, funded_member, pay_body
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from support import CenterProcess, create_pg_database, drop_pg_database, free_port, run_cli
from test_backup import PASSWORD, make_backup_key, one_line_error, rewrite_archive, signed_by, with_manifest

from center.ops.join import read_only_engine
from center.storage.db import audit_head, normalise_url, parties, tree_heads


@pytest.fixture(scope="module")
def join_key(tmp_path_factory) -> dict:
    return make_backup_key(tmp_path_factory.mktemp("join-admin"))


def make_backup(data_dir: Path, archive: Path, key: dict, *extra: str) -> Path:
    made = run_cli("center", ["backup", str(archive), "--data-dir", str(data_dir), *signed_by(key), *extra])
    assert made.returncode == 0, made.stderr
    return archive


def join(archive: Path, target: Path, key: dict, *extra: str):
    return run_cli(
        "center",
        [
            "join",
            str(archive),
            "--data-dir",
            str(target),
            "--backup-public-key",
            key["public"],
            "--json",
            *extra,
        ],
    )


def fingerprint(db_url: str) -> tuple:
    """What a write by the join would change: the schema revision, the log's head, heads, parties."""
    engine = create_engine(normalise_url(db_url))
    try:
        with engine.connect() as conn:
            return (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one(),
                tuple(conn.execute(select(audit_head)).one()),
                conn.execute(select(func.count()).select_from(tree_heads)).scalar_one(),
                conn.execute(select(func.count()).select_from(parties)).scalar_one(),
            )
    finally:
        engine.dispose()


def multi_host_url(db_url: str) -> str:
    """The cluster form of a PostgreSQL URL (issue 15): a dead host first, then the real one."""
    url = make_url(db_url)
    return (
        f"postgresql+psycopg://{url.username}@/{url.database}?host=127.0.0.1:{free_port()}"
        f"&host={url.host}:{url.port or 5432}&target_session_attrs=read-write"
    )


def test_a_joined_node_serves_the_same_center_and_signs_what_the_first_ones_certificate_verifies(
    tmp_path, db_url, live_center, join_key
):
    node1 = live_center
    client1 = SignedClient(node1)
    store, store_id = client1.enroll("store", name=STORE_NAME)
    member, _member_id = funded_member(client1, node1, 10_000)
    client1.result(member, "pay", pay_body(store_id, 1_000, "N1-1"))
    (tmp_path / "password").write_text(PASSWORD + "\n")
    archive = make_backup(
        node1.data_dir, tmp_path / "node1.tpbk", join_key, "--password-file", str(tmp_path / "password")
    )
    sqlite = db_url.startswith("sqlite")
    join_db = db_url if sqlite else multi_host_url(db_url)
    before = fingerprint(db_url)

    node2_dir = tmp_path / "node2"
    joined = join(
        archive, node2_dir, join_key, "--db", join_db, "--password-file", str(tmp_path / "password")
    )
    assert joined.returncode == 0, joined.stderr
    summary = json.loads(joined.stdout)
    assert summary["ok"] and summary["database_written"] is False and summary["encrypted"] is True
    assert summary["center_id"] == client1.identity.center_id
    assert summary["database"]["newest_tree_head_size"] >= 4  # enrollments, top-up, payment
    assert fingerprint(db_url) == before  # read, never written
    config = json.loads((node2_dir / "config.json").read_text())
    assert config["db_url"] == join_db
    for name in ("softhsm_conf", "token_pin_file", "tls_key_file", "webhook_secret_file"):
        assert config[name].startswith(f"{node2_dir}/"), (name, config[name])
    conf_lines = Path(config["softhsm_conf"]).read_text().splitlines()
    assert [line for line in conf_lines if line.startswith("directories.tokendir")] == [
        f"directories.tokendir = {node2_dir}/softhsm/tokens"
    ]
    assert not any(path.name.startswith("center.db") for path in node2_dir.iterdir())
    assert (node2_dir / "center-cert.pem").read_bytes() == node1.cert.read_bytes()

    node2 = CenterProcess(data_dir=node2_dir, port=free_port())
    # Node 2's port, node 1's certificate: TLS and every receipt are checked against what wallets pin.
    pinned_to_node1 = None
    try:
        node2.start()
        pinned_to_node1 = SignedClient(CenterProcess(data_dir=node1.data_dir, port=node2.port))
        pinned_to_node1.result(member, "pay", pay_body(store_id, 2_000, "N2-1"))
        client1.result(member, "pay", pay_body(store_id, 500, "N1-2"))
        # One database: each node sees what the other accepted.
        assert pinned_to_node1.result(member, "balance", {})["balance_minor"] == 10_000 - 1_000 - 2_000 - 500
        assert client1.result(store, "balance", {})["balance_minor"] == 3_500
    finally:
        if pinned_to_node1 is not None:
            pinned_to_node1.close()
        client1.close()
        node2.stop()
    # Every tree head, signed by either node, verifies with node 1's certificate; the books hold.
    assert center_cli(node1, "audit", "verify")["ok"] is True
    assert center_cli(node1, "ledger", "check")["ok"] is True


# --- refusals: one line, nothing written ---------------------------------------------------------


def serve_once(data_dir: Path) -> None:
    """Serve a center just long enough to enroll one member: its database then holds a signed tree head."""
    process = CenterProcess(data_dir=data_dir, port=free_port())
    process.start()
    try:
        client = SignedClient(process)
        client.enroll("member")
        client.close()
    finally:
        process.stop()


def init(data_dir: Path) -> None:
    made = run_cli("center", ["init", "--data-dir", str(data_dir), "--json"])
    assert made.returncode == 0, made.stderr


@pytest.fixture(scope="module")
def centers(tmp_path_factory, join_key):
    """Center A (one enrollment) and its backups; B (one enrollment); C (new, nothing signed)."""
    root = tmp_path_factory.mktemp("join")
    for name in ("a", "b", "c"):
        init(root / name)
    serve_once(root / "a")
    serve_once(root / "b")
    other_key = make_backup_key(root / "other-admin")
    return {
        "root": root,
        "a_db": f"sqlite:///{root / 'a' / 'center.db'}",
        "b_db": f"sqlite:///{root / 'b' / 'center.db'}",
        "c_db": f"sqlite:///{root / 'c' / 'center.db'}",
        "plain": make_backup(root / "a", root / "a.tgz", join_key),
        "by_other_key": make_backup(root / "a", root / "a-other.tgz", other_key),
    }


def copy_with_revision(source_url: str, target: Path, revision: str) -> str:
    """A consistent copy of a SQLite database (the online backup API) claiming another schema revision."""
    source = sqlite3.connect(make_url(source_url).database)
    copy = sqlite3.connect(target)
    source.backup(copy)
    copy.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    copy.commit()
    copy.close()
    source.close()
    return f"sqlite:///{target}"


def stale_signature(centers, tmp_path) -> Path:
    """A's backup with its manifest changed after signing (the old signature kept)."""

    def change(members, manifest):
        manifest["created_at"] = "2020-01-01T00:00:00Z"
        return with_manifest(members, manifest)

    rewrite_archive(centers["plain"], tmp_path / "altered.tgz", change)
    return tmp_path / "altered.tgz"


def flipped_byte(centers, tmp_path) -> Path:
    data = bytearray(centers["plain"].read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "damaged.tgz").write_bytes(bytes(data))
    return tmp_path / "damaged.tgz"


# (archive maker, --db maker, what the one line says)
REFUSALS = {
    "no_db": (lambda c, t: c["plain"], lambda c, t: None, "give --db"),
    "other_backup_key": (lambda c, t: c["by_other_key"], lambda c, t: c["a_db"], "signed by"),
    "altered_after_signing": (stale_signature, lambda c, t: c["a_db"], "does not verify"),
    "damaged_archive": (flipped_byte, lambda c, t: c["a_db"], "damaged"),
    "another_centers_database": (lambda c, t: c["plain"], lambda c, t: c["b_db"], "is not center"),
    "new_center_nothing_signed": (lambda c, t: c["plain"], lambda c, t: c["c_db"], "holds no tree head"),
    "empty_sqlite_file": (
        lambda c, t: c["plain"],
        lambda c, t: (t / "empty.db").touch() or f"sqlite:///{t / 'empty.db'}",
        "is empty",
    ),
    "no_such_sqlite_file": (
        lambda c, t: c["plain"],
        lambda c, t: f"sqlite:///{t / 'absent.db'}",
        "not a file",
    ),
    "comma_form_url": (
        lambda c, t: c["plain"],
        lambda c, t: "postgresql://postgres:s3cret@127.0.0.1:5433,127.0.0.1:5432/test",
        "host=H1:P1&host=H2:P2",
    ),
    "schema_behind": (
        lambda c, t: c["plain"],
        lambda c, t: copy_with_revision(c["a_db"], t / "behind.db", "0013"),
        "run `center migrate` on the running node first",
    ),
    "schema_ahead": (
        lambda c, t: c["plain"],
        lambda c, t: copy_with_revision(c["a_db"], t / "ahead.db", "9999"),
        "newer than this tokenpay",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_join_refuses_in_one_line_and_writes_nothing(centers, tmp_path, case, join_key):
    make_archive, make_db, expected = REFUSALS[case]
    archive, db = make_archive(centers, tmp_path), make_db(centers, tmp_path)
    before = fingerprint(centers["a_db"])
    target = tmp_path / "node2"
    line = one_line_error(join(archive, target, join_key, *(["--db", db] if db else [])))
    assert expected in line and "s3cret" not in line, line
    assert not target.exists() and not [p for p in tmp_path.iterdir() if ".restore-" in p.name]
    assert fingerprint(centers["a_db"]) == before
    assert not (tmp_path / "absent.db").exists()  # a read-only open creates no file


def test_join_refuses_a_data_directory_in_use_and_leaves_it_alone(centers, tmp_path, join_key):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    line = one_line_error(join(centers["plain"], target, join_key, "--db", centers["a_db"]))
    assert "not empty" in line
    assert [p.name for p in target.iterdir()] == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"


@pytest.mark.postgres
def test_join_refuses_an_empty_postgresql_database(centers, tmp_path, join_key, postgres_available):
    if not postgres_available:
        pytest.skip("PostgreSQL is not running (the README's test command starts one)")
    empty = create_pg_database()
    try:
        line = one_line_error(
            join(centers["plain"], tmp_path / "node2", join_key, "--db", multi_host_url(empty))
        )
        assert "is empty" in line and not (tmp_path / "node2").exists()
    finally:
        drop_pg_database(empty)


# --- the read-only connection is read-only ---------------------------------------------------------


def test_the_join_reads_the_live_database_through_connections_that_cannot_write(
    centers, tmp_path, postgres_available
):
    copy = tmp_path / "copy.db"
    shutil.copy(make_url(centers["a_db"]).database, copy)
    urls = [f"sqlite:///{copy}"]
    pg_url = None
    if postgres_available:
        pg_url = create_pg_database()
        urls.append(multi_host_url(pg_url))
    try:
        for url in urls:
            engine = read_only_engine(url)
            try:
                with engine.connect() as conn:
                    assert conn.execute(text("SELECT 1")).scalar_one() == 1
                    with pytest.raises(SQLAlchemyError, match=r"(?i)read.?only"):
                        conn.execute(text("CREATE TABLE written_by_join (x integer)"))
            finally:
                engine.dispose()
    finally:
        if pg_url is not None:
            drop_pg_database(pg_url)
