"""The log's read API as both sides name it: its paths, the header that carries the signed
LOG_QUERY, the query's longest life, and how a proof travels (a list of base64url hashes).

The center (center.pipeline.log_queries) answers with these names and the wallet
(token_wallet.log_audit) asks with them: one place, so the two cannot drift apart.
"""

from __future__ import annotations

from paywire import merkle
from paywire.errors import WireError
from paywire.receipts import proof_hash

STH_PATH = "/v1/log/sth"
CONSISTENCY_PATH = "/v1/log/consistency"
INCLUSION_PATH = "/v1/log/inclusion"
QUERY_HEADER = "Tokenpay-Query"
# A log query is made to be sent at once: a captured one is useful for five minutes at most.
MAX_QUERY_LIFETIME_S = 300


def proof_hashes(value: object) -> list[bytes]:
    """A proof as sent: at most merkle.MAX_PROOF_HASHES hashes, each in its one base64url spelling."""
    if not isinstance(value, list) or len(value) > merkle.MAX_PROOF_HASHES:
        raise WireError("log_proof_invalid", f"a proof is a list of at most {merkle.MAX_PROOF_HASHES} hashes")
    return [proof_hash(item) for item in value]
