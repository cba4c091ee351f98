"""Helpers for tests: databases, real center processes, CLI runs, software signers.

Not fixtures (those live in conftest.py and the fixtures_* modules); plain functions and classes.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from paywire.algorithms import ecdsa_der_low_s, key_id
from paywire.envelope import Envelope, b64url_encode, seal
from paywire.messages import build_payload, new_message_id

PG_ADMIN_URL = os.environ.get("TOKENPAY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
START_TIMEOUT_S = 30.0


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def require(what: str, present: bool) -> None:
    """Skip the test when a system part is missing; fail it under CI, where every part belongs."""
    if present:
        return
    if in_ci():
        pytest.fail(f"{what} is required under CI=true")
    pytest.skip(f"{what} is not available")


# --- PostgreSQL: one throwaway database per test -----------------------------


def pg_reachable() -> bool:
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def create_pg_database(admin_url: str | None = None) -> str:
    """A new database on the test server (or on the server or cluster `admin_url` names); its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    from center.ops.backup_db import libpq_target

    admin_url = admin_url or PG_ADMIN_URL
    name = f"tokenpay_t_{secrets.token_hex(6)}"
    with psycopg.connect(libpq_target(admin_url)[0], autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str, admin_url: str | None = None) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    from center.ops.backup_db import libpq_target

    name = make_url(url).database
    with psycopg.connect(libpq_target(admin_url or PG_ADMIN_URL)[0], autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def set_center_config(data_dir: Path, **fields) -> None:
    """Change fields of a center's config.json before its `center serve` starts (e.g. request_deadline_s)."""
    path = data_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))


# --- processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["TOKENPAY_FAST_KDF"] = "1"  # the security floor, not below it; saves ~200 ms per vault open
    env.update(extra)
    return env


def run_cli(
    program: str, args: list[str], env: dict[str, str] | None = None, timeout_s: float = 120.0
) -> subprocess.CompletedProcess:
    module = {"wallet": "token_wallet", "center": "center"}[program]
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class CenterProcess:
    data_dir: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert(self) -> Path:
        return self.data_dir / "center-cert.pem"

    def start(self, workers: int = 1) -> None:
        # The child keeps its own copy of the log descriptor; ours is closed once it has started.
        with open(self.data_dir.parent / f"center-{self.port}.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "center",
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--workers",
                    str(workers),
                ],
                env=cli_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"center exited with {self.process.returncode}; see its log")
            try:
                context = ssl.create_default_context(cafile=str(self.cert))
                response = httpx.get(f"{self.url}/healthz", verify=context, timeout=2.0)
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("center did not become healthy in time")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


# --- software signers (clients of the center API in unit-level tests) -------------


class SoftwareSigner:
    """A member key in memory, for API tests; end-to-end tests use real tokens."""

    def __init__(self, algorithm: str = "ES256"):
        self.algorithm = algorithm
        if algorithm == "ES256":
            self._key = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == "Ed25519":
            self._key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(algorithm)
        self.spki = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = key_id(self.spki)
        self.counter = 0

    def sign(self, data: bytes) -> bytes:
        if self.algorithm == "Ed25519":
            return self._key.sign(data)
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        return ecdsa_der_low_s(*decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256()))))

    def envelope(
        self,
        msg_type: str,
        body: dict,
        *,
        aud: str,
        now_s: int | None = None,
        ctr: int | None = None,
        msg_id: str | None = None,
        lifetime_s: int = 3600,
        kid: str | None = None,
    ) -> Envelope:
        self.counter = ctr if ctr is not None else self.counter + 1
        payload = build_payload(
            msg_type,
            aud=aud,
            kid=kid or self.kid,
            msg_id=msg_id or new_message_id(),
            ctr=self.counter,
            body=body,
            now_s=now_s or int(time.time()),
            lifetime_s=lifetime_s,
        )
        return seal(payload, alg=self.algorithm, kid=kid or self.kid, sign=self.sign)

    def enroll_body(self, role: str = "member", **fields) -> dict:
        body = {
            "role": role,
            "public_key": b64url_encode(self.spki),
            "alg": self.algorithm,
            "name": fields.get("name", "Test Person"),
            "address": fields.get("address", "1-2-3 Chiyoda, Tokyo"),
        }
        if role == "member":
            body["birth_date"] = fields.get("birth_date", "1990-04-01")
        else:
            body["bank_account"] = fields.get("bank_account", "JP-0001-1234567")
        return body
