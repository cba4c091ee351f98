"""Amounts: integer minor units on the wire and in the ledger, decimal strings for people.

AMOUNT on the command line is a decimal string in the center's currency:
for JPY whole yen ("1500"), for EUR cents allowed ("12.50"). Never floats.
"""

from __future__ import annotations

import re
import unicodedata

# ISO 4217 minor-unit exponents of the currencies a center may be configured with.
MINOR_EXPONENT = {
    "JPY": 0,
    "KRW": 0,
    "ISK": 0,
    "CLP": 0,
    "VND": 0,
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "CHF": 2,
    "CAD": 2,
    "AUD": 2,
    "CNY": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "SGD": 2,
    "HKD": 2,
    "NZD": 2,
    "INR": 2,
    "PLN": 2,
    "CZK": 2,
    "BHD": 3,
    "KWD": 3,
    "JOD": 3,
    "OMR": 3,
    "TND": 3,
}
# A ceiling on any single amount: far above real prepaid use, far below 2**53.
MAX_AMOUNT_MINOR = 10**12
# ASCII only: `\d` would also take Bengali, full-width or Arabic-Indic digits ('৪০০' -> 400).
_DECIMAL = re.compile(r"([0-9]{1,15})(?:\.([0-9]{1,3}))?", re.ASCII)
_LONG_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


class AmountError(ValueError):
    pass


def minor_exponent(currency: str) -> int:
    try:
        return MINOR_EXPONENT[currency]
    except KeyError:
        raise AmountError(
            f"currency {currency!r} is not supported; use one of {', '.join(sorted(MINOR_EXPONENT))}"
        ) from None


def parse_amount(text: str, currency: str) -> int:
    """'12.50' EUR -> 1250; refuses more decimals than the currency has, zero, and signs."""
    exponent = minor_exponent(currency)
    _refuse_non_ascii(text)
    match = _DECIMAL.fullmatch(text.strip())
    if not match:
        raise AmountError(_why_not_decimal(text, currency, exponent))
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > exponent:
        raise AmountError(f"{currency} has {exponent} decimal place(s); {text!r} has {len(fraction)}")
    minor = int(whole) * 10**exponent + int(fraction.ljust(exponent, "0") or 0)
    check_amount_minor(minor, currency)
    return minor


def _why_not_decimal(text: str, currency: str, exponent: int) -> str:
    """Say what is wrong with an amount that is not a plain decimal: a sign or too many digits get
    their own words, anything else an example."""
    digits = text.strip()
    if digits.startswith("-") and _LONG_DECIMAL.fullmatch(digits[1:].strip()):
        return f"amount {text!r} must be more than zero"
    if _LONG_DECIMAL.fullmatch(digits):  # more digits than _DECIMAL takes: far above the ceiling
        return f"amount {text!r} is too large: it must be at most {format_amount(MAX_AMOUNT_MINOR, currency)}"
    return f"amount {text!r} is not a plain decimal number such as {'1500' if exponent == 0 else '12.50'}"


def _refuse_non_ascii(text: str) -> None:
    """Name the first character outside ASCII: a look-alike digit must not pass as a digit."""
    for char in text:
        if not char.isascii():
            name = unicodedata.name(char, "unnamed character")
            raise AmountError(
                f"amount {text!r} holds the non-ASCII character U+{ord(char):04X} ({name}); "
                f"write it with the ASCII digits 0-9 and at most one '.'"
            )


def check_amount_minor(minor: int, currency: str | None = None) -> int:
    """An amount in minor units, more than zero and at most the ceiling; the message says the ceiling
    in the currency when it is known (a person types 12.50, not 1250)."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise AmountError("amount must be a whole number of minor units")
    if minor <= 0:
        raise AmountError("amount must be more than zero")
    if minor > MAX_AMOUNT_MINOR:
        limit = format_amount(MAX_AMOUNT_MINOR, currency) if currency else f"{MAX_AMOUNT_MINOR} minor units"
        raise AmountError(f"amount must be at most {limit}")
    return minor


def format_amount(minor: int, currency: str) -> str:
    exponent = minor_exponent(currency)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**exponent)
    return f"{sign}{whole}.{fraction:0{exponent}d} {currency}" if exponent else f"{sign}{whole} {currency}"
