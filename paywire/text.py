"""The one rule for the characters of text fields: only characters a person sees as what they are.

Every text field of the wire (names, addresses, order references, reasons) is checked with it
before signing and at the center; the wallet's and the center's screens escape the same set
(hostkit.cli.escape_unshown), so what a person reads is what is signed.
"""

from __future__ import annotations

import unicodedata

from paywire.errors import WireError

# Unicode categories no text field may hold (issue 17): each can make what a person reads differ
# from what is signed. Cc: C0 and C1 controls (ESC, CSI start terminal commands); Cf: format
# characters (bidi overrides U+202A-202E and isolates U+2066-2069, marks U+200E/200F/061C,
# zero-width U+200B-200D, U+2060, U+FEFF, soft hyphen, tags); Zl/Zp: line and paragraph separators;
# Cs: lone surrogates; Co: private use (any font draws anything there); Cn: unassigned in this
# Python's Unicode tables (no defined look; a later Unicode may make one a format character).
# Emoji joined by U+200D (ZWJ) are refused with the rest of Cf: a ZWJ also hides between letters.
REFUSED_TEXT_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
# Letters that are drawn as nothing (Hangul fillers, Default_Ignorable in Unicode): the classic blank name.
BLANK_LETTERS = frozenset({"\u115f", "\u1160", "\u3164", "\uffa0"})
_CATEGORY_WORDS = {
    "Cc": "a control character",
    "Cf": "an invisible format character (bidi, zero-width or tag)",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Cs": "a lone surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Lo": "a letter drawn as blank",
}


def check_text_chars(value: str, field: str) -> None:
    """The one rule for the characters of every text field (names, addresses, order references,
    reasons): only characters a person sees as what they are. C0 controls and DEL were always
    malformed_payload; the others text_char_problem names are text_not_allowed, naming the field and
    the code point (never the character itself, which may be what hides or reorders the message)."""
    for ch in value:
        problem = text_char_problem(ch)
        if problem is None:
            continue
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise WireError("malformed_payload", f"{field} contains control characters")
        raise WireError(
            "text_not_allowed",
            f"{field} contains U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed')}), "
            f"{problem}; only visible text is allowed",
        )


def text_char_problem(ch: str) -> str | None:
    """Why `ch` may not be in a text field, or None; the wallet and center escape the same set on screen."""
    category = unicodedata.category(ch)
    if category in REFUSED_TEXT_CATEGORIES:
        return _CATEGORY_WORDS[category]
    return _CATEGORY_WORDS["Lo"] if ch in BLANK_LETTERS else None
