"""Property tests for the record-store vault (token_wallet/vault.py, format v2).

Complements test_vault.py (examples): here hypothesis generates the input.
- Any JSON-able record or core within the limits survives append/save/reopen exactly (1 is not
  1.0 is not True); anything else is refused with VaultError and nothing is written.
- A rule-based state machine interleaves appends, core edits, saves and reopens and keeps the
  vault equal to a plain-list model (unsaved changes vanish at reopen, saved ones never do).
- A single changed byte of a sealed value or of the header is always refused (VaultCorrupt or
  WrongPasswordA), never another exception, never different data; a changed byte anywhere in the
  SQLite file either is refused or leaves the data exactly as written.

Argon2id runs with MINIMUM_KDF (~25-45 ms a derivation), so one vault serves a whole test where it
can; derandomized, so a run is reproducible.
"""

from __future__ import annotations

import itertools
import json
import math
import pathlib
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from test_vault import sql

from hostkit.sealing import MINIMUM_KDF
from token_wallet import vault_records
from token_wallet.vault import DOCUMENT_DEPTH_MAX, Vault, VaultCorrupt, VaultError, WrongPasswordA
from token_wallet.vault_store import KINDS

PASSWORD = "correct horse battery staple A"
REFUSALS = (WrongPasswordA, VaultCorrupt)


def fast(max_examples: int, **more):
    """Derandomized, no example database, no deadline (Argon2id and fsync vary)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        **more,
    )


def strict(document: object) -> str:
    """Equality that tells 1 from 1.0 from True (== does not)."""
    return json.dumps(document, sort_keys=True, ensure_ascii=False)


def nested(depth: int, leaf: object = "leaf") -> dict:
    """A document whose deepest value sits `depth` levels below the top object."""
    value = leaf
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return {"top": value}


def on_disk_generation(path: pathlib.Path) -> int:
    return sql(path, "SELECT generation FROM vault_state")[0][0]


def plain(vault: Vault) -> dict:
    return {key: list(value) if key in KINDS else value for key, value in vault.data.items()}


TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)  # lone surrogates are not UTF-8
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**256), 2**256),
    st.sampled_from([0, -1, 2**53 + 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=25,
)
RECORDS = st.dictionaries(TEXT, VALUES, max_size=6)
CORE_KEYS = TEXT.filter(lambda key: key not in KINDS)


@pytest.fixture
def vault(tmp_path):
    opened = Vault.create(tmp_path / "wallet.vault", PASSWORD, {}, kdf=MINIMUM_KDF)
    yield opened
    opened.close()


# --- within the limits: exact round trip ------------------------------------------------------


def test_any_record_and_core_value_survives_append_save_reopen(vault):
    model: dict[str, list] = {kind: [] for kind in KINDS}
    core: dict = {}

    @fast(80)
    @given(kind=st.sampled_from(sorted(KINDS)), record=RECORDS, key=CORE_KEYS, value=VALUES)
    @example(
        kind="history", record=nested(DOCUMENT_DEPTH_MAX), key="deep", value=nested(DOCUMENT_DEPTH_MAX - 2)
    )
    @example(
        kind="notices",
        record={"": "", "\x00": "\u2028", "k": [1.5, -0.0, 1e308, 5e-324]},
        key="",
        value=2**255,
    )
    @example(kind="receipts", record={"msg_id": "x" * 600, "n": True}, key="t", value=[1, 1.0, True])
    def check(kind, record, key, value):
        vault.data[kind].append(record)
        vault.data[key] = value
        vault.save()
        model[kind].append(record)
        core[key] = value
        # Read back from disk (the record is committed now, not served from the queue).
        assert strict(vault.data[kind][-1]) == strict(record)

    check()
    vault.close()
    reopened = Vault.open(vault.path, PASSWORD)
    assert strict(plain(reopened)) == strict({**core, **model})


def test_deepest_core_allowed_for_a_record_is_allowed_for_the_core(vault):
    """A core as deep as a record may be (DOCUMENT_DEPTH_MAX) is saved like a v1 document was.

    Fails today: the core is sealed inside {"core": ..., "counts", "seals"}, one level deeper, so
    a core that VaultV1 accepted (and a migration must carry) is refused at depth 64.
    """
    vault.data["deep"] = nested(DOCUMENT_DEPTH_MAX)["top"]  # deepest value at depth 64 in the core
    vault.save()
    assert Vault.open(vault.path, PASSWORD).data["deep"] == nested(DOCUMENT_DEPTH_MAX)["top"]


# --- beyond the limits: refused, nothing written ----------------------------------------------


def bad_values():
    deep = st.integers(DOCUMENT_DEPTH_MAX + 1, DOCUMENT_DEPTH_MAX + 40).map(nested)
    bad_leaf = st.sampled_from([math.nan, math.inf, -math.inf, "\ud800", (1, 2), b"bytes", {1, 2}, object()])
    with_bad_leaf = st.tuples(st.integers(1, 5), bad_leaf).map(lambda depth_leaf: nested(*depth_leaf))
    bad_key = st.sampled_from([{1: "x"}, {None: 1}, {"ok": {(1,): 2}}, {"\udfff": 1}])
    huge_int = st.just({"n": 10**5000})  # beyond Python's int/str conversion limit (4300 digits)
    return st.one_of(deep, with_bad_leaf, bad_key, huge_int)


def test_anything_else_is_refused_and_nothing_is_written(vault):
    vault.data["history"].append({"n": 1})
    vault.save()
    written = list(vault.data["history"])

    @fast(80)
    @given(bad=bad_values(), kind=st.sampled_from(sorted(KINDS)), as_record=st.booleans())
    @example(bad={"x": "y" * (1024 * 1024)}, kind="history", as_record=True)  # over RECORD_MAX_BYTES
    def check(bad, kind, as_record):
        generation = on_disk_generation(vault.path)
        length = len(vault.data[kind])
        with pytest.raises(VaultError) as refused:
            if as_record:
                vault.data[kind].append(bad)
            else:
                vault.data["bad"] = bad
            vault.save()
        assert not isinstance(refused.value, REFUSALS) and "\n" not in str(refused.value)
        vault.data.pop("bad", None)
        assert len(vault.data[kind]) == length
        assert on_disk_generation(vault.path) == generation == vault.generation

    check()
    vault.save()  # still usable, and nothing refused slipped in
    vault.close()
    assert strict(plain(Vault.open(vault.path, PASSWORD))) == strict(
        {"history": written, "receipts": [], "notices": []}
    )


# --- random interleavings against a plain-list model ------------------------------------------


class VaultModel(RuleBasedStateMachine):
    """The vault behaves like dict + lists that persist exactly what was saved."""

    def __init__(self) -> None:
        super().__init__()
        self.saved_page_records = vault_records.READ_PAGE_RECORDS
        vault_records.READ_PAGE_RECORDS = 3  # iteration crosses pages with few records
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="vault-model-"))
        self.vault = Vault.create(self.directory / "wallet.vault", PASSWORD, {}, kdf=MINIMUM_KDF)
        self.saved = {"core": {}, **{kind: [] for kind in KINDS}}
        self.live = json.loads(json.dumps(self.saved))

    def teardown(self) -> None:
        self.vault.close()
        shutil.rmtree(self.directory)
        vault_records.READ_PAGE_RECORDS = self.saved_page_records

    @rule(kind=st.sampled_from(sorted(KINDS)), records=st.lists(RECORDS, min_size=1, max_size=4))
    def append(self, kind, records):
        for record in records:
            self.vault.data[kind].append(record)
        self.live[kind] += records

    @rule(key=CORE_KEYS, value=VALUES)
    def set_core(self, key, value):
        self.vault.data[key] = value
        self.live["core"][key] = value

    @precondition(lambda self: self.live["core"])
    @rule(data=st.data())
    def delete_core(self, data):
        key = data.draw(st.sampled_from(sorted(self.live["core"])))
        del self.vault.data[key]
        del self.live["core"][key]

    @rule()
    def save(self):
        self.vault.save()
        self.saved = json.loads(json.dumps(self.live))

    @rule()
    def reopen(self):
        # Unsaved appends and core edits are gone; everything saved is back.
        self.vault.close()
        self.vault = Vault.open(self.vault.path, PASSWORD)
        self.live = json.loads(json.dumps(self.saved))

    @rule(kind=st.sampled_from(sorted(KINDS)), data=st.data())
    def read_one(self, kind, data):
        records = self.live[kind]
        if records:
            index = data.draw(st.integers(-len(records), len(records) - 1))
            assert strict(self.vault.data[kind][index]) == strict(records[index])

    @invariant()
    def lengths_match(self):
        for kind in KINDS:
            assert len(self.vault.data[kind]) == len(self.live[kind])

    @invariant()
    def contents_match(self):
        core = {key: value for key, value in self.vault.data.items() if key not in KINDS}
        assert strict(core) == strict(self.live["core"])
        for kind in KINDS:
            assert strict(list(self.vault.data[kind])) == strict(self.live[kind])


TestVaultModel = VaultModel.TestCase
TestVaultModel.settings = fast(12, stateful_step_count=20)


# --- corruption -------------------------------------------------------------------------------

_names = itertools.count()


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """A closed vault with records of every kind (with and without refs)."""
    directory = tmp_path_factory.mktemp("vault-corruption")
    data = {
        "member_id": "m-1",
        "history": [{"type": "pay", "msg_id": f"m{n}", "at_ms": n} for n in range(1, 5)] + [{"x": 1}],
        "receipts": [{"msg_id": "r1"}],
        "notices": [{"notice": {"payment_id": "p1"}}],
    }
    vault = Vault.create(directory / "original.vault", PASSWORD, data, kdf=MINIMUM_KDF)
    expected = plain(vault)
    vault.close()
    return vault.path, expected


def copy_of(original: pathlib.Path) -> pathlib.Path:
    path = original.with_name(f"case-{next(_names)}.vault")
    shutil.copyfile(original, path)
    return path


def open_and_read_all(path: pathlib.Path) -> dict:
    vault = Vault.open(path, PASSWORD)
    try:
        return plain(vault)
    finally:
        vault.close()


def outcome(path: pathlib.Path) -> dict | VaultError:
    """The data read, or the refusal; any other exception fails the test."""
    try:
        return open_and_read_all(path)
    except REFUSALS as refusal:
        assert "\n" not in str(refusal)
        return refusal
    except BaseException as other:
        raise AssertionError(f"{type(other).__name__} escaped: {other!r}") from other


# (table, column, row selector): every sealed or authenticated value in the file.
SEALED_VALUES = [
    ("vault_header", "header", "id = 1"),
    ("vault_state", "nonce", "id = 1"),
    ("vault_state", "sealed", "id = 1"),
    *[("records", column, "kind = 1 AND seq = 2") for column in ("nonce", "sealed", "ref")],
    ("records", "sealed", "kind = 1 AND seq = 5"),
    ("records", "sealed", "kind = 2 AND seq = 1"),
    ("records", "ref", "kind = 3 AND seq = 1"),
]


def test_a_changed_byte_of_a_sealed_value_or_the_header_is_always_refused(original):
    original, _ = original

    @fast(100)
    @given(
        target=st.sampled_from(SEALED_VALUES),
        where=st.floats(0, 1, exclude_max=True),
        mask=st.integers(1, 255),
    )
    def check(target, where, mask):
        table, column, selector = target
        path = copy_of(original)
        (value,) = sql(path, f"SELECT {column} FROM {table} WHERE {selector}")[0]
        changed = bytearray(value)
        changed[int(where * len(value))] ^= mask
        sql(path, f"UPDATE {table} SET {column} = ? WHERE {selector}", (bytes(changed),))
        result = outcome(path)
        assert isinstance(result, VaultError), f"{table}.{column} changed and the vault still read"
        path.unlink()

    check()


def test_a_changed_byte_anywhere_in_the_file_is_refused_or_harmless(original):
    original, expected = original
    size_bytes = original.stat().st_size

    @fast(100)
    @given(position=st.integers(0, size_bytes - 1), mask=st.integers(1, 255))
    @example(position=0, mask=1)  # the SQLite magic
    @example(position=18, mask=3)  # the journal-mode bytes
    def check(position, mask):
        path = copy_of(original)
        blob = bytearray(path.read_bytes())
        blob[position] ^= mask
        path.write_bytes(bytes(blob))
        result = outcome(path)
        if not isinstance(result, VaultError):
            assert strict(result) == strict(expected), "a changed file read as different data"
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink()

    check()
