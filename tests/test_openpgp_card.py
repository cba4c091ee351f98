"""OpenPGP card backend on a real PC/SC stack: pcscd + vpcd + jcecard (no mocks).

Cards are jcecard emulators behind tests/vcard/vpcd_card.py; pulling a card
is ending its process. Fresh cards have PW1 123456 and PW3 12345678.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from paywire.algorithms import load_public_key, verify_signature
from tokens import pcsc
from tokens.base import (
    KeyMode,
    KeyNotFound,
    KeyType,
    PinLocked,
    TokenError,
    TokenRemoved,
    WrongPin,
)
from tokens.openpgp_card import OpenPgpCardToken, is_openpgp_card, open_openpgp_card

REPO = Path(__file__).resolve().parents[1]
PIN = "123456"
ADMIN_PIN = "12345678"
PAYLOAD_SIZES = [100, 1024, 8192]


def payload(size: int) -> bytes:
    return (b'{"type":"payment","amount_minor":1234,"memo":"' + b"x" * size)[:size]


def verifies(record, message: bytes, signature: bytes) -> None:
    verify_signature(record.algorithm, load_public_key(record.spki_der, record.algorithm), message, signature)


@pytest.fixture
def card(virtual_card):
    return virtual_card(0)


@pytest.fixture
def token(card):
    token = OpenPgpCardToken(card.reader)
    yield token
    token.close()


@pytest.fixture
def ed25519_key(token):
    return token.generate_key(KeyType.ED25519, PIN, so_pin=ADMIN_PIN)


# --- readers and cards coming and going -------------------------------------------


def test_list_readers_sees_insertion_and_removal(virtual_card, capsys):
    card = virtual_card(1)
    info = {reader.name: reader for reader in pcsc.list_readers()}[card.reader]
    assert info.card_present and info.atr.startswith("3B")
    assert is_openpgp_card(card.reader)

    started = time.monotonic()
    card.stop(wait=False)
    removal_s = _seconds_until(lambda: not _present(card.reader))
    messages: list[str] = []
    result: dict = {}

    def waiter():
        result["reader"] = pcsc.wait_for_card(card.reader, 10.0, messages.append)
        result["at"] = time.monotonic()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)  # the waiter is waiting: it has told the user once
    inserted_at = time.monotonic()
    card.start(wait=False)
    thread.join(timeout=15)
    assert result["reader"] == card.reader
    assert len(messages) == 1 and card.reader in messages[0] and "insert" in messages[0]
    with capsys.disabled():
        print(
            f"\n[pcsc] removal seen after {removal_s:.2f} s, insertion after "
            f"{result['at'] - inserted_at:.2f} s (wait_for_card), total {time.monotonic() - started:.2f} s"
        )


def test_wait_for_card_returns_at_once_when_present(card):
    messages: list[str] = []
    assert pcsc.wait_for_card(None, 5.0, messages.append) == card.reader
    assert pcsc.wait_for_card("pcd 00 00", 5.0, messages.append) == card.reader  # part of a name
    assert messages == []


def test_no_card_times_out(pcscd_service):
    messages: list[str] = []
    started = time.monotonic()
    with pytest.raises(pcsc.NoCard) as caught:
        pcsc.wait_for_card(pcscd_service.reader_name(1), 0.5, messages.append)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 2.0
    assert len(messages) == 1 and "insert" in messages[0]
    assert "\n" not in str(caught.value) and "Virtual PCD 00 01" in str(caught.value)
    with pytest.raises(pcsc.NoCard):
        open_openpgp_card(None, timeout_s=0.3, on_wait=lambda message: None)


def test_open_waits_for_the_card_with_the_serial(virtual_card):
    first = virtual_card(0)
    second = virtual_card(1)
    token = open_openpgp_card(None, timeout_s=5, on_wait=lambda m: None, serial=second.serial)
    assert token.reader == second.reader and token.info().serial == second.serial
    token.close()
    first.stop()
    messages: list[str] = []
    threading.Timer(0.3, first.start).start()
    token = open_openpgp_card(None, timeout_s=10, on_wait=messages.append, serial=first.serial)
    assert token.reader == first.reader
    assert len(messages) == 1 and first.serial in messages[0]
    token.close()


def test_pcscd_not_running_gives_a_clear_error(tmp_path):
    # pcsc-lite's client honours PCSCLITE_CSOCK_NAME: a socket nobody serves
    # is exactly what a machine without pcscd looks like to pyscard.
    code = (
        "from tokens import pcsc\n"
        "try:\n    pcsc.list_readers()\nexcept pcsc.PcscUnavailable as exc:\n    print(exc)\n"
    )
    env = dict(os.environ, PCSCLITE_CSOCK_NAME=str(tmp_path / "no-pcscd.comm"))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert "start pcscd" in result.stdout, result.stderr


# --- identity, keys, signatures --------------------------------------------------------


def test_info_and_pin_status(card, token):
    info = token.info()
    assert info.kind == "openpgp-card" and info.label == card.reader
    assert info.serial == card.serial and len(info.serial) == 8
    assert info.manufacturer == "test card" and info.model == "OpenPGP card v3.4"
    status = token.pin_status()
    assert status.tries_left == 3 and not status.locked


@pytest.mark.parametrize("key_type", [KeyType.ED25519, KeyType.RSA2048])
def test_generate_on_card_and_sign(card, token, key_type, capsys):
    record = token.generate_key(key_type, PIN, so_pin=ADMIN_PIN)
    assert record.mode is KeyMode.RESIDENT and record.key_type is key_type
    assert record.handle["serial"] == card.serial and record.handle["slot"] == "sig"
    assert record.handle["reader"] == card.reader
    for size in PAYLOAD_SIZES:
        message = payload(size)
        verifies(record, message, token.sign(record, message, PIN))
    timings = []
    for _ in range(10):
        started = time.perf_counter()
        token.sign(record, payload(1024), PIN)
        timings.append(time.perf_counter() - started)
    with capsys.disabled():
        print(
            f"\n[card] {key_type.value}: {sorted(timings)[len(timings) // 2] * 1000:.1f} ms per "
            f"1 KB signature (median of 10: SELECT, 6E, key check, VERIFY, PSO)"
        )


def test_extended_length_apdus_carry_large_payloads(card, token, ed25519_key):
    extended = OpenPgpCardToken(card.reader, transport="extended")
    chained = OpenPgpCardToken(card.reader, transport="chaining")
    for other in (extended, chained):
        for size in (8192, 16 * 1024):
            message = payload(size)
            verifies(ed25519_key, message, other.sign(ed25519_key, message, PIN))
        other.close()


def test_p256_works_or_says_clearly_that_it_cannot(token):
    try:
        record = token.generate_key(KeyType.P256, PIN, so_pin=ADMIN_PIN)
    except TokenError as exc:
        assert "P-256" in str(exc) and "\n" not in str(exc)
        return
    message = payload(1024)
    verifies(record, message, token.sign(record, message, PIN))


def test_generation_needs_the_admin_pin_and_resident_mode(token):
    with pytest.raises(TokenError, match="admin PIN"):
        token.generate_key(KeyType.ED25519, PIN)
    with pytest.raises(TokenError, match="resident"):
        token.generate_key(KeyType.ED25519, PIN, so_pin=ADMIN_PIN, mode=KeyMode.WRAPPED)
    with pytest.raises(WrongPin) as caught:
        token.generate_key(KeyType.ED25519, PIN, so_pin="87654321")
    assert caught.value.status.tries_left == 2
    assert token.admin_pin_status().tries_left == 2
    with pytest.raises(WrongPin):  # password B is checked before anything changes
        token.generate_key(KeyType.ED25519, "654321", so_pin=ADMIN_PIN)
    token.generate_key(KeyType.ED25519, PIN, so_pin=ADMIN_PIN)  # a right one resets both counters
    assert token.admin_pin_status().tries_left == 3 and token.pin_status().tries_left == 3


def test_no_pin_stays_verified_after_an_operation(card, token, ed25519_key):
    token.sign(ed25519_key, b"pay", PIN)  # PW1 is valid for one signature only
    link = pcsc.CardLink(card.reader)  # another program on the same card
    link.connect()
    try:
        _, sw = link.transmit(bytes.fromhex("00A4040006D2760001240100"))
        assert sw == 0x9000
        _, sw = link.transmit(bytes.fromhex("002A9E9A0103") + b"\x00")  # PSO:CDS without VERIFY
        assert sw == 0x6982
        _, sw = link.transmit(bytes.fromhex("00DA00C40100"))  # PUT DATA PW status: needs PW3
        assert sw == 0x6982  # generate_key verified PW3, then reset the card
    finally:
        link.close()


def test_a_replaced_key_is_not_found(token, ed25519_key):
    token.generate_key(KeyType.ED25519, PIN, so_pin=ADMIN_PIN)
    with pytest.raises(KeyNotFound, match="replaced"):
        token.sign(ed25519_key, b"hello", PIN)


def test_threads_share_one_token(token, ed25519_key):
    errors: list[Exception] = []

    def work(index: int):
        try:
            for count in range(10):
                message = f"thread {index} message {count}".encode()
                verifies(ed25519_key, message, token.sign(ed25519_key, message, PIN))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []


# --- PINs ------------------------------------------------------------------------------


def test_wrong_pin_locks_and_the_lock_survives_a_restart(card, token, ed25519_key):
    tries = []
    for _ in range(2):
        with pytest.raises(WrongPin) as caught:
            token.sign(ed25519_key, b"pay", "000000")
        tries.append(caught.value.status.tries_left)
    assert tries == [2, 1] and caught.value.status.final_try
    with pytest.raises(PinLocked, match="wallet card unblock"):
        token.sign(ed25519_key, b"pay", "000000")
    assert token.pin_status().locked

    card.stop()
    card.start()
    assert token.pin_status().locked  # the same token reconnects to the card put back
    with pytest.raises(PinLocked):
        token.sign(ed25519_key, b"pay", PIN)

    token.unblock("246810", admin_pin=ADMIN_PIN)
    assert token.pin_status().tries_left == 3
    verifies(ed25519_key, b"pay", token.sign(ed25519_key, b"pay", "246810"))


def test_unblock_with_the_resetting_code(token, ed25519_key):
    with pytest.raises(PinLocked, match="resetting code"):
        token.unblock("246810", resetting_code="reset-code-1")  # none set yet
    token.set_resetting_code("reset-code-1", admin_pin=ADMIN_PIN)
    for _ in range(3):
        with pytest.raises((WrongPin, PinLocked)):
            token.sign(ed25519_key, b"pay", "000000")
    with pytest.raises(WrongPin):
        token.unblock("246810", resetting_code="reset-code-2")
    token.unblock("246810", resetting_code="reset-code-1")
    verifies(ed25519_key, b"pay", token.sign(ed25519_key, b"pay", "246810"))


def test_change_pin(token, ed25519_key):
    token.change_pin(PIN, "654321")
    with pytest.raises(WrongPin):
        token.sign(ed25519_key, b"pay", PIN)
    verifies(ed25519_key, b"pay", token.sign(ed25519_key, b"pay", "654321"))
    with pytest.raises(WrongPin) as caught:
        token.change_pin("999999", "111111")
    assert caught.value.status.tries_left == 2
    with pytest.raises(TokenError, match="6 to 127 characters"):
        token.change_pin("654321", "123")


# --- cards pulled and swapped -------------------------------------------------------------


def test_card_removed_mid_sign_then_put_back(card, token):
    record = token.generate_key(KeyType.RSA2048, PIN, so_pin=ADMIN_PIN)  # ~70 ms per signature
    signed = 0
    threading.Timer(0.5, lambda: card.stop(wait=False)).start()
    with pytest.raises(TokenRemoved) as caught:
        for _ in range(500):  # ends with the removal; 500 x 70 ms is far beyond it
            token.sign(record, payload(1024), PIN)
            signed += 1
    assert signed > 0 and "\n" not in str(caught.value)
    with pytest.raises(TokenRemoved):  # still out
        token.sign(record, b"pay", PIN)
    card.start()
    verifies(record, b"pay", token.sign(record, b"pay", PIN))


def test_a_different_card_in_the_reader_is_key_not_found(virtual_card):
    first = virtual_card(0)
    token = OpenPgpCardToken(first.reader)
    record = token.generate_key(KeyType.ED25519, PIN, so_pin=ADMIN_PIN)
    first.stop()
    second = virtual_card(0)  # a fresh card in the same reader
    assert second.serial != first.serial
    with pytest.raises(KeyNotFound) as caught:
        token.sign(record, b"pay", PIN)
    assert first.serial in str(caught.value) and second.serial in str(caught.value)
    assert token.pin_status().tries_left == 3  # refused before any PIN was tried
    token.close()


# --- helpers -------------------------------------------------------------------------------


def _present(reader: str) -> bool:
    return any(info.name == reader and info.card_present for info in pcsc.list_readers())


def _seconds_until(predicate, timeout_s: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.01)
    raise TimeoutError("condition not reached")
