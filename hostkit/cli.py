"""Small pieces both command lines share: errors as one line, JSON or Rich output, secrets from files."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.text import Text

from paywire.text import text_char_problem

MAX_SECRET_FILE_BYTES = 4096
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


class PlainConsole(Console):
    """A Rich console that shows every string as it is, never obeys it: markup ([bold], [conceal],
    an unbalanced [/]) and emoji codes are never interpreted, nothing is highlighted, and unshown
    characters are escaped (escape_unshown; our own newlines stay). Every str Rich renders (print
    arguments, table cells and titles) passes render_str, so this one place covers them all."""

    def __init__(self, **kwargs) -> None:
        super().__init__(markup=False, highlight=False, emoji=False, **kwargs)

    def render_str(self, text: str, **kwargs) -> Text:
        kwargs.update(markup=False, emoji=False)  # also when a caller asks for markup=True
        return super().render_str(escape_unshown(text, keep="\n"), **kwargs)


stdout_console = PlainConsole()
stderr_console = PlainConsole(stderr=True)


class CliError(Exception):
    """A refusal the user can act on: printed as one line, exit code `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def run_cli(app: Callable[[], None], known_errors: tuple[type[BaseException], ...]) -> None:
    """Run a Typer app; turn expected failures into one line on stderr, never a traceback."""
    try:
        app()
    except CliError as error:
        _fail(str(error), error.exit_code)
    except known_errors as error:
        _fail(str(error) or error.__class__.__name__, 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as error:  # a bug: still one line, the traceback only on request
        if os.environ.get("TOKENPAY_DEBUG") == "1":
            raise
        _fail(f"internal error ({error.__class__.__name__}): {error}; set TOKENPAY_DEBUG=1 for details", 70)


def _fail(message: str, exit_code: int) -> None:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"error: {escape_unshown(first_line)}", file=sys.stderr)  # may quote the center's words
    sys.exit(exit_code)


def emit(as_json: bool, document: dict | list, render: Callable[[Console], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    else:
        render(stdout_console)


def read_secret(
    *,
    what: str,
    file_option: str | None,
    env_var: str | None,
    fd: int | None = None,
    confirm: bool = False,
    prompt: str | None = None,
) -> str:
    """A secret from --...-fd, --...-file, $ENV (a file name), else a no-echo prompt.

    Only the first line of a file counts (like gpg --passphrase-file), so a
    trailing newline from `echo` does not become part of the secret. `what` names the options
    (password B: --password-b-file); `prompt`, when given, is what the person is asked for
    ("password B (token PIN)").
    """
    prompt = prompt or what
    if fd is not None:
        try:
            with os.fdopen(
                os.dup(fd), "rb"
            ) as handle:  # a pipe or /dev/stdin: read up to the limit, no further
                data = handle.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as error:
            raise CliError(f"cannot read the {what} from descriptor {fd}: {error.strerror}") from None
        return _first_line(data, what, f"descriptor {fd}")
    path = file_option or (os.environ.get(env_var) if env_var else None)
    if path:
        try:
            data = read_bounded(Path(path), MAX_SECRET_FILE_BYTES)
        except OSError as error:
            raise CliError(f"cannot read the {what} file {path}: {error.strerror}") from None
        return _first_line(data, what, path)
    if not sys.stdin.isatty():
        hint = f"--{what.replace(' ', '-').lower()}-file" + (f" or {env_var}" if env_var else "")
        raise CliError(f"{prompt} is needed and there is no terminal to ask it on: use {hint}")
    secret = getpass.getpass(f"{prompt}: ")
    if confirm and getpass.getpass(f"{prompt} again: ") != secret:
        raise CliError(f"the two {what} entries differ; nothing was changed")
    if not secret:
        raise CliError(f"{what} must not be empty")
    return secret


def read_option_file(path: Path, option: str, *, max_bytes: int, what: str) -> bytes:
    """A small file named by a command-line option (a key, a certificate), read whole up to
    `max_bytes`; a file it cannot read, or a larger one, is one line naming the option.

    The one reader for files named by options (secrets go through read_secret, which uses the
    same bounded read): /dev/zero, /dev/urandom or a huge file costs max_bytes + 1 bytes of
    reading, never the whole. Pipes (`<(...)`) work; a regular file is not required."""
    try:
        data = read_bounded(Path(path), max_bytes)
    except OSError as error:
        raise CliError(f"cannot read {option} {path}: {error.strerror}") from None
    if len(data) > max_bytes:
        raise CliError(f"{option} {path} is larger than {max_bytes} bytes; it is not {what}")
    return data


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """At most max_bytes + 1 bytes of `path` (one more than allowed tells the caller it is too large)."""
    with open(path, "rb") as handle:
        return handle.read(max_bytes + 1)


def _first_line(data: bytes, what: str, where: str) -> str:
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise CliError(
            f"the {what} in {where} is longer than {MAX_SECRET_FILE_BYTES} bytes; "
            f"give a file whose first line is the {what}"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"the {what} in {where} is not UTF-8 text") from None
    secret = text.splitlines()[0] if text.splitlines() else ""
    if not secret:
        raise CliError(f"the {what} in {where} is empty")
    return secret
