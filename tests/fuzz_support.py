"""Helpers for the bad-input tests (test_api_fuzz.py): raw ASGI and raw TLS
requests, signed envelopes with bodies the builder would refuse, and
database snapshots to show that a refusal changed nothing.

Plain functions and classes, no fixtures (fixtures live in the test modules).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass, field

import requests
import rfc8785
from receipt_support import receipt_result
from requests.adapters import HTTPAdapter
from sqlalchemy import Engine, select
from support import SoftwareSigner

from center.storage.db import metadata
from paywire.envelope import Envelope
from paywire.messages import new_message_id

# --- "nothing changed": every row of every table ----------------------------------


def db_snapshot(engine: Engine) -> dict[str, list[tuple]]:
    """All rows of all center tables, in primary-key order (the test databases are small)."""
    snapshot = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            order = list(table.primary_key.columns) or list(table.columns)
            snapshot[table.name] = [tuple(row) for row in conn.execute(select(table).order_by(*order))]
    return snapshot


# --- signed envelopes with any body -----------------------------------------------


def raw_payload(
    signer: SoftwareSigner,
    msg_type: str,
    body: object,
    *,
    aud: str,
    ctr: int | None = None,
    now_s: int | None = None,
    lifetime_s: int = 3600,
    **overrides,
) -> dict:
    """A header like build_payload's, but the body is not checked (so it can break the rules)."""
    signer.counter = ctr if ctr is not None else signer.counter + 1
    now_s = now_s or int(time.time())
    payload = {
        "dom": "tokenpay",
        "v": 1,
        "type": msg_type,
        "aud": aud,
        "kid": signer.kid,
        "msg_id": new_message_id(),
        "ctr": signer.counter,
        "iat": now_s,
        "exp": now_s + lifetime_s,
        "body": body,
    }
    payload.update(overrides)
    return payload


def seal_bytes(signer: SoftwareSigner, data: bytes) -> Envelope:
    """Sign exactly these payload bytes (canonical or not, within limits or not)."""
    return Envelope(payload=data, alg=signer.algorithm, kid=signer.kid, sig=signer.sign(data))


def sealed(signer: SoftwareSigner, msg_type: str, body: object, *, aud: str, **header) -> Envelope:
    """A correctly signed envelope whose canonical payload carries `body` unchecked."""
    return seal_bytes(signer, rfc8785.dumps(raw_payload(signer, msg_type, body, aud=aud, **header)))


# --- enrolled parties ---------------------------------------------------------------


@dataclass
class Party:
    signer: SoftwareSigner
    party_id: str
    name: str
    body: dict = field(default_factory=dict)


def enroll_party(post, center_id: str, role: str, *, name: str = "Fuzz Party") -> Party:
    """Enroll a software key through the API; `post(path, json=...)` is any client's post."""
    signer = SoftwareSigner()
    body = signer.enroll_body(role, name=name)
    response = post("/v1/enroll", json=signer.envelope("enroll", body, aud=center_id).to_json())
    assert response.status_code == 200, response.text
    result = receipt_result(response.json())
    return Party(signer=signer, party_id=result["member_id"], name=name, body=body)


# --- raw ASGI: headers and chunking that HTTP clients will not send -----------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    exception: BaseException | None = None


def asgi_request(
    app, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes], query: bytes = b""
) -> RawResponse:
    """One request straight into the ASGI app, the body in `chunks` (more_body between them).

    An exception escaping the app is returned (as a server would turn it into a 500), not raised.
    """
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": query,
        "headers": [(name.lower(), value) for name, value in headers],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    pending = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks or [b""])
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> BaseException | None:
        try:
            await app(scope, receive, send)
        except Exception as error:
            return error
        return None

    error = asyncio.run(run())
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if start is None:
        return RawResponse(500, {}, b"", error)
    headers_out = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers", [])}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return RawResponse(start["status"], headers_out, body, error)


# --- raw HTTPS: bytes on the wire to a live center ----------------------------------


def tls_context(cert_path) -> ssl.SSLContext:
    """Trust exactly the center's pinned certificate."""
    return ssl.create_default_context(cafile=str(cert_path))  # the certificate names 127.0.0.1 (IP SAN)


def https_raw(
    port: int, context: ssl.SSLContext, request: bytes, timeout_s: float = 15.0
) -> tuple[int, bytes]:
    """Send raw HTTP/1.1 bytes over TLS; return (status, whole response).

    The request must say Connection: close.
    """
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as plain,
        context.wrap_socket(plain, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(request)
        chunks = []
        while True:
            try:
                chunk = tls.recv(65536)
            except (ssl.SSLError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    response = b"".join(chunks)
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0
    return status, response


def pinned_session(cert_path) -> requests.Session:
    """A requests session (schemathesis' HTTP transport) that trusts exactly the center's certificate.

    trust_env is off: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from
    the environment override session.verify (set on these machines, it made
    the pinned certificate "self-signed" untrusted). The adapter's TLS context
    is the stdlib one the wallet uses, loaded with the pinned certificate only.
    """
    context = tls_context(cert_path)

    class PinnedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            kwargs["ssl_context"] = context
            super().init_poolmanager(*args, **kwargs)

    session = requests.Session()
    session.trust_env = False
    session.verify = str(
        cert_path
    )  # the only CA file requests hands to urllib3 (loaded into `context` again)
    session.mount("https://", PinnedAdapter())
    return session
