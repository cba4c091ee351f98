"""Prometheus metrics: the counters, each `center serve`'s metrics directory, the loopback listener.

The public HTTPS port serves no metrics: payment counts and amounts polled
around a purchase would tell anyone its amount. `center serve --metrics-port N`
answers GET /metrics in plain HTTP on 127.0.0.1:N only (off by default), from
the `center serve` process itself, for a Prometheus on the same host (or one
reaching it through a tunnel or an agent there).

Every worker of `center serve` counts in prometheus_client's multiprocess
files under PROMETHEUS_MULTIPROC_DIR and the listener sums them. Each
`center serve` process has its own directory D/metrics/<pid>-<random>/, held
with an flock for its life: a second `center serve` on the same data
directory (which may fail to start) removes only directories nobody holds,
never the counters of a running one. prometheus_client is imported lazily:
it picks its storage when imported, so only after PROMETHEUS_MULTIPROC_DIR is set.

What is counted, per request, is decided in center.ops.observability.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR_NAME = "metrics"
# Held while a `center serve` sweeps D/metrics and creates and locks its own directory there.
SWEEP_LOCK_NAME = ".lock"
# Loopback only: nobody but local users (and what they forward on purpose) reaches the listener.
METRICS_HOST = "127.0.0.1"
METRICS_PATH = "/metrics"
# A scraper that stops talking frees the (single-threaded) listener after this long.
METRICS_CLIENT_TIMEOUT_S = 10
SWEEP_LOCK_WAIT_S = 10
SWEEP_LOCK_POLL_S = 0.05
# Server directories of earlier runs swept in one start; more are left for the next start.
MAX_SWEPT_ENTRIES = 1000
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Routes x methods x statuses are bounded by design; the cache stops growing past this anyway.
MAX_CACHED_LABEL_SETS = 4096


class Metrics:
    """The center's metrics; in multiprocess mode the values live in files shared by the workers."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, values

        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        if self.multiprocess_dir and values.ValueClass is values.MutexValue:
            # prometheus_client was imported before the variable was set: pick the file storage now.
            values.ValueClass = values.get_value_class()
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tokenpay_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "tokenpay_http_request_duration_seconds",
            "Time to answer a request",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.payments = Counter("tokenpay_payments", "Payments accepted", registry=self.registry)
        self.payment_amount = Counter(
            "tokenpay_payment_amount_minor",
            "Sum of accepted payments, in minor units",
            registry=self.registry,
        )
        self.errors = Counter(
            "tokenpay_errors", "Refusals by stable API error code", ["code"], registry=self.registry
        )
        self._children: dict[tuple[str, str, int], tuple] = {}

    def request(
        self, route: str, method: str, status: int, duration_s: float, error_code: str | None
    ) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds a tuple: once per label set
            children = (self.requests.labels(route, method, str(status)), self.duration.labels(route))
            if len(self._children) < MAX_CACHED_LABEL_SETS:
                self._children[key] = children
        children[0].inc()
        children[1].observe(duration_s)
        if error_code is not None:
            self.error(error_code)

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def payment(self, amount_minor: int) -> None:
        assert amount_minor > 0, amount_minor
        self.payments.inc()
        self.payment_amount.inc(amount_minor)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry), CONTENT_TYPE_LATEST


@dataclass
class MetricsDir:
    """This `center serve` process's directory under D/metrics, flocked for as long as `fd` is open."""

    path: Path
    fd: int

    def release(self) -> None:
        """At a clean stop; after a crash the next `center serve` sweeps it (nobody holds the lock)."""
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.fd)


def prepare_metrics_dir(data_dir: Path) -> MetricsDir:
    """A fresh, locked D/metrics/<pid>-<random>/ for this server; PROMETHEUS_MULTIPROC_DIR points at it.

    Run before any worker starts. Counters start at zero with each `center serve`: what is left of
    earlier runs (directories no live server holds, loose files of the old layout) is removed,
    while the directory of a server still running is kept.
    """
    root = Path(data_dir) / METRICS_DIR_NAME
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise ValueError(f"{root} is not a directory: move it away so `center serve` can keep metrics there")
    root.mkdir(mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)  # one made by an earlier version under a looser umask
    with _held(root / SWEEP_LOCK_NAME):
        _sweep(root)
        own = root / f"{os.getpid()}-{secrets.token_hex(4)}"
        own.mkdir(mode=0o700)
        fd = os.open(own, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and unseen by others: never busy
    os.environ[MULTIPROC_ENV] = str(own)
    return MetricsDir(own, fd)


@contextlib.contextmanager
def _held(lock_path: Path):
    """The sweep lock: a starting server holds it for milliseconds; a stuck one is not waited for long."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline_s = time.monotonic() + SWEEP_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline_s:
                    raise ValueError(
                        f"{lock_path} is held by another `center serve` that is starting; "
                        "try again when it has started"
                    ) from None
                time.sleep(SWEEP_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)


def _sweep(root: Path) -> None:
    for count, entry in enumerate(sorted(root.iterdir())):
        if count >= MAX_SWEPT_ENTRIES:
            return
        if entry.name == SWEEP_LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            if not _in_use(entry):
                shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _in_use(directory: Path) -> bool:
    """A running `center serve` holds an flock on its directory."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock taken on a stale directory


def start_metrics_listener(port: int, directory: Path):
    """Serve GET /metrics (the sum of every worker's files in `directory`) on 127.0.0.1:port, plain HTTP.

    A daemon thread of the `center serve` process; returns the server (shutdown() stops it).
    OSError when the port is taken.
    """
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    exposition = make_wsgi_app(registry)

    def only_metrics(environ, start_response):
        if environ.get("PATH_INFO") == METRICS_PATH and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return exposition(environ, start_response)
        message = f"only GET {METRICS_PATH} is served here"
        body = json.dumps({"error": {"code": "not_found", "message": message}})
        start_response(
            "404 Not Found", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body.encode()]

    class QuietHandler(WSGIRequestHandler):
        timeout = METRICS_CLIENT_TIMEOUT_S

        def log_message(self, *args) -> None:  # the scraper's requests are not worth a log line each
            pass

    server = make_server(METRICS_HOST, port, only_metrics, WSGIServer, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-listener", daemon=True).start()
    return server
