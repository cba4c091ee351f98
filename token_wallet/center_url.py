"""What a person gives as a center's address, and how a request to it can fail: the one rule for a
center URL, and the errors every command catches.

Apart from token_wallet.client (which speaks HTTP) so that a command checks its --center options
and handles the center's errors without loading the HTTP stack: httpx and ssl are tens of
milliseconds of every start-up (issue 16), and most commands never open a connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048
MAX_CENTER_URLS = 8


class CenterUnreachable(Exception):
    """No answer (connection refused, timeout, TLS failure, 5xx): the request may be retried."""


class CenterNotPinned(CenterUnreachable):
    """Every URL tried presented a TLS certificate other than the pinned one (another center, or
    someone in between): nothing was sent there."""


class CenterRefused(Exception):
    """A 4xx answer. Final only once its signed `refusal` (an envelope's JSON, or None) verifies
    against the pinned center key and names the request (token_wallet.wallet): anyone holding the
    center's TLS key could send the rest."""

    def __init__(self, status: int, code: str, message: str, refusal: dict | None = None):
        super().__init__(f"the center refused it ({code}): {message}")
        self.status, self.code, self.message, self.refusal = status, code, message, refusal


def check_center_url(url: str) -> str:
    """The one rule for a center URL a person gives (enroll, sync --center, operator attach): https with a
    host and nothing else odd. Raises ValueError with a message that says what to fix.

    Personal data, bank accounts and signed money messages travel to this URL: never in clear text.
    """
    shown = repr(url[:60])
    if len(url) > MAX_URL_CHARS or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError(f"the center URL {shown} is not a URL (too long, spaces or control characters)")
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise ValueError(
            f"the center URL must start with https://, not {shown}: registration data and "
            "signed messages are never sent in clear text"
        )
    try:
        parts.port  # noqa: B018 (parses the port; raises on a bad one)
    except ValueError:
        raise ValueError(f"the center URL {shown} has a bad port: give https://HOST[:PORT]") from None
    if not parts.hostname:
        raise ValueError(f"the center URL {shown} names no host: give https://HOST[:PORT]")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError(
            f"the center URL {shown} carries a user name, query or fragment: give https://HOST[:PORT]"
        )
    return url


def check_center_urls(urls: Sequence[str]) -> list[str]:
    """Several URLs of one center (`--center` repeated), each by check_center_url, in the order given;
    a URL given twice counts once. All are checked before any is used."""
    if not urls:
        raise ValueError("give the center's URL: --center https://HOST[:PORT] (repeat it for each node)")
    checked: list[str] = []
    for url in urls[: MAX_CENTER_URLS * 4]:  # a bound before anything is parsed
        check_center_url(url)
        if url.rstrip("/") not in (known.rstrip("/") for known in checked):
            checked.append(url)
    if len(urls) > MAX_CENTER_URLS * 4 or len(checked) > MAX_CENTER_URLS:
        raise ValueError(f"at most {MAX_CENTER_URLS} center URLs: give the nodes the wallet should try")
    return checked
