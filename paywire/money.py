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
        raise AmountError(
            f"amount {text!r} is not a plain decimal number such as {'1500' if exponent == 0 else '12.50'}"
        )
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > exponent:
        raise AmountError(f"{currency} has {exponent} decimal place(s); {text!r} has {len(fraction)}")
    minor = int(whole) * 10**exponent + int(fraction.ljust(exponent, "0") or 0)
    check_amount_minor(minor)
    return minor


def _refuse_non_ascii(text: str) -> None:
    """Name the first character outside ASCII: a look-alike digit must not pass as a digit."""
    for char in text:
        if not char.isascii():
            name = unicodedata.name(char, "unnamed character")
            raise AmountError(
                f"amount {text!r} holds the non-ASCII character U+{ord(char):04X} ({name}); "
                f"write it with the ASCII digits 0-9 and at most one '.'"
            )


def check_amount_minor(minor: int) -> int:
    if isinstance(minor, bool) or not isinstance(minor, int) or not 0 < minor <= MAX_AMOUNT_MINOR:
        raise AmountError(f"amount must be more than zero and at most {MAX_AMOUNT_MINOR} minor units")
    return minor


def format_amount(minor: int, currency: str) -> str:
    exponent = minor_exponent(currency)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**exponent)
    return f"{sign}{whole}.{fraction:0{exponent}d} {currency}" if exponent else f"{sign}{whole} {currency}"
