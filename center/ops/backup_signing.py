"""Backup signatures: every archive is signed by a backup key kept apart from it.

An archive carries the center's token, its PIN and its TLS key, so nothing in
it may be able to sign a backup. The backup key is the administrator's:

- a key file (`center backup-key create --out DIR`): an Ed25519 or P-256
  PKCS#8 key sealed under a password with Argon2id + AES-256-GCM
  (center.ops.backup_crypto; PKCS#8's own encryption in `cryptography` is PBKDF2
  with 2,048 rounds, far cheaper to guess), written 0600, never inside a
  center's data directory;
- or a key generated on the administrator's own PKCS#11 token (`--pkcs11-module
  --token-label --pin-file`): DIR gets a reference to it (module, token, key id).

Either way DIR also gets the public key (PEM), which `center restore` is given.

What is signed: the exact bytes of manifest.json (which lists the SHA-256 of
every other member) after the domain tag DOMAIN. The signature is the
archive's second member, manifest.sig. An encrypted archive carries the same
two members inside the encryption: one verification path for both kinds, the
signer stays hidden from whoever lacks the password, and a password holder
who re-encrypts a changed archive still cannot sign it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from center.ops.backup_crypto import BackupCryptoError, DecryptingReader, EncryptingWriter, check_new_password
from center.ops.backup_format import BackupError
from center.storage.config import CenterConfig
from hostkit.cli import read_option_file
from hostkit.private_files import write_new_file
from paywire.algorithms import ED25519, ES256, algorithm_for_key, ecdsa_der_low_s, key_id, verify_signature
from paywire.errors import WireError
from tokens.base import KeyMode, KeyRecord, KeyType

DOMAIN = b"tokenpay-backup-v1\x00"
SIGNATURE_NAME = "manifest.sig"
SIGNATURE_FORMAT = "tokenpay-center-backup-signature"
MAX_SIGNATURE_MEMBER_BYTES = 4096
MAX_KEY_FILE_BYTES = 64 * 1024
KEY_FILE_NAME = "backup-signing-key.pem"
TOKEN_REF_NAME = "backup-signing-key.json"
PUBLIC_KEY_NAME = "backup-signing-key.pub.pem"
KEY_PEM_LABEL = "TOKENPAY BACKUP SIGNING KEY"
TOKEN_REF_FORMAT = "tokenpay-backup-signing-key-on-token"
KEY_TYPES = ("ed25519", "p256")
TOKEN_KEY_LABEL = "tokenpay-backup-signing"
# The public key is meant to be copied to whoever restores (`center restore --backup-public-key`).
PUBLIC_KEY_MODE = 0o644
CREATE_HINT = (
    "create a backup key once with `center backup-key create --out DIR` (keep DIR away from the "
    "center) and give `--signing-key DIR/backup-signing-key.pem`"
)


@dataclass(frozen=True)
class BackupSigner:
    algorithm: str
    spki_der: bytes
    sign_raw: object  # callable(bytes) -> bytes, the signature in paywire.algorithms' wire form

    @property
    def key_id(self) -> str:
        return key_id(self.spki_der)

    def signature_member(self, manifest_bytes: bytes) -> bytes:
        signature = self.sign_raw(DOMAIN + manifest_bytes)
        document = {
            "format": SIGNATURE_FORMAT,
            "version": 1,
            "algorithm": self.algorithm,
            "key_id": self.key_id,
            "signature": base64.b64encode(signature).decode(),
        }
        return json.dumps(document, sort_keys=True).encode()


@dataclass(frozen=True)
class BackupVerifier:
    algorithm: str
    key: object
    key_id: str
    source: str  # the public key file, for messages

    def check(self, manifest_bytes: bytes, member: bytes) -> None:
        """BackupError unless `member` is this key's valid signature over exactly `manifest_bytes`."""
        document = _parse_signature_member(member)
        if document["key_id"] != self.key_id:
            raise BackupError(
                f"the backup is signed by another backup key (key id {document['key_id'][:16]}...), "
                f"not by {self.source} ({self.key_id[:16]}...): refused, nothing was written"
            )
        try:
            signature = base64.b64decode(document["signature"], validate=True)
            verify_signature(self.algorithm, self.key, DOMAIN + manifest_bytes, signature)
        except (ValueError, WireError):
            raise BackupError(
                f"the backup's signature does not verify with {self.source}: the archive was changed "
                "after it was signed; refused, nothing was written"
            ) from None


# --- creating a key ------------------------------------------------------------------------


def create_key_file(out_dir: Path, password: str, key_type: str) -> dict:
    try:
        check_new_password(password)
    except BackupCryptoError as error:
        raise BackupError(f"{error} (the backup key password)") from None
    private = (
        ed25519.Ed25519PrivateKey.generate()
        if key_type == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pkcs8 = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    sealed = io.BytesIO()
    writer = EncryptingWriter(sealed, password)
    writer.write(pkcs8)
    writer.close()
    spki = _spki(private.public_key())
    key_file = _prepare_out_dir(out_dir) / KEY_FILE_NAME
    write_new_file(key_file, _armor(sealed.getvalue()))
    return _created(out_dir, key_file, spki, key_type)


def create_token_key(out_dir: Path, module: str, token_label: str, pin: str, key_type: str) -> dict:
    # Imported here: python-pkcs11 (~190 ms) only for a backup key on a token, not for a key file.
    from tokens.pkcs11_token import open_pkcs11_token

    out = _prepare_out_dir(out_dir)
    token = open_pkcs11_token(module, label=token_label)
    record = token.generate_key(KeyType(key_type), pin, mode=KeyMode.RESIDENT, label=TOKEN_KEY_LABEL)
    reference = {
        "format": TOKEN_REF_FORMAT,
        "version": 1,
        "pkcs11_module": str(Path(module).resolve()),
        "token_label": token_label,
        "key": record.to_json(),
    }
    ref_file = out / TOKEN_REF_NAME
    write_new_file(ref_file, json.dumps(reference, indent=2, sort_keys=True).encode())
    return _created(out_dir, ref_file, record.spki_der, key_type)


def _created(out_dir: Path, key_file: Path, spki: bytes, key_type: str) -> dict:
    public_file = Path(out_dir) / PUBLIC_KEY_NAME
    pem = serialization.load_der_public_key(spki).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_new_file(public_file, pem, mode=PUBLIC_KEY_MODE)
    return {
        "signing_key": str(key_file),
        "public_key": str(public_file),
        "key_id": key_id(spki),
        "key_type": key_type,
    }


def _prepare_out_dir(out_dir: Path) -> Path:
    out = Path(os.path.abspath(out_dir))
    if _inside_a_center(out):
        raise BackupError(
            f"{out} is inside a center's data directory: keep the backup key apart from what it "
            "signs; choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in (KEY_FILE_NAME, TOKEN_REF_NAME, PUBLIC_KEY_NAME):
        if os.path.lexists(out / name):
            raise BackupError(
                f"{out / name} already exists: refusing to overwrite a backup key; choose another --out"
            )
    return out


def _inside_a_center(path: Path) -> bool:
    return any(
        (parent / "config.json").is_file() and (parent / "center-cert.pem").is_file()
        for parent in (path, *path.parents)
    )


# --- loading the signing key (backup) ----------------------------------------------------


def load_signer(path: Path, secret: str, config: CenterConfig) -> BackupSigner:
    """The signer from --signing-key: a sealed key file (secret = its password) or a token reference
    (secret = the token's PIN). Refused when the key would travel in, or be usable from, the archive."""
    path, data_dir = Path(os.path.abspath(path)), config.data_dir
    if Path(os.path.realpath(path)).is_relative_to(data_dir):
        raise BackupError(
            f"--signing-key {path} is inside the data directory: it would travel in the archive it "
            "signs; move it out (for example to the administrator's home)"
        )
    data = _read_key_material(path)
    _check_private_mode(path)
    signer = (
        _token_signer(path, data, secret, config)
        if data.lstrip().startswith(b"{")
        else _file_signer(path, data, secret)
    )
    if signer.spki_der == _center_spki(config):
        raise BackupError(
            "--signing-key is the center's own receipt key, which travels in the archive: use a "
            "separate backup key"
        )
    return signer


def _file_signer(path: Path, data: bytes, password: str) -> BackupSigner:
    sealed = _unarmor(data, path)
    try:
        pkcs8 = DecryptingReader(io.BytesIO(sealed), password).read()
    except BackupCryptoError as error:
        raise BackupError(
            f"--signing-key {path}: {str(error).replace('backup password', 'backup key password')}"
        ) from None
    private = serialization.load_der_private_key(pkcs8, password=None)
    algorithm = algorithm_for_key(private.public_key())
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return BackupSigner(ED25519, _spki(private.public_key()), private.sign)

    def sign_p256(message: bytes) -> bytes:
        return ecdsa_der_low_s(*decode_dss_signature(private.sign(message, ec.ECDSA(hashes.SHA256()))))

    assert algorithm == ES256
    return BackupSigner(ES256, _spki(private.public_key()), sign_p256)


def _center_spki(config: CenterConfig) -> bytes | None:
    encoded = config.signing_key.get("spki_der") if isinstance(config.signing_key, dict) else None
    return base64.b64decode(encoded) if isinstance(encoded, str) else None


def _token_signer(path: Path, data: bytes, pin: str, config: CenterConfig) -> BackupSigner:
    # Imported here: python-pkcs11 (~190 ms) only when the backup key is on a token.
    from tokens.pkcs11_token import open_pkcs11_token

    try:
        reference = json.loads(data)
        if reference.get("format") != TOKEN_REF_FORMAT:
            raise ValueError
        record = KeyRecord.from_json(reference["key"])
        module, label = str(reference["pkcs11_module"]), str(reference["token_label"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BackupError(
            f"--signing-key {path} is neither a backup key file nor a token reference written by "
            "`center backup-key create`"
        ) from None
    conf = os.environ.get("SOFTHSM2_CONF", "")
    own_token = label == config.token_label and Path(module).resolve() == Path(config.pkcs11_module).resolve()
    if own_token or (conf and Path(os.path.realpath(conf)).is_relative_to(config.data_dir)):
        raise BackupError(
            "SOFTHSM2_CONF points into the data directory: the backup key must be on the "
            "administrator's token, not on the center's own (it travels in the archive)"
        )
    token = open_pkcs11_token(module, label=label)
    # Sign now, while the token is open: one signature per backup.
    return BackupSigner(record.algorithm, record.spki_der, lambda message: token.sign(record, message, pin))


def _read_key_material(path: Path) -> bytes:
    return read_option_file(path, "--signing-key", max_bytes=MAX_KEY_FILE_BYTES, what="a backup key")


def _check_private_mode(path: Path) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise BackupError(f"--signing-key {path} is readable by others (mode {mode:04o}): chmod 600 {path}")


def _armor(sealed: bytes) -> bytes:
    body = base64.encodebytes(sealed).decode()
    return f"-----BEGIN {KEY_PEM_LABEL}-----\n{body}-----END {KEY_PEM_LABEL}-----\n".encode()


def _unarmor(data: bytes, path: Path) -> bytes:
    begin, end = f"-----BEGIN {KEY_PEM_LABEL}-----".encode(), f"-----END {KEY_PEM_LABEL}-----".encode()
    text = data.strip()
    if not (text.startswith(begin) and text.endswith(end)):
        raise BackupError(
            f"--signing-key {path} is not a backup key written by `center backup-key create` "
            "(an unprotected or foreign key is refused)"
        )
    try:
        return base64.b64decode(b"".join(text[len(begin) : -len(end)].split()), validate=True)
    except ValueError:
        raise BackupError(f"--signing-key {path} is damaged (not base64)") from None


# --- the public key (restore) -------------------------------------------------------------


def load_verifier(path: Path) -> BackupVerifier:
    data = read_option_file(path, "--backup-public-key", max_bytes=MAX_KEY_FILE_BYTES, what="a public key")
    try:
        key = serialization.load_pem_public_key(data)
        algorithm = algorithm_for_key(key)
    except (ValueError, UnsupportedAlgorithm, WireError):
        raise BackupError(
            f"--backup-public-key {path} is not a PEM public key: give the {PUBLIC_KEY_NAME} that "
            "`center backup-key create` wrote"
        ) from None
    if algorithm not in (ED25519, ES256) or (algorithm == ES256 and not isinstance(key.curve, ec.SECP256R1)):
        raise BackupError(f"--backup-public-key {path} is not an Ed25519 or P-256 key")
    return BackupVerifier(algorithm, key, key_id(_spki(key)), str(path))


def _parse_signature_member(member: bytes) -> dict:
    try:
        document = json.loads(member)
    except (UnicodeDecodeError, ValueError, RecursionError):
        document = None
    fields = ("algorithm", "key_id", "signature")
    if (
        not isinstance(document, dict)
        or document.get("format") != SIGNATURE_FORMAT
        or document.get("version") != 1
        or not all(isinstance(document.get(name), str) for name in fields)
    ):
        raise BackupError("the backup's signature member is damaged: refused, nothing was written")
    return document


def _spki(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
