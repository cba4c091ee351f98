"""A card issuer's certificate for this wallet's key, sent with `wallet enroll --key-cert`.

The wallet checks only what it alone can know: that the certificate is well
formed and names this wallet's key. Whether the issuer is trusted and the
certificate valid is the center's judgement (center.keys.issuer_policy).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from hostkit.cli import CliError, read_option_file
from paywire.algorithms import key_id
from paywire.fields import MAX_KEY_CERT_BYTES

MAX_FILE_BYTES = 4 * MAX_KEY_CERT_BYTES  # PEM is base64 plus headers


def read_key_certificate(path: Path, spki_der: bytes) -> bytes:
    """The certificate's DER, after checking it certifies `spki_der`; CliError otherwise."""
    cert = _load(
        read_option_file(path, "--key-cert", max_bytes=MAX_FILE_BYTES, what="a key certificate"), path
    )
    try:
        certified = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, UnsupportedAlgorithm):
        raise CliError(f"--key-cert {path} holds a key of a type the wallet does not know") from None
    if certified != spki_der:
        raise CliError(
            f"--key-cert {path} is for key {key_id(certified)[:16]}..., not this wallet's key "
            f"{key_id(spki_der)[:16]}...: certify the key `wallet export-public-key` shows"
        )
    der = cert.public_bytes(serialization.Encoding.DER)
    if len(der) > MAX_KEY_CERT_BYTES:
        raise CliError(
            f"--key-cert {path} is {len(der)} bytes of DER; a center takes at most {MAX_KEY_CERT_BYTES}"
        )
    return der


def _load(data: bytes, path: Path) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certs = x509.load_pem_x509_certificates(data)
            if len(certs) != 1:
                raise CliError(f"--key-cert {path} holds {len(certs)} certificates; give only the key's own")
            return certs[0]
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CliError(f"--key-cert {path} is not an X.509 certificate (PEM or DER)") from None
