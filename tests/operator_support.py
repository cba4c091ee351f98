"""Helpers for the operator and console tests: operator keys, a settable clock, HTTPS test clients."""

from __future__ import annotations

import time

from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from receipt_support import checked_by_center
from support import SoftwareSigner

from center.api.app import create_app
from center.keys.operators import add_operator
from paywire.envelope import Envelope

# Secure cookies travel over https only, also in the test client.
BASE_URL = "https://testserver"


class Clock:
    """A center clock the test moves forward (Center.clock_ms)."""

    def __init__(self) -> None:
        self.now_ms = time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


def public_pem(spki_der: bytes) -> bytes:
    return serialization.load_der_public_key(spki_der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def new_operator(
    center, role: str = "operator", name: str = "Ops One", algorithm: str = "ES256"
) -> tuple[SoftwareSigner, dict]:
    signer = SoftwareSigner(algorithm)
    view = add_operator(
        center.engine,
        public_pem(signer.spki),
        role=role,
        name=name,
        added_by="admin:test",
        now_ms=center.clock_ms(),
    )
    return signer, view


def https_client(center, app=None) -> TestClient:
    return TestClient(app or create_app(center), base_url=BASE_URL)


def signed(center, signer: SoftwareSigner, msg_type: str, body: dict, **kw) -> Envelope:
    return signer.envelope(msg_type, body, aud=center.center_id, now_s=center.clock_ms() // 1000, **kw)


def receipt_result(center, request: Envelope, response_json: dict) -> dict:
    return checked_by_center(response_json, request, center)


def error_code(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]
