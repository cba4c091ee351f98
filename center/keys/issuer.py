"""Issuer-certified keys: a card issuer's CA, key certificates, and their check.

A card issuer runs a small CA at its issuance station. It certifies each
token's public key in an X.509 end-entity certificate; a center configured
with the issuer's CA certificate can then insist that every enrolling key
carries such a certificate (center.keys.issuer_policy).

Pure functions over cryptography's x509 API: nothing here touches files,
clocks or the database (times come in as `now_s`, Unix seconds). Path
validation is cryptography's own (x509.verification: signatures, validity of
every certificate at `now`, CA flags, keyCertSign, path length, unknown
critical extensions); the checks done here first only give each common
failure its own plain message.

Chains: the end-entity certificate, at most one intermediate CA the center
knows, then a CA certificate the center trusts.

Long because making certificates (create_ca, certify_key: the issuance station) and checking
them (verify_key_certificate: the center) share one profile (key usage, path length, validity,
accepted keys), and keeping both beside it is what keeps them from drifting apart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from paywire.algorithms import (
    algorithm_for_key,
    check_rsa_exponent,
    key_id,
    load_public_key,
)
from paywire.errors import WireError
from paywire.fields import MAX_KEY_CERT_BYTES

MAX_CA_DAYS = 3650  # an issuer CA lives at most ten years
DEFAULT_CA_DAYS = 3650
MAX_KEY_CERT_DAYS = 1825  # a card's key certificate at most five years
DEFAULT_KEY_CERT_DAYS = 1095
MAX_PEM_BYTES = 64 * 1024
MAX_NAME_CHARS = 64  # X.520 upper bound for a common name
MAX_TRUSTED_CAS = 4  # room for a CA rollover: old and new side by side
MAX_INTERMEDIATES = 4
MAX_INTERMEDIATES_IN_CHAIN = 1
# Certificates start a little in the past so a verifier whose clock is a few
# minutes behind the issuance station does not see them as not yet valid.
BACKDATE_S = 300
# The root may sign one intermediate CA; an intermediate signs key certificates only.
ROOT_PATH_LENGTH = MAX_INTERMEDIATES_IN_CHAIN
MIN_CA_PASSWORD_CHARS = 12
# A key certificate with an extended key usage must allow client use: one made
# for a TLS server or code signing is not a payment key's certificate.
ALLOWED_EKUS = (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)


class IssuerError(Exception):
    """Why a certificate or key is refused: one line for people."""


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def create_ca(
    name: str, *, days: int, now_s: int, parent: CertificateAuthority | None = None
) -> CertificateAuthority:
    """A new P-256 CA: self-signed (root), or signed by `parent` (intermediate)."""
    _check_name(name, "CA name")
    _check_days(days, MAX_CA_DAYS, "--days")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_after = _time(now_s + days * 86400)
    if parent is not None:
        check_ca_certificate(parent.cert, now_s)
        if _extension(parent.cert, x509.BasicConstraints).path_length == 0:
            raise IssuerError(
                f"{_subject(parent.cert)} may issue key certificates only, not CAs (path length 0)"
            )
        _check_within(not_after, parent.cert, "the parent CA")
        _check_key_pair(parent)
    issuer_name = parent.cert.subject if parent else subject
    issuer_public_key = parent.key.public_key() if parent else key.public_key()
    builder = (
        _base_builder(subject, issuer_name, key.public_key(), now_s, not_after)
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=0 if parent else ROOT_PATH_LENGTH), critical=True
        )
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False)
    )
    cert = builder.sign(parent.key if parent else key, hashes.SHA256())
    return CertificateAuthority(cert=cert, key=key)


def certify_key(
    ca: CertificateAuthority, spki_der: bytes, *, subject: str, days: int, now_s: int
) -> x509.Certificate:
    """The end-entity certificate binding `spki_der` (a key the center accepts) to `subject`."""
    _check_name(subject, "--subject")
    _check_days(days, MAX_KEY_CERT_DAYS, "--days")
    check_ca_certificate(ca.cert, now_s)
    _check_key_pair(ca)
    public_key = _acceptable_public_key(spki_der)
    not_after = _time(now_s + days * 86400)
    _check_within(not_after, ca.cert, "the issuer CA")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        _base_builder(name, ca.cert.subject, public_key, now_s, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(_authority_key_id(ca.cert), critical=False)
    )
    return builder.sign(ca.key, hashes.SHA256())


def default_days(ca_cert: x509.Certificate, now_s: int, wanted_days: int) -> int:
    """`wanted_days`, or fewer when the CA expires sooner: a certificate never outlives its issuer."""
    remaining_days = int(ca_cert.not_valid_after_utc.timestamp() - now_s) // 86400
    return max(1, min(wanted_days, remaining_days))


def verify_key_certificate(
    cert_der: bytes,
    spki_der: bytes,
    *,
    trusted: tuple[x509.Certificate, ...],
    intermediates: tuple[x509.Certificate, ...],
    now_s: int,
) -> x509.Certificate:
    """Return the certificate if it certifies exactly `spki_der` and chains to `trusted` at `now_s`."""
    assert 1 <= len(trusted) <= MAX_TRUSTED_CAS, "a center checks key certificates only with a configured CA"
    assert len(intermediates) <= MAX_INTERMEDIATES
    if not cert_der or len(cert_der) > MAX_KEY_CERT_BYTES:
        raise IssuerError(f"the key certificate must be 1 to {MAX_KEY_CERT_BYTES} bytes of DER")
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError:
        raise IssuerError("the key certificate is not a DER X.509 certificate") from None
    certified_spki = certified_key(cert)
    if certified_spki != spki_der:
        raise IssuerError(
            f"the certificate is for another key (kid {key_id(certified_spki)[:16]}...), "
            f"not the enrolling key (kid {key_id(spki_der)[:16]}...)"
        )
    _check_validity(cert, now_s, "the key certificate")
    check_end_entity_profile(cert)
    _verify_chain(cert, trusted, intermediates, now_s)
    return cert


def certified_key(cert: x509.Certificate) -> bytes:
    """The SubjectPublicKeyInfo DER a certificate binds (canonical re-encoding)."""
    try:
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise IssuerError("the certificate holds a public key of a type this center does not know") from None
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_end_entity_profile(cert: x509.Certificate) -> None:
    """An end entity that may sign: not a CA, digitalSignature, no foreign purpose."""
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        raise IssuerError("the key certificate is a CA certificate, not a certificate for a card key")
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.digital_signature:
        raise IssuerError("the key certificate does not allow digitalSignature (key usage)")
    purposes = _extension(cert, x509.ExtendedKeyUsage)
    if purposes is not None and not any(oid in ALLOWED_EKUS for oid in purposes):
        raise IssuerError("the key certificate was made for another purpose (extended key usage)")


def check_ca_certificate(cert: x509.Certificate, now_s: int) -> None:
    """A certificate that may issue certificates, valid now."""
    check_ca_profile(cert)
    _check_validity(cert, now_s, f"the CA certificate {_subject(cert)}")


def check_ca_profile(cert: x509.Certificate) -> None:
    """basicConstraints CA and keyUsage keyCertSign, whatever the time."""
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise IssuerError(f"{_subject(cert)} is not a CA certificate (basicConstraints CA is not true)")
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.key_cert_sign:
        raise IssuerError(f"{_subject(cert)} may not sign certificates (key usage keyCertSign is missing)")
    _check_ca_key_cost(cert)


def _check_ca_key_cost(cert: x509.Certificate) -> None:
    """An RSA CA key must have e = 65537 like every key the center verifies: each enrollment with a
    key certificate checks a signature by it, and a large exponent makes that check dear."""
    try:
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return  # the chain check refuses a key it cannot use
    if isinstance(public_key, rsa.RSAPublicKey):
        try:
            check_rsa_exponent(public_key)
        except WireError as error:
            raise IssuerError(f"{_subject(cert)}: {error.message}") from None


def check_intermediate(cert: x509.Certificate, trusted: tuple[x509.Certificate, ...], now_s: int) -> None:
    """An intermediate CA the center may use: a CA issued directly by one of the trusted CAs."""
    check_ca_certificate(cert, now_s)
    for anchor in trusted:
        try:
            cert.verify_directly_issued_by(anchor)
            return
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            continue  # not this anchor (other name, other key); another may have issued it
    raise IssuerError(f"the intermediate {_subject(cert)} is not issued by a trusted CA")


def describe(cert: x509.Certificate) -> dict:
    """Stable facts about a certificate for receipts, JSON output and logs."""
    return {
        "serial": format(cert.serial_number, "x"),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before_s": int(cert.not_valid_before_utc.timestamp()),
        "not_after_s": int(cert.not_valid_after_utc.timestamp()),
        "sha256": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    }


def load_pem_certificates(data: bytes, what: str, max_count: int) -> list[x509.Certificate]:
    if len(data) > MAX_PEM_BYTES:
        raise IssuerError(f"{what} is larger than {MAX_PEM_BYTES} bytes")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise IssuerError(f"{what} holds no PEM certificate") from None
    if not 1 <= len(certs) <= max_count:
        raise IssuerError(f"{what} holds {len(certs)} certificates; at most {max_count} are allowed")
    return certs


def load_public_key_pem(data: bytes, what: str) -> bytes:
    """The SPKI DER of a PEM public key (as `wallet export-public-key` writes it)."""
    if len(data) > MAX_PEM_BYTES:
        raise IssuerError(f"{what} is larger than {MAX_PEM_BYTES} bytes")
    try:
        public_key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise IssuerError(f"{what} is not a PEM public key (use `wallet export-public-key`)") from None
    spki_der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _acceptable_public_key(spki_der)
    return spki_der


def encrypt_ca_key(key: ec.EllipticCurvePrivateKey, password: str) -> bytes:
    """PKCS#8 PEM under the password (readable by openssl as well)."""
    if len(password) < MIN_CA_PASSWORD_CHARS:
        # PKCS#8 from cryptography uses PBKDF2 with few rounds: only a long password resists guessing.
        raise IssuerError(f"the CA key password must have at least {MIN_CA_PASSWORD_CHARS} characters")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    )


def load_ca(cert_pem: bytes, key_pem: bytes, password: str, now_s: int) -> CertificateAuthority:
    cert = load_pem_certificates(cert_pem, "the CA certificate file", 1)[0]
    if len(key_pem) > MAX_PEM_BYTES:
        raise IssuerError(f"the CA key file is larger than {MAX_PEM_BYTES} bytes")
    try:
        key = serialization.load_pem_private_key(key_pem, password=password.encode())
    except TypeError:
        raise IssuerError(
            "the CA key file is not encrypted; keep an issuer key only under a password"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise IssuerError("cannot open the CA key: wrong password or not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IssuerError("the CA key is not a P-256 key")
    authority = CertificateAuthority(cert=cert, key=key)
    _check_key_pair(authority)
    check_ca_certificate(cert, now_s)
    return authority


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# --- helpers ---------------------------------------------------------------------


def _verify_chain(cert, trusted, intermediates, now_s) -> None:
    current = [anchor for anchor in trusted if _valid_at(anchor, now_s)]
    if not current:
        raise IssuerError(
            f"the configured issuer CA {_subject(trusted[0])} is not valid now (it expires "
            f"{trusted[0].not_valid_after_utc:%Y-%m-%d}); the center operator must renew it"
        )
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store(list(trusted)))
        .time(_time(now_s))
        .max_chain_depth(MAX_INTERMEDIATES_IN_CHAIN)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=_end_entity_policy()
        )
    )
    try:
        chain = builder.build_client_verifier().verify(cert, list(intermediates)).chain
    except verification.VerificationError as error:
        raise IssuerError(
            f"the key certificate is not issued by the configured issuer CA ({_reason(error)})"
        ) from None
    # The verifier accepts a trusted certificate as its own chain; a key certificate never is one
    # (center issuer trust takes CA certificates only, and a CA is refused as a key certificate above).
    if len(chain) < 2:
        raise IssuerError(
            "the key certificate is itself a trusted certificate, not one issued by the issuer CA"
        )


def _end_entity_policy() -> verification.ExtensionPolicy:
    # Repeats check_end_entity_profile inside the verifier, so the chain it
    # accepts is judged by the same rules even if the checks above change.
    def constraints(_policy, _cert, value) -> None:
        if value is not None and value.ca:
            raise ValueError("end-entity certificate is a CA")

    def usage(_policy, _cert, value) -> None:
        if not value.digital_signature:
            raise ValueError("digitalSignature not allowed")

    def purposes(_policy, _cert, value) -> None:
        if value is not None and not any(oid in ALLOWED_EKUS for oid in value):
            raise ValueError("extended key usage excludes client use")

    agnostic = verification.Criticality.AGNOSTIC
    return (
        verification.ExtensionPolicy.permit_all()
        .may_be_present(x509.BasicConstraints, agnostic, constraints)
        .require_present(x509.KeyUsage, agnostic, usage)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, purposes)
    )


def _reason(error: verification.VerificationError) -> str:
    text = str(error).splitlines()[0] if str(error) else "validation failed"
    text = text.removeprefix("validation failed: ").removeprefix("candidates exhausted: ")
    return text.split(" (encountered processing", 1)[0][:200]


def _base_builder(
    subject, issuer_name, public_key, now_s: int, not_after: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_time(now_s - BACKDATE_S))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = _extension(ca_cert, x509.SubjectKeyIdentifier)
    if ski is not None:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _acceptable_public_key(spki_der: bytes):
    """Only keys the center can enroll get certified (P-256, Ed25519, RSA 2048-8192)."""
    try:
        algorithm = algorithm_for_key(serialization.load_der_public_key(spki_der))
        return load_public_key(spki_der, algorithm)
    except (ValueError, UnsupportedAlgorithm):
        raise IssuerError("the public key is not a valid SubjectPublicKeyInfo") from None
    except WireError as error:
        raise IssuerError(f"the public key cannot be enrolled at a center: {error.message}") from None


def _check_key_pair(ca: CertificateAuthority) -> None:
    if certified_key(ca.cert) != ca.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise IssuerError("the CA key does not belong to the CA certificate")


def _valid_at(cert: x509.Certificate, now_s: int) -> bool:
    return cert.not_valid_before_utc.timestamp() <= now_s <= cert.not_valid_after_utc.timestamp()


def _check_validity(cert: x509.Certificate, now_s: int, what: str) -> None:
    if now_s < cert.not_valid_before_utc.timestamp():
        raise IssuerError(f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now_s > cert.not_valid_after_utc.timestamp():
        raise IssuerError(f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def _check_within(not_after: dt.datetime, ca_cert: x509.Certificate, what: str) -> None:
    if not_after > ca_cert.not_valid_after_utc:
        raise IssuerError(f"{what} expires on {ca_cert.not_valid_after_utc:%Y-%m-%d}; choose fewer --days")


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        raise IssuerError(f"{what} must be 1 to {MAX_NAME_CHARS} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise IssuerError(f"{what} must not contain control characters")


def _check_days(days: int, limit: int, what: str) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= limit:
        raise IssuerError(f"{what} must be a whole number of days from 1 to {limit}")


def _extension(cert: x509.Certificate, kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # a malformed or duplicated extension
        raise IssuerError(f"{_subject(cert)} has a malformed {kind.__name__} extension") from None


def _subject(cert: x509.Certificate) -> str:
    return f"'{cert.subject.rfc4514_string()[:80]}'"


def _time(at_s: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(at_s, tz=dt.UTC)
