"""The center's identity: its TLS certificate (see paywire.center_cert) and its signer (tree heads,
refusals, notices; receipts before the log became a Merkle tree)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from paywire.algorithms import key_id
from paywire.center_cert import RECEIPT_KEY_OID
from paywire.envelope import Envelope, seal
from paywire.tree_head import build_tree_head_payload
from tokens.base import KeyRecord

CERT_VALIDITY_DAYS = 825
# Valid from a little earlier: a wallet whose clock is a few minutes behind still accepts it.
CERT_BACKDATE_MINUTES = 5


def make_tls_certificate(
    center_id: str, receipt_spki: bytes, dns_names: list[str], ip_addresses: list[str]
) -> tuple[bytes, bytes]:
    """Return (certificate PEM, private key PEM) for the center's TLS endpoint."""
    tls_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, center_id),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tokenpay settlement center"),
        ]
    )
    now_utc = dt.datetime.now(dt.UTC)
    alt_names = [x509.DNSName(n) for n in dns_names] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now_utc - dt.timedelta(minutes=CERT_BACKDATE_MINUTES))
        .not_valid_after(now_utc + dt.timedelta(days=CERT_VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(tls_key.public_key()), critical=False)
        .add_extension(x509.UnrecognizedExtension(RECEIPT_KEY_OID, receipt_spki), critical=False)
        .sign(tls_key, hashes.SHA256())
    )
    key_pem = tls_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class CenterSigner:
    """Signs what the center issues (tree heads, refusals, notices) with its token key."""

    def __init__(self, sign_bytes: Callable[[bytes], bytes], key: KeyRecord, center_id: str):
        self._sign_bytes = sign_bytes
        self.center_id = center_id
        self.kid = key_id(key.spki_der)
        self.alg = key.algorithm
        self.spki = key.spki_der

    def sign_tree_head(
        self, *, tree_size: int, root_hash: bytes, timestamp_ms: int, prev_head_sha256: str
    ) -> Envelope:
        """One signed tree head per commit group: what every receipt of the group proves against."""
        return self.seal(
            build_tree_head_payload(
                center_kid=self.kid,
                center_id=self.center_id,
                tree_size=tree_size,
                root_hash=root_hash,
                timestamp_ms=timestamp_ms,
                prev_head_sha256=prev_head_sha256,
            )
        )

    def seal(self, payload: dict) -> Envelope:
        """Sign a payload the center issues (tree head, refusal, notice) with the token key."""
        return seal(payload, alg=self.alg, kid=self.kid, sign=self._sign_bytes)

    def __repr__(self) -> str:
        return f"CenterSigner(center_id={self.center_id!r}, kid={self.kid[:16]}...)"
