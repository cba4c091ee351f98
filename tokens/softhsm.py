"""SoftHSM 2 helpers: a private token directory and token initialisation.

Used by the center's `init` command and by the tests. SoftHSM reads
SOFTHSM2_CONF once, when the module is initialised in a process, so these
helpers never touch os.environ: the caller decides when (and whether) its
own process points at the new directory. softhsm2-util runs as a child with
the variable set in the child's environment only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# Same text as softhsm_config/softhsm2.conf.template (a test keeps them equal);
# kept here too because that directory is not part of the installed package.
CONFIG_TEMPLATE = """\
# SoftHSM 2 configuration for one private token directory.
# make-token.sh and tokens.softhsm replace @TOKENDIR@ with an
# absolute path; SoftHSM reads this file once per process (SOFTHSM2_CONF).
directories.tokendir = @TOKENDIR@
objectstore.backend = file
log.level = ERROR
slots.removable = false
"""

CONFIG_FILENAME = "softhsm2.conf"
TOKENS_DIRNAME = "tokens"
SOFTHSM_UTIL = "softhsm2-util"
INIT_TIMEOUT_S = 30

# Where Debian and most distributions install the module.
DEFAULT_MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


class SoftHsmError(RuntimeError):
    pass


def find_softhsm_module() -> str:
    """Path of libsofthsm2.so, or SoftHsmError if it is not installed."""
    for path in DEFAULT_MODULE_PATHS:
        if os.path.exists(path):
            return path
    raise SoftHsmError("libsofthsm2.so not found; install the softhsm2 package")


def write_softhsm_config(directory: str | os.PathLike) -> Path:
    """Create DIRECTORY/tokens/ and DIRECTORY/softhsm2.conf; return the conf path.

    An existing conf is left alone so that a directory can hold many tokens.
    """
    root = Path(directory).resolve()
    tokens_dir = root / TOKENS_DIRNAME
    # 0700: token files hold the (PIN-encrypted) keys of every token here.
    tokens_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf_path = root / CONFIG_FILENAME
    if not conf_path.exists():
        conf_path.write_text(CONFIG_TEMPLATE.replace("@TOKENDIR@", str(tokens_dir)))
    return conf_path


def init_softhsm_token(conf_path: str | os.PathLike, label: str, so_pin: str, user_pin: str) -> None:
    """Initialise a free token in the directory `conf_path` configures.

    softhsm2-util takes PINs on its command line (visible to `ps`) or from a
    terminal; it refuses a pipe. We give it a pseudo-terminal as stdin so the
    PINs never appear in the process list.
    """
    if shutil.which(SOFTHSM_UTIL) is None:
        raise SoftHsmError(f"{SOFTHSM_UTIL} not found; install the softhsm2 package")
    if any("\n" in pin or "\r" in pin for pin in (so_pin, user_pin)):
        raise SoftHsmError("a PIN for softhsm2-util cannot contain a line break")
    env = dict(os.environ, SOFTHSM2_CONF=str(Path(conf_path).resolve()))
    # Prompts: SO PIN, again, user PIN, again.
    answers = f"{so_pin}\n{so_pin}\n{user_pin}\n{user_pin}\n".encode()
    result = _run_with_terminal_input(
        [SOFTHSM_UTIL, "--init-token", "--free", "--label", label], answers, env
    )
    if result.returncode != 0:
        # The output holds prompts and asterisks only, never the PINs.
        last_line = result.stdout.decode(errors="replace").strip().splitlines()[-1:]
        raise SoftHsmError(f"softhsm2-util could not initialise token {label!r}: {' '.join(last_line)}")


def _run_with_terminal_input(
    argv: list[str], answers: bytes, env: dict[str, str]
) -> subprocess.CompletedProcess:
    import pty  # POSIX only, like SoftHSM's tooling

    master_fd, slave_fd = pty.openpty()
    try:
        child = subprocess.Popen(
            argv,
            stdin=slave_fd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # no controlling terminal shared with us
        )
        os.close(slave_fd)
        slave_fd = -1
        # softhsm2-util switches echo off with TCSANOW, so answers typed ahead
        # stay queued in the terminal until each prompt reads its line.
        os.write(master_fd, answers)
        try:
            output, _ = child.communicate(timeout=INIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise SoftHsmError(f"{argv[0]} did not finish in {INIT_TIMEOUT_S} s") from None
        return subprocess.CompletedProcess(argv, child.returncode, output)
    finally:
        if slave_fd >= 0:
            os.close(slave_fd)
        os.close(master_fd)
