"""The sandbox SMS gateway: a loopback `SandboxServer` that accepts JSON SMS and keeps what it got.

Why: `make run` and the tests send real HTTP to something that answers like a gateway, records
every request (with its arrival time, so a test can see that Retry-After was waited), and can be
told to fail (`inject("/sms", 429, ...)`, `--tempfail-every`, `--refuse`). With `--dir` each
accepted SMS is also written as a JSON file, the SMS twin of the SMTP sink's .eml files.

`POST /sms` with ``{"to": "+48...", "from": "...", "text": "..."}``: 201 with ``{"id": "sms-1",
"segments": n, "encoding": "GSM-7"}``; 400 when `to` is not E.164 or `text` is empty.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

from crm.demo.http_sandbox import Request, SandboxServer
from crm.notify.sms import DEFAULT_PATH, normalise_phone, sms_length

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8026


class SmsGateway(SandboxServer):
    """A SandboxServer with the gateway's route; `received` keeps (monotonic time, request) of every request."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        path: str = DEFAULT_PATH,
        directory: str | Path | None = None,
        tempfail_every: int = 0,
        refuse: set[str] | frozenset[str] = frozenset(),
        stall: float = 5.0,
    ) -> None:
        self.path = path
        self.directory = Path(directory) if directory else None
        self.tempfail_every = tempfail_every
        self.refuse = {normalise_phone(n) or n for n in refuse}
        self.received: list[tuple[float, Request]] = []
        self.accepted: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._seen = 0
        super().__init__({("POST", path): self._accept}, host=host, port=port, stall=stall)
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)

    def _handle(self, req: Request) -> tuple[int, Any, dict[str, str], bool]:
        with self.state.lock:
            self.received.append((time.monotonic(), req))
            self._seen += 1
            if req.path == self.path and self.tempfail_every and self._seen % self.tempfail_every == 0:
                self.state.faults.setdefault(req.path, []).insert(0, (429, {"Retry-After": "1"}))
        return super()._handle(req)

    def _accept(self, req: Request) -> tuple[int, dict[str, Any]]:
        body = req.body if isinstance(req.body, dict) else {}
        to, text = normalise_phone(str(body.get("to") or "")), body.get("text")
        if not to:
            return 400, {"error": f"'to' is not an E.164 number: {body.get('to')!r}"}
        if not isinstance(text, str) or not text:
            return 400, {"error": "'text' is empty"}
        if to in self.refuse:
            return 400, {"error": f"{to}: number refused by the gateway"}
        length = sms_length(text)
        sms_id = f"sms-{next(self._ids)}"
        with self.state.lock:
            self.accepted.append(body)
        if self.directory:
            record = {"id": sms_id, **body, "encoding": length.encoding, "segments": length.segments}
            (self.directory / f"{time.strftime('%Y%m%d-%H%M%S')}-{sms_id}.json").write_text(
                json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8"
            )
        return 201, {"id": sms_id, "segments": length.segments, "encoding": length.encoding}

    def messages(self) -> list[dict[str, Any]]:
        """Bodies of the SMS the gateway accepted (each once, whatever the retries; refused ones not)."""
        with self.state.lock:
            return list(self.accepted)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m crm.demo sms-gateway``."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="loopback address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s)")
    parser.add_argument(
        "--dir", default="var/sms", help="where to store each accepted SMS as JSON (default %(default)s)"
    )
    parser.add_argument("--tempfail-every", type=int, default=0, help="answer 429 to every N-th request (fault drill)")
    parser.add_argument("--refuse", action="append", default=[], help="answer 400 to this number (repeatable)")


def main(args: argparse.Namespace) -> int:
    """Run the gateway in the foreground until SIGINT or SIGTERM."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    gateway = SmsGateway(
        args.host, args.port, directory=args.dir, tempfail_every=args.tempfail_every, refuse=set(args.refuse)
    )
    with gateway:
        print(f"SMS gateway listening on {gateway.url}{gateway.path}, storing messages in {args.dir}", flush=True)
        while not stop.wait(1.0):
            pass
    print("SMS gateway stopped", flush=True)
    return 0
