"""Operator and auditor accounts: parties whose token keys sign operator requests.

An operator or auditor is a row in `parties` (role 'operator' or 'auditor',
no address, no ledger account: they hold no money) and its key in `keys`,
exactly like a member's, so the same signed pipeline verifies their requests.
The first one is added by the local administrator (`center operator add`),
who has the data directory; the action is recorded in the audit chain.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import Connection, Engine, insert, select

from center.errors import ApiError
from center.ledger import audit
from center.ledger.book import new_id
from center.storage.db import keys, parties
from paywire.algorithms import ED25519, ES256, RS256, RSA_MAX_BITS, RSA_MIN_BITS, key_id, load_public_key
from paywire.errors import WireError

OPERATOR_ROLES = ("operator", "auditor")
# Operators and auditors: A- since payouts and operators both had O- (operators made before keep
# their O- ids; only the center parses them). Payouts keep O-: store wallets check that form.
OPERATOR_ID_PREFIX = "A"
MAX_PEM_BYTES = 16 * 1024
MAX_NAME_CHARS = 200
MAX_LISTED = 1000
DEFAULT_NAME = "operator"


def operator_id_new() -> str:
    return new_id(OPERATOR_ID_PREFIX)


def spki_from_pem(pem: bytes) -> tuple[bytes, str]:
    """The DER SubjectPublicKeyInfo of a PEM public key and the algorithm pinned for it.

    P-256 -> ES256, Ed25519 -> Ed25519, RSA 2048..8192 bits -> RS256 (PKCS#1 v1.5,
    what RSA tokens and cards sign with); anything else is refused.
    """
    if len(pem) > MAX_PEM_BYTES:
        raise ApiError("bad_public_key", f"the public key file is larger than {MAX_PEM_BYTES} bytes")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ApiError("bad_public_key", "not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    algorithm = _algorithm_for(key)
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        load_public_key(spki, algorithm)  # the same checks the verifier applies
    except WireError as error:
        raise ApiError("bad_public_key", error.message) from None
    return spki, algorithm


def _algorithm_for(key) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ApiError("unsupported_algorithm", f"EC keys must be on P-256, not {key.curve.name}")
        return ES256
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ED25519
    if isinstance(key, rsa.RSAPublicKey):
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise ApiError(
                "unsupported_algorithm",
                f"RSA keys must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits, not {key.key_size}",
            )
        return RS256
    raise ApiError(
        "unsupported_algorithm",
        f"{type(key).__name__.lstrip('_')} keys are not accepted: use P-256, Ed25519 or RSA-2048+",
    )


def check_name(name: str) -> str:
    if (
        not name.strip()
        or len(name) > MAX_NAME_CHARS
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)
    ):
        raise ApiError("invalid_request", f"the name must be 1 to {MAX_NAME_CHARS} printable characters")
    return name


def add_operator(engine: Engine, pem: bytes, *, role: str, name: str, added_by: str, now_ms: int) -> dict:
    """Create the party and its key; refuse a key that is already enrolled (as anything)."""
    if role not in OPERATOR_ROLES:
        raise ApiError("invalid_request", f"role must be one of {', '.join(OPERATOR_ROLES)}, not {role!r}")
    spki, algorithm = spki_from_pem(pem)
    name = check_name(name)
    kid = key_id(spki)
    with engine.begin() as conn:
        if conn.execute(select(keys.c.kid).where(keys.c.kid == kid)).first() is not None:
            raise ApiError(
                "key_already_enrolled", f"key {kid} is already enrolled; each account needs its own key"
            )
        operator_id = operator_id_new()
        conn.execute(
            insert(parties).values(
                id=operator_id,
                role=role,
                name=name,
                address="",
                birth_date=None,
                bank_account=None,
                status="active",
                created_at_ms=now_ms,
            )
        )
        # last_ctr 0: the operator's first signed request may use counter 1.
        conn.execute(
            insert(keys).values(
                kid=kid,
                party_id=operator_id,
                algorithm=algorithm,
                spki=spki,
                status="active",
                last_ctr=0,
                created_at_ms=now_ms,
            )
        )
        view = {
            "action": "operator_added",
            "operator_id": operator_id,
            "kid": kid,
            "role": role,
            "algorithm": algorithm,
            "name": name,
        }
        request = {"operator_id": operator_id, "kid": kid, "role": role, "name": name, "added_by": added_by}
        audit.append_local(
            conn,
            actor=added_by,
            request=request,
            msg_type="operator_add",
            msg_id=operator_id,
            action=view,
            now_ms=now_ms,
        )
    return {k: view[k] for k in ("operator_id", "kid", "role", "algorithm", "name")}


def list_operators(conn: Connection, limit: int = MAX_LISTED) -> list[dict]:
    """Every operator and auditor key, oldest first: who, which key, which role, whether usable."""
    assert 0 < limit <= MAX_LISTED
    rows = conn.execute(
        select(
            parties.c.id,
            parties.c.name,
            parties.c.role,
            parties.c.status.label("party_status"),
            keys.c.kid,
            keys.c.algorithm,
            keys.c.status.label("key_status"),
            keys.c.created_at_ms,
        )
        .join(keys, keys.c.party_id == parties.c.id)
        .where(parties.c.role.in_(OPERATOR_ROLES))
        .order_by(keys.c.created_at_ms, keys.c.kid)
        .limit(limit)
    )
    return [
        {
            "operator_id": r.id,
            "name": r.name,
            "role": r.role,
            "kid": r.kid,
            "algorithm": r.algorithm,
            "status": r.key_status if r.party_status == "active" else r.party_status,
            "created_at_ms": r.created_at_ms,
        }
        for r in rows
    ]
