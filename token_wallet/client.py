"""HTTPS client for the center, pinned to the center's own certificate.

Only the certificate given at enrollment (center-cert.pem) is trusted: the
system CA store is not consulted, so a CA-issued certificate for the same
name is refused too.
"""

from __future__ import annotations

import ssl

import httpx

from paywire.envelope import Envelope

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
MAX_RESPONSE_BYTES = 1024 * 1024


class CenterUnreachable(Exception):
    """No answer (connection refused, timeout, TLS failure): the request may be retried."""


class CenterRefused(Exception):
    """The center answered with a 4xx: it will refuse the same bytes again."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"the center refused it ({code}): {message}")
        self.status, self.code, self.message = status, code, message


def pinned_ssl_context(cert_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cadata=cert_pem.decode("ascii"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class CenterClient:
    def __init__(self, url: str, cert_pem: bytes):
        self._client = httpx.Client(
            base_url=url.rstrip("/"), verify=pinned_ssl_context(cert_pem),
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S), trust_env=False)

    def __enter__(self) -> "CenterClient":
        return self

    def __exit__(self, *_exc) -> None:
        self._client.close()

    def get_json(self, path: str) -> dict:
        return self._parse(self._send("GET", path, None))

    def submit(self, path: str, envelope: Envelope) -> dict:
        """POST a signed envelope; return the center's answer (receipt not yet verified)."""
        document = self._parse(self._send("POST", path, envelope.to_json()))
        if not isinstance(document.get("receipt"), dict):
            raise CenterUnreachable("the center's answer holds no receipt; try `wallet sync` later")
        return document

    def _send(self, method: str, path: str, body: dict | None) -> httpx.Response:
        try:
            return self._client.request(method, path, json=body)
        except httpx.HTTPError as error:
            raise CenterUnreachable(f"cannot reach the center at {self._client.base_url}: {_reason(error)}") from None

    @staticmethod
    def _parse(response: httpx.Response) -> dict:
        if len(response.content) > MAX_RESPONSE_BYTES:
            raise CenterUnreachable("the center's answer is too large")
        try:
            document = response.json()
        except ValueError:
            document = {}
        if 400 <= response.status_code < 500:
            error = document.get("error", {}) if isinstance(document, dict) else {}
            raise CenterRefused(response.status_code, str(error.get("code", "unknown")),
                                str(error.get("message", response.reason_phrase)))
        if response.status_code != 200 or not isinstance(document, dict):
            # 5xx: the center may or may not have applied it; resending the
            # same signed bytes is safe (idempotent), so treat as retryable.
            raise CenterUnreachable(f"the center answered HTTP {response.status_code}; try `wallet sync` later")
        return document


def _reason(error: httpx.HTTPError) -> str:
    text = str(error) or error.__class__.__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "its TLS certificate is not the pinned center certificate"
    return text.splitlines()[0]
