"""HTTP route for key rotation: POST /v1/keys/rotate (thin; center.pipeline.rotation does the work)."""

from __future__ import annotations

from fastapi import FastAPI

from center.api.schemas import EnvelopeIn, ReceiptOut, parse_envelope
from center.pipeline.rotation import rotate
from center.pipeline.service import Center


def install_key_routes(app: FastAPI, center: Center) -> None:
    @app.post(
        "/v1/keys/rotate",
        response_model=ReceiptOut,
        name="rotate_key",
        summary="Replace the signing key: a 'rotate' message signed by the old key, "
        "holding the new key's proof",
    )
    def rotate_key(envelope: EnvelopeIn) -> dict:
        return rotate(center, parse_envelope(envelope))
