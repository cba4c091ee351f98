"""OpenPGP smartcards (YubiKey, Nitrokey, Gnuk, ...) over PC/SC, raw APDUs.

The card's signature key slot holds the wallet's signing key; it is
generated on the card and never leaves it (KeyMode.RESIDENT). Password B is
the card's signing PIN, PW1 in mode 81. No OpenSC, no gpg: the commands and
data objects are those of the OpenPGP card specification 3.4 (named below
as the specification names them).

Rules this module keeps:

* One lock per token around every card operation, and one PC/SC
  transaction per operation, so that no other program's APDU lands between
  our VERIFY and our PSO.
* Every operation starts with SELECT (another program may have selected
  another application) and re-reads the card's identity, so a card swapped
  in the reader is noticed (sign: KeyNotFound, not a signature by the
  wrong key).
* PINs are not left verified behind us: key generation makes PW1 valid for
  one signature only (PW status byte 1 = 00), and after admin operations
  the card is reset.
* Long data goes in one piece: command chaining (CLA | 0x10, 255-byte
  pieces) when the card announces it, which passes through every reader;
  else an extended-length APDU. Measured on pcscd 1.9.9 + vpcd + jcecard:
  both carry 16 KB. Responses longer than one APDU are collected with
  GET RESPONSE (61xx).
* Each signature is checked against the key record's public key before it
  is returned: a card that signs with another key fails here, not at the
  center.
* PINs never appear in messages or logs.

The card's data objects (TLV, application data, algorithm attributes, public
key) are parsed in tokens.openpgp_data; this module holds the conversation.
Long because the APDU layer (SELECT, chaining, GET RESPONSE, status words)
and the commands built on it share one lock, one transaction and the card's
facts per operation; apart, each would reach into the other's state.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from paywire.algorithms import ecdsa_der_low_s, ecdsa_raw_to_der_low_s

from . import pcsc
from .base import (
    ALGORITHM_FOR_KEY_TYPE,
    KeyMode,
    KeyNotFound,
    KeyRecord,
    KeyType,
    PinLocked,
    PinStatus,
    Token,
    TokenError,
    TokenInfo,
    TokenRemoved,
    WrongPin,
)
from .openpgp_data import (
    CRT_SIGNATURE,
    DO_AID,
    DO_ALGO_SIG,
    DO_APPLICATION_RELATED,
    DO_PW_STATUS,
    DO_RESETTING_CODE,
    CardFacts,
    algorithm_attributes,
    attributes_match,
    parse_application_data,
    pin_status_from_tries,
    spki_from_public_key_do,
)

log = logging.getLogger(__name__)

OPENPGP_AID = pcsc.OPENPGP_AID
HANDLE_FORMAT = "openpgp-card-v1"
SIGNATURE_SLOT = "sig"

# Instructions
INS_SELECT = 0xA4
INS_GET_DATA = 0xCA
INS_GET_RESPONSE = 0xC0
INS_VERIFY = 0x20
INS_CHANGE_REFERENCE_DATA = 0x24
INS_RESET_RETRY_COUNTER = 0x2C
INS_PUT_DATA = 0xDA
INS_GENERATE = 0x47
INS_PSO = 0x2A

PW1_SIGN = 0x81  # PW1 for PSO:CDS
PW1_OTHER = 0x82  # the same PIN, for other commands (does not allow signing)
PW3 = 0x83  # admin PIN

CLA_CHAIN = 0x10
SHORT_MAX_DATA = 255
MAX_GET_RESPONSE_ROUNDS = 256  # 256 x 256 bytes: far above any response here
MAX_MESSAGE_BYTES = 65535  # one extended APDU; chaining has no lower limit of ours


# PKCS#1 v1.5 DigestInfo prefix for SHA-256
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")

PIN_MIN_LENGTH = 6  # PW1; PW3 and the resetting code: 8
ADMIN_PIN_MIN_LENGTH = 8

SW_OK = 0x9000
SW_SECURITY_NOT_SATISFIED = 0x6982
SW_BLOCKED = 0x6983
SW_WRONG_LENGTH = 0x6700
SW_WRONG_DATA = 0x6A80
SW_NOT_FOUND = 0x6A88
SW_CONDITIONS = 0x6985

# --------------------------------------------------------------------------
# Finding and opening cards


def read_openpgp_aid(reader: str) -> bytes | None:
    """The full OpenPGP AID of the card in `reader`, or None if it has none."""
    link = pcsc.CardLink(reader)
    try:
        link.connect()
        with link.transaction():
            _, sw = link.transmit(_select_apdu())
            if sw != SW_OK and sw >> 8 != 0x61:
                return None
            data, sw = link.transmit(bytes([0x00, INS_GET_DATA, 0x00, DO_AID, 0x00]))
            return data if sw == SW_OK and data[:6] == OPENPGP_AID else None
    except TokenError:
        return None
    finally:
        link.close()


def is_openpgp_card(reader: str) -> bool:
    """Whether the card in `reader` has the OpenPGP application (D2 76 00 01 24 01)."""
    return read_openpgp_aid(reader) is not None


def open_openpgp_card(
    reader: str | None,
    *,
    timeout_s: float,
    on_wait: Callable[[str], None],
    serial: str | None = None,
) -> OpenPgpCardToken:
    """Wait (bounded) for an OpenPGP card, optionally the one with `serial`, and open it."""
    wanted = serial.upper() if serial else None

    def accept(name: str) -> bool:
        aid = read_openpgp_aid(name)
        return aid is not None and (wanted is None or aid[10:14].hex().upper() == wanted)

    what = f"OpenPGP card {wanted}" if wanted else "OpenPGP card"
    name = pcsc.wait_for_card(reader, timeout_s, on_wait, accept=accept, what=what)
    return OpenPgpCardToken(name)


def _select_apdu() -> bytes:
    return bytes([0x00, INS_SELECT, 0x04, 0x00, len(OPENPGP_AID)]) + OPENPGP_AID + b"\x00"


# --------------------------------------------------------------------------
# The token


class OpenPgpCardToken(Token):
    """The OpenPGP card in one reader. Thread-safe (one lock per token)."""

    def __init__(self, reader: str, *, transport: str = "auto"):
        if transport not in ("auto", "chaining", "extended"):
            raise ValueError(f"transport must be auto, chaining or extended, not {transport!r}")
        self._reader = reader
        self._transport = transport
        self._link = pcsc.CardLink(reader)
        self._lock = threading.RLock()
        self._facts: CardFacts | None = None
        self._reset_pending = False

    @property
    def reader(self) -> str:
        return self._reader

    # -- sessions -------------------------------------------------------------

    @contextlib.contextmanager
    def _session(self, *, reset_after: bool = False) -> Iterator[CardFacts]:
        """Lock, connect if needed, one transaction, SELECT, read the card's facts.

        With `reset_after` (or if the operation sets self._reset_pending) the
        card is reset once the transaction is over, which clears every PIN
        the operation verified.
        """
        with self._lock:
            self._reset_pending = reset_after
            self._open_transaction()
            try:
                self._select()
                self._facts = self._read_facts()
                yield self._facts
            finally:
                self._link.end_transaction()
                if self._reset_pending and self._link.connected:
                    self._forget_pins()

    def _open_transaction(self) -> None:
        # A handle goes stale when another program resets the card
        # (acknowledge it) or when the card was pulled and put back (connect
        # again); either shows at the start, so retrying once is safe.
        for attempt in range(2):
            if not self._link.connected:
                self._link.connect()
            try:
                self._link.begin_transaction()
                return
            except pcsc.CardWasReset:
                self._link.acknowledge_reset()
            except TokenRemoved:
                if attempt:
                    raise
        self._link.begin_transaction()

    def _forget_pins(self) -> None:
        # A cold reset clears every verified PIN (the spec's VERIFY P1=FF
        # would too, but not every card has it: jcecard lacks it).
        try:
            self._link.reset(unpower=True)
        except TokenError as exc:
            log.info("could not reset the card in %r after an admin operation: %s", self._reader, exc)

    def _select(self) -> None:
        _, sw = self._link.transmit(_select_apdu())
        if sw != SW_OK and sw >> 8 != 0x61:
            raise KeyNotFound(f"the card in {self._reader!r} has no OpenPGP application (SW {sw:04X})")

    def _read_facts(self) -> CardFacts:
        return parse_application_data(self._get_data(DO_APPLICATION_RELATED))

    # -- APDUs ------------------------------------------------------------------

    def _command(
        self,
        ins: int,
        p1: int,
        p2: int,
        data: bytes = b"",
        *,
        facts: CardFacts | None = None,
        expect_data: bool = True,
    ) -> tuple[bytes, int]:
        """Send one command (chained or extended as needed); the whole response and SW."""
        if len(data) <= SHORT_MAX_DATA:
            apdu = bytes([0x00, ins, p1, p2]) + (bytes([len(data)]) + data if data else b"")
            return self._exchange(apdu + (b"\x00" if expect_data else b""))
        facts = facts or self._facts
        if self._use_chaining(facts, len(data)):
            return self._chained(ins, p1, p2, data, expect_data)
        apdu = bytes([0x00, ins, p1, p2, 0x00]) + len(data).to_bytes(2, "big") + data
        return self._exchange(apdu + (b"\x00\x00" if expect_data else b""))

    def _use_chaining(self, facts: CardFacts | None, size: int) -> bool:
        if self._transport != "auto":
            return self._transport == "chaining"
        if facts is None or facts.chaining or not facts.extended:
            return True
        if facts.max_command_bytes is not None and size > facts.max_command_bytes:
            raise TokenError(
                f"the card in {self._reader!r} takes at most {facts.max_command_bytes} "
                f"bytes per command, not {size}"
            )
        return False

    def _chained(self, ins: int, p1: int, p2: int, data: bytes, expect_data: bool) -> tuple[bytes, int]:
        pieces = [data[i : i + SHORT_MAX_DATA] for i in range(0, len(data), SHORT_MAX_DATA)]
        for piece in pieces[:-1]:
            _, sw = self._link.transmit(bytes([CLA_CHAIN, ins, p1, p2, len(piece)]) + piece)
            if sw != SW_OK:
                return b"", sw  # the card refused the chain: its SW says why
        last = pieces[-1]
        return self._exchange(
            bytes([0x00, ins, p1, p2, len(last)]) + last + (b"\x00" if expect_data else b"")
        )

    def _exchange(self, apdu: bytes) -> tuple[bytes, int]:
        """One APDU plus GET RESPONSE rounds (61xx) and one Le correction (6Cxx)."""
        data, sw = self._link.transmit(apdu)
        if sw >> 8 == 0x6C and len(apdu) == 5:  # wrong Le on a short GET-style command: resend
            data, sw = self._link.transmit(apdu[:-1] + bytes([sw & 0xFF]))
        chunks = [data]
        for _ in range(MAX_GET_RESPONSE_ROUNDS):
            if sw >> 8 != 0x61:
                return b"".join(chunks), sw
            data, sw = self._link.transmit(bytes([0x00, INS_GET_RESPONSE, 0x00, 0x00, sw & 0xFF]))
            chunks.append(data)
        raise TokenError(
            f"the card in {self._reader!r} kept sending more data (over {MAX_GET_RESPONSE_ROUNDS} rounds)"
        )

    def _get_data(self, tag: int) -> bytes:
        data, sw = self._command(INS_GET_DATA, tag >> 8, tag & 0xFF)
        if sw != SW_OK:
            raise TokenError(f"the card in {self._reader!r} did not give data object {tag:04X} (SW {sw:04X})")
        return data

    def _put_data(self, tag: int, value: bytes, what: str) -> None:
        _, sw = self._command(INS_PUT_DATA, tag >> 8, tag & 0xFF, value, expect_data=False)
        if sw != SW_OK:
            raise TokenError(f"the card in {self._reader!r} refused to set {what} (SW {sw:04X})")

    # -- PINs ---------------------------------------------------------------------

    def _verify(self, reference: int, pin: str, who: str) -> None:
        _check_pin_length(pin, ADMIN_PIN_MIN_LENGTH if reference == PW3 else PIN_MIN_LENGTH, who)
        _, sw = self._command(INS_VERIFY, 0x00, reference, pin.encode("utf-8"), expect_data=False)
        self._check_pin_sw(sw, reference, who)

    def _check_pin_sw(self, sw: int, reference: int, who: str) -> None:
        """Raise WrongPin / PinLocked / TokenError unless `sw` is 9000."""
        if sw == SW_OK:
            return
        if sw == SW_BLOCKED:
            raise PinLocked(self._locked_message(reference, who))
        if sw >> 4 == 0x63C or sw == SW_SECURITY_NOT_SATISFIED:
            # Some cards (Gnuk) answer a wrong PIN with 6982: the counter
            # on the card is the truth either way.
            status = self._retry_status(reference, sw)
            if status.locked:
                raise PinLocked(self._locked_message(reference, who))
            hint = " (the next wrong one locks it)" if status.final_try else ""
            raise WrongPin(
                f"wrong {who} for the card in {self._reader!r}: {status.tries_left} tries left{hint}", status
            )
        if sw in (SW_WRONG_LENGTH, SW_WRONG_DATA):
            raise TokenError(
                f"the card in {self._reader!r} refused the {who} (length or characters; SW {sw:04X})"
            )
        raise TokenError(f"the card in {self._reader!r} refused the {who} (SW {sw:04X})")

    def _retry_status(self, reference: int, sw: int) -> PinStatus:
        if sw >> 4 == 0x63C:
            return pin_status_from_tries(sw & 0x0F)
        pw_status = self._get_data(DO_PW_STATUS)
        return pin_status_from_tries(pw_status[6] if reference == PW3 else pw_status[4])

    def _locked_message(self, reference: int, who: str) -> str:
        if reference == PW3:
            return (
                f"the {who} of the card in {self._reader!r} is locked; only a factory reset "
                "of the card's OpenPGP application can clear it (its keys are lost)"
            )
        return (
            f"the {who} of the card in {self._reader!r} is locked; use `wallet card unblock` "
            "with the admin PIN or resetting code"
        )

    # -- Token interface ----------------------------------------------------------

    def info(self) -> TokenInfo:
        with self._session() as facts:
            major, minor = facts.version
            return TokenInfo(
                kind="openpgp-card",
                label=self._reader,
                serial=facts.serial,
                manufacturer=facts.manufacturer,
                model=f"OpenPGP card v{major}.{minor}",
            )

    def pin_status(self) -> PinStatus:
        with self._session() as facts:
            return facts.pin_status()

    def admin_pin_status(self) -> PinStatus:
        with self._session() as facts:
            return pin_status_from_tries(facts.pw_status[6])

    def generate_key(
        self,
        key_type: KeyType,
        pin: str,
        *,
        so_pin: str | None = None,
        entropy: bytes | None = None,
        label: str = "tokenpay-signing",
        mode: KeyMode | None = None,
    ) -> KeyRecord:
        """Generate the signing key in the card's signature slot (REPLACES the key there).

        `pin` is password B (PW1), checked first so that a wrong one destroys
        nothing; `so_pin` is the admin PIN (PW3), which key generation needs.
        `entropy` is ignored: cards take no seed. `label` is kept in the record
        only (the card has no key labels).
        """
        key_type = KeyType(key_type)
        if mode is not None and KeyMode(mode) is not KeyMode.RESIDENT:
            raise TokenError("an OpenPGP card keeps its keys on the card: only resident mode is possible")
        if so_pin is None:
            raise TokenError("generating a key on an OpenPGP card needs its admin PIN (PW3)")
        if entropy:
            log.debug("OpenPGP cards take no seed material; entropy ignored")
        with self._session(reset_after=True) as facts:
            self._verify(PW1_OTHER, pin, "password B (card PIN)")
            self._verify(PW3, so_pin, "admin PIN")
            self._set_algorithm(key_type, facts)
            self._make_pin_single_use(facts)
            public_do, sw = self._command(INS_GENERATE, 0x80, 0x00, CRT_SIGNATURE)
            if sw != SW_OK:
                raise TokenError(
                    f"the card in {self._reader!r} could not generate a {key_type.value} key (SW {sw:04X})"
                )
            spki_der = spki_from_public_key_do(key_type, public_do)
            return KeyRecord(
                mode=KeyMode.RESIDENT,
                key_type=key_type,
                algorithm=ALGORITHM_FOR_KEY_TYPE[key_type],
                spki_der=spki_der,
                handle={
                    "format": HANDLE_FORMAT,
                    "reader": self._reader,
                    "serial": facts.serial,
                    "manufacturer_id": f"{facts.manufacturer_id:04X}",
                    "slot": SIGNATURE_SLOT,
                    "key_label": label,
                },
            )

    def _set_algorithm(self, key_type: KeyType, facts: CardFacts) -> None:
        if attributes_match(key_type, facts.algo_sig):
            return
        wanted = algorithm_attributes(key_type, facts.algo_sig)
        _, sw = self._command(INS_PUT_DATA, 0x00, DO_ALGO_SIG, wanted, expect_data=False)
        # Some cards accept the write and keep their old value: read it back.
        if sw != SW_OK or not attributes_match(key_type, self._get_data(DO_ALGO_SIG)):
            raise TokenError(
                f"the card in {self._reader!r} does not support {key_type.value} signature keys (SW {sw:04X})"
            )

    def _make_pin_single_use(self, facts: CardFacts) -> None:
        # PW1 status byte 00: a VERIFY allows one signature only,
        # so password B is needed per signature and never lingers verified.
        if facts.pw_status[0] == 0x00:
            return
        _, sw = self._command(INS_PUT_DATA, 0x00, DO_PW_STATUS, b"\x00", expect_data=False)
        if sw != SW_OK:
            log.info("the card in %r keeps PW1 valid for several signatures (SW %04X)", self._reader, sw)

    def sign(self, key: KeyRecord, message: bytes, pin: str) -> bytes:
        key_type = KeyType(key.key_type)
        if len(message) > MAX_MESSAGE_BYTES:
            raise TokenError(
                f"message of {len(message)} bytes is too long for a card (max {MAX_MESSAGE_BYTES})"
            )
        public_key = _record_public_key(key)
        with self._session() as facts:
            self._check_key_on_card(key, facts)
            self._verify(PW1_SIGN, pin, "password B (card PIN)")
            # PW1 "valid for several" (a card we did not set up), or a PSO
            # that failed and so did not use up the verification: do not
            # leave PW1 verified for whoever talks to the card next.
            self._reset_pending = True
            raw = self._compute_signature(key_type, message, facts)
            self._reset_pending = facts.pw_status[0] != 0x00
        signature = _wire_signature(key_type, raw)
        _check_signature(public_key, key, message, signature)
        return signature

    def _check_key_on_card(self, key: KeyRecord, facts: CardFacts) -> None:
        handle = key.handle
        if handle.get("format") != HANDLE_FORMAT or handle.get("slot") != SIGNATURE_SLOT:
            raise KeyNotFound("key record is not an OpenPGP card signature key")
        card_id = (f"{facts.manufacturer_id:04X}", facts.serial)
        wanted = (handle.get("manufacturer_id", card_id[0]), handle.get("serial"))
        if card_id != wanted:
            raise KeyNotFound(
                f"the card in {self._reader!r} is serial {facts.serial}; this key is on "
                f"card {wanted[1]}: insert that card"
            )
        public_do, sw = self._command(INS_GENERATE, 0x81, 0x00, CRT_SIGNATURE)
        if sw != SW_OK:
            raise KeyNotFound(f"card {facts.serial} has no signature key (SW {sw:04X})")
        try:
            on_card = spki_from_public_key_do(KeyType(key.key_type), public_do)
        except TokenError:
            on_card = b""
        if on_card != key.spki_der:
            raise KeyNotFound(
                f"the signature key on card {facts.serial} is no longer this key "
                "(it was replaced on the card)"
            )

    def _compute_signature(self, key_type: KeyType, message: bytes, facts: CardFacts) -> bytes:
        if key_type is KeyType.RSA2048:
            data = SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
        elif key_type is KeyType.P256:
            data = hashlib.sha256(message).digest()
        else:
            data = message  # EdDSA signs the message itself (PureEdDSA)
        raw, sw = self._command(INS_PSO, 0x9E, 0x9A, data, facts=facts)
        if sw == SW_OK:
            return raw
        if sw == SW_SECURITY_NOT_SATISFIED:
            raise TokenError(f"the card in {self._reader!r} refused to sign: PIN not verified (SW 6982)")
        if sw in (SW_WRONG_LENGTH, SW_WRONG_DATA) and key_type is KeyType.ED25519:
            raise TokenError(
                f"the card in {self._reader!r} cannot sign a {len(message)}-byte message with "
                f"Ed25519 (SW {sw:04X}); cards limit EdDSA input, use rsa2048 or p256 keys"
            )
        raise TokenError(f"the card in {self._reader!r} refused to sign (SW {sw:04X})")

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        """CHANGE REFERENCE DATA for PW1: old and new PIN in one command."""
        with self._session() as facts:
            _check_pin_length(old_pin, PIN_MIN_LENGTH, "password B (card PIN)")
            _check_new_pin(new_pin, PIN_MIN_LENGTH, facts.pw_status[1], "new card PIN")
            data = old_pin.encode("utf-8") + new_pin.encode("utf-8")
            _, sw = self._command(INS_CHANGE_REFERENCE_DATA, 0x00, PW1_SIGN, data, expect_data=False)
            self._check_pin_sw(sw, PW1_SIGN, "password B (card PIN)")

    def unblock(
        self, new_pin: str, *, admin_pin: str | None = None, resetting_code: str | None = None
    ) -> None:
        """RESET RETRY COUNTER for PW1, with the admin PIN or the resetting code."""
        if (admin_pin is None) == (resetting_code is None):
            raise TokenError("unblocking the card PIN needs either the admin PIN or the resetting code")
        with self._session(reset_after=True) as facts:
            _check_new_pin(new_pin, PIN_MIN_LENGTH, facts.pw_status[1], "new card PIN")
            if admin_pin is not None:
                self._verify(PW3, admin_pin, "admin PIN")
                _, sw = self._command(
                    INS_RESET_RETRY_COUNTER, 0x02, PW1_SIGN, new_pin.encode("utf-8"), expect_data=False
                )
                if sw != SW_OK:
                    raise TokenError(f"the card in {self._reader!r} refused to unblock the PIN (SW {sw:04X})")
                return
            self._unblock_with_code(resetting_code, new_pin, facts)

    def _unblock_with_code(self, code: str, new_pin: str, facts: CardFacts) -> None:
        if facts.pw_status[5] == 0:
            raise PinLocked(
                f"the card in {self._reader!r} has no usable resetting code "
                "(none set, or locked): use the admin PIN"
            )
        _check_pin_length(code, ADMIN_PIN_MIN_LENGTH, "resetting code")
        data = code.encode("utf-8") + new_pin.encode("utf-8")
        _, sw = self._command(INS_RESET_RETRY_COUNTER, 0x00, PW1_SIGN, data, expect_data=False)
        if sw == SW_OK:
            return
        if sw == SW_BLOCKED:
            raise PinLocked(
                f"the resetting code of the card in {self._reader!r} is locked: use the admin PIN"
            )
        if sw >> 4 == 0x63C or sw == SW_SECURITY_NOT_SATISFIED:
            tries = sw & 0x0F if sw >> 4 == 0x63C else self._get_data(DO_PW_STATUS)[5]
            raise WrongPin(
                f"wrong resetting code for the card in {self._reader!r}: {tries} tries left",
                pin_status_from_tries(tries),
            )
        raise TokenError(f"the card in {self._reader!r} refused to unblock the PIN (SW {sw:04X})")

    def set_resetting_code(self, code: str, *, admin_pin: str) -> None:
        """Set the resetting code (PUT DATA D3 after the admin PIN)."""
        with self._session(reset_after=True) as facts:
            _check_new_pin(code, ADMIN_PIN_MIN_LENGTH, facts.pw_status[2], "resetting code")
            self._verify(PW3, admin_pin, "admin PIN")
            self._put_data(DO_RESETTING_CODE, code.encode("utf-8"), "the resetting code")

    def close(self) -> None:
        with self._lock:
            self._link.close()


# --------------------------------------------------------------------------
# Helpers without card I/O


def _check_pin_length(pin: str, minimum: int, who: str) -> None:
    # A PIN that cannot be right is refused here: sending it would spend
    # one of the card's few tries.
    if len(pin.encode("utf-8")) < minimum:
        raise TokenError(f"the {who} has at least {minimum} characters")


def _check_new_pin(pin: str, minimum: int, maximum: int, who: str) -> None:
    size = len(pin.encode("utf-8"))
    if size < minimum or (maximum and size > maximum):
        raise TokenError(f"the {who} must have {minimum} to {maximum or 'any number of'} characters")


def _record_public_key(key: KeyRecord):
    try:
        return serialization.load_der_public_key(key.spki_der)
    except ValueError:
        raise KeyNotFound("key record is damaged: its public key does not parse") from None


def _wire_signature(key_type: KeyType, raw: bytes) -> bytes:
    if key_type is KeyType.P256:
        if len(raw) == 64:
            return ecdsa_raw_to_der_low_s(raw)
        try:  # a few cards answer in DER
            return ecdsa_der_low_s(*decode_dss_signature(raw))
        except ValueError:
            raise TokenError(f"the card returned an ECDSA signature of {len(raw)} bytes") from None
    return raw


def _check_signature(public_key, key: KeyRecord, message: bytes, signature: bytes) -> None:
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise TokenError(
            f"card {key.handle.get('serial')} returned a signature that does not verify "
            "with this key; do not use this card"
        ) from None
