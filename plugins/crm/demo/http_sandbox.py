"""A loopback HTTP server for the sandbox APIs (SMS gateway, RD Conversas): records, answers, misbehaves.

Why: `make run` and the tests must exercise the real HTTP path (HttpHook, retries, idempotency keys)
against something that can be asserted on and told to fail. A sandbox is a `SandboxServer` with
routes; each route is a function `(request) -> (status, json_body[, headers])`.

- Every request is recorded (method, path, headers, JSON body); `requests(path)` lists them.
- `Idempotency-Key`: a repeated key gets the first answer again and is not handed to the route
  twice (`deliveries(path)` counts what the route really processed).
- `inject(path, *faults)`: the next requests to `path` get these answers first, in order: an int
  status (`429`, `500`, ...), `(status, {"Retry-After": "2"})`, or `"timeout"` (the server sleeps
  past the client's timeout, then the request is dropped *after* being processed, like a provider
  that acted but whose answer was lost).
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    received_at: float = field(default_factory=time.monotonic)  # to check retry waits (Retry-After, backoff)


Route = Callable[[Request], tuple]
Fault = int | tuple[int, dict[str, str]] | str


@dataclass
class _State:
    log: list[Request] = field(default_factory=list)
    delivered: list[Request] = field(default_factory=list)
    answers: dict[str, tuple] = field(default_factory=dict)  # idempotency key -> first answer
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class SandboxServer:
    """Routes on loopback, in a thread. Use as a context manager; `url` is the base URL."""

    def __init__(
        self, routes: dict[tuple[str, str], Route], host: str = "127.0.0.1", port: int = 0, stall: float = 5.0
    ) -> None:
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the sandbox only listens on loopback, not {host!r}")
        self.routes = routes
        self.state = _State()
        self.stall = stall
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def inject(self, path: str, *faults: Fault) -> None:
        with self.state.lock:
            self.state.faults.setdefault(path, []).extend(faults)

    def requests(self, path: str | None = None) -> list[Request]:
        with self.state.lock:
            return [r for r in self.state.log if path is None or r.path == path]

    def deliveries(self, path: str | None = None) -> list[Request]:
        """Requests the route really processed (idempotent repeats and injected faults excluded)."""
        with self.state.lock:
            return [r for r in self.state.delivered if path is None or r.path == path]

    def _handle(self, req: Request) -> tuple[int, Any, dict[str, str], bool]:
        """(status, body, headers, drop_connection)."""
        with self.state.lock:
            self.state.log.append(req)
            queue = self.state.faults.get(req.path)
            fault = queue.pop(0) if queue else None
            key = req.headers.get("idempotency-key")
            if key and key in self.state.answers and fault is None:
                status, body, headers = self.state.answers[key]
                return status, body, headers, False
        if isinstance(fault, int):
            return fault, {"error": f"injected {fault}"}, {}, False
        if isinstance(fault, tuple):
            return fault[0], {"error": f"injected {fault[0]}"}, dict(fault[1]), False
        route = self.routes.get((req.method, req.path)) or self._prefix_route(req)
        if route is None:
            return 404, {"error": f"no route {req.method} {req.path}"}, {}, False
        answer = route(req)
        status, body, headers = (*answer, {})[:3] if len(answer) == 2 else answer
        with self.state.lock:
            self.state.delivered.append(req)
            if key:
                self.state.answers[key] = (status, body, headers)
        if fault == "timeout":
            time.sleep(self.stall)
            return status, body, headers, True
        return status, body, headers, False

    def _prefix_route(self, req: Request) -> Route | None:
        for (method, path), route in self.routes.items():
            if method == req.method and path.endswith("/*") and req.path.startswith(path[:-1]):
                return route
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sandbox = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in separate writes: with Nagle on, each keep-alive answer waited
            # ~40 ms for the client's delayed ACK (17 requests/s instead of hundreds)
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # quiet: tests read the records instead
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                req = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                status, out, headers, drop = sandbox._handle(req)
                if drop:
                    self.close_connection = True
                    return
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return Handler
