"""HTTPS client for the center, pinned to the center's own certificate.

Only the certificate given at enrollment (center-cert.pem) is trusted: the
system CA store is not consulted, so a CA-issued certificate for the same
name is refused too.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import httpx

from paywire.envelope import Envelope

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
MAX_RESPONSE_BYTES = 1024 * 1024
MAX_URL_CHARS = 2048


class CenterUnreachable(Exception):
    """No answer (connection refused, timeout, TLS failure): the request may be retried."""


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


def pinned_ssl_context(cert_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cadata=cert_pem.decode("ascii"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class CenterClient:
    def __init__(self, url: str, cert_pem: bytes):
        self._client = httpx.Client(
            base_url=url.rstrip("/"),
            verify=pinned_ssl_context(cert_pem),
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            trust_env=False,
        )

    def __enter__(self) -> CenterClient:
        return self

    def __exit__(self, *_exc) -> None:
        self._client.close()

    def get_json(self, path: str) -> dict:
        return self._parse(self._send("GET", path, None))

    def get_signed(self, path: str, params: dict[str, int], header: tuple[str, str]) -> dict:
        """GET a read the center answers to enrolled parties only: `header` is (name, value) carrying
        the signed query (token_wallet.log_audit: the log's tree heads and proofs)."""
        return self._parse(self._send("GET", path, None, params=params, headers=dict([header])))

    def submit(self, path: str, envelope: Envelope) -> dict:
        """POST a signed envelope; return the center's answer (receipt not yet verified)."""
        document = self._parse(self._send("POST", path, envelope.to_json()))
        if not isinstance(document.get("receipt"), dict):
            raise CenterUnreachable("the center's answer holds no receipt; try `wallet sync` later")
        return document

    def _send(
        self,
        method: str,
        path: str,
        body: dict | None,
        params: dict[str, int] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            return self._client.request(method, path, json=body, params=params, headers=headers)
        except httpx.HTTPError as error:
            raise CenterUnreachable(
                f"cannot reach the center at {self._client.base_url}: {_reason(error)}"
            ) from None

    @staticmethod
    def _parse(response: httpx.Response) -> dict:
        if len(response.content) > MAX_RESPONSE_BYTES:
            raise CenterUnreachable("the center's answer is too large")
        try:
            document = response.json()
        except ValueError:
            document = {}
        if response.status_code == 429:  # "too many requests": the same bytes later
            raise CenterUnreachable(
                f"the center is busy (HTTP 429{retry_after_note(response)}); try `wallet sync` later"
            )
        if 400 <= response.status_code < 500:
            error = document.get("error", {}) if isinstance(document, dict) else {}
            error = error if isinstance(error, dict) else {}
            refusal = document.get("refusal") if isinstance(document, dict) else None
            raise CenterRefused(
                response.status_code,
                str(error.get("code", "unknown"))[:100],
                str(error.get("message", response.reason_phrase))[:500],
                refusal if isinstance(refusal, dict) else None,
            )
        if response.status_code != 200 or not isinstance(document, dict):
            # 5xx: the center may or may not have applied it; resending the
            # same signed bytes is safe (idempotent), so treat as retryable.
            raise CenterUnreachable(
                f"the center answered HTTP {response.status_code}; try `wallet sync` later"
            )
        return document


def retry_after_note(response: httpx.Response) -> str:
    seconds = response.headers.get("retry-after", "")
    return (
        f", retry after {int(seconds)} s"
        if seconds.isascii() and seconds.isdigit() and len(seconds) < 7
        else ""
    )


def _reason(error: httpx.HTTPError) -> str:
    text = str(error) or error.__class__.__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "its TLS certificate is not the pinned center certificate"
    return text.splitlines()[0]
