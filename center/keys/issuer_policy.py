"""The center's enrollment policy for issuer-certified keys, and where it is kept.

Policies:
- "any" (the default): an enrollment needs no key certificate. When the
  center has an issuer CA configured and an enrollment still carries a
  certificate, that certificate is checked and a bad one is refused: the
  member claims the key is certified, the center can judge the claim, and the
  receipt then states it as checked; recording a false claim as evidence would
  mislead whoever reads the audit trail. Without a configured CA the
  certificate cannot be judged: it is accepted unchecked (it stays in the
  signed enrollment in the audit trail) and the receipt says nothing about it.
- "issuer_certified": an enrollment without a valid certificate chain from its
  own key to the configured issuer CA is refused with `key_not_certified`.

The policy applies where a key is enrolled: `check_enrollment_certificate` is
the one function every such path calls (enrollment; key rebinding and
rotation enroll new keys too). Keys enrolled before a policy change stay as
they are; an operator revokes them if needed.

Configuration (config.json, see center.storage.config): `issuer_policy`,
`issuer_ca_file` and `issuer_intermediates_file`, file names relative to the
data directory (the CA certificates are copied into D/issuer/).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from center.errors import ApiError
from center.keys import issuer
from center.storage.config import CenterConfig
from paywire.bodies import check_key_cert_field
from paywire.errors import WireError

ANY = "any"
ISSUER_CERTIFIED = "issuer_certified"
POLICIES = (ANY, ISSUER_CERTIFIED)
ISSUER_DIR = "issuer"
CA_FILE = f"{ISSUER_DIR}/ca-cert.pem"
INTERMEDIATES_FILE = f"{ISSUER_DIR}/intermediates.pem"


@dataclass(frozen=True)
class IssuerPolicy:
    mode: str = ANY
    trusted: tuple[x509.Certificate, ...] = ()
    intermediates: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        assert self.mode in POLICIES, self.mode
        assert len(self.trusted) <= issuer.MAX_TRUSTED_CAS
        assert len(self.intermediates) <= issuer.MAX_INTERMEDIATES
        assert self.trusted or not self.intermediates, "intermediates without a trusted CA"
        assert self.trusted or self.mode == ANY, "issuer_certified needs a configured issuer CA"


NO_POLICY = IssuerPolicy()


def enrollment_key_cert(body: dict) -> bytes | None:
    """The DER certificate an enroll body carries (paywire.bodies checked its form), or None."""
    if "key_cert" not in body:
        return None
    try:
        return check_key_cert_field(body["key_cert"])
    except WireError as error:
        raise ApiError.from_wire(error) from None


def check_enrollment_certificate(
    policy: IssuerPolicy | None, spki_der: bytes, cert_der: bytes | None, now_s: int
) -> dict | None:
    """Raise ApiError('key_not_certified') unless `policy` admits the key `spki_der`.

    Returns the checked certificate's facts (center.keys.issuer.describe) for the
    receipt, or None when no certificate was checked. Pure: no database, no clock.
    """
    policy = policy or NO_POLICY
    if cert_der is None:
        if policy.mode == ISSUER_CERTIFIED:
            raise ApiError(
                "key_not_certified",
                "this center accepts only keys certified by its card issuer and the "
                "enrollment carries no key certificate (wallet enroll --key-cert)",
            )
        return None
    if not policy.trusted:
        return None  # cannot be judged here; see the module docstring
    try:
        cert = issuer.verify_key_certificate(
            cert_der, spki_der, trusted=policy.trusted, intermediates=policy.intermediates, now_s=now_s
        )
    except issuer.IssuerError as error:
        raise ApiError("key_not_certified", str(error)) from None
    return issuer.describe(cert)


def policy_of(config: CenterConfig) -> IssuerPolicy:
    """The policy a configured center enforces; a broken configuration stops the center from starting."""
    return load_policy(
        config.data_dir, config.issuer_policy, config.issuer_ca_file, config.issuer_intermediates_file
    )


def load_policy(data_dir: Path, mode: str, ca_file: str, intermediates_file: str) -> IssuerPolicy:
    if mode not in POLICIES:
        raise ValueError(f"config.json: issuer_policy must be one of {', '.join(POLICIES)}, not {mode!r}")
    if not ca_file:
        if mode == ISSUER_CERTIFIED:
            raise ValueError(
                "config.json: issuer_policy is issuer_certified but no issuer CA is configured "
                "(run `center issuer trust`)"
            )
        return IssuerPolicy(mode=mode)
    try:
        trusted = tuple(
            issuer.load_pem_certificates(
                _read(data_dir, ca_file), "the issuer CA file", issuer.MAX_TRUSTED_CAS
            )
        )
        intermediates = tuple(
            issuer.load_pem_certificates(
                _read(data_dir, intermediates_file), "the issuer intermediates file", issuer.MAX_INTERMEDIATES
            )
            if intermediates_file
            else ()
        )
        for cert in trusted + intermediates:
            issuer.check_ca_profile(cert)
    except issuer.IssuerError as error:
        raise ValueError(f"issuer configuration in {data_dir}: {error}") from None
    # Not checked for expiry here: an expired CA must not stop the center; its
    # enrollments are refused (key_not_certified names the expired CA).
    return IssuerPolicy(mode=mode, trusted=trusted, intermediates=intermediates)


def _read(data_dir: Path, name: str) -> bytes:
    path = data_dir / name  # an absolute name stays absolute
    try:
        with open(path, "rb") as handle:
            return handle.read(issuer.MAX_PEM_BYTES + 1)
    except OSError as error:
        raise ValueError(f"cannot read the issuer file {path}: {error.strerror}") from None
