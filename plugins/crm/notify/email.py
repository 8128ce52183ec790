"""The e-mail channel: MIME built with the standard library, sent through the SMTP provider's hook.

Why the SMTP dialogue is driven step by step (MAIL, RCPT, then DATA) instead of `sendmail()`:
the ledger must commit "about to send" right before the point of no return. A failure before
DATA means the server discarded the transaction (safe to send again after reconnecting); a
timeout or a dropped connection during DATA means the message may have been delivered, so it
is `unknown`, never resent automatically. Server answers are classified as SMTP defines them:
4xx transient (retried here with backoff, up to a limit), 5xx permanent (that row fails).

One SMTP connection (from `smtp_default`, with its TLS/login settings) is reused for a whole
batch and reopened when the server drops it.
"""

from __future__ import annotations

import binascii
import contextlib
import logging
import mimetypes
import random
import re
import smtplib
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email import encoders
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any

from crm.notify.ledger import Outcome

log = logging.getLogger(__name__)

SMTP_CONN_ID = "smtp_default"
_QP_UTF8 = Charset("utf-8")
_QP_UTF8.body_encoding = QP
_WIRE = compat32.clone(linesep="\r\n")  # SMTP wants CRLF; smtplib does not fix bytes


_BARE_ADDRESS = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f]")  # CR, LF, NUL and every other control character but TAB


class HeaderInjection(ValueError):
    """A header value carries CR or LF: it could add headers or recipients, so it is refused."""


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    mime_type: str | None = None

    @classmethod
    def from_file(cls, path: str | Path, filename: str | None = None) -> Attachment:
        p = Path(path)
        return cls(filename=filename or p.name, content=p.read_bytes())


def check_header(name: str, value: str) -> str:
    """Refuse CR/LF (and other control characters) in a header value."""
    if _CONTROL.search(value):
        raise HeaderInjection(f"{name}: control characters (CR/LF) are not allowed in an e-mail header")
    return value


def address(value: str, name: str | None = None) -> tuple[str, str]:
    """(display name, addr-spec) from 'x@y' or 'Name <x@y>' (names in any language); refuses header injection."""
    check_header("address", value)
    if name:
        check_header("display name", name)
    if _BARE_ADDRESS.match(value):  # the common 'x@y' needs no RFC 5322 parser (parseaddr returns it as is)
        return (name or "", value)
    display, addr = parseaddr(value)
    if "@" not in addr or " " in addr or not addr.isascii():
        raise ValueError(f"not an e-mail address: {value!r}")
    return (name or display or "", addr)


def _formatted(a: tuple[str, str] | str) -> tuple[str, str]:
    pair = address(a[1], a[0]) if isinstance(a, tuple) else address(a)
    return pair[1], formataddr(pair, charset="utf-8") if pair[0] else pair[1]


def message_headers(
    *,
    sender: tuple[str, str] | str,
    to: Sequence[tuple[str, str] | str],
    subject: str,
    cc: Sequence[tuple[str, str] | str],
    bcc: Sequence[tuple[str, str] | str],
    reply_to: tuple[str, str] | str | None,
    message_id: str | None,
    headers: Mapping[str, str] | None,
) -> tuple[list[tuple[str, str | Header]], str, list[str], str]:
    """The top-level headers (validated, in order), the envelope sender and recipients, the Message-ID."""
    frm_addr, frm = _formatted(sender)
    tos = [_formatted(a) for a in to]
    ccs = [_formatted(a) for a in cc]
    bccs = [_formatted(a) for a in bcc]
    if not tos:
        raise ValueError("an e-mail needs at least one To address")
    out: list[tuple[str, str | Header]] = [("From", frm), ("To", ", ".join(f for _, f in tos))]
    if ccs:
        out.append(("Cc", ", ".join(f for _, f in ccs)))
    if reply_to:
        out.append(("Reply-To", _formatted(reply_to)[1]))
    check_header("Subject", subject)
    out.append(("Subject", Header(subject, "utf-8") if not subject.isascii() else subject))
    out.append(("Date", formatdate(localtime=False, usegmt=True)))
    mid = check_header("Message-ID", message_id or make_msgid(domain=frm_addr.rpartition("@")[2]))
    out.append(("Message-ID", mid))
    for key, value in (headers or {}).items():
        check_header("header name", key)
        check_header(key, value)
        out.append((key, Header(value, "utf-8") if not value.isascii() else value))
    rcpts = [a for a, _ in (*tos, *ccs, *bccs)]
    return out, frm_addr, rcpts, mid


def build_message(
    *,
    sender: tuple[str, str] | str,
    to: Sequence[tuple[str, str] | str],
    subject: str,
    text: str,
    html: str | None = None,
    cc: Sequence[tuple[str, str] | str] = (),
    bcc: Sequence[tuple[str, str] | str] = (),
    reply_to: tuple[str, str] | str | None = None,
    attachments: Iterable[Attachment] = (),
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[Message, str, list[str]]:
    """The message, the envelope sender and the envelope recipients (To + CC + BCC; BCC not in headers).

    Built with the classic `email.mime` API: about 4x faster than `EmailMessage` with the modern
    policy for the same bytes on the wire, which matters at thousands of messages per run.
    Non-ASCII subjects, display names and file names are RFC 2047/2231 encoded; bodies are UTF-8
    quoted-printable. The send path uses `build_wire`, which writes these same bytes directly; this
    function is its reference (tests compare the two byte for byte).
    """
    top, frm_addr, rcpts, _ = message_headers(
        sender=sender, to=to, subject=subject, cc=cc, bcc=bcc, reply_to=reply_to, message_id=message_id, headers=headers
    )
    body: Message = MIMEText(text, "plain", _QP_UTF8)
    if html is not None:
        alt = MIMEMultipart("alternative")
        alt.attach(body)
        alt.attach(MIMEText(html, "html", _QP_UTF8))
        body = alt
    files = list(attachments)
    if files:
        mixed = MIMEMultipart("mixed")
        mixed.attach(body)
        for att in files:
            mime = att.mime_type or mimetypes.guess_type(att.filename)[0] or "application/octet-stream"
            maintype, _, subtype = mime.partition("/")
            part = MIMEBase(maintype, subtype)
            part.set_payload(att.content)
            encoders.encode_base64(part)
            check_header("filename", att.filename)
            filename = att.filename if att.filename.isascii() else ("utf-8", "", att.filename)
            part.add_header("Content-Disposition", "attachment", filename=filename)
            mixed.attach(part)
        body = mixed
    msg = body
    for name, value in top:
        msg[name] = value
    return msg, frm_addr, rcpts


_CRLF = "\r\n"
_NLCRE = re.compile(r"\r\n|\r|\n")
_PART_HEAD = {
    sub: f'Content-Type: text/{sub}; charset="utf-8"{_CRLF}MIME-Version: 1.0{_CRLF}'
    f"Content-Transfer-Encoding: quoted-printable{_CRLF}{_CRLF}"
    for sub in ("plain", "html")
}


def _fold(name: str, value: str | Header) -> str:
    """One header line as compat32 writes it (RFC 2047, folded at 78); the common short ASCII case directly."""
    if _plain_short(name, value):
        return f"{name}: {value}{_CRLF}"
    h = value if isinstance(value, Header) else Header(value, header_name=name)
    return f"{name}: {h.encode(linesep=_CRLF, maxlinelen=78)}{_CRLF}"


def _plain_short(name: str, value: str | Header) -> bool:
    """A value compat32's Header.encode would write unchanged: ASCII, fits one line, no odd whitespace."""
    return (
        isinstance(value, str)
        and value.isascii()
        and len(name) + len(value) < 76
        and "  " not in value
        and "\t" not in value
        and value == value.strip()
    )


def _qp_body(text: str) -> str:
    """A UTF-8 text body, quoted-printable, CRLF line ends: what email.mime + the generator produce."""
    return _CRLF.join(_NLCRE.split(_QP_UTF8.body_encode(text)))  # Message.as_bytes: no ">From" mangling


def build_wire(
    *,
    sender: tuple[str, str] | str,
    to: Sequence[tuple[str, str] | str],
    subject: str,
    text: str,
    html: str | None = None,
    cc: Sequence[tuple[str, str] | str] = (),
    bcc: Sequence[tuple[str, str] | str] = (),
    reply_to: tuple[str, str] | str | None = None,
    attachments: Iterable[Attachment] = (),
    message_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    boundary: str | None = None,
    mixed_boundary: str | None = None,
) -> tuple[bytes, str, list[str], str]:
    """The bytes `build_message(...)` would put on the wire, written directly.

    Same validation, same headers, same encodings, byte for byte (tests compare them), at a
    fraction of the cost: no Message tree, no generator walking every base64 line of the
    attachments (measured: 2.5 ms -> 0.3 ms for a notice with three 27 KiB PDFs), no folding of
    headers that need none. Returns (data, envelope sender, envelope recipients, Message-ID).
    """
    top, frm_addr, rcpts, mid = message_headers(
        sender=sender, to=to, subject=subject, cc=cc, bcc=bcc, reply_to=reply_to, message_id=message_id, headers=headers
    )
    if html is None:
        body_head, body = _PART_HEAD["plain"][: -len(_CRLF)], _CRLF + _qp_body(text)
    else:
        b = boundary or _boundary()
        body_head = _fold("Content-Type", f'multipart/alternative; boundary="{b}"') + f"MIME-Version: 1.0{_CRLF}"
        body = _CRLF + _multipart_body(b, [_PART_HEAD["plain"] + _qp_body(text), _PART_HEAD["html"] + _qp_body(html)])
    files = list(attachments)
    if files:
        m = mixed_boundary or _boundary()
        head = _fold("Content-Type", f'multipart/mixed; boundary="{m}"') + f"MIME-Version: 1.0{_CRLF}"
        body = _CRLF + _multipart_body(m, [body_head + body, *(_attachment_part(a) for a in files)])
    else:
        head = body_head
    data = head + "".join(_fold(n, v) for n, v in top) + body
    return data.encode("ascii"), frm_addr, rcpts, mid


def _multipart_body(boundary: str, parts: Sequence[str]) -> str:
    """A multipart payload as email.generator writes it: parts between delimiter lines, no preamble."""
    sep = f"{_CRLF}--{boundary}{_CRLF}"
    return f"--{boundary}{_CRLF}" + sep.join(parts) + f"{_CRLF}--{boundary}--{_CRLF}"


def _attachment_part(att: Attachment) -> str:
    """One attachment as `build_message` makes it (base64, RFC 2231 file name), flattened."""
    mime = att.mime_type or mimetypes.guess_type(att.filename)[0] or "application/octet-stream"
    check_header("filename", att.filename)
    filename = att.filename if att.filename.isascii() else ("utf-8", "", att.filename)
    disposition = Message()
    disposition.add_header("Content-Disposition", "attachment", filename=filename)
    encoded = binascii.b2a_base64(att.content, newline=False).decode("ascii")
    lines = [encoded[i : i + 76] for i in range(0, len(encoded), 76)]  # base64.encodebytes' 76-char lines
    if lines:
        lines.append("")  # ... each ending in a newline
    return (
        f"Content-Type: {mime}{_CRLF}MIME-Version: 1.0{_CRLF}Content-Transfer-Encoding: base64{_CRLF}"
        + _fold("Content-Disposition", disposition["Content-Disposition"])
        + _CRLF
        + _CRLF.join(lines)
    )


def _boundary() -> str:
    # email.generator's format; a quoted-printable body cannot contain it ("=" is encoded as =3D)
    return "=" * 15 + f"{random.randrange(sys.maxsize):019d}" + "=="


class SmtpChannel:
    """Sends prepared messages over one reused SMTP connection; each send returns an Outcome.

    `transient_tries` and `backoff` bound the retries of 4xx answers and dropped connections for
    one message; what is still failing after that is `failed` with retryable=True (a task retry,
    or the next run, takes it again).
    """

    def __init__(
        self,
        smtp_conn_id: str = SMTP_CONN_ID,
        *,
        transient_tries: int = 4,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.smtp_conn_id = smtp_conn_id
        self.transient_tries = transient_tries
        self.backoff = backoff
        self._sleep = sleep
        self._hook: Any = None
        self.connects = 0

    def __enter__(self) -> SmtpChannel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def default_sender(self) -> str | None:
        return self._connect().from_email

    def _connect(self) -> Any:
        if self._hook is None:
            from airflow.providers.smtp.hooks.smtp import SmtpHook

            hook = SmtpHook(smtp_conn_id=self.smtp_conn_id)
            hook.get_conn()
            self._hook = hook
            self.connects += 1
        return self._hook

    def _client(self) -> smtplib.SMTP:
        return self._connect()._smtp_client

    def _drop(self) -> None:
        if self._hook is not None:
            with contextlib.suppress(Exception):  # the connection is already gone
                self._hook.__exit__(None, None, None)
            self._hook = None

    def close(self) -> None:
        if self._hook is not None:
            with contextlib.suppress(Exception):
                self._client().quit()
            self._drop()

    def send(
        self,
        msg: Message | bytes,
        envelope_from: str,
        rcpts: Sequence[str],
        point_of_no_return: Callable[[], None] = lambda: None,
        *,
        message_id: str | None = None,
    ) -> Outcome:
        """Deliver one message (a Message, or its wire bytes from `build_wire` with `message_id`).

        `point_of_no_return` is called (once) right before DATA.
        """
        if isinstance(msg, bytes):
            data = msg
        else:
            data = msg.as_bytes(policy=_WIRE)
            message_id = str(msg["Message-ID"])
        marked = False
        last_error = ""
        for attempt in range(1, self.transient_tries + 1):
            if attempt > 1:
                self._sleep(self.backoff * 2 ** (attempt - 2))
            in_data = False
            try:
                client = self._client()
                client.ehlo_or_helo_if_needed()
                code, resp = client.mail(envelope_from)
                if code != 250:
                    client.rset()
                    if _permanent(code):
                        return Outcome("failed", error=f"sender refused: {code} {_text(resp)}")
                    last_error = f"sender: {code} {_text(resp)}"
                    continue
                refused: dict[str, tuple[int, str]] = {}
                for rcpt in rcpts:
                    code, resp = client.rcpt(rcpt)
                    if code not in (250, 251):
                        refused[rcpt] = (code, _text(resp))
                if len(refused) == len(rcpts):
                    client.rset()
                    detail = "; ".join(f"{r}: {c} {t}" for r, (c, t) in refused.items())
                    if all(_permanent(c) for c, _ in refused.values()):
                        return Outcome("failed", error=f"recipient refused: {detail}")
                    last_error = f"recipient deferred: {detail}"
                    continue
                if not marked:
                    try:
                        point_of_no_return()
                    except Exception:  # e.g. the ledger says the row is no longer ours: end this transaction
                        with contextlib.suppress(smtplib.SMTPException, OSError):
                            client.rset()
                        raise
                    marked = True
                in_data = True
                code, resp = client.data(data)
                in_data = False
                if code == 250:
                    partial = "; ".join(f"refused {r}: {c} {t}" for r, (c, t) in refused.items()) if refused else None
                    return Outcome("sent", provider_message_id=message_id, error=partial)
                if _permanent(code):
                    return Outcome("failed", error=f"message refused: {code} {_text(resp)}")
                last_error = f"message deferred: {code} {_text(resp)}"
            except smtplib.SMTPDataError as exc:  # the server answered DATA with an error before taking the body
                if _permanent(exc.smtp_code):
                    return Outcome("failed", error=f"DATA refused: {exc.smtp_code} {_text(exc.smtp_error)}")
                last_error = f"DATA deferred: {exc.smtp_code} {_text(exc.smtp_error)}"
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                self._drop()
                if in_data:
                    return Outcome(
                        "unknown",
                        provider_message_id=message_id,
                        error=f"connection lost while the message was being handed over: {exc}",
                    )
                last_error = f"connection: {type(exc).__name__}: {exc}"
                log.warning("SMTP connection problem (%s), reconnecting", last_error)
            except smtplib.SMTPResponseException as exc:
                self._drop()
                if _permanent(exc.smtp_code):
                    return Outcome("failed", error=f"{exc.smtp_code} {_text(exc.smtp_error)}")
                last_error = f"{exc.smtp_code} {_text(exc.smtp_error)}"
        return Outcome("failed", error=f"gave up after {self.transient_tries} tries: {last_error}", retryable=True)


def _permanent(code: int) -> bool:
    return 500 <= code < 600


def _text(resp: bytes | str) -> str:
    return resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
