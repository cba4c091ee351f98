"""The wallet's domain logic over an opened vault, callable without the CLI.

Document kept in the vault (password A):
    version, token (how to find it), key (KeyRecord; wrapped blob or reference),
    kid, counter (last per-key counter used), center (URLs in the order tried,
    pinned certificate, receipt key, currency), member_id, role, balance_minor (last known),
    history, receipts, outbox, topups, notices, notices_cursor; and, once the
    key changes (token_wallet.key_rotation): key_status, pending_key, previous_keys
    (token_wallet.document: the document's shape and history, below this module).
    Each receipt is kept with what `wallet audit check` needs later (its "log": leaf index, leaf
    hash, the size and root of the tree head it proves against, checked yet); log_head is the
    newest tree head proved consistent (token_wallet.log_audit).

Signing order, so that a crash never loses or doubles a message: sign with
the token (password B) -> put the envelope in the outbox and save the vault ->
send -> verify the center's receipt -> record it and drop the outbox entry ->
save. A resend is always the same signed bytes, which the center answers with
the first receipt.

What the wallet believes of an answer:
- a receipt: only once it verifies against the pinned center key, names this
  request, and states what was signed (token_wallet.answer_checks); a verified
  receipt that contradicts the request is not recorded as done but as an alarm,
  kept in the history (the entry leaves the outbox: resending gets the same);
- a refusal: final only when the center's signed refusal verifies and names
  this request. Any other 4xx (an impostor holding the center's TLS key, or an
  error before the center verified the signature) leaves the entry in the
  outbox, its outcome unknown, for `wallet sync`. Once such an entry has
  expired (the center refuses expired messages before anything else), it
  leaves the outbox as "expired, outcome unknown"; the next balance query
  shows whether it was applied. So nothing waits for ever.

Long because delivery and recording are one state machine over the outbox:
each outcome (delivered, refused, alarm, unverified, expired) and the
per-type record table below change the same entry and save the same vault.
The document's shape and history are token_wallet.document.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hostkit import timing
from paywire.envelope import Envelope, b64url_decode, b64url_encode, seal
from paywire.errors import WireError
from paywire.messages import (
    ACCOUNT_INFO,
    BALANCE,
    CLOCK_SKEW_S,
    CONSOLE_LOGIN,
    ENROLL,
    NOTICE,
    NOTICES,
    OPERATOR_ACTION,
    PAY,
    PAYOUT,
    REFUND,
    ROTATE,
    TOPUP,
    build_payload,
    new_message_id,
    parse_payload,
)
from paywire.notice_proof import check_notices_log
from paywire.receipts import check_receipt, check_refusal
from paywire.verify import verify_envelope
from token_wallet.account_info import record_account_info
from token_wallet.answer_checks import Contradiction, check_answer
from token_wallet.center_url import CenterRefused, CenterUnreachable, check_center_urls
from token_wallet.document import (
    WalletError,
    add_history,
    center_urls,
    discard_pending_key,
    now_ms,
    set_center_urls,
    switch_to_rotated_key,
    upgrade_document,
)
from token_wallet.log_audit import receipt_form, receipt_json, receipt_log_record
from token_wallet.vault import Vault
from tokens.base import KeyRecord, Token

if TYPE_CHECKING:  # the HTTP client is imported where a request is made
    from token_wallet.client import CenterClient

VAULT_FILENAME = "vault.tpv"
MAX_OUTBOX_ENTRIES = 1000
MAX_NOTICES_PER_FETCH = 100
ENDPOINTS = {
    ENROLL: "/v1/enroll",
    TOPUP: "/v1/topups",
    PAY: "/v1/payments",
    REFUND: "/v1/refunds",
    PAYOUT: "/v1/payouts",
    NOTICES: "/v1/notices",
    BALANCE: "/v1/balance",
    ACCOUNT_INFO: "/v1/account",
    OPERATOR_ACTION: "/v1/operator/actions",
    CONSOLE_LOGIN: "/v1/console/login",
    ROTATE: "/v1/keys/rotate",
}
# Payments and money movements must reach the center soon or not at all; an
# enrollment may wait in the outbox for days.
LIFETIME_S = {
    ENROLL: 7 * 24 * 3600,
    TOPUP: 24 * 3600,
    PAY: 24 * 3600,
    REFUND: 24 * 3600,
    PAYOUT: 24 * 3600,
    NOTICES: 3600,
    BALANCE: 3600,
    ACCOUNT_INFO: 3600,
    OPERATOR_ACTION: 24 * 3600,
    # A console login challenge lives two minutes; its approval need not outlive it by much.
    CONSOLE_LOGIN: 300,
    # A key rotation (token_wallet.key_rotation) may wait in the outbox like an enrollment.
    ROTATE: 7 * 24 * 3600,
}


class ReceiptRejected(WalletError):
    """The center's answer did not verify against the pinned center key."""


def vault_path(home: Path) -> Path:
    return home / VAULT_FILENAME


@dataclass
class DeliveryReport:
    delivered: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)  # by a refusal the center signed
    alarms: list[dict] = field(default_factory=list)  # a verified receipt contradicting its request
    unverified: list[dict] = field(
        default_factory=list
    )  # a 4xx without a valid signed refusal: still waiting
    dropped: list[dict] = field(default_factory=list)  # expired while its outcome was unknown
    pending: int = 0
    unreachable: str | None = None

    def to_json(self) -> dict:
        return {
            "delivered": self.delivered,
            "refused": self.refused,
            "alarms": self.alarms,
            "unverified": self.unverified,
            "dropped": self.dropped,
            "pending": self.pending,
            "unreachable": self.unreachable,
        }

    def outcome_of(self, msg_id: str) -> tuple[str, dict | None]:
        """('delivered', result) | ('refused', {code, message}) | ('alarm', {reason, ...}) |
        ('unknown', {code, message, status}) | ('expired', {...}) | ('queued', None)."""
        for state, items in (
            ("refused", self.refused),
            ("alarm", self.alarms),
            ("unknown", self.unverified),
            ("expired", self.dropped),
        ):
            for item in items:
                if item["msg_id"] == msg_id:
                    return state, item
        for item in self.delivered:
            if item["msg_id"] == msg_id:
                return "delivered", item["result"]
        return "queued", None


class Wallet:
    def __init__(self, vault: Vault):
        self.vault = vault
        self.doc = vault.data
        upgrade_document(self.doc)

    @property
    def key(self) -> KeyRecord:
        return KeyRecord.from_json(self.doc["key"])

    @property
    def kid(self) -> str:
        return self.doc["kid"]

    @property
    def currency(self) -> str | None:
        center = self.doc["center"]
        return center.get("currency") if center else None

    def require_enrolled(self, role: str | None = None) -> None:
        waiting = any(e["type"] == ENROLL for e in self.doc["outbox"])
        if not self.doc["member_id"]:
            raise WalletError(
                "the enrollment still waits in the outbox: run `wallet sync` first"
                if waiting
                else "this wallet is not enrolled yet: run `wallet enroll` first"
            )
        if self.doc.get("key_status") == "new":  # a lost card's replacement (token_wallet.key_rotation)
            raise WalletError(
                "the enrollment of the new key still waits in the outbox: run `wallet sync` first"
                if waiting
                else f"this wallet's new key is not enrolled yet: run "
                f"`wallet enroll --rebind {self.doc['member_id']}` first"
            )
        if role and self.doc["role"] != role:
            raise WalletError(f"only a {role} wallet can do this; this one belongs to a {self.doc['role']}")

    def pin_center(
        self, urls: str | list[str], cert_pem: bytes, center_id: str, receipt_spki: bytes, receipt_alg: str
    ) -> None:
        """Pin a center (its certificate, id and receipt key) at its URLs, in the order to try them."""
        current = self.doc["center"]
        if current is not None and current["cert_pem"] != cert_pem.decode():
            raise WalletError(
                "this wallet is pinned to another center certificate; use a new wallet home for it"
            )
        center = {
            "cert_pem": cert_pem.decode(),
            "center_id": center_id,
            "receipt_spki": b64url_encode(receipt_spki),
            "receipt_alg": receipt_alg,
            "currency": (current or {}).get("currency"),
        }
        set_center_urls(center, [urls] if isinstance(urls, str) else urls)
        self.doc["center"] = center

    def move_center(self, urls: str | list[str]) -> None:
        """Point at new URLs of the same center (the whole list); trust still comes from the pinned
        certificate. Every URL is checked before anything changes."""
        if self.doc["center"] is None:
            raise WalletError("this wallet knows no center yet: run `wallet enroll` first")
        try:
            checked = check_center_urls([urls] if isinstance(urls, str) else urls)
        except ValueError as error:
            raise WalletError(str(error)) from None
        set_center_urls(self.doc["center"], checked)
        self.vault.save()

    @property
    def center_urls(self) -> list[str]:
        return center_urls(self.doc["center"]) if self.doc["center"] else []

    def client(self) -> CenterClient:
        # Imported here: the HTTP stack (httpx, ssl) is tens of milliseconds of start-up that only a
        # command talking to the center pays (issue 16).
        from token_wallet.client import CenterClient

        center = self.doc["center"]
        if center is None:
            raise WalletError("this wallet knows no center yet: run `wallet enroll` first")
        return CenterClient(center_urls(center), center["cert_pem"].encode())

    def learn_currency(self) -> str:
        """The center's currency, asked once over pinned TLS and kept in the vault."""
        if self.currency:
            return self.currency
        with self.client() as client:
            info = client.get_json("/v1/center")
        if info.get("center_id") != self.doc["center"]["center_id"]:
            raise WalletError("the center at this URL is not the one whose certificate is pinned")
        self.doc["center"]["currency"] = str(info["currency"])
        self.vault.save()
        return self.doc["center"]["currency"]

    def sign_and_queue(self, token: Token, pin: str, msg_type: str, body: dict, *, now_s: int) -> dict:
        """Sign a new message with the token and put it in the outbox (saved before returning)."""
        if self.doc["center"] is None:
            raise WalletError("this wallet knows no center yet: run `wallet enroll` first")
        if len(self.doc["outbox"]) >= MAX_OUTBOX_ENTRIES:
            raise WalletError(
                f"the outbox holds {MAX_OUTBOX_ENTRIES} unsent messages: run `wallet sync` first"
            )
        if any(e["type"] == ROTATE for e in self.doc["outbox"]):
            # Anything the old key signed after its rotation would be refused.
            raise WalletError("a key rotation waits in the outbox: run `wallet sync` first")
        counter = self.doc["counter"] + 1
        key = self.key
        payload = build_payload(
            msg_type,
            aud=self.doc["center"]["center_id"],
            kid=self.kid,
            msg_id=new_message_id(),
            ctr=counter,
            body=body,
            now_s=now_s,
            lifetime_s=LIFETIME_S[msg_type],
        )
        envelope = seal(
            payload, alg=key.algorithm, kid=self.kid, sign=lambda data: _timed_sign(token, key, data, pin)
        )
        entry = {
            "msg_id": payload["msg_id"],
            "type": msg_type,
            "envelope": envelope.to_json(),
            "queued_at_ms": now_ms(),
            "attempts": 0,
        }
        self.doc["counter"] = counter
        self.doc["outbox"].append(entry)
        self.vault.save()
        return entry

    def deliver(self) -> DeliveryReport:
        """Send the outbox in order (counters must rise); stop at the first unreachable attempt."""
        report = DeliveryReport()
        if self.doc["center"] is None or not self.doc["outbox"]:
            return report
        with self.client() as client:
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
                    if not self._settle_refusal(entry, error, report):
                        break  # kept: later entries wait behind it, in order
                except Contradiction as alarm:
                    report.alarms.append(self._record_alarm(entry, str(alarm)))
        report.pending = len(self.doc["outbox"])
        return report

    def _settle_refusal(self, entry: dict, error: CenterRefused, report: DeliveryReport) -> bool:
        """Record a refusal the center signed; otherwise keep the entry (or drop it once expired).
        Returns whether the entry left the outbox."""
        refusal = self._checked_refusal(entry, error)
        if refusal is not None:
            report.refused.append(self._record_refusal(entry, refusal))
            return True
        seen = {"code": error.code, "message": error.message, "status": error.status}
        if _expired(entry):
            report.dropped.append(self._drop_expired(entry, seen))
            return True
        entry["attempts"] += 1
        entry["last_answer"] = seen | {"at_ms": now_ms()}
        self.vault.save()
        report.unverified.append({"msg_id": entry["msg_id"], "type": entry["type"], **seen})
        report.unreachable = (
            f"the center answered {error.code} (HTTP {error.status}) without a refusal signed by "
            "its key: not believed, the message stays in the outbox"
        )
        return False

    def _checked_refusal(self, entry: dict, error: CenterRefused) -> dict | None:
        if error.refusal is None:
            return None
        try:
            return check_refusal(
                Envelope.from_json(error.refusal),
                center_spki=self._center_spki(),
                center_alg=self._center_alg(),
                request=Envelope.from_json(entry["envelope"]),
            )
        except WireError:
            return None

    def _deliver_one(self, client: CenterClient, entry: dict) -> dict:
        request = Envelope.from_json(entry["envelope"])
        response = client.submit(ENDPOINTS[entry["type"]], request)
        try:
            receipt = receipt_form(response.get("receipt"))
            body = check_receipt(
                receipt,
                center_spki=self._center_spki(),
                center_alg=self._center_alg(),
                request=request,
                center_id=self.doc["center"]["center_id"],
            )
            # What `wallet audit check` needs once the request bytes have left the outbox.
            log = receipt_log_record(body, receipt, request)
            extras = self._verified_extras(entry["type"], response, old_form=log is None)
        except WireError as error:
            # Not recorded: the entry stays in the outbox, and a resend of the
            # same bytes will fetch the center's stored receipt again.
            raise ReceiptRejected(
                f"the center's answer did not verify ({error.code}): nothing was recorded"
            ) from None
        result = body["result"]
        record = {"msg_id": entry["msg_id"], "type": entry["type"], "receipt": receipt_json(receipt)}
        if log is not None:
            record["log"] = log
        try:
            check_answer(entry["type"], request_body(entry), result, self.doc, extras)
        except Contradiction as alarm:
            self.doc["receipts"].append(record | {"alarm": str(alarm)})
            raise
        _RECORD_RESULT[entry["type"]](self, entry, result, extras)
        if entry["type"] not in (ENROLL, ROTATE) and self.doc.get("key_status") == "pending_bind":
            self.doc["key_status"] = "active"  # accepted: an operator has bound the new key
        self.doc["receipts"].append(record)
        self.doc["outbox"].pop(0)
        self.vault.save()
        return {"msg_id": entry["msg_id"], "type": entry["type"], "result": result}

    def _verified_extras(self, msg_type: str, response: dict, *, old_form: bool = False) -> list[dict]:
        """Each payment notice is signed by the center on its own, and proved in the center's log by
        its payment's entry (paywire.notice_proof): check every one. Only an answer stored before the
        log was a tree (`old_form`: its receipt is a signed envelope) may come without the proofs."""
        if msg_type != NOTICES:
            return []
        checked = self._signed_notices(response)
        if old_form and "notices_log" not in response:
            return checked
        if not checked:
            return checked
        logs = check_notices_log(
            response.get("notices_log"),
            [item["notice"] for item in checked],
            center_spki=self._center_spki(),
            center_alg=self._center_alg(),
            center_id=self.doc["center"]["center_id"],
            store_id=self.doc["member_id"],
        )
        # Kept like a receipt's "log": `wallet audit check` proves each entry is still in the log.
        return [item | {"log": log} for item, log in zip(checked, logs, strict=True)]

    def _signed_notices(self, response: dict) -> list[dict]:
        notices = response.get("notices") or []
        if not isinstance(notices, list) or len(notices) > MAX_NOTICES_PER_FETCH:
            raise WireError("malformed_envelope", "the notices list is malformed")
        checked = []
        for document in notices:
            envelope = Envelope.from_json(document)
            header, body = verify_envelope(
                envelope, spki_der=self._center_spki(), algorithm=self._center_alg()
            )
            if (
                header.type != NOTICE
                or header.aud != self.doc["member_id"]
                or body["store_id"] != self.doc["member_id"]
            ):
                raise WireError("wrong_audience", "a payment notice is not addressed to this store")
            checked.append({"notice": body, "envelope": envelope.to_json()})
        return checked

    def center_key(self) -> tuple[bytes, str]:
        """The pinned center key (SPKI DER, algorithm): receipts, refusals and tree heads verify with it."""
        return self._center_spki(), self._center_alg()

    def _center_spki(self) -> bytes:
        return b64url_decode(self.doc["center"]["receipt_spki"], "receipt_spki", 2048)

    def _center_alg(self) -> str:
        return self.doc["center"]["receipt_alg"]

    def _record_refusal(self, entry: dict, refusal: dict) -> dict:
        """A refusal the center signed for this very request: final."""
        self.doc["outbox"].pop(0)
        details = {"code": refusal["code"], "message": refusal["message"]}
        if entry["type"] == ROTATE:  # the old key stays; the new one is forgotten
            discard_pending_key(self.doc, refusal["code"])
        self.add_history(entry["type"], entry["msg_id"], "refused", details)
        self.vault.save()
        return {"msg_id": entry["msg_id"], "type": entry["type"], **details}

    def _record_alarm(self, entry: dict, reason: str) -> dict:
        """A verified receipt that contradicts the request: not recorded as done; kept in the history.
        The known balance is forgotten until a balance query resyncs it."""
        self.doc["outbox"].pop(0)
        signed = request_body(entry)
        details = {"code": "receipt_contradicts_request", "message": reason, "signed": signed}
        if "amount_minor" in signed:
            details["amount_minor"] = signed["amount_minor"]  # what may have moved (answer_checks)
        self.doc["balance_minor"] = None
        self.add_history(
            entry["type"], entry["msg_id"], f"alarm: receipt contradicts the request ({reason})", details
        )
        self.vault.save()
        return {"msg_id": entry["msg_id"], "type": entry["type"], "reason": reason}

    def _drop_expired(self, entry: dict, seen: dict) -> dict:
        """An expired message never confirmed: the center can no longer apply it, but may have before."""
        self.doc["outbox"].pop(0)
        signed = request_body(entry)
        details = {
            "code": "expired_unconfirmed",
            "last_answer": seen,
            "message": "it expired without a receipt or a signed refusal; run `wallet balance` to see "
            "whether it was applied",
        }
        if "amount_minor" in signed:
            details["amount_minor"] = signed["amount_minor"]
        if entry["type"] in (PAY, REFUND, PAYOUT, TOPUP):
            self.doc["balance_minor"] = None
        self.add_history(entry["type"], entry["msg_id"], "expired, outcome unknown", details)
        self.vault.save()
        return {"msg_id": entry["msg_id"], "type": entry["type"], **seen}

    def add_history(self, kind: str, ref: str, outcome: str, details: dict) -> None:
        add_history(self.doc, kind, ref, outcome, details)


def request_body(entry: dict) -> dict:
    """The body this wallet signed for an outbox entry."""
    return parse_payload(Envelope.from_json(entry["envelope"]).payload)[1]


def _expired(entry: dict) -> bool:
    header, _body = parse_payload(Envelope.from_json(entry["envelope"]).payload)
    return time.time() > header.exp + CLOCK_SKEW_S


# --- what an accepted answer changes in the vault, per message type ---------------


def _record_enrolled(wallet: Wallet, entry: dict, result: dict, _extras: list) -> None:
    rebinding = result["action"] == "bind_requested"  # a lost card's new key, for the same account
    if not rebinding:
        wallet.doc["balance_minor"] = 0
    wallet.doc["member_id"] = result["member_id"]
    wallet.doc["role"] = result["role"]
    wallet.doc["key_status"] = "pending_bind" if rebinding else "active"
    wallet.add_history(ENROLL, entry["msg_id"], "accepted", result)


def _record_rotated(wallet: Wallet, entry: dict, result: dict, _extras: list) -> None:
    switch_to_rotated_key(wallet.doc, result)
    wallet.add_history(ROTATE, entry["msg_id"], "accepted", result)


def _record_topup(wallet: Wallet, entry: dict, result: dict, _extras: list) -> None:
    wallet.doc["topups"][result["topup_id"]] = {
        "amount_minor": result["amount_minor"],
        "method": result["method"],
        "status": result["status"],
    }
    wallet.add_history(TOPUP, entry["msg_id"], "accepted", result)


def _record_money(wallet: Wallet, entry: dict, result: dict, _extras: list) -> None:
    wallet.doc["balance_minor"] = result["balance_minor"]
    wallet.add_history(entry["type"], entry["msg_id"], "accepted", result)


def _record_notices(wallet: Wallet, entry: dict, result: dict, extras: list) -> None:
    for item in extras:
        notice = item["notice"]
        if wallet.doc["notices"].has_ref(notice["payment_id"]):  # an index lookup, not a scan
            continue
        wallet.doc["notices"].append(item)
        wallet.add_history(
            "payment_received",
            notice["payment_id"],
            "notice verified",
            {k: notice[k] for k in ("payment_id", "buyer_id", "amount_minor", "currency", "order_ref")},
        )
    wallet.doc["notices_cursor"] = max(wallet.doc["notices_cursor"], result["last_seq"])


def _record_balance(wallet: Wallet, entry: dict, result: dict, _extras: list) -> None:
    """A balance answer also tells what changed meanwhile: top-ups decided, refunds received."""
    wallet.doc["balance_minor"] = result["balance_minor"]
    for topup in result.get("topups", []):
        known = wallet.doc["topups"].get(topup["topup_id"])
        if known is None:  # requested from here, its receipt never recorded (answer_checks counts it)
            wallet.doc["topups"][topup["topup_id"]] = {
                k: topup[k] for k in ("amount_minor", "method", "status")
            }
        elif known["status"] != topup["status"]:
            known["status"] = topup["status"]
            wallet.add_history("topup_" + topup["status"], topup["topup_id"], topup["status"], topup)
    for refund in reversed(result.get("refunds", [])):
        if not wallet.doc["history"].has_ref(f"refund_received:{refund['refund_id']}"):
            wallet.add_history("refund_received", refund["refund_id"], "credited", refund)
    for payout in result.get("payouts", []):
        wallet.doc.setdefault("payouts", {})[payout["payout_id"]] = payout


def _record_operator(wallet: Wallet, entry: dict, result: dict, _extras: list) -> None:
    """An operator's action or console login: the answer names the operator account this key belongs to."""
    wallet.doc["member_id"] = result["operator_id"]
    wallet.doc["role"] = result["role"]
    wallet.add_history(entry["type"], entry["msg_id"], "accepted", result)


_RECORD_RESULT = {
    ENROLL: _record_enrolled,
    TOPUP: _record_topup,
    PAY: _record_money,
    REFUND: _record_money,
    PAYOUT: _record_money,
    NOTICES: _record_notices,
    BALANCE: _record_balance,
    OPERATOR_ACTION: _record_operator,
    CONSOLE_LOGIN: _record_operator,
    ROTATE: _record_rotated,
    ACCOUNT_INFO: record_account_info,
}


def _timed_sign(token: Token, key: KeyRecord, data: bytes, pin: str) -> bytes:
    with timing.span("token"):
        return token.sign(key, data, pin)
