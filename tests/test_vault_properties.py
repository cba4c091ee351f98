"""Property tests for the vault file format (token_wallet/vault.py).

Complements test_vault.py (examples): here hypothesis generates the input.
- Whatever the bytes on disk (arbitrary bytes, generated header documents,
  truncations, bit flips, splices of a real vault), Vault.open raises
  WrongPasswordA or VaultCorrupt, never another exception, and never opens
  a file that differs from what was written.
- The header parser refuses every KDF parameter outside the documented
  limits, and Vault.open refuses such a file before running Argon2id.
- Any JSON-able document within the depth limit survives create/open/save;
  anything else is refused with VaultError and nothing is written.

Argon2id runs with MINIMUM_KDF (~25 ms a derivation here), so the examples
that reach the KDF are few; derandomized, so a run is reproducible.
Tests named *_bug_* fail against the current code on purpose; the fix is in
their docstring.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import math
import struct

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from hostkit import sealing
from hostkit.sealing import (
    GENERATION_MAX,
    HEADER_MAX_BYTES,
    ITERATIONS_MAX,
    ITERATIONS_MIN,
    LANES_MAX,
    LANES_MIN,
    MEMORY_KIB_MAX,
    MEMORY_KIB_MIN,
    MINIMUM_KDF,
)
from token_wallet import vault as vault_mod
from token_wallet.vault import DOCUMENT_DEPTH_MAX, MAGIC, Vault, VaultCorrupt, VaultError, WrongPasswordA

PASSWORD = "correct horse battery staple A"
DOCUMENT = {
    "member_id": "M-0123456789abcdef",
    "wrapped_key": "blob",
    "history": [{"amount_minor": 1250}],
    "outbox": [],
}
REFUSALS = (WrongPasswordA, VaultCorrupt)
LIMITS = {
    "m_kib": (MEMORY_KIB_MIN, MEMORY_KIB_MAX),
    "t": (ITERATIONS_MIN, ITERATIONS_MAX),
    "p": (LANES_MIN, LANES_MAX),
}


def fast(max_examples: int):
    """Settings for this file: derandomized, no example database, no deadline (Argon2id and fsync vary)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("vault-properties")


@pytest.fixture(scope="module")
def original(workdir) -> bytes:
    """A real vault file (MINIMUM_KDF) and the bytes every mutation starts from."""
    return Vault.create(workdir / "original.vault", PASSWORD, DOCUMENT, kdf=MINIMUM_KDF).path.read_bytes()


_names = itertools.count()


def write(workdir, blob: bytes):
    path = workdir / f"case-{next(_names)}.vault"
    path.write_bytes(blob)
    return path


def split(blob: bytes) -> tuple[bytes, dict, bytes]:
    (length,) = struct.unpack(">I", blob[8:12])
    return blob[12 : 12 + length], json.loads(blob[12 : 12 + length]), blob[12 + length :]


def assemble(header: bytes, ciphertext: bytes) -> bytes:
    return MAGIC + struct.pack(">I", len(header)) + header + ciphertext


def canonical(document: object) -> bytes:
    """The vault's own header encoding: sorted keys, no spaces, ASCII (NaN and infinities spelled out)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def assert_refused(path, password: str = PASSWORD) -> VaultError:
    """Vault.open refuses: WrongPasswordA or VaultCorrupt, nothing else, and it does not open."""
    try:
        opened = Vault.open(path, password)
    except REFUSALS as refusal:
        assert "\n" not in str(refusal)
        return refusal
    except BaseException as other:
        raise AssertionError(f"Vault.open raised {type(other).__name__}: {other!r}") from other
    raise AssertionError(f"a modified vault file opened: generation {opened.generation}, {opened.data!r}")


class Argon2Spy:
    """Counts Argon2id derivations by the vault module (a refused header must cost none)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = sealing.Argon2id

        def counting(**kwargs):
            self.calls += 1
            return real(**kwargs)

        monkeypatch.setattr(sealing, "Argon2id", counting)


# --- arbitrary bytes -------------------------------------------------------------------


def vault_like_bytes(original: bytes):
    """Arbitrary bytes, from none at all to a real header followed by arbitrary ciphertext."""
    header, _, _ = split(original)
    lengths = st.one_of(
        st.integers(0, 2**32 - 1), st.sampled_from([0, 1, HEADER_MAX_BYTES, HEADER_MAX_BYTES + 1, 2**32 - 1])
    )
    return st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=100).map(lambda tail: MAGIC + tail),
        st.tuples(lengths, st.binary(max_size=100)).map(lambda lt: MAGIC + struct.pack(">I", lt[0]) + lt[1]),
        # a consistent length, then arbitrary header bytes and enough bytes for a tag
        st.tuples(st.binary(min_size=1, max_size=300), st.binary(min_size=18, max_size=100)).map(
            lambda ht: assemble(*ht)
        ),
        # the real header: Argon2id runs (right password), then the GCM tag must fail
        st.binary(min_size=18, max_size=200).map(lambda tail: assemble(header, tail)),
    )


def test_arbitrary_bytes_never_open(workdir, original):
    @fast(300)
    @given(blob=vault_like_bytes(original))
    @example(blob=b"")
    @example(blob=MAGIC)
    @example(blob=original[:-1])
    def check(blob):
        assume(blob != original)
        assert_refused(write(workdir, blob))

    check()


# --- generated header documents ----------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=30),
    st.integers(),
    st.floats(),
    st.sampled_from([0, 1, -1, 2**32 - 1, 2**32, 2**63, 2**64, -(2**63), 10**300, 1.0, 1e308, -0.0]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def b64_of(size_strategy):
    return size_strategy.flatmap(lambda n: st.binary(min_size=n, max_size=n)).map(
        lambda raw: base64.b64encode(raw).decode()
    )


def kdf_values(name: str):
    """Out of limits, of the wrong type, or inside them but cheap (so Argon2id stays fast)."""
    low, high = LIMITS[name]
    return st.one_of(
        st.integers(max_value=low - 1),
        st.integers(min_value=high + 1),
        st.sampled_from([low - 1, high + 1, 0, -1, 2**31, 2**32, 2**63, 2**64, 10**100]),
        st.integers(low, low + (512 if name == "m_kib" else 1)),
        st.sampled_from([True, False, None, float(low), str(low), [low], {"v": low}]),
        st.floats(),
    )


@st.composite
def header_documents(draw, original: bytes):
    """A header: the real one with a few things changed, or a generated object."""
    _, real, _ = split(original)
    if draw(st.integers(0, 9)) == 9:  # 0 is what hypothesis draws most: the real header, changed
        return draw(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6))
    header = copy.deepcopy(real)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(
            st.sampled_from(
                [
                    "kdf set",
                    "set",
                    "delete",
                    "add",
                    "kdf delete",
                    "kdf add",
                    "kdf replace",
                    "generation",
                    "bytes",
                    "version",
                ]
            )
        )
        kdf = header.get("kdf") if isinstance(header.get("kdf"), dict) else None
        if action == "set" and header:
            header[draw(st.sampled_from(sorted(header)))] = draw(JSON_VALUES)
        elif action == "delete" and header:
            header.pop(draw(st.sampled_from(sorted(header))))
        elif action == "add":
            header[draw(st.text(max_size=10))] = draw(JSON_VALUES)
        elif action == "kdf set" and kdf is not None:
            name = draw(st.sampled_from(["m_kib", "t", "p", "alg", "salt"]))
            kdf[name] = draw(kdf_values(name)) if name in LIMITS else draw(JSON_VALUES)
        elif action == "kdf delete" and kdf:
            kdf.pop(draw(st.sampled_from(sorted(kdf))))
        elif action == "kdf add" and kdf is not None:
            kdf[draw(st.text(max_size=10))] = draw(JSON_VALUES)
        elif action == "kdf replace":
            header["kdf"] = draw(JSON_VALUES)
        elif action == "generation":
            header["generation"] = draw(
                st.one_of(
                    st.integers(1, GENERATION_MAX),
                    st.integers(),
                    st.sampled_from([0, GENERATION_MAX + 1, True, 1.0, "1"]),
                )
            )
        elif action == "bytes":  # salt, nonce, check: other bytes, wrong sizes, not base64, not canonical
            field = draw(st.sampled_from(["nonce", "check", "kdf.salt"]))
            value = draw(
                st.one_of(
                    b64_of(st.sampled_from([12, 16])),
                    b64_of(st.integers(0, 40)),
                    st.text(max_size=30),
                    st.sampled_from(["", "====", "AAAA AAAA", "A" * 15 + "\n"]),
                )
            )
            if field == "kdf.salt":
                if kdf is not None:
                    kdf["salt"] = value
            else:
                header[field] = value
        elif action == "version":
            header["v"] = draw(st.sampled_from([0, 2, True, 1.0, "1", None, -1, 2**64]))
    return header


def _cheap(header: dict) -> bool:
    """True unless the header asks for in-limit but costly Argon2id work (the generator avoids that)."""
    kdf = header.get("kdf")
    if not isinstance(kdf, dict):
        return True
    m, t, p = kdf.get("m_kib"), kdf.get("t"), kdf.get("p")
    in_limits = (
        all(isinstance(v, int) and not isinstance(v, bool) for v in (m, t, p))
        and MEMORY_KIB_MIN <= m <= MEMORY_KIB_MAX
        and ITERATIONS_MIN <= t <= ITERATIONS_MAX
        and LANES_MIN <= p <= LANES_MAX
    )
    return not in_limits or (m <= MEMORY_KIB_MIN + 4096 and t <= 3 and p <= 2)


def _changed(original: bytes, **changes) -> dict:
    header = split(original)[1]
    for name, value in changes.items():
        if name.startswith("kdf_"):
            header["kdf"][name[4:]] = value
        else:
            header[name] = value
    return header


def test_generated_headers_never_open(workdir, original):
    _, _, ciphertext = split(original)
    other16 = base64.b64encode(bytes(range(16))).decode()

    @fast(400)
    @given(header=header_documents(original), spaced=st.integers(0, 9))
    # Valid headers that differ from the written one: a KDF input changed (WrongPasswordA: another key),
    # or what only the AAD protects (VaultCorrupt: the tag fails).
    @example(header=_changed(original, kdf_m_kib=MEMORY_KIB_MIN + 1), spaced=0)
    @example(header=_changed(original, kdf_t=ITERATIONS_MIN + 1), spaced=0)
    @example(header=_changed(original, kdf_salt=other16), spaced=0)
    @example(header=_changed(original, check=other16), spaced=0)
    @example(header=_changed(original, nonce=base64.b64encode(bytes(12)).decode()), spaced=0)
    @example(header=_changed(original, generation=2), spaced=0)
    @example(header=_changed(original, generation=GENERATION_MAX), spaced=0)
    def check(header, spaced):
        assume(_cheap(header))
        raw = (
            json.dumps(header, sort_keys=True).encode() if spaced == 9 else canonical(header)
        )  # 9: not canonical
        assume(raw != split(original)[0])
        assert_refused(write(workdir, assemble(raw, ciphertext)))

    check()


@st.composite
def header_texts(draw):
    """Header bytes that json.loads reads but no header document serialises to: numbers beyond the
    float range (they parse as infinities), and nesting deeper than the recursion limit."""
    kind = draw(st.sampled_from(["overflow", "nesting"]))
    if kind == "overflow":
        number = draw(st.sampled_from(["1e400", "-1e400", "1E309", "123456789e999", "0.1e99999"]))
        field = draw(st.sampled_from(["generation", "v", "m_kib", "extra"]))
        return ('{"' + field + '":' + number + "}").encode()
    depth = draw(st.integers(1_100, HEADER_MAX_BYTES // 2 - 1))
    return b"[" * depth + b"]" * depth


def test_bug_header_json_escapes_as_a_non_vault_error(workdir, original):
    """BUG: token_wallet/vault.py _parse_header_json catches only
    UnicodeDecodeError and ValueError around json.loads, and its canonical
    check runs outside the try. A 4 KiB header of nested brackets raises
    RecursionError from json.loads; a number like 1e400 parses as an
    infinity and `_encode_json(obj)` (allow_nan=False) then raises
    ValueError. Both escape Vault.open as non-VaultErrors (a damaged or
    planted wallet file crashes the CLI with a traceback). Fix in
    _parse_header_json: refuse floats at parse time and catch recursion,
        obj = json.loads(raw.decode("ascii"), parse_constant=_reject_constant,
                         parse_float=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
    (the header has no floats; with parse_float refusing them no infinity
    can reach the canonical check)."""
    _, _, ciphertext = split(original)

    @fast(20)
    @given(raw=header_texts())
    @example(raw=b'{"generation":1e400}')
    @example(raw=b"[" * 2000 + b"]" * 2000)
    def check(raw):
        assert_refused(write(workdir, assemble(raw, ciphertext)))

    check()


# --- truncations, bit flips, splices of a real file ----------------------------------------


@st.composite
def damaged(draw, original: bytes):
    """A real vault file with 1-3 bit flips, truncations, appends, deletions or insertions, anywhere."""
    header_end = 12 + len(split(original)[0])
    regions = {
        "magic": (0, 8),
        "length": (8, 12),
        "header": (12, header_end),
        "body": (header_end, len(original)),
    }
    blob = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["flip", "truncate", "flip", "append", "delete", "insert"]))
        low, high = regions[draw(st.sampled_from(["body", "header", "length", "magic"]))]
        high = min(high, len(blob))
        if low >= high:
            blob += draw(st.binary(min_size=1, max_size=20))
            continue
        position = draw(st.integers(low, high - 1))
        if action == "flip":
            blob[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del blob[position:]
        elif action == "append":
            blob += draw(st.binary(min_size=1, max_size=20))
        elif action == "delete":
            del blob[position : position + draw(st.integers(1, 8))]
        else:
            blob[position:position] = draw(st.binary(min_size=1, max_size=8))
    return bytes(blob)


def test_damaged_files_never_open(workdir, original):
    header_raw, _, _ = split(original)
    header_end = 12 + len(header_raw)

    @fast(250)
    @given(blob=damaged(original))
    @example(blob=original[:header_end])  # header only
    @example(blob=original[:-1])  # one tag byte short
    @example(blob=original + b"\x00")  # one byte appended
    @example(blob=original[:11] + bytes([original[11] ^ 1]) + original[12:])  # header length off by one
    def check(blob):
        assume(blob != original)
        refusal = assert_refused(write(workdir, blob))
        if blob[:header_end] == original[:header_end]:
            assert isinstance(
                refusal, VaultCorrupt
            )  # right password, right header: damage, not WrongPasswordA

    check()


def test_the_original_opens_and_a_wrong_password_never_does(workdir, original):
    path = write(workdir, original)
    assert Vault.open(path, PASSWORD).data == DOCUMENT

    @fast(10)
    @given(password=st.text(min_size=1, max_size=40))
    def check(password):
        assume(password != PASSWORD)
        assert isinstance(assert_refused(path, password), WrongPasswordA)

    check()


# --- the KDF limits ----------------------------------------------------------------------


def _with_kdf(original: bytes, **changes) -> bytes:
    header = split(original)[1]
    header["kdf"].update(changes)
    return canonical(header)


@st.composite
def kdf_parameter(draw):
    """(name, value, inside the limits?) over ints of any size, booleans, floats and other types."""
    name = draw(st.sampled_from(sorted(LIMITS)))
    low, high = LIMITS[name]
    value = draw(
        st.one_of(
            st.integers(),
            st.integers(low - 2, high + 2),
            st.sampled_from([low - 1, low, high, high + 1]),
            st.integers(min_value=high + 1),
            st.integers(max_value=low - 1),
            st.booleans(),
            st.floats(),
            st.none(),
            st.text(max_size=8),
            st.just(float(low)),
            st.just([low]),
        )
    )
    inside = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return name, value, inside


def test_header_parser_refuses_every_kdf_parameter_outside_the_limits(original):
    @fast(1000)
    @given(parameter=kdf_parameter())
    def check(parameter):
        name, value, inside = parameter
        raw = _with_kdf(original, **{name: value})
        if inside:
            parsed = vault_mod._parse_header(raw)
            assert (
                getattr(parsed.kdf, {"m_kib": "memory_kib", "t": "iterations", "p": "lanes"}[name]) == value
            )
        else:
            with pytest.raises(VaultCorrupt, match=r"outside|damaged|not valid JSON|canonical"):
                vault_mod._parse_header(raw)

    check()


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_out_of_limit_kdf_is_refused_before_argon2id_runs(workdir, original, monkeypatch, name):
    spy = Argon2Spy(monkeypatch)
    _, _, ciphertext = split(original)
    low, high = LIMITS[name]

    @fast(30)
    @given(
        value=st.one_of(
            st.integers(max_value=low - 1),
            st.integers(min_value=high + 1),
            st.booleans(),
            st.sampled_from([float(low), str(high), None, MEMORY_KIB_MAX * 1024, 2**64]),
        )
    )
    def check(value):
        refusal = assert_refused(write(workdir, assemble(_with_kdf(original, **{name: value}), ciphertext)))
        assert isinstance(refusal, VaultCorrupt)

    check()
    assert spy.calls == 0  # a planted file cannot make the wallet spend memory or time first


def test_kdf_limit_boundaries_are_exact(original):
    for name, (low, high) in LIMITS.items():
        for value in (low, high):
            vault_mod._parse_header(_with_kdf(original, **{name: value}))
        for value in (low - 1, high + 1):
            with pytest.raises(VaultCorrupt, match="outside"):
                vault_mod._parse_header(_with_kdf(original, **{name: value}))


# --- documents: round trip within the limits, refusal beyond them --------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)  # lone surrogates are not UTF-8
DOC_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**256), 2**256),
    st.sampled_from([0, -1, 2**53 + 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
DOCUMENTS = st.dictionaries(
    TEXT,
    st.recursive(
        DOC_SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
        max_leaves=25,
    ),
    max_size=6,
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


@pytest.fixture
def fresh_path(workdir):
    def make():
        return workdir / f"doc-{next(_names)}" / "wallet.vault"

    return make


def test_documents_round_trip_through_create_open_save(fresh_path):
    @fast(60)
    @given(first=st.one_of(DOCUMENTS, st.integers(1, DOCUMENT_DEPTH_MAX).map(nested)), second=DOCUMENTS)
    @example(first=nested(DOCUMENT_DEPTH_MAX), second={})
    @example(first={"": "", "\x00": "\u2028", "k": [1.5, -0.0, 1e308, 5e-324]}, second={"big": 2**255})
    def check(first, second):
        path = fresh_path()
        Vault.create(path, PASSWORD, copy.deepcopy(first), kdf=MINIMUM_KDF)
        opened = Vault.open(path, PASSWORD)
        assert strict(opened.data) == strict(first) and opened.generation == 1
        opened.data = copy.deepcopy(second)
        opened.save()
        again = Vault.open(path, PASSWORD)
        assert strict(again.data) == strict(second) and again.generation == 2
        assert sorted(p.name for p in path.parent.iterdir()) == ["wallet.vault", "wallet.vault.prev"]

    check()


def _bad_documents():
    deep = st.integers(DOCUMENT_DEPTH_MAX + 1, DOCUMENT_DEPTH_MAX + 40).map(nested)
    bad_leaf = st.sampled_from([math.nan, math.inf, -math.inf, "\ud800", (1, 2), b"bytes", {1, 2}, object()])
    with_bad_leaf = st.tuples(st.integers(1, 5), bad_leaf).map(lambda depth_leaf: nested(*depth_leaf))
    bad_key = st.sampled_from([{1: "x"}, {None: 1}, {"ok": {(1,): 2}}, {"\udfff": 1}])
    huge_int = st.just({"n": 10**5000})  # beyond Python's int/str conversion limit (4300 digits)
    return st.one_of(deep, with_bad_leaf, bad_key, huge_int)


def test_documents_outside_the_limits_are_refused_and_nothing_is_written(fresh_path, workdir, original):
    @fast(60)
    @given(document=_bad_documents())
    def check(document):
        path = fresh_path()
        with pytest.raises(VaultError) as refused:
            Vault.create(path, PASSWORD, document, kdf=MINIMUM_KDF)
        assert not isinstance(refused.value, REFUSALS)
        assert not path.exists() and not path.with_name(path.name + ".tmp").exists()

    check()

    # save() refuses the same documents and leaves the file as it was.
    path = write(workdir, original)
    opened = Vault.open(path, PASSWORD)
    for document in (nested(DOCUMENT_DEPTH_MAX + 1), {"x": math.nan}, {"x": "\ud800"}, {1: 2}):
        opened.data = document
        with pytest.raises(VaultError):
            opened.save()
        assert path.read_bytes() == original
