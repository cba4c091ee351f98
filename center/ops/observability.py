"""One structured log line and the metrics of every request; setting up `center serve`'s logs and metrics.

`install_observability(app)` adds an outermost ASGI middleware that times
every request, counts it by route template, method and status, and logs it
(center.ops.logs). What only the routes know reaches it through a per-request
record in a context variable (sync routes run in a thread with a copy of the
context, which shares the record): the stable error code (note_error, called
where an ApiError becomes a response) and the ids of a signed request
(note_signed, observe_answer, called by the signed routes).

Accepted payments are counted from the receipt the route returns, with no
extra SQL. A resend of an already answered message gets the stored receipt
again; it is not counted when that receipt's audit entry was written before
this request began (milliseconds; a receipt stored before the log became a
Merkle tree has its signing time in whole seconds: within the same second it
counts twice).

The counters, their files and the loopback listener: center.ops.metrics.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from center.ops.logs import LOG_FORMATS, LOG_LEVELS, configure, log_event
from center.ops.metrics import METRICS_HOST, Metrics, MetricsDir, prepare_metrics_dir, start_metrics_listener
from hostkit.cli import CliError

ROUTE_OTHER = "other"
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
KID_PATTERN = re.compile(r"[0-9a-f]{64}")
# The client went away before an answer was sent (nginx's convention).
STATUS_CLIENT_GONE = 499


@dataclass
class RequestNotes:
    metrics: Metrics
    request_id: str
    error_code: str | None = None
    kid: str | None = None
    msg_id: str | None = None
    party_id: str | None = None
    started_center_ms: int | None = None
    batch_items: int = 0
    batch_refused: int = 0


_current: ContextVar[RequestNotes | None] = ContextVar("tokenpay_request_notes", default=None)


def note_error(code: str) -> None:
    """The stable API error code of this request's answer (counted and logged once, at the end)."""
    notes = _current.get()
    if notes is not None:
        notes.error_code = code


def note_signed(kid: str, now_ms: int) -> None:
    """A signed request arrived: its key id (when well-formed) and the center's clock at arrival."""
    notes = _current.get()
    if notes is not None:
        notes.kid = kid if KID_PATTERN.fullmatch(kid) else None
        notes.started_center_ms = now_ms


def observe_answer(response: dict) -> None:
    """Read the receipt the center answered with: ids for the log; count an accepted payment.

    Never raises: the request's effect is committed by now, and a metrics bug
    must not turn its answer into an error.
    """
    notes = _current.get()
    if notes is None:
        return
    try:
        facts = _receipt_facts(response)
        notes.msg_id, notes.kid = facts.msg_id, facts.kid
        notes.party_id = facts.result.get("member_id")
        _count_if_paid(notes, facts, notes.started_center_ms)
    except Exception as error:
        log_event(
            "observe_failed", logging.WARNING, request_id=notes.request_id, error_type=type(error).__name__
        )


def observe_batch(answers, started_ms: int) -> None:
    """A payment batch's answers: count each accepted payment and each refusal by code.

    started_ms: the center's clock when the batch arrived (a resent item's stored receipt is older).
    Never raises, like observe_answer.
    """
    notes = _current.get()
    if notes is None:
        return
    try:
        for answer in answers:
            notes.batch_items += 1
            if "error" in answer:
                notes.batch_refused += 1
                notes.metrics.error(answer["error"]["code"])
            else:
                _count_if_paid(notes, _receipt_facts(answer), started_ms)
    except Exception as error:
        log_event(
            "observe_failed", logging.WARNING, request_id=notes.request_id, error_type=type(error).__name__
        )


@dataclass(frozen=True)
class ReceiptFacts:
    """What metrics and the log line read from a receipt, in either form."""

    kid: str
    msg_id: str
    result: dict
    issued_ms: int  # when the receipt's entry was written (or, old form, signed: whole seconds)
    issued_in_seconds: bool


def _count_if_paid(notes: RequestNotes, facts: ReceiptFacts, started_ms: int | None) -> None:
    if started_ms is None:
        fresh = True
    elif facts.issued_in_seconds:
        fresh = facts.issued_ms >= started_ms - started_ms % 1000
    else:
        fresh = facts.issued_ms >= started_ms
    if facts.result.get("action") == "paid" and fresh:
        notes.metrics.payment(int(facts.result["amount_minor"]))


def _receipt_facts(response: dict) -> ReceiptFacts:
    """The receipt as the center issued it: a log receipt (paywire.receipts.build_log_receipt), or a
    signed receipt envelope stored before the log became a Merkle tree (a resend gets that one)."""
    receipt = response["receipt"]
    if "entry" in receipt:
        entry = receipt["entry"]
        return ReceiptFacts(entry["kid"], entry["msg_id"], entry["action"], entry["created_at_ms"], False)
    text = receipt["payload"]
    payload = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    body = payload["body"]
    return ReceiptFacts(body["for_kid"], body["for_msg_id"], body["result"], payload["iat"] * 1000, True)


class ObservabilityMiddleware:
    """Outermost ASGI middleware: request id, timing, metrics, one log line per request."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_s = time.perf_counter()
        notes = RequestNotes(metrics=self.metrics, request_id=_request_id(scope))
        status = STATUS_CLIENT_GONE
        request_id_header = (b"x-request-id", notes.request_id.encode("ascii"))

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), request_id_header]}
            await send(message)

        token = _current.set(notes)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # ServerErrorMiddleware (outside this one) answers 500 and uvicorn logs the stack.
            if status == STATUS_CLIENT_GONE:  # no answer started: the client gets a 500
                status = 500
            notes.error_code = notes.error_code or "internal_error"
            raise
        finally:
            _current.reset(token)
            self._finish(scope, notes, status, time.perf_counter() - started_s)

    def _finish(self, scope, notes: RequestNotes, status: int, duration_s: float) -> None:
        route = _route_template(scope)
        method = scope["method"] if scope["method"] in KNOWN_METHODS else ROUTE_OTHER
        self.metrics.request(route, method, status, duration_s, notes.error_code)
        log_event(
            "request",
            logging.ERROR if status >= 500 else logging.INFO,
            request_id=notes.request_id,
            method=method,
            route=route,
            status=status,
            error=notes.error_code,
            duration_ms=round(duration_s * 1000, 3),
            kid=notes.kid,
            party_id=notes.party_id,
            msg_id=notes.msg_id,
            items=notes.batch_items or None,
            refused=notes.batch_refused or None,
            pid=os.getpid(),
        )


def install_observability(app) -> Metrics:
    """Metrics, request logs and worker start/stop events on a FastAPI app.

    No route: the app is the public port, which answers /metrics 404 not_found like any unknown
    path; the counters are read through `Metrics.render` (the loopback listener, tests).
    """
    metrics = Metrics()
    app.state.metrics = metrics
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    _log_lifespan(app)
    return metrics


def _log_lifespan(app) -> None:
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(lifespan_app):
        center = getattr(app.state, "center", None)
        log_event("worker_start", pid=os.getpid(), center_id=getattr(center, "center_id", None))
        try:
            async with inner(lifespan_app) as state:
                yield state
        finally:
            log_event("worker_stop", pid=os.getpid())

    app.router.lifespan_context = lifespan


def _request_id(scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if REQUEST_ID_PATTERN.fullmatch(candidate):
                return candidate
            break
    return secrets.token_hex(8)


def _route_template(scope) -> str:
    # The router records the matched route in the scope; its template bounds the label values.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else ROUTE_OTHER


def prepare_serve(
    data_dir: Path,
    *,
    center_id: str,
    db_url: str,
    log_format: str,
    log_level: str,
    host: str,
    port: int,
    workers: int,
    metrics_port: int | None,
) -> tuple[dict, MetricsDir, object]:
    """Before uvicorn starts: check the log options, configure logging, make this server's metrics
    directory, start the loopback metrics listener when asked, log serve_start.

    Returns the logging dictConfig for uvicorn (which applies it in every worker), the metrics
    directory and the listener (None when off); the caller releases both when uvicorn returns.
    """
    if log_format not in LOG_FORMATS:
        raise CliError(f"--log-format {log_format!r} is not known: use {' or '.join(LOG_FORMATS)}")
    if log_level not in LOG_LEVELS:
        raise CliError(f"--log-level {log_level!r} is not known: use one of {', '.join(LOG_LEVELS)}")
    try:
        metrics_dir = prepare_metrics_dir(data_dir)
    except (ValueError, OSError) as error:
        raise CliError(f"cannot prepare the metrics directory: {error}") from None
    listener = None
    if metrics_port is not None:
        try:
            listener = start_metrics_listener(metrics_port, metrics_dir.path)
        except OSError as error:
            metrics_dir.release()
            raise CliError(
                f"cannot listen for metrics on {METRICS_HOST}:{metrics_port}: "
                f"{error.strerror or error}; choose another --metrics-port"
            ) from None
    log_config = configure(log_format, log_level)
    log_event(
        "serve_start",
        pid=os.getpid(),
        center_id=center_id,
        host=host,
        port=port,
        workers=workers,
        db=db_url.split(":", 1)[0].split("+", 1)[0],
        metrics_port=metrics_port,
    )
    _log_stop_on_signals()
    return log_config, metrics_dir, listener


def _log_stop_on_signals() -> None:
    """Log serve_stop when SIGTERM/SIGINT end the server.

    A single-worker uvicorn restores the handlers it found and raises the
    signal again once it has shut down, so the process ends by the signal and
    no `finally` runs: this handler logs, then lets the signal do as before.
    """

    def on_signal(signum, _frame):
        log_event("serve_stop", pid=os.getpid(), signal=signal.Signals(signum).name)
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
