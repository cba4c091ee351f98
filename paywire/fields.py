"""What one field of a signed payload may be: the id patterns, the limits, and the checks.

Both the header (paywire.messages) and the bodies (paywire.bodies) check their fields
here, so a kid or an amount has one rule wherever it appears.
"""

from __future__ import annotations

import datetime as dt
import re

from paywire.errors import WireError
from paywire.text import check_text_chars

FUNDING_METHODS = ("credit", "bank", "postal", "cash")

PARTY_ID_PATTERN = re.compile(r"[MS]-[0-9a-f]{16}")
OBJECT_ID_PATTERN = re.compile(r"[A-Z]-[0-9a-f]{16}")
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
KID_PATTERN = re.compile(r"[0-9a-f]{64}")
SHA256_HEX_PATTERN = KID_PATTERN
TOPUP_ID_PATTERN = re.compile(r"U-[0-9a-f]{16}")
# A console login challenge as the browser shows it: 16 base32 characters (80 bits) in four groups.
CONSOLE_CHALLENGE_PATTERN = re.compile(r"[A-Z2-7]{4}(?:-[A-Z2-7]{4}){3}")
# ASCII digits only: \d would let other scripts' digits through to date.fromisoformat.
DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

MAX_AMOUNT_MINOR = 10**12
MAX_NOTICES_PER_REQUEST = 100
MAX_REASON_CHARS = 200
MAX_COUNTER = 2**53 - 1  # the largest integer every JSON reader holds exactly
MAX_KEY_CERT_BYTES = 4096  # an issuer's X.509 certificate for the enrolling key, DER


def check_exact_fields(found: dict, expected: set[str] | frozenset[str], part: str = "body") -> None:
    """found has exactly the expected keys; part names it in the error ("payload", "body", "args")."""
    if set(found) != expected:
        missing, extra = expected - set(found), set(found) - expected
        raise WireError(
            "malformed_payload", f"{part} fields wrong: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )


def check_match(value: object, pattern: re.Pattern, field: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise WireError("malformed_payload", f"{field} is malformed")
    return value


def check_int(value: object, field: str, low: int, high: int) -> int:
    # bool is an int in Python: true must not be a second spelling of 1.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise WireError("malformed_payload", f"{field} must be an integer in [{low}, {high}]")
    return value


def check_amount(value: object) -> int:
    return check_int(value, "amount_minor", 1, MAX_AMOUNT_MINOR)


def check_text(value: object, field: str, max_chars: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_chars:
        raise WireError(
            "malformed_payload", f"{field} must be non-empty text of at most {max_chars} characters"
        )
    check_text_chars(value, field)
    return value


def check_date(value: object, field: str) -> dt.date:
    if not isinstance(value, str) or not DATE_PATTERN.fullmatch(value):
        raise WireError("malformed_payload", f"{field} must be a date YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise WireError("malformed_payload", f"{field} is not a real calendar date") from None
