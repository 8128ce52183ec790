"""A sandbox SMTP server that stores every message it accepts as an .eml file.

Why: local runs and end-to-end tests must send real SMTP through Airflow's SmtpHook and then
assert on what landed in a mailbox, without ever reaching a real mail server. The sink binds
to loopback only and accepts everything (no TLS, no AUTH).

Each message becomes one file ``<UTC time>-<seq>-<id>.eml`` in the directory, written atomically
(temp file + rename, so a reader never sees half a message). The SMTP envelope, which is not
part of the message itself, is recorded in two headers prepended to it:
``X-Envelope-From`` and ``X-Envelope-To`` (comma-separated).

Command line (started by ``make run``)::

    python -m crm.demo smtp-sink --port 8025 --dir var/mail

In tests::

    with MailSink(tmp_path / "mail") as sink:       # free port on 127.0.0.1, own thread
        send(host=sink.host, port=sink.port)
        [msg] = sink.wait_for(1)                     # email.message.EmailMessage
        assert msg["X-Envelope-To"] == "a@example.com"
"""

from __future__ import annotations

import argparse
import datetime as dt
import email
import email.policy
import ipaddress
import itertools
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

ENVELOPE_FROM = "X-Envelope-From"
ENVELOPE_TO = "X-Envelope-To"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8025


def _require_loopback(host: str) -> None:
    """Refuse to listen anywhere but loopback: this server accepts anything from anyone."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"the SMTP sink only listens on loopback, not {host!r}")


def parse_message(raw: bytes) -> EmailMessage:
    """Parse a stored message with the modern email API (headers decoded, get_body() available)."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


@dataclass(frozen=True)
class ReceivedMail:
    """One stored message: its file, its SMTP envelope and the parsed message (with the X-Envelope-* headers)."""

    path: Path
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage


def read_mailbox(directory: str | os.PathLike[str]) -> list[ReceivedMail]:
    """Every message stored in ``directory``, oldest first."""
    mails = []
    for path in sorted(Path(directory).glob("*.eml")):
        message = parse_message(path.read_bytes())
        rcpt = str(message.get(ENVELOPE_TO, ""))
        mails.append(
            ReceivedMail(
                path=path,
                mail_from=str(message.get(ENVELOPE_FROM, "")),
                rcpt_tos=tuple(r.strip() for r in rcpt.split(",") if r.strip()),
                message=message,
            )
        )
    return mails


class MailboxHandler:
    """aiosmtpd handler: accept every message and write it to ``directory`` (subclass to inject faults)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def store(self, envelope: Envelope) -> Path:
        """Write one message (envelope headers + the data exactly as received) and return its path."""
        data = envelope.original_content or b""
        if isinstance(data, str):  # only if someone configures decode_data=True
            data = data.encode("utf-8", "surrogateescape")
        rcpt = ", ".join(envelope.rcpt_tos)
        header = f"{ENVELOPE_FROM}: {envelope.mail_from or ''}\r\n{ENVELOPE_TO}: {rcpt}\r\n".encode()
        with self._lock:
            seq = next(self._seq)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{stamp}-{seq:06d}-{uuid.uuid4().hex[:8]}.eml"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(header + data)
        os.replace(tmp, final)
        return final

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.store(envelope)
        return "250 Message accepted for delivery"


class FaultyMailboxHandler(MailboxHandler):
    """The mailbox with faults on demand, for tests and for rehearsing incidents with `make run`.

    - ``tempfail_every=n``: every n-th DATA is answered ``451`` (nothing stored), the others accepted;
    - ``refuse``: these recipients get ``550`` at RCPT (the message still goes to the others);
    - ``stall_at_rcpt`` / ``stall_at_data``: the n-th message (1-based, counting DATA/RCPT commands)
      hangs until ``release()`` (or forever), to let a test kill the sender at that point; a message
      stalled in DATA is not stored;
    - ``on_store(count)``: called after each stored message (a test's hook to act at message k).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        tempfail_every: int = 0,
        refuse: set[str] | frozenset[str] = frozenset(),
        stall_at_rcpt: int = 0,
        stall_at_data: int = 0,
    ) -> None:
        super().__init__(directory)
        self.tempfail_every = tempfail_every
        self.refuse = {a.lower() for a in refuse}
        self.stall_at_rcpt = stall_at_rcpt
        self.stall_at_data = stall_at_data
        self.data_commands = 0
        self.mail_transactions = 0
        self.stored = 0
        self.tempfailed = 0
        self.stalled = threading.Event()
        self._release = threading.Event()

    def release(self) -> None:
        self._release.set()

    async def _stall(self) -> None:
        import asyncio

        self.stalled.set()
        while not self._release.is_set():
            await asyncio.sleep(0.02)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list) -> str:
        self.mail_transactions += 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list) -> str:
        if self.stall_at_rcpt and self.mail_transactions == self.stall_at_rcpt and not envelope.rcpt_tos:
            await self._stall()
        if address.lower() in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_commands += 1
        if self.stall_at_data and self.data_commands == self.stall_at_data:
            await self._stall()
            return "451 4.3.0 stalled message dropped"
        if self.tempfail_every and self.data_commands % self.tempfail_every == 0:
            self.tempfailed += 1
            return "451 4.3.0 try again later"
        self.store(envelope)
        self.stored += 1
        return "250 Message accepted for delivery"


class _Controller(Controller):
    """aiosmtpd's threaded controller, able to listen on port 0 (the OS picks a free port, no race)."""

    def _trigger_server(self) -> None:
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class MailSink:
    """The sink as a context manager: starts the SMTP server in a thread, gives access to the mailbox."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        host: str = DEFAULT_HOST,
        port: int = 0,
        handler: MailboxHandler | None = None,
    ) -> None:
        _require_loopback(host)
        import logging

        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
        self.directory = Path(directory)
        self.host = host
        self.port = port
        self.handler = handler or MailboxHandler(self.directory)
        self._controller: _Controller | None = None

    def start(self) -> MailSink:
        """Listen (port 0 means a free port; read ``self.port`` afterwards)."""
        if self._controller is not None:
            raise RuntimeError("the SMTP sink is already running")
        controller = _Controller(
            self.handler,
            hostname=self.host,
            port=self.port,
            server_hostname="crm-sandbox.localhost",
            enable_SMTPUTF8=True,
            ready_timeout=10.0,
        )
        controller.start()
        self._controller = controller
        self.port = controller.port
        return self

    def stop(self) -> None:
        """Stop listening; stored messages stay on disk."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def received(self) -> list[ReceivedMail]:
        """Everything stored so far, oldest first."""
        return read_mailbox(self.directory)

    def messages(self) -> list[EmailMessage]:
        """The stored messages, parsed, oldest first."""
        return [mail.message for mail in self.received()]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Block until at least ``count`` messages are stored (for senders in other threads/processes)."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.messages()
            if len(messages) >= count or time.monotonic() >= deadline:
                if len(messages) < count:
                    raise TimeoutError(f"expected {count} message(s) in {self.directory}, got {len(messages)}")
                return messages
            time.sleep(0.05)

    def clear(self) -> None:
        """Delete the stored messages."""
        for path in self.directory.glob("*.eml"):
            path.unlink(missing_ok=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m crm.demo smtp-sink``."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="loopback address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s)")
    parser.add_argument("--dir", default="var/mail", help="where to store the .eml files (default %(default)s)")
    parser.add_argument("--tempfail-every", type=int, default=0, help="answer 451 to every N-th message (fault drill)")
    parser.add_argument("--refuse", action="append", default=[], help="answer 550 to this recipient (repeatable)")


def main(args: argparse.Namespace) -> int:
    """Run the sink in the foreground until SIGINT or SIGTERM."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    handler = None
    if args.tempfail_every or args.refuse:
        handler = FaultyMailboxHandler(args.dir, tempfail_every=args.tempfail_every, refuse=set(args.refuse))
    with MailSink(args.dir, host=args.host, port=args.port, handler=handler) as sink:
        print(f"SMTP sink listening on {sink.host}:{sink.port}, storing messages in {sink.directory}", flush=True)
        while not stop.wait(1.0):
            pass
    print("SMTP sink stopped", flush=True)
    return 0
