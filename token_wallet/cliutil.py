"""Small pieces both command lines share: errors as one line, JSON or Rich output, secrets from files."""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Callable

from rich.console import Console

MAX_SECRET_FILE_BYTES = 4096

stdout_console = Console(highlight=False)
stderr_console = Console(stderr=True, highlight=False)


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
    print(f"error: {first_line}", file=sys.stderr)
    sys.exit(exit_code)


def emit(as_json: bool, document: dict | list, render: Callable[[Console], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    else:
        render(stdout_console)


def read_secret(*, what: str, file_option: str | None, env_var: str | None, fd: int | None = None,
                confirm: bool = False) -> str:
    """A secret from --...-fd, --...-file, $ENV (a file name), else a no-echo prompt.

    Only the first line of a file counts (like gpg --passphrase-file), so a
    trailing newline from `echo` does not become part of the secret.
    """
    if fd is not None:
        with os.fdopen(os.dup(fd), "rb") as handle:
            return _first_line(handle.read(MAX_SECRET_FILE_BYTES + 1), what, f"descriptor {fd}")
    path = file_option or (os.environ.get(env_var) if env_var else None)
    if path:
        try:
            data = Path(path).read_bytes()[: MAX_SECRET_FILE_BYTES + 1]
        except OSError as error:
            raise CliError(f"cannot read the {what} file {path}: {error.strerror}") from None
        return _first_line(data, what, path)
    if not sys.stdin.isatty():
        hint = f"--{what.replace(' ', '-').lower()}-file" + (f" or {env_var}" if env_var else "")
        raise CliError(f"{what} is needed and there is no terminal to ask it on: use {hint}")
    secret = getpass.getpass(f"{what}: ")
    if confirm and getpass.getpass(f"{what} again: ") != secret:
        raise CliError(f"the two {what} entries differ; nothing was changed")
    if not secret:
        raise CliError(f"{what} must not be empty")
    return secret


def read_option_file(path: Path, option: str, *, max_bytes: int, what: str) -> bytes:
    """A small file named by a command-line option (a key, a certificate), read whole up to
    `max_bytes`; a file it cannot read, or a larger one, is one line naming the option."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise CliError(f"cannot read {option} {path}: {error.strerror}") from None
    if len(data) > max_bytes:
        raise CliError(f"{option} {path} is larger than {max_bytes} bytes; it is not {what}")
    return data


def _first_line(data: bytes, what: str, where: str) -> str:
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise CliError(f"the {what} in {where} is longer than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"the {what} in {where} is not UTF-8 text") from None
    secret = text.splitlines()[0] if text.splitlines() else ""
    if not secret:
        raise CliError(f"the {what} in {where} is empty")
    return secret
