"""HTTPS client for the center, pinned to the center's own certificate, over the center's URLs.

Only the certificate given at enrollment (center-cert.pem) is trusted: the
system CA store is not consulted, so a CA-issued certificate for the same
name is refused too.

A center may answer at several URLs (its nodes, issue 15). Each request goes to them in order,
starting at the one that answered last in this client's life (one command), and moves to the next
only when a node gives no answer: no connection, a timeout, a TLS certificate other than the pinned
one, or a 5xx (503 `database_unavailable` or `overloaded`: a node whose database is gone or busy).
The next node gets the very same bytes (a signed envelope is serialised once; a signed query's
header is the same string), never a new signature, which the center answers with the first
receipt. Any other answer (2xx, 4xx) is final. When every node has failed and one asked to wait
(`retry_after`), the whole list is tried again after that wait, within TOTAL_TIMEOUT_S.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
from collections.abc import Sequence

from hostkit import timing
from paywire.envelope import Envelope
from token_wallet.center_url import MAX_CENTER_URLS, CenterNotPinned, CenterRefused, CenterUnreachable

# httpx's __init__ imports its own command line (httpx._main: Click, Rich's progress and syntax
# views, Pygments; ~100 modules, tens of milliseconds) whenever they are installed, and puts a stub
# in its place when that import fails. The wallet never runs httpx's command line, so it makes that
# import fail (a None in sys.modules is "not importable"), unless something loaded it already.
sys.modules.setdefault("httpx._main", None)

import httpx  # noqa: E402

CONNECT_TIMEOUT_S = 5.0  # per URL: a node that does not take the connection by then is skipped
READ_TIMEOUT_S = 30.0
# All the URLs and waits of one request together: a command never hangs longer than this per message.
TOTAL_TIMEOUT_S = 60.0
MAX_RETRY_AFTER_S = 30.0  # a longer `retry_after` is not waited for: the message waits for `wallet sync`
# Passes over the whole list (only after a node asked to wait): enough to ride out a database failover
# (~20-25 s with the cluster's settings, 503 with retry_after 2 s meanwhile) within TOTAL_TIMEOUT_S.
MAX_ROUNDS = 30
MAX_RESPONSE_BYTES = 1024 * 1024
# `enroll`, `operator attach`, `sync`/`console-login --center`: how long one URL's identity check may
# take, and all of them together (a URL not checked in time counts as one that did not answer).
CHECK_TIMEOUT_S = 10.0
CHECK_TOTAL_TIMEOUT_S = 30.0


def pinned_ssl_context(cert_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cadata=cert_pem.decode("ascii"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class CenterClient:
    def __init__(
        self, urls: str | Sequence[str], cert_pem: bytes, *, total_timeout_s: float = TOTAL_TIMEOUT_S
    ):
        self._urls = [urls] if isinstance(urls, str) else list(urls)[:MAX_CENTER_URLS]
        if not self._urls:
            raise ValueError("no center URL")
        self._total_timeout_s = total_timeout_s
        self._start = 0  # the URL that answered last: the next request starts there
        self._client = httpx.Client(
            verify=pinned_ssl_context(cert_pem),
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            trust_env=False,
        )

    def __enter__(self) -> CenterClient:
        return self

    def __exit__(self, *_exc) -> None:
        self._client.close()

    def get_json(self, path: str) -> dict:
        return self._parse(self._send("GET", path))

    def get_signed(self, path: str, params: dict[str, int], header: tuple[str, str]) -> dict:
        """GET a read the center answers to enrolled parties only: `header` is (name, value) carrying
        the signed query (token_wallet.log_audit: the log's tree heads and proofs)."""
        return self._parse(self._send("GET", path, params=params, headers=dict([header])))

    def submit(self, path: str, envelope: Envelope) -> dict:
        """POST a signed envelope; return the center's answer (receipt not yet verified). The body is
        serialised once: every node tried gets the same bytes."""
        body = json.dumps(envelope.to_json(), separators=(",", ":")).encode()
        document = self._parse(
            self._send("POST", path, content=body, headers={"content-type": "application/json"})
        )
        if not isinstance(document.get("receipt"), dict):
            raise CenterUnreachable("the center's answer holds no receipt; try `wallet sync` later")
        return document

    def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: dict[str, int] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """The first answer other than "no answer" from the URLs in turn (see the module docstring)."""
        deadline = time.monotonic() + self._total_timeout_s
        failures: dict[str, str] = {}
        not_pinned: set[str] = set()
        for _round in range(MAX_ROUNDS):
            wait_s: float | None = None
            for offset in range(len(self._urls)):
                index = (self._start + offset) % len(self._urls)
                url = self._urls[index]
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    failures.setdefault(url, "no time left")
                    break
                try:
                    with timing.span("center"):
                        response = self._client.request(
                            method,
                            url.rstrip("/") + path,
                            content=content,
                            params=params,
                            headers=headers,
                            timeout=httpx.Timeout(
                                min(READ_TIMEOUT_S, left_s), connect=min(CONNECT_TIMEOUT_S, left_s)
                            ),
                        )
                except httpx.HTTPError as error:
                    failures[url] = _reason(error)
                    if _tls_refused(error):
                        not_pinned.add(url)
                    else:
                        not_pinned.discard(url)
                    continue
                not_pinned.discard(url)
                if response.status_code >= 500:
                    # The node may or may not have applied it; the same signed bytes are safe anywhere.
                    failures[url] = f"it answered HTTP {response.status_code}{_error_code(response)}"
                    retry_s = retry_after_s(response)
                    if retry_s is not None:
                        failures[url] += f", retry after {retry_s:g} s"
                        wait_s = retry_s if wait_s is None else min(wait_s, retry_s)
                    continue
                self._start = index
                return response
            if wait_s is None or deadline - time.monotonic() <= wait_s:
                break
            time.sleep(wait_s)
        raise _unreachable(self._urls, failures, not_pinned)

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
            raise CenterUnreachable(
                f"the center answered HTTP {response.status_code}; try `wallet sync` later"
            )
        return document


def _unreachable(urls: list[str], failures: dict[str, str], not_pinned: set[str]) -> CenterUnreachable:
    """One line naming every URL tried and why it gave no answer."""
    kind = CenterNotPinned if failures and not_pinned == set(failures) else CenterUnreachable
    if len(urls) == 1:
        url = urls[0]
        return kind(f"cannot reach the center at {url}: {failures.get(url, 'no time left')}")
    tried = "; ".join(f"{url}: {failures.get(url, 'not tried, no time left')}" for url in urls)
    return kind(f"cannot reach the center at any of its {len(urls)} URLs ({tried})")


def check_same_center(urls: Sequence[str], cert_pem: bytes, center_id: str) -> list[str]:
    """Each URL that answers must be the pinned center: its TLS certificate the pinned one and its
    /v1/center the pinned center id. Raises ValueError naming the first URL that is not; returns the
    URLs that did not answer (they are checked at every connection anyway: the pin)."""
    silent = []
    deadline = time.monotonic() + CHECK_TOTAL_TIMEOUT_S
    for url in urls:
        left_s = min(CHECK_TIMEOUT_S, deadline - time.monotonic())
        if left_s <= 0:
            silent.append(url)
            continue
        with CenterClient(url, cert_pem, total_timeout_s=left_s) as client:
            try:
                info = client.get_json("/v1/center")
            except CenterNotPinned:
                raise ValueError(
                    f"{url} is not the center of the pinned certificate: its TLS certificate is another "
                    "(another center, or someone in between); give only that center's URLs"
                ) from None
            except (CenterUnreachable, CenterRefused):
                silent.append(url)
                continue
        answered_id = info.get("center_id")
        if answered_id != center_id:
            raise ValueError(
                f"{url} answers as center {str(answered_id)[:60]!r}, not {center_id} whose certificate "
                "is pinned; give only that center's URLs"
            )
    return silent


def retry_after_s(response: httpx.Response) -> float | None:
    """The wait a 503 (or 429) asks for: the body's `error.retry_after` or the Retry-After header, in
    seconds, at most MAX_RETRY_AFTER_S; None when it asks none (or nonsense)."""
    value: object = None
    try:
        document = response.json()
        error = document.get("error") if isinstance(document, dict) else None
        value = error.get("retry_after") if isinstance(error, dict) else None
        if value is None and isinstance(document, dict):
            value = document.get("retry_after")
    except ValueError:
        pass
    if value is None:
        header = response.headers.get("retry-after", "")
        value = int(header) if header.isascii() and header.isdigit() and len(header) < 7 else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e6:
        return None
    return min(float(value), MAX_RETRY_AFTER_S)


def retry_after_note(response: httpx.Response) -> str:
    seconds = response.headers.get("retry-after", "")
    return (
        f", retry after {int(seconds)} s"
        if seconds.isascii() and seconds.isdigit() and len(seconds) < 7
        else ""
    )


def _error_code(response: httpx.Response) -> str:
    """' database_unavailable': the stable code of a 5xx body, when it has one that looks like one."""
    try:
        document = response.json()
    except ValueError:
        return ""
    error = document.get("error") if isinstance(document, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return f" {code}" if isinstance(code, str) and code.isidentifier() and len(code) <= 64 else ""


def _tls_refused(error: httpx.HTTPError) -> bool:
    return "CERTIFICATE_VERIFY_FAILED" in str(error)


def _reason(error: httpx.HTTPError) -> str:
    text = str(error) or error.__class__.__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "its TLS certificate is not the pinned center certificate"
    return text.splitlines()[0]
