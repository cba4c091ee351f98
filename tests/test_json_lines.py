"""The strict JSON reader of audit exports (center.ledger.json_lines.strict_loads) reads every input
as the strict decoder does: the quick orjson way only where that provably changes nothing.

Each generated value is written in several spellings (orjson's, the json module's compact and
spaced, with and without escaped non-ASCII); for every spelling the quick reader returns the strict
decoder's value, types included. The refusals (a repeated member name, NaN, Infinity) stay
refusals, also when spelled exactly as orjson writes.
"""

from __future__ import annotations

import contextlib
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from center.ledger.json_lines import STRICT_JSON, parse_line, strict_loads

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def spellings(value: object) -> list[bytes]:
    found = [
        json.dumps(value, separators=(",", ":")).encode(),
        json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"),
        json.dumps(value).encode(),
    ]
    # orjson does not write an integer beyond 64 bits or a lone surrogate.
    with contextlib.suppress(TypeError, orjson.JSONEncodeError):
        found.append(orjson.dumps(value))
    return found


def typed(value: object) -> str:
    """A text that tells 1 from 1.0 and True from 1, for comparing two readings."""
    return repr(value)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_every_spelling_reads_as_the_strict_decoder_reads_it(value):
    for data in spellings(value):
        try:
            expected = STRICT_JSON.decode(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            with pytest.raises(type(error)):
                strict_loads(data)
            continue
        assert typed(strict_loads(data)) == typed(expected), data


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":2}',  # orjson's own spelling of a repeated name: orjson would keep the last
        b'{"entry":{"seq":1,"seq":1}}',
        b'{"a":NaN}',
        b"[Infinity]",
        b"[-Infinity]",
        b'{"a":1}\x00',
    ],
)
def test_refusals_stay_refusals(data):
    with pytest.raises(ValueError):
        strict_loads(data)
    with pytest.raises(ValueError):
        parse_line(data)
