"""The center certificate wallets pin, and what it says about the center.

`center-cert.pem` is the self-signed TLS certificate of the center. Besides
the usual names it carries a private extension holding the SubjectPublicKeyInfo
of the center's receipt-signing key (which lives on the center's token), and
its subject CN is the center id that signed messages use as audience. One
pinned PEM therefore gives a wallet both the TLS trust anchor and the key that
checks its receipts.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from paywire.algorithms import algorithm_for_key, key_id, load_public_key

# 2.25.<UUID> is the arc for private OIDs that need no registration.
RECEIPT_KEY_OID = x509.ObjectIdentifier("2.25.111060597276157756867596700772769877186")


@dataclass(frozen=True)
class CenterIdentity:
    center_id: str
    receipt_spki: bytes
    receipt_alg: str
    cert_pem: bytes

    @property
    def receipt_kid(self) -> str:
        return key_id(self.receipt_spki)


def read_center_certificate(cert_pem: bytes) -> CenterIdentity:
    """Parse a pinned center certificate; ValueError with a clear message if it is not one."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError("not a PEM certificate: pass the center-cert.pem written by `center init`") from None
    try:
        receipt_spki = cert.extensions.get_extension_for_oid(RECEIPT_KEY_OID).value.value
    except x509.ExtensionNotFound:
        raise ValueError(
            "this certificate names no receipt key: it is not a tokenpay center certificate"
        ) from None
    center_id = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    algorithm = algorithm_for_key(serialization.load_der_public_key(receipt_spki))
    load_public_key(receipt_spki, algorithm)  # refuses keys the wire format would not verify
    return CenterIdentity(
        center_id=center_id,
        receipt_spki=receipt_spki,
        receipt_alg=algorithm,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
    )
