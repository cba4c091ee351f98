"""503 `database_unavailable`: the answer when the database cannot answer now, never half an answer.

Two ways a request meets a database that is failing over (docs/backup-center.md):
- its connection breaks, or no read-write node accepts one: SQLAlchemy raises OperationalError or
  InterfaceError; the transaction committed nothing that was acknowledged (a commit whose answer was
  lost may have committed: the retry of the same signed bytes then finds it and gets its answer);
- its commit waits for a synchronous standby that is gone (strict synchronous mode, two of three nodes
  lost): PostgreSQL waits without limit and must not be interrupted (a cancelled wait reports the
  commit as done though no standby holds it), so the answer is sent at REQUEST_DEADLINE_S while the
  commit goes on waiting; the client's retry gets the payment's answer once a node returns.
Either way the client sends the same signed bytes again after `retry_after` seconds.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from center.errors import ApiError
from center.ops import observability
from center.storage.config import DEFAULT_REQUEST_DEADLINE_S as REQUEST_DEADLINE_S

# SQLITE_BUSY, SQLITE_LOCKED: another writer held the lock past the busy timeout.
SQLITE_BUSY_CODES = frozenset({5, 6})
# admin_shutdown, crash_shutdown, cannot_connect_now, read_only_sql_transaction (a demoted primary).
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "25006"})
# A failover with the cluster's DCS settings (scripts/ha-cluster.sh) takes ttl-bound seconds.
RETRY_AFTER_S = 2


def database_unavailable(why: str) -> ApiError:
    return ApiError("database_unavailable", why, 503, retry_after_s=RETRY_AFTER_S)


def install_unavailable_handlers(app: FastAPI) -> None:
    app.exception_handler(OperationalError)(_database_error)
    app.exception_handler(InterfaceError)(_database_error)


def is_unavailable(error: DBAPIError) -> bool:
    """Whether a database error means "cannot answer now" rather than a fault (a missing table, a bug).

    PostgreSQL: a connection lost or refused (psycopg's own errors carry no SQLSTATE; the server's
    class 08), the server shutting down (57P0x), or a write on a node that is no longer the primary
    (25006). SQLite: its lock still taken after the busy timeout.
    """
    if error.connection_invalidated:
        return True
    original = error.orig
    code = getattr(original, "sqlite_errorcode", None)
    if code is not None:
        return code in SQLITE_BUSY_CODES
    sqlstate = getattr(original, "sqlstate", None)
    return (
        isinstance(error, InterfaceError)
        or sqlstate is None
        or sqlstate[:2] == "08"
        or sqlstate in (UNAVAILABLE_SQLSTATES)
    )


async def _database_error(_request: Request, error: DBAPIError) -> JSONResponse:
    if not is_unavailable(error):
        raise error  # a fault, not a failover: the plain 500 (and its log line with the traceback)
    # The driver's text can name hosts and ports, never for clients: one fixed line.
    answer = database_unavailable(
        "the center's database is not answering (failing over?): send the same signed bytes again"
    )
    observability.note_error(answer.code)
    return JSONResponse(answer.body(), status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


class DeadlineMiddleware:
    """Answer 503 when a request has not started its answer after `deadline_s`; pure ASGI.

    The request's work is cancelled where it awaits; work already in a thread (a commit waiting for
    its standby) finishes on its own, and whatever it would have sent is dropped.
    """

    def __init__(self, app, deadline_s: float = REQUEST_DEADLINE_S):
        assert deadline_s > 0
        self.app = app
        self.deadline_s = deadline_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = late = False

        async def guarded_send(message):
            nonlocal started
            if late:
                return
            started = True
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        done, _ = await asyncio.wait({work}, timeout=self.deadline_s)
        if done or started:
            await work  # finished, or an answer already under way: let it end as it does
            return
        late = True
        work.cancel()
        answer = database_unavailable(
            f"no answer within {self.deadline_s:g} s (a commit waiting for the database's standby?): "
            "send the same signed bytes again"
        )
        observability.note_error(answer.code)
        response = JSONResponse(answer.body(), status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        await response(scope, receive, send)
