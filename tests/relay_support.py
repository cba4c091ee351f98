"""A TCP relay in front of a center, for the tests that take a connection away at a chosen moment.

Connections are numbered from 1 as they are accepted; `plan(number)` says what happens to each:
- "pass": relayed both ways (TLS passes through untouched);
- "close": closed at once, nothing read: the node, seen from the wallet, stopped answering;
- "silent": accepted and read, never forwarded, never answered: the request never reaches the center;
- "withhold": all the wallet sends is forwarded, but what the center sends back stops once the wallet's
  first TLS application-data record went by (its request, TLS 1.2; its Finished after the server's
  whole handshake, TLS 1.3): the center applies the request, the wallet waits for an answer that
  never comes;
- "drop": the handshake passes, then the connection is cut when a later chunk from the center starts
  with an application-data record (the answer): the center applied the request, the wallet sees the
  connection close.

`stalled` is set once a "silent" or "withhold" connection has carried the wallet's bytes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

MODES = ("pass", "close", "silent", "withhold", "drop")
CHUNK_BYTES = 65536
TLS_APPLICATION_DATA = 23
DROP_TIMEOUT_S = 10.0


class Relay:
    def __init__(self, upstream_port: int, plan: Callable[[int], str]):
        self.upstream_port, self.plan = upstream_port, plan
        self.connections = 0
        self.stalled = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            mode = self.plan(self.connections)
            assert mode in MODES, mode
            self._sockets.append(client)
            if mode == "close":
                client.close()
                continue
            handler = self._silent if mode == "silent" else self._relay
            threading.Thread(target=handler, args=(client, mode), daemon=True).start()

    def _silent(self, client: socket.socket, _mode: str) -> None:
        with contextlib.suppress(OSError):
            while client.recv(CHUNK_BYTES):
                self.stalled.set()

    def _relay(self, client: socket.socket, mode: str) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self._sockets.append(upstream)
        if mode == "drop":
            for end in (client, upstream):
                end.settimeout(DROP_TIMEOUT_S)
        answering = threading.Event()
        answering.set()
        threading.Thread(target=self._forward, args=(client, upstream, mode, answering), daemon=True).start()
        chunks = 0
        try:
            while data := upstream.recv(CHUNK_BYTES):
                # The answer: a later chunk from the center that starts an application-data record
                # (the first chunk is the handshake's start); read on once more, then cut.
                if mode == "drop" and chunks > 0 and data[0] == TLS_APPLICATION_DATA:
                    upstream.recv(CHUNK_BYTES)
                    return
                chunks += 1
                if answering.is_set():
                    client.sendall(data)
        except OSError:
            pass
        finally:
            if mode != "withhold":  # the center is done, so the wallet sees the end; "withhold" waits
                for end in (client, upstream):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)

    def _forward(self, client: socket.socket, upstream: socket.socket, mode: str, answering) -> None:
        """The wallet's bytes to the center; under "withhold", the way back closes after its request."""
        records = TlsRecords()
        with contextlib.suppress(OSError):
            while data := client.recv(CHUNK_BYTES):
                if mode == "withhold" and records.feed(data):
                    answering.clear()
                upstream.sendall(data)
                if mode == "withhold" and not answering.is_set():
                    self.stalled.set()
            if mode == "pass":  # the wallet is done: the center sees the end
                upstream.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):  # teardown: a socket that fails to close is gone anyway
                sock.close()


class TlsRecords:
    """Walks the TLS record headers of one direction; feed() is True once an application-data record
    (type 23) has been seen in it."""

    def __init__(self):
        self.buffer = b""
        self.seen_application_data = False

    def feed(self, data: bytes) -> bool:
        self.buffer += data
        while len(self.buffer) >= 5:
            length = int.from_bytes(self.buffer[3:5], "big")
            if len(self.buffer) < 5 + length:
                break
            if self.buffer[0] == TLS_APPLICATION_DATA:
                self.seen_application_data = True
            self.buffer = self.buffer[5 + length :]
        return self.seen_application_data
