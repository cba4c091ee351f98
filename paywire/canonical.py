"""Canonical payload bytes: RFC 8785 (JCS) JSON, integers only.

The signer signs these exact bytes and the verifier parses what it verified,
never a re-encoding. The parser also insists the bytes *are* canonical, so one
payload has exactly one byte string (no duplicate keys, no whitespace, no
alternative number or string spellings).
"""

from __future__ import annotations

import json

import rfc8785

from paywire.errors import WireError

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_DEPTH = 6
# Integers beyond 2**53 lose precision in many JSON parsers (and RFC 8785
# serialises numbers as IEEE doubles), so signed numbers must stay inside it.
MAX_SAFE_INTEGER = 2**53 - 1


def canonical_bytes(document: dict) -> bytes:
    _check_value(document, depth=0)
    return _jcs(document)


def parse_canonical(data: bytes) -> dict:
    if len(data) > MAX_PAYLOAD_BYTES:
        raise WireError(
            "payload_too_large", f"payload is {len(data)} bytes; the limit is {MAX_PAYLOAD_BYTES}"
        )
    try:
        text = data.decode("utf-8", errors="strict")
        document = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_float=_refuse_float,
            parse_constant=_refuse_constant,
        )
    except WireError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(
            "malformed_payload", f"payload is not valid UTF-8 JSON: {exc.__class__.__name__}"
        ) from None
    if not isinstance(document, dict):
        raise WireError("malformed_payload", "payload must be a JSON object")
    _check_value(document, depth=0)
    if _jcs(document) != data:
        raise WireError("payload_not_canonical", "payload bytes are not RFC 8785 canonical JSON")
    return document


def jcs_bytes(document: dict) -> bytes:
    """RFC 8785 bytes of a document of strings, safe integers, booleans, nulls, lists and objects.

    Fast path: for such documents whose text is all ASCII, Python's json module
    writes exactly the RFC 8785 bytes (same escapes, lower-case hex in \\u00xx; keys in
    code-point order, which is UTF-16 order for ASCII; integers as digits). The
    rfc8785 library, pure Python, costs ~60 us per payload and a request needs
    four; anything non-ASCII still goes through it. tests/test_wire.py checks
    the two agree on generated documents.
    """
    text = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
    if text.isascii():
        return text.encode("ascii")
    return rfc8785.dumps(document)


def _jcs(document: dict) -> bytes:
    try:
        return jcs_bytes(document)
    except ValueError:  # rfc8785.CanonicalizationError: e.g. a lone surrogate "\ud800"
        raise WireError("malformed_payload", "payload is not valid Unicode") from None


def _check_value(value, *, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise WireError("malformed_payload", f"payload nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise WireError("malformed_payload", "integer outside the safe range +-(2**53-1)")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise WireError("malformed_payload", "object keys must be strings")
            _check_value(item, depth=depth + 1)
        return
    if isinstance(value, list):
        for item in value:
            _check_value(item, depth=depth + 1)
        return
    # Floats and everything else: money and counters are integers by rule.
    raise WireError("malformed_payload", f"values of type {type(value).__name__} are not allowed in payloads")


def _no_duplicate_keys(pairs):
    document = {}
    for key, value in pairs:
        if key in document:
            raise WireError("malformed_payload", f"duplicate key {key!r} in payload")
        document[key] = value
    return document


def _refuse_float(text: str):
    raise WireError("malformed_payload", "floating-point numbers are not allowed in payloads")


def _refuse_constant(text: str):
    raise WireError("malformed_payload", f"{text} is not allowed in payloads")
