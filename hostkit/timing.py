"""Where a command's time goes: the milliseconds spent in the named parts that are not the command's
own work (the KDF, the token, the center's round trips), for bench/bench_wallet_startup.py.

Each part is a span around the call that does the work, after anything it imports: an import is the
command's own time. When TOKENPAY_TIMING_FILE names a file, run_cli (hostkit.cli) writes the sums
there as JSON when the command ends ({"kdf": 410.2, "token": 8.1, "center": 35.0}); otherwise the
spans only add a clock read each.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TIMING_FILE_ENV = "TOKENPAY_TIMING_FILE"
PARTS = ("kdf", "token", "center")  # the only names a span may have: a typo must not add a part

_spent_ms: dict[str, float] = {}


@contextmanager
def span(part: str) -> Iterator[None]:
    assert part in PARTS, part
    start = time.perf_counter()
    try:
        yield
    finally:
        _spent_ms[part] = _spent_ms.get(part, 0.0) + (time.perf_counter() - start) * 1000


def spent_ms() -> dict[str, float]:
    return dict(_spent_ms)


def write_if_asked() -> None:
    """The sums to the file TOKENPAY_TIMING_FILE names, if any (written over: one run, one file)."""
    path = os.environ.get(TIMING_FILE_ENV)
    if not path:
        return
    try:
        Path(path).write_text(json.dumps({part: round(_spent_ms.get(part, 0.0), 3) for part in PARTS}))
    except OSError as error:  # a bench's file: the command's own outcome stands
        print(f"warning: cannot write {TIMING_FILE_ENV} {path}: {error.strerror}", file=sys.stderr)
