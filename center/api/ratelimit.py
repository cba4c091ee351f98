"""Request limits: token buckets per source address and per key, in process memory.

Who is limited, and why (issue 17, point 6):
- anonymous enrollments, per source address: each accepted one stores ~5 KB for good;
- signed requests other than payments (balance, notices, top-ups, operator actions...), per key;
- notices fetches, per key, besides: each answer carries up to 100 center signatures;
- payments, per key, at a generous rate (a member pays at human speed; the benchmark's 50 keys
  each pay ~2,000 times in a burst).
Per-key buckets are charged only once the request's signature verified, so nobody can spend
another member's allowance by sending messages that merely name their key id.
Every per-key decision is made here, by Limits: check_key before the work (refuses a key whose
allowance is spent, spends nothing), then charge_answered once the answer is known (charges unless
it came before the signature verified, UNVERIFIED_CODES), or charge_key when the signature has
already verified (the payment path: take a token or refuse).

Enrollments are counted per client as the console counts login codes: the TCP peer, or behind a
configured trusted proxy ("trusted_proxies") the X-Forwarded-For hop it vouches for; an IPv4
address or an IPv6 /64 (center.console.clients: source_address, client_key).

A refused request gets 429 {"error": {"code": "rate_limited", "retry_after": S, ...}} and a
Retry-After header (whole seconds). The buckets live in each worker process: with
`center serve --workers N` a client gets up to N times every rate (the kernel spreads
connections over the workers). Memory is bounded: each limit tracks at most `max_clients`
addresses or keys, forgetting the least recently seen (a forgotten client starts full again;
evicting one takes more distinct clients than the cap, who would have that much allowance anyway).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from center.console.clients import client_key
from center.errors import ApiError

ENROLL_PER_ADDRESS = "enroll_per_address"
SIGNED_PER_KEY = "signed_per_key"
NOTICES_PER_KEY = "notices_per_key"
PAYMENTS_PER_KEY = "payments_per_key"
# name -> (burst, per_minute): the defaults, sized so that the test suite and bench/bench_payments.py
# (up to 2,000 payments per key in one burst) never meet them, while a flood is cut to a trickle.
DEFAULT_RATES = {
    ENROLL_PER_ADDRESS: (100, 12),
    SIGNED_PER_KEY: (120, 60),
    NOTICES_PER_KEY: (40, 20),
    PAYMENTS_PER_KEY: (2000, 3000),
}
DEFAULT_MAX_CLIENTS = 50_000  # per limit; ~150 bytes each
MAX_RATE_SETTING = 10**9
MAX_CLIENTS_SETTING = 10_000_000
MAX_RETRY_AFTER_S = 24 * 3600
# Answers that come before a signature is known good: a request naming someone else's key id
# gets one of these and must not spend that key's allowance.
UNVERIFIED_CODES = frozenset(
    {
        "unknown_key",
        "bad_signature",
        "algorithm_mismatch",
        "kid_mismatch",
        "bad_public_key",
        "unsupported_algorithm",
        "key_not_allowed",
    }
)


@dataclass(frozen=True)
class Rate:
    burst: int
    per_minute: float


class TokenBuckets:
    """One bucket per client id; thread-safe (sync routes run in a thread pool)."""

    def __init__(self, rate: Rate, max_clients: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.max_clients, self._clock = rate, max_clients, clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # id -> [tokens, updated_s]
        self._lock = threading.Lock()

    def take(self, client: str, cost: float = 1.0) -> float:
        """Take `cost` tokens: 0.0 when allowed, else the seconds to wait (nothing taken)."""
        with self._lock:
            bucket = self._refilled(client)
            if bucket[0] >= cost:
                bucket[0] -= cost
                return 0.0
            return self._wait_s(cost - bucket[0])

    def refund(self, client: str, cost: float = 1.0) -> None:
        with self._lock:
            bucket = self._refilled(client)
            bucket[0] = min(float(self.rate.burst), bucket[0] + cost)

    def wait_s(self, client: str) -> float:
        """0.0 when one token is there (nothing taken), else the seconds until it is."""
        with self._lock:
            tokens = self._refilled(client)[0]
            return 0.0 if tokens >= 1 else self._wait_s(1 - tokens)

    def charge(self, client: str, cost: float = 1.0) -> None:
        """Take tokens after the fact (work already done), down into debt if need be."""
        with self._lock:
            self._refilled(client)[0] -= cost

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, client: str) -> list[float]:
        now_s = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = [float(self.rate.burst), now_s]
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)  # the least recently seen
        else:
            self._buckets.move_to_end(client)
            elapsed_s = max(0.0, now_s - bucket[1])
            bucket[0] = min(float(self.rate.burst), bucket[0] + elapsed_s * self.rate.per_minute / 60)
            bucket[1] = now_s
        return bucket

    def _wait_s(self, missing: float) -> float:
        if self.rate.per_minute <= 0:
            return float(MAX_RETRY_AFTER_S)
        return min(float(MAX_RETRY_AFTER_S), missing * 60 / self.rate.per_minute)


class RecentIds:
    """A bounded set of recently seen ids (LRU)."""

    def __init__(self, max_ids: int):
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._max_ids = max_ids
        self._lock = threading.Lock()

    def add(self, item: str) -> bool:
        """True if the id was new."""
        with self._lock:
            if item in self._ids:
                self._ids.move_to_end(item)
                return False
            self._ids[item] = None
            if len(self._ids) > self._max_ids:
                self._ids.popitem(last=False)
            return True

    def discard(self, item: str) -> None:
        with self._lock:
            self._ids.pop(item, None)


@dataclass
class Limits:
    """Every request limit of one worker process."""

    rates: dict[str, Rate] = field(default_factory=lambda: {n: Rate(*r) for n, r in DEFAULT_RATES.items()})
    max_clients: int = DEFAULT_MAX_CLIENTS
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, TokenBuckets] = field(init=False, repr=False)
    _enrolling_kids: RecentIds = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._buckets = {
            name: TokenBuckets(rate, self.max_clients, self.clock) for name, rate in self.rates.items()
        }
        self._enrolling_kids = RecentIds(self.max_clients)

    def begin_enrollment(self, address: str, kid: str) -> Callable[[bool], None]:
        """Take one enrollment from the address's allowance, or raise rate_limited.

        Resends of the same key's enrollment (a wallet retrying, a resend racing the first copy)
        are free: they create nothing new. Returns `done(stored)`: an enrollment that stored nothing
        (malformed, bad signature, "try again") gives its token back; accepted ones and final
        refusals (recorded under their message id) count.
        """
        if not self._enrolling_kids.add(kid):
            return lambda accepted: None
        buckets = self._buckets[ENROLL_PER_ADDRESS]
        wait_s = buckets.take(client_key(address))
        if wait_s:
            self._enrolling_kids.discard(kid)
            raise rate_limited(wait_s, f"too many enrollments from {address}")

        def done(stored: bool) -> None:
            if not stored:
                buckets.refund(client_key(address))
                self._enrolling_kids.discard(kid)

        return done

    def check_key(self, kid: str, names: Iterable[str]) -> None:
        """Refuse a key whose allowance is spent; spends nothing (the signature is not checked yet)."""
        for name in names:
            wait_s = self._buckets[name].wait_s(kid)
            if wait_s:
                raise _key_limited(wait_s, name)

    def charge_key(self, kid: str, names: Iterable[str]) -> None:
        """A verified request from `kid`: take one token from each named per-key limit, or refuse."""
        taken = []
        for name in names:
            wait_s = self._buckets[name].take(kid)
            if wait_s:
                for earlier in taken:
                    self._buckets[earlier].refund(kid)
                raise _key_limited(wait_s, name)
            taken.append(name)

    def charge_answered(self, kid: str, names: Iterable[str], error_code: str | None = None) -> None:
        """A request naming `kid` was answered (error_code None: accepted): charge the key after the
        fact, into debt if need be, unless the answer came before its signature was known good."""
        if error_code in UNVERIFIED_CODES:
            return
        for name in names:
            self._buckets[name].charge(kid)

    def tracked(self, name: str) -> int:
        return len(self._buckets[name])


def _key_limited(wait_s: float, name: str) -> ApiError:
    return rate_limited(wait_s, f"too many requests from this key ({name.replace('_', ' ')})")


def rate_limited(wait_s: float, what: str) -> ApiError:
    retry_after_s = max(1, math.ceil(wait_s))
    return ApiError("rate_limited", f"{what}; retry in {retry_after_s} s", 429, retry_after_s=retry_after_s)


def limits_from_config(config) -> Limits:
    """Limits from config.json's "rate_limits": {"NAME": {"burst": B, "per_minute": R}, "max_clients": N}.

    Missing names keep their defaults; unknown names and bad numbers are refused (ValueError, one line).
    """
    if not isinstance(config.rate_limits, dict):
        # ValueError, not TypeError: `center serve` reports a ValueError in one line.
        raise ValueError("config.json: rate_limits must be an object")
    settings = dict(config.rate_limits)
    max_clients = settings.pop("max_clients", DEFAULT_MAX_CLIENTS)
    if not _whole_number_in(max_clients, 1, MAX_CLIENTS_SETTING):
        raise ValueError(
            f"config.json: rate_limits.max_clients must be an integer from 1 to {MAX_CLIENTS_SETTING}"
        )
    rates = {name: Rate(*rate) for name, rate in DEFAULT_RATES.items()}
    for name, value in settings.items():
        if name not in DEFAULT_RATES:
            raise ValueError(
                f"config.json: rate_limits has no setting {name!r}; known: "
                f"{', '.join(sorted(DEFAULT_RATES))}, max_clients"
            )
        rates[name] = _rate(name, value)
    return Limits(rates=rates, max_clients=max_clients)


def _rate(name: str, value) -> Rate:
    if not isinstance(value, dict) or set(value) != {"burst", "per_minute"}:
        raise ValueError(f'config.json: rate_limits.{name} must be {{"burst": B, "per_minute": R}}')
    burst, per_minute = value["burst"], value["per_minute"]
    for number in (burst, per_minute):
        if not _number_in(number, 0, MAX_RATE_SETTING):
            raise ValueError(
                f"config.json: rate_limits.{name}: burst and per_minute must be numbers "
                f"from 0 to {MAX_RATE_SETTING}"
            )
    if not isinstance(burst, int) or burst < 1:
        raise ValueError(f"config.json: rate_limits.{name}.burst must be a whole number of at least 1")
    return Rate(burst, float(per_minute))


def _number_in(value, low: float, high: float) -> bool:
    """An int or float (not a bool) from low to high."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value <= high


def _whole_number_in(value, low: int, high: int) -> bool:
    return isinstance(value, int) and _number_in(value, low, high)
