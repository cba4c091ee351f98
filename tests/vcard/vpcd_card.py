"""A virtual OpenPGP card in a PC/SC reader: jcecard's card logic behind vpcd.

    python tests/vcard/vpcd_card.py --port 35963 --storage DIR [--serial 1A2B3C4D]

Debian's `vsmartcard-vpcd` driver (loaded by pcscd) listens on a TCP port per
reader slot; a card "is inserted" while a client is connected to that port.
This process is that client. The protocol (vsmartcard's vpcd.c): every
message is a 2-byte big-endian length and a payload. A 1-byte payload is a
control code (0 power off, 1 power on, 2 reset, 4 "send the ATR", which vpcd
also uses as its presence poll); anything longer is a C-APDU, answered with
the R-APDU. Only ATR requests and APDUs get an answer.

The card logic is jcecard's `OpenPGPCard`, in-process: its own TCP server
speaks a different protocol (4-byte lengths, for its own IFD handler).
What this adapter adds or fixes around jcecard 0.1.0:

* A random card serial on a fresh storage directory: jcecard gives every card
  serial 00000001, and the wallet tells cards apart by serial.
* Atomic state saves: jcecard rewrites card_state.json in place, so a card
  killed mid-save (the tests "remove" cards by killing this process) would
  come back as a factory-fresh card with default PINs and no key.
* After GENERATE ASYMMETRIC KEY PAIR the slot's in-memory key is reloaded
  from the saved state: jcecard keeps an RSA key it generated earlier in
  the same process and keeps signing with it after an Ed25519 generation.
* jcecard's own logging is turned down: at INFO it logs PINs in clear.
* Two commands of OpenPGP card 3.4 that OpenSC sends and jcecard 0.1.0
  lacks (it claims version 3.4 in its AID): SELECT DATA (INS A5, which of
  the three cardholder certificates DO 7F21 means; jcecard answered 6D00
  and OpenSC's PKCS#11 module then shows "token not recognized"), and
  VERIFY with P1=FF (reset a PIN's verified state, OpenSC's C_Logout;
  jcecard ignored P1 and answered as for a status check, leaving the PIN
  verified). Occurrences 1 and 2 of DO 7F21 read as empty.
* The Algorithm Information DO (FA, OpenPGP card 3.4): jcecard answers
  6A88, so OpenSC offers only the algorithms now set in C1-C3 (RSA-2048 on a
  fresh card) and refuses Ed25519 key generation ("mechanism not
  supported"). The list given here is what jcecard really does: RSA-2048
  and Ed25519 for signing and authentication, RSA-2048 for decryption.

Command chaining (CLA bit 0x10) and extended-length APDUs are both handled
by jcecard itself and passed through unchanged.

Removal = this process ends. SIGTERM shuts the connection at once (an APDU
in hand is still processed and saved, its answer is lost, like a card
pulled mid-command) and exits 0; SIGKILL is abrupt (state stays consistent
thanks to the atomic save). If vpcd goes away (pcscd restarted) the adapter
reconnects, for at most --give-up-s seconds without a connection.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import secrets
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR = 0, 1, 2, 4
INS_GENERATE = 0x47
P1_GENERATE = 0x80
INS_SELECT = 0xA4
INS_SELECT_DATA = 0xA5
INS_VERIFY = 0x20
INS_GET_DATA = 0xCA
INS_PUT_DATA = 0xDA
P1_VERIFY_RESET = 0xFF
P2_SELECT_DATA = 0x04
PW_REFERENCES = (0x81, 0x82, 0x83)
CERT_TAG = bytes.fromhex("7f21")
SELECT_DATA_CERT = bytes.fromhex("60045c027f21")  # tag list: 5C 02 7F21 inside 60
CERT_OCCURRENCES = 3  # OpenPGP card 3.4: one cardholder certificate per key slot
TAG_ALGORITHM_INFO = bytes.fromhex("00fa")
_RSA_2048 = bytes.fromhex("010800002000")  # RSA, 2048-bit modulus, 32-bit exponent, standard format
_ED25519 = bytes.fromhex("162b06010401da470f01")  # EdDSA, OID 1.3.6.1.4.1.11591.15.1
# (key slot DO, algorithm attributes) pairs of the Algorithm Information DO FA.
SUPPORTED_ALGORITHMS = (
    (0xC1, _RSA_2048),
    (0xC1, _ED25519),
    (0xC2, _RSA_2048),
    (0xC3, _RSA_2048),
    (0xC3, _ED25519),
)
SW_OK = b"\x90\x00"
SW_WRONG_DATA = b"\x6a\x80"
SW_WRONG_P1P2 = b"\x6a\x86"
SW_NOT_SELECTED = b"\x69\x85"
RECONNECT_DELAY_S = 0.05
CONNECT_TIMEOUT_S = 2.0

log = logging.getLogger("vpcd_card")


class VirtualCard:
    """One jcecard card and the socket that makes it present in a reader."""

    def __init__(self, storage: Path, serial: int | None):
        os.environ["JCECARD_STORAGE_DIR"] = str(storage)  # jcecard's default lookup, too
        # By module path: the package's __init__ exports a function `main`
        # that shadows the submodule for `import jcecard.main as ...`.
        card_data = importlib.import_module("jcecard.card_data")
        crypto_backend = importlib.import_module("jcecard.crypto_backend")
        jcecard_main = importlib.import_module("jcecard.main")

        card_data.CardDataStore.save = _atomic_save  # see the module docstring
        for name in (
            "jcecard",
            "jcecard.main",
            "jcecard.card_data",
            "jcecard.pin_manager",
            "jcecard.security_state",
            "jcecard.crypto_backend",
            "jcecard.tlv",
            "jcecard.apdu",
        ):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger().setLevel(logging.WARNING)  # jcecard.main calls basicConfig(INFO)
        fresh = not (storage / card_data.CardDataStore.DEFAULT_STATE_FILE).exists()
        self._new_backend = crypto_backend.get_crypto_backend
        self.card = jcecard_main.OpenPGPCard(storage_path=storage)
        if fresh:
            self.card.card_state.serial_number = serial if serial is not None else _random_serial()
            self.card.save_state()
        self.stopping = False
        self.sock: socket.socket | None = None
        self.cert_occurrence = 0  # chosen by SELECT DATA; 0 after power-up and SELECT

    def handle(self, message: bytes) -> bytes | None:
        """The answer to one vpcd message, or None for controls that get none."""
        if len(message) == 1:
            return self._control(message[0])
        answer = self._opensc_command(message)
        if answer is not None:
            return answer
        response = self.card.process_apdu(message)
        generated = len(message) >= 4 and message[1] == INS_GENERATE and message[2] == P1_GENERATE
        if generated and response[-2:] == b"\x90\x00":
            self._reload_keys()
        return response

    def _opensc_command(self, message: bytes) -> bytes | None:
        """The answer to a command jcecard gets wrong (module docstring), or None to pass it on."""
        if len(message) < 4 or message[0] != 0x00:  # chained (CLA 10) or odd: jcecard's
            return None
        ins, p1, p2 = message[1], message[2], message[3]
        if ins == INS_SELECT:
            self.cert_occurrence = 0
            return None
        if ins == INS_SELECT_DATA:
            return self._select_data(p1, p2, message[4:])
        if ins == INS_VERIFY and p1 == P1_VERIFY_RESET:
            return self._verify_reset(p2, message[4:])
        if ins == INS_GET_DATA and message[2:4] == TAG_ALGORITHM_INFO:
            return self._algorithm_info()
        is_cert = message[2:4] == CERT_TAG
        if is_cert and ins in (INS_GET_DATA, INS_PUT_DATA) and self.cert_occurrence != 0:
            # jcecard keeps one certificate: the other two slots stay empty and read-only.
            return SW_OK if ins == INS_GET_DATA else SW_WRONG_P1P2
        return None

    def _algorithm_info(self) -> bytes:
        if not self.card.selected:
            return SW_NOT_SELECTED
        body = b"".join(bytes([tag, len(attrs)]) + attrs for tag, attrs in SUPPORTED_ALGORITHMS)
        return bytes([0xFA, len(body)]) + body + SW_OK  # short-form length: body < 128 bytes

    def _select_data(self, p1: int, p2: int, body: bytes) -> bytes:
        if not self.card.selected:
            return SW_NOT_SELECTED
        if p2 != P2_SELECT_DATA or p1 >= CERT_OCCURRENCES:
            return SW_WRONG_P1P2
        # Lc, then the tag list; a trailing Le (00) is allowed.
        if len(body) < 1 or body[1 : 1 + body[0]] != SELECT_DATA_CERT:
            return SW_WRONG_DATA
        self.cert_occurrence = p1
        return SW_OK

    def _verify_reset(self, p2: int, body: bytes) -> bytes:
        if not self.card.selected:
            return SW_NOT_SELECTED
        if p2 not in PW_REFERENCES or body.strip(b"\x00"):  # no data (Lc absent or Le only)
            return SW_WRONG_P1P2
        self.card._security.clear_verification(p2)
        return SW_OK

    def _control(self, code: int) -> bytes | None:
        if code == CTRL_ATR:
            return self.card.get_atr()
        self.cert_occurrence = 0
        if code == CTRL_ON:
            self.card.power_on()
        elif code == CTRL_OFF:
            self.card.power_off()
        elif code == CTRL_RESET:
            self.card.reset()
        else:
            log.warning("unknown vpcd control code %d ignored", code)
        return None

    def _reload_keys(self) -> None:
        # A fresh crypto backend, then jcecard's own loader: only the keys now
        # in the saved state are live (see the module docstring).
        self.card._crypto = self._new_backend()
        self.card._load_stored_keys()

    def save(self) -> None:
        self.card.save_state()


def _random_serial() -> int:
    # Never 0 or FFFFFFFF, which some tools treat as "no serial".
    return secrets.randbelow(0xFFFFFFFE) + 1


def _atomic_save(self) -> bool:
    """Replacement for jcecard's CardDataStore.save: write a temp file, then rename.

    Atomic against the process being killed, which is what tests do; no
    fsync, as a crashing machine is not part of the tests (and it would
    add ~1 ms to every PIN check and signature).
    """
    import json

    self._ensure_storage_dir()
    fd, tmp = tempfile.mkstemp(dir=self.storage_dir, prefix=".card_state.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(self.state.to_dict(), handle, indent=2)
        os.replace(tmp, self.state_file)
        return True
    except OSError as exc:
        log.error("could not save card state: %s", exc)
        with contextlib.suppress(OSError):  # the error above is the one to report
            os.unlink(tmp)
        return False


# --- the vpcd connection ---------------------------------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """`size` bytes, or None when vpcd closed the connection."""
    chunks, missing = [], size
    while missing:  # ends: each pass receives >= 1 byte or returns
        # Without QUICKACK Linux delays our ACK and vpcd's next small write
        # waits for it (Nagle): ~44 ms per APDU, measured (DESIGN.md).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        chunk = sock.recv(missing)
        if not chunk:
            return None
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">H", len(payload)) + payload)


def serve_connection(card: VirtualCard, sock: socket.socket) -> None:
    """Answer vpcd until it disconnects or we are asked to stop."""
    while not card.stopping:  # ends when vpcd closes the socket or on SIGTERM
        header = _recv_exact(sock, 2)
        if header is None:
            return
        (length,) = struct.unpack(">H", header)
        message = _recv_exact(sock, length) if length else b""
        if message is None:
            return
        if not message:
            continue
        answer = card.handle(message)
        if answer is not None:
            _send(sock, answer)


def connect(host: str, port: int, deadline: float, card: VirtualCard) -> socket.socket | None:
    """Connect to vpcd, retrying until `deadline` (vpcd may not be up yet)."""
    while time.monotonic() < deadline and not card.stopping:
        try:
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        except OSError:
            time.sleep(RECONNECT_DELAY_S)
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    return None


def run(card: VirtualCard, host: str, port: int, give_up_s: float) -> int:
    while not card.stopping:  # one pass per vpcd connection; bounded by give_up_s
        sock = connect(host, port, time.monotonic() + give_up_s, card)
        if sock is None:
            if card.stopping:
                return 0
            print(
                f"vpcd_card: nothing listening on {host}:{port} for {give_up_s:.0f} s; giving up",
                file=sys.stderr,
            )
            return 2
        card.sock = sock
        try:
            serve_connection(card, sock)
        except (ConnectionError, OSError):
            if card.stopping:
                break
            # vpcd went away (pcscd restarted): the card stays "in" and
            # reconnects with its state.
        finally:
            card.sock = None
            sock.close()
        card.card.power_off()  # a reader that vanished also unpowered the card
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port", type=int, required=True, help="vpcd port of the reader slot (35963 = first)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--storage", type=Path, required=True, help="directory for card_state.json")
    parser.add_argument(
        "--serial",
        type=lambda text: int(text, 16),
        default=None,
        help="card serial (8 hex digits) for a fresh storage dir; random by default",
    )
    parser.add_argument(
        "--give-up-s", type=float, default=300.0, help="exit when vpcd cannot be reached for this long"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="vpcd_card: %(levelname)s %(message)s")
    args.storage.mkdir(parents=True, exist_ok=True)
    card = VirtualCard(args.storage, args.serial)

    def on_signal(signum, frame):
        card.stopping = True
        if card.sock is not None:
            # Wakes the blocking recv (see the module docstring); a socket already gone needs no waking.
            with contextlib.suppress(OSError):
                card.sock.shutdown(socket.SHUT_RDWR)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run(card, args.host, args.port, args.give_up_s)
    finally:
        card.save()


if __name__ == "__main__":
    sys.exit(main())
