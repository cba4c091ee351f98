"""HTTP route for key rotation: POST /v1/keys/rotate (thin; center.keys.lifecycle does the work)."""

from fastapi import FastAPI

from center.keys import lifecycle as key_lifecycle
from center.pipeline.service import Center


def install_key_routes(app: FastAPI, center: Center) -> None:
    # Imported here: center.api.app calls this from create_app, after defining these. (No
    # `from __future__ import annotations` in this module: FastAPI reads the local model.)
    from center.api.app import EnvelopeIn, ReceiptOut, _parse_envelope

    @app.post("/v1/keys/rotate", response_model=ReceiptOut, name="rotate_key",
              summary="Replace the signing key: a 'rotate' message signed by the old key, holding the new key's proof")
    def rotate_key(envelope: EnvelopeIn) -> dict:
        return key_lifecycle.rotate(center, _parse_envelope(envelope))
