"""The OpenPGP card's data objects, read and built without a card: BER-TLV, the application
related data (identity, PIN status, capabilities), algorithm attributes and the public key DO.

Pure functions over bytes (OpenPGP card specification 3.4, names as it names them), apart from
tokens.openpgp_card, which exchanges the APDUs that carry them: parsing is tested and fuzzed
without a reader, and the token module keeps only the card conversation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .base import KeyType, PinStatus, TokenError

# Data objects
DO_AID = 0x4F
DO_APPLICATION_RELATED = 0x6E
DO_HISTORICAL = 0x5F52
DO_EXTENDED_LENGTH = 0x7F66
DO_ALGO_SIG = 0xC1
DO_PW_STATUS = 0xC4
DO_RESETTING_CODE = 0xD3
DO_PUBLIC_KEY = 0x7F49
CRT_SIGNATURE = bytes([0xB6, 0x00])

# Algorithm attributes
ALGO_RSA, ALGO_ECDSA, ALGO_EDDSA = 0x01, 0x13, 0x16
OID_P256 = bytes.fromhex("2A8648CE3D030107")  # 1.2.840.10045.3.1.7
OID_ED25519 = bytes.fromhex("2B06010401DA470F01")  # 1.3.6.1.4.1.11591.15.1
RSA_BITS = 2048
RSA_DEFAULT_EXPONENT_BITS = 32

# Manufacturer ids of the AID (as GnuPG names them).
MANUFACTURERS = {
    0x0000: "test card",
    0x0001: "PPC Card Systems",
    0x0002: "Prism",
    0x0003: "OpenFortress",
    0x0004: "Wewid",
    0x0005: "ZeitControl",
    0x0006: "Yubico",
    0x0007: "OpenKMS",
    0x0008: "LogoEmail",
    0x0009: "Fidesmo",
    0x000B: "Feitian Technologies",
    0x000F: "Nitrokey",
    0x0042: "GnuPG e.V.",
    0xF1D0: "CanoKeys",
    0xF517: "FSIJ (Gnuk)",
    0xFFFF: "test card",
}


# --------------------------------------------------------------------------
# BER-TLV, just enough for the card's data objects


def _tlv_items(data: bytes) -> Iterator[tuple[int, bytes, bool]]:
    """(tag, value, constructed) for each TLV at this level."""
    try:
        yield from _tlv_items_unchecked(data)
    except IndexError:
        raise TokenError("the card sent a truncated data object") from None


def _tlv_items_unchecked(data: bytes) -> Iterator[tuple[int, bytes, bool]]:
    i = 0
    for _ in range(len(data)):  # each pass consumes >= 2 bytes
        if i >= len(data) or data[i] in (0x00, 0xFF):  # padding between objects
            return
        first = data[i]
        tag, i = first, i + 1
        if first & 0x1F == 0x1F:  # multi-byte tag
            for _ in range(3):
                tag, i = (tag << 8) | data[i], i + 1
                if not data[i - 1] & 0x80:
                    break
        length, i = data[i], i + 1
        if length & 0x80:
            count = length & 0x7F
            length, i = int.from_bytes(data[i : i + count], "big"), i + count
        if i + length > len(data):
            raise TokenError("the card sent a malformed data object")
        yield tag, data[i : i + length], bool(first & 0x20)
        i += length


def tlv_find(data: bytes, wanted: int, depth: int = 4) -> bytes | None:
    """The value of the first `wanted` tag, searching constructed objects too."""
    for tag, value, constructed in _tlv_items(data):
        if tag == wanted:
            return value
        if constructed and depth > 0:
            found = tlv_find(value, wanted, depth - 1)
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------
# What a card tells about itself


@dataclass(frozen=True)
class CardFacts:
    aid: bytes
    chaining: bool
    extended: bool
    max_command_bytes: int | None  # from 7F66, when the card has it
    algo_sig: bytes
    pw_status: bytes

    @property
    def version(self) -> tuple[int, int]:
        return self.aid[6], self.aid[7]

    @property
    def manufacturer_id(self) -> int:
        return int.from_bytes(self.aid[8:10], "big")

    @property
    def serial(self) -> str:
        return self.aid[10:14].hex().upper()

    @property
    def manufacturer(self) -> str:
        mid = self.manufacturer_id
        if 0xFF00 <= mid <= 0xFFFE:
            return "unmanaged serial number range"
        return MANUFACTURERS.get(mid, f"unknown manufacturer 0x{mid:04X}")

    def pin_status(self) -> PinStatus:
        return pin_status_from_tries(self.pw_status[4])


def pin_status_from_tries(tries: int) -> PinStatus:
    # Cards start PW1 at 3 tries (the count's maximum is not readable).
    return PinStatus(tries_left=tries, locked=tries == 0, count_low=0 < tries < 3, final_try=tries == 1)


def parse_application_data(data: bytes) -> CardFacts:
    """Application related data (6E) into CardFacts."""
    inner = tlv_find(data, DO_APPLICATION_RELATED, depth=0)
    body = inner if inner is not None else data
    aid = tlv_find(body, DO_AID)
    algo = tlv_find(body, DO_ALGO_SIG)
    pw_status = tlv_find(body, DO_PW_STATUS)
    if aid is None or len(aid) < 16 or algo is None or pw_status is None or len(pw_status) < 7:
        raise TokenError("the card's application data lacks the AID, algorithm or PIN status")
    chaining, extended = _card_capabilities(tlv_find(body, DO_HISTORICAL) or b"")
    return CardFacts(
        aid=aid,
        chaining=chaining,
        extended=extended,
        max_command_bytes=_max_command_bytes(tlv_find(body, DO_EXTENDED_LENGTH)),
        algo_sig=algo,
        pw_status=pw_status,
    )


def _card_capabilities(historical: bytes) -> tuple[bool, bool]:
    """(command chaining, extended Lc/Le) from the historical bytes."""
    if not historical or historical[0] != 0x00:
        return True, False  # unknown layout: every OpenPGP card v2+ chains
    end = len(historical) - 3  # category 00: the last 3 bytes are status
    i = 1
    for _ in range(len(historical)):  # compact TLVs, each >= 1 byte
        if i >= end:
            break
        tag, length = historical[i] >> 4, historical[i] & 0x0F
        value = historical[i + 1 : i + 1 + length]
        if tag == 0x7 and len(value) >= 3:
            return bool(value[2] & 0x80), bool(value[2] & 0x40)
        i += 1 + length
    return True, False


def _max_command_bytes(info: bytes | None) -> int | None:
    """Extended length information (7F66): two INTEGERs, command and response."""
    if not info:
        return None
    values = [value for tag, value, _ in _tlv_items(info) if tag == 0x02]
    return int.from_bytes(values[0], "big") if values else None


# --------------------------------------------------------------------------
# Key types on the card


def algorithm_attributes(key_type: KeyType, current: bytes) -> bytes:
    """C1 for `key_type`; an RSA request keeps the card's exponent size and format."""
    if key_type is KeyType.ED25519:
        return bytes([ALGO_EDDSA]) + OID_ED25519
    if key_type is KeyType.P256:
        return bytes([ALGO_ECDSA]) + OID_P256
    exponent_bits, fmt = RSA_DEFAULT_EXPONENT_BITS, 0
    if len(current) >= 6 and current[0] == ALGO_RSA:
        # YubiKeys say 17 bits, others 32: keep what the card uses.
        exponent_bits, fmt = int.from_bytes(current[3:5], "big"), current[5]
    return bytes([ALGO_RSA]) + RSA_BITS.to_bytes(2, "big") + exponent_bits.to_bytes(2, "big") + bytes([fmt])


def attributes_match(key_type: KeyType, attrs: bytes) -> bool:
    if key_type is KeyType.RSA2048:
        return len(attrs) >= 3 and attrs[0] == ALGO_RSA and int.from_bytes(attrs[1:3], "big") == RSA_BITS
    wanted = algorithm_attributes(key_type, b"")
    # An optional trailing FF ("with public key" import format) is fine.
    return attrs == wanted or attrs == wanted + b"\xff"


def spki_from_public_key_do(key_type: KeyType, data: bytes) -> bytes:
    """SubjectPublicKeyInfo DER from the card's public key DO (7F49)."""
    body = tlv_find(data, DO_PUBLIC_KEY, depth=0) or data
    try:
        key = _public_key(key_type, body)
    except ValueError:
        key = None
    if key is None:
        raise TokenError(_unexpected_key_message(key_type, body))
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_key(key_type: KeyType, body: bytes):
    if key_type is KeyType.RSA2048:
        modulus, exponent = tlv_find(body, 0x81), tlv_find(body, 0x82)
        if not modulus or not exponent:
            return None
        n, e = int.from_bytes(modulus, "big"), int.from_bytes(exponent, "big")
        return rsa.RSAPublicNumbers(e, n).public_key() if n.bit_length() == RSA_BITS else None
    point = tlv_find(body, 0x86)
    if key_type is KeyType.ED25519:
        return ed25519.Ed25519PublicKey.from_public_bytes(point) if point and len(point) == 32 else None
    if point and len(point) == 65 and point[0] == 0x04:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    return None


def _unexpected_key_message(key_type: KeyType, body: bytes) -> str:
    point = tlv_find(body, 0x86)
    if key_type is KeyType.P256 and point is not None and len(point) == 32:
        # jcecard 0.1.0 does exactly this: it makes a Curve25519 key.
        return (
            "this card does not make P-256 keys (it returned a 32-byte key for a P-256 "
            "request); use ed25519 or rsa2048 on this card"
        )
    return f"the card returned a public key that is not a {key_type.value} key"
