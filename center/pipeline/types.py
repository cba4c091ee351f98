"""The signed-request pipeline's shared types: a leaf every pipeline module may import.

Outcome (what a handler returns), Signer (who signed), Verified (a request ready for its
transaction), Handler (the signature of every entry in center.pipeline.handlers.HANDLERS),
now_ms(), and CenterContext: what handlers need from the center. Handlers type against that
Protocol rather than center.pipeline.service.Center, so that the service can import the
handlers and never the other way round. The rules both paths apply (counter window, earlier
answers, answer rows, refusal records, audit entry and receipt) are in center.pipeline.rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Connection, Engine

from center.keys.identity import CenterSigner
from center.keys.issuer_policy import IssuerPolicy
from paywire.envelope import Envelope
from paywire.messages import Header


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Signer:
    """Who signed a request, as the center knows them."""

    kid: str
    party_id: str
    role: str


@dataclass
class Outcome:
    """A handler's effect: `result` is signed into the receipt and recorded in the audit entry;
    `extras` are sent beside the receipt (each signed on its own, such as a store's notices)."""

    result: dict
    extras: dict = field(default_factory=dict)


class CenterContext(Protocol):
    """What a handler may use of the center (center.pipeline.service.Center provides it)."""

    engine: Engine
    signer: CenterSigner
    currency: str
    issuer_policy: IssuerPolicy | None

    @property
    def center_id(self) -> str: ...

    def clock_ms(self) -> int: ...


# (center, conn, signer, header, body, now_ms) -> Outcome, inside the request's transaction.
Handler = Callable[[CenterContext, Connection, Signer, Header, dict, int], Outcome]


@dataclass(frozen=True)
class Verified:
    """A request whose signature, type, audience and freshness were checked; `apply` makes its effect."""

    envelope: Envelope
    header: Header
    apply: Callable[[Connection, int], Outcome]  # (conn, now_ms)
    payload_sha256: str
    # What the batch path (center.pipeline.batch) books payments from, without calling `apply`.
    signer: Signer | None = None
    body: dict | None = None
