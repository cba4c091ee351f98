"""Receipt verification benchmark: one log receipt (inclusion proof + signed tree head) vs one raw
P-256 signature check, on one core, in the same run.

    .venv/bin/python bench/bench_receipts.py [--tree-size 1000000] [--rounds 2000] [--repeats 5]

Builds a log of --tree-size leaves (one of them the entry of a real signed payment request, the
rest stand-in leaf hashes), computes only the perfect subtrees the proof needs, signs one tree head
with a P-256 key (cryptography, as the center's token would), builds the receipt the center sends
and times `paywire.receipts.check_receipt` on it: parsing the request, rebuilding the leaf,
verifying the head's signature and the ~20-hash proof. Prints the median time per receipt (median
of --repeats runs of --rounds calls each), the same for one raw ECDSA P-256 verify of a payload of
the same size, their ratio, and the receipt's size in bytes (compact JSON). Goal: < 1 ms.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from paywire import merkle
from paywire.algorithms import ES256, P256_ORDER, key_id
from paywire.envelope import Envelope, seal
from paywire.log_entry import entry_fields, entry_leaf_hash
from paywire.messages import PAY, build_payload
from paywire.receipts import build_log_receipt, check_receipt
from paywire.tree_head import GENESIS_HEAD_SHA256, build_tree_head_payload

CENTER_ID = "center-bench.example"
NOW_S = 1_767_225_600
MAX_ROUNDS = 1_000_000


def _spki(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signer(key):
    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return encode_dss_signature(r, min(s, P256_ORDER - s))

    return sign


def _median_us(call, rounds: int, repeats: int) -> float:
    """Median over `repeats` runs of the mean time of one call in a run of `rounds` calls."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(rounds):
            call()
        runs.append((time.perf_counter_ns() - start) / rounds / 1000)
    return statistics.median(runs)


def build_receipt(tree_size: int, center_key, member_key) -> tuple[dict, Envelope]:
    """A receipt for a payment at leaf index ~0.78 * tree_size, and the payment request."""
    assert 2 <= tree_size <= merkle.MAX_TREE_SIZE
    request = seal(
        build_payload(
            PAY,
            aud=CENTER_ID,
            kid=key_id(_spki(member_key)),
            msg_id="pay-bench-0000000001",
            ctr=1,
            body={
                "payee": "S-0123456789abcdef",
                "payee_name": "Corner Shop",
                "amount_minor": 500,
                "currency": "JPY",
                "order_ref": "order-1",
            },
            now_s=NOW_S,
        ),
        alg=ES256,
        kid=key_id(_spki(member_key)),
        sign=_signer(member_key),
    )
    index = (tree_size * 7) // 9
    action = {
        "action": "paid",
        "payment_id": "P-0123456789abcdef",
        "amount_minor": 500,
        "balance_minor": 9500,
    }
    row = {
        "seq": index + 1,
        "created_at_ms": NOW_S * 1000,
        "kid": request.kid,
        "alg": request.alg,
        "msg_type": PAY,
        "msg_id": "pay-bench-0000000001",
        "payload": request.payload,
        "signature": request.sig,
    }
    # Stand-in leaves for everyone else's entries: any 32-byte values make the same tree shape.
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(tree_size)]
    leaves[index] = entry_leaf_hash(entry_fields(row, action))
    # Only the perfect subtrees the proof needs (a perfect subtree's hash is the root of its leaves).
    nodes = {
        (level, at): merkle.root_of(leaves[at << level : (at + 1) << level])
        for level, at in merkle.inclusion_keys(index, tree_size)
    }
    head = seal(
        build_tree_head_payload(
            center_kid=key_id(_spki(center_key)),
            center_id=CENTER_ID,
            tree_size=tree_size,
            root_hash=merkle.root_of(leaves),
            timestamp_ms=NOW_S * 1000,
            prev_head_sha256=GENESIS_HEAD_SHA256,
        ),
        alg=ES256,
        kid=key_id(_spki(center_key)),
        sign=_signer(center_key),
    )
    receipt = build_log_receipt(
        seq=row["seq"],
        created_at_ms=row["created_at_ms"],
        kid=row["kid"],
        alg=row["alg"],
        msg_type=PAY,
        msg_id=row["msg_id"],
        action=action,
        proof=merkle.inclusion_proof(index, tree_size, nodes),
        tree_head=head.to_json(),
    )
    return receipt, request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree-size", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    assert 2 <= args.tree_size <= merkle.MAX_TREE_SIZE and 1 <= args.rounds <= MAX_ROUNDS
    assert 1 <= args.repeats <= 100

    center_key, member_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    started = time.perf_counter()
    receipt, request = build_receipt(args.tree_size, center_key, member_key)
    built_s = time.perf_counter() - started
    text = json.dumps(receipt, separators=(",", ":"))
    center_spki = _spki(center_key)

    def verify_receipt() -> None:
        check_receipt(
            receipt, center_spki=center_spki, center_alg=ES256, request=request, center_id=CENTER_ID
        )

    def verify_receipt_text() -> None:
        check_receipt(
            json.loads(text), center_spki=center_spki, center_alg=ES256, request=request, center_id=CENTER_ID
        )

    head_payload = Envelope.from_json(receipt["tree_head"]).payload
    head_sig = Envelope.from_json(receipt["tree_head"]).sig
    public_key, ecdsa = center_key.public_key(), ec.ECDSA(hashes.SHA256())

    def raw_verify() -> None:
        public_key.verify(head_sig, head_payload, ecdsa)

    verify_receipt()  # refuses loudly before anything is timed if the receipt does not verify
    raw_us = _median_us(raw_verify, args.rounds, args.repeats)
    receipt_us = _median_us(verify_receipt, args.rounds, args.repeats)
    text_us = _median_us(verify_receipt_text, args.rounds, args.repeats)
    raw_again_us = _median_us(raw_verify, args.rounds, args.repeats)  # the machine is shared: bracket it
    raw_median_us = statistics.median([raw_us, raw_again_us])

    print(
        f"tree of {args.tree_size:,} leaves built in {built_s:.1f} s; proof of {len(receipt['proof'])} hashes"
    )
    print(
        f"receipt size: {len(text.encode())} bytes (compact JSON; "
        f"tree head {len(json.dumps(receipt['tree_head']))})"
    )
    print(
        f"raw P-256 verify (head payload, {len(head_payload)} bytes): {raw_median_us:.1f} us "
        f"(before {raw_us:.1f}, after {raw_again_us:.1f})"
    )
    print(
        f"check_receipt (parsed receipt): {receipt_us:.1f} us = {receipt_us / raw_median_us:.2f} x raw verify"
    )
    print(f"check_receipt (from JSON text): {text_us:.1f} us = {text_us / raw_median_us:.2f} x raw verify")
    print(f"goal < 1000 us: {'met' if max(receipt_us, text_us) < 1000 else 'NOT met'}")


if __name__ == "__main__":
    main()
