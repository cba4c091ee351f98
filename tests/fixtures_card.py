"""Fixtures for smartcards: a private pcscd with vpcd readers, and virtual
OpenPGP cards (jcecard behind tests/vcard/vpcd_card.py) to put in them.

pcscd's client socket is fixed (/run/pcscd/pcscd.comm), so one pcscd serves
the whole machine: the session fixture starts its own only if none is
running, with a private reader.conf.d whose vpcd entry listens on free
ports (vpcd opens PORT and PORT+1: readers "Virtual PCD 00 00" and
"Virtual PCD 00 01"). It is stopped by PID at the end, never by name.
Missing pcscd/vpcd/jcecard skip the tests locally and fail them under CI=true.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import require

PCSCD = "/usr/sbin/pcscd"
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
ADAPTER = Path(__file__).resolve().parent / "vcard" / "vpcd_card.py"
VPCD_SLOTS = 2  # Debian's vpcd build: two slots per reader.conf entry
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05
PCSCD_POLL_S = 0.5  # pcscd polls readers without hotplug events every 0.4 s


def _consecutive_free_ports(count: int) -> int:
    """A base port such that base..base+count-1 are all free (vpcd binds 0.0.0.0)."""
    for _ in range(200):
        base = 20000 + secrets.randbelow(40000)
        sockets = []
        try:
            for offset in range(count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("0.0.0.0", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no run of free TCP ports found for vpcd")


def _pcscd_answers() -> bool:
    from tokens import pcsc

    try:
        pcsc.list_readers()
        return True
    except pcsc.PcscUnavailable:
        return False


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(POLL_S)
    raise TimeoutError(f"{what} (waited {timeout_s:g} s)")


def _stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)  # by PID, the one we started
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


@dataclass
class PcscdService:
    conf_dir: Path
    log_path: Path
    base_port: int
    process: subprocess.Popen

    def reader_name(self, index: int) -> str:
        return f"Virtual PCD 00 {index:02d}"

    def port(self, index: int) -> int:
        return self.base_port + index


@pytest.fixture(scope="session")
def pcscd_service(tmp_path_factory) -> PcscdService:
    """A pcscd of our own with two vpcd readers on free ports."""
    require("pcscd (Debian package pcscd)", os.path.exists(PCSCD))
    require("the vpcd driver (Debian package vsmartcard-vpcd)", os.path.exists(VPCD_DRIVER))
    for module in ("jcecard", "smartcard"):
        require(f"Python package {module} (pyscard, jcecard)", importlib.util.find_spec(module) is not None)
    if _pcscd_answers():
        require("a machine without a running pcscd (ours needs its fixed socket)", False)
    base = tmp_path_factory.mktemp("pcscd")
    conf_dir = base / "reader.conf.d"
    conf_dir.mkdir()
    port = _consecutive_free_ports(VPCD_SLOTS)
    (conf_dir / "vpcd").write_text(
        'FRIENDLYNAME "Virtual PCD"\n'
        f"DEVICENAME   /dev/null:{port}\n"  # vpcd: listen on this port (+1 per slot)
        f"LIBPATH      {VPCD_DRIVER}\n"
        f"CHANNELID    {port}\n"
    )
    log_path = base / "pcscd.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [PCSCD, "--foreground", "--config", str(conf_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    service = PcscdService(conf_dir, log_path, port, process)
    try:
        _wait(
            lambda: process.poll() is not None or _virtual_readers() >= VPCD_SLOTS,
            START_TIMEOUT_S,
            "pcscd did not list the vpcd readers",
        )
        if process.poll() is not None:
            raise RuntimeError(f"pcscd exited with {process.returncode}; see {log_path}")
        yield service
    finally:
        _stop_process(process)


def _virtual_readers() -> int:
    from tokens import pcsc

    try:
        return sum(1 for info in pcsc.list_readers() if info.name.startswith("Virtual PCD"))
    except pcsc.PcscUnavailable:
        return 0


def reader_has_card(reader: str) -> bool:
    from tokens import pcsc

    return any(info.name == reader and info.card_present for info in pcsc.list_readers())


# When the last card process in each reader ended (time.monotonic()).
_READER_FREED_AT: dict[str, float] = {}


def _reader_freed(reader: str) -> None:
    _READER_FREED_AT[reader] = time.monotonic()


@dataclass
class VirtualCard:
    """One jcecard card in one vpcd reader; stop() pulls it, start() puts it back."""

    service: PcscdService
    reader_index: int
    storage: Path
    log_path: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0  # time.monotonic() of the last start()
    stop_requested_at: float = 0.0  # ... of the last stop() call
    stopped_at: float = 0.0  # ... and of the last stop() that saw the process end

    @property
    def reader(self) -> str:
        return self.service.reader_name(self.reader_index)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def serial(self) -> str:
        """The card's serial as OpenPgpCardToken.info() shows it."""
        state = json.loads((self.storage / "card_state.json").read_text())
        return f"{state['serial_number']:08X}"

    def start(self, *, wait: bool = True) -> None:
        if self.running and self.stop_requested_at > self.started_at:
            self.process.wait(timeout=STOP_TIMEOUT_S)  # a stop() in another thread: let it finish
        if self.running:
            raise RuntimeError(f"a card is already in {self.reader}")
        # pcscd polls vpcd every 0.4 s: a card that connects before pcscd's
        # poll has seen the last one gone is taken for the same card and
        # never reported as inserted. Wait for "empty", then one more poll.
        if self.process is not None and self.stopped_at < self.started_at:
            _reader_freed(self.reader)  # it ended without stop() seeing when: count from now
        _wait(
            lambda: not reader_has_card(self.reader),
            START_TIMEOUT_S,
            f"{self.reader} still shows the previous card",
        )
        time.sleep(max(0.0, _READER_FREED_AT.get(self.reader, 0.0) + PCSCD_POLL_S - time.monotonic()))
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(ADAPTER),
                    "--port",
                    str(self.service.port(self.reader_index)),
                    "--storage",
                    str(self.storage),
                    "--give-up-s",
                    "60",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if wait:
            _wait(
                lambda: self.process.poll() is not None or reader_has_card(self.reader),
                START_TIMEOUT_S,
                f"card did not appear in {self.reader}",
            )
            if self.process.poll() is not None:
                raise RuntimeError(f"card adapter exited with {self.process.returncode}; see {self.log_path}")

    def stop(self, *, wait: bool = True, sig: int = signal.SIGTERM) -> None:
        """Pull the card: end its process (by PID) and wait until pcscd sees it gone."""
        if self.process is not None:
            self.stop_requested_at = time.monotonic()
            _stop_process(self.process, sig)
            self.stopped_at = time.monotonic()
            _reader_freed(self.reader)
        if wait:
            _wait(
                lambda: not reader_has_card(self.reader),
                START_TIMEOUT_S,
                f"card still present in {self.reader}",
            )


@pytest.fixture
def virtual_card(pcscd_service, tmp_path):
    """Factory: virtual_card(reader_index=0, storage=None) -> a started VirtualCard.

    A fresh storage directory (a new card, random serial, default PINs
    123456 / 12345678) unless `storage` names one to reuse. One card per
    reader; every card is pulled at the end of the test.
    """
    cards: list[VirtualCard] = []

    def make(reader_index: int = 0, storage: Path | None = None) -> VirtualCard:
        if not 0 <= reader_index < VPCD_SLOTS:
            raise ValueError(f"reader_index must be 0..{VPCD_SLOTS - 1}")
        if any(card.reader_index == reader_index and card.running for card in cards):
            raise RuntimeError(f"reader {reader_index} already holds a card; stop() it first")
        storage = storage or tmp_path / f"card-{len(cards)}-{secrets.token_hex(3)}"
        card = VirtualCard(pcscd_service, reader_index, storage, tmp_path / f"card-{len(cards)}.log")
        cards.append(card)
        card.start()
        return card

    yield make
    for card in cards:
        if card.running:
            card.stop()  # also waits until pcscd has seen the reader empty
