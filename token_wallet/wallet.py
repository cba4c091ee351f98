"""The wallet's domain logic over an opened vault, callable without the CLI.

Document kept in the vault (password A):
    version, token (how to find it), key (KeyRecord; wrapped blob or reference),
    kid, counter (last per-key counter used), center (URL, pinned certificate,
    receipt key), member_id, role, history, receipts, outbox.

Signing order, so that a crash never loses or doubles a message: sign with
the token (password B) -> put the envelope in the outbox and save the vault ->
send -> verify the center's receipt -> record it and drop the outbox entry ->
save. A resend is always the same signed bytes, which the center answers with
the first receipt.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path

from paywire.algorithms import key_id
from paywire.envelope import Envelope, b64url_decode, b64url_encode, seal
from paywire.errors import WireError
from paywire.messages import ENROLL, build_payload, new_message_id
from paywire.receipts import check_receipt
from token_wallet.client import CenterClient, CenterRefused, CenterUnreachable
from token_wallet.tokens.base import KeyMode, KeyRecord, KeyType, Token
from token_wallet.vault import Vault

DOCUMENT_VERSION = 1
VAULT_FILENAME = "vault.tpv"
MAX_OUTBOX_ENTRIES = 1000
MAX_HISTORY_ENTRIES = 100_000
ENDPOINTS = {ENROLL: "/v1/enroll"}


class WalletError(Exception):
    """A refusal the user can act on (one line)."""


class ReceiptRejected(WalletError):
    """The center's answer did not verify against the pinned center key."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def vault_path(home: Path) -> Path:
    return home / VAULT_FILENAME


@dataclass
class DeliveryReport:
    delivered: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    pending: int = 0
    unreachable: str | None = None

    def to_json(self) -> dict:
        return {"delivered": self.delivered, "refused": self.refused, "pending": self.pending,
                "unreachable": self.unreachable}


def new_document(token_doc: dict, key: KeyRecord) -> dict:
    return {
        "version": DOCUMENT_VERSION, "token": token_doc, "key": key_to_json(key), "kid": key_id(key.spki_der),
        "counter": 0, "center": None, "member_id": None, "role": None, "history": [], "receipts": [], "outbox": [],
    }


def key_to_json(key: KeyRecord) -> dict:
    return {"mode": key.mode.value, "key_type": key.key_type.value, "algorithm": key.algorithm,
            "spki_der": base64.b64encode(key.spki_der).decode(), "handle": dict(key.handle)}


def key_from_json(document: dict) -> KeyRecord:
    return KeyRecord(mode=KeyMode(document["mode"]), key_type=KeyType(document["key_type"]),
                     algorithm=document["algorithm"], spki_der=base64.b64decode(document["spki_der"]),
                     handle=dict(document["handle"]))


class Wallet:
    def __init__(self, vault: Vault):
        self.vault = vault
        self.doc = vault.data

    @property
    def key(self) -> KeyRecord:
        return key_from_json(self.doc["key"])

    @property
    def kid(self) -> str:
        return self.doc["kid"]

    def pin_center(self, url: str, cert_pem: bytes, center_id: str, receipt_spki: bytes, receipt_alg: str) -> None:
        current = self.doc["center"]
        if current is not None and current["cert_pem"] != cert_pem.decode():
            raise WalletError("this wallet is pinned to another center certificate; use a new wallet home for it")
        self.doc["center"] = {"url": url, "cert_pem": cert_pem.decode(), "center_id": center_id,
                              "receipt_spki": b64url_encode(receipt_spki), "receipt_alg": receipt_alg}

    def move_center(self, url: str) -> None:
        """Point at a new URL of the same center; trust still comes from the pinned certificate."""
        if self.doc["center"] is None:
            raise WalletError("this wallet knows no center yet: run `wallet enroll` first")
        if not url.startswith("https://"):
            raise WalletError(f"the center URL must start with https://, not {url!r}")
        self.doc["center"]["url"] = url
        self.vault.save()

    def sign_and_queue(self, token: Token, pin: str, msg_type: str, body: dict, *, now_s: int) -> dict:
        """Sign a new message with the token and put it in the outbox (saved before returning)."""
        if self.doc["center"] is None:
            raise WalletError("this wallet knows no center yet: run `wallet enroll` first")
        if len(self.doc["outbox"]) >= MAX_OUTBOX_ENTRIES:
            raise WalletError(f"the outbox holds {MAX_OUTBOX_ENTRIES} unsent messages: run `wallet sync` first")
        counter = self.doc["counter"] + 1
        key = self.key
        payload = build_payload(msg_type, aud=self.doc["center"]["center_id"], kid=self.kid,
                                msg_id=new_message_id(), ctr=counter, body=body, now_s=now_s)
        envelope = seal(payload, alg=key.algorithm, kid=self.kid, sign=lambda data: token.sign(key, data, pin))
        entry = {"msg_id": payload["msg_id"], "type": msg_type, "envelope": envelope.to_json(),
                 "queued_at_ms": now_ms(), "attempts": 0}
        self.doc["counter"] = counter
        self.doc["outbox"].append(entry)
        self.vault.save()
        return entry

    def deliver(self) -> DeliveryReport:
        """Send the outbox in order; stop at the first unreachable attempt."""
        report = DeliveryReport()
        center = self.doc["center"]
        if center is None or not self.doc["outbox"]:
            return report
        with CenterClient(center["url"], center["cert_pem"].encode()) as client:
            while self.doc["outbox"]:
                entry = self.doc["outbox"][0]
                try:
                    report.delivered.append(self._deliver_one(client, entry))
                except CenterUnreachable as error:
                    entry["attempts"] += 1
                    self.vault.save()
                    report.unreachable = str(error)
                    break
                except CenterRefused as error:
                    report.refused.append(self._record_refusal(entry, error))
        report.pending = len(self.doc["outbox"])
        return report

    def _deliver_one(self, client: CenterClient, entry: dict) -> dict:
        request = Envelope.from_json(entry["envelope"])
        receipt = client.submit(ENDPOINTS[entry["type"]], request)
        center = self.doc["center"]
        try:
            body = check_receipt(receipt, center_spki=b64url_decode(center["receipt_spki"], "receipt_spki", 2048),
                                 center_alg=center["receipt_alg"], request=request)
        except WireError as error:
            # Not recorded: the entry stays in the outbox, and a resend of the
            # same bytes will fetch the center's stored receipt again.
            raise ReceiptRejected(f"the center's receipt did not verify ({error.code}); nothing was recorded") from None
        result = body["result"]
        _APPLY_RESULT[entry["type"]](self.doc, result)
        self.doc["receipts"].append({"msg_id": entry["msg_id"], "type": entry["type"], "receipt": receipt.to_json()})
        self._add_history(entry["type"], entry["msg_id"], "accepted", result)
        self.doc["outbox"].pop(0)
        self.vault.save()
        return {"msg_id": entry["msg_id"], "type": entry["type"], "result": result}

    def _record_refusal(self, entry: dict, error: CenterRefused) -> dict:
        self.doc["outbox"].pop(0)
        details = {"code": error.code, "message": error.message}
        self._add_history(entry["type"], entry["msg_id"], "refused", details)
        self.vault.save()
        return {"msg_id": entry["msg_id"], "type": entry["type"], **details}

    def _add_history(self, msg_type: str, msg_id: str, outcome: str, details: dict) -> None:
        history = self.doc["history"]
        if len(history) >= MAX_HISTORY_ENTRIES:
            raise WalletError("the history is full: export it and start a new wallet")
        history.append({"at_ms": now_ms(), "type": msg_type, "msg_id": msg_id, "outcome": outcome,
                        "details": details})


def _apply_enrolled(doc: dict, result: dict) -> None:
    doc["member_id"] = result["member_id"]
    doc["role"] = result["role"]


_APPLY_RESULT = {ENROLL: _apply_enrolled}
