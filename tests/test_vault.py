"""Tests for the password-A vault, format v2 (token_wallet/vault.py: a SQLite record store).

The attacker here has the file: they edit it with sqlite3 (change, swap, move, copy, drop and add
sealed rows, roll the state row back, plant schema objects, change header bytes) and every change
must be refused with VaultCorrupt or WrongPasswordA, never read as data. Also: round trips, saves
that refuse bad data and write nothing, password changes without rewriting records, automatic new
epochs, RecordList reading, secrets kept out of text, file modes, migration of first-format files
(written by the real VaultV1), and the cross-process lock (token_wallet.vault_lock).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import pytest

from hostkit import sealing
from hostkit.sealing import MINIMUM_KDF
from token_wallet import vault_records, vault_store
from token_wallet.vault import (
    Vault,
    VaultBusy,
    VaultConflict,
    VaultCorrupt,
    VaultError,
    VaultNotFound,
    WrongPasswordA,
)
from token_wallet.vault_lock import vault_lock
from token_wallet.vault_v1 import VaultV1

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery staple A"
OTHER_PASSWORD = "a different password A"
SECRET_VALUE = "wrapped-key-blob-SECRET-0123456789"
SECRET_NOTE = "note-SECRET-rent-for-flat-7"
HISTORY, RECEIPTS, NOTICES = 1, 2, 3  # kind numbers on disk


def history_entry(n: int) -> dict:
    return {"type": "pay", "msg_id": f"msg-{n}", "at_ms": 1000 * n, "note": f"{SECRET_NOTE} {n} café ☕"}


def receipt(n: int) -> dict:
    return {"msg_id": f"rcpt-{n}", "amount_minor": n}


def notice(n: int) -> dict:
    return {"notice": {"payment_id": f"pay-{n}"}, "at_ms": n}


def sample_core() -> dict:
    return {"member_id": "m-42", "wrapped_key": SECRET_VALUE, "outbox": [], "counter": 7}


def sample_data() -> dict:
    return {
        **sample_core(),
        "history": [history_entry(n) for n in (1, 2, 3)],
        "receipts": [receipt(1)],
        "notices": [notice(1)],
    }


def make_vault(tmp_path: pathlib.Path, name: str = "wallet.vault", password: str = PASSWORD) -> Vault:
    return Vault.create(tmp_path / name, password, sample_data(), kdf=MINIMUM_KDF)


def plain(vault: Vault) -> dict:
    """The vault's data as plain dicts and lists (reads every record)."""
    return {key: list(value) if key in vault_store.KINDS else value for key, value in vault.data.items()}


def make_closed(tmp_path: pathlib.Path) -> pathlib.Path:
    vault = make_vault(tmp_path)
    vault.close()
    return vault.path


def sql(path: pathlib.Path, statement: str, params: tuple = ()) -> list:
    """The attacker's (or inspector's) own SQLite connection to the vault file."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(statement, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def contents(path: pathlib.Path) -> dict:
    """Every row of every table: what 'nothing was written' compares."""
    return {
        table: sorted(sql(path, f"SELECT * FROM {table}"))
        for table in ("vault_header", "vault_state", "records")
    }


def header_of(path: pathlib.Path) -> dict:
    return json.loads(sql(path, "SELECT header FROM vault_header")[0][0])


def set_header(path: pathlib.Path, raw: bytes) -> None:
    sql(path, "UPDATE vault_header SET header = ?", (raw,))


def open_refused(path: pathlib.Path, error: type, password: str = PASSWORD) -> VaultError:
    with pytest.raises(error) as info:
        Vault.open(path, password)
    assert "\n" not in str(info.value)
    return info.value


class Argon2Spy:
    """Counts Argon2id derivations (a refused header must cost none)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = sealing.Argon2id

        def counting(**kwargs):
            self.calls += 1
            return real(**kwargs)

        monkeypatch.setattr(sealing, "Argon2id", counting)


# --- round trip --------------------------------------------------------------------------------


def test_round_trip_of_core_and_records(tmp_path):
    path = tmp_path / "home" / "wallet.vault"
    created = Vault.create(path, PASSWORD, sample_data(), kdf=MINIMUM_KDF)
    assert created.generation == 1 and plain(created) == sample_data()
    created.data["history"].append(history_entry(4))
    created.data["receipts"].append(receipt(2))
    created.data["counter"] = 8
    created.save()
    created.close()
    opened = Vault.open(path, PASSWORD)
    expected = sample_data()
    expected["history"].append(history_entry(4))
    expected["receipts"].append(receipt(2))
    expected["counter"] = 8
    assert plain(opened) == expected
    assert opened.generation == 2 and not opened.migrated
    opened.close()
    assert sorted(os.listdir(path.parent)) == ["wallet.vault"]


def test_file_mode_0600_and_home_0700(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    vault = make_vault(home)
    vault.data["history"].append(history_entry(9))
    vault.save()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in os.listdir(home):  # the vault and its WAL journal while open
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    vault.close()


def test_records_are_sealed_one_per_row_and_nothing_is_plaintext(tmp_path):
    path = make_closed(tmp_path)
    rows = sql(path, "SELECT kind, seq, epoch FROM records ORDER BY kind, seq")
    assert rows == [(1, 1, 1), (1, 2, 1), (1, 3, 1), (2, 1, 1), (3, 1, 1)]
    blob = path.read_bytes()
    for secret in (SECRET_VALUE, SECRET_NOTE, "msg-1", "m-42", "rcpt-1", "pay-1"):
        assert secret.encode() not in blob


# --- wrong password, missing and foreign files ------------------------------------------------


def test_wrong_password_leaves_file_untouched(tmp_path):
    path = make_closed(tmp_path)
    before = (path.read_bytes(), sorted(os.listdir(tmp_path)))
    error = open_refused(path, WrongPasswordA, OTHER_PASSWORD)
    assert "wrong password A" in str(error)
    assert (path.read_bytes(), sorted(os.listdir(tmp_path))) == before
    assert plain(Vault.open(path, PASSWORD)) == sample_data()


def test_missing_file_is_not_found(tmp_path):
    open_refused(tmp_path / "absent", VaultNotFound)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", os.urandom(4096), b"SQLite format 3\x00" + os.urandom(4000), b"TPVAULT"],
    ids=["empty", "text", "random", "sqlite-magic-then-garbage", "short-v1-magic"],
)
def test_non_sqlite_garbage_is_corrupt(tmp_path, content):
    path = tmp_path / "wallet.vault"
    path.write_bytes(content)
    open_refused(path, VaultCorrupt)
    assert path.read_bytes() == content


def test_another_programs_sqlite_file_is_corrupt(tmp_path):
    path = tmp_path / "wallet.vault"
    sql(path, "CREATE TABLE notes (body TEXT)")
    open_refused(path, VaultCorrupt)


def test_schema_text_that_is_not_utf8_is_corrupt(tmp_path):
    # SQLite quotes the damaged schema in its error message; that text is not UTF-8 either.
    path = make_closed(tmp_path)
    blob = path.read_bytes()
    assert blob.count(b"IS NOT NULL") == 1
    path.write_bytes(blob.replace(b"IS NOT NULL", b"IS NOT\xa0NULL"))
    open_refused(path, VaultCorrupt)


# --- tampering with records -------------------------------------------------------------------


def test_changed_sealed_bytes_are_refused_when_read(tmp_path):
    path = make_closed(tmp_path)
    (sealed,) = sql(path, "SELECT sealed FROM records WHERE kind = 1 AND seq = 2")[0]
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    sql(path, "UPDATE records SET sealed = ? WHERE kind = 1 AND seq = 2", (flipped,))
    vault = Vault.open(path, PASSWORD)
    assert vault.data["history"][0] == history_entry(1)
    with pytest.raises(VaultCorrupt) as info:
        vault.data["history"][1]
    assert "record 2" in str(info.value)
    with pytest.raises(VaultCorrupt):
        list(vault.data["history"])


def test_swapped_seq_is_refused(tmp_path):
    path = make_closed(tmp_path)
    sql(path, "UPDATE records SET seq = 99 WHERE kind = 1 AND seq = 1")
    sql(path, "UPDATE records SET seq = 1 WHERE kind = 1 AND seq = 2")
    sql(path, "UPDATE records SET seq = 2 WHERE kind = 1 AND seq = 99")
    vault = Vault.open(path, PASSWORD)  # counts agree: the swap shows when a record is read
    for index in (0, 1):
        with pytest.raises(VaultCorrupt):
            vault.data["history"][index]
    assert vault.data["history"][2] == history_entry(3)


def test_record_moved_to_another_kind_is_refused(tmp_path):
    path = make_closed(tmp_path)
    # Swap history 1 and receipts 1, so every count still agrees.
    sql(path, "UPDATE records SET kind = 9 WHERE kind = 1 AND seq = 1")
    sql(path, "UPDATE records SET kind = 1 WHERE kind = 2 AND seq = 1")
    sql(path, "UPDATE records SET kind = 2 WHERE kind = 9 AND seq = 1")
    vault = Vault.open(path, PASSWORD)
    for records in (vault.data["history"], vault.data["receipts"]):
        with pytest.raises(VaultCorrupt):
            records[0]


def test_record_of_unknown_kind_is_refused_at_open(tmp_path):
    path = make_closed(tmp_path)
    sql(path, "UPDATE records SET kind = 4 WHERE kind = 3 AND seq = 1")
    open_refused(path, VaultCorrupt)


def test_record_copied_from_another_vault_is_refused(tmp_path):
    path = make_closed(tmp_path)
    other = make_vault(tmp_path, "other.vault")  # same password, same records, other store id
    other.close()
    row = sql(other.path, "SELECT epoch, nonce, sealed, ref FROM records WHERE kind = 1 AND seq = 1")[0]
    sql(path, "UPDATE records SET epoch = ?, nonce = ?, sealed = ?, ref = ? WHERE kind = 1 AND seq = 1", row)
    vault = Vault.open(path, PASSWORD)
    with pytest.raises(VaultCorrupt):
        vault.data["history"][0]


def test_changed_ref_is_refused_when_read(tmp_path):
    # The ref is bound to the record: pointing has_ref at another record shows on reading it.
    path = make_closed(tmp_path)
    (ref,) = sql(path, "SELECT ref FROM records WHERE kind = 1 AND seq = 1")[0]
    sql(path, "UPDATE records SET ref = ? WHERE kind = 1 AND seq = 2", (ref,))
    vault = Vault.open(path, PASSWORD)
    with pytest.raises(VaultCorrupt):
        vault.data["history"][1]


@pytest.mark.parametrize(
    "column,value",
    [("ref", "aaaaaaaaaaaaaaaa"), ("ref", 5), ("nonce", "x" * 12), ("sealed", "text"), ("epoch", 99)],
)
def test_record_columns_of_another_type_are_refused(tmp_path, column, value):
    # A row's columns are attacker-chosen SQLite values: text or integers where bytes belong.
    path = make_closed(tmp_path)
    sql(path, f"UPDATE records SET {column} = ? WHERE kind = 1 AND seq = 1", (value,))
    vault = Vault.open(path, PASSWORD)
    with pytest.raises(VaultCorrupt):
        vault.data["history"][0]


def test_deleted_middle_record_is_refused_when_its_range_is_read(tmp_path):
    path = make_closed(tmp_path)
    sql(path, "DELETE FROM records WHERE kind = 1 AND seq = 2")
    vault = Vault.open(path, PASSWORD)  # only the oldest and newest are checked at open
    assert len(vault.data["history"]) == 3
    assert vault.data["history"][0] == history_entry(1)
    assert vault.data["history"][-1] == history_entry(3)
    for read in (lambda: vault.data["history"][1], lambda: list(vault.data["history"])):
        with pytest.raises(VaultCorrupt) as info:
            read()
        assert "history record 2 is missing" in str(info.value)


@pytest.mark.parametrize("kind,seq", [(HISTORY, 3), (RECEIPTS, 1), (HISTORY, 1)])
def test_deleted_newest_or_oldest_records_are_refused_at_open(tmp_path, kind, seq):
    path = make_closed(tmp_path)
    sql(path, "DELETE FROM records WHERE kind = ? AND seq >= ?", (kind, seq))
    open_refused(path, VaultCorrupt)


def test_record_added_beyond_the_count_is_refused_at_open(tmp_path):
    path = make_closed(tmp_path)
    sql(
        path,
        "INSERT INTO records SELECT kind, 4, epoch, nonce, sealed, ref FROM records "
        "WHERE kind = 1 AND seq = 3",
    )
    error = open_refused(path, VaultCorrupt)
    assert "history" in str(error)


def test_state_rolled_back_to_an_older_genuine_one_is_refused(tmp_path):
    path = make_closed(tmp_path)
    backup = tmp_path / "backup.vault"
    shutil.copyfile(path, backup)
    vault = Vault.open(path, PASSWORD)
    vault.data["history"].append(history_entry(4))
    vault.save()
    vault.close()
    old_state = sql(backup, "SELECT generation, epoch, nonce, sealed FROM vault_state")[0]
    sql(path, "UPDATE vault_state SET generation = ?, epoch = ?, nonce = ?, sealed = ?", old_state)
    error = open_refused(path, VaultCorrupt)
    assert "counts" in str(error)


def test_state_with_changed_generation_is_refused(tmp_path):
    path = make_closed(tmp_path)
    sql(path, "UPDATE vault_state SET generation = generation + 1")
    open_refused(path, VaultCorrupt)


@pytest.mark.parametrize(
    "planted",
    [
        "CREATE TABLE extra (x)",
        "CREATE VIEW peek AS SELECT * FROM records",
        "CREATE INDEX records_by_epoch ON records (epoch)",
        "CREATE TRIGGER keep AFTER INSERT ON records BEGIN INSERT INTO records SELECT * FROM records; END",
    ],
    ids=["table", "view", "index", "trigger"],
)
def test_planted_schema_objects_are_refused(tmp_path, planted):
    path = make_closed(tmp_path)
    sql(path, planted)
    open_refused(path, VaultCorrupt)


# --- tampering with the header ----------------------------------------------------------------


def test_any_changed_header_byte_is_refused(tmp_path):
    path = make_closed(tmp_path)
    (raw,) = sql(path, "SELECT header FROM vault_header")[0]
    outcomes = set()
    # Every 4th byte (and the last): each one that parses costs a KDF run (~45 ms).
    for position in [*range(0, len(raw), 4), len(raw) - 1]:
        changed = bytearray(raw)
        changed[position] ^= 0x01
        set_header(path, bytes(changed))
        outcomes.add(type(open_refused(path, (VaultCorrupt, WrongPasswordA))))
    assert outcomes == {VaultCorrupt, WrongPasswordA}
    set_header(path, raw)
    assert plain(Vault.open(path, PASSWORD)) == sample_data()


def replaced_header(path: pathlib.Path, section: str | None, field: str, value) -> bytes:
    header = header_of(path)
    target = header if section is None else header[section]
    if section == "keys":
        target = header["keys"][0]
    target[field] = value
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "field,value",
    [("m_kib", 1024), ("m_kib", 2**40), ("t", 1), ("t", 100), ("p", 0), ("p", 1000), ("alg", "argon2i")],
)
def test_kdf_out_of_limits_is_refused_before_the_kdf_runs(tmp_path, monkeypatch, field, value):
    path = make_closed(tmp_path)
    set_header(path, replaced_header(path, "kdf", field, value))
    spy = Argon2Spy(monkeypatch)
    open_refused(path, VaultCorrupt)
    assert spy.calls == 0, "limits must be checked before the expensive KDF runs"


def test_changed_store_id_is_corrupt(tmp_path):
    path = make_closed(tmp_path)
    set_header(path, replaced_header(path, None, "store_id", "AAAAAAAAAAAAAAAAAAAAAA=="))
    assert "key table" in str(open_refused(path, VaultCorrupt))


def test_changed_key_table_is_corrupt(tmp_path):
    path = make_closed(tmp_path)
    other = make_vault(tmp_path, "other.vault")
    other.close()
    stolen = header_of(other.path)["keys"][0]["wrapped"]  # a genuine wrapped key, but not ours
    set_header(path, replaced_header(path, "keys", "wrapped", stolen))
    open_refused(path, VaultCorrupt)


def test_changed_salt_is_wrong_password(tmp_path):
    path = make_closed(tmp_path)
    set_header(path, replaced_header(path, "kdf", "salt", "AAAAAAAAAAAAAAAAAAAAAA=="))
    open_refused(path, WrongPasswordA)


def test_header_of_another_vault_with_the_same_password_is_refused(tmp_path):
    path = make_closed(tmp_path)
    other = make_vault(tmp_path, "other.vault")
    other.close()
    set_header(path, sql(other.path, "SELECT header FROM vault_header")[0][0])
    open_refused(path, VaultCorrupt)


# --- save -------------------------------------------------------------------------------------


def test_two_vault_objects_saving_the_same_file_conflict(tmp_path):
    first = make_vault(tmp_path)
    second = Vault.open(first.path, PASSWORD)
    second.data["member_id"] = "from-second"
    second.data["history"].append(history_entry(4))
    second.save()
    before = contents(first.path)
    first.data["member_id"] = "from-first"
    first.data["history"].append(history_entry(5))
    with pytest.raises(VaultConflict):
        first.save()
    assert contents(first.path) == before and first.generation == 1
    reopened = Vault.open(first.path, PASSWORD)
    assert reopened.data["member_id"] == "from-second"
    assert reopened.data["history"][-1] == history_entry(4)


BAD_VALUES = {
    "bytes": SECRET_VALUE.encode(),
    "tuple": (SECRET_VALUE, 1),
    "nan": float("nan"),
    "int-key": {1: SECRET_VALUE},
    "too-deep": json.loads("[" * 100 + "]" * 100),
    "lone-surrogate": SECRET_VALUE + "\ud800",
    "set": {SECRET_VALUE},
}


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_save_refuses_non_json_core_and_writes_nothing(tmp_path, name):
    vault = make_vault(tmp_path)
    vault.data["history"].append(history_entry(4))  # queued: must not be written either
    before = contents(vault.path)
    vault.data["bad"] = BAD_VALUES[name]
    with pytest.raises(VaultError) as info:
        vault.save()
    assert SECRET_VALUE not in str(info.value)
    assert contents(vault.path) == before and vault.generation == 1
    del vault.data["bad"]
    vault.save()  # the refused save left the vault usable
    assert plain(Vault.open(vault.path, PASSWORD))["history"][-1] == history_entry(4)


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_append_refuses_non_json_records(tmp_path, name):
    vault = make_vault(tmp_path)
    with pytest.raises(VaultError) as info:
        vault.data["receipts"].append({"bad": BAD_VALUES[name]})
    assert SECRET_VALUE not in str(info.value)
    assert len(vault.data["receipts"]) == 1
    with pytest.raises(VaultError):
        vault.data["receipts"].append([1, 2])  # a record is an object


def test_replacing_a_record_list_is_refused(tmp_path):
    vault = make_vault(tmp_path)
    before = contents(vault.path)
    vault.data["history"] = [history_entry(1)]
    with pytest.raises(VaultError) as info:
        vault.save()
    assert "appended to" in str(info.value)
    del vault.data["receipts"]
    with pytest.raises(VaultError):
        vault.save()
    assert contents(vault.path) == before


def test_records_cannot_be_changed_in_place(tmp_path):
    vault = make_vault(tmp_path)
    records = vault.data["history"]
    with pytest.raises(TypeError):
        records[0] = {}
    records[0]["note"] = "changed"  # a copy: the record on disk stays
    assert vault.data["history"][0] == history_entry(1)


# --- change_password --------------------------------------------------------------------------


def record_rows(path: pathlib.Path) -> dict:
    return {(kind, seq): rest for kind, seq, *rest in sql(path, "SELECT * FROM records")}


def test_change_password_rekeys_without_rewriting_records(tmp_path):
    vault = make_vault(tmp_path)
    old_header = header_of(vault.path)
    rows_before = record_rows(vault.path)
    vault.change_password(OTHER_PASSWORD, kdf=MINIMUM_KDF)
    vault.data["history"].append(history_entry(4))
    vault.save()
    vault.close()
    open_refused(vault.path, WrongPasswordA, PASSWORD)
    reopened = Vault.open(vault.path, OTHER_PASSWORD)
    expected = sample_data()
    expected["history"].append(history_entry(4))
    assert plain(reopened) == expected
    header = header_of(vault.path)
    assert [entry["epoch"] for entry in header["keys"]] == [1, 2]
    assert header["kdf"]["salt"] != old_header["kdf"]["salt"]
    assert header["store_id"] == old_header["store_id"]
    rows_after = record_rows(vault.path)
    assert all(rows_after[key] == row for key, row in rows_before.items()), "a record was rewritten"
    epochs = dict(sql(vault.path, "SELECT epoch, count(*) FROM records GROUP BY epoch"))
    assert epochs == {1: len(rows_before), 2: 1}
    # Without the WAL, the old key table is gone from the file.
    reopened.close()
    assert old_header["keys"][0]["nonce"].encode() not in vault.path.read_bytes()


def test_change_password_refuses_weak_choices_and_keeps_the_old_one(tmp_path):
    vault = make_vault(tmp_path)
    before = contents(vault.path)
    for password in ("", "x" * 1025):
        with pytest.raises(VaultError):
            vault.change_password(password, kdf=MINIMUM_KDF)
    assert contents(vault.path) == before
    vault.save()
    assert Vault.open(vault.path, PASSWORD).generation == 2


def test_new_epoch_starts_when_seals_per_epoch_max_is_reached(tmp_path, monkeypatch):
    monkeypatch.setattr(vault_store, "SEALS_PER_EPOCH_MAX", 8)
    vault = make_vault(tmp_path)  # 5 records + the state: 6 seals in epoch 1
    expected = sample_data()
    for n in range(4, 12):
        vault.data["history"].append(history_entry(n))
        expected["history"].append(history_entry(n))
        vault.save()
    vault.close()
    epochs = [entry["epoch"] for entry in header_of(vault.path)["keys"]]
    assert len(epochs) >= 3
    per_epoch = dict(sql(vault.path, "SELECT epoch, count(*) FROM records GROUP BY epoch"))
    assert max(per_epoch.values()) < 8
    reopened = Vault.open(vault.path, PASSWORD)
    assert plain(reopened) == expected


# --- RecordList -------------------------------------------------------------------------------


@pytest.fixture
def long_vault(tmp_path, monkeypatch):
    """A vault with history 1..10 on disk and 11..12 queued, read 3 records a page."""
    monkeypatch.setattr(vault_records, "READ_PAGE_RECORDS", 3)
    data = {**sample_core(), "history": [history_entry(n) for n in range(1, 11)]}
    vault = Vault.create(tmp_path / "wallet.vault", PASSWORD, data, kdf=MINIMUM_KDF)
    vault.data["history"].append(history_entry(11))
    vault.data["history"].append(history_entry(12))
    yield vault
    vault.close()


def test_record_list_indexing_and_slicing(long_vault):
    records = long_vault.data["history"]
    model = [history_entry(n) for n in range(1, 13)]
    assert len(records) == 12
    assert records[0] == model[0] and records[-1] == model[-1] and records[-3] == model[-3]
    for piece in (slice(None), slice(2, 5), slice(8, 12), slice(-4, None), slice(None, None, 3), slice(5, 2)):
        assert records[piece] == model[piece], piece
    for index in (12, -13):
        with pytest.raises(IndexError):
            records[index]
    with pytest.raises(TypeError):
        records["0"]
    assert repr(records) == "<RecordList history len=12>"


def test_record_list_iterates_across_pages(long_vault, monkeypatch):
    reads = []
    real = vault_store.open_record
    monkeypatch.setattr(vault_store, "open_record", lambda *a: reads.append(a[3]) or real(*a))
    assert list(long_vault.data["history"]) == [history_entry(n) for n in range(1, 13)]
    assert reads == list(range(1, 11)), "each record on disk is decrypted once"
    long_vault.save()
    assert list(Vault.open(long_vault.path, PASSWORD).data["history"]) == [
        history_entry(n) for n in range(1, 13)
    ]


def test_has_ref_finds_written_and_queued_records(long_vault):
    history = long_vault.data["history"]
    assert history.has_ref("pay:msg-3") and history.has_ref("pay:msg-12")
    assert not history.has_ref("pay:msg-13") and not history.has_ref("msg-3")
    assert not long_vault.data["receipts"].has_ref("pay:msg-3")
    long_vault.save()
    reopened = Vault.open(long_vault.path, PASSWORD)
    assert reopened.data["history"].has_ref("pay:msg-12")
    assert not reopened.data["notices"].has_ref("pay-1")


def test_page_newest_and_since_ms(long_vault, monkeypatch):
    history = long_vault.data["history"]
    newest = history.page(4)
    assert newest.items == [history_entry(n) for n in (9, 10, 11, 12)]
    assert (newest.first_index, newest.total, newest.has_more_after) == (8, 12, False)
    assert history.page(100).items == list(history)
    reads = []
    real = vault_store.open_record
    monkeypatch.setattr(vault_store, "open_record", lambda *a: reads.append(a[3]) or real(*a))
    since = history.page(2, since_ms=4500)  # entry n has at_ms 1000 * n
    assert since.items == [history_entry(5), history_entry(6)]
    assert (since.first_index, since.has_more_after) == (4, True)
    assert len(reads) <= 8, "bisection, not a scan"
    assert history.page(3, since_ms=5000).items[0] == history_entry(5)
    assert history.page(3, since_ms=0).first_index == 0
    assert history.page(3, since_ms=10**9).items == []
    for limit in (0, -1, 10_001, 1.5):
        with pytest.raises(VaultError):
            history.page(limit)


# --- secrets stay out of text -----------------------------------------------------------------


def test_no_secret_in_repr_or_error_text(tmp_path):
    vault = make_vault(tmp_path)
    texts = [repr(vault), str(vault), repr(vault.data["history"]), repr(vault.data["receipts"])]
    errors = []
    for attempt in (
        lambda: Vault.open(vault.path, OTHER_PASSWORD),
        lambda: Vault.create(vault.path, PASSWORD, sample_data(), kdf=MINIMUM_KDF),
        lambda: vault.data["history"].append({"blob": SECRET_NOTE.encode()}),
        lambda: vault.data["history"].append({"x": SECRET_NOTE * 100_000}),
    ):
        with pytest.raises(VaultError) as info:
            attempt()
        errors.append(info.value)
    vault.close()
    sql(vault.path, "UPDATE records SET sealed = substr(sealed, 2) WHERE kind = 1 AND seq = 1")
    with pytest.raises(VaultCorrupt) as info:
        Vault.open(vault.path, PASSWORD).data["history"][0]
    errors.append(info.value)
    for error in errors:
        texts += [str(error), repr(error)]
        assert "\n" not in str(error)
        # Chained exceptions would print their own text in tracebacks.
        assert error.__cause__ is None and (error.__suppress_context__ or error.__context__ is None)
    for text in texts:
        for secret in (PASSWORD, OTHER_PASSWORD, SECRET_VALUE, SECRET_NOTE, "msg-1"):
            assert secret not in text, f"{secret!r} leaked into {text!r}"


# --- migration from the first format ----------------------------------------------------------


def write_v1(tmp_path: pathlib.Path) -> pathlib.Path:
    v1 = VaultV1.create(tmp_path / "wallet.vault", PASSWORD, sample_data(), kdf=MINIMUM_KDF)
    return v1.path


def v1_backup(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".v1")


def test_migration_keeps_data_and_the_v1_backup_until_a_later_save(tmp_path):
    path = write_v1(tmp_path)
    v1_bytes = path.read_bytes()
    migrated = Vault.open(path, PASSWORD)
    assert migrated.migrated and plain(migrated) == sample_data()
    assert path.read_bytes().startswith(b"SQLite format 3\x00")
    assert v1_backup(path).read_bytes() == v1_bytes
    migrated.data["history"].append(history_entry(4))
    migrated.save()  # the migrating run's own save keeps the backup
    migrated.close()
    assert v1_backup(path).exists()
    assert VaultV1.open(v1_backup(path), PASSWORD).data == sample_data()
    later = Vault.open(path, PASSWORD)
    assert not later.migrated and later.data["history"][-1] == history_entry(4)
    assert v1_backup(path).exists(), "opening alone keeps the backup"
    later.save()
    later.close()
    assert sorted(os.listdir(tmp_path)) == ["wallet.vault"]


def test_migration_with_the_wrong_password_changes_nothing(tmp_path):
    path = write_v1(tmp_path)
    before = (path.read_bytes(), sorted(os.listdir(tmp_path)))
    open_refused(path, WrongPasswordA, OTHER_PASSWORD)
    assert (path.read_bytes(), sorted(os.listdir(tmp_path))) == before


def test_migration_after_a_crash_before_install(tmp_path):
    path = write_v1(tmp_path)
    v1_bytes = path.read_bytes()
    # A migration that died before replacing the file: its staged store and the backup link remain.
    shutil.copyfile(path, v1_backup(path))
    path.with_name("wallet.vault.migrating").write_bytes(b"SQLite format 3\x00half-written")
    path.with_name("wallet.vault.migrating.new").write_bytes(b"half-written too")
    vault = Vault.open(path, PASSWORD)
    assert vault.migrated and plain(vault) == sample_data()
    vault.close()
    assert sorted(os.listdir(tmp_path)) == ["wallet.vault", "wallet.vault.v1"]
    assert v1_backup(path).read_bytes() == v1_bytes


def test_change_password_removes_the_v1_backup(tmp_path):
    path = write_v1(tmp_path)
    vault = Vault.open(path, PASSWORD)
    vault.change_password(OTHER_PASSWORD, kdf=MINIMUM_KDF)
    assert not v1_backup(path).exists(), "the backup still opens with the old password A"
    vault.close()
    assert plain(Vault.open(path, OTHER_PASSWORD)) == sample_data()


def test_damaged_v1_file_is_not_migrated(tmp_path):
    path = write_v1(tmp_path)
    damaged = path.read_bytes()[:-1]
    path.write_bytes(damaged)
    open_refused(path, VaultCorrupt)
    assert path.read_bytes() == damaged
    assert sorted(os.listdir(tmp_path)) == ["wallet.vault"]


# --- locking ----------------------------------------------------------------------------------

LOCK_HOLDER = """
import sys
from token_wallet.vault_lock import vault_lock
with vault_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the parent closes our stdin
"""


def start_lock_holder(path: pathlib.Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0


def test_lock_held_by_other_process_gives_busy(tmp_path):
    path = tmp_path / "wallet.vault"
    holder = start_lock_holder(path)
    try:
        started = time.monotonic()
        with pytest.raises(VaultBusy) as info, vault_lock(path, timeout_ms=200):
            pytest.fail("lock acquired while another process holds it")
        waited_s = time.monotonic() - started
        assert 0.2 <= waited_s < 2.0
        assert "another process" in str(info.value)
    finally:
        stop(holder)
    with vault_lock(path, timeout_ms=2000):
        pass
    assert stat.S_IMODE(path.with_name("wallet.vault.lock").stat().st_mode) == 0o600


def test_lock_waits_for_release(tmp_path):
    path = tmp_path / "wallet.vault"
    holder = start_lock_holder(path)
    releaser = threading.Timer(0.3, holder.stdin.close)
    releaser.start()
    started = time.monotonic()
    try:
        with vault_lock(path, timeout_ms=5000):
            assert time.monotonic() - started >= 0.25
    finally:
        releaser.join()
        assert holder.wait(timeout=10) == 0


def test_lock_is_released_by_a_killed_holder(tmp_path):
    path = tmp_path / "wallet.vault"
    holder = start_lock_holder(path)
    holder.kill()
    holder.wait(timeout=10)
    with vault_lock(path, timeout_ms=2000):
        pass


def test_lock_released_on_exit_and_on_exception(tmp_path):
    path = tmp_path / "wallet.vault"
    with vault_lock(path, timeout_ms=100):
        pass
    with pytest.raises(RuntimeError), vault_lock(path, timeout_ms=100):
        raise RuntimeError("boom")
    with vault_lock(path, timeout_ms=100):
        pass


def test_lock_timeout_is_bounded(tmp_path):
    with pytest.raises(VaultError), vault_lock(tmp_path / "v", timeout_ms=-1):
        pass
    with pytest.raises(VaultError), vault_lock(tmp_path / "v", timeout_ms=10**9):
        pass
