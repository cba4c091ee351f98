"""Card readers through PC/SC (pcscd on Linux), on pyscard.

What the OpenPGP card backend needs from the reader layer, and nothing card
specific beyond "does this card answer SELECT for an AID":

* `list_readers()`: every reader, whether a card is in it, and its ATR.
* `wait_for_card()`: block (bounded) until a wanted card is in a reader.
* `CardLink`: one shared connection to the card in one reader, with
  transactions, raw APDU exchange and PC/SC errors turned into TokenErrors:
  a card or reader that went away is `TokenRemoved`, a missing pcscd is
  `PcscUnavailable`.

Every function opens its own PC/SC context (a socket to pcscd; cheap), so
they are safe to call from any thread; a `CardLink` is not thread-safe on
its own, its owner serialises calls (OpenPgpCardToken holds a lock).

Long because it is one role, the reader layer: its parts (PC/SC error
translation, reader states, waiting, CardLink) share the private context and
error helpers; split, each piece would import them back.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from smartcard import scard
from smartcard.Exceptions import CardConnectionException, NoCardException
from smartcard.pcsc.PCSCCardConnection import PCSCCardConnection

from .base import TokenError, TokenRemoved

log = logging.getLogger(__name__)

OPENPGP_AID = bytes.fromhex("D27600012401")  # RID D276000124 + application 01

POLL_INTERVAL_S = 0.1  # pcscd itself polls vpcd/CCID readers every ~0.4 s
# How long to watch a reader after a failed exchange before deciding whether
# the card was pulled (pcscd notices a removal on its next poll, 0.1-0.4 s).
REMOVAL_SETTLE_S = 1.0
REMOVAL_POLL_S = 0.05
MAX_APDU_BYTES = 65544  # extended APDU: header + 3-byte Lc + 65535 + 2-byte Le

_HR_REMOVED = {scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD, scard.SCARD_W_UNPOWERED_CARD}
_HR_READER_GONE = {scard.SCARD_E_READER_UNAVAILABLE, scard.SCARD_E_UNKNOWN_READER}
_HR_NO_SERVICE = {scard.SCARD_E_NO_SERVICE, scard.SCARD_E_SERVICE_STOPPED}
# A failed exchange: the card was pulled mid-command, or it misbehaved.
_HR_COMM = {
    scard.SCARD_E_NOT_TRANSACTED,
    scard.SCARD_F_COMM_ERROR,
    scard.SCARD_E_COMM_DATA_LOST,
    scard.SCARD_W_UNRESPONSIVE_CARD,
    scard.SCARD_E_INVALID_HANDLE,
}


class PcscUnavailable(TokenError):
    """pcscd is not running (or not reachable)."""


class NoCard(TokenError):
    """No wanted card showed up in time."""


class CardWasReset(TokenError):
    """Another program reset the card: reconnect and start the operation over."""


@dataclass(frozen=True)
class ReaderInfo:
    name: str
    card_present: bool
    atr: str  # hex, "" without a card

    def to_json(self) -> dict:
        return dict(self.__dict__)


# --------------------------------------------------------------------------
# Errors


def _hr(value: int) -> int:
    return value & 0xFFFFFFFF


def pcsc_error(hresult: int, reader: str | None, doing: str) -> TokenError:
    """The TokenError for a PC/SC result code (one line, actionable)."""
    code = _hr(hresult)
    where = f"reader {reader!r}" if reader else "PC/SC"
    if code in {_hr(c) for c in _HR_NO_SERVICE}:
        return PcscUnavailable(
            "the PC/SC service is not running: start pcscd (`systemctl start pcscd`, or `pcscd` as root)"
        )
    if code in {_hr(c) for c in _HR_REMOVED}:
        return TokenRemoved(f"the card was removed from {where} ({doing})")
    if code in {_hr(c) for c in _HR_READER_GONE}:
        return TokenRemoved(f"{where} is no longer available (unplugged?) ({doing})")
    if code == _hr(scard.SCARD_W_RESET_CARD):
        return CardWasReset(f"the card in {where} was reset by another program ({doing})")
    if code == _hr(scard.SCARD_E_SHARING_VIOLATION):
        return TokenError(f"the card in {where} is held exclusively by another program ({doing})")
    if code == _hr(scard.SCARD_E_TIMEOUT):
        return TokenError(f"{where} did not answer in time ({doing})")
    return TokenError(
        f"PC/SC error on {where} while {doing}: {scard.SCardGetErrorMessage(hresult)} (0x{code:08X})"
    )


def translate_exception(exc: Exception, reader: str | None, doing: str) -> TokenError:
    """pyscard's CardConnectionException / NoCardException as a TokenError."""
    if isinstance(exc, NoCardException):
        return TokenRemoved(f"no card in reader {reader!r} ({doing})")
    hresult = getattr(exc, "hresult", -1)
    if hresult in (-1, None):
        return TokenError(f"PC/SC error on reader {reader!r} while {doing}: {exc}")
    return pcsc_error(hresult, reader, doing)


@contextlib.contextmanager
def pcsc_errors(reader: str | None, doing: str) -> Iterator[None]:
    """Run pyscard calls; their exceptions come out as TokenErrors."""
    try:
        yield
    except (CardConnectionException, NoCardException) as exc:
        raise translate_exception(exc, reader, doing) from None


# --------------------------------------------------------------------------
# Contexts, readers, presence


@contextlib.contextmanager
def _context() -> Iterator[int]:
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        raise pcsc_error(hresult, None, "connecting to pcscd")
    try:
        yield context
    finally:
        scard.SCardReleaseContext(context)


def _reader_names(context: int) -> list[str]:
    hresult, names = scard.SCardListReaders(context, [])
    if _hr(hresult) == _hr(scard.SCARD_E_NO_READERS_AVAILABLE):
        return []
    if hresult != scard.SCARD_S_SUCCESS:
        raise pcsc_error(hresult, None, "listing readers")
    return list(names)


def _states(context: int, names: list[str]) -> list[ReaderInfo]:
    if not names:
        return []
    hresult, states = scard.SCardGetStatusChange(
        context, 0, [(name, scard.SCARD_STATE_UNAWARE) for name in names]
    )
    if _hr(hresult) == _hr(scard.SCARD_E_UNKNOWN_READER):
        # A reader vanished between the two calls: ask again next time.
        return [ReaderInfo(name, False, "") for name in names]
    if hresult != scard.SCARD_S_SUCCESS:
        raise pcsc_error(hresult, None, "reading reader states")
    infos = []
    for name, event_state, atr in states:
        present = bool(event_state & scard.SCARD_STATE_PRESENT) and not event_state & scard.SCARD_STATE_MUTE
        infos.append(ReaderInfo(name, present, bytes(atr).hex().upper() if present else ""))
    return infos


def list_readers() -> list[ReaderInfo]:
    """Every reader pcscd knows, with card presence and ATR. [] if none."""
    with _context() as context:
        return _states(context, _reader_names(context))


def card_present(reader: str) -> bool:
    with _context() as context:
        return any(info.card_present for info in _states(context, [reader]) if info.name == reader)


def _card_gone_after_failure(reader: str) -> bool:
    """After a failed exchange: True if the card is (now) gone from `reader`."""
    deadline_s = time.monotonic() + REMOVAL_SETTLE_S
    for _ in range(int(REMOVAL_SETTLE_S / REMOVAL_POLL_S) + 1):  # bounded by the deadline, too
        try:
            if not card_present(reader):
                return True
        except PcscUnavailable:
            raise  # pcscd itself went away: say that, not "card removed"
        except TokenError:
            return True  # the reader itself is gone
        if time.monotonic() >= deadline_s:
            break
        time.sleep(REMOVAL_POLL_S)
    return False


def matching_readers(names: list[str], wanted: str | None) -> list[str]:
    """`wanted` by exact name, else every reader whose name contains it (any case)."""
    if wanted is None:
        return list(names)
    if wanted in names:
        return [wanted]
    return [name for name in names if wanted.lower() in name.lower()]


# --------------------------------------------------------------------------
# Waiting for a card


def has_application(reader: str, aid: bytes) -> bool:
    """Whether the card in `reader` answers SELECT for `aid` (9000 or 61xx)."""
    link = CardLink(reader)
    try:
        link.connect()
        _data, sw = link.transmit(bytes([0x00, 0xA4, 0x04, 0x00, len(aid)]) + aid + b"\x00")
        return sw == 0x9000 or sw >> 8 == 0x61
    except TokenError:
        return False
    finally:
        link.close()


def wait_for_card(
    reader: str | None,
    timeout_s: float,
    on_wait: Callable[[str], None],
    *,
    accept: Callable[[str], bool] | None = None,
    what: str = "OpenPGP card",
) -> str:
    """The name of a reader holding a wanted card, waiting up to `timeout_s`.

    `reader` None means any reader; otherwise the exact reader name or a
    part of it. A card is wanted if `accept(reader_name)` says so (default:
    it has the OpenPGP application). `on_wait` is called once, with a line
    for the user, if the card is not there at once. Raises NoCard on timeout,
    PcscUnavailable without pcscd.
    """
    accept = accept or (lambda name: has_application(name, OPENPGP_AID))
    deadline_s = time.monotonic() + max(0.0, timeout_s)
    rejected: set[tuple[str, str]] = set()  # (reader, ATR) already probed: not wanted
    told = False
    seen: list[ReaderInfo] = []
    for _ in range(int(timeout_s / POLL_INTERVAL_S) + 2):  # also bounded by the deadline
        with _context() as context:
            seen = _states(context, matching_readers(_reader_names(context), reader))
        found = _first_wanted(seen, accept, rejected)
        if found is not None:
            return found
        if not told:
            on_wait(_wait_message(reader, seen, what))
            told = True
        remaining_s = deadline_s - time.monotonic()
        if remaining_s <= 0:
            break
        time.sleep(min(POLL_INTERVAL_S, remaining_s))
    raise NoCard(_timeout_message(reader, seen, timeout_s, what))


def _first_wanted(
    seen: list[ReaderInfo], accept: Callable[[str], bool], rejected: set[tuple[str, str]]
) -> str | None:
    for info in seen:
        if not info.card_present or (info.name, info.atr) in rejected:
            continue
        if accept(info.name):
            return info.name
        # Probing again would only SELECT the same card every poll; a new
        # card in that reader has another ATR or passes through "absent".
        rejected.add((info.name, info.atr))
    rejected.intersection_update({(info.name, info.atr) for info in seen if info.card_present})
    return None


def _wait_message(reader: str | None, seen: list[ReaderInfo], what: str) -> str:
    if reader is not None and not seen:
        return f"connect the card reader {reader!r} and insert your {what}…"
    if reader is None and not seen:
        return f"connect a card reader and insert your {what}…"
    where = seen[0].name if reader is not None and len(seen) == 1 else "a card reader"
    if any(info.card_present for info in seen):
        return f"the card in {where} is not your {what}: insert your {what} into {where}…"
    return f"insert your {what} into {where}…"


def _timeout_message(reader: str | None, seen: list[ReaderInfo], timeout_s: float, what: str) -> str:
    where = f"reader {reader!r}" if reader is not None else "any reader"
    readers = ", ".join(info.name for info in seen) or "none"
    return f"no {what} in {where} after {timeout_s:g} s (readers seen: {readers})"


# --------------------------------------------------------------------------
# One connection to one card


class CardLink:
    """A shared PC/SC connection to the card in one reader.

    Transactions (`with link.transaction():`) keep other programs out for
    the length of one operation. All failures are TokenErrors.
    """

    def __init__(self, reader: str):
        self.reader = reader
        self._conn: PCSCCardConnection | None = None
        self.atr = b""

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connect(self) -> bytes:
        """Connect (shared); returns the ATR."""
        self.close()
        with pcsc_errors(self.reader, "connecting"):
            conn = PCSCCardConnection(self.reader)
        try:
            with pcsc_errors(self.reader, "connecting"):
                conn.connect(mode=scard.SCARD_SHARE_SHARED, disposition=_DISPOSITION)
                self.atr = bytes(conn.getATR())
        except TokenError:
            _release(conn)
            raise
        self._conn = conn
        return self.atr

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _release(conn)

    def reset(self, *, unpower: bool = True) -> None:
        """Reset the card (cold by default): clears every verified PIN on it."""
        self._reconnect(scard.SCARD_UNPOWER_CARD if unpower else scard.SCARD_RESET_CARD, "resetting the card")

    def acknowledge_reset(self) -> None:
        """After SCARD_W_RESET_CARD: reconnect without resetting again."""
        self._reconnect(scard.SCARD_LEAVE_CARD, "reconnecting after a reset")

    def _reconnect(self, disposition: int, doing: str) -> None:
        conn = self._require()
        try:
            with pcsc_errors(self.reader, doing):
                conn.reconnect(mode=scard.SCARD_SHARE_SHARED, disposition=disposition)
        except TokenError:
            self.close()
            raise
        conn.disposition = _DISPOSITION  # pyscard keeps the last one for disconnect

    def begin_transaction(self) -> None:
        """Exclusive use of the card until end_transaction (other programs wait)."""
        conn = self._require()
        hresult = scard.SCardBeginTransaction(conn.hcard)
        if hresult != scard.SCARD_S_SUCCESS:
            error = pcsc_error(hresult, self.reader, "starting a transaction")
            if not isinstance(error, CardWasReset):
                self.close()
            raise error

    def end_transaction(self) -> None:
        conn = self._conn
        if conn is not None and conn.hcard is not None:
            # Fails harmlessly if the card went away meanwhile.
            scard.SCardEndTransaction(conn.hcard, scard.SCARD_LEAVE_CARD)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.begin_transaction()
        try:
            yield
        finally:
            self.end_transaction()

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        """Send one C-APDU; returns (response data, SW as an int)."""
        if len(apdu) > MAX_APDU_BYTES:
            raise TokenError(f"APDU of {len(apdu)} bytes is too long for PC/SC")
        conn = self._require()
        try:
            data, sw1, sw2 = conn.transmit(list(apdu))
        except (CardConnectionException, NoCardException) as exc:
            raise self._failed_exchange(exc) from None
        return bytes(data), (sw1 << 8) | sw2

    def _failed_exchange(self, exc: Exception) -> TokenError:
        error = translate_exception(exc, self.reader, "exchanging an APDU")
        hresult = _hr(getattr(exc, "hresult", -1))
        # vpcd answers a transmission to a card that vanished with success
        # and no bytes; pyscard reports "no valid response" with hresult 0.
        # vpcd and CCID report a card pulled mid-command as a failed
        # transmission; pcscd only marks the reader empty on its next
        # poll. Watch briefly so that a removal is called a removal.
        failed = hresult in {_hr(c) for c in _HR_COMM} or hresult == scard.SCARD_S_SUCCESS
        if failed and _card_gone_after_failure(self.reader):
            error = TokenRemoved(f"the card was removed from reader {self.reader!r} during an operation")
        if not isinstance(error, CardWasReset):
            self.close()
        return error

    def _require(self) -> PCSCCardConnection:
        if self._conn is None:
            raise TokenRemoved(f"not connected to a card in reader {self.reader!r}")
        return self._conn


# Disconnecting leaves the card as it is. Unpowering would disturb other
# programs using the card, and unpowering a card that was just pulled fails
# in pcscd 1.9.9 (SCARD_W_REMOVED_CARD) in a way that marks the reader empty
# behind its polling thread's back: a card put in before the next poll is
# then never reported (seen with vpcd). PINs are cleared by the token
# itself (single-use PW1, reset() after admin operations).
_DISPOSITION = scard.SCARD_LEAVE_CARD


def _release(conn: PCSCCardConnection) -> None:
    # The card may already be gone: then there is nothing to release on it.
    with contextlib.suppress(CardConnectionException, NoCardException):
        conn.disconnect()
    with contextlib.suppress(CardConnectionException, NoCardException):
        conn.release()
