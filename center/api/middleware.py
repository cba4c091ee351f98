"""The body limit: pure ASGI, in front of every route, so no oversized body is ever parsed."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from center.errors import ApiError
from center.ops import observability

MAX_BODY_BYTES = 64 * 1024
BATCH_PATH = "/v1/payments/batch"
# A batch carries up to center.pipeline.batch.MAX_BATCH_ITEMS envelopes of up to ~8 KiB each.
MAX_BATCH_BODY_BYTES = 1024 * 1024


class BodyLimitMiddleware:
    """Refuse bodies over MAX_BODY_BYTES however they are framed (Content-Length or chunked).

    A declared Content-Length over the limit is refused before reading; otherwise the body is
    read as it arrives, refused as soon as it passes the limit, and replayed to the app.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = MAX_BATCH_BODY_BYTES if scope["path"] == BATCH_PATH else MAX_BODY_BYTES
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(scope, receive, send, limit)
            return
        try:
            body = await _read_body(receive, limit)
        except _TooLarge:
            await _too_large(scope, receive, send, limit)
            return
        if body is None:
            return  # the client went away
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _TooLarge(Exception):
    """The body passed the limit while it was being read."""


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole body, or None if the client disconnected; _TooLarge as soon as it passes `limit`."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _too_large(scope, receive, send, limit: int) -> None:
    error = ApiError("body_too_large", f"request bodies here are limited to {limit} bytes")
    observability.note_error(error.code)
    await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
