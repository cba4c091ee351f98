"""Paying clients that fail over between center nodes, for the backup center's tests (issue 15).

Each client is a funded member paying one store in a loop through its own pinned HTTPS client. A
payment is signed once; when a node does not answer or answers 503, the client sends the very same
bytes to the next node after `retry_after` (as the wallet does, token_wallet.client), until an answer
comes or a bounded time passes. Every accepted payment's receipt is checked against the pinned
certificate and kept with the request, so that the test can resend each and compare, and count the
books against the receipts held.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx
from stress_support import Answer, LiveCenter, pay_body
from support import SoftwareSigner

from paywire.envelope import Envelope

# A payment waits at most this long for an answer across retries (a failover takes ttl-bound seconds).
MAX_PAYMENT_WAIT_S = 120.0
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 30.0
AMOUNT_MINOR = 10


@dataclass
class Paid:
    request: Envelope
    result: dict
    receipt: dict
    sent_at: float  # time.monotonic() when the attempt that got the answer was sent
    answered_at: float
    attempts: int


@dataclass
class Load:
    """Clients paying until stop(); what they got, for the test's checks."""

    center: LiveCenter
    urls: list[str]
    payers: list[tuple[SoftwareSigner, str]]
    store_id: str
    paid: list[Paid] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for index, payer in enumerate(self.payers):
            # Half the clients start on each node: both nodes carry load.
            order = self.urls[index % len(self.urls) :] + self.urls[: index % len(self.urls)]
            thread = threading.Thread(target=self._pay_forever, args=(index, payer, order), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=MAX_PAYMENT_WAIT_S + 10)
            assert not thread.is_alive(), "a paying client did not stop"

    def accepted_after(self, moment: float) -> list[Paid]:
        """Payments sent after `moment` and accepted: committed by whatever primary there was then."""
        with self._lock:
            return [paid for paid in self.paid if paid.sent_at > moment]

    def count(self) -> int:
        with self._lock:
            return len(self.paid)

    def _pay_forever(self, index: int, payer: tuple[SoftwareSigner, str], urls: list[str]) -> None:
        signer, _ = payer
        clients = [self._client(url) for url in urls]
        try:
            number = 0
            while not self._stop.is_set():
                number += 1
                body = pay_body(self.store_id, AMOUNT_MINOR, f"C{index}-{number}")
                request = signer.envelope("pay", body, aud=self.center.center_id)
                self._pay(request, clients)
        except BaseException as error:  # a client that dies must show in the test, not vanish with its thread
            with self._lock:
                self.failed.append(f"client {index} stopped: {type(error).__name__}: {str(error)[:300]}")
        finally:
            for client in clients:
                client.close()

    def _pay(self, request: Envelope, clients: list[httpx.Client]) -> None:
        deadline = time.monotonic() + MAX_PAYMENT_WAIT_S
        attempts = 0
        while time.monotonic() < deadline:
            client = clients[attempts % len(clients)]
            attempts += 1
            sent_at = time.monotonic()
            try:
                response = client.post("/v1/payments", json=request.to_json())
            except httpx.TransportError:
                time.sleep(0.2)  # this node does not answer: the next one, with the same bytes
                continue
            if response.status_code in (429, 503):  # a limit or a failover: the same bytes, later
                time.sleep(min(float(response.headers.get("retry-after", "1")), 5.0))
                continue
            if response.status_code != 200:
                with self._lock:
                    self.failed.append(f"{response.status_code} {response.text[:200]}")
                return
            receipt = response.json()["receipt"]
            result = self.center.result_of(request, Answer(response.status_code, response.content))
            with self._lock:
                self.paid.append(Paid(request, result, receipt, sent_at, time.monotonic(), attempts))
            return
        with self._lock:
            self.failed.append(f"no answer within {MAX_PAYMENT_WAIT_S} s")

    def _client(self, url: str) -> httpx.Client:
        return httpx.Client(
            base_url=url,
            verify=self.center.ssl_context(),
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            trust_env=False,
        )


def resend_all(center: LiveCenter, url: str, paid: list[Paid]) -> list[str]:
    """Send every accepted payment's bytes again: each must get the very receipt its client holds."""
    problems = []
    with httpx.Client(
        base_url=url, verify=center.ssl_context(), timeout=READ_TIMEOUT_S, trust_env=False
    ) as client:
        for item in paid:
            response = client.post("/v1/payments", json=item.request.to_json())
            if response.status_code != 200 or response.json()["receipt"] != item.receipt:
                problems.append(f"{item.request.kid[:12]} {response.status_code}: {response.text[:120]}")
    return problems
