"""Helpers for the operations tests (backup/restore, metrics, logs): signed requests
to a live center over pinned HTTPS, and `center` CLI calls that must succeed."""

from __future__ import annotations

import json

import httpx
from receipt_support import checked_result, receipt_head
from support import CenterProcess, SoftwareSigner, run_cli

from paywire.center_cert import read_center_certificate
from paywire.envelope import Envelope
from token_wallet.client import pinned_ssl_context

PATHS = {
    "enroll": "/v1/enroll",
    "topup": "/v1/topups",
    "pay": "/v1/payments",
    "refund": "/v1/refunds",
    "payout": "/v1/payouts",
    "balance": "/v1/balance",
    "notices": "/v1/notices",
}
STORE_NAME = "Corner Shop"


def center_cli(center: CenterProcess, *args: str) -> dict:
    result = run_cli("center", [*args, "--data-dir", str(center.data_dir), "--json"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def center_id_of(center: CenterProcess) -> str:
    return json.loads((center.data_dir / "config.json").read_text())["center_id"]


class SignedClient:
    """Members and stores with keys in memory, talking to a real `center serve` over HTTPS."""

    def __init__(self, center: CenterProcess):
        cert_pem = center.cert.read_bytes()
        self.identity = read_center_certificate(cert_pem)
        self.http = httpx.Client(base_url=center.url, verify=pinned_ssl_context(cert_pem), timeout=60.0)

    def close(self) -> None:
        self.http.close()

    def post(self, signer: SoftwareSigner, msg_type: str, body: dict) -> tuple[Envelope, httpx.Response]:
        request = signer.envelope(msg_type, body, aud=self.identity.center_id)
        return request, self.http.post(PATHS[msg_type], json=request.to_json())

    def result(self, signer: SoftwareSigner, msg_type: str, body: dict) -> dict:
        """Send, require 200, check the receipt against the pinned center key; the receipt's result."""
        request, response = self.post(signer, msg_type, body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert receipt_head(answer).kid == self.identity.receipt_kid
        return checked_result(
            answer,
            request,
            center_spki=self.identity.receipt_spki,
            center_alg=self.identity.receipt_alg,
            center_id=self.identity.center_id,
        )

    def refused(self, signer: SoftwareSigner, msg_type: str, body: dict) -> str:
        _request, response = self.post(signer, msg_type, body)
        assert 400 <= response.status_code < 500, response.text
        return response.json()["error"]["code"]

    def enroll(self, role: str, **fields) -> tuple[SoftwareSigner, str]:
        signer = SoftwareSigner()
        return signer, self.result(signer, "enroll", signer.enroll_body(role, **fields))["member_id"]


def pay_body(store_id: str, amount_minor: int, order: str) -> dict:
    return {
        "payee": store_id,
        "payee_name": STORE_NAME,
        "amount_minor": amount_minor,
        "currency": "JPY",
        "order_ref": order,
    }


def funded_member(
    client: SignedClient, center: CenterProcess, amount_minor: int
) -> tuple[SoftwareSigner, str]:
    member, member_id = client.enroll("member")
    topup = client.result(
        member, "topup", {"amount_minor": amount_minor, "currency": "JPY", "method": "bank"}
    )
    assert center_cli(center, "operator", "confirm-topup", topup["topup_id"])["status"] == "confirmed"
    return member, member_id
