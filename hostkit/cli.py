"""Small pieces both command lines share: errors as one line, JSON or Rich output, secrets from files.

Rich is imported only where text for people is printed (hostkit.console): `--json`, `--version` and
a refusal do without it, and its import is tens of milliseconds of a wallet command's start-up.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hostkit import timing
from hostkit.shown import escape_unshown

if TYPE_CHECKING:
    from rich.console import Console

MAX_SECRET_FILE_BYTES = 4096


class CliError(Exception):
    """A refusal the user can act on: printed as one line, exit code `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def run_cli(app: Callable[[], None], known_errors: Callable[[], tuple[type[BaseException], ...]]) -> None:
    """Run a Typer app; turn expected failures into one line on stderr, never a traceback.

    `known_errors` names the errors that are the user's to act on; it is called only once something
    was raised, so a run that raises nothing never imports the modules that define them."""
    try:
        app()
    except CliError as error:
        _fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as error:
        if isinstance(error, known_errors()):
            _fail(str(error) or error.__class__.__name__, 1)
        if os.environ.get("TOKENPAY_DEBUG") == "1":  # a bug: still one line, the traceback on request
            raise
        _fail(f"internal error ({error.__class__.__name__}): {error}; set TOKENPAY_DEBUG=1 for details", 70)
    finally:
        timing.write_if_asked()


def _fail(message: str, exit_code: int) -> None:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"error: {escape_unshown(first_line)}", file=sys.stderr)  # may quote the center's words
    sys.exit(exit_code)


def emit(as_json: bool, document: dict | list, render: Callable[[Console], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    else:
        from hostkit.console import stdout_console  # Rich is loaded only for output people read

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
