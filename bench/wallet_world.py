"""A small world for the wallet benches: a center serving HTTPS on loopback (SQLite), a member with
a funded balance and a store, each wallet on its own SoftHSM token, made through the real commands
as scripts/demo.sh makes them. Not part of the test suite.

    with wallet_world(Path(scratch)) as world:
        world.member("pay", "--store", world.store_id, ...)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hostkit.sealing import FAST_KDF_ENV  # noqa: E402

BIN = Path(sys.executable).parent  # the venv's wallet and center commands
START_TIMEOUT_S = 30.0
TOPUP_JPY = "100000"  # enough for every bench payment
SECRETS = {"a": "bench vault passphrase", "b": "4711-bench", "so": "so-bench-123"}


@dataclass
class Party:
    name: str
    home: Path
    secrets: dict[str, Path]

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {
            **base,
            "WALLET_HOME": str(self.home),
            "WALLET_PASSWORD_A_FILE": str(self.secrets["a"]),
            "WALLET_PASSWORD_B_FILE": str(self.secrets["b"]),
            "WALLET_SO_PIN_FILE": str(self.secrets["so"]),
        }


@dataclass
class World:
    directory: Path
    env: dict[str, str]
    url: str
    cert: Path
    parties: dict[str, Party]
    store_id: str = ""

    def wallet_argv(self, *args: str) -> list[str]:
        return [str(BIN / "wallet"), *args]

    def party_env(self, name: str) -> dict[str, str]:
        return self.parties[name].env(self.env)

    def run(self, name: str, *args: str) -> dict:
        """A --json wallet command of party `name` that must succeed; its answer."""
        done = subprocess.run(
            self.wallet_argv(*args, "--json"), env=self.party_env(name), capture_output=True, text=True
        )
        assert done.returncode == 0, f"wallet {' '.join(args)}: {done.stderr.strip()}"
        return json.loads(done.stdout)


def _check(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, f"{' '.join(argv[:3])}: {done.stderr.strip()[-400:]}"
    return done.stdout


def _party(directory: Path, name: str, env: dict[str, str]) -> Party:
    secrets_dir = directory / "secrets" / name
    secrets_dir.mkdir(parents=True, mode=0o700)
    files = {}
    for key, value in SECRETS.items():
        files[key] = secrets_dir / key
        files[key].write_text(value + "\n")
        files[key].chmod(0o600)
    _check(
        ["sh", "softhsm_config/make-token.sh", "--dir", str(directory / "tokens"), "--label", f"{name}-token",
         "--so-pin-file", str(files["so"]), "--pin-file", str(files["b"])],
        env,
    )  # fmt: skip
    return Party(name, directory / name, files)


def _wait_healthy(url: str, cert: Path, process: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "center serve exited; see center.log"
        try:
            if httpx.get(f"{url}/healthz", verify=str(cert), timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the center did not answer at {url} within {START_TIMEOUT_S} s")


@contextmanager
def wallet_world(directory: Path, port: int = 18443) -> Iterator[World]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WALLET_", "TOKENPAY_"))}
    # Vaults made with the smallest KDF the wallet accepts: the KDF is timed apart (its own span), and
    # a short one keeps its noise out of the wallet's own time on a shared machine.
    env[FAST_KDF_ENV] = "1"
    env["SOFTHSM2_CONF"] = str(directory / "tokens" / "softhsm2.conf")
    parties = {name: _party(directory, name, env) for name in ("member", "store", "ops")}
    center_dir = directory / "center"
    _check([str(BIN / "center"), "init", "--data-dir", str(center_dir), "--currency", "JPY"], env)
    with open(directory / "center.log", "wb") as log:
        process = subprocess.Popen(
            [str(BIN / "center"), "serve", "--data-dir", str(center_dir), "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        world = World(directory, env, f"https://127.0.0.1:{port}", center_dir / "center-cert.pem", parties)
        _wait_healthy(world.url, world.cert, process)
        _populate(world)
        yield world
    finally:
        process.terminate()
        process.wait(timeout=30)


def _populate(world: World) -> None:
    """Tokens' keys, the operator, both enrollments, and a confirmed top-up for the member."""
    module = _check(
        [sys.executable, "-c", "from tokens.softhsm import find_softhsm_module as f; print(f())"], world.env
    ).strip()
    center = ["--center", world.url, "--center-cert", str(world.cert)]
    for name in ("member", "store", "ops"):
        world.run(name, "init", "--pkcs11-module", module, "--token-label", f"{name}-token")
    key_file = world.directory / "ops-public-key.pem"
    world.run("ops", "export-public-key", "--out", str(key_file))
    _check(
        [str(BIN / "center"), "operator", "add", "--data-dir", str(world.directory / "center"),
         "--public-key", str(key_file), "--role", "operator", "--name", "Bench Operator"],
        world.env,
    )  # fmt: skip
    world.run("ops", "operator", "attach", *center)
    world.run("member", "enroll", *center, "--name", "Bench Member", "--address", "1-1 Chiyoda, Tokyo",
              "--birth-date", "1985-06-15")  # fmt: skip
    world.store_id = world.run(
        "store", "enroll", *center, "--store", "--name", "Bench Shop", "--address", "2-2 Shibuya, Tokyo",
        "--bank-account", "JP-0009-7654321",
    )["member_id"]  # fmt: skip
    topup = world.run("member", "topup", TOPUP_JPY, "--method", "bank")["topup_id"]
    world.run("ops", "operator", "confirm-topup", topup, "--yes")
