"""Reading a JSON Lines file strictly and within bounds, one parsed line at a time.

Strict: each line is one JSON value, NaN, Infinity and repeated member names refused, and
the last line must end with a newline (a cut-off file is not read as a shorter one).
Bounded: never more than max_line_bytes + 1 bytes read into one line, nor more than
max_total_bytes in all (the file may grow while it is read). Problems raise ValueError.

Read quickly where that changes nothing (strict_loads): an audit export is a million lines, and the
strict reader's check for repeated names runs Python for every object of every line.
"""

from __future__ import annotations

import json
from typing import BinaryIO

import orjson


class JsonLines:
    """The file's lines, each parsed on its own; `number` is the line last read."""

    def __init__(self, handle: BinaryIO, *, max_line_bytes: int, max_total_bytes: int):
        self._handle = handle
        self._max_line_bytes = max_line_bytes
        self._max_total_bytes = max_total_bytes
        self._read_bytes = 0
        self.number = 0

    def __iter__(self) -> JsonLines:
        return self

    def __next__(self) -> object:
        line = self._handle.readline(self._max_line_bytes + 1)
        if not line:
            raise StopIteration
        self.number += 1
        self._read_bytes += len(line)
        if self._read_bytes > self._max_total_bytes:
            raise ValueError(f"file is longer than {self._max_total_bytes} bytes")
        if not line.endswith(b"\n"):
            raise ValueError(
                f"line is longer than {self._max_line_bytes} bytes"
                if len(line) > self._max_line_bytes
                else "last line is cut off (no final newline)"
            )
        return parse_line(line[:-1])


def parse_line(line: bytes) -> object:
    """One line, newline removed, as JSON: NaN, Infinity and repeated member names refused."""
    if not line.strip():
        raise ValueError("blank line")
    try:
        return strict_loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error.msg} at column {error.colno}") from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _refuse_repeated_names(pairs: list[tuple[str, object]]) -> dict:
    # A repeated name could mean one thing here and another to the next reader.
    record = dict(pairs)
    if len(record) != len(pairs):
        raise ValueError("a member name is repeated within one object")
    return record


# One decoder for every line: json.loads with options builds a new JSONDecoder per call, a third of a
# short line's parse time in a million-line export.
STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_refuse_repeated_names)


def strict_loads(data: bytes) -> object:
    """`data` as JSON, NaN, Infinity and repeated member names refused (STRICT_JSON's errors).

    Bytes written exactly as orjson writes the value it reads from them (compact, as the exporter
    writes) are taken from orjson: then no member name was repeated (orjson keeps the last, and its
    writing would be shorter), there is no NaN or Infinity (orjson refuses them) and every number and
    string reads as STRICT_JSON reads it. Anything else, refusals included, is STRICT_JSON's.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return STRICT_JSON.decode(data.decode("utf-8"))
    if orjson.dumps(value) == data:
        return value
    return STRICT_JSON.decode(data.decode("utf-8"))
