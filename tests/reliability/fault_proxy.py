"""A fault-injecting HTTP proxy for S3 tests: it stands between the code and the moto server
and, on a deterministic schedule, answers with 503 SlowDown, 500 InternalError, or closes
the connection without an answer. It can also hold requests (a gate) until the test releases
them, so that a test can act while a worker is known to be blocked inside a read.

Deterministic: whether a request fails depends only on what it asks for (method, bucket/key,
and the query without volatile parameters) and on how many times that same request has been
seen, never on timing or on the order in which concurrent requests arrive. A run therefore
meets the same faults every time it is repeated.
"""

from __future__ import annotations

import http.client
import threading
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

FAULTS = ("503", "500", "drop")
_VOLATILE_QUERY = {"uploadId", "partNumber", "x-id"}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}
_ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str      # /bucket/key, URL-decoded as sent
    query: str     # canonical query without volatile parameters

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}?{self.query}"


@dataclass
class Schedule:
    """Every ``period``-th distinct request (by a CRC of its identity) fails on its first
    ``failures`` attempts, each with one of ``kinds``; later attempts go through. ``always``:
    every attempt of every matching request fails (an outage the retries cannot outlast).
    ``only``: the requests the schedule applies to (default: all)."""

    period: int = 3
    failures: int = 1
    kinds: tuple[str, ...] = FAULTS
    always: bool = False
    only: Callable[[Request], bool] | None = None

    def fault(self, request: Request, attempt: int) -> str | None:
        if self.only is not None and not self.only(request):
            return None
        digest = zlib.crc32(request.key.encode())
        if self.always:
            return self.kinds[(digest + attempt) % len(self.kinds)]
        if digest % self.period or attempt > self.failures:
            return None
        return self.kinds[(digest // self.period + attempt) % len(self.kinds)]


NO_FAULTS = Schedule(period=1, failures=0)


@dataclass
class AnyOf:
    """Several schedules at once: the first that injects a fault wins."""

    schedules: tuple

    def __init__(self, *schedules):
        self.schedules = schedules

    def fault(self, request: Request, attempt: int) -> str | None:
        return next((fault for schedule in self.schedules
                     if (fault := schedule.fault(request, attempt)) is not None), None)


@dataclass
class Stats:
    requests: int = 0
    faults: Counter = field(default_factory=Counter)
    held: int = 0
    attempts: Counter = field(default_factory=Counter)
    log: list = field(default_factory=list)  # (method, path, raw query) of every request, in order


class FaultProxy:
    """``with FaultProxy(moto_endpoint, Schedule()) as proxy:`` then point AWS_ENDPOINT_URL
    at ``proxy.endpoint``. ``schedule`` may be swapped at any time."""

    def __init__(self, upstream: str, schedule: Schedule = NO_FAULTS):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.upstream_url = upstream
        self.schedule = schedule
        self.stats = Stats()
        self._lock = threading.Lock()
        self._gate: Callable[[Request], bool] | None = None
        self._open = threading.Event()
        self._open.set()
        self._held_changed = threading.Condition(self._lock)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except (ConnectionError, TimeoutError):
                    self.close_connection = True

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # ---- control -----------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def hold(self, predicate: Callable[[Request], bool]) -> None:
        """Hold matching requests (before they reach the store) until release()."""
        with self._lock:
            self._gate = predicate
            self._open.clear()

    def release(self) -> None:
        with self._lock:
            self._gate = None
            self._open.set()

    def wait_held(self, count: int = 1, timeout: float = 120) -> bool:
        """Block until at least ``count`` requests are being held."""
        with self._held_changed:
            return self._held_changed.wait_for(lambda: self.stats.held >= count, timeout)

    # ---- one request -------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = self._read_body(handler)
        parts = urlsplit(handler.path)
        query = urlencode(sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                                 if k not in _VOLATILE_QUERY))
        request = Request(handler.command, parts.path, query)
        with self._lock:
            self.stats.requests += 1
            self.stats.log.append((handler.command, parts.path, parts.query))
            self.stats.attempts[request.key] += 1
            attempt = self.stats.attempts[request.key]
            gated = self._gate is not None and self._gate(request)
            if gated:
                self.stats.held += 1
                self._held_changed.notify_all()
        if gated:
            self._open.wait()
            with self._lock:
                self.stats.held -= 1
        fault = self.schedule.fault(request, attempt)
        if fault is not None:
            with self._lock:
                self.stats.faults[fault] += 1
            if fault == "drop":
                handler.close_connection = True
                return  # the socket is closed with no answer at all
            status, code, message = _ERRORS[fault]
            payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                       f"<Message>{message}</Message><RequestId>fault-{self.stats.requests}</RequestId>"
                       "</Error>").encode()
            handler.send_response(status)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", "0" if handler.command == "HEAD" else str(len(payload)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(payload)
            return
        self._forward(handler, body)

    @staticmethod
    def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(handler.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length else b""

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {name: value for name, value in handler.headers.items()
                   if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length"}
        if body or handler.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            connection.request(handler.command, handler.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            handler.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() in _HOP_BY_HOP or (name.lower() == "content-length" and handler.command != "HEAD"):
                    continue
                handler.send_header(name, value)
            if handler.command != "HEAD":
                handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
        finally:
            connection.close()
