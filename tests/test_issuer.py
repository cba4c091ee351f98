"""Issuer-certified keys: the CA, key certificates and their check (center.keys.issuer,
center.keys.issuer_policy) with real keys, then the enrollment policy at the API level
(FastAPI TestClient, SQLite and PostgreSQL, the center's key on SoftHSM).
The command line and the end-to-end flow are in test_issuer_e2e.py."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fastapi.testclient import TestClient
from receipt_support import checked_by_center, receipt_result
from sqlalchemy import func, select
from support import SoftwareSigner

from center.api.app import create_app
from center.errors import STATUS_FOR_CODE, ApiError
from center.keys import issuer
from center.keys.identity import CenterSigner
from center.keys.issuer_policy import ANY, ISSUER_CERTIFIED, IssuerPolicy, check_enrollment_certificate
from center.pipeline.service import Center
from center.storage.db import audit_log, keys, make_engine, messages, migrate, parties
from paywire.bodies import check_key_cert_field
from paywire.envelope import Envelope, b64url_encode, seal
from paywire.errors import WireError
from paywire.fields import MAX_KEY_CERT_BYTES
from paywire.messages import new_message_id

NOW_S = int(time.time())
DAY_S = 86400


def spki_of(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def ca() -> issuer.CertificateAuthority:
    return issuer.create_ca("Example Card Issuer", days=3650, now_s=NOW_S)


@pytest.fixture(scope="module")
def other_ca() -> issuer.CertificateAuthority:
    return issuer.create_ca("Other Issuer", days=3650, now_s=NOW_S)


def certify(ca, spki_der: bytes, *, days: int = 365, now_s: int = NOW_S, subject: str = "card 0001") -> bytes:
    return issuer.der(issuer.certify_key(ca, spki_der, subject=subject, days=days, now_s=now_s))


def verify(
    cert_der: bytes, spki_der: bytes, trusted, *, intermediates=(), now_s: int = NOW_S
) -> x509.Certificate:
    return issuer.verify_key_certificate(
        cert_der, spki_der, trusted=tuple(trusted), intermediates=tuple(intermediates), now_s=now_s
    )


def refused(cert_der: bytes, spki_der: bytes, trusted, **options) -> str:
    with pytest.raises(issuer.IssuerError) as caught:
        verify(cert_der, spki_der, trusted, **options)
    return str(caught.value)


def hand_made(
    issuer_cert: x509.Certificate,
    issuer_key,
    public_key,
    *,
    ca: bool | None,
    digital_signature=True,
    key_cert_sign=False,
    eku=None,
    subject="hand made",
    days=30,
) -> x509.Certificate:
    """A certificate center.keys.issuer would never make: for the refusals."""
    now = dt.datetime.fromtimestamp(NOW_S, tz=dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(
            issuer_cert.subject
            if issuer_cert is not None
            else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        )
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


# --- the CA and the certificates it makes ----------------------------------------------


def test_ca_is_a_self_signed_p256_ca_limited_in_time(ca):
    cert = ca.cert
    assert isinstance(ca.key.curve, ec.SECP256R1)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 1
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    cert.verify_directly_issued_by(cert)
    lifetime_s = cert.not_valid_after_utc.timestamp() - NOW_S
    assert 3650 * DAY_S - 60 < lifetime_s <= 3650 * DAY_S
    with pytest.raises(issuer.IssuerError, match="1 to 3650"):
        issuer.create_ca("Too Long", days=3651, now_s=NOW_S)


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ed25519.Ed25519PrivateKey.generate(),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["p256", "ed25519", "rsa2048"],
)
def test_certified_key_verifies_for_every_key_type_the_center_takes(ca, make_key):
    spki = spki_of(make_key().public_key())
    cert_der = certify(ca, spki, days=30, subject="member 42")
    cert = verify(cert_der, spki, [ca.cert])
    assert cert.subject.rfc4514_string() == "CN=member 42"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert (
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    )
    assert 30 * DAY_S - 60 < cert.not_valid_after_utc.timestamp() - NOW_S <= 30 * DAY_S
    facts = issuer.describe(cert)
    assert facts["issuer"] == "CN=Example Card Issuer" and len(facts["sha256"]) == 64


def test_serials_are_random(ca):
    spki = SoftwareSigner().spki
    serials = {x509.load_der_x509_certificate(certify(ca, spki)).serial_number for _ in range(5)}
    assert len(serials) == 5 and all(serial.bit_length() > 64 for serial in serials)


def test_certify_refuses_what_cannot_become_a_good_certificate(ca):
    spki = SoftwareSigner().spki
    with pytest.raises(issuer.IssuerError, match="1 to 1825"):
        issuer.certify_key(ca, spki, subject="x", days=1826, now_s=NOW_S)
    with pytest.raises(issuer.IssuerError, match="choose fewer --days"):  # would outlive the CA
        issuer.certify_key(ca, spki, subject="x", days=1825, now_s=NOW_S + 3000 * DAY_S)
    with pytest.raises(issuer.IssuerError, match="1 to 64"):
        issuer.certify_key(ca, spki, subject="x" * 65, days=1, now_s=NOW_S)
    with pytest.raises(issuer.IssuerError, match="control"):
        issuer.certify_key(ca, spki, subject="card\n1", days=1, now_s=NOW_S)
    p384 = spki_of(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(issuer.IssuerError, match="cannot be enrolled"):
        issuer.certify_key(ca, p384, subject="x", days=1, now_s=NOW_S)
    rsa1024 = spki_of(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key())
    with pytest.raises(issuer.IssuerError, match="cannot be enrolled"):
        issuer.certify_key(ca, rsa1024, subject="x", days=1, now_s=NOW_S)
    mismatched = issuer.CertificateAuthority(cert=ca.cert, key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(issuer.IssuerError, match="does not belong"):
        issuer.certify_key(mismatched, spki, subject="x", days=1, now_s=NOW_S)


def test_ca_key_file_is_encrypted_and_needs_a_long_password(ca):
    with pytest.raises(issuer.IssuerError, match="at least 12"):
        issuer.encrypt_ca_key(ca.key, "short")
    key_pem = issuer.encrypt_ca_key(ca.key, "a long enough password")
    assert b"ENCRYPTED PRIVATE KEY" in key_pem
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(key_pem, password=None)
    loaded = issuer.load_ca(issuer.pem(ca.cert), key_pem, "a long enough password", NOW_S)
    assert spki_of(loaded.key.public_key()) == spki_of(ca.key.public_key())
    with pytest.raises(issuer.IssuerError, match="wrong password"):
        issuer.load_ca(issuer.pem(ca.cert), key_pem, "not the password!", NOW_S)
    clear = ca.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(issuer.IssuerError, match="not encrypted"):
        issuer.load_ca(issuer.pem(ca.cert), clear, "a long enough password", NOW_S)


# --- verification refusals --------------------------------------------------------------


def test_expired_and_not_yet_valid_certificates_are_refused(ca):
    spki = SoftwareSigner().spki
    cert_der = certify(ca, spki, days=10)
    assert verify(cert_der, spki, [ca.cert], now_s=NOW_S + 9 * DAY_S)
    assert "expired on" in refused(cert_der, spki, [ca.cert], now_s=NOW_S + 10 * DAY_S + 1)
    # Backdated by BACKDATE_S for clock skew, not more.
    assert "not valid before" in refused(cert_der, spki, [ca.cert], now_s=NOW_S - issuer.BACKDATE_S - 1)


def test_certificate_from_another_ca_is_refused(ca, other_ca):
    spki = SoftwareSigner().spki
    message = refused(certify(other_ca, spki), spki, [ca.cert])
    assert "not issued by the configured issuer CA" in message


def test_another_ca_with_the_same_name_is_refused(ca):
    impostor = issuer.create_ca("Example Card Issuer", days=3650, now_s=NOW_S)
    spki = SoftwareSigner().spki
    assert "not issued by the configured issuer CA" in refused(certify(impostor, spki), spki, [ca.cert])


def test_certificate_for_another_key_is_refused(ca):
    certified, enrolling = SoftwareSigner(), SoftwareSigner()
    message = refused(certify(ca, certified.spki), enrolling.spki, [ca.cert])
    assert "for another key" in message and certified.kid[:16] in message and enrolling.kid[:16] in message


def test_issuer_that_is_not_a_ca_is_refused(ca):
    fake_key = ec.generate_private_key(ec.SECP256R1())
    fake_ca_cert = hand_made(
        None, fake_key, fake_key.public_key(), ca=False, key_cert_sign=True, subject="Fake CA"
    )
    fake = issuer.CertificateAuthority(cert=fake_ca_cert, key=fake_key)
    with pytest.raises(issuer.IssuerError, match="not a CA certificate"):
        issuer.check_ca_certificate(fake_ca_cert, NOW_S)  # `center issuer trust` refuses it
    with pytest.raises(issuer.IssuerError, match="not a CA certificate"):
        issuer.certify_key(fake, SoftwareSigner().spki, subject="x", days=1, now_s=NOW_S)
    signer = SoftwareSigner()
    leaf = hand_made(
        fake_ca_cert,
        fake_key,
        x509.load_der_x509_certificate(certify(ca, signer.spki)).public_key(),
        ca=False,
    )
    assert "not issued by the configured issuer CA" in refused(issuer.der(leaf), signer.spki, [fake_ca_cert])


def test_ca_without_key_cert_sign_is_refused():
    key = ec.generate_private_key(ec.SECP256R1())
    cert = hand_made(None, key, key.public_key(), ca=True, key_cert_sign=False, subject="No Sign CA")
    with pytest.raises(issuer.IssuerError, match="keyCertSign"):
        issuer.check_ca_certificate(cert, NOW_S)


def test_end_entity_used_as_a_ca_is_refused(ca):
    holder_key = ec.generate_private_key(ec.SECP256R1())
    holder_cert = x509.load_der_x509_certificate(
        certify(ca, spki_of(holder_key.public_key()), subject="holder")
    )
    victim = SoftwareSigner()
    public_key = x509.load_der_x509_certificate(certify(ca, victim.spki)).public_key()
    forged = hand_made(holder_cert, holder_key, public_key, ca=False)
    message = refused(issuer.der(forged), victim.spki, [ca.cert], intermediates=[holder_cert])
    assert "not issued by the configured issuer CA" in message


def test_ca_certificate_as_the_key_certificate_is_refused(ca):
    intermediate = issuer.create_ca("Branch CA", days=365, now_s=NOW_S, parent=ca)
    spki = spki_of(intermediate.key.public_key())
    assert "is a CA certificate" in refused(issuer.der(intermediate.cert), spki, [ca.cert])


def test_key_certificate_without_digital_signature_or_for_tls_is_refused(ca):
    signer = SoftwareSigner()
    public_key = serialization.load_der_public_key(signer.spki)
    no_signing = hand_made(ca.cert, ca.key, public_key, ca=False, digital_signature=False)
    assert "digitalSignature" in refused(issuer.der(no_signing), signer.spki, [ca.cert])
    for_tls = hand_made(ca.cert, ca.key, public_key, ca=False, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert "another purpose" in refused(issuer.der(for_tls), signer.spki, [ca.cert])
    for_clients = hand_made(ca.cert, ca.key, public_key, ca=False, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    assert verify(issuer.der(for_clients), signer.spki, [ca.cert])


def test_garbage_truncated_and_oversized_bytes_are_refused(ca):
    signer = SoftwareSigner()
    good = certify(ca, signer.spki)
    assert "not a DER X.509" in refused(b"\x30\x82garbage" * 10, signer.spki, [ca.cert])
    assert "not a DER X.509" in refused(good[:-5], signer.spki, [ca.cert])
    assert "not a DER X.509" in refused(
        issuer.pem(x509.load_der_x509_certificate(good)), signer.spki, [ca.cert]
    )
    assert "1 to 4096 bytes" in refused(
        good + b"\0" * (MAX_KEY_CERT_BYTES + 1 - len(good)), signer.spki, [ca.cert]
    )
    assert "1 to 4096 bytes" in refused(b"", signer.spki, [ca.cert])
    # The wire layer's own limit on the field as the enroll body carries it.
    assert check_key_cert_field(b64url_encode(good)) == good
    for bad in (
        b64url_encode(b"\1" * (MAX_KEY_CERT_BYTES + 1)),
        b64url_encode(good) + "=",
        "",
        12,
        "not base64!",
    ):
        with pytest.raises(WireError) as caught:
            check_key_cert_field(bad)
        assert caught.value.code == "malformed_payload"


def test_one_intermediate_is_accepted_two_are_not(ca):
    branch = issuer.create_ca("Branch CA", days=1000, now_s=NOW_S, parent=ca)
    assert branch.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    signer = SoftwareSigner()
    cert_der = certify(branch, signer.spki)
    assert verify(cert_der, signer.spki, [ca.cert], intermediates=[branch.cert]).issuer == branch.cert.subject
    assert "not issued by the configured issuer CA" in refused(cert_der, signer.spki, [ca.cert])
    with pytest.raises(issuer.IssuerError, match="path length 0"):
        issuer.create_ca("Sub Branch CA", days=100, now_s=NOW_S, parent=branch)
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub_branch = issuer.CertificateAuthority(
        cert=hand_made(
            branch.cert,
            branch.key,
            sub_key.public_key(),
            ca=True,
            key_cert_sign=True,
            subject="Sub Branch CA",
        ),
        key=sub_key,
    )
    deep = certify(sub_branch, signer.spki, days=10)
    assert "not issued by" in refused(
        deep, signer.spki, [ca.cert], intermediates=[branch.cert, sub_branch.cert]
    )
    issuer.check_intermediate(branch.cert, (ca.cert,), NOW_S)
    with pytest.raises(issuer.IssuerError, match="not issued by a trusted CA"):
        issuer.check_intermediate(sub_branch.cert, (ca.cert,), NOW_S)
    with pytest.raises(issuer.IssuerError, match="choose fewer --days"):  # cannot outlive its parent
        issuer.create_ca("Long Branch", days=3650, now_s=NOW_S + DAY_S, parent=ca)


def test_expired_trusted_ca_refuses_with_its_own_message():
    old = issuer.create_ca("Old Issuer", days=30, now_s=NOW_S - 20 * DAY_S)
    signer = SoftwareSigner()
    cert_der = certify(old, signer.spki, days=5)
    assert verify(cert_der, signer.spki, [old.cert])
    message = refused(cert_der, signer.spki, [old.cert], now_s=NOW_S + 11 * DAY_S)
    assert "expired on" in message  # the key certificate itself is checked first
    # A certificate outliving its CA (made elsewhere; certify_key refuses to) meets the CA's own expiry.
    outliving = hand_made(
        old.cert, old.key, serialization.load_der_public_key(signer.spki), ca=False, days=60
    )
    message = refused(issuer.der(outliving), signer.spki, [old.cert], now_s=NOW_S + 11 * DAY_S)
    assert "configured issuer CA 'CN=Old Issuer' is not valid now" in message


# --- the policy function every key enrollment path calls ----------------------------------


def test_policy_function(ca, other_ca):
    signer = SoftwareSigner()
    good, foreign = certify(ca, signer.spki), certify(other_ca, signer.spki)
    required = IssuerPolicy(ISSUER_CERTIFIED, trusted=(ca.cert,))
    checked_if_sent = IssuerPolicy(ANY, trusted=(ca.cert,))
    for policy in (None, IssuerPolicy()):
        assert check_enrollment_certificate(policy, signer.spki, None, NOW_S) is None
        assert check_enrollment_certificate(policy, signer.spki, foreign, NOW_S) is None  # cannot be judged
    assert check_enrollment_certificate(checked_if_sent, signer.spki, None, NOW_S) is None
    assert (
        check_enrollment_certificate(checked_if_sent, signer.spki, good, NOW_S)["issuer"]
        == "CN=Example Card Issuer"
    )
    assert check_enrollment_certificate(required, signer.spki, good, NOW_S)["sha256"]
    for policy, cert_der, words in (
        (required, None, "carries no key certificate"),
        (required, foreign, "not issued by"),
        (checked_if_sent, foreign, "not issued by"),
    ):
        with pytest.raises(ApiError) as caught:
            check_enrollment_certificate(policy, signer.spki, cert_der, NOW_S)
        assert caught.value.code == "key_not_certified" and caught.value.status == 403
        assert words in caught.value.message
    assert STATUS_FOR_CODE["key_not_certified"] == 403
    with pytest.raises(AssertionError):
        IssuerPolicy(ISSUER_CERTIFIED)  # requiring certificates without a CA to check them is a bug


# --- API level: TestClient, SQLite and PostgreSQL ------------------------------------------


@pytest.fixture
def make_center(db_url, center_token, center_token_signer):
    """make_center(policy) -> (Center, TestClient); a clock the test can move."""
    _token, key, _pin = center_token
    engine = make_engine(db_url)
    migrate(engine)
    clients = []

    def make(policy: IssuerPolicy | None):
        clock = {"ms": NOW_S * 1000}
        center = Center(
            engine=engine,
            signer=CenterSigner(center_token_signer, key, "center-test"),
            currency="JPY",
            clock_ms=lambda: clock["ms"],
            issuer_policy=policy,
        )
        client = TestClient(create_app(center))
        client.__enter__()
        clients.append(client)
        return center, client, clock

    yield make
    for client in clients:
        client.__exit__(None, None, None)
    engine.dispose()


def enrollment(
    signer: SoftwareSigner,
    center: Center,
    cert_der: bytes | None,
    *,
    now_s: int = NOW_S,
    lifetime_s: int = 3600,
) -> Envelope:
    body = signer.enroll_body()
    if cert_der is not None:
        body["key_cert"] = b64url_encode(cert_der)
    return signer.envelope("enroll", body, aud=center.center_id, now_s=now_s, lifetime_s=lifetime_s)


def counts(center: Center) -> tuple[int, int, int, int]:
    with center.engine.connect() as conn:
        return tuple(
            conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (parties, keys, messages, audit_log)
        )


def assert_refused(client, envelope: Envelope, code: str, words: str) -> None:
    response = client.post("/v1/enroll", json=envelope.to_json())
    assert response.status_code == STATUS_FOR_CODE.get(code, 400), response.text
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"], error


def test_required_policy_refuses_uncertified_keys_and_writes_nothing(make_center, ca, other_ca):
    center, client, _clock = make_center(IssuerPolicy(ISSUER_CERTIFIED, trusted=(ca.cert,)))
    signer, stranger = SoftwareSigner(), SoftwareSigner()
    assert_refused(
        client, enrollment(signer, center, None), "key_not_certified", "carries no key certificate"
    )
    assert_refused(
        client,
        enrollment(signer, center, certify(other_ca, signer.spki)),
        "key_not_certified",
        "not issued by the configured issuer CA",
    )
    assert_refused(
        client, enrollment(signer, center, certify(ca, stranger.spki)), "key_not_certified", "for another key"
    )
    assert_refused(
        client, enrollment(signer, center, b"\x30\x03\x02\x01\x01"), "key_not_certified", "not a DER X.509"
    )
    # No party, key or audit entry; each refusal is kept only as the final answer to its message id.
    assert counts(center) == (0, 0, 4, 0)


def test_oversized_or_malformed_key_cert_field_is_malformed_payload(make_center, ca):
    center, client, _clock = make_center(IssuerPolicy(ISSUER_CERTIFIED, trusted=(ca.cert,)))
    signer = SoftwareSigner()
    # Built past the wire builder's own check, as a hostile client would.
    for bad in (b64url_encode(b"\1" * (MAX_KEY_CERT_BYTES + 1)), "AAA=", 7):
        body = signer.enroll_body() | {"key_cert": bad}
        payload = {
            "dom": "tokenpay",
            "v": 1,
            "type": "enroll",
            "aud": center.center_id,
            "kid": signer.kid,
            "msg_id": new_message_id(),
            "ctr": 1,
            "iat": NOW_S,
            "exp": NOW_S + 600,
            "body": body,
        }
        envelope = seal(payload, alg=signer.algorithm, kid=signer.kid, sign=signer.sign)
        assert_refused(client, envelope, "malformed_payload", "key_cert")
    assert counts(center) == (0, 0, 0, 0)


def test_required_policy_accepts_a_certified_key_and_keeps_the_certificate(make_center, ca):
    center, client, _clock = make_center(IssuerPolicy(ISSUER_CERTIFIED, trusted=(ca.cert,)))
    signer = SoftwareSigner("Ed25519")
    cert_der = certify(ca, signer.spki, subject="card 0042")
    request = enrollment(signer, center, cert_der)
    response = client.post("/v1/enroll", json=request.to_json())
    assert response.status_code == 200, response.text
    facts = checked_by_center(response.json(), request, center)["key_certificate"]
    cert = x509.load_der_x509_certificate(cert_der)
    assert facts["serial"] == format(cert.serial_number, "x") and facts["subject"] == "CN=card 0042"
    assert facts == issuer.describe(cert)
    assert counts(center) == (1, 1, 1, 1)
    with center.engine.connect() as conn:
        payload = conn.execute(select(audit_log.c.payload)).scalar_one()
    assert json.loads(payload)["body"]["key_cert"] == b64url_encode(
        cert_der
    )  # the evidence stays in the audit trail
    again = client.post("/v1/enroll", json=request.to_json())
    assert again.status_code == 200 and again.json() == response.json()
    assert counts(center) == (1, 1, 1, 1)


def test_expired_certificate_is_refused_but_an_accepted_resend_keeps_its_receipt(make_center, ca):
    center, client, clock = make_center(IssuerPolicy(ISSUER_CERTIFIED, trusted=(ca.cert,)))
    signer, latecomer = SoftwareSigner(), SoftwareSigner()
    request = enrollment(signer, center, certify(ca, signer.spki, days=1), lifetime_s=7 * DAY_S)
    first = client.post("/v1/enroll", json=request.to_json())
    assert first.status_code == 200, first.text
    late_cert = certify(ca, latecomer.spki, days=1)
    clock["ms"] = (NOW_S + 2 * DAY_S) * 1000
    # Resent after the certificate expired: the first answer, not a refusal.
    assert client.post("/v1/enroll", json=request.to_json()).json() == first.json()
    late = enrollment(latecomer, center, late_cert, now_s=NOW_S + 2 * DAY_S)
    assert_refused(client, late, "key_not_certified", "expired on")
    assert counts(center) == (1, 1, 2, 1)  # the refusal is kept as the final answer to its message id


def test_policy_any_with_a_ca_checks_a_certificate_when_one_is_sent(make_center, ca, other_ca):
    center, client, _clock = make_center(IssuerPolicy(ANY, trusted=(ca.cert,)))
    plain, certified, wrong = SoftwareSigner(), SoftwareSigner(), SoftwareSigner()
    response = client.post("/v1/enroll", json=enrollment(plain, center, None).to_json())
    assert response.status_code == 200, response.text
    assert "key_certificate" not in _result(response)
    response = client.post(
        "/v1/enroll", json=enrollment(certified, center, certify(ca, certified.spki)).to_json()
    )
    assert (
        response.status_code == 200
        and _result(response)["key_certificate"]["issuer"] == "CN=Example Card Issuer"
    )
    assert_refused(
        client, enrollment(wrong, center, certify(other_ca, wrong.spki)), "key_not_certified", "not issued"
    )
    assert counts(center)[:2] == (2, 2)


def test_policy_any_without_a_ca_accepts_certificates_it_cannot_judge(make_center, other_ca):
    center, client, _clock = make_center(None)
    signer = SoftwareSigner()
    response = client.post(
        "/v1/enroll", json=enrollment(signer, center, certify(other_ca, signer.spki)).to_json()
    )
    assert response.status_code == 200, response.text
    assert "key_certificate" not in _result(response)  # the receipt claims nothing it did not check


def _result(response) -> dict:
    return receipt_result(response.json())


def test_a_key_certificate_trusted_as_if_it_were_the_ca_is_still_refused(ca):
    signer = SoftwareSigner()
    cert_der = certify(ca, signer.spki)
    message = refused(cert_der, signer.spki, [x509.load_der_x509_certificate(cert_der)])
    assert "itself a trusted certificate" in message


def test_a_broken_issuer_configuration_stops_the_center(tmp_path, ca):
    from center.keys.issuer_policy import load_policy

    (tmp_path / "issuer").mkdir()
    (tmp_path / "issuer" / "ca-cert.pem").write_bytes(issuer.pem(ca.cert))
    policy = load_policy(tmp_path, ISSUER_CERTIFIED, "issuer/ca-cert.pem", "")
    assert policy.mode == ISSUER_CERTIFIED and policy.trusted == (ca.cert,)
    leaf = x509.load_der_x509_certificate(certify(ca, SoftwareSigner().spki))
    (tmp_path / "issuer" / "leaf.pem").write_bytes(issuer.pem(leaf))
    (tmp_path / "issuer" / "junk.pem").write_bytes(b"not a certificate")
    for mode, ca_file, words in (
        (ISSUER_CERTIFIED, "", "no issuer CA is configured"),
        ("sometimes", "issuer/ca-cert.pem", "must be one of"),
        (ANY, "issuer/missing.pem", "cannot read"),
        (ANY, "issuer/junk.pem", "holds no PEM certificate"),
        (ANY, "issuer/leaf.pem", "not a CA certificate"),
    ):
        with pytest.raises(ValueError, match=words):
            load_policy(tmp_path, mode, ca_file, "")
