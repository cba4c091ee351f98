"""How text from outside (a name, an order reference, the center's words) is shown to people: every
character the wire refuses in a text field escaped, a value quoted so that it cannot close its quotes.

The one rule both command lines and their Rich consoles (hostkit.console) print outside text by.
"""

from __future__ import annotations

from paywire.text import text_char_problem

MAX_QUOTED_CHARS = 100  # a longer outside value is cut, with a marker saying how much is not shown


def escape_unshown(text: str, *, keep: str = "") -> str:
    r"""`text` with every character the wire refuses in a text field (paywire.text.text_char_problem)
    written as a Python-style escape (\x1b, \u202e, \U000e0041): controls (ESC starts terminal
    commands), format characters (bidi overrides reorder a line, zero-width ones hide), separators,
    surrogates, private-use and unassigned code points, blank letters. Characters in `keep` (our own
    newlines) stay."""
    if text.isascii() and text.isprintable():  # the common case, at C speed
        return text
    return "".join(ch if ch in keep or text_char_problem(ch) is None else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def quoted(value: object, max_chars: int = MAX_QUOTED_CHARS) -> str:
    """A value from outside (a name, an order reference) as one line in double quotes it cannot
    close: backslash and quote escaped, anything unshown escaped, a newline too; longer than
    `max_chars`, cut with a marker outside the quotes."""
    text = str(value)
    body = escape_unshown(text[:max_chars].replace("\\", "\\\\").replace('"', '\\"'))
    cut = f" ... (+{len(text) - max_chars} more characters)" if len(text) > max_chars else ""
    return f'"{body}"{cut}'
