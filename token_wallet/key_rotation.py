"""Changing the wallet's signing key while keeping its account, history and receipts.

Two ways, both in the same wallet home (password A):

- Lost card (`replace_key`): the old token is gone, so the old key cannot sign.
  A key generated on a new token becomes the wallet's key at once, with state
  'new'; `wallet enroll --rebind M-...` then asks the center to bind it to the
  same account ('pending_bind' until an operator binds it, then 'active').
- Rotation (`prepare_rotation`, `queue_rotation`): the old key still works. The
  new key is generated and saved in the vault as `pending_key` BEFORE anything
  is sent; then one `rotate` message signed by the old key, carrying the new
  key's own signed `key_proof` (naming the old kid), goes to the outbox. The
  wallet switches to the new key only when the center's verified receipt says
  so (token_wallet.document.switch_to_rotated_key), so a crash at any point either
  leaves the old key in use (nothing sent yet: the pending key is reused next
  time) or the rotation in the outbox, which `wallet sync` finishes.

Previous keys are kept (kid, algorithm, token, why and when retired) so the
history can still name the key that signed each old entry.
"""

from __future__ import annotations

from paywire.algorithms import key_id
from paywire.envelope import Envelope, b64url_encode, seal
from paywire.messages import KEY_PROOF, ROTATE, build_payload, new_message_id
from token_wallet.document import (
    WalletError,
    discard_pending_key,
    install_key,
    now_ms,
    queued_rotation,
    retire_current_key,
)
from token_wallet.wallet import LIFETIME_S, Wallet
from tokens.base import KeyRecord, Token

# The new key's first counter: its proof of possession uses it, as an enrollment would.
FIRST_COUNTER = 1


def check_can_replace(doc: dict) -> None:
    """Before generating a replacement key: refuse what `replace_key` would refuse."""
    if not doc["member_id"] or doc["center"] is None:
        raise WalletError(
            "this wallet was never enrolled: there is no account to keep; use `wallet init` in a "
            "new home instead"
        )
    if doc["outbox"]:
        raise WalletError(
            f"{len(doc['outbox'])} message(s) signed by the old key still wait in the outbox: "
            "run `wallet sync` first (a revoked key's messages are then refused and recorded)"
        )


def replace_key(wallet: Wallet, token_doc: dict, key: KeyRecord) -> dict:
    """After a lost card: the new token's key becomes this wallet's key, not yet enrolled."""
    doc = wallet.doc
    check_can_replace(doc)
    # A rotation prepared but never sent (the outbox is empty) cannot be: the old key is gone.
    discard_pending_key(doc, "replaced after a lost card")
    old_kid = doc["kid"]
    retire_current_key(doc, "replaced")
    install_key(doc, token_doc, key, counter=0, state="new")
    wallet.add_history(
        "key_replaced",
        doc["kid"],
        "new key",
        {"old_kid": old_kid, "new_kid": doc["kid"], "algorithm": key.algorithm},
    )
    wallet.vault.save()
    return {"old_kid": old_kid, "new_kid": doc["kid"], "member_id": doc["member_id"]}


def prepare_rotation(wallet: Wallet, token_doc: dict, key: KeyRecord) -> dict:
    """Keep the new key in the vault (saved) before anything is signed or sent."""
    doc = wallet.doc
    if doc.get("pending_key"):
        raise WalletError("a new key is already waiting to replace this one")
    doc["pending_key"] = {
        "token": token_doc,
        "key": key.to_json(),
        "kid": key_id(key.spki_der),
        "created_at_ms": now_ms(),
        "msg_id": None,
    }
    wallet.vault.save()
    return doc["pending_key"]


def queue_rotation(
    wallet: Wallet,
    old_token: Token,
    old_pin: str,
    new_token: Token,
    new_pin: str,
    *,
    key_cert_der: bytes | None,
    now_s: int,
) -> dict:
    """Sign the new key's proof (new token) and the rotate message (old token); put it in the outbox."""
    doc = wallet.doc
    pending = doc["pending_key"]
    assert pending and not queued_rotation(doc), "prepare first, and only one rotation at a time"
    proof = _key_proof(wallet, new_token, new_pin, KeyRecord.from_json(pending["key"]), key_cert_der, now_s)
    pending["counter"] = FIRST_COUNTER  # saved with the outbox entry by sign_and_queue
    entry = wallet.sign_and_queue(old_token, old_pin, ROTATE, {"new_key": proof.to_json()}, now_s=now_s)
    pending["msg_id"] = entry["msg_id"]
    wallet.vault.save()
    return entry


def _key_proof(
    wallet: Wallet, token: Token, pin: str, key: KeyRecord, key_cert_der: bytes | None, now_s: int
) -> Envelope:
    body = {"public_key": b64url_encode(key.spki_der), "alg": key.algorithm, "replaces": wallet.kid}
    if key_cert_der is not None:
        body["key_cert"] = b64url_encode(key_cert_der)
    new_kid = key_id(key.spki_der)
    payload = build_payload(
        KEY_PROOF,
        aud=wallet.doc["center"]["center_id"],
        kid=new_kid,
        msg_id=new_message_id(),
        ctr=FIRST_COUNTER,
        body=body,
        now_s=now_s,
        lifetime_s=LIFETIME_S[ROTATE],
    )
    return seal(payload, alg=key.algorithm, kid=new_kid, sign=lambda data: token.sign(key, data, pin))
