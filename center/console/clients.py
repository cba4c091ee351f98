"""Who a request comes from: its address (after the trusted-proxy rule) and user agent.

The client's address is the TCP peer's, unless that peer is a configured trusted proxy
(config.json "trusted_proxies"; none by default), when the right-most X-Forwarded-For address
that is not itself a trusted proxy counts. Limits count by client_key: an IPv4 address, or an
IPv6 /64. Used by the console's login codes (center.console.challenges) and by the API's
enrollment limit (center.api.ratelimit).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from center.storage.config import CenterConfig

MAX_USER_AGENT_CHARS = 200
MAX_FORWARDED_HOPS = 32
MAX_ADDRESS_CHARS = 64


@dataclass(frozen=True)
class ClientFacts:
    """Who asks for a challenge, as the center sees it: recorded with it, shown by the wallet."""

    address: str
    user_agent: str

    @property
    def key(self) -> str:
        return client_key(self.address)


def parse_trusted_proxies(entries) -> tuple:
    """config.json's "trusted_proxies" as networks; a bad entry stops the worker, naming it."""
    if not isinstance(entries, (list, tuple)):
        raise TypeError("trusted_proxies must be a list of addresses or networks")
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError:
            shown = str(entry)[:MAX_ADDRESS_CHARS]
            raise ValueError(f"trusted_proxies: {shown!r} is not an IP address or network") from None
    return tuple(networks)


def _ip(text: str):
    """An address, IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4 peer) as the IPv4 it is."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


def _trusted(address, trusted: tuple) -> bool:
    return address is not None and any(address.version == net.version and address in net for net in trusted)


def source_address(peer: str | None, forwarded_for: list[str], trusted: tuple) -> str:
    """The client's address: the TCP peer, unless the peer is a trusted proxy; then the right-most
    X-Forwarded-For address that is not itself a trusted proxy (what the nearest untrusted hop
    told our proxy). Anything earlier in the header was written by the client and proves nothing."""
    address = (peer or "unknown")[:MAX_ADDRESS_CHARS]
    if not _trusted(_ip(address), trusted):
        return address
    hops = [hop for value in forwarded_for for hop in value.split(",")][-MAX_FORWARDED_HOPS:]
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            return address  # a malformed hop: count the request against the proxy itself
        if not _trusted(ip, trusted):
            return str(ip)
    return address


def client_key(address: str) -> str:
    """What the limits count by: an IPv4 address, or the IPv6 /64 (one host commonly holds a whole /64)."""
    ip = _ip(address)
    if ip is None:
        return address[:MAX_ADDRESS_CHARS]
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


def clean_user_agent(value: str | None) -> str:
    """Printable ASCII only, cut short: the wallet shows it to the operator as plain text."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in (value or "")[:MAX_USER_AGENT_CHARS]).strip()


def configured_trusted_proxies() -> tuple:
    """The trusted proxies of the center this worker serves: `center serve` names its data directory
    in CENTER_DATA_DIR, as center.api.asgi reads it. An app built in-process (tests) trusts none."""
    data_dir = os.environ.get("CENTER_DATA_DIR")
    if not data_dir:
        return ()
    return parse_trusted_proxies(CenterConfig.load(Path(data_dir)).trusted_proxies)


def request_client(request: Request) -> ClientFacts:
    """The request's client; app.state.trusted_proxies is set by center.console.auth.install_console_auth."""
    peer = request.client.host if request.client else None
    forwarded_for = request.headers.getlist("x-forwarded-for")
    address = source_address(peer, forwarded_for, request.app.state.trusted_proxies)
    return ClientFacts(address=address, user_agent=clean_user_agent(request.headers.get("user-agent")))
